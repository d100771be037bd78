import Foundation
import KilnModel

/// The kinds of Image Builder resources the store keeps as documents.
public enum ResourceKind: String, Sendable, Hashable, CaseIterable {
    case component
    case imageRecipe = "image-recipe"
    case containerRecipe = "container-recipe"
    case infrastructureConfiguration = "infrastructure-configuration"
    case distributionConfiguration = "distribution-configuration"
    case imagePipeline = "image-pipeline"
    /// What an image was built from (recipe, configurations, tests), as GetImage returns it.
    case image
}

/// One stored resource: its identity, and its document as the API returns it (JSON, with
/// the API's field names), so the store needs no schema change when a field is added.
public struct StoredResource: Sendable, Hashable {
    public var kind: ResourceKind
    public var arn: String
    public var name: String
    /// `x.y.z` of versioned resources (components and recipes); nil for the others.
    public var version: SemanticVersion?
    /// The build number of components; nil for the others.
    public var build: Int?
    public var document: Data
    public var dateCreated: String

    public init(
        kind: ResourceKind, arn: String, name: String, version: SemanticVersion? = nil, build: Int? = nil, document: Data,
        dateCreated: String
    ) {
        self.kind = kind
        self.arn = arn
        self.name = name
        self.version = version
        self.build = build
        self.document = document
        self.dateCreated = dateCreated
    }
}

/// A page of a list: the items and the offset of the next page, if any.
public struct Page<Item: Sendable>: Sendable {
    public var items: [Item]
    public var next: Int?

    public init(items: [Item], next: Int?) {
        self.items = items
        self.next = next
    }
}

/// Resources, tags and idempotency tokens: what the API keeps beside image records. The
/// SQLite store implements it; a PostgreSQL one can, without the engine or the server changing.
public protocol ResourceRecords: Sendable {
    /// Inserts a resource; fails with `.alreadyExists` when its ARN is taken.
    func insert(_ resource: StoredResource) throws
    /// Replaces the document of an existing resource; fails with `.notFound` when there is none.
    func update(arn: String, document: Data) throws
    func resource(arn: String) throws -> StoredResource?
    /// Resources of one kind, by name, version and build; `name` narrows to one name.
    func resources(kind: ResourceKind, name: String?, offset: Int, limit: Int) throws -> Page<StoredResource>
    /// Removes a resource and its tags; false when there was none.
    func delete(arn: String) throws -> Bool
    /// The ARNs of resources whose document holds `text` as a whole JSON string (references,
    /// checked before a delete).
    func referencing(_ text: String) throws -> [String]

    func tags(arn: String) throws -> [String: String]
    func setTags(arn: String, _ tags: [String: String]) throws
    func removeTags(arn: String, keys: [String]) throws

    /// The response first given to `token` for `operation`, with the digest of that request.
    func idempotentResponse(operation: String, token: String) throws -> (requestDigest: String, response: Data)?
    func saveIdempotentResponse(operation: String, token: String, requestDigest: String, response: Data) throws
}

/// One build waiting for, or taken by, a worker.
public struct QueuedBuild: Sendable, Hashable {
    public enum State: String, Sendable, Hashable { case queued, running, done }

    public var id: Int64
    public var imageArn: String
    /// What the worker needs to run it (the server's own JSON).
    public var request: Data
    public var state: State
    public var owner: ProcessOwner?

    public init(id: Int64, imageArn: String, request: Data, state: State, owner: ProcessOwner?) {
        self.id = id
        self.imageArn = imageArn
        self.request = request
        self.state = state
        self.owner = owner
    }
}

/// The durable build queue: entries survive restarts; a running entry whose owner died is
/// done (its image ended FAILED by the records' recovery), and queued entries run in order.
public protocol BuildQueue: Sendable {
    @discardableResult
    func enqueue(imageArn: String, request: Data) throws -> Int64
    /// The oldest queued entry, now running under `owner`, unless `limit` entries already run.
    func claimNext(owner: ProcessOwner, limit: Int) throws -> QueuedBuild?
    func finish(id: Int64) throws
    /// Takes a queued entry out (a cancelled image); false when it already runs or ended.
    func dequeue(imageArn: String) throws -> Bool
    func entries(state: QueuedBuild.State) throws -> [QueuedBuild]
    /// Running entries whose owner is dead become done; returns their image ARNs.
    func releaseDeadOwners() throws -> [String]
}

/// One event body for one webhook, kept until it is delivered (or given up on).
public struct WebhookDelivery: Sendable, Hashable {
    /// The event's id: a receiver that sees it twice knows it is the same event.
    public var id: String
    public var webhook: String
    public var body: Data
    public var attempts: Int
    public var lastResult: String?
    public var delivered: Bool

    public init(id: String, webhook: String, body: Data, attempts: Int = 0, lastResult: String? = nil, delivered: Bool = false) {
        self.id = id
        self.webhook = webhook
        self.body = body
        self.attempts = attempts
        self.lastResult = lastResult
        self.delivered = delivered
    }
}

/// Webhook deliveries in the store, so none is lost to a restart.
public protocol WebhookOutbox: Sendable {
    /// Adds a delivery; one with the same id and webhook is kept as it is.
    func addDelivery(_ delivery: WebhookDelivery) throws
    /// Undelivered ones whose next attempt is due (seconds since 1970), oldest first.
    func dueDeliveries(now: Int, limit: Int) throws -> [WebhookDelivery]
    /// After an attempt: delivered, or the time of the next one (nil: no more).
    func recordAttempt(id: String, webhook: String, result: String, delivered: Bool, nextAttemptAt: Int?) throws
    func deliveries(webhook: String?) throws -> [WebhookDelivery]
}

/// One image version as ListImages lists it: its newest build's type and date.
public struct ImageVersionSummary: Sendable, Hashable {
    public var name: String
    public var version: SemanticVersion
    public var type: ImageType
    public var dateCreated: String

    public init(name: String, version: SemanticVersion, type: ImageType, dateCreated: String) {
        self.name = name
        self.version = version
        self.type = type
        self.dateCreated = dateCreated
    }
}
