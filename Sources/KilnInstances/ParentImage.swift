import Foundation
import KilnModel
import KilnOCI
import KilnRegistry
import KilnSystem

#if canImport(Glibc)
    import Glibc
#endif

/// The parent image forms a recipe may name, each turned into an image in Kiln's store:
/// a registry reference, `oci-layout:PATH:TAG`, `oci-archive:…`, `kiln:NAME`, `scratch`, or
/// `bootstrap:debian:SUITE` / `bootstrap:ubuntu:SUITE` (mmdebstrap --variant=minbase, cached), or
/// `bootstrap:debian:SUITE:vm`, the same with a kernel, systemd, SSH and DHCP for machine images.
public struct ParentImageResolver: Sendable {
    public let transfer: ImageTransfer
    /// Debian-style mirrors by distribution; the host's apt sources are the default for Debian.
    public var mirrors: [String: String]
    public var observer: (@Sendable (String) -> Void)?

    public init(transfer: ImageTransfer, mirrors: [String: String] = [:], observer: (@Sendable (String) -> Void)? = nil) {
        self.transfer = transfer
        self.mirrors = mirrors
        self.observer = observer
    }

    var store: ContentStore { transfer.store }

    /// The parent's manifest descriptor in the store, resolved afresh: a registry reference is
    /// looked up at its registry every time (one manifest GET, this platform's entry of an
    /// index), and the store's name moves only when the digest did; an OCI layout's tag is read
    /// again; an OCI archive is read again when its size, time or inode changed. `offline`
    /// takes the store's copy of a registry parent instead, and says so. `lookOnly` resolves a
    /// registry parent's digest without pulling it or moving a name (`--explain-cache`).
    public func resolve(_ text: String, offline: Bool = false, lookOnly: Bool = false) async throws -> Descriptor {
        if text == "scratch" { return try scratch() }
        if text.hasPrefix("bootstrap:") { return try await bootstrap(text) }
        let location: ImageLocation
        do {
            location = try ImageLocation(text)
        } catch {
            if let named = try store.resolve(text) { return named }
            throw error
        }
        switch location {
        case .store(let name):
            guard let named = try store.resolve(name) else {
                throw KilnError(.notFound, "\(text) is not in Kiln's content store; see kiln image ls")
            }
            return named
        case .registry(let reference):
            return try await resolveRegistry(reference, offline: offline, lookOnly: lookOnly)
        case .layout(let path, let tag):
            let layout = try ContentStore(existingLayout: path)
            guard let current = try layout.resolve(tag) else { throw KilnError(.notFound, "\(text): the layout has no tag '\(tag)'") }
            return try await storeCopy(of: location, digest: current.digest, name: text)
        case .archive(let path, _):
            var info = stat()
            guard stat(path, &info) == 0 else {
                throw KilnError(.notFound, "\(text): cannot read \(path): \(String(cString: strerror(errno)))")
            }
            // The archive's stat in the name: a rewritten archive is read again.
            let stamped = "\(text)@\(info.st_size)-\(info.st_mtim.tv_sec).\(info.st_mtim.tv_nsec)-\(info.st_ino)"
            if let known = try store.resolve(stamped) {
                try store.tag(text, known)
                return known
            }
            _ = try await platformTransfer.copy(from: location, to: [.store(name: stamped), .store(name: text)]).checked()
            guard let pulled = try store.resolve(text) else {
                throw KilnError(.internalError, "\(text) was read but is not named in the store")
            }
            // Earlier versions of the archive: their names would keep their blobs from gc.
            for entry in try store.index().manifests {
                if let name = entry.annotations?[ContentStore.refNameAnnotation], name.hasPrefix(text + "@"), name != stamped {
                    _ = try store.untag(name)
                }
            }
            return pulled
        }
    }

    /// Copies to the store only the platform this host runs, as builders need.
    private var platformTransfer: ImageTransfer {
        var transfer = transfer
        if transfer.platform == nil { transfer.platform = .host }
        return transfer
    }

