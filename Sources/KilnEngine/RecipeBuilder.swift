import Foundation
import KilnInstances
import KilnModel
import KilnOCI
import KilnSystem
import KilnTOE
import Synchronization

/// A recipe's component, resolved: its definition, build-version ARN, document and parameters.
struct RecipeComponent: Sendable {
    var definition: ComponentDefinition
    var arn: String
    var run: TOEDocumentRun
    /// The digest of the document's bytes, for the cache key.
    var documentDigest: Digest

    var label: String { "\(definition.name)/\(definition.semanticVersion)" }
}

/// The BUILD and TEST stages of a container recipe. BUILD applies the Dockerfile template's
/// instructions and the components (each its build then validate phase, as AWSTOE runs a
/// document) in template order in one builder instance, packing each step's changes as its own
/// layer; a step whose cache key is known is not run, and the builder starts only at the first
/// step that is not cached. TEST runs the components' test phases in a fresh instance.
struct RecipeBuilder: Sendable {
    /// A step that failed: which, where its log is, and why.
    struct StepFailure: Error {
        var step: String
        var log: String?
        var reason: String
    }

    let host: InstanceHost
    /// `name/x.y.z` of the recipe, for history (never the build number, so rebuilds match).
    let recipeLabel: String
    let template: DockerfileTemplate
    let components: [RecipeComponent]
    let type: InstanceType
    let logRoot: String
    let context: String
    let sourceDateEpoch: Int64?
    let progress: @Sendable (String) -> Void
    /// Builders' and package checks' network (kiln.yaml `builderNetwork`).
    var network: InstanceNetwork = .isolated
    /// The recipe's workingDirectory: the TOE's scratch folders go inside it.
    var workingDirectory: String?

    /// What the instructions set on the image, gathered while building.
    struct ImageSettings {
        var environment: [String: String] = [:]
        var arguments: [String: String] = [:]
        var workingDir: String?
        var user: String?
        var snapshot: ContainerInstance.SnapshotSettings
    }

    /// One step of the build in order: a template instruction, or one component.
    enum BuildStep {
        case instruction(DockerfileTemplate.Step)
        case component(RecipeComponent)

        /// Whether the step can change files (and so gets a layer and a cache entry).
        var changesFiles: Bool {
            switch self {
            case .component: true
            case .instruction(let step):
                switch step.instruction {
                case .run, .copy, .add, .workdir: true
                default: false
                }
            }
        }
    }

    /// What BUILD did: the image, how many steps came from the cache, the builder's usage (nil
    /// when every step was cached and no builder started) and the freshness checks' usage.
    struct Outcome {
        var image: Descriptor
        var reusedSteps: Int
        var builtSteps: Int
        var builder: ContainerInstance.Usage?
        var checks: [ContainerInstance.Usage] = []
    }

    var steps: [BuildStep] {
        template.steps.flatMap { step -> [BuildStep] in
            if case .components = step.instruction { return components.map { .component($0) } }
            return [.instruction(step)]
        }
    }

    /// BUILD's plan: each step's key, its cached image if any, and which steps run and why.
    struct Plan {
        struct Step {
            var step: BuildStep
            var label: String
            var key: Digest
            /// The digest of the step's own input, to say later what changed.
            var input: Digest
            var cached: Descriptor?
        }

        var steps: [Step]
        /// One per file-changing step, in order.
        var decisions: [CacheDecision]
        /// The first step (an index into `steps`) that runs; nil when every step is reused.
        var firstRun: Int?
        /// The upgrades that made cached steps run again.
        var packageUpdates: [PackageUpgrade]
        var policy: PackageUpdatePolicy
        /// Instances the freshness check started.
        var checks: [ContainerInstance.Usage]
    }

