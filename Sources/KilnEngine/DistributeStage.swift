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

/// DISTRIBUTE: the image to every region of the distribution configuration at once, each push
/// checked by digest; then INTEGRATE and AVAILABLE.
extension PipelineRun {
    /// Where one distribution entry sends an image: one registry reference per tag (the
    /// recipe's version when no tag is given), with the region's repository prefix.
    static func distributionTargets(
        _ entry: Distribution, region: KilnConfiguration.Region, version: SemanticVersion
    ) -> [ImageRecord.DistributionTarget] {
        guard let container = entry.containerDistributionConfiguration else { return [] }
        let repository = [region.repositoryPrefix, container.targetRepository.repositoryName].compactMap { $0 }.joined(separator: "/")
        return (container.containerTags ?? [version.description]).map { tag in
            .init(region: entry.region, reference: "\(region.registry)/\(repository):\(tag)")
        }
    }

    /// Fixes the record's distribution targets, entry by entry; at a region kiln.yaml does not
    /// define, the image FAILS naming it (keeping the targets before it) and this returns false.
    func expandDistribution(_ prepared: Prepared, image: ImageRun) throws -> Bool {
        for entry in prepared.selection.distribution?.distributions ?? [] {
            guard let region = configuration.regions[entry.region] else {
                _ = try image.fail(.distribute, region: entry.region, "region \(entry.region) is not defined in kiln.yaml's regions:")
                return false
            }
            if entry.containerDistributionConfiguration != nil, region.registry.isEmpty {
                _ = try image.fail(
                    .distribute, region: entry.region,
                    "region \(entry.region) has no registry for container images; add regions.\(entry.region).registry to kiln.yaml")
                return false
            }
            if entry.amiDistributionConfiguration != nil, prepared.recipe.imageType == .docker {
                image.progress(
                    "DISTRIBUTE: \(entry.region): amiDistributionConfiguration ignored: a container recipe makes no disk; use an image recipe"
                )
            }
            image.record.distributionTargets += Self.distributionTargets(entry, region: region, version: prepared.recipe.semanticVersion)
        }
        if prepared.recipe.imageType == .ami {
            guard let targets = try amiTargets(prepared, image: image) else { return false }
            image.record.amiTargets = targets
            try image.save()
        }
        return true
    }

    /// DISTRIBUTE, INTEGRATE and AVAILABLE for a built image; also what RetryImage runs again.
    public func distribute(_ built: ImageRecord) async throws -> ImageRecord {
        var record = built
        guard let localName = record.localName, try transfer.store.resolve(localName) != nil else {
            throw KilnError(
                .notFound,
                "image \(record.name)/\(record.version)/\(record.build) has no built image in Kiln's store to distribute; build it again")
        }
        let label = "\(record.name)/\(record.version)/\(record.build)"
        let progress = PipelineLog.tee(record.logDirectory + "/pipeline.log", self.progress)
        // This process runs the record now (a retry may run in another than the build's).
        record.owner = .current
        let lease = try transfer.store.resolve(localName).map {
            try transfer.store.lease([$0.digest], label: "distribute", requirePresent: true)
        }
        defer { lease?.release() }
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
            record.timings.append(.init(stage: Stage.distribute.rawValue, seconds: elapsed.inSeconds))
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
                record.failure = .init(
                    stage: .distribute, step: nil, region: nil, log: nil, reason: "cancelled by an interrupt during distribution")
                try records.save(record)
                progress("image \(label): CANCELLED in DISTRIBUTE; kiln image retry-distribution \(label) sends it again")
                return record
            }
            if let failed = result.failures.first {
                let region = record.distributionTargets.first { (try? ImageLocation($0.reference)) == failed.location }?.region
                record.status = .failed
                record.failure = .init(
                    stage: .distribute, step: nil, region: region, log: nil,
                    reason: "\(failed.location): \(failed.error?.message ?? "failed")")
                try records.save(record)
                progress(
                    "image \(label): FAILED in DISTRIBUTE for region \(region ?? "?"): \(record.failure!.reason); retry with kiln image retry-distribution \(label)"
                )
                return record
            }
            record.outputContainers = Set(record.distributionTargets.map(\.region)).sorted().map { region in
                .init(
                    region: region,
                    imageUris: record.distributionTargets.filter { $0.region == region }.map { "\($0.reference)@\(result.digest)" })
            }
        }
        if let failed = try await distributeDisk(&record, progress: progress) {
            let cancelled = Task.isCancelled
            record.status = cancelled ? .cancelled : .failed
            record.failure = .init(
                stage: .distribute, step: nil, region: failed.region, log: nil,
                reason: cancelled ? "cancelled by an interrupt during distribution" : failed.reason)
            try records.save(record)
            progress(
                "image \(label): \(record.status.rawValue) in DISTRIBUTE for region \(failed.region): \(record.failure!.reason); retry with kiln image retry-distribution \(label)"
            )
            return record
        }
        try enter(.integrating)
        if record.packages == nil, let image = try transfer.store.resolve(localName) {
            record.packages = try PackageInventory.read(ImageFiles(image: image, host: host))
            progress("INTEGRATE: \(record.packages?.count ?? 0) installed package(s) recorded")
        }
        try enter(.available)
        return record
    }

    /// The manifest, config and layer blobs of an image in the store, digest → bytes.
    func imageBlobs(_ digest: Digest) throws -> [String: Int64] {
        let data = try transfer.store.read(digest)
        let manifest = try JSONDecoder().decode(ImageManifest.self, from: data)
        var blobs = [digest.description: Int64(data.count), manifest.config.digest.description: manifest.config.size]
        for layer in manifest.layers { blobs[layer.digest.description] = layer.size }
        return blobs
    }

}
