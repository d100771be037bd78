import Foundation
import KilnModel
import KilnOCI
import KilnRegistry
import KilnTestSupport
import Testing

@testable import KilnInstances

#if canImport(Glibc)
    import Glibc
#endif

/// The machine parent (`bootstrap:debian:bookworm:vm`) is made once in a data directory kept
/// between runs; each run assembles one disk from it and boots that.
actor MachineFixture {
    static let shared = MachineFixture()
    static let dataDirectory = "/var/tmp/kiln-machine"

    private var made: (root: String, disk: MachineDisk)?

    /// The unpacked parent tree and a 2 GiB disk assembled from it in this run.
    func disk() async throws -> (root: String, disk: MachineDisk) {
        if let made { return made }
        let store = try ContentStore(root: Self.dataDirectory + "/content")
        let transfer = ImageTransfer(store: store, registries: RegistryDirectory(logins: RegistryCredentialStore(files: [])))
        let started = ContinuousClock.now
        let parent = try await ParentImageResolver(transfer: transfer, observer: { print("parent: \($0)") })
            .resolve("bootstrap:debian:bookworm:vm")
        print("parent bootstrap:debian:bookworm:vm ready in \(MachineDisk.seconds(since: started)) s (cached after the first run)")
        let manifest = try JSONDecoder().decode(ImageManifest.self, from: store.read(parent.digest))
        let config = try JSONDecoder().decode(ImageConfiguration.self, from: store.read(manifest.config.digest))
        let folders = try LayerCache(root: Self.dataDirectory + "/layers").folders(for: manifest, config: config, store: store)
        let root = try #require(folders.first)
        #expect(folders.count == 1, "mmdebstrap gives one layer")
        // Disks of earlier runs whose process is gone.
        for name in (try? FileManager.default.contentsOfDirectory(atPath: Self.dataDirectory)) ?? [] where name.hasPrefix("run-") {
            if let pid = Int32(name.dropFirst(4)), kill(pid, 0) != 0 {
                try? FileManager.default.removeItem(atPath: Self.dataDirectory + "/" + name)
            }
        }
        let directory = Self.dataDirectory + "/run-\(getpid())"
        let disk = try await MachineDisk.assemble(
            rootFilesystem: root, volumeSizeGiB: 2, into: directory, observer: { print("disk: \($0)") })
        print("assembled a 2 GiB disk in \(String(format: "%.1f", disk.assemblySeconds)) s")
        made = (root, disk)
        return (root, disk)
    }
}

private func sha256(_ path: String) throws -> String {
    try shell("sha256sum \(path) | cut -d' ' -f1").text.trimmingCharacters(in: .whitespacesAndNewlines)
}

@Suite("Machine disks: assembled without loop devices, booted in QEMU, reached over SSH", .serialized)
struct MachineDiskTests {
    @Test(
        "A root filesystem without a kernel, larger than its volume, or whose kernel is a link or too big to boot is refused before any work"
    )
    func refusals() async throws {
        let scratch = Scratch("kiln-machine")
        defer { scratch.remove() }
        try scratch.write("tree/etc/hostname", "nokernel\n")
        let noKernel = try await #require(throws: KilnError.self) {
            try await MachineDisk.assemble(rootFilesystem: scratch.file("tree"), volumeSizeGiB: 2, into: scratch.file("out"))
        }
        #expect(noKernel.message.contains("no kernel (no /boot/vmlinuz-*)"), "\(noKernel.message)")
        #expect(noKernel.message.contains("bootstrap:debian:bookworm:vm") && noKernel.message.contains("linux-image-cloud-amd64"))
        #expect(!scratch.exists("out"), "nothing was made")

