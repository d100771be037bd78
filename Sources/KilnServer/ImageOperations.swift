import Crypto
import Foundation
import KilnEngine
import KilnModel
import KilnStore

extension ImageBuilderAPI {
    // MARK: Starting builds

    func startPipeline(_ input: Object) throws -> Object {
        let arn = try string(input, "imagePipelineArn")
        _ = try parseARN(arn, kind: "image-pipeline", member: "imagePipelineArn")
        let pipelineResource = try stored(arn, kind: .imagePipeline)
        var pipeline = try document(pipelineResource)
        guard pipeline["status"]?.string != "DISABLED" else {
            throw apiError(
                "InvalidRequestException",
                "image pipeline \(arn) is DISABLED; enable it (update-image-pipeline --status ENABLED) to start it")
        }
        let imageArn = try queueBuild(
            pipeline: pipeline, pipelineArn: arn, trigger: BuildTrigger(kind: .manual, detail: "StartImagePipelineExecution"),
            tags: input["tags"])
        pipeline["dateLastRun"] = .string(now)
        try store.update(arn: arn, document: JSONValue.object(pipeline).encodedData())
        return ["imageBuildVersionArn": .string(imageArn)]
    }

    func createImage(_ input: Object) throws -> Object {
        var pipeline = input
        pipeline["name"] = nil
        pipeline["clientToken"] = nil
        let image = input["imageRecipeArn"]?.string
        let container = input["containerRecipeArn"]?.string
        guard (image == nil) != (container == nil) else {
            throw apiError("InvalidParameterCombinationException", "CreateImage needs imageRecipeArn or containerRecipeArn, exactly one")
        }
        let imageArn = try queueBuild(
            pipeline: pipeline, pipelineArn: nil, trigger: BuildTrigger(kind: .manual, detail: "CreateImage"), tags: input["tags"])
        return ["imageBuildVersionArn": .string(imageArn)]
    }

    /// ImportDiskImage: a Linux disk (raw, qcow2 or one-file vmdk, not an ISO) from a region's
    /// image-store bucket or folder becomes an AMI. The CREATING image is stored before this
    /// answers; the import runs in the background (`BuildScheduler.importDisk`).
    func importDiskImage(_ input: Object) throws -> Object {
        let platform = try string(input, "platform")
        guard platform == "Linux" else {
            throw apiError(
                "InvalidParameterValueException",
                "platform \(platform): Kiln imports Linux disks (raw, qcow2 or one-file vmdk), not Windows ISOs")
        }
        let infrastructure = try resolveReference(
            try string(input, "infrastructureConfigurationArn"), kind: .infrastructureConfiguration,
            member: "infrastructureConfigurationArn")
        let source: DiskImport.Source
        do {
            source = try DiskImport.Source.parse(try string(input, "uri"), regions: configuration.regions)
        } catch let error as KilnError {
            throw apiError("InvalidParameterValueException", error.message)
        }
        let version: SemanticVersion
        do {
            version = try SemanticVersion(parsing: try string(input, "semanticVersion"))
        } catch let error as KilnError {
            throw apiError("InvalidVersionNumberException", "semanticVersion: \(error.message)")
        }
        let name = ImageBuilderARN.normalizedName(try string(input, "name"))
        let build = try store.reserveBuild(name: name, version: version)
        let imageArn = arn("image", name, "\(version)/\(build)")
        let folder = store.folder(name: name, version: version, build: build)
        let record = ImageRecord(
            arn: imageArn, name: name, version: version, build: build, type: .ami, status: .creating,
            trigger: BuildTrigger(kind: .manual, detail: "ImportDiskImage \(try string(input, "uri"))"), dateCreated: now,
            logDirectory: folder + "/logs")
        var snapshot: Object = [
            "infrastructureConfiguration": .object(try document(infrastructure)), "buildType": "IMPORT",
            "osVersion": input["osVersion"] ?? .null,
        ]
        if let description = input["description"] { snapshot["description"] = description }
        try store.insert(
            StoredResource(
                kind: .image, arn: imageArn, name: name, version: version, build: build, document: JSONValue.object(snapshot).encodedData(),
                dateCreated: record.dateCreated))
        if let tags = input["tags"]?.object, !tags.isEmpty { try store.setTags(arn: imageArn, tags.compactMapValues(\.string)) }
        try builds.importDisk(record, from: source, folder: folder)
        return ["imageBuildVersionArn": .string(imageArn)]
    }

