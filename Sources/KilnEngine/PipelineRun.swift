import Foundation
import KilnInstances
import KilnModel
import KilnOCI
import KilnRegistry
import KilnTOE
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// Runs one image pipeline once, as Image Builder does: BUILD in a builder instance from the
/// parent (components' build and validate phases, and the Dockerfile template's instructions),
/// snapshot (an image recipe's root filesystem then becomes a disk, `MachineImageStage.swift`);
/// TEST in a fresh instance from the new image (a QEMU VM for a disk); DISTRIBUTE to every region.
/// The image record is saved at every state change. Each stage has its own file
/// (`BuildStage.swift`, `TestStage.swift`, `DistributeStage.swift`).
public struct PipelineRun: Sendable {
    /// What to run: a pipeline selected from parsed definitions, and how.
    public struct Settings: Sendable {
        public var selection: PipelineSelection
        /// The definitions file: component `uri`s are relative to its folder.
        public var definitionsPath: String
        /// COPY and ADD read from here (default: the definitions file's folder).
        public var contextDirectory: String?
        public var sourceDateEpoch: Int64?
        /// Reuse the image of an earlier build with exactly the same inputs (no builder starts).
        public var useCache = true
        /// Take registry parents from the store and ask no package source (also kiln.yaml `offline: true`).
        public var offline = false
        /// A build number reserved (and its PENDING record saved) by whoever queued the run,
        /// such as `kiln server`, which answers with the image's ARN before the build starts.
        public var reservedBuild: Int?

        public init(
            selection: PipelineSelection, definitionsPath: String, contextDirectory: String? = nil, sourceDateEpoch: Int64? = nil,
            useCache: Bool = true,
            offline: Bool = false
        ) {
            self.selection = selection
            self.definitionsPath = definitionsPath
            self.contextDirectory = contextDirectory
            self.sourceDateEpoch = sourceDateEpoch
            self.useCache = useCache
            self.offline = offline
        }

        /// The folder component `uri`s and COPY sources are relative to.
        var definitionsFolder: String {
            let folder = (definitionsPath as NSString).deletingLastPathComponent
            return folder.isEmpty ? "." : folder
        }
    }

    public let configuration: KilnConfiguration
    public let host: InstanceHost
    public let transfer: ImageTransfer
    public let records: any ImageRecords
    /// Progress lines (stage, component, step).
    public let progress: @Sendable (String) -> Void

    public init(
        configuration: KilnConfiguration, host: InstanceHost, transfer: ImageTransfer, records: any ImageRecords,
        progress: @escaping @Sendable (String) -> Void
    ) throws {
        self.configuration = configuration
        self.host = host
        self.transfer = transfer
        self.records = records
        self.progress = progress
    }

    /// What the stages need, worked out once before the record is made.
    struct Prepared {
        var selection: PipelineSelection
        var components: [RecipeComponent]
        var type: InstanceType
        var template: DockerfileTemplate
        var sourceDateEpoch: Int64?
        var context: String
        var policy: PackageUpdatePolicy

        var recipe: PipelineSelection.Recipe { selection.recipe }
        var keepOnFailure: Bool { selection.infrastructure.terminateInstanceOnFailure == false }
    }

