import Foundation
import KilnModel
import KilnOCI
import KilnSystem

#if canImport(Glibc)
    import Glibc
#endif

/// What a Kiln killed mid-work (`kill -9`, a power cut) leaves besides its instances: temp
/// files and folders in the data directory and cgroups of instances that are gone. Only what
/// no live Kiln can still be using goes: a temp name that carries its owner (see
/// `ProcessOwner.temporaryName`) when that process is dead, any other when its ctime is before
/// the oldest live Kiln of this data directory registered (`ContentStore.liveProcessCutoff`),
/// since every Kiln registers before it makes anything.
public enum LeftoverSweep {
    /// Temp names Kiln makes, by folder of the data directory (`ingest/` is the content store's).
    static let temporaryPrefixes: [(folder: String, prefixes: [String])] = [
        ("content/ingest", [".ingest-", ".tmp-", ".layer-", ".snapshot-", "bootstrap-", "archive-", "archive-out-"]),
        ("content/blobs/sha256", [".tmp-"]),
        ("content/leases", [".tmp-"]),
        ("content", [".tmp-"]),
        ("layers", [".tmp-"]),
        ("instances", [".kiln-staging-"]),
        ("build-cache/freshness", [".tmp-"]),
    ]

    /// Removes the leftovers; returns one description per thing removed.
    @discardableResult
    public static func run(on host: InstanceHost) async -> [String] {
        let cutoff = host.store.liveProcessCutoff()
        var removed = host.store.sweepTemporaryFiles(cutoff: cutoff).map { "content/ingest/" + $0 }
        for (folder, prefixes) in temporaryPrefixes {
            let path = host.dataDirectory + "/" + folder
            for name in (try? FileManager.default.contentsOfDirectory(atPath: path)) ?? [] {
                guard let prefix = prefixes.first(where: { name.hasPrefix($0) }) else { continue }
                let owner = ProcessOwner.owner(ofTemporaryName: name, prefix: prefix)
                let leftover = owner.map { !$0.isAlive } ?? ((ChangeTime(of: path + "/" + name) ?? cutoff) < cutoff)
                if leftover, ContentStore.removeTree(path + "/" + name) { removed.append(folder + "/" + name) }
            }
        }
        // The cgroups first: a dead Kiln's container-host-test processes die before its folders go.
        removed += await sweepCgroups(on: host)
        // container-host-test's folders carry their owner; only a dead owner's go. Nobody wrote
        // into them, so they are removed by `rm -rf --one-file-system`, which follows no link.
        for name in (try? FileManager.default.contentsOfDirectory(atPath: hostTestFolderRoot)) ?? [] {
            guard let prefix = hostTestFolderPrefixes.first(where: { name.hasPrefix($0) }),
                let owner = ProcessOwner.owner(ofTemporaryName: name, prefix: prefix), !owner.isAlive
            else { continue }
            let result = try? await ProcessRunner.run(
                executablePath: "/bin/rm", argumentZero: "rm",
                arguments: ["-rf", "--one-file-system", "--", hostTestFolderRoot + "/" + name],
                environment: [:], workingDirectory: nil, timeout: .seconds(600), output: { _, _ in })
            if result?.exitCode == 0 { removed.append(hostTestFolderRoot + "/" + name) }
        }
        return removed
    }

    static let hostTestFolderRoot = "/run/kiln-host-test"

    /// `HostTestRun`'s names: the child's cgroup, and its work and image folders in /tmp.
    public static let hostTestCgroupPrefix = "host-test-"
    static let hostTestFolderPrefixes = ["kiln-host-test-image-", "kiln-host-test-"]

    /// cgroup roots runc may put `kiln/<id>` under: each v1 controller, and v2's unified tree.
    static func cgroupRoots() -> [String] {
        var roots: [String] = []
        if access("/sys/fs/cgroup/kiln", F_OK) == 0 { roots.append("/sys/fs/cgroup/kiln") }
        for controller in (try? FileManager.default.contentsOfDirectory(atPath: "/sys/fs/cgroup")) ?? [] {
            let folder = "/sys/fs/cgroup/\(controller)/kiln"
            var info = stat()
            if stat(folder, &info) == 0, info.st_mode & S_IFMT == S_IFDIR { roots.append(folder) }
        }
        return roots
    }

    /// Removes Kiln cgroups whose instance is gone: no folder in this data directory and no
    /// runc container of that id (cgroups are host-wide, shared with other data directories).
    /// One made in the last minute may belong to an instance still starting, so it stays; a
    /// cgroup with processes cannot be removed anyway.
    static func sweepCgroups(on host: InstanceHost) async -> [String] {
        let roots = cgroupRoots()
        guard !roots.isEmpty else { return [] }
        let recent = ChangeTime(seconds: ChangeTime.now.seconds - 60, nanoseconds: 0)
        var removed = Set<String>()
        var candidates: [(id: String, folder: String)] = []
        for root in roots {
            // A dead Kiln's container-host-test child may still run as nobody in its cgroup.
            for name in (try? FileManager.default.contentsOfDirectory(atPath: root)) ?? [] {
                guard let owner = ProcessOwner.owner(ofTemporaryName: name, prefix: hostTestCgroupPrefix), !owner.isAlive else { continue }
                // Frozen processes cannot die: thaw first (v1 freezer, v2 cgroup.freeze).
                try? "THAWED".write(toFile: root + "/" + name + "/freezer.state", atomically: false, encoding: .utf8)
                try? "0".write(toFile: root + "/" + name + "/cgroup.freeze", atomically: false, encoding: .utf8)
                for _ in 0..<50 {
                    let pids = ((try? String(contentsOfFile: root + "/" + name + "/cgroup.procs", encoding: .utf8)) ?? "")
                        .split(separator: "\n").compactMap { Int32($0) }
                    if pids.isEmpty { break }
                    for pid in pids { kill(pid, SIGKILL) }
                    usleep(20_000)
                }
                if removeCgroup(root + "/" + name) { removed.insert(name) }
            }
            for id in (try? FileManager.default.contentsOfDirectory(atPath: root)) ?? [] where id.hasPrefix("kiln-") {
                let folder = root + "/" + id
                guard !FileManager.default.fileExists(atPath: host.instancesDirectory + "/" + id),
                    let changed = ChangeTime(of: folder), changed < recent
                else { continue }
                candidates.append((id, folder))
            }
        }
        // `runc list` starts a process (tens of milliseconds): only asked when something may go.
        if !candidates.isEmpty {
            let containers = Set(await host.runc.list().map(\.id))
            for candidate in candidates where !containers.contains(candidate.id) {
                if removeCgroup(candidate.folder) { removed.insert(candidate.id) }
            }
        }
        return removed.sorted().map { "cgroup kiln/\($0)" }
    }

    /// rmdir of a cgroup and any child cgroups, deepest first (their files go with them).
    static func removeCgroup(_ folder: String) -> Bool {
        for child in (try? FileManager.default.contentsOfDirectory(atPath: folder)) ?? [] {
            var info = stat()
            if lstat(folder + "/" + child, &info) == 0, info.st_mode & S_IFMT == S_IFDIR { _ = removeCgroup(folder + "/" + child) }
        }
        return rmdir(folder) == 0
    }
}
