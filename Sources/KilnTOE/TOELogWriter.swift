import Foundation
import KilnModel
import KilnSystem
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
        let prefix = Array("\(Self.timestamp()) \(level.rawValue) ".utf8)
        // Split by bytes, not characters: a step's output line can be 64 KiB.
        let text = Array(message.utf8)
        var bytes: [UInt8] = []
        bytes.reserveCapacity(text.count + prefix.count + 1)
        var start = 0
        while true {
            let end = LineSplitter.newline(in: text, from: start) ?? text.count
            bytes.append(contentsOf: prefix)
            bytes.append(contentsOf: text[start..<end])
            bytes.append(10)
            guard end < text.count else { break }
            start = end + 1
        }
        files.withLock { files in
            if level != .debug, files.console >= 0 { Self.writeAll(files.console, bytes) }
            if files.application >= 0 { Self.writeAll(files.application, bytes) }
        }
        if level != .debug || echoDebug, let echo {
            echo(String(decoding: bytes[0..<bytes.count - 1], as: UTF8.self))
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

/// How many bytes of step output a whole run keeps for `outputs.stdout` (reports and chaining
/// hold them until the run ends), shared by every step and nested document of the run.
final class OutputBudget: Sendable {
    static let defaultBytes = 64 << 20
    private let remaining: Mutex<Int>
    let total: Int

    init(bytes: Int = OutputBudget.defaultBytes) {
        total = bytes
        remaining = Mutex(bytes)
    }

    /// Takes up to `count` bytes; returns how many were granted.
    func take(_ count: Int) -> Int {
        remaining.withLock { left in
            let granted = min(count, left)
            left -= granted
            return granted
        }
    }

    /// `value`, cut to what the budget still allows (at a character boundary), with a note in the log when cut.
    func keep(_ value: String, what: String, log: TOELogWriter) -> String {
        let size = value.utf8.count
        let granted = take(size)
        guard granted < size else { return value }
        var end = value.utf8.index(value.utf8.startIndex, offsetBy: granted)
        while end > value.startIndex, value.utf8[end] & 0xC0 == 0x80 { end = value.utf8.index(before: end) }
        log.warn(
            "kiln: \(what) cut from \(size) to \(value.utf8.distance(from: value.utf8.startIndex, to: end)) bytes: this run already keeps \(byteSize(total)) of step outputs, the most Kiln holds for one run"
        )
        return String(value.utf8[..<end]) ?? ""
    }
}

/// One stream of a step's output: split into lines for the log and kept for `outputs.stdout`,
/// both bounded. Lines past `logLimit` bytes are not logged (only the last `tailLimit` bytes are,
/// at the end), and a line longer than 64 KiB is logged in pieces.
final class LineAssembler: Sendable {
    private struct State {
        var splitter = LineSplitter()
        var captured: [UInt8] = []
        var capturedCut = 0
        var logged = 0
        /// Past `logLimit`: bytes go to `tail` only.
        var cutting = false
        var tail: [UInt8] = []
        var notLogged = 0
    }

    private let state = Mutex(State())
    let captureLimit: Int
    let logLimit: Int
    let tailLimit: Int

    init(captureLimit: Int = 16 << 20, logLimit: Int = 64 << 20, tailLimit: Int = 64 << 10) {
        self.captureLimit = captureLimit
        self.logLimit = logLimit
        self.tailLimit = tailLimit
    }

    /// Returns the lines to log now.
    func append(_ chunk: [UInt8]) -> [String] {
        state.withLock { state in
            let room = max(0, min(chunk.count, captureLimit - state.captured.count))
            state.captured.append(contentsOf: chunk[0..<room])
            state.capturedCut += chunk.count - room
            guard !state.cutting else {
                keepTail(chunk[...], in: &state)
                return []
            }
            // The limit is checked per chunk, so at most one chunk more than `logLimit` is logged.
            let split = state.splitter.append(chunk)
            state.logged += split.reduce(0) { $0 + $1.text.utf8.count + 1 }
            var lines = split.map(\.display)
            guard state.logged >= logLimit else { return lines }
            state.cutting = true
            lines.append(
                "[kiln: output cut: \(byteSize(logLimit)) logged; the rest is not logged, only its last \(byteSize(tailLimit)) at the end]")
            keepTail(state.splitter.takePending()[...], in: &state)
            return lines
        }
    }

    private func keepTail(_ bytes: ArraySlice<UInt8>, in state: inout State) {
        state.notLogged += bytes.count
        state.tail.append(contentsOf: bytes[max(bytes.startIndex, bytes.endIndex - tailLimit)...])
        if state.tail.count > 2 * tailLimit { state.tail.removeFirst(state.tail.count - tailLimit) }
    }

    /// The lines still to log, the kept text, and how many bytes the kept text lacks.
    func finish() -> (lines: [String], text: String, cutBytes: Int) {
        state.withLock { state in
            var lines: [String] = []
            if state.cutting {
                let tail = state.tail[max(0, state.tail.count - tailLimit)...]
                let skipped = state.notLogged - tail.count
                lines.append("[kiln: output cut: \(skipped) bytes were not logged; the last \(tail.count) bytes follow]")
                var splitter = LineSplitter()
                lines += splitter.append(tail).map(\.display)
                if let last = splitter.finish() { lines.append(last.display) }
            } else if let last = state.splitter.finish() {
                lines.append(last.display)
            }
            let text = String(decoding: state.captured, as: UTF8.self)
            return (lines, text, state.capturedCut)
        }
    }
}
