import Foundation
import KilnModel
import KilnSystem
import KilnTOE
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// `InstanceSession` for a test VM, over SSH with the OpenSSH client. Every program and file
/// action is one `ssh` call running a short POSIX shell script in the guest, with the paths
/// passed as quoted arguments, never spliced into the script. The OpenSSH client rather than
/// swift-nio-ssh: it is what users debug their own machines with, it needs no new dependency,
/// and its exit statuses, timeouts and key handling are the ones they know.
///
/// The guest is the machine under test, so paths are its own: a symlink in the guest leads to
/// another guest file, never to the host. Reboots are not supported in a test VM (QEMU runs
/// with `-no-reboot` so a kernel panic ends the boot at once).
public struct VirtualMachineSession: InstanceSession {
    public let machine: VirtualMachine
    /// Host folder for the files written to or read from the guest on their way.
    let scratch: String

    public init(machine: VirtualMachine, scratch: String) {
        self.machine = machine
        self.scratch = scratch
    }

    public var displayName: String { "VM on 127.0.0.1:\(machine.sshPort)" }

    /// One word for the guest's shell.
    static func quote(_ text: String) -> String { "'" + text.replacingOccurrences(of: "'", with: "'\\''") + "'" }

    /// Runs `script` with `sh -c` in the guest, `arguments` as $1…; stdin from `input` (a host file).
    func shell(
        _ script: String, _ arguments: [String] = [], input: String? = nil, timeout: Duration? = .seconds(300),
        output: @escaping @Sendable (ExecOutputStream, [UInt8]) -> Void
    ) async throws -> ExecResult {
        let remote = (["sh", "-c", script, "kiln"] + arguments).map(Self.quote).joined(separator: " ")
        let result = try await ProcessRunner.run(
            executablePath: DiskTool.ssh.path, argumentZero: "ssh",
            arguments: machine.sshArguments + [remote],
            environment: ["PATH": "/usr/bin:/bin"], workingDirectory: nil, timeout: timeout, standardInput: input, output: output)
        if result.exitCode == 255 {
            throw KilnError(
                .execFailure, "the SSH connection to the \(displayName) failed or was lost; see the VM's serial log \(machine.serialLog)")
        }
        return result
    }

    /// A file action: its standard output, or an error naming the action and the guest's words.
    @discardableResult
    func fileAction(_ what: String, _ script: String, _ arguments: [String], input: String? = nil) async throws -> [UInt8] {
        let stdout = Mutex<[UInt8]>([])
        let errors = OutputCollector(headLimit: 0, tailLimit: 2048)
        let result = try await shell(script, arguments, input: input) { stream, bytes in
            if stream == .stdout { stdout.withLock { $0 += bytes } } else { errors.append(bytes) }
        }
        guard result.exitCode == 0, !result.timedOut else {
            let said = errors.text.trimmingCharacters(in: .whitespacesAndNewlines)
            throw KilnError(
                result.exitCode == 3 ? .notFound : .ioFailure,
                "cannot \(what) in the \(displayName)\(said.isEmpty ? " (exit \(result.exitCode))" : ": " + said)")
        }
        return stdout.withLock { $0 }
    }