    /// Decides, without running anything in a builder, which steps are reused and which run. A
    /// cached chain is reused only while an uncached build could not give newer packages: when
    /// one of its steps is a package step (see `PackageState`), the image's own sources are
    /// asked (index fingerprints from the host first, then the package manager in a throwaway
    /// instance). Upgrades they offer run the steps again from the first package step; earlier
    /// steps installed no package, so their results cannot be newer. When a later step runs, it
    /// may read the cached package lists, so those must be as fresh as when the package step
    /// ran: changed indexes then run the steps again from the first package step too.
    /// `saveChecks: false` (`--explain-cache`) leaves the freshness records as they are.
    func plan(
        parent: Descriptor, useCache: Bool, policy: PackageUpdatePolicy, previous: ImageRecord?, caCertificates: [String: String],
        saveChecks: Bool = true
    ) async throws -> Plan {
        let store = host.store
        var key = BuildCacheKey.first(parent: parent.digest, platform: Platform.host.description, sourceDateEpoch: sourceDateEpoch)
        var planned: [Plan.Step] = []
        for step in steps {
            let text = try cacheText(step)
            key = BuildCacheKey.next(key, text)
            let cached = useCache && step.changesFiles ? try store.resolve(BuildCacheKey.tag(key)) : nil
            planned.append(Plan.Step(step: step, label: describe(step), key: key, input: Digest(sha256Of: Data(text.utf8)), cached: cached))
        }
        let fileSteps = planned.indices.filter { planned[$0].step.changesFiles }
        let prefix = Array(fileSteps.prefix { planned[$0].cached != nil })
        var firstRun = fileSteps.first { !prefix.contains($0) }
        var packageUpdates: [PackageUpgrade] = []
        var checks: [ContainerInstance.Usage] = []
        var firstRunReason: String?

        // Why a reused step is current: before the first step that changed package state, no
        // package update can reach it; from there on, the freshness check (or the policy) says.
        let untouched = "cached; it installed no packages, so package updates cannot change it"
        var firstPackageStep: Int?
        var packageReuseReason = untouched
        if !prefix.isEmpty {
            switch policy {
            case .ignore: packageReuseReason = "cached; package updates not checked (kilnCache: {packageUpdates: ignore})"
            case .offline: packageReuseReason = "cached; package sources not asked (offline)"
            case .check:
                var below = try store.image(parent.digest).manifest.layers.count
                var packageSteps: [Int] = []
                for index in prefix {
                    let (manifest, config) = try store.image(planned[index].cached!.digest)
                    let own = Array(zip(manifest.layers, config.rootfs.diffIDs).dropFirst(below))
                    below = manifest.layers.count
                    if try PackageState.touched(own, host: host) || PackageState.invokesPackageManager(planned[index].step) {
                        packageSteps.append(index)
                    }
                }
                if let first = packageSteps.first, let last = packageSteps.last {
                    firstPackageStep = first
                    let (freshness, usage) = await freshness(
                        of: planned[last], laterStepRuns: firstRun != nil, caCertificates: caCertificates, saveChecks: saveChecks
                    )
                    if let usage { checks.append(usage) }
                    switch freshness {
                    case .current(let why): packageReuseReason = "cached; \(why)"
                    case .stale(let upgrades, let why):
                        firstRun = first
                        packageUpdates = upgrades
                        firstRunReason = why
                    }
                }
            }
        }
        var decisions: [CacheDecision] = []
        for (ordinal, index) in fileSteps.enumerated() {
            let step = planned[index]
            let decision: CacheDecision.Outcome
            let reason: String
            if let firstRun, index >= firstRun {
                decision = .run
                if !useCache {
                    reason = "--no-cache"
                } else if index == firstRun {
                    reason = firstRunReason ?? whyNotCached(step, ordinal: ordinal, parent: parent, previous: previous)
                } else {
                    reason = "an earlier step runs (\(planned[firstRun].label)), so this one runs on its result"
                }
            } else {
                decision = .reused
                let why = (policy == .check && (firstPackageStep.map { index < $0 } ?? true)) ? untouched : packageReuseReason
                reason = "\(why); step key \(step.key.encoded.prefix(12))"
            }
            decisions.append(
                CacheDecision(
                    step: step.label, decision: decision, reason: reason, key: step.key.description, input: step.input.description))
        }
        return Plan(
            steps: planned, decisions: decisions, firstRun: firstRun, packageUpdates: packageUpdates, policy: policy, checks: checks)
    }

    /// Why the first uncached step has no cache entry, by comparing with the recipe's previous build.
    private func whyNotCached(_ step: Plan.Step, ordinal: Int, parent: Descriptor, previous: ImageRecord?) -> String {
        guard let previous, let earlier = previous.cacheDecisions else { return "not in the cache: not built before with these inputs" }
        let label = "\(previous.name)/\(previous.version)/\(previous.build)"
        if let old = previous.parentDigest, old != parent.digest.description {
            return "the parent moved since \(label): \(old) → \(parent.digest)"
        }
        if earlier.contains(where: { $0.key == step.key.description }) {
            return "its cached result is gone (kiln image gc --build-cache, or an interrupted build)"
        }
        if ordinal < earlier.count, earlier[ordinal].input != step.input.description {
            return "its input changed since \(label)"
        }
        return ordinal < earlier.count
            ? "an input before it changed since \(label) (SOURCE_DATE_EPOCH, platform or parent)" : "a new step since \(label)"
    }

    enum Freshness {
        case current(String)
        case stale([PackageUpgrade], String)
    }

