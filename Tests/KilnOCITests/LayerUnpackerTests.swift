import CKilnSystem
import Foundation
import KilnModel
import KilnTestSupport
import Testing

@testable import KilnOCI

#if canImport(Glibc)
    import Glibc
#endif

@Suite("Layer unpacker: whiteouts and refused escapes", .serialized)
struct LayerUnpackerTests {
    struct Sandbox {
        let base: String
        var target: String { base + "/rootfs" }
        var outside: String { base + "/outside" }

        init() throws {
            var template = Array("/tmp/kiln-unpack.XXXXXX".utf8CString)
            base = String(cString: mkdtemp(&template)!)
            try FileManager.default.createDirectory(atPath: base + "/rootfs", withIntermediateDirectories: true)
            try FileManager.default.createDirectory(atPath: base + "/outside", withIntermediateDirectories: true)
            try "secret".write(toFile: base + "/outside/secret", atomically: true, encoding: .utf8)
        }

        func outsideContents() -> [String] { ((try? FileManager.default.contentsOfDirectory(atPath: outside)) ?? []).sorted() }
        func remove() { try? FileManager.default.removeItem(atPath: base) }
    }

    enum Item {
        case file(String, String)
        case directory(String)
        case symlink(String, String)
        case hardLink(String, String)
        case device(String)
    }

    /// A plain tar layer made from `items`, exactly as given (hostile layers included).
    func layer(_ items: [Item], in sandbox: Sandbox) throws -> String {
        var data = Data()
        var writer = TarWriter { data.append(contentsOf: $0) }
        for item in items {
            switch item {
            case .file(let path, let text):
                var entry = TarEntry(path: path, kind: .file, mode: 0o644)
                entry.size = Int64(text.utf8.count)
                try writer.writeHeader(entry)
                try writer.writeContents(Array(text.utf8))
                try writer.padToBlock(text.utf8.count)
            case .directory(let path):
                try writer.writeHeader(TarEntry(path: path, kind: .directory, mode: 0o755))
            case .symlink(let path, let target):
                var entry = TarEntry(path: path, kind: .symlink, mode: 0o777)
                entry.linkTarget = target
                try writer.writeHeader(entry)
            case .hardLink(let path, let target):
                var entry = TarEntry(path: path, kind: .hardLink, mode: 0o644)
                entry.linkTarget = target
                try writer.writeHeader(entry)
            case .device(let path):
                var entry = TarEntry(path: path, kind: .characterDevice, mode: 0o666)
                entry.deviceMajor = 1
                entry.deviceMinor = 3
                try writer.writeHeader(entry)
            }
        }
        try writer.finish()
        let path = sandbox.base + "/layer-\(UUID().uuidString).tar"
        try data.write(to: URL(fileURLWithPath: path))
        return path
    }

    @Test("Layers apply in order; .wh. files delete and opaque folders hide lower contents")
    func whiteouts() throws {
        let sandbox = try Sandbox()
        defer { sandbox.remove() }
        let unpacker = LayerUnpacker(target: sandbox.target)
        try unpacker.apply(
            layerFile: try layer(
                [
                    .directory("etc"), .file("etc/keep", "keep"), .file("etc/gone", "gone"),
                    .directory("app"), .file("app/old1", "1"), .directory("app/sub"), .file("app/sub/old2", "2"),
                    .symlink("etc/link", "keep"),
                ], in: sandbox), compressed: false)
        try unpacker.apply(
            layerFile: try layer(
                [
                    .file("etc/.wh.gone", ""), .file("app/new", "new"), .file("app/.wh..wh..opq", ""),
                    .file("etc/link", "replaced symlink"),
                ], in: sandbox), compressed: false)
        let manager = FileManager.default
        #expect(try String(contentsOfFile: sandbox.target + "/etc/keep", encoding: .utf8) == "keep")
        #expect(!manager.fileExists(atPath: sandbox.target + "/etc/gone"))
        #expect(try manager.contentsOfDirectory(atPath: sandbox.target + "/app").sorted() == ["new"])
        #expect(try String(contentsOfFile: sandbox.target + "/etc/link", encoding: .utf8) == "replaced symlink")
        #expect((try? manager.destinationOfSymbolicLink(atPath: sandbox.target + "/etc/link")) == nil)
    }

