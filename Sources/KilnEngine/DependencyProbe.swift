import Foundation
import KilnInstances
import KilnModel
import KilnOCI
import KilnRegistry

/// What a start condition asks without building: the digest a parent names now, and what an
/// image's own package sources would upgrade. Nothing is pulled and no name moves.
public struct DependencyProbe: Sendable {
    public enum PackageAnswer: Sendable, Hashable {
        case upgrades([PackageUpgrade])
        /// No package manager, no image in the store, or unreachable sources: the reason.
        case cannotTell(String)
    }

    let run: PipelineRun

    public init(configuration: KilnConfiguration, host: InstanceHost, transfer: ImageTransfer, records: any ImageRecords) throws {
        run = try PipelineRun(configuration: configuration, host: host, transfer: transfer, records: records) { _ in }
    }

    /// The manifest digest `parent` (a recipe's parentImage) resolves to now, as a build would
    /// resolve it: a registry tag is asked at its registry, an image ARN selects the newest
    /// AVAILABLE build, a bootstrap parent is the cached one.
    public func parentDigest(_ parent: String) async throws -> String {
        try await run.resolveParent(parent, offline: run.configuration.offline, lookOnly: true) { _ in }.digest.description
    }

    /// What `record`'s image would upgrade from its own package sources, asked in a throwaway
    /// instance; `securityOnly` keeps upgrades whose origin names security.
    public func upgradablePackages(of record: ImageRecord, securityOnly: Bool) async -> PackageAnswer {
        guard let localName = record.localName else { return .cannotTell("image \(record.arn) is not in Kiln's store") }
        let image: Descriptor
        do {
            image = try await run.resolveParent("kiln:" + localName, offline: true) { _ in }
        } catch {
            return .cannotTell("image \(record.arn) cannot be read from Kiln's store: \((error as? KilnError)?.message ?? "\(error)")")
        }
        let network: InstanceNetwork = run.configuration.builderNetwork == "host" ? .host : .isolated
        let (answer, _) = await PackageUpgradeQuery(host: run.host, type: InstanceType.defaults["t3.medium"]!, network: network).ask(image)
        switch answer {
        case .upgrades(let upgrades, let manager):
            guard securityOnly else { return .upgrades(upgrades) }
            if manager == .apk { return .cannotTell("apk has no security classification; securityOnly checks count none") }
            return .upgrades(upgrades.filter(\.isSecurity))
        case .noPackageManager(let why), .unreachable(let why):
            return .cannotTell(why)
        }
    }
}