    /// Whether the cached image of `step` (the last cached package step) could be newer.
    /// Indexes unchanged since the step ran (or since a check found nothing newer) say no at
    /// once. When a later step runs, only "unchanged since the step ran" will do, because that
    /// step may install from the cached lists. Otherwise the package manager is asked, and only
    /// upgrades that a fresh run did not already leave behind count.
    func freshness(of step: Plan.Step, laterStepRuns: Bool, caCertificates: [String: String], saveChecks: Bool) async -> (
        Freshness, ContainerInstance.Usage?
    ) {
        guard let image = step.cached else { return (.stale([], "no cached image"), nil) }
        var record = FreshnessRecord.load(key: step.key, dataDirectory: host.dataDirectory)
        let started = ContinuousClock.now
        let (fingerprint, indexes, unreadable) = await indexFingerprint(image, caCertificates: caCertificates)
        let fetched = String(format: "%.2f s", (ContinuousClock.now - started).inSeconds)
        if let unreadable {
            progress("BUILD: cache: package indexes not fingerprinted from the host (\(unreadable))")
        } else {
            progress("BUILD: cache: \(indexes.count) package index(es) of \(step.label) fetched from the host in \(fetched)")
        }
        let since = record?.checked ?? "the last check"
        if laterStepRuns {
            guard let fingerprint, fingerprint.description == record?.ranFingerprint else {
                let why =
                    fingerprint == nil
                    ? "cannot be fingerprinted from the host"
                    : (record?.ranFingerprint == nil ? "have no fingerprint from when it ran" : "changed since it ran")
                return (.stale([], "its package indexes \(why), and a later step runs and may install from its package lists"), nil)
            }
            return (.current("package indexes unchanged since it ran (\(indexes.count) index(es) fetched from the host)"), nil)
        }
        if let record, let fingerprint, [record.ranFingerprint, record.checkedFingerprint].contains(fingerprint.description) {
            return (.current("package indexes unchanged since \(since) (\(indexes.count) index(es) fetched from the host)"), nil)
        }
        progress(
            "BUILD: cache: \(record == nil ? "first check of" : "package indexes changed for") \(step.label); asking its package sources in a throwaway instance"
        )
        let askStarted = ContinuousClock.now
        let (answer, usage) = await PackageUpgradeQuery(host: host, type: type, network: network).ask(image)
        progress("BUILD: cache: asked in \(String(format: "%.2f s", (ContinuousClock.now - askStarted).inSeconds))")
        switch answer {
        case .noPackageManager(let why):
            return (.current(why), usage)
        case .unreachable(let why):
            return (.stale([], "its package sources could not be asked, so it runs as an uncached build would: \(why)"), usage)
        case .upgrades(let offered, let manager):
            let news = FreshnessRule.newUpgrades(offered, remaining: record?.remainingUpgrades)
            guard news.isEmpty else { return (.stale(news, "packages upgradable: \(PackageUpgrade.describe(news))"), usage) }
            if saveChecks {
                record = record ?? FreshnessRecord(indexes: indexes, remainingUpgrades: [], checked: Self.now())
                record!.checkedFingerprint = fingerprint?.description
                record!.checked = Self.now()
                record!.save(key: step.key, dataDirectory: host.dataDirectory)
            }
            if offered.isEmpty { return (.current("\(manager.rawValue) offers no upgrade"), usage) }
            return (
                .current(
                    "the \(offered.count) upgrade(s) \(manager.rawValue) offers were left by a fresh run of these steps too: \(PackageUpgrade.describe(offered, limit: 5))"
                ), usage
            )
        }
    }

    /// The fingerprint of the package indexes `image` names, fetched from the host; nil with
    /// the reason when the sources cannot be read or fetched there.
    func indexFingerprint(_ image: Descriptor, caCertificates: [String: String]) async -> (Digest?, [String], String?) {
        do {
            let files = try ImageFiles(image: image, host: host)
            guard let sources = try PackageSources.read(files, architecture: try host.store.image(image.digest).config.architecture) else {
                return (nil, [], "no apt, dnf or apk in the image")
            }
            let (digest, indexes) = try await sources.fingerprint(caCertificates: caCertificates)
            return (digest, indexes, nil)
        } catch {
            return (nil, [], (error as? PackageSources.Unreadable)?.reason ?? (error as? KilnError)?.message ?? "\(error)")
        }
    }

    /// Right after a package step ran: the fingerprint of the indexes it ran against, fetched
    /// from the host at once, so the next build can tell whether the sources moved since.
    func recordRun(key: Digest, image: Descriptor, caCertificates: [String: String]) async {
        let (fingerprint, indexes, unreadable) = await indexFingerprint(image, caCertificates: caCertificates)
        FreshnessRecord(ranFingerprint: fingerprint?.description, indexes: indexes, remainingUpgrades: nil, checked: Self.now()).save(
            key: key, dataDirectory: host.dataDirectory)
        if let unreadable {
            progress(
                "BUILD: cache: package indexes not fingerprinted from the host (\(unreadable)); the next build asks the package manager")
        }
    }

