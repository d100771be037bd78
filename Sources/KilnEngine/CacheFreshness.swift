import Foundation
import KilnInstances
import KilnModel
import KilnOCI

#if canImport(Glibc)
    import Glibc
#endif

/// How a pipeline treats package updates for cached steps (`kilnCache.packageUpdates`).
public enum PackageUpdatePolicy: Sendable, Equatable {
    /// Ask the package sources before reusing steps that installed packages (the default).
    case check
    /// Reuse regardless, for images that pin their versions.
    case ignore
    /// `--offline`: nothing is asked, and the log says so.
    case offline
}

/// What Kiln knows of one cached package step's sources: the fingerprint of its package indexes
/// taken right after it ran (equal later: the sources publish what they did then, so running it
/// again gives the same packages), the fingerprint of the last check that found nothing newer,
/// and, when known, the upgrades the sources still offered right after a run. Those are upgrades
/// the recipe's steps do not pick up, so seeing them again is no reason to run the steps; nil
/// means not asked.
struct FreshnessRecord: Codable, Sendable, Hashable {
    var ranFingerprint: String?
    var checkedFingerprint: String?
    var indexes: [String]
    var remainingUpgrades: [PackageUpgrade]?
    var checked: String

    /// `<dataDirectory>/build-cache/freshness/<step key>.json`
    static func folder(_ dataDirectory: String) -> String { dataDirectory + "/build-cache/freshness" }

    static func load(key: Digest, dataDirectory: String) -> FreshnessRecord? {
        guard let data = FileManager.default.contents(atPath: folder(dataDirectory) + "/\(key.encoded).json") else { return nil }
        return try? JSONDecoder().decode(FreshnessRecord.self, from: data)
    }

    func save(key: Digest, dataDirectory: String) {
        let folder = Self.folder(dataDirectory)
        try? FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        guard let data = try? JSONEncoder().encode(self) else { return }
        try? DurableFile.write(data, to: folder + "/\(key.encoded).json")
    }
}

/// Package steps: a step whose layer holds package-manager state (installed packages or package
/// indexes changed), or whose text runs a package manager (an upgrade with nothing to do leaves
/// no trace in the layer, yet would install updates once they are published). Any other step
/// installed nothing through a package manager, so package updates cannot change its result.
enum PackageState {
    static let paths = [
        "var/lib/dpkg/status", "var/lib/dpkg/info", "var/lib/apt/lists",
        "var/lib/rpm", "usr/lib/sysimage/rpm", "var/lib/dnf", "var/cache/dnf",
        "lib/apk/db", "var/cache/apk",
    ]

    /// Whether an unpacked layer folder holds package state (looked up without following links).
    static func touched(layerFolder: String) -> Bool {
        let layer = ImageFiles(folders: [layerFolder])
        return paths.contains { layer.hasEntry($0) }
    }

    /// Whether any of `layers` touches package state (unpacking them into the layer cache).
    static func touched(_ layers: [(Descriptor, Digest)], host: InstanceHost) throws -> Bool {
        try layers.contains { layer, diffID in touched(layerFolder: try host.layers.unpack(layer, diffID: diffID, store: host.store)) }
    }

    static let managerPattern =
        #"(^|[^A-Za-z0-9_.-])(apt-get|apt|aptitude|dpkg|dnf|dnf5|yum|microdnf|rpm|apk|zypper|UpdateOS)([^A-Za-z0-9_-]|$)"#

    /// Whether a RUN's command or a component's document names a package manager.
    static func invokesPackageManager(_ step: RecipeBuilder.BuildStep) -> Bool {
        let text: String
        switch step {
        case .component(let component): text = component.run.document.text
        case .instruction(let instruction):
            guard case .run(let command) = instruction.instruction else { return false }
            text = command.joined(separator: " ")
        }
        return mentionsPackageManager(text)
    }

    static func mentionsPackageManager(_ text: String) -> Bool {
        text.range(of: managerPattern, options: .regularExpression) != nil
    }
}

/// Which upgrades are news: those a fresh run of the steps did not already leave behind.
enum FreshnessRule {
    static func newUpgrades(_ offered: [PackageUpgrade], remaining: [PackageUpgrade]?) -> [PackageUpgrade] {
        let known = Set((remaining ?? []).map { "\($0.name) \($0.candidate)" })
        return offered.filter { !known.contains("\($0.name) \($0.candidate)") }
    }
}
