import Foundation
import KilnModel
import KilnOCI
import KilnRegistry
import KilnTestSupport
import Testing

@testable import KilnEngine
@testable import KilnInstances

/// The engine's decisions against in-memory twins: no runc, no registry, no root.
@Suite("Engine decisions: states, failures, cache decisions, distribution targets and the ledger")
struct EngineDecisionTests {
    /// A data directory with a content store and an instance host (nothing is started).
    struct Workspace {
        let scratch = Scratch("kiln-engine")
        let store: ContentStore
        let host: InstanceHost
        let records: InMemoryImageRecords
        let configuration: KilnConfiguration

        init(regions: [String: KilnConfiguration.Region] = [:]) throws {
            store = try ContentStore(root: scratch.path + "/content")
            host = try InstanceHost(dataDirectory: scratch.path, store: store)
            records = InMemoryImageRecords(logRoot: scratch.path + "/images")
            var configuration = KilnConfiguration(dataDirectory: scratch.path)
            configuration.regions = regions
            self.configuration = configuration
        }

        func run() throws -> PipelineRun {
            let transfer = ImageTransfer(store: store, registries: RegistryDirectory())
            return try PipelineRun(configuration: configuration, host: host, transfer: transfer, records: records) { _ in }
        }

        func selection(_ yaml: String) throws -> PipelineSelection {
            try Definitions.parse(text: yaml, source: "pipeline.yaml").selectPipeline(nil, source: "pipeline.yaml")
        }
    }

    static let definitions = """
        components:
          - name: app
            semanticVersion: 1.0.0
            platform: Linux
            data: |
              name: App
              schemaVersion: 1.0
              phases:
                - name: build
                  steps:
                    - {name: Write, action: ExecuteBash, inputs: {commands: ["echo ready > /etc/app"]}}
        containerRecipes:
          - name: app-image
            semanticVersion: 1.2.0
            parentImage: PARENT
            components: [{componentArn: app/1.x.x}]
        infrastructureConfigurations:
          - {name: builders, instanceTypes: [t3.small]}
        imagePipelines:
          - {name: app-pipeline, containerRecipeArn: app-image/1.x.x, infrastructureConfigurationArn: builders}
        """

    @Test("A parent that is not there fails the image in BUILD, after PENDING and CREATING, and says which parent")
    func missingParent() async throws {
        let workspace = try Workspace()
        defer { workspace.scratch.remove() }
        let selection = try workspace.selection(Self.definitions.replacingOccurrences(of: "PARENT", with: "kiln:never-built"))
        let record = try await workspace.run().run(.init(selection: selection, definitionsPath: workspace.scratch.path + "/pipeline.yaml"))
        #expect(record.status == .failed && record.failure?.stage == .build)
        #expect(record.failure?.reason.contains("kiln:never-built") == true, "\(record.failure?.reason ?? "")")
        #expect(workspace.records.history.map(\.status) == [.pending, .creating, .failed], "every state change is saved, in order")
        #expect(record.arn == "arn:aws:imagebuilder:us-east-1:000000000000:image/app-image/1.2.0/1" && record.type == .docker)
        #expect(try workspace.records.find("app-image/1.2.0/1").status == .failed)
    }

