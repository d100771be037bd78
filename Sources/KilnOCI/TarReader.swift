import Foundation
import KilnModel

/// Reads a tar stream entry by entry: ustar, PAX extended headers (`x`, global `g` ignored) and
/// GNU long names (`L`, `K`). Contents are handed out in chunks, never held whole.
public struct TarReader {
    public typealias Source = (inout [UInt8], Int) throws -> Int

    private let source: Source
    private var buffer: [UInt8] = []
    /// Bytes at the front of `buffer` already handed out.
    private var consumed = 0
    private var ended = false
    public private(set) var offset: Int64 = 0

    /// `source` fills up to n bytes and returns how many; 0 means the end.
    public init(source: @escaping Source) {
        self.source = source
    }

    /// The next entry, or nil at the end of the archive. Call `readContents` or `skipContents` before the next call.
    public mutating func next() throws -> TarEntry? {
        var pax: [String: String] = [:]
        var longName: String?
        var longLink: String?
        while true {
            guard let block = try readExactly(512, allowEnd: true) else { return nil }
            if block.allSatisfy({ $0 == 0 }) {
                ended = true
                return nil
            }
            guard Self.checksumMatches(block) else {
                throw KilnError(.invalidArgument, "layer is not a valid tar stream: bad header checksum at byte \(offset - 512)")
            }
            let typeflag = block[156]
            // Named in every error below: layers are untrusted, and a bad header must say where.
            let headerName = Self.string(block[0..<100])
            let size = try Self.number(block[124..<136], field: "size", entry: headerName)
            guard size >= 0 else { throw Self.malformed(headerName, "a negative size (\(size))") }
            switch typeflag {
            case UInt8(ascii: "x"), UInt8(ascii: "g"):
                let data = try readPadded(Int(size))
                if typeflag == UInt8(ascii: "x") { pax.merge(try Self.paxRecords(data)) { _, new in new } }
                continue
            case UInt8(ascii: "L"):
                longName = Self.string(try readPadded(Int(size))[...])
                continue
            case UInt8(ascii: "K"):
                longLink = Self.string(try readPadded(Int(size))[...])
                continue
            default:
                break
            }
            let prefix = Self.string(block[345..<500])
            let name = Self.string(block[0..<100])
            let mode = try Self.number(block[100..<108], field: "mode", entry: name)
            guard (0...0o7777777).contains(mode) else { throw Self.malformed(name, "a mode out of range (\(mode))") }
            var entry = TarEntry(path: prefix.isEmpty ? name : prefix + "/" + name, kind: .file, mode: UInt32(mode) & 0o7777)
            entry.kind = TarEntry.Kind(rawValue: typeflag == 0 ? 0x30 : typeflag) ?? .file
            if typeflag == UInt8(ascii: "7") { entry.kind = .file }
            entry.uid = UInt32(clamping: try Self.number(block[108..<116], field: "uid", entry: name))
            entry.gid = UInt32(clamping: try Self.number(block[116..<124], field: "gid", entry: name))
            entry.size = size
            entry.modificationTime = try Self.number(block[136..<148], field: "mtime", entry: name)
            entry.linkTarget = Self.string(block[157..<257])
            entry.deviceMajor = UInt32(clamping: (try? Self.number(block[329..<337], field: "devmajor", entry: name)) ?? 0)
            entry.deviceMinor = UInt32(clamping: (try? Self.number(block[337..<345], field: "devminor", entry: name)) ?? 0)
            if let longName { entry.path = longName }
            if let longLink { entry.linkTarget = longLink }
            if let path = pax["path"] { entry.path = path }
            if let link = pax["linkpath"] { entry.linkTarget = link }
            if let value = pax["size"] {
                guard let size = Int64(value), size >= 0 else {
                    throw Self.malformed(entry.path, "a PAX size that is not a whole number of bytes ('\(value.prefix(40))')")
                }
                entry.size = size
            }
            if let value = pax["uid"], let uid = UInt32(value) { entry.uid = uid }
            if let value = pax["gid"], let gid = UInt32(value) { entry.gid = gid }
            if let value = pax["mtime"] {
                // Within ±2^62 s: Int64(Double) traps on nan, infinity and anything larger.
                guard let seconds = Double(value), seconds.isFinite, abs(seconds) < 4.6e18 else {
                    throw Self.malformed(entry.path, "a PAX mtime that is not a time ('\(value.prefix(40))')")
                }
                entry.modificationTime = Int64(seconds)
            }
            for (key, value) in pax where key.hasPrefix("SCHILY.xattr.") {
                entry.extendedAttributes[String(key.dropFirst("SCHILY.xattr.".count))] = Array(value.utf8)
            }
            if entry.kind == .directory, entry.path.hasSuffix("/") { entry.path.removeLast() }
            if entry.kind == .file {
                pendingContent = entry.size
                pendingPadding = Int((512 - entry.size % 512) % 512)
            } else {
                // Only regular files have contents; data blocks on anything else are skipped.
                pendingContent = 0
                pendingPadding = 0
                if entry.size > 0 {
                    var skip = entry.size + (512 - entry.size % 512) % 512
                    while skip > 0 {
                        let count = Int(min(skip, 1 << 20))
                        _ = try readExactly(count, allowEnd: false)
                        skip -= Int64(count)
                    }
                }
                entry.size = 0
            }
            return entry
        }
    }

    private var pendingContent: Int64 = 0
    private var pendingPadding = 0

