import Foundation
import KilnEngine
import KilnModel
import KilnOCI
import KilnStore
import Logging
import ServiceLifecycle
import Synchronization

/// Starts pipelines on their own: cron and rate schedules, base-image pushes (registry
/// notifications) and polls, and package checks. Every reason to start is stored as a
/// `PipelineEvent` first, then settled `started` (with the image) or `skipped` (with why).
///
/// Policy (documented in the README): a fire while the pipeline's previous build runs is
/// skipped; fires missed while the server was down give one catch-up run at start, never a
/// backfill; fires while the pipeline is DISABLED are not caught up.
public final class PipelineScheduler: Service, Sendable {
    let configuration: KilnConfiguration
    let store: SQLiteStore
    let starter: any PipelineStarter
    let probe: any DependencyProbing
    let logger: Logger
    /// The scheduler's now; tests move it by hand.
    let clock: @Sendable () -> Date

    struct PollState {
        var pipelines: [String]
        var nextAt: Date
        /// Failed polls in a row (429, 5xx, unreachable): the interval doubles per failure.
        var failures = 0
    }

    struct State {
        var pipelines: [String: ScheduledPipeline] = [:]
        var nextFires: [String: Date] = [:]
        var packageChecks: [String: Date] = [:]
        var polls: [String: PollState] = [:]
        var stale = true
        var loadedOnce = false
        /// Reads of every pipeline are at least this far apart, so a burst of API changes
        /// (thousands of CreateImagePipeline calls) costs a few reloads, not one per call.
        var lastReload = Date.distantPast
    }

    private let state = Mutex(State())
    private let stopping = Atomic<Bool>(false)
    let wake: AsyncStream<Void>.Continuation
    private let wakes: AsyncStream<Void>

    public init(
        configuration: KilnConfiguration, store: SQLiteStore, starter: any PipelineStarter, probe: any DependencyProbing, logger: Logger,
        clock: @escaping @Sendable () -> Date = { Date() }
    ) {
        self.configuration = configuration
        self.store = store
        self.starter = starter
        self.probe = probe
        self.logger = logger
        self.clock = clock
        (wakes, wake) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
    }

    /// A pipeline was created, updated or deleted: read them again before the next decision.
    public func pipelinesChanged() {
        state.withLock { $0.stale = true }
        wake.yield()
    }

    /// Stores an event for every enabled pipeline whose parent is a pushed tag; the registry
    /// is answered only after this returns. Returns the pipelines' names.
    public func receive(_ notification: RegistryNotification) throws -> [String] {
        // The cached pipelines unless one changed since they were read (a push must not miss a new pipeline).
        let cached = state.withLock { $0.stale || !$0.loadedOnce ? nil : Array($0.pipelines.values) }
        let pipelines = try (cached ?? starter.scheduledPipelines()).filter(\.enabled)
        let now = clock()
        var matched: [String] = []
        for push in notification.pushes {
            for pipeline in pipelines where RegistryNotification.matches(push, parent: pipeline.parentImage) {
                try store.addEvent(
                    PipelineEvent(
                        pipeline: pipeline.name, kind: .registryPush, receivedAt: Self.seconds(now),
                        dueAt: Self.seconds(now) + configuration.triggers.debounceSeconds,
                        detail: "push of \(push.reference) (\(push.digest))"))
                matched.append(pipeline.name)
            }
        }
        logger.info(
            "registry notification: \(notification.eventCount) event(s), \(notification.pushes.count) tag push(es), stored for \(matched.isEmpty ? "no pipeline" : matched.joined(separator: ", "))"
        )
        if !matched.isEmpty { wake.yield() }
        return matched
    }

    /// The next `count` fires of a pipeline's schedule after `date`.
    public func history(pipeline: String, limit: Int = 100) throws -> [PipelineEvent] {
        try store.events(pipeline: pipeline, limit: limit)
    }

