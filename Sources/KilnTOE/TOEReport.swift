import Foundation
import KilnModel

/// Statuses as AWSTOE reports them (reference §2.2, §2.9).
public enum StepStatus: String, Sendable, Codable, Hashable {
    case success
    case failed
    case ignoredFailure = "IgnoredFailure"
    /// `if` chose Skip; counts as success.
    case skipped
}

public enum AggregateStatus: String, Sendable, Codable, Hashable {
    case success
    case failed
    case successWithIgnoredFailure = "SuccessWithIgnoredFailure"

    /// The status of a phase or document from its parts' statuses.
    static func combining(_ statuses: [AggregateStatus]) -> AggregateStatus {
        if statuses.contains(.failed) { return .failed }
        if statuses.contains(.successWithIgnoredFailure) { return .successWithIgnoredFailure }
        return .success
    }

    init(step: StepStatus) {
        switch step {
        case .success, .skipped: self = .success
        case .failed: self = .failed
        case .ignoredFailure: self = .successWithIgnoredFailure
        }
    }

    var succeeded: Bool { self != .failed }
}

/// One step as `detailedoutput.json` shows it. `inputs` and `outputs` are JSON-encoded arrays, as AWSTOE writes them.
public struct StepReport: Sendable, Codable, Hashable {
    public var name: String
    public var action: String
    public var status: StepStatus
    public var failureMessage: String
    public var timeoutSeconds: Int
    public var onFailure: String
    public var maxAttempts: Int
    public var startTime: String
    public var endTime: String
    public var inputs: String
    public var outputs: String
    public var loop: LoopReport?
    public var detailedOutput: [RunReport]?

    /// Whether the step did run (a skipped step did not).
    var executed: Bool { status != .skipped }
}

public struct LoopReport: Sendable, Codable, Hashable {
    public var name: String?
    public var iterations: Int
    public var failedIterations: [Int]
}

public struct PhaseReport: Sendable, Codable, Hashable {
    public var name: String
    public var status: AggregateStatus
    public var startTime: String
    public var endTime: String
    public var failureMessage: String
    public var steps: [StepReport]
}

public struct DocumentReport: Sendable, Codable, Hashable {
    public var name: String
    public var filePath: String
    public var status: AggregateStatus
    public var description: String
    public var startTime: String
    public var endTime: String
    public var failureMessage: String
    public var phases: [PhaseReport]
}

/// The whole run: `detailedoutput.json`.
public struct RunReport: Sendable, Codable, Hashable {
    public var executionId: String
    public var status: AggregateStatus
    public var startTime: String
    public var endTime: String
    public var failureMessage: String
    public var documents: [DocumentReport]

    var allSteps: [StepReport] { documents.flatMap { $0.phases.flatMap(\.steps) } }
}

/// The JSON `awstoe run` prints on stdout.
public struct RunSummary: Sendable, Codable, Hashable {
    public var executionId: String
    /// `success`, `failed`, or Kiln's `reboot-pending` when the local host must restart first.
    public var status: String
    public var failedStepCount: Int
    public var executedStepCount: Int
    public var ignoredFailedStepCount: Int
    public var failureMessage: String
    public var logUrl: String

    init(report: RunReport, logUrl: String, rebootPending: Bool) {
        let steps = report.allSteps
        executionId = report.executionId
        status = rebootPending ? "reboot-pending" : (report.status.succeeded ? "success" : "failed")
        failedStepCount = steps.filter { $0.status == .failed }.count
        executedStepCount = steps.filter(\.executed).count
        ignoredFailedStepCount = steps.filter { $0.status == .ignoredFailure }.count
        failureMessage = report.failureMessage
        self.logUrl = logUrl
    }

    /// Keys in AWSTOE's order, for people reading the terminal.
    public func json() -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = .withoutEscapingSlashes
        func quote(_ text: String) -> String {
            let data = try! encoder.encode(text)
            return String(decoding: data, as: UTF8.self)
        }
        return """
            {"executionId":\(quote(executionId)),"status":\(quote(status)),"failedStepCount":\(failedStepCount),\
            "executedStepCount":\(executedStepCount),"ignoredFailedStepCount":\(ignoredFailedStepCount),\
            "failureMessage":\(quote(failureMessage)),"logUrl":\(quote(logUrl))}
            """
    }
}

enum TOETime {
    /// RFC 3339 with offset, as in detailedoutput.json.
    static func rfc3339(_ date: Date) -> String {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return formatter.string(from: date)
    }
}
