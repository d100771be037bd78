import Foundation
import KilnInstances
import KilnModel

/// Prices image ledgers: instance time at the instance type's $/hour, storage at the region's
/// $/GB-month, and transfer to regions other than the home region at $/GB (GB = 2^30 bytes).
public struct CostReport: Sendable {
    static let gigabyte = Double(1 << 30)

    public struct InstanceCharge: Sendable, Codable, Hashable {
        public var role: String
        public var instanceType: String
        public var seconds: Double
        public var cpuSeconds: Double
        public var pricePerHour: Double
        public var cost: Double
    }

    public struct RegionCharge: Sendable, Codable, Hashable {
        public var region: String
        public var storedBytes: Int64
        public var storagePerGBMonth: Double
        /// What keeping the image there costs per month.
        public var storagePerMonth: Double
        public var transferredBytes: Int64
        public var transferPerGB: Double
        public var transferCost: Double
    }

    /// One image's cost: the one-off build (instances and transfer) and its storage per month.
    public struct ImageCost: Sendable, Codable, Hashable {
        public var image: String
        public var arn: String
        public var pipeline: String?
        public var status: String
        public var month: String
        public var instances: [InstanceCharge]
        public var regions: [RegionCharge]
        public var instanceCost: Double
        public var transferCost: Double
        public var buildCost: Double
        public var storagePerMonth: Double
    }

    /// Storage a set of images holds in one region, each blob counted once.
    public struct RegionStorage: Sendable, Codable, Hashable {
        public var region: String
        public var storedBytes: Int64
        public var storagePerMonth: Double
    }

    /// Images in a scope (a pipeline, a month, or all), with totals and a storage projection.
    public struct Summary: Sendable, Codable, Hashable {
        public var scope: String
        public var images: [ImageCost]
        public var instanceSeconds: Double
        public var cpuSeconds: Double
        public var buildCost: Double
        /// What the images' blobs cost per month where they are stored (shared blobs once).
        public var storage: [RegionStorage]
        public var storagePerMonth: Double
        /// Build costs plus a month of storage.
        public var monthlyTotal: Double
    }

    public let configuration: KilnConfiguration
    let types: [String: InstanceType]

    public init(configuration: KilnConfiguration) throws {
        self.configuration = configuration
        types = try InstanceType.table(configured: configuration.instanceTypes)
    }

    public func cost(of record: ImageRecord) -> ImageCost {
        let ledger = record.ledger ?? CostLedger()
        let instances = ledger.instances.map { run in
            let price = types[run.instanceType]?.pricePerHour ?? 0
            return InstanceCharge(
                role: run.role, instanceType: run.instanceType, seconds: run.seconds, cpuSeconds: run.cpuSeconds, pricePerHour: price,
                cost: run.seconds / 3600 * price)
        }
        let regions = ledger.regions.map { usage in
            let storage = configuration.storagePrice(region: usage.region), transfer = configuration.transferPrice(region: usage.region)
            return RegionCharge(
                region: usage.region, storedBytes: usage.storedBytes, storagePerGBMonth: storage,
                storagePerMonth: Double(usage.storedBytes) / Self.gigabyte * storage,
                transferredBytes: usage.transferredBytes, transferPerGB: transfer,
                transferCost: Double(usage.transferredBytes) / Self.gigabyte * transfer
            )
        }
        let instanceCost = instances.reduce(0) { $0 + $1.cost }, transferCost = regions.reduce(0) { $0 + $1.transferCost }
        return ImageCost(
            image: "\(record.name)/\(record.version)/\(record.build)", arn: record.arn, pipeline: record.sourcePipelineName,
            status: record.status.rawValue,
            month: String(record.dateCreated.prefix(7)), instances: instances, regions: regions, instanceCost: instanceCost,
            transferCost: transferCost,
            buildCost: instanceCost + transferCost, storagePerMonth: regions.reduce(0) { $0 + $1.storagePerMonth }
        )
    }

    /// `records` priced together; `stored` are the images whose blobs count for storage.
    public func summary(_ scope: String, records: [ImageRecord], stored: [ImageRecord]? = nil) -> Summary {
        let images = records.map(cost(of:))
        var blobs: [String: [String: Int64]] = [:]
        for record in stored ?? records {
            for usage in record.ledger?.regions ?? [] { blobs[usage.region, default: [:]].merge(usage.blobs) { first, _ in first } }
        }
        let storage = blobs.keys.sorted().map { region in
            let bytes = blobs[region]!.values.reduce(0, +)
            return RegionStorage(
                region: region, storedBytes: bytes,
                storagePerMonth: Double(bytes) / Self.gigabyte * configuration.storagePrice(region: region))
        }
        let runs = records.flatMap { $0.ledger?.instances ?? [] }
        let buildCost = images.reduce(0) { $0 + $1.buildCost }, storagePerMonth = storage.reduce(0) { $0 + $1.storagePerMonth }
        return Summary(
            scope: scope, images: images, instanceSeconds: runs.reduce(0) { $0 + $1.seconds },
            cpuSeconds: runs.reduce(0) { $0 + $1.cpuSeconds },
            buildCost: buildCost, storage: storage, storagePerMonth: storagePerMonth, monthlyTotal: buildCost + storagePerMonth
        )
    }

    /// The images built in `month` (YYYY-MM); storage counts every image built by its end.
    public func month(_ month: String, records: [ImageRecord]) -> Summary {
        summary(
            "month \(month)", records: records.filter { $0.dateCreated.hasPrefix(month) },
            stored: records.filter { String($0.dateCreated.prefix(7)) <= month })
    }
}