        try scratch.write("tree/boot/vmlinuz-6.1.0-1-cloud-amd64", "not really a kernel")
        let big = open(scratch.file("tree/big"), O_WRONLY | O_CREAT, 0o644)
        #expect(ftruncate(big, 2 << 30) == 0)
        close(big)
        let tooSmall = try await #require(throws: KilnError.self) {
            try await MachineDisk.assemble(rootFilesystem: scratch.file("tree"), volumeSizeGiB: 1, into: scratch.file("out"))
        }
        #expect(
            tooSmall.message.contains("more than a 1 GiB volume holds; set blockDeviceMappings volumeSize to 3 GiB"), "\(tooSmall.message)")
        #expect(!scratch.exists("out"))

        try FileManager.default.removeItem(atPath: scratch.file("tree/big"))
        let hugeKernel = open(scratch.file("tree/boot/vmlinuz-6.1.0-1-cloud-amd64"), O_WRONLY | O_TRUNC, 0o644)
        #expect(ftruncate(hugeKernel, 130 << 20) == 0)
        close(hugeKernel)
        let noRoom = try await #require(throws: KilnError.self) {
            try await MachineDisk.assemble(rootFilesystem: scratch.file("tree"), volumeSizeGiB: 2, into: scratch.file("out"))
        }
        #expect(noRoom.message.contains("take 130 MiB, more than the 128 MiB boot partition holds"), "\(noRoom.message)")

        try FileManager.default.removeItem(atPath: scratch.file("tree/boot/vmlinuz-6.1.0-1-cloud-amd64"))
        #expect(symlink("/etc/shadow", scratch.file("tree/boot/vmlinuz-6.1.0-1-cloud-amd64")) == 0)
        let linked = try await #require(throws: KilnError.self) {
            try await MachineDisk.assemble(rootFilesystem: scratch.file("tree"), volumeSizeGiB: 2, into: scratch.file("out"))
        }
        #expect(
            linked.message.contains("/boot/vmlinuz-6.1.0-1-cloud-amd64") && linked.message.contains("not a regular file"),
            "\(linked.message)")
        #expect(!scratch.exists("out"))
    }

    @Test(
        "bootstrap:debian:bookworm:vm becomes a GPT disk with a SYSLINUX boot partition and an ext4 root, generalised, the parent left as it was",
        .enabled(
            if: TestEnvironment.requiresRoot(
                "mmdebstrap", "sfdisk", "mkfs.ext4", "debugfs", "qemu-img", "blkid", "mkfs.fat", "syslinux", "mcopy", "mdir", "mtype")))
    func assembly() async throws {
        let (tree, disk) = try await MachineFixture.shared.disk()
        let table = try JSONSerialization.jsonObject(with: Data(try shell("sfdisk --json \(disk.raw)").text.utf8)) as? [String: Any]
        let partitionTable = try #require(table?["partitiontable"] as? [String: Any])
        #expect(partitionTable["label"] as? String == "gpt")
        let partitions = try #require(partitionTable["partitions"] as? [[String: Any]])
        #expect(partitions.count == 2)
        let rootEntry = try #require(partitions.first { $0["node"] as? String == disk.raw + "1" }, "the root stays partition 1")
        #expect(rootEntry["start"] as? Int == 264192 && rootEntry["name"] as? String == "root")
        #expect(rootEntry["type"] as? String == "0FC63DAF-8483-4772-8E79-3D69D8477DE4")
        let bootEntry = try #require(partitions.first { $0["node"] as? String == disk.raw + "2" }, "\(partitions)")
        #expect(bootEntry["start"] as? Int == 2048 && bootEntry["size"] as? Int == 262144 && bootEntry["name"] as? String == "kiln-boot")
        #expect(bootEntry["attrs"] as? String == "LegacyBIOSBootable")
        let probe = try shell("blkid -p -O \(MachineDisk.partitionOffset) -o export \(disk.raw)").text
        #expect(probe.contains("TYPE=ext4") && probe.contains("LABEL=kiln-root"), "\(probe)")
        let bootProbe = try shell("blkid -p -O \(MachineDisk.bootPartitionOffset) -o export \(disk.raw)").text
        #expect(bootProbe.contains("TYPE=vfat") && bootProbe.contains("LABEL=KILN-BOOT"), "\(bootProbe)")
        #expect(try shell("cmp -n 440 /usr/lib/syslinux/mbr/gptmbr.bin \(disk.raw)").status == 0, "SYSLINUX's GPT boot code is in the MBR")
        let files = try shell("MTOOLS_SKIP_CHECK=1 mdir -a -b -i '\(disk.bootPartitionImage)' ::").text
        for file in ["ldlinux.sys", "ldlinux.c32", "syslinux.cfg", "vmlinuz-\(disk.kernelRelease)", "initrd.img-\(disk.kernelRelease)"] {
            #expect(files.contains("::/\(file)"), "\(file) on the boot partition: \(files)")
        }
        let kernelOnDisk = try shell(
            "MTOOLS_SKIP_CHECK=1 mtype -i '\(disk.bootPartitionImage)' ::/vmlinuz-\(disk.kernelRelease) | sha256sum"
        ).text
        #expect(try kernelOnDisk.hasPrefix(sha256("\(tree)/boot/vmlinuz-\(disk.kernelRelease)")), "the tree's kernel, byte for byte")
        let config = try shell("MTOOLS_SKIP_CHECK=1 mtype -i '\(disk.bootPartitionImage)' ::/syslinux.cfg").text
        #expect(
            config.contains("LINUX /vmlinuz-\(disk.kernelRelease)") && config.contains("INITRD /initrd.img-\(disk.kernelRelease)"),
            "\(config)")
        #expect(config.contains("APPEND root=LABEL=kiln-root ro net.ifnames=0"), "\(config)")
        #expect(try shell("qemu-img info --output=json \(disk.qcow2)").text.contains("\"format\": \"qcow2\""))

        let ssh = try await disk.inspect("ls /etc/ssh")
        #expect(ssh.contains("sshd_config") && !ssh.contains("ssh_host_"), "\(ssh)")
        #expect(try await disk.inspect("stat /etc/machine-id").contains("Size: 0"))
        let lists = try await disk.inspect("ls /var/lib/apt/lists")
        #expect(!lists.contains("Packages") && !lists.contains("Release"), "\(lists)")
        let logs = try await disk.inspect("ls /var/log")
        #expect(!logs.contains("dpkg.log") && !logs.contains("alternatives.log"), "\(logs)")
        #expect(try await disk.inspect("cat /etc/network/interfaces").contains("iface eth0 inet dhcp"))
        #expect(try await disk.inspect("cat /etc/fstab").contains("LABEL=kiln-root"))
        #expect(try await disk.inspect("cat /etc/systemd/system/kiln-ssh-host-keys.service").contains("ssh-keygen -A"))
        #expect(try await disk.inspect("ls /boot").contains("vmlinuz-\(disk.kernelRelease)"))
        // The cached parent was copied (by hard links on one filesystem), not generalised in place.
        #expect(FileManager.default.fileExists(atPath: tree + "/etc/ssh/ssh_host_ed25519_key"))
        #expect(FileManager.default.fileExists(atPath: tree + "/var/log/wtmp"), "the parent's logs stay")
    }

    @Test(
        "The disk boots under TCG: SSH answers, systemd runs, multi-user.target is active, host keys are new, the disk is unchanged",
        .enabled(if: TestEnvironment.requiresRoot("mmdebstrap", "qemu-system-x86_64", "qemu-img", "ssh", "ssh-keygen", "debugfs")))
    func bootsAndAnswers() async throws {
        let (_, disk) = try await MachineFixture.shared.disk()
        let before = (try sha256(disk.raw), try sha256(disk.qcow2))
        let serial = (disk.raw as NSString).deletingLastPathComponent + "/serial.log"
        let options = VirtualMachineOptions(
            instanceType: try InstanceType.named("t3.micro"), sshTimeout: .seconds(300), forwardedGuestPort: 8080, serialLog: serial,
            scratchDirectory: MachineFixture.dataDirectory, accelerator: .tcg)
        let (report, bootSeconds, forwarded) = try await VirtualMachine.withBooted(disk: disk, options: options) { machine in
            let state = try await machine.run("systemctl is-system-running --wait; systemctl is-active multi-user.target")
            let keys = try await machine.run("ls /etc/ssh/ssh_host_ed25519_key.pub && cat /etc/machine-id && uname -r")
            return (state.output + keys.output, machine.bootSeconds, machine.forwardedPort)
        }
        print("boot to SSH under TCG: \(String(format: "%.1f", bootSeconds)) s")
        let lines = report.split(separator: "\n").map(String.init)
        #expect(["running", "degraded"].contains(lines.first), "\(report)")
        #expect(lines.count >= 5 && lines[1] == "active", "\(report)")
        #expect(lines.contains("/etc/ssh/ssh_host_ed25519_key.pub"), "host keys made on first boot: \(report)")
        #expect(lines.count >= 5 && lines[3].count == 32, "a new machine-id: \(report)")
        #expect(lines.last == disk.kernelRelease)
        #expect(forwarded != nil)
        #expect(bootSeconds > 0 && bootSeconds < 300)
        let log = try String(contentsOfFile: serial, encoding: .utf8)
        #expect(log.contains("Linux version \(disk.kernelRelease)") && log.contains("Command line:"), "the kernel's boot lines")
        #expect(try sha256(disk.raw) == before.0 && sha256(disk.qcow2) == before.1, "the VM wrote only to its overlay")
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: MachineFixture.dataDirectory).filter { $0.contains("kiln-vm-") }
        #expect(leftovers.isEmpty, "the overlay folder is removed: \(leftovers)")
        #expect(!loopbackAccepts(forwarded ?? 1), "QEMU is gone")
    }

    @Test(
        "The raw disk boots through its own bootloader in plain QEMU (BIOS, IDE, no -kernel): SYSLINUX loads Linux, SSH answers",
        .enabled(
            if: TestEnvironment.requiresRoot(
                "mmdebstrap", "qemu-system-x86_64", "ssh", "ssh-keygen", "sfdisk", "mkfs.ext4", "mkfs.fat", "syslinux", "mcopy")))
    func bootsThroughBootloader() async throws {
        let (parent, _) = try await MachineFixture.shared.disk()
        let work = MachineFixture.dataDirectory + "/bootloader-\(getpid())"
        try? FileManager.default.removeItem(atPath: work)
        defer { try? FileManager.default.removeItem(atPath: work) }
        // The disk is generalised and lets no one in: a copy of the parent gets a key for root first.
        let prepared = try shell(
            """
            set -e; mkdir -p \(work); cp -a --reflink=auto \(parent)/. \(work)/tree
            ssh-keygen -q -t ed25519 -N '' -f \(work)/key
            install -d -m 700 \(work)/tree/root/.ssh && install -m 600 \(work)/key.pub \(work)/tree/root/.ssh/authorized_keys
            """)
        #expect(prepared.status == 0, "\(prepared.output)")
        let disk = try await MachineDisk.assemble(rootFilesystem: work + "/tree", volumeSizeGiB: 2, into: work + "/disk")

        let accelerator = await VirtualMachineAccelerator.current(observer: { print($0) })
        let port = try VirtualMachine.freeLoopbackPort()
        let serial = work + "/serial.log"
        let qemu = Process()
        qemu.executableURL = URL(fileURLWithPath: "/usr/bin/qemu-system-x86_64")
        qemu.arguments =
            [
                "-accel", accelerator.rawValue, "-m", "1024", "-display", "none", "-no-reboot", "-serial", "file:\(serial)",
                "-drive", "file=\(disk.raw),format=raw",
                "-nic", "user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:\(port)-:22",
            ] + (accelerator == .kvm ? ["-cpu", "host"] : [])
        qemu.standardOutput = FileHandle.nullDevice
        let started = ContinuousClock.now
        try qemu.run()
        defer {
            kill(qemu.processIdentifier, SIGKILL)
            qemu.waitUntilExit()
        }

        let guest = VirtualMachine(
            sshPort: port, forwardedPort: nil, serialLog: serial, bootSeconds: 0, accelerator: accelerator, keyFile: work + "/key")
        // A bound so a broken boot ends the test, not a measurement.
        let deadline = started.advanced(by: .seconds(300))
        var answer: VirtualMachineCommandResult?
        while qemu.isRunning, ContinuousClock.now < deadline {
            if let reply = try? await guest.run("cat /proc/cmdline", timeout: .seconds(20)), reply.exitCode == 0 {
                answer = reply
                break
            }
            try await Task.sleep(for: .seconds(1))
        }
        let reply = try #require(answer, "no SSH on 127.0.0.1:\(port); the serial console ended with:\n\(VirtualMachine.tail(of: serial))")
        print(
            "boot through SYSLINUX to SSH under \(accelerator.rawValue): \(String(format: "%.1f", MachineDisk.seconds(since: started))) s")
        #expect(reply.output.contains("BOOT_IMAGE=/vmlinuz-\(disk.kernelRelease)"), "SYSLINUX started the kernel: \(reply.output)")
        #expect(reply.output.contains("root=LABEL=kiln-root"), "\(reply.output)")
        let state = try await guest.run(
            "systemctl is-system-running --wait; findmnt -no SOURCE,OPTIONS /; ls /etc/ssh/ssh_host_ed25519_key.pub; uname -r")
        let lines = state.output.split(separator: "\n").map(String.init)
        #expect(["running", "degraded"].contains(lines.first), "\(state.output)")
        #expect(lines.count == 4 && lines[1].hasPrefix("/dev/sda1 rw,"), "the root on the IDE disk, read-write: \(state.output)")
        #expect(lines.contains("/etc/ssh/ssh_host_ed25519_key.pub"), "host keys made on first boot: \(state.output)")
        #expect(lines.last == disk.kernelRelease)
        let log = try String(contentsOfFile: serial, encoding: .utf8)
        #expect(log.contains("SYSLINUX") && log.contains("Loading /vmlinuz-\(disk.kernelRelease)"), "SYSLINUX on the serial console")
        #expect(log.contains("Linux version \(disk.kernelRelease)"), "the kernel's boot lines")
    }

    @Test(
        "A disk whose root= points nowhere fails within the configured timeout, with the serial console's tail in the error",
        .enabled(if: TestEnvironment.requiresRoot("mmdebstrap", "qemu-system-x86_64", "qemu-img", "ssh", "ssh-keygen", "debugfs")))
    func failedBoot() async throws {
        let (_, disk) = try await MachineFixture.shared.disk()
        let options = VirtualMachineOptions(
            instanceType: try InstanceType.named("t3.micro"), sshTimeout: .seconds(90), rootDevice: "/dev/vdz9",
            extraKernelArguments: ["rootdelay=3"], scratchDirectory: MachineFixture.dataDirectory, accelerator: .tcg)
        let started = ContinuousClock.now
        let failure = try await #require(throws: KilnError.self) {
            try await VirtualMachine.withBooted(disk: disk, options: options) { _ in "unexpectedly booted" }
        }
        let seconds = MachineDisk.seconds(since: started)
        print("a boot with root=/dev/vdz9 failed after \(String(format: "%.1f", seconds)) s: \(failure.message.prefix(200))")
        #expect(seconds < 100)
        #expect(failure.message.contains("the serial console ended with:"), "\(failure.message)")
        #expect(failure.message.contains("/dev/vdz9"), "the tail shows why: \(failure.message)")
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: MachineFixture.dataDirectory).filter { $0.contains("kiln-vm-") }
        #expect(leftovers.isEmpty, "\(leftovers)")
    }

    @Test(
        "SSH that does not answer in time ends the boot with a timeout and the serial tail; a cancelled boot leaves no QEMU or overlay",
        .enabled(if: TestEnvironment.requiresRoot("mmdebstrap", "qemu-system-x86_64", "qemu-img", "ssh", "ssh-keygen", "debugfs")))
    func timeoutAndCancellation() async throws {
        let (_, disk) = try await MachineFixture.shared.disk()
        let scratch = MachineFixture.dataDirectory + "/stops-\(getpid())"
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let qemuRunning = {
            try shell("ps -eo args | grep -c '^qemu-system-x86_64.*\(scratch)/'").text.trimmingCharacters(in: .whitespacesAndNewlines)
                != "0"
        }

        let options = VirtualMachineOptions(
            instanceType: try InstanceType.named("t3.micro"), sshTimeout: .seconds(8), scratchDirectory: scratch, accelerator: .tcg)
        let started = ContinuousClock.now
        let timedOut = try await #require(throws: KilnError.self) {
            try await VirtualMachine.withBooted(disk: disk, options: options) { _ in "too fast" }
        }
        #expect(timedOut.code == .timedOut && MachineDisk.seconds(since: started) < 40, "\(timedOut.message)")
        #expect(timedOut.message.contains("did not answer SSH within 8 s") && timedOut.message.contains("serial console ended with:"))
        // Kernel lines carry "[   seconds.micros]" stamps, with as many spaces as the boot's progress leaves.
        #expect(
            timedOut.message.range(of: #"\[ *[0-9]+\.[0-9]{6}\]"#, options: .regularExpression) != nil,
            "the kernel's lines: \(timedOut.message)")
        #expect(try !qemuRunning() && FileManager.default.contentsOfDirectory(atPath: scratch).isEmpty)

        var patient = options
        patient.sshTimeout = .seconds(300)
        let boot = Task { try await VirtualMachine.withBooted(disk: disk, options: patient) { _ in "booted" } }
        let deadline = ContinuousClock.now.advanced(by: .seconds(30))
        while try !qemuRunning(), ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(200)) }
        #expect(try qemuRunning(), "QEMU started")
        boot.cancel()
        let result = await boot.result
        #expect(throws: (any Error).self) { try result.get() }
        #expect(try !qemuRunning(), "cancelling killed QEMU")
        #expect(try FileManager.default.contentsOfDirectory(atPath: scratch).isEmpty, "and removed its overlay")
    }

    @Test("The KVM probe answers within its bound and is asked once per process")
    func acceleratorProbe() async throws {
        let started = ContinuousClock.now
        let first = await VirtualMachineAccelerator.current(observer: { print($0) })
        #expect(MachineDisk.seconds(since: started) < 10)
        let again = ContinuousClock.now
        #expect(await VirtualMachineAccelerator.current() == first)
        #expect(MachineDisk.seconds(since: again) < 0.1)
    }
}

