import Foundation
import KilnModel
import KilnTestSupport
import Testing

@testable import KilnOCI
@testable import KilnRegistry

/// A scripted HTTP(S) server that logs every request's method, path and Authorization header:
/// routes answer by method and path prefix; with `auth`, a request without the expected
/// Authorization gets a 401 with the given challenge.
final class RecordingServer: Sendable {
    struct Route: Encodable {
        var method: String
        var prefix: String
        var status = 200
        var headers: [String: String] = [:]
        var body = ""
        /// The body repeated this many times.
        var `repeat` = 1
        /// No Content-Length of its own: the body ends when the connection closes.
        var noLength = false
    }

    struct Auth: Encodable {
        var expect: String
        var challenge: String
    }

    struct Request: Decodable {
        var method: String
        var path: String
        var authorization: String?
    }

    let port: Int
    let tls: Bool
    private let helper: PythonHelper

    static let script = #"""
        import http.server, json, ssl, sys
        port, config_path, log_path = int(sys.argv[1]), sys.argv[2], sys.argv[3]
        config = json.load(open(config_path))
        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass
            def reply(self, status, headers, body, length=True):
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                if length:
                    self.send_header('Content-Length', str(len(body)))
                self.end_headers()
                if self.command != 'HEAD':
                    try:
                        self.wfile.write(body)
                    except OSError:
                        pass
            def answer(self):
                length = int(self.headers.get('Content-Length') or 0)
                if length:
                    self.rfile.read(length)
                with open(log_path, 'a') as log:
                    log.write(json.dumps({'method': self.command, 'path': self.path,
                                          'authorization': self.headers.get('Authorization')}) + '\n')
                auth = config.get('auth')
                if auth and self.headers.get('Authorization') != auth['expect']:
                    self.reply(401, {'WWW-Authenticate': auth['challenge']}, b'')
                    return
                for route in config['routes']:
                    if route['method'] == self.command and self.path.startswith(route['prefix']):
                        body = route['body'].encode() * route['repeat']
                        self.reply(route['status'], route['headers'], body, not route['noLength'])
                        return
                self.reply(404, {}, b'')
            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = answer
        server = http.server.ThreadingHTTPServer(('127.0.0.1', port), Handler)
        if config.get('cert'):
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(config['cert'], config['key'])
            server.socket = context.wrap_socket(server.socket, server_side=True)
        server.serve_forever()
        """#

    /// `port` lets a test name this server in another's routes before starting it.
    init(port: Int = freeLoopbackPort(), routes: [Route] = [], auth: Auth? = nil, tls: Bool = false) throws {
        struct Config: Encodable {
            var routes: [Route]
            var auth: Auth?
            var cert: String?
            var key: String?
        }
        self.port = port
        self.tls = tls
        helper = try PythonHelper(
            Self.script, port: port,
            setup: { directory in
                var config = Config(routes: routes, auth: auth)
                if tls {
                    let made = try shell(
                        """
                        cd \(directory) && openssl req -x509 -newkey rsa:2048 -nodes -keyout server.key -out server.pem -days 1 \
                        -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 2>&1
                        """)
                    guard made.status == 0 else { throw FixtureError("openssl failed: \(made.output)") }
                    config.cert = directory + "/server.pem"
                    config.key = directory + "/server.key"
                }
                try JSONEncoder().encode(config).write(to: URL(fileURLWithPath: directory + "/config.json"))
                _ = FileManager.default.createFile(atPath: directory + "/requests.jsonl", contents: nil)
            },
            arguments: { directory in ["\(port)", directory + "/config.json", directory + "/requests.jsonl"] })
    }

    var host: String { "127.0.0.1:\(port)" }
    /// The server's own certificate, which is its CA too.
    var certificate: String { helper.directory.file("server.pem") }

    var requests: [Request] {
        let text = (try? String(contentsOfFile: helper.directory.file("requests.jsonl"), encoding: .utf8)) ?? ""
        return text.split(separator: "\n").compactMap { try? JSONDecoder().decode(Request.self, from: Data($0.utf8)) }
    }

    func stop() { helper.stop() }
}

@Suite(
    "Hostile registries: credentials stay with the registry, answers are bounded", .serialized,
    .enabled(if: TestEnvironment.requires("python3", "openssl")))
struct HostileRegistryTests {
    let login = RegistryCredentials(username: "kiln", password: "s3cret")
    let noRetry = RetryPolicy(attempts: 1)

    @Test("The first request goes without credentials; Basic credentials follow the registry's challenge and are kept")
    func credentialsOnlyAfterAChallenge() async throws {
        let registry = try RecordingServer(
            routes: [.init(method: "GET", prefix: "/v2/", body: "{}")],
            auth: .init(expect: login.basicHeader, challenge: #"Basic realm="kiln-test""#))
        defer { registry.stop() }
        let client = try RegistryClient(registry: registry.host, credentials: login, insecureHTTP: true, retry: noRetry)
        try await client.ping()
        try await client.ping()
        #expect(registry.requests.map(\.authorization) == [nil, login.basicHeader, login.basicHeader])
    }

    @Test("An upload Location on another server is followed without credentials, and its challenge is not answered")
    func foreignUploadLocation() async throws {
        let home = Scratch()
        defer { home.remove() }
        let store = try ContentStore(root: home.path + "/store")
        let blob = try store.ingest(Data("a layer's bytes\n".utf8))

        let sink = try RecordingServer(routes: [.init(method: "PUT", prefix: "/upload/", status: 201)])
        defer { sink.stop() }
        let guarded = try RecordingServer(auth: .init(expect: "never", challenge: #"Basic realm="elsewhere""#))
        defer { guarded.stop() }
        func registry(uploadingTo other: RecordingServer) throws -> RecordingServer {
            try RecordingServer(
                routes: [
                    .init(method: "HEAD", prefix: "/v2/team/app/blobs/", status: 404),
                    .init(
                        method: "POST", prefix: "/v2/team/app/blobs/uploads/", status: 202,
                        headers: ["Location": "http://\(other.host)/upload/1?_state=x"]),
                ],
                auth: .init(expect: login.basicHeader, challenge: #"Basic realm="kiln-test""#))
        }

        let good = try registry(uploadingTo: sink)
        defer { good.stop() }
        let client = try RegistryClient(registry: good.host, credentials: login, insecureHTTP: true, retry: noRetry)
        #expect(try await client.pushBlob(blob, repository: "team/app", from: store) == .uploaded)
        #expect(good.requests.first?.authorization == nil, "the first request to the registry carries no credentials")
        #expect(good.requests.dropFirst().allSatisfy { $0.authorization == login.basicHeader })
        #expect(sink.requests.map(\.method) == ["PUT"])
        #expect(sink.requests.allSatisfy { $0.authorization == nil }, "the other server never sees the registry's credentials")

        let bad = try registry(uploadingTo: guarded)
        defer { bad.stop() }
        let other = try RegistryClient(registry: bad.host, credentials: login, insecureHTTP: true, retry: noRetry)
        let error = try await #require(throws: KilnError.self) { try await other.pushBlob(blob, repository: "team/app", from: store) }
        #expect(error.message.contains("registry \(bad.host) sent Kiln to http://\(guarded.host)"))
        #expect(error.message.contains("only to http://\(bad.host) itself") && error.message.contains("relative Location"))
        #expect(guarded.requests.count == 1 && guarded.requests.allSatisfy { $0.authorization == nil })
    }

    @Test("An https registry's token realm at http:// is refused before anything is sent to it")
    func plainHTTPTokenRealm() async throws {
        let tokens = try RecordingServer(routes: [.init(method: "GET", prefix: "/token", body: #"{"token":"t"}"#)])
        defer { tokens.stop() }
        let realm = "http://\(tokens.host)/token"
        let registry = try RecordingServer(
            auth: .init(expect: "never", challenge: #"Bearer realm="\#(realm)",service="kiln-test""#), tls: true)
        defer { registry.stop() }
        let client = try RegistryClient(
            registry: registry.host, credentials: login, caCertificatePath: registry.certificate, retry: noRetry)
        var refused: KilnError?
        do { _ = try await client.manifest(repository: "team/app", reference: "1") } catch let error as KilnError { refused = error }
        // A client with its own CA must be shut down, whatever happened.
        await client.shutdown()
        let error = try #require(refused)
        #expect(error.message.contains("registry \(registry.host) asks Kiln to get a token from \(realm)"))
        #expect(error.message.contains("only over https") && error.message.contains("serve the token service"))
        #expect(tokens.requests.isEmpty, "the token service got no request, so no credentials")
        #expect(registry.requests.map(\.authorization) == [nil])
    }

    @Test("Manifests past 4 MiB, by Content-Length or by a body that keeps coming, are refused; token and error bodies are bounded too")
    func boundedBodies() async throws {
        let manifestPath = "/v2/team/app/manifests/"
        let declared = try RecordingServer(routes: [
            .init(method: "GET", prefix: manifestPath, headers: ["Content-Length": "\(5 << 20)"], body: "{}", noLength: true)
        ])
        defer { declared.stop() }
        let streamed = try RecordingServer(routes: [.init(method: "GET", prefix: manifestPath, body: "x", repeat: 5 << 20, noLength: true)])
        defer { streamed.stop() }
        let failing = try RecordingServer(routes: [
            .init(method: "GET", prefix: manifestPath, status: 403, body: "denied ", repeat: 1 << 20, noLength: true)
        ])
        defer { failing.stop() }
        let tokens = try RecordingServer(routes: [.init(method: "GET", prefix: "/token", body: "t", repeat: 2 << 20)])
        defer { tokens.stop() }
        let tokenRegistry = try RecordingServer(
            auth: .init(expect: "never", challenge: #"Bearer realm="http://\#(tokens.host)/token",service="kiln-test""#))
        defer { tokenRegistry.stop() }

        func fetch(_ server: RecordingServer) async throws -> KilnError {
            let client = try RegistryClient(registry: server.host, insecureHTTP: true, retry: noRetry)
            return try await #require(throws: KilnError.self) { _ = try await client.manifest(repository: "team/app", reference: "1") }
        }
        for server in [declared, streamed] {
            let message = try await fetch(server).message
            #expect(message.contains("registry \(server.host): the manifest of team/app:1 is larger than Kiln's limit of 4 MiB"))
            #expect(message.contains("check that \(server.host)/team/app:1 names an image"))
        }
        #expect(try await fetch(declared).message.contains("Content-Length \(5 << 20)"))
        #expect(try await fetch(streamed).message.contains("went on past it"))
        let denied = try await fetch(failing).message
        #expect(denied.contains("answered HTTP 403: denied denied") && denied.count < 600)
        let token = try await fetch(tokenRegistry).message
        #expect(token.contains("the token from http://\(tokens.host)/token is larger than Kiln's limit of 1 MiB"))
    }

    @Test("A manifest naming a config over 8 MiB, or an index naming a manifest over 4 MiB, is refused before either is fetched")
    func oversizedDescriptors() async throws {
        let digest = "sha256:" + String(repeating: "ab", count: 32)
        let manifest = """
            {"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",\
            "config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"\(digest)","size":\(100 << 20)},"layers":[]}
            """
        let index = """
            {"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[\
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"\(digest)","size":\(5 << 20),\
            "platform":{"architecture":"amd64","os":"linux"}}]}
            """
        let registry = try RecordingServer(routes: [
            .init(method: "GET", prefix: "/v2/team/app/manifests/config", body: manifest),
            .init(method: "GET", prefix: "/v2/team/app/manifests/index", body: index),
        ])
        defer { registry.stop() }
        let home = Scratch()
        defer { home.remove() }
        let transfer = ImageTransfer(
            store: try ContentStore(root: home.path + "/store"), registries: RegistryDirectory(logins: RegistryCredentialStore(files: [])),
            platform: Platform(architecture: "amd64", os: "linux"))

        let config = try await #require(throws: KilnError.self) {
            try await transfer.pull(try ImageReference("\(registry.host)/team/app:config"))
        }
        #expect(config.message.contains("\(registry.host)/team/app:config: the image config \(digest) is \(100 << 20) bytes"))
        #expect(config.message.contains("limit of 8 MiB"))
        let child = try await #require(throws: KilnError.self) {
            try await transfer.pull(try ImageReference("\(registry.host)/team/app:index"))
        }
        #expect(child.message.contains("\(registry.host)/team/app:index: the index lists manifest \(digest) at \(5 << 20) bytes"))
        #expect(child.message.contains("limit of 4 MiB"))
        #expect(registry.requests.map(\.path) == ["/v2/team/app/manifests/config", "/v2/team/app/manifests/index"])
    }
}