    func prepare(_ settings: Settings) async throws -> Prepared {
        let selection = settings.selection
        let recipe = selection.recipe
        var components: [RecipeComponent] = []
        for component in selection.components {
            let definition = component.definition
            let (document, digest) = try await document(for: definition, base: settings.definitionsFolder)
            var parameters: [String: String] = [:]
            for parameter in component.parameters { parameters[parameter.name] = parameter.value.joined(separator: ",") }
            _ = try document.parameterValues(parameters) // allowedValues and missing values, before any instance starts
            let arn = ImageBuilderARN(
                region: configuration.homeRegion, account: configuration.accountId, resourceType: "component",
                name: ImageBuilderARN.normalizedName(definition.name), version: "\(definition.semanticVersion)/1"
            )
            components.append(
                RecipeComponent(
                    definition: definition, arn: arn.description, run: TOEDocumentRun(document: document, parameters: parameters),
                    documentDigest: digest))
        }
        let types = try InstanceType.table(configured: configuration.instanceTypes)
        let type = try InstanceType.named(selection.infrastructure.instanceTypes?.first ?? "t3.medium", in: types)
        let template = try DockerfileTemplate(
            parsing: recipe.dockerfileTemplateData ?? DockerfileTemplate.canonical, parentImage: recipe.parentImage,
            source: "\(recipe.name)/\(recipe.semanticVersion)"
        )
        // The flag wins over the recipe's own `ARG SOURCE_DATE_EPOCH=N`.
        let sourceDateEpoch = try settings.sourceDateEpoch ?? template.sourceDateEpoch(source: "\(recipe.name)/\(recipe.semanticVersion)")
        let offline = settings.offline || configuration.offline
        let policy: PackageUpdatePolicy = offline ? .offline : (selection.pipeline.kilnCache?.packageUpdates == .ignore ? .ignore : .check)
        return Prepared(
            selection: selection, components: components, type: type, template: template, sourceDateEpoch: sourceDateEpoch,
            context: settings.contextDirectory ?? settings.definitionsFolder, policy: policy
        )
    }

    func builder(_ prepared: Prepared, logRoot: String, progress: @escaping @Sendable (String) -> Void) -> RecipeBuilder {
        var builder = RecipeBuilder(
            host: host, recipeLabel: "\(prepared.recipe.name)/\(prepared.recipe.semanticVersion)", template: prepared.template,
            components: prepared.components,
            type: prepared.type, logRoot: logRoot, context: prepared.context, sourceDateEpoch: prepared.sourceDateEpoch, progress: progress
        )
        builder.network = configuration.builderNetwork == "host" ? .host : .isolated
        builder.workingDirectory = prepared.recipe.workingDirectory
        return builder
    }

    /// Private CAs by host, for https package indexes and documents.
    var caCertificates: [String: String] {
        configuration.registries.compactMapValues(\.caCertificate)
    }

    /// The newest earlier record of the same image name, to say what changed since.
    func previousRecord(name: String) -> ImageRecord? {
        records.all().filter { $0.name == name && $0.cacheDecisions != nil }.max { ($0.version, $0.build) < ($1.version, $1.build) }
    }

    /// `kiln build --explain-cache`: the parent's digest and each step's cache decision, with
    /// no builder, no image record and no distribution.
    public func explain(_ settings: Settings) async throws -> [String] {
        let prepared = try await prepare(settings)
        let parent = try await resolveParent(
            prepared.recipe.parentImage, offline: prepared.policy == .offline, lookOnly: true, progress: progress)
        let plan = try await builder(prepared, logRoot: host.dataDirectory + "/tmp", progress: progress).plan(
            parent: parent, useCache: settings.useCache, policy: prepared.policy,
            previous: previousRecord(name: ImageBuilderARN.normalizedName(prepared.recipe.name)), caCertificates: caCertificates,
            saveChecks: false
        )
        return ["parent \(prepared.recipe.parentImage): \(parent.digest)"] + plan.decisions.map(\.line)
    }