    public func run() async throws {
        logger.info(
            "scheduler: registry notifications \(configuration.triggers.registryEventSecret == nil ? "off" : "on"), parent polls \(configuration.triggers.parentPollSeconds.map { "every \($0) s" } ?? "off"), \(configuration.triggers.packageChecks.count) package check(s)"
        )
        await withGracefulShutdownHandler {
            var iterator = wakes.makeAsyncIterator()
            while !stopping.load(ordering: .relaxed) {
                await tick()
                let delay = max(0.05, min(60, secondsUntilNextWork()))
                let timer = Task { [wake] in
                    try? await Task.sleep(for: .milliseconds(Int(delay * 1000)))
                    wake.yield()
                }
                _ = await iterator.next()
                timer.cancel()
            }
        } onGracefulShutdown: { [self] in
            stopping.store(true, ordering: .relaxed)
            wake.yield()
        }
    }

    /// Everything due now: schedule fires, polls, package checks, then the due events, then
    /// the auto-disable review of builds the scheduler started.
    public func tick() async {
        let now = clock()
        do {
            if state.withLock({ $0.stale && now.timeIntervalSince($0.lastReload) >= Self.reloadSpacing }) { try reload(now: now) }
            try fire(now: now)
            await poll(now: now)
            await checkPackages(now: now)
            for event in try store.dueEvents(now: Self.seconds(now)) {
                guard !stopping.load(ordering: .relaxed) else { break }
                await settle(event, now: now)
            }
            try reviewStarts()
        } catch {
            logger.error("scheduler: \((error as? KilnError)?.message ?? "\(error)")")
        }
    }

    func secondsUntilNextWork() -> Double {
        let now = clock()
        let dueEvent = (try? store.nextDueEvent()).flatMap { $0 }.map { Double($0) - now.timeIntervalSince1970 }
        // A build the scheduler started is looked at every 2 s until it ends (auto-disable).
        let watching = ((try? store.unreviewedStarts()) ?? []).isEmpty ? nil : 2.0
        return state.withLock { state in
            var times = Array(state.nextFires.values) + Array(state.packageChecks.values) + state.polls.values.map(\.nextAt)
            if state.stale { times.append(state.lastReload.addingTimeInterval(Self.reloadSpacing)) }
            let earliest = times.min().map { $0.timeIntervalSince(now) }
            return [earliest, dueEvent, watching].compactMap { $0 }.min() ?? 60
        }
    }

    // MARK: Schedules

    /// Reads the pipelines again. At the first load, fires missed while the server was down
    /// give one catch-up event per pipeline.
    func reload(now: Date) throws {
        let reading = ContinuousClock.now
        let pipelines = try starter.scheduledPipelines()
        let lastFires = try store.schedulerValues(prefix: "fire:")
        let firstLoad = !state.withLock { $0.loadedOnce }
        var writes: [String: String] = [:]
        var nextFires: [String: Date] = [:]
        for pipeline in pipelines {
            guard let schedule = pipeline.schedule else { continue }
            let key = "fire:" + pipeline.name
            let last = lastFires[key].flatMap(Double.init).map { Date(timeIntervalSince1970: $0) }
            guard pipeline.enabled else {
                // No catch-up for fires missed while DISABLED: enabling starts from then.
                writes[key] = String(Int(now.timeIntervalSince1970))
                continue
            }
            guard let last else {
                writes[key] = String(Int(now.timeIntervalSince1970))
                nextFires[pipeline.name] = schedule.nextFire(after: now, anchor: pipeline.anchor)
                continue
            }
            let from = max(last, pipeline.anchor)
            if firstLoad, let missed = schedule.nextFire(after: from, anchor: pipeline.anchor), missed <= now {
                var count = 0
                var latest = missed
                var cursor: Date? = missed
                while let fire = cursor, fire <= now, count < 100_000 {
                    count += 1
                    latest = fire
                    cursor = schedule.nextFire(after: fire, anchor: pipeline.anchor)
                }
                try store.addEvent(
                    PipelineEvent(
                        pipeline: pipeline.name, kind: .schedule, receivedAt: Self.seconds(now), dueAt: Self.seconds(now),
                        detail:
                            "catch-up: \(count) fire(s) of \(schedule.expressionText) missed while kiln server was not running (\(Self.iso(missed))\(count > 1 ? " … \(Self.iso(latest))" : "")); one run, no backfill"
                    ))
                writes[key] = String(Int(latest.timeIntervalSince1970))
                nextFires[pipeline.name] = schedule.nextFire(after: now, anchor: pipeline.anchor)
            } else {
                nextFires[pipeline.name] = schedule.nextFire(after: from, anchor: pipeline.anchor)
            }
        }
        try store.setSchedulerValues(writes)
        let pollInterval = configuration.triggers.parentPollSeconds
        state.withLock { state in
            state.pipelines = Dictionary(pipelines.map { ($0.name, $0) }, uniquingKeysWith: { _, last in last })
            state.nextFires = nextFires
            var polls: [String: PollState] = [:]
            if pollInterval != nil {
                for pipeline in pipelines where pipeline.enabled {
                    guard let reference = try? ImageReference(pipeline.parentImage), reference.digest == nil,
                        !pipeline.parentImage.hasPrefix("kiln:"), !pipeline.parentImage.hasPrefix("oci")
                    else { continue }
                    let key = reference.description
                    polls[key, default: state.polls[key] ?? PollState(pipelines: [], nextAt: now)].pipelines.append(pipeline.name)
                }
                for (key, poll) in polls { polls[key]?.pipelines = Array(Set(poll.pipelines)).sorted() }
            }
            state.polls = polls
            var checks: [String: Date] = [:]
            for check in configuration.triggers.packageChecks where state.pipelines[check.pipeline] != nil {
                checks[check.pipeline] =
                    state.packageChecks[check.pipeline]
                    ?? (try? ScheduleExpression(parsing: check.schedule, timezone: check.timezone))?.nextFire(after: now, anchor: now)
            }
            state.packageChecks = checks
            state.stale = false
            state.loadedOnce = true
            state.lastReload = now
        }
        if firstLoad {
            logger.info(
                "scheduler: \(nextFires.count) scheduled pipeline(s) of \(pipelines.count), read in \(String(format: "%.2f", (ContinuousClock.now - reading).inSeconds)) s; next fire \(nextFires.values.min().map(Self.iso) ?? "none")"
            )
        }
    }

