#if canImport(Glibc)
import Glibc
#endif
import Foundation
import KilnInstances
import KilnModel
import KilnOCI
import KilnRegistry
import KilnTOE
import Synchronization

/// Runs one image pipeline once, as Image Builder does: BUILD in a builder instance from the
/// parent (components' build and validate phases, and the Dockerfile template's instructions),
/// snapshot; TEST in a fresh instance from the new image; DISTRIBUTE to every region at once.
/// The image record is saved at every state change.
public struct PipelineRun: Sendable {
    public struct Settings: Sendable {
        public var definitionsPath: String
        public var pipeline: String
        /// COPY and ADD read from here (default: the definitions file's folder).
        public var contextDirectory: String?
        public var sourceDateEpoch: Int64?
        /// Reuse the image of an earlier build with exactly the same inputs (no builder starts).
        public var useCache = true
        /// Take registry parents from the store and ask no package source (also kiln.yaml `offline: true`).
        public var offline = false

        public init(definitionsPath: String, pipeline: String, contextDirectory: String? = nil, sourceDateEpoch: Int64? = nil, useCache: Bool = true, offline: Bool = false) {
            self.useCache = useCache
            self.offline = offline
            self.definitionsPath = definitionsPath
            self.pipeline = pipeline
            self.contextDirectory = contextDirectory
            self.sourceDateEpoch = sourceDateEpoch
        }
    }

    public let configuration: KilnConfiguration
    public let host: InstanceHost
    public let transfer: ImageTransfer
    public let records: any ImageRecords
    /// Progress lines (stage, component, step).
    public let progress: @Sendable (String) -> Void

    /// `records` default to JSON files in the data directory.
    public init(configuration: KilnConfiguration, host: InstanceHost, transfer: ImageTransfer, records: (any ImageRecords)? = nil, progress: @escaping @Sendable (String) -> Void) throws {
        self.configuration = configuration
        self.host = host
        self.transfer = transfer
        self.records = try records ?? JSONImageRecords(dataDirectory: configuration.dataDirectory)
        self.progress = progress
    }

    /// What a run needs from the definitions, parsed and checked once.
    struct Prepared {
        var pipeline: ImagePipelineDefinition
        var recipe: SelectedRecipe
        var components: [RecipeComponent]
        var infrastructure: InfrastructureConfigurationDefinition
        var distribution: DistributionConfigurationDefinition?
        var type: InstanceType
        var template: DockerfileTemplate
        var sourceDateEpoch: Int64?
        var context: String
        var policy: PackageUpdatePolicy
    }

    func prepare(_ settings: Settings) async throws -> Prepared {
        let definitions = try Definitions.load(path: settings.definitionsPath)
        try definitions.validateReferences(source: settings.definitionsPath)
        guard let pipeline = definitions.imagePipelines.first(where: { $0.name == settings.pipeline }) else {
            throw KilnError(.notFound, "\(settings.definitionsPath) has no image pipeline '\(settings.pipeline)'; it has: \(definitions.imagePipelines.map(\.name).joined(separator: ", "))")
        }
        let recipe = try Self.recipe(of: pipeline, in: definitions)
        let base = (settings.definitionsPath as NSString).deletingLastPathComponent
        var components: [RecipeComponent] = []
        for entry in recipe.components ?? [] {
            let component = definitions.component(try ResourceReference(entry.componentArn, resourceType: "component"))!
            let (document, digest) = try await document(for: component, base: base.isEmpty ? "." : base)
            var parameters: [String: String] = [:]
            for parameter in entry.parameters ?? [] { parameters[parameter.name] = parameter.value.joined(separator: ",") }
            let arn = ImageBuilderARN(
                region: configuration.homeRegion, account: configuration.accountId, resourceType: "component",
                name: ImageBuilderARN.normalizedName(component.name), version: "\(component.semanticVersion)/1"
            )
            components.append(RecipeComponent(definition: component, arn: arn.description, run: TOEDocumentRun(document: document, parameters: parameters), documentDigest: digest))
        }
        let infrastructure = definitions.infrastructureConfigurations.first { ImageBuilderARN.normalizedName($0.name) == (try? ResourceReference(pipeline.infrastructureConfigurationArn, resourceType: "infrastructure-configuration"))?.name }!
        let distribution = pipeline.distributionConfigurationArn.flatMap { text in
            definitions.distributionConfigurations.first { ImageBuilderARN.normalizedName($0.name) == (try? ResourceReference(text, resourceType: "distribution-configuration"))?.name }
        }
        let types = try InstanceType.table(configured: configuration.instanceTypes)
        let type = try InstanceType.named(infrastructure.instanceTypes?.first ?? "t3.medium", in: types)
        let template = try DockerfileTemplate(
            parsing: recipe.dockerfileTemplateData ?? DockerfileTemplate.canonical, parentImage: recipe.parentImage, source: "\(recipe.name)/\(recipe.semanticVersion)"
        )
        // The flag wins over the recipe's own `ARG SOURCE_DATE_EPOCH=N`.
        let sourceDateEpoch = try settings.sourceDateEpoch ?? template.sourceDateEpoch(source: "\(recipe.name)/\(recipe.semanticVersion)")
        let offline = settings.offline || configuration.offline
        let policy: PackageUpdatePolicy = offline ? .offline : (pipeline.kilnCache?.packageUpdates == .ignore ? .ignore : .check)
        return Prepared(
            pipeline: pipeline, recipe: recipe, components: components, infrastructure: infrastructure, distribution: distribution, type: type,
            template: template, sourceDateEpoch: sourceDateEpoch, context: settings.contextDirectory ?? (base.isEmpty ? "." : base), policy: policy
        )
    }

