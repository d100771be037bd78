import Foundation
import KilnModel
import KilnSystem
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// How QEMU runs the guest's code: KVM where it answers, TCG (emulation) otherwise.
public enum VirtualMachineAccelerator: String, Sendable, Hashable {
    case kvm, tcg

    /// The answer for this process, found once: `KILN_VM_ACCELERATOR` when set, else a probe.
    private static let known = Mutex<VirtualMachineAccelerator?>(nil)

    /// How long a KVM guest may take to run a few instructions and exit. Nested KVM that exists
    /// but hangs (or crawls) takes longer and falls back to TCG.
    public static let probeBound: Duration = .seconds(2)

    public static func current(observer: (@Sendable (String) -> Void)? = nil) async -> VirtualMachineAccelerator {
        if let known = known.withLock({ $0 }) { return known }
        let chosen: VirtualMachineAccelerator
        var reason: String
        if let configured = ProcessInfo.processInfo.environment["KILN_VM_ACCELERATOR"].flatMap(Self.init(rawValue:)) {
            (chosen, reason) = (configured, "KILN_VM_ACCELERATOR=\(configured.rawValue)")
        } else {
            (chosen, reason) = await probe()
        }
        known.withLock { $0 = $0 ?? chosen }
        observer?("virtual machines use \(chosen.rawValue): \(reason)")
        return known.withLock { $0 ?? chosen }
    }

    /// Boots a one-sector guest that writes to QEMU's debug-exit port (QEMU exits with 3) under KVM.
    static func probe() async -> (VirtualMachineAccelerator, String) {
        guard access("/dev/kvm", R_OK | W_OK) == 0 else { return (.tcg, "/dev/kvm is missing or not usable") }
        guard access(DiskTool.qemu.path, X_OK) == 0 else { return (.tcg, "qemu-system-x86_64 is not installed") }
        let image = NSTemporaryDirectory() + "kiln-kvm-probe-\(getpid()).img"
        defer { unlink(image) }
        var sector = [UInt8](repeating: 0, count: 512)
        // mov al,1; out 0xf4,al; jmp $ — then the boot signature.
        sector.replaceSubrange(0..<6, with: [0xB0, 0x01, 0xE6, 0xF4, 0xEB, 0xFE])
        sector[510] = 0x55
        sector[511] = 0xAA
        guard FileManager.default.createFile(atPath: image, contents: Data(sector)) else { return (.tcg, "cannot write the probe disk") }
        let started = ContinuousClock.now
        let result = try? await ProcessRunner.run(
            executablePath: DiskTool.qemu.path, argumentZero: "qemu-system-x86_64",
            arguments: [
                "-accel", "kvm", "-machine", "pc", "-nodefaults", "-display", "none", "-no-reboot", "-m", "16",
                "-drive", "file=\(image),format=raw,if=ide", "-device", "isa-debug-exit,iobase=0xf4,iosize=4",
            ],
            environment: [:], workingDirectory: nil, timeout: probeBound
        ) { _, _ in }
        let took = String(format: "%.1f s", MachineDisk.seconds(since: started))
        guard let result, !result.timedOut else { return (.tcg, "a KVM probe guest did not finish within \(probeBound)") }
        guard result.exitCode == 3 else { return (.tcg, "a KVM probe guest ended with status \(result.exitCode) after \(took)") }
        return (.kvm, "a KVM probe guest ran in \(took)")
    }
}

/// How a test instance VM is booted.
public struct VirtualMachineOptions: Sendable {
    /// vCPUs (rounded up) and memory.
    public var instanceType: InstanceType
    /// How long the guest may take to answer SSH after QEMU starts.
    public var sshTimeout: Duration
    /// A guest TCP port also forwarded to a loopback port (a health check's web server).
    public var forwardedGuestPort: Int?
    /// The root device the kernel mounts.
    public var rootDevice: String
    public var extraKernelArguments: [String]
    /// Where the serial console is written; nil keeps it in the VM's scratch folder only.
    public var serialLog: String?
    /// Where overlays, keys and boot files are kept while the VM runs.
    public var scratchDirectory: String
    /// nil: probed once per process (`VirtualMachineAccelerator.current`).
    public var accelerator: VirtualMachineAccelerator?

    public init(
        instanceType: InstanceType, sshTimeout: Duration = .seconds(300), forwardedGuestPort: Int? = nil,
        rootDevice: String = "/dev/vda1", extraKernelArguments: [String] = [], serialLog: String? = nil,
        scratchDirectory: String = "/var/tmp", accelerator: VirtualMachineAccelerator? = nil
    ) {
        self.instanceType = instanceType
        self.sshTimeout = sshTimeout
        self.forwardedGuestPort = forwardedGuestPort
        self.rootDevice = rootDevice
        self.extraKernelArguments = extraKernelArguments
        self.serialLog = serialLog
        self.scratchDirectory = scratchDirectory
        self.accelerator = accelerator
    }
}

