import Foundation
import KilnModel
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// Writes AWSTOE's log files: `console.log` (what a person reads, `YYYY-MM-DD HH:MM:SS.mmm Level message`)
/// and `application.log` (the same plus debug detail). Each line can also be echoed as progress.
public final class TOELogWriter: Sendable {
    public enum Level: String, Sendable { case info = "Info", warn = "Warn", error = "Error", debug = "Debug" }

    private struct Files {
        var console: Int32 = -1
        var application: Int32 = -1
    }

    private let files: Mutex<Files>
    private let echo: (@Sendable (String) -> Void)?
    private let echoDebug: Bool
    public let folder: String?

    /// `folder` nil keeps no files. `echo` receives each console line as it is written, and the
    /// debug lines too when `echoDebug` is set (`--trace`).
    public init(folder: String?, echo: (@Sendable (String) -> Void)? = nil, echoDebug: Bool = false) throws {
        self.folder = folder
        self.echo = echo
        self.echoDebug = echoDebug
        var opened = Files()
        if let folder {
            try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
            opened.console = open(folder + "/console.log", O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o644)
            opened.application = open(folder + "/application.log", O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o644)
            guard opened.console >= 0, opened.application >= 0 else {
                throw KilnError(
                    .ioFailure, "cannot write logs in '\(folder)': \(String(cString: strerror(errno))); choose another --log-directory")
            }
        }
        files = Mutex(opened)
    }

    deinit {
        files.withLock { files in
            if files.console >= 0 { close(files.console) }
            if files.application >= 0 { close(files.application) }
        }
    }

    public func info(_ message: String) { write(.info, message) }
    public func error(_ message: String) { write(.error, message) }
    public func warn(_ message: String) { write(.warn, message) }
    /// application.log only.
    public func debug(_ message: String) { write(.debug, message) }

    public func write(_ level: Level, _ message: String) {
        let stamp = Self.timestamp()
        var lines = ""
        for line in message.split(separator: "\n", omittingEmptySubsequences: false) {
            lines += "\(stamp) \(level.rawValue) \(line)\n"
        }
        let bytes = Array(lines.utf8)
        files.withLock { files in
            if level != .debug, files.console >= 0 { Self.writeAll(files.console, bytes) }
            if files.application >= 0 { Self.writeAll(files.application, bytes) }
        }
        if level != .debug || echoDebug, let echo {
            echo(String(lines.dropLast()))
        }
    }

    private static func writeAll(_ fd: Int32, _ bytes: [UInt8]) {
        bytes.withUnsafeBytes { buffer in
            var offset = 0
            while offset < buffer.count {
                let written = Glibc.write(fd, buffer.baseAddress! + offset, buffer.count - offset)
                if written <= 0 { return }
                offset += written
            }
        }
    }

    /// UTC `YYYY-MM-DD HH:MM:SS.mmm`.
    static func timestamp(_ date: Date = Date()) -> String {
        let seconds = date.timeIntervalSince1970
        var time = time_t(seconds.rounded(.down))
        var parts = tm()
        gmtime_r(&time, &parts)
        let millis = Int((seconds - seconds.rounded(.down)) * 1000)
        return String(
            format: "%04d-%02d-%02d %02d:%02d:%02d.%03d",
            Int(parts.tm_year) + 1900, Int(parts.tm_mon) + 1, Int(parts.tm_mday),
            Int(parts.tm_hour), Int(parts.tm_min), Int(parts.tm_sec), millis)
    }

    /// `TOE_<YYYY-MM-DD_HH-MM-SS>_UTC-0_<executionId>`.
    public static func folderName(executionId: String, date: Date = Date()) -> String {
        let stamp = timestamp(date)
        let day = stamp.prefix(10)
        let clock = stamp.dropFirst(11).prefix(8).replacingOccurrences(of: ":", with: "-")
        return "TOE_\(day)_\(clock)_UTC-0_\(executionId)"
    }
}

/// Splits a byte stream into lines for the log, keeping a partial last line until it completes.
final class LineAssembler: Sendable {
    private let state = Mutex<(pending: [UInt8], captured: [UInt8], truncated: Bool)>(([], [], false))
    private let limit: Int

    init(captureLimit: Int = 16 << 20) { self.limit = captureLimit }

    /// Returns the complete lines in `chunk` and keeps the whole stream (up to the limit).
    func append(_ chunk: [UInt8]) -> [String] {
        state.withLock { state in
            if state.captured.count < limit {
                state.captured += chunk.prefix(limit - state.captured.count)
            } else {
                state.truncated = true
            }
            state.pending += chunk
            var lines: [String] = []
            while let newline = state.pending.firstIndex(of: 10) {
                lines.append(String(decoding: state.pending[..<newline], as: UTF8.self))
                state.pending.removeSubrange(...newline)
            }
            return lines
        }
    }

    func finish() -> (lastLine: String?, text: String) {
        state.withLock { state in
            let last = state.pending.isEmpty ? nil : String(decoding: state.pending, as: UTF8.self)
            state.pending = []
            return (last, String(decoding: state.captured, as: UTF8.self))
        }
    }
}
