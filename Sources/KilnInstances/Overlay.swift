import Foundation
import KilnModel

#if canImport(Glibc)
    import Glibc
#endif

/// overlayfs mounts for instance roots.
enum Overlay {
    /// The kernel takes mount options up to one page.
    static let optionLimit = 4000
    static let fixedOptions = "redirect_dir=off,metacopy=off"

    /// Mounts `lower` (topmost first) under `upper`. Too many layers for one option string are an
    /// error here; `LayerCache` flattening comes first.
    static func mount(lower: [String], upper: String, work: String, at target: String, scratch: String) throws {
        // Snapshots pack the upper dir as layers, so every change must be whole there: no
        // redirects to renamed lower folders and no metadata-only copy-ups, whatever the module's defaults.
        let options = "lowerdir=\(lower.joined(separator: ":")),upperdir=\(upper),workdir=\(work),\(fixedOptions)"
        guard options.utf8.count < optionLimit else {
            throw KilnError(.unsupported, "the image has too many layers (\(lower.count)) for one overlay mount; flatten it first")
        }
        guard Glibc.mount("overlay", target, "overlay", 0, options) == 0 else {
            throw KilnError(
                .ioFailure, "cannot mount the instance root at '\(target)': \(String(cString: strerror(errno))) (overlayfs needs root)")
        }
    }

    /// Unmounts if mounted; a busy mount is detached so the folder can go.
    static func unmount(_ target: String) {
        if umount2(target, 0) != 0, errno == EBUSY { umount2(target, Int32(MNT_DETACH)) }
    }
}

/// cgroup v1 folders runc made (cgroupfs driver), for reaping after a crash.
enum Cgroups {
    /// How many processes the kernel killed for running out of memory in this cgroup.
    static func oomKills(path: String) -> Int {
        let files = [
            "/sys/fs/cgroup/memory\(path)/memory.oom_control", "/sys/fs/cgroup\(path)/memory.events",
            "/sys/fs/cgroup/unified\(path)/memory.events",
        ]
        for file in files {
            guard let text = try? String(contentsOfFile: file, encoding: .utf8) else { continue }
            for line in text.split(separator: "\n") where line.hasPrefix("oom_kill ") {
                return Int(line.split(separator: " ")[1]) ?? 0
            }
        }
        return 0
    }

    /// CPU time the cgroup's processes used, in seconds (cgroup v1 cpuacct or v2 cpu.stat).
    static func cpuSeconds(path: String) -> Double {
        for file in ["/sys/fs/cgroup/cpuacct\(path)/cpuacct.usage", "/sys/fs/cgroup/cpu,cpuacct\(path)/cpuacct.usage"] {
            if let text = try? String(contentsOfFile: file, encoding: .utf8),
                let nanoseconds = Double(text.trimmingCharacters(in: .whitespacesAndNewlines))
            {
                return nanoseconds / 1e9
            }
        }
        for file in ["/sys/fs/cgroup\(path)/cpu.stat", "/sys/fs/cgroup/unified\(path)/cpu.stat"] {
            guard let text = try? String(contentsOfFile: file, encoding: .utf8) else { continue }
            for line in text.split(separator: "\n") where line.hasPrefix("usage_usec ") {
                return (Double(line.split(separator: " ")[1]) ?? 0) / 1e6
            }
        }
        return 0
    }

    static func remove(path: String) {
        for controller in (try? FileManager.default.contentsOfDirectory(atPath: "/sys/fs/cgroup")) ?? [] {
            rmdir("/sys/fs/cgroup/\(controller)\(path)")
        }
    }
}
