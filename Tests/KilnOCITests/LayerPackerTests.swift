import Foundation
import KilnModel
import KilnTestSupport
import Testing

@testable import KilnOCI

#if canImport(Glibc)
    import Glibc
#endif

@Suite("Gzip layers in one pass, checked with gzip, sha256sum and GNU tar", .serialized)
struct LayerPackerTests {
    /// Runs a tool, expects success, and returns its trimmed output.
    func shell(_ command: String) throws -> String {
        let result = try KilnTestSupport.shell(command)
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
            try String(repeating: "line \(index) of kiln's layer test\n", count: 400).write(
                toFile: tree + "/usr/share/doc/file\(index).txt", atomically: true, encoding: .utf8)
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
        try String(repeating: "The quick brown fox jumps over the lazy dog. ", count: 20_000).write(
            toFile: work + "/tree/text", atomically: true, encoding: .utf8)
        let result = try LayerPacker.pack(directory: work + "/tree", to: work + "/layer.tar.gz", sourceDateEpoch: 0)
        let gzipSize = Int64(try shell("gzip -dc \(work)/layer.tar.gz | gzip -6 -n | wc -c"))!
        #expect(abs(result.size - gzipSize) * 100 <= gzipSize * 5)
    }

    @Test(
        "A step's layer holds only what changed since the last state: new and changed files with their folders, and whiteouts for what is gone (GNU tar lists it)"
    )
    func changesSinceState() throws {
        let work = scratch()
        defer { try? FileManager.default.removeItem(atPath: work) }
        let tree = work + "/tree"
        let manager = FileManager.default
        try manager.createDirectory(atPath: tree + "/etc/app", withIntermediateDirectories: true)
        try manager.createDirectory(atPath: tree + "/var/lib/gone", withIntermediateDirectories: true)
        for name in ["etc/app/keep.conf", "etc/app/edit.conf", "etc/app/drop.conf", "var/lib/gone/x", "etc/chmod-me"] {
            try "first\n".write(toFile: tree + "/" + name, atomically: false, encoding: .utf8)
        }
        let before = try DirectoryState(scanning: tree)

        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: tree + "/etc/app/edit.conf"))
        try handle.seekToEnd()
        try handle.write(contentsOf: Data("second\n".utf8))
        try handle.close()
        try manager.removeItem(atPath: tree + "/etc/app/drop.conf")
        try manager.removeItem(atPath: tree + "/var/lib/gone")
        try manager.createDirectory(atPath: tree + "/opt/new", withIntermediateDirectories: true)
        try "new\n".write(toFile: tree + "/opt/new/file", atomically: false, encoding: .utf8)
        chmod(tree + "/etc/chmod-me", 0o600)

        var bytes = Data()
        var writer = TarWriter { bytes.append(contentsOf: $0) }
        let written = try DirectoryArchiver(sourceDateEpoch: 0, changesSince: before).archive(tree, into: &writer)
        try bytes.write(to: URL(fileURLWithPath: work + "/step.tar"))
        let listed = try shell("tar -tf \(work)/step.tar").split(separator: "\n").map(String.init)
        #expect(
            listed == [
                "etc/", "etc/app/", "etc/app/.wh.drop.conf", "etc/app/edit.conf", "etc/chmod-me", "opt/", "opt/new/", "opt/new/file",
                "var/", "var/lib/", "var/lib/.wh.gone",
            ], "\(listed)")
        #expect(written == listed.count)
        #expect(try shell("tar -xOf \(work)/step.tar etc/app/edit.conf") == "first\nsecond")

        var empty = Data()
        var emptyWriter = TarWriter { empty.append(contentsOf: $0) }
        #expect(
            try DirectoryArchiver(sourceDateEpoch: 0, changesSince: try DirectoryState(scanning: tree)).archive(tree, into: &emptyWriter)
                == 0, "no change, no entries")
    }

    @Test(
        "An opaque upper folder is marked opaque in the step that made it, not again when a later step adds to it; the state returned is the one packed"
    )
    func opaqueFolderOnce() throws {
        guard geteuid() == 0 else { return } // trusted.* xattrs need root; CI runs as root
        let work = scratch()
        defer { try? FileManager.default.removeItem(atPath: work) }
        let tree = work + "/upper"
        try FileManager.default.createDirectory(atPath: tree + "/etc/conf.d", withIntermediateDirectories: true)
        try "a\n".write(toFile: tree + "/etc/conf.d/a.conf", atomically: false, encoding: .utf8)
        _ = try shell("python3 -c \"import os; os.setxattr('\(tree)/etc/conf.d', 'trusted.overlay.opaque', b'y')\"")
        func pack(since: DirectoryState?) throws -> ([String], DirectoryState) {
            var bytes = Data()
            var writer = TarWriter { bytes.append(contentsOf: $0) }
            let (_, state) = try DirectoryArchiver(sourceDateEpoch: 0, overlayUpperDirectory: true, changesSince: since).archiveRecording(
                tree, into: &writer)
            let file = work + "/\(UUID().uuidString).tar"
            try bytes.write(to: URL(fileURLWithPath: file))
            return (try shell("tar -tf \(file)").split(separator: "\n").map(String.init), state)
        }
        let (first, state) = try pack(since: nil)
        #expect(first.contains("etc/conf.d/.wh..wh..opq") && first.contains("etc/conf.d/a.conf"), "\(first)")
        try "b\n".write(toFile: tree + "/etc/conf.d/b.conf", atomically: false, encoding: .utf8)
        let (second, _) = try pack(since: state)
        #expect(second == ["etc/", "etc/conf.d/", "etc/conf.d/b.conf"], "the second step adds b.conf without hiding a.conf: \(second)")
    }
}