    /// Resolves what the pipeline names, snapshots it, reserves the image's build number and
    /// queues the build; the PENDING record and the queue entry are stored before this returns.
    func queueBuild(pipeline: Object, pipelineArn: String?, trigger: BuildTrigger, tags: JSONValue?) throws -> String {
        var definitions = Definitions()
        var snapshot: Object = [:]
        let recipeKind: ResourceKind = pipeline["containerRecipeArn"]?.string != nil ? .containerRecipe : .imageRecipe
        let recipeMember = recipeKind == .containerRecipe ? "containerRecipeArn" : "imageRecipeArn"
        let recipe = try resolveReference(try string(pipeline, recipeMember), kind: recipeKind, member: recipeMember)
        let recipeDocument = try document(recipe)
        snapshot[recipeKind == .containerRecipe ? "containerRecipe" : "imageRecipe"] = .object(recipeDocument)
        // Components as the recipe names them, each at the build its reference selects now.
        var components: [JSONValue] = []
        var componentBuilds: [String] = []
        for (index, configuration) in (recipeDocument["components"]?.array ?? []).enumerated() {
            let member = "\(recipeMember) components[\(index)]"
            let component = try resolveReference(configuration["componentArn"]?.string ?? "", kind: .component, member: member)
            var componentDocument = try document(component)
            componentDocument["semanticVersion"] = componentDocument["version"]
            definitions.components.append(try decode(ComponentDefinition.self, componentDocument, what: component.arn))
            componentBuilds.append(component.arn)
            var pinned = configuration.object ?? [:]
            pinned["componentArn"] = .string(arn("component", component.name, component.version!.description))
            components.append(.object(pinned))
        }
        var recipeDefinition = recipeDocument
        recipeDefinition["semanticVersion"] = recipeDocument["version"]
        recipeDefinition["components"] = .array(components)
        if recipeKind == .containerRecipe {
            definitions.containerRecipes.append(try decode(ContainerRecipeDefinition.self, recipeDefinition, what: recipe.arn))
        } else {
            definitions.imageRecipes.append(try decode(ImageRecipeDefinition.self, recipeDefinition, what: recipe.arn))
        }
        let infrastructure = try resolveReference(
            try string(pipeline, "infrastructureConfigurationArn"), kind: .infrastructureConfiguration,
            member: "infrastructureConfigurationArn")
        let infrastructureDocument = try document(infrastructure)
        snapshot["infrastructureConfiguration"] = .object(infrastructureDocument)
        definitions.infrastructureConfigurations.append(
            try decode(InfrastructureConfigurationDefinition.self, infrastructureDocument, what: infrastructure.arn))
        var pipelineDefinition = pipeline
        pipelineDefinition["name"] = .string(pipelineArn.map { _ in pipeline["name"]?.string ?? "pipeline" } ?? "create-image")
        pipelineDefinition[recipeMember] = .string(recipe.arn)
        pipelineDefinition["infrastructureConfigurationArn"] = .string(infrastructure.arn)
        if let text = pipeline["distributionConfigurationArn"]?.string {
            let distribution = try resolveReference(text, kind: .distributionConfiguration, member: "distributionConfigurationArn")
            let distributionDocument = try document(distribution)
            snapshot["distributionConfiguration"] = .object(distributionDocument)
            definitions.distributionConfigurations.append(
                try decode(DistributionConfigurationDefinition.self, distributionDocument, what: distribution.arn))
            pipelineDefinition["distributionConfigurationArn"] = .string(distribution.arn)
        }
        let pipelineName = pipelineDefinition["name"]?.string ?? "create-image"
        definitions.imagePipelines.append(try decode(ImagePipelineDefinition.self, pipelineDefinition, what: "the pipeline"))
        // The engine checks the references again, as `kiln build` does, before anything is queued.
        do {
            _ = try definitions.selectPipeline(pipelineName, source: "the stored resources")
        } catch let error as KilnError {
            throw apiError("InvalidRequestException", error.message)
        }

        let name = ImageBuilderARN.normalizedName(recipe.name)
        let version = recipe.version!
        let build = try store.reserveBuild(name: name, version: version)
        let imageArn = arn("image", name, "\(version)/\(build)")
        let folder = store.folder(name: name, version: version, build: build)
        let record = ImageRecord(
            arn: imageArn, name: name, version: version, build: build, type: recipeKind == .containerRecipe ? .docker : .ami,
            status: .pending, sourcePipelineName: pipelineArn == nil ? nil : pipelineName, trigger: trigger, dateCreated: now,
            logDirectory: folder + "/logs")
        snapshot["imageTestsConfiguration"] = pipeline["imageTestsConfiguration"] ?? ["imageTestsEnabled": true, "timeoutMinutes": 720]
        snapshot["enhancedImageMetadataEnabled"] = pipeline["enhancedImageMetadataEnabled"] ?? true
        snapshot["buildType"] = .string(trigger.buildType)
        // What the dependency-updates start condition compares the next fire with.
        snapshot["kilnResolvedInputs"] = [
            "recipe": .string(recipe.arn), "components": .array(componentBuilds.map(JSONValue.string)),
            "parentImage": recipeDocument["parentImage"] ?? "",
        ]
        if let pipelineArn {
            snapshot["sourcePipelineArn"] = .string(pipelineArn)
            snapshot["sourcePipelineName"] = .string(pipelineName)
        }
        try store.insert(
            StoredResource(
                kind: .image, arn: imageArn, name: name, version: version, build: build, document: JSONValue.object(snapshot).encodedData(),
                dateCreated: record.dateCreated))
        if let tags = tags?.object, !tags.isEmpty { try store.setTags(arn: imageArn, tags.compactMapValues(\.string)) }
        try builds.enqueue(
            BuildRequest(imageArn: imageArn, build: build, pipelineName: pipelineName, definitions: definitions), record: record)
        return imageArn
    }