    public func exec(_ request: ExecRequest, output: @escaping @Sendable (ExecOutputStream, [UInt8]) -> Void) async throws -> ExecResult {
        // $1 working folder (may be empty), $2 user (may be empty), $3 seconds (0: none), then env pairs count, pairs, argv.
        let script = """
            dir=$1 user=$2 seconds=$3 count=$4; shift 4
            if [ -n "$dir" ]; then cd -- "$dir" || exit 127; fi
            i=0; while [ "$i" -lt "$count" ]; do export "$1"; shift; i=$((i + 1)); done
            if [ -n "$user" ]; then
                u=${user%%:*}; g=; case $user in *:*) g=${user#*:} ;; esac
                set -- runuser -u "$u" ${g:+-g "$g"} -- "$@"
            fi
            if [ "$seconds" -gt 0 ]; then exec timeout -s KILL "$seconds" "$@"; fi
            exec "$@"
            """
        let seconds = request.timeout.map { max(1, Int(($0.components.seconds))) } ?? 0
        let pairs = request.environment.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }
        let arguments =
            [request.workingDirectory ?? "", request.user ?? "", String(seconds), String(pairs.count)] + pairs
            + [request.executable] + request.arguments
        let started = ContinuousClock.now
        let result = try await shell(
            script, arguments, timeout: request.timeout.map { $0 + .seconds(30) }, output: output)
        let timedOut = request.timeout.map { result.exitCode == 128 + SIGKILL && ContinuousClock.now - started >= $0 } ?? false
        return ExecResult(exitCode: result.exitCode, timedOut: timedOut || result.timedOut)
    }

    public func canonicalPath(_ path: String) async throws -> String {
        let bytes = try await fileAction("resolve '\(path)'", #"realpath -m -- "$1""#, [path])
        return String(decoding: bytes, as: UTF8.self).trimmingCharacters(in: .newlines)
    }

    public func makeScratchDirectory() async throws -> String {
        let bytes = try await fileAction("create a scratch folder", "mktemp -d /tmp/kiln-toe.XXXXXX", [])
        return String(decoding: bytes, as: UTF8.self).trimmingCharacters(in: .newlines)
    }

    public func fileInfo(_ path: String, followSymlinks: Bool) async throws -> InstanceFileInfo? {
        let script = """
            if [ -e "$1" ] || [ -L "$1" ]; then
                if [ "$2" = follow ]; then exec stat -L -c '%f %s %u %g' -- "$1"; else exec stat -c '%f %s %u %g' -- "$1"; fi
            fi
            echo none
            """
        let text = String(
            decoding: try await fileAction("read the status of '\(path)'", script, [path, followSymlinks ? "follow" : "link"]),
            as: UTF8.self
        ).trimmingCharacters(in: .whitespacesAndNewlines)
        if text == "none" { return nil }
        let fields = text.split(separator: " ")
        guard fields.count == 4, let raw = UInt32(fields[0], radix: 16), let size = Int64(fields[1]), let uid = UInt32(fields[2]),
            let gid = UInt32(fields[3])
        else {
            throw KilnError(.ioFailure, "cannot read the status of '\(path)' in the \(displayName): stat said '\(text)'")
        }
        let kind: InstanceFileInfo.Kind
        switch raw & 0o170000 {
        case 0o100000: kind = .file
        case 0o040000: kind = .directory
        case 0o120000: kind = .symlink
        default: kind = .other
        }
        return InstanceFileInfo(kind: kind, size: size, mode: raw & 0o7777, uid: uid, gid: gid)
    }

    public func readFile(_ path: String) async throws -> Data {
        let script = #"[ -f "$1" ] || { echo "not a regular file" >&2; exit 3; }; exec cat -- "$1""#
        return Data(try await fileAction("read '\(path)'", script, [path]))
    }

    public func writeFile(_ path: String, contents: Data, append: Bool, mode: UInt32) async throws {
        let staged = scratch + "/write-" + UUID().uuidString
        guard FileManager.default.createFile(atPath: staged, contents: contents) else {
            throw KilnError(.ioFailure, "cannot stage a file for '\(path)' in \(scratch)")
        }
        defer { unlink(staged) }
        // A new file gets the mode less the umask, as open(2) would give it.
        let script = """
            [ -e "$1" ] && new=0 || new=1
            if [ "$2" = append ]; then cat >> "$1" || exit 1; else cat > "$1" || exit 1; fi
            if [ "$new" = 1 ]; then chmod "$(printf '%o' $(( $3 & ~0$(umask) )))" -- "$1"; fi
            """
        try await fileAction("write '\(path)'", script, [path, append ? "append" : "replace", String(mode)], input: staged)
    }

    public func listDirectory(_ path: String) async throws -> [String] {
        let script = #"[ -d "$1" ] || { echo "not a folder" >&2; exit 3; }; exec find "$1/" -mindepth 1 -maxdepth 1 -printf '%f\0'"#
        let bytes = try await fileAction("list '\(path)'", script, [path])
        return bytes.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }.sorted()
    }

    public func createDirectory(_ path: String, mode: UInt32) async throws {
        try await fileAction(
            "create the folder '\(path)'", #"[ -d "$1" ] || mkdir -p -m "$2" -- "$1""#, [path, String(mode, radix: 8)])
    }

    public func remove(_ path: String, recursive: Bool) async throws {
        let script = """
            if [ "$2" = recursive ]; then exec rm -rf -- "$1"; fi
            if [ -d "$1" ] && [ ! -L "$1" ]; then exec rmdir -- "$1"; fi
            exec rm -f -- "$1"
            """
        try await fileAction("remove '\(path)'", script, [path, recursive ? "recursive" : "one"])
    }

    public func move(_ source: String, to destination: String) async throws {
        try await fileAction("move '\(source)' to '\(destination)'", #"exec mv -f -- "$1" "$2""#, [source, destination])
    }

    public func copy(_ source: String, to destination: String) async throws {
        try await fileAction("copy '\(source)' to '\(destination)'", #"exec cp -a -- "$1" "$2""#, [source, destination])
    }

    public func createSymlink(_ path: String, target: String) async throws {
        try await fileAction("create the symlink '\(path)'", #"exec ln -s -- "$2" "$1""#, [path, target])
    }

    public func setOwner(_ path: String, owner: String?, group: String?, recursive: Bool) async throws {
        guard owner != nil || group != nil else { return }
        let spec = (owner ?? "") + (group.map { ":" + $0 } ?? "")
        let script = #"if [ "$3" = recursive ]; then exec chown -h -R -- "$2" "$1"; fi; exec chown -h -- "$2" "$1""#
        try await fileAction("change the owner of '\(path)'", script, [path, spec, recursive ? "recursive" : "one"])
    }

    public func setPermissions(_ path: String, mode: UInt32, recursive: Bool) async throws {
        let script = #"if [ "$3" = recursive ]; then exec chmod -R -- "$2" "$1"; fi; [ -L "$1" ] || exec chmod -- "$2" "$1""#
        try await fileAction(
            "change the permissions of '\(path)'", script, [path, String(mode, radix: 8), recursive ? "recursive" : "one"])
    }

    public func importFile(fromHost hostPath: String, to path: String) async throws {
        let script = #"[ -d "$1" ] && { echo "a folder is there" >&2; exit 1; }; rm -f -- "$1"; umask 022; exec cat > "$1""#
        try await fileAction("place a file at '\(path)'", script, [path], input: hostPath)
        unlink(hostPath)
    }

    public func exportFile(_ path: String, toHost hostPath: String) async throws {
        let fd = open(hostPath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard fd >= 0 else {
            throw KilnError(.ioFailure, "cannot write '\(hostPath)' on the host: \(String(cString: strerror(errno)))")
        }
        let file = FileHandle(fileDescriptor: fd, closeOnDealloc: true)
        let failed = Atomic<Bool>(false)
        let errors = OutputCollector(headLimit: 0, tailLimit: 2048)
        let result = try await shell(#"[ -f "$1" ] || { echo "not a regular file" >&2; exit 3; }; exec cat -- "$1""#, [path]) {
            stream, bytes in
            if stream == .stderr {
                errors.append(bytes)
            } else if (try? file.write(contentsOf: bytes)) == nil {
                failed.store(true, ordering: .relaxed)
            }
        }
        try? file.close()
        guard result.exitCode == 0, !failed.load(ordering: .relaxed) else {
            unlink(hostPath)
            throw KilnError(
                result.exitCode == 3 ? .notFound : .ioFailure,
                "cannot copy '\(path)' out of the \(displayName): \(errors.text.trimmingCharacters(in: .whitespacesAndNewlines))")
        }
    }

    public func reboot() async throws -> RebootDisposition {
        throw KilnError(
            .unsupported,
            "a reboot in a test VM is not supported: Kiln boots it with -no-reboot so a failed boot ends at once; reboot in the build phase instead"
        )
    }
}

extension VirtualMachine {
    /// The OpenSSH client's options for this VM, up to the destination.
    var sshArguments: [String] {
        [
            "-i", keyFile, "-p", "\(sshPort)", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "BatchMode=yes", "-o", "ConnectTimeout=5", "-o", "LogLevel=ERROR", "-o", "ServerAliveInterval=10", "root@127.0.0.1",
        ]
    }
}
