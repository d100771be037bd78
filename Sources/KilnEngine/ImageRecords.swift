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
/// state change is written (durably, see `DurableFile`) before the work it announces starts.
/// Opening the records ends those a dead Kiln left running (see `recoverInterrupted`).
public struct JSONImageRecords: ImageRecords {
    public let root: String

    public init(dataDirectory: String) throws {
        root = dataDirectory + "/images"
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        recoverInterrupted()
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
            if mkdir("\(versions)/\(build)", 0o755) == 0 {
                try DurableFile.syncFolder(versions)
                return build
            }
            guard errno == EEXIST else {
                throw KilnError(.ioFailure, "cannot create \(versions)/\(build): \(String(cString: strerror(errno)))")
            }
        }
    }

    public func save(_ record: ImageRecord) throws {
        let folder = folder(name: record.name, version: record.version, build: record.build)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        do {
            try DurableFile.write(try encoder.encode(record), to: folder + "/image.json")
        } catch let error as KilnError {
            throw KilnError(.ioFailure, "cannot save the image record in \(folder): \(error.message)")
        }
    }

    public func all() -> [ImageRecord] {
        recordFolders().compactMap { folder in
            FileManager.default.contents(atPath: folder + "/image.json").flatMap { try? JSONDecoder().decode(ImageRecord.self, from: $0) }
        }.sorted { ($0.name, $0.version, $0.build) < ($1.name, $1.version, $1.build) }
    }

    /// Every `<name>/<version>/<build>` folder.
    private func recordFolders() -> [String] {
        let manager = FileManager.default
        var folders: [String] = []
        for name in (try? manager.contentsOfDirectory(atPath: root)) ?? [] where !name.hasPrefix(".") {
            for version in (try? manager.contentsOfDirectory(atPath: "\(root)/\(name)")) ?? [] where !version.hasPrefix(".") {
                for build in (try? manager.contentsOfDirectory(atPath: "\(root)/\(name)/\(version)")) ?? [] where Int(build) != nil {
                    folders.append("\(root)/\(name)/\(version)/\(build)")
                }
            }
        }
        return folders
    }

    /// Ends records a dead Kiln left in a running state: FAILED, saying the stage and that
    /// the process died. A record's owner is alive only while that very process (pid and start
    /// time) runs. A record of an older Kiln names no owner: it counts as dead once unchanged
    /// since before the machine booted or for a day. Also removes temp files of dead writers.
    /// Returns the records it ended.
    @discardableResult
    public func recoverInterrupted() -> [ImageRecord] {
        var ended: [ImageRecord] = []
        let bootTime = Self.bootTime()
        for folder in recordFolders() {
            for name in (try? FileManager.default.contentsOfDirectory(atPath: folder)) ?? [] {
                let dead =
                    ProcessOwner.owner(ofTemporaryName: name, prefix: DurableFile.temporaryPrefix).map { !$0.isAlive }
                    ?? (name == ".image.json.tmp")
                if dead { unlink(folder + "/" + name) }
            }
            guard let data = FileManager.default.contents(atPath: folder + "/image.json"),
                var record = try? JSONDecoder().decode(ImageRecord.self, from: data), record.isRunning
            else { continue }
            if let owner = record.owner {
                guard !owner.isAlive else { continue }
            } else {
                guard let changed = ChangeTime(of: folder + "/image.json"),
                    changed.seconds < bootTime || changed.seconds < ChangeTime.now.seconds - 86_400
                else { continue }
            }
            let status = record.status
            let who = record.owner.map { "the Kiln process that ran it (\($0)) died" } ?? "the Kiln that ran it is gone"
            record.status = .failed
            record.failure = .init(
                stage: status.stage, step: nil, region: nil, log: record.logDirectory,
                reason: "interrupted in \(status.stage.rawValue) (\(status.rawValue)): \(who) before the image was finished; build it again"
            )
            if (try? save(record)) != nil { ended.append(record) }
        }
        return ended
    }

    /// When the machine booted, in seconds since 1970 (`btime` of /proc/stat).
    static func bootTime() -> Int {
        let text = (try? String(contentsOfFile: "/proc/stat", encoding: .utf8)) ?? ""
        let line = text.split(separator: "\n").first { $0.hasPrefix("btime ") }
        return line.flatMap { Int($0.dropFirst(6).trimmingCharacters(in: .whitespaces)) } ?? 0
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
