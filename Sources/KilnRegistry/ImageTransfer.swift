import Foundation
import KilnModel
import KilnOCI
import Synchronization

/// Pull, push and copy-to-many over every `ImageLocation`. A copy reads each blob from the source
/// once (into Kiln's content store when the source is a registry) and writes it to all
/// destinations concurrently, at most `concurrency` transfers at a time. Manifests follow once
/// a destination has every blob, so no registry ever holds a manifest with missing layers.
public struct ImageTransfer: Sendable {
    public let store: ContentStore
    public let registries: RegistryDirectory
    /// The platform picked from an index; nil copies every platform the index lists.
    public var platform: Platform?
    public var concurrency: Int
    public var observer: TransferObserver?

    public init(
        store: ContentStore, registries: RegistryDirectory, platform: Platform? = .host, concurrency: Int = 4,
        observer: TransferObserver? = nil
    ) {
        self.store = store
        self.registries = registries
        self.platform = platform
        self.concurrency = concurrency
        self.observer = observer
    }

    public struct DestinationResult: Sendable {
        public var location: ImageLocation
        public var digest: Digest?
        public var error: KilnError?
        public var totals: TransferMeter.Totals
    }

    public struct Result: Sendable {
        /// The manifest (or index) that was copied.
        public var digest: Digest
        public var mediaType: String
        public var destinations: [DestinationResult]
        /// Bytes and blobs per location (`ImageLocation.description`), the source's included.
        public var totals: [String: TransferMeter.Totals]

        public var failures: [DestinationResult] { destinations.filter { $0.error != nil } }

        /// Throws one error naming every destination that failed.
        public func checked() throws -> Result {
            let failed = failures
            guard !failed.isEmpty else { return self }
            let lines = failed.map { "  \($0.location): \($0.error!.message)" }.joined(separator: "\n")
            throw KilnError(.network, "\(failed.count) of \(destinations.count) destination(s) failed:\n\(lines)")
        }
    }

    /// Copies `source` to every destination. Failures of single destinations are in the result
    /// (the others still complete); a failing source throws.
    public func copy(from source: ImageLocation, to destinations: [ImageLocation]) async throws -> Result {
        guard !destinations.isEmpty else { throw KilnError(.invalidArgument, "copy needs at least one destination") }
        let meter = TransferMeter()
        let observer = self.observer
        let report: TransferObserver = { event in
            meter.record(event)
            observer?(event)
        }
        let opened = try await open(source, report: report)
        defer { opened.close() }
        let lease = try store.lease(opened.blobs.map(\.digest) + opened.manifests.map(\.digest), label: "copy")
        defer { lease.release() }

        let targets = try destinations.map { try Target(location: $0, home: store, registries: registries) }
        defer { targets.forEach { $0.close() } }
        // Tags of one repository (or one layout) share their blobs: each blob goes there once, and
        // its bytes are charged to the first of them.
        var firstOfGroup: [String: Int] = [:]
        let groups = targets.indices.reduce(into: [[Int]]()) { groups, index in
            if let group = firstOfGroup[targets[index].blobKey] {
                groups[group].append(index)
            } else {
                firstOfGroup[targets[index].blobKey] = groups.count
                groups.append([index])
            }
        }
        let failures = Mutex<[Int: KilnError]>([:])
        let fail: @Sendable (Int, Error) -> Void = { index, error in
            let kilnError = error as? KilnError ?? KilnError(.network, "\(error)")
            failures.withLock { if $0[index] == nil { $0[index] = kilnError } }
        }
        let failed: @Sendable (Int) -> Bool = { index in failures.withLock { $0[index] != nil } }

        let limiter = TransferLimiter(limit: concurrency)
        try await withThrowingTaskGroup(of: Void.self) { group in
            for blob in opened.blobs {
                group.addTask {
                    let fromSource: TransferObserver = { report($0.charged(to: source.description)) }
                    // A registry source streams each blob to the destinations while it downloads.
                    let growing =
                        opened.registry != nil && !opened.local.contains(blob.digest)
                        ? GrowingBlob(finalPath: opened.local.path(of: blob.digest)) : nil
                    let download: Task<Void, Error>?
                    if let registry = opened.registry, let growing {
                        download = Task {
                            try await limiter.withPermit {
                                try await registry.client.pullBlob(
                                    blob, repository: registry.repository, into: opened.local, tee: growing, observer: fromSource)
                            }
                        }
                    } else {
                        download = nil
                        _ = try await limiter.withPermit { try await opened.fetch(blob, fromSource) }
                    }
                    await withTaskGroup(of: Void.self) { pushes in
                        for group in groups {
                            let index = group[0]
                            let target = targets[index]
                            pushes.addTask {
                                guard !failed(index) else { return }
                                // Take a transfer slot only once the download holds one, so waiting uploads never starve it.
                                if let growing, (try? await growing.source(after: -1)) == nil { return }
                                do {
                                    try await limiter.withPermit {
                                        try await target.writeBlob(
                                            blob, from: opened.local, growing: growing, mountFrom: opened.repository(on: target),
                                            report: {
                                                report($0.charged(to: target.location.description))
                                            })
                                    }
                                } catch {
                                    group.forEach { fail($0, error) }
                                }
                            }
                        }
                    }
                    try await download?.value
                }
            }
            try await group.waitForAll()
        }

        var results: [DestinationResult] = []
        for (index, target) in targets.enumerated() {
            if !failed(index) {
                do {
                    try await target.writeManifests(
                        opened.manifests, root: opened.root, report: { report($0.charged(to: target.location.description)) })
                    try target.finish()
                } catch {
                    fail(index, error)
                }
            }
            let error = failures.withLock { $0[index] }
            results.append(
                DestinationResult(
                    location: target.location, digest: error == nil ? opened.root.digest : nil, error: error,
                    totals: meter.snapshot[target.location.description] ?? .init()))
        }
        return Result(digest: opened.root.digest, mediaType: opened.root.mediaType, destinations: results, totals: meter.snapshot)
    }

