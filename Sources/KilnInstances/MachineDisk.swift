import Foundation
import KilnModel
import KilnOCI
import KilnSystem

#if canImport(Glibc)
    import Glibc
#endif

/// A bootable machine disk: a GPT with an ext4 root partition and a small FAT boot partition with
/// SYSLINUX, as raw and qcow2 files. Made from a root filesystem folder without loop devices or
/// mounts: `sfdisk` writes the table into the file, `mkfs.ext4 -d` and `mkfs.fat --offset` make
/// the filesystems at their offsets, and mtools (`syslinux --offset`, `mcopy -i FILE@@OFFSET`)
/// fill the FAT one.
///
/// The layout, in disk order:
/// - partition 2, `kiln-boot`, 1 MiB to 129 MiB: FAT16 labelled KILN-BOOT, GPT type XBOOTLDR
///   (a Linux boot partition) with the LegacyBIOSBootable attribute. It holds SYSLINUX
///   (`ldlinux.sys`, `ldlinux.c32`), `syslinux.cfg`, and the kernel and initramfs copied from the
///   tree's /boot (the newest `vmlinuz-*`).
/// - partition 1, `root`, 129 MiB to the end: ext4 labelled kiln-root. It stays partition 1, so
///   the root is /dev/vda1 (or /dev/sda1) as before and `VirtualMachine`'s direct kernel boot
///   is unchanged; being last, it can grow into a larger volume.
/// - the first 440 bytes: SYSLINUX's `gptmbr.bin`, which BIOS runs and which chains to the
///   partition marked LegacyBIOSBootable.
///
/// Why SYSLINUX: its installer writes an unmounted FAT filesystem through mtools at a byte offset
/// in the disk file, so nothing is mounted and no loop device is needed. Booting ext4 directly
/// would take EXTLINUX, whose installer needs the filesystem mounted; GRUB's i386-pc core image
/// would have to be embedded in a BIOS boot partition by hand, with its block lists patched.
///
/// What this gives and what it does not:
/// - `qemu-system-x86_64 -drive file=disk.raw,format=raw -nic user,model=virtio-net-pci` boots
///   it through SeaBIOS. The Debian cloud kernel has ata_piix (the default machine's IDE disk,
///   in the initramfs) and virtio, but no e1000 (the default NIC) and no AHCI (q35's disk).
/// - BIOS only: there is no UEFI loader on the boot partition.
/// - The guest does not mount the boot partition, so a kernel or initramfs updated inside the
///   guest later is not copied there: the disk keeps booting the kernel it was assembled with,
///   and once that kernel's package (and /lib/modules) is removed it cannot load modules.
///   Assemble the disk again after a kernel upgrade. Kiln's own test boots read /boot from the
///   root partition and always take the newest kernel.
public struct MachineDisk: Sendable, Hashable {
    /// The root partition's filesystem label; the machine parent's fstab names it.
    public static let rootLabel = "kiln-root"
    /// The boot partition's FAT label (11 characters at most).
    public static let bootLabel = "KILN-BOOT"
    /// The boot partition starts at 1 MiB, as partitioning tools align it.
    public static let bootPartitionOffset: Int64 = 1 << 20
    /// Room for a kernel and initramfs (about 30 MB for bookworm's cloud kernel) and SYSLINUX.
    public static let bootPartitionBytes: Int64 = 128 << 20
    /// The root partition's offset: right after the boot partition.
    public static let partitionOffset: Int64 = bootPartitionOffset + bootPartitionBytes
    /// The partition numbers in the GPT: the root stays the first.
    public static let rootPartitionNumber = 1
    public static let bootPartitionNumber = 2
    /// What Kiln passes to the kernel besides the root device and the console.
    public static let kernelCommandLine = "root=LABEL=\(rootLabel) net.ifnames=0 console=ttyS0"
    /// SYSLINUX's MBR boot code for GPT disks (Debian's syslinux-common).
    static let gptBootCode = "/usr/lib/syslinux/mbr/gptmbr.bin"

    public var raw: String
    public var qcow2: String
    /// The kernel release found in the tree's /boot (`vmlinuz-RELEASE`).
    public var kernelRelease: String
    public var sizeBytes: Int64
    /// Seconds spent copying, generalising, partitioning, making the filesystem and converting.
    public var assemblySeconds: Double

