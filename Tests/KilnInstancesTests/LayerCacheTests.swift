import Foundation
import KilnModel
import KilnOCI
import KilnTestSupport
import Testing

@testable import KilnInstances

@Suite("Layer cache: bounded unpacking, and only complete folders reused")
struct LayerCacheTests {
    /// A gzip layer of `tree` (relative path → contents) in a fresh store.
    static func layer(_ tree: [String: Data], in scratch: Scratch) throws -> (ContentStore, Descriptor, Digest) {
        let source = scratch.file("tree-\(UUID().uuidString)")
        for (path, contents) in tree {
            let file = source + "/" + path
            try FileManager.default.createDirectory(atPath: (file as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
            try contents.write(to: URL(fileURLWithPath: file))
        }
        let packed = try LayerPacker.pack(directory: source, to: scratch.file("layer.tar.gz"), sourceDateEpoch: 0)
        let store = try ContentStore(root: scratch.file("store"))
        _ = try store.ingest(try Data(contentsOf: URL(fileURLWithPath: scratch.file("layer.tar.gz"))), expected: packed.digest)
        return (store, Descriptor(mediaType: MediaType.layerTarGzip, digest: packed.digest, size: packed.size), packed.diffID)
    }

    @Test("A layer that inflates past the limit is stopped, naming the layer, the limit and how to raise it; nothing is cached")
    func gzipBomb() throws {
        let scratch = Scratch()
        defer { scratch.remove() }
        let (store, layer, diffID) = try Self.layer(["zeros.bin": Data(count: 8 << 20)], in: scratch)
        #expect(layer.size < 64 << 10, "8 MiB of zeros packs to a few KiB")

        let small = try LayerCache(root: scratch.file("small"), maximumLayerBytes: 1 << 20)
        let error = try #require(throws: KilnError.self) { try small.unpack(layer, diffID: diffID, store: store) }
        #expect(error.message.contains("layer \(layer.digest) unpacks to more than 1 MiB (1048576 bytes), Kiln's limit for one layer"))
        #expect(error.message.contains("raise the limit with KILN_MAX_LAYER_BYTES"))
        #expect(try FileManager.default.contentsOfDirectory(atPath: small.root) == [".locks"], "no folder, marker or staging left")

        let roomy = try LayerCache(root: scratch.file("roomy"), maximumLayerBytes: 64 << 20)
        let folder = try roomy.unpack(layer, diffID: diffID, store: store)
        #expect(try FileManager.default.attributesOfItem(atPath: folder + "/zeros.bin")[.size] as? Int == 8 << 20)

        // Every other reader of layer files (archives, image tests) gets the same bound.
        var reader = TarReader(source: try TarReader.fileSource(store.path(of: layer.digest), compressed: true, maximumBytes: 1 << 20))
        #expect(throws: KilnError.self) { while (try reader.next()) != nil { try reader.skipContents() } }
    }

    @Test("KILN_MAX_LAYER_BYTES sets the limit; a value that is not a size is refused by name")
    func configuredLimit() throws {
        #expect(try LayerSizeLimit.configured([:]) == 32 << 30)
        #expect(try LayerSizeLimit.configured(["KILN_MAX_LAYER_BYTES": "64G"]) == 64 << 30)
        #expect(try LayerSizeLimit.configured(["KILN_MAX_LAYER_BYTES": "1048576"]) == 1 << 20)
        #expect(try LayerSizeLimit.configured(["KILN_MAX_LAYER_BYTES": "512MiB"]) == 512 << 20)
        let error = try #require(throws: KilnError.self) { try LayerSizeLimit.configured(["KILN_MAX_LAYER_BYTES": "lots"]) }
        #expect(error.message.contains("KILN_MAX_LAYER_BYTES='lots' is not a size"))
    }

    @Test("A cached folder without its completion marker is rebuilt, not trusted; the marker sits beside the folder, never inside")
    func incompleteFolderIsRebuilt() throws {
        let scratch = Scratch()
        defer { scratch.remove() }
        let (store, layer, diffID) = try Self.layer(
            ["etc/motd": Data("hello\n".utf8), "etc/os-release": Data("ID=kiln\n".utf8)], in: scratch)
        let cache = try LayerCache(root: scratch.file("layers"))
        let folder = try cache.unpack(layer, diffID: diffID, store: store)
        #expect(FileManager.default.fileExists(atPath: folder + ".complete"))
        #expect(try FileManager.default.contentsOfDirectory(atPath: folder) == ["etc"])

        // With the marker, the folder is reused as it is.
        try "planted\n".write(toFile: folder + "/planted", atomically: false, encoding: .utf8)
        #expect(try cache.unpack(layer, diffID: diffID, store: store) == folder)
        #expect(FileManager.default.fileExists(atPath: folder + "/planted"))

        // A half-written folder: a file missing, a stray one present, no marker.
        try FileManager.default.removeItem(atPath: folder + ".complete")
        try FileManager.default.removeItem(atPath: folder + "/etc/os-release")
        #expect(try cache.unpack(layer, diffID: diffID, store: store) == folder)
        #expect(try String(contentsOfFile: folder + "/etc/os-release", encoding: .utf8) == "ID=kiln\n")
        #expect(!FileManager.default.fileExists(atPath: folder + "/planted"))
        #expect(FileManager.default.fileExists(atPath: folder + ".complete"))
        #expect(try FileManager.default.contentsOfDirectory(atPath: cache.root).filter { $0.hasPrefix(".tmp-") }.isEmpty)

        // Flattened folders follow the same rule.
        let flat = try cache.flatten([(layer, diffID)], store: store)
        try FileManager.default.removeItem(atPath: flat + ".complete")
        try FileManager.default.removeItem(atPath: flat + "/etc/motd")
        #expect(try cache.flatten([(layer, diffID)], store: store) == flat)
        #expect(FileManager.default.fileExists(atPath: flat + "/etc/motd") && FileManager.default.fileExists(atPath: flat + ".complete"))
    }
}
