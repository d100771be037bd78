/// Which output stream a chunk of a process's output came from.
public enum ExecOutputStream: String, Sendable, Hashable {
    case stdout, stderr
}

public struct ExecResult: Sendable, Hashable {
    /// The exit status; `128 + n` when killed by signal n.
    public var exitCode: Int32
    public var timedOut: Bool

    public init(exitCode: Int32, timedOut: Bool = false) {
        self.exitCode = exitCode
        self.timedOut = timedOut
    }
}
