import CKilnSystem
import Foundation
import KilnModel
import KilnTestSupport
import Testing

@testable import KilnOCI

#if canImport(Glibc)
    import Glibc
#endif

@Suite("Deterministic tar writer, checked with GNU tar", .serialized)
struct TarWriterTests {
    static let longName = String(repeating: "long-directory-name/", count: 8) + String(repeating: "f", count: 120) + ".txt"

    /// A tree with every kind of entry the writer handles.
    func makeTree() throws -> String {
        var template = Array("/tmp/kiln-tar-tree.XXXXXX".utf8CString)
        let root = String(cString: mkdtemp(&template)!)
        let manager = FileManager.default
        try manager.createDirectory(atPath: root + "/etc/app", withIntermediateDirectories: true)
        try manager.createDirectory(atPath: root + "/empty", withIntermediateDirectories: true)
        try "config\n".write(toFile: root + "/etc/app/app.conf", atomically: true, encoding: .utf8)
        try Data(repeating: 0x5a, count: 70_000).write(to: URL(fileURLWithPath: root + "/big.bin"))
        chmod(root + "/etc/app/app.conf", 0o640)
        try manager.createSymbolicLink(atPath: root + "/etc/link", withDestinationPath: "app/app.conf")
        link(root + "/big.bin", root + "/big-hardlink.bin")
        mkfifo(root + "/pipe", 0o600)
        let long = root + "/" + Self.longName
        try manager.createDirectory(atPath: (long as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        try "deep\n".write(toFile: long, atomically: true, encoding: .utf8)
        chown(root + "/etc/app/app.conf", 1234, 5678)
        _ = setxattr(root + "/etc/app/app.conf", "user.kiln", "yes", 3, 0)
        return root
    }

    func archive(_ root: String, epoch: Int64?) throws -> Data {
        var output = Data()
        var writer = TarWriter { output.append(contentsOf: $0) }
        try DirectoryArchiver(sourceDateEpoch: epoch).archive(root, into: &writer)
        return output
    }

    func gnuTar(_ arguments: String, input: Data) throws -> String {
        var template = Array("/tmp/kiln-tar.XXXXXX".utf8CString)
        let fd = mkstemp(&template)
        close(fd)
        let file = String(cString: template)
        defer { unlink(file) }
        try input.write(to: URL(fileURLWithPath: file))
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/sh")
        process.arguments = ["-c", "tar \(arguments) -f \(file)"]
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        try process.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        #expect(process.terminationStatus == 0, "tar \(arguments): \(String(decoding: data, as: UTF8.self))")
        return String(decoding: data, as: UTF8.self)
    }

    @Test("The same tree gives the same bytes twice, whatever the files' times")
    func deterministic() throws {
        let root = try makeTree()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let first = try archive(root, epoch: 1_700_000_000)
        utimes(root + "/etc/app/app.conf", nil) // touch: now is later than the epoch, so it is clamped away
        let second = try archive(root, epoch: 1_700_000_000)
        #expect(first == second)
        #expect(first.count % 512 == 0)
        #expect(Digest(sha256Of: first) == Digest(sha256Of: second))
    }

    @Test("GNU tar lists every entry with its type, owner, mode and clamped time")
    func gnuTarLists() throws {
        let root = try makeTree()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let data = try archive(root, epoch: 1_700_000_000)
        let listing = try gnuTar("--numeric-owner --full-time -tv", input: data)
        let lines = listing.split(separator: "\n").map(String.init)
        func line(_ suffix: String) -> String? { lines.first { $0.hasSuffix(suffix) || $0.contains(" \(suffix) ") } }
        #expect(line("etc/app/app.conf")?.hasPrefix("-rw-r----- 1234/5678") == true, "\(listing)")
        #expect(line("etc/link -> app/app.conf")?.hasPrefix("lrwxrwxrwx") == true)
        #expect(line("big-hardlink.bin link to big.bin") != nil || line("big.bin link to big-hardlink.bin") != nil)
        #expect(line("pipe")?.hasPrefix("prw-------") == true)
        #expect(line("empty/")?.hasPrefix("d") == true)
        #expect(line(Self.longName) != nil, "a 300-byte path survives through PAX")
        #expect(lines.allSatisfy { $0.contains("2023-11-14 22:13:20") }, "every time is clamped to SOURCE_DATE_EPOCH")
        let names = lines.compactMap { $0.split(separator: " ", maxSplits: 5).last.map(String.init) }
        #expect(
            names.first?.hasSuffix("big-hardlink.bin link to big.bin") == true || names.first == "big-hardlink.bin",
            "entries are in byte order")
    }

    @Test("GNU tar extracts the same contents and xattrs")
    func gnuTarExtracts() throws {
        let root = try makeTree()
        defer { try? FileManager.default.removeItem(atPath: root) }
        var template = Array("/tmp/kiln-tar-out.XXXXXX".utf8CString)
        let out = String(cString: mkdtemp(&template)!)
        defer { try? FileManager.default.removeItem(atPath: out) }
        _ = try gnuTar("--xattrs --xattrs-include='*' -C \(out) -x", input: try archive(root, epoch: nil))
        #expect(try String(contentsOfFile: out + "/" + Self.longName, encoding: .utf8) == "deep\n")
        #expect(try Data(contentsOf: URL(fileURLWithPath: out + "/big.bin")).count == 70_000)
        #expect(try FileManager.default.destinationOfSymbolicLink(atPath: out + "/etc/link") == "app/app.conf")
        var first = stat(), second = stat()
        lstat(out + "/big.bin", &first)
        lstat(out + "/big-hardlink.bin", &second)
        #expect(first.st_ino == second.st_ino, "the hard link is a hard link again")
        var value = [UInt8](repeating: 0, count: 8)
        let size = getxattr(out + "/etc/app/app.conf", "user.kiln", &value, 8)
        #expect(size == 3 && Array(value.prefix(3)) == Array("yes".utf8))
    }

    @Test("PAX records count their own length")
    func paxRecordLength() {
        for valueLength in [1, 85, 86, 87, 990, 995, 996, 1000] {
            let records = TarWriter.paxRecords([("path", String(repeating: "p", count: valueLength))])
            let text = String(decoding: records, as: UTF8.self)
            let declared = Int(text.prefix { $0 != " " })!
            #expect(declared == records.count, "value length \(valueLength)")
        }
    }
}
