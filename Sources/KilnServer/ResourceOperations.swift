import Foundation
import KilnEngine
import KilnInstances
import KilnModel
import KilnScheduler
import KilnStore

/// How each kind of resource is named in the API's members.
struct ResourceNaming {
    /// `imageRecipe`: the Get response's member; the ARN member is this plus `Arn`.
    var member: String
    var listMember: String
    var label: String
    var filterNames: [String]

    var arnMember: String { member + "Arn" }

    static func of(_ kind: ResourceKind) -> ResourceNaming {
        switch kind {
        case .component: .init(member: "component", listMember: "componentVersionList", label: "component", filterNames: [])
        case .imageRecipe:
            .init(
                member: "imageRecipe", listMember: "imageRecipeSummaryList", label: "image recipe",
                filterNames: ["name", "parentImage", "platform"])
        case .containerRecipe:
            .init(
                member: "containerRecipe", listMember: "containerRecipeSummaryList", label: "container recipe",
                filterNames: ["containerType", "name", "parentImage", "platform"])
        case .infrastructureConfiguration:
            .init(
                member: "infrastructureConfiguration", listMember: "infrastructureConfigurationSummaryList",
                label: "infrastructure configuration", filterNames: ["name"])
        case .distributionConfiguration:
            .init(
                member: "distributionConfiguration", listMember: "distributionConfigurationSummaryList",
                label: "distribution configuration", filterNames: ["name"])
        case .imagePipeline:
            .init(
                member: "imagePipeline", listMember: "imagePipelineList", label: "image pipeline",
                filterNames: [
                    "description", "distributionConfigurationArn", "imageRecipeArn", "infrastructureConfigurationArn", "name", "status",
                ])
        case .image: .init(member: "image", listMember: "imageVersionList", label: "image", filterNames: [])
        }
    }
}

extension ImageBuilderAPI {
    // MARK: Components

    func createComponent(_ input: Object) async throws -> Object {
        let name = try string(input, "name")
        let version = try semanticVersion(input)
        guard (input["platform"]?.string ?? "Linux") == "Linux" else {
            throw apiError(
                "InvalidRequestException",
                "platform \(input["platform"]?.string ?? ""): Kiln runs Linux components only; use platform Linux")
        }
        let text: String
        switch (input["data"]?.string, input["uri"]?.string) {
        case (let data?, nil): text = data
        case (nil, let uri?): text = try await fetchDocument(uri)
        case (.some, .some):
            throw apiError("InvalidParameterCombinationException", "give the component's document as data or as uri, not both")
        case (nil, nil): throw apiError("InvalidRequestException", "the component needs its document: data (the YAML) or uri (https)")
        }
        let label = "component \(name)/\(version)"
        let parsed: ComponentDocument
        do {
            parsed = try ComponentDocumentParser(platform: .linux).parse(text: text, source: "data")
        } catch let error as KilnError {
            throw apiError("InvalidRequestException", "\(label): the document is not valid: \(error.description)")
        }
        if input["dryRun"]?.bool == true {
            throw apiError("DryRunOperationException", "the request would have succeeded, but dryRun was set")
        }
        let builds = try store.resources(kind: .component, name: name, offset: 0, limit: 10_000).items
            .filter { $0.version == version }.compactMap(\.build)
        let build = (builds.max() ?? 0) + 1
        let arn = arn("component", name, "\(version)/\(build)")
        var document = input
        for member in ["clientToken", "dryRun", "semanticVersion", "uri", "tags"] { document[member] = nil }
        document["arn"] = .string(arn)
        document["version"] = .string(version.description)
        document["data"] = .string(text)
        document["platform"] = .string("Linux")
        document["type"] = .string(parsed.componentType)
        document["owner"] = .string(configuration.accountId)
        document["encrypted"] = false
        document["state"] = ["status": "ACTIVE"]
        document["dateCreated"] = .string(now)
        document["parameters"] = .array(
            parsed.parameters.map { parameter in
                var object: Object = ["name": .string(parameter.name), "type": .string(parameter.type)]
                if let value = parameter.defaultValue { object["defaultValue"] = [.string(value)] }
                if let description = parameter.description { object["description"] = .string(description) }
                return .object(object)
            })
        try insert(kind: .component, arn: arn, name: name, version: version, build: build, document: document, tags: input["tags"])
        return ["componentBuildVersionArn": .string(arn), "latestVersionReferences": latestReferences("component", name, version)]
    }

