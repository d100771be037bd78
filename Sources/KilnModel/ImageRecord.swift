import Foundation
import Synchronization

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

        public init(stage: Stage, step: String? = nil, region: String? = nil, log: String? = nil, reason: String) {
            self.stage = stage
            self.step = step
            self.region = region
            self.log = log
            self.reason = reason
        }
    }

    public struct ContainerOutput: Sendable, Codable, Hashable {
        public var region: String
        public var imageUris: [String]

        public init(region: String, imageUris: [String]) {
            self.region = region
            self.imageUris = imageUris
        }
    }

    /// Where DISTRIBUTE sends the image, fixed when the build starts, so a retry sends it to
    /// the same places.
    public struct DistributionTarget: Sendable, Codable, Hashable {
        public var region: String
        public var reference: String

        public init(region: String, reference: String) {
            self.region = region
            self.reference = reference
        }
    }

    public struct StageTiming: Sendable, Codable, Hashable {
        public var stage: String
        public var seconds: Double

        public init(stage: String, seconds: Double) {
            self.stage = stage
            self.seconds = seconds
        }
    }

    public var arn: String
    public var name: String
    public var version: SemanticVersion
    public var build: Int
    public var type = ImageType.docker
    public var status: ImageStatus
    public var failure: Failure?
    public var sourcePipelineName: String?
    /// What started the build: a manual start, its schedule, a base-image push, a package update.
    public var trigger: BuildTrigger?
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
    /// The image's installed packages (dpkg or apk), read in INTEGRATE.
    public var packages: [InstalledPackage]?
    /// A machine image's disk (AMI): its id, the qcow2 in Kiln's data directory and its digest.
    public var machineImage: MachineImage?
    /// What the build used, measured; `kiln cost` prices it.
    public var ledger: CostLedger?
    public var distributionTargets: [DistributionTarget] = []
    /// Regions a machine image's disk goes to (amiDistributionConfiguration), fixed before DISTRIBUTE.
    public var amiTargets: [AmiTarget]?
    public var outputContainers: [ContainerOutput] = []
    public var timings: [StageTiming] = []
    public var logDirectory: String
    /// The Kiln process running the image's pipeline now; a record in a running state whose
    /// owner died is FAILED as interrupted by the next Kiln that opens the records. Records of
    /// older Kilns have none.
    public var owner: ProcessOwner?

    public init(
        arn: String, name: String, version: SemanticVersion, build: Int, type: ImageType = .docker, status: ImageStatus,
        failure: Failure? = nil, sourcePipelineName: String? = nil, trigger: BuildTrigger? = nil, dateCreated: String,
        parentImage: String? = nil,
        parentDigest: String? = nil, cacheDecisions: [CacheDecision]? = nil, packageUpdates: [PackageUpgrade]? = nil,
        localName: String? = nil, digest: String? = nil, cacheHit: Bool? = nil, cachedSteps: Int? = nil, builtSteps: Int? = nil,
        testResults: String? = nil, ledger: CostLedger? = nil, distributionTargets: [DistributionTarget] = [],
        outputContainers: [ContainerOutput] = [], timings: [StageTiming] = [], logDirectory: String, owner: ProcessOwner? = nil
    ) {
        self.arn = arn
        self.name = name
        self.version = version
        self.build = build
        self.type = type
        self.status = status
        self.failure = failure
        self.sourcePipelineName = sourcePipelineName
        self.trigger = trigger
        self.dateCreated = dateCreated
        self.parentImage = parentImage
        self.parentDigest = parentDigest
        self.cacheDecisions = cacheDecisions
        self.packageUpdates = packageUpdates
        self.localName = localName
        self.digest = digest
        self.cacheHit = cacheHit
        self.cachedSteps = cachedSteps
        self.builtSteps = builtSteps
        self.testResults = testResults
        self.ledger = ledger
        self.distributionTargets = distributionTargets
        self.outputContainers = outputContainers
        self.timings = timings
        self.logDirectory = logDirectory
        self.owner = owner
    }

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

