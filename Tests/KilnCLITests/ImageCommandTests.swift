import Foundation
import KilnTestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// A plain-http docker-registry on a free loopback port.
@Suite(
    "kiln image", .serialized,
    .enabled(if: TestEnvironment.requires("/usr/bin/docker-registry")))
struct ImageCommandTests {
    @Test("pack, push to a registry and an archive, ls, pull elsewhere, inspect, rm and gc; progress as plain lines")
    func lifecycle() throws {
        let registry = try LoopbackRegistry()
        defer { registry.stop() }
        let scratch = Scratch("kiln-cli-test")
        defer { scratch.remove() }
        try FileManager.default.createDirectory(atPath: scratch.path + "/rootfs/etc", withIntermediateDirectories: true)
        _ = try scratch.write("rootfs/etc/os-release", "ID=kiln\n")
        let data = ["--data-dir", scratch.path + "/data"]

        let packed = try Kiln.run(["image", "pack", scratch.path + "/rootfs", "demo:1", "--source-date-epoch", "0"] + data)
        #expect(packed.status == 0, "\(packed.stderr)")
        let digest = packed.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(digest.hasPrefix("sha256:") && digest.count == 71)

        let pushed = try Kiln.run(
            ["image", "push", "demo:1", "\(registry.host)/team/demo:1", "oci-archive:\(scratch.path)/demo.tar:1"] + data)
        #expect(pushed.status == 0, "\(pushed.stderr)")
        #expect(pushed.stdout == digest + "\n", "stdout carries only the digest")
        #expect(pushed.stderr.contains("\(registry.host)/team/demo:1: wrote \(digest)"))
        #expect(pushed.stderr.contains("uploaded"), "without a terminal, progress is plain lines: \(pushed.stderr)")
        #expect(!pushed.stderr.contains("\u{1B}["), "no terminal escapes in a log")
        let skopeo = try Kiln.shell("skopeo inspect --raw oci-archive:\(scratch.path)/demo.tar:1 | sha256sum")
        #expect(skopeo.hasPrefix(String(digest.dropFirst(7))))

        let listed = try Kiln.run(["image", "ls"] + data)
        #expect(listed.stdout.contains("demo:1") && listed.stdout.contains(String(digest.dropFirst(7).prefix(12))))

        let elsewhere = ["--data-dir", scratch.path + "/other"]
        let pulled = try Kiln.run(["image", "pull", "\(registry.host)/team/demo:1", "-q"] + elsewhere)
        #expect(pulled.status == 0 && pulled.stdout == digest + "\n" && pulled.stderr.isEmpty, "\(pulled.stderr)")
        let inspected = try Kiln.run(["image", "inspect", "\(registry.host)/team/demo:1"] + elsewhere)
        let details = try #require(try JSONSerialization.jsonObject(with: Data(inspected.stdout.utf8)) as? [String: Any])
        #expect(details["digest"] as? String == digest)
        #expect((details["layers"] as? [Any])?.count == 1)
        #expect(details["created"] as? String == "1970-01-01T00:00:00Z")

        let removed = try Kiln.run(["image", "rm", "demo:1"] + data)
        #expect(removed.status == 0 && removed.stdout == "removed demo:1\n")
        let collected = try Kiln.run(["image", "gc"] + data)
        #expect(collected.stdout.hasPrefix("removed 3 blob(s)"), "manifest, config and layer go: \(collected.stdout)")
    }

    @Test("Bad input: a missing image, an unreachable region, a malformed reference; each says what and where")
    func errors() throws {
        let registry = try LoopbackRegistry()
        defer { registry.stop() }
        let scratch = Scratch("kiln-cli-test")
        defer { scratch.remove() }
        let data = ["--data-dir", scratch.path + "/data"]

        let missing = try Kiln.run(["image", "push", "nothing:1", "\(registry.host)/x:1"] + data)
        #expect(missing.status == 1 && missing.stderr.contains("'nothing:1' is not in Kiln's content store"))

        try FileManager.default.createDirectory(atPath: scratch.path + "/rootfs", withIntermediateDirectories: true)
        #expect(try Kiln.run(["image", "pack", scratch.path + "/rootfs", "demo:1"] + data).status == 0)
        let unreachable = try Kiln.run(["image", "push", "demo:1", "\(registry.host)/ok:1", "127.0.0.1:1/dead:1", "-q"] + data)
        #expect(unreachable.status == 1)
        #expect(
            unreachable.stderr.contains("1 of 2 destination(s) failed") && unreachable.stderr.contains("127.0.0.1:1/dead:1"),
            "\(unreachable.stderr)")
        #expect(
            try Kiln.shell("skopeo inspect --tls-verify=false --raw docker://\(registry.host)/ok:1 >/dev/null && echo present")
                == "present\n",
            "the reachable region still got the image")

        let malformed = try Kiln.run(["image", "copy", "kiln:demo:1", "UPPER/Case:1"] + data)
        #expect(malformed.status == 1 && malformed.stderr.contains("'UPPER/Case:1' is not an image reference"))

        try "registries:\n  r.example: {insecure: maybe}\n".write(toFile: scratch.path + "/kiln.yaml", atomically: true, encoding: .utf8)
        let config = try Kiln.run(["image", "ls", "--config", scratch.path + "/kiln.yaml"] + data)
        #expect(
            config.status == 1 && config.stderr.contains("kiln.yaml:2: registries.r.example.insecure must be true or false"),
            "\(config.stderr)")
    }
}

extension Kiln {
    /// A host command's stdout (stderr left out), for checking results with real tools.
    static func shell(_ command: String) throws -> String {
        try KilnTestSupport.shell(command, includeStandardError: false).output
    }
}
