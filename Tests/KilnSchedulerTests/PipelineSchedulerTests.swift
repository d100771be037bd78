import Foundation
import KilnEngine
import KilnModel
import KilnOCI
import KilnRegistry
import KilnStore
import KilnTestSupport
import Logging
import Synchronization
import Testing

@testable import KilnScheduler

/// The scheduler's decisions over a real SQLite store, with a hand-moved clock and twins of
/// the resources (`PipelineStarter`) and of the registry and package probes. The real ones
/// are exercised by TriggerTests in KilnCLITests.
@Suite("Pipeline scheduler")
struct PipelineSchedulerTests {
    final class Twin: PipelineStarter, DependencyProbing, @unchecked Sendable {
        let lock = NSLock()
        var pipelines: [ScheduledPipeline] = []
        var inputs = ResolvedInputs(
            recipe: "arn:aws:imagebuilder:us-east-1:000000000000:image-recipe/web/1.0.0", components: [],
            parentImage: "127.0.0.1:5000/base:latest")
        var recorded: [String: ResolvedInputs] = [:]
        var digest = "sha256:aaa"
        var upgrades: DependencyProbe.PackageAnswer = .upgrades([])
        var starts: [(String, BuildTrigger)] = []
        var disabled: [String] = []
        var heads: [ManifestHead] = []
        let store: SQLiteStore

        init(store: SQLiteStore) { self.store = store }

        func scheduledPipelines() throws -> [ScheduledPipeline] { lock.withLock { pipelines } }
        func scheduledPipeline(named name: String) throws -> ScheduledPipeline? { lock.withLock { pipelines.first { $0.name == name } } }
        func currentInputs(pipeline: String) throws -> ResolvedInputs { lock.withLock { inputs } }
        func recordedInputs(imageArn: String) throws -> ResolvedInputs? { lock.withLock { recorded[imageArn] } }
        func start(pipeline: String, trigger: BuildTrigger) throws -> String {
            let arn = lock.withLock {
                starts.append((pipeline, trigger))
                return "arn:aws:imagebuilder:us-east-1:000000000000:image/web/1.0.0/\(starts.count + 10)"
            }
            try store.save(
                ImageRecord(
                    arn: arn, name: "web", version: try SemanticVersion(parsing: "1.0.0"), build: Int(arn.split(separator: "/").last!)!,
                    status: .pending, sourcePipelineName: pipeline, trigger: trigger, dateCreated: "2026-12-01T00:00:00Z",
                    logDirectory: "/nowhere"))
            return arn
        }
        func disable(pipeline: String, reason: String) throws {
            lock.withLock {
                disabled.append(pipeline)
                for index in pipelines.indices where pipelines[index].name == pipeline { pipelines[index].enabled = false }
            }
        }
        func parentDigest(_ parent: String) async throws -> String { lock.withLock { digest } }
        func upgradablePackages(of record: ImageRecord, securityOnly: Bool) async -> DependencyProbe.PackageAnswer {
            lock.withLock { upgrades }
        }
        func headManifest(_ reference: ImageReference) async throws -> ManifestHead {
            lock.withLock { heads.isEmpty ? ManifestHead(status: 200, digest: digest, retryAfterSeconds: nil) : heads.removeFirst() }
        }
    }

    final class ManualClock: Sendable {
        let value = Mutex(Date())
        func read() -> Date { value.withLock { $0 } }
    }

    final class Rig: @unchecked Sendable {
        let scratch = Scratch("kiln-scheduler")
        let store: SQLiteStore
        let twin: Twin
        let now = ManualClock()
        var configuration: KilnConfiguration
        lazy var scheduler = PipelineScheduler(
            configuration: configuration, store: store, starter: twin, probe: twin, logger: Logger(label: "test"),
            clock: { [now] in now.read() })

        init(_ configure: (inout KilnConfiguration) -> Void = { _ in }) throws {
            store = try SQLiteStore(dataDirectory: scratch.path)
            twin = Twin(store: store)
            configuration = KilnConfiguration(dataDirectory: scratch.path)
            configure(&configuration)
        }

        func at(_ iso: String) {
            now.value.withLock { $0 = ISO8601DateFormatter().date(from: iso)! }
        }

