import Foundation
import KilnModel
import KilnOCI
import KilnSystem
import KilnTOE
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// Where instances live: `<dataDirectory>/instances/<id>/` holds each one's overlay dirs,
/// runtime bundle and state; layers are shared from `<dataDirectory>/layers`.
public struct InstanceHost: Sendable {
    public let dataDirectory: String
    public let store: ContentStore
    public let layers: LayerCache
    let runc: Runc

    public init(dataDirectory: String, store: ContentStore) throws {
        self.dataDirectory = dataDirectory
        self.store = store
        layers = try LayerCache(root: dataDirectory + "/layers")
        runc = Runc()
        try FileManager.default.createDirectory(atPath: instancesDirectory, withIntermediateDirectories: true)
    }

    var instancesDirectory: String { dataDirectory + "/instances" }

    /// Kiln's own top layer for every instance: the init at /.kiln/init and the mount points
    /// runc needs, so that nothing Kiln adds ever lands in an instance's upper dir (or a snapshot).
    func kilnLayer() throws -> String {
        // Named after the init binary's size and time, so a new kiln-init gets a new layer.
        let initBinary = try Self.locateInit()
        var info = stat()
        guard stat(initBinary, &info) == 0 else {
            throw KilnError(.notFound, "cannot read \(initBinary): \(String(cString: strerror(errno)))")
        }
        let folder = instancesDirectory + "/.kiln-layer-\(info.st_size)-\(info.st_mtim.tv_sec)"
        if FileManager.default.fileExists(atPath: folder + "/.kiln/init") { return folder }
        let staging = instancesDirectory + "/.kiln-staging-\(UUID().uuidString)"
        let manager = FileManager.default
        for directory in ["/.kiln", "/proc", "/sys", "/dev", "/etc"] {
            try manager.createDirectory(
                atPath: staging + directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o755])
        }
        for file in ["/etc/resolv.conf", "/etc/hosts"] {
            _ = manager.createFile(atPath: staging + file, contents: nil, attributes: [.posixPermissions: 0o644])
        }
        try manager.copyItem(atPath: initBinary, toPath: staging + "/.kiln/init")
        chmod(staging + "/.kiln/init", 0o755)
        if rename(staging, folder) != 0 { try? manager.removeItem(atPath: staging) }
        return folder
    }

    /// `kiln-init` sits next to the kiln executable (or the test bundle); `KILN_INIT` overrides.
    static func locateInit() throws -> String {
        if let given = ProcessInfo.processInfo.environment["KILN_INIT"] { return given }
        let executable = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        var directory = (executable as NSString).deletingLastPathComponent
        for _ in 0..<3 {
            let candidate = directory + "/kiln-init"
            if access(candidate, X_OK) == 0 { return candidate }
            directory = (directory as NSString).deletingLastPathComponent
        }
        throw KilnError(.notFound, "kiln-init is not next to \(executable); build it (swift build --product kiln-init) or set KILN_INIT")
    }
}

public struct InstanceOptions: Sendable, Hashable {
    public var type: InstanceType
    public var network: InstanceNetwork
    /// Kept after a failure for debugging (`terminateInstanceOnFailure: false`).
    public var keep: Bool

    public init(type: InstanceType = InstanceType.defaults["t3.medium"]!, network: InstanceNetwork = .isolated, keep: Bool = false) {
        self.type = type
        self.network = network
        self.keep = keep
    }
}

/// What `instances/<id>/instance.json` records, so a later Kiln can reap what a crash left.
struct InstanceRecord: Codable {
    var id: String
    var image: String
    var ownerPID: Int32
    /// With the pid, tells a live owner from a later process that got the same pid.
    var ownerStartTime: UInt64?
    var keep: Bool
    var created: String
}

/// A builder or test instance: a runc container whose root is an overlay of the image's cached
/// layers plus its own upper dir. `destroy()` releases everything in reverse order.
public final class ContainerInstance: Sendable {
    public let id: String
    public let directory: String
    public let image: ImageConfiguration
    public let manifest: ImageManifest
    public let options: InstanceOptions
    let host: InstanceHost
    var runc: Runc { host.runc }

