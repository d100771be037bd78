import Crypto
import Foundation
import KilnInstances
import KilnModel
import KilnOCI
import KilnSystem
import KilnTOE

/// `kiln image import-disk`: Image Builder's ImportDiskImage. A raw, qcow2 or vmdk disk
/// becomes an AVAILABLE machine image (type AMI) whose qcow2 lives in Kiln's data directory.
/// Disks are untrusted: the format is read from the file's own bytes (qemu-img never guesses),
/// and a disk that names any other file (a qcow2 backing or data file, a vmdk extent elsewhere)
/// is refused, since converting it would copy that host file into the image.
public enum DiskImport {
    public enum Format: String, Sendable, CaseIterable {
        case raw, qcow2, vmdk
    }

    /// What `qemu-img info` says of a disk Kiln accepts.
    public struct Inspection: Sendable, Hashable {
        public var format: Format
        public var virtualSize: Int64
    }

    /// The format by magic bytes: qcow2 `QFI\xfb`, vmdk `KDMV` (one-file sparse or stream
    /// optimised); raw must start a partition table (MBR/GPT signature) or be an ext filesystem.
    public static func sniff(_ path: String) throws -> Format {
        guard let handle = FileHandle(forReadingAtPath: path) else {
            throw KilnError(.notFound, "cannot read the disk \(path)")
        }
        defer { try? handle.close() }
        let head = try handle.read(upToCount: 2048) ?? Data()
        if head.starts(with: [0x51, 0x46, 0x49, 0xFB]) { return .qcow2 }
        if head.starts(with: Array("KDMV".utf8)) { return .vmdk }
        if head.starts(with: Array("# Disk DescriptorFile".utf8)) {
            throw KilnError(
                .invalidArgument,
                "\(path) is a vmdk descriptor whose data is in other files; convert it to one file first (qemu-img convert -O vmdk -o subformat=streamOptimized …)"
            )
        }
        let partitioned = head.count >= 512 && head[510] == 0x55 && head[511] == 0xAA
        let ext = head.count >= 1082 && head[1080] == 0x53 && head[1081] == 0xEF
        guard partitioned || ext else {
            throw KilnError(
                .invalidArgument,
                "\(path) is not a disk Kiln can import: not qcow2, not a one-file vmdk, and as raw it has neither a partition table nor an ext filesystem"
            )
        }
        return .raw
    }

    /// Checks the disk with `qemu-img info` under the sniffed format.
    public static func inspect(_ path: String) async throws -> Inspection {
        let format = try sniff(path)
        let (status, output) = try await qemuImg(["info", "--output=json", "-f", format.rawValue, path])
        guard status == 0, let info = (try? JSONSerialization.jsonObject(with: Data(output.utf8))) as? [String: Any] else {
            throw KilnError(.invalidArgument, "qemu-img cannot read \(path) as \(format.rawValue): \(output.suffix(500))")
        }
        if let backing = info["backing-filename"] as? String {
            throw KilnError(
                .invalidArgument,
                "\(path) is a qcow2 overlay of \(backing); Kiln imports only self-contained disks (qemu-img convert -O qcow2 it first)")
        }
        let specific = (info["format-specific"] as? [String: Any])?["data"] as? [String: Any] ?? [:]
        if let data = specific["data-file"] as? String {
            throw KilnError(.invalidArgument, "\(path) keeps its data in \(data); Kiln imports only self-contained disks")
        }
        let own = (path as NSString).standardizingPath
        for extent in specific["extents"] as? [[String: Any]] ?? [] {
            let name = extent["filename"] as? String ?? ""
            guard (name as NSString).standardizingPath == own || name == path else {
                throw KilnError(.invalidArgument, "\(path) has an extent in \(name); Kiln imports only self-contained disks")
            }
        }
        guard let size = (info["virtual-size"] as? NSNumber)?.int64Value, size > 0 else {
            throw KilnError(.invalidArgument, "\(path) has no virtual size")
        }
        return Inspection(format: format, virtualSize: size)
    }

    /// Where ImportDiskImage reads a disk: a file in a region's image-store folder, or an
    /// object in a region's image-store bucket.
    public enum Source: Sendable, Hashable {
        case file(String)
        case s3(KilnConfiguration.S3Bucket, key: String)

