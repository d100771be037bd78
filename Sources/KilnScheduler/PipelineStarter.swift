import Foundation
import KilnEngine
import KilnModel
import KilnOCI
import KilnRegistry

/// Image Builder's `pipelineExecutionStartCondition`.
public enum StartCondition: String, Sendable, Hashable {
    case expressionMatchOnly = "EXPRESSION_MATCH_ONLY"
    /// The default: build only when something the last successful image used has changed.
    case dependencyUpdatesAvailable = "EXPRESSION_MATCH_AND_DEPENDENCY_UPDATES_AVAILABLE"
}

/// A pipeline as the scheduler sees it.
public struct ScheduledPipeline: Sendable, Hashable {
    public var name: String
    public var arn: String
    public var enabled: Bool
    /// nil: manual starts (and base-image and package events) only.
    public var schedule: ScheduleExpression?
    public var startCondition: StartCondition
    /// When it was created or last updated: rates count from here.
    public var anchor: Date
    /// The recipe's parentImage as written (a registry tag, an image ARN, `bootstrap:…`).
    public var parentImage: String
    public var autoDisableFailureCount: Int?

    public init(
        name: String, arn: String, enabled: Bool, schedule: ScheduleExpression?, startCondition: StartCondition, anchor: Date,
        parentImage: String, autoDisableFailureCount: Int?
    ) {
        self.name = name
        self.arn = arn
        self.enabled = enabled
        self.schedule = schedule
        self.startCondition = startCondition
        self.anchor = anchor
        self.parentImage = parentImage
        self.autoDisableFailureCount = autoDisableFailureCount
    }
}

/// The versions a pipeline's references select: the recipe, and each component's build.
public struct ResolvedInputs: Sendable, Hashable, Codable {
    public var recipe: String
    public var components: [String]
    public var parentImage: String

    public init(recipe: String, components: [String], parentImage: String) {
        self.recipe = recipe
        self.components = components
        self.parentImage = parentImage
    }
}

/// What the scheduler needs of the resources: `kiln server`'s API implements it over the
/// store, where recipes and wildcard references are resolved the way a start resolves them.
public protocol PipelineStarter: Sendable {
    func scheduledPipelines() throws -> [ScheduledPipeline]
    /// One pipeline, read now; nil when it does not exist.
    func scheduledPipeline(named name: String) throws -> ScheduledPipeline?
    /// The inputs a start would snapshot now.
    func currentInputs(pipeline: String) throws -> ResolvedInputs
    /// The inputs an image was started with, if it recorded them.
    func recordedInputs(imageArn: String) throws -> ResolvedInputs?
    /// Queues a build; returns the image's ARN.
    func start(pipeline: String, trigger: BuildTrigger) throws -> String
    /// Sets the pipeline DISABLED under its auto-disable policy, announcing why.
    func disable(pipeline: String, reason: String) throws
}

/// What a start condition asks outside the store; `DependencyProbe` is the real one.
public protocol DependencyProbing: Sendable {
    func parentDigest(_ parent: String) async throws -> String
    func upgradablePackages(of record: ImageRecord, securityOnly: Bool) async -> DependencyProbe.PackageAnswer
    /// One HEAD of `reference`'s manifest.
    func headManifest(_ reference: ImageReference) async throws -> ManifestHead
}

/// The real probe: the engine for parents and packages, the registry client for HEADs.
public struct EngineDependencyProbe: DependencyProbing {
    let probe: DependencyProbe
    let registries: RegistryDirectory

    public init(probe: DependencyProbe, registries: RegistryDirectory) {
        self.probe = probe
        self.registries = registries
    }

    public func parentDigest(_ parent: String) async throws -> String { try await probe.parentDigest(parent) }

    public func upgradablePackages(of record: ImageRecord, securityOnly: Bool) async -> DependencyProbe.PackageAnswer {
        await probe.upgradablePackages(of: record, securityOnly: securityOnly)
    }

    public func headManifest(_ reference: ImageReference) async throws -> ManifestHead {
        try await registries.client(for: reference.registry).headManifest(reference)
    }
}
