import Foundation
import KilnModel
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// Kiln's content store: an OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/…`).
/// Blobs are written to a temp file, verified, then renamed into place, so readers never see a
/// partial blob and concurrent writers of the same content are harmless. Names live in
/// `index.json` as `org.opencontainers.image.ref.name` annotations.
///
/// Several Kiln processes may share a store (two builds, a build and `kiln image gc`). The rule
/// that keeps a blob someone will name from being collected:
/// - Every process that opens the store registers in `processes/` (a file named
///   `PID-STARTTIME`, made before it writes anything). gc never deletes a blob whose ctime is at
///   or after the registration of the oldest other live process: a blob between its ingest and
///   its tag or lease belongs to a live process, so it is newer than that and is kept. In the
///   process that runs gc, blobs it placed and has not named or leased yet are kept too.
/// - Old blobs someone starts using again (a parent image, a cached step) need a lease, taken
///   with `requirePresent`, which checks after writing the lease that they are all still there.
/// - gc holds `gc.lock` exclusively for its whole mark and sweep; tag, untag, lease and the
///   rename that puts a blob in place hold it shared. So a tag or lease is either seen by the
///   mark or made after the sweep (when `tag` and `requirePresent` find a missing blob), and a
///   blob renamed over a garbage blob of the same digest is never unlinked by a sweep in flight.
/// - Leases and registrations of processes that died are ignored and removed.
public struct ContentStore: Sendable {
    public static let refNameAnnotation = "org.opencontainers.image.ref.name"
    public let root: String
    /// Kiln's own store (registrations, leases, gc lock) rather than a layout the user names.
    public let managed: Bool

    /// Temp files for atomic writes; inside the store so `rename` never crosses file systems.
    public let scratch: String

