import Crypto
import Foundation
import KilnModel
import KilnTOE

#if canImport(Glibc)
    import Glibc
#endif

/// Copies machine-image disks into a region's `imageStore`: a directory (written beside the
/// target, synced, renamed into place) or an S3-compatible bucket (multipart). Every copy is
/// read back and its sha256 compared with the disk's; a copy that differs is removed.
public enum DiskImageStore {
    public static func copy(
        _ file: String, name: String, digest: String, region: String, to store: KilnConfiguration.ImageStore, format: String = "raw",
        progress: @escaping @Sendable (Int64) -> Void = { _ in }
    ) async throws -> DiskCopy {
        switch store {
        case .directory(let folder):
            let target = folder + "/" + name
            let bytes = try copyFile(file, to: target, progress: progress)
            let (landed, _) = try sha256(of: target)
            guard landed == digest else {
                unlink(target)
                throw KilnError(
                    .checksumMismatch, "region \(region): the copy \(target) reads back as \(landed), not \(digest); it was removed")
            }
            return DiskCopy(region: region, location: target, format: format, digest: landed, bytes: bytes)
        case .s3(let bucket):
            let objects = S3Objects(
                endpoint: bucket.endpoint, region: bucket.region, bucket: bucket.bucket, accessKeyId: bucket.accessKeyId,
                secretAccessKey: bucket.secretAccessKey)
            let key = bucket.prefix.isEmpty ? name : bucket.prefix + "/" + name
            let location = "s3://\(bucket.bucket)/\(key)"
            let bytes: Int64
            do {
                bytes = try await objects.put(file: file, key: key, progress: progress)
            } catch let error as KilnError {
                throw KilnError(error.code, "region \(region): \(error.message)")
            }
            let (landed, _) = try await objects.digest(key: key)
            guard landed == digest else {
                throw KilnError(.checksumMismatch, "region \(region): \(location) reads back as \(landed), not \(digest)")
            }
            return DiskCopy(region: region, location: location, format: format, digest: landed, bytes: bytes)
        }
    }

    /// The file's `sha256:…` and size, read in 1 MiB buffers.
    public static func sha256(of path: String) throws -> (digest: String, bytes: Int64) {
        guard let handle = FileHandle(forReadingAtPath: path) else {
            throw KilnError(.notFound, "cannot read \(path)")
        }
        defer { try? handle.close() }
        var hasher = SHA256()
        var bytes: Int64 = 0
        while let chunk = try handle.read(upToCount: 1 << 20), !chunk.isEmpty {
            hasher.update(data: chunk)
            bytes += Int64(chunk.count)
        }
        return ("sha256:" + hasher.finalize().map { String(format: "%02x", $0) }.joined(), bytes)
    }

    /// Copies through a temporary file in the target's folder, synced before the rename, so a
    /// reader never sees half a disk.
    static func copyFile(_ source: String, to target: String, progress: @Sendable (Int64) -> Void) throws -> Int64 {
        let folder = (target as NSString).deletingLastPathComponent
        do {
            try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        } catch {
            throw KilnError(.ioFailure, "cannot create the image store folder \(folder): \(error)")
        }
        guard let input = FileHandle(forReadingAtPath: source) else { throw KilnError(.notFound, "cannot read the disk \(source)") }
        defer { try? input.close() }
        let temporary = folder + "/.\((target as NSString).lastPathComponent).\(getpid()).tmp"
        let descriptor = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard descriptor >= 0 else {
            throw KilnError(.ioFailure, "cannot write \(temporary): \(String(cString: strerror(errno)))")
        }
        let output = FileHandle(fileDescriptor: descriptor, closeOnDealloc: true)
        var bytes: Int64 = 0
        do {
            while let chunk = try input.read(upToCount: 4 << 20), !chunk.isEmpty {
                try output.write(contentsOf: chunk)
                bytes += Int64(chunk.count)
                progress(bytes)
            }
            try output.synchronize()
            try output.close()
        } catch {
            unlink(temporary)
            throw KilnError(.ioFailure, "cannot copy the disk to \(target): \(error)")
        }
        guard rename(temporary, target) == 0 else {
            let reason = String(cString: strerror(errno))
            unlink(temporary)
            throw KilnError(.ioFailure, "cannot move the copy into place at \(target): \(reason)")
        }
        return bytes
    }
}
