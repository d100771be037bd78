import Foundation
import KilnModel
import KilnOCI
import KilnSystem

#if canImport(Glibc)
    import Glibc
#endif

/// A bootable machine disk: a GPT with one ext4 root partition, as raw and qcow2 files. Made
/// from a root filesystem folder without loop devices or mounts: `sfdisk` writes the table into
/// the file and `mkfs.ext4 -d` fills the partition at its offset.
public struct MachineDisk: Sendable, Hashable {
    /// The root partition's filesystem label; the machine parent's fstab names it.
    public static let rootLabel = "kiln-root"
    /// The partition starts at 1 MiB, as partitioning tools align it.
    public static let partitionOffset: Int64 = 1 << 20
    /// What Kiln passes to the kernel besides the root device and the console.
    public static let kernelCommandLine = "root=LABEL=\(rootLabel) net.ifnames=0 console=ttyS0"

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

    /// The partition as debugfs and blkid open it: the raw file at the partition's offset.
    public var partitionDevice: String { "\(raw)?offset=\(Self.partitionOffset)" }

    /// Makes `name.raw` and `name.qcow2` in `directory` from `rootFilesystem`, which is left as it
    /// was: a copy is generalised (no SSH host keys, an empty machine-id, no logs or apt lists, host
    /// keys made on first boot). `volumeSizeGiB` is the disk's size, as blockDeviceMappings'
    /// volumeSize; one smaller than the tree is refused before any work.
    public static func assemble(
        rootFilesystem: String, volumeSizeGiB: Int, into directory: String, name: String = "disk",
        observer: (@Sendable (String) -> Void)? = nil
    ) async throws -> MachineDisk {
        let started = ContinuousClock.now
        let release = try kernelRelease(in: rootFilesystem)
        for tool in [DiskTool.copy, .sfdisk, .mkfs, .qemuImage] { try tool.check() }
        guard volumeSizeGiB > 0 else {
            throw KilnError(.invalidArgument, "the root volume size must be at least 1 GiB; set blockDeviceMappings volumeSize")
        }
        let sizeBytes = Int64(volumeSizeGiB) << 30
        let needed = try requiredBytes(for: rootFilesystem)
        // The backup GPT takes the disk's last sectors: the partition ends 1 MiB before the end.
        let partitionBytes = sizeBytes - 2 * partitionOffset
        guard needed <= partitionBytes else {
            let gib = (needed + 2 * partitionOffset + (1 << 30) - 1) >> 30
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
        let tree = directory + "/.\(name)-tree-\(UUID().uuidString)"
        let table = directory + "/.\(name)-gpt-\(UUID().uuidString)"
        defer {
            try? FileManager.default.removeItem(atPath: tree)
            unlink(table)
        }
        observer?("copying \(rootFilesystem) to generalise it")
        try await DiskTool.copy.run(["-a", "--reflink=auto", rootFilesystem + "/.", tree], what: "copying the root filesystem")
        try generalise(tree)

        let raw = "\(directory)/\(name).raw"
        let qcow2 = "\(directory)/\(name).qcow2"
        unlink(raw)
        unlink(qcow2)
        let fd = open(raw, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
        defer { if fd >= 0 { close(fd) } }
        // Sparse: only what mkfs writes takes space.
        guard fd >= 0, ftruncate(fd, off_t(sizeBytes)) == 0 else {
            throw KilnError(.ioFailure, "cannot make the \(volumeSizeGiB) GiB disk file \(raw): \(String(cString: strerror(errno)))")
        }
        let sectors = partitionBytes / 512
        let script =
            "label: gpt\nstart=\(partitionOffset / 512), size=\(sectors), type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=\"root\"\n"
        try script.write(toFile: table, atomically: false, encoding: .utf8)
        observer?("writing a GPT with one \(partitionBytes >> 20) MiB root partition into \(raw)")
        try await DiskTool.sfdisk.run(
            ["--quiet", "--no-reread", "--no-tell-kernel", raw], what: "writing the partition table", input: table)
        observer?("making the ext4 root filesystem from the generalised tree")
        try await DiskTool.mkfs.run(
            [
                "-q", "-F", "-t", "ext4", "-L", rootLabel, "-d", tree, "-E", "offset=\(partitionOffset),nodiscard", raw,
                "\(partitionBytes / 1024)k",
            ],
            what: "making the root filesystem")
        try await DiskTool.qemuImage.run(["convert", "-f", "raw", "-O", "qcow2", raw, qcow2], what: "converting the disk to qcow2")
        let seconds = Self.seconds(since: started)
        observer?("assembled \(raw) and \(qcow2) in \(String(format: "%.1f", seconds)) s")
        return MachineDisk(raw: raw, qcow2: qcow2, kernelRelease: release, sizeBytes: sizeBytes, assemblySeconds: seconds)
    }

    static func seconds(since start: ContinuousClock.Instant) -> Double {
        let elapsed = (ContinuousClock.now - start).components
        return Double(elapsed.seconds) + Double(elapsed.attoseconds) / 1e18
    }

    /// The newest `vmlinuz-RELEASE` in the tree's /boot, with a message that says how to get one.
    public static func kernelRelease(in rootFilesystem: String) throws -> String {
        let boot = rootFilesystem + "/boot"
        let names = (try? FileManager.default.contentsOfDirectory(atPath: boot)) ?? []
        let releases = names.filter { $0.hasPrefix("vmlinuz-") }.map { String($0.dropFirst("vmlinuz-".count)) }
        guard let newest = releases.max(by: { $0.compare($1, options: .numeric) == .orderedAscending }) else {
            throw KilnError(
                .invalidArgument,
                "the root filesystem at \(rootFilesystem) has no kernel (no /boot/vmlinuz-*), so its disk could not boot; build from bootstrap:debian:bookworm:vm, or install linux-image-cloud-amd64 (Debian) in a component first"
            )
        }
        return newest
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
    func run(_ arguments: [String], what: String, input: String? = nil, timeout: Duration = .seconds(600)) async throws -> String {
        let output = OutputCollector()
        let errors = OutputCollector(headLimit: 0, tailLimit: 4096)
        let result = try await ProcessRunner.run(
            executablePath: path, argumentZero: name, arguments: arguments, environment: ["PATH": "/usr/sbin:/usr/bin:/sbin:/bin"],
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