    public init(raw: String, qcow2: String, kernelRelease: String, sizeBytes: Int64, assemblySeconds: Double = 0) {
        self.raw = raw
        self.qcow2 = qcow2
        self.kernelRelease = kernelRelease
        self.sizeBytes = sizeBytes
        self.assemblySeconds = assemblySeconds
    }

    /// The root partition as debugfs and blkid open it: the raw file at the partition's offset.
    public var partitionDevice: String { "\(raw)?offset=\(Self.partitionOffset)" }

    /// The boot partition as mtools opens it (`mdir -i`, `mtype -i`).
    public var bootPartitionImage: String { "\(raw)@@\(Self.bootPartitionOffset)" }

    /// Makes `name.raw` and `name.qcow2` in `directory` from `rootFilesystem`, which is left as it
    /// was: a copy is generalised (no SSH host keys, an empty machine-id, no logs or apt lists, host
    /// keys made on first boot). `volumeSizeGiB` is the disk's size, as blockDeviceMappings'
    /// volumeSize; one smaller than the tree is refused before any work. `scratchTree`: the
    /// folder is a throwaway view (an overlay's upper takes the changes, as `ImageRootView`'s
    /// does), so it is generalised where it is, without a copy.
    public static func assemble(
        rootFilesystem: String, volumeSizeGiB: Int, into directory: String, name: String = "disk", scratchTree: Bool = false,
        observer: (@Sendable (String) -> Void)? = nil
    ) async throws -> MachineDisk {
        let started = ContinuousClock.now
        let release = try kernelRelease(in: rootFilesystem)
        _ = try bootFiles(in: rootFilesystem, release: release)
        for tool in [DiskTool.copy, .sfdisk, .mkfs, .mkfsFat, .syslinux, .mcopy, .qemuImage] { try tool.check() }
        let bootCode = try readBootCode()
        guard volumeSizeGiB > 0 else {
            throw KilnError(.invalidArgument, "the root volume size must be at least 1 GiB; set blockDeviceMappings volumeSize")
        }
        let sizeBytes = Int64(volumeSizeGiB) << 30
        let needed = try requiredBytes(for: rootFilesystem)
        // The backup GPT takes the disk's last sectors: the root partition ends 1 MiB before the end.
        let partitionBytes = sizeBytes - partitionOffset - (1 << 20)
        guard needed <= partitionBytes else {
            let gib = (needed + partitionOffset + (1 << 20) + (1 << 30) - 1) >> 30
            throw KilnError(
                .invalidArgument,
                "the root filesystem at \(rootFilesystem) needs about \(needed >> 20) MiB, more than a \(volumeSizeGiB) GiB volume holds; set blockDeviceMappings volumeSize to \(gib) GiB or more"
            )
        }
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        } catch {
            throw KilnError(.ioFailure, "cannot create the disk folder \(directory): \(error.localizedDescription)")
        }
        let tree = scratchTree ? rootFilesystem : directory + "/.\(name)-tree-\(UUID().uuidString)"
        let table = directory + "/.\(name)-gpt-\(UUID().uuidString)"
        let bootConfig = directory + "/.\(name)-syslinux-\(UUID().uuidString)"
        defer {
            if !scratchTree { try? FileManager.default.removeItem(atPath: tree) }
            unlink(table)
            unlink(bootConfig)
        }
        // On one filesystem the copy is hard links (`cp -al`): no file data is copied, and the
        // caller's tree stays as it was because generalising only unlinks and creates names, never
        // writing into a file. Elsewhere it is a full copy.
        if scratchTree {
            observer?("generalising \(rootFilesystem) in place (a throwaway view)")
        } else {
            var source = stat()
            var target = stat()
            let linked = stat(rootFilesystem, &source) == 0 && stat(directory, &target) == 0 && source.st_dev == target.st_dev
            observer?("copying \(rootFilesystem) to generalise it (\(linked ? "hard links" : "a full copy"))")
            try await DiskTool.copy.run(
                ["-a", linked ? "--link" : "--reflink=auto", rootFilesystem + "/.", tree], what: "copying the root filesystem")
        }
        try generalise(tree)
        // From the copy, which no one else changes, not from the caller's folder.
        let bootFiles = try self.bootFiles(in: tree, release: release)