    private func resolveRegistry(_ reference: ImageReference, offline: Bool, lookOnly: Bool) async throws -> Descriptor {
        let name = reference.description
        let stored = try store.resolve(name)
        if offline {
            guard let stored else {
                throw KilnError(
                    .notFound,
                    "the parent \(name) is not in Kiln's store, and offline builds do not pull; run once online, or kiln image pull \(name)"
                )
            }
            observer?("parent \(name): offline, using the store's copy \(stored.digest) without asking \(reference.registry)")
            return stored
        }
        let current: Digest
        do {
            current = try await currentDigest(reference)
        } catch let error as KilnError where error.code == .network {
            throw KilnError(
                error.code,
                "cannot reach registry \(reference.registry) to resolve the parent \(name): \(error.message). Start the registry, or build from the store's copy\(stored.map { " (\($0.digest))" } ?? "") with --offline (or offline: true in kiln.yaml)"
            )
        }
        if let stored, stored.digest == current {
            observer?("parent \(name): \(current), unchanged at \(reference.registry)")
            return stored
        }
        if lookOnly {
            observer?("parent \(name): \(current) at \(reference.registry)\(stored.map { ", moved from \($0.digest)" } ?? "") (not pulled)")
            return Descriptor(mediaType: MediaType.imageManifest, digest: current, size: 0)
        }
        let result = try await storeCopy(of: .registry(reference), digest: current, name: name)
        observer?("parent \(name): \(current)\(stored.map { ", moved from \($0.digest)" } ?? ", first use")")
        return result
    }

    /// The manifest digest `reference` names now, for this host's platform when it is an index.
    func currentDigest(_ reference: ImageReference) async throws -> Digest {
        let client = try transfer.registries.client(for: reference.registry)
        let fetched = try await client.manifest(reference)
        guard MediaType.isIndex(fetched.mediaType) else { return fetched.digest }
        let index: ImageIndex
        do {
            index = try JSONDecoder().decode(ImageIndex.self, from: fetched.data)
        } catch {
            throw KilnError(.invalidArgument, "\(reference): the index is not valid JSON: \(error)")
        }
        let platform = transfer.platform ?? .host
        guard let entry = ImageTransfer.best(platform, in: index.manifests) else {
            throw KilnError(
                .notFound,
                "\(reference) has no image for \(platform); it offers \(index.manifests.compactMap(\.platform).map(\.description).joined(separator: ", "))"
            )
        }
        return entry.digest
    }

    /// The image with manifest `digest`, named `name` in the store: tagged at once when the store
    /// has it, copied from `location` otherwise.
    private func storeCopy(of location: ImageLocation, digest: Digest, name: String) async throws -> Descriptor {
        if store.contains(digest), let data = try? store.read(digest), let mediaType = MediaType.sniff(data),
            MediaType.isManifest(mediaType)
        {
            let descriptor = Descriptor(mediaType: mediaType, digest: digest, size: Int64(data.count))
            try store.tag(name, descriptor)
            return descriptor
        }
        _ = try await platformTransfer.copy(from: location, to: [.store(name: name)]).checked()
        guard let pulled = try store.resolve(name) else {
            throw KilnError(.internalError, "\(name) was pulled but is not named in the store")
        }
        return pulled
    }

    /// An image with no layers at all.
    func scratch() throws -> Descriptor {
        let platform = transfer.platform ?? .host
        let config = try store.ingestJSON(
            ImageConfiguration(architecture: platform.architecture, os: platform.os, rootfs: .init(diffIDs: [])),
            mediaType: MediaType.imageConfig)
        let manifest = try store.ingestJSON(ImageManifest(config: config, layers: []), mediaType: MediaType.imageManifest)
        try store.tag("scratch", manifest)
        return manifest
    }

    /// What `bootstrap:debian:SUITE:vm` adds to minbase: a kernel (with its initramfs), systemd as
    /// init, udev, an SSH server and DHCP on eth0.
    public static let machinePackages = [
        "linux-image-cloud-amd64", "systemd-sysv", "udev", "openssh-server", "ifupdown", "isc-dhcp-client", "iproute2",
    ]