    public var rootfs: String { directory + "/rootfs" }
    /// The root as Kiln's host-side file work sees it (nodev, nosuid, noexec).
    public var hostView: String { directory + "/view" }
    public var upper: String { directory + "/upper" }
    var bundle: String { directory + "/bundle" }

    /// The image's Env as a dictionary.
    static let defaultEnvironment = ["PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root"]

    var environment: [String: String] {
        var values = Self.defaultEnvironment
        for entry in image.config?.env ?? [] {
            guard let equals = entry.firstIndex(of: "=") else { continue }
            values[String(entry[..<equals])] = String(entry[entry.index(after: equals)...])
        }
        return values
    }

    var workingDirectory: String { image.config?.workingDir.flatMap { $0.isEmpty ? nil : $0 } ?? "/" }

    public var session: ContainerSession { ContainerSession(instance: self) }

    var cgroupsPath: String { "/kiln/\(id)" }

    let started = ContinuousClock.now
    private let freezeDepth = Mutex(0)

    private init(
        id: String, directory: String, image: ImageConfiguration, manifest: ImageManifest, options: InstanceOptions, host: InstanceHost
    ) {
        self.id = id
        self.options = options
        self.directory = directory
        self.image = image
        self.manifest = manifest
        self.host = host
    }

    /// Starts an instance from an image in the store (a manifest descriptor).
    public static func start(
        image descriptor: Descriptor, on host: InstanceHost, options: InstanceOptions = InstanceOptions(), name: String? = nil
    ) async throws -> ContainerInstance {
        try host.runc.available()
        let (manifest, config) = try host.store.image(descriptor.digest)
        let id = "kiln-" + UUID().uuidString.lowercased().replacingOccurrences(of: "-", with: "").prefix(12)
        let directory = host.instancesDirectory + "/" + id
        let instance = ContainerInstance(id: id, directory: directory, image: config, manifest: manifest, options: options, host: host)
        let manager = FileManager.default
        try manager.createDirectory(atPath: directory, withIntermediateDirectories: false, attributes: [.posixPermissions: 0o700])
        let record = InstanceRecord(
            id: id, image: name ?? descriptor.digest.description, ownerPID: getpid(), ownerStartTime: ProcessOwner.current.startTime,
            keep: options.keep,
            created: ISO8601DateFormatter().string(from: Date()))
        try DurableFile.write(JSONEncoder().encode(record), to: directory + "/instance.json", mode: 0o600)
        do {
            for folder in [instance.rootfs, instance.hostView, instance.upper, directory + "/work", instance.bundle] {
                try manager.createDirectory(atPath: folder, withIntermediateDirectories: false)
            }
            let kilnLayer = try host.kilnLayer()
            let budget =
                Overlay.optionLimit - "lowerdir=,upperdir=\(instance.upper),workdir=\(directory)/work,\(Overlay.fixedOptions)".utf8.count
                - kilnLayer.utf8.count - 1
            let lowers = try [kilnLayer] + host.layers.folders(for: manifest, config: config, store: host.store, budget: budget).reversed()
            try Overlay.mount(lower: lowers, upper: instance.upper, work: directory + "/work", at: instance.rootfs, scratch: directory)
            try Overlay.mountHostView(of: instance.rootfs, at: instance.hostView)
            try instance.checkFilesRuncReads()
            let network = options.network == .isolated ? try await IsolatedNetwork.create(id: id) : nil
            var resolv = (try? String(contentsOfFile: "/etc/resolv.conf", encoding: .utf8)) ?? "nameserver 127.0.0.1\n"
            if network != nil {
                // The host's loopback is not the instance's: a resolver there cannot answer it.
                resolv = Self.withoutLoopbackNameservers(resolv)
                // systemd-resolved's stub (127.0.0.53) leaves none: its upstream servers serve instead.
                if !resolv.contains("nameserver "),
                    let upstream = try? String(contentsOfFile: "/run/systemd/resolve/resolv.conf", encoding: .utf8)
                {
                    resolv = Self.withoutLoopbackNameservers(upstream)
                }
            }
            try resolv.write(toFile: directory + "/resolv.conf", atomically: true, encoding: .utf8)
            var hosts = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t\(id)\n"
            if let network { hosts += "\(network.hostAddress)\t\(IsolatedNetwork.hostName)\n" }
            try hosts.write(toFile: directory + "/hosts", atomically: true, encoding: .utf8)
            let spec = RuntimeSpec.instance(
                rootfs: instance.rootfs, hostname: id, type: options.type, network: options.network,
                networkNamespace: network?.namespacePath, cgroupsPath: instance.cgroupsPath, resolvConf: directory + "/resolv.conf",
                hosts: directory + "/hosts"
            )
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            try encoder.encode(spec).write(to: URL(fileURLWithPath: instance.bundle + "/config.json"))
            try await host.runc.start(id: id, bundle: instance.bundle)
        } catch {
            await instance.destroy()
            throw error
        }
        return instance
    }