        /// `s3://BUCKET/KEY` in a bucket some region stores disks in, or `file:///PATH` (or
        /// `/PATH`) inside a region's image-store folder: the server reads nothing else.
        public static func parse(_ uri: String, regions: [String: KilnConfiguration.Region]) throws -> Source {
            let stores = regions.sorted { $0.key < $1.key }.compactMap { name, region in region.imageStore.map { (name, $0) } }
            if uri.hasPrefix("s3://") {
                let rest = uri.dropFirst("s3://".count)
                guard let slash = rest.firstIndex(of: "/"), rest.index(after: slash) < rest.endIndex else {
                    throw KilnError(.invalidArgument, "uri \(uri) names no object; use s3://BUCKET/KEY")
                }
                let (bucket, key) = (String(rest[..<slash]), String(rest[rest.index(after: slash)...]))
                for (_, store) in stores {
                    if case .s3(let configured) = store, configured.bucket == bucket { return .s3(configured, key: key) }
                }
                throw KilnError(
                    .invalidArgument,
                    "uri \(uri): no region in kiln.yaml keeps disks in the bucket \(bucket), so Kiln has no endpoint or credentials for it; put the disk in a region's imageStore bucket or folder"
                )
            }
            let path = ((uri.hasPrefix("file://") ? String(uri.dropFirst("file://".count)) : uri) as NSString).standardizingPath
            guard path.hasPrefix("/"), !path.split(separator: "/").contains("..") else {
                throw KilnError(.invalidArgument, "uri \(uri) is neither s3://BUCKET/KEY nor file:///PATH")
            }
            let resolved = (path as NSString).resolvingSymlinksInPath
            for (_, store) in stores {
                guard case .directory(let folder) = store else { continue }
                let root = (folder as NSString).resolvingSymlinksInPath
                if resolved.hasPrefix(root + "/") { return .file(resolved) }
            }
            let folders = stores.compactMap { if case .directory(let folder) = $0.1 { folder } else { nil } }
            throw KilnError(
                .invalidArgument,
                "uri \(uri) is outside every region's imageStore folder (\(folders.isEmpty ? "none is configured" : folders.joined(separator: ", "))); the server reads disks only there or from a region's bucket"
            )
        }
    }

    /// The disk as a local file: `source`'s own file, or the object downloaded to `scratch`.
    public static func fetch(_ source: Source, downloadingTo scratch: String, progress: @escaping @Sendable (String) -> Void) async throws
        -> String
    {
        switch source {
        case .file(let path): return path
        case .s3(let bucket, let key):
            let objects = S3Objects(
                endpoint: bucket.endpoint, region: bucket.region, bucket: bucket.bucket, accessKeyId: bucket.accessKeyId,
                secretAccessKey: bucket.secretAccessKey)
            progress("downloading s3://\(bucket.bucket)/\(key)")
            let bytes = try await objects.download(key: key, to: scratch)
            progress("downloaded s3://\(bucket.bucket)/\(key): \(bytes) bytes")
            return scratch
        }
    }

    /// `kiln image import-disk`: checks the disk, reserves the next build of `name/version` and
    /// returns its AVAILABLE AMI record, saved.
    public static func run(
        _ path: String, name: String, version: SemanticVersion, configuration: KilnConfiguration, records: any ImageRecords,
        store: ContentStore, progress: @escaping @Sendable (String) -> Void = { _ in }
    ) async throws -> ImageRecord {
        let inspection = try await inspect(path)
        let normalized = ImageBuilderARN.normalizedName(name)
        let build = try records.reserveBuild(name: normalized, version: version)
        let folder = records.folder(name: normalized, version: version, build: build)
        let arn = ImageBuilderARN(
            region: configuration.homeRegion, account: configuration.accountId, resourceType: "image", name: normalized,
            version: "\(version)/\(build)"
        ).description
        var record = ImageRecord(
            arn: arn, name: normalized, version: version, build: build, type: .ami, status: .creating,
            trigger: BuildTrigger(kind: .manual, detail: "kiln image import-disk \(path)"),
            dateCreated: ISO8601DateFormatter().string(from: Date()), logDirectory: folder + "/logs")
        try await fill(&record, from: path, inspection: inspection, folder: folder, store: store, progress: progress)
        try records.save(record)
        return record
    }