    func builder(_ prepared: Prepared, logRoot: String, progress: @escaping @Sendable (String) -> Void) -> RecipeBuilder {
        RecipeBuilder(
            host: host, recipeLabel: "\(prepared.recipe.name)/\(prepared.recipe.semanticVersion)", template: prepared.template, components: prepared.components,
            type: prepared.type, logRoot: logRoot, context: prepared.context, sourceDateEpoch: prepared.sourceDateEpoch, progress: progress
        )
    }

    /// The parent named by a recipe, resolved afresh (see `ParentImageResolver`). An image ARN
    /// (`arn:aws:imagebuilder:…:image/NAME/x.x.x[/BUILD]`) names the newest AVAILABLE build of a
    /// Kiln image that matches, as Image Builder resolves a parent image version.
    func resolveParent(_ text: String, offline: Bool, lookOnly: Bool = false, progress: @escaping @Sendable (String) -> Void) async throws -> Descriptor {
        var text = text
        if text.hasPrefix("arn:") {
            let arn = try ImageBuilderARN(parsing: text)
            guard arn.resourceType == "image" else { throw KilnError(.invalidArgument, "parentImage \(text) is a \(arn.resourceType) ARN; name an image ARN") }
            let selector = try VersionSelector(parsing: arn.version ?? "x.x.x")
            let candidates = records.all().filter { $0.name == arn.name && $0.status == .available && $0.localName != nil }
            guard let chosen = selector.select(from: candidates.map { BuildVersion($0.version, build: $0.build) }),
                  let record = candidates.first(where: { BuildVersion($0.version, build: $0.build) == chosen }) else {
                throw KilnError(.notFound, "no AVAILABLE image matches \(text); see kiln images")
            }
            progress("parent \(text): image \(record.name)/\(record.version)/\(record.build)")
            text = "kiln:" + record.localName!
        }
        return try await ParentImageResolver(transfer: transfer, mirrors: configuration.bootstrapMirrors, observer: progress).resolve(text, offline: offline, lookOnly: lookOnly)
    }

    /// The newest earlier record of the same image name, to say what changed since.
    func previousRecord(name: String) -> ImageRecord? {
        records.all().filter { $0.name == name && $0.cacheDecisions != nil }.max { ($0.version, $0.build) < ($1.version, $1.build) }
    }

    /// `kiln build --explain-cache`: the parent's digest and each step's cache decision, with
    /// no builder, no image record and no distribution.
    public func explain(_ settings: Settings) async throws -> [String] {
        let prepared = try await prepare(settings)
        let parent = try await resolveParent(prepared.recipe.parentImage, offline: prepared.policy == .offline, lookOnly: true, progress: progress)
        let plan = try await builder(prepared, logRoot: host.dataDirectory + "/tmp", progress: progress).plan(
            parent: parent, useCache: settings.useCache, policy: prepared.policy,
            previous: previousRecord(name: ImageBuilderARN.normalizedName(prepared.recipe.name)), caCertificates: caCertificates, saveChecks: false
        )
        return ["parent \(prepared.recipe.parentImage): \(parent.digest)"] + plan.decisions.map(\.line)
    }

    /// Private CAs by host, for https package indexes and documents.
    var caCertificates: [String: String] {
        configuration.registries.compactMapValues(\.caCertificate)
    }

