import Foundation
import Yams

/// A Kiln definitions file: Image Builder resources in YAML, with the API's field names
/// (camelCase), so the same JSON moves between a Kiln file and `aws imagebuilder` calls.
/// References between resources are ARNs (with `x` wildcards) or plain names.
public struct Definitions: Sendable, Hashable, Codable {
    public var components: [ComponentDefinition] = []
    public var containerRecipes: [ContainerRecipeDefinition] = []
    public var imageRecipes: [ImageRecipeDefinition] = []
    public var infrastructureConfigurations: [InfrastructureConfigurationDefinition] = []
    public var distributionConfigurations: [DistributionConfigurationDefinition] = []
    public var imagePipelines: [ImagePipelineDefinition] = []

    public init() {}

    public init(from decoder: Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        components = try container.decodeIfPresent([ComponentDefinition].self, forKey: .components) ?? []
        containerRecipes = try container.decodeIfPresent([ContainerRecipeDefinition].self, forKey: .containerRecipes) ?? []
        imageRecipes = try container.decodeIfPresent([ImageRecipeDefinition].self, forKey: .imageRecipes) ?? []
        infrastructureConfigurations =
            try container.decodeIfPresent([InfrastructureConfigurationDefinition].self, forKey: .infrastructureConfigurations) ?? []
        distributionConfigurations =
            try container.decodeIfPresent([DistributionConfigurationDefinition].self, forKey: .distributionConfigurations) ?? []
        imagePipelines = try container.decodeIfPresent([ImagePipelineDefinition].self, forKey: .imagePipelines) ?? []
    }

    enum CodingKeys: String, CodingKey {
        case components, containerRecipes, imageRecipes, infrastructureConfigurations, distributionConfigurations, imagePipelines
    }
}

public struct ComponentParameter: Sendable, Hashable, Codable {
    public var name: String
    public var value: [String]
}

public struct ComponentConfiguration: Sendable, Hashable, Codable {
    /// An ARN (`…:component/name/1.x.x`) or `name/1.x.x`.
    public var componentArn: String
    public var parameters: [ComponentParameter]?
}

public struct ComponentDefinition: Sendable, Hashable, Codable {
    public var name: String
    public var semanticVersion: SemanticVersion
    public var platform: String
    public var description: String?
    public var changeDescription: String?
    public var supportedOsVersions: [String]?
    /// The AWSTOE document inline.
    public var data: String?
    /// A document file relative to the definitions file, or an https URL.
    public var uri: String?
    public var tags: [String: String]?
}

public struct TargetContainerRepository: Sendable, Hashable, Codable {
    public var service: String?
    public var repositoryName: String
}

public struct ContainerRecipeDefinition: Sendable, Hashable, Codable {
    public var name: String
    public var semanticVersion: SemanticVersion
    public var containerType: String?
    public var description: String?
    public var parentImage: String
    public var components: [ComponentConfiguration]?
    public var dockerfileTemplateData: String?
    public var dockerfileTemplateUri: String?
    public var platformOverride: String?
    public var targetRepository: TargetContainerRepository?
    public var workingDirectory: String?
    public var tags: [String: String]?
}

public struct ImageRecipeDefinition: Sendable, Hashable, Codable {
    public var name: String
    public var semanticVersion: SemanticVersion
    public var description: String?
    public var parentImage: String
    public var components: [ComponentConfiguration]?
    /// Where the TOE puts its scripts and downloads during build and test.
    public var workingDirectory: String?
    /// The root volume's size (the first mapping with `ebs.volumeSize`) sizes the disk.
    public var blockDeviceMappings: [BlockDeviceMapping]?
    /// Tags the machine image gets, as Image Builder puts them on the AMI.
    public var amiTags: [String: String]?
    public var tags: [String: String]?
}