    func decode<T: Decodable>(_ type: T.Type, _ object: Object, what: String) throws -> T {
        do {
            return try JSONDecoder().decode(T.self, from: JSONValue.object(object).encodedData())
        } catch {
            throw apiError("InvalidRequestException", "\(what) cannot be used for a build: \(error)")
        }
    }

    // MARK: Reading images

    /// The Image shape: the record's state and outputs over the snapshot taken when it was queued.
    func image(_ record: ImageRecord) throws -> Object {
        var image = (try store.resource(arn: record.arn)).flatMap { try? document($0) } ?? [:]
        image["arn"] = .string(record.arn)
        image["name"] = .string(record.name)
        image["version"] = .string("\(record.version)/\(record.build)")
        image["type"] = .string(record.type.rawValue)
        image["platform"] = "Linux"
        image["owner"] = .string(configuration.accountId)
        image["imageSource"] = "CUSTOM"
        image["buildType"] = image["buildType"] ?? "USER_INITIATED"
        image["dateCreated"] = .string(record.dateCreated)
        var state: Object = ["status": .string(record.status.rawValue)]
        if let failure = record.failure { state["reason"] = .string(failure.reason) }
        image["state"] = .object(state)
        if let pipeline = record.sourcePipelineName { image["sourcePipelineName"] = .string(pipeline) }
        var outputs: Object = [
            "containers": .array(
                record.outputContainers.map { ["region": .string($0.region), "imageUris": .array($0.imageUris.map(JSONValue.string))] })
        ]
        if let machine = record.machineImage {
            // One AMI per region the disk reached (an imported disk is in the home region only).
            let targets = record.amiTargets ?? [AmiTarget(region: configuration.homeRegion, name: record.name)]
            let reached = Set((machine.copies ?? []).map(\.region))
            let listed = record.amiTargets == nil || record.status != .available ? targets : targets.filter { reached.contains($0.region) }
            outputs["amis"] = .array(
                listed.map { target in
                    var ami: Object = [
                        "region": .string(target.region), "image": .string(machine.amiId), "name": .string(target.name),
                        "accountId": .string(configuration.accountId), "state": ["status": .string(record.status.rawValue)],
                    ]
                    if let description = target.description { ami["description"] = .string(description) }
                    return .object(ami)
                })
        }
        image["outputResources"] = .object(outputs)
        image["tags"] = .object(try store.tags(arn: record.arn).mapValues(JSONValue.string))
        return image
    }