    /// The next chunk of the current entry's contents; empty when done.
    public mutating func readContents(upTo limit: Int = 1 << 20) throws -> [UInt8] {
        guard pendingContent > 0 else {
            if pendingPadding > 0 {
                _ = try readExactly(pendingPadding, allowEnd: false)
                pendingPadding = 0
            }
            return []
        }
        let count = Int(min(Int64(limit), pendingContent))
        guard let chunk = try readExactly(count, allowEnd: false) else { return [] }
        pendingContent -= Int64(count)
        return chunk
    }

    public mutating func skipContents() throws {
        while !(try readContents()).isEmpty {}
    }

    // MARK: Bytes

    private mutating func readExactly(_ count: Int, allowEnd: Bool) throws -> [UInt8]? {
        while buffer.count - consumed < count {
            // Drop what was read before appending, once per chunk: removing from the front of
            // an array at every 512-byte header moved the whole buffer each time.
            if consumed > 0 {
                buffer.removeFirst(consumed)
                consumed = 0
            }
            var chunk: [UInt8] = []
            let got = try source(&chunk, max(count - buffer.count, 64 << 10))
            if got == 0 {
                if allowEnd && buffer.isEmpty { return nil }
                throw KilnError(
                    .invalidArgument, "layer tar stream ends in the middle of an entry (at byte \(offset + Int64(buffer.count)))")
            }
            buffer += chunk.prefix(got)
        }
        let result = Array(buffer[consumed..<(consumed + count)])
        consumed += count
        if consumed == buffer.count {
            buffer.removeAll(keepingCapacity: true)
            consumed = 0
        }
        offset += Int64(count)
        return result
    }

    private mutating func readPadded(_ size: Int) throws -> [UInt8] {
        guard size >= 0, size <= 16 << 20 else {
            throw KilnError(.invalidArgument, "layer has a tar header record of \(size) bytes; refusing more than 16 MiB")
        }
        let padded = (size + 511) / 512 * 512
        return Array((try readExactly(padded, allowEnd: false) ?? []).prefix(size))
    }

    static func string(_ bytes: ArraySlice<UInt8>) -> String {
        String(decoding: bytes.prefix { $0 != 0 }, as: UTF8.self)
    }

    static func number(_ bytes: ArraySlice<UInt8>, field: String, entry: String = "") throws -> Int64 {
        if let first = bytes.first, first & 0x80 != 0 {
            // GNU base-256 for large values; more than 63 bits would not fit.
            let digits = bytes.dropFirst().drop { $0 == 0 }
            guard first == 0x80, digits.count <= 7 || (digits.count == 8 && digits.first! < 0x80) else {
                throw malformed(entry, "a \(field) field out of range (base-256)")
            }
            return digits.reduce(Int64(0)) { ($0 << 8) | Int64($1) }
        }
        let text = string(bytes).trimmingCharacters(in: CharacterSet(charactersIn: " \0"))
        if text.isEmpty { return 0 }
        guard text.allSatisfy({ ("0"..."7").contains($0) }), let value = Int64(text, radix: 8) else {
            throw malformed(entry, "a bad \(field) field '\(text.prefix(20))'")
        }
        return value
    }

    /// The error for a header that breaks the format: which entry, and what was wrong with it.
    static func malformed(_ entry: String, _ problem: String) -> KilnError {
        KilnError(
            .invalidArgument,
            "layer is not a valid tar stream: the header of '\(entry.isEmpty ? "(no name)" : String(entry.prefix(200)))' has \(problem)")
    }

    static func checksumMatches(_ block: [UInt8]) -> Bool {
        guard let stored = try? number(block[148..<156], field: "checksum") else { return false }
        var sum: Int64 = 0
        for (index, byte) in block.enumerated() { sum += (148..<156).contains(index) ? 32 : Int64(byte) }
        return sum == stored
    }

    static func paxRecords(_ data: [UInt8]) throws -> [String: String] {
        var records: [String: String] = [:]
        var index = 0
        while index < data.count {
            // "LENGTH key=value\n": the length counts itself, the space and the newline.
            guard let space = data[index...].firstIndex(of: 0x20), let length = Int(String(decoding: data[index..<space], as: UTF8.self)),
                length > space - index + 1, index + length <= data.count, data[index + length - 1] == 0x0A
            else {
                throw KilnError(.invalidArgument, "layer has a malformed PAX header record at byte \(index) of the extended header")
            }
            let record = data[(space + 1)..<(index + length - 1)]
            if let equals = record.firstIndex(of: UInt8(ascii: "=")) {
                records[String(decoding: record[..<equals], as: UTF8.self)] = String(decoding: record[(equals + 1)...], as: UTF8.self)
            }
            index += length
        }
        return records
    }
}

extension TarReader {
    /// The bytes of a tar file for `init(source:)`, through gzip when `compressed`. Reading stops
    /// with an error naming `what` (the path by default) once the stream passes `maximumBytes`
    /// (`LayerSizeLimit.configured()` when nil), so a gzip bomb never reaches the disk whole.
    public static func fileSource(_ path: String, compressed: Bool, maximumBytes: Int64? = nil, what: String? = nil) throws -> Source {
        let limit = try maximumBytes ?? LayerSizeLimit.configured()
        let read: Source
        if compressed {
            let gzip = try GzipReader(path: path)
            read = { buffer, count in try gzip.read(into: &buffer, limit: count) }
        } else {
            guard let handle = FileHandle(forReadingAtPath: path) else { throw KilnError(.notFound, "cannot read '\(path)'") }
            read = { buffer, count in
                buffer = Array(try handle.read(upToCount: count) ?? Data())
                return buffer.count
            }
        }
        var total: Int64 = 0
        return { buffer, count in
            let got = try read(&buffer, count)
            total += Int64(got)
            if total > limit { throw LayerSizeLimit.exceeded(what ?? "'\(path)'", limit: limit) }
            return got
        }
    }
}