    /// Pulls a registry image into Kiln's store under its full reference (or `name`).
    @discardableResult
    public func pull(_ reference: ImageReference, as name: String? = nil) async throws -> Result {
        try await copy(from: .registry(reference), to: [.store(name: name ?? reference.description)]).checked()
    }

    // MARK: Sources

    struct Manifest: Sendable {
        var data: Data
        var mediaType: String
        var digest: Digest
        var platform: Platform?
    }

    /// A source with its manifests resolved: where blobs come from, and what to copy.
    struct OpenedSource: Sendable {
        var root: Manifest
        /// Child manifests first, the root last.
        var manifests: [Manifest]
        var blobs: [Descriptor]
        /// Blobs are read from here; for registry sources they are pulled here first.
        var local: ContentStore
        var registry: (client: RegistryClient, repository: String)?
        var temporaryDirectory: String?

        func fetch(_ blob: Descriptor, _ report: @escaping TransferObserver) async throws -> ContentStore {
            if let registry {
                try await registry.client.pullBlob(blob, repository: registry.repository, into: local, observer: report)
            } else if !local.contains(blob.digest) {
                throw KilnError(.notFound, "blob \(blob.digest) is missing from '\(local.root)'; the layout is incomplete")
            }
            return local
        }

        /// The source repository when it lives on the same registry as `target`, so blobs can be mounted.
        func repository(on target: Target) -> String? {
            guard let registry, case .registry(let reference) = target.location, reference.registry == registry.client.registry else {
                return nil
            }
            return registry.repository
        }

        func close() {
            if let temporaryDirectory { try? FileManager.default.removeItem(atPath: temporaryDirectory) }
        }
    }

    private func open(_ source: ImageLocation, report: @escaping TransferObserver) async throws -> OpenedSource {
        switch source {
        case .registry(let reference):
            let client = try registries.client(for: reference.registry)
            let fetched = try await client.manifest(reference)
            let root = Manifest(data: fetched.data, mediaType: fetched.mediaType, digest: fetched.digest)
            return try await resolve(root, in: store, registry: (client, reference.repository), described: reference.description) {
                digest in
                let child = try await client.manifest(repository: reference.repository, reference: digest.description, expected: digest)
                return (child.data, child.mediaType)
            }
        case .store(let name):
            return try await openLocal(store, name: name, described: "kiln:\(name)")
        case .layout(let path, let tag):
            return try await openLocal(try ContentStore(existingLayout: path), name: tag, described: source.description)
        case .archive(let path, let tag):
            let directory = store.scratch + "/archive-" + UUID().uuidString
            do {
                try OCIArchive.extract(path, into: directory)
                var opened = try await openLocal(try ContentStore(existingLayout: directory), name: tag, described: source.description)
                opened.temporaryDirectory = directory
                return opened
            } catch {
                try? FileManager.default.removeItem(atPath: directory)
                throw error
            }
        }
    }

