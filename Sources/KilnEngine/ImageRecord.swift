import Foundation
import KilnModel

/// Image Builder's image states, in their order.
public enum ImageStatus: String, Sendable, Codable, Hashable {
    case pending = "PENDING", creating = "CREATING", building = "BUILDING", testing = "TESTING"
    case distributing = "DISTRIBUTING", integrating = "INTEGRATING", available = "AVAILABLE"
    case cancelled = "CANCELLED", failed = "FAILED"
}

/// The stages a failure names, as Image Builder's workflow steps do.
public enum Stage: String, Sendable, Codable, Hashable {
    case build = "BUILD", test = "TEST", distribute = "DISTRIBUTE"
}

/// One image version `name/x.y.z/build`, as `kiln images` shows it and the API will return it.
public struct ImageRecord: Sendable, Codable, Hashable {
    public struct Failure: Sendable, Codable, Hashable {
        public var stage: Stage
        public var step: String?
        public var region: String?
        public var log: String?
        public var reason: String
    }

    public struct ContainerOutput: Sendable, Codable, Hashable {
        public var region: String
        public var imageUris: [String]
    }

    /// Where DISTRIBUTE sends the image, fixed when the build starts, so a retry sends it to
    /// the same places.
    public struct DistributionTarget: Sendable, Codable, Hashable {
        public var region: String
        public var reference: String
    }

    public struct StageTiming: Sendable, Codable, Hashable {
        public var stage: String
        public var seconds: Double
    }

    public var arn: String
    public var name: String
    public var version: SemanticVersion
    public var build: Int
    public var type = ImageType.docker
    public var status: ImageStatus
    public var failure: Failure?
    public var sourcePipelineName: String?
    public var dateCreated: String
    /// The parent as the recipe names it, and the manifest digest it resolved to for this build.
    public var parentImage: String?
    public var parentDigest: String?
    /// Each file-changing step: reused from the cache or run, and why.
    public var cacheDecisions: [CacheDecision]?
    /// Upgrades the image's package sources offered that made cached steps run again.
    public var packageUpdates: [PackageUpgrade]?
    /// The image in Kiln's store (`kiln:<localName>`) and its manifest digest.
    public var localName: String?
    public var digest: String?
    /// Every build step came from the cache: no builder started.
    public var cacheHit: Bool?
    /// Build steps (components and file-changing instructions) reused from the cache, and run.
    public var cachedSteps: Int?
    public var builtSteps: Int?
    /// The test results as JUnit XML (`tests.json` beside it), once TEST ran.
    public var testResults: String?
    /// What the build used, measured; `kiln cost` prices it.
    public var ledger: CostLedger?
    public var distributionTargets: [DistributionTarget] = []
    public var outputContainers: [ContainerOutput] = []
    public var timings: [StageTiming] = []
    public var logDirectory: String
    /// The Kiln process running the image's pipeline now; a record in a running state whose
    /// owner died is FAILED as interrupted by the next Kiln that opens the records. Records of
    /// older Kilns have none.
    public var owner: ProcessOwner?

    /// PENDING to INTEGRATING: a Kiln process is (or was, if it died) working on the image.
    public var isRunning: Bool { status.isRunning }
}

extension ImageStatus {
    /// States a pipeline passes through; the others are final.
    public var isRunning: Bool { ![.available, .failed, .cancelled].contains(self) }

    /// The stage a running state belongs to.
    public var stage: Stage {
        switch self {
        case .testing: .test
        case .distributing, .integrating, .available: .distribute
        default: .build
        }
    }
}

/// The measured facts an image is charged for.
public struct CostLedger: Sendable, Codable, Hashable {
    /// A builder or test instance: how long it ran and the CPU its cgroup used.
    public struct InstanceRun: Sendable, Codable, Hashable {
        public var role: String
        public var instanceType: String
        public var seconds: Double
        public var cpuSeconds: Double
    }

    /// What the image keeps in a region and what was sent there.
    public struct RegionUsage: Sendable, Codable, Hashable {
        public var region: String
        /// The image's blobs in the region (manifest, config, layers), each once: digest → bytes.
        public var blobs: [String: Int64]
        public var storedBytes: Int64
        /// Bytes sent to the region's registry, over every distribution of this image (a blob
        /// the registry already had, or mounted, costs nothing; retried bytes count).
        public var transferredBytes: Int64
    }

    public var instances: [InstanceRun] = []
    public var regions: [RegionUsage] = []

    public init() {}

    public mutating func charge(role: String, instanceType: String, seconds: Double, cpuSeconds: Double) {
        instances.append(InstanceRun(role: role, instanceType: instanceType, seconds: seconds, cpuSeconds: cpuSeconds))
    }

    /// Adds a distribution's bytes to `region`; the stored blobs are the image's, whatever was sent.
    public mutating func distributed(to region: String, blobs: [String: Int64], sentBytes: Int64) {
        let stored = blobs.values.reduce(0, +)
        if let index = regions.firstIndex(where: { $0.region == region }) {
            regions[index].blobs = blobs
            regions[index].storedBytes = stored
            regions[index].transferredBytes += sentBytes
        } else {
            regions.append(RegionUsage(region: region, blobs: blobs, storedBytes: stored, transferredBytes: sentBytes))
            regions.sort { $0.region < $1.region }
        }
    }
}
