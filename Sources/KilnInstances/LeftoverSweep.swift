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
        // A dead Kiln's image root views: unmounted first, so the removal never walks into layers.
        let instances = host.instancesDirectory
        for name in (try? FileManager.default.contentsOfDirectory(atPath: instances)) ?? [] {
            guard let owner = ProcessOwner.owner(ofTemporaryName: name, prefix: ImageRootView.prefix), !owner.isAlive else { continue }
            ImageRootView.remove(instances + "/" + name)
            removed.append("instances/" + name)
        }
        // The cgroups first: a dead Kiln's container-host-test processes die before its folders go.
        removed += await sweepCgroups(on: host)
        // container-host-test's folders carry their owner; only a dead owner's go. Nobody wrote
        // into them, so they are removed by `rm -rf --one-file-system`, which follows no link.
        for name in (try? FileManager.default.contentsOfDirectory(atPath: hostTestFolderRoot)) ?? [] {
            guard let prefix = [hostTestImagePrefix, hostTestWorkPrefix].first(where: { name.hasPrefix($0) }),
                let owner = ProcessOwner.owner(ofTemporaryName: name, prefix: prefix), !owner.isAlive
            else { continue }
            if removeUntrusted(hostTestFolderRoot + "/" + name) { removed.append(hostTestFolderRoot + "/" + name) }
        }
        return removed
    }

    /// `HostTestRun`'s names: the child's cgroup, and its work and image folders under
    /// `hostTestFolderRoot` (the image prefix first where both are tried: it starts with the other).
    public static let hostTestFolderRoot = "/run/kiln-host-test"
    public static let hostTestCgroupPrefix = "host-test-"
    public static let hostTestWorkPrefix = "kiln-host-test-"
    public static let hostTestImagePrefix = "kiln-host-test-image-"

    /// Removes a tree someone else could write into: `rm -rf --one-file-system` walks with openat
    /// and never follows a link, so swapping a folder for a link mid-removal cannot redirect it.
    /// Given up after 10 minutes.
    @discardableResult
    public static func removeUntrusted(_ path: String) -> Bool {
        let remove = Process()
        remove.executableURL = URL(fileURLWithPath: "/bin/rm")
        remove.arguments = ["-rf", "--one-file-system", "--", path]
        guard (try? remove.run()) != nil else { return false }
        let deadline = Date().addingTimeInterval(600)
        while remove.isRunning, Date() < deadline { usleep(10_000) }
        if remove.isRunning { remove.terminate() }
        remove.waitUntilExit()
        return remove.terminationReason == .exit && remove.terminationStatus == 0
    }

    /// Kills every process in a cgroup and removes it: frozen while the kills go out, so none
    /// can fork away, and thawed after, since a frozen process cannot die (a Kiln that died
    /// mid-freeze may have left it frozen). v1 freezer or v2 `cgroup.freeze`.
    @discardableResult
    public static func killAndRemoveCgroup(_ cgroup: String) -> Bool {
        guard access(cgroup, F_OK) == 0 else { return true }
        let v1 = access(cgroup + "/freezer.state", F_OK) == 0
        func write(_ value: String, _ file: String) { try? value.write(toFile: cgroup + "/" + file, atomically: false, encoding: .utf8) }
        for _ in 0..<100 {
            let pids = ((try? String(contentsOfFile: cgroup + "/cgroup.procs", encoding: .utf8)) ?? "").split(separator: "\n")
                .compactMap { Int32($0) }
            if pids.isEmpty { break }
            write(v1 ? "FROZEN" : "1", v1 ? "freezer.state" : "cgroup.freeze")
            for pid in pids { kill(pid, SIGKILL) }
            write(v1 ? "THAWED" : "0", v1 ? "freezer.state" : "cgroup.freeze")
            usleep(20_000)
        }
        return removeCgroup(cgroup)
    }

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
                if killAndRemoveCgroup(root + "/" + name) { removed.insert(name) }
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
