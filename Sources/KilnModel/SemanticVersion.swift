/// `major.minor.patch` as Image Builder versions components, recipes and images (each node
/// 0 … 2^30−1, compared numerically, so date-like `2024.05.01` works).
public struct SemanticVersion: Sendable, Hashable, Comparable, Codable, CustomStringConvertible {
    public static let maximumNode = 1_073_741_823

    public var major: Int
    public var minor: Int
    public var patch: Int

    public init(_ major: Int, _ minor: Int, _ patch: Int) {
        self.major = major
        self.minor = minor
        self.patch = patch
    }

    public init(parsing text: String) throws {
        let nodes = text.split(separator: ".", omittingEmptySubsequences: false)
        guard nodes.count == 3, let values = Optional(nodes.compactMap { Int($0) }), values.count == 3,
            nodes.allSatisfy({ !$0.isEmpty && $0.allSatisfy(\.isASCII) && $0.allSatisfy(\.isNumber) }),
            values.allSatisfy({ (0...Self.maximumNode).contains($0) })
        else {
            throw KilnError(
                .invalidArgument,
                "'\(text)' is not a semantic version; use major.minor.patch with whole numbers from 0 to \(Self.maximumNode), e.g. 1.0.0")
        }
        self.init(values[0], values[1], values[2])
    }

    public var description: String { "\(major).\(minor).\(patch)" }

    public static func < (lhs: SemanticVersion, rhs: SemanticVersion) -> Bool {
        (lhs.major, lhs.minor, lhs.patch) < (rhs.major, rhs.minor, rhs.patch)
    }

    public init(from decoder: Decoder) throws {
        try self.init(parsing: decoder.singleValueContainer().decode(String.self))
    }

    public func encode(to encoder: Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(description)
    }
}

/// A version and the build number Kiln assigned it: `1.2.0/3`.
public struct BuildVersion: Sendable, Hashable, Comparable, CustomStringConvertible {
    public var version: SemanticVersion
    public var build: Int

    public init(_ version: SemanticVersion, build: Int) {
        self.version = version
        self.build = build
    }

    public var description: String { "\(version)/\(build)" }

    public static func < (lhs: BuildVersion, rhs: BuildVersion) -> Bool {
        (lhs.version, lhs.build) < (rhs.version, rhs.build)
    }
}

/// A version as a reference gives it: `x.x.x`, `1.x.x`, `1.6.x`, `1.6.8` or `1.6.8/2`. An `x`
/// means "the most recent", and once a node is `x` every node to its right must be too.
public struct VersionSelector: Sendable, Hashable, CustomStringConvertible {
    /// nil for `x`.
    public var nodes: [Int?]
    public var build: Int?

    public init(parsing text: String) throws {
        var versionText = Substring(text)
        if let slash = text.firstIndex(of: "/") {
            guard let build = Int(text[text.index(after: slash)...]), build >= 1 else {
                throw KilnError(.invalidArgument, "'\(text)': the build number after '/' must be a whole number from 1")
            }
            self.build = build
            versionText = text[..<slash]
        }
        let parts = versionText.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 3 else {
            throw KilnError(
                .invalidArgument,
                "'\(text)' is not a version; use major.minor.patch, where any node from the left may be x (x.x.x, 1.x.x, 1.2.x)")
        }
        var nodes: [Int?] = []
        for part in parts {
            if part == "x" {
                nodes.append(nil)
            } else if let value = Int(part), (0...SemanticVersion.maximumNode).contains(value), part.allSatisfy(\.isNumber) {
                guard nodes.allSatisfy({ $0 != nil }) else {
                    throw KilnError(
                        .invalidArgument,
                        "'\(text)': once a node is x, every node to its right must be x too (write \(parts.map { _ in "x" }.joined(separator: ".")) or pin the nodes on the left)"
                    )
                }
                nodes.append(value)
            } else {
                throw KilnError(.invalidArgument, "'\(text)': '\(part)' is neither a number from 0 to \(SemanticVersion.maximumNode) nor x")
            }
        }
        if build != nil, nodes.contains(where: { $0 == nil }) {
            throw KilnError(.invalidArgument, "'\(text)': a build number needs a full version, not one with x")
        }
        self.nodes = nodes
    }

    public func matches(_ candidate: BuildVersion) -> Bool {
        let values = [candidate.version.major, candidate.version.minor, candidate.version.patch]
        return zip(nodes, values).allSatisfy { node, value in node.map { $0 == value } ?? true }
            && (build.map { $0 == candidate.build } ?? true)
    }

    /// The most recent matching build, or nil.
    public func select(from candidates: [BuildVersion]) -> BuildVersion? {
        candidates.filter(matches).max()
    }

    public var description: String {
        nodes.map { $0.map(String.init) ?? "x" }.joined(separator: ".") + (build.map { "/\($0)" } ?? "")
    }
}

/// Image Builder ARNs in Kiln's account and home region:
/// `arn:aws:imagebuilder:REGION:ACCOUNT:TYPE/NAME[/VERSION[/BUILD]]`.
public struct ImageBuilderARN: Sendable, Hashable, CustomStringConvertible {
    public var partition = "aws"
    public var region: String
    public var account: String
    /// `component`, `image`, `container-recipe`, `image-recipe`, `infrastructure-configuration`, …
    public var resourceType: String
    public var name: String
    /// A version or selector (`1.0.0`, `1.x.x`), with an optional `/build`.
    public var version: String?

    public init(region: String, account: String, resourceType: String, name: String, version: String? = nil) {
        self.region = region
        self.account = account
        self.resourceType = resourceType
        self.name = Self.normalizedName(name)
        self.version = version
    }

    public init(parsing text: String) throws {
        let fields = text.split(separator: ":", maxSplits: 5, omittingEmptySubsequences: false).map(String.init)
        guard fields.count == 6, fields[0] == "arn", fields[2] == "imagebuilder" else {
            throw KilnError(
                .invalidArgument, "'\(text)' is not an Image Builder ARN (arn:aws:imagebuilder:REGION:ACCOUNT:TYPE/NAME[/VERSION[/BUILD]])")
        }
        let path = fields[5].split(separator: "/", omittingEmptySubsequences: false).map(String.init)
        guard path.count >= 2, !path[0].isEmpty, !path[1].isEmpty else {
            throw KilnError(.invalidArgument, "'\(text)': the resource part must be TYPE/NAME[/VERSION[/BUILD]]")
        }
        partition = fields[1]
        region = fields[3]
        account = fields[4]
        resourceType = path[0]
        name = path[1]
        version = path.count > 2 ? path[2...].joined(separator: "/") : nil
        if let version { _ = try VersionSelector(parsing: version) }
    }

    /// ARNs allow `[a-z0-9-_]` in names: lowercase, spaces to hyphens.
    public static func normalizedName(_ name: String) -> String {
        String(name.lowercased().map { $0 == " " ? "-" : $0 })
    }

    public var description: String {
        "arn:\(partition):imagebuilder:\(region):\(account):\(resourceType)/\(name)" + (version.map { "/\($0)" } ?? "")
    }
}
