/// A conditional expression (`if:` of a step, or the inputs of `Assert`). Reference §2.5.
public indirect enum Condition: Sendable, Hashable {
    case and([Condition])
    case or([Condition])
    case not(Condition)
    case comparison(Comparison)
}

public struct Comparison: Sendable, Hashable {
    public var op: ComparisonOperator
    /// The operator's own argument: the baseline, a path, a binary name, or a hash.
    public var operand: String
    /// The `value:` (or, for file hashes, `path:`) sibling key.
    public var subject: String?
    public var location: SourceLocation?

    public init(op: ComparisonOperator, operand: String, subject: String? = nil, location: SourceLocation? = nil) {
        self.op = op
        self.operand = operand
        self.subject = subject
        self.location = location
    }
}

public enum ComparisonOperator: String, Sendable, Hashable, CaseIterable {
    case stringIsEmpty, stringIsWhitespace
    case stringEquals, stringLessThan, stringLessThanEquals, stringGreaterThan, stringGreaterThanEquals
    case patternMatches
    case numberEquals, numberLessThan, numberLessThanEquals, numberGreaterThan, numberGreaterThanEquals
    case binaryExists, fileExists, folderExists
    case fileMD5Equals, fileSHA1Equals, fileSHA256Equals, fileSHA512Equals

    /// The sibling key this operator needs, if any.
    public var subjectKey: String? {
        switch self {
        case .stringIsEmpty, .stringIsWhitespace, .binaryExists, .fileExists, .folderExists: return nil
        case .fileMD5Equals, .fileSHA1Equals, .fileSHA256Equals, .fileSHA512Equals: return "path"
        default: return "value"
        }
    }

    public static let logicalOperators = ["and", "or", "not"]
}
