import Foundation
import KilnModel
import KilnOCI
import KilnRegistry
import KilnSystem
import KilnTOE
import KilnTestSupport
import Testing

@testable import KilnInstances

#if canImport(Glibc)
    import Glibc
#endif

/// A data directory with a content store, and an image holding only static programs (no libc,
/// no shell), compiled here with gcc.
struct InstanceFixture {
    let directory: String
    let host: InstanceHost

    init() throws {
        var template = Array("/var/tmp/kiln-instances.XXXXXX".utf8CString)
        directory = String(cString: mkdtemp(&template)!)
        host = try InstanceHost(dataDirectory: directory, store: try ContentStore(root: directory + "/content"))
    }

    /// `/bin/hello` prints its arguments and writes /hello.out; `/bin/hog` allocates until killed;
    /// `/bin/sleeper` sleeps for argv[1] seconds.
    func staticImage(named name: String) throws -> Descriptor {
        let source = directory + "/src"
        try FileManager.default.createDirectory(atPath: source + "/rootfs/bin", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: source + "/rootfs/etc", withIntermediateDirectories: true)
        try "root:x:0:0:root:/root:/bin/false\nbuilder:x:1000:1000::/home/builder:/bin/false\n".write(
            toFile: source + "/rootfs/etc/passwd", atomically: true, encoding: .utf8)
        try "root:x:0:\nbuilder:x:1000:\n".write(toFile: source + "/rootfs/etc/group", atomically: true, encoding: .utf8)
        try "kept by the parent\n".write(toFile: source + "/rootfs/etc/motd", atomically: true, encoding: .utf8)
        try "container shadow\n".write(toFile: source + "/rootfs/etc/shadow", atomically: true, encoding: .utf8)
        try FileManager.default.createDirectory(atPath: source + "/rootfs/var", withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(atPath: source + "/rootfs/var/escape", withDestinationPath: "/etc/shadow")
        try FileManager.default.createSymbolicLink(atPath: source + "/rootfs/var/climb", withDestinationPath: "../../../../etc/shadow")
        try """
        #include <stdio.h>
        #include <stdlib.h>
        #include <string.h>
        #include <unistd.h>
        int main(int argc, char **argv) {
            const char *tool = strrchr(argv[0], '/') ? strrchr(argv[0], '/') + 1 : argv[0];
            if (strcmp(tool, "hog") == 0) { for (;;) { char *p = malloc(1 << 20); if (p) memset(p, 1, 1 << 20); } }
            if (strcmp(tool, "sleeper") == 0) { sleep(argc > 1 ? atoi(argv[1]) : 60); return 0; }
            if (strcmp(tool, "rebooter") == 0) {
                if (access("/var/rebooted", F_OK) != 0) { FILE *m = fopen("/var/rebooted", "w"); if (m) fclose(m); return 194; }
                puts("after the reboot"); return 0;
            }
            for (int i = 1; i < argc; i++) printf("%s%s", argv[i], i + 1 < argc ? " " : "\\n");
            fprintf(stderr, "uid=%d\\n", (int)getuid());
            FILE *out = fopen("/hello.out", "w"); if (out) { fputs("hello from the container\\n", out); fclose(out); }
            return argc > 1 && strcmp(argv[1], "fail") == 0 ? 3 : 0;
        }
        """.write(toFile: source + "/hello.c", atomically: true, encoding: .utf8)
        let built = try shell(
            "cd \(source) && gcc -static -O1 -o rootfs/bin/hello hello.c && ln rootfs/bin/hello rootfs/bin/hog && ln rootfs/bin/hello rootfs/bin/sleeper && ln rootfs/bin/hello rootfs/bin/rebooter"
        )
        #expect(built.status == 0, "\(built.text)")
        return try host.store.importRootFilesystem(source + "/rootfs", name: name, sourceDateEpoch: 0)
    }

    func remove() async {
        await ContainerInstance.reapOrphans(on: host)
        try? FileManager.default.removeItem(atPath: directory)
    }
}

@Suite(
    "Container instances on runc and overlayfs", .serialized,
    .enabled(if: TestEnvironment.requiresRoot("/usr/bin/runc")))
struct ContainerInstanceTests {
    @Test("An image with no shell and no libc gets an init; exec streams output and exit codes; snapshot keeps the changes")
    func staticImage() async throws {
        let fixture = try InstanceFixture()
        let image = try fixture.staticImage(named: "static:1")
        let instance = try await ContainerInstance.start(image: image, on: fixture.host)
        let session = instance.session
        let output = OutputCollector()
        let result = try await session.exec(ExecRequest(executable: "/bin/hello", arguments: ["hi", "there"])) { _, bytes in
            output.append(bytes)
        }
        #expect(result.exitCode == 0)
        #expect(output.text.contains("hi there") && output.text.contains("uid=0"), "\(output.text)")
        #expect(
            try await session.exec(ExecRequest(executable: "hello", arguments: ["fail"])) { _, _ in }.exitCode == 3,
            "found in PATH; exit code kept")
        let missing = OutputCollector()
        #expect(
            try await session.exec(ExecRequest(executable: "/bin/sh", arguments: ["-c", "true"])) { _, bytes in missing.append(bytes) }
                .exitCode == 127)
        #expect(missing.text.contains("cannot run /bin/sh"))
        #expect(String(decoding: try await session.readFile("/hello.out"), as: UTF8.self) == "hello from the container\n")

