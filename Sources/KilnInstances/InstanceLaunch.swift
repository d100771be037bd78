import Foundation
import KilnModel
import KilnOCI
import KilnRegistry

extension InstanceHost {
    /// The instance host of a data directory, after removing the instances, mounts and
    /// containers that a Kiln that stopped left behind, and its temp files and cgroups (see
    /// `LeftoverSweep`); `report` gets one line for each kind it removed.
    public static func reapingOrphans(dataDirectory: String, store: ContentStore, report: @Sendable (String) -> Void) async throws
        -> InstanceHost
    {
        let host = try InstanceHost(dataDirectory: dataDirectory, store: store)
        let reaped = await ContainerInstance.reapOrphans(on: host)
        if !reaped.isEmpty { report("removed \(reaped.count) instance(s) left by a Kiln that stopped: \(reaped.joined(separator: ", "))") }
        let swept = await LeftoverSweep.run(on: host)
        if !swept.isEmpty {
            report(
                "removed \(swept.count) temp file(s) and cgroup(s) left by a Kiln that stopped: \(swept.prefix(5).joined(separator: ", "))")
        }
        return host
    }
}

extension ContainerInstance {
    /// A fresh instance from any image form a recipe may name (`kiln toe run --image`): the
    /// image resolved (pulled or bootstrapped when needed), the instance type and network
    /// checked against the configuration.
    public static func launch(
        image: String, instanceType: String, network: String, configuration: KilnConfiguration, transfer: ImageTransfer,
        on host: InstanceHost,
        progress: @escaping @Sendable (String) -> Void
    ) async throws -> ContainerInstance {
        guard let network = InstanceNetwork(rawValue: network) else {
            throw KilnError(.invalidArgument, "--network must be isolated, host or none, not '\(network)'")
        }
        let type = try InstanceType.named(instanceType, in: try InstanceType.table(configured: configuration.instanceTypes))
        let parent = try await ParentImageResolver(transfer: transfer, mirrors: configuration.bootstrapMirrors, observer: progress).resolve(
            image)
        return try await start(image: parent, on: host, options: InstanceOptions(type: type, network: network), name: image)
    }
}
