import Foundation
import KilnModel
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

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
}

extension ImageRecords {
    /// One record by `name/x.y.z/build` or ARN.
    public func find(_ text: String) throws -> ImageRecord {
        guard let record = all().first(where: { $0.arn == text || "\($0.name)/\($0.version)/\($0.build)" == text }) else {
            throw KilnError(.notFound, "no image '\(text)'; see kiln images")
        }
        return record
    }
}

/// Image records under `<dataDirectory>/images/<name>/<version>/<build>/image.json`; every
/// state change is written before the work it announces starts.
public struct JSONImageRecords: ImageRecords {
    public let root: String

    public init(dataDirectory: String) throws {
        root = dataDirectory + "/images"
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
    }

    public func folder(name: String, version: SemanticVersion, build: Int) -> String {
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
            guard errno == EEXIST else {
                throw KilnError(.ioFailure, "cannot create \(versions)/\(build): \(String(cString: strerror(errno)))")
            }
        }
    }

    public func save(_ record: ImageRecord) throws {
        let folder = folder(name: record.name, version: record.version, build: record.build)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        let temporary = folder + "/.image.json.tmp"
        try encoder.encode(record).write(to: URL(fileURLWithPath: temporary))
        guard rename(temporary, folder + "/image.json") == 0 else {
            throw KilnError(.ioFailure, "cannot save the image record in \(folder): \(String(cString: strerror(errno)))")
        }
    }

    public func all() -> [ImageRecord] {
        var records: [ImageRecord] = []
        let manager = FileManager.default
        for name in (try? manager.contentsOfDirectory(atPath: root)) ?? [] {
            for version in (try? manager.contentsOfDirectory(atPath: "\(root)/\(name)")) ?? [] {
                for build in (try? manager.contentsOfDirectory(atPath: "\(root)/\(name)/\(version)")) ?? [] {
                    if let data = manager.contents(atPath: "\(root)/\(name)/\(version)/\(build)/image.json"),
                        let record = try? JSONDecoder().decode(ImageRecord.self, from: data)
                    {
                        records.append(record)
                    }
                }
            }
        }
        return records.sorted { ($0.name, $0.version, $0.build) < ($1.name, $1.version, $1.build) }
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