    private func openLocal(_ local: ContentStore, name: String, described: String) async throws -> OpenedSource {
        let descriptor: Descriptor
        if let named = try local.resolve(name) {
            descriptor = named
        } else if let digest = try? Digest(name), local.contains(digest) {
            descriptor = Descriptor(mediaType: "", digest: digest, size: 0)
        } else {
            let known = try local.index().manifests.compactMap { $0.annotations?[ContentStore.refNameAnnotation] }
            throw KilnError(
                .notFound, "\(described) does not exist\(known.isEmpty ? "" : "; known names: " + known.prefix(10).joined(separator: ", "))"
            )
        }
        let data = try local.read(descriptor.digest)
        let root = Manifest(data: data, mediaType: MediaType.sniff(data) ?? descriptor.mediaType, digest: descriptor.digest)
        return try await resolve(root, in: local, registry: nil, described: described) { digest in
            let data = try local.read(digest)
            return (data, MediaType.sniff(data) ?? MediaType.imageManifest)
        }
    }

    /// Picks the platform from an index (or keeps every platform), then lists the blobs.
    private func resolve(
        _ fetched: Manifest, in local: ContentStore, registry: (client: RegistryClient, repository: String)?, described: String,
        child: (Digest) async throws -> (Data, String)
    ) async throws -> OpenedSource {
        var root = fetched
        var manifests: [Manifest] = []
        if MediaType.isIndex(root.mediaType) {
            let index = try decode(ImageIndex.self, root.data, described)
            var chosen = index.manifests.filter { MediaType.isManifest($0.mediaType) || MediaType.isIndex($0.mediaType) }
            if let platform {
                guard let match = Self.best(platform, in: chosen) else {
                    let offered = chosen.compactMap(\.platform).map(\.description).joined(separator: ", ")
                    throw KilnError(
                        .notFound,
                        "\(described) has no image for \(platform); it offers \(offered.isEmpty ? "no platforms" : offered). Pick one with --platform, or copy every platform with --all"
                    )
                }
                chosen = [match]
            }
            for descriptor in chosen {
                // Refused before it is fetched: the index says how large it is, and the digest check holds it to that.
                guard descriptor.size <= RegistryClient.maximumManifestBytes else {
                    throw KilnError(
                        .invalidArgument,
                        "\(described): the index lists manifest \(descriptor.digest) at \(descriptor.size) bytes, more than Kiln's limit of \(RegistryClient.sizeText(RegistryClient.maximumManifestBytes)) for a manifest; refusing it (real manifests are a few KiB; the index is broken or hostile)"
                    )
                }
                let (data, mediaType) = try await child(descriptor.digest)
                guard Digest(sha256Of: data) == descriptor.digest else {
                    throw KilnError(.checksumMismatch, "\(described): manifest \(descriptor.digest) does not match its digest")
                }
                manifests.append(Manifest(data: data, mediaType: mediaType, digest: descriptor.digest, platform: descriptor.platform))
            }
            if platform != nil, let only = manifests.first {
                root = only
                manifests = []
            }
        }
        manifests.append(root)
        var seen = Set<Digest>()
        var blobs: [Descriptor] = []
        for manifest in manifests where MediaType.isManifest(manifest.mediaType) {
            let parsed = try decode(ImageManifest.self, manifest.data, described)
            // Configs are read whole into memory later; a download is held to its descriptor's size.
            guard parsed.config.size <= RegistryClient.maximumConfigBytes else {
                throw KilnError(
                    .invalidArgument,
                    "\(described): the image config \(parsed.config.digest) is \(parsed.config.size) bytes, more than Kiln's limit of \(RegistryClient.sizeText(RegistryClient.maximumConfigBytes)) for a config; refusing the image (real configs are at most a few hundred KiB; the manifest is broken or hostile)"
                )
            }
            for blob in [parsed.config] + parsed.layers where seen.insert(blob.digest).inserted {
                blobs.append(blob)
            }
        }
        if !MediaType.isManifest(root.mediaType) && !MediaType.isIndex(root.mediaType) {
            throw KilnError(.unsupported, "\(described) is a '\(root.mediaType)', not an image manifest or index")
        }
        return OpenedSource(root: root, manifests: manifests, blobs: blobs, local: local, registry: registry)
    }

