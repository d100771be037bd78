import Foundation
import KilnModel
import KilnTestSupport
import Testing

@testable import KilnOCI

/// Layers are untrusted: a malformed tar header is a clear error that names the entry, never a
/// trap that takes Kiln down.
@Suite("Malformed tar headers give errors that name the entry")
struct TarReaderBoundsTests {
    /// One ustar header block with a correct checksum; `fields` overwrite bytes at their offsets.
    static func header(name: String, typeflag: Character = "0", size: [UInt8]? = nil, mode: [UInt8]? = nil, mtime: [UInt8]? = nil)
        -> [UInt8]
    {
        var block = [UInt8](repeating: 0, count: 512)
        func put(_ bytes: [UInt8], at offset: Int) { for (index, byte) in bytes.enumerated() { block[offset + index] = byte } }
        put(Array(name.utf8), at: 0)
        put(mode ?? Array("0000644\0".utf8), at: 100)
        put(Array("0000000\0".utf8), at: 108)
        put(Array("0000000\0".utf8), at: 116)
        put(size ?? Array("00000000000\0".utf8), at: 124)
        put(mtime ?? Array("00000000000\0".utf8), at: 136)
        block[156] = typeflag.asciiValue!
        put(Array("ustar\0".utf8) + Array("00".utf8), at: 257)
        put(Array(repeating: 32, count: 8), at: 148)
        let sum = block.reduce(0) { $0 + Int($1) }
        put(Array(String(format: "%06o\0 ", sum).utf8), at: 148)
        return block
    }

    /// A PAX extended header for `records` ("key=value"), then a file header called `name`.
    static func pax(_ records: [String], name: String = "victim") -> [UInt8] {
        var data: [UInt8] = []
        for record in records {
            // The length counts its own digits, the space and the newline.
            var length = record.utf8.count + 3
            if String(length).count + record.utf8.count + 2 != length { length += 1 }
            data += Array("\(length) \(record)\n".utf8)
        }
        let size = Array(String(format: "%011o\0", data.count).utf8)
        return header(name: "PaxHeader/victim", typeflag: "x", size: size) + data
            + [UInt8](repeating: 0, count: (512 - data.count % 512) % 512)
            + header(name: name)
    }

    static func read(_ bytes: [UInt8]) throws -> [TarEntry] {
        var remaining = bytes[...]
        var reader = TarReader { buffer, limit in
            buffer = Array(remaining.prefix(limit))
            remaining = remaining.dropFirst(buffer.count)
            return buffer.count
        }
        var entries: [TarEntry] = []
        while let entry = try reader.next() {
            entries.append(entry)
            try reader.skipContents()
        }
        return entries
    }

    func expectMalformed(_ bytes: [UInt8], naming entry: String, _ words: String) {
        do {
            _ = try Self.read(bytes + [UInt8](repeating: 0, count: 1024))
            Issue.record("a malformed header was accepted (\(words))")
        } catch let error as KilnError {
            #expect(error.message.contains(entry) && error.message.contains(words), "\(error.message)")
        } catch {
            Issue.record("not a KilnError: \(error)")
        }
    }

    @Test("A well-formed header still reads, PAX records included")
    func wellFormed() throws {
        let entries = try Self.read(Self.pax(["mtime=1700000000.5", "path=etc/motd"]) + [UInt8](repeating: 0, count: 1024))
        #expect(entries.map(\.path) == ["etc/motd"] && entries[0].modificationTime == 1_700_000_000 && entries[0].mode == 0o644)
    }

    @Test("Negative or oversized numbers in the header")
    func numbers() {
        expectMalformed(Self.header(name: "etc/negative-size", size: Array("-0000000001\0".utf8)), naming: "etc/negative-size", "size")
        expectMalformed(Self.header(name: "etc/negative-mode", mode: Array("-000001\0".utf8)), naming: "etc/negative-mode", "mode")
        expectMalformed(
            Self.header(name: "etc/huge-mode", mode: [0x80, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]), naming: "etc/huge-mode", "mode")
        expectMalformed(
            Self.header(name: "etc/huge-size", size: [0xff] + [UInt8](repeating: 0xff, count: 11)), naming: "etc/huge-size", "size")
        expectMalformed(Self.header(name: "etc/not-octal", mtime: Array("0000000009\0\0".utf8)), naming: "etc/not-octal", "mtime")
    }

    @Test("PAX values that are not times or sizes, and records that break the format")
    func paxValues() {
        expectMalformed(Self.pax(["mtime=1e300"]), naming: "victim", "mtime")
        expectMalformed(Self.pax(["mtime=nan"]), naming: "victim", "mtime")
        expectMalformed(Self.pax(["mtime=-inf"]), naming: "victim", "mtime")
        expectMalformed(Self.pax(["size=-5"]), naming: "victim", "size")
        let broken: [UInt8] = Array("1 ".utf8)
        let header = Self.header(name: "PaxHeader/x", typeflag: "x", size: Array(String(format: "%011o\0", broken.count).utf8))
        do {
            _ = try Self.read(
                header + broken + [UInt8](repeating: 0, count: 510) + Self.header(name: "after") + [UInt8](repeating: 0, count: 1024))
            Issue.record("a PAX record \"1 \" was accepted")
        } catch let error as KilnError {
            #expect(error.message.contains("PAX"), "\(error.message)")
        } catch {
            Issue.record("not a KilnError: \(error)")
        }
    }

    @Test("A file an instance named .wh.* is refused when packing its changes, since a layer would read it as a deletion")
    func whiteoutNamedFile() throws {
        let folder = Scratch("kiln-wh")
        defer { folder.remove() }
        try folder.write("etc/.wh.passwd", "not a deletion\n")
        var writer = TarWriter { _ in }
        let error = try #require(throws: KilnError.self) {
            try DirectoryArchiver(sourceDateEpoch: 0, overlayUpperDirectory: true).archive(folder.path, into: &writer)
        }
        #expect(error.message.contains("etc/.wh.passwd") && error.message.contains("rename"), "\(error.message)")
    }
}
