/// A place in a document: file, 1-based line and column.
public struct SourceLocation: Sendable, Hashable, Codable, CustomStringConvertible {
    public var file: String
    public var line: Int
    public var column: Int

    public init(file: String, line: Int, column: Int) {
        self.file = file
        self.line = line
        self.column = column
    }

    public var description: String { "\(file):\(line):\(column)" }
}

/// One problem in a component document: where it is, which step, what is wrong and what is allowed.
public struct DocumentIssue: Sendable, Hashable, CustomStringConvertible {
    public var location: SourceLocation
    /// `phase/step` (or `phase`) when the problem is inside a phase.
    public var stepPath: String?
    public var message: String

    public init(_ location: SourceLocation, stepPath: String? = nil, _ message: String) {
        self.location = location
        self.stepPath = stepPath
        self.message = message
    }

    public var description: String {
        if let stepPath { return "\(location): \(stepPath): \(message)" }
        return "\(location): \(message)"
    }
}
