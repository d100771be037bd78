/// The one error type of Kiln's domain: a machine-readable code, a message that says what was
/// wrong, where and what to do, and the underlying cause when there is one.
public struct KilnError: Error, Sendable, CustomStringConvertible {
    public struct Code: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
        public let rawValue: String
        public init(rawValue: String) { self.rawValue = rawValue }
        public var description: String { rawValue }

        public static let invalidDocument = Code(rawValue: "InvalidDocument")
        public static let invalidArgument = Code(rawValue: "InvalidArgument")
        public static let notFound = Code(rawValue: "NotFound")
        public static let alreadyExists = Code(rawValue: "AlreadyExists")
        public static let ioFailure = Code(rawValue: "IOFailure")
        public static let execFailure = Code(rawValue: "ExecFailure")
        public static let timedOut = Code(rawValue: "TimedOut")
        public static let network = Code(rawValue: "NetworkFailure")
        public static let checksumMismatch = Code(rawValue: "ChecksumMismatch")
        public static let unsupported = Code(rawValue: "Unsupported")
        public static let stepFailed = Code(rawValue: "StepFailed")
        public static let internalError = Code(rawValue: "InternalError")
    }

    public var code: Code
    public var message: String
    public var cause: (any Error & Sendable)?
    /// Document problems found together, so a user can fix them in one pass.
    public var issues: [DocumentIssue]

    public init(_ code: Code, _ message: String, cause: (any Error & Sendable)? = nil, issues: [DocumentIssue] = []) {
        self.code = code
        self.message = message
        self.cause = cause
        self.issues = issues
    }

    public var description: String {
        var text = message
        if !issues.isEmpty {
            text += "\n" + issues.map { "  " + $0.description }.joined(separator: "\n")
        }
        if let cause {
            text += "\n  caused by: \(cause)"
        }
        return text
    }
}
