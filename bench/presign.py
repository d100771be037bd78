#!/usr/bin/env python3
"""Signs one Image Builder API request with botocore, for bench/api-latency.sh.

Writes a wrk Lua script that sends that exact request on every connection (method, path with
query, headers, body), and prints the request as JSON (url, method, headers, body) so the caller
can check it once with curl first.

  get-image ARN      GET /GetImage?imageBuildVersionArn=ARN, presigned in the query
                     (botocore.auth.SigV4QueryAuth, X-Amz-Expires 900 s): no headers but Host.
  list-images BODY   POST /ListImages with BODY (JSON), signed in the Authorization header
                     (botocore.auth.SigV4Auth) with the X-Amz-Date of now: the server accepts it
                     for 15 minutes, so sign again before each wrk run.

Usage: presign.py --endpoint http://127.0.0.1:PORT --region R --access-key K --secret-key S
                  --lua OUT.lua (get-image ARN | list-images BODY)
"""

import argparse
import json
import sys
from urllib.parse import quote, urlsplit

try:
    from botocore.auth import SigV4Auth, SigV4QueryAuth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials
except ImportError:
    sys.exit("presign.py: botocore is missing (pip install botocore, or apt-get install python3-botocore)")

SERVICE = "imagebuilder"
EXPIRES = 900  # seconds; the server's limit for a signature's age is the same 15 minutes


def lua_string(text):
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return '"' + escaped + '"'


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--region", required=True)
    parser.add_argument("--access-key", required=True)
    parser.add_argument("--secret-key", required=True)
    parser.add_argument("--lua", required=True, help="the wrk script to write")
    parser.add_argument("operation", choices=["get-image", "list-images"])
    parser.add_argument("argument", help="the image build version ARN, or the ListImages JSON body")
    args = parser.parse_args()

    credentials = Credentials(args.access_key, args.secret_key)
    endpoint = args.endpoint.rstrip("/")
    if args.operation == "get-image":
        # As botocore's rest-json serializer sends it: the ARN percent-encoded in the query.
        url = f"{endpoint}/GetImage?imageBuildVersionArn={quote(args.argument, safe='-_.~')}"
        request = AWSRequest(method="GET", url=url, headers={}, data=b"")
        SigV4QueryAuth(credentials, SERVICE, args.region, expires=EXPIRES).add_auth(request)
        body = b""
    else:
        body = json.dumps(json.loads(args.argument), separators=(",", ":")).encode()
        url = f"{endpoint}/ListImages"
        request = AWSRequest(method="POST", url=url, headers={"Content-Type": "application/json"}, data=body)
        SigV4Auth(credentials, SERVICE, args.region).add_auth(request)

    prepared = request.prepare()
    split = urlsplit(prepared.url)
    target = split.path + ("?" + split.query if split.query else "")
    headers = {name: value for name, value in prepared.headers.items()}
    # wrk sends Host as host:port of its URL; the signature covers it, so name it exactly.
    headers["Host"] = split.netloc
    if isinstance(headers.get("Authorization"), bytes):
        headers["Authorization"] = headers["Authorization"].decode()

    lines = [
        "-- written by bench/presign.py: one signed " + args.operation + " request, sent as is",
        "wrk.method = " + lua_string(prepared.method),
        "wrk.path = " + lua_string(target),
        "wrk.body = " + (lua_string(body.decode()) if body else "nil"),
        "wrk.headers = {}",
    ]
    for name, value in headers.items():
        if name.lower() == "content-length":
            continue  # wrk adds it for a body
        lines.append(f"wrk.headers[{lua_string(name)}] = {lua_string(str(value))}")
    with open(args.lua, "w") as out:
        out.write("\n".join(lines) + "\n")

    json.dump(
        {"url": f"{split.scheme}://{split.netloc}{target}", "method": prepared.method, "headers": headers,
         "body": body.decode()},
        sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
