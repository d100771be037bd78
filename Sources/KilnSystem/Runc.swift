import Foundation
import KilnModel

#if canImport(Glibc)
    import Glibc
#endif

/// The `runc` command line, with Kiln's own state root so Kiln's containers are never mixed
/// with anyone else's.
public struct Runc: Sendable {
    public var binary = "/usr/bin/runc"
    public var stateRoot = "/run/kiln/runc"

    public init() {}

    public func available() throws {
        guard access(binary, X_OK) == 0 else {
            throw KilnError(.notFound, "runc is not installed at \(binary); install the Debian package runc (scripts/setup does)")
        }
    }

    /// Runs a runc subcommand to completion; its output becomes the error text on failure.
    @discardableResult
    public func call(_ arguments: [String], allowFailure: Bool = false, timeout: Duration = .seconds(120)) async throws -> (
        status: Int32, output: String
    ) {
        // `runc list` is JSON that must come back whole; others are short.
        let collected = OutputCollector(headLimit: 64 << 20)
        let result = try await ProcessRunner.run(
            executablePath: binary, argumentZero: "runc", arguments: ["--root", stateRoot] + arguments,
            environment: ["PATH": "/usr/sbin:/usr/bin:/sbin:/bin"], workingDirectory: nil, timeout: timeout
        ) { _, bytes in collected.append(bytes) }
        let output = collected.text
        if result.timedOut {
            throw KilnError(
                .timedOut,
                "runc \(arguments.prefix(2).joined(separator: " ")) did not finish within \(timeout) and was stopped; something in the image blocks it (a FIFO where runc reads a file?)"
            )
        }
        if result.exitCode != 0, !allowFailure {
            throw KilnError(
                .execFailure,
                "runc \(arguments.prefix(2).joined(separator: " ")) failed (exit \(result.exitCode)): \(output.trimmingCharacters(in: .whitespacesAndNewlines))"
            )
        }
        return (result.exitCode, output)
    }

    /// Starts the container in the background; process 1 is the bundle's init.
    public func start(id: String, bundle: String) async throws {
        // Starting takes well under a second; a short bound keeps a hostile root from holding Kiln.
        try await call(["run", "--detach", "--bundle", bundle, id], timeout: .seconds(30))
    }

    /// Stops and removes a container; a container that is already gone is fine.
    public func remove(id: String) async {
        _ = try? await call(["kill", id, "KILL"], allowFailure: true)
        _ = try? await call(["delete", "--force", id], allowFailure: true)
    }

    public struct Container: Decodable, Sendable {
        public var id: String
        public var bundle: String
        public var status: String
    }

    /// The containers under Kiln's state root (shared by every Kiln data directory on the host).
    /// A listing can fail while another process deletes a container, so it is tried again.
    public func list() async -> [Container] {
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

    /// What `runc exec` runs: a command in a running container, through its init (`/.kiln/init
    /// run`) so the command gets its own process group, whose id goes to `pidFile`.
    public struct Exec: Sendable {
        public var containerID: String
        public var pidFile: String
        public var user: (uid: UInt32, gid: UInt32)
        public var workingDirectory: String
        public var environment: [String: String]
        public var command: [String]

        public init(
            containerID: String, pidFile: String, user: (uid: UInt32, gid: UInt32), workingDirectory: String, environment: [String: String],
            command: [String]
        ) {
            self.containerID = containerID
            self.pidFile = pidFile
            self.user = user
            self.workingDirectory = workingDirectory
            self.environment = environment
            self.command = command
        }
    }

    /// Runs `exec` to completion, streaming its output; the command's own exit status comes back.
    public func exec(_ exec: Exec, output: @escaping @Sendable (ExecOutputStream, [UInt8]) -> Void) async throws -> ExecResult {
        var arguments = [
            // --ignore-paused: an exec that starts while Kiln has the instance frozen for file
            // work waits for the thaw instead of failing.
            "--root", stateRoot, "exec", "--ignore-paused", "--pid-file", exec.pidFile, "--user", "\(exec.user.uid):\(exec.user.gid)",
            "--cwd",
            exec.workingDirectory,
        ]
        for (name, value) in exec.environment.sorted(by: { $0.key < $1.key }) { arguments += ["--env", "\(name)=\(value)"] }
        arguments += [exec.containerID, "/.kiln/init", "run"] + exec.command
        return try await ProcessRunner.run(
            executablePath: binary, argumentZero: "runc", arguments: arguments,
            environment: ["PATH": "/usr/sbin:/usr/bin:/sbin:/bin"], workingDirectory: nil, timeout: nil, output: output
        )
    }

    /// The command line of an interactive shell in a running container (`kiln instance shell`).
    public func shellCommand(id: String, terminal: Bool, shell: String) -> [String] {
        [binary, "--root", stateRoot, "exec"] + (terminal ? ["--tty"] : []) + [id, shell]
    }
}