/// An image recipe's volume, as Image Builder's InstanceBlockDeviceMapping. Kiln's disk has one
/// volume: the root; the other fields are accepted and listed as ignored in the build log.
public struct BlockDeviceMapping: Sendable, Hashable, Codable {
    public struct Volume: Sendable, Hashable, Codable {
        /// GiB.
        public var volumeSize: Int?
        public var volumeType: String?
        public var deleteOnTermination: Bool?
        public var encrypted: Bool?
        public var iops: Int?
        public var throughput: Int?
        public var kmsKeyId: String?
        public var snapshotId: String?
    }
    public var deviceName: String?
    public var ebs: Volume?
    public var virtualName: String?
    public var noDevice: String?
}

public struct InfrastructureConfigurationDefinition: Sendable, Hashable, Codable {
    public var name: String
    public var description: String?
    public var instanceTypes: [String]?
    public var instanceProfileName: String?
    public var terminateInstanceOnFailure: Bool?
    public var resourceTags: [String: String]?
    public var tags: [String: String]?
}

public struct ContainerDistributionConfiguration: Sendable, Hashable, Codable {
    public var description: String?
    public var containerTags: [String]?
    public var targetRepository: TargetContainerRepository
}

public struct Distribution: Sendable, Hashable, Codable {
    /// A region named in kiln.yaml's `regions:`.
    public var region: String
    public var containerDistributionConfiguration: ContainerDistributionConfiguration?
    /// A machine image's distribution: its disk is copied to the region's image store.
    public var amiDistributionConfiguration: AmiDistributionConfiguration?
}

/// What a region's copy of a machine image is called and tagged. Kiln honours name,
/// description and amiTags; targetAccountIds, kmsKeyId and launchPermission have no meaning in
/// an image store and are listed as ignored in the log.
public struct AmiDistributionConfiguration: Sendable, Hashable, Codable {
    public struct LaunchPermission: Sendable, Hashable, Codable {
        public var userIds: [String]?
        public var userGroups: [String]?
        public var organizationArns: [String]?
        public var organizationalUnitArns: [String]?
    }
    /// May hold `{{ imagebuilder:buildDate }}` and `{{ imagebuilder:buildVersion }}`.
    public var name: String?
    public var description: String?
    public var amiTags: [String: String]?
    public var targetAccountIds: [String]?
    public var kmsKeyId: String?
    public var launchPermission: LaunchPermission?
}

public struct DistributionConfigurationDefinition: Sendable, Hashable, Codable {
    public var name: String
    public var description: String?
    public var distributions: [Distribution]
    public var tags: [String: String]?
}

public struct ImageTestsConfiguration: Sendable, Hashable, Codable {
    public var imageTestsEnabled: Bool?
    public var timeoutMinutes: Int?
}

/// Kiln's built-in test suites (not an Image Builder field): they run in TEST after the
/// components' test phases. Functionality and security run unless switched off; health runs
/// when a command or an HTTP port is given.
public struct KilnTests: Sendable, Hashable, Codable {
    /// The image's entrypoint and cmd (or `command`) must exit 0, or still run after
    /// `runForSeconds` (default 3).
    public struct Functionality: Sendable, Hashable, Codable {
        public var enabled: Bool?
        public var command: [String]?
        public var runForSeconds: Int?
        /// A machine image's test VM must answer SSH this many seconds after QEMU starts (default
        /// 300); a boot that does not is FAILED with its serial log.
        public var bootSeconds: Int?
    }

    public struct Security: Sendable, Hashable, Codable {
        /// No pending security updates where apt, dnf or apk exists (checked online, in a
        /// throwaway instance with the host's network).
        public var pendingUpdates: Bool?
        /// No world-writable files, or folders without the sticky bit, outside tmp folders.
        public var worldWritable: Bool?
        /// No SUID/SGID file added or changed by the build's layers.
        public var setuid: Bool?
        /// No private keys or cloud credentials in the build's layers (deleted files included).
        public var secrets: Bool?
    }

    /// With the image's entrypoint and cmd running: `command` exits 0, or
    /// `http://127.0.0.1:httpPort/httpPath` answers `expectStatus` (default 200), within
    /// `startupSeconds` (default 10).
    public struct Health: Sendable, Hashable, Codable {
        public var command: [String]?
        public var httpPort: Int?
        public var httpPath: String?
        public var expectStatus: Int?
        public var startupSeconds: Int?
    }