        let raw = "\(directory)/\(name).raw"
        let qcow2 = "\(directory)/\(name).qcow2"
        unlink(raw)
        unlink(qcow2)
        let fd = Glibc.open(raw, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
        defer { if fd >= 0 { close(fd) } }
        // Sparse: only what mkfs writes takes space.
        guard fd >= 0, ftruncate(fd, off_t(sizeBytes)) == 0 else {
            throw KilnError(.ioFailure, "cannot make the \(volumeSizeGiB) GiB disk file \(raw): \(String(cString: strerror(errno)))")
        }
        // Partition 1 is the root, partition 2 the boot partition before it on the disk. The root's
        // PARTUUID is chosen here so a tree without an initramfs can still name it to the kernel.
        let rootUUID = UUID().uuidString
        let script = """
            label: gpt
            start=\(partitionOffset / 512), size=\(partitionBytes / 512), type=\(PartitionType.linuxFilesystem), uuid=\(rootUUID), name="root"
            start=\(bootPartitionOffset / 512), size=\(bootPartitionBytes / 512), type=\(PartitionType.linuxBoot), name="kiln-boot", attrs="LegacyBIOSBootable"

            """
        try script.write(toFile: table, atomically: false, encoding: .utf8)
        observer?("writing a GPT with a \(bootPartitionBytes >> 20) MiB boot and a \(partitionBytes >> 20) MiB root partition into \(raw)")
        try await DiskTool.sfdisk.run(
            ["--quiet", "--no-reread", "--no-tell-kernel", raw], what: "writing the partition table", input: table)
        guard pwrite(fd, bootCode, bootCode.count, 0) == bootCode.count else {
            throw KilnError(.ioFailure, "cannot write the boot code into \(raw): \(String(cString: strerror(errno)))")
        }
        observer?("making the ext4 root filesystem from the generalised tree")
        try await DiskTool.mkfs.run(
            [
                "-q", "-F", "-t", "ext4", "-L", rootLabel, "-d", tree, "-E", "offset=\(partitionOffset),nodiscard", raw,
                "\(partitionBytes / 1024)k",
            ],
            what: "making the root filesystem")

        observer?("installing SYSLINUX and Linux \(release) in the FAT boot partition")
        // Hidden sectors: the FAT boot sector's own offset on the disk, which its loader reads.
        try await DiskTool.mkfsFat.run(
            [
                "-F", "16", "-n", bootLabel, "-h", "\(bootPartitionOffset / 512)", "--offset", "\(bootPartitionOffset / 512)", raw,
                "\(bootPartitionBytes / 1024)",
            ],
            what: "making the FAT boot filesystem")
        try await DiskTool.syslinux.run(["--install", "--offset", "\(bootPartitionOffset)", raw], what: "installing SYSLINUX")
        let root = bootFiles.initrd == nil ? "root=PARTUUID=\(rootUUID)" : "root=LABEL=\(rootLabel)"
        try syslinuxConfiguration(release: release, root: root, initrd: bootFiles.initrd != nil)
            .write(toFile: bootConfig, atomically: false, encoding: .utf8)
        let image = "\(raw)@@\(bootPartitionOffset)"
        // MTOOLS_SKIP_CHECK: mkfs.fat's geometry for a partition inside a file is not a floppy's.
        let mtools = ["MTOOLS_SKIP_CHECK": "1"]
        try await DiskTool.mcopy.run(
            ["-o", "-i", image, bootConfig, "::/syslinux.cfg"], what: "copying syslinux.cfg to the boot partition", environment: mtools)
        try await DiskTool.mcopy.run(
            ["-o", "-i", image, bootFiles.kernel, "::/vmlinuz-\(release)"], what: "copying the kernel to the boot partition",
            environment: mtools)
        if let initrd = bootFiles.initrd {
            try await DiskTool.mcopy.run(
                ["-o", "-i", image, initrd, "::/initrd.img-\(release)"], what: "copying the initramfs to the boot partition",
                environment: mtools)
        }
        observer?("converting \(raw) to qcow2")
        try await DiskTool.qemuImage.run(["convert", "-f", "raw", "-O", "qcow2", raw, qcow2], what: "converting the disk to qcow2")
        let seconds = Self.seconds(since: started)
        observer?("assembled \(raw) and \(qcow2) in \(String(format: "%.1f", seconds)) s")
        return MachineDisk(raw: raw, qcow2: qcow2, kernelRelease: release, sizeBytes: sizeBytes, assemblySeconds: seconds)
    }