    func importComponent(_ input: Object) async throws -> Object {
        guard input["format"]?.string == "SHELL" else {
            throw apiError("InvalidParameterValueException", "format must be SHELL (the only format Image Builder imports)")
        }
        guard (input["type"]?.string ?? "BUILD") == "BUILD" || input["type"]?.string == "TEST" else {
            throw apiError("InvalidParameterValueException", "type must be BUILD or TEST")
        }
        let script: String
        if let data = input["data"]?.string {
            script = data
        } else if let uri = input["uri"]?.string {
            script = try await fetchDocument(uri)
        } else {
            throw apiError("InvalidRequestException", "ImportComponent needs data (the shell script) or uri")
        }
        // A shell script becomes one ExecuteBash step in the phase its type names.
        let phase = input["type"]?.string == "TEST" ? "test" : "build"
        let indented = script.split(separator: "\n", omittingEmptySubsequences: false).map { "              " + $0 }.joined(separator: "\n")
        let document = """
            name: \(try string(input, "name"))
            schemaVersion: 1.0
            phases:
              - name: \(phase)
                steps:
                  - name: ImportedScript
                    action: ExecuteBash
                    inputs:
                      commands:
                        - |
            \(indented)
            """
        var create = input
        create["data"] = .string(document)
        create["uri"] = nil
        create["format"] = nil
        create["type"] = nil
        let created = try await createComponent(create)
        return ["componentBuildVersionArn": created["componentBuildVersionArn"] ?? .null]
    }

    /// A component document from an https URL; Kiln reads no host files and no s3:// for API callers.
    func fetchDocument(_ uri: String) async throws -> String {
        guard uri.hasPrefix("https://") else {
            throw apiError(
                "InvalidParameterValueException",
                "uri \(uri): Kiln's API fetches https:// documents only; send the document as data instead")
        }
        do {
            let caCertificates = configuration.registries.compactMapValues(\.caCertificate)
            return String(decoding: try await HTTPSDownload.fetch(uri, caCertificates: caCertificates, limit: 1 << 20), as: UTF8.self)
        } catch let error as KilnError {
            throw apiError("InvalidParameterValueException", "uri \(uri): \(error.message)")
        }
    }

    /// The components of `name` whose version and build `selector` takes, newest last.
    func components(named name: String) throws -> [StoredResource] {
        try store.resources(kind: .component, name: name, offset: 0, limit: 100_000).items
    }

    /// The stored resource an ARN names; versioned kinds take `x` wildcards and a missing build.
    func resolve(_ text: String, kind: ResourceKind, member: String) throws -> StoredResource {
        let parsed = try parseARN(text, kind: kind.rawValue, member: member)
        guard kind == .component || kind == .imageRecipe || kind == .containerRecipe else {
            return try stored(parsed.description, kind: kind)
        }
        let candidates = try store.resources(kind: kind, name: nil, offset: 0, limit: 100_000).items.filter {
            ImageBuilderARN.normalizedName($0.name) == parsed.name
        }
        let selector = try parsed.version.map { text in
            do { return try VersionSelector(parsing: text) } catch let error as KilnError {
                throw apiError("InvalidVersionNumberException", "\(member): \(error.message)")
            }
        }
        let versions = candidates.compactMap { resource in resource.version.map { BuildVersion($0, build: resource.build ?? 1) } }
        guard let chosen = selector.map({ $0.select(from: versions) }) ?? versions.max(),
            let found = candidates.first(where: { $0.version == chosen.version && ($0.build ?? 1) == chosen.build })
        else {
            throw apiError("ResourceNotFoundException", "\(ResourceNaming.of(kind).label) \(text) does not exist")
        }
        return found
    }

    func getComponent(_ input: Object) throws -> Object {
        let component = try resolve(try string(input, "componentBuildVersionArn"), kind: .component, member: "componentBuildVersionArn")
        return ["component": .object(try withTags(component))]
    }

