import KilnModel

/// What an instance type gives a builder or test instance: its CPU, memory and process limits.
/// The names are EC2's, so recipes and infrastructure configurations keep their values.
public struct InstanceType: Sendable, Hashable, Codable {
    public var name: String
    public var vCPUs: Double
    public var memoryMiB: Int
    public var pidsLimit: Int

    public init(name: String, vCPUs: Double, memoryMiB: Int, pidsLimit: Int = 4096) {
        self.name = name
        self.vCPUs = vCPUs
        self.memoryMiB = memoryMiB
        self.pidsLimit = pidsLimit
    }

    /// EC2's published sizes for the types infrastructure configurations name most.
    public static let defaults: [String: InstanceType] = Dictionary(uniqueKeysWithValues: [
        InstanceType(name: "t3.micro", vCPUs: 2, memoryMiB: 1024),
        InstanceType(name: "t3.small", vCPUs: 2, memoryMiB: 2048),
        InstanceType(name: "t3.medium", vCPUs: 2, memoryMiB: 4096),
        InstanceType(name: "t3.large", vCPUs: 2, memoryMiB: 8192),
        InstanceType(name: "m5.large", vCPUs: 2, memoryMiB: 8192),
        InstanceType(name: "c5.large", vCPUs: 2, memoryMiB: 4096),
    ].map { ($0.name, $0) })

    /// The defaults with `kiln.yaml`'s `instanceTypes` laid over them.
    public static func table(configured: [String: KilnConfiguration.InstanceTypeSize]) -> [String: InstanceType] {
        var table = defaults
        for (name, size) in configured {
            table[name] = InstanceType(name: name, vCPUs: size.vCPUs, memoryMiB: size.memoryMiB, pidsLimit: size.pidsLimit ?? 4096)
        }
        return table
    }

    public static func named(_ name: String, in table: [String: InstanceType] = defaults) throws -> InstanceType {
        guard let type = table[name] else {
            throw KilnError(.invalidArgument, "unknown instance type '\(name)'; known: \(table.keys.sorted().joined(separator: ", ")) (add others under instanceTypes in kiln.yaml)")
        }
        return type
    }
}
