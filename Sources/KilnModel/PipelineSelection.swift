/// Image Builder's image types.
public enum ImageType: String, Sendable, Codable, Hashable {
    /// A container image (a container recipe).
    case docker = "DOCKER"
    /// A machine image (an image recipe).
    case ami = "AMI"
}

/// One image pipeline and every resource it names, looked up once: what a run needs from a
/// definitions file, with no lookups left to fail later.
public struct PipelineSelection: Sendable {
    /// What BUILD needs of a container recipe or an image recipe. An image recipe (a machine
    /// image) is built the same way up to its root filesystem, with the canonical template.
    public struct Recipe: Sendable {
        public var name: String
        public var semanticVersion: SemanticVersion
        public var parentImage: String
        public var dockerfileTemplateData: String?
        public var imageType: ImageType
        /// Where the TOE keeps scripts and downloads in the instances (recipe's workingDirectory).
        public var workingDirectory: String? = nil
        /// An image recipe's volumes and AMI tags.
        public var blockDeviceMappings: [BlockDeviceMapping] = []
        public var amiTags: [String: String] = [:]

        /// The root volume's size in GiB: the first mapping that sets `ebs.volumeSize`.
        public var rootVolumeGiB: Int? { blockDeviceMappings.lazy.compactMap { $0.ebs?.volumeSize }.first }
    }

    /// A component as the recipe configures it.
    public struct Component: Sendable {
        public var definition: ComponentDefinition
        public var parameters: [ComponentParameter]
    }

    public var pipeline: ImagePipelineDefinition
    public var recipe: Recipe
    public var components: [Component]
    public var infrastructure: InfrastructureConfigurationDefinition
    public var distribution: DistributionConfigurationDefinition?
}

extension Definitions {
    /// The pipeline called `name`, or the only one when `name` is nil, with everything it names.
    /// Checks every reference first, so each problem names the file and the field.
    public func selectPipeline(_ name: String?, source: String) throws -> PipelineSelection {
        let pipeline: ImagePipelineDefinition
        if let name {
            guard let named = imagePipelines.first(where: { $0.name == name }) else {
                throw KilnError(
                    .notFound, "\(source) has no image pipeline '\(name)'; it has: \(imagePipelines.map(\.name).joined(separator: ", "))")
            }
            pipeline = named
        } else {
            guard imagePipelines.count == 1 else {
                throw KilnError(
                    .invalidArgument,
                    "\(source) has \(imagePipelines.count) pipelines; choose one with --pipeline (\(imagePipelines.map(\.name).joined(separator: ", ")))"
                )
            }
            pipeline = imagePipelines[0]
        }
        try validateReferences(source: source)
        let (recipe, configurations) = try selectRecipe(of: pipeline)
        var components: [PipelineSelection.Component] = []
        for configuration in configurations {
            let reference = try ResourceReference(configuration.componentArn, resourceType: "component")
            guard let definition = component(reference) else {
                throw KilnError(.notFound, "\(source): recipe \(recipe.name): no component matches \(reference)")
            }
            components.append(.init(definition: definition, parameters: configuration.parameters ?? []))
        }
        let infrastructureName = try ResourceReference(
            pipeline.infrastructureConfigurationArn, resourceType: "infrastructure-configuration"
        ).name
        guard
            let infrastructure = infrastructureConfigurations.first(where: { ImageBuilderARN.normalizedName($0.name) == infrastructureName }
            )
        else {
            throw KilnError(
                .notFound,
                "\(source): pipeline \(pipeline.name): infrastructureConfigurationArn \(pipeline.infrastructureConfigurationArn) is not defined"
            )
        }
        var distribution: DistributionConfigurationDefinition?
        if let text = pipeline.distributionConfigurationArn {
            let distributionName = try ResourceReference(text, resourceType: "distribution-configuration").name
            guard let found = distributionConfigurations.first(where: { ImageBuilderARN.normalizedName($0.name) == distributionName })
            else {
                throw KilnError(.notFound, "\(source): pipeline \(pipeline.name): distributionConfigurationArn \(text) is not defined")
            }
            distribution = found
        }
        return PipelineSelection(
            pipeline: pipeline, recipe: recipe, components: components, infrastructure: infrastructure, distribution: distribution)
    }

    /// The newest recipe the pipeline's recipe reference selects, and its component configurations.
    func selectRecipe(of pipeline: ImagePipelineDefinition) throws -> (PipelineSelection.Recipe, [ComponentConfiguration]) {
        func pick<Recipe>(
            _ text: String, _ resourceType: String, from recipes: [Recipe], name: (Recipe) -> String, version: (Recipe) -> SemanticVersion
        ) throws -> Recipe {
            let reference = try ResourceReference(text, resourceType: resourceType)
            let candidates = recipes.filter { ImageBuilderARN.normalizedName(name($0)) == reference.name }
            let versions = candidates.map { BuildVersion(version($0), build: 1) }
            let chosen = reference.selector.map { $0.select(from: versions) } ?? versions.max()
            guard let recipe = candidates.first(where: { BuildVersion(version($0), build: 1) == chosen }) else {
                throw KilnError(
                    .notFound,
                    "pipeline \(pipeline.name): no \(resourceType) matches \(text); there are: \(candidates.map { "\(name($0))/\(version($0))" }.joined(separator: ", "))"
                )
            }
            return recipe
        }
        if let text = pipeline.containerRecipeArn {
            let recipe = try pick(text, "container-recipe", from: containerRecipes, name: \.name, version: \.semanticVersion)
            return (
                .init(
                    name: recipe.name, semanticVersion: recipe.semanticVersion, parentImage: recipe.parentImage,
                    dockerfileTemplateData: recipe.dockerfileTemplateData, imageType: .docker, workingDirectory: recipe.workingDirectory),
                recipe.components ?? []
            )
        }
        guard let text = pipeline.imageRecipeArn else {
            throw KilnError(.invalidDocument, "pipeline \(pipeline.name) needs containerRecipeArn or imageRecipeArn")
        }
        let recipe = try pick(text, "image-recipe", from: imageRecipes, name: \.name, version: \.semanticVersion)
        return (
            .init(
                name: recipe.name, semanticVersion: recipe.semanticVersion, parentImage: recipe.parentImage, dockerfileTemplateData: nil,
                imageType: .ami, workingDirectory: recipe.workingDirectory, blockDeviceMappings: recipe.blockDeviceMappings ?? [],
                amiTags: recipe.amiTags ?? [:]), recipe.components ?? []
        )
    }
}