    func listComponents(_ input: Object) throws -> Object {
        guard (input["owner"]?.string ?? "Self") == "Self" else { return ["componentVersionList": []] }
        let wanted = try filters(input, allowed: ["description", "name", "platform", "supportedOsVersion", "type"])
        var newest: [String: StoredResource] = [:]
        for component in try store.resources(kind: .component, name: nil, offset: 0, limit: 100_000).items {
            let key = "\(component.name)/\(component.version?.description ?? "")"
            if (newest[key]?.build ?? 0) < (component.build ?? 0) { newest[key] = component }
        }
        var listed: [Object] = []
        for component in newest.values.sorted(by: { ($0.name, $0.version!) < ($1.name, $1.version!) }) {
            var document = try document(component)
            guard matches(document, wanted, aliases: ["supportedOsVersion": "supportedOsVersions"]) else { continue }
            document["arn"] = .string(arn("component", component.name, component.version!.description))
            listed.append(document)
        }
        if input["byName"]?.bool == true {
            var byName: [String: Object] = [:]
            for document in listed { byName[document["name"]?.string ?? ""] = document }
            listed = byName.keys.sorted().compactMap { byName[$0] }
        }
        let (items, next) = try paged(listed, input)
        var output: Object = ["componentVersionList": .array(items.map(JSONValue.object))]
        output["nextToken"] = next
        return output
    }

    func listComponentBuildVersions(_ input: Object) throws -> Object {
        let text = try string(input, "componentVersionArn")
        let parsed = try parseARN(text, kind: "component", member: "componentVersionArn")
        let selector = try parsed.version.map { try VersionSelector(parsing: $0) }
        let builds = try store.resources(kind: .component, name: nil, offset: 0, limit: 100_000).items.filter { component in
            ImageBuilderARN.normalizedName(component.name) == parsed.name
                && (selector?.matches(BuildVersion(component.version!, build: component.build ?? 1)) ?? true)
        }
        let (items, next) = try paged(builds, input)
        var output: Object = ["componentSummaryList": .array(try items.map { .object(try withTags($0)) })]
        output["nextToken"] = next
        return output
    }

    func deleteComponent(_ input: Object) throws -> Object {
        let text = try string(input, "componentBuildVersionArn")
        let component = try stored(text, kind: .component)
        try refuseIfReferenced(component)
        _ = try store.delete(arn: component.arn)
        return ["componentBuildVersionArn": .string(component.arn)]
    }

    // MARK: Recipes

    func createRecipe(_ input: Object, kind: ResourceKind) throws -> Object {
        let naming = ResourceNaming.of(kind)
        let name = try string(input, "name")
        let version = try semanticVersion(input)
        let arn = arn(kind.rawValue, name, version.description)
        if try store.resource(arn: arn) != nil {
            throw apiError(
                "ResourceAlreadyExistsException",
                "\(naming.label) \(name)/\(version) already exists (\(arn)); recipes cannot change: create a new semanticVersion")
        }
        var components: [JSONValue] = []
        for (index, configuration) in (input["components"]?.array ?? []).enumerated() {
            let member = "components[\(index)].componentArn"
            let text = try string(configuration.object ?? [:], "componentArn")
            let component = try resolveReference(text, kind: .component, member: member)
            try checkParameters(configuration, component: component, member: "components[\(index)]")
            components.append(configuration)
        }
        let parent = try string(input, "parentImage")
        if parent.hasPrefix("arn:") {
            _ = try parseARN(parent, kind: "image", member: "parentImage")
        }
        if kind == .containerRecipe {
            if input["dockerfileTemplateUri"]?.string != nil {
                throw apiError(
                    "InvalidRequestException", "dockerfileTemplateUri is not supported by Kiln (no S3); send dockerfileTemplateData")
            }
            if let template = input["dockerfileTemplateData"]?.string {
                do {
                    _ = try DockerfileTemplate(parsing: template, parentImage: parent, source: "dockerfileTemplateData")
                } catch let error as KilnError {
                    throw apiError("InvalidRequestException", error.description)
                }
            }
            if let target = input["targetRepository"]?.object, target["service"]?.string != "ECR" {
                throw apiError("InvalidParameterValueException", "targetRepository.service must be ECR")
            }
        }
        var document = input
        for member in ["clientToken", "semanticVersion", "tags"] { document[member] = nil }
        document["arn"] = .string(arn)
        document["version"] = .string(version.description)
        document["owner"] = .string(configuration.accountId)
        document["platform"] = .string("Linux")
        document["dateCreated"] = .string(now)
        document["components"] = .array(components)
        if kind == .imageRecipe { document["type"] = "AMI" }
        try insert(kind: kind, arn: arn, name: name, version: version, build: nil, document: document, tags: input["tags"])
        return [naming.arnMember: .string(arn), "latestVersionReferences": latestReferences(kind.rawValue, name, version)]
    }