    /// GPT partition type GUIDs.
    enum PartitionType {
        static let linuxFilesystem = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
        /// XBOOTLDR: a boot partition shared by boot loaders, holding kernels.
        static let linuxBoot = "BC13C2FF-59E6-4262-A352-B275FD779F17"
    }

    /// Boots at once, on the serial port and the screen alike. `ro`: the initramfs mounts the root
    /// read-only so systemd can check it, then remounts it as fstab says.
    static func syslinuxConfiguration(release: String, root: String, initrd: Bool) -> String {
        """
        SERIAL 0 115200
        DEFAULT kiln
        PROMPT 0
        TIMEOUT 0
        LABEL kiln
          LINUX /vmlinuz-\(release)
        \(initrd ? "  INITRD /initrd.img-\(release)\n" : "")  APPEND \(root) ro net.ifnames=0 console=tty0 console=ttyS0

        """
    }

    /// The kernel and initramfs in the tree's /boot, as regular files (never through a link, so
    /// an untrusted tree cannot have a host file copied), and checked to fit the boot partition.
    static func bootFiles(in rootFilesystem: String, release: String) throws -> (kernel: String, initrd: String?) {
        let tree = RootedTree(root: rootFilesystem)
        guard let kernel = tree.regularFile("boot/vmlinuz-\(release)") else {
            throw KilnError(
                .invalidArgument,
                "the kernel /boot/vmlinuz-\(release) in \(rootFilesystem) is not a regular file (a link or a folder?); install the kernel package so /boot holds the file itself"
            )
        }
        let initrd = tree.regularFile("boot/initrd.img-\(release)")
        var info = stat()
        var bytes: Int64 = 0
        for file in [kernel, initrd].compactMap({ $0 }) where stat(file, &info) == 0 { bytes += Int64(info.st_size) }
        // SYSLINUX, the configuration and FAT16's tables take under 4 MiB.
        guard bytes + (4 << 20) <= bootPartitionBytes else {
            throw KilnError(
                .invalidArgument,
                "the kernel and initramfs of \(release) in \(rootFilesystem) take \(bytes >> 20) MiB, more than the \(bootPartitionBytes >> 20) MiB boot partition holds; make the initramfs smaller (MODULES=dep in /etc/initramfs-tools/initramfs.conf)"
            )
        }
        return (kernel, initrd)
    }

    /// SYSLINUX's 440-byte GPT boot code, which goes before the partition table.
    static func readBootCode() throws -> [UInt8] {
        guard let data = FileManager.default.contents(atPath: gptBootCode) else {
            throw KilnError(
                .notFound, "\(gptBootCode) is not installed; install the Debian package syslinux-common (scripts/setup does)")
        }
        guard data.count == 440 else {
            throw KilnError(
                .invalidArgument, "\(gptBootCode) has \(data.count) bytes, not the 440 of an MBR's boot code; reinstall syslinux-common")
        }
        return [UInt8](data)
    }

    static func seconds(since start: ContinuousClock.Instant) -> Double {
        let elapsed = (ContinuousClock.now - start).components
        return Double(elapsed.seconds) + Double(elapsed.attoseconds) / 1e18
    }

    /// The newest `vmlinuz-RELEASE` in the tree's /boot, with a message that says how to get one.
    public static func kernelRelease(in rootFilesystem: String) throws -> String {
        let boot = rootFilesystem + "/boot"
        let names = (try? FileManager.default.contentsOfDirectory(atPath: boot)) ?? []
        guard let newest = newestRelease(among: names) else {
            throw KilnError(
                .invalidArgument,
                "the root filesystem at \(rootFilesystem) has no kernel (no /boot/vmlinuz-*), so its disk could not boot; build from bootstrap:debian:bookworm:vm, or install linux-image-cloud-amd64 (Debian) in a component first"
            )
        }
        return newest
    }