        try await session.writeFile("/etc/added", contents: Data("new\n".utf8), append: false, mode: 0o644)
        try await session.remove("/etc/motd", recursive: false)
        var settings = ContainerInstance.SnapshotSettings(history: "kiln test component", sourceDateEpoch: 0)
        settings.environment = ["GREETING": "hello"]
        settings.labels = ["org.opencontainers.image.title": "static"]
        settings.cmd = ["/bin/hello", "from", "cmd"]
        let snapshot = try instance.snapshot(as: "static:2", settings: settings)
        await instance.destroy()
        #expect(!FileManager.default.fileExists(atPath: instance.directory))

        let fresh = try await ContainerInstance.start(image: snapshot, on: fixture.host)
        #expect(try await fresh.session.fileInfo("/etc/added", followSymlinks: true) != nil)
        #expect(try await fresh.session.fileInfo("/etc/motd", followSymlinks: true) == nil, "a deleted parent file stays deleted")
        #expect(try await fresh.session.fileInfo("/.kiln/init", followSymlinks: true) != nil)
        let config = try JSONDecoder().decode(
            ImageConfiguration.self,
            from: try fixture.host.store.read(
                JSONDecoder().decode(ImageManifest.self, from: fixture.host.store.read(snapshot.digest)).config.digest))
        #expect(config.history?.last?.createdBy == "kiln test component")
        #expect(config.config?.env?.contains("GREETING=hello") == true && config.config?.env?.contains { $0.hasPrefix("PATH=") } == true)
        #expect(config.config?.labels == ["org.opencontainers.image.title": "static"])
        #expect(config.config?.cmd == ["/bin/hello", "from", "cmd"])
        #expect(config.created == "1970-01-01T00:00:00Z")
        #expect(config.rootfs.diffIDs.count == 2)
        let layerList = try shell(
            "tar -tzf \(fixture.host.store.path(of: JSONDecoder().decode(ImageManifest.self, from: fixture.host.store.read(snapshot.digest)).layers[1].digest))"
        )
        #expect(layerList.text.contains("etc/.wh.motd") && layerList.text.contains("etc/added") && layerList.text.contains("hello.out"))
        #expect(
            !layerList.text.contains(".kiln") && !layerList.text.contains("resolv.conf") && !layerList.text.contains("proc"),
            "Kiln's own files stay out of snapshots: \(layerList.text)")
        await fresh.destroy()
        await fixture.remove()
    }

    @Test("A memory hog under a 64 MiB instance type is killed, and the output says why")
    func memoryLimit() async throws {
        let fixture = try InstanceFixture()
        let image = try fixture.staticImage(named: "static:1")
        let tiny = InstanceType(name: "test.64m", vCPUs: 1, memoryMiB: 64)
        let instance = try await ContainerInstance.start(image: image, on: fixture.host, options: InstanceOptions(type: tiny))
        let output = OutputCollector()
        let result = try await instance.session.exec(ExecRequest(executable: "/bin/hog")) { _, bytes in output.append(bytes) }
        #expect(result.exitCode == 137)
        #expect(output.text.contains("ran out of memory (limit 64 MiB of instance type test.64m)"), "\(output.text)")
        #expect(try await instance.session.exec(ExecRequest(executable: "/bin/hello")) { _, _ in }.exitCode == 0, "the instance lives on")
        await instance.destroy()
        await fixture.remove()
    }

    @Test("A timeout kills the program inside the container and nothing of it is left running")
    func timeoutKillsTheTree() async throws {
        let fixture = try InstanceFixture()
        let instance = try await ContainerInstance.start(image: try fixture.staticImage(named: "static:1"), on: fixture.host)
        let started = ContinuousClock.now
        let result = try await instance.session.exec(ExecRequest(executable: "/bin/sleeper", arguments: ["300"], timeout: .seconds(1))) {
            _, _ in
        }
        #expect(result.timedOut && result.exitCode == 137)
        #expect(ContinuousClock.now - started < .seconds(60))
        let survivors = try shell("for p in /proc/[0-9]*; do [ \"$(cat $p/comm 2>/dev/null)\" = sleeper ] && echo $p; done; true")
        #expect(survivors.text.isEmpty, "no sleeper survives: \(survivors.text)")
        await instance.destroy()
        await fixture.remove()
    }

    @Test("File actions through hostile symlinks stay inside the container")
    func hostileSymlinks() async throws {
        let fixture = try InstanceFixture()
        let instance = try await ContainerInstance.start(image: try fixture.staticImage(named: "static:1"), on: fixture.host)
        let hostShadow = try shell("sha256sum /etc/shadow").text
        for link in ["/var/escape", "/var/climb"] {
            #expect(String(decoding: try await instance.session.readFile(link), as: UTF8.self).hasPrefix("container shadow\n"))
            try await instance.session.writeFile(link, contents: Data("written through \(link)\n".utf8), append: true, mode: 0o600)
        }
        #expect(try shell("sha256sum /etc/shadow").text == hostShadow, "the host's /etc/shadow is untouched")
        #expect(String(decoding: try await instance.session.readFile("/etc/shadow"), as: UTF8.self).contains("written through /var/climb"))
        await instance.destroy()
        await fixture.remove()
    }

    @Test("The TOE runner drives a container unchanged: ExecuteBinary, file actions, and exit 194 restarts the instance")
    func runnerInContainer() async throws {
        let fixture = try InstanceFixture()
        let instance = try await ContainerInstance.start(image: try fixture.staticImage(named: "static:1"), on: fixture.host)
        let document = try ComponentDocumentParser().parse(
            text: """
                name: InContainer
                schemaVersion: 1.0
                phases:
                  - name: build
                    steps:
                      - name: Greet
                        action: ExecuteBinary
                        inputs:
                          path: /bin/hello
                          arguments: [built, in, a, container]
                      - name: Reboots
                        action: ExecuteBinary
                        inputs:
                          path: /bin/rebooter
                      - name: Write
                        action: CreateFile
                        inputs:
                          - path: /etc/kiln/built-by
                            content: "{{ build.Greet.outputs.stdout }}"
                      - name: Read
                        action: ReadFile
                        inputs:
                          - path: /etc/kiln/built-by
                """, source: "in-container.yaml")
        let lines = OutputCollector()
        let log = try TOELogWriter(folder: nil, echo: { lines.append(Array(($0 + "\n").utf8)) })
        let outcome = await TOERunner(session: instance.session, options: TOEOptions()).run(
            TOERunRequest(documents: [TOEDocumentRun(document: document, parameters: [:])], phases: nil), log: log, resume: nil
        )
        #expect(outcome.succeeded, "\(lines.text)")
        #expect(!outcome.rebootPending)
        #expect(
            String(decoding: try await instance.session.readFile("/etc/kiln/built-by"), as: UTF8.self).hasPrefix("built in a container"))
        #expect(lines.text.contains("after the reboot"))
        await instance.destroy()
        await fixture.remove()
    }

    @Test("A Kiln killed mid-run leaves nothing after the next start reaps: no mount, runc container or cgroup")
    func reapAfterCrash() async throws {
        let fixture = try InstanceFixture()
        let image = try fixture.staticImage(named: "static:1")
        let instance = try await ContainerInstance.start(image: image, on: fixture.host)
        // Pretend the owner died: a pid that is not running.
        let recordPath = instance.directory + "/instance.json"
        var record = try JSONDecoder().decode(InstanceRecord.self, from: Data(contentsOf: URL(fileURLWithPath: recordPath)))
        record.ownerPID = 999_999
        try JSONEncoder().encode(record).write(to: URL(fileURLWithPath: recordPath))
        #expect(
            try shell("mount | grep -c \(instance.id)").text.trimmingCharacters(in: .whitespacesAndNewlines) == "3",
            "the root, Kiln's view of it and the network namespace")
        let reaped = await ContainerInstance.reapOrphans(on: fixture.host)
        #expect(reaped == [instance.id])
        #expect(try shell("mount | grep -c \(instance.id)").text.trimmingCharacters(in: .whitespacesAndNewlines) == "0")
        #expect(try !shell("runc --root /run/kiln/runc list").text.contains(instance.id))
        #expect(!FileManager.default.fileExists(atPath: "/sys/fs/cgroup/memory/kiln/\(instance.id)"))
        #expect(!FileManager.default.fileExists(atPath: instance.directory))
        await fixture.remove()
    }

    @Test("An image with more layers than one overlay mount can name is flattened at the bottom, whiteouts applied")
    func manyLayers() async throws {
        let fixture = try InstanceFixture()
        let base = try fixture.staticImage(named: "static:1")
        let store = fixture.host.store
        var manifest = try JSONDecoder().decode(ImageManifest.self, from: store.read(base.digest))
        var config = try JSONDecoder().decode(ImageConfiguration.self, from: store.read(manifest.config.digest))
        for index in 0..<60 {
            let tree = fixture.directory + "/tree-\(index)"
            try FileManager.default.createDirectory(atPath: tree + "/layers", withIntermediateDirectories: true)
            try FileManager.default.createDirectory(atPath: tree + "/etc", withIntermediateDirectories: true)
            try "\(index)\n".write(toFile: tree + "/layers/file-\(index)", atomically: true, encoding: .utf8)
            if index == 3 { try "doomed\n".write(toFile: tree + "/etc/gone", atomically: true, encoding: .utf8) }
            if index == 5 { FileManager.default.createFile(atPath: tree + "/etc/.wh.gone", contents: nil) }
            if index == 59 { FileManager.default.createFile(atPath: tree + "/layers/.wh.file-0", contents: nil) }
            let packed = try LayerPacker.pack(directory: tree, to: fixture.directory + "/layer-\(index).tar.gz", sourceDateEpoch: 0)
            let writer = try ContentStore.BlobWriter(store: store)
            try writer.write(try Data(contentsOf: URL(fileURLWithPath: fixture.directory + "/layer-\(index).tar.gz")))
            manifest.layers.append(try writer.commit(mediaType: MediaType.layerTarGzip, expected: packed.digest))
            config.rootfs.diffIDs.append(packed.diffID)
        }
        manifest.config = try store.ingestJSON(config, mediaType: MediaType.imageConfig)
        let deep = try store.ingestJSON(manifest, mediaType: MediaType.imageManifest)
        let instance = try await ContainerInstance.start(image: deep, on: fixture.host)
        let listing = try await instance.session.listDirectory("/layers")
        #expect(listing.count == 59 && !listing.contains("file-0") && listing.contains("file-59"), "\(listing.sorted())")
        #expect(try await instance.session.fileInfo("/etc/gone", followSymlinks: false) == nil)
        #expect(try await instance.session.exec(ExecRequest(executable: "/bin/hello")) { _, _ in }.exitCode == 0)
        #expect(try FileManager.default.contentsOfDirectory(atPath: fixture.host.layers.root).contains { $0.hasPrefix("flat-") })
        await instance.destroy()
        await fixture.remove()
    }

    @Test("Parents: scratch, an OCI layout, a store name; a bootstrap without a mirror or with a bad form says what to do")
    func parentForms() async throws {
        let fixture = try InstanceFixture()
        let image = try fixture.staticImage(named: "static:1")
        let transfer = ImageTransfer(store: fixture.host.store, registries: RegistryDirectory(logins: RegistryCredentialStore(files: [])))
        let resolver = ParentImageResolver(transfer: transfer, mirrors: [:])
        let scratch = try await resolver.resolve("scratch")
        let empty = try JSONDecoder().decode(ImageManifest.self, from: fixture.host.store.read(scratch.digest))
        #expect(empty.layers.isEmpty)
        let instance = try await ContainerInstance.start(image: scratch, on: fixture.host)
        #expect(try await instance.session.fileInfo("/.kiln/init", followSymlinks: true) != nil, "scratch still gets an init")
        await instance.destroy()

        _ = try await transfer.copy(from: .store(name: "static:1"), to: [.layout(path: fixture.directory + "/layout", tag: "v1")]).checked()
        #expect(try await resolver.resolve("oci-layout:\(fixture.directory)/layout:v1").digest == image.digest)
        #expect(try await resolver.resolve("kiln:static:1").digest == image.digest)
        let noMirror = try await #require(throws: KilnError.self) { try await resolver.resolve("bootstrap:ubuntu:noble") }
        #expect(
            noMirror.message.contains("set bootstrap.mirrors.ubuntu in kiln.yaml")
                || noMirror.message.contains("mmdebstrap is not installed"))
        let malformed = try await #require(throws: KilnError.self) { try await resolver.resolve("bootstrap:fedora:40") }
        #expect(malformed.message.contains("use bootstrap:debian:SUITE or bootstrap:ubuntu:SUITE"))
        await fixture.remove()
    }
}
