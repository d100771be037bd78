import Foundation
import KilnModel
import KilnOCI
import KilnRegistry

#if canImport(Glibc)
    import Glibc
#endif

/// A machine image's qcow2 disk as a KubeVirt containerDisk: an image on no base (`FROM
/// scratch`) whose one layer holds `/disk/NAME.qcow2`, owned by the qemu user (107:107) that
/// KubeVirt's launcher reads it as, the layer KubeVirt's guide builds with
/// `ADD --chown=107:107 disk.qcow2 /disk/`. A `containerDisk` volume boots from it.
///
/// The layer is streamed from the disk file (disks are GBs; memory stays bounded), and every
/// time in the image is `sourceDateEpoch`, so the same disk always gives the same digest.
public enum ContainerDisk {
    /// The folder KubeVirt serves disks from, at the root of the image.
    public static let directory = "disk"
    /// The qemu user and group of KubeVirt's launcher.
    public static let qemuID: UInt32 = 107
    /// Read-only for the qemu user: KubeVirt boots from a copy-on-write overlay over it.
    public static let fileMode: UInt32 = 0o440
    public static let directoryMode: UInt32 = 0o555
    /// The config label (and manifest annotation) that names the disk's format.
    public static let formatLabel = "kiln.disk.format"
    public static let platform = Platform(architecture: "amd64", os: "linux")
    /// qcow2's magic, `QFI\xfb`, at offset 0.
    static let qcow2Magic: [UInt8] = [0x51, 0x46, 0x49, 0xfb]
    static let chunkSize = 1 << 20

    public struct Pushed: Sendable, Hashable {
        /// The image's name in Kiln's store.
        public var name: String
        /// The manifest every reference now points at.
        public var digest: Digest
        public var layer: Descriptor
        /// Each reference as pushed, pinned to the digest: `host/repo:tag@sha256:…`.
        public var references: [String]
    }

    /// Makes the containerDisk image of the qcow2 disk at `qcow2` in `store`, names it `name`
    /// there, and returns its manifest. The disk is `/disk/DISKNAME.qcow2` in the image.
    @discardableResult
    public static func make(
        qcow2: String, in store: ContentStore, name: String, diskName: String = "disk", sourceDateEpoch: Int64 = 0
    ) throws -> Descriptor {
        guard !diskName.isEmpty, diskName.allSatisfy({ $0.isLetter || $0.isNumber || "._-".contains($0) }), !diskName.hasPrefix(".")
        else {
            throw KilnError(
                .invalidArgument, "'\(diskName)' cannot name a containerDisk's disk; use letters, digits, '.', '_' and '-' (e.g. disk)")
        }
        let input = try openQcow2(qcow2)
        defer { close(input.descriptor) }

        let blob = try ContentStore.BlobWriter(store: store)
        let gzip = try GzipLayerWriter { try blob.write($0) }
        var tar = TarWriter { try gzip.write($0) }
        func entry(_ path: String, _ kind: TarEntry.Kind, _ mode: UInt32, size: Int64 = 0) -> TarEntry {
            var entry = TarEntry(path: path, kind: kind, mode: mode)
            (entry.uid, entry.gid, entry.size, entry.modificationTime) = (qemuID, qemuID, size, sourceDateEpoch)
            return entry
        }
        try tar.writeHeader(entry(directory, .directory, directoryMode))
        try tar.writeHeader(entry("\(directory)/\(diskName).qcow2", .file, fileMode, size: input.size))
        try copyContents(of: input.descriptor, size: input.size, path: qcow2, into: &tar)
        try tar.padToBlock(Int(input.size % 512))
        try tar.finish()
        let packed = try gzip.finish()
        let layer = try blob.commit(mediaType: MediaType.layerTarGzip, expected: packed.digest)

        let created = timestamp(sourceDateEpoch)
        var container = ImageConfiguration.ContainerConfig()
        container.labels = [formatLabel: "qcow2"]
        let configuration = ImageConfiguration(
            architecture: platform.architecture, os: platform.os, rootfs: .init(diffIDs: [packed.diffID]), config: container,
            created: created,
            history: [.init(created: created, createdBy: "kiln containerDisk: ADD --chown=107:107 \(diskName).qcow2 /disk/")])
        let config = try store.ingestJSON(configuration, mediaType: MediaType.imageConfig)
        let manifest = try store.ingestJSON(
            ImageManifest(config: config, layers: [layer], annotations: [formatLabel: "qcow2"]), mediaType: MediaType.imageManifest)
        try store.tag(name, manifest)
        return manifest
    }

