import Foundation
import KilnModel
import KilnSystem
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// How an instance reaches the network.
/// - `isolated` (builders' default): its own network namespace, a veth pair to the host and
///   NAT out. Instance code cannot see or bind the host's loopback, so services on 127.0.0.1
///   (a registry's plain-http port, a local proxy) stay out of reach; a service the host offers
///   on purpose listens on 0.0.0.0 and is reached as `host.kiln.internal`.
/// - `host`: the host's own network, loopback included. Only for trusted documents.
/// - `none`: a namespace with loopback only (test instances).
public enum InstanceNetwork: String, Sendable, Hashable, Codable, CaseIterable {
    case isolated, host, none
}

/// The namespace, veth pair and addresses of one `isolated` instance. Each instance gets a /30
/// of `subnet`: the host end is `.1`, the instance `.2`; instances cannot reach each other.
struct IsolatedNetwork: Sendable {
    static let subnet = "10.213.0.0/16"
    static let hostName = "host.kiln.internal"
    /// Serialises address choice between Kiln processes.
    static let lockFile = "/run/kiln/network.lock"
    /// One file per /30 in use, `slot-N-ID`, so choosing an address reads a folder, not `ip addr`.
    static let slotsFolder = "/run/kiln/network-slots"
    /// Set once this process has seen the forwarding rules in place.
    private static let forwardingChecked = Mutex(false)

    let namespace: String
    let hostAddress: String
    let instanceAddress: String

    var namespacePath: String { "/run/netns/\(namespace)" }

    /// Interface names have 15 characters at most: `kv` + the id's 12 hex digits.
    static func hostInterface(id: String) -> String { "kv" + id.dropFirst("kiln-".count).prefix(12) }