    public var functionality: Functionality?
    public var security: Security?
    public var health: Health?

    /// The defaults: functionality and security suites, no health check.
    public init() {}
}

/// How the build cache treats a pipeline's steps (a Kiln field, not sent to Image Builder).
public struct KilnCache: Sendable, Hashable, Codable {
    /// `check` (the default): before cached steps that installed packages are reused, the image's
    /// package sources are asked for upgrades, and the steps run again if there are any.
    /// `ignore`: reuse them regardless, for images that pin their package versions.
    public enum PackageUpdates: String, Sendable, Hashable, Codable {
        case check, ignore

        public init(from decoder: Decoder) throws {
            let text = try decoder.singleValueContainer().decode(String.self)
            guard let value = PackageUpdates(rawValue: text) else {
                throw DecodingError.dataCorrupted(
                    .init(codingPath: decoder.codingPath, debugDescription: "'\(text)' is not a choice; use check or ignore"))
            }
            self = value
        }
    }

    public var packageUpdates: PackageUpdates?

    public init(packageUpdates: PackageUpdates? = nil) {
        self.packageUpdates = packageUpdates
    }
}

public struct Schedule: Sendable, Hashable, Codable {
    public var scheduleExpression: String?
    public var timezone: String?
    public var pipelineExecutionStartCondition: String?
}

public struct ImagePipelineDefinition: Sendable, Hashable, Codable {
    public var name: String
    public var description: String?
    public var containerRecipeArn: String?
    public var imageRecipeArn: String?
    public var infrastructureConfigurationArn: String
    public var distributionConfigurationArn: String?
    public var imageTestsConfiguration: ImageTestsConfiguration?
    /// Kiln's own test suites; not sent to Image Builder.
    public var kilnTests: KilnTests?
    /// Kiln's build-cache settings; not sent to Image Builder.
    public var kilnCache: KilnCache?
    public var schedule: Schedule?
    public var status: String?
    public var tags: [String: String]?
}