    /// After steps ran because of upgrades: what the sources still offer, so the next build
    /// knows which upgrades the recipe's steps do not pick up.
    func recordRemaining(key: Digest, image: Descriptor) async -> ContainerInstance.Usage? {
        let (answer, usage) = await PackageUpgradeQuery(host: host, type: type, network: network).ask(image)
        if case .upgrades(let offered, let manager) = answer, var record = FreshnessRecord.load(key: key, dataDirectory: host.dataDirectory)
        {
            record.remainingUpgrades = offered
            record.save(key: key, dataDirectory: host.dataDirectory)
            progress(
                "BUILD: cache: after the build, \(manager.rawValue) offers \(offered.isEmpty ? "no upgrade" : PackageUpgrade.describe(offered, limit: 5)); recorded for the next build"
            )
        }
        return usage
    }

    static func now() -> String { ISO8601DateFormatter().string(from: Date()) }

    func build(plan: Plan, parent: Descriptor, as name: String, keepOnFailure: Bool, caCertificates: [String: String]) async throws
        -> Outcome
    {
        let store = host.store
        let (parentManifest, parentConfig) = try store.image(parent.digest)
        var settings = ImageSettings(snapshot: .init(history: "kiln build \(recipeLabel)", sourceDateEpoch: sourceDateEpoch))
        var layers: [ContainerInstance.PackedLayer] = []
        var builder: ContainerInstance?
        var baseline: DirectoryState?
        var reused = 0, built = 0
        /// The last step built in this run that changed package state, and its cached image.
        var lastPackageStep: (key: Digest, image: Descriptor)?
        for decision in plan.decisions { progress("BUILD: cache: \(decision.line)") }
        do {
            for (index, planned) in plan.steps.enumerated() {
                let step = planned.step
                let label = planned.label
                record(step, settings: &settings)
                guard step.changesFiles else {
                    settings.snapshot.layerHistory.append((label, true))
                    continue
                }
                if plan.firstRun.map({ index < $0 }) ?? true, let cached = planned.cached {
                    let (manifest, config) = try store.image(cached.digest)
                    let added = Array(zip(manifest.layers, config.rootfs.diffIDs).dropFirst(parentManifest.layers.count))
                    settings.snapshot.layerHistory.append((label, added.count == layers.count))
                    layers = added.map { ContainerInstance.PackedLayer(descriptor: $0.0, diffID: $0.1, entries: 1) }
                    progress("BUILD: \(label): cached, not run (step key \(planned.key.encoded.prefix(12)))")
                    reused += 1
                    continue
                }
                if builder == nil {
                    let start =
                        layers.isEmpty
                        ? parent
                        : try ContainerInstance.compose(
                            base: parentManifest, config: parentConfig, layers: layers,
                            settings: .init(history: "kiln cache", sourceDateEpoch: sourceDateEpoch), in: store, name: nil
                        )
                    builder = try await ContainerInstance.start(
                        image: start, on: host, options: InstanceOptions(type: type, network: network), name: name)
                    progress(
                        "BUILD: builder \(builder!.id) (\(type.name)) from \(start.digest.encoded.prefix(12))\(layers.isEmpty ? "" : " (the parent and \(reused) cached step(s))")"
                    )
                }
                try await execute(step, in: builder!, settings: &settings)
                // A cancelled step may have stopped half-way: it must not enter the cache.
                try Task.checkCancellation()
                let (packed, state) = try builder!.packLayer(since: baseline, sourceDateEpoch: sourceDateEpoch)
                baseline = state
                if packed.entries > 0 { layers.append(packed) }
                settings.snapshot.layerHistory.append((label, packed.entries == 0))
                let cachedImage = try ContainerInstance.compose(
                    base: parentManifest, config: parentConfig, layers: layers,
                    settings: .init(history: "kiln cache", sourceDateEpoch: sourceDateEpoch), in: store,
                    name: BuildCacheKey.tag(planned.key)
                )
                let touched =
                    try packed.entries > 0
                    && PackageState.touched(layerFolder: try host.layers.unpack(packed.descriptor, diffID: packed.diffID, store: store))
                if plan.policy == .check, touched || PackageState.invokesPackageManager(step) {
                    lastPackageStep = (planned.key, cachedImage)
                    await recordRun(key: planned.key, image: cachedImage, caCertificates: caCertificates)
                }
                built += 1
            }
            settings.snapshot.environment = settings.environment
            settings.snapshot.workingDir = settings.workingDir
            settings.snapshot.user = settings.user
            let image = try ContainerInstance.compose(
                base: parentManifest, config: parentConfig, layers: layers, settings: settings.snapshot, in: store, name: name)
            progress("BUILD: image \(image.digest) (\(reused) step(s) cached, \(built) built, \(layers.count) new layer(s))")
            let usage = builder?.usage()
            await builder?.destroy()
            var checks = plan.checks
            if let lastPackageStep, !plan.packageUpdates.isEmpty,
                let check = await recordRemaining(key: lastPackageStep.key, image: lastPackageStep.image)
            {
                checks.append(check)
            }
            return Outcome(image: image, reusedSteps: reused, builtSteps: built, builder: usage, checks: checks)
        } catch {
            if let builder {
                if keepOnFailure, !Task.isCancelled {
                    try? builder.keep()
                    progress(
                        "BUILD: kept \(builder.id) for debugging (terminateInstanceOnFailure: false); kiln instance shell \(builder.id)")
                } else {
                    await builder.destroy()
                }
            }
            if let failure = error as? StepFailure { throw failure }
            throw StepFailure(step: "snapshot", log: nil, reason: (error as? KilnError)?.message ?? "\(error)")
        }
    }

