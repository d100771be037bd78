import Foundation
import KilnModel

/// Everything needed to carry on after the instance restarts: where the run stopped, what the
/// finished steps reported and left for chaining. Saved as `state.json` in `--state-directory`.
public struct TOEResumeState: Sendable, Codable {
    public static let fileName = "state.json"

    public var executionId: String
    public var documentSources: [String]
    public var phases: [String]?
    public var logFolder: String?
    public var report: RunReport
    public var cursor: Cursor
    public var rebootCount: Int

    public struct Cursor: Sendable, Codable, Hashable {
        public var document: Int
        public var phase: Int
        public var step: Int
        /// The step at the cursor already passed its `if` (evaluated once, even across reboots).
        public var conditionPassed: Bool
        /// Steps of the current phase finished before the reboot.
        var phaseSteps: [StepReport]
        var phaseStart: String
        var documentPhases: [PhaseReport]
        var documentStart: String
        var chain: ChainStore
    }

    public static func load(from directory: String) throws -> TOEResumeState? {
        let path = directory + "/" + fileName
        guard let data = FileManager.default.contents(atPath: path) else { return nil }
        do {
            return try JSONDecoder().decode(TOEResumeState.self, from: data)
        } catch {
            throw KilnError(
                .invalidArgument, "the state file '\(path)' is damaged (\(error)); delete it to start the run from the beginning")
        }
    }

    public func save(to directory: String) throws {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        let path = directory + "/" + Self.fileName
        try encoder.encode(self).write(to: URL(fileURLWithPath: path + ".tmp"))
        guard rename(path + ".tmp", path) == 0 else {
            throw KilnError(.ioFailure, "cannot save the run's state to '\(path)': \(String(cString: strerror(errno)))")
        }
    }

    public static func clear(in directory: String) {
        try? FileManager.default.removeItem(atPath: directory + "/" + fileName)
    }
}
