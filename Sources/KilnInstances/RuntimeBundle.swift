import Foundation
import KilnModel

#if canImport(Glibc)
    import Glibc
#endif

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
        /// Joins this namespace instead of making a new one.
        var path: String? = nil
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

    /// A seccomp filter as runc takes it.
    struct Seccomp: Encodable {
        struct Rule: Encodable {
            struct Argument: Encodable {
                var index: UInt
                var value: UInt64
                var valueTwo: UInt64
                var op: String
            }

            var names: [String]
            var action: String
            var errnoRet: UInt?
            var args: [Argument]?
        }

        var defaultAction: String
        var architectures: [String]
        var syscalls: [Rule]
    }

    struct Linux: Encodable {
        var namespaces: [Namespace]
        var cgroupsPath: String
        var resources: Resources
        var maskedPaths: [String]
        var readonlyPaths: [String]
        var seccomp: Seccomp
    }

    var ociVersion = "1.0.2"
    var process: Process
    var root: Root
    var hostname: String
    var mounts: [Mount]
    var linux: Linux

    /// Docker's default capability set without CAP_NET_RAW: raw sockets would let a step
    /// forge or sniff traffic on the instance's network; ping is not worth that.
    static let defaultCapabilities = [
        "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_SETGID", "CAP_SETUID",
        "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
    ]

    /// Docker's masked and read-only paths: kernel interfaces an instance must not read or change
    /// (powercap's energy counters leak what other tenants compute).
    static let maskedPaths = [
        "/proc/asound", "/proc/acpi", "/proc/interrupts", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
        "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware", "/sys/devices/virtual/powercap",
    ]

    /// The system calls Docker's default profile keeps from a container without CAP_SYS_ADMIN:
    /// kernel keyrings, eBPF, perf, modules, mounts, namespaces, clocks, NUMA policy, other
    /// processes' memory, io_uring. Written as a deny list (everything else allowed), so new
    /// harmless calls keep working; names this kernel's libseccomp does not know are skipped by runc.
    static let deniedSystemCalls = [
        "acct", "add_key", "bpf", "clock_adjtime", "clock_settime", "create_module", "delete_module", "finit_module",
        "fsconfig", "fsmount", "fsopen", "fspick", "get_kernel_syms", "get_mempolicy", "init_module", "io_uring_enter",
        "io_uring_register", "io_uring_setup", "ioperm", "iopl", "kcmp", "kexec_file_load", "kexec_load", "keyctl",
        "lookup_dcookie", "mbind", "mount", "mount_setattr", "move_mount", "move_pages", "name_to_handle_at", "nfsservctl",
        "open_by_handle_at", "open_tree", "perf_event_open", "pivot_root", "process_vm_readv", "process_vm_writev",
        "query_module", "quotactl", "quotactl_fd", "reboot", "request_key", "set_mempolicy", "setns", "settimeofday",
        "stime", "swapoff", "swapon", "syslog", "sysfs", "_sysctl", "umount", "umount2", "unshare", "uselib", "userfaultfd",
        "ustat", "vm86", "vm86old",
    ]

    /// clone flags that make namespaces; CLONE_NEWUSER is the one an unprivileged process could use.
    static let namespaceCloneFlags: [UInt64] = [
        0x0002_0000, 0x0400_0000, 0x0800_0000, 0x1000_0000, 0x2000_0000, 0x4000_0000, 0x0200_0000,
    ]

    static let seccomp = Seccomp(
        defaultAction: "SCMP_ACT_ALLOW", architectures: ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        syscalls: [Seccomp.Rule(names: deniedSystemCalls, action: "SCMP_ACT_ERRNO", errnoRet: UInt(EPERM))]
            // clone3 passes its flags in memory a filter cannot read: ENOSYS makes libc fall back to clone.
            + [Seccomp.Rule(names: ["clone3"], action: "SCMP_ACT_ERRNO", errnoRet: UInt(ENOSYS))]
            + namespaceCloneFlags.map { flag in
                Seccomp.Rule(
                    names: ["clone"], action: "SCMP_ACT_ERRNO", errnoRet: UInt(EPERM),
                    args: [.init(index: 0, value: flag, valueTwo: flag, op: "SCMP_CMP_MASKED_EQ")])
            }
    )
    static let readonlyPaths = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]

    /// The spec for an instance whose process 1 is `/.kiln/init`.
    static func instance(
        rootfs: String, hostname: String, type: InstanceType, network: InstanceNetwork, networkNamespace: String?, cgroupsPath: String,
        resolvConf: String, hosts: String
    ) -> RuntimeSpec {
        let capabilities = Capabilities(bounding: defaultCapabilities, effective: defaultCapabilities, permitted: defaultCapabilities)
        var namespaces = ["pid", "mount", "ipc", "uts"].map { Namespace(type: $0) }
        switch network {
        case .host: break
        case .none: namespaces.append(Namespace(type: "network"))
        case .isolated: namespaces.append(Namespace(type: "network", path: networkNamespace))
        }
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
                readonlyPaths: readonlyPaths,
                seccomp: seccomp
            )
        )
    }
}