/// A machine image's disk, as Kiln keeps it.
public struct MachineImage: Sendable, Codable, Hashable {
    /// `ami-` and 17 hex digits, fixed by the image's ARN.
    public var amiId: String
    public var disk: String
    public var format: String
    public var digest: String
    public var bytes: Int64
    public var virtualSize: Int64
    /// Where an imported disk came from, and its format there.
    public var importedFrom: String?
    /// Why an imported disk's root filesystem could not be read, so it cannot be a parent image.
    public var parentRefusal: String?
    /// Copies in regions' image stores (exports in other formats included), each verified.
    public var copies: [DiskCopy]?
    /// KubeVirt containerDisks pushed to regions' registries, `registry/repository:tag@digest`.
    public var containerDisks: [String]?
    /// The raw disk beside the qcow2 (a built image has both).
    public var raw: String?
    public var kernelRelease: String?
    /// The test VM's boot: seconds from QEMU's start to SSH, the accelerator, and its serial log.
    public var bootSeconds: Double?
    public var accelerator: String?
    public var serialLog: String?

    public init(
        amiId: String, disk: String, format: String, digest: String, bytes: Int64, virtualSize: Int64, importedFrom: String? = nil
    ) {
        self.amiId = amiId
        self.disk = disk
        self.format = format
        self.digest = digest
        self.bytes = bytes
        self.virtualSize = virtualSize
        self.importedFrom = importedFrom
    }

    /// The AMI id of an image ARN: 17 hex digits of its sha256, so one ARN has one id.
    public static func amiId(forArn arn: String, digest: (Data) -> [UInt8]) -> String {
        "ami-" + digest(Data(arn.utf8)).prefix(9).map { String(format: "%02x", $0) }.joined().prefix(17)
    }
}

/// A region a machine image is distributed to, with the name, description and tags its
/// amiDistributionConfiguration gives it there (templates already filled in).
public struct AmiTarget: Sendable, Hashable, Codable {
    public var region: String
    public var name: String
    public var description: String?
    public var tags: [String: String]?

    public init(region: String, name: String, description: String? = nil, tags: [String: String]? = nil) {
        self.region = region
        self.name = name
        self.description = description
        self.tags = tags
    }
}

/// One disk copied into a region's image store, verified by reading it back.
public struct DiskCopy: Sendable, Hashable, Codable {
    public var region: String
    /// `/path/to/file` or `s3://bucket/key`.
    public var location: String
    public var format: String
    public var digest: String
    /// Bytes written to the store (metered for the cost ledger).
    public var bytes: Int64

    public init(region: String, location: String, format: String, digest: String, bytes: Int64) {
        self.region = region
        self.location = location
        self.format = format
        self.digest = digest
        self.bytes = bytes
    }
}

/// Why a build started, as the image's record and `kiln pipeline history` say.
public struct BuildTrigger: Sendable, Codable, Hashable {
    public enum Kind: String, Sendable, Codable, Hashable, CaseIterable {
        case manual
        case schedule
        case registryPush = "registry-push"
        case parentPoll = "parent-poll"
        case packageCheck = "package-check"
    }

    public var kind: Kind
    /// What happened: the fire time, the pushed reference and digest, the check's schedule.
    public var detail: String
    /// The dependency updates that made it build (parent digest, component builds), if checked.
    public var changes: [String]?
    /// Upgradable packages a package check found, which the new image holds.
    public var packages: [PackageUpgrade]?

    public init(kind: Kind, detail: String, changes: [String]? = nil, packages: [PackageUpgrade]? = nil) {
        self.kind = kind
        self.detail = detail
        self.changes = changes
        self.packages = packages
    }

    /// Image Builder's buildType: automated starts are SCHEDULED.
    public var buildType: String { kind == .manual ? "USER_INITIATED" : "SCHEDULED" }
}

/// One package of an image's inventory, as ListImagePackages returns it.
public struct InstalledPackage: Sendable, Codable, Hashable {
    public var name: String
    public var version: String