extension Definitions {
    /// The keys each kind of mapping may hold, by path (`[]` for any list item). Unknown keys are
    /// errors, as in the API, so a typo never silently does nothing.
    static let schema: [String: Set<String>] = [
        "": [
            "components", "containerRecipes", "imageRecipes", "infrastructureConfigurations", "distributionConfigurations",
            "imagePipelines",
        ],
        "components[]": [
            "name", "semanticVersion", "platform", "description", "changeDescription", "supportedOsVersions", "data", "uri", "tags",
            "kmsKeyId",
        ],
        "containerRecipes[]": [
            "name", "semanticVersion", "containerType", "description", "parentImage", "components", "dockerfileTemplateData",
            "dockerfileTemplateUri", "platformOverride", "targetRepository", "workingDirectory", "tags", "imageOsVersionOverride",
            "instanceConfiguration", "kmsKeyId",
        ],
        "containerRecipes[].components[]": ["componentArn", "parameters"],
        "containerRecipes[].components[].parameters[]": ["name", "value"],
        "containerRecipes[].targetRepository": ["service", "repositoryName"],
        "imageRecipes[]": [
            "name", "semanticVersion", "description", "parentImage", "components", "workingDirectory", "tags",
            "blockDeviceMappings", "additionalInstanceConfiguration", "amiTags",
        ],
        "imageRecipes[].components[]": ["componentArn", "parameters"],
        "imageRecipes[].blockDeviceMappings[]": ["deviceName", "ebs", "virtualName", "noDevice"],
        "imageRecipes[].blockDeviceMappings[].ebs": [
            "volumeSize", "volumeType", "deleteOnTermination", "encrypted", "iops", "throughput", "kmsKeyId", "snapshotId",
        ],
        "imageRecipes[].components[].parameters[]": ["name", "value"],
        "infrastructureConfigurations[]": [
            "name", "description", "instanceTypes", "instanceProfileName", "terminateInstanceOnFailure",
            "resourceTags", "tags", "securityGroupIds", "subnetId", "keyPair", "snsTopicArn", "logging",
            "instanceMetadataOptions", "placement",
        ],
        "distributionConfigurations[]": ["name", "description", "distributions", "tags"],
        "distributionConfigurations[].distributions[]": ["region", "containerDistributionConfiguration", "amiDistributionConfiguration"],
        "distributionConfigurations[].distributions[].amiDistributionConfiguration": [
            "name", "description", "amiTags", "targetAccountIds", "kmsKeyId", "launchPermission",
        ],
        "distributionConfigurations[].distributions[].amiDistributionConfiguration.launchPermission": [
            "userIds", "userGroups", "organizationArns", "organizationalUnitArns",
        ],
        "distributionConfigurations[].distributions[].containerDistributionConfiguration": [
            "description", "containerTags", "targetRepository",
        ],
        "distributionConfigurations[].distributions[].containerDistributionConfiguration.targetRepository": ["service", "repositoryName"],
        "imagePipelines[]": [
            "name", "description", "containerRecipeArn", "imageRecipeArn", "infrastructureConfigurationArn",
            "distributionConfigurationArn", "imageTestsConfiguration", "schedule", "status", "tags",
            "enhancedImageMetadataEnabled", "imageScanningConfiguration", "workflows", "executionRole", "imageTags", "kilnTests",
            "kilnCache",
        ],
        "imagePipelines[].kilnCache": ["packageUpdates"],
        "imagePipelines[].kilnTests": ["functionality", "security", "health"],
        "imagePipelines[].kilnTests.functionality": ["enabled", "command", "runForSeconds", "bootSeconds"],
        "imagePipelines[].kilnTests.security": ["pendingUpdates", "worldWritable", "setuid", "secrets"],
        "imagePipelines[].kilnTests.health": ["command", "httpPort", "httpPath", "expectStatus", "startupSeconds"],
        "imagePipelines[].imageTestsConfiguration": ["imageTestsEnabled", "timeoutMinutes"],
        "imagePipelines[].schedule": ["scheduleExpression", "timezone", "pipelineExecutionStartCondition", "autoDisablePolicy"],
    ]

    /// Parses a definitions file. Every problem names file:line and the field's path
    /// (`containerRecipes[0].components[1].componentArn`) and says what is allowed.
    public static func parse(text: String, source: String) throws -> Definitions {
        try YAMLBounds.check(text, source: source, what: "definitions file")
        let root: Node
        do {
            guard let composed = try Yams.compose(yaml: text) else { return Definitions() }
            root = composed
        } catch {
            throw KilnError(.invalidDocument, "\(source) is not valid YAML: \(error)")
        }
        var problems: [DocumentIssue] = []
        checkKeys(root, schemaPath: "", fieldPath: "", source: source, problems: &problems)
        if !problems.isEmpty {
            throw KilnError(.invalidDocument, "\(source): \(problems.count) problem(s) found", issues: problems)
        }
        do {
            return try YAMLDecoder().decode(Definitions.self, from: root)
        } catch let error as DecodingError {
            throw describe(error, root: root, source: source)
        } catch let error as KilnError {
            // A value's own check (a semantic version) failed; say where.
            throw KilnError(error.code, "\(source): \(error.message)")
        }
    }

    public static func load(path: String) throws -> Definitions {
        return try parse(text: YAMLBounds.readText(path, what: "definitions file"), source: path)
    }

