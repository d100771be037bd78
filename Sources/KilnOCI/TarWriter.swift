import Foundation
import KilnModel

#if canImport(Glibc)
    import Glibc
#endif

/// One member of a tar stream.
public struct TarEntry: Sendable, Hashable {
    public enum Kind: UInt8, Sendable, Hashable {
        case file = 0x30, hardLink = 0x31, symlink = 0x32, characterDevice = 0x33, blockDevice = 0x34, directory = 0x35, fifo = 0x36
    }

    /// Relative path without a leading `/` or `./`; directories without a trailing `/` (added on write).
    public var path: String
    public var kind: Kind
    public var mode: UInt32
    public var uid: UInt32 = 0
    public var gid: UInt32 = 0
    public var size: Int64 = 0
    /// Seconds since the epoch.
    public var modificationTime: Int64 = 0
    public var linkTarget: String = ""
    public var deviceMajor: UInt32 = 0
    public var deviceMinor: UInt32 = 0
    /// Extended attributes, written as PAX `SCHILY.xattr.*` records.
    public var extendedAttributes: [String: [UInt8]] = [:]

    public init(path: String, kind: Kind, mode: UInt32) {
        self.path = path
        self.kind = kind
        self.mode = mode
    }
}

/// A streaming tar writer: ustar headers, with PAX extended headers for long names and links,
/// large sizes and ids, and xattrs. It writes only what it is given, so the same entries give
/// the same bytes.
public struct TarWriter {
    public typealias Sink = (UnsafeRawBufferPointer) throws -> Void
    static let blockSize = 512

    private let sink: Sink
    public private(set) var bytesWritten: Int64 = 0

    public init(sink: @escaping Sink) {
        self.sink = sink
    }

    /// Writes one entry's header; a file's `size` bytes must follow through `writeContents`.
    public mutating func writeHeader(_ entry: TarEntry) throws {
        var name = entry.path
        if entry.kind == .directory, !name.hasSuffix("/") { name += "/" }
        var pax: [(String, String)] = []
        let split = Self.splitName(name)
        if split == nil { pax.append(("path", name)) }
        if entry.linkTarget.utf8.count > 100 { pax.append(("linkpath", entry.linkTarget)) }
        if entry.size > 0o77777777777 { pax.append(("size", String(entry.size))) }
        if entry.uid > 0o7777777 { pax.append(("uid", String(entry.uid))) }
        if entry.gid > 0o7777777 { pax.append(("gid", String(entry.gid))) }
        for key in entry.extendedAttributes.keys.sorted() {
            pax.append(("SCHILY.xattr." + key, String(decoding: entry.extendedAttributes[key]!, as: UTF8.self)))
        }
        if !pax.isEmpty {
            let records = Self.paxRecords(pax)
            var header = TarEntry(
                path: "PaxHeaders/" + String(name.split(separator: "/").last ?? "entry").prefix(80), kind: .file, mode: 0o644)
            header.modificationTime = entry.modificationTime
            header.size = Int64(records.count)
            try emit(Self.header(for: header, name: (prefix: "", name: header.path), typeflag: 0x78))
            try writeContents(records)
            try padToBlock(records.count)
        }
        // A name too long for ustar went into the PAX header; the ustar field keeps its tail.
        let fitted = split ?? (prefix: "", name: String(decoding: Array(name.utf8.suffix(100)), as: UTF8.self))
        try emit(Self.header(for: entry, name: fitted, typeflag: entry.kind.rawValue))
    }

    public mutating func writeContents(_ bytes: [UInt8]) throws {
        try bytes.withUnsafeBytes { try emitRaw($0) }
    }

    public mutating func writeContents(_ bytes: UnsafeRawBufferPointer) throws {
        try emitRaw(bytes)
    }

