import Foundation
import KilnModel

/// How a run behaves beyond what the documents say.
public struct TOEOptions: Sendable {
    /// WebDownload's own retries, separate from a step's maxAttempts.
    public var downloadAttempts: Int = 5
    public var downloadRetryDelay: Duration = .seconds(1)
    /// Restarts one run may ask for before Kiln calls it a reboot loop.
    public var maxReboots: Int = 10
    /// The environment S3 settings and credentials come from.
    public var environment: [String: String] = ProcessInfo.processInfo.environment
    /// Loads `ExecuteDocument` documents given as Image Builder component ARNs.
    public var componentResolver: (any ComponentResolver)?
    /// A recipe's workingDirectory: the run's private scratch folder is made inside it (created
    /// if missing) instead of the instance's /tmp.
    public var workingDirectory: String?

    public init() {}
}

/// Finds a component document by its Image Builder build-version ARN (the Kiln server implements this).
public protocol ComponentResolver: Sendable {
    func document(forARN arn: String) async throws -> ComponentDocument
}

/// One document to run, with the parameter values given for it.
public struct TOEDocumentRun: Sendable {
    public var document: ComponentDocument
    public var parameters: [String: String]

    public init(document: ComponentDocument, parameters: [String: String] = [:]) {
        self.document = document
        self.parameters = parameters
    }
}

public struct TOERunRequest: Sendable {
    public var documents: [TOEDocumentRun]
    /// `nil` runs every phase. Phases always run in document order, whatever order this lists.
    public var phases: [String]?
    public var executionId: String

    public init(documents: [TOEDocumentRun], phases: [String]? = nil, executionId: String = UUID().uuidString.lowercased()) {
        self.documents = documents
        self.phases = phases
        self.executionId = executionId
    }
}

/// What a run ended with.
public struct TOERunOutcome: Sendable {
    public var report: RunReport
    public var summary: RunSummary
    /// The local host must restart; run again with the same state directory afterwards.
    public var rebootPending: Bool
    /// Where the run resumes; saved in the state directory by the caller.
    public var resumeState: TOEResumeState?
    /// How each chaining expression was resolved, for `chaining.json`.
    public var chaining: [ChainingResolution]

    public var succeeded: Bool { !rebootPending && report.status.succeeded }
}
