import Foundation

#if canImport(Glibc)
    import Glibc
#endif

// Fixtures every test target shares: the CI gate, shell commands, scratch folders, free ports,
// loopback servers and a real registry. Test-only: no product depends on this module.

/// Where the tests run and what they may rely on. In CI (`CI=true`) a missing tool is a
/// failure, never a silent skip.
public enum TestEnvironment {
    public static var isCI: Bool { ProcessInfo.processInfo.environment["CI"] == "true" }
    public static var isRoot: Bool { geteuid() == 0 }

    public static func executable(_ name: String) -> String? {
        if name.hasPrefix("/") { return access(name, X_OK) == 0 ? name : nil }
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
        for directory in path.split(separator: ":").map(String.init) + ["/usr/sbin", "/sbin"] {
            let candidate = "\(directory)/\(name)"
            if access(candidate, X_OK) == 0 { return candidate }
        }
        return nil
    }

    /// For `.enabled(if:)`: run when the tools are there, and always in CI, where their
    /// absence fails the test.
    public static func requires(_ tools: String...) -> Bool {
        isCI || tools.allSatisfy { executable($0) != nil }
    }

    /// As `requires`, and the test needs root (runc, overlayfs, mknod).
    public static func requiresRoot(_ tools: String...) -> Bool {
        isCI || (isRoot && tools.allSatisfy { executable($0) != nil })
    }
}

/// What a shell command printed (stdout, and stderr unless left out) and its exit status.
public struct ShellResult: Sendable {
    public var status: Int32
    public var output: String
    public var text: String { output }
}

/// Runs `command` with bash on the host, for checking results with real tools.
@discardableResult
public func shell(_ command: String, environment: [String: String] = [:], includeStandardError: Bool = true) throws -> ShellResult {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/bin/bash")
    process.arguments = ["-c", command]
    process.environment = ProcessInfo.processInfo.environment.merging(environment) { _, new in new }
    let pipe = Pipe()
    process.standardOutput = pipe
    process.standardError = includeStandardError ? pipe : FileHandle.nullDevice
    try process.run()
    let data = pipe.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return ShellResult(status: process.terminationStatus, output: String(decoding: data, as: UTF8.self))
}

/// A scratch folder under /tmp, removed by `remove()`.
public struct Scratch: Sendable {
    public let path: String

    public init(_ label: String = "kiln-test") {
        var template = Array("/tmp/\(label).XXXXXX".utf8CString)
        guard let made = mkdtemp(&template) else { fatalError("mkdtemp in /tmp failed: \(String(cString: strerror(errno)))") }
        path = String(cString: made)
    }

    public func file(_ name: String) -> String { path + "/" + name }

    /// Writes `text` to `name` (folders made as needed) and returns its path.
    @discardableResult
    public func write(_ name: String, _ text: String) throws -> String {
        let target = file(name)
        try FileManager.default.createDirectory(atPath: (target as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        try text.write(toFile: target, atomically: true, encoding: .utf8)
        return target
    }

    public func read(_ name: String) throws -> String { try String(contentsOfFile: file(name), encoding: .utf8) }

    public func exists(_ name: String) -> Bool { FileManager.default.fileExists(atPath: file(name)) }

    public func remove() { try? FileManager.default.removeItem(atPath: path) }
}

/// A loopback port no one listens on now (the kernel's choice for port 0).
public func freeLoopbackPort() -> Int {
    let probe = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(probe) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(probe, $0, length) } }
    _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(probe, $0, &length) } }
    return Int(UInt16(bigEndian: address.sin_port))
}

/// Whether something accepts TCP connections on `127.0.0.1:port`.
public func loopbackAccepts(_ port: Int) -> Bool {
    let probe = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(probe) }
    var target = sockaddr_in()
    target.sin_family = sa_family_t(AF_INET)
    target.sin_addr.s_addr = inet_addr("127.0.0.1")
    target.sin_port = UInt16(port).bigEndian
    return withUnsafePointer(to: &target) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(probe, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    } == 0
}

public struct FixtureError: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// A real server on a loopback port (python's http.server, moto_server, docker-registry), ready
/// once the port accepts connections; `stop()` ends it.
public final class LoopbackServer: Sendable {
    public let port: Int
    private let process: Process

