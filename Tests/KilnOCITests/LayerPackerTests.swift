#if canImport(Glibc)
import Glibc
#endif
import Foundation
import KilnModel
import Testing
@testable import KilnOCI

@Suite("Gzip layers in one pass, checked with gzip, sha256sum and GNU tar", .serialized)
struct LayerPackerTests {
    /// Runs a tool, expects success, and returns its trimmed output.
    func shell(_ command: String) throws -> String {
        let result = try run(command)
        #expect(result.status == 0, "\(command): \(result.text)")
        return result.text.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    func scratch() -> String {
        var template = Array("/tmp/kiln-layer.XXXXXX".utf8CString)
        return String(cString: mkdtemp(&template)!)
    }

    @Test("digest = sha256 of the file, diffID = sha256 of the tar inside it, and the same tree packs to the same bytes")
    func digestsMatchTools() throws {
        let work = scratch()
        defer { try? FileManager.default.removeItem(atPath: work) }
        let tree = work + "/tree"
        try FileManager.default.createDirectory(atPath: tree + "/usr/share/doc", withIntermediateDirectories: true)
        for index in 0..<50 {
            try String(repeating: "line \(index) of kiln's layer test\n", count: 400).write(toFile: tree + "/usr/share/doc/file\(index).txt", atomically: true, encoding: .utf8)
        }
        // Incompressible bytes larger than one output buffer exercise the streaming path.
        var random = SystemRandomNumberGenerator()
        try Data((0..<600_000).map { _ in UInt8.random(in: 0...255, using: &random) }).write(to: URL(fileURLWithPath: tree + "/random.bin"))

        let first = try LayerPacker.pack(directory: tree, to: work + "/one.tar.gz", sourceDateEpoch: 0)
        let second = try LayerPacker.pack(directory: tree, to: work + "/two.tar.gz", sourceDateEpoch: 0)
        #expect(first == second)
        #expect(try shell("cmp \(work)/one.tar.gz \(work)/two.tar.gz && echo same") == "same")
        #expect(first.digest.encoded == (try shell("sha256sum \(work)/one.tar.gz | cut -d' ' -f1")))
        #expect(first.diffID.encoded == (try shell("gzip -dc \(work)/one.tar.gz | sha256sum | cut -d' ' -f1")))
        #expect(first.size == Int64(try shell("stat -c %s \(work)/one.tar.gz")))
        #expect(first.uncompressedSize == Int64(try shell("gzip -dc \(work)/one.tar.gz | wc -c")))
        #expect(try shell("tar -tzf \(work)/one.tar.gz | wc -l") == "54", "usr/, usr/share/, usr/share/doc/, 50 files and random.bin")
        #expect(try shell("gzip -t \(work)/one.tar.gz && echo ok") == "ok")
    }

    @Test("Compression level 6 is within a few percent of gzip -6 on the same tar")
    func comparableToGzip() throws {
        let work = scratch()
        defer { try? FileManager.default.removeItem(atPath: work) }
        try FileManager.default.createDirectory(atPath: work + "/tree", withIntermediateDirectories: true)
        try String(repeating: "The quick brown fox jumps over the lazy dog. ", count: 20_000).write(toFile: work + "/tree/text", atomically: true, encoding: .utf8)
        let result = try LayerPacker.pack(directory: work + "/tree", to: work + "/layer.tar.gz", sourceDateEpoch: 0)
        let gzipSize = Int64(try shell("gzip -dc \(work)/layer.tar.gz | gzip -6 -n | wc -c"))!
        #expect(abs(result.size - gzipSize) * 100 <= gzipSize * 5)
    }
}
