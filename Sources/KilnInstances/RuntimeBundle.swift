import Foundation
import KilnModel

/// The part of the OCI runtime spec (`config.json`) Kiln writes for runc, with the spec's names.
struct RuntimeSpec: Encodable {
    struct User: Encodable {
        var uid: UInt32
        var gid: UInt32
    }

    struct Capabilities: Encodable {
        var bounding: [String]
        var effective: [String]
        var permitted: [String]
    }

    struct Rlimit: Encodable {
        var type: String
        var hard: UInt64
        var soft: UInt64
    }

    struct Process: Encodable {
        var terminal = false
        var user: User
        var args: [String]
        var env: [String]
        var cwd: String
        var capabilities: Capabilities
        var rlimits: [Rlimit]
        var noNewPrivileges = false
    }

    struct Root: Encodable {
        var path: String
        var readonly = false
    }

    struct Mount: Encodable {
        var destination: String
        var type: String
        var source: String
        var options: [String]
    }

    struct Namespace: Encodable {
        var type: String
    }

    struct Resources: Encodable {
        struct Memory: Encodable {
            var limit: Int64
            var swap: Int64
        }

        struct CPU: Encodable {
            var quota: Int64
            var period: UInt64
        }

        struct Pids: Encodable {
            var limit: Int64
        }

        struct DeviceRule: Encodable {
            var allow: Bool
            var access: String
        }

        var memory: Memory
        var cpu: CPU
        var pids: Pids
        var devices: [DeviceRule]
    }

    struct Linux: Encodable {
        var namespaces: [Namespace]
        var cgroupsPath: String
        var resources: Resources
        var maskedPaths: [String]
        var readonlyPaths: [String]
    }

    var ociVersion = "1.0.2"
    var process: Process
    var root: Root
    var hostname: String
    var mounts: [Mount]
    var linux: Linux

    /// Docker's default capability set.
    static let defaultCapabilities = [
        "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID",
        "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
    ]

    /// Docker's masked and read-only paths: kernel interfaces an instance must not read or change.
    static let maskedPaths = [
        "/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
        "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware",
    ]
    static let readonlyPaths = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]

    /// The spec for an instance whose process 1 is `/.kiln/init`.
    static func instance(
        rootfs: String, hostname: String, type: InstanceType, network: InstanceNetwork, cgroupsPath: String,
        resolvConf: String, hosts: String
    ) -> RuntimeSpec {
        let capabilities = Capabilities(bounding: defaultCapabilities, effective: defaultCapabilities, permitted: defaultCapabilities)
        var namespaces = ["pid", "mount", "ipc", "uts"].map(Namespace.init)
        if network == .none { namespaces.append(Namespace(type: "network")) }
        let memory = Int64(type.memoryMiB) << 20
        let period: UInt64 = 100_000
        return RuntimeSpec(
            process: Process(
                user: User(uid: 0, gid: 0), args: ["/.kiln/init"],
                env: ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                cwd: "/", capabilities: capabilities, rlimits: []
            ),
            root: Root(path: rootfs),
            hostname: hostname,
            mounts: [
                Mount(destination: "/proc", type: "proc", source: "proc", options: ["nosuid", "noexec", "nodev"]),
                Mount(destination: "/dev", type: "tmpfs", source: "tmpfs", options: ["nosuid", "strictatime", "mode=755", "size=65536k"]),
                Mount(
                    destination: "/dev/pts", type: "devpts", source: "devpts",
                    options: ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]),
                Mount(
                    destination: "/dev/shm", type: "tmpfs", source: "shm",
                    options: ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]),
                Mount(destination: "/dev/mqueue", type: "mqueue", source: "mqueue", options: ["nosuid", "noexec", "nodev"]),
                Mount(destination: "/sys", type: "sysfs", source: "sysfs", options: ["nosuid", "noexec", "nodev", "ro"]),
                Mount(
                    destination: "/sys/fs/cgroup", type: "cgroup", source: "cgroup",
                    options: ["nosuid", "noexec", "nodev", "relatime", "ro"]),
                Mount(destination: "/etc/resolv.conf", type: "bind", source: resolvConf, options: ["rbind", "rw"]),
                Mount(destination: "/etc/hosts", type: "bind", source: hosts, options: ["rbind", "rw"]),
            ],
            linux: Linux(
                namespaces: namespaces,
                cgroupsPath: cgroupsPath,
                resources: Resources(
                    memory: Resources.Memory(limit: memory, swap: memory),
                    cpu: Resources.CPU(quota: Int64(type.vCPUs * Double(period)), period: period),
                    pids: Resources.Pids(limit: Int64(type.pidsLimit)),
                    devices: [Resources.DeviceRule(allow: false, access: "rwm")]
                ),
                maskedPaths: maskedPaths,
                readonlyPaths: readonlyPaths
            )
        )
    }
}

/// Builds reach package mirrors through the host's network; tests get none unless asked.
public enum InstanceNetwork: String, Sendable, Hashable, Codable {
    case host, none
}
