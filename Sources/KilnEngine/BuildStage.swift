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

/// BUILD: the parent resolved afresh, the components' supported OS checked, then the recipe's
/// steps planned (the cache's decisions) and built.
extension PipelineRun {
    /// The built image, or nil when the image FAILED (the record says where and why).
    func buildStage(_ prepared: Prepared, settings: Settings, image: ImageRun) async throws -> (
        image: Descriptor, parent: Descriptor, builder: RecipeBuilder
    )? {
        let recipe = prepared.recipe
        try image.enter(.creating)
        let previous = previousRecord(name: image.record.name)
        var parent: Descriptor?
        // Leased before use and checked whole; a gc that took it first makes it resolve again.
        for attempt in 1...2 where parent == nil {
            do {
                let resolved = try await resolveParent(recipe.parentImage, offline: prepared.policy == .offline, progress: image.progress)
                image.hold(try host.store.lease([resolved.digest], label: "build-parent", requirePresent: true))
                parent = resolved
            } catch let error as KilnError {
                guard attempt == 2 || error.code != .notFound else { continue }
                _ = try image.fail(.build, "the parent image \(recipe.parentImage) is not available: \(error.message)")
                return nil
            }
        }
        guard let parent else { return nil }
        image.record.parentImage = recipe.parentImage
        image.record.parentDigest = parent.digest.description
        try image.save()
        image.progress("BUILD: parent \(recipe.parentImage): \(parent.digest)")
        if let unsupported = try supportedOsCheck(prepared.components, parent: parent) {
            _ = try image.fail(.build, step: unsupported.step, unsupported.reason)
            return nil
        }
        // An image recipe makes a bootable disk: without a kernel it cannot, so no builder starts.
        if recipe.imageType == .ami, let refusal = try kernelRefusal(parent: parent, name: recipe.parentImage) {
            _ = try image.fail(.build, step: "parentImage", refusal)
            return nil
        }
        try image.enter(.building)
        let localName = "\(image.record.name):\(recipe.semanticVersion)-\(image.record.build)"
        let builder = self.builder(prepared, logRoot: image.record.logDirectory, progress: image.progress)
        let outcome: RecipeBuilder.Outcome
        do {
            outcome = try await image.timed(.build) {
                let plan = try await leasedPlan(
                    builder, parent: parent, settings: settings, prepared: prepared, previous: previous, image: image)
                image.record.cacheDecisions = plan.decisions
                image.record.packageUpdates = plan.packageUpdates.isEmpty ? nil : plan.packageUpdates
                try image.save()
                return try await builder.build(
                    plan: plan, parent: parent, as: localName, keepOnFailure: prepared.keepOnFailure, caCertificates: caCertificates)
            }
        } catch let failure as RecipeBuilder.StepFailure {
            _ = try image.fail(.build, step: failure.step, log: failure.log, failure.reason)
            return nil
        }
        for check in outcome.checks { image.charge("package-check", check) }
        if let usage = outcome.builder { image.charge("builder", usage) }
        image.record.cacheHit = outcome.builtSteps == 0
        image.record.cachedSteps = outcome.reusedSteps
        image.record.builtSteps = outcome.builtSteps
        image.record.localName = localName
        image.record.digest = outcome.image.digest.description
        // Named now, and leased so TEST and DISTRIBUTE have it even if the name is removed.
        image.hold(try host.store.lease([outcome.image.digest], label: "build-image", requirePresent: true))
        try image.save()
        return (outcome.image, parent, builder)
    }

    /// The build's plan, with every cached step's image leased and checked whole. A cached
    /// image that a concurrent `kiln image gc --build-cache` took meanwhile is planned again
    /// (then it is not in the cache, and the step runs).
    func leasedPlan(
        _ builder: RecipeBuilder, parent: Descriptor, settings: Settings, prepared: Prepared, previous: ImageRecord?, image: ImageRun
    ) async throws -> RecipeBuilder.Plan {
        var attempt = 0
        while true {
            attempt += 1
            do {
                let plan = try await builder.plan(
                    parent: parent, useCache: settings.useCache, policy: prepared.policy, previous: previous, caCertificates: caCertificates
                )
                let cached = plan.steps.compactMap(\.cached?.digest)
                if !cached.isEmpty { image.hold(try host.store.lease(cached, label: "build-cache", requirePresent: true)) }
                return plan
            } catch let error as KilnError where error.code == .notFound && attempt < 3 {
                image.progress("BUILD: cache: a cached step's image was removed while planning (\(error.message)); planning again")
            }
        }
    }