    /// Makes `record` (reserved, its folder `folder`) an AVAILABLE AMI from the disk at `path`,
    /// which `inspect` accepted as `inspection`:
    /// the disk becomes `folder/disk.qcow2`, and its root filesystem goes into `store` as a
    /// one-layer image, so the AMI can be a recipe's parent. A disk whose root Kiln cannot read
    /// is still imported, with the reason in `machineImage.parentRefusal`.
    public static func fill(
        _ record: inout ImageRecord, from path: String, inspection: Inspection, folder: String, store: ContentStore,
        progress: @escaping @Sendable (String) -> Void
    ) async throws {
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        let disk = folder + "/disk.qcow2"
        progress("import \(path) (\(inspection.format.rawValue), \(inspection.virtualSize) bytes virtual) → \(disk)")
        let (status, output) = try await qemuImg(
            ["convert", "-f", inspection.format.rawValue, "-O", "qcow2", path, disk + ".part"])
        guard status == 0 else {
            unlink(disk + ".part")
            throw KilnError(.ioFailure, "qemu-img could not convert \(path): \(output.suffix(500))")
        }
        guard rename(disk + ".part", disk) == 0 else {
            throw KilnError(.ioFailure, "cannot move the converted disk to \(disk): \(String(cString: strerror(errno)))")
        }
        let (digest, bytes) = try DiskImageStore.sha256(of: disk)
        record.machineImage = MachineImage(
            amiId: MachineImage.amiId(forArn: record.arn) { Array(SHA256.hash(data: $0)) }, disk: disk, format: "qcow2", digest: digest,
            bytes: bytes, virtualSize: inspection.virtualSize, importedFrom: "\(path) (\(inspection.format.rawValue))")
        let localName = "\(record.name):\(record.version)-\(record.build)"
        do {
            let manifest = try await importRoot(
                of: inspection.format == .raw ? path : disk, isRaw: inspection.format == .raw, store: store, as: localName, source: path,
                progress: progress)
            record.localName = localName
            record.digest = manifest.digest.description
            progress("root filesystem stored as kiln:\(localName) (\(manifest.digest)); the image can be a parent image")
        } catch {
            let reason = (error as? KilnError)?.message ?? "\(error)"
            record.machineImage?.parentRefusal = reason
            progress("warning: the disk is imported, but it cannot be a parent image: \(reason)")
        }
        record.status = .available
        progress("image \(record.arn): AVAILABLE, \(record.machineImage!.amiId), \(digest)")
    }

    /// Reads the disk's root filesystem (a qcow2 through a sparse raw copy) into a one-layer image.
    static func importRoot(
        of disk: String, isRaw: Bool, store: ContentStore, as name: String, source: String, progress: @escaping @Sendable (String) -> Void
    ) async throws -> Descriptor {
        var raw = disk
        let scratch = store.scratch + "/" + ProcessOwner.temporaryName("import-")
        guard mkdir(scratch, 0o700) == 0 else {
            throw KilnError(.ioFailure, "cannot make \(scratch): \(String(cString: strerror(errno)))")
        }
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        if !isRaw {
            raw = scratch + "/disk.raw"
            let (status, output) = try await qemuImg(["convert", "-f", "qcow2", "-O", "raw", disk, raw])
            guard status == 0 else { throw KilnError(.ioFailure, "qemu-img could not make a raw copy of \(disk): \(output.suffix(500))") }
        }
        let summary = try await DiskRootReader.extract(raw: raw, into: scratch + "/root", observer: progress)
        let place = summary.partition.map { "partition \($0)" } ?? "whole disk"
        progress("packing the root filesystem (\(summary.entries) entries) into kiln:\(name)")
        return try store.importRootFilesystem(
            scratch + "/root", name: name, createdBy: "kiln image import-disk \(source) (\(place), ext root)")
    }

    static func qemuImg(_ arguments: [String]) async throws -> (Int32, String) {
        guard
            let executable = ["/usr/bin/qemu-img", "/usr/local/bin/qemu-img"].first(where: {
                FileManager.default.isExecutableFile(atPath: $0)
            })
        else {
            throw KilnError(.notFound, "qemu-img is not installed; run scripts/setup (Debian package qemu-utils)")
        }
        let collected = OutputCollector()
        let result = try await ProcessRunner.run(
            executablePath: executable, argumentZero: "qemu-img", arguments: arguments, environment: ["PATH": "/usr/bin:/bin"],
            workingDirectory: nil, timeout: .seconds(3_600)
        ) { _, bytes in collected.append(bytes) }
        return (result.exitCode, collected.text)
    }
}
