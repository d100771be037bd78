import Foundation
import KilnTestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// Its own data directory, kept between runs like the shared one (the Debian parent is
/// bootstrapped once), so no other suite's live build is in the way of "nothing is left".
let crashDataDirectory = "/var/tmp/kiln-cli-crash"

@Suite(
    "Crash safety: kill -9 of kiln build at each stage leaves nothing behind; gc during a build", .serialized,
    .enabled(if: TestEnvironment.requiresRoot("/usr/bin/runc")))
struct CrashSafetyTests {
    /// A pipeline named `name`: one component with `build` and `test` commands, optional
    /// distribution to `registry`, image tests on or off.
    func project(
        _ scratch: Scratch, name: String, build: [String], test: [String] = ["true"], tests: Bool = false, registry: String? = nil,
        file: String = "pipeline.yaml", data: String = crashDataDirectory
    ) throws -> String {
        func list(_ commands: [String]) -> String { commands.map { "\"\($0)\"" }.joined(separator: ", ") }
        _ = try scratch.write(
            "\(name).yaml",
            """
            name: \(name)
            schemaVersion: 1.0
            phases:
              - name: build
                steps:
                  - name: Work
                    action: ExecuteBash
                    inputs:
                      commands: [\(list(build))]
              - name: test
                steps:
                  - name: Check
                    action: ExecuteBash
                    inputs:
                      commands: [\(list(test))]
            """)
        _ = try scratch.write(
            "kiln.yaml",
            "dataDirectory: \(data)\n" + (registry.map { "regions:\n  north: {registry: \"\($0)\"}\n" } ?? ""))
        let distribution =
            registry == nil
            ? ""
            : """
            distributionConfigurations:
              - name: north
                distributions:
                  - {region: north, containerDistributionConfiguration: {targetRepository: {repositoryName: \(name)}}}

            """
        return try scratch.write(
            file,
            """
            components:
              - {name: \(name), semanticVersion: 1.0.0, platform: Linux, uri: \(name).yaml}
            containerRecipes:
              - name: \(name)
                semanticVersion: 1.0.0
                parentImage: bootstrap:debian:bookworm
                components: [{componentArn: \(name)/1.x.x}]
            infrastructureConfigurations:
              - {name: builders, instanceTypes: [t3.small], instanceProfileName: kiln}
            \(distribution)imagePipelines:
              - {name: \(name)-pipeline, containerRecipeArn: \(name)/1.x.x, infrastructureConfigurationArn: builders\(registry == nil ? "" : ", distributionConfigurationArn: north"), imageTestsConfiguration: {imageTestsEnabled: \(tests)}}
            """)
    }

    /// `kiln build` running in the background, its stderr going to a file the test reads.
    final class RunningBuild {
        let process = Process()
        let log: String

