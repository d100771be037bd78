import Foundation
import KilnModel
import KilnTestSupport
import Synchronization
import Testing

@testable import KilnOCI
@testable import KilnRegistry

#if canImport(Glibc)
    import Glibc
#endif

/// Images for transfer tests: `random` bytes of incompressible content make a layer big enough
/// to be cut mid-stream.
func makeImage(in store: ContentStore, named name: String, random: Int = 0, text: String = "kiln\n", architecture: String = "amd64") throws
    -> Descriptor
{
    let tree = Scratch("kiln-tree")
    defer { tree.remove() }
    try FileManager.default.createDirectory(atPath: tree.path + "/etc", withIntermediateDirectories: true)
    try text.write(toFile: tree.path + "/etc/motd", atomically: true, encoding: .utf8)
    if random > 0 {
        var bytes = [UInt8](repeating: 0, count: random)
        var generator = SystemRandomNumberGenerator()
        for index in bytes.indices { bytes[index] = generator.next() }
        try Data(bytes).write(to: URL(fileURLWithPath: tree.path + "/etc/noise.bin"))
    }
    return try store.importRootFilesystem(
        tree.path, name: name, platform: Platform(architecture: architecture, os: "linux"), sourceDateEpoch: 0)
}

/// The manifest digest skopeo sees for `reference` (independent of Kiln).
func skopeoDigest(_ reference: String, extra: String = "--tls-verify=false") throws -> String {
    let result = try shell("skopeo inspect \(extra) --raw docker://\(reference) | sha256sum | cut -d' ' -f1")
    return "sha256:" + result.text.trimmingCharacters(in: .whitespacesAndNewlines)
}

/// A loopback TCP proxy that resets connections once they have carried `resetAfter` bytes,
/// `resets` times in all; later connections pass untouched.
final class FaultProxy: Sendable {
    let port: Int
    private let helper: PythonHelper