    func imageRecord(_ input: Object, _ member: String) throws -> ImageRecord {
        let text = try string(input, member)
        let parsed = try parseARN(text, kind: "image", member: member)
        let selector: VersionSelector
        do {
            selector = try VersionSelector(parsing: parsed.version ?? "x.x.x")
        } catch let error as KilnError {
            throw apiError("InvalidVersionNumberException", "\(member): \(error.message)")
        }
        if selector.build != nil, let record = try store.record(arn: text) { return record }
        let candidates = try store.records(name: parsed.name, offset: 0, limit: 100_000).items
        guard
            let record = candidates.filter({ selector.matches(BuildVersion($0.version, build: $0.build)) })
                .max(by: { ($0.version, $0.build) < ($1.version, $1.build) })
        else { throw apiError("ResourceNotFoundException", "image \(text) does not exist") }
        return record
    }

    func getImage(_ input: Object) throws -> Object {
        let record = try imageRecord(input, "imageBuildVersionArn")
        return ["image": .object(try image(record)), "latestVersionReferences": latestReferences("image", record.name, record.version)]
    }

    func listImages(_ input: Object) throws -> Object {
        guard (input["owner"]?.string ?? "Self") == "Self" else { return ["imageVersionList": []] }
        let wanted = try filters(input, allowed: ["name", "osVersion", "platform", "type"])
        let (offset, limit) = try page(input)
        let version: (ImageVersionSummary) -> JSONValue = { [self] record in
            [
                "arn": .string(arn("image", record.name, record.version.description)), "name": .string(record.name),
                "type": .string(record.type.rawValue), "version": .string(record.version.description), "platform": "Linux",
                "owner": .string(configuration.accountId), "dateCreated": .string(record.dateCreated), "buildType": "USER_INITIATED",
                "imageSource": "CUSTOM",
            ]
        }
        if wanted.isEmpty || (wanted.count == 1 && wanted["name"]?.count == 1) {
            // One query a page: fast with many images.
            let page = try store.imageVersions(name: wanted["name"]?.first, offset: offset, limit: limit)
            var output: Object = ["imageVersionList": .array(page.items.map(version))]
            output["nextToken"] = nextToken(page.next)
            return output
        }
        let all = try store.imageVersions(name: nil, offset: 0, limit: 1_000_000).items.map(version)
            .filter { matches($0.object ?? [:], wanted, aliases: [:]) }
        let (items, next) = try paged(all, input)
        var output: Object = ["imageVersionList": .array(Array(items))]
        output["nextToken"] = next
        return output
    }

    func summaries(_ records: [ImageRecord], _ input: Object) throws -> Object {
        let (items, next) = try paged(records, input)
        var output: Object = ["imageSummaryList": .array(try items.map { .object(try image($0)) })]
        output["nextToken"] = next
        return output
    }