    /// Schedule fires due at `now` become events; each fire time gives at most one.
    func fire(now: Date) throws {
        let due = state.withLock { state in state.nextFires.filter { $0.value <= now }.sorted { $0.key < $1.key } }
        guard !due.isEmpty else { return }
        var writes: [String: String] = [:]
        for (name, fire) in due {
            guard let pipeline = state.withLock({ $0.pipelines[name] }), let schedule = pipeline.schedule else { continue }
            try store.addEvent(
                PipelineEvent(
                    pipeline: name, kind: .schedule, receivedAt: Self.seconds(now), dueAt: Self.seconds(now),
                    detail: "\(schedule.expressionText) fire at \(Self.iso(fire))\(schedule.timeZoneLabel)"))
            writes["fire:" + name] = String(Int(fire.timeIntervalSince1970))
            let next = schedule.nextFire(after: max(fire, now), anchor: pipeline.anchor)
            state.withLock { $0.nextFires[name] = next }
        }
        try store.setSchedulerValues(writes)
    }

    // MARK: Parent polls and package checks

    /// HEAD requests for registry parents due at `now`; a new digest is a `parent-poll` event
    /// of each pipeline using it. A 429 or 5xx doubles the wait (Retry-After wins when longer).
    func poll(now: Date) async {
        guard let interval = configuration.triggers.parentPollSeconds else { return }
        let due = state.withLock { state in state.polls.filter { $0.value.nextAt <= now } }
        for (key, poll) in due.sorted(by: { $0.key < $1.key }) {
            var wait = Double(interval)
            var failures = 0
            do {
                let reference = try ImageReference(key)
                let head = try await probe.headManifest(reference)
                if head.status == 200, let digest = head.digest {
                    let stateKey = "poll:" + key
                    let seen = try store.schedulerValue(stateKey)
                    if let seen, seen != digest {
                        for pipeline in poll.pipelines {
                            try store.addEvent(
                                PipelineEvent(
                                    pipeline: pipeline, kind: .parentPoll, receivedAt: Self.seconds(now),
                                    dueAt: Self.seconds(now) + configuration.triggers.debounceSeconds,
                                    detail: "poll of \(key): \(seen) → \(digest)"))
                        }
                        logger.info("parent poll: \(key) moved \(seen) → \(digest); \(poll.pipelines.joined(separator: ", "))")
                    } else if seen == nil {
                        logger.info("parent poll: \(key) is \(digest) (first look)")
                    }
                    if seen != digest { try store.setSchedulerValue(stateKey, digest) }
                } else {
                    failures = poll.failures + 1
                    let backoff = Double(interval) * pow(2, Double(min(failures, 6)))
                    wait = min(max(backoff, Double(head.retryAfterSeconds ?? 0)), 3_600)
                    logger.warning("parent poll: HEAD \(key) answered HTTP \(head.status); next try in \(Int(wait)) s")
                }
            } catch {
                failures = poll.failures + 1
                wait = min(Double(interval) * pow(2, Double(min(failures, 6))), 3_600)
                logger.warning("parent poll: \(key): \((error as? KilnError)?.message ?? "\(error)"); next try in \(Int(wait)) s")
            }
            state.withLock { state in
                state.polls[key]?.failures = failures
                state.polls[key]?.nextAt = now.addingTimeInterval(wait)
            }
        }
    }

