import Foundation
import KilnModel
import KilnOCI

#if canImport(Glibc)
    import Glibc
#endif

/// Every image layer unpacked once, by diffID, into a folder that overlayfs can stack as a
/// lower directory (whiteouts as 0/0 devices, opaque folders by xattr). Instances share them.
/// A folder counts only with its sibling `<folder>.complete` marker, written after the folder's
/// contents are on disk; a marker inside would show up in every container.
public struct LayerCache: Sendable {
    public let root: String
    /// The most one layer may unpack to (`KILN_MAX_LAYER_BYTES`, 32 GiB by default).
    public var maximumLayerBytes: Int64

    public init(root: String, maximumLayerBytes: Int64? = nil) throws {
        self.root = root
        self.maximumLayerBytes = try maximumLayerBytes ?? LayerSizeLimit.configured()
        do {
            try FileManager.default.createDirectory(atPath: root + "/.locks", withIntermediateDirectories: true)
        } catch {
            throw KilnError(.ioFailure, "cannot create the layer cache at '\(root)': \(error.localizedDescription)")
        }
    }

    public func path(of diffID: Digest) -> String { "\(root)/\(diffID.encoded)" }

    func marker(of folder: String) -> String { folder + ".complete" }

    /// Lower directories for `manifest`, bottom first, unpacking what is missing. When their
    /// paths would not fit in `budget` bytes of mount options, the bottom layers are merged
    /// into one cached folder (keyed by their diffIDs), so an image of any depth can mount.
    public func folders(for manifest: ImageManifest, config: ImageConfiguration, store: ContentStore, budget: Int = .max) throws -> [String]
    {
        guard manifest.layers.count == config.rootfs.diffIDs.count else {
            throw KilnError(
                .invalidArgument,
                "the image lists \(manifest.layers.count) layers but its config names \(config.rootfs.diffIDs.count) diffIDs")
        }
        let layers = Array(zip(manifest.layers, config.rootfs.diffIDs))
        let pathLength = path(of: layers.first?.1 ?? Digest(sha256Of: Data())).utf8.count + 1
        let fitting = max(1, budget / pathLength)
        var merged = 0
        if layers.count > fitting { merged = layers.count - fitting + 1 }
        var folders: [String] = []
        if merged > 1 { folders.append(try flatten(Array(layers.prefix(merged)), store: store)) } else { merged = 0 }
        for (layer, diffID) in layers.dropFirst(merged) {
            folders.append(try unpack(layer, diffID: diffID, store: store))
        }
        return folders
    }

    /// Several layers applied in order into one folder (deletions done, not whiteouts).
    func flatten(_ layers: [(Descriptor, Digest)], store: ContentStore) throws -> String {
        let key = Digest(sha256Of: Data(layers.map(\.1.description).joined(separator: "\n").utf8))
        return try cached("flat-\(key.encoded)", what: "flattened layers") { staging in
            for (layer, diffID) in layers {
                try apply(layer, diffID: diffID, store: store, into: staging, overlayWhiteouts: false)
            }
        }
    }

    /// Unpacks one layer (verifying its diffID) unless it is cached; returns its folder.
    @discardableResult
    public func unpack(_ layer: Descriptor, diffID: Digest, store: ContentStore) throws -> String {
        try cached(diffID.encoded, what: "layer \(diffID)") { staging in
            try apply(layer, diffID: diffID, store: store, into: staging, overlayWhiteouts: true)
        }
    }

