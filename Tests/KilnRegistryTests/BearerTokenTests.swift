import Foundation
import KilnModel
import KilnTestSupport
import Testing

@testable import KilnOCI
@testable import KilnRegistry

#if canImport(Glibc)
    import Glibc
#endif

/// A token service as registries use it: checks Basic credentials, then issues an RS256 JWT
/// (signed by openssl) granting the scopes asked for.
final class TestTokenServer: Sendable {
    let port: Int
    private let helper: PythonHelper

    static let script = #"""
        import base64, http.server, json, os, subprocess, sys, time, urllib.parse
        port, key, cert, user, password = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
        der = subprocess.run(['openssl', 'x509', '-in', cert, '-outform', 'DER'], capture_output=True, check=True).stdout
        def b64(data):
            return base64.urlsafe_b64encode(data).rstrip(b'=').decode()
        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass
            def do_GET(self):
                expected = 'Basic ' + base64.b64encode(f'{user}:{password}'.encode()).decode()
                if self.headers.get('Authorization') != expected:
                    self.send_response(401); self.end_headers(); return
                query = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)
                access = []
                for scope in query.get('scope', []):
                    kind, name, actions = scope.split(':')
                    access.append({'type': kind, 'name': name, 'actions': actions.split(',')})
                now = int(time.time())
                header = {'typ': 'JWT', 'alg': 'RS256', 'x5c': [base64.b64encode(der).decode()]}
                claims = {'iss': 'kiln-test-issuer', 'sub': user, 'aud': query.get('service', [''])[0], 'exp': now + 300,
                          'nbf': now - 10, 'iat': now - 10, 'jti': os.urandom(8).hex(), 'access': access}
                signing_input = b64(json.dumps(header).encode()) + '.' + b64(json.dumps(claims).encode())
                signature = subprocess.run(['openssl', 'dgst', '-sha256', '-sign', key], input=signing_input.encode(), capture_output=True, check=True).stdout
                body = json.dumps({'token': signing_input + '.' + b64(signature)}).encode()
                self.send_response(200)
                self.send_header('Content-Type', 'application/json')
                self.send_header('Content-Length', str(len(body)))
                self.end_headers()
                self.wfile.write(body)
        print('ready', flush=True)
        http.server.ThreadingHTTPServer(('127.0.0.1', int(port)), Handler).serve_forever()
        """#

    init(user: String, password: String) throws {
        port = freeLoopbackPort()
        let port = port
        helper = try PythonHelper(
            Self.script, port: port,
            setup: { directory in
                let made = try shell(
                    "cd \(directory) && openssl req -x509 -newkey rsa:2048 -nodes -keyout token.key -out token.pem -days 1 -subj /CN=kiln-token 2>&1"
                )
                #expect(made.status == 0, "\(made.text)")
            },
            arguments: { directory in
                ["\(port)", directory + "/token.key", directory + "/token.pem", user, password]
            })
    }

    var certificate: String { helper.directory.path + "/token.pem" }
    var realm: String { "http://127.0.0.1:\(port)/token" }

    func stop() { helper.stop() }
}

@Suite(
    "Bearer tokens from a token service", .serialized,
    .enabled(if: TestEnvironment.requires("/usr/bin/docker-registry")))
struct BearerTokenTests {
    @Test("Push, mount and pull through a registry that demands tokens; skopeo agrees; wrong credentials are refused clearly")
    func tokenAuth() async throws {
        let tokens = try TestTokenServer(user: "kiln", password: "s3cret")
        defer { tokens.stop() }
        let registry = try LoopbackRegistry(token: (tokens.realm, tokens.certificate))
        defer { registry.stop() }
        let home = Scratch()
        defer { home.remove() }
        let store = try ContentStore(root: home.path + "/store")
        let manifest = try makeImage(in: store, named: "app", random: 10_000)
        let registries = RegistryDirectory(
            settings: [registry.host: RegistrySettings(credentials: .init(username: "kiln", password: "s3cret"))],
            logins: RegistryCredentialStore(files: [])
        )
        let transfer = ImageTransfer(store: store, registries: registries)
        _ = try await transfer.copy(from: .store(name: "app"), to: [try ImageLocation("\(registry.host)/team/app:1")]).checked()
        #expect(
            try skopeoDigest("\(registry.host)/team/app:1", extra: "--tls-verify=false --creds kiln:s3cret") == manifest.digest.description)

        // A mount needs a token for two repositories at once.
        let mounted = try await transfer.copy(
            from: try ImageLocation("\(registry.host)/team/app:1"), to: [try ImageLocation("\(registry.host)/other/app:1")]
        ).checked()
        #expect(try #require(mounted.destinations.first).totals.blobsMounted == 2)

        let pulled = try ContentStore(root: home.path + "/pulled")
        let pull = ImageTransfer(store: pulled, registries: registries)
        #expect(try await pull.pull(try ImageReference("\(registry.host)/other/app:1")).digest == manifest.digest)

        let wrong = ImageTransfer(
            store: pulled,
            registries: RegistryDirectory(
                settings: [registry.host: RegistrySettings(credentials: .init(username: "kiln", password: "nope"))],
                logins: RegistryCredentialStore(files: [])
            ))
        let error = try await #require(throws: KilnError.self) { try await wrong.pull(try ImageReference("\(registry.host)/team/app:1")) }
        #expect(error.message.contains("token service") && error.message.contains("refused the credentials"))
    }
}