    private func decode<T: Decodable>(_ type: T.Type, _ data: Data, _ described: String) throws -> T {
        do {
            return try JSONDecoder().decode(type, from: data)
        } catch {
            throw KilnError(.invalidArgument, "\(described): the manifest is not valid JSON of its type: \(error)")
        }
    }

    /// The entry for `wanted`: os and architecture must match; a variant must match when both name one.
    public static func best(_ wanted: Platform, in entries: [Descriptor]) -> Descriptor? {
        let candidates = entries.filter { $0.platform?.os == wanted.os && $0.platform?.architecture == wanted.architecture }
        if let variant = wanted.variant {
            return candidates.first { $0.platform?.variant == variant } ?? candidates.first { $0.platform?.variant == nil }
        }
        return candidates.first
    }

    // MARK: Destinations

    /// One destination, ready to take blobs and manifests.
    final class Target: Sendable {
        let location: ImageLocation
        private let registry: (client: RegistryClient, reference: ImageReference)?
        /// Layouts, archives (staged as a layout) and Kiln's store.
        private let layout: ContentStore?
        private let name: String
        private let archivePath: String?

        init(location: ImageLocation, home: ContentStore, registries: RegistryDirectory) throws {
            self.location = location
            switch location {
            case .registry(let reference):
                registry = (try registries.client(for: reference.registry), reference)
                layout = nil
                name = reference.tag ?? reference.digest?.description ?? "latest"
                archivePath = nil
            case .store(let name):
                registry = nil
                layout = home
                self.name = name
                archivePath = nil
            case .layout(let path, let tag):
                registry = nil
                layout = try ContentStore(root: path, managed: false)
                name = tag
                archivePath = nil
            case .archive(let path, let tag):
                registry = nil
                let staging = home.scratch + "/archive-out-" + UUID().uuidString
                // An existing archive keeps its other images: start from its contents.
                if FileManager.default.fileExists(atPath: path) { try OCIArchive.extract(path, into: staging) }
                layout = try ContentStore(root: staging, managed: false)
                name = tag
                archivePath = path
            }
        }

        func writeBlob(
            _ blob: Descriptor, from local: ContentStore, growing: GrowingBlob?, mountFrom: String?, report: @escaping TransferObserver
        ) async throws {
            if let registry {
                try await registry.client.pushBlob(
                    blob, repository: registry.reference.repository, from: local, growing: growing, mountFrom: mountFrom, observer: report)
            } else if let layout {
                // Layouts copy the finished file.
                if let growing { _ = try await growing.source(after: blob.size) }
                try Self.copyBlob(blob, from: local, to: layout, endpoint: location.description, report: report)
            }
        }

        static func copyBlob(
            _ blob: Descriptor, from source: ContentStore, to destination: ContentStore, endpoint: String, report: TransferObserver
        ) throws {
            if destination.contains(blob.digest) {
                report(.blobFinished(endpoint: endpoint, digest: blob.digest, size: blob.size, outcome: .alreadyPresent))
                return
            }
            report(.blobStarted(endpoint: endpoint, digest: blob.digest, size: blob.size))
            guard let input = FileHandle(forReadingAtPath: source.path(of: blob.digest)) else {
                throw KilnError(.notFound, "blob \(blob.digest) is not in '\(source.root)'")
            }
            defer { try? input.close() }
            let writer = try ContentStore.BlobWriter(store: destination)
            while let chunk = try input.read(upToCount: 1 << 20), !chunk.isEmpty {
                try writer.write(chunk)
                report(.bytes(endpoint: endpoint, digest: blob.digest, count: Int64(chunk.count)))
            }
            _ = try writer.commit(mediaType: blob.mediaType, expected: blob.digest)
            report(.blobFinished(endpoint: endpoint, digest: blob.digest, size: blob.size, outcome: .copied))
        }

