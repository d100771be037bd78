import Foundation
import KilnModel
import KilnSystem
import KilnTOE
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// `InstanceSession` for a runc container. Programs run inside it with `runc exec` (through the
/// instance's init, in their own session, so a timeout kills the whole tree). File actions work
/// on the container's root filesystem from the host, resolving every path and symlink inside it,
/// so a link to /etc/shadow reaches the container's file, never the host's. Each one runs with
/// the instance frozen, so a process left running cannot change a path between its resolution
/// and its use.
public struct ContainerSession: InstanceSession {
    let instance: ContainerInstance
    let files: LocalHostSession

    init(instance: ContainerInstance) {
        self.instance = instance
        files = LocalHostSession(root: instance.hostView, workingDirectory: instance.workingDirectory, environment: [:])
    }

    public var displayName: String { "container \(instance.id)" }

    public func exec(_ request: ExecRequest, output: @escaping @Sendable (ExecOutputStream, [UInt8]) -> Void) async throws -> ExecResult {
        let (uid, gid) = try instance.user(request.user)
        let pidFile = instance.directory + "/exec-\(UUID().uuidString).pid"
        defer { unlink(pidFile) }
        var environment = instance.environment
        environment.merge(request.environment) { _, new in new }
        let exec = Runc.Exec(
            containerID: instance.id, pidFile: pidFile, user: (uid, gid),
            workingDirectory: request.workingDirectory ?? instance.workingDirectory,
            environment: environment, command: [request.executable] + request.arguments
        )
        let oomKillsBefore = Cgroups.oomKills(path: instance.cgroupsPath)
        let timedOut = TimeoutFlag()
        let killer = request.timeout.map { timeout in
            Task {
                try await Task.sleep(for: timeout)
                timedOut.fired.store(true, ordering: .relaxed)
                Self.killGroup(pidFile: pidFile)
            }
        }
        defer { killer?.cancel() }
        let result = try await withTaskCancellationHandler {
            try await instance.runc.exec(exec, output: output)
        } onCancel: {
            Self.killGroup(pidFile: pidFile)
        }
        if result.exitCode == 128 + SIGKILL, Cgroups.oomKills(path: instance.cgroupsPath) > oomKillsBefore {
            let type = instance.options.type
            output(
                .stderr,
                Array(
                    "kiln: \(request.executable) was killed because \(displayName) ran out of memory (limit \(type.memoryMiB) MiB of instance type \(type.name)); choose a larger instance type\n"
                        .utf8))
        }
        return ExecResult(exitCode: result.exitCode, timedOut: timedOut.fired.load(ordering: .relaxed))
    }

    /// SIGKILL to the process group the init started for one exec (its pid is the group id).
    static func killGroup(pidFile: String) {
        guard let text = try? String(contentsOfFile: pidFile, encoding: .utf8),
            let pid = Int32(text.trimmingCharacters(in: .whitespacesAndNewlines)), pid > 1
        else { return }
        kill(-pid, SIGKILL)
        kill(pid, SIGKILL)
    }

    public func reboot() async throws -> RebootDisposition {
        try await instance.restart()
        return .restarted
    }

    public func canonicalPath(_ path: String) async throws -> String {
        try await instance.whileFrozen { try await files.canonicalPath(path) }
    }
    public func makeScratchDirectory() async throws -> String { try await instance.whileFrozen { try await files.makeScratchDirectory() } }
    public func fileInfo(_ path: String, followSymlinks: Bool) async throws -> InstanceFileInfo? {
        try await instance.whileFrozen { try await files.fileInfo(path, followSymlinks: followSymlinks) }
    }
    public func readFile(_ path: String) async throws -> Data { try await instance.whileFrozen { try await files.readFile(path) } }
    public func writeFile(_ path: String, contents: Data, append: Bool, mode: UInt32) async throws {
        try await instance.whileFrozen { try await files.writeFile(path, contents: contents, append: append, mode: mode) }
    }
    public func listDirectory(_ path: String) async throws -> [String] {
        try await instance.whileFrozen { try await files.listDirectory(path) }
    }
    public func createDirectory(_ path: String, mode: UInt32) async throws {
        try await instance.whileFrozen { try await files.createDirectory(path, mode: mode) }
    }
    public func remove(_ path: String, recursive: Bool) async throws {
        try await instance.whileFrozen { try await files.remove(path, recursive: recursive) }
    }
    public func move(_ source: String, to destination: String) async throws {
        try await instance.whileFrozen { try await files.move(source, to: destination) }
    }
    public func copy(_ source: String, to destination: String) async throws {
        try await instance.whileFrozen { try await files.copy(source, to: destination) }
    }
    public func createSymlink(_ path: String, target: String) async throws {
        try await instance.whileFrozen { try await files.createSymlink(path, target: target) }
    }
    public func setOwner(_ path: String, owner: String?, group: String?, recursive: Bool) async throws {
        try await instance.whileFrozen { try await files.setOwner(path, owner: owner, group: group, recursive: recursive) }
    }
    public func setPermissions(_ path: String, mode: UInt32, recursive: Bool) async throws {
        try await instance.whileFrozen { try await files.setPermissions(path, mode: mode, recursive: recursive) }
    }
    public func importFile(fromHost hostPath: String, to path: String) async throws {
        try await instance.whileFrozen { try await files.importFile(fromHost: hostPath, to: path) }
    }
    public func exportFile(_ path: String, toHost hostPath: String) async throws {
        try await instance.whileFrozen { try await files.exportFile(path, toHost: hostPath) }
    }
}

/// Set when an exec's timeout fired, read after the exec returns.
final class TimeoutFlag: Sendable {
    let fired = Atomic<Bool>(false)
}
