import Foundation
import KilnModel

/// Image Builder's image states, in their order.
public enum ImageStatus: String, Sendable, Codable, Hashable {
    case pending = "PENDING", creating = "CREATING", building = "BUILDING", testing = "TESTING"
    case distributing = "DISTRIBUTING", integrating = "INTEGRATING", available = "AVAILABLE"
    case cancelled = "CANCELLED", failed = "FAILED"
}

/// One image version `name/x.y.z/build`, as `kiln images` shows it and the API will return it.
public struct ImageRecord: Sendable, Codable, Hashable {
    public struct Failure: Sendable, Codable, Hashable {
        public var stage: String
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
    public var type = "DOCKER"
    public var status: ImageStatus
    public var failure: Failure?
    public var sourcePipelineName: String?
    public var dateCreated: String
    /// The image in Kiln's store (`kiln:<localName>`) and its manifest digest.
    public var localName: String?
    public var digest: String?
    /// The build reused an earlier image with the same inputs.
    public var cacheHit: Bool?
    public var distributionTargets: [DistributionTarget] = []
    public var outputContainers: [ContainerOutput] = []
    public var timings: [StageTiming] = []
    public var logDirectory: String
}

/// Image records under `<dataDirectory>/images/<name>/<version>/<build>/image.json`; every
/// state change is written before the work it announces starts.
public struct ImageRecordStore: Sendable {
    public let root: String

    public init(dataDirectory: String) throws {
        root = dataDirectory + "/images"
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
    }

    public func directory(name: String, version: SemanticVersion, build: Int) -> String {
        "\(root)/\(name)/\(version)/\(build)"
    }

    /// The next build number for `name/version`, reserved by creating its folder.
    public func reserveBuild(name: String, version: SemanticVersion) throws -> Int {
        let versions = "\(root)/\(name)/\(version)"
        try FileManager.default.createDirectory(atPath: versions, withIntermediateDirectories: true)
        var build = ((try? FileManager.default.contentsOfDirectory(atPath: versions)) ?? []).compactMap(Int.init).max() ?? 0
        while true {
            build += 1
            if mkdir("\(versions)/\(build)", 0o755) == 0 { return build }
            guard errno == EEXIST else { throw KilnError(.ioFailure, "cannot create \(versions)/\(build): \(String(cString: strerror(errno)))") }
        }
    }

    public func save(_ record: ImageRecord) throws {
        let folder = directory(name: record.name, version: record.version, build: record.build)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        let temporary = folder + "/.image.json.tmp"
        try encoder.encode(record).write(to: URL(fileURLWithPath: temporary))
        guard rename(temporary, folder + "/image.json") == 0 else {
            throw KilnError(.ioFailure, "cannot save the image record in \(folder): \(String(cString: strerror(errno)))")
        }
    }

    /// One record by `name/x.y.z/build` or ARN.
    public func find(_ text: String) throws -> ImageRecord {
        guard let record = all().first(where: { $0.arn == text || "\($0.name)/\($0.version)/\($0.build)" == text }) else {
            throw KilnError(.notFound, "no image '\(text)'; see kiln images")
        }
        return record
    }

    public func all() -> [ImageRecord] {
        var records: [ImageRecord] = []
        let manager = FileManager.default
        for name in (try? manager.contentsOfDirectory(atPath: root)) ?? [] {
            for version in (try? manager.contentsOfDirectory(atPath: "\(root)/\(name)")) ?? [] {
                for build in (try? manager.contentsOfDirectory(atPath: "\(root)/\(name)/\(version)")) ?? [] {
                    if let data = manager.contents(atPath: "\(root)/\(name)/\(version)/\(build)/image.json"),
                       let record = try? JSONDecoder().decode(ImageRecord.self, from: data) {
                        records.append(record)
                    }
                }
            }
        }
        return records.sorted { ($0.name, $0.version, $0.build) < ($1.name, $1.version, $1.build) }
    }
}
