import Foundation
import KilnModel
import KilnOCI

#if canImport(Glibc)
    import Glibc
#endif

/// Every image layer unpacked once, by diffID, into a folder that overlayfs can stack as a
/// lower directory (whiteouts as 0/0 devices, opaque folders by xattr). Instances share them.
public struct LayerCache: Sendable {
    public let root: String

    public init(root: String) throws {
        self.root = root
        do {
            try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        } catch {
            throw KilnError(.ioFailure, "cannot create the layer cache at '\(root)': \(error.localizedDescription)")
        }
    }

    public func path(of diffID: Digest) -> String { "\(root)/\(diffID.encoded)" }

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
        let folder = "\(root)/flat-\(key.encoded)"
        if FileManager.default.fileExists(atPath: folder) { return folder }
        let staging = "\(root)/.tmp-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: staging) }
        try FileManager.default.createDirectory(atPath: staging, withIntermediateDirectories: false)
        for (layer, diffID) in layers {
            try apply(layer, diffID: diffID, store: store, into: staging, overlayWhiteouts: false)
        }
        guard rename(staging, folder) == 0 || FileManager.default.fileExists(atPath: folder) else {
            throw KilnError(.ioFailure, "cannot store flattened layers in '\(root)': \(String(cString: strerror(errno)))")
        }
        return folder
    }

    /// Unpacks one layer (verifying its diffID) unless it is cached; returns its folder.
    @discardableResult
    public func unpack(_ layer: Descriptor, diffID: Digest, store: ContentStore) throws -> String {
        let folder = path(of: diffID)
        if FileManager.default.fileExists(atPath: folder) { return folder }
        let staging = "\(root)/.tmp-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: staging) }
        try FileManager.default.createDirectory(atPath: staging, withIntermediateDirectories: false)
        try apply(layer, diffID: diffID, store: store, into: staging, overlayWhiteouts: true)
        guard rename(staging, folder) == 0 || FileManager.default.fileExists(atPath: folder) else {
            throw KilnError(.ioFailure, "cannot store layer \(diffID) in '\(root)': \(String(cString: strerror(errno)))")
        }
        return folder
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
        let file = try TarReader.fileSource(store.path(of: layer.digest), compressed: compressed)
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