    static func withoutLoopbackNameservers(_ text: String) -> String {
        text.split(separator: "\n", omittingEmptySubsequences: false).filter {
            !($0.hasPrefix("nameserver 127.") || $0.hasPrefix("nameserver ::1"))
        }.joined(separator: "\n")
    }

    /// Stops process 1 and starts it again on the same root filesystem (a reboot).
    func restart() async throws {
        await runc.remove(id: id)
        try checkFilesRuncReads()
        try await runc.start(id: id, bundle: bundle)
    }

    /// runc reads the root's /etc/passwd and /etc/group when a process starts; a FIFO there
    /// would block it (and Kiln) until a timeout, so they must be regular files or absent.
    func checkFilesRuncReads() throws {
        try UserDatabase(fileSystem: RootedFileSystem(root: hostView, workingDirectory: "/")).checkAccountFiles()
    }

    // MARK: Host-side work on the instance's files

    /// Runs `body` with every process of the instance stopped (the cgroup freezer), so nothing
    /// a step left running can swap a folder for a symlink while Kiln resolves a path or packs
    /// the upper dir from the host. Calls nest; the outermost one freezes and thaws.
    public func whileFrozen<T>(_ body: () async throws -> T) async throws -> T {
        try beginFreeze()
        defer { endFreeze() }
        return try await body()
    }

    public func whileFrozen<T>(_ body: () throws -> T) throws -> T {
        try beginFreeze()
        defer { endFreeze() }
        return try body()
    }

    private func beginFreeze() throws {
        try freezeDepth.withLock { depth in
            if depth == 0 { try Cgroups.freeze(path: cgroupsPath) }
            depth += 1
        }
    }

    private func endFreeze() {
        freezeDepth.withLock { depth in
            depth -= 1
            if depth == 0 { Cgroups.thaw(path: cgroupsPath) }
        }
    }

    /// The image's `User` (name, uid, uid:gid or name:group) as numbers, from the instance's own files.
    func user(_ override: String? = nil) throws -> (UInt32, UInt32) {
        try whileFrozen {
            try checkFilesRuncReads()
            return try userIDs(override)
        }
    }

    private func userIDs(_ override: String?) throws -> (UInt32, UInt32) {
        let users = UserDatabase(fileSystem: RootedFileSystem(root: hostView, workingDirectory: "/"))
        let text = override ?? image.config?.user ?? ""
        guard !text.isEmpty else { return (0, 0) }
        let parts = text.split(separator: ":", maxSplits: 1).map(String.init)
        let uid = try users.userID(parts[0])
        let gid = try parts.count > 1 ? users.groupID(parts[1]) : (users.primaryGroupID(ofUser: uid) ?? 0)
        return (uid, gid)
    }

