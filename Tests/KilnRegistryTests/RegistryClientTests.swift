import Foundation
import KilnModel
import KilnTestSupport
import Testing

@testable import KilnOCI
@testable import KilnRegistry

#if canImport(Glibc)
    import Glibc
#endif

@Suite(
    "Registry client against docker-registry, checked with skopeo", .serialized,
    .enabled(if: TestEnvironment.requires("/usr/bin/docker-registry")))
struct RegistryClientTests {
    /// A one-layer image in a fresh content store, tagged `name`.
    func makeImage(named name: String) throws -> (ContentStore, Descriptor) {
        var template = Array("/tmp/kiln-reg-store.XXXXXX".utf8CString)
        let base = String(cString: mkdtemp(&template)!)
        let store = try ContentStore(root: base + "/store")
        try FileManager.default.createDirectory(atPath: base + "/tree/etc", withIntermediateDirectories: true)
        try "kiln was here\n".write(toFile: base + "/tree/etc/motd", atomically: true, encoding: .utf8)
        let packed = try LayerPacker.pack(directory: base + "/tree", to: base + "/layer.tar.gz", sourceDateEpoch: 0)
        let writer = try ContentStore.BlobWriter(store: store)
        try writer.write(try Data(contentsOf: URL(fileURLWithPath: base + "/layer.tar.gz")))
        let layer = try writer.commit(mediaType: MediaType.layerTarGzip, expected: packed.digest)
        let config = try store.ingestJSON(
            ImageConfiguration(architecture: "amd64", os: "linux", rootfs: .init(diffIDs: [packed.diffID])),
            mediaType: MediaType.imageConfig)
        let manifest = try store.ingestJSON(ImageManifest(config: config, layers: [layer]), mediaType: MediaType.imageManifest)
        try store.tag(name, manifest)
        return (store, manifest)
    }

    func push(_ store: ContentStore, _ manifest: Descriptor, to client: RegistryClient, repository: String, tag: String) async throws -> Int
    {
        let parsed = try JSONDecoder().decode(ImageManifest.self, from: try store.read(manifest.digest))
        var sent = 0
        for blob in [parsed.config] + parsed.layers where try await client.pushBlob(blob, repository: repository, from: store) == .uploaded
        { sent += 1 }
        _ = try await client.putManifest(
            try store.read(manifest.digest), mediaType: MediaType.imageManifest, repository: repository, reference: tag)
        return sent
    }

    @Test("Push, pull back by tag and by digest, skip existing blobs; skopeo sees the same digest")
    func pushAndPull() async throws {
        let registry = try LoopbackRegistry()
        defer { registry.stop() }
        let (store, manifest) = try makeImage(named: "demo:1")
        defer { try? FileManager.default.removeItem(atPath: (store.root as NSString).deletingLastPathComponent) }
        let client = try RegistryClient(registry: registry.host, insecureHTTP: true)
        #expect(try await push(store, manifest, to: client, repository: "kiln/demo", tag: "1.0") == 2)
        #expect(
            try await push(store, manifest, to: client, repository: "kiln/demo", tag: "1.0") == 0,
            "blobs the registry has are not sent again")

        let inspect = try shell(
            "skopeo inspect --tls-verify=false --raw docker://\(registry.host)/kiln/demo:1.0 | sha256sum | cut -d' ' -f1")
        #expect(inspect.text.trimmingCharacters(in: .whitespacesAndNewlines) == manifest.digest.encoded)

        let fetched = try await client.manifest(try ImageReference("\(registry.host)/kiln/demo:1.0"))
        #expect(fetched.digest == manifest.digest)
        #expect(fetched.mediaType == MediaType.imageManifest)
        let byDigest = try await client.manifest(try ImageReference("\(registry.host)/kiln/demo@\(manifest.digest)"))
        #expect(byDigest.data == fetched.data)

        var template = Array("/tmp/kiln-pull.XXXXXX".utf8CString)
        let pullRoot = String(cString: mkdtemp(&template)!)
        defer { try? FileManager.default.removeItem(atPath: pullRoot) }
        let pulled = try ContentStore(root: pullRoot)
        let parsed = try JSONDecoder().decode(ImageManifest.self, from: fetched.data)
        for blob in [parsed.config] + parsed.layers {
            try await client.pullBlob(blob, repository: "kiln/demo", into: pulled)
            #expect(try pulled.read(blob.digest) == store.read(blob.digest))
        }
    }

    @Test("Interop: skopeo copies Kiln's OCI layout into the registry, and Kiln pulls what skopeo pushed")
    func skopeoInterop() async throws {
        let registry = try LoopbackRegistry()
        defer { registry.stop() }
        let (store, manifest) = try makeImage(named: "interop")
        defer { try? FileManager.default.removeItem(atPath: (store.root as NSString).deletingLastPathComponent) }
        let copy = try shell("skopeo copy --dest-tls-verify=false oci:\(store.root):interop docker://\(registry.host)/from/skopeo:v1")
        #expect(copy.status == 0, "\(copy.text)")
        let client = try RegistryClient(registry: registry.host, insecureHTTP: true)
        let fetched = try await client.manifest(try ImageReference("\(registry.host)/from/skopeo:v1"))
        let parsed = try JSONDecoder().decode(ImageManifest.self, from: fetched.data)
        let original = try JSONDecoder().decode(ImageManifest.self, from: try store.read(manifest.digest))
        #expect(parsed.layers.map(\.digest) == original.layers.map(\.digest), "skopeo kept Kiln's layer bytes")
        #expect(parsed.config.digest == original.config.digest)
    }

    @Test("Basic auth: the right credentials work, wrong ones give a clear error")
    func basicAuth() async throws {
        let registry = try LoopbackRegistry(htpasswd: ("kiln", "s3cret"))
        defer { registry.stop() }
        let (store, manifest) = try makeImage(named: "auth")
        defer { try? FileManager.default.removeItem(atPath: (store.root as NSString).deletingLastPathComponent) }
        let good = try RegistryClient(registry: registry.host, credentials: .init(username: "kiln", password: "s3cret"), insecureHTTP: true)
        #expect(try await push(store, manifest, to: good, repository: "private/app", tag: "1") == 2)
        let anonymous = try RegistryClient(registry: registry.host, insecureHTTP: true)
        let error = try await #require(throws: KilnError.self) {
            _ = try await anonymous.manifest(try ImageReference("\(registry.host)/private/app:1"))
        }
        #expect(error.message.contains("needs credentials"))
        let wrong = try RegistryClient(registry: registry.host, credentials: .init(username: "kiln", password: "nope"), insecureHTTP: true)
        let refused = try await #require(throws: KilnError.self) {
            _ = try await wrong.manifest(try ImageReference("\(registry.host)/private/app:1"))
        }
        #expect(refused.message.contains("refused the credentials"))
    }
}

