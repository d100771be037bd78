import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// A process as Kiln records an owner: its pid and its start time (field 22 of
/// `/proc/PID/stat`, clock ticks after boot). A pid the kernel gave to a newer process has
/// another start time, so a recycled pid never makes a dead owner look alive.
public struct ProcessOwner: Sendable, Codable, Hashable, CustomStringConvertible {
    public var pid: Int32
    public var startTime: UInt64

    public init(pid: Int32, startTime: UInt64) {
        self.pid = pid
        self.startTime = startTime
    }

    /// This process.
    public static let current: ProcessOwner = {
        let pid = getpid()
        return ProcessOwner(pid: pid, startTime: startTime(of: pid) ?? 0)
    }()

    /// The start time of `pid`, or nil when no such process exists.
    public static func startTime(of pid: Int32) -> UInt64? {
        guard pid > 0, let data = FileManager.default.contents(atPath: "/proc/\(pid)/stat") else { return nil }
        let text = String(decoding: data, as: UTF8.self)
        // The command name (field 2) is in parentheses and may hold spaces or ')': fields 3… follow the last ')'.
        guard let close = text.lastIndex(of: ")") else { return nil }
        let fields = text[text.index(after: close)...].split(separator: " ")
        // fields[0] is field 3 (state), so field 22 is fields[19].
        guard fields.count > 19, let start = UInt64(fields[19]) else { return nil }
        return start
    }

    /// Whether this very process still runs (a zombie counts as gone).
    public var isAlive: Bool {
        if self == Self.current { return true }
        guard let start = Self.startTime(of: pid), start == startTime else { return false }
        guard let status = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
            let close = status.lastIndex(of: ")")
        else { return false }
        let state = status[status.index(after: close)...].split(separator: " ").first
        return state != "Z" && state != "X"
    }

    /// `PID-STARTTIME`, as temp and lease file names carry it.
    public var token: String { "\(pid)-\(startTime)" }

    /// The owner named by `token` (`PID-STARTTIME`), or nil.
    public init?(token: some StringProtocol) {
        let parts = token.split(separator: "-")
        guard parts.count == 2, let pid = Int32(parts[0]), let start = UInt64(parts[1]) else { return nil }
        self.init(pid: pid, startTime: start)
    }

    /// The owner a temp name made by `temporaryName(_:)` carries: `PREFIX<pid>-<start>-<uuid>`.
    public static func owner(ofTemporaryName name: String, prefix: String) -> ProcessOwner? {
        guard name.hasPrefix(prefix) else { return nil }
        let parts = name.dropFirst(prefix.count).split(separator: "-", maxSplits: 2)
        // The rest must be a whole UUID: a plain `PREFIX<UUID>` name whose first two groups happen
        // to be decimal digits would otherwise read as a dead owner, and a live build's temp
        // folder would be swept.
        guard parts.count == 3, UUID(uuidString: String(parts[2])) != nil else { return nil }
        return ProcessOwner(token: "\(parts[0])-\(parts[1])")
    }

    /// A unique temp name that says which process made it, so a sweep can tell a dead
    /// process's leftovers from a live one's work: `PREFIX<pid>-<start>-<uuid>`.
    public static func temporaryName(_ prefix: String) -> String {
        "\(prefix)\(current.token)-\(UUID().uuidString)"
    }

    public var description: String { "pid \(pid)" }
}

/// A file's status-change time (ctime). The kernel sets it on every change and no one can set
/// it back, so a file whose ctime is before a process started was not made by that process.
public struct ChangeTime: Sendable, Hashable, Comparable {
    public var seconds: Int
    public var nanoseconds: Int

    public init(seconds: Int, nanoseconds: Int) {
        self.seconds = seconds
        self.nanoseconds = nanoseconds
    }

    /// The ctime of `path` (the link itself, not what it leads to), or nil when it is gone.
    public init?(of path: String) {
        var info = stat()
        guard lstat(path, &info) == 0 else { return nil }
        self.init(seconds: info.st_ctim.tv_sec, nanoseconds: info.st_ctim.tv_nsec)
    }

    /// Now, by the coarse clock file times come from (the precise clock may be ahead of it).
    public static var now: ChangeTime {
        var time = timespec()
        clock_gettime(CLOCK_REALTIME_COARSE, &time)
        return ChangeTime(seconds: time.tv_sec, nanoseconds: time.tv_nsec)
    }

    public static func < (a: ChangeTime, b: ChangeTime) -> Bool {
        (a.seconds, a.nanoseconds) < (b.seconds, b.nanoseconds)
    }
}
