import Synchronization

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// Output bytes from several threads, kept in order: the first `headLimit` bytes and the last
/// `tailLimit`, so a program that prints without end costs a bounded amount of memory while its
/// last words (often the error) survive. What was cut in between is marked in `text`.
public final class OutputCollector: Sendable {
    private struct State {
        var head: [UInt8] = []
        var tail: [UInt8] = []
        var total = 0
    }

    private let state = Mutex(State())
    public let headLimit: Int
    public let tailLimit: Int

    public init(headLimit: Int = 1 << 20, tailLimit: Int = 64 << 10) {
        self.headLimit = headLimit
        self.tailLimit = tailLimit
    }

    public func append(_ chunk: [UInt8]) {
        state.withLock { state in
            state.total += chunk.count
            let toHead = max(0, min(chunk.count, headLimit - state.head.count))
            state.head.append(contentsOf: chunk[0..<toHead])
            guard toHead < chunk.count, tailLimit > 0 else { return }
            state.tail.append(contentsOf: chunk[max(toHead, chunk.count - tailLimit)...])
            // Trimmed in batches, so each byte is moved a bounded number of times.
            if state.tail.count > 2 * tailLimit { state.tail.removeFirst(state.tail.count - tailLimit) }
        }
    }

    /// How many bytes were dropped between the head and the tail.
    public var cutBytes: Int {
        state.withLock { $0.total - $0.head.count - min($0.tail.count, tailLimit) }
    }

    public var text: String {
        state.withLock { state in
            let tail = state.tail[max(0, state.tail.count - tailLimit)...]
            let cut = state.total - state.head.count - tail.count
            guard cut > 0 else { return String(decoding: state.head + tail, as: UTF8.self) }
            return String(decoding: state.head, as: UTF8.self) + "\n[kiln: \(cut) bytes of output cut here]\n"
                + String(decoding: tail, as: UTF8.self)
        }
    }
}

/// Splits a byte stream into lines. A line longer than `maxLineBytes` is passed on in pieces
/// (each but the last marked `continues`), so a program that never prints a newline cannot fill
/// memory; every byte is scanned once.
public struct LineSplitter: Sendable {
    public static let defaultMaxLineBytes = 64 << 10
    /// Appended to a piece of a long line when it is shown.
    public static let continuedMarker = " [kiln: line continues]"

    public struct Line: Sendable, Hashable {
        public var text: String
        /// The line goes on in the next piece.
        public var continues: Bool

        /// The text with the continuation marker, for a log or a terminal.
        public var display: String { continues ? text + LineSplitter.continuedMarker : text }
    }

    public let maxLineBytes: Int
    private var pending: [UInt8] = []

    public init(maxLineBytes: Int = LineSplitter.defaultMaxLineBytes) {
        self.maxLineBytes = max(4, maxLineBytes)
    }

    /// The bytes of an unfinished line held back.
    public var pendingCount: Int { pending.count }

    public mutating func append(_ chunk: some Collection<UInt8>) -> [Line] {
        let bytes = Array(chunk)
        var lines: [Line] = []
        var start = 0
        // The next newline at or after `start`, and how far the chunk has been searched.
        var newline: Int?
        var searched = 0
        while start < bytes.count {
            if newline.map({ $0 < start }) ?? true {
                newline = Self.newline(in: bytes, from: max(start, searched))
                searched = newline.map { $0 + 1 } ?? bytes.count
            }
            let end = newline ?? bytes.count
            let room = maxLineBytes - pending.count
            if end - start > room {
                // Full: pass on what fits, cut before a UTF-8 character that would not fit whole.
                var cut = start + room
                var backed = 0
                while cut > start, backed < 3, bytes[cut] & 0xC0 == 0x80 {
                    cut -= 1
                    backed += 1
                }
                if cut == start, pending.isEmpty { cut = start + room }
                pending.append(contentsOf: bytes[start..<cut])
                lines.append(Line(text: String(decoding: pending, as: UTF8.self), continues: true))
                pending.removeAll(keepingCapacity: true)
                start = cut
                continue
            }
            pending.append(contentsOf: bytes[start..<end])
            guard newline != nil else { break }
            lines.append(Line(text: String(decoding: pending, as: UTF8.self), continues: false))
            pending.removeAll(keepingCapacity: true)
            start = end + 1
        }
        return lines
    }

    /// The index of the first newline at or after `start`: memchr, fast in any build.
    public static func newline(in bytes: [UInt8], from start: Int) -> Int? {
        guard start < bytes.count else { return nil }
        return bytes.withUnsafeBufferPointer { buffer in
            guard let base = buffer.baseAddress, let found = memchr(base + start, 10, buffer.count - start) else { return nil }
            return base.distance(to: found.assumingMemoryBound(to: UInt8.self))
        }
    }

    /// The unfinished last line, if any.
    public mutating func finish() -> Line? {
        defer { pending.removeAll() }
        return pending.isEmpty ? nil : Line(text: String(decoding: pending, as: UTF8.self), continues: false)
    }

    /// Hands over the unfinished line's bytes, leaving none.
    public mutating func takePending() -> [UInt8] {
        defer { pending = [] }
        return pending
    }
}

/// A size for messages: "16 MiB", "64 KiB", or "1234 bytes".
public func byteSize(_ bytes: Int) -> String {
    if bytes >= 1 << 20, bytes % (1 << 20) == 0 { return "\(bytes >> 20) MiB" }
    if bytes >= 1 << 10, bytes % (1 << 10) == 0 { return "\(bytes >> 10) KiB" }
    return "\(bytes) bytes"
}