@Suite(
    "Registry over TLS and stored logins", .serialized,
    .enabled(if: TestEnvironment.requires("/usr/bin/docker-registry")))
struct RegistryTLSAndLoginTests {
    @Test("A registry with a private CA: trusted with the CA file, refused without it; skopeo agrees on the digest")
    func privateCA() async throws {
        let registry = try LoopbackRegistry(tls: true)
        defer { registry.stop() }
        let (store, manifest) = try RegistryClientTests().makeImage(named: "tls")
        defer { try? FileManager.default.removeItem(atPath: (store.root as NSString).deletingLastPathComponent) }
        let trusted = try RegistryClient(registry: registry.host, caCertificatePath: try #require(registry.caCertificate))
        #expect(try await RegistryClientTests().push(store, manifest, to: trusted, repository: "secure/app", tag: "1") == 2)
        let digest = try shell(
            "skopeo inspect --raw --cert-dir \(registry.directory)/certs docker://\(registry.host)/secure/app:1 | sha256sum | cut -d' ' -f1"
        )
        #expect(digest.text.trimmingCharacters(in: .whitespacesAndNewlines) == manifest.digest.encoded)
        await trusted.shutdown()

        let untrusted = try RegistryClient(registry: registry.host)
        let error = try await #require(throws: KilnError.self) {
            _ = try await untrusted.manifest(try ImageReference("\(registry.host)/secure/app:1"))
        }
        #expect(error.message.contains("cannot reach registry \(registry.host)"))

        #expect(throws: KilnError.self) { try RegistryClient(registry: registry.host, caCertificatePath: "/nonexistent/ca.pem") }
    }

    @Test("Logins come from REGISTRY_AUTH_FILE or ~/.docker/config.json")
    func storedLogins() async throws {
        let registry = try LoopbackRegistry(htpasswd: ("robot", "t0ken"))
        defer { registry.stop() }
        let authFile = registry.directory + "/auth.json"
        let encoded = Data("robot:t0ken".utf8).base64EncodedString()
        try #"{"auths": {"\#(registry.host)": {"auth": "\#(encoded)"}}}"#.write(toFile: authFile, atomically: true, encoding: .utf8)
        let logins = RegistryCredentialStore(environment: ["REGISTRY_AUTH_FILE": authFile, "HOME": "/nonexistent"])
        let credentials = try #require(try logins.credentials(for: registry.host))
        #expect(credentials == RegistryCredentials(username: "robot", password: "t0ken"))
        #expect(try logins.credentials(for: "other.example") == nil)
        let (store, manifest) = try RegistryClientTests().makeImage(named: "login")
        defer { try? FileManager.default.removeItem(atPath: (store.root as NSString).deletingLastPathComponent) }
        let client = try RegistryClient(registry: registry.host, credentials: credentials, insecureHTTP: true)
        #expect(try await RegistryClientTests().push(store, manifest, to: client, repository: "robot/app", tag: "1") == 2)

        try "not json".write(toFile: authFile, atomically: true, encoding: .utf8)
        let broken = try #require(throws: KilnError.self) { try logins.credentials(for: registry.host) }
        #expect(broken.message.contains("is not valid JSON"))
    }
}

@Suite("Image references")
struct ImageReferenceTests {
    @Test(arguments: [
        ("alpine", "docker.io/library/alpine:latest"),
        ("team/app:1.2", "docker.io/team/app:1.2"),
        ("localhost:5000/app", "localhost:5000/app:latest"),
        ("registry.example/a/b:tag", "registry.example/a/b:tag"),
        ("127.0.0.1:5000/x@sha256:" + String(repeating: "a", count: 64), "127.0.0.1:5000/x@sha256:" + String(repeating: "a", count: 64)),
    ])
    func parses(_ text: String, _ expected: String) throws {
        #expect(try ImageReference(text).description == expected)
    }

    @Test(arguments: ["UPPER/case", "host:5000/", "a//b", "app:bad/tag", "x@sha256:short"])
    func rejects(_ text: String) {
        #expect(throws: KilnError.self) { try ImageReference(text) }
    }
}