    func listImageBuildVersions(_ input: Object) throws -> Object {
        let text = try string(input, "imageVersionArn")
        let parsed = try parseARN(text, kind: "image", member: "imageVersionArn")
        let selector = try parsed.version.map { try VersionSelector(parsing: $0) }
        let records = try store.records(name: parsed.name, offset: 0, limit: 100_000).items.filter {
            selector?.matches(BuildVersion($0.version, build: $0.build)) ?? true
        }
        return try summaries(records, input)
    }

    func listImagePipelineImages(_ input: Object) throws -> Object {
        let arn = try string(input, "imagePipelineArn")
        let pipeline = try stored(arn, kind: .imagePipeline)
        let records = try store.records(pipeline: pipeline.name, offset: 0, limit: 100_000).items
        return try summaries(records, input)
    }

    func listImagePackages(_ input: Object) throws -> Object {
        let record = try imageRecord(input, "imageBuildVersionArn")
        guard let packages = record.packages else {
            throw apiError(
                "InvalidRequestException",
                "image \(record.arn) has no package inventory yet (it is \(record.status.rawValue)); the list is taken when the image becomes AVAILABLE"
            )
        }
        let (items, next) = try paged(packages, input)
        var output: Object = [
            "imagePackageList": .array(items.map { ["packageName": .string($0.name), "packageVersion": .string($0.version)] })
        ]
        output["nextToken"] = next
        return output
    }

    func deleteImage(_ input: Object) throws -> Object {
        let arn = try string(input, "imageBuildVersionArn")
        guard let record = try store.record(arn: arn) else { throw apiError("ResourceNotFoundException", "image \(arn) does not exist") }
        guard !record.isRunning else {
            throw apiError(
                "ResourceInUseException", "image \(arn) is \(record.status.rawValue); cancel it (cancel-image-creation) before deleting it")
        }
        _ = try store.deleteImage(arn: arn)
        builds.releaseLocalArtifacts(of: record)
        return ["imageBuildVersionArn": .string(arn)]
    }

    func cancelImage(_ input: Object) async throws -> Object {
        let arn = try string(input, "imageBuildVersionArn")
        guard let record = try store.record(arn: arn) else { throw apiError("ResourceNotFoundException", "image \(arn) does not exist") }
        guard record.isRunning, try await builds.cancel(imageArn: arn) else {
            throw apiError("ResourceInUseException", "image \(arn) is \(record.status.rawValue); only a build in progress can be cancelled")
        }
        return ["imageBuildVersionArn": .string(arn)]
    }

    /// Distributes a FAILED image again without rebuilding, when it failed in DISTRIBUTE.
    func retryImage(_ input: Object) throws -> Object {
        let arn = try string(input, "imageBuildVersionArn")
        guard let record = try store.record(arn: arn) else { throw apiError("ResourceNotFoundException", "image \(arn) does not exist") }
        guard record.status == .failed, record.failure?.stage == .distribute else {
            throw apiError(
                "InvalidRequestException",
                "image \(arn) is \(record.status.rawValue)\(record.failure.map { " in \($0.stage.rawValue)" } ?? ""); RetryImage sends an image that failed in DISTRIBUTE again"
            )
        }
        try builds.retry(record)
        return ["imageBuildVersionArn": .string(arn)]
    }

    // MARK: Workflows: BUILD, TEST and DISTRIBUTE as Image Builder's three workflows

    func getWorkflowExecution(_ input: Object) throws -> Object {
        let (record, stage) = try workflow(try string(input, "workflowExecutionId"))
        var output = workflowMetadata(record, stage)
        output["imageBuildVersionArn"] = .string(record.arn)
        return output
    }