    /// `bootstrap:debian:bookworm` (or `…:vm` for a machine root): made once with mmdebstrap,
    /// then reused by name.
    func bootstrap(_ text: String) async throws -> Descriptor {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
        let machine = parts.count == 4 && parts[3] == "vm" && parts[1] == "debian"
        guard parts.count == 3 || machine, ["debian", "ubuntu"].contains(parts[1]), !parts[2].isEmpty,
            parts[2].allSatisfy({ $0.isLetter || $0.isNumber || $0 == "-" })
        else {
            throw KilnError(
                .invalidArgument,
                "'\(text)' is not a bootstrap parent; use bootstrap:debian:SUITE or bootstrap:ubuntu:SUITE (e.g. bootstrap:debian:bookworm), or bootstrap:debian:SUITE:vm for a machine image"
            )
        }
        let (distribution, suite) = (parts[1], parts[2])
        // Its own name, so the container parent and the machine parent never replace each other.
        let name = machine ? "bootstrap/\(distribution)-vm:\(suite)" : "bootstrap/\(distribution):\(suite)"
        if let cached = try store.resolve(name) { return cached }
        guard access("/usr/bin/mmdebstrap", X_OK) == 0 else {
            throw KilnError(.notFound, "mmdebstrap is not installed; install the Debian package mmdebstrap (scripts/setup does)")
        }
        guard let mirror = mirrors[distribution] ?? (distribution == "debian" ? Self.hostDebianMirror() : nil) else {
            throw KilnError(.invalidArgument, "no \(distribution) mirror is configured; set bootstrap.mirrors.\(distribution) in kiln.yaml")
        }
        let directory = store.scratch + "/" + ProcessOwner.temporaryName("bootstrap-")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        var arguments = ["--quiet", "--mode=root", "--variant=minbase"]
        if machine { arguments.append("--include=" + Self.machinePackages.joined(separator: ",")) }
        let described = "mmdebstrap --variant=minbase\(machine ? " " + arguments[3] : "")"
        observer?("bootstrapping \(distribution) \(suite)\(machine ? " for machines" : "") from \(mirror) with \(described)")
        let log = OutputCollector()
        let result = try await ProcessRunner.run(
            executablePath: "/usr/bin/mmdebstrap", argumentZero: "mmdebstrap",
            arguments: arguments + [suite, directory, mirror],
            environment: ProcessInfo.processInfo.environment, workingDirectory: nil, timeout: .seconds(1800)
        ) { _, bytes in log.append(bytes) }
        guard result.exitCode == 0 else {
            throw KilnError(
                .execFailure,
                "mmdebstrap could not bootstrap \(distribution) \(suite) from \(mirror) (exit \(result.exitCode)): \(log.text.suffix(1500))"
            )
        }
        if machine { try Self.prepareMachineRoot(directory) }
        observer?("packing the \(suite) root filesystem into \(name)")
        return try store.importRootFilesystem(directory, name: name, createdBy: "\(described) \(suite) \(mirror)")
    }

    /// What a freshly bootstrapped machine root needs to boot and reach the network: DHCP on
    /// eth0 (the kernel command line carries net.ifnames=0), the root by label, a host name.
    static func prepareMachineRoot(_ directory: String) throws {
        let files = [
            "etc/network/interfaces": "auto lo\niface lo inet loopback\n\nauto eth0\niface eth0 inet dhcp\n",
            "etc/fstab": "LABEL=\(MachineDisk.rootLabel) / ext4 errors=remount-ro 0 1\n",
            "etc/hostname": "kiln\n",
            "etc/hosts": "127.0.0.1 localhost\n127.0.1.1 kiln\n::1 localhost ip6-localhost ip6-loopback\n",
            // Read by kernel-install and bootloader set-ups, and what Kiln passes when it boots the disk.
            "etc/kernel/cmdline": MachineDisk.kernelCommandLine + "\n",
        ]
        for (path, text) in files {
            let target = directory + "/" + path
            do {
                try FileManager.default.createDirectory(
                    atPath: (target as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
                try text.write(toFile: target, atomically: true, encoding: .utf8)
            } catch {
                throw KilnError(.ioFailure, "cannot write /\(path) into the machine root at \(directory): \(error.localizedDescription)")
            }
        }
    }

    /// The first `deb` URI of the host's apt sources (one-line or deb822 format).
    static func hostDebianMirror() -> String? {
        var files = ["/etc/apt/sources.list"]
        files += ((try? FileManager.default.contentsOfDirectory(atPath: "/etc/apt/sources.list.d")) ?? []).sorted().map {
            "/etc/apt/sources.list.d/" + $0
        }
        for file in files {
            guard let text = try? String(contentsOfFile: file, encoding: .utf8) else { continue }
            for line in text.split(separator: "\n") {
                let words = line.split(separator: " ").map(String.init)
                if words.first == "deb", let uri = words.dropFirst().first(where: { $0.hasPrefix("http") }) { return uri }
                if words.first == "URIs:", words.count > 1 { return words[1] }
            }
        }
        return nil
    }
}