    /// The newest release among `vmlinuz-RELEASE` file names, compared as numbers (6.1.0-10 > 6.1.0-9).
    static func newestRelease(among names: [String]) -> String? {
        names.filter { $0.hasPrefix("vmlinuz-") }.map { String($0.dropFirst("vmlinuz-".count)) }
            .max(by: { $0.compare($1, options: .numeric) == .orderedAscending })
    }

    /// A disk assembled earlier, from its raw file: the kernel release is the newest `vmlinuz-*`
    /// in the root partition's /boot, and `NAME.qcow2` next to `NAME.raw` is used when present.
    public static func open(raw: String) async throws -> MachineDisk {
        var info = stat()
        guard stat(raw, &info) == 0, (info.st_mode & S_IFMT) == S_IFREG else {
            throw KilnError(.notFound, "there is no disk file at \(raw); give the .raw file a MachineDisk assembly made")
        }
        let qcow2 = (raw.hasSuffix(".raw") ? String(raw.dropLast(4)) : raw) + ".qcow2"
        let unopened = MachineDisk(raw: raw, qcow2: qcow2, kernelRelease: "", sizeBytes: Int64(info.st_size))
        // debugfs's parsable listing: /inode/mode/uid/gid/name/size/ per entry.
        let names = try await unopened.inspect("ls -p /boot").split(separator: "\n").compactMap { line in
            let fields = line.split(separator: "/", omittingEmptySubsequences: false)
            return fields.count >= 6 ? String(fields[5]) : nil
        }
        guard let release = newestRelease(among: names) else {
            throw KilnError(
                .invalidArgument,
                "the root partition of \(raw) (at byte \(partitionOffset)) has no /boot/vmlinuz-*; assemble the disk again from a tree with a kernel"
            )
        }
        return MachineDisk(raw: raw, qcow2: qcow2, kernelRelease: release, sizeBytes: Int64(info.st_size))
    }

    /// Bytes the tree takes as files (hard links once), plus room for ext4's inodes and journal.
    static func requiredBytes(for rootFilesystem: String) throws -> Int64 {
        guard let walker = FileManager.default.enumerator(atPath: rootFilesystem) else {
            throw KilnError(.notFound, "cannot read the root filesystem at \(rootFilesystem)")
        }
        var total: Int64 = 0
        var inodes: Int64 = 0
        var seen = Set<UInt64>()
        var info = stat()
        while let relative = walker.nextObject() as? String {
            guard lstat(rootFilesystem + "/" + relative, &info) == 0 else { continue }
            inodes += 1
            if info.st_nlink > 1, (info.st_mode & S_IFMT) != S_IFDIR, !seen.insert(UInt64(info.st_ino)).inserted { continue }
            total += (Int64(info.st_size) + 4095) / 4096 * 4096
        }
        // 256-byte inodes at mkfs's default ratio, the 64 MiB journal of a disk this size, 5% slack.
        return total + total / 20 + inodes * 256 + (96 << 20)
    }

    /// Makes a copied tree fit to start as a new machine. Paths inside are untrusted: nothing is
    /// followed through a symbolic link, so a hostile tree cannot point the clean-up at the host.
    /// Files may be hard links to the caller's tree: every change unlinks a name first and
    /// writes a new file, never into an existing one.
    static func generalise(_ tree: String) throws {
        let root = RootedTree(root: tree)
        for name in try root.list("etc/ssh") where name.hasPrefix("ssh_host_") {
            try root.remove("etc/ssh/" + name)
        }
        // Empty, not absent: systemd then makes a new id on first boot and treats it as the first.
        try root.write("etc/machine-id", "")
        try root.remove("var/lib/dbus/machine-id")
        for name in try root.list("var/lib/apt/lists") where name != "partial" && name != "lock" {
            try root.removeTree("var/lib/apt/lists/" + name)
        }
        try root.removeFiles(under: "var/log")
        if root.exists("usr/sbin/sshd") {
            // Debian's ssh.service refuses to start without host keys: make them before it.
            try root.write(
                "etc/systemd/system/kiln-ssh-host-keys.service",
                """
                [Unit]
                Description=SSH host keys for this machine (its image was generalised)
                Before=ssh.service ssh.socket
                ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key

                [Service]
                Type=oneshot
                ExecStart=/usr/bin/ssh-keygen -A
                RemainAfterExit=yes

                [Install]
                WantedBy=multi-user.target

                """)
            try root.link(
                "etc/systemd/system/multi-user.target.wants/kiln-ssh-host-keys.service",
                to: "/etc/systemd/system/kiln-ssh-host-keys.service")
        }
    }