    @Test("A gzip layer packed by Kiln unpacks to the same tree")
    func roundTrip() throws {
        let sandbox = try Sandbox()
        defer { sandbox.remove() }
        let source = sandbox.base + "/source"
        try FileManager.default.createDirectory(atPath: source + "/usr/bin", withIntermediateDirectories: true)
        try String(repeating: "binary", count: 5000).write(toFile: source + "/usr/bin/tool", atomically: true, encoding: .utf8)
        chmod(source + "/usr/bin/tool", 0o755)
        try "su".write(toFile: source + "/usr/bin/su", atomically: true, encoding: .utf8)
        chmod(source + "/usr/bin/su", 0o4755)
        try "wall".write(toFile: source + "/usr/bin/wall", atomically: true, encoding: .utf8)
        chown(source + "/usr/bin/wall", 0, 5)
        chmod(source + "/usr/bin/wall", 0o2755)
        try FileManager.default.createSymbolicLink(atPath: source + "/bin", withDestinationPath: "usr/bin")
        _ = try LayerPacker.pack(directory: source, to: sandbox.base + "/layer.tar.gz", sourceDateEpoch: 1_000_000)
        try LayerUnpacker(target: sandbox.target).apply(layerFile: sandbox.base + "/layer.tar.gz")
        #expect(try String(contentsOfFile: sandbox.target + "/bin/tool", encoding: .utf8) == String(repeating: "binary", count: 5000))
        var info = stat()
        lstat(sandbox.target + "/usr/bin/tool", &info)
        #expect(info.st_mode & 0o777 == 0o755)
        #expect(info.st_mtim.tv_sec == 1_000_000)
        // Setting owners must not drop SUID/SGID (chown clears them); this needs root to own files.
        if geteuid() == 0 {
            lstat(sandbox.target + "/usr/bin/su", &info)
            #expect(info.st_mode & 0o7777 == 0o4755, "su keeps its SUID bit: \(String(info.st_mode & 0o7777, radix: 8))")
            lstat(sandbox.target + "/usr/bin/wall", &info)
            #expect(info.st_mode & 0o7777 == 0o2755 && info.st_gid == 5, "wall keeps SGID and its group")
        }
    }

    static let escapes: [(String, [Item], String)] = [
        ("absolute path", [.file("/escape-absolute", "x")], "has an absolute path"),
        ("dot-dot path", [.file("a/../../outside/dotdot", "x")], "has '..' in its path"),
        (
            "write through a symlink climbing out", [.symlink("up", "../outside"), .file("up/via-relative-link", "x")],
            "leads outside the image root"
        ),
        ("hard link to a file outside", [.hardLink("stolen", "../outside/secret")], "has '..' in its hard-link target"),
        ("hard link with an absolute target", [.hardLink("stolen", "/etc/passwd")], "has an absolute hard-link target"),
        // At a layer's root, `.wh..` would delete the folder holding the target (the layer cache).
        ("whiteout of the parent folder", [.file(".wh..", "")], "is not a file name"),
        ("whiteout of the folder itself", [.file("a/.wh.", "")], "is not a file name"),
        ("whiteout of the current folder", [.file("a/.wh..", "")], "is not a file name"),
    ]

