import Foundation
import KilnModel
import KilnSystem

/// The one seam between the TOE runner and the machine it configures. Every action goes
/// through it; paths are always paths *inside* the instance. The local host, runc containers
/// and QEMU VMs implement it, and the runner does not know which it has.
public protocol InstanceSession: Sendable {
    /// A short name for logs, such as `local host` or `container kiln-build-1`.
    var displayName: String { get }

    /// Runs a program inside the instance. `output` receives stdout and stderr as they arrive.
    /// Cancelling the calling task, or passing `timeout`, kills the program's whole process tree.
    func exec(_ request: ExecRequest, output: @escaping @Sendable (ExecOutputStream, [UInt8]) -> Void) async throws -> ExecResult

    /// The absolute path with `.`, `..` and symlinks resolved inside the instance.
    func canonicalPath(_ path: String) async throws -> String
    /// A new private folder (mode 0700, unpredictable name) for a run's scripts.
    func makeScratchDirectory() async throws -> String

    /// `nil` when nothing is at `path`.
    func fileInfo(_ path: String, followSymlinks: Bool) async throws -> InstanceFileInfo?
    func readFile(_ path: String) async throws -> Data
    /// Creates or replaces (or, with `append`, extends) a file. New files get `mode` less the umask.
    func writeFile(_ path: String, contents: Data, append: Bool, mode: UInt32) async throws
    func listDirectory(_ path: String) async throws -> [String]
    /// Creates `path` and any missing parents; an existing directory is fine.
    func createDirectory(_ path: String, mode: UInt32) async throws
    func remove(_ path: String, recursive: Bool) async throws
    func move(_ source: String, to destination: String) async throws
    /// Copies a file, or a folder recursively, keeping modes and symlinks.
    func copy(_ source: String, to destination: String) async throws
    func createSymlink(_ path: String, target: String) async throws
    /// Owner and group are names (resolved in the instance's own user database) or numeric ids.
    func setOwner(_ path: String, owner: String?, group: String?, recursive: Bool) async throws
    func setPermissions(_ path: String, mode: UInt32, recursive: Bool) async throws
    /// Moves a file that Kiln prepared on the host (a download) into the instance.
    func importFile(fromHost hostPath: String, to path: String) async throws
    /// Copies a file out of the instance to the host (for uploads).
    func exportFile(_ path: String, toHost hostPath: String) async throws
    /// Asks the instance to restart. A container or VM restarts and returns `.restarted`; the
    /// local host cannot restart under Kiln, so it returns `.deferred` and the run stops resumably.
    func reboot() async throws -> RebootDisposition
}

public struct ExecRequest: Sendable, Hashable {
    /// An absolute path in the instance, or a name looked up in the instance's PATH.
    public var executable: String
    public var arguments: [String]
    /// Added to (and overriding) the instance's default environment.
    public var environment: [String: String]
    public var workingDirectory: String?
    public var timeout: Duration?
    /// `user[:group]` inside the instance; nil runs as the instance's default user.
    public var user: String?

    public init(
        executable: String, arguments: [String] = [], environment: [String: String] = [:],
        workingDirectory: String? = nil, timeout: Duration? = nil, user: String? = nil
    ) {
        self.user = user
        self.executable = executable
        self.arguments = arguments
        self.environment = environment
        self.workingDirectory = workingDirectory
        self.timeout = timeout
    }
}

public struct InstanceFileInfo: Sendable, Hashable {
    public enum Kind: Sendable, Hashable { case file, directory, symlink, other }
    public var kind: Kind
    public var size: Int64
    /// Permission bits, including setuid/setgid/sticky.
    public var mode: UInt32
    public var uid: UInt32
    public var gid: UInt32

    public init(kind: Kind, size: Int64, mode: UInt32, uid: UInt32, gid: UInt32) {
        self.kind = kind
        self.size = size
        self.mode = mode
        self.uid = uid
        self.gid = gid
    }
}

public enum RebootDisposition: Sendable, Hashable {
    /// The instance restarted; the run goes on.
    case restarted
    /// The instance will restart outside Kiln; the run must stop and resume later.
    case deferred
}