@Suite("The serial console's tail in boot failures")
struct SerialTailTests {
    @Test("A kernel panic whose call trace runs past the last 40 lines still names its cause")
    func panicKept() throws {
        let scratch = Scratch("kiln-serial-tail")
        defer { scratch.remove() }
        let trace = (1...60).map { "[    7.842921]  frame_\($0)+0x44/0x5c" }
        let log = try scratch.write(
            "serial.log",
            ([
                "[    7.80] Run /bin/sh as init process",
                "[    7.84] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00007f00",
            ]
                + trace).joined(separator: "\r\n") + "\r\n")
        let tail = VirtualMachine.tail(of: log)
        let lines = tail.split(separator: "\n")
        #expect(lines.first?.contains("Kernel panic - not syncing: Attempted to kill init!") == true, "\(tail)")
        #expect(lines.last == "[    7.842921]  frame_60+0x44/0x5c" && lines.count == 42, "\(tail)")
        #expect(!tail.contains("\r") && !tail.contains("Run /bin/sh"), "\(tail)")

        let short = try scratch.write("short.log", "[ 1.0] Kernel panic - not syncing: VFS: Unable to mount root fs\n[ 1.1] end\n")
        #expect(VirtualMachine.tail(of: short) == "[ 1.0] Kernel panic - not syncing: VFS: Unable to mount root fs\n[ 1.1] end")
    }
}