    @Test(arguments: escapes)
    func escapeRefused(_ label: String, _ items: [Item], _ message: String) throws {
        let sandbox = try Sandbox()
        defer { sandbox.remove() }
        let error = try #require(throws: KilnError.self, "\(label)") {
            try LayerUnpacker(target: sandbox.target).apply(layerFile: try layer(items, in: sandbox), compressed: false)
        }
        #expect(error.message.contains(message), "\(label): \(error.message)")
        #expect(sandbox.outsideContents() == ["secret"], "\(label): nothing appears outside the target")
        #expect(try String(contentsOfFile: sandbox.outside + "/secret", encoding: .utf8) == "secret")
        #expect(!FileManager.default.fileExists(atPath: "/escape-absolute"))
    }

    @Test("An absolute symlink is followed inside the target, never on the host")
    func absoluteSymlinkStaysInside() throws {
        let sandbox = try Sandbox()
        defer { sandbox.remove() }
        try LayerUnpacker(target: sandbox.target).apply(
            layerFile: try layer(
                [
                    .symlink("etcdir", sandbox.outside), .file("etcdir/planted", "x"),
                ], in: sandbox), compressed: false)
        #expect(sandbox.outsideContents() == ["secret"])
        #expect(FileManager.default.fileExists(atPath: sandbox.target + sandbox.outside + "/planted"))
    }

    @Test("Device nodes are refused when unpacking without root")
    func devicesNeedRoot() throws {
        let sandbox = try Sandbox()
        defer { sandbox.remove() }
        let error = try #require(throws: KilnError.self) {
            try LayerUnpacker(target: sandbox.target, allowDevices: false, applyOwners: false).apply(
                layerFile: try layer([.device("dev/null")], in: sandbox), compressed: false)
        }
        #expect(error.message.contains("is a device node; unpacking devices needs root"))
        #expect(!FileManager.default.fileExists(atPath: sandbox.target + "/dev/null"))
    }

    @Test(
        "Device nodes keep the layer's mode whatever the umask (/dev/null stays 0666)",
        .enabled(if: TestEnvironment.isCI || TestEnvironment.isRoot))
    func deviceModes() throws {
        let sandbox = try Sandbox()
        defer { sandbox.remove() }
        try LayerUnpacker(target: sandbox.target).apply(
            layerFile: try layer([.directory("dev"), .device("dev/null")], in: sandbox), compressed: false)
        var info = stat()
        #expect(lstat(sandbox.target + "/dev/null", &info) == 0)
        #expect(info.st_mode & S_IFMT == S_IFCHR && info.st_mode & 0o7777 == 0o666, "mode \(String(info.st_mode, radix: 8))")
    }

    @Test("A truncated or corrupt layer is an error, not a partial success")
    func corruptLayer() throws {
        let sandbox = try Sandbox()
        defer { sandbox.remove() }
        let path = try layer([.file("big", String(repeating: "x", count: 5000))], in: sandbox)
        let bytes = try Data(contentsOf: URL(fileURLWithPath: path))
        try bytes.prefix(1500).write(to: URL(fileURLWithPath: path))
        #expect(throws: KilnError.self) { try LayerUnpacker(target: sandbox.target).apply(layerFile: path, compressed: false) }
        var corrupt = bytes
        corrupt[10] ^= 0xff
        try corrupt.write(to: URL(fileURLWithPath: path))
        let error = try #require(throws: KilnError.self) {
            try LayerUnpacker(target: sandbox.target).apply(layerFile: path, compressed: false)
        }
        #expect(error.message.contains("bad header checksum"))
    }
}

@Suite("Packing an overlayfs upper dir")
struct OverlayUpperDirectoryTests {
    @Test(
        "Whiteout devices become .wh. files and opaque folders get .wh..wh..opq; unpacking applies them",
        .enabled(if: TestEnvironment.requiresRoot(), "whiteout devices need root; CI runs as root"))
    func upperDirectory() throws {
        var template = Array("/tmp/kiln-upper.XXXXXX".utf8CString)
        let base = String(cString: mkdtemp(&template)!)
        defer { try? FileManager.default.removeItem(atPath: base) }
        let upper = base + "/upper"
        try FileManager.default.createDirectory(atPath: upper + "/etc/conf.d", withIntermediateDirectories: true)
        #expect(mknod(upper + "/etc/removed", S_IFCHR | 0o000, 0) == 0)
        #expect(setxattr(upper + "/etc/conf.d", "trusted.overlay.opaque", "y", 1, 0) == 0)
        try "fresh".write(toFile: upper + "/etc/conf.d/new.conf", atomically: true, encoding: .utf8)

        var data = Data()
        var writer = TarWriter { data.append(contentsOf: $0) }
        try DirectoryArchiver(sourceDateEpoch: 0, overlayUpperDirectory: true).archive(upper, into: &writer)
        let names = try listNames(data)
        #expect(names == ["etc/", "etc/conf.d/", "etc/conf.d/.wh..wh..opq", "etc/conf.d/new.conf", "etc/.wh.removed"])

        let lower = base + "/rootfs"
        try FileManager.default.createDirectory(atPath: lower + "/etc/conf.d", withIntermediateDirectories: true)
        try "old".write(toFile: lower + "/etc/removed", atomically: true, encoding: .utf8)
        try "old".write(toFile: lower + "/etc/conf.d/old.conf", atomically: true, encoding: .utf8)
        try data.write(to: URL(fileURLWithPath: base + "/layer.tar"))
        try LayerUnpacker(target: lower).apply(layerFile: base + "/layer.tar", compressed: false)
        #expect(!FileManager.default.fileExists(atPath: lower + "/etc/removed"))
        #expect(try FileManager.default.contentsOfDirectory(atPath: lower + "/etc/conf.d") == ["new.conf"])
    }

    func listNames(_ data: Data) throws -> [String] {
        var bytes = [UInt8](data)
        var names: [String] = []
        var reader = TarReader { buffer, limit in
            let count = min(limit, bytes.count)
            buffer = Array(bytes.prefix(count))
            bytes.removeFirst(count)
            return count
        }
        while let entry = try reader.next() {
            names.append(entry.path + (entry.kind == .directory ? "/" : ""))
            try reader.skipContents()
        }
        return names
    }
}
