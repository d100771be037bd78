import ArgumentParser
import Foundation
import KilnModel
import KilnServer

/// `kiln apply -f FILE --endpoint URL`: every resource of a definitions file, created or
/// updated through the API, so applying the same file twice changes nothing.
struct ApplyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "apply",
        abstract: "Create or update every resource of a definitions file on a kiln server (idempotent).",
        discussion: """
            Components are versioned: an unchanged document is left alone, a changed one becomes the version's next build. \
            Recipes cannot change: one that exists with other content is an error (raise its semanticVersion). \
            Infrastructure and distribution configurations and pipelines are updated when they differ. ARNs use kiln.yaml's \
            accountId and homeRegion (or KILN_ACCOUNT_ID, KILN_HOME_REGION).
            """)

    @Option(name: [.customShort("f"), .long], help: "The definitions file (YAML).")
    var file: String

    @OptionGroup var options: KilnOptions
    @OptionGroup var remote: RemoteOptions

    func run() async throws {
        try await KilnEnvironment.reportingErrors {
            guard let endpoint = remote.resolvedEndpoint() else {
                throw KilnError(
                    .invalidArgument,
                    "kiln apply talks to a kiln server: give --endpoint URL or set KILN_ENDPOINT (without a server, kiln build -f \(file) builds here)"
                )
            }
            let configuration = try KilnEnvironment.configurationOnly(options)
            let definitions = try Definitions.load(path: file)
            let applier = DefinitionsApplier(
                client: try remote.client(endpoint, configuration: configuration), account: configuration.accountId,
                region: configuration.homeRegion, folder: (file as NSString).deletingLastPathComponent)
            for line in try await applier.apply(definitions) { print(line) }
        }
    }
}

/// Turns a definitions file into API calls, resource by resource, in dependency order.
struct DefinitionsApplier {
    typealias Object = [String: JSONValue]
    let client: ImageBuilderClient
    let account: String
    let region: String
    let folder: String

    func arn(_ type: String, _ name: String, _ version: String? = nil) -> String {
        ImageBuilderARN(region: region, account: account, resourceType: type, name: name, version: version).description
    }

    /// A reference as the file gives it (ARN, `name/1.x.x` or `name`) as an ARN on the server.
    func reference(_ text: String, _ type: String) throws -> String {
        if text.hasPrefix("arn:") { return text }
        let parsed = try ResourceReference(text, resourceType: type)
        let versioned = ["component", "image-recipe", "container-recipe"].contains(type)
        return arn(type, parsed.name, versioned ? (parsed.selector?.description ?? "x.x.x") : nil)
    }

    /// A definition as API input: the same field names, without Kiln's own fields.
    func input(_ value: some Encodable) throws -> Object {
        let data = try JSONEncoder().encode(value)
        var object = (try JSONValue(parsing: data)).object ?? [:]
        object["kilnTests"] = nil
        object["kilnCache"] = nil
        return object
    }

    func existing(_ operation: String, _ member: String, _ arn: String, result: String) async throws -> Object? {
        do {
            return try await client.call(operation, [member: .string(arn)])[result]?.object
        } catch let error as KilnError where error.code == .notFound {
            return nil
        }
    }

    /// Whether every field being sent already has that value on the server.
    func same(_ sent: Object, _ current: Object, ignoring: Set<String> = []) -> Bool {
        sent.allSatisfy { key, value in ignoring.contains(key) || current[key] == value || (key == "tags" && value == [:]) }
    }