    /// Runs the pipeline; the returned record is AVAILABLE or FAILED (with stage, step, region and log).
    public func run(_ settings: Settings) async throws -> ImageRecord {
        let prepared = try await prepare(settings)
        let (pipeline, recipe, components, infrastructure, distribution, type) = (
            prepared.pipeline, prepared.recipe, prepared.components, prepared.infrastructure, prepared.distribution, prepared.type
        )

        let name = ImageBuilderARN.normalizedName(recipe.name)
        let build = try records.reserveBuild(name: name, version: recipe.semanticVersion)
        let folder = records.folder(name: name, version: recipe.semanticVersion, build: build)
        var record = ImageRecord(
            arn: ImageBuilderARN(region: configuration.homeRegion, account: configuration.accountId, resourceType: "image", name: name, version: "\(recipe.semanticVersion)/\(build)").description,
            name: name, version: recipe.semanticVersion, build: build, type: recipe.imageType, status: .pending, sourcePipelineName: pipeline.name,
            dateCreated: ISO8601DateFormatter().string(from: Date()), logDirectory: folder + "/logs"
        )
        try records.save(record)
        let progress = PipelineLog.tee(folder + "/logs/pipeline.log", self.progress)
        progress("image \(record.arn): PENDING")

        var stage = "BUILD"
        func enter(_ status: ImageStatus) throws {
            try Task.checkCancellation()
            record.status = status
            try records.save(record)
            progress("image \(name)/\(recipe.semanticVersion)/\(build): \(status.rawValue)")
        }
        /// FAILED, or CANCELLED when the failure came from an interrupt.
        func fail(_ stage: String, step: String? = nil, region: String? = nil, log: String? = nil, _ reason: String) throws -> ImageRecord {
            let cancelled = Task.isCancelled
            record.status = cancelled ? .cancelled : .failed
            record.failure = .init(stage: stage, step: step, region: region, log: log, reason: cancelled ? "cancelled by an interrupt; its instances were removed" : reason)
            try records.save(record)
            progress("image \(name)/\(recipe.semanticVersion)/\(build): \(record.status.rawValue) in \(stage)\(step.map { " at step \($0)" } ?? "")\(region.map { " for region \($0)" } ?? ""): \(record.failure!.reason)")
            return record
        }
        func charge(_ role: String, _ usage: ContainerInstance.Usage) {
            record.ledger = record.ledger ?? CostLedger()
            record.ledger!.charge(role: role, instanceType: type.name, seconds: usage.seconds, cpuSeconds: usage.cpuSeconds)
        }
        func timed<T>(_ stage: String, _ body: () async throws -> T) async rethrows -> T {
            let start = ContinuousClock.now
            defer {
                let elapsed = ContinuousClock.now - start
                record.timings.append(.init(stage: stage, seconds: elapsed.inSeconds))
            }
            return try await body()
        }

        func stages() async throws -> ImageRecord {
                // BUILD
            try enter(.creating)
            let parent: Descriptor
            let previous = previousRecord(name: name)
            do {
                parent = try await resolveParent(recipe.parentImage, offline: prepared.policy == .offline, progress: progress)
            } catch let error as KilnError {
                return try fail("BUILD", "the parent image \(recipe.parentImage) is not available: \(error.message)")
            }
            record.parentImage = recipe.parentImage
            record.parentDigest = parent.digest.description
            try records.save(record)
            progress("BUILD: parent \(recipe.parentImage): \(parent.digest)")
            if let unsupported = try supportedOsCheck(components, parent: parent) {
                return try fail("BUILD", step: unsupported.step, unsupported.reason)
            }
            try enter(.building)
            let localName = "\(name):\(recipe.semanticVersion)-\(build)"
            let builder = self.builder(prepared, logRoot: folder + "/logs", progress: progress)
            let outcome: RecipeBuilder.Outcome
            do {
                outcome = try await timed("BUILD") {
                    let plan = try await builder.plan(parent: parent, useCache: settings.useCache, policy: prepared.policy, previous: previous, caCertificates: caCertificates)
                    record.cacheDecisions = plan.decisions
                    record.packageUpdates = plan.packageUpdates.isEmpty ? nil : plan.packageUpdates
                    try records.save(record)
                    return try await builder.build(plan: plan, parent: parent, as: localName, keepOnFailure: infrastructure.terminateInstanceOnFailure == false, caCertificates: caCertificates)
                }
            } catch let failure as RecipeBuilder.StepFailure {
                return try fail("BUILD", step: failure.step, log: failure.log, failure.reason)
            }
            for check in outcome.checks { charge("package-check", check) }
            let built = outcome.image
            record.cacheHit = outcome.builtSteps == 0
            record.cachedSteps = outcome.reusedSteps
            record.builtSteps = outcome.builtSteps
            if let usage = outcome.builder {
                charge("builder", usage)
            }
            record.localName = localName
            record.digest = built.digest.description
            try records.save(record)

            // TEST
            stage = "TEST"
            if pipeline.imageTestsConfiguration?.imageTestsEnabled ?? true {
                try enter(.testing)
                do {
                    let parentLayers = try transfer.store.image(parent.digest).manifest.layers.count
                    let usages = try await timed("TEST") {
                        try await builder.test(
                            image: built, suites: pipeline.kilnTests ?? KilnTests(), parentLayers: parentLayers, imageLabel: record.arn,
                        hostTests: recipe.imageType == "DOCKER" ? ("kiln:" + localName, built.digest.description) : nil,
                            keepOnFailure: infrastructure.terminateInstanceOnFailure == false
                        )
                    }
                    for usage in usages { charge("test", usage) }
                    record.testResults = folder + "/logs/test/junit.xml"
                } catch let failure as RecipeBuilder.StepFailure {
                    if FileManager.default.fileExists(atPath: folder + "/logs/test/junit.xml") { record.testResults = folder + "/logs/test/junit.xml" }
                    return try fail("TEST", step: failure.step, log: failure.log, failure.reason)
                }
            }

            // DISTRIBUTE
            stage = "DISTRIBUTE"
            for entry in distribution?.distributions ?? [] {
                guard let region = configuration.regions[entry.region] else {
                    return try fail("DISTRIBUTE", region: entry.region, "region \(entry.region) is not defined in kiln.yaml's regions:")
                }
                if entry.amiDistributionConfiguration != nil {
                    progress("DISTRIBUTE: \(entry.region): amiDistributionConfiguration needs a disk image, which Kiln does not make yet; the root filesystem is kiln:\(localName)")
                }
                guard let container = entry.containerDistributionConfiguration else { continue }
                let repository = [region.repositoryPrefix, container.targetRepository.repositoryName].compactMap { $0 }.joined(separator: "/")
                for tag in container.containerTags ?? [recipe.semanticVersion.description] {
                    record.distributionTargets.append(.init(region: entry.region, reference: "\(region.registry)/\(repository):\(tag)"))
                }
            }
            return try await distribute(record)
        }
        do {
            return try await stages()
        } catch {
            let reason = error is CancellationError ? "cancelled" : (error as? KilnError)?.message ?? "\(error)"
            if let saved = try? records.find(record.arn), [.available, .failed, .cancelled].contains(saved.status) { return saved }
            return try fail(stage, reason)
        }
    }

