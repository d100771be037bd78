import Foundation
import KilnInstances
import KilnModel
import KilnOCI
import KilnSystem
import KilnTOE

#if canImport(Glibc)
    import Glibc
#endif

/// One test's result, as JUnit XML and `tests.json` report it.
public struct TestCaseResult: Sendable, Codable, Hashable {
    public enum Status: String, Sendable, Codable, Hashable { case passed, failed, skipped }

    public var suite: String
    public var name: String
    public var status: Status
    public var message: String
    public var seconds: Double

    public init(suite: String, name: String, status: Status, message: String, seconds: Double) {
        self.suite = suite
        self.name = name
        self.status = status
        self.message = message
        self.seconds = seconds
    }
}

/// Kiln's built-in suites, run in TEST after the components' test phases: functionality (the
/// image's command starts), health (a command or HTTP check while it runs), and security
/// (pending security updates, world-writable files, SUID/SGID growth, secrets in the build's
/// layers).
struct ImageTestSuites: Sendable {
    let settings: KilnTests
    let host: InstanceHost
    let type: InstanceType
    /// The parent's layer count: layers after it are what the build added.
    let parentLayerCount: Int
    let progress: @Sendable (String) -> Void
    /// The pending-updates check asks the package manager with the builders' network.
    var network: InstanceNetwork = .isolated

    /// Runs the suites; also returns the usage of the extra instances they started.
    func run(image: Descriptor, in instance: ContainerInstance) async -> ([TestCaseResult], [ContainerInstance.Usage]) {
        var results: [TestCaseResult] = []
        var usages: [ContainerInstance.Usage] = []
        func record(_ suite: String, _ name: String, _ body: () async throws -> (TestCaseResult.Status, String)) async {
            results.append(await check(suite, name, body))
        }
        // The online check takes longest and has its own instance, so it runs alongside the rest.
        let updatesStart = ContinuousClock.now
        async let updates = settings.security?.pendingUpdates != false ? pendingUpdates(image: image) : nil
        let functionality = settings.functionality
        if functionality?.enabled != false {
            await record("functionality", "command starts") { try await commandStarts(in: instance) }
        }
        if let health = settings.health, health.command != nil || health.httpPort != nil {
            await record("health", health.httpPort.map { "http 127.0.0.1:\($0)\(health.httpPath ?? "/")" } ?? "command") {
                try await healthCheck(health, in: instance)
            }
        }
        let security = settings.security
        // One walk of the image's root serves both checks that need it.
        var walked: RootInventory?
        func inventory() throws -> RootInventory {
            // Frozen: the image's command may still run and could swap a folder for a host symlink mid-walk.
            if walked == nil { walked = try instance.whileFrozen { RootInventory(root: instance.hostView) } }
            return walked!
        }
        if security?.worldWritable != false {
            await record("security", "no world-writable files") { worldWritable(try inventory().worldWritable) }
        }
        if security?.setuid != false {
            await record("security", "no new SUID/SGID files") {
                try setuidGrowth(try inventory().setuid, manifest: instance.manifest, config: instance.image)
            }
        }
        if security?.secrets != false {
            await record("security", "no private keys or credentials in layers") {
                secrets(
                    try secretsInAddedLayers(Array(instance.manifest.layers.dropFirst(parentLayerCount))),
                    layers: instance.manifest.layers.count - parentLayerCount)
            }
        }
        if let answer = await updates {
            results.append(pendingUpdatesResult(answer, since: updatesStart))
            if let usage = answer.2 { usages.append(usage) }
        }
        return (results, usages)
    }

    /// One check timed and said in the log; a thrown error is its failure.
    func check(_ suite: String, _ name: String, _ body: () async throws -> (TestCaseResult.Status, String)) async -> TestCaseResult {
        let start = ContinuousClock.now
        let (status, message): (TestCaseResult.Status, String)
        do {
            (status, message) = try await body()
        } catch {
            (status, message) = (.failed, (error as? KilnError)?.message ?? "\(error)")
        }
        progress("TEST: \(suite)/\(name): \(status.rawValue.uppercased()) \(message)")
        return TestCaseResult(suite: suite, name: name, status: status, message: message, seconds: (ContinuousClock.now - start).inSeconds)
    }

    /// The pending-updates check's answer (asked alongside the others since `start`) as a result.
    func pendingUpdatesResult(_ answer: (TestCaseResult.Status, String, ContainerInstance.Usage?), since start: ContinuousClock.Instant)
        -> TestCaseResult
    {
        progress("TEST: security/no pending security updates: \(answer.0.rawValue.uppercased()) \(answer.1)")
        return TestCaseResult(
            suite: "security", name: "no pending security updates", status: answer.0, message: answer.1,
            seconds: (ContinuousClock.now - start).inSeconds)
    }

