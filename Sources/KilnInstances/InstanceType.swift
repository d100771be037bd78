import KilnModel

/// What an instance type gives a builder or test instance: its CPU, memory and process limits.
/// The names are EC2's, so recipes and infrastructure configurations keep their values.
public struct InstanceType: Sendable, Hashable, Codable {
    public var name: String
    public var vCPUs: Double
    public var memoryMiB: Int
    public var pidsLimit: Int
    /// US dollars per hour, what a build is charged per second of instance time.
    public var pricePerHour: Double

    public init(name: String, vCPUs: Double, memoryMiB: Int, pidsLimit: Int = 4096, pricePerHour: Double = 0) {
        self.name = name
        self.vCPUs = vCPUs
        self.memoryMiB = memoryMiB
        self.pidsLimit = pidsLimit
        self.pricePerHour = pricePerHour
    }

    /// EC2's published sizes for the types infrastructure configurations name most, with the
    /// public on-demand Linux prices in us-east-1.
    public static let defaults: [String: InstanceType] = Dictionary(
        uniqueKeysWithValues: [
            InstanceType(name: "t3.micro", vCPUs: 2, memoryMiB: 1024, pricePerHour: 0.0104),
            InstanceType(name: "t3.small", vCPUs: 2, memoryMiB: 2048, pricePerHour: 0.0208),
            InstanceType(name: "t3.medium", vCPUs: 2, memoryMiB: 4096, pricePerHour: 0.0416),
            InstanceType(name: "t3.large", vCPUs: 2, memoryMiB: 8192, pricePerHour: 0.0832),
            InstanceType(name: "m5.large", vCPUs: 2, memoryMiB: 8192, pricePerHour: 0.096),
            InstanceType(name: "c5.large", vCPUs: 2, memoryMiB: 4096, pricePerHour: 0.085),
        ].map { ($0.name, $0) })

    /// The defaults with `kiln.yaml`'s `instanceTypes` laid over them, field by field.
    public static func table(configured: [String: KilnConfiguration.InstanceTypeSize]) throws -> [String: InstanceType] {
        var table = defaults
        for (name, size) in configured {
            let base = defaults[name]
            guard let vCPUs = size.vCPUs ?? base?.vCPUs, let memory = size.memoryMiB ?? base?.memoryMiB else {
                throw KilnError(
                    .invalidArgument,
                    "kiln.yaml: instanceTypes.\(name) needs vCPUs and memoryMiB; it is not one of Kiln's default types (\(defaults.keys.sorted().joined(separator: ", ")))"
                )
            }
            table[name] = InstanceType(
                name: name, vCPUs: vCPUs, memoryMiB: memory, pidsLimit: size.pidsLimit ?? base?.pidsLimit ?? 4096,
                pricePerHour: size.pricePerHour ?? base?.pricePerHour ?? 0
            )
        }
        return table
    }

    public static func named(_ name: String, in table: [String: InstanceType] = defaults) throws -> InstanceType {
        guard let type = table[name] else {
            throw KilnError(
                .invalidArgument,
                "unknown instance type '\(name)'; known: \(table.keys.sorted().joined(separator: ", ")) (add others under instanceTypes in kiln.yaml)"
            )
        }
        return type
    }
}
