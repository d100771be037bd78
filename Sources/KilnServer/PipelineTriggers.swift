import Foundation
import KilnModel
import KilnScheduler
import KilnStore
import Synchronization

/// Tells the scheduler when pipelines change (set once the scheduler exists).
final class PipelineChangeSignal: Sendable {
    private let observer = Mutex<(@Sendable () -> Void)?>(nil)

    func observe(_ body: @escaping @Sendable () -> Void) { observer.withLock { $0 = body } }
    func notify() { observer.withLock { $0 }?() }
}

/// The scheduler's view of the stored pipelines, resolved as a start resolves them.
struct StoredPipelineStarter: PipelineStarter {
    let api: ImageBuilderAPI

    func scheduledPipelines() throws -> [ScheduledPipeline] {
        // Many pipelines share a recipe: each recipe reference is resolved once per read.
        var parents: [String: String] = [:]
        return try api.store.resources(kind: .imagePipeline, name: nil, offset: 0, limit: 1_000_000).items.compactMap { resource in
            try? api.scheduledPipeline(resource, parents: &parents)
        }
    }

    func scheduledPipeline(named name: String) throws -> ScheduledPipeline? {
        var parents: [String: String] = [:]
        return try api.store.resources(kind: .imagePipeline, name: name, offset: 0, limit: 1).items.first.map {
            try api.scheduledPipeline($0, parents: &parents)
        }
    }

    func currentInputs(pipeline: String) throws -> ResolvedInputs {
        guard let resource = try api.store.resources(kind: .imagePipeline, name: pipeline, offset: 0, limit: 1).items.first else {
            throw KilnError(.notFound, "image pipeline '\(pipeline)' does not exist")
        }
        return try api.resolvedInputs(api.document(resource))
    }

    func recordedInputs(imageArn: String) throws -> ResolvedInputs? {
        guard let snapshot = try api.store.resource(arn: imageArn), let inputs = try api.document(snapshot)["kilnResolvedInputs"] else {
            return nil
        }
        return try JSONDecoder().decode(ResolvedInputs.self, from: inputs.encodedData())
    }

    func start(pipeline: String, trigger: BuildTrigger) throws -> String {
        try api.startPipeline(named: pipeline, trigger: trigger)
    }

    /// DISABLED, then an "EC2 Image Builder Image Pipeline Automatically Disabled" event to the
    /// webhooks that take every event and the one the pipeline's infrastructure configuration names.
    func disable(pipeline: String, reason: String) throws {
        let arn = api.arn("image-pipeline", ImageBuilderARN.normalizedName(pipeline))
        guard let resource = try api.store.resource(arn: arn) else { return }
        var document = try api.document(resource)
        document["status"] = "DISABLED"
        try api.store.update(arn: arn, document: JSONValue.object(document).encodedData())
        let infrastructure = (document["infrastructureConfigurationArn"]?.string).flatMap { try? api.store.resource(arn: $0) }
        let topic = infrastructure.flatMap { try? api.document($0)["snsTopicArn"]?.string }
        let named = topic.flatMap { $0.split(separator: ":").last.map(String.init) }
        let now = ISO8601DateFormatter().string(from: Date())
        let id = UUID().uuidString.lowercased()
        let body: JSONValue = [
            "version": "0", "id": .string(id), "detail-type": "EC2 Image Builder Image Pipeline Automatically Disabled",
            "source": "aws.imagebuilder", "account": .string(api.configuration.accountId), "time": .string(now),
            "region": .string(api.configuration.homeRegion), "resources": [.string(arn)],
            "detail": ["image-pipeline-arn": .string(arn), "state": ["status": "DISABLED", "reason": .string(reason)]],
        ]
        for webhook in api.configuration.webhooks where webhook.allImages || webhook.name == named {
            try api.store.addDelivery(WebhookDelivery(id: id, webhook: webhook.name, body: body.encodedData()))
        }
    }
}