    /// How a step reads in progress lines and the image's history.
    private func describe(_ step: BuildStep) -> String {
        switch step {
        case .component(let component): "kiln component \(component.label)"
        case .instruction(let step):
            switch step.instruction {
            case .run(let command): "RUN " + command.joined(separator: " ")
            case .copy(let sources, let destination, _): "COPY \(sources.joined(separator: " ")) \(destination)"
            case .add(let sources, let destination, _): "ADD \(sources.joined(separator: " ")) \(destination)"
            case .workdir(let path): "WORKDIR \(path)"
            default: "\(step.instruction)".prefix(200).description
            }
        }
    }

    /// What decides a step's result, for its cache key (see BuildCacheKey).
    private func cacheText(_ step: BuildStep) throws -> String {
        switch step {
        case .component(let component):
            // The folder stays in the image, so where it is is part of the step.
            return BuildCacheKey.component(component) + (workingDirectory.map { " workingDirectory=\($0)" } ?? "")
        case .instruction(let step):
            switch step.instruction {
            case .healthcheck(let command, let options):
                return "HEALTHCHECK \(command ?? []) \(options.sorted { $0.key < $1.key })"
            case .copy(let sources, _, _), .add(let sources, _, _):
                let contents = try sources.map { "\($0)=\(try BuildCacheKey.contentDigest(context + "/" + $0))" }
                return "\(step.instruction) \(contents.joined(separator: " "))"
            default:
                return "\(step.instruction)"
            }
        }
    }

    /// Applies what a step sets on the image (whether it runs or comes from the cache).
    private func record(_ step: BuildStep, settings: inout ImageSettings) {
        guard case .instruction(let step) = step else { return }
        switch step.instruction {
        case .env(let pairs):
            for pair in pairs { settings.environment[pair.name] = pair.value }
        case .arg(let name, let value):
            settings.arguments[name] = value ?? ""
        case .workdir(let path):
            settings.workingDir = path.hasPrefix("/") ? path : (settings.workingDir ?? "/") + "/" + path
        case .user(let user):
            settings.user = user
        case .entrypoint(let command):
            settings.snapshot.entrypoint = command
        case .cmd(let command):
            settings.snapshot.cmd = command
        case .label(let pairs):
            for pair in pairs { settings.snapshot.labels[pair.name] = pair.value }
        case .expose(let ports):
            settings.snapshot.exposedPorts += ports
        case .volume(let paths):
            settings.snapshot.volumes += paths
        case .stopSignal(let signal):
            settings.snapshot.stopSignal = signal
        case .from, .environments, .components, .shell, .healthcheck, .run, .copy, .add:
            break
        }
    }

    /// Runs a step that changes files in the builder.
    private func execute(_ step: BuildStep, in instance: ContainerInstance, settings: inout ImageSettings) async throws {
        let session = instance.session
        switch step {
        case .component(let component):
            let index = (components.firstIndex { $0.arn == component.arn } ?? 0) + 1
            try await runComponents(
                [component], phases: ["build", "validate"], in: session,
                folder: logRoot + "/build/" + String(format: "%02d-", index) + ImageBuilderARN.normalizedName(component.definition.name),
                stage: "BUILD"
            )
        case .instruction(let step):
            let place = "line \(step.line)"
            switch step.instruction {
            case .run(let command):
                progress("BUILD: RUN \(command.joined(separator: " ").prefix(100))")
                var environment = settings.arguments
                environment.merge(settings.environment) { _, new in new }
                let output = LineEcho(prefix: "BUILD: ", progress: progress)
                let result = try await session.exec(
                    ExecRequest(
                        executable: command[0], arguments: Array(command.dropFirst()), environment: environment,
                        workingDirectory: settings.workingDir, user: settings.user
                    )
                ) { _, bytes in output.append(bytes) }
                output.flush()
                guard result.exitCode == 0 else {
                    throw StepFailure(
                        step: "RUN at \(place)", log: nil, reason: "the command exited with \(result.exitCode): \(output.tail)")
                }
            case .workdir:
                try await session.createDirectory(settings.workingDir ?? "/", mode: 0o755)
            case .copy(let sources, let destination, let owner), .add(let sources, let destination, let owner):
                progress("BUILD: \(describe(.instruction(step)))")
                try await copy(sources, to: destination, owner: owner, into: session, workingDir: settings.workingDir, place: place)
            default:
                break
            }
        }
    }