        init(_ arguments: [String], in directory: String) throws {
            log = directory + "/build-\(UUID().uuidString).log"
            FileManager.default.createFile(atPath: log, contents: nil)
            process.executableURL = URL(fileURLWithPath: Kiln.binary)
            process.arguments = arguments
            process.currentDirectoryURL = URL(fileURLWithPath: directory)
            process.standardOutput = FileHandle.nullDevice
            process.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: log))
            try process.run()
        }

        var output: String { (try? String(contentsOfFile: log, encoding: .utf8)) ?? "" }

        /// Waits until `condition` holds (true) or the build ends or time runs out (false).
        func wait(seconds: Double, until condition: () -> Bool) -> Bool {
            let deadline = Date().addingTimeInterval(seconds)
            while Date() < deadline {
                if condition() { return true }
                guard process.isRunning else { return condition() }
                usleep(20_000)
            }
            return false
        }

        func killNow() {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }

        /// The ids of the instances the build started, as its log names them.
        var instances: Set<String> {
            let pattern = try! NSRegularExpression(pattern: "kiln-[0-9a-f]{12}")
            let text = output
            return Set(
                pattern.matches(in: text, range: NSRange(text.startIndex..., in: text)).compactMap { Range($0.range, in: text) }.map {
                    String(text[$0])
                })
        }

        /// `name/x.y.z/build` of the image, from its PENDING line.
        var image: String? {
            let pattern = try! NSRegularExpression(pattern: "image/([a-z0-9-]+/[0-9.]+/[0-9]+): PENDING")
            let text = output
            guard let match = pattern.firstMatch(in: text, range: NSRange(text.startIndex..., in: text)),
                let range = Range(match.range(at: 1), in: text)
            else { return nil }
            return String(text[range])
        }
    }

    /// Runs `kiln build` until `ready` says the stage is reached, kills it with SIGKILL, runs
    /// `next` (a kiln command), and checks what a user would: no container, mount, cgroup, temp
    /// file or lease of the killed build, and its image FAILED as interrupted in `stage`.
    func killAndCheck(
        _ scratch: Scratch, pipeline: String, stage: String, seconds: Double = 600, settle: UInt32 = 0, next: [String]? = nil,
        data: String = crashDataDirectory, instances expected: Bool = true, ready: (RunningBuild) -> Bool
    ) throws {
        let crashDataDirectory = data
        let build = try RunningBuild(["build", "-f", pipeline, "--no-cache"], in: scratch.path)
        let reached = build.wait(seconds: seconds, until: { ready(build) })
        if reached { sleep(settle) }
        let killed = build.process.processIdentifier
        // Helpers Kiln started (mmdebstrap) go too, as when the whole service is killed.
        let helpers = try shell("pgrep -P \(killed); true").output.split(separator: "\n").compactMap { Int32($0) }
        build.killNow()
        for helper in helpers {
            kill(-helper, SIGKILL)
            kill(helper, SIGKILL)
        }
        for helper in helpers { while kill(helper, 0) == 0 { usleep(50_000) } }
        try #require(reached, "the build reached the stage before it ended: \(build.output.suffix(3000))")
        let image = try #require(build.image, "the log names the image: \(build.output.suffix(2000))")

        let after = try Kiln.run(next ?? ["images"], in: scratch.path)
        #expect(after.status == 0, "\(after.stdout)\n\(after.stderr)")

        let containers = try shell("runc --root /run/kiln/runc list 2>/dev/null | grep -F \(crashDataDirectory)/ ; true").output
        #expect(containers.isEmpty, "no runc container of the data directory: \(containers)")
        let mountinfo = try String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8)
        let mounts = mountinfo.split(separator: "\n").filter { $0.contains(crashDataDirectory + "/") }
        #expect(mounts.isEmpty, "no mount under the data directory: \(mounts)")
        let instances = build.instances
        #expect(!expected || !instances.isEmpty, "the killed build had instances: \(build.output.suffix(2000))")
        let cgroups = try shell("ls -d /sys/fs/cgroup/*/kiln/kiln-* /sys/fs/cgroup/kiln/kiln-* 2>/dev/null; true").output
            .split(separator: "\n").filter { path in instances.contains { path.hasSuffix("/" + $0) } }
        #expect(cgroups.isEmpty, "no cgroup of the killed build's instances: \(cgroups)")
        let folders = instances.filter { FileManager.default.fileExists(atPath: "\(crashDataDirectory)/instances/\($0)") }
        #expect(folders.isEmpty, "no instance folder: \(folders)")
        let temporary = try shell(
            "find \(crashDataDirectory) -maxdepth 3 \\( -name '.ingest-*' -o -name '.tmp-*' -o -name '.snapshot-*' -o -name '.layer-*' -o -name 'bootstrap-*' -o -name '.kiln-staging-*' -o -name '.image.json.tmp' \\) -print"
        ).output
        #expect(temporary.isEmpty, "no temp file is left: \(temporary)")
        let leases = try shell("grep -l '^owner \(killed)-' \(crashDataDirectory)/content/leases/* 2>/dev/null; true").output
        #expect(leases.isEmpty, "the killed build's leases are gone: \(leases)")

        let listed = try Kiln.run(["images"], in: scratch.path)
        let line = listed.stdout.split(separator: "\n").first { $0.hasPrefix(image + " ") }.map(String.init) ?? ""
        #expect(line.contains("FAILED"), "kiln images shows \(image) FAILED: \(listed.stdout)")
        let shown = try Kiln.run(["images", "show", image], in: scratch.path)
        let record = try #require(
            (try? JSONSerialization.jsonObject(with: Data(shown.stdout.utf8))) as? [String: Any], "\(shown.stdout)\(shown.stderr)")
        let failure = try #require(record["failure"] as? [String: Any])
        let reason = failure["reason"] as? String ?? ""
        #expect(record["status"] as? String == "FAILED" && failure["stage"] as? String == stage, "\(record)")
        #expect(reason.contains("interrupted") && reason.contains(stage) && reason.contains("died"), "\(reason)")
    }

    @Test("Records of an older Kiln (no owner) still list; a dead owner's running record ends FAILED, a live one's is left alone")
    func recordOwners() throws {
        let scratch = Scratch("kiln-crash")
        defer { scratch.remove() }
        let data = scratch.path + "/data"
        func write(_ build: Int, status: String, owner: String?) throws {
            _ = try scratch.write(
                "data/images/old/1.0.0/\(build)/image.json",
                """
                {"arn": "arn:aws:imagebuilder:us-east-1:000000000000:image/old/1.0.0/\(build)", "name": "old", "version": "1.0.0",
                 "build": \(build), "type": "DOCKER", "status": "\(status)", "dateCreated": "2026-01-01T00:00:00Z",
                 "distributionTargets": [], "outputContainers": [], "timings": [], "logDirectory": "/nowhere"\(owner.map { ", \"owner\": \($0)" } ?? "")}
                """)
        }
        try write(1, status: "AVAILABLE", owner: nil)
        try write(2, status: "BUILDING", owner: nil)
        // pid 1 runs, but not since this start time: a recycled pid is not the owner.
        try write(3, status: "TESTING", owner: #"{"pid": 1, "startTime": 1}"#)
        try write(4, status: "BUILDING", owner: #"{"pid": \#(getpid()), "startTime": \#(try ownStartTime())}"#)
        let listed = try Kiln.run(["images", "--data-dir", data], in: scratch.path)
        let lines = listed.stdout.split(separator: "\n")
        for (build, status) in [(1, "AVAILABLE"), (2, "BUILDING"), (3, "FAILED"), (4, "BUILDING")] {
            #expect(lines.contains { $0.hasPrefix("old/1.0.0/\(build) ") && $0.contains(status) }, "\(build) \(status): \(listed.stdout)")
        }
        let shown = try Kiln.run(["images", "show", "old/1.0.0/3", "--data-dir", data], in: scratch.path)
        #expect(shown.stdout.contains("interrupted in TEST") && shown.stdout.contains("pid 1"), "\(shown.stdout)")
    }

    /// Field 22 of this process's /proc/PID/stat.
    func ownStartTime() throws -> String {
        let stat = try String(contentsOfFile: "/proc/self/stat", encoding: .utf8)
        return String(stat[stat.index(after: stat.lastIndex(of: ")")!)...].split(separator: " ")[19])
    }

    @Test("kill -9 while the parent is bootstrapped (mmdebstrap): its half-made root goes; the image is FAILED, interrupted in BUILD")
    func killedWhileBootstrapping() throws {
        let scratch = Scratch("kiln-crash")
        defer { scratch.remove() }
        let data = scratch.path + "/data"
        let pipeline = try project(scratch, name: "crash-bootstrap", build: ["true"], data: data)
        try killAndCheck(scratch, pipeline: pipeline, stage: "BUILD", data: data, instances: false) { build in
            // mmdebstrap has started filling its folder.
            build.output.contains("bootstrapping debian")
                && ((try? FileManager.default.contentsOfDirectory(atPath: data + "/content/ingest")) ?? []).contains {
                    $0.hasPrefix("bootstrap-")
                        && ((try? FileManager.default.contentsOfDirectory(atPath: data + "/content/ingest/" + $0)) ?? []).count > 3
                }
        }
    }

    @Test("kill -9 mid-step in BUILD: the next kiln build removes the builder and its cgroup; the image is FAILED, interrupted in BUILD")
    func killedInBuildStep() throws {
        let scratch = Scratch("kiln-crash")
        defer { scratch.remove() }
        let quick = try project(scratch, name: "crash-quick", build: ["echo quick"], file: "quick.yaml")
        let pipeline = try project(scratch, name: "crash-step", build: ["echo crash-step-running", "sleep 600"])
        try killAndCheck(scratch, pipeline: pipeline, stage: "BUILD", next: ["build", "-f", quick]) {
            $0.output.contains("crash-step-running")
        }
    }

    @Test("kill -9 while the step's layer is packed: the half-written layer is removed; the image is FAILED, interrupted in BUILD")
    func killedWhilePacking() throws {
        let scratch = Scratch("kiln-crash")
        defer { scratch.remove() }
        let pipeline = try project(
            scratch, name: "crash-pack", build: ["head -c 600000000 /dev/urandom > /var/tmp/big", "echo crash-step-written"])
        try killAndCheck(scratch, pipeline: pipeline, stage: "BUILD") { build in
            // Packing has begun once the step is done and the layer's temp file exists.
            build.output.contains("crash-step-written")
                && ((try? FileManager.default.contentsOfDirectory(atPath: crashDataDirectory + "/content/ingest")) ?? []).contains {
                    $0.hasPrefix(".snapshot-")
                }
        }
    }

    @Test("kill -9 in TEST: the test instance goes; the image is FAILED, interrupted in TEST")
    func killedInTest() throws {
        let scratch = Scratch("kiln-crash")
        defer { scratch.remove() }
        let pipeline = try project(
            scratch, name: "crash-test", build: ["echo built"], test: ["echo crash-test-running", "sleep 600"], tests: true)
        try killAndCheck(scratch, pipeline: pipeline, stage: "TEST") { $0.output.contains("crash-test-running") }
    }

    @Test("kill -9 in DISTRIBUTE (a registry that never answers): the image is FAILED, interrupted in DISTRIBUTE")
    func killedInDistribute() throws {
        // A port that accepts connections and never answers: the push hangs in DISTRIBUTING.
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(listener) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, length) } }
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(listener, $0, &length) }
        }
        #expect(listen(listener, 16) == 0)
        let port = Int(UInt16(bigEndian: address.sin_port))
        let scratch = Scratch("kiln-crash")
        defer { scratch.remove() }
        let pipeline = try project(scratch, name: "crash-distribute", build: ["echo built"], registry: "127.0.0.1:\(port)")
        // A second for the push to start.
        try killAndCheck(scratch, pipeline: pipeline, stage: "DISTRIBUTE", settle: 1) { $0.output.contains(": DISTRIBUTING") }
    }

    @Test("kiln image gc run again and again during builds never takes a blob they name: every build succeeds and keeps every blob")
    func gcDuringBuild() throws {
        let scratch = Scratch("kiln-crash")
        defer { scratch.remove() }
        let pipeline = try project(
            scratch, name: "crash-gc", build: ["head -c 20000000 /dev/urandom > /var/tmp/random", "echo layered > /etc/crash-gc"])
        var images: [[String: Any]] = []
        // Built afresh, then from the cache, then while the cache is forgotten again and again.
        for (arguments, gc) in [(["--no-cache"], ["image", "gc"]), ([], ["image", "gc"]), ([], ["image", "gc", "--build-cache"])] {
            let build = try RunningBuild(["build", "-f", pipeline] + arguments, in: scratch.path)
            var collections = 0
            while build.process.isRunning {
                let collected = try Kiln.run(gc, in: scratch.path)
                #expect(collected.status == 0, "\(collected.stderr)")
                collections += 1
            }
            #expect(build.process.terminationStatus == 0, "\(build.output.suffix(3000))")
            #expect(collections > 0, "gc ran during the build")
            #expect(build.output.contains("AVAILABLE"))
            if arguments.isEmpty, gc.count == 2 { #expect(build.output.contains("cached, not run"), "the second build reused the step") }
            images.append(try expectWholeImage(build, in: scratch))
            // Named now, the image survives a gc after the build too.
            #expect(try Kiln.run(["image", "gc"], in: scratch.path).status == 0)
            _ = try expectWholeImage(build, in: scratch)
        }
        // With no build running, gc frees what nothing names any more.
        for image in images {
            #expect(try Kiln.run(["image", "rm", "kiln:" + (image["localName"] as? String ?? "")], in: scratch.path).status == 0)
        }
        let freed = try Kiln.run(["image", "gc", "--build-cache"], in: scratch.path)
        #expect(freed.status == 0 && !freed.stdout.contains("removed 0 blob"), "\(freed.stdout)")
        for digest in images.compactMap({ $0["digest"] as? String }) {
            #expect(!FileManager.default.fileExists(atPath: crashDataDirectory + "/content/blobs/sha256/" + digest.dropFirst(7)))
        }
    }

    /// Every blob of the build's image (manifest, config, layers) is in the store; returns its record.
    @discardableResult
    func expectWholeImage(_ build: RunningBuild, in scratch: Scratch) throws -> [String: Any] {
        let image = try #require(build.image)
        let shown = try Kiln.run(["images", "show", image], in: scratch.path)
        let record = try #require((try? JSONSerialization.jsonObject(with: Data(shown.stdout.utf8))) as? [String: Any])
        let digest = try #require(record["digest"] as? String)
        let blobs = crashDataDirectory + "/content/blobs/sha256/"
        let manifestData = try #require(FileManager.default.contents(atPath: blobs + digest.dropFirst(7)), "the manifest \(digest)")
        let manifest = try #require((try? JSONSerialization.jsonObject(with: manifestData)) as? [String: Any])
        let config = (manifest["config"] as? [String: Any])?["digest"] as? String ?? ""
        let layers = (manifest["layers"] as? [[String: Any]] ?? []).compactMap { $0["digest"] as? String }
        #expect(layers.count >= 2, "the parent's layer and the component's")
        for blob in [config] + layers {
            #expect(FileManager.default.fileExists(atPath: blobs + blob.dropFirst(7)), "\(blob) of \(image)")
        }
        return record
    }
}
