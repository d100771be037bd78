import Foundation
import KilnModel
import KilnTestSupport
import Testing

@testable import KilnOCI

#if canImport(Glibc)
    import Glibc
#endif

@Suite("Content store: an OCI image layout on disk")
struct ContentStoreTests {
    func makeStore() throws -> ContentStore {
        var template = Array("/tmp/kiln-store.XXXXXX".utf8CString)
        return try ContentStore(root: String(cString: mkdtemp(&template)!))
    }

    func files(_ path: String) -> [String] { (try? FileManager.default.contentsOfDirectory(atPath: path))?.sorted() ?? [] }

    /// config + one layer + manifest, tagged as `name`.
    func storeImage(_ store: ContentStore, name: String, layerText: String) throws -> (
        manifest: Descriptor, layer: Descriptor, config: Descriptor
    ) {
        let layer = try store.ingest(Data(layerText.utf8))
        let config = try store.ingestJSON(
            ImageConfiguration(architecture: "amd64", os: "linux", rootfs: .init(diffIDs: [layer.digest])), mediaType: MediaType.imageConfig
        )
        var layerDescriptor = layer
        layerDescriptor.mediaType = MediaType.layerTar
        let manifest = try store.ingestJSON(ImageManifest(config: config, layers: [layerDescriptor]), mediaType: MediaType.imageManifest)
        try store.tag(name, manifest)
        return (manifest, layer, config)
    }

    @Test("A new store is a valid OCI layout")
    func layout() throws {
        let store = try makeStore()
        defer { try? FileManager.default.removeItem(atPath: store.root) }
        #expect(try String(contentsOfFile: store.root + "/oci-layout", encoding: .utf8) == #"{"imageLayoutVersion":"1.0.0"}"#)
        #expect(try store.index().manifests.isEmpty)
        #expect(
            try String(contentsOfFile: store.root + "/index.json", encoding: .utf8)
                == #"{"manifests":[],"mediaType":"application/vnd.oci.image.index.v1+json","schemaVersion":2}"#)
        #expect(FileManager.default.fileExists(atPath: store.root + "/blobs/sha256"))
    }

    @Test("Ingest verifies the digest and leaves nothing behind when it does not match")
    func ingestVerifies() throws {
        let store = try makeStore()
        defer { try? FileManager.default.removeItem(atPath: store.root) }
        let good = try store.ingest(Data("hello".utf8), expected: Digest(sha256Of: Data("hello".utf8)))
        #expect(try store.read(good.digest) == Data("hello".utf8))
        #expect(good.size == 5)
        let error = try #require(throws: KilnError.self) {
            try store.ingest(Data("tampered".utf8), expected: Digest(sha256Of: Data("hello!".utf8)))
        }
        #expect(error.code == .checksumMismatch)
        #expect(files(store.root + "/blobs/sha256") == [good.digest.encoded])
        #expect(files(store.root + "/ingest").isEmpty)
    }

    @Test("Concurrent writers of the same and different blobs all succeed, with no partial files")
    func concurrentIngest() async throws {
        let store = try makeStore()
        defer { try? FileManager.default.removeItem(atPath: store.root) }
        let payload = Data(repeating: 7, count: 3 << 20)
        let digests = try await withThrowingTaskGroup(of: Digest.self) { group in
            for index in 0..<8 {
                group.addTask { try store.ingest(index % 2 == 0 ? payload : Data("blob \(index)".utf8)).digest }
            }
            return try await group.reduce(into: Set<Digest>()) { $0.insert($1) }
        }
        #expect(digests.count == 5)
        #expect(files(store.root + "/blobs/sha256").count == 5)
        #expect(try store.read(Digest(sha256Of: payload)) == payload)
        #expect(files(store.root + "/ingest").isEmpty)
    }

    @Test("Names: tag, resolve, retag and untag")
    func names() throws {
        let store = try makeStore()
        defer { try? FileManager.default.removeItem(atPath: store.root) }
        let first = try storeImage(store, name: "base:1", layerText: "one")
        #expect(try store.resolve("base:1")?.digest == first.manifest.digest)
        let second = try storeImage(store, name: "base:1", layerText: "two")
        #expect(try store.resolve("base:1")?.digest == second.manifest.digest)
        #expect(try store.index().manifests.count == 1)
        #expect(try store.untag("base:1"))
        #expect(try store.resolve("base:1") == nil)
        #expect(try !store.untag("base:1"))
    }

    @Test("Garbage collection keeps what names and leases reach and removes the rest")
    func garbageCollection() throws {
        let store = try makeStore()
        defer { try? FileManager.default.removeItem(atPath: store.root) }
        let kept = try storeImage(store, name: "kept:1", layerText: "kept layer")
        let dropped = try storeImage(store, name: "dropped:1", layerText: "dropped layer")
        let building = try storeImage(store, name: "building:1", layerText: "in use by a build")
        try store.untag("dropped:1")
        try store.untag("building:1")
        let lease = try store.lease([building.manifest.digest])
        let loose = try store.ingest(Data("loose".utf8))

        let removed = try store.garbageCollect().blobs
        #expect(Set(removed) == [dropped.manifest.digest, dropped.layer.digest, dropped.config.digest])
        // Just ingested by this process and not named or leased yet: a build may be about to name it.
        #expect(store.contains(loose.digest))
        for digest in [
            kept.manifest.digest, kept.layer.digest, kept.config.digest, building.manifest.digest, building.layer.digest,
            building.config.digest,
        ] {
            #expect(store.contains(digest))
        }
        lease.release()
        let afterRelease = try store.garbageCollect().blobs
        #expect(Set(afterRelease) == [building.manifest.digest, building.layer.digest, building.config.digest])
        #expect(store.contains(kept.layer.digest))
    }
}
