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
        // nodev: a device node an image or step planted cannot be opened through this root
        // (the container's own /dev is a separate tmpfs).
        guard Glibc.mount("overlay", target, "overlay", UInt(MS_NODEV), options) == 0 else {
            throw KilnError(
                .ioFailure, "cannot mount the instance root at '\(target)': \(String(cString: strerror(errno))) (overlayfs needs root)")
        }
    }

    /// A second view of an instance root for Kiln's own file work: nodev, nosuid and noexec,
    /// so nothing Kiln opens or creates there can act as a device or a setuid program.
    static func mountHostView(of rootfs: String, at target: String) throws {
        guard Glibc.mount(rootfs, target, nil, UInt(MS_BIND), nil) == 0,
            Glibc.mount(nil, target, nil, UInt(MS_REMOUNT | MS_BIND | MS_NODEV | MS_NOSUID | MS_NOEXEC), nil) == 0
        else {
            let reason = String(cString: strerror(errno))
            unmount(target)
            throw KilnError(.ioFailure, "cannot mount Kiln's view of the instance root at '\(target)': \(reason)")
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

    /// The freezer control of a cgroup: v1's freezer.state or v2's cgroup.freeze; nil when the
    /// cgroup does not exist (then no process of the instance is running).
    static func freezer(path: String) -> (control: String, frozen: String, thawed: String, state: String, isFrozen: String)? {
        let v1 = "/sys/fs/cgroup/freezer\(path)"
        if access(v1 + "/freezer.state", F_OK) == 0 {
            return (v1 + "/freezer.state", "FROZEN", "THAWED", v1 + "/freezer.state", "FROZEN")
        }
        for root in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] where access(root + path + "/cgroup.freeze", F_OK) == 0 {
            return (root + path + "/cgroup.freeze", "1", "0", root + path + "/cgroup.events", "frozen 1")
        }
        return nil
    }

    /// Stops every process of the cgroup and waits until the kernel says they are stopped.
    static func freeze(path: String) throws {
        guard let freezer = freezer(path: path) else {
            // No cgroup of this instance: nothing of it runs. No freezer at all: fail closed.
            guard
                access("/sys/fs/cgroup/freezer", F_OK) == 0 || access("/sys/fs/cgroup/cgroup.freeze", F_OK) == 0
                    || access("/sys/fs/cgroup/cgroup.controllers", F_OK) == 0
            else {
                throw KilnError(
                    .unsupported,
                    "this host has no cgroup freezer (v1 freezer or v2); Kiln stops an instance's processes before it works on its files, so it cannot go on"
                )
            }
            return
        }
        guard write(freezer.frozen, to: freezer.control) else {
            throw KilnError(.ioFailure, "cannot freeze the instance's processes (\(freezer.control)): \(String(cString: strerror(errno)))")
        }
        let deadline = ContinuousClock.now + .seconds(10)
        while ContinuousClock.now < deadline {
            let state = (try? String(contentsOfFile: freezer.state, encoding: .utf8)) ?? ""
            if state.split(separator: "\n").contains(where: { $0 == freezer.isFrozen }) { return }
            usleep(200)
        }
        thaw(path: path)
        throw KilnError(
            .timedOut,
            "the instance's processes did not stop within 10 s (\(freezer.state)); Kiln works on its files only while they are stopped")
    }

    static func thaw(path: String) {
        guard let freezer = freezer(path: path) else { return }
        _ = write(freezer.thawed, to: freezer.control)
    }

    private static func write(_ value: String, to file: String) -> Bool {
        let fd = open(file, O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        return value.withCString { Glibc.write(fd, $0, strlen($0)) } >= 0
    }

    static func remove(path: String) {
        for controller in (try? FileManager.default.contentsOfDirectory(atPath: "/sys/fs/cgroup")) ?? [] {
            rmdir("/sys/fs/cgroup/\(controller)\(path)")
        }
    }
}