    /// Copies the kernel and initramfs out of the disk's /boot with debugfs, for direct boot.
    public func extractBootFiles(into directory: String) async throws -> (kernel: String, initrd: String?) {
        try DiskTool.debugfs.check()
        let kernel = directory + "/vmlinuz"
        let initrd = directory + "/initrd.img"
        try await DiskTool.debugfs.run(
            ["-R", "dump /boot/vmlinuz-\(kernelRelease) \(kernel)", partitionDevice], what: "reading the kernel")
        try await DiskTool.debugfs.run(
            ["-R", "dump /boot/initrd.img-\(kernelRelease) \(initrd)", partitionDevice], what: "reading the initramfs")
        var info = stat()
        guard stat(kernel, &info) == 0, info.st_size > 0 else {
            throw KilnError(
                .notFound,
                "the disk \(raw) has no /boot/vmlinuz-\(kernelRelease) in its root partition; assemble it again from a tree with a kernel")
        }
        return (kernel, stat(initrd, &info) == 0 && info.st_size > 0 ? initrd : nil)
    }

    /// What debugfs prints for `request` on the root partition, read-only (e.g. `cat /etc/hostname`).
    public func inspect(_ request: String) async throws -> String {
        try DiskTool.debugfs.check()
        return try await DiskTool.debugfs.run(["-R", request, partitionDevice], what: "reading the disk")
    }
}

/// The host tools disk work calls, each with the Debian package that has it.
struct DiskTool: Sendable {
    let path: String
    let package: String

    static let copy = DiskTool(path: "/usr/bin/cp", package: "coreutils")
    static let sfdisk = DiskTool(path: "/usr/sbin/sfdisk", package: "fdisk")
    static let mkfs = DiskTool(path: "/usr/sbin/mkfs.ext4", package: "e2fsprogs")
    static let debugfs = DiskTool(path: "/usr/sbin/debugfs", package: "e2fsprogs")
    static let mkfsFat = DiskTool(path: "/usr/sbin/mkfs.fat", package: "dosfstools")
    static let syslinux = DiskTool(path: "/usr/bin/syslinux", package: "syslinux")
    static let mcopy = DiskTool(path: "/usr/bin/mcopy", package: "mtools")
    static let qemuImage = DiskTool(path: "/usr/bin/qemu-img", package: "qemu-utils")
    static let qemu = DiskTool(path: "/usr/bin/qemu-system-x86_64", package: "qemu-system-x86")
    static let sshKeygen = DiskTool(path: "/usr/bin/ssh-keygen", package: "openssh-client")
    static let ssh = DiskTool(path: "/usr/bin/ssh", package: "openssh-client")

    var name: String { (path as NSString).lastPathComponent }

    func check() throws {
        guard access(path, X_OK) == 0 else {
            throw KilnError(.notFound, "\(path) is not installed; install the Debian package \(package) (scripts/setup does)")
        }
    }

    /// Runs the tool and returns its standard output; a failure names the step and the tool's words.
    @discardableResult
    func run(
        _ arguments: [String], what: String, input: String? = nil, environment: [String: String] = [:], timeout: Duration = .seconds(600)
    ) async throws -> String {
        let output = OutputCollector()
        let errors = OutputCollector(headLimit: 0, tailLimit: 4096)
        let result = try await ProcessRunner.run(
            executablePath: path, argumentZero: name, arguments: arguments,
            environment: environment.merging(["PATH": "/usr/sbin:/usr/bin:/sbin:/bin"]) { _, path in path },
            workingDirectory: nil, timeout: timeout, standardInput: input
        ) { stream, bytes in
            if stream == .stdout { output.append(bytes) } else { errors.append(bytes) }
        }
        guard result.exitCode == 0, !result.timedOut else {
            let how = result.timedOut ? "did not finish within \(timeout)" : "failed (exit \(result.exitCode))"
            throw KilnError(
                result.timedOut ? .timedOut : .execFailure,
                "\(what): \(name) \(how): \(errors.text.trimmingCharacters(in: .whitespacesAndNewlines).suffix(1500))")
        }
        return output.text
    }
}