    @Test("Selecting a pipeline resolves its recipe, components and configurations once, and names what is missing")
    func selection() throws {
        let workspace = try Workspace()
        defer { workspace.scratch.remove() }
        let selection = try workspace.selection(Self.definitions.replacingOccurrences(of: "PARENT", with: "scratch"))
        #expect(
            selection.recipe.name == "app-image" && selection.recipe.imageType == .docker
                && selection.components.map(\.definition.name) == ["app"])
        #expect(selection.infrastructure.name == "builders" && selection.distribution == nil)
        let broken = Self.definitions.replacingOccurrences(of: "PARENT", with: "scratch").replacingOccurrences(
            of: "componentArn: app/1.x.x", with: "componentArn: app/2.x.x")
        #expect(throws: KilnError.self) { try workspace.selection(broken) }
        do {
            _ = try workspace.selection(broken)
        } catch let error as KilnError {
            #expect(error.message.contains("pipeline.yaml") && error.message.contains("app/2.x.x"), "\(error.message)")
        }
    }

    @Test("State changes are saved before the work; a failure names stage, step and region; an interrupt makes CANCELLED")
    func imageRunStates() async throws {
        let records = InMemoryImageRecords(logRoot: "/nonexistent")
        let record = ImageRecord(
            arn: "arn:x", name: "n", version: try SemanticVersion(parsing: "1.0.0"), build: 1, status: .pending, dateCreated: "2026-11-30",
            logDirectory: "/tmp")
        let run = try ImageRun(record: record, records: records, instanceType: "t3.small") { _ in }
        try run.enter(.creating)
        try run.enter(.building)
        let failed = try run.fail(.build, step: "App/validate/Check", log: "/logs/build/01-app", "the step exited 1")
        #expect(records.history.map(\.status) == [.pending, .creating, .building, .failed])
        #expect(
            failed.failure
                == .init(stage: .build, step: "App/validate/Check", region: nil, log: "/logs/build/01-app", reason: "the step exited 1"))

        let cancelled = try await Task {
            let run = try ImageRun(record: record, records: records, instanceType: "t3.small") { _ in }
            withUnsafeCurrentTask { $0?.cancel() }
            #expect(throws: CancellationError.self) { try run.enter(.testing) }
            return try run.fail(.test, "ignored")
        }.value
        #expect(cancelled.status == .cancelled && cancelled.failure?.reason.contains("interrupt") == true)
    }

    @Test(
        "Distribution targets: one per region and tag, the recipe's version when no tag is given, the region's prefix; an unknown region fails the image naming it, keeping the targets before it"
    )
    func distributionTargets() async throws {
        let workspace = try Workspace(regions: [
            "north": .init(registry: "n.example:5000"), "south": .init(registry: "s.example", repositoryPrefix: "mirror"),
        ])
        defer { workspace.scratch.remove() }
        func selection(_ regions: [String]) throws -> PipelineSelection {
            let entries = regions.map { region in
                region == "north"
                    ? "      - {region: north, containerDistributionConfiguration: {targetRepository: {repositoryName: app}, containerTags: [stable, \"1\"]}}"
                    : "      - {region: \(region), containerDistributionConfiguration: {targetRepository: {repositoryName: app}}}"
            }
            let yaml =
                Self.definitions.replacingOccurrences(of: "PARENT", with: "scratch")
                .replacingOccurrences(
                    of: "infrastructureConfigurationArn: builders}",
                    with: "infrastructureConfigurationArn: builders, distributionConfigurationArn: both}")
                + "\ndistributionConfigurations:\n  - name: both\n    distributions:\n" + entries.joined(separator: "\n") + "\n"
            return try workspace.selection(yaml)
        }
        let run = try workspace.run()
        func expand(_ regions: [String]) async throws -> (Bool, ImageRecord) {
            let prepared = try await run.prepare(
                .init(selection: try selection(regions), definitionsPath: workspace.scratch.path + "/pipeline.yaml"))
            let record = ImageRecord(
                arn: "arn:\(regions)", name: "app-image", version: try SemanticVersion(parsing: "1.2.0"), build: 1, status: .building,
                dateCreated: "2026-11-30",
                logDirectory: "/tmp")
            let image = try ImageRun(record: record, records: workspace.records, instanceType: "t3.small") { _ in }
            return (try run.expandDistribution(prepared, image: image), image.record)
        }
        let (expanded, record) = try await expand(["north", "south"])
        #expect(
            expanded
                && record.distributionTargets.map(\.reference) == [
                    "n.example:5000/app:stable", "n.example:5000/app:1", "s.example/mirror/app:1.2.0",
                ])
        #expect(record.distributionTargets.map(\.region) == ["north", "north", "south"])
        let (unknown, failed) = try await expand(["north", "west", "south"])
        #expect(!unknown && failed.status == .failed && failed.failure?.stage == .distribute && failed.failure?.region == "west")
        #expect(failed.failure?.reason.contains("west is not defined in kiln.yaml") == true)
        #expect(
            failed.distributionTargets.map(\.region) == ["north", "north"],
            "the targets before the unknown region are kept, for retry-distribution")
    }

    @Test(
        "The ledger prices instance time, storage and transfer; transfer within the home region is free; a blob shared by two images is stored once"
    )
    func ledger() throws {
        var configuration = KilnConfiguration(dataDirectory: "/tmp")
        configuration.homeRegion = "home"
        configuration.regions = [
            "home": .init(registry: "h", storagePerGBMonth: 1, transferPerGB: 5),
            "away": .init(registry: "a", storagePerGBMonth: 2, transferPerGB: 3),
        ]
        configuration.instanceTypes = ["t3.small": .init(pricePerHour: 3.6)]
        var ledger = CostLedger()
        ledger.charge(role: "builder", instanceType: "t3.small", seconds: 100, cpuSeconds: 50)
        let gigabyte: Int64 = 1 << 30
        ledger.distributed(to: "home", blobs: ["a": gigabyte], sentBytes: gigabyte)
        ledger.distributed(to: "away", blobs: ["a": gigabyte], sentBytes: gigabyte)
        ledger.distributed(to: "away", blobs: ["a": gigabyte], sentBytes: gigabyte / 2)
        var record = ImageRecord(
            arn: "arn:i", name: "i", version: try SemanticVersion(parsing: "1.0.0"), build: 1, status: .available,
            dateCreated: "2026-11-30", logDirectory: "/tmp")
        record.ledger = ledger
        let report = try CostReport(configuration: configuration)
        let cost = report.cost(of: record)
        #expect(abs(cost.instanceCost - 0.1) < 1e-9, "100 s at $3.60/h")
        #expect(cost.regions.first { $0.region == "home" }?.transferCost == 0, "the home region's transfer is free")
        #expect(abs((cost.regions.first { $0.region == "away" }?.transferCost ?? 0) - 4.5) < 1e-9, "1.5 GiB sent at $3/GB, retries counted")
        var second = record
        second.arn = "arn:j"
        let summary = report.summary("all", records: [record, second])
        #expect(abs(summary.storagePerMonth - 3) < 1e-9, "the shared blob is stored once per region: 1 GiB at $1 + 1 GiB at $2")
    }

    @Test(
        "Cache decisions: a new step runs and says why; a cached step that installs nothing is reused; --no-cache runs all; a moved parent is named"
    )
    func cacheDecisions() async throws {
        let workspace = try Workspace()
        defer { workspace.scratch.remove() }
        try workspace.scratch.write("context/motd", "hello\n")
        let parent = try ParentImageResolver(transfer: ImageTransfer(store: workspace.store, registries: RegistryDirectory())).scratch()
        let template = try DockerfileTemplate(
            parsing: "FROM {{{ imagebuilder:parentImage }}}\nCOPY motd /etc/motd\nENV A=1\n", parentImage: "scratch", source: "t")
        let builder = RecipeBuilder(
            host: workspace.host, recipeLabel: "t/1.0.0", template: template, components: [], type: InstanceType.defaults["t3.small"]!,
            logRoot: workspace.scratch.path + "/logs", context: workspace.scratch.path + "/context", sourceDateEpoch: nil,
            progress: { _ in }
        )
        let fresh = try await builder.plan(parent: parent, useCache: true, policy: .check, previous: nil, caCertificates: [:])
        #expect(
            fresh.decisions.map(\.line) == ["COPY motd /etc/motd: run (not in the cache: not built before with these inputs)"],
            "only file-changing steps are decided")
        #expect(fresh.firstRun != nil)

        // The step's result in the cache (any image will do for the decision).
        try workspace.store.tag(BuildCacheKey.tag(try Digest(fresh.decisions[0].key)), parent)
        let cached = try await builder.plan(parent: parent, useCache: true, policy: .check, previous: nil, caCertificates: [:])
        #expect(cached.firstRun == nil && cached.decisions[0].decision == .reused)
        #expect(cached.decisions[0].reason.hasPrefix("cached; it installed no packages"), "\(cached.decisions[0].reason)")

        let forced = try await builder.plan(parent: parent, useCache: false, policy: .check, previous: nil, caCertificates: [:])
        #expect(forced.decisions.map(\.reason) == ["--no-cache"])

        var previous = ImageRecord(
            arn: "arn:p", name: "t", version: try SemanticVersion(parsing: "1.0.0"), build: 1, status: .available,
            dateCreated: "2026-11-30", logDirectory: "/tmp")
        previous.parentDigest = "sha256:" + String(repeating: "0", count: 64)
        previous.cacheDecisions = fresh.decisions
        _ = try workspace.store.untag(BuildCacheKey.tag(try Digest(fresh.decisions[0].key)))
        let moved = try await builder.plan(parent: parent, useCache: true, policy: .check, previous: previous, caCertificates: [:])
        #expect(moved.decisions[0].reason.contains("the parent moved since t/1.0.0/1"), "\(moved.decisions[0].reason)")
    }
}