    /// COPY from the context folder; sources must stay inside it.
    private func copy(
        _ sources: [String], to destination: String, owner: String?, into session: ContainerSession, workingDir: String?, place: String
    ) async throws {
        // realpath(3): Foundation's link resolution keeps a relative target's `..` unresolved.
        let contextRoot = Self.realPath(context) ?? URL(fileURLWithPath: context).standardizedFileURL.path
        let target = destination.hasPrefix("/") ? destination : (workingDir ?? "/") + "/" + destination
        let intoFolder = destination.hasSuffix("/") || sources.count > 1
        for source in sources {
            let hostPath = URL(fileURLWithPath: contextRoot + "/" + source).standardizedFileURL.path
            guard hostPath == contextRoot || hostPath.hasPrefix(contextRoot + "/") else {
                throw StepFailure(step: "COPY at \(place)", log: nil, reason: "'\(source)' is outside the build context \(contextRoot)")
            }
            // A link named as the source is followed only while it stays in the context: a link
            // to ~/.docker/config.json must not bring the host's file into the image.
            let resolved = Self.realPath(hostPath) ?? hostPath
            guard resolved == contextRoot || resolved.hasPrefix(contextRoot + "/") else {
                throw StepFailure(
                    step: "COPY at \(place)", log: nil,
                    reason:
                        "'\(source)' is a symlink to '\(resolved)', outside the build context \(contextRoot); COPY does not follow links out of the context, so copy the file itself into it"
                )
            }
            var isDirectory: ObjCBool = false
            guard FileManager.default.fileExists(atPath: resolved, isDirectory: &isDirectory) else {
                throw StepFailure(
                    step: "COPY at \(place)", log: nil, reason: "'\(source)' does not exist in the build context \(contextRoot)")
            }
            let name = (hostPath as NSString).lastPathComponent
            let destinationPath = isDirectory.boolValue ? target : (intoFolder ? target + "/" + name : target)
            do {
                try await copyTree(resolved, to: destinationPath, isDirectory: isDirectory.boolValue, session: session)
            } catch let error as KilnError {
                throw StepFailure(step: "COPY at \(place)", log: nil, reason: error.message)
            }
            if let owner {
                let parts = owner.split(separator: ":").map(String.init)
                try await session.setOwner(
                    destinationPath, owner: parts.first, group: parts.count > 1 ? parts[1] : parts.first, recursive: true)
            }
        }
    }

    /// Every link and `..` resolved by the kernel; nil when the path does not exist.
    static func realPath(_ path: String) -> String? {
        guard let resolved = realpath(path, nil) else { return nil }
        defer { free(resolved) }
        return String(cString: resolved)
    }

    /// Folders recursively, regular files by content, symlinks inside folders as symlinks (like
    /// docker build); a FIFO, device or socket in the context is refused by name.
    private func copyTree(_ hostPath: String, to path: String, isDirectory: Bool, session: ContainerSession) async throws {
        if isDirectory {
            try await session.createDirectory(path, mode: 0o755)
            for child in try FileManager.default.contentsOfDirectory(atPath: hostPath).sorted() {
                var info = stat()
                guard lstat(hostPath + "/" + child, &info) == 0 else { continue }
                if info.st_mode & S_IFMT == S_IFLNK {
                    let target = try FileManager.default.destinationOfSymbolicLink(atPath: hostPath + "/" + child)
                    if try await session.fileInfo(path + "/" + child, followSymlinks: false) != nil {
                        try await session.remove(path + "/" + child, recursive: true)
                    }
                    try await session.createSymlink(path + "/" + child, target: target)
                    continue
                }
                try await copyTree(
                    hostPath + "/" + child, to: path + "/" + child, isDirectory: info.st_mode & S_IFMT == S_IFDIR, session: session)
            }
        } else {
            try await session.createDirectory((path as NSString).deletingLastPathComponent, mode: 0o755)
            let (fd, size) = try HostFileIO.openRegular(hostPath, describe: "'\(hostPath)' in the build context")
            close(fd)
            guard size <= 1 << 30 else {
                throw KilnError(.invalidArgument, "'\(hostPath)' in the build context is \(size >> 20) MiB; COPY takes files up to 1 GiB")
            }
            let attributes = try FileManager.default.attributesOfItem(atPath: hostPath)
            let mode = (attributes[.posixPermissions] as? NSNumber)?.uint32Value ?? 0o644
            let contents = try HostFileIO.readRegular(hostPath, describe: "'\(hostPath)' in the build context", limit: 1 << 30)
            try await session.writeFile(path, contents: contents, append: false, mode: mode)
            try await session.setPermissions(path, mode: mode, recursive: false)
        }
    }