    func listWorkflowExecutions(_ input: Object) throws -> Object {
        let record = try imageRecord(input, "imageBuildVersionArn")
        let stages = WorkflowStage.allCases.filter { !steps(record, $0).isEmpty || stageReached(record, $0) }
        let (items, next) = try paged(stages, input)
        var output: Object = [
            "imageBuildVersionArn": .string(record.arn),
            "workflowExecutions": .array(items.map { .object(workflowMetadata(record, $0)) }),
        ]
        output["nextToken"] = next
        return output
    }

    func listWorkflowStepExecutions(_ input: Object) throws -> Object {
        let id = try string(input, "workflowExecutionId")
        let (record, stage) = try workflow(id)
        let (items, next) = try paged(steps(record, stage), input)
        var output: Object = [
            "workflowExecutionId": .string(id), "imageBuildVersionArn": .string(record.arn),
            "workflowBuildVersionArn": .string(stage.workflowArn(configuration.homeRegion)), "steps": .array(items.map(JSONValue.object)),
        ]
        output["nextToken"] = next
        return output
    }

    func getWorkflowStepExecution(_ input: Object) throws -> Object {
        let id = try string(input, "stepExecutionId")
        guard let key = WorkflowIdentifier.parse(id, prefix: "step-"), let record = try store.record(rowID: key.image),
            WorkflowIdentifier.matches(key, arn: record.arn), let stage = WorkflowStage(rawValue: key.stage),
            let step = steps(record, stage).first(where: { $0["stepExecutionId"]?.string == id })
        else { throw apiError("ResourceNotFoundException", "workflow step execution \(id) does not exist") }
        var output = step
        output["imageBuildVersionArn"] = .string(record.arn)
        output["workflowExecutionId"] = .string(WorkflowIdentifier(image: key.image, arn: record.arn, stage: key.stage).execution)
        output["workflowBuildVersionArn"] = .string(stage.workflowArn(configuration.homeRegion))
        return output
    }

    func workflow(_ id: String) throws -> (ImageRecord, WorkflowStage) {
        guard let key = WorkflowIdentifier.parse(id, prefix: "wf-"), let stage = WorkflowStage(rawValue: key.stage),
            let record = try store.record(rowID: key.image), WorkflowIdentifier.matches(key, arn: record.arn)
        else { throw apiError("ResourceNotFoundException", "workflow execution \(id) does not exist") }
        return (record, stage)
    }

    func stageReached(_ record: ImageRecord, _ stage: WorkflowStage) -> Bool {
        let order: [ImageStatus] = [.pending, .creating, .building, .testing, .distributing, .integrating, .available]
        let index = order.firstIndex(of: record.status) ?? 0
        switch stage {
        case .build: return index >= 2 || record.failure?.stage == .build
        case .test: return index >= 3 || record.failure?.stage == .test
        case .distribute: return index >= 4 || record.failure?.stage == .distribute
        }
    }

    func workflowMetadata(_ record: ImageRecord, _ stage: WorkflowStage) -> Object {
        let steps = steps(record, stage)
        let statuses = steps.compactMap { $0["status"]?.string }
        let failed = record.failure?.stage.rawValue == stage.engineStage.rawValue
        let status: String =
            failed
            ? (record.status == .cancelled ? "CANCELLED" : "FAILED")
            : (record.isRunning && record.status.stage == stage.engineStage ? "RUNNING" : "COMPLETED")
        var output: Object = [
            "workflowBuildVersionArn": .string(stage.workflowArn(configuration.homeRegion)),
            "workflowExecutionId": .string(
                WorkflowIdentifier(image: (try? store.rowID(arn: record.arn)) ?? 0, arn: record.arn, stage: stage.rawValue).execution),
            "type": .string(stage.type),
            "status": .string(status),
            "totalStepCount": .number(Double(steps.count)),
            "totalStepsSucceeded": .number(Double(statuses.filter { $0 == "COMPLETED" }.count)),
            "totalStepsFailed": .number(Double(statuses.filter { $0 == "FAILED" }.count)),
            "totalStepsSkipped": .number(Double(statuses.filter { $0 == "SKIPPED" }.count)),
            "startTime": .string(record.dateCreated),
        ]
        if failed, let reason = record.failure?.reason { output["message"] = .string(reason) }
        return output
    }