    /// A reference in a request that must name a stored resource (wildcards allowed).
    func resolveReference(_ text: String, kind: ResourceKind, member: String) throws -> StoredResource {
        do {
            return try resolve(text, kind: kind, member: member)
        } catch let error as APIError where error.code == "ResourceNotFoundException" {
            throw apiError("InvalidParameterValueException", "\(member): \(error.message)")
        }
    }

    /// A recipe's parameters must be ones the component's document declares.
    func checkParameters(_ configuration: JSONValue, component: StoredResource, member: String) throws {
        let declared = Set((try document(component)["parameters"]?.array ?? []).compactMap { $0["name"]?.string })
        for (index, parameter) in (configuration["parameters"]?.array ?? []).enumerated() {
            let name = parameter["name"]?.string ?? ""
            guard declared.contains(name) else {
                throw apiError(
                    "InvalidParameterValueException",
                    "\(member).parameters[\(index)]: component \(component.arn) has no parameter '\(name)'"
                        + (declared.isEmpty ? "" : "; it has: \(declared.sorted().joined(separator: ", "))"))
            }
        }
    }

    func latestReferences(_ kind: String, _ name: String, _ version: SemanticVersion) -> JSONValue {
        [
            "latestVersionArn": .string(arn(kind, name, "x.x.x")),
            "latestMajorVersionArn": .string(arn(kind, name, "\(version.major).x.x")),
            "latestMinorVersionArn": .string(arn(kind, name, "\(version.major).\(version.minor).x")),
            "latestPatchVersionArn": .string(arn(kind, name, version.description)),
        ]
    }

    // MARK: Configurations and pipelines

    func createConfiguration(_ input: Object, kind: ResourceKind) throws -> Object {
        let naming = ResourceNaming.of(kind)
        let name = try string(input, "name")
        let arn = arn(kind.rawValue, name)
        if try store.resource(arn: arn) != nil {
            throw apiError(
                "ResourceAlreadyExistsException", "\(naming.label) '\(name)' already exists (\(arn)); update it, or choose another name")
        }
        var document = try checkedConfiguration(input, kind: kind)
        document["arn"] = .string(arn)
        document["dateCreated"] = .string(now)
        if kind == .imagePipeline {
            document["status"] = .string(input["status"]?.string ?? "ENABLED")
            document["platform"] = "Linux"
        }
        try insert(kind: kind, arn: arn, name: name, version: nil, build: nil, document: document, tags: input["tags"])
        if kind == .imagePipeline { pipelineChanges.notify() }
        return [naming.arnMember: .string(arn)]
    }

    func updateConfiguration(_ input: Object, kind: ResourceKind) throws -> Object {
        let naming = ResourceNaming.of(kind)
        let arn = try string(input, naming.arnMember)
        _ = try parseARN(arn, kind: kind.rawValue, member: naming.arnMember)
        let existing = try stored(arn, kind: kind)
        let before = try document(existing)
        var updated = input
        updated[naming.arnMember] = nil
        updated["name"] = before["name"]
        var document = try checkedConfiguration(updated, kind: kind)
        // Image Builder's updates replace the whole configuration; what it sets itself stays.
        for member in ["arn", "name", "dateCreated", "dateLastRun", "lastRunStatus", "platform"] { document[member] = before[member] }
        if kind == .imagePipeline { document["status"] = .string(input["status"]?.string ?? before["status"]?.string ?? "ENABLED") }
        document["dateUpdated"] = .string(now)
        try store.update(arn: arn, document: JSONValue.object(document).encodedData())
        pipelineChanges.notify()
        return [naming.arnMember: .string(arn)]
    }