    func apply(_ definitions: Definitions) async throws -> [String] {
        var lines: [String] = []
        for component in definitions.components {
            var sent = try input(component)
            if let uri = component.uri, !uri.contains("://") {
                let path = uri.hasPrefix("/") ? uri : (folder.isEmpty ? "." : folder) + "/" + uri
                sent["data"] = .string(try String(contentsOfFile: path, encoding: .utf8))
                sent["uri"] = nil
            }
            let label = "component \(component.name) \(component.semanticVersion)"
            let current = try await existing(
                "GetComponent", "componentBuildVersionArn", arn("component", component.name, "\(component.semanticVersion)"),
                result: "component")
            if let current, current["data"] == sent["data"] {
                lines.append("\(label): unchanged (\(current["arn"]?.string ?? ""))")
                continue
            }
            let created = try await client.call("CreateComponent", sent)
            lines.append(
                "\(label): \(current == nil ? "created" : "new build, the document changed") (\(created["componentBuildVersionArn"]?.string ?? ""))"
            )
        }
        for (kind, recipes) in [
            ("image-recipe", try definitions.imageRecipes.map { ($0.name, $0.semanticVersion, try input($0)) }),
            ("container-recipe", try definitions.containerRecipes.map { ($0.name, $0.semanticVersion, try input($0)) }),
        ] {
            let (get, create, member) =
                kind == "image-recipe"
                ? ("GetImageRecipe", "CreateImageRecipe", "imageRecipe")
                : ("GetContainerRecipe", "CreateContainerRecipe", "containerRecipe")
            for (name, version, definition) in recipes {
                var sent = definition
                sent["components"] = .array(
                    try (definition["components"]?.array ?? []).map { configuration in
                        var object = configuration.object ?? [:]
                        object["componentArn"] = .string(try reference(object["componentArn"]?.string ?? "", "component"))
                        return .object(object)
                    })
                if kind == "container-recipe", sent["containerType"] == nil { sent["containerType"] = "DOCKER" }
                let label = "\(kind.replacingOccurrences(of: "-", with: " ")) \(name) \(version)"
                let recipeArn = arn(kind, name, "\(version)")
                if let current = try await existing(get, member + "Arn", recipeArn, result: member) {
                    guard same(sent, current, ignoring: ["semanticVersion", "tags"]) else {
                        throw KilnError(
                            .alreadyExists,
                            "\(label) exists on the server with other content, and recipes cannot change; raise its semanticVersion in \(folder.isEmpty ? "the file" : folder)"
                        )
                    }
                    lines.append("\(label): unchanged (\(recipeArn))")
                    continue
                }
                _ = try await client.call(create, sent)
                lines.append("\(label): created (\(recipeArn))")
            }
        }
        for infrastructure in definitions.infrastructureConfigurations {
            var sent = try input(infrastructure)
            if sent["instanceProfileName"] == nil { sent["instanceProfileName"] = "kiln" }
            lines.append(
                try await upsert(
                    "infrastructure-configuration", "InfrastructureConfiguration", name: infrastructure.name, sent: sent))
        }
        for distribution in definitions.distributionConfigurations {
            lines.append(
                try await upsert(
                    "distribution-configuration", "DistributionConfiguration", name: distribution.name, sent: try input(distribution)))
        }
        for pipeline in definitions.imagePipelines {
            var sent = try input(pipeline)
            if let recipe = pipeline.imageRecipeArn { sent["imageRecipeArn"] = .string(try reference(recipe, "image-recipe")) }
            if let recipe = pipeline.containerRecipeArn { sent["containerRecipeArn"] = .string(try reference(recipe, "container-recipe")) }
            sent["infrastructureConfigurationArn"] = .string(
                try reference(pipeline.infrastructureConfigurationArn, "infrastructure-configuration"))
            if let distribution = pipeline.distributionConfigurationArn {
                sent["distributionConfigurationArn"] = .string(try reference(distribution, "distribution-configuration"))
            }
            lines.append(try await upsert("image-pipeline", "ImagePipeline", name: pipeline.name, sent: sent))
        }
        return lines
    }

    /// Creates the configuration or pipeline, or updates it when a field differs.
    func upsert(_ type: String, _ operation: String, name: String, sent: Object) async throws -> String {
        let member = operation.prefix(1).lowercased() + operation.dropFirst()
        let resourceArn = arn(type, name)
        let label = "\(type.replacingOccurrences(of: "-", with: " ")) \(name)"
        guard let current = try await existing("Get" + operation, member + "Arn", resourceArn, result: member) else {
            _ = try await client.call("Create" + operation, sent)
            return "\(label): created (\(resourceArn))"
        }
        if same(sent, current, ignoring: ["name", "tags"]) { return "\(label): unchanged (\(resourceArn))" }
        var update = sent
        update["name"] = nil
        update["tags"] = nil
        update[member + "Arn"] = .string(resourceArn)
        _ = try await client.call("Update" + operation, update)
        return "\(label): updated (\(resourceArn))"
    }
}