        func pipeline(
            _ expression: String?, condition: StartCondition = .dependencyUpdatesAvailable, failureCount: Int? = nil,
            anchor: String = "2026-01-01T00:00:00Z"
        ) throws {
            twin.pipelines = [
                ScheduledPipeline(
                    name: "web", arn: "arn:aws:imagebuilder:us-east-1:000000000000:image-pipeline/web", enabled: true,
                    schedule: try expression.map { try ScheduleExpression(parsing: $0) }, startCondition: condition,
                    anchor: ISO8601DateFormatter().date(from: anchor)!, parentImage: "127.0.0.1:5000/base:latest",
                    autoDisableFailureCount: failureCount)
            ]
        }

        func image(_ build: Int, _ status: ImageStatus, digest: String = "sha256:aaa", trigger: BuildTrigger.Kind = .schedule) throws {
            let arn = "arn:aws:imagebuilder:us-east-1:000000000000:image/web/1.0.0/\(build)"
            try store.save(
                ImageRecord(
                    arn: arn, name: "web", version: try SemanticVersion(parsing: "1.0.0"), build: build, status: status,
                    sourcePipelineName: "web", trigger: BuildTrigger(kind: trigger, detail: "test"),
                    dateCreated: String(format: "2026-11-%02dT00:00:00Z", build), parentImage: "127.0.0.1:5000/base:latest",
                    parentDigest: digest, logDirectory: "/nowhere"))
            twin.recorded[arn] = twin.inputs
        }

        func events() throws -> [PipelineEvent] { try store.events(pipeline: "web", limit: 100) }

        deinit { scratch.remove() }
    }

    @Test("A cron fire becomes one event at its minute, not before and not twice; the next fire follows")
    func firesOncePerMatch() async throws {
        let rig = try Rig()
        try rig.pipeline("cron(0 10 * * ? *)", condition: .expressionMatchOnly)
        rig.at("2026-12-01T09:59:30Z")
        await rig.scheduler.tick()
        #expect(try rig.events().isEmpty)
        rig.at("2026-12-01T10:00:00Z")
        await rig.scheduler.tick()
        rig.at("2026-12-01T10:00:40Z")
        await rig.scheduler.tick()
        let events = try rig.events()
        #expect(events.count == 1)
        #expect(events.first?.outcome == .started)
        #expect(events.first?.detail.contains("fire at 2026-12-01T10:00:00Z") == true)
        #expect(rig.twin.starts.count == 1)
        #expect(rig.twin.starts.first?.1.buildType == "SCHEDULED")
        #expect(rig.scheduler.secondsUntilNextWork() == 2, "the started build is looked at every 2 s until it ends")
        var built = try #require(try rig.store.record(arn: "arn:aws:imagebuilder:us-east-1:000000000000:image/web/1.0.0/11"))
        built.status = .available
        try rig.store.save(built)
        await rig.scheduler.tick()
        #expect(rig.scheduler.secondsUntilNextWork() > 3_600, "then the next fire is tomorrow at 10:00")
    }

    @Test("Fires missed while the server was down give one catch-up run, not a backfill; a fresh pipeline gets none")
    func catchUpOnce() async throws {
        let rig = try Rig()
        try rig.pipeline("cron(0 10 * * ? *)", condition: .expressionMatchOnly)
        try rig.store.setSchedulerValue(
            "fire:web", String(Int(ISO8601DateFormatter().date(from: "2026-11-27T10:00:00Z")!.timeIntervalSince1970)))
        rig.at("2026-12-01T12:00:00Z")
        await rig.scheduler.tick()
        await rig.scheduler.tick()
        let events = try rig.events()
        #expect(events.count == 1)
        #expect(events.first?.detail.contains("catch-up: 4 fire(s)") == true, "\(events.first?.detail ?? "")")
        #expect(rig.twin.starts.count == 1)

        let fresh = try Rig()
        try fresh.pipeline("cron(0 10 * * ? *)", condition: .expressionMatchOnly)
        fresh.at("2026-12-01T12:00:00Z")
        await fresh.scheduler.tick()
        #expect(try fresh.events().isEmpty)
    }