    /// Makes the containerDisk image (see `make`) in `transfer`'s store under `name` and pushes
    /// it to every reference at once. Throws naming each reference that failed.
    public static func push(
        qcow2: String, transfer: ImageTransfer, name: String, to references: [ImageReference], diskName: String = "disk",
        sourceDateEpoch: Int64 = 0
    ) async throws -> Pushed {
        guard !references.isEmpty else {
            throw KilnError(.invalidArgument, "pushing the containerDisk of \(qcow2) needs at least one registry reference")
        }
        let manifest = try make(qcow2: qcow2, in: transfer.store, name: name, diskName: diskName, sourceDateEpoch: sourceDateEpoch)
        // The name holds the blobs against a gc; the lease keeps them if the name is moved meanwhile.
        let lease = try transfer.store.lease([manifest.digest], label: "containerdisk", requirePresent: true)
        defer { lease.release() }
        let result = try await transfer.copy(from: .store(name: name), to: references.map { .registry($0) }).checked()
        guard result.digest == manifest.digest else {
            throw KilnError(
                .checksumMismatch,
                "the containerDisk \(name) was pushed as \(result.digest), not as made (\(manifest.digest)); was the name moved meanwhile?")
        }
        let layer = try transfer.store.image(manifest.digest).manifest.layers[0]
        return Pushed(
            name: name, digest: result.digest, layer: layer,
            references: references.map { "\($0.registry)/\($0.repository)\($0.tag.map { ":" + $0 } ?? "")@\(result.digest)" }
        )
    }

    // MARK: Reading the disk

    /// Opens a regular file that starts with qcow2's magic; its size as it is now.
    static func openQcow2(_ path: String) throws -> (descriptor: Int32, size: Int64) {
        let descriptor = open(path, O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else {
            let reason = String(cString: strerror(errno))
            throw KilnError(
                errno == ENOENT ? .notFound : .ioFailure,
                "cannot read the disk \(path) for a containerDisk: \(reason); give the path of a qcow2 file")
        }
        var info = stat()
        guard fstat(descriptor, &info) == 0, info.st_mode & S_IFMT == S_IFREG else {
            close(descriptor)
            throw KilnError(.invalidArgument, "\(path) is not a regular file; a containerDisk needs a qcow2 disk file")
        }
        var magic = [UInt8](repeating: 0, count: qcow2Magic.count)
        let read = pread(descriptor, &magic, magic.count, 0)
        guard read == magic.count, magic == qcow2Magic else {
            close(descriptor)
            throw KilnError(
                .invalidArgument,
                "\(path) is not a qcow2 disk (it does not start with qcow2's magic QFI\\xfb); convert it first with qemu-img convert -O qcow2"
            )
        }
        return (descriptor, Int64(info.st_size))
    }

    /// Exactly `size` bytes, a chunk at a time; a disk that shrinks while it is read fails.
    static func copyContents(of descriptor: Int32, size: Int64, path: String, into tar: inout TarWriter) throws {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: chunkSize, alignment: 16)
        defer { buffer.deallocate() }
        var remaining = size
        var offset: Int64 = 0
        while remaining > 0 {
            try Task.checkCancellation()
            let wanted = Int(min(Int64(chunkSize), remaining))
            let got = pread(descriptor, buffer.baseAddress, wanted, off_t(offset))
            if got < 0, errno == EINTR { continue }
            guard got > 0 else {
                let reason = got < 0 ? String(cString: strerror(errno)) : "it ended after \(offset) of \(size) bytes"
                throw KilnError(.ioFailure, "cannot read the disk \(path) for a containerDisk: \(reason); was it changed while being read?")
            }
            try tar.writeContents(UnsafeRawBufferPointer(rebasing: buffer[0..<got]))
            remaining -= Int64(got)
            offset += Int64(got)
        }
    }

    /// RFC 3339 in UTC, as image configs carry it.
    static func timestamp(_ seconds: Int64) -> String {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime]
        return formatter.string(from: Date(timeIntervalSince1970: TimeInterval(seconds)))
    }
}