    /// Package checks due at `now`: the pipeline's latest AVAILABLE image's own sources are
    /// asked for upgrades; any upgrade is a `package-check` event, nothing is a skipped one.
    func checkPackages(now: Date) async {
        let due = state.withLock { state in state.packageChecks.filter { $0.value <= now } }
        for (name, _) in due.sorted(by: { $0.key < $1.key }) {
            guard let check = configuration.triggers.packageChecks.first(where: { $0.pipeline == name }),
                let schedule = try? ScheduleExpression(parsing: check.schedule, timezone: check.timezone)
            else { continue }
            state.withLock { $0.packageChecks[name] = schedule.nextFire(after: now, anchor: now) }
            let what = "package check (\(check.schedule)\(check.securityOnly ? ", security updates only" : ""))"
            var event = PipelineEvent(
                pipeline: name, kind: .packageCheck, receivedAt: Self.seconds(now), dueAt: Self.seconds(now), detail: what)
            do {
                guard let latest = try latestAvailable(name) else {
                    event.outcome = .skipped
                    event.reason = "no AVAILABLE image of the pipeline to check yet"
                    try store.addEvent(event)
                    continue
                }
                logger.info("\(what) of pipeline \(name): asking the sources of \(latest.arn)")
                switch await probe.upgradablePackages(of: latest, securityOnly: check.securityOnly) {
                case .upgrades(let upgrades) where !upgrades.isEmpty:
                    event.detail = "\(what): \(upgrades.count) upgradable in \(latest.arn)"
                    event.packages = upgrades
                case .upgrades:
                    event.outcome = .skipped
                    event.reason = "\(latest.arn): no \(check.securityOnly ? "security " : "")package upgrades from its sources"
                case .cannotTell(let why):
                    event.outcome = .skipped
                    event.reason = "\(latest.arn): cannot tell: \(why)"
                }
                try store.addEvent(event)
            } catch {
                logger.error("\(what) of pipeline \(name): \(error)")
            }
        }
    }

    // MARK: Settling events

    /// Decides one due event under the pipeline's start condition, then starts or skips.
    func settle(_ event: PipelineEvent, now: Date) async {
        let decision = await decide(event)
        var imageArn: String?
        var outcome = decision.start ? PipelineEvent.Outcome.started : .skipped
        var reason = decision.reason
        if decision.start {
            do {
                let detail = event.count > 1 ? "\(event.detail) (last of \(event.count) events)" : event.detail
                imageArn = try starter.start(
                    pipeline: event.pipeline,
                    trigger: BuildTrigger(kind: event.kind, detail: detail, changes: decision.changes, packages: event.packages))
            } catch {
                outcome = .skipped
                reason = "could not start: \((error as? KilnError)?.message ?? "\(error)")"
            }
        }
        do {
            try store.settle(id: event.id, outcome: outcome, reason: reason, imageArn: imageArn, resolved: decision.resolved)
        } catch {
            logger.error("scheduler: cannot record event \(event.id): \(error)")
        }
        logger.info(
            "pipeline \(event.pipeline): \(event.kind.rawValue) \(event.detail): \(outcome == .started ? "started \(imageArn ?? "")" : "skipped"); \(reason)"
        )
    }

    struct Decision {
        var start: Bool
        var reason: String
        var changes: [String]? = nil
        var resolved: [String]? = nil
    }