    /// Kiln's steps of one stage: BUILD's components and file-changing instructions (reused from
    /// the cache: SKIPPED, with why), TEST's run, DISTRIBUTE's regions.
    func steps(_ record: ImageRecord, _ stage: WorkflowStage) -> [Object] {
        let row = (try? store.rowID(arn: record.arn)) ?? 0
        var steps: [Object] = []
        func add(_ name: String, _ action: String, _ status: String, _ message: String?) {
            var step: Object = [
                "stepExecutionId": .string(WorkflowIdentifier(image: row, arn: record.arn, stage: stage.rawValue, step: steps.count).step),
                "name": .string(String(name.prefix(128))), "action": .string(action), "status": .string(status),
                "rollbackStatus": "SKIPPED", "startTime": .string(record.dateCreated),
            ]
            if let message { step["message"] = .string(String(message.prefix(500))) }
            steps.append(step)
        }
        let failure = record.failure?.stage == stage.engineStage ? record.failure : nil
        switch stage {
        case .build:
            // Steps run in the order of their cache decisions: while BUILD runs, the first one not
            // reused runs and the later ones wait; after a failure, the ones after it never ran.
            let cancelled = record.status == .cancelled
            let running = record.isRunning && record.status.stage == .build
            let decisions = record.cacheDecisions ?? []
            let failedAt = failure.flatMap { failure in decisions.firstIndex { $0.step == failure.step } }
            var waiting = false
            for (index, decision) in decisions.enumerated() {
                if decision.decision == .reused {
                    add(decision.step, "ExecuteComponent", "SKIPPED", decision.reason)
                } else if index == failedAt {
                    add(decision.step, "ExecuteComponent", cancelled ? "CANCELLED" : "FAILED", failure?.reason)
                } else if let failedAt, index > failedAt {
                    add(decision.step, "ExecuteComponent", "SKIPPED", "not run: an earlier step failed")
                } else if running {
                    add(decision.step, "ExecuteComponent", waiting ? "PENDING" : "RUNNING", decision.reason)
                    waiting = true
                } else if let failure, failedAt == nil {
                    add(
                        decision.step, "ExecuteComponent", cancelled ? "CANCELLED" : "SKIPPED",
                        "BUILD ended at \(failure.step ?? "the build"); this step's own outcome was not recorded")
                } else {
                    add(decision.step, "ExecuteComponent", "COMPLETED", decision.reason)
                }
            }
            if let failure, failedAt == nil {
                add(failure.step ?? "BuildImage", "ExecuteComponent", cancelled ? "CANCELLED" : "FAILED", failure.reason)
            }
        case .test:
            if record.testResults != nil || failure != nil || stageReached(record, .test) {
                add(failure?.step ?? "RunImageTests", "ExecuteComponent", failure == nil ? "COMPLETED" : "FAILED", failure?.reason)
            }
        case .distribute:
            for region in Set(record.distributionTargets.map(\.region)).sorted() {
                let failedHere = failure?.region == region
                let done = record.outputContainers.contains { $0.region == region }
                add(
                    "Distribute \(region)", "DistributeImage",
                    failedHere ? "FAILED" : (done ? "COMPLETED" : (record.isRunning ? "PENDING" : "SKIPPED")),
                    failedHere ? failure?.reason : nil)
            }
            if let failure, failure.region == nil { add("Distribute", "DistributeImage", "FAILED", failure.reason) }
        }
        return steps
    }

    // MARK: Tags

    func tagResource(_ input: Object) throws -> Object {
        let arn = try string(input, "resourceArn")
        try requireTaggable(arn)
        try store.setTags(arn: arn, (input["tags"]?.object ?? [:]).compactMapValues(\.string))
        return [:]
    }

