#!/usr/bin/env python3
"""A webhook receiver for ServerLifecycleTests.

    webhook_receiver.py PORT RECORD_FILE SECRET FAILURES

Listens on 127.0.0.1:PORT. Each POST is one try: the first FAILURES tries of every event
(counted by its X-Kiln-Event-Id) are answered 500, later ones 200. Every try is appended to
RECORD_FILE as one JSON line: the event id, which try of that event it was, the status it was
answered with, the time, the headers, the body, and the signature the body should carry
(HMAC-SHA256 under SECRET, computed here, independently of Kiln).
"""

import hashlib
import hmac
import http.server
import json
import sys
import threading
import time

port, record_path, secret, failures = int(sys.argv[1]), sys.argv[2], sys.argv[3].encode(), int(sys.argv[4])
tries = {}
lock = threading.Lock()
record = open(record_path, "a", encoding="utf-8")


class Receiver(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        event = self.headers.get("X-Kiln-Event-Id", "")
        with lock:
            tries[event] = tries.get(event, 0) + 1
            attempt = tries[event]
            status = 500 if attempt <= failures else 200
            record.write(
                json.dumps(
                    {
                        "eventId": event,
                        "try": attempt,
                        "answered": status,
                        "time": time.time(),
                        "path": self.path,
                        "headers": {name.lower(): value for name, value in self.headers.items()},
                        "body": body.decode("utf-8", "replace"),
                        "expectedSignature": "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest(),
                    }
                )
                + "\n"
            )
            record.flush()
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *arguments):
        pass


http.server.ThreadingHTTPServer(("127.0.0.1", port), Receiver).serve_forever()
