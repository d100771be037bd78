import Foundation
import KilnModel

/// One reason to consider starting a pipeline: a cron fire, a base-image push or poll, a
/// package check's finding. It is stored before anything acts on it (a registry's
/// notification is acknowledged only then) and ends `started` with the image it started, or
/// `skipped` with the reason, which `kiln pipeline history` shows.
public struct PipelineEvent: Sendable, Hashable, Codable {
    public enum Outcome: String, Sendable, Hashable, Codable { case pending, started, skipped }

    public var id: Int64
    public var pipeline: String
    public var kind: BuildTrigger.Kind
    /// Seconds since 1970: when it arrived, and when it may be acted on (a burst of pushes
    /// waits for the debounce window, then starts one build).
    public var receivedAt: Int
    public var dueAt: Int
    public var detail: String
    /// How many events this one stands for (a debounced burst).
    public var count: Int
    public var outcome: Outcome
    public var reason: String?
    public var imageArn: String?
    /// What the start condition resolved: parent digest, component builds, packages.
    public var resolved: [String]?
    public var packages: [PackageUpgrade]?

    public init(
        id: Int64 = 0, pipeline: String, kind: BuildTrigger.Kind, receivedAt: Int, dueAt: Int, detail: String, count: Int = 1,
        outcome: Outcome = .pending, reason: String? = nil, imageArn: String? = nil, resolved: [String]? = nil,
        packages: [PackageUpgrade]? = nil
    ) {
        self.id = id
        self.pipeline = pipeline
        self.kind = kind
        self.receivedAt = receivedAt
        self.dueAt = dueAt
        self.detail = detail
        self.count = count
        self.outcome = outcome
        self.reason = reason
        self.imageArn = imageArn
        self.resolved = resolved
        self.packages = packages
    }
}

/// The scheduler's durable state: pipeline events, and small named values (the last fire
/// each pipeline's schedule was evaluated for, the digest each poll last saw).
public protocol TriggerRecords: Sendable {
    /// Adds an event. A base-image event (`registry-push`, `parent-poll`) joins a pending one
    /// of the same pipeline and kind instead, so a burst gives one build; returns the event's id.
    @discardableResult
    func addEvent(_ event: PipelineEvent) throws -> Int64
    /// Pending events due at `now`, oldest first.
    func dueEvents(now: Int) throws -> [PipelineEvent]
    /// When the next pending event falls due, if any.
    func nextDueEvent() throws -> Int?
    func settle(id: Int64, outcome: PipelineEvent.Outcome, reason: String?, imageArn: String?, resolved: [String]?) throws
    /// A pipeline's events, newest first.
    func events(pipeline: String, limit: Int) throws -> [PipelineEvent]
    /// Started events whose build has not been looked at for auto-disabling.
    func unreviewedStarts() throws -> [PipelineEvent]
    func markReviewed(id: Int64) throws

    func schedulerValue(_ key: String) throws -> String?
    func setSchedulerValue(_ key: String, _ value: String?) throws
}
