#if canImport(Glibc)
import Glibc
#endif
import Foundation
import KilnModel
import Synchronization
import Testing
@testable import KilnTOE

/// Where the tests run and what they may rely on. In CI (`CI=true`) a missing tool is a
/// failure, never a silent skip.
enum TestEnvironment {
    static var isCI: Bool { ProcessInfo.processInfo.environment["CI"] == "true" }

    static func executable(_ name: String) -> String? {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
        for directory in path.split(separator: ":") {
            let candidate = "\(directory)/\(name)"
            if access(candidate, X_OK) == 0 { return candidate }
        }
        return nil
    }

    /// For `.enabled(if:)`: run when the tool is there, and always in CI so its absence fails.
    static func requires(_ tools: String...) -> Bool {
        isCI || tools.allSatisfy { executable($0) != nil }
    }
}

/// A scratch folder under /tmp, removed by `remove()`.
struct TempDirectory {
    let path: String

    init(_ label: String = "kiln-test") throws {
        var template = Array("/tmp/\(label).XXXXXX".utf8CString)
        guard let made = mkdtemp(&template) else { throw KilnError(.ioFailure, "mkdtemp failed") }
        path = String(cString: made)
    }

    func file(_ name: String) -> String { path + "/" + name }

    func write(_ name: String, _ text: String) throws -> String {
        let target = file(name)
        try FileManager.default.createDirectory(atPath: (target as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        try text.write(toFile: target, atomically: true, encoding: .utf8)
        return target
    }

    func read(_ name: String) throws -> String { try String(contentsOfFile: file(name), encoding: .utf8) }

    func exists(_ name: String) -> Bool { FileManager.default.fileExists(atPath: file(name)) }

    func remove() { try? FileManager.default.removeItem(atPath: path) }
}

/// Collects echoed log lines so tests can assert on what a person would read.
final class LineCollector: Sendable {
    private let lines = Mutex<[String]>([])
    func append(_ line: String) { lines.withLock { $0.append(line) } }
    var all: [String] { lines.withLock { $0 } }
    var text: String { all.joined(separator: "\n") }
}

struct RunResult {
    var outcome: TOERunOutcome
    var console: LineCollector

    var report: RunReport { outcome.report }
    var steps: [StepReport] { report.documents.flatMap { $0.phases.flatMap(\.steps) } }

    func step(_ name: String) -> StepReport? { steps.first { $0.name == name } }

    func outputs(_ name: String) -> [String: String] {
        guard let json = step(name)?.outputs, let data = json.data(using: .utf8),
              let array = try? JSONSerialization.jsonObject(with: data) as? [[String: String]] else { return [:] }
        return array.first ?? [:]
    }
}

extension TOEOptions {
    static var forTests: TOEOptions {
        var options = TOEOptions()
        options.downloadRetryDelay = .milliseconds(50)
        return options
    }
}

/// Parses `yaml` and runs it on the local host.
func runDocument(
    _ yaml: String, source: String = "test.yaml", phases: [String]? = nil, parameters: [String: String] = [:],
    options: TOEOptions = .forTests, resume: TOEResumeState? = nil, logFolder: String? = nil
) async throws -> RunResult {
    let document = try ComponentDocumentParser().parse(text: yaml, source: source)
    let console = LineCollector()
    let log = try TOELogWriter(folder: logFolder, echo: { console.append($0) })
    let runner = TOERunner(session: LocalHostSession(), options: options)
    let request = TOERunRequest(documents: [TOEDocumentRun(document: document, parameters: parameters)], phases: phases)
    let outcome = await runner.run(request, log: log, resume: resume)
    return RunResult(outcome: outcome, console: console)
}

/// A port nobody listens on right now.
func freePort() throws -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    address.sin_port = 0
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafeMutablePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { pointer -> Int32 in
            guard bind(fd, pointer, length) == 0 else { return -1 }
            return getsockname(fd, pointer, &length)
        }
    }
    guard bound == 0 else { throw KilnError(.ioFailure, "cannot find a free port") }
    return Int(UInt16(bigEndian: address.sin_port))
}

func portAcceptsConnections(_ port: Int) -> Bool {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    address.sin_port = in_port_t(UInt16(port).bigEndian)
    return withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
    }
}

/// A real server on loopback (python's http.server, moto_server), stopped by `stop()`.
final class LoopbackServer: Sendable {
    let port: Int
    private let process: Process

    init(executable: String, arguments: (Int) -> [String], directory: String? = nil, environment: [String: String] = [:]) throws {
        guard let path = TestEnvironment.executable(executable) else {
            throw KilnError(.notFound, "\(executable) is not installed; run scripts/setup")
        }
        let port = try freePort()
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
        while !portAcceptsConnections(port) {
            guard process.isRunning, Date() < deadline else {
                kill(process.processIdentifier, SIGKILL)
                throw KilnError(.ioFailure, "\(executable) did not start listening on port \(port)")
            }
            usleep(50_000)
        }
    }

    var url: String { "http://127.0.0.1:\(port)" }

    /// SIGKILL: the test runner's children may inherit an ignored SIGTERM.
    func stop() {
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }
}

/// Runs a host command and returns its stdout (for checking results with real tools).
@discardableResult
func shell(_ command: String, environment: [String: String] = [:]) throws -> (status: Int32, output: String) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/bin/bash")
    process.arguments = ["-c", command]
    process.environment = ProcessInfo.processInfo.environment.merging(environment) { _, new in new }
    let pipe = Pipe()
    process.standardOutput = pipe
    process.standardError = pipe
    try process.run()
    let data = pipe.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return (process.terminationStatus, String(decoding: data, as: UTF8.self))
}