    /// The parent named by a recipe, resolved afresh (see `ParentImageResolver`). An image ARN
    /// (`arn:aws:imagebuilder:…:image/NAME/x.x.x[/BUILD]`) names the newest AVAILABLE build of a
    /// Kiln image that matches, as Image Builder resolves a parent image version.
    func resolveParent(_ text: String, offline: Bool, lookOnly: Bool = false, progress: @escaping @Sendable (String) -> Void) async throws
        -> Descriptor
    {
        var text = text
        if text.hasPrefix("arn:") {
            let arn = try ImageBuilderARN(parsing: text)
            guard arn.resourceType == "image" else {
                throw KilnError(.invalidArgument, "parentImage \(text) is a \(arn.resourceType) ARN; name an image ARN")
            }
            let selector = try VersionSelector(parsing: arn.version ?? "x.x.x")
            let candidates = records.all().filter { $0.name == arn.name && $0.status == .available && $0.localName != nil }
            guard let chosen = selector.select(from: candidates.map { BuildVersion($0.version, build: $0.build) }),
                let record = candidates.first(where: { BuildVersion($0.version, build: $0.build) == chosen })
            else {
                let unreadable = records.all().first {
                    $0.name == arn.name && $0.status == .available && $0.machineImage?.parentRefusal != nil
                }
                if let unreadable, let reason = unreadable.machineImage?.parentRefusal {
                    throw KilnError(
                        .invalidArgument,
                        "image \(unreadable.name)/\(unreadable.version)/\(unreadable.build) was imported from a disk whose root filesystem Kiln cannot read, so it cannot be a parent image (\(reason)); it can still be exported and distributed"
                    )
                }
                throw KilnError(.notFound, "no AVAILABLE image matches \(text); see kiln images")
            }
            progress("parent \(text): image \(record.name)/\(record.version)/\(record.build)")
            text = "kiln:" + record.localName!
        }
        return try await ParentImageResolver(transfer: transfer, mirrors: configuration.bootstrapMirrors, observer: progress).resolve(
            text, offline: offline, lookOnly: lookOnly)
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
                return (
                    "\(component.label)/supportedOsVersions",
                    "component \(component.label) supports \(supported.joined(separator: ", ")); the parent image is \(parentOS). Choose a parent it supports or add the OS to supportedOsVersions"
                )
            }
        }
        return nil
    }

    /// The key=value lines of the image's os-release, read from its topmost layer that has one.
    func osRelease(of image: Descriptor) throws -> [String: String] {
        try ImageFiles(image: image, host: host).osRelease()
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
            do {
                bytes = try await HTTPSDownload.fetch(uri, caCertificates: caCertificates)
            } catch let error as KilnError {
                throw KilnError(error.code, "\(label): \(error.message)")
            }
            source = uri
        } else if uri.contains("://") {
            throw KilnError(
                .unsupported, "\(label): uri \(uri) is not supported; use a file path relative to the definitions, or an https URL")
        } else {
            source = uri.hasPrefix("/") ? uri : base + "/" + uri
            do {
                // Bounded like a downloaded document: a uri of /dev/zero must not fill memory.
                bytes = try HostFileIO.readRegular(source, describe: "the document \(source) (uri: \(uri))", limit: 16 << 20)
            } catch let error as KilnError {
                throw KilnError(error.code, "\(label): \(error.message)")
            }
        }
        return (try parser.parse(text: String(decoding: bytes, as: UTF8.self), source: source), Digest(sha256Of: bytes))
    }
}