    func decide(_ event: PipelineEvent) async -> Decision {
        guard let pipeline = (try? starter.scheduledPipeline(named: event.pipeline)) ?? nil else {
            return Decision(start: false, reason: "the pipeline no longer exists")
        }
        guard pipeline.enabled else { return Decision(start: false, reason: "the pipeline is DISABLED") }
        let records = (try? store.records(pipeline: pipeline.name, offset: 0, limit: 10_000).items) ?? []
        if let running = records.first(where: \.isRunning) {
            return Decision(
                start: false,
                reason:
                    "the previous build \(running.arn) is still \(running.status.rawValue); a fire while a build runs is skipped, not queued"
            )
        }
        if event.kind == .packageCheck {
            let packages = event.packages ?? []
            return Decision(
                start: true, reason: "package check found \(packages.count) upgrade(s): \(PackageUpgrade.describe(packages, limit: 8))",
                changes: packages.map { "package \($0)" })
        }
        if pipeline.startCondition == .expressionMatchOnly {
            return Decision(start: true, reason: "EXPRESSION_MATCH_ONLY: builds at every match")
        }
        return await dependencyUpdates(pipeline, records: records)
    }

    /// EXPRESSION_MATCH_AND_DEPENDENCY_UPDATES_AVAILABLE: build iff the parent's digest, the
    /// recipe or a component build the references select now differs from what the last
    /// successful image used, or that image's own sources offer package upgrades.
    func dependencyUpdates(_ pipeline: ScheduledPipeline, records: [ImageRecord]) async -> Decision {
        let inputs: ResolvedInputs
        let digest: String
        do {
            inputs = try starter.currentInputs(pipeline: pipeline.name)
            digest = try await probe.parentDigest(inputs.parentImage)
        } catch {
            return Decision(
                start: false, reason: "cannot check for dependency updates: \((error as? KilnError)?.message ?? "\(error)"); not built")
        }
        var resolved =
            ["parent \(inputs.parentImage) = \(digest)", "recipe \(inputs.recipe)"] + inputs.components.map { "component \($0)" }
        guard let last = Self.lastSuccessful(records) else {
            return Decision(
                start: true, reason: "no AVAILABLE image of this pipeline yet", changes: ["first successful build"], resolved: resolved)
        }
        var changes: [String] = []
        if last.parentDigest != digest {
            changes.append("parent \(inputs.parentImage): \(last.parentDigest ?? "unknown") → \(digest)")
        }
        if let recorded = try? starter.recordedInputs(imageArn: last.arn) {
            if recorded.recipe != inputs.recipe { changes.append("recipe \(recorded.recipe) → \(inputs.recipe)") }
            for component in inputs.components where !recorded.components.contains(component) {
                changes.append("component \(component) (was \(Self.sameName(component, in: recorded.components) ?? "not in the recipe"))")
            }
            for component in recorded.components
            where !inputs.components.contains(component) && Self.sameName(component, in: inputs.components) == nil {
                changes.append("component \(component) left the recipe")
            }
        } else {
            changes.append("\(last.arn) recorded no resolved versions")
        }
        if changes.isEmpty {
            switch await probe.upgradablePackages(of: last, securityOnly: false) {
            case .upgrades(let upgrades) where !upgrades.isEmpty:
                changes.append(
                    "\(upgrades.count) package upgrade(s) from the image's sources: \(PackageUpgrade.describe(upgrades, limit: 8))")
            case .upgrades:
                resolved.append("packages: no upgrades from \(last.arn)'s sources")
            case .cannotTell(let why):
                resolved.append("packages: cannot tell (\(why))")
            }
        }
        guard changes.isEmpty else {
            return Decision(
                start: true, reason: "dependency updates since \(last.arn): \(changes.joined(separator: "; "))", changes: changes,
                resolved: resolved)
        }
        return Decision(
            start: false,
            reason:
                "no dependency updates since \(last.arn) (EXPRESSION_MATCH_AND_DEPENDENCY_UPDATES_AVAILABLE): \(resolved.joined(separator: ", ")); set pipelineExecutionStartCondition EXPRESSION_MATCH_ONLY to build at every fire",
            resolved: resolved)
    }

    static func lastSuccessful(_ records: [ImageRecord]) -> ImageRecord? {
        records.filter { $0.status == .available }.max { $0.dateCreated < $1.dateCreated }
    }