    @Test("Default start condition: a pinned parent skips with the reason and what it resolved; a moved digest builds")
    func dependencyUpdates() async throws {
        let rig = try Rig()
        try rig.pipeline("cron(0 10 * * ? *)")
        try rig.image(1, .available, digest: "sha256:aaa")
        rig.at("2026-12-01T09:00:00Z")
        await rig.scheduler.tick()
        rig.at("2026-12-01T10:00:00Z")
        await rig.scheduler.tick()
        let skipped = try #require(try rig.events().first)
        #expect(skipped.outcome == .skipped)
        #expect(
            skipped.reason?.contains("no dependency updates since arn:aws:imagebuilder:us-east-1:000000000000:image/web/1.0.0/1") == true)
        #expect(skipped.resolved?.contains("parent 127.0.0.1:5000/base:latest = sha256:aaa") == true)
        #expect(rig.twin.starts.isEmpty)

        rig.twin.digest = "sha256:bbb"
        rig.at("2026-12-02T10:00:00Z")
        await rig.scheduler.tick()
        let started = try #require(try rig.events().first)
        #expect(started.outcome == .started)
        #expect(started.reason?.contains("parent 127.0.0.1:5000/base:latest: sha256:aaa → sha256:bbb") == true)
        #expect(rig.twin.starts.first?.1.changes?.first?.contains("sha256:bbb") == true)
    }

    @Test("Default start condition: a new component build or a package upgrade counts as an update")
    func componentsAndPackages() async throws {
        let rig = try Rig()
        try rig.pipeline(nil)
        rig.twin.inputs.components = ["arn:aws:imagebuilder:us-east-1:000000000000:component/hello/1.0.0/1"]
        try rig.image(1, .available)
        rig.twin.inputs.components = ["arn:aws:imagebuilder:us-east-1:000000000000:component/hello/1.0.0/2"]
        _ = try rig.scheduler.fireNow(pipeline: "web")
        await rig.scheduler.tick()
        #expect(
            try rig.events().first?.reason?.contains(
                "component arn:aws:imagebuilder:us-east-1:000000000000:component/hello/1.0.0/2 (was arn:aws:imagebuilder:us-east-1:000000000000:component/hello/1.0.0/1)"
            ) == true)

        let packages = try Rig()
        try packages.pipeline(nil)
        try packages.image(1, .available)
        packages.twin.upgrades = .upgrades([PackageUpgrade(name: "openssl", installed: "3.0.1", candidate: "3.0.2")])
        _ = try packages.scheduler.fireNow(pipeline: "web")
        await packages.scheduler.tick()
        #expect(try packages.events().first?.outcome == .started)
        #expect(try packages.events().first?.reason?.contains("openssl 3.0.1 → 3.0.2") == true)
    }

    @Test("A fire while the previous build runs is skipped and says which build")
    func overlapSkipped() async throws {
        let rig = try Rig()
        try rig.pipeline("cron(0 10 * * ? *)", condition: .expressionMatchOnly)
        try rig.image(3, .building)
        rig.at("2026-12-01T09:00:00Z")
        await rig.scheduler.tick()
        rig.at("2026-12-01T10:00:00Z")
        await rig.scheduler.tick()
        let event = try #require(try rig.events().first)
        #expect(event.outcome == .skipped)
        #expect(event.reason?.contains("image/web/1.0.0/3 is still BUILDING") == true)
        #expect(rig.twin.starts.isEmpty)
    }

    @Test("A burst of pushes inside the debounce window starts one build; other tags and blob pushes start none")
    func burstDebounced() async throws {
        let rig = try Rig { $0.triggers.debounceSeconds = 5 }
        try rig.pipeline(nil, condition: .expressionMatchOnly)
        rig.at("2026-12-01T10:00:00Z")
        func envelope(_ tag: String, _ digest: String, mediaType: String = "application/vnd.oci.image.manifest.v1+json") -> Data {
            Data(
                """
                {"events":[{"id":"e","timestamp":"2026-12-01T10:00:00Z","action":"push",
                "target":{"mediaType":"\(mediaType)","size":500,"digest":"\(digest)","length":500,"repository":"base",
                "url":"http://127.0.0.1:5000/v2/base/manifests/\(digest)","tag":"\(tag)"},
                "request":{"id":"r","addr":"127.0.0.1:4000","host":"127.0.0.1:5000","method":"PUT","useragent":"t"},
                "actor":{},"source":{"addr":"host:5000","instanceID":"i"}}]}
                """.utf8)
        }
        for index in 0..<4 {
            #expect(try rig.scheduler.receive(RegistryNotification(parsing: envelope("latest", "sha256:\(index)"))) == ["web"])
        }
        #expect(try rig.scheduler.receive(RegistryNotification(parsing: envelope("v2", "sha256:9"))).isEmpty)
        #expect(
            try rig.scheduler.receive(
                RegistryNotification(parsing: envelope("latest", "sha256:8", mediaType: "application/vnd.oci.image.layer.v1.tar+gzip"))
            ).isEmpty)
        await rig.scheduler.tick()
        #expect(rig.twin.starts.isEmpty, "still inside the window")
        rig.at("2026-12-01T10:00:05Z")
        await rig.scheduler.tick()
        #expect(rig.twin.starts.count == 1)
        let event = try #require(try rig.events().first)
        #expect(event.count == 4)
        #expect(event.detail.contains("sha256:3"), "the newest push is named: \(event.detail)")
        #expect(throws: KilnError.self) { try RegistryNotification(parsing: Data("{\"nope\":1}".utf8)) }
    }

    @Test("Parent polls: the first HEAD is a baseline, a new digest is an event, a 429 doubles the wait and honours Retry-After")
    func parentPolls() async throws {
        let rig = try Rig {
            $0.triggers.parentPollSeconds = 10
            $0.triggers.debounceSeconds = 0
        }
        try rig.pipeline(nil, condition: .expressionMatchOnly)
        rig.at("2026-12-01T10:00:00Z")
        await rig.scheduler.tick()
        #expect(try rig.events().isEmpty)
        rig.twin.digest = "sha256:new"
        rig.twin.heads = [ManifestHead(status: 429, digest: nil, retryAfterSeconds: 120)]
        rig.at("2026-12-01T10:00:10Z")
        await rig.scheduler.tick()
        #expect(try rig.events().isEmpty)
        #expect(rig.scheduler.secondsUntilNextWork() > 100, "Retry-After 120 s is longer than the doubled 20 s")
        rig.at("2026-12-01T10:02:10Z")
        await rig.scheduler.tick()
        await rig.scheduler.tick()
        let event = try #require(try rig.events().first)
        #expect(event.kind == .parentPoll)
        #expect(event.detail.contains("sha256:aaa → sha256:new"))
        #expect(rig.twin.starts.count == 1)
    }

    @Test("autoDisablePolicy: automated failures in a row disable the pipeline; manual ones and those before an update do not count")
    func autoDisable() async throws {
        let rig = try Rig()
        try rig.pipeline("cron(0 10 * * ? *)", condition: .expressionMatchOnly, failureCount: 2, anchor: "2026-11-02T12:00:00Z")
        try rig.image(1, .failed) // before the update: not counted
        try rig.image(3, .failed, trigger: .manual)
        try rig.image(4, .failed)
        #expect(
            AutoDisablePolicy.consecutiveFailures(
                try rig.store.records(pipeline: "web", offset: 0, limit: 100).items, since: rig.twin.pipelines[0].anchor
            ).count == 1)
        rig.at("2026-12-01T09:00:00Z")
        await rig.scheduler.tick()
        rig.at("2026-12-01T10:00:00Z")
        await rig.scheduler.tick()
        let started = try #require(rig.twin.starts.first)
        #expect(started.0 == "web")
        var record = try #require(try rig.store.record(arn: "arn:aws:imagebuilder:us-east-1:000000000000:image/web/1.0.0/11"))
        record.status = .failed
        record.dateCreated = "2026-11-30T00:00:00Z"
        try rig.store.save(record)
        rig.at("2026-12-01T10:01:00Z")
        await rig.scheduler.tick()
        #expect(rig.twin.disabled == ["web"])
        #expect(try rig.events().first?.reason?.contains("DISABLED by its autoDisablePolicy: 2 automated build(s) failed in a row") == true)
    }
}