    public init(name: String, version: String) {
        self.name = name
        self.version = version
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

        public init(role: String, instanceType: String, seconds: Double, cpuSeconds: Double) {
            self.role = role
            self.instanceType = instanceType
            self.seconds = seconds
            self.cpuSeconds = cpuSeconds
        }
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

        public init(region: String, blobs: [String: Int64], storedBytes: Int64, transferredBytes: Int64) {
            self.region = region
            self.blobs = blobs
            self.storedBytes = storedBytes
            self.transferredBytes = transferredBytes
        }
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

/// What the build cache decided for one step, and why: kept in the image record and printed by
/// `kiln build` and `kiln build --explain-cache`.
public struct CacheDecision: Sendable, Codable, Hashable {
    public enum Outcome: String, Sendable, Codable, Hashable { case reused, run }

    public var step: String
    public var decision: Outcome
    public var reason: String
    /// The step's chained cache key, and the digest of its own input (to say later what changed).
    public var key: String
    public var input: String

    public init(step: String, decision: Outcome, reason: String, key: String, input: String) {
        self.step = step
        self.decision = decision
        self.reason = reason
        self.key = key
        self.input = input
    }

    public var line: String { "\(step): \(decision.rawValue) (\(reason))" }
}

/// A package the image's own sources offer in a newer version.
public struct PackageUpgrade: Sendable, Codable, Hashable, Comparable, CustomStringConvertible {
    public var name: String
    /// Empty when the upgrade would install the package as a new dependency.
    public var installed: String
    public var candidate: String
    /// The repository or origin that offers it (apt's origin, dnf's repo), when known.
    public var origin: String?

    public init(name: String, installed: String, candidate: String, origin: String? = nil) {
        self.name = name
        self.installed = installed
        self.candidate = candidate
        self.origin = origin
    }

    public var description: String { "\(name) \(installed.isEmpty ? "(new)" : installed) → \(candidate)" }

    /// A short list for reasons and logs: the first `limit`, then how many more.
    public static func describe(_ upgrades: [PackageUpgrade], limit: Int = 12) -> String {
        let shown = upgrades.prefix(limit).map(\.description).joined(separator: ", ")
        return upgrades.count > limit ? "\(shown) and \(upgrades.count - limit) more" : shown
    }
    public var isSecurity: Bool { origin?.lowercased().contains("secur") == true }

    public static func < (lhs: Self, rhs: Self) -> Bool { (lhs.name, lhs.candidate) < (rhs.name, rhs.candidate) }
}

/// Where image records live. `kiln build` keeps JSON files in the data directory; the server's
/// store (SQLite) will implement the same protocol, and the engine's unit tests use the
/// in-memory twin. Every state change is saved before the work it announces starts.
public protocol ImageRecords: Sendable {
    /// The next build number of `name/version`, reserved so no other build takes it.
    func reserveBuild(name: String, version: SemanticVersion) throws -> Int
    func save(_ record: ImageRecord) throws
    /// Every record, in name, version and build order.
    func all() -> [ImageRecord]
    /// The folder of one build's logs and reports.
    func folder(name: String, version: SemanticVersion, build: Int) -> String
    /// One record by its ARN.
    func record(arn: String) throws -> ImageRecord?
}

extension ImageRecords {
    public func record(arn: String) throws -> ImageRecord? { all().first { $0.arn == arn } }

    /// One record by `name/x.y.z/build` or ARN.
    public func find(_ text: String) throws -> ImageRecord {
        if text.hasPrefix("arn:"), let record = try record(arn: text) { return record }
        guard let record = all().first(where: { $0.arn == text || "\($0.name)/\($0.version)/\($0.build)" == text }) else {
            throw KilnError(.notFound, "no image '\(text)'; see kiln images")
        }
        return record
    }
}

/// Records in memory, for tests of the engine's decisions; logs go under `logRoot`.
public final class InMemoryImageRecords: ImageRecords {
    private let records = Mutex<[String: ImageRecord]>([:])
    private let saves = Mutex<[ImageRecord]>([])
    private let reserved = Mutex<[String: Int]>([:])
    public let logRoot: String

    public init(logRoot: String) {
        self.logRoot = logRoot
    }

    public func reserveBuild(name: String, version: SemanticVersion) throws -> Int {
        reserved.withLock { builds in
            let key = "\(name)/\(version)"
            builds[key, default: 0] += 1
            return builds[key]!
        }
    }

    public func save(_ record: ImageRecord) throws {
        records.withLock { $0[record.arn] = record }
        saves.withLock { $0.append(record) }
    }

    /// Every record as it was saved, in order: the state changes a run went through.
    public var history: [ImageRecord] { saves.withLock { $0 } }

    public func all() -> [ImageRecord] {
        records.withLock { Array($0.values) }.sorted { ($0.name, $0.version, $0.build) < ($1.name, $1.version, $1.build) }
    }

    public func folder(name: String, version: SemanticVersion, build: Int) -> String {
        "\(logRoot)/\(name)/\(version)/\(build)"
    }
}