    /// Runs `components`' `phases` as one TOE run; a failure names the component and step.
    private func runComponents(
        _ components: [RecipeComponent], phases: [String], in session: any InstanceSession, folder: String, stage: String
    ) async throws {
        let outcome = try await runTOE(components, phases: phases, in: session, folder: folder, stage: stage)
        if let failure = Self.failure(of: outcome, folder: folder) { throw failure }
    }

    func runTOE(_ components: [RecipeComponent], phases: [String], in session: any InstanceSession, folder: String, stage: String)
        async throws -> TOERunOutcome
    {
        let log = try TOELogWriter(folder: folder, echo: { progress("\(stage): \($0)") })
        try? TOELogFolder.writeDocuments(components.map(\.run.document), to: folder)
        var options = TOEOptions()
        options.workingDirectory = workingDirectory
        let outcome = await TOERunner(session: session, options: options).run(
            TOERunRequest(documents: components.map(\.run), phases: phases), log: log, resume: nil
        )
        try? TOELogFolder.writeResults(outcome, to: folder)
        return outcome
    }

    static func failure(of outcome: TOERunOutcome, folder: String) -> StepFailure? {
        failure(of: outcome.report, succeeded: outcome.succeeded, folder: folder)
    }

    static func failure(of report: RunReport, succeeded: Bool, folder: String) -> StepFailure? {
        guard !succeeded else { return nil }
        let failedDocument = report.documents.first { $0.status == .failed }
        let failedPhase = failedDocument?.phases.first { $0.status == .failed }
        let failedStep = failedPhase?.steps.first { $0.status == .failed }
        let step = [failedDocument?.name, failedPhase?.name, failedStep?.name].compactMap { $0 }.joined(separator: "/")
        return StepFailure(
            step: step.isEmpty ? "components" : step, log: folder, reason: failedStep?.failureMessage ?? report.failureMessage)
    }

    /// TEST: a fresh instance from the new image, without network, runs the components' test
    /// phases; a container image's `container-host-test` phases then run on the Kiln host, as
    /// Image Builder runs them on its build host; then another fresh instance (so nothing the tests left running is in the way) runs
    /// Kiln's suites. Results go to `logs/test/tests.json` and `junit.xml`. Returns the test
    /// instances' usage.
    func test(
        image: Descriptor, suites: KilnTests, parentLayers: Int, imageLabel: String, hostTests: Bool,
        keepOnFailure: Bool
    ) async throws -> [ContainerInstance.Usage] {
        let folder = logRoot + "/test"
        var results: [TestCaseResult] = []
        var usages: [ContainerInstance.Usage] = []
        func fresh() async throws -> ContainerInstance {
            let instance = try await ContainerInstance.start(image: image, on: host, options: InstanceOptions(type: type, network: .none))
            progress("TEST: test instance \(instance.id) from \(image.digest.encoded.prefix(12))")
            return instance
        }
        func finish(_ instance: ContainerInstance, failed: Bool) async {
            usages.append(instance.usage())
            if failed, keepOnFailure, !Task.isCancelled {
                try? instance.keep()
                progress("TEST: kept \(instance.id) for debugging (terminateInstanceOnFailure: false); kiln instance shell \(instance.id)")
            } else {
                await instance.destroy()
            }
        }
        var firstFailure: StepFailure?
        let testable = components.filter { $0.run.document.phases.contains { $0.name == "test" } }
        if !testable.isEmpty {
            let instance = try await fresh()
            do {
                let outcome = try await runTOE(testable, phases: ["test"], in: instance.session, folder: folder, stage: "TEST")
                firstFailure = Self.failure(of: outcome, folder: folder)
                results += Self.results(of: outcome, suite: { "component \($0)" })
            } catch {
                firstFailure = StepFailure(step: "component tests", log: folder, reason: (error as? KilnError)?.message ?? "\(error)")
            }
            await finish(instance, failed: firstFailure != nil)
        }
        let hostTestable = components.filter { $0.run.document.phases.contains { $0.name == "container-host-test" } }
        if hostTests, !hostTestable.isEmpty {
            progress("TEST: container-host-test for \(hostTestable.map(\.label).joined(separator: ", "))")
            let logFolder = folder + "/container-host-test"
            do {
                let report = try await HostTestRun(store: host.store, progress: progress).run(
                    hostTestable, image: image, logFolder: logFolder)
                if firstFailure == nil { firstFailure = Self.failure(of: report, succeeded: report.status != .failed, folder: logFolder) }
                results += Self.results(of: report, suite: { "component \($0) (container-host-test)" })
            } catch {
                if firstFailure == nil {
                    firstFailure = StepFailure(
                        step: "container-host-test", log: logFolder, reason: (error as? KilnError)?.message ?? "\(error)")
                }
            }
        }
        let instance = try await fresh()
        let (suiteResults, extra) = await ImageTestSuites(
            settings: suites, host: host, type: type, parentLayerCount: parentLayers, progress: progress, network: network
        ).run(image: image, in: instance)
        results += suiteResults
        usages += extra
        let failed = results.filter { $0.status == .failed }, skipped = results.filter { $0.status == .skipped }
        if firstFailure == nil, let failed = failed.first {
            firstFailure = StepFailure(step: "\(failed.suite)/\(failed.name)", log: folder + "/junit.xml", reason: failed.message)
        }
        await finish(instance, failed: !failed.isEmpty)
        try TestReportWriter.write(results, image: imageLabel, to: folder)
        progress(
            "TEST: \(results.count - failed.count - skipped.count) passed, \(failed.count) failed, \(skipped.count) skipped; \(folder)/junit.xml"
        )
        if let firstFailure { throw firstFailure }
        return usages
    }