    /// How long an instance ran and the CPU its processes used: what a build is charged for.
    public struct Usage: Sendable, Hashable, Codable {
        public var seconds: Double
        public var cpuSeconds: Double

        public init(seconds: Double, cpuSeconds: Double) {
            self.seconds = seconds
            self.cpuSeconds = cpuSeconds
        }
    }

    /// The usage so far; read it before `destroy()`, which removes the cgroup.
    public func usage() -> Usage {
        Usage(seconds: (ContinuousClock.now - started).inSeconds, cpuSeconds: Cgroups.cpuSeconds(path: cgroupsPath))
    }

    /// Stops the container, unmounts its root and deletes its folder; safe to call twice.
    /// Runs in its own task, so it completes even when the caller was cancelled (an interrupt).
    public func destroy() async {
        await Task { [self] in
            // A Kiln stopped mid file action may leave it frozen; frozen processes cannot die.
            Cgroups.thaw(path: cgroupsPath)
            await runc.remove(id: id)
            Overlay.unmount(hostView)
            Overlay.unmount(rootfs)
            try? FileManager.default.removeItem(atPath: directory)
            Cgroups.remove(path: cgroupsPath)
            await IsolatedNetwork.remove(id: id)
        }.value
    }

    // MARK: Snapshot

    /// What the recipe sets on the new image.
    public struct SnapshotSettings: Sendable {
        public var history: String
        /// More history entries (one per component or instruction), before `history`.
        public var steps: [String] = []
        public var environment: [String: String] = [:]
        public var labels: [String: String] = [:]
        public var entrypoint: [String]?
        public var cmd: [String]?
        public var workingDir: String?
        public var user: String?
        public var exposedPorts: [String] = []
        public var volumes: [String] = []
        public var stopSignal: String?
        public var sourceDateEpoch: Int64?
        /// One history entry per step when the image has a layer per step; replaces `steps`
        /// and `history` when set.
        public var layerHistory: [(createdBy: String, emptyLayer: Bool)] = []

        public init(history: String, sourceDateEpoch: Int64? = nil) {
            self.history = history
            self.sourceDateEpoch = sourceDateEpoch
        }
    }

    /// The upper dir as a new layer on the parent image (whiteouts included), stored and named.
    public func snapshot(as name: String, settings: SnapshotSettings) throws -> Descriptor {
        let layer = try packLayer(sourceDateEpoch: settings.sourceDateEpoch).layer
        return try Self.compose(base: manifest, config: image, layers: [layer], settings: settings, in: host.store, name: name)
    }

    /// A layer packed from an instance's upper dir.
    public struct PackedLayer: Sendable, Hashable {
        public var descriptor: Descriptor
        public var diffID: Digest
        /// Tar entries written; 0 when nothing changed.
        public var entries: Int

        public init(descriptor: Descriptor, diffID: Digest, entries: Int) {
            self.descriptor = descriptor
            self.diffID = diffID
            self.entries = entries
        }
    }

    /// Packs the upper dir (or only what changed since `since`) as a gzip layer in the store.
    /// Also returns the upper dir's state as packed, the baseline for the next step.
    public func packLayer(since: DirectoryState? = nil, sourceDateEpoch: Int64?) throws -> (layer: PackedLayer, state: DirectoryState) {
        let store = host.store
        // Named for its owner, so a sweep after a crash knows it is garbage.
        let staging = store.scratch + "/" + ProcessOwner.temporaryName(".snapshot-")
        defer { unlink(staging) }
        let handle = try FileHandle(
            forWritingTo: {
                FileManager.default.createFile(atPath: staging, contents: nil)
                return URL(fileURLWithPath: staging)
            }())
        let gzip = try GzipLayerWriter { try handle.write(contentsOf: Data($0)) }
        var tar = TarWriter { try gzip.write($0) }
        let (entries, state) = try whileFrozen {
            try DirectoryArchiver(sourceDateEpoch: sourceDateEpoch, overlayUpperDirectory: true, changesSince: since)
                .archiveRecording(upper, into: &tar)
        }
        let packed = try gzip.finish()
        try handle.close()
        // Under the store's shared gc lock, so a gc in flight cannot unlink it as unnamed.
        try store.place(staging, as: packed.digest)
        return (
            PackedLayer(
                descriptor: Descriptor(mediaType: MediaType.layerTarGzip, digest: packed.digest, size: packed.size), diffID: packed.diffID,
                entries: entries), state
        )
    }