    func latestAvailable(_ pipeline: String) throws -> ImageRecord? {
        Self.lastSuccessful(try store.records(pipeline: pipeline, offset: 0, limit: 10_000).items)
    }

    /// The entry of `list` naming the same component as `arn` (another build or version).
    static func sameName(_ arn: String, in list: [String]) -> String? {
        guard let name = try? ImageBuilderARN(parsing: arn).name else { return nil }
        return list.first { (try? ImageBuilderARN(parsing: $0))?.name == name }
    }

    // MARK: Auto-disable

    /// Started builds that ended: a FAILED one may reach the pipeline's autoDisablePolicy.
    func reviewStarts() throws {
        for event in try store.unreviewedStarts() {
            guard let arn = event.imageArn, let record = try store.record(arn: arn) else {
                try store.markReviewed(id: event.id)
                continue
            }
            guard !record.isRunning else { continue }
            try store.markReviewed(id: event.id)
            guard record.status == .failed, let pipeline = state.withLock({ $0.pipelines[event.pipeline] }), pipeline.enabled,
                let limit = pipeline.autoDisableFailureCount
            else { continue }
            let failures = AutoDisablePolicy.consecutiveFailures(
                try store.records(pipeline: pipeline.name, offset: 0, limit: 10_000).items, since: pipeline.anchor)
            guard failures.count >= limit else { continue }
            let now = clock()
            let reason =
                "pipeline DISABLED by its autoDisablePolicy: \(failures.count) automated build(s) failed in a row (\(failures.map(\.arn).joined(separator: ", "))); enable it with update-image-pipeline --status ENABLED"
            try starter.disable(pipeline: pipeline.name, reason: reason)
            try store.addEvent(
                PipelineEvent(
                    pipeline: pipeline.name, kind: event.kind, receivedAt: Self.seconds(now), dueAt: Self.seconds(now),
                    detail: "autoDisablePolicy failureCount \(limit)", outcome: .skipped, reason: reason))
            logger.warning("pipeline \(pipeline.name): \(reason)")
            pipelinesChanged()
        }
    }

    static let reloadSpacing: TimeInterval = 2

    static func seconds(_ date: Date) -> Int { Int(date.timeIntervalSince1970.rounded(.down)) }

    static func iso(_ date: Date) -> String { ISO8601DateFormatter().string(from: date) }
}

/// Image Builder's `consecutiveFailures`: automated builds (schedule, base image, packages)
/// that FAILED since the last success; manual failures do not count, and an update of the
/// pipeline starts the count again.
public enum AutoDisablePolicy {
    public static func consecutiveFailures(_ records: [ImageRecord], since anchor: Date) -> [ImageRecord] {
        let formatter = ISO8601DateFormatter()
        var failures: [ImageRecord] = []
        for record in records.sorted(by: { $0.dateCreated > $1.dateCreated }) where !record.isRunning {
            if let created = formatter.date(from: record.dateCreated), created < anchor { break }
            if record.status == .available { break }
            if record.status == .failed, let trigger = record.trigger, trigger.kind != .manual { failures.append(record) }
        }
        return failures
    }
}

extension ScheduleExpression {
    var expressionText: String {
        switch self {
        case .cron(let cron): cron.text
        case .rate(_, let text): text
        }
    }

    var timeZoneLabel: String {
        guard case .cron(let cron) = self, cron.timeZone.identifier != "UTC", cron.timeZone.identifier != "GMT" else { return "" }
        return " (\(cron.timeZone.identifier))"
    }
}

extension PipelineScheduler {
    /// `kiln pipeline fire`: a schedule event now, decided under the pipeline's start condition
    /// exactly as a cron fire would be.
    public func fireNow(pipeline name: String) throws -> Int64 {
        guard let pipeline = try starter.scheduledPipeline(named: name) else {
            throw KilnError(.notFound, "image pipeline '\(name)' does not exist")
        }
        let now = clock()
        let id = try store.addEvent(
            PipelineEvent(
                pipeline: pipeline.name, kind: .schedule, receivedAt: Self.seconds(now), dueAt: Self.seconds(now),
                detail: "fired on request (kiln pipeline fire)\(pipeline.schedule.map { ", schedule \($0.expressionText)" } ?? "")"))
        wake.yield()
        return id
    }
}
