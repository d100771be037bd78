import Foundation
import KilnModel

#if canImport(Glibc)
    import Glibc
#endif

/// A machine image's disk into a region's image store, in the format asked for, like Image
/// Builder's s3ExportConfiguration (VMDK, RAW, VHD; also VHDX and qcow2). The copy is read back
/// and checked by digest, and its bytes go to the image's cost ledger.
public enum DiskExport {
    public enum Format: String, Sendable, CaseIterable {
        case qcow2, raw, vmdk, vhdx, vhd

        /// qemu-img's output format and options.
        var qemuArguments: [String] {
            switch self {
            case .qcow2: ["-O", "qcow2"]
            case .raw: ["-O", "raw"]
            case .vmdk: ["-O", "vmdk", "-o", "subformat=streamOptimized"]
            case .vhdx: ["-O", "vhdx"]
            case .vhd: ["-O", "vpc", "-o", "subformat=fixed,force_size=on"]
            }
        }
    }

    /// Exports `record`'s disk to `region`; returns the record with the copy and its bytes added.
    public static func export(
        _ record: ImageRecord, format: Format, region: String, configuration: KilnConfiguration, records: any ImageRecords,
        progress: @escaping @Sendable (String) -> Void = { _ in }
    ) async throws -> (ImageRecord, DiskCopy) {
        guard var machine = record.machineImage else {
            throw KilnError(
                .invalidArgument, "\(record.arn) is a \(record.type.rawValue) image with no disk; only machine images (AMI) export")
        }
        guard let store = configuration.regions[region]?.imageStore else {
            let stores = configuration.regions.filter { $0.value.imageStore != nil }.keys.sorted()
            throw KilnError(
                .invalidArgument,
                "region \(region) has no imageStore in kiln.yaml\(stores.isEmpty ? "; add regions.\(region).imageStore" : "; regions with one: \(stores.joined(separator: ", "))")"
            )
        }
        let folder = (machine.disk as NSString).deletingLastPathComponent
        let converted = "\(folder)/export-\(getpid()).\(format.rawValue)"
        defer { unlink(converted) }
        let file: String
        if format.rawValue == machine.format {
            file = machine.disk
        } else {
            progress("export \(record.arn): converting to \(format.rawValue)")
            let (status, output) = try await DiskImport.qemuImg(
                ["convert", "-f", machine.format] + format.qemuArguments + [machine.disk, converted])
            guard status == 0 else {
                throw KilnError(.ioFailure, "qemu-img could not convert \(machine.disk) to \(format.rawValue): \(output.suffix(500))")
            }
            file = converted
        }
        let (digest, _) = try DiskImageStore.sha256(of: file)
        let name = "\(record.name)/\(record.version)/\(record.build)/\(machine.amiId).\(format.rawValue)"
        progress("export \(record.arn): \(format.rawValue) \(digest) → region \(region)")
        let copy = try await DiskImageStore.copy(file, name: name, digest: digest, region: region, to: store, format: format.rawValue)
        var updated = try records.record(arn: record.arn) ?? record
        machine.copies = (updated.machineImage?.copies ?? []).filter { $0.location != copy.location } + [copy]
        updated.machineImage = machine
        var ledger = updated.ledger ?? CostLedger()
        var blobs = ledger.regions.first { $0.region == region }?.blobs ?? [:]
        blobs[copy.digest] = copy.bytes
        ledger.distributed(to: region, blobs: blobs, sentBytes: copy.bytes)
        updated.ledger = ledger
        try records.save(updated)
        return (updated, copy)
    }
}