    /// The request as a stored document, after checking what it names exists in Kiln.
    func checkedConfiguration(_ input: Object, kind: ResourceKind) throws -> Object {
        var document = input
        document["clientToken"] = nil
        document["tags"] = nil
        switch kind {
        case .infrastructureConfiguration:
            let known = try InstanceType.table(configured: configuration.instanceTypes)
            for type in input["instanceTypes"]?.array?.compactMap(\.string) ?? [] where known[type] == nil {
                throw apiError(
                    "InvalidParameterValueException",
                    "instanceTypes: '\(type)' is not an instance type Kiln knows; add it under instanceTypes in kiln.yaml, or use one of: \(known.keys.sorted().prefix(12).joined(separator: ", "))…"
                )
            }
            if let topic = input["snsTopicArn"]?.string {
                let name = topic.split(separator: ":").last.map(String.init) ?? ""
                guard topic.hasPrefix("arn:") && topic.contains(":sns:"), configuration.webhooks.contains(where: { $0.name == name }) else {
                    throw apiError(
                        "InvalidParameterValueException",
                        "snsTopicArn \(topic) must be arn:aws:sns:REGION:ACCOUNT:NAME with NAME one of kiln.yaml's webhooks (\(configuration.webhooks.map(\.name).joined(separator: ", ")))"
                    )
                }
            }
        case .distributionConfiguration:
            for (index, distribution) in (input["distributions"]?.array ?? []).enumerated() {
                let region = distribution["region"]?.string ?? ""
                guard configuration.regions[region] != nil else {
                    throw apiError(
                        "InvalidParameterValueException",
                        "distributions[\(index)].region '\(region)' is not a region of kiln.yaml; it has: \(configuration.regions.keys.sorted().joined(separator: ", "))"
                    )
                }
            }
        case .imagePipeline:
            try checkSchedule(input)
            let image = input["imageRecipeArn"]?.string
            let container = input["containerRecipeArn"]?.string
            guard (image == nil) != (container == nil) else {
                throw apiError("InvalidParameterCombinationException", "a pipeline needs imageRecipeArn or containerRecipeArn, exactly one")
            }
            if let image { _ = try resolveReference(image, kind: .imageRecipe, member: "imageRecipeArn") }
            if let container { _ = try resolveReference(container, kind: .containerRecipe, member: "containerRecipeArn") }
            _ = try resolveReference(
                try string(input, "infrastructureConfigurationArn"), kind: .infrastructureConfiguration,
                member: "infrastructureConfigurationArn")
            if let distribution = input["distributionConfigurationArn"]?.string {
                _ = try resolveReference(distribution, kind: .distributionConfiguration, member: "distributionConfigurationArn")
            }
        default: break
        }
        return document
    }

    // MARK: Get, list and delete for every kind

    func getResource(_ input: Object, kind: ResourceKind) throws -> Object {
        let naming = ResourceNaming.of(kind)
        let resource = try resolve(try string(input, naming.arnMember), kind: kind, member: naming.arnMember)
        return [naming.member: .object(try withTags(resource))]
    }

    func listResources(_ input: Object, kind: ResourceKind) throws -> Object {
        let naming = ResourceNaming.of(kind)
        if let owner = input["owner"]?.string, owner != "Self" { return [naming.listMember: []] }
        let wanted = try filters(input, allowed: naming.filterNames)
        var listed: [JSONValue] = []
        for resource in try store.resources(kind: kind, name: nil, offset: 0, limit: 100_000).items {
            var document = try withTags(resource)
            guard matches(document, wanted, aliases: [:]) else { continue }
            if kind == .distributionConfiguration {
                document["regions"] = .array((document["distributions"]?.array ?? []).compactMap { $0["region"] })
            }
            listed.append(.object(document))
        }
        let (items, next) = try paged(listed, input)
        var output: Object = [naming.listMember: .array(Array(items))]
        output["nextToken"] = next
        return output
    }