/// What a command run over SSH printed and how it ended.
public struct VirtualMachineCommandResult: Sendable, Hashable {
    public var exitCode: Int32
    public var output: String
    public var errorOutput: String
}

/// A QEMU VM booted from a copy-on-write overlay of a machine disk, reached over SSH with an
/// ephemeral key. It lives only inside `withBooted`, which kills QEMU (by its pid) and removes
/// the overlay on success, failure and cancellation; the disk itself is never written.
public struct VirtualMachine: Sendable {
    public let sshPort: Int
    /// The loopback port forwarded to `forwardedGuestPort`.
    public let forwardedPort: Int?
    public let serialLog: String
    /// From QEMU's start to the first SSH command that succeeded.
    public let bootSeconds: Double
    public let accelerator: VirtualMachineAccelerator
    let keyFile: String

    /// Boots `disk` and runs `body` once SSH answers. The key reaches the guest on the kernel
    /// command line: a `/bin/sh` wrapper appends it to /root/.ssh/authorized_keys in the overlay,
    /// then execs the image's own init, so neither the disk nor any image file is changed for it.
    public static func withBooted<Result: Sendable>(
        disk: MachineDisk, options: VirtualMachineOptions, observer: (@Sendable (String) -> Void)? = nil,
        _ body: @escaping @Sendable (VirtualMachine) async throws -> Result
    ) async throws -> Result {
        for tool in [DiskTool.qemu, .qemuImage, .sshKeygen, .ssh, .debugfs] { try tool.check() }
        let folder = options.scratchDirectory + "/" + ProcessOwner.temporaryName("kiln-vm-")
        do {
            try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        } catch {
            throw KilnError(.ioFailure, "cannot create the VM's scratch folder \(folder): \(error.localizedDescription)")
        }
        defer { try? FileManager.default.removeItem(atPath: folder) }

        let key = folder + "/key"
        try await DiskTool.sshKeygen.run(
            ["-q", "-t", "ed25519", "-N", "", "-C", "kiln-ephemeral", "-f", key], what: "making the VM's SSH key")
        let publicKey = try String(contentsOfFile: key + ".pub", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        let boot = try await disk.extractBootFiles(into: folder)
        let overlay = folder + "/overlay.qcow2"
        let backing = FileManager.default.fileExists(atPath: disk.qcow2) ? (disk.qcow2, "qcow2") : (disk.raw, "raw")
        try await DiskTool.qemuImage.run(
            ["create", "-q", "-f", "qcow2", "-b", backing.0, "-F", backing.1, overlay], what: "making the VM's overlay of \(backing.0)")

        let accelerator: VirtualMachineAccelerator
        if let chosen = options.accelerator { accelerator = chosen } else { accelerator = await .current(observer: observer) }
        let serialLog = options.serialLog ?? folder + "/serial.log"
        unlink(serialLog)
        let sshPort = try freeLoopbackPort()
        let forwarded = try options.forwardedGuestPort.map { ($0, try freeLoopbackPort()) }
        var forwards = "hostfwd=tcp:127.0.0.1:\(sshPort)-:22"
        if let (guest, host) = forwarded { forwards += ",hostfwd=tcp:127.0.0.1:\(host)-:\(guest)" }
        let wrapper = "umask 077; mkdir -p /root/.ssh; echo \(publicKey) >> /root/.ssh/authorized_keys; exec /sbin/init"
        let commandLine =
            (["root=\(options.rootDevice)", "rw", "net.ifnames=0", "console=ttyS0", "panic=-1"] + options.extraKernelArguments
            + ["init=/bin/sh", "--", "-c", "\"\(wrapper)\""]).joined(separator: " ")
        var arguments = [
            "-name", "kiln-test-instance", "-machine", "q35", "-accel", accelerator.rawValue,
            "-smp", "\(max(1, Int(options.instanceType.vCPUs.rounded(.up))))", "-m", "\(options.instanceType.memoryMiB)",
            "-nodefaults", "-display", "none", "-no-reboot", "-kernel", boot.kernel, "-append", commandLine,
            // The overlay is thrown away, so its writes need not reach the disk.
            "-drive", "file=\(overlay),format=qcow2,if=virtio,cache=unsafe",
            "-netdev", "user,id=net0,\(forwards)", "-device", "virtio-net-pci,netdev=net0",
            "-serial", "file:\(serialLog)",
        ]
        if accelerator == .kvm { arguments += ["-cpu", "host"] }
        if let initrd = boot.initrd { arguments += ["-initrd", initrd] }

        observer?("booting \(disk.raw) under \(accelerator.rawValue) with \(options.instanceType.name); SSH on 127.0.0.1:\(sshPort)")
        let started = ContinuousClock.now
        let qemuErrors = OutputCollector(headLimit: 0, tailLimit: 4096)
        let timeoutText = "\(options.sshTimeout.components.seconds) s"
        let qemuArguments = arguments
        return try await withThrowingTaskGroup(of: Outcome<Result>.self) { group in
            group.addTask {
                // Cancelling this task kills QEMU's process group; run returns once it is reaped.
                let ended = try await ProcessRunner.run(
                    executablePath: DiskTool.qemu.path, argumentZero: "qemu-system-x86_64", arguments: qemuArguments,
                    environment: [:], workingDirectory: folder, timeout: nil
                ) { _, bytes in qemuErrors.append(bytes) }
                return .qemuEnded(ended)
            }
            group.addTask {
                let deadline = started.advanced(by: options.sshTimeout)
                var machine = VirtualMachine(
                    sshPort: sshPort, forwardedPort: forwarded?.1, serialLog: serialLog, bootSeconds: 0, accelerator: accelerator,
                    keyFile: key)
                while true {
                    try Task.checkCancellation()
                    if let answer = try? await machine.run("true", timeout: .seconds(20)), answer.exitCode == 0 { break }
                    guard ContinuousClock.now < deadline else {
                        throw KilnError(
                            .timedOut,
                            "the VM booted from \(disk.raw) did not answer SSH within \(timeoutText) (\(accelerator.rawValue)); the serial console ended with:\n\(Self.tail(of: serialLog))"
                        )
                    }
                    try await Task.sleep(for: .seconds(1))
                }
                machine = VirtualMachine(
                    sshPort: sshPort, forwardedPort: forwarded?.1, serialLog: serialLog, bootSeconds: MachineDisk.seconds(since: started),
                    accelerator: accelerator, keyFile: key)
                observer?("SSH answered \(String(format: "%.1f", machine.bootSeconds)) s after QEMU started (\(accelerator.rawValue))")
                return .finished(try await body(machine))
            }
            defer { group.cancelAll() }
            guard let first = try await group.next() else { throw KilnError(.internalError, "the VM's tasks ended without a result") }
            switch first {
            case .finished(let result):
                return result
            case .qemuEnded(let ended):
                throw KilnError(
                    .execFailure,
                    "QEMU stopped (status \(ended.exitCode)) before the VM booted from \(disk.raw) answered SSH\(qemuErrors.text.isEmpty ? "" : ": " + qemuErrors.text.trimmingCharacters(in: .whitespacesAndNewlines)); the serial console ended with:\n\(Self.tail(of: serialLog))"
                )
            }
        }
    }

    private enum Outcome<Value: Sendable>: Sendable {
        case finished(Value)
        case qemuEnded(ExecResult)
    }

    /// Runs `command` as root in the guest with the OpenSSH client.
    public func run(_ command: String, timeout: Duration = .seconds(300)) async throws -> VirtualMachineCommandResult {
        let output = OutputCollector()
        let errors = OutputCollector()
        let result = try await ProcessRunner.run(
            executablePath: DiskTool.ssh.path, argumentZero: "ssh",
            arguments: [
                "-i", keyFile, "-p", "\(sshPort)", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "BatchMode=yes", "-o", "ConnectTimeout=5", "-o", "LogLevel=ERROR", "root@127.0.0.1", command,
            ],
            environment: ["PATH": "/usr/bin:/bin"], workingDirectory: nil, timeout: timeout
        ) { stream, bytes in
            if stream == .stdout { output.append(bytes) } else { errors.append(bytes) }
        }
        if result.timedOut {
            throw KilnError(.timedOut, "'\(command)' did not finish within \(timeout) on the VM at 127.0.0.1:\(sshPort)")
        }
        return VirtualMachineCommandResult(exitCode: result.exitCode, output: output.text, errorOutput: errors.text)
    }

    /// The serial console's last lines, without terminal colour codes.
    public static func tail(of serialLog: String, lines: Int = 40) -> String {
        guard let data = FileManager.default.contents(atPath: serialLog) else { return "(no serial output at \(serialLog))" }
        let text = String(decoding: data.suffix(64 << 10), as: UTF8.self)
            .replacingOccurrences(of: "\u{1B}\\[[0-9;]*[A-Za-z]", with: "", options: .regularExpression)
            .replacingOccurrences(of: "\r", with: "")
        let all = text.split(separator: "\n", omittingEmptySubsequences: true)
        let shown = all.suffix(lines)
        // A panic's call trace can run past the window, and QEMU may stop before the kernel
        // repeats the cause at its end: the panic line is the reason, so it is always kept.
        if let panic = all.last(where: { $0.contains("Kernel panic - not syncing") }), !shown.contains(panic) {
            return ([panic, "[…]"] + shown).joined(separator: "\n")
        }
        return shown.joined(separator: "\n")
    }

    /// A loopback port no one listens on now (the kernel's choice for port 0).
    static func freeLoopbackPort() throws -> Int {
        let probe = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard probe >= 0 else { throw KilnError(.ioFailure, "cannot open a socket: \(String(cString: strerror(errno)))") }
        defer { close(probe) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(probe, $0, length) == 0 && getsockname(probe, $0, &length) == 0 }
        }
        guard bound else { throw KilnError(.ioFailure, "cannot find a free loopback port: \(String(cString: strerror(errno)))") }
        return Int(UInt16(bigEndian: address.sin_port))
    }
}
