import Foundation
import KilnModel
import KilnTestSupport
import Testing

@testable import KilnOCI

@Suite("Digests and OCI JSON")
struct OCITypesTests {
    @Test(arguments: [
        ("sha256:" + String(repeating: "a", count: 64), true),
        ("sha512:" + String(repeating: "0", count: 128), true),
        ("sha256:" + String(repeating: "A", count: 64), false),
        ("sha256:" + String(repeating: "a", count: 63), false),
        ("md5:d41d8cd98f00b204e9800998ecf8427e", false),
        ("sha256:../../etc/passwd" + String(repeating: "a", count: 48), false),
        ("nocolon", false),
    ])
    func digestParsing(_ text: String, _ valid: Bool) {
        #expect(((try? Digest(text)) != nil) == valid)
    }

    @Test("SHA-256 of known bytes, streamed or at once")
    func digestOfBytes() {
        #expect(Digest(sha256Of: Data("abc".utf8)).description == "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        var stream = SHA256Stream()
        stream.update(Array("a".utf8))
        stream.update(Array("bc".utf8))
        #expect(stream.finalize() == Digest(sha256Of: Data("abc".utf8)))
        #expect(stream.count == 3)
    }

    @Test("Canonical JSON: sorted keys, no escaped slashes, same bytes every time")
    func canonicalManifest() throws {
        let config = Descriptor(mediaType: MediaType.imageConfig, digest: Digest(sha256Of: Data("{}".utf8)), size: 2)
        let layer = Descriptor(mediaType: MediaType.layerTarGzip, digest: Digest(sha256Of: Data("layer".utf8)), size: 5)
        let manifest = ImageManifest(
            config: config, layers: [layer], annotations: ["org.opencontainers.image.source": "https://example.invalid/a/b"])
        let (first, descriptor) = try CanonicalJSON.descriptor(for: manifest, mediaType: MediaType.imageManifest)
        let second = try CanonicalJSON.encode(manifest)
        #expect(first == second)
        #expect(descriptor.digest == Digest(sha256Of: first))
        let text = String(decoding: first, as: UTF8.self)
        #expect(
            text.hasPrefix(#"{"annotations":{"org.opencontainers.image.source":"https://example.invalid/a/b"},"config":{"digest":"sha256:"#)
        )
        #expect(!text.contains(" "))
        #expect(try JSONDecoder().decode(ImageManifest.self, from: first) == manifest)
    }

    @Test("Docker schema-2 manifests and manifest lists decode")
    func dockerTypes() throws {
        let digest = "sha256:" + String(repeating: "b", count: 64)
        let manifest = try JSONDecoder().decode(
            ImageManifest.self,
            from: Data(
                """
                {"schemaVersion":2,"mediaType":"\(MediaType.dockerManifest)",
                 "config":{"mediaType":"\(MediaType.dockerConfig)","size":10,"digest":"\(digest)"},
                 "layers":[{"mediaType":"\(MediaType.dockerLayerGzip)","size":20,"digest":"\(digest)"}]}
                """.utf8))
        #expect(MediaType.isManifest(manifest.mediaType ?? ""))
        #expect(manifest.layers.first?.size == 20)
        let list = try JSONDecoder().decode(
            ImageIndex.self,
            from: Data(
                """
                {"schemaVersion":2,"mediaType":"\(MediaType.dockerManifestList)","manifests":[
                 {"mediaType":"\(MediaType.dockerManifest)","size":1,"digest":"\(digest)","platform":{"architecture":"arm64","os":"linux","variant":"v8","os.features":["x"]}}]}
                """.utf8))
        #expect(MediaType.isIndex(list.mediaType ?? ""))
        #expect(
            list.manifests.first?.platform
                == {
                    var platform = Platform(architecture: "arm64", os: "linux", variant: "v8")
                    platform.osFeatures = ["x"]
                    return platform
                }())
        #expect(throws: (any Error).self) {
            try JSONDecoder().decode(Descriptor.self, from: Data(#"{"mediaType":"x","size":1,"digest":"sha256:nothex"}"#.utf8))
        }
    }

    @Test("Image configuration uses the spec's field names")
    func configuration() throws {
        var container = ImageConfiguration.ContainerConfig()
        container.env = ["PATH=/usr/bin"]
        container.exposedPorts = ["80/tcp": EmptyObject()]
        let config = ImageConfiguration(
            architecture: "amd64", os: "linux", rootfs: .init(diffIDs: [Digest(sha256Of: Data())]), config: container)
        let text = String(decoding: try CanonicalJSON.encode(config), as: UTF8.self)
        #expect(text.contains(#""config":{"Env":["PATH=/usr/bin"],"ExposedPorts":{"80/tcp":{}}}"#))
        #expect(
            text.contains(
                #""rootfs":{"diff_ids":["sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"],"type":"layers"}"#))
    }
}