    /// What the suites start: `functionality.command`, or the image's entrypoint and cmd.
    private func command(of instance: ContainerInstance) -> [String] {
        settings.functionality?.command ?? ((instance.image.config?.entrypoint ?? []) + (instance.image.config?.cmd ?? []))
    }

    /// The image's command; a command that is not a server exits 0, a server is still up after N s.
    private func commandStarts(in instance: ContainerInstance) async throws -> (TestCaseResult.Status, String) {
        let command = command(of: instance)
        guard let executable = command.first else {
            return (.skipped, "the image has no entrypoint or cmd; set kilnTests.functionality.command")
        }
        let seconds = settings.functionality?.runForSeconds ?? 3
        let output = LineEcho(prefix: "TEST: functionality: ", progress: progress)
        let result = try await instance.session.exec(
            ExecRequest(executable: executable, arguments: Array(command.dropFirst()), timeout: .seconds(seconds))
        ) { _, bytes in
            output.append(bytes)
        }
        output.flush()
        let shown = command.joined(separator: " ")
        if result.timedOut { return (.passed, "\(shown) was still running after \(seconds) s") }
        if result.exitCode == 0 { return (.passed, "\(shown) exited 0") }
        return (.failed, "\(shown) exited with \(result.exitCode) within \(seconds) s: \(output.tail)")
    }

    /// Starts the image's command, then retries the check until it passes or time is up.
    private func healthCheck(_ health: KilnTests.Health, in instance: ContainerInstance) async throws -> (TestCaseResult.Status, String) {
        let command = command(of: instance)
        let startup = health.startupSeconds ?? 10
        let session = instance.session
        let server = command.first.map { executable in
            Task {
                _ = try? await session.exec(
                    ExecRequest(executable: executable, arguments: Array(command.dropFirst()), timeout: .seconds(startup + 30))
                ) { _, _ in }
            }
        }
        defer { server?.cancel() }
        let deadline = ContinuousClock.now + .seconds(startup)
        var last = "no answer yet"
        repeat {
            let output = LineEcho(prefix: "", progress: { _ in })
            if let check = health.command, let executable = check.first {
                let result = try await session.exec(
                    ExecRequest(executable: executable, arguments: Array(check.dropFirst()), timeout: .seconds(5))
                ) { _, bytes in output.append(bytes) }
                output.flush()
                if result.exitCode == 0 { return (.passed, "\(check.joined(separator: " ")) exited 0") }
                last = "\(check.joined(separator: " ")) exited with \(result.exitCode): \(output.tail)"
            } else if let port = health.httpPort {
                let path = health.httpPath ?? "/"
                let result = try await session.exec(
                    ExecRequest(executable: "/.kiln/init", arguments: ["http-get", String(port), path], timeout: .seconds(5))
                ) { _, bytes in output.append(bytes) }
                output.flush()
                let statusLine = output.tail
                let code = statusLine.split(separator: " ").dropFirst().first.flatMap { Int($0) }
                let expected = health.expectStatus ?? 200
                if result.exitCode == 0, code == expected { return (.passed, "GET \(path) on port \(port) answered \(statusLine)") }
                last =
                    result.exitCode == 0 ? "GET \(path) on port \(port) answered '\(statusLine)', expected status \(expected)" : statusLine
            }
            try await Task.sleep(for: .milliseconds(250))
        } while ContinuousClock.now < deadline
        return (.failed, "not healthy within \(startup) s: \(last)")
    }

    static let temporaryFolders = ["tmp", "var/tmp", "dev", "proc", "sys", "run", "dev/shm", "run/lock", "var/lock"]

    /// What the security suite looks for in the image's root, found in one walk (without
    /// going into proc, sys and dev).
    struct RootInventory {
        /// World-writable files, and world-writable folders without the sticky bit, outside tmp folders.
        var worldWritable: [String] = []
        /// SUID/SGID files, relative to the root.
        var setuid: [String] = []

        init(root: String) {
            ImageTestSuites.walk(root) { path, info in
                let kind = info.st_mode & S_IFMT
                if info.st_mode & 0o002 != 0, kind == S_IFREG || (kind == S_IFDIR && info.st_mode & 0o1000 == 0),
                    !ImageTestSuites.temporaryFolders.contains(where: { path == $0 || path.hasPrefix($0 + "/") })
                {
                    worldWritable.append("/" + path)
                }
                if kind == S_IFREG, info.st_mode & 0o6000 != 0 { setuid.append(path) }
                return !["proc", "sys", "dev"].contains(path)
            }
        }
    }