    /// DISTRIBUTE, INTEGRATE and AVAILABLE for a built image; also what RetryImage runs again.
    public func distribute(_ built: ImageRecord) async throws -> ImageRecord {
        var record = built
        guard let localName = record.localName, try transfer.store.resolve(localName) != nil else {
            throw KilnError(.notFound, "image \(record.name)/\(record.version)/\(record.build) has no built image in Kiln's store to distribute; build it again")
        }
        let label = "\(record.name)/\(record.version)/\(record.build)"
        let progress = PipelineLog.tee(record.logDirectory + "/pipeline.log", self.progress)
        func enter(_ status: ImageStatus) throws {
            record.status = status
            try records.save(record)
            progress("image \(label): \(status.rawValue)")
        }
        record.failure = nil
        try enter(.distributing)
        if !record.distributionTargets.isEmpty {
            let locations = try record.distributionTargets.map { try ImageLocation($0.reference) }
            let start = ContinuousClock.now
            let result = try await transfer.copy(from: .store(name: localName), to: locations)
            let elapsed = ContinuousClock.now - start
            record.timings.append(.init(stage: "DISTRIBUTE", seconds: elapsed.inSeconds))
            let blobs = try imageBlobs(result.digest)
            var ledger = record.ledger ?? CostLedger()
            for region in Set(record.distributionTargets.map(\.region)).sorted() {
                let targets = Set(record.distributionTargets.filter { $0.region == region }.compactMap { try? ImageLocation($0.reference) })
                let destinations = result.destinations.filter { targets.contains($0.location) }
                let reached = !destinations.isEmpty && destinations.allSatisfy { $0.error == nil }
                ledger.distributed(to: region, blobs: reached ? blobs : [:], sentBytes: destinations.reduce(0) { $0 + $1.totals.bytes })
            }
            record.ledger = ledger
            if Task.isCancelled {
                record.status = .cancelled
                record.failure = .init(stage: "DISTRIBUTE", step: nil, region: nil, log: nil, reason: "cancelled by an interrupt during distribution")
                try records.save(record)
                progress("image \(label): CANCELLED in DISTRIBUTE; kiln image retry-distribution \(label) sends it again")
                return record
            }
            if let failed = result.failures.first {
                let region = record.distributionTargets.first { (try? ImageLocation($0.reference)) == failed.location }?.region
                record.status = .failed
                record.failure = .init(stage: "DISTRIBUTE", step: nil, region: region, log: nil, reason: "\(failed.location): \(failed.error?.message ?? "failed")")
                try records.save(record)
                progress("image \(label): FAILED in DISTRIBUTE for region \(region ?? "?"): \(record.failure!.reason); retry with kiln image retry-distribution \(label)")
                return record
            }
            record.outputContainers = Set(record.distributionTargets.map(\.region)).sorted().map { region in
                .init(region: region, imageUris: record.distributionTargets.filter { $0.region == region }.map { "\($0.reference)@\(result.digest)" })
            }
        }
        try enter(.integrating)
        try enter(.available)
        return record
    }

