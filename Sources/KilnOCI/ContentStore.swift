import Foundation
import KilnModel

#if canImport(Glibc)
    import Glibc
#endif

/// Kiln's content store: an OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/…`).
/// Blobs are written to a temp file, verified, then renamed into place, so readers never see a
/// partial blob and concurrent writers of the same content are harmless. Names live in
/// `index.json` as `org.opencontainers.image.ref.name` annotations.
public struct ContentStore: Sendable {
    public static let refNameAnnotation = "org.opencontainers.image.ref.name"
    public let root: String

    /// Temp files for atomic writes; inside the store so `rename` never crosses file systems.
    public let scratch: String

    /// Kiln's own store (`managed`) keeps `ingest/` and `leases/` beside the layout; a layout
    /// the user names (`oci-layout:PATH`) gets only what the OCI spec lists.
    public init(root: String, managed: Bool = true) throws {
        self.root = root
        scratch = managed ? root + "/ingest" : root + "/blobs"
        let manager = FileManager.default
        do {
            try manager.createDirectory(atPath: root + "/blobs/sha256", withIntermediateDirectories: true)
            if managed {
                try manager.createDirectory(atPath: root + "/ingest", withIntermediateDirectories: true)
                try manager.createDirectory(atPath: root + "/leases", withIntermediateDirectories: true)
            }
        } catch {
            throw KilnError(.ioFailure, "cannot create the content store at '\(root)': \(error.localizedDescription)")
        }
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
            temporary = store.scratch + "/.ingest-" + UUID().uuidString
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
            // rename replaces atomically; an identical blob written meanwhile is simply replaced by the same bytes.
            guard rename(temporary, store.path(of: digest)) == 0 else {
                let message = String(cString: strerror(errno))
                unlink(temporary)
                throw KilnError(.ioFailure, "cannot store blob \(digest): \(message)")
            }
            return Descriptor(mediaType: mediaType, digest: digest, size: hash.count)
        }
    }

    // MARK: Names

    public func index() throws -> ImageIndex {
        do {
            return try JSONDecoder().decode(ImageIndex.self, from: Data(contentsOf: URL(fileURLWithPath: root + "/index.json")))
        } catch {
            throw KilnError(.ioFailure, "the content store's index.json at '\(root)' cannot be read: \(error)")
        }
    }

    /// Points `name` at `descriptor`, replacing what the name pointed at before.
    public func tag(_ name: String, _ descriptor: Descriptor) throws {
        try withIndexLock {
            var index = try self.index()
            index.manifests.removeAll { $0.annotations?[Self.refNameAnnotation] == name }
            var named = descriptor
            named.annotations = (named.annotations ?? [:]).merging([Self.refNameAnnotation: name]) { _, new in new }
            index.manifests.append(named)
            index.manifests.sort { ($0.annotations?[Self.refNameAnnotation] ?? "") < ($1.annotations?[Self.refNameAnnotation] ?? "") }
            try Self.writeAtomically(try CanonicalJSON.encode(index), to: root + "/index.json", scratch: scratch)
        }
    }

    public func resolve(_ name: String) throws -> Descriptor? {
        try index().manifests.first { $0.annotations?[Self.refNameAnnotation] == name }
    }

    /// Removes a name; its blobs go at the next garbage collection unless something else needs them.
    @discardableResult
    public func untag(_ name: String) throws -> Bool {
        try withIndexLock {
            var index = try self.index()
            let before = index.manifests.count
            index.manifests.removeAll { $0.annotations?[Self.refNameAnnotation] == name }
            try Self.writeAtomically(try CanonicalJSON.encode(index), to: root + "/index.json", scratch: scratch)
            return index.manifests.count != before
        }
    }

    // MARK: Leases and garbage collection

    /// Keeps blobs alive while a build uses them, across processes, until `release`.
    public struct Lease: Sendable {
        public let path: String
        public func release() { unlink(path) }
    }

    public func lease(_ digests: [Digest], label: String = "build") throws -> Lease {
        let path = "\(root)/leases/\(label)-\(UUID().uuidString)"
        try Self.writeAtomically(Data(digests.map(\.description).joined(separator: "\n").utf8), to: path, scratch: scratch)
        return Lease(path: path)
    }

    public struct Collected: Sendable, Hashable {
        public var blobs: [Digest]
        public var bytes: Int64
    }

    /// Deletes every blob that no name and no lease reaches. Returns what was removed.
    @discardableResult
    public func garbageCollect() throws -> Collected {
        try withIndexLock {
            // Walk from every name and every lease; manifests and indexes lead on to what they list.
            var live = Set<Digest>()
            var pending = try index().manifests.map(\.digest)
            for lease in (try? FileManager.default.contentsOfDirectory(atPath: root + "/leases")) ?? [] {
                let text = (try? String(contentsOfFile: root + "/leases/" + lease, encoding: .utf8)) ?? ""
                pending += text.split(separator: "\n").compactMap { try? Digest(String($0)) }
            }
            while let digest = pending.popLast() {
                guard live.insert(digest).inserted else { continue }
                pending += children(of: digest).map(\.digest)
            }
            var removed: [Digest] = []
            var bytes: Int64 = 0
            let folder = root + "/blobs/sha256"
            for name in try FileManager.default.contentsOfDirectory(atPath: folder) {
                guard let digest = try? Digest("sha256:" + name), !live.contains(digest) else { continue }
                var info = stat()
                let size = stat(folder + "/" + name, &info) == 0 ? Int64(info.st_size) : 0
                if unlink(folder + "/" + name) == 0 {
                    removed.append(digest)
                    bytes += size
                }
            }
            return Collected(blobs: removed.sorted(), bytes: bytes)
        }
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

    static func writeAtomically(_ data: Data, to path: String, scratch: String) throws {
        let temporary = scratch + "/.tmp-" + UUID().uuidString
        do {
            try data.write(to: URL(fileURLWithPath: temporary))
        } catch {
            throw KilnError(.ioFailure, "cannot write '\(path)': \(error.localizedDescription)")
        }
        guard rename(temporary, path) == 0 else {
            unlink(temporary)
            throw KilnError(.ioFailure, "cannot write '\(path)': \(String(cString: strerror(errno)))")
        }
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
        let staging = scratch + "/.layer-" + UUID().uuidString
        defer { unlink(staging) }
        let packed = try LayerPacker.pack(directory: directory, to: staging, level: level, sourceDateEpoch: sourceDateEpoch)
        let layer = Descriptor(mediaType: MediaType.layerTarGzip, digest: packed.digest, size: packed.size)
        guard rename(staging, path(of: packed.digest)) == 0 else {
            throw KilnError(.ioFailure, "cannot store the layer of '\(directory)': \(String(cString: strerror(errno)))")
        }
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