extension ImageBuilderAPI {
    /// The stored pipeline as the scheduler needs it; nil schedule when it has none.
    /// `parents` caches each recipe reference's parentImage for the caller's read.
    func scheduledPipeline(_ resource: StoredResource, parents: inout [String: String]) throws -> ScheduledPipeline {
        let pipeline = try document(resource)
        let schedule = pipeline["schedule"]
        let expression = try schedule?["scheduleExpression"]?.string.map {
            try ScheduleExpression(parsing: $0, timezone: schedule?["timezone"]?.string)
        }
        let recipeMember = pipeline["containerRecipeArn"]?.string != nil ? "containerRecipeArn" : "imageRecipeArn"
        let recipeReference = pipeline[recipeMember]?.string ?? ""
        let parentImage: String
        if let known = parents[recipeReference] {
            parentImage = known
        } else {
            let recipe = try resolveReference(
                recipeReference, kind: recipeMember == "containerRecipeArn" ? .containerRecipe : .imageRecipe, member: recipeMember)
            parentImage = try document(recipe)["parentImage"]?.string ?? ""
            parents[recipeReference] = parentImage
        }
        return ScheduledPipeline(
            name: resource.name, arn: resource.arn, enabled: pipeline["status"]?.string != "DISABLED", schedule: expression,
            startCondition: StartCondition(rawValue: schedule?["pipelineExecutionStartCondition"]?.string ?? "")
                ?? .dependencyUpdatesAvailable,
            anchor: pipelineAnchor(pipeline), parentImage: parentImage,
            autoDisableFailureCount: schedule?["autoDisablePolicy"]?["failureCount"]?.int)
    }

    /// When the pipeline was last created or updated: rates count from here, and the
    /// auto-disable count starts again.
    func pipelineAnchor(_ document: Object) -> Date {
        let formatter = ISO8601DateFormatter()
        return (document["dateUpdated"]?.string ?? document["dateCreated"]?.string).flatMap { formatter.date(from: $0) }
            ?? Date(timeIntervalSince1970: 0)
    }

    /// The recipe version and component builds a start would use now.
    func resolvedInputs(_ pipeline: Object) throws -> ResolvedInputs {
        let recipeKind: ResourceKind = pipeline["containerRecipeArn"]?.string != nil ? .containerRecipe : .imageRecipe
        let recipeMember = recipeKind == .containerRecipe ? "containerRecipeArn" : "imageRecipeArn"
        let recipe = try resolveReference(try string(pipeline, recipeMember), kind: recipeKind, member: recipeMember)
        let recipeDocument = try document(recipe)
        var components: [String] = []
        for (index, configuration) in (recipeDocument["components"]?.array ?? []).enumerated() {
            let member = "\(recipeMember) components[\(index)]"
            components.append(try resolveReference(configuration["componentArn"]?.string ?? "", kind: .component, member: member).arn)
        }
        return ResolvedInputs(recipe: recipe.arn, components: components, parentImage: recipeDocument["parentImage"]?.string ?? "")
    }

    /// Starts a pipeline by name for the scheduler; the pipeline's dateLastRun moves.
    func startPipeline(named name: String, trigger: BuildTrigger) throws -> String {
        let arn = arn("image-pipeline", ImageBuilderARN.normalizedName(name))
        var pipeline = try document(try stored(arn, kind: .imagePipeline))
        let imageArn = try queueBuild(pipeline: pipeline, pipelineArn: arn, trigger: trigger, tags: nil)
        pipeline["dateLastRun"] = .string(now)
        try store.update(arn: arn, document: JSONValue.object(pipeline).encodedData())
        return imageArn
    }

    /// A pipeline's schedule, checked at create and update: the expression, its time zone.
    func checkSchedule(_ input: Object) throws {
        guard let schedule = input["schedule"], let expression = schedule["scheduleExpression"]?.string else { return }
        do {
            _ = try ScheduleExpression(parsing: expression, timezone: schedule["timezone"]?.string)
        } catch let error as KilnError {
            throw apiError("InvalidParameterValueException", "schedule.scheduleExpression: \(error.message)")
        }
    }

    /// When the schedule fires next (GetImagePipeline's dateNextRun); nil when DISABLED or unscheduled.
    func dateNextRun(_ document: Object) -> String? {
        guard document["status"]?.string != "DISABLED", let schedule = document["schedule"],
            let text = schedule["scheduleExpression"]?.string,
            let expression = try? ScheduleExpression(parsing: text, timezone: schedule["timezone"]?.string),
            let next = expression.nextFire(after: Date(), anchor: pipelineAnchor(document))
        else { return nil }
        return ISO8601DateFormatter().string(from: next)
    }
}