    /// Pads a file's contents to the next 512-byte block.
    public mutating func padToBlock(_ contentSize: Int) throws {
        let remainder = contentSize % Self.blockSize
        if remainder != 0 { try emit([UInt8](repeating: 0, count: Self.blockSize - remainder)) }
    }

    /// The end-of-archive marker: two zero blocks.
    public mutating func finish() throws {
        try emit([UInt8](repeating: 0, count: Self.blockSize * 2))
    }

    private mutating func emit(_ bytes: [UInt8]) throws {
        try bytes.withUnsafeBytes { try emitRaw($0) }
    }

    private mutating func emitRaw(_ bytes: UnsafeRawBufferPointer) throws {
        try sink(bytes)
        bytesWritten += Int64(bytes.count)
    }

    // MARK: Header encoding

    /// ustar keeps a 155-byte prefix and a 100-byte name; nil when the path cannot be split so.
    static func splitName(_ path: String) -> (prefix: String, name: String)? {
        let bytes = Array(path.utf8)
        if bytes.count <= 100 { return ("", path) }
        guard bytes.count <= 256 else { return nil }
        let searchLimit = min(bytes.count - 1, 155)
        for index in stride(from: searchLimit, through: 1, by: -1) where bytes[index] == UInt8(ascii: "/") {
            let name = bytes[(index + 1)...]
            if name.count <= 100, !name.isEmpty {
                return (String(decoding: bytes[..<index], as: UTF8.self), String(decoding: name, as: UTF8.self))
            }
        }
        return nil
    }

    static func paxRecords(_ records: [(String, String)]) -> [UInt8] {
        var output: [UInt8] = []
        for (key, value) in records {
            let body = " \(key)=\(value)\n"
            let bodyLength = body.utf8.count
            // The length counts its own digits.
            var length = bodyLength + String(bodyLength).count
            if String(length).count != String(bodyLength).count { length = bodyLength + String(length).count }
            output += Array("\(length)\(body)".utf8)
        }
        return output
    }

    static func header(for entry: TarEntry, name: (prefix: String, name: String), typeflag: UInt8) -> [UInt8] {
        var block = [UInt8](repeating: 0, count: blockSize)
        func put(_ text: String, at offset: Int, width: Int) {
            for (index, byte) in text.utf8.prefix(width).enumerated() { block[offset + index] = byte }
        }
        func octal(_ value: Int64, at offset: Int, width: Int) {
            let digits = String(value, radix: 8)
            let padded = String(repeating: "0", count: max(0, width - 1 - digits.count)) + digits
            put(String(padded.suffix(width - 1)), at: offset, width: width - 1)
        }
        put(name.name, at: 0, width: 100)
        octal(Int64(entry.mode & 0o7777), at: 100, width: 8)
        octal(Int64(min(entry.uid, 0o7777777)), at: 108, width: 8)
        octal(Int64(min(entry.gid, 0o7777777)), at: 116, width: 8)
        octal(entry.kind == .file || typeflag == 0x78 ? min(entry.size, 0o77777777777) : 0, at: 124, width: 12)
        octal(max(0, min(entry.modificationTime, 0o77777777777)), at: 136, width: 12)
        block[156] = typeflag
        put(entry.linkTarget, at: 157, width: 100)
        put("ustar", at: 257, width: 6)
        put("00", at: 263, width: 2)
        if entry.kind == .characterDevice || entry.kind == .blockDevice {
            octal(Int64(entry.deviceMajor), at: 329, width: 8)
            octal(Int64(entry.deviceMinor), at: 337, width: 8)
        }
        put(name.prefix, at: 345, width: 155)
        // The checksum is computed with its own field as spaces.
        for index in 148..<156 { block[index] = 0x20 }
        let sum = block.reduce(0) { $0 + Int($1) }
        let checksum = String(sum, radix: 8)
        put(String(repeating: "0", count: max(0, 6 - checksum.count)) + checksum, at: 148, width: 6)
        block[154] = 0
        block[155] = 0x20
        return block
    }
}