    func worldWritable(_ found: [String]) -> (TestCaseResult.Status, String) {
        if found.isEmpty { return (.passed, "none outside tmp folders") }
        return (
            .failed,
            "\(found.count) world-writable: \(found.prefix(10).joined(separator: ", "))\(found.count > 10 ? ", …" : ""); remove o+w (chmod o-w) in a component"
        )
    }

    static let credentialFiles = [
        ".aws/credentials", ".docker/config.json", ".git-credentials", ".ssh/id_rsa", ".ssh/id_dsa", ".ssh/id_ecdsa", ".ssh/id_ed25519",
        ".netrc",
    ]

    /// Reads every entry of the layers the build added: credential files, and
    /// files up to 1 MiB holding a private key or cloud credential. Deleted files count too (a
    /// later layer's whiteout does not remove bytes from an earlier layer).
    /// A layer's findings are kept by its digest, so a layer is read once however often it is tested.
    func secretsInAddedLayers(_ layers: [Descriptor]) throws -> [String] {
        var findings: [String] = []
        let cache = host.dataDirectory + "/scans"
        try? FileManager.default.createDirectory(atPath: cache, withIntermediateDirectories: true)
        for (index, layer) in layers.enumerated() {
            let number = parentLayerCount + index + 1
            let cached = cache + "/secrets-v1-\(layer.digest.encoded).json"
            var found: [String] = []
            if let data = FileManager.default.contents(atPath: cached), let known = try? JSONDecoder().decode([String].self, from: data) {
                found = known
            } else {
                found = try secretsIn(layer)
                let temporary = cached + ".\(UUID().uuidString)"
                if (try? JSONEncoder().encode(found).write(to: URL(fileURLWithPath: temporary))) != nil { rename(temporary, cached) }
            }
            findings += found.map { "\($0), layer \(number))" }
        }
        return findings
    }

    /// "path (kind" for each secret in one layer.
    private func secretsIn(_ layer: Descriptor) throws -> [String] {
        var found: [String] = []
        var reader = TarReader(
            source: try TarReader.fileSource(host.store.path(of: layer.digest), compressed: layer.mediaType.contains("gzip")))
        while let entry = try reader.next() {
            guard entry.kind == .file else { continue }
            if Self.credentialFiles.contains(where: { entry.path.hasSuffix($0) }), entry.size > 0 {
                found.append("/\(entry.path) (a credentials file")
            } else if entry.size > 0, entry.size <= 1 << 20 {
                var contents: [UInt8] = []
                while true {
                    let chunk = try reader.readContents()
                    if chunk.isEmpty { break }
                    contents += chunk
                }
                if let kind = Self.secret(in: contents) { found.append("/\(entry.path) (\(kind)") }
                continue
            }
            try reader.skipContents()
        }
        return found
    }

    /// SUID/SGID files in the image that were not SUID/SGID in the parent. The parent's set
    /// comes from its unpacked layers, applied in order (a whiteout removes a path).
    func setuidGrowth(_ image: [String], manifest: ImageManifest, config: ImageConfiguration) throws -> (TestCaseResult.Status, String) {
        func isSetuidFile(_ info: stat) -> Bool { info.st_mode & S_IFMT == S_IFREG && info.st_mode & 0o6000 != 0 }
        var parent = Set<String>()
        for (layer, diffID) in zip(manifest.layers, config.rootfs.diffIDs).prefix(parentLayerCount) {
            let folder = try host.layers.unpack(layer, diffID: diffID, store: host.store)
            Self.walk(folder) { path, info in
                if info.st_mode & S_IFMT == S_IFCHR, info.st_rdev == 0 {
                    parent = parent.filter { $0 != path && !$0.hasPrefix(path + "/") }
                } else if isSetuidFile(info) {
                    parent.insert(path)
                } else {
                    parent.remove(path)
                }
                return true
            }
        }
        let growth = image.filter { !parent.contains($0) }.map { "/" + $0 }
        if growth.isEmpty { return (.passed, "\(image.count) SUID/SGID file(s), none beyond the parent's \(parent.count)") }
        return (
            .failed,
            "\(growth.count) SUID/SGID file(s) beyond the parent's: \(growth.prefix(10).joined(separator: ", ")); remove the bit (chmod u-s,g-s) or the file"
        )
    }

    func secrets(_ found: [String], layers: Int) -> (TestCaseResult.Status, String) {
        if found.isEmpty { return (.passed, "no private key or cloud credential in \(layers) layer(s) the build added") }
        return (
            .failed,
            "\(found.count) secret(s) left in the image's layers: \(found.prefix(10).joined(separator: ", ")); delete them in the same step that creates them, or keep them out of the image"
        )
    }