    /// Kiln's own store (`managed`) keeps `ingest/` and `leases/` beside the layout; a layout
    /// the user names (`oci-layout:PATH`) gets only what the OCI spec lists.
    public init(root: String, managed: Bool = true) throws {
        self.root = root
        self.managed = managed
        scratch = managed ? root + "/ingest" : root + "/blobs"
        let manager = FileManager.default
        do {
            try manager.createDirectory(atPath: root + "/blobs/sha256", withIntermediateDirectories: true)
            if managed {
                for folder in ["/ingest", "/leases", "/processes"] {
                    try manager.createDirectory(atPath: root + folder, withIntermediateDirectories: true)
                }
            }
        } catch {
            throw KilnError(.ioFailure, "cannot create the content store at '\(root)': \(error.localizedDescription)")
        }
        if managed { try registerProcess() }
        if !manager.fileExists(atPath: root + "/oci-layout") {
            try Self.writeAtomically(Data(#"{"imageLayoutVersion":"1.0.0"}"#.utf8), to: root + "/oci-layout", scratch: scratch)
        }
        if !manager.fileExists(atPath: root + "/index.json") {
            try Self.writeAtomically(try CanonicalJSON.encode(ImageIndex(manifests: [])), to: root + "/index.json", scratch: scratch)
        }
    }

    /// Opens an existing layout for reading without creating anything.
    public init(existingLayout root: String) throws {
        guard FileManager.default.fileExists(atPath: root + "/oci-layout"), FileManager.default.fileExists(atPath: root + "/index.json")
        else {
            throw KilnError(.notFound, "'\(root)' is not an OCI image layout (it needs oci-layout and index.json)")
        }
        self.root = root
        managed = false
        scratch = root + "/blobs"
    }

    // MARK: Blobs

    public func path(of digest: Digest) -> String { "\(root)/blobs/\(digest.algorithm.rawValue)/\(digest.encoded)" }

    public func contains(_ digest: Digest) -> Bool { FileManager.default.fileExists(atPath: path(of: digest)) }

    public func read(_ digest: Digest) throws -> Data {
        guard let data = FileManager.default.contents(atPath: path(of: digest)) else {
            throw KilnError(.notFound, "blob \(digest) is not in the content store at '\(root)'")
        }
        return data
    }

    /// An image manifest in the store and its config.
    public func image(_ manifest: Digest) throws -> (manifest: ImageManifest, config: ImageConfiguration) {
        let decoded = try JSONDecoder().decode(ImageManifest.self, from: try read(manifest))
        return (decoded, try JSONDecoder().decode(ImageConfiguration.self, from: try read(decoded.config.digest)))
    }

    /// Stores `data`; with `expected`, refuses bytes whose digest differs.
    @discardableResult
    public func ingest(_ data: Data, expected: Digest? = nil) throws -> Descriptor {
        let writer = try BlobWriter(store: self)
        try writer.write(data)
        return try writer.commit(mediaType: "application/octet-stream", expected: expected)
    }

    /// Stores the JSON of `value` (canonical encoding) and returns its descriptor.
    public func ingestJSON<T: Encodable>(_ value: T, mediaType: String) throws -> Descriptor {
        var descriptor = try ingest(try CanonicalJSON.encode(value))
        descriptor.mediaType = mediaType
        return descriptor
    }

    /// Streams a blob in: write chunks, then `commit` verifies and renames it into place.
    public final class BlobWriter {
        private let store: ContentStore
        private let temporary: String
        /// The file being written; readers may open it before `commit` renames it.
        public var temporaryPath: String { temporary }
        private let descriptor: Int32
        private var hash = SHA256Stream()
        private var finished = false

        public init(store: ContentStore) throws {
            self.store = store
            temporary = store.scratch + "/" + ProcessOwner.temporaryName(ContentStore.ingestPrefix)
            descriptor = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
            guard descriptor >= 0 else {
                throw KilnError(.ioFailure, "cannot write into the content store at '\(store.root)': \(String(cString: strerror(errno)))")
            }
        }

        deinit {
            if !finished {
                close(descriptor)
                unlink(temporary)
            }
        }

        /// Bytes written so far.
        public var count: Int64 { hash.count }

        public func write(_ data: Data) throws {
            try data.withUnsafeBytes { try write($0) }
        }

        public func write(_ bytes: UnsafeRawBufferPointer) throws {
            hash.update(bytes)
            var offset = 0
            while offset < bytes.count {
                let written = Glibc.write(descriptor, bytes.baseAddress! + offset, bytes.count - offset)
                if written < 0 {
                    if errno == EINTR { continue }
                    throw KilnError(
                        .ioFailure, "cannot write into the content store at '\(store.root)': \(String(cString: strerror(errno)))")
                }
                offset += written
            }
        }

        public func commit(mediaType: String, expected: Digest?) throws -> Descriptor {
            finished = true
            let synced = fsync(descriptor) == 0
            close(descriptor)
            let digest = hash.finalize()
            guard synced else {
                unlink(temporary)
                throw KilnError(.ioFailure, "cannot flush blob \(digest) to '\(store.root)': \(String(cString: strerror(errno)))")
            }
            if let expected, expected != digest {
                unlink(temporary)
                throw KilnError(
                    .checksumMismatch, "content does not match its digest: expected \(expected), got \(digest); nothing was stored")
            }
            try store.place(temporary, as: digest)
            return Descriptor(mediaType: mediaType, digest: digest, size: hash.count)
        }
    }

    /// Renames a finished, verified temp file into place as the blob `digest` (under the shared
    /// gc lock; see the type's comment), then syncs the folder so a name written later never
    /// points at a blob a power cut lost. The temp file is removed on failure.
    public func place(_ temporary: String, as digest: Digest) throws {
        try withGCLock(exclusive: false) {
            // rename replaces atomically; an identical blob written meanwhile is simply replaced by the same bytes.
            guard rename(temporary, path(of: digest)) == 0 else {
                let message = String(cString: strerror(errno))
                unlink(temporary)
                throw KilnError(.ioFailure, "cannot store blob \(digest): \(message)")
            }
        }
        try? DurableFile.syncFolder(root + "/blobs/" + digest.algorithm.rawValue)
        if managed { Self.unsettled.withLock { $0[root, default: []].insert(digest) } }
    }

    /// Blobs this process placed that no name or lease holds yet, by store root.
    private static let unsettled = Mutex<[String: Set<Digest>]>([:])

    /// `digests` and what their manifests name are held by a name or a lease now.
    private func settle(_ digests: [Digest]) {
        guard managed, !(Self.unsettled.withLock { $0[root]?.isEmpty ?? true }) else { return }
        var closure = Set<Digest>()
        var pending = digests
        while let digest = pending.popLast() {
            guard closure.insert(digest).inserted else { continue }
            pending += children(of: digest).map(\.digest)
        }
        Self.unsettled.withLock { $0[root]?.subtract(closure) }
    }

    // MARK: Names

    public func index() throws -> ImageIndex {
        do {
            return try JSONDecoder().decode(ImageIndex.self, from: Data(contentsOf: URL(fileURLWithPath: root + "/index.json")))
        } catch {
            throw KilnError(.ioFailure, "the content store's index.json at '\(root)' cannot be read: \(error)")
        }
    }

    /// Points `name` at `descriptor`, replacing what the name pointed at before. In Kiln's store
    /// the blob must be there (a gc may have taken an unnamed one just before).
    public func tag(_ name: String, _ descriptor: Descriptor) throws {
        try withGCLock(exclusive: false) {
            try withIndexLock { try tagLocked(name, descriptor) }
        }
        settle([descriptor.digest])
    }

    private func tagLocked(_ name: String, _ descriptor: Descriptor) throws {
        if managed, !contains(descriptor.digest) {
            throw KilnError(.notFound, "cannot name \(descriptor.digest) '\(name)': it is no longer in the content store at '\(root)'")
        }
        var index = try self.index()
        index.manifests.removeAll { $0.annotations?[Self.refNameAnnotation] == name }
        var named = descriptor
        named.annotations = (named.annotations ?? [:]).merging([Self.refNameAnnotation: name]) { _, new in new }
        index.manifests.append(named)
        index.manifests.sort { ($0.annotations?[Self.refNameAnnotation] ?? "") < ($1.annotations?[Self.refNameAnnotation] ?? "") }
        try Self.writeAtomically(try CanonicalJSON.encode(index), to: root + "/index.json", scratch: scratch)
    }

    public func resolve(_ name: String) throws -> Descriptor? {
        try index().manifests.first { $0.annotations?[Self.refNameAnnotation] == name }
    }

    /// Removes a name; its blobs go at the next garbage collection unless something else needs them.
    @discardableResult
    public func untag(_ name: String) throws -> Bool {
        try withGCLock(exclusive: false) {
            try withIndexLock {
                var index = try self.index()
                let before = index.manifests.count
                index.manifests.removeAll { $0.annotations?[Self.refNameAnnotation] == name }
                try Self.writeAtomically(try CanonicalJSON.encode(index), to: root + "/index.json", scratch: scratch)
                return index.manifests.count != before
            }
        }
    }

    // MARK: Leases and garbage collection

    /// Keeps blobs alive across processes until `release`, or until its owner dies. The file
    /// holds `owner PID-STARTTIME`, then one digest a line (manifests lead on to their blobs).
    public struct Lease: Sendable {
        public let path: String
        public func release() { unlink(path) }
    }

    public static let ingestPrefix = ".ingest-"
    public static let layerPrefix = ".layer-"

    /// Leases `digests` for this process. With `requirePresent`, each digest and everything its
    /// manifests name must still be in the store once the lease holds them; otherwise the lease
    /// is released and this throws `notFound` (a gc took them before the lease).
    public func lease(_ digests: [Digest], label: String = "build", requirePresent: Bool = false) throws -> Lease {
        let path = "\(root)/leases/\(label)-\(ProcessOwner.current.token)-\(UUID().uuidString)"
        let text = (["owner " + ProcessOwner.current.token] + digests.map(\.description)).joined(separator: "\n") + "\n"
        try withGCLock(exclusive: false) {
            try Self.writeAtomically(Data(text.utf8), to: path, scratch: managed ? scratch : root + "/leases")
        }
        let lease = Lease(path: path)
        settle(digests)
        if requirePresent {
            var seen = Set<Digest>()
            var pending = digests
            while let digest = pending.popLast() {
                guard seen.insert(digest).inserted else { continue }
                guard contains(digest) else {
                    lease.release()
                    throw KilnError(.notFound, "blob \(digest) is no longer in the content store at '\(root)' (kiln image gc removed it)")
                }
                pending += children(of: digest).map(\.digest)
            }
        }
        return lease
    }

    public struct Collected: Sendable, Hashable {
        public var blobs: [Digest]
        public var bytes: Int64
    }

    /// Deletes every blob that no name and no live lease reaches and that no live Kiln process
    /// may still name (see the type's comment). Returns what was removed. Manifests go before
    /// the blobs they name, so a manifest left by an interrupted gc still has all its blobs.
    @discardableResult
    public func garbageCollect() throws -> Collected {
        try withGCLock(exclusive: true) {
            try withIndexLock {
                let cutoff = liveProcessCutoff(excludingSelf: true)
                // Walk from every name, every live lease and what this process has not settled yet;
                // manifests and indexes lead on to what they list.
                var live = Set<Digest>()
                var pending = try index().manifests.map(\.digest)
                for lease in liveLeases(cutoff: cutoff) { pending += lease }
                pending += Self.unsettled.withLock { Array($0[root] ?? []) }
                while let digest = pending.popLast() {
                    guard live.insert(digest).inserted else { continue }
                    pending += children(of: digest).map(\.digest)
                }
                let folder = root + "/blobs/sha256"
                var garbage: [(digest: Digest, names: Bool)] = []
                for name in try FileManager.default.contentsOfDirectory(atPath: folder) {
                    guard let digest = try? Digest("sha256:" + name), !live.contains(digest) else { continue }
                    guard let changed = ChangeTime(of: folder + "/" + name), changed < cutoff else { continue }
                    garbage.append((digest, !children(of: digest).isEmpty))
                }
                var removed: [Digest] = []
                var bytes: Int64 = 0
                for (digest, _) in garbage.filter(\.names) + garbage.filter({ !$0.names }) {
                    var info = stat()
                    let size = stat(path(of: digest), &info) == 0 ? Int64(info.st_size) : 0
                    if unlink(path(of: digest)) == 0 {
                        removed.append(digest)
                        bytes += size
                    }
                }
                try? DurableFile.syncFolder(folder)
                sweepTemporaryFiles()
                return Collected(blobs: removed.sorted(), bytes: bytes)
            }
        }
    }

    /// The digests of every lease whose owner lives; the others are removed. A lease without an
    /// owner (an older Kiln's) counts while it is newer than the oldest live registration.
    func liveLeases(cutoff: ChangeTime) -> [[Digest]] {
        var leases: [[Digest]] = []
        let folder = root + "/leases"
        for name in (try? FileManager.default.contentsOfDirectory(atPath: folder)) ?? [] where !name.hasPrefix(".") {
            let path = folder + "/" + name
            guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { continue }
            let lines = text.split(separator: "\n")
            let alive: Bool
            if let first = lines.first, first.hasPrefix("owner ") {
                alive = ProcessOwner(token: first.dropFirst(6))?.isAlive ?? false
            } else {
                alive = (ChangeTime(of: path) ?? cutoff) >= cutoff
            }
            guard alive else {
                unlink(path)
                continue
            }
            leases.append(lines.compactMap { try? Digest(String($0)) })
        }
        return leases
    }

    // MARK: Processes

    /// Roots this process registered in, so each store is registered once.
    private static let registered = Mutex<Set<String>>([])

    /// Records that this process uses the store (see the type's comment) and forgets processes
    /// that died.
    private func registerProcess() throws {
        let folder = root + "/processes"
        guard Self.registered.withLock({ $0.insert(root).inserted }) else { return }
        let path = folder + "/" + ProcessOwner.current.token
        let fd = open(path, O_WRONLY | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0o600)
        guard fd >= 0 else {
            Self.registered.withLock { _ = $0.remove(root) }
            throw KilnError(.ioFailure, "cannot register in the content store at '\(root)': \(String(cString: strerror(errno)))")
        }
        close(fd)
        for name in (try? FileManager.default.contentsOfDirectory(atPath: folder)) ?? [] {
            if let owner = ProcessOwner(token: name), !owner.isAlive { unlink(folder + "/" + name) }
        }
    }

    /// When the oldest Kiln process that uses this store and still runs registered (this one
    /// included unless `excludingSelf`; then now at the latest). Anything such a process made is
    /// at least as new; anything older was made by processes that are gone.
    public func liveProcessCutoff(excludingSelf: Bool = false) -> ChangeTime {
        let folder = root + "/processes"
        let own = excludingSelf ? nil : ChangeTime(of: folder + "/" + ProcessOwner.current.token)
        var earliest = own ?? ChangeTime.now
        for name in (try? FileManager.default.contentsOfDirectory(atPath: folder)) ?? [] {
            guard let owner = ProcessOwner(token: name), owner != .current, owner.isAlive,
                let registered = ChangeTime(of: folder + "/" + name)
            else {
                continue
            }
            earliest = min(earliest, registered)
        }
        return earliest
    }

    /// Removes temp files in `ingest/` that dead processes left: those named with their owner
    /// when it is gone, others when they are older than every live process; and the leases of
    /// dead processes. Returns the temp files' names.
    @discardableResult
    public func sweepTemporaryFiles(cutoff: ChangeTime? = nil) -> [String] {
        guard managed else { return [] }
        let cutoff = cutoff ?? liveProcessCutoff()
        _ = liveLeases(cutoff: cutoff)
        var removed: [String] = []
        for name in (try? FileManager.default.contentsOfDirectory(atPath: scratch)) ?? [] {
            let path = scratch + "/" + name
            let owner = [Self.ingestPrefix, DurableFile.temporaryPrefix, Self.layerPrefix].lazy.compactMap {
                ProcessOwner.owner(ofTemporaryName: name, prefix: $0)
            }.first
            let leftover = owner.map { !$0.isAlive } ?? ((ChangeTime(of: path) ?? cutoff) < cutoff)
            guard leftover else { continue }
            if Self.removeTree(path) { removed.append(name) }
        }
        return removed
    }

    /// Removes a file or folder without following links or entering another file system (a
    /// dead bootstrap may have left /proc or /dev mounted inside its folder).
    public static func removeTree(_ path: String) -> Bool {
        var top = stat()
        guard lstat(path, &top) == 0 else { return false }
        guard top.st_mode & S_IFMT == S_IFDIR else { return unlink(path) == 0 }
        Self.detachMounts(under: path)
        func remove(_ path: String) {
            var info = stat()
            guard lstat(path, &info) == 0 else { return }
            guard info.st_mode & S_IFMT == S_IFDIR else {
                unlink(path)
                return
            }
            guard info.st_dev == top.st_dev else { return }
            for child in (try? FileManager.default.contentsOfDirectory(atPath: path)) ?? [] { remove(path + "/" + child) }
            rmdir(path)
        }
        remove(path)
        return access(path, F_OK) != 0
    }

    /// Detaches every mount at or below `path`, deepest first.
    static func detachMounts(under path: String) {
        guard let text = try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8) else { return }
        let mounts = text.split(separator: "\n").compactMap { line -> String? in
            let fields = line.split(separator: " ")
            guard fields.count > 4 else { return nil }
            // Spaces and the like are octal escapes in mountinfo.
            let point = String(fields[4]).replacingOccurrences(of: "\\040", with: " ")
            return point == path || point.hasPrefix(path + "/") ? point : nil
        }
        for point in mounts.sorted(by: { $0.count > $1.count }) { umount2(point, Int32(MNT_DETACH)) }
    }

    public struct ImageSummary: Sendable, Codable, Hashable {
        public var name: String
        public var digest: Digest
        public var mediaType: String
        /// Manifest, config and layers (for an index: its manifests and their blobs), each counted once.
        public var size: Int64
        public var created: String?
    }

    /// Every named image, sorted by name.
    public func summaries() throws -> [ImageSummary] {
        try index().manifests.compactMap { descriptor in
            guard let name = descriptor.annotations?[Self.refNameAnnotation] else { return nil }
            var seen = Set<Digest>()
            var pending = [descriptor]
            var size: Int64 = 0
            var created: String?
            while let next = pending.popLast() {
                guard seen.insert(next.digest).inserted else { continue }
                var info = stat()
                size += stat(path(of: next.digest), &info) == 0 ? Int64(info.st_size) : next.size
                let children = children(of: next.digest)
                if created == nil, let manifestData = try? read(next.digest),
                    let manifest = try? JSONDecoder().decode(ImageManifest.self, from: manifestData),
                    let configData = try? read(manifest.config.digest)
                {
                    created = (try? JSONDecoder().decode(ImageConfiguration.self, from: configData))?.created
                }
                pending += children
            }
            return ImageSummary(name: name, digest: descriptor.digest, mediaType: descriptor.mediaType, size: size, created: created)
        }.sorted { $0.name < $1.name }
    }

    /// What a manifest or index points at; nothing for other blobs.
    func children(of digest: Digest) -> [Descriptor] {
        var info = stat()
        // Manifests are small JSON; layers are not worth parsing.
        guard stat(path(of: digest), &info) == 0, info.st_size < 4 << 20, let data = try? read(digest), data.first == UInt8(ascii: "{")
        else { return [] }
        if let manifest = try? JSONDecoder().decode(ImageManifest.self, from: data) {
            return [manifest.config] + manifest.layers + (manifest.subject.map { [$0] } ?? [])
        }
        if let index = try? JSONDecoder().decode(ImageIndex.self, from: data) { return index.manifests }
        return []
    }

    // MARK: Files

    /// The gc lock of Kiln's store: exclusive for gc, shared for what names or places blobs.
    /// A user's layout has no gc, so no lock.
    private func withGCLock<T>(exclusive: Bool, _ body: () throws -> T) throws -> T {
        guard managed else { return try body() }
        let fd = open(root + "/gc.lock", O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else {
            throw KilnError(.ioFailure, "cannot lock the content store at '\(root)': \(String(cString: strerror(errno)))")
        }
        defer { close(fd) }
        while flock(fd, exclusive ? LOCK_EX : LOCK_SH) != 0 {
            guard errno == EINTR else {
                throw KilnError(.ioFailure, "cannot lock the content store at '\(root)': \(String(cString: strerror(errno)))")
            }
        }
        defer { flock(fd, LOCK_UN) }
        return try body()
    }

    private func withIndexLock<T>(_ body: () throws -> T) throws -> T {
        let fd = open(root + "/index.json.lock", O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else {
            throw KilnError(.ioFailure, "cannot lock the content store at '\(root)': \(String(cString: strerror(errno)))")
        }
        defer { close(fd) }
        flock(fd, LOCK_EX)
        defer { flock(fd, LOCK_UN) }
        return try body()
    }

    /// index.json, oci-layout and leases: whole or not at all, even after a power cut.
    static func writeAtomically(_ data: Data, to path: String, scratch: String) throws {
        try DurableFile.write(data, to: path, scratch: scratch)
    }
}

extension ContentStore {
    /// Packs a directory into a one-layer image (deterministic tar, gzip) named `name`: the way a
    /// bootstrapped root filesystem becomes a parent image.
    @discardableResult
    public func importRootFilesystem(
        _ directory: String, name: String, platform: Platform = .host, sourceDateEpoch: Int64? = nil, level: Int32 = 6,
        createdBy: String = "kiln image pack"
    ) throws -> Descriptor {
        let staging = scratch + "/" + ProcessOwner.temporaryName(Self.layerPrefix)
        defer { unlink(staging) }
        let packed = try LayerPacker.pack(directory: directory, to: staging, level: level, sourceDateEpoch: sourceDateEpoch)
        let layer = Descriptor(mediaType: MediaType.layerTarGzip, digest: packed.digest, size: packed.size)
        try place(staging, as: packed.digest)
        let created = Self.timestamp(sourceDateEpoch.map { Date(timeIntervalSince1970: TimeInterval($0)) } ?? Date())
        var configuration = ImageConfiguration(
            architecture: platform.architecture, os: platform.os, rootfs: .init(diffIDs: [packed.diffID]),
            created: created, history: [.init(created: created, createdBy: createdBy)]
        )
        configuration.variant = platform.variant
        var container = ImageConfiguration.ContainerConfig()
        container.env = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
        configuration.config = container
        let config = try ingestJSON(configuration, mediaType: MediaType.imageConfig)
        let manifest = try ingestJSON(ImageManifest(config: config, layers: [layer]), mediaType: MediaType.imageManifest)
        try tag(name, manifest)
        return manifest
    }

    /// RFC 3339 in UTC, as image configs carry it.
    static func timestamp(_ date: Date) -> String {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime]
        return formatter.string(from: date)
    }
}