    /// `arguments` gets the port. `port` reuses a port (a server coming back); nil picks a free one.
    public init(
        executable: String, arguments: (Int) -> [String], directory: String? = nil, environment: [String: String] = [:],
        port fixedPort: Int? = nil
    ) throws {
        guard let path = TestEnvironment.executable(executable) else {
            throw FixtureError("\(executable) is not installed; run scripts/setup")
        }
        let port = fixedPort ?? freeLoopbackPort()
        let process = Process()
        process.executableURL = URL(fileURLWithPath: path)
        process.arguments = arguments(port)
        if let directory { process.currentDirectoryURL = URL(fileURLWithPath: directory) }
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { _, new in new }
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        self.port = port
        self.process = process
        let deadline = Date().addingTimeInterval(30)
        while !loopbackAccepts(port) {
            guard process.isRunning, Date() < deadline else {
                kill(process.processIdentifier, SIGKILL)
                process.waitUntilExit()
                throw FixtureError("\(executable) did not start listening on port \(port)")
            }
            usleep(25_000)
        }
    }

    public var url: String { "http://127.0.0.1:\(port)" }

    /// SIGKILL: Foundation's children inherit the test thread's blocked signals, SIGTERM among them.
    public func stop() {
        guard process.isRunning else { return }
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }
}

/// A real `docker-registry` (CNCF distribution) on a loopback port, plain http by default; with
/// `tls` it serves https with a certificate from a CA made here (`caCertificate`, and
/// `directory/certs` for skopeo's `--cert-dir`); `htpasswd` or `token` make it demand logins.
public final class LoopbackRegistry: Sendable {
    public let directory: String
    public let caCertificate: String?
    private let server: LoopbackServer

    public init(
        port fixedPort: Int? = nil, htpasswd: (user: String, password: String)? = nil, tls: Bool = false,
        token: (realm: String, certificate: String)? = nil, notify: (url: String, header: String, value: String)? = nil
    ) throws {
        directory = Scratch("kiln-registry").path
        var auth = "", tlsConfig = ""
        if tls {
            let made = try shell(
                """
                cd \(directory) && openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 1 -subj /CN=kiln-test-ca \
                && openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj /CN=127.0.0.1 \
                && printf 'subjectAltName=IP:127.0.0.1\\n' > ext.cnf \
                && openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 1 -extfile ext.cnf \
                && mkdir -p certs && cp ca.pem certs/ca.crt
                """)
            guard made.status == 0 else { throw FixtureError("cannot make the registry's certificates: \(made.output)") }
            tlsConfig = "  tls:\n    certificate: \(directory)/server.pem\n    key: \(directory)/server.key\n"
            caCertificate = directory + "/ca.pem"
        } else {
            caCertificate = nil
        }
        if let htpasswd {
            let made = try shell("htpasswd -Bbn \(htpasswd.user) \(htpasswd.password) > \(directory)/htpasswd")
            guard made.status == 0 else { throw FixtureError("htpasswd failed: \(made.output)") }
            auth = "auth:\n  htpasswd:\n    realm: kiln-test\n    path: \(directory)/htpasswd\n"
        }
        if let token {
            auth =
                "auth:\n  token:\n    realm: \(token.realm)\n    service: kiln-test\n    issuer: kiln-test-issuer\n    rootcertbundle: \(token.certificate)\n"
        }
        // Pushes are posted to `notify.url` as distribution's event envelopes, retried every second.
        let notifications =
            notify.map {
                "notifications:\n  endpoints:\n    - name: kiln\n      url: \($0.url)\n      headers:\n        \($0.header): [\"\($0.value)\"]\n      timeout: 2s\n      threshold: 3\n      backoff: 1s\n"
            } ?? ""
        let config = directory + "/config.yml"
        let directory = self.directory
        server = try LoopbackServer(
            executable: "/usr/bin/docker-registry",
            arguments: { port in
                try? """
                version: 0.1
                log:
                  level: error
                storage:
                  filesystem:
                    rootdirectory: \(directory)/data
                http:
                  addr: 127.0.0.1:\(port)
                \(tlsConfig)\(auth)\(notifications)
                """.write(toFile: config, atomically: true, encoding: .utf8)
                return ["serve", config]
            }, port: fixedPort)
    }

    public var port: Int { server.port }
    public var host: String { "127.0.0.1:\(port)" }

    public func stop() {
        server.stop()
        try? FileManager.default.removeItem(atPath: directory)
    }
}