    func untagResource(_ input: Object) throws -> Object {
        let arn = try string(input, "resourceArn")
        try requireTaggable(arn)
        try store.removeTags(arn: arn, keys: input["tagKeys"]?.array?.compactMap(\.string) ?? [])
        return [:]
    }

    func listTags(_ input: Object) throws -> Object {
        let arn = try string(input, "resourceArn")
        try requireTaggable(arn)
        return ["tags": .object(try store.tags(arn: arn).mapValues(JSONValue.string))]
    }

    func requireTaggable(_ arn: String) throws {
        guard try store.resource(arn: arn) != nil || (try store.record(arn: arn)) != nil else {
            throw apiError("ResourceNotFoundException", "\(arn) does not exist")
        }
    }
}

/// Image Builder's three workflows, as Kiln's stages.
enum WorkflowStage: Int, CaseIterable {
    case build = 1, test = 2, distribute = 3

    var type: String { ["BUILD", "TEST", "DISTRIBUTION"][rawValue - 1] }
    var engineStage: Stage { [Stage.build, .test, .distribute][rawValue - 1] }

    /// The AWS-managed workflow this stage stands for.
    func workflowArn(_ region: String) -> String {
        let name = ["build-container", "test-container", "distribute-container"][rawValue - 1]
        return "arn:aws:imagebuilder:\(region):aws:workflow/\(type.lowercased())/\(name)/1.0.0/1"
    }
}

/// Workflow and step execution ids in Image Builder's UUID form. They carry the image's row in
/// the store, the stage and the step, and bits of the image ARN's digest, so an id never names
/// another image that later took a deleted image's row:
/// `wf-SSSSSSSS-CCCC-4CCC-8CCC-RRRRRRRRRRRR`, `step-SSSSSSSS-IIII-4CCC-8CCC-RRRRRRRRRRRR`.
struct WorkflowIdentifier {
    var image: Int64
    var stage: Int
    var index = 0
    /// 10 hex digits of SHA-256 of the image ARN.
    var check: String

    init(image: Int64, arn: String, stage: Int, step: Int = 0) {
        self.image = image
        self.stage = stage
        self.index = step
        check = Self.check(arn)
    }

    static func check(_ arn: String) -> String {
        String(SHA256.hash(data: Data(arn.utf8)).map { String(format: "%02x", $0) }.joined().prefix(10))
    }

    var execution: String {
        let c = Array(check)
        return String(format: "wf-%08x-", stage) + String(c[0..<4]) + "-4" + String(c[4..<7]) + "-8" + String(c[7..<10])
            + String(format: "-%012llx", image)
    }

    var step: String {
        let c = Array(check)
        return String(format: "step-%08x-%04x-4", stage, index) + String(c[4..<7]) + "-8" + String(c[7..<10])
            + String(format: "-%012llx", image)
    }

    /// The parts of an id: row, stage, step, and the check digits it carries (some may be absent).
    static func parse(_ id: String, prefix: String) -> (image: Int64, stage: Int, index: Int, check: String)? {
        let parts = id.dropFirst(prefix.count).split(separator: "-")
        guard id.hasPrefix(prefix), parts.count == 5, let stage = Int(parts[0], radix: 16), let image = Int64(parts[4], radix: 16),
            parts[2].count == 4, parts[3].count == 4
        else { return nil }
        let head = prefix == "wf-" ? String(parts[1]) : ""
        let index = prefix == "wf-" ? 0 : Int(parts[1], radix: 16) ?? -1
        return (image, stage, index, head + parts[2].dropFirst() + parts[3].dropFirst())
    }

    /// Whether `id` (parsed) names the image `arn`.
    static func matches(_ parsed: (image: Int64, stage: Int, index: Int, check: String), arn: String) -> Bool {
        check(arn).hasSuffix(parsed.check)
    }
}