    /// Components that name `supportedOsVersions` must match the parent's OS, as Image Builder
    /// checks: an entry matches when it is a prefix (any case) of the parent's
    /// "NAME VERSION_ID", "ID VERSION_ID" or PRETTY_NAME from /etc/os-release.
    func supportedOsCheck(_ components: [RecipeComponent], parent: Descriptor) throws -> (step: String, reason: String)? {
        let restricted = components.filter { !($0.definition.supportedOsVersions ?? []).isEmpty }
        guard !restricted.isEmpty else { return nil }
        let fields = try osRelease(of: parent)
        let names = [
            [fields["NAME"], fields["VERSION_ID"]].compactMap { $0 }.joined(separator: " "),
            [fields["ID"], fields["VERSION_ID"]].compactMap { $0 }.joined(separator: " "),
            fields["PRETTY_NAME"] ?? "",
        ].filter { !$0.isEmpty }
        for component in restricted {
            let supported = component.definition.supportedOsVersions ?? []
            let matches = supported.contains { entry in names.contains { $0.lowercased().hasPrefix(entry.lowercased()) } }
            if !matches {
                let parentOS = names.first ?? "an OS without /etc/os-release"
                return ("\(component.label)/supportedOsVersions", "component \(component.label) supports \(supported.joined(separator: ", ")); the parent image is \(parentOS). Choose a parent it supports or add the OS to supportedOsVersions")
            }
        }
        return nil
    }

    /// The key=value lines of the image's os-release, read from its topmost layer that has one.
    func osRelease(of image: Descriptor) throws -> [String: String] {
        let store = transfer.store
        let (manifest, config) = try store.image(image.digest)
        for (layer, diffID) in zip(manifest.layers, config.rootfs.diffIDs).reversed() {
            let folder = try host.layers.unpack(layer, diffID: diffID, store: store)
            for path in ["/etc/os-release", "/usr/lib/os-release"] {
                var info = stat()
                guard lstat(folder + path, &info) == 0, info.st_mode & S_IFMT == S_IFREG, let text = try? String(contentsOfFile: folder + path, encoding: .utf8) else { continue }
                var fields: [String: String] = [:]
                for line in text.split(separator: "\n") {
                    guard let equals = line.firstIndex(of: "=") else { continue }
                    fields[String(line[..<equals])] = String(line[line.index(after: equals)...]).trimmingCharacters(in: CharacterSet(charactersIn: "\"'"))
                }
                return fields
            }
        }
        return [:]
    }

    /// The manifest, config and layer blobs of an image in the store, digest → bytes.
    func imageBlobs(_ digest: Digest) throws -> [String: Int64] {
        let data = try transfer.store.read(digest)
        let manifest = try JSONDecoder().decode(ImageManifest.self, from: data)
        var blobs = [digest.description: Int64(data.count), manifest.config.digest.description: manifest.config.size]
        for layer in manifest.layers { blobs[layer.digest.description] = layer.size }
        return blobs
    }

