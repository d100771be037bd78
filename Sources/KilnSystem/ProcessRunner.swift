import CKilnSystem
import Foundation
import KilnModel
import Synchronization

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// Spawns a program in its own process group and streams its output. A timeout or task
/// cancellation sends SIGKILL to the whole group, so a step's children die with it.
public enum ProcessRunner {
    /// How long output is still read after the program itself exited, for children that keep the pipes open.
    static let drainGrace: Duration = .seconds(1)

    public static func run(
        executablePath: String, argumentZero: String, arguments: [String], environment: [String: String],
        workingDirectory: String?, timeout: Duration?, standardInput: String? = nil,
        output: @escaping @Sendable (ExecOutputStream, [UInt8]) -> Void
    ) async throws -> ExecResult {
        let child = try spawn(
            executablePath: executablePath, argumentZero: argumentZero, arguments: arguments, environment: environment,
            workingDirectory: workingDirectory, standardInput: standardInput)
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<ExecResult, Error>) in
                let thread = Thread {
                    let result = child.pumpUntilExit(timeout: timeout, output: output)
                    continuation.resume(returning: result)
                }
                thread.name = "kiln-exec-\(child.pid)"
                thread.start()
            }
        } onCancel: {
            child.killGroup()
        }
    }

    static func spawn(
        executablePath: String, argumentZero: String, arguments: [String], environment: [String: String], workingDirectory: String?,
        standardInput: String? = nil
    ) throws -> SpawnedProcess {
        var stdoutPipe: [Int32] = [-1, -1]
        var stderrPipe: [Int32] = [-1, -1]
        guard kiln_pipe_cloexec(&stdoutPipe) == 0 else {
            throw KilnError(.execFailure, "cannot create pipes for '\(executablePath)': \(String(cString: strerror(errno)))")
        }
        guard kiln_pipe_cloexec(&stderrPipe) == 0 else {
            let message = String(cString: strerror(errno))
            close(stdoutPipe[0])
            close(stdoutPipe[1])
            throw KilnError(.execFailure, "cannot create pipes for '\(executablePath)': \(message)")
        }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        // A file as standard input for tools that read a script there (sfdisk); nothing otherwise.
        posix_spawn_file_actions_addopen(&actions, 0, standardInput ?? "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, stdoutPipe[1], 1)
        posix_spawn_file_actions_adddup2(&actions, stderrPipe[1], 2)
        // Descriptors without close-on-exec (NIO's sockets, a parent's pipes) stay out of the child.
        kiln_spawn_file_actions_addclosefrom(&actions, 3)
        if let workingDirectory {
            kiln_spawn_file_actions_addchdir(&actions, workingDirectory)
        }

        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        // A new process group (pgid = pid) so the whole tree can be killed at once, and default
        // signal handling so scripts see SIGPIPE as a shell would.
        var defaultSignals = sigset_t()
        sigemptyset(&defaultSignals)
        for signal in [SIGPIPE, SIGINT, SIGQUIT, SIGTERM, SIGCHLD] { sigaddset(&defaultSignals, signal) }
        var emptyMask = sigset_t()
        sigemptyset(&emptyMask)
        posix_spawnattr_setsigdefault(&attributes, &defaultSignals)
        posix_spawnattr_setsigmask(&attributes, &emptyMask)
        posix_spawnattr_setpgroup(&attributes, 0)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK))

        let argv = ([argumentZero] + arguments).map { strdup($0) } + [nil]
        let envp = environment.sorted { $0.key < $1.key }.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer {
            argv.forEach { free($0) }
            envp.forEach { free($0) }
        }
        var pid: pid_t = 0
        let status = posix_spawn(&pid, executablePath, &actions, &attributes, argv, envp)
        close(stdoutPipe[1])
        close(stderrPipe[1])
        guard status == 0 else {
            close(stdoutPipe[0])
            close(stderrPipe[0])
            var hint = ""
            if status == ENOENT, workingDirectory != nil { hint = " (or the working directory '\(workingDirectory!)' does not exist)" }
            throw KilnError(.execFailure, "cannot start '\(executablePath)': \(String(cString: strerror(status)))\(hint)")
        }
        return SpawnedProcess(pid: pid, stdoutFD: stdoutPipe[0], stderrFD: stderrPipe[0])
    }
}

final class SpawnedProcess: Sendable {
    let pid: pid_t
    let stdoutFD: Int32
    let stderrFD: Int32
    /// Set once the process is reaped, so a late cancellation never signals a reused pid.
    private let reaped = Mutex(false)

    init(pid: pid_t, stdoutFD: Int32, stderrFD: Int32) {
        self.pid = pid
        self.stdoutFD = stdoutFD
        self.stderrFD = stderrFD
    }

    func killGroup() {
        reaped.withLock { done in
            if !done { kill(-pid, SIGKILL) }
        }
    }

    /// Blocks the calling thread: reads both pipes until the program exits (or times out), then reaps it.
    func pumpUntilExit(timeout: Duration?, output: @Sendable (ExecOutputStream, [UInt8]) -> Void) -> ExecResult {
        let clock = ContinuousClock()
        let deadline = timeout.map { clock.now.advanced(by: $0) }
        var open: [(fd: Int32, stream: ExecOutputStream)] = [(stdoutFD, .stdout), (stderrFD, .stderr)]
        var buffer = [UInt8](repeating: 0, count: 65536)
        var exitStatus: Int32?
        var exitedAt: ContinuousClock.Instant?
        var timedOut = false

        while true {
            if exitStatus == nil {
                var status: Int32 = 0
                let waited = waitpid(pid, &status, WNOHANG)
                if waited == pid {
                    exitStatus = status
                    exitedAt = clock.now
                    reaped.withLock { $0 = true }
                } else if waited < 0 && errno != EINTR {
                    // ECHILD: someone else reaped it (SIGCHLD ignored); its status is unknown,
                    // and unknown must not read as success.
                    exitStatus = 255 << 8
                    exitedAt = clock.now
                    reaped.withLock { $0 = true }
                }
            }
            if let deadline, exitStatus == nil, clock.now >= deadline {
                timedOut = true
                killGroup()
            }
            if open.isEmpty, exitStatus != nil { break }
            if let exitedAt, clock.now - exitedAt > ProcessRunner.drainGrace { break }
            if open.isEmpty {
                usleep(10_000)
                continue
            }
            var fds = open.map { pollfd(fd: $0.fd, events: Int16(POLLIN), revents: 0) }
            let ready = poll(&fds, nfds_t(fds.count), 20)
            guard ready > 0 else { continue }
            var closed: [Int32] = []
            for (index, descriptor) in fds.enumerated() where descriptor.revents != 0 {
                let count = read(descriptor.fd, &buffer, buffer.count)
                if count > 0 {
                    output(open[index].stream, Array(buffer[0..<count]))
                } else if count == 0 || (errno != EINTR && errno != EAGAIN) {
                    closed.append(descriptor.fd)
                }
            }
            open.removeAll { closed.contains($0.fd) }
        }
        close(stdoutFD)
        close(stderrFD)
        // Killed after the leader exited: still reap it so no zombie is left.
        if exitStatus == nil {
            var status: Int32 = 0
            waitpid(pid, &status, 0)
            exitStatus = status
            reaped.withLock { $0 = true }
        }
        let status = exitStatus ?? 0
        let exitCode: Int32
        if status & 0x7f == 0 {
            exitCode = (status >> 8) & 0xff
        } else {
            exitCode = 128 + (status & 0x7f)
        }
        return ExecResult(exitCode: exitCode, timedOut: timedOut)
    }
}
