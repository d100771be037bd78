#if canImport(Glibc)
import Glibc
#endif
import Foundation
import KilnModel
import KilnOCI
import KilnTOE
import Testing
@testable import KilnInstances

@discardableResult
func shell(_ command: String) throws -> (status: Int32, text: String) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/bin/sh")
    process.arguments = ["-c", command]
    let pipe = Pipe()
    process.standardOutput = pipe
    process.standardError = pipe
    try process.run()
    let data = pipe.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return (process.terminationStatus, String(decoding: data, as: UTF8.self))
}

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
        try "root:x:0:0:root:/root:/bin/false\nbuilder:x:1000:1000::/home/builder:/bin/false\n".write(toFile: source + "/rootfs/etc/passwd", atomically: true, encoding: .utf8)
        try "root:x:0:\nbuilder:x:1000:\n".write(toFile: source + "/rootfs/etc/group", atomically: true, encoding: .utf8)
        try "kept by the parent\n".write(toFile: source + "/rootfs/etc/motd", atomically: true, encoding: .utf8)
        try """
        #include <stdio.h>
        #include <stdlib.h>
        #include <string.h>
        #include <unistd.h>
        int main(int argc, char **argv) {
            const char *tool = strrchr(argv[0], '/') ? strrchr(argv[0], '/') + 1 : argv[0];
            if (strcmp(tool, "hog") == 0) { for (;;) { char *p = malloc(1 << 20); if (p) memset(p, 1, 1 << 20); } }
            if (strcmp(tool, "sleeper") == 0) { sleep(argc > 1 ? atoi(argv[1]) : 60); return 0; }
            for (int i = 1; i < argc; i++) printf("%s%s", argv[i], i + 1 < argc ? " " : "\\n");
            fprintf(stderr, "uid=%d\\n", (int)getuid());
            FILE *out = fopen("/hello.out", "w"); if (out) { fputs("hello from the container\\n", out); fclose(out); }
            return argc > 1 && strcmp(argv[1], "fail") == 0 ? 3 : 0;
        }
        """.write(toFile: source + "/hello.c", atomically: true, encoding: .utf8)
        let built = try shell("cd \(source) && gcc -static -O1 -o rootfs/bin/hello hello.c && ln rootfs/bin/hello rootfs/bin/hog && ln rootfs/bin/hello rootfs/bin/sleeper")
        #expect(built.status == 0, "\(built.text)")
        return try host.store.importRootFilesystem(source + "/rootfs", name: name, sourceDateEpoch: 0)
    }

    func remove() async {
        await ContainerInstance.reapOrphans(on: host)
        try? FileManager.default.removeItem(atPath: directory)
    }
}

@Suite("Container instances on runc and overlayfs", .serialized,
       .enabled(if: ProcessInfo.processInfo.environment["CI"] == "true" || (geteuid() == 0 && FileManager.default.fileExists(atPath: "/usr/bin/runc"))))
struct ContainerInstanceTests {
    @Test("An image with no shell and no libc gets an init; exec streams output and exit codes; snapshot keeps the changes")
    func staticImage() async throws {
        let fixture = try InstanceFixture()
        let image = try fixture.staticImage(named: "static:1")
        let instance = try await ContainerInstance.start(image: image, on: fixture.host)
        let session = instance.session
        let output = OutputCollector()
        let result = try await session.exec(ExecRequest(executable: "/bin/hello", arguments: ["hi", "there"])) { _, bytes in output.append(bytes) }
        #expect(result.exitCode == 0)
        #expect(output.text.contains("hi there") && output.text.contains("uid=0"), "\(output.text)")
        #expect(try await session.exec(ExecRequest(executable: "hello", arguments: ["fail"])) { _, _ in }.exitCode == 3, "found in PATH; exit code kept")
        let missing = OutputCollector()
        #expect(try await session.exec(ExecRequest(executable: "/bin/sh", arguments: ["-c", "true"])) { _, bytes in missing.append(bytes) }.exitCode == 127)
        #expect(missing.text.contains("cannot run /bin/sh"))
        #expect(String(decoding: try await session.readFile("/hello.out"), as: UTF8.self) == "hello from the container\n")

        try await session.writeFile("/etc/added", contents: Data("new\n".utf8), append: false, mode: 0o644)
        try await session.remove("/etc/motd", recursive: false)
        let snapshot = try instance.snapshot(as: "static:2", settings: .init(history: "kiln test component", sourceDateEpoch: 0))
        await instance.destroy()
        #expect(!FileManager.default.fileExists(atPath: instance.directory))

        let fresh = try await ContainerInstance.start(image: snapshot, on: fixture.host)
        #expect(try await fresh.session.fileInfo("/etc/added", followSymlinks: true) != nil)
        #expect(try await fresh.session.fileInfo("/etc/motd", followSymlinks: true) == nil, "a deleted parent file stays deleted")
        #expect(try await fresh.session.fileInfo("/.kiln/init", followSymlinks: true) != nil)
        let config = try JSONDecoder().decode(ImageConfiguration.self, from: try fixture.host.store.read(JSONDecoder().decode(ImageManifest.self, from: fixture.host.store.read(snapshot.digest)).config.digest))
        #expect(config.history?.last?.createdBy == "kiln test component")
        #expect(config.rootfs.diffIDs.count == 2)
        let layerList = try shell("tar -tzf \(fixture.host.store.path(of: JSONDecoder().decode(ImageManifest.self, from: fixture.host.store.read(snapshot.digest)).layers[1].digest))")
        #expect(layerList.text.contains("etc/.wh.motd") && layerList.text.contains("etc/added") && layerList.text.contains("hello.out"))
        #expect(!layerList.text.contains(".kiln") && !layerList.text.contains("resolv.conf") && !layerList.text.contains("proc"), "Kiln's own files stay out of snapshots: \(layerList.text)")
        await fresh.destroy()
        await fixture.remove()
    }
}