    private static func checkKeys(_ node: Node, schemaPath: String, fieldPath: String, source: String, problems: inout [DocumentIssue]) {
        switch node {
        case .mapping(let mapping):
            let allowed = schema[schemaPath]
            for (key, value) in mapping {
                guard let name = key.string else { continue }
                let childField = fieldPath.isEmpty ? name : fieldPath + "." + name
                if let allowed, !allowed.contains(name) {
                    let mark = key.mark
                    let hint =
                        allowed.sorted().min { distance($0, name) < distance($1, name) }.map {
                            distance($0, name) <= 3 ? " (did you mean '\($0)'?)" : ""
                        } ?? ""
                    problems.append(
                        DocumentIssue(
                            SourceLocation(file: source, line: mark?.line ?? 1, column: mark?.column ?? 1),
                            stepPath: fieldPath.isEmpty ? nil : fieldPath,
                            "unknown field '\(name)'\(hint); allowed: \(allowed.sorted().joined(separator: ", "))"))
                    continue
                }
                checkKeys(
                    value, schemaPath: schemaPath.isEmpty ? name : schemaPath + "." + name, fieldPath: childField, source: source,
                    problems: &problems)
            }
        case .sequence(let sequence):
            for (index, item) in sequence.enumerated() {
                checkKeys(item, schemaPath: schemaPath + "[]", fieldPath: "\(fieldPath)[\(index)]", source: source, problems: &problems)
            }
        default:
            break
        }
    }

    /// Edit distance, for suggestions.
    static func distance(_ a: String, _ b: String) -> Int {
        let a = Array(a.lowercased()), b = Array(b.lowercased())
        var previous = Array(0...b.count)
        for (i, x) in a.enumerated() {
            var current = [i + 1]
            for (j, y) in b.enumerated() {
                current.append(min(previous[j + 1] + 1, current[j] + 1, previous[j] + (x == y ? 0 : 1)))
            }
            previous = current
        }
        return previous[b.count]
    }

    private static func describe(_ error: DecodingError, root: Node, source: String) -> KilnError {
        let (path, message): ([CodingKey], String)
        switch error {
        case .keyNotFound(let key, let context):
            path = context.codingPath
            message = "'\(key.stringValue)' is required here"
        case .typeMismatch(let type, let context), .valueNotFound(let type, let context):
            path = context.codingPath
            message = "expected \(Self.name(of: type)): \(context.debugDescription)"
        case .dataCorrupted(let context):
            path = context.codingPath
            message = context.debugDescription
        @unknown default:
            return KilnError(.invalidDocument, "\(source): \(error)")
        }
        var node: Node? = root
        var field = ""
        for key in path {
            if let index = key.intValue {
                field += "[\(index)]"
                node = node?.sequence.flatMap { index < $0.count ? $0[index] : nil }
            } else {
                field += field.isEmpty ? key.stringValue : "." + key.stringValue
                node = node?.mapping?[key.stringValue]
            }
        }
        let mark = node?.mark
        return KilnError(.invalidDocument, "\(source):\(mark?.line ?? 1): \(field.isEmpty ? "" : field + ": ")\(message)")
    }

    private static func name(of type: Any.Type) -> String {
        switch type {
        case is String.Type: "a string"
        case is Bool.Type: "true or false"
        case is Int.Type: "a whole number"
        case is [String].Type, is [Any].Type: "a list"
        default: "\(type)"
        }
    }
}

/// A reference from one resource to another: an ARN, or the short `name[/version]` form.
public struct ResourceReference: Sendable, Hashable, CustomStringConvertible {
    public var resourceType: String
    public var name: String
    public var selector: VersionSelector?

    public init(_ text: String, resourceType: String) throws {
        self.resourceType = resourceType
        if text.hasPrefix("arn:") {
            let arn = try ImageBuilderARN(parsing: text)
            guard arn.resourceType == resourceType else {
                throw KilnError(.invalidArgument, "'\(text)' is a \(arn.resourceType) ARN where a \(resourceType) is expected")
            }
            name = arn.name
            selector = try arn.version.map(VersionSelector.init(parsing:))
        } else {
            let parts = text.split(separator: "/", maxSplits: 1).map(String.init)
            guard let first = parts.first, !first.isEmpty else { throw KilnError(.invalidArgument, "an empty \(resourceType) reference") }
            name = ImageBuilderARN.normalizedName(first)
            selector = try parts.count > 1 ? VersionSelector(parsing: parts[1]) : nil
        }
    }

    public var description: String { name + (selector.map { "/\($0)" } ?? "") }
}