    /// A new image: `base`'s layers plus `layers`, with `config` changed as `settings` say;
    /// stored, and named if `name` is given.
    public static func compose(
        base: ImageManifest, config image: ImageConfiguration, layers: [PackedLayer], settings: SnapshotSettings, in store: ContentStore,
        name: String?
    ) throws -> Descriptor {
        var config = image
        let created = ISO8601DateFormatter().string(
            from: settings.sourceDateEpoch.map { Date(timeIntervalSince1970: TimeInterval($0)) } ?? Date())
        config.created = created
        config.rootfs.diffIDs += layers.map(\.diffID)
        config.history =
            (config.history ?? [])
            + (settings.layerHistory.isEmpty
                ? settings.steps.map { .init(created: created, createdBy: $0, emptyLayer: true) } + [
                    .init(created: created, createdBy: settings.history)
                ]
                : settings.layerHistory.map { .init(created: created, createdBy: $0.createdBy, emptyLayer: $0.emptyLayer ? true : nil) })
        var container = config.config ?? ImageConfiguration.ContainerConfig()
        if !settings.environment.isEmpty {
            var environment = defaultEnvironment
            for entry in container.env ?? [] {
                guard let equals = entry.firstIndex(of: "=") else { continue }
                environment[String(entry[..<equals])] = String(entry[entry.index(after: equals)...])
            }
            environment.merge(settings.environment) { _, new in new }
            container.env = environment.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }
        }
        if !settings.labels.isEmpty { container.labels = (container.labels ?? [:]).merging(settings.labels) { _, new in new } }
        if let entrypoint = settings.entrypoint { container.entrypoint = entrypoint }
        if let cmd = settings.cmd { container.cmd = cmd }
        if let workingDir = settings.workingDir { container.workingDir = workingDir }
        if let user = settings.user { container.user = user }
        if let stopSignal = settings.stopSignal { container.stopSignal = stopSignal }
        for port in settings.exposedPorts {
            container.exposedPorts = (container.exposedPorts ?? [:]).merging([port.contains("/") ? port : port + "/tcp": EmptyObject()]) {
                a, _ in a
            }
        }
        for volume in settings.volumes { container.volumes = (container.volumes ?? [:]).merging([volume: EmptyObject()]) { a, _ in a } }
        config.config = container
        let configDescriptor = try store.ingestJSON(config, mediaType: MediaType.imageConfig)
        let manifest = try store.ingestJSON(
            ImageManifest(config: configDescriptor, layers: base.layers + layers.map(\.descriptor)), mediaType: MediaType.imageManifest)
        if let name { try store.tag(name, manifest) }
        return manifest
    }

    // MARK: Kept and crashed instances

    /// An instance as `kiln instance ls` shows it.
    public struct Listing: Sendable, Codable {
        public var id: String
        public var image: String
        public var created: String
        public var kept: Bool
        public var running: Bool
    }

    public static func list(on host: InstanceHost) async -> [Listing] {
        let running = Set(await host.runc.list().filter { $0.status == "running" }.map(\.id))
        return ((try? FileManager.default.contentsOfDirectory(atPath: host.instancesDirectory)) ?? []).filter { $0.hasPrefix("kiln-") }
            .sorted().compactMap { id in
                guard let record = Self.record(id: id, on: host) else { return nil }
                return Listing(id: id, image: record.image, created: record.created, kept: record.keep, running: running.contains(id))
            }
    }

    static func record(id: String, on host: InstanceHost) -> InstanceRecord? {
        let path = host.instancesDirectory + "/" + id + "/instance.json"
        return (try? Data(contentsOf: URL(fileURLWithPath: path))).flatMap { try? JSONDecoder().decode(InstanceRecord.self, from: $0) }
    }

    /// Removes one instance by id, kept or not: container, mount, cgroup, folder.
    public static func remove(id: String, on host: InstanceHost) async throws {
        guard id.hasPrefix("kiln-"), !id.contains("/"), FileManager.default.fileExists(atPath: host.instancesDirectory + "/" + id) else {
            throw KilnError(.notFound, "no instance '\(id)'; see kiln instance ls")
        }
        await release(id: id, on: host)
    }

    private static func release(id: String, on host: InstanceHost) async {
        let directory = host.instancesDirectory + "/" + id
        Cgroups.thaw(path: "/kiln/\(id)")
        await host.runc.remove(id: id)
        Overlay.unmount(directory + "/view")
        Overlay.unmount(directory + "/rootfs")
        try? FileManager.default.removeItem(atPath: directory)
        Cgroups.remove(path: "/kiln/\(id)")
        await IsolatedNetwork.remove(id: id)
    }

    /// Marks an instance to be kept (a failed builder kept for debugging).
    public func keep() throws {
        let path = directory + "/instance.json"
        var record = try JSONDecoder().decode(InstanceRecord.self, from: Data(contentsOf: URL(fileURLWithPath: path)))
        record.keep = true
        try DurableFile.write(JSONEncoder().encode(record), to: path, mode: 0o600)
    }

    /// The runc command that opens a shell in a running instance.
    public static func shellCommand(id: String, on host: InstanceHost, terminal: Bool, shell: String) -> [String] {
        host.runc.shellCommand(id: id, terminal: terminal, shell: shell)
    }

    // MARK: Crash recovery

    /// Removes what a Kiln that died left behind: instances whose owner is gone and that were
    /// not kept, their containers, mounts, cgroups and folders. Returns the ids reaped.
    @discardableResult
    public static func reapOrphans(on host: InstanceHost) async -> [String] {
        var reaped: [String] = []
        for id in (try? FileManager.default.contentsOfDirectory(atPath: host.instancesDirectory)) ?? [] where id.hasPrefix("kiln-") {
            let record = Self.record(id: id, on: host)
            if let record, record.keep || (record.ownerPID != getpid() && Self.isAlive(record)) { continue }
            await release(id: id, on: host)
            reaped.append(id)
        }
        // A network namespace whose instance folder is gone (a crash between the two). Namespaces
        // are host-wide (another data directory's Kiln may be starting one), so only old ones.
        // One `runc list` serves both checks (each call starts runc: tens of milliseconds).
        let containers = await host.runc.list()
        let containerIDs = Set(containers.map(\.id))
        for namespace in IsolatedNetwork.leftovers(olderThan: 120)
        where !FileManager.default.fileExists(atPath: host.instancesDirectory + "/" + namespace) && !containerIDs.contains(namespace) {
            await IsolatedNetwork.remove(id: namespace)
            reaped.append(namespace)
        }
        // A container of this data directory whose folder is gone (a crash while it was being removed).
        for container in containers
        where container.bundle.hasPrefix(host.instancesDirectory + "/")
            && !FileManager.default.fileExists(atPath: host.instancesDirectory + "/" + container.id)
        {
            await release(id: container.id, on: host)
            reaped.append(container.id)
        }
        return reaped
    }

    static func isAlive(_ record: InstanceRecord) -> Bool {
        guard let start = record.ownerStartTime else { return isKiln(record.ownerPID) }
        return ProcessOwner(pid: record.ownerPID, startTime: start).isAlive
    }

    static func isKiln(_ pid: Int32) -> Bool {
        guard pid > 0, kill(pid, 0) == 0 else { return false }
        return true
    }
}