    /// What BUILD needs of a container recipe or an image recipe. An image recipe (a machine
    /// image) is built the same way up to its root filesystem, with the canonical template.
    struct SelectedRecipe {
        var name: String
        var semanticVersion: SemanticVersion
        var parentImage: String
        var components: [ComponentConfiguration]?
        var dockerfileTemplateData: String?
        /// Image Builder's image type: DOCKER or AMI.
        var imageType: String
    }

    static func recipe(of pipeline: ImagePipelineDefinition, in definitions: Definitions) throws -> SelectedRecipe {
        func pick<Recipe>(_ text: String, _ resourceType: String, from recipes: [Recipe], name: (Recipe) -> String, version: (Recipe) -> SemanticVersion) throws -> Recipe {
            let reference = try ResourceReference(text, resourceType: resourceType)
            let candidates = recipes.filter { ImageBuilderARN.normalizedName(name($0)) == reference.name }
            let chosen = (reference.selector ?? (try! VersionSelector(parsing: "x.x.x"))).select(from: candidates.map { BuildVersion(version($0), build: 1) })
            guard let recipe = candidates.first(where: { BuildVersion(version($0), build: 1) == chosen }) else {
                throw KilnError(.notFound, "pipeline \(pipeline.name): no \(resourceType) matches \(text); there are: \(candidates.map { "\(name($0))/\(version($0))" }.joined(separator: ", "))")
            }
            return recipe
        }
        if let text = pipeline.containerRecipeArn {
            let recipe = try pick(text, "container-recipe", from: definitions.containerRecipes, name: \.name, version: \.semanticVersion)
            return SelectedRecipe(name: recipe.name, semanticVersion: recipe.semanticVersion, parentImage: recipe.parentImage, components: recipe.components, dockerfileTemplateData: recipe.dockerfileTemplateData, imageType: "DOCKER")
        }
        guard let text = pipeline.imageRecipeArn else {
            throw KilnError(.invalidDocument, "pipeline \(pipeline.name) needs containerRecipeArn or imageRecipeArn")
        }
        let recipe = try pick(text, "image-recipe", from: definitions.imageRecipes, name: \.name, version: \.semanticVersion)
        return SelectedRecipe(name: recipe.name, semanticVersion: recipe.semanticVersion, parentImage: recipe.parentImage, components: recipe.components, dockerfileTemplateData: nil, imageType: "AMI")
    }

    /// A component's document and the digest of its bytes: inline `data`, or `uri` (a file
    /// relative to the definitions, or https).
    func document(for component: ComponentDefinition, base: String) async throws -> (ComponentDocument, Digest) {
        let parser = ComponentDocumentParser(platform: .linux)
        let label = "component \(component.name)/\(component.semanticVersion)"
        if let data = component.data {
            return (try parser.parse(text: data, source: label), Digest(sha256Of: Data(data.utf8)))
        }
        guard let uri = component.uri else { throw KilnError(.invalidDocument, "\(label) has neither data nor uri") }
        let bytes: Data
        let source: String
        if uri.hasPrefix("https://") {
            let host = URL(string: uri)?.host.map { host in URL(string: uri)?.port.map { "\(host):\($0)" } ?? host } ?? ""
            do {
                bytes = try await HTTPSDownload.fetch(uri, caCertificate: configuration.registries[host]?.caCertificate)
            } catch let error as KilnError {
                throw KilnError(error.code, "\(label): \(error.message)")
            }
            source = uri
        } else if uri.contains("://") {
            throw KilnError(.unsupported, "\(label): uri \(uri) is not supported; use a file path relative to the definitions, or an https URL")
        } else {
            source = uri.hasPrefix("/") ? uri : base + "/" + uri
            guard let read = FileManager.default.contents(atPath: source) else {
                throw KilnError(.notFound, "\(label): cannot read its document \(source) (uri: \(uri))")
            }
            bytes = read
        }
        return (try parser.parse(text: String(decoding: bytes, as: UTF8.self), source: source), Digest(sha256Of: bytes))
    }
}

/// The pipeline's progress lines, also appended to the image's `logs/pipeline.log`, which
/// `kiln logs` prints (component output included, as the TOE runs echo it).
enum PipelineLog {
    static func tee(_ path: String, _ progress: @escaping @Sendable (String) -> Void) -> @Sendable (String) -> Void {
        try? FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        let descriptor = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o644)
        let file = descriptor >= 0 ? FileHandle(fileDescriptor: descriptor, closeOnDealloc: true) : nil
        let log = Mutex(file)
        return { line in
            progress(line)
            log.withLock { try? $0?.write(contentsOf: Data((line + "\n").utf8)) }
        }
    }
}