    static func create(id: String) async throws -> IsolatedNetwork {
        try FileManager.default.createDirectory(atPath: slotsFolder, withIntermediateDirectories: true)
        let lock = open(lockFile, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard lock >= 0 else { throw KilnError(.ioFailure, "cannot open \(lockFile): \(String(cString: strerror(errno)))") }
        defer { close(lock) }
        flock(lock, LOCK_EX)
        if !forwardingChecked.withLock({ $0 }) {
            try await enableForwarding()
            forwardingChecked.withLock { $0 = true }
        }
        let used = Set(slotFiles().map(\.slot)).union(slotsOnInterfaces())
        guard let slot = (1..<16_384).first(where: { !used.contains($0) }) else {
            throw KilnError(.unsupported, "every instance network in \(subnet) is in use; remove kept instances (kiln instance rm)")
        }
        let slotFile = "\(slotsFolder)/slot-\(slot)-\(id)"
        guard FileManager.default.createFile(atPath: slotFile, contents: nil) else {
            throw KilnError(.ioFailure, "cannot record the instance network at \(slotFile)")
        }
        let network = IsolatedNetwork(
            namespace: id, hostAddress: address(slot: slot, host: 1), instanceAddress: address(slot: slot, host: 2))
        let hostEnd = hostInterface(id: id)
        let peer = "kp" + hostEnd.dropFirst(2)
        do {
            try await ip(
                [
                    "netns add \(id)", "link add \(hostEnd) type veth peer name \(peer)", "link set \(peer) netns \(id)",
                    "addr add \(network.hostAddress)/30 dev \(hostEnd)", "link set \(hostEnd) up",
                ], namespace: nil)
            try await ip(
                [
                    "link set \(peer) name eth0", "addr add \(network.instanceAddress)/30 dev eth0", "link set eth0 up", "link set lo up",
                    "route add default via \(network.hostAddress)",
                ], namespace: id)
        } catch {
            await remove(id: id)
            throw error
        }
        return network
    }

    /// Deleting the namespace deletes the veth pair with it; then the address is free.
    static func remove(id: String) async {
        if FileManager.default.fileExists(atPath: "/run/netns/\(id)") {
            _ = try? await ip(["netns delete \(id)"], namespace: nil)
        }
        for file in slotFiles() where file.id == id { unlink(slotsFolder + "/" + file.name) }
    }

    /// Slots whose host address is on an interface already (one Kiln did not record).
    static func slotsOnInterfaces() -> Set<Int> {
        var slots = Set<Int>()
        var list: UnsafeMutablePointer<ifaddrs>?
        guard getifaddrs(&list) == 0 else { return slots }
        defer { freeifaddrs(list) }
        var entry = list
        while let current = entry {
            defer { entry = current.pointee.ifa_next }
            guard let address = current.pointee.ifa_addr, address.pointee.sa_family == sa_family_t(AF_INET) else { continue }
            let ipv4 = address.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { UInt32(bigEndian: $0.pointee.sin_addr.s_addr) }
            if ipv4 >> 16 == (10 << 8 | 213) { slots.insert(Int(ipv4 & 0xFFFF) / 4) }
        }
        return slots
    }

    /// The addresses in use: `slot-N-ID` files.
    static func slotFiles() -> [(name: String, slot: Int, id: String)] {
        ((try? FileManager.default.contentsOfDirectory(atPath: slotsFolder)) ?? []).compactMap { name in
            let parts = name.split(separator: "-", maxSplits: 2)
            guard parts.count == 3, parts[0] == "slot", let slot = Int(parts[1]) else { return nil }
            return (name, slot, String(parts[2]))
        }
    }

    /// Namespaces of instances whose folder is gone (a crash between the two).
    static func leftovers(olderThan seconds: Int) -> [String] {
        let now = time(nil)
        func old(_ path: String) -> Bool {
            var info = stat()
            return lstat(path, &info) == 0 && Int(now - info.st_mtim.tv_sec) > seconds
        }
        let namespaces = ((try? FileManager.default.contentsOfDirectory(atPath: "/run/netns")) ?? []).filter {
            $0.hasPrefix("kiln-") && old("/run/netns/" + $0)
        }
        // An address recorded by a Kiln that died before it made the namespace.
        let slots = slotFiles().filter {
            old(slotsFolder + "/" + $0.name) && !FileManager.default.fileExists(atPath: "/run/netns/" + $0.id)
        }
        return Array(Set(namespaces + slots.map(\.id))).sorted()
    }

    static func address(slot: Int, host: Int) -> String {
        let offset = slot * 4 + host
        return "10.213.\(offset >> 8).\(offset & 255)"
    }

    /// Runs `ip -batch` lines, in `namespace` when given.
    private static func ip(_ commands: [String], namespace: String?) async throws {
        let batch = "/run/kiln/ip-\(UUID().uuidString).batch"
        try (commands.joined(separator: "\n") + "\n").write(toFile: batch, atomically: true, encoding: .utf8)
        defer { unlink(batch) }
        let result = try await tool("ip", (namespace.map { ["-n", $0] } ?? []) + ["-batch", batch])
        guard result.status == 0 else {
            throw KilnError(
                .ioFailure,
                "cannot set up the instance network (ip \(commands.first ?? "")…): \(result.output); iproute2 and iptables are needed (scripts/setup installs them)"
            )
        }
    }

    /// Forwarding and NAT for the subnet, and no traffic between instances; each rule is added
    /// once (checked with -C), so the host's other rules are left as they are.
    private static func enableForwarding() async throws {
        guard access("/usr/sbin/iptables", X_OK) == 0, access("/usr/sbin/ip", X_OK) == 0 else {
            throw KilnError(
                .notFound,
                "isolated instance networks need /usr/sbin/ip and /usr/sbin/iptables; install iproute2 and iptables (scripts/setup does) or use --network host"
            )
        }
        let forward = "/proc/sys/net/ipv4/ip_forward"
        if (try? String(contentsOfFile: forward, encoding: .utf8))?.hasPrefix("1") != true {
            guard (try? "1\n".write(toFile: forward, atomically: false, encoding: .utf8)) != nil else {
                throw KilnError(.ioFailure, "cannot enable IPv4 forwarding (\(forward)); isolated instance networks need it")
            }
        }
        // Inserted (-I) so a host chain ending in REJECT cannot shadow them; the drops go in last,
        // so they sit first: nothing between instances, nothing to link-local addresses (a cloud
        // host's metadata service would hand out its credentials).
        let rules: [(table: String, chain: String, rule: [String], insert: Bool)] = [
            ("nat", "POSTROUTING", ["-s", subnet, "!", "-d", subnet, "-j", "MASQUERADE"], false),
            ("filter", "FORWARD", ["-d", subnet, "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"], true),
            ("filter", "FORWARD", ["-s", subnet, "!", "-d", subnet, "-j", "ACCEPT"], true),
            ("filter", "FORWARD", ["-s", subnet, "-d", subnet, "-j", "DROP"], true),
            ("filter", "FORWARD", ["-s", subnet, "-d", "169.254.0.0/16", "-j", "DROP"], true),
            ("filter", "INPUT", ["-s", subnet, "-d", "169.254.0.0/16", "-j", "DROP"], true),
        ]
        for rule in rules {
            let check = try await iptables(["-t", rule.table, "-C", rule.chain] + rule.rule)
            if check.status == 0 { continue }
            let added = try await iptables(["-t", rule.table, rule.insert ? "-I" : "-A", rule.chain] + rule.rule)
            guard added.status == 0 else {
                throw KilnError(
                    .ioFailure, "cannot add the iptables rule for instance networks (\(rule.rule.joined(separator: " "))): \(added.output)")
            }
        }
    }

    private static func iptables(_ arguments: [String]) async throws -> (status: Int32, output: String) {
        try await tool("iptables", ["-w"] + arguments)
    }

    /// Runs `/usr/sbin/NAME`; its exit status and trimmed output.
    private static func tool(_ name: String, _ arguments: [String]) async throws -> (status: Int32, output: String) {
        let output = OutputCollector()
        let result = try await ProcessRunner.run(
            executablePath: "/usr/sbin/" + name, argumentZero: name, arguments: arguments,
            environment: ["PATH": "/usr/sbin:/usr/bin:/sbin:/bin"], workingDirectory: nil, timeout: .seconds(30)
        ) { _, bytes in output.append(bytes) }
        return (result.exitCode, output.text.trimmingCharacters(in: .whitespacesAndNewlines))
    }
}