    func deleteResource(_ input: Object, kind: ResourceKind) throws -> Object {
        let naming = ResourceNaming.of(kind)
        let arn = try string(input, naming.arnMember)
        _ = try parseARN(arn, kind: kind.rawValue, member: naming.arnMember)
        let resource = try stored(arn, kind: kind)
        try refuseIfReferenced(resource)
        if kind == .imagePipeline, try builds.isRunning(pipeline: resource.name) {
            throw apiError(
                "ResourceInUseException",
                "image pipeline \(arn) has a build running; cancel it (cancel-image-creation) or wait, then delete")
        }
        _ = try store.delete(arn: arn)
        if kind == .imagePipeline { pipelineChanges.notify() }
        return [naming.arnMember: .string(arn)]
    }

    /// ResourceDependencyException while another resource names this one, by its ARN or by a
    /// version or wildcard reference that selects it now.
    func refuseIfReferenced(_ resource: StoredResource) throws {
        var names = [resource.arn]
        if let version = resource.version, resource.build != nil {
            names.append(arn(resource.kind.rawValue, resource.name, version.description))
        }
        var users = try Set(names.flatMap { try store.referencing($0) })
        if resource.kind == .component {
            for kind in [ResourceKind.imageRecipe, .containerRecipe] {
                for recipe in try store.resources(kind: kind, name: nil, offset: 0, limit: 100_000).items {
                    for configuration in try document(recipe)["components"]?.array ?? [] {
                        guard let text = configuration["componentArn"]?.string,
                            (try? ImageBuilderARN(parsing: text))?.name == ImageBuilderARN.normalizedName(resource.name),
                            (try? resolve(text, kind: .component, member: "componentArn"))?.arn == resource.arn
                        else { continue }
                        users.insert(recipe.arn)
                    }
                }
            }
        }
        users = users.subtracting([resource.arn])
        let sorted = users.sorted()
        guard sorted.isEmpty else {
            throw apiError(
                "ResourceDependencyException",
                "\(ResourceNaming.of(resource.kind).label) \(resource.arn) is used by \(sorted.joined(separator: ", ")); delete or change those first"
            )
        }
    }

    // MARK: Storage helpers

    func insert(
        kind: ResourceKind, arn: String, name: String, version: SemanticVersion?, build: Int?, document: Object, tags: JSONValue?
    ) throws {
        do {
            try store.insert(
                StoredResource(
                    kind: kind, arn: arn, name: name, version: version, build: build, document: JSONValue.object(document).encodedData(),
                    dateCreated: document["dateCreated"]?.string ?? now))
        } catch let error as KilnError where error.code == .alreadyExists {
            throw apiError("ResourceAlreadyExistsException", error.message)
        }
        if let tags = tags?.object, !tags.isEmpty {
            try store.setTags(arn: arn, tags.compactMapValues(\.string))
        }
    }

    func withTags(_ resource: StoredResource) throws -> Object {
        var document = try document(resource)
        if resource.kind == .imagePipeline {
            // From the pipeline's images, newest first: its last run's state and the failures in a row.
            let images = try store.records(pipeline: resource.name, offset: 0, limit: 10_000).items
                .sorted { $0.dateCreated > $1.dateCreated }
            if let last = images.first { document["lastRunStatus"] = .string(last.status.rawValue) }
            let failures = AutoDisablePolicy.consecutiveFailures(images, since: pipelineAnchor(document)).count
            document["consecutiveFailures"] = .number(Double(failures))
            document["dateNextRun"] = dateNextRun(document).map(JSONValue.string)
        }
        document["tags"] = .object(try store.tags(arn: resource.arn).mapValues(JSONValue.string))
        return document
    }

    /// Whether a document passes every filter (a value list matches when any value equals the member).
    func matches(_ document: Object, _ filters: [String: [String]], aliases: [String: String]) -> Bool {
        filters.allSatisfy { name, values in
            let value = document[aliases[name] ?? name]
            let texts = value?.array?.compactMap(\.string) ?? [value?.string].compactMap { $0 }
            return texts.contains { values.contains($0) }
        }
    }
}
