#if canImport(Glibc)
import Glibc
#endif
import Foundation
import KilnModel
import KilnTOE

/// The `runc` command line, with Kiln's own state root so Kiln's containers are never mixed
/// with anyone else's.
struct Runc: Sendable {
    var binary = "/usr/bin/runc"
    var stateRoot = "/run/kiln/runc"

    func available() throws {
        guard access(binary, X_OK) == 0 else {
            throw KilnError(.notFound, "runc is not installed at \(binary); install the Debian package runc (scripts/setup does)")
        }
    }

    /// Runs a runc subcommand to completion; its output becomes the error text on failure.
    @discardableResult
    func call(_ arguments: [String], allowFailure: Bool = false) async throws -> (status: Int32, output: String) {
        let collected = OutputCollector()
        let result = try await ProcessRunner.run(
            executablePath: binary, argumentZero: "runc", arguments: ["--root", stateRoot] + arguments,
            environment: ["PATH": "/usr/sbin:/usr/bin:/sbin:/bin"], workingDirectory: nil, timeout: .seconds(120)
        ) { _, bytes in collected.append(bytes) }
        let output = collected.text
        if result.exitCode != 0, !allowFailure {
            throw KilnError(.execFailure, "runc \(arguments.prefix(2).joined(separator: " ")) failed (exit \(result.exitCode)): \(output.trimmingCharacters(in: .whitespacesAndNewlines))")
        }
        return (result.exitCode, output)
    }

    /// Starts the container in the background; process 1 is the bundle's init.
    func start(id: String, bundle: String) async throws {
        try await call(["run", "--detach", "--bundle", bundle, id])
    }

    /// Stops and removes a container; a container that is already gone is fine.
    func remove(id: String) async {
        _ = try? await call(["kill", id, "KILL"], allowFailure: true)
        _ = try? await call(["delete", "--force", id], allowFailure: true)
    }

    struct Container: Decodable {
        var id: String
        var bundle: String
        var status: String
    }

    /// The containers under Kiln's state root (shared by every Kiln data directory on the host).
    /// A listing can fail while another process deletes a container, so it is tried again.
    func list() async -> [Container] {
        for _ in 0..<3 {
            if let listed = try? await call(["list", "--format", "json"], allowFailure: true), listed.status == 0 {
                // runc prints `null` when it has no containers.
                if listed.output.trimmingCharacters(in: .whitespacesAndNewlines) == "null" { return [] }
                if let containers = try? JSONDecoder().decode([Container].self, from: Data(listed.output.utf8)) { return containers }
            }
            try? await Task.sleep(for: .milliseconds(100))
        }
        return []
    }
}

/// Bytes from several threads, kept in order.
final class OutputCollector: @unchecked Sendable {
    private let lock = NSLock()
    private var bytes: [UInt8] = []

    func append(_ chunk: [UInt8]) {
        lock.lock()
        bytes += chunk.prefix(max(0, 1 << 20 - bytes.count))
        lock.unlock()
    }

    var text: String {
        lock.lock()
        defer { lock.unlock() }
        return String(decoding: bytes, as: UTF8.self)
    }
}