    /// Each step of a TOE run as a test case.
    static func results(of outcome: TOERunOutcome, suite: (String) -> String) -> [TestCaseResult] {
        results(of: outcome.report, suite: suite)
    }

    static func results(of report: RunReport, suite: (String) -> String) -> [TestCaseResult] {
        report.documents.flatMap { document in
            document.phases.flatMap { phase in
                phase.steps.map { step in
                    let status: TestCaseResult.Status = step.status == .failed ? .failed : (step.status == .success ? .passed : .skipped)
                    return TestCaseResult(
                        suite: suite(document.name), name: step.name, status: status, message: step.failureMessage,
                        seconds: seconds(from: step.startTime, to: step.endTime))
                }
            }
        }
    }

    static func seconds(from start: String, to end: String) -> Double {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        guard let from = formatter.date(from: start) ?? ISO8601DateFormatter().date(from: start),
            let to = formatter.date(from: end) ?? ISO8601DateFormatter().date(from: end)
        else { return 0 }
        return max(0, to.timeIntervalSince(from))
    }
}

/// Program output as progress lines, and the last lines for a failure message.
final class LineEcho: Sendable {
    /// The kept lines hold at most this many bytes, whatever `keep` says.
    static let maxKeptBytes = 4 << 20

    private struct State {
        /// Holds back at most one 64 KiB piece of an unfinished line; longer lines come out in pieces.
        var splitter = LineSplitter()
        /// The kept lines are `kept[keptStart...]`; dropped ones are compacted away in batches.
        var kept: [String] = []
        var keptStart = 0
        var keptBytes = 0

        mutating func keepLines(_ lines: [String], keep: Int) {
            for line in lines {
                kept.append(line)
                keptBytes += line.utf8.count
                while kept.count - keptStart > keep || (keptBytes > LineEcho.maxKeptBytes && kept.count - keptStart > 1) {
                    keptBytes -= kept[keptStart].utf8.count
                    keptStart += 1
                }
            }
            if keptStart > 64, keptStart * 2 > kept.count {
                kept.removeFirst(keptStart)
                keptStart = 0
            }
        }
    }

    private let state = Mutex(State())
    let prefix: String
    let progress: @Sendable (String) -> Void
    /// How many of the last lines to keep.
    let keep: Int

    init(prefix: String, progress: @escaping @Sendable (String) -> Void, keep: Int = 5) {
        self.prefix = prefix
        self.progress = progress
        self.keep = keep
    }

    var lines: [String] { state.withLock { Array($0.kept[$0.keptStart...]) } }

    func append(_ bytes: [UInt8]) {
        let complete = state.withLock { state -> [String] in
            let complete = state.splitter.append(bytes).map(\.display)
            state.keepLines(complete, keep: keep)
            return complete
        }
        complete.forEach { progress(prefix + $0) }
    }

    func flush() {
        let rest = state.withLock { state -> String? in
            guard let rest = state.splitter.finish()?.display else { return nil }
            state.keepLines([rest], keep: keep)
            return rest
        }
        if let rest { progress(prefix + rest) }
    }

    /// The last lines for a failure message, each cut to its last 1,000 characters.
    var tail: String {
        state.withLock { state in
            state.kept[state.keptStart...].suffix(5).map { $0.count > 1000 ? "…" + $0.suffix(1000) : $0 }.joined(separator: " | ")
        }
    }
}