    /// What kind of secret `contents` holds, if any.
    static func secret(in contents: [UInt8]) -> String? {
        let text = String(decoding: contents, as: UTF8.self)
        if text.contains("PRIVATE KEY-----"), text.contains("-----BEGIN") { return "a private key" }
        if text.range(of: #"(A3T[A-Z0-9]|AKIA|ASIA)[A-Z2-7]{16}"#, options: .regularExpression) != nil { return "an AWS access key id" }
        if text.range(of: #"aws_secret_access_key\s*=\s*\S"#, options: [.regularExpression, .caseInsensitive]) != nil {
            return "an AWS secret access key"
        }
        return nil
    }

    /// Pending security updates, asked of the image's own package sources in a throwaway
    /// instance with the host's network (see `PackageUpgradeQuery`); an upgrade counts as a
    /// security update when its origin names security (Debian-Security, a -security suite).
    func pendingUpdates(image: Descriptor) async -> (TestCaseResult.Status, String, ContainerInstance.Usage?) {
        let (answer, usage) = await PackageUpgradeQuery(host: host, type: type, network: network).ask(image)
        switch answer {
        case .noPackageManager(let why):
            return (.skipped, why, usage)
        case .unreachable(let why):
            return (.skipped, "the package sources could not be reached from a test instance: \(why)", usage)
        case .upgrades(let upgrades, _):
            let security = upgrades.filter(\.isSecurity)
            if security.isEmpty { return (.passed, "no security update pending (\(upgrades.count) other update(s) pending)", usage) }
            let names = security.prefix(15).map(\.description).joined(separator: ", ")
            return (
                .failed,
                "\(security.count) security update(s) pending: \(names); run the update-os component (or apt-get upgrade) in the recipe",
                usage
            )
        }
    }

    /// Walks `root` without following links; `visit` gets each path relative to root and says
    /// whether to go into a folder.
    static func walk(_ root: String, visit: (String, stat) -> Bool) {
        func walk(_ relative: String) {
            let folder = relative.isEmpty ? root : root + "/" + relative
            for name in ((try? FileManager.default.contentsOfDirectory(atPath: folder)) ?? []).sorted() {
                let path = relative.isEmpty ? name : relative + "/" + name
                var info = stat()
                guard lstat(root + "/" + path, &info) == 0 else { continue }
                if visit(path, info), info.st_mode & S_IFMT == S_IFDIR { walk(path) }
            }
        }
        walk("")
    }
}

/// `tests.json` and `junit.xml` for an image's test results.
enum TestReportWriter {
    static func write(_ results: [TestCaseResult], image: String, to folder: String) throws {
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        try encoder.encode(results).write(to: URL(fileURLWithPath: folder + "/tests.json"))
        try Data(junit(results, image: image).utf8).write(to: URL(fileURLWithPath: folder + "/junit.xml"))
    }

    static func junit(_ results: [TestCaseResult], image: String) -> String {
        func escape(_ text: String) -> String {
            text.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;").replacingOccurrences(
                of: ">", with: "&gt;"
            )
            .replacingOccurrences(of: "\"", with: "&quot;").filter { $0 == "\n" || $0 == "\t" || !($0.asciiValue.map { $0 < 32 } ?? false) }
        }
        func counts(_ results: [TestCaseResult]) -> String {
            let time = results.reduce(0) { $0 + $1.seconds }
            return
                "tests=\"\(results.count)\" failures=\"\(results.filter { $0.status == .failed }.count)\" errors=\"0\" skipped=\"\(results.filter { $0.status == .skipped }.count)\" time=\"\(String(format: "%.3f", time))\""
        }
        var xml = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"\(escape(image))\" \(counts(results))>\n"
        var suites: [String] = []
        for result in results where !suites.contains(result.suite) { suites.append(result.suite) }
        for suite in suites {
            let members = results.filter { $0.suite == suite }
            xml += "  <testsuite name=\"\(escape(suite))\" \(counts(members))>\n"
            for result in members {
                xml +=
                    "    <testcase classname=\"\(escape(suite))\" name=\"\(escape(result.name))\" time=\"\(String(format: "%.3f", result.seconds))\""
                switch result.status {
                case .passed: xml += "><system-out>\(escape(result.message))</system-out></testcase>\n"
                case .failed: xml += "><failure message=\"\(escape(result.message))\"/></testcase>\n"
                case .skipped: xml += "><skipped message=\"\(escape(result.message))\"/></testcase>\n"
                }
            }
            xml += "  </testsuite>\n"
        }
        return xml + "</testsuites>\n"
    }
}