/// File work inside a root filesystem copy that never follows a symbolic link on the way.
struct RootedTree {
    let root: String

    /// The host path of `relative`, or nil when a folder on the way is a link or missing.
    private func resolve(_ relative: String) -> String? {
        var path = root
        var info = stat()
        for component in relative.split(separator: "/").dropLast() {
            guard component != "..", component != "." else { return nil }
            path += "/" + component
            guard lstat(path, &info) == 0, (info.st_mode & S_IFMT) == S_IFDIR else { return nil }
        }
        return root + "/" + relative
    }

    /// The host path of `relative` when it is a regular file reached without links, else nil.
    func regularFile(_ relative: String) -> String? {
        var info = stat()
        guard let path = resolve(relative), lstat(path, &info) == 0, (info.st_mode & S_IFMT) == S_IFREG else { return nil }
        return path
    }

    func exists(_ relative: String) -> Bool {
        var info = stat()
        guard let path = resolve(relative) else { return false }
        return lstat(path, &info) == 0
    }

    func list(_ relative: String) throws -> [String] {
        var info = stat()
        guard let path = resolve(relative), lstat(path, &info) == 0, (info.st_mode & S_IFMT) == S_IFDIR else { return [] }
        return try FileManager.default.contentsOfDirectory(atPath: path)
    }

    func remove(_ relative: String) throws {
        guard let path = resolve(relative) else { return }
        var info = stat()
        guard lstat(path, &info) == 0 else { return }
        guard unlink(path) == 0 else {
            throw KilnError(.ioFailure, "cannot remove /\(relative) while generalising \(root): \(String(cString: strerror(errno)))")
        }
    }

    /// A file, link or whole folder (FileManager removes links themselves, not their targets).
    func removeTree(_ relative: String) throws {
        guard let path = resolve(relative) else { return }
        do {
            try FileManager.default.removeItem(atPath: path)
        } catch {
            throw KilnError(.ioFailure, "cannot remove /\(relative) while generalising \(root): \(error.localizedDescription)")
        }
    }

    /// Every file below the folder, kept folders (services expect /var/log/apt and the like).
    func removeFiles(under relative: String) throws {
        for name in try list(relative) {
            let child = relative + "/" + name
            var info = stat()
            guard let path = resolve(child), lstat(path, &info) == 0 else { continue }
            if (info.st_mode & S_IFMT) == S_IFDIR { try removeFiles(under: child) } else { try remove(child) }
        }
    }

    func write(_ relative: String, _ text: String) throws {
        try makeParents(relative)
        guard let path = resolve(relative) else {
            throw KilnError(.invalidArgument, "cannot write /\(relative) in \(root): a folder on the way is a symbolic link")
        }
        unlink(path)
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o644)
        guard fd >= 0 else {
            throw KilnError(.ioFailure, "cannot write /\(relative) in \(root): \(String(cString: strerror(errno)))")
        }
        defer { close(fd) }
        let bytes = Array(text.utf8)
        guard bytes.isEmpty || Glibc.write(fd, bytes, bytes.count) == bytes.count else {
            throw KilnError(.ioFailure, "cannot write /\(relative) in \(root): \(String(cString: strerror(errno)))")
        }
    }

    func link(_ relative: String, to target: String) throws {
        try makeParents(relative)
        guard let path = resolve(relative) else {
            throw KilnError(.invalidArgument, "cannot link /\(relative) in \(root): a folder on the way is a symbolic link")
        }
        unlink(path)
        guard symlink(target, path) == 0 else {
            throw KilnError(.ioFailure, "cannot link /\(relative) in \(root): \(String(cString: strerror(errno)))")
        }
    }

    private func makeParents(_ relative: String) throws {
        var path = root
        var info = stat()
        for component in relative.split(separator: "/").dropLast() {
            path += "/" + component
            if lstat(path, &info) == 0 { continue }
            guard mkdir(path, 0o755) == 0 else {
                throw KilnError(.ioFailure, "cannot create /\(relative)'s folder in \(root): \(String(cString: strerror(errno)))")
            }
        }
    }
}