    static let script = #"""
        import select, socket, struct, sys, threading
        listen_port, upstream_port, reset_after, resets = map(int, sys.argv[1:5])
        budget = [resets]
        lock = threading.Lock()
        def abort(*sockets):
            for s in sockets:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
                s.close()
        def relay(client):
            # One thread per connection, so an abortive close really sends RST at once.
            upstream = socket.create_connection(('127.0.0.1', upstream_port))
            peers = {client: upstream, upstream: client}
            carried = 0
            armed = True
            try:
                while True:
                    ready, _, _ = select.select([client, upstream], [], [])
                    for source in ready:
                        data = source.recv(65536)
                        if not data:
                            client.close(); upstream.close()
                            return
                        carried += len(data)
                        if armed and carried > reset_after:
                            with lock:
                                fire = budget[0] > 0
                                budget[0] -= 1 if fire else 0
                            if fire:
                                peers[source].sendall(data[:max(0, len(data) - (carried - reset_after))])
                                abort(client, upstream)
                                return
                            armed = False
                        peers[source].sendall(data)
            except OSError:
                for s in (client, upstream):
                    try:
                        s.close()
                    except OSError:
                        pass
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(('127.0.0.1', listen_port))
        server.listen(64)
        print('ready', flush=True)
        while True:
            connection, _ = server.accept()
            threading.Thread(target=relay, args=(connection,), daemon=True).start()
        """#

    init(upstream: Int, resetAfter: Int, resets: Int) throws {
        port = freeLoopbackPort()
        let port = port
        helper = try PythonHelper(Self.script, port: port) { _ in ["\(port)", "\(upstream)", "\(resetAfter)", "\(resets)"] }
    }

    var host: String { "127.0.0.1:\(port)" }

    func stop() { helper.stop() }
}

/// A Python helper run from its source text, in its own scratch directory, listening on `port`.
final class PythonHelper: Sendable {
    let directory: Scratch
    private let server: LoopbackServer

    /// `arguments` gets the scratch directory, after `setup` has prepared it.
    init(_ script: String, port: Int, setup: (String) throws -> Void = { _ in }, arguments: (String) -> [String]) throws {
        let directory = Scratch("kiln-helper")
        self.directory = directory
        try setup(directory.path)
        try script.write(toFile: directory.path + "/helper.py", atomically: true, encoding: .utf8)
        server = try LoopbackServer(
            executable: "/usr/bin/python3", arguments: { _ in [directory.path + "/helper.py"] + arguments(directory.path) }, port: port)
    }

    func stop() {
        server.stop()
        directory.remove()
    }
}

@Suite(
    "Copy to many registries, layouts and archives; checked with skopeo", .serialized,
    .enabled(if: TestEnvironment.requires("/usr/bin/docker-registry")))
struct ImageTransferTests {
    let fastRetry = RetryPolicy(attempts: 6, firstDelay: .milliseconds(20), maximumDelay: .milliseconds(200))

    @Test(
        "One copy reaches a plain, an htpasswd and a TLS registry; skopeo sees one digest everywhere; a second copy sends nothing; mounts and pulls work in each"
    )
    func copyToThreeRegistries() async throws {
        let plain = try LoopbackRegistry()
        let basic = try LoopbackRegistry(htpasswd: ("kiln", "s3cret"))
        let tls = try LoopbackRegistry(tls: true)
        defer { [plain, basic, tls].forEach { $0.stop() } }
        let home = Scratch()
        defer { home.remove() }
        let store = try ContentStore(root: home.path + "/store")
        let manifest = try makeImage(in: store, named: "app", random: 200_000)
        let registries = RegistryDirectory(
            settings: [
                basic.host: RegistrySettings(credentials: .init(username: "kiln", password: "s3cret")),
                tls.host: RegistrySettings(caCertificate: tls.caCertificate),
            ], logins: RegistryCredentialStore(files: []), retry: fastRetry)
        let events = EventLog()
        let transfer = ImageTransfer(store: store, registries: registries, concurrency: 3, observer: events.record)
        let destinations = try ["\(plain.host)/team/app:1.0", "\(basic.host)/team/app:1.0", "\(tls.host)/team/app:1.0"].map(
            ImageLocation.init)

        let result = try await transfer.copy(from: .store(name: "app"), to: destinations).checked()
        #expect(result.digest == manifest.digest)
        let parsed = try JSONDecoder().decode(ImageManifest.self, from: try store.read(manifest.digest))
        let blobBytes = parsed.config.size + parsed.layers.reduce(0) { $0 + $1.size }
        for destination in result.destinations {
            #expect(
                destination.totals.bytes == blobBytes, "each region is charged exactly the blob bytes it received: \(destination.location)")
            #expect(destination.totals.blobsSent == 2)
        }
        #expect(try skopeoDigest("\(plain.host)/team/app:1.0") == manifest.digest.description)
        #expect(
            try skopeoDigest("\(basic.host)/team/app:1.0", extra: "--tls-verify=false --creds kiln:s3cret") == manifest.digest.description)
        #expect(try skopeoDigest("\(tls.host)/team/app:1.0", extra: "--cert-dir \(tls.directory)/certs") == manifest.digest.description)
        #expect(events.count { if case .manifestWritten = $0 { true } else { false } } == 3)

        let again = try await transfer.copy(from: .store(name: "app"), to: destinations).checked()
        for destination in again.destinations {
            #expect(destination.totals.bytes == 0 && destination.totals.blobsSkipped == 2, "blobs already there are not sent again")
        }

        // In each registry: mount into another repository under two tags, then pull it back.
        for (registry, skopeoFlags) in [
            (plain, "--tls-verify=false"), (basic, "--tls-verify=false --creds kiln:s3cret"), (tls, "--cert-dir \(tls.directory)/certs"),
        ] {
            let tags = try ["\(registry.host)/mirror/app:1.0", "\(registry.host)/mirror/app:latest"].map(ImageLocation.init)
            let mounted = try await transfer.copy(from: try ImageLocation("\(registry.host)/team/app:1.0"), to: tags).checked()
            #expect(
                mounted.destinations[0].totals.blobsMounted == 2 && mounted.destinations[0].totals.bytes == 0,
                "\(registry.host): blobs are mounted, not sent")
            #expect(
                mounted.destinations[1].totals.blobsSent + mounted.destinations[1].totals.blobsMounted == 0,
                "a second tag of one repository shares the first one's blobs")
            for tag in ["1.0", "latest"] {
                #expect(try skopeoDigest("\(registry.host)/mirror/app:\(tag)", extra: skopeoFlags) == manifest.digest.description)
            }
            let pulledStore = try ContentStore(root: home.path + "/pulled-\(registry.port)")
            let pull = ImageTransfer(store: pulledStore, registries: registries)
            #expect(try await pull.pull(try ImageReference("\(registry.host)/mirror/app:latest")).digest == manifest.digest)
            #expect(try pulledStore.read(parsed.layers[0].digest) == store.read(parsed.layers[0].digest))
        }
        await registries.shutdown()
    }

    @Test("A region that fails is named; the other regions still get the image")
    func oneRegionFails() async throws {
        let good = try LoopbackRegistry()
        let locked = try LoopbackRegistry(htpasswd: ("kiln", "s3cret"))
        defer { [good, locked].forEach { $0.stop() } }
        let home = Scratch()
        defer { home.remove() }
        let store = try ContentStore(root: home.path + "/store")
        let manifest = try makeImage(in: store, named: "app")
        let transfer = ImageTransfer(
            store: store, registries: RegistryDirectory(logins: RegistryCredentialStore(files: []), retry: fastRetry))
        let result = try await transfer.copy(
            from: .store(name: "app"), to: [try ImageLocation("\(good.host)/a:1"), try ImageLocation("\(locked.host)/a:1")])
        #expect(result.failures.map(\.location.description) == ["\(locked.host)/a:1"])
        #expect(result.failures.first?.error?.message.contains("needs credentials") == true)
        #expect(try skopeoDigest("\(good.host)/a:1") == manifest.digest.description)
        let error = try #require(throws: KilnError.self) { try result.checked() }
        #expect(error.message.contains("1 of 2 destination(s) failed") && error.message.contains(locked.host))
    }

    @Test("Connections reset mid-blob: pulls resume with Range, chunked and whole uploads retry; every digest verifies")
    func survivesResets() async throws {
        let source = try LoopbackRegistry()
        let chunked = try LoopbackRegistry()
        let whole = try LoopbackRegistry()
        defer { [source, chunked, whole].forEach { $0.stop() } }
        let home = Scratch()
        defer { home.remove() }
        let seed = try ContentStore(root: home.path + "/seed")
        let manifest = try makeImage(in: seed, named: "big", random: 3 << 20)
        let seeding = ImageTransfer(store: seed, registries: RegistryDirectory(logins: RegistryCredentialStore(files: [])))
        _ = try await seeding.copy(from: .store(name: "big"), to: [try ImageLocation("\(source.host)/big/app:1")]).checked()
        let layer = try JSONDecoder().decode(ImageManifest.self, from: try seed.read(manifest.digest)).layers[0]

        let sourceProxy = try FaultProxy(upstream: source.port, resetAfter: 1 << 20, resets: 2)
        let chunkedProxy = try FaultProxy(upstream: chunked.port, resetAfter: 700 << 10, resets: 2)
        let wholeProxy = try FaultProxy(upstream: whole.port, resetAfter: 1 << 20, resets: 2)
        defer { [sourceProxy, chunkedProxy, wholeProxy].forEach { $0.stop() } }

        // Chunked: blobs over 1 MiB go in 512 KiB PATCHes.
        let store = try ContentStore(root: home.path + "/store")
        let chunkedTransfer = ImageTransfer(
            store: store,
            registries: RegistryDirectory(
                logins: RegistryCredentialStore(files: []), retry: fastRetry, monolithicLimit: 1 << 20, chunkSize: 512 << 10
            ))
        let sourceLocation = try ImageLocation("\(sourceProxy.host)/big/app:1")
        let first = try await chunkedTransfer.copy(from: sourceLocation, to: [try ImageLocation("\(chunkedProxy.host)/big/app:1")])
            .checked()
        #expect(first.digest == manifest.digest)
        let pulled = try #require(first.totals[sourceLocation.description])
        #expect(pulled.retries >= 1, "the source connection was reset")
        let configSize = try JSONDecoder().decode(ImageManifest.self, from: try seed.read(manifest.digest)).config.size
        #expect(pulled.bytes == layer.size + configSize, "a resumed pull fetches each byte once")
        #expect(try #require(first.destinations.first).totals.retries >= 1)
        #expect(try store.read(layer.digest) == seed.read(layer.digest))

        // Whole: the same layer in one PUT; a reset restarts that upload.
        let wholeTransfer = ImageTransfer(
            store: seed, registries: RegistryDirectory(logins: RegistryCredentialStore(files: []), retry: fastRetry))
        let second = try await wholeTransfer.copy(from: .store(name: "big"), to: [try ImageLocation("\(wholeProxy.host)/big/app:1")])
            .checked()
        #expect(try #require(second.destinations.first).totals.retries >= 1)

        for registry in [chunked, whole] {
            #expect(try skopeoDigest("\(registry.host)/big/app:1") == manifest.digest.description)
            let layout = Scratch("kiln-verify")
            defer { layout.remove() }
            let copied = try shell(
                "skopeo copy --src-tls-verify=false docker://\(registry.host)/big/app:1 oci:\(layout.path):v && sha256sum \(layout.path)/blobs/sha256/\(layer.digest.encoded)"
            )
            #expect(
                copied.status == 0 && copied.text.contains(layer.digest.encoded + " "),
                "the registry holds the layer's exact bytes: \(copied.text)")
        }
    }

    @Test("Copying within one registry mounts blobs instead of sending them")
    func crossRepositoryMount() async throws {
        let registry = try LoopbackRegistry()
        defer { registry.stop() }
        let home = Scratch()
        defer { home.remove() }
        let store = try ContentStore(root: home.path + "/store")
        let manifest = try makeImage(in: store, named: "app", random: 100_000)
        let transfer = ImageTransfer(store: store, registries: RegistryDirectory(logins: RegistryCredentialStore(files: [])))
        _ = try await transfer.copy(from: .store(name: "app"), to: [try ImageLocation("\(registry.host)/team/app:1")]).checked()
        let mounted = try await transfer.copy(
            from: try ImageLocation("\(registry.host)/team/app:1"), to: [try ImageLocation("\(registry.host)/other/app:1")]
        ).checked()
        let totals = try #require(mounted.destinations.first).totals
        #expect(totals.blobsMounted == 2 && totals.bytes == 0)
        #expect(try skopeoDigest("\(registry.host)/other/app:1") == manifest.digest.description)
    }

    @Test("A multi-platform index: one platform by default, every platform with platform nil")
    func platformSelection() async throws {
        let registry = try LoopbackRegistry()
        defer { registry.stop() }
        let home = Scratch()
        defer { home.remove() }
        let store = try ContentStore(root: home.path + "/store")
        let amd = try makeImage(in: store, named: "amd", text: "amd64\n", architecture: "amd64")
        let arm = try makeImage(in: store, named: "arm", text: "arm64\n", architecture: "arm64")
        var amdEntry = amd
        amdEntry.platform = Platform(architecture: "amd64", os: "linux")
        var armEntry = arm
        armEntry.platform = Platform(architecture: "arm64", os: "linux", variant: "v8")
        let index = try store.ingestJSON(ImageIndex(manifests: [amdEntry, armEntry]), mediaType: MediaType.imageIndex)
        try store.tag("multi", index)
        let registries = RegistryDirectory(logins: RegistryCredentialStore(files: []))

        let armOnly = ImageTransfer(store: store, registries: registries, platform: Platform(architecture: "arm64", os: "linux"))
        #expect(
            try await armOnly.copy(from: .store(name: "multi"), to: [try ImageLocation("\(registry.host)/multi:arm")]).checked().digest
                == arm.digest)
        #expect(try skopeoDigest("\(registry.host)/multi:arm") == arm.digest.description)

        let everything = ImageTransfer(store: store, registries: registries, platform: nil)
        #expect(
            try await everything.copy(from: .store(name: "multi"), to: [try ImageLocation("\(registry.host)/multi:all")]).checked().digest
                == index.digest)
        #expect(try skopeoDigest("\(registry.host)/multi:all") == index.digest.description)
        #expect(try skopeoDigest("\(registry.host)/multi@\(amd.digest)") == amd.digest.description)

        // Pulling the index back picks this machine's platform.
        let pulled = try ContentStore(root: home.path + "/pulled")
        let pull = ImageTransfer(store: pulled, registries: registries, platform: Platform(architecture: "amd64", os: "linux"))
        #expect(try await pull.pull(try ImageReference("\(registry.host)/multi:all")).digest == amd.digest)
        let missing = ImageTransfer(store: pulled, registries: registries, platform: Platform(architecture: "s390x", os: "linux"))
        let error = try await #require(throws: KilnError.self) { try await missing.pull(try ImageReference("\(registry.host)/multi:all")) }
        #expect(error.message.contains("no image for linux/s390x") && error.message.contains("linux/arm64/v8"))
    }

    @Test("OCI archives and layouts: skopeo reads what Kiln exports, Kiln imports what skopeo writes")
    func archivesAndLayouts() async throws {
        let home = Scratch()
        defer { home.remove() }
        let store = try ContentStore(root: home.path + "/store")
        let manifest = try makeImage(in: store, named: "app", random: 50_000)
        let transfer = ImageTransfer(store: store, registries: RegistryDirectory(logins: RegistryCredentialStore(files: [])))
        let archive = home.path + "/app.tar"
        _ = try await transfer.copy(
            from: .store(name: "app"), to: [.archive(path: archive, tag: "v1"), .layout(path: home.path + "/layout", tag: "v1")]
        ).checked()

        let listing = try shell("tar -tf \(archive)")
        #expect(
            listing.status == 0 && listing.text.contains("oci-layout") && listing.text.contains("blobs/sha256/\(manifest.digest.encoded)"))
        #expect(!FileManager.default.fileExists(atPath: home.path + "/layout/ingest"), "a user's layout gets only what the spec lists")
        for source in ["oci-archive:\(archive):v1", "oci:\(home.path)/layout:v1"] {
            let digest = try shell("skopeo inspect --raw \(source) | sha256sum | cut -d' ' -f1")
            #expect("sha256:" + digest.text.trimmingCharacters(in: .whitespacesAndNewlines) == manifest.digest.description, "\(source)")
        }
        let umoci = try shell(
            "umoci unpack --rootless --image \(home.path)/layout:v1 \(home.path)/bundle && cat \(home.path)/bundle/rootfs/etc/motd")
        #expect(umoci.status == 0 && umoci.text.hasSuffix("kiln\n"), "umoci unpacks Kiln's layer: \(umoci.text)")

        let skopeoArchive = home.path + "/skopeo.tar"
        #expect(try shell("skopeo copy oci:\(home.path)/layout:v1 oci-archive:\(skopeoArchive):from-skopeo").status == 0)
        let imported = try await transfer.copy(from: .archive(path: skopeoArchive, tag: "from-skopeo"), to: [.store(name: "imported")])
            .checked()
        #expect(imported.digest == manifest.digest)
        #expect(try store.resolve("imported")?.digest == manifest.digest)

        // Exporting a second tag into the same archive keeps the first.
        _ = try await transfer.copy(from: .store(name: "app"), to: [.archive(path: archive, tag: "v2")]).checked()
        let both = try shell(
            "skopeo inspect --raw oci-archive:\(archive):v1 >/dev/null && skopeo inspect --raw oci-archive:\(archive):v2 >/dev/null")
        #expect(both.status == 0, "\(both.text)")
    }

    @Test("A hostile OCI archive: links are refused and nothing lands outside the staging directory")
    func hostileArchive() async throws {
        let home = Scratch()
        defer { home.remove() }
        let store = try ContentStore(root: home.path + "/store")
        let transfer = ImageTransfer(store: store, registries: RegistryDirectory(logins: RegistryCredentialStore(files: [])))
        let outside = home.path + "/outside-marker"
        let made = try shell(
            """
            cd \(home.path) && python3 - <<'PY'
            import io, tarfile
            with tarfile.open('evil.tar', 'w') as tar:
                for name, data in [('oci-layout', b'{"imageLayoutVersion":"1.0.0"}'), ('index.json', b'{"schemaVersion":2,"manifests":[]}'), ('../outside-marker', b'x')]:
                    info = tarfile.TarInfo(name); info.size = len(data); tar.addfile(info, io.BytesIO(data))
                link = tarfile.TarInfo('blobs/sha256/' + 'a' * 64); link.type = tarfile.SYMTYPE; link.linkname = '/etc/passwd'; tar.addfile(link)
            PY
            """)
        #expect(made.status == 0, "\(made.text)")
        let error = try await #require(throws: KilnError.self) {
            try await transfer.copy(from: .archive(path: home.path + "/evil.tar", tag: "x"), to: [.store(name: "evil")])
        }
        #expect(error.message.contains("is a link or device"))
        #expect(!FileManager.default.fileExists(atPath: outside))
        #expect(try FileManager.default.contentsOfDirectory(atPath: store.scratch).isEmpty, "the staging directory is removed")

        let notAnArchive = home.path + "/plain.tar"
        #expect(try shell("tar -cf \(notAnArchive) -C \(home.path) evil.tar").status == 0)
        let wrong = try await #require(throws: KilnError.self) {
            try await transfer.copy(from: .archive(path: notAnArchive, tag: "x"), to: [.store(name: "x")])
        }
        #expect(wrong.message.contains("is not an OCI archive"))
    }
}

/// Collects transfer events from concurrent tasks.
final class EventLog: Sendable {
    private let events = Mutex<[TransferEvent]>([])
    var record: TransferObserver { { [self] event in events.withLock { $0.append(event) } } }
    func count(where predicate: (TransferEvent) -> Bool) -> Int { events.withLock { $0.filter(predicate).count } }
}

@Suite("Image locations and Kiln's configuration")
struct ImageLocationTests {
    @Test(arguments: [
        ("oci-layout:/tmp/x:v1", "oci-layout:/tmp/x:v1"),
        ("oci-layout:/tmp/x", "oci-layout:/tmp/x:latest"),
        ("oci-archive:./a.tar:1.0", "oci-archive:./a.tar:1.0"),
        ("oci:/tmp/dir:tag", "oci-layout:/tmp/dir:tag"),
        ("docker://127.0.0.1:5000/app:1", "127.0.0.1:5000/app:1"),
        ("kiln:team/app:1", "kiln:team/app:1"),
        ("localhost:5000/a/b", "localhost:5000/a/b:latest"),
    ])
    func parses(_ text: String, _ expected: String) throws {
        #expect(try ImageLocation(text).description == expected)
    }

    @Test(arguments: ["oci-layout:", "oci-archive::tag", "kiln:", "oci-layout:/x:bad tag"])
    func rejects(_ text: String) {
        #expect(throws: KilnError.self) { try ImageLocation(text) }
    }

    @Test func loopbackRegistriesSpeakPlainHTTP() throws {
        #expect(RegistryDirectory.isLoopback("127.0.0.1:5000"))
        #expect(RegistryDirectory.isLoopback("localhost:5000"))
        #expect(RegistryDirectory.isLoopback("[::1]:5000"))
        #expect(!RegistryDirectory.isLoopback("registry.example:5000"))
        let directory = RegistryDirectory(
            settings: ["127.0.0.1:6000": RegistrySettings(insecure: false)], logins: RegistryCredentialStore(files: []))
        #expect(try directory.client(for: "127.0.0.1:5000").insecureHTTP)
        #expect(try !directory.client(for: "127.0.0.1:6000").insecureHTTP)
        #expect(try !directory.client(for: "registry.example").insecureHTTP)
    }

    @Test func configurationFile() throws {
        let home = Scratch()
        defer { home.remove() }
        let path = home.path + "/kiln.yaml"
        try """
        dataDirectory: data
        transfers: {concurrency: 8}
        registries:
          registry.example:5000:
            caCertificate: certs/ca.pem
            username: robot
            passwordEnv: ROBOT_TOKEN
          127.0.0.1:5001: {insecure: true}
        """.write(toFile: path, atomically: true, encoding: .utf8)
        let configuration = try KilnConfiguration.load(path: path, environment: ["ROBOT_TOKEN": "t0ken"])
        #expect(configuration.dataDirectory == home.path + "/data")
        #expect(configuration.transferConcurrency == 8)
        #expect(
            configuration.registries["registry.example:5000"]
                == .init(caCertificate: home.path + "/certs/ca.pem", username: "robot", password: "t0ken"))
        #expect(configuration.registries["127.0.0.1:5001"]?.insecure == true)

        let missing = try #require(throws: KilnError.self) { try KilnConfiguration.load(path: path, environment: [:]) }
        #expect(
            missing.message
                == "\(path):7: registries.registry.example:5000.passwordEnv names ROBOT_TOKEN, which is not set in the environment")
        try "instanceTypes:\n  build.huge: {vCPUs: 1.5, memoryMiB: 16384}\n  tiny: {vCPUs: 1, memoryMiB: 8}\n".write(
            toFile: path, atomically: true, encoding: .utf8)
        let small = try #require(throws: KilnError.self) { try KilnConfiguration.load(path: path) }
        #expect(small.message == "\(path):3: instanceTypes.tiny.memoryMiB must be a whole number of MiB, at least 16")
        try "instanceTypes:\n  build.huge: {vCPUs: 1.5, memoryMiB: 16384}\nbootstrap:\n  mirrors: {ubuntu: http://mirror.example/ubuntu}\n"
            .write(toFile: path, atomically: true, encoding: .utf8)
        let sized = try KilnConfiguration.load(path: path)
        #expect(sized.instanceTypes["build.huge"] == .init(vCPUs: 1.5, memoryMiB: 16384))
        #expect(sized.bootstrapMirrors == ["ubuntu": "http://mirror.example/ubuntu"])
        try "dataDirectory: /x\nregistry:\n  a: {}\n".write(toFile: path, atomically: true, encoding: .utf8)
        let typo = try #require(throws: KilnError.self) { try KilnConfiguration.load(path: path) }
        #expect(typo.message.hasPrefix("\(path):2: unknown key 'registry'"))
    }
}