extension Definitions {
    /// The newest defined component the reference selects.
    public func component(_ reference: ResourceReference) -> ComponentDefinition? {
        let candidates = components.filter { ImageBuilderARN.normalizedName($0.name) == reference.name }
        guard let selector = reference.selector else { return candidates.max { $0.semanticVersion < $1.semanticVersion } }
        let chosen = selector.select(from: candidates.map { BuildVersion($0.semanticVersion, build: 1) })
        return candidates.first { BuildVersion($0.semanticVersion, build: 1) == chosen }
    }

    /// Checks that every reference between resources names something defined here, and that
    /// each resource has what it needs. Collects every problem.
    public func validateReferences(source: String) throws {
        var problems: [String] = resourceNameProblems()
        for (index, recipe) in containerRecipes.enumerated() {
            for (position, configuration) in (recipe.components ?? []).enumerated() {
                let place = "containerRecipes[\(index)] (\(recipe.name)).components[\(position)]"
                do {
                    let reference = try ResourceReference(configuration.componentArn, resourceType: "component")
                    if component(reference) == nil {
                        problems.append(
                            "\(place): no component matches \(reference); defined: \(components.map { "\($0.name)/\($0.semanticVersion)" }.joined(separator: ", "))"
                        )
                    }
                } catch let error as KilnError {
                    problems.append("\(place): \(error.message)")
                }
            }
            if recipe.dockerfileTemplateData != nil && recipe.dockerfileTemplateUri != nil {
                problems.append(
                    "containerRecipes[\(index)] (\(recipe.name)): give dockerfileTemplateData or dockerfileTemplateUri, not both")
            }
        }
        for (index, component) in components.enumerated() where (component.data == nil) == (component.uri == nil) {
            problems.append(
                "components[\(index)] (\(component.name)): give exactly one of data (the document inline) or uri (a file or https URL)")
        }
        for (index, pipeline) in imagePipelines.enumerated() {
            let place = "imagePipelines[\(index)] (\(pipeline.name))"
            switch (pipeline.containerRecipeArn, pipeline.imageRecipeArn) {
            case (let container?, nil):
                if let reference = try? ResourceReference(container, resourceType: "container-recipe") {
                    let matches = containerRecipes.filter { ImageBuilderARN.normalizedName($0.name) == reference.name }
                    if reference.selector.map({ selector in
                        !matches.contains { selector.matches(BuildVersion($0.semanticVersion, build: 1)) }
                    }) ?? matches.isEmpty {
                        problems.append("\(place): containerRecipeArn \(reference) matches no container recipe")
                    }
                } else {
                    problems.append("\(place): containerRecipeArn '\(container)' is not a container-recipe ARN or name/version")
                }
            case (nil, let image?):
                if (try? ResourceReference(image, resourceType: "image-recipe")).map({ reference in
                    imageRecipes.contains { ImageBuilderARN.normalizedName($0.name) == reference.name }
                }) != true {
                    problems.append("\(place): imageRecipeArn \(image) matches no image recipe")
                }
            default:
                problems.append("\(place): give exactly one of containerRecipeArn or imageRecipeArn")
            }
            let infrastructure =
                (try? ResourceReference(pipeline.infrastructureConfigurationArn, resourceType: "infrastructure-configuration"))?.name
            if !infrastructureConfigurations.contains(where: { ImageBuilderARN.normalizedName($0.name) == infrastructure }) {
                problems.append("\(place): infrastructureConfigurationArn \(pipeline.infrastructureConfigurationArn) is not defined")
            }
            if let distribution = pipeline.distributionConfigurationArn {
                let name = (try? ResourceReference(distribution, resourceType: "distribution-configuration"))?.name
                if !distributionConfigurations.contains(where: { ImageBuilderARN.normalizedName($0.name) == name }) {
                    problems.append("\(place): distributionConfigurationArn \(distribution) is not defined")
                }
            }
        }
        if !problems.isEmpty {
            throw KilnError(
                .invalidDocument,
                "\(source): \(problems.count) reference problem(s):\n" + problems.map { "  " + $0 }.joined(separator: "\n"))
        }
    }
}