    /// Runs the pipeline; the returned record is AVAILABLE or FAILED (with stage, step, region
    /// and log), or CANCELLED after an interrupt.
    public func run(_ settings: Settings) async throws -> ImageRecord {
        let prepared = try await prepare(settings)
        let recipe = prepared.recipe
        let name = ImageBuilderARN.normalizedName(recipe.name)
        let build = try settings.reservedBuild ?? records.reserveBuild(name: name, version: recipe.semanticVersion)
        let folder = records.folder(name: name, version: recipe.semanticVersion, build: build)
        var record = ImageRecord(
            arn: ImageBuilderARN(
                region: configuration.homeRegion, account: configuration.accountId, resourceType: "image", name: name,
                version: "\(recipe.semanticVersion)/\(build)"
            ).description,
            name: name, version: recipe.semanticVersion, build: build, type: recipe.imageType, status: .pending,
            sourcePipelineName: prepared.selection.pipeline.name,
            dateCreated: ISO8601DateFormatter().string(from: Date()), logDirectory: folder + "/logs", owner: .current
        )
        if settings.reservedBuild != nil, let queued = try records.record(arn: record.arn) {
            record.dateCreated = queued.dateCreated
            record.sourcePipelineName = queued.sourcePipelineName
            record.trigger = queued.trigger
        }
        let image = try ImageRun(
            record: record, records: records, instanceType: prepared.type.name,
            progress: PipelineLog.tee(folder + "/logs/pipeline.log", progress))
        image.progress("image \(record.arn): PENDING")
        // The parent, cached steps and the new image stay leased until the run ends.
        defer { image.releaseLeases() }
        do {
            guard let built = try await buildStage(prepared, settings: settings, image: image) else { return image.record }
            var disk: MachineDisk?
            if recipe.imageType == .ami {
                guard let assembled = try await assembleDisk(prepared, built: built.image, image: image) else { return image.record }
                disk = assembled
            }
            image.stage = .test
            if let disk {
                guard try await machineTestStage(prepared, built: built, disk: disk, image: image) else { return image.record }
            } else {
                guard try await testStage(prepared, built: built, image: image) else { return image.record }
            }
            image.stage = .distribute
            guard try expandDistribution(prepared, image: image) else { return image.record }
            return try await distribute(image.record)
        } catch {
            let reason = error is CancellationError ? "cancelled" : (error as? KilnError)?.message ?? "\(error)"
            if let saved = try? records.find(image.record.arn), [.available, .failed, .cancelled].contains(saved.status) { return saved }
            return try image.fail(image.stage, reason)
        }
    }
}

/// One image's record while its pipeline runs: every state change is saved before the work it
/// announces starts, and said in the log.
final class ImageRun {
    var record: ImageRecord
    var stage: Stage = .build
    let records: any ImageRecords
    let instanceType: String
    let progress: @Sendable (String) -> Void
    /// Blobs the run uses, kept from `kiln image gc` until it ends (a dead run's leases expire).
    private(set) var leases: [ContentStore.Lease] = []

    init(record: ImageRecord, records: any ImageRecords, instanceType: String, progress: @escaping @Sendable (String) -> Void) throws {
        self.record = record
        self.records = records
        self.instanceType = instanceType
        self.progress = progress
        try records.save(record)
    }

    var label: String { "\(record.name)/\(record.version)/\(record.build)" }

    func hold(_ lease: ContentStore.Lease) { leases.append(lease) }

    func releaseLeases() {
        leases.forEach { $0.release() }
        leases.removeAll()
    }

    func save() throws { try records.save(record) }

    func enter(_ status: ImageStatus) throws {
        try Task.checkCancellation()
        record.status = status
        try save()
        progress("image \(label): \(status.rawValue)")
    }

    /// FAILED, or CANCELLED when the failure came from an interrupt.
    func fail(_ stage: Stage, step: String? = nil, region: String? = nil, log: String? = nil, _ reason: String) throws -> ImageRecord {
        let cancelled = Task.isCancelled
        record.status = cancelled ? .cancelled : .failed
        record.failure = .init(
            stage: stage, step: step, region: region, log: log,
            reason: cancelled ? "cancelled by an interrupt; its instances were removed" : reason)
        try save()
        progress(
            "image \(label): \(record.status.rawValue) in \(stage.rawValue)\(step.map { " at step \($0)" } ?? "")\(region.map { " for region \($0)" } ?? ""): \(record.failure?.reason ?? reason)"
        )
        return record
    }

    func charge(_ role: String, _ usage: ContainerInstance.Usage) {
        record.ledger = record.ledger ?? CostLedger()
        record.ledger?.charge(role: role, instanceType: instanceType, seconds: usage.seconds, cpuSeconds: usage.cpuSeconds)
    }

    func timed<T>(_ stage: Stage, _ body: () async throws -> T) async rethrows -> T {
        let start = ContinuousClock.now
        defer { record.timings.append(.init(stage: stage.rawValue, seconds: (ContinuousClock.now - start).inSeconds)) }
        return try await body()
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
