import Foundation
import KilnInstances
import KilnModel
import KilnOCI
import KilnSystem
import KilnTOE

#if canImport(Glibc)
    import Glibc
#endif

/// A container image's `container-host-test` phases, run on the Kiln host as Image Builder runs
/// them on its build host, but not as root: a child `kiln toe run` as `nobody` (setpriv, no
/// supplementary groups, no new privileges) in a fresh folder that it owns. Its only view of the
/// image is a read-only OCI layout (`KILN_IMAGE_LAYOUT`, `KILN_IMAGE=oci:LAYOUT:latest`); the
/// data directory (0700), Kiln's environment and its credentials are out of its reach, and its
/// file actions have nobody's rights. The child runs in its own freezer cgroup, so whatever it
/// leaves running is killed before Kiln (as root) reads, copies and removes the folder it owned.
struct HostTestRun {
    static let uid: UInt32 = 65_534
    static let gid: UInt32 = 65_534

    let store: ContentStore
    let progress: @Sendable (String) -> Void

    /// Runs the phases; the report comes from the child's `detailedoutput.json`, and its log
    /// folder is copied to `logFolder`.
    func run(_ components: [RecipeComponent], image: Descriptor, logFolder: String) async throws -> RunReport {
        let work = try Self.temporaryFolder(LeftoverSweep.hostTestWorkPrefix)
        defer { LeftoverSweep.removeUntrusted(work) }
        let layout = try Self.temporaryFolder(LeftoverSweep.hostTestImagePrefix)
        defer { LeftoverSweep.removeUntrusted(layout) }
        try exportLayout(image, to: layout)

        var documents: [[String: Any]] = []
        for (index, component) in components.enumerated() {
            let path = work + String(format: "/document-%02d.yaml", index)
            try Data(component.run.document.text.utf8).write(to: URL(fileURLWithPath: path))
            documents.append([
                "path": path,
                "parameters": component.run.parameters.sorted { $0.key < $1.key }.map { ["name": $0.key, "value": $0.value] },
            ])
        }
        let configuration: [String: Any] = ["documents": documents, "phases": "container-host-test", "logDirectory": work + "/logs"]
        try JSONSerialization.data(withJSONObject: configuration).write(to: URL(fileURLWithPath: work + "/run.json"))
        // Handed over only now: root wrote the files above into a folder nobody could touch yet.
        guard chown(work, Self.uid, Self.gid) == 0, chmod(work, 0o700) == 0 else {
            throw KilnError(.ioFailure, "cannot hand \(work) to nobody for container-host-test: \(String(cString: strerror(errno)))")
        }

        let kiln = try Self.executableForNobody()
        let cgroups = try Self.makeCgroups()
        defer { cgroups.forEach { LeftoverSweep.killAndRemoveCgroup($0) } }
        let environment = [
            "PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": work, "TMPDIR": work, "LANG": "C.UTF-8", "USER": "nobody",
            "KILN_IMAGE": "oci:\(layout):latest", "KILN_IMAGE_LAYOUT": layout, "KILN_IMAGE_DIGEST": image.digest.description,
        ]
        progress("TEST: container-host-test on the Kiln host as nobody, with the image at oci:\(layout):latest")
        let echo = LineEcho(prefix: "TEST: ", progress: progress)
        // The shell joins the cgroup as root, then becomes setpriv (and so nobody's kiln).
        let result = try await ProcessRunner.run(
            executablePath: "/bin/sh", argumentZero: "sh",
            arguments: [
                "-c", "for c in $0; do echo $$ > \"$c/cgroup.procs\" || exit 125; done; exec \"$@\"", cgroups.joined(separator: " "),
                "/usr/bin/setpriv", "--reuid=\(Self.uid)", "--regid=\(Self.gid)",
                "--clear-groups", "--no-new-privs", "--inh-caps=-all", "--", kiln, "toe", "run", "--config", work + "/run.json",
            ],
            // A step that stops its parent (kill -STOP) must not hold the build for ever.
            environment: environment, workingDirectory: work, timeout: Self.timeout
        ) { _, bytes in echo.append(bytes) }
        echo.flush()
        if result.timedOut { progress("TEST: container-host-test ran past \(Self.timeout) and was stopped") }
        // Nothing of nobody's may run while root reads what it left.
        cgroups.forEach { LeftoverSweep.killAndRemoveCgroup($0) }
        let logs = ((try? FileManager.default.contentsOfDirectory(atPath: work + "/logs")) ?? []).filter { $0.hasPrefix("TOE_") }
        guard let folder = logs.first.map({ work + "/logs/" + $0 }),
            let data = try? HostFileIO.readRegular(folder + "/detailedoutput.json", describe: "container-host-test's detailedoutput.json"),
            let report = try? JSONDecoder().decode(RunReport.self, from: data)
        else {
            throw KilnError(
                .execFailure,
                "container-host-test did not run (kiln toe run as nobody exited \(result.exitCode)): \(echo.tail.isEmpty ? "no output" : echo.tail)"
            )
        }
        try? FileManager.default.removeItem(atPath: logFolder)
        try? FileManager.default.createDirectory(
            atPath: (logFolder as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        // Links stay links and FIFOs are refused: the folder was nobody's.
        try? HostFileIO.copyTree(from: folder, to: logFolder) { "'\($0)'" }
        return report
    }

    static let timeout: Duration = .seconds(7200)
    /// Limits for everything container-host-test starts: a fork bomb or a memory hog stops there.
    static let pidsLimit = 4096
    static let memoryLimit: Int64 = 4 << 30
    /// Root's, 0711: nobody may use the folders Kiln makes inside but not make its own there.
    static let folderRoot = LeftoverSweep.hostTestFolderRoot

    /// The child's cgroups, owned by root so nobody cannot leave them: v1's freezer (to kill all),
    /// pids and memory (the limits), or one v2 cgroup with all three. The freezer one comes first.
    static func makeCgroups() throws -> [String] {
        // Named for its owner: if Kiln dies, the next one's sweep kills what is left in them.
        let name = "kiln/" + ProcessOwner.temporaryName(LeftoverSweep.hostTestCgroupPrefix)
        func make(_ path: String) -> Bool {
            (try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)) != nil
        }
        if access("/sys/fs/cgroup/freezer/cgroup.procs", F_OK) == 0, make("/sys/fs/cgroup/freezer/" + name) {
            var made = ["/sys/fs/cgroup/freezer/" + name]
            if access("/sys/fs/cgroup/pids/cgroup.procs", F_OK) == 0, make("/sys/fs/cgroup/pids/" + name) {
                try? "\(pidsLimit)".write(toFile: "/sys/fs/cgroup/pids/\(name)/pids.max", atomically: false, encoding: .utf8)
                made.append("/sys/fs/cgroup/pids/" + name)
            }
            if access("/sys/fs/cgroup/memory/cgroup.procs", F_OK) == 0, make("/sys/fs/cgroup/memory/" + name) {
                try? "\(memoryLimit)".write(
                    toFile: "/sys/fs/cgroup/memory/\(name)/memory.limit_in_bytes", atomically: false, encoding: .utf8)
                made.append("/sys/fs/cgroup/memory/" + name)
            }
            return made
        }
        if access("/sys/fs/cgroup/cgroup.controllers", F_OK) == 0, make("/sys/fs/cgroup/" + name) {
            try? "\(pidsLimit)".write(toFile: "/sys/fs/cgroup/\(name)/pids.max", atomically: false, encoding: .utf8)
            try? "\(memoryLimit)".write(toFile: "/sys/fs/cgroup/\(name)/memory.max", atomically: false, encoding: .utf8)
            return ["/sys/fs/cgroup/" + name]
        }
        throw KilnError(
            .unsupported, "cannot create a cgroup for container-host-test under /sys/fs/cgroup; Kiln needs cgroup v1's freezer or cgroup v2"
        )
    }

    /// A new root-owned folder under `folderRoot` that others may enter (the layout) or that is
    /// handed over (the work folder). Named for its owner (`LeftoverSweep` removes a dead Kiln's).
    static func temporaryFolder(_ prefix: String) throws -> String {
        mkdir(folderRoot, 0o711)
        var info = stat()
        guard lstat(folderRoot, &info) == 0, info.st_mode & S_IFMT == S_IFDIR, info.st_uid == 0 else {
            throw KilnError(.ioFailure, "\(folderRoot) must be a folder owned by root; remove it and build again")
        }
        chmod(folderRoot, 0o711)
        let path = folderRoot + "/" + ProcessOwner.temporaryName(prefix)
        guard mkdir(path, 0o700) == 0 else {
            throw KilnError(
                .ioFailure, "cannot create a folder in \(folderRoot) for container-host-test: \(String(cString: strerror(errno)))")
        }
        chmod(path, 0o755)
        return path
    }

    /// The image as an OCI layout tagged `latest`: blobs hard-linked from the store (read-only
    /// to nobody, as the store's files are root's) or copied when the store is elsewhere.
    func exportLayout(_ image: Descriptor, to layout: String) throws {
        let (manifest, _) = try store.image(image.digest)
        try FileManager.default.createDirectory(
            atPath: layout + "/blobs/sha256", withIntermediateDirectories: true, attributes: [.posixPermissions: 0o755])
        chmod(layout + "/blobs", 0o755)
        for digest in [image.digest, manifest.config.digest] + manifest.layers.map(\.digest) {
            let target = layout + "/blobs/sha256/" + digest.encoded
            if access(target, F_OK) == 0 { continue }
            if link(store.path(of: digest), target) != 0 {
                try HostFileIO.copyFile(from: store.path(of: digest), to: target, mode: 0o644) { "'\($0)'" }
            }
        }
        var descriptor = image
        descriptor.annotations = ["org.opencontainers.image.ref.name": "latest"]
        let index = ImageIndex(manifests: [descriptor])
        try JSONEncoder().encode(index).write(to: URL(fileURLWithPath: layout + "/index.json"))
        try Data(#"{"imageLayoutVersion":"1.0.0"}"#.utf8).write(to: URL(fileURLWithPath: layout + "/oci-layout"))
        for file in ["/index.json", "/oci-layout"] { chmod(layout + file, 0o644) }
    }

    /// The running kiln, or a copy of it in a folder anyone may enter when the build tree is
    /// private (a clone in a 0700 home): nobody must be able to execute it.
    static func executableForNobody() throws -> String {
        let own =
            ProcessInfo.processInfo.environment["KILN_EXECUTABLE"]
            ?? (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        guard own.hasSuffix("/kiln") else {
            throw KilnError(.notFound, "container-host-test runs kiln as nobody, but this process is \(own); set KILN_EXECUTABLE")
        }
        if reachableByOthers(own) { return own }
        var info = stat()
        guard stat(own, &info) == 0 else { throw KilnError(.notFound, "cannot read \(own): \(String(cString: strerror(errno)))") }
        let folder = "/run/kiln-exec"
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        chmod(folder, 0o755)
        let copy = folder + "/kiln-\(info.st_size)-\(info.st_mtim.tv_sec)"
        if access(copy, X_OK) == 0 { return copy }
        let staging = copy + ".\(getpid())"
        unlink(staging)
        try HostFileIO.copyFile(from: own, to: staging, mode: 0o755) { "'\($0)'" }
        guard rename(staging, copy) == 0 else {
            throw KilnError(.ioFailure, "cannot place a copy of kiln at \(copy): \(String(cString: strerror(errno)))")
        }
        return copy
    }

    /// Every folder on the way may be entered by others and the file executed by them.
    static func reachableByOthers(_ path: String) -> Bool {
        var current = path
        var info = stat()
        guard stat(current, &info) == 0, info.st_mode & 0o005 == 0o005 else { return false }
        while current != "/" && !current.isEmpty {
            current = (current as NSString).deletingLastPathComponent
            guard stat(current, &info) == 0, info.st_mode & 0o001 != 0 else { return false }
        }
        return true
    }
}