        func writeManifests(_ manifests: [Manifest], root: Manifest, report: TransferObserver) async throws {
            for manifest in manifests {
                let isRoot = manifest.digest == root.digest
                if let registry {
                    var reference = manifest.digest.description
                    if isRoot {
                        if let digest = registry.reference.digest, digest != root.digest {
                            throw KilnError(
                                .invalidArgument, "\(location) names digest \(digest), but the image is \(root.digest); push by tag instead"
                            )
                        }
                        reference = registry.reference.tag ?? root.digest.description
                    }
                    let stored = try await registry.client.putManifest(
                        manifest.data, mediaType: manifest.mediaType, repository: registry.reference.repository, reference: reference)
                    guard stored == manifest.digest else {
                        throw KilnError(.checksumMismatch, "\(location): the registry stored \(stored), expected \(manifest.digest)")
                    }
                    if isRoot { report(.manifestWritten(endpoint: location.description, reference: location.description, digest: stored)) }
                } else if let layout {
                    var descriptor = try layout.ingest(manifest.data, expected: manifest.digest)
                    descriptor.mediaType = manifest.mediaType
                    descriptor.platform = manifest.platform
                    if isRoot {
                        try layout.tag(name, descriptor)
                        report(.manifestWritten(endpoint: location.description, reference: location.description, digest: descriptor.digest))
                    }
                }
            }
        }

        /// Destinations with the same key hold the same blobs.
        var blobKey: String {
            if let registry { return "registry:\(registry.reference.registry)/\(registry.reference.repository)" }
            // An archive stages in its own directory, so it shares with nothing.
            return "layout:" + (layout?.root ?? "")
        }

        /// Archives are written once everything is staged.
        func finish() throws {
            if let archivePath, let layout {
                try OCIArchive.write(layout: layout.root, to: archivePath)
            }
        }

        func close() {
            if archivePath != nil, let layout { try? FileManager.default.removeItem(atPath: layout.root) }
        }
    }
}

extension ImageTransfer {
    /// What `kiln image inspect` shows: the manifest, its config, and the platforms of an index.
    public struct Details: Sendable, Codable {
        public var name: String
        public var digest: Digest
        public var mediaType: String
        public var platforms: [String]?
        public var created: String?
        public var architecture: String?
        public var os: String?
        public var layers: [Descriptor]
        public var size: Int64
        public var config: ImageConfiguration.ContainerConfig?
        public var history: [ImageConfiguration.History]?
    }

    /// The manifest (or index) bytes exactly as stored; with `platform` set, an index's platform manifest.
    public func manifestData(_ location: ImageLocation) async throws -> Data {
        let opened = try await open(location, report: { _ in })
        defer { opened.close() }
        return opened.root.data
    }

    /// Inspects an image wherever it is; for an index, the platform image is described too.
    public func inspect(_ location: ImageLocation) async throws -> Details {
        var copy = self
        copy.observer = nil
        let opened = try await copy.open(location, report: { _ in })
        defer { opened.close() }
        var details = Details(
            name: location.description, digest: opened.root.digest, mediaType: opened.root.mediaType, layers: [],
            size: Int64(opened.root.data.count))
        if MediaType.isIndex(opened.root.mediaType) {
            let index = try JSONDecoder().decode(ImageIndex.self, from: opened.root.data)
            details.platforms = index.manifests.compactMap(\.platform).map(\.description)
            return details
        }
        let manifest = try JSONDecoder().decode(ImageManifest.self, from: opened.root.data)
        details.layers = manifest.layers
        details.size += manifest.config.size + manifest.layers.reduce(0) { $0 + $1.size }
        let lease = try store.lease([manifest.config.digest], label: "inspect")
        defer { lease.release() }
        let local = try await opened.fetch(manifest.config, { _ in })
        if let config = try? JSONDecoder().decode(ImageConfiguration.self, from: try local.read(manifest.config.digest)) {
            details.created = config.created
            details.architecture = config.architecture
            details.os = config.os
            details.config = config.config
            details.history = config.history
        }
        return details
    }
}