    /// The folder `name`, made by `fill` in a staging folder unless it is complete. Under a lock
    /// per name, so two builds never unpack the same layer at once nor remove one in use.
    private func cached(_ name: String, what: String, fill: (String) throws -> Void) throws -> String {
        let folder = "\(root)/\(name)"
        let lock = try Self.lock("\(root)/.locks/\(name)")
        defer { close(lock) }
        if FileManager.default.fileExists(atPath: marker(of: folder)) { return folder }
        // No marker: Kiln stopped before the folder was whole (or an older Kiln made it). Start over.
        if FileManager.default.fileExists(atPath: folder) {
            let stale = "\(root)/.tmp-stale-\(UUID().uuidString)"
            guard rename(folder, stale) == 0 else {
                throw KilnError(.ioFailure, "cannot move aside the incomplete \(what) '\(folder)': \(String(cString: strerror(errno)))")
            }
            try? FileManager.default.removeItem(atPath: stale)
        }
        let staging = "\(root)/.tmp-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: staging) }
        try FileManager.default.createDirectory(atPath: staging, withIntermediateDirectories: false)
        try fill(staging)
        // Contents on disk before the rename, the rename before the marker: after a crash a
        // marker always means a whole folder.
        try Self.syncFilesystem(of: staging)
        guard rename(staging, folder) == 0 else {
            throw KilnError(.ioFailure, "cannot store \(what) in '\(root)': \(String(cString: strerror(errno)))")
        }
        try Self.syncFolder(root)
        let fd = open(marker(of: folder), O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0o644)
        guard fd >= 0, fsync(fd) == 0, close(fd) == 0 else {
            throw KilnError(.ioFailure, "cannot mark \(what) complete in '\(root)': \(String(cString: strerror(errno)))")
        }
        try Self.syncFolder(root)
        return folder
    }

    /// An exclusive `flock` on `path`, made if missing; close the descriptor to release it.
    private static func lock(_ path: String) throws -> Int32 {
        let fd = open(path, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0o600)
        guard fd >= 0 else {
            throw KilnError(.ioFailure, "cannot open the layer cache lock '\(path)': \(String(cString: strerror(errno)))")
        }
        while flock(fd, LOCK_EX) != 0 {
            guard errno == EINTR else {
                close(fd)
                throw KilnError(.ioFailure, "cannot lock '\(path)': \(String(cString: strerror(errno)))")
            }
        }
        return fd
    }

    private static func syncFolder(_ path: String) throws {
        let fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw KilnError(.ioFailure, "cannot open '\(path)': \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        guard fsync(fd) == 0 else { throw KilnError(.ioFailure, "cannot sync '\(path)': \(String(cString: strerror(errno)))") }
    }

    /// `syncfs` (one call for every file just unpacked; Glibc's Swift module leaves it out), else `sync`.
    private static func syncFilesystem(of path: String) throws {
        typealias SyncFS = @convention(c) (Int32) -> Int32
        guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "syncfs") else {
            sync()
            return
        }
        let fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw KilnError(.ioFailure, "cannot open '\(path)': \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        guard unsafeBitCast(symbol, to: SyncFS.self)(fd) == 0 else {
            throw KilnError(.ioFailure, "cannot sync the layer cache at '\(path)': \(String(cString: strerror(errno)))")
        }
    }

    /// Applies a layer blob onto `target`, checking that it unpacks to `diffID`.
    private func apply(_ layer: Descriptor, diffID: Digest, store: ContentStore, into target: String, overlayWhiteouts: Bool) throws {
        let compressed: Bool
        switch layer.mediaType {
        case MediaType.layerTarGzip, MediaType.dockerLayerGzip: compressed = true
        case MediaType.layerTar, "application/vnd.docker.image.rootfs.diff.tar": compressed = false
        default:
            throw KilnError(.unsupported, "layer \(layer.digest) is '\(layer.mediaType)'; Kiln unpacks tar and tar+gzip layers")
        }
        var hash = SHA256Stream()
        let file = try TarReader.fileSource(
            store.path(of: layer.digest), compressed: compressed, maximumBytes: maximumLayerBytes, what: "layer \(layer.digest)")
        let source: TarReader.Source = { buffer, limit in
            let count = try file(&buffer, limit)
            hash.update(Array(buffer[0..<count]))
            return count
        }
        var reader = TarReader(source: source)
        var unpacker = LayerUnpacker(target: target)
        unpacker.overlayWhiteouts = overlayWhiteouts
        try unpacker.apply(&reader)
        // The diffID covers the whole tar, end-of-archive blocks included.
        var rest: [UInt8] = []
        while try source(&rest, 1 << 16) > 0 {}
        guard hash.finalize() == diffID else {
            throw KilnError(.checksumMismatch, "layer \(layer.digest) does not unpack to its diffID \(diffID); the image is corrupt")
        }
    }
}
