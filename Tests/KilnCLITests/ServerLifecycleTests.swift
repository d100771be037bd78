import Foundation
import KilnTestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// This suite's own data directory, kept between runs so the Debian parent is bootstrapped
/// once. Not the CLI tests' shared one: a build queued in a data directory is taken by whichever
/// `kiln server` on it has a free worker, and another suite's server would build these
/// pipelines with its own regions and webhooks (and count its builds against ours).
let lifecycleDataDirectory = "/var/tmp/kiln-cli-server"

@Suite(
    "kiln server lifecycle: kill -9 and restart mid-build, webhook retries, SIGTERM mid-build", .serialized,
    .enabled(if: TestEnvironment.requiresRoot("runc", "aws", "python3", "/usr/bin/docker-registry")))
struct ServerLifecycleTests {
    static let accessKeyId = "AKIAKILNTEST"
    static let secretAccessKey = "kilnsecret"
    static let webhookSecret = "s3cret"
    static let arnPrefix = "arn:aws:imagebuilder:us-east-1:000000000000"
    static let runcRoot = "/run/kiln/runc"
    static let receiverScript = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .appendingPathComponent("Fixtures/webhook_receiver.py").path
    static let chain = ["PENDING", "CREATING", "BUILDING", "TESTING", "DISTRIBUTING", "INTEGRATING", "AVAILABLE"]

    // MARK: Fixtures

    /// Everything one test starts: a scratch folder, a registry for region us-east-1, a webhook
    /// receiver, and the kiln.yaml of a server on a free port that posts to it as webhook
    /// `ops-<suffix>` (for images whose infrastructure configuration names that SNS topic).
    final class Rig {
        let suffix = String(UUID().uuidString.lowercased().prefix(8))
        let scratch = Scratch("kiln-server-lifecycle")
        let port = freeLoopbackPort()
        let registry: LoopbackRegistry
        let receiver: LoopbackServer
        let config: String
        var servers: [ServerProcess] = []

        init(failingTries: Int = 0) throws {
            for tool in ["runc", "aws", "python3", "/usr/bin/docker-registry"] {
                guard TestEnvironment.executable(tool) != nil else { throw FixtureError("\(tool) is not installed; run scripts/setup") }
            }
            registry = try LoopbackRegistry()
            let record = scratch.file("webhook.jsonl")
            _ = FileManager.default.createFile(atPath: record, contents: nil)
            receiver = try LoopbackServer(
                executable: "python3",
                arguments: {
                    [ServerLifecycleTests.receiverScript, "\($0)", record, ServerLifecycleTests.webhookSecret, "\(failingTries)"]
                })
            config = try scratch.write(
                "kiln.yaml",
                """
                dataDirectory: \(lifecycleDataDirectory)
                listen: 127.0.0.1:\(port)
                credentials:
                  - {accessKeyId: \(ServerLifecycleTests.accessKeyId), secretAccessKey: \(ServerLifecycleTests.secretAccessKey)}
                maxConcurrentBuilds: 1
                regions:
                  us-east-1: {registry: "\(registry.host)", insecure: true}
                webhooks:
                  - {name: ops-\(suffix), url: "\(receiver.url)/hook", secret: \(ServerLifecycleTests.webhookSecret)}

                """)
        }

        var topic: String { "arn:aws:sns:us-east-1:000000000000:ops-\(suffix)" }
        var cli: ImageBuilderCLI { ImageBuilderCLI(endpoint: "http://127.0.0.1:\(port)", home: scratch.path) }

        /// Starts `kiln server` (again); its output goes to server-N.log.
        @discardableResult
        func startServer() throws -> ServerProcess {
            let server = try ServerProcess(config: config, port: port, log: scratch.file("server-\(servers.count + 1).log"))
            servers.append(server)
            return server
        }

        /// Every try the receiver was sent, in order.
        var tries: [WebhookTry] {
            let text = (try? scratch.read("webhook.jsonl")) ?? ""
            return text.split(separator: "\n").compactMap { line in
                ((try? JSONSerialization.jsonObject(with: Data(line.utf8))) as? [String: Any]).map(WebhookTry.init)
            }
        }

        /// The tries for `image`, waiting up to `seconds` for `done` to hold of them.
        func tries(of image: String, seconds: Double, until done: ([WebhookTry]) -> Bool) -> [WebhookTry] {
            let deadline = Date().addingTimeInterval(seconds)
            var found: [WebhookTry] = []
            repeat {
                found = tries.filter { $0.resources == [image] }
                if done(found) { break }
                usleep(250_000)
            } while Date() < deadline
            return found
        }

        func logs() -> String {
            servers.enumerated().map { "--- server-\($0.offset + 1).log:\n" + String($0.element.output.suffix(6000)) }.joined(
                separator: "\n")
        }

        func stop() {
            servers.forEach { $0.stop() }
            receiver.stop()
            registry.stop()
            scratch.remove()
        }

        /// A component whose build step runs `commands`, its container recipe and a pipeline (no
        /// schedule) on the shared infrastructure and distribution configurations; returns the
        /// pipeline's ARN.
        func pipeline(_ name: String, commands: [String], infrastructure: String, distribution: String) throws -> String {
            let quoted = commands.map { "\"\($0)\"" }.joined(separator: ", ")
            let document = try scratch.write(
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
                          commands: [\(quoted)]
                """)
            let cli = cli
            try cli.require(
                "create-component", "--name", name, "--semantic-version", "1.0.0", "--platform", "Linux", "--data", "file://\(document)")
            try cli.require(
                "create-container-recipe", "--name", name, "--semantic-version", "1.0.0", "--parent-image", "bootstrap:debian:bookworm",
                "--container-type", "DOCKER", "--components", "componentArn=\(ServerLifecycleTests.arnPrefix):component/\(name)/1.0.0",
                "--target-repository", "service=ECR,repositoryName=lifecycle/\(name)", "--dockerfile-template-data",
                "FROM {{{ imagebuilder:parentImage }}}\n{{{ imagebuilder:environments }}}\n{{{ imagebuilder:components }}}")
            let made = try cli.require(
                "create-image-pipeline", "--name", name, "--container-recipe-arn",
                "\(ServerLifecycleTests.arnPrefix):container-recipe/\(name)/1.0.0",
                "--infrastructure-configuration-arn", infrastructure, "--distribution-configuration-arn", distribution)
            return try #require(made["imagePipelineArn"] as? String, "\(made)")
        }

        /// The infrastructure configuration (its SNS topic routes events to the receiver) and the
        /// distribution configuration (region us-east-1) the test's pipelines share.
        func configurations() throws -> (infrastructure: String, distribution: String) {
            let cli = cli
            let infrastructure = try cli.require(
                "create-infrastructure-configuration", "--name", "lifecycle-\(suffix)", "--instance-profile-name", "kiln",
                "--instance-types", "t3.medium", "--sns-topic-arn", topic)
            let distribution = try cli.require(
                "create-distribution-configuration", "--name", "lifecycle-\(suffix)", "--distributions",
                #"[{"region": "us-east-1", "containerDistributionConfiguration": {"targetRepository": {"service": "ECR", "repositoryName": "lifecycle/\#(suffix)"}}}]"#
            )
            return (
                try #require(infrastructure["infrastructureConfigurationArn"] as? String, "\(infrastructure)"),
                try #require(distribution["distributionConfigurationArn"] as? String, "\(distribution)")
            )
        }

        /// StartImagePipelineExecution; returns the image's ARN.
        func start(_ pipeline: String) throws -> String {
            let started = try cli.require("start-image-pipeline-execution", "--image-pipeline-arn", pipeline)
            return try #require(started["imageBuildVersionArn"] as? String, "\(started)")
        }

        /// GetImage's `image.state` (status, reason).
        func state(_ image: String) throws -> [String: String] {
            let got = try cli.require("get-image", "--image-build-version-arn", image)
            return (got["image"] as? [String: Any])?["state"] as? [String: String] ?? [:]
        }

        /// Polls GetImage until the image is AVAILABLE, FAILED or CANCELLED or `seconds` pass.
        func waitForEnd(_ image: String, seconds: Double) throws -> [String: String] {
            let deadline = Date().addingTimeInterval(seconds)
            var state: [String: String] = [:]
            repeat {
                state = try self.state(image)
                if ["AVAILABLE", "FAILED", "CANCELLED"].contains(state["status"] ?? "") { break }
                sleep(2)
            } while Date() < deadline
            return state
        }
    }

    /// `kiln server --config FILE`, its stdout and stderr appended to `log`; ready once it says it
    /// listens (after the start's reaping of what a dead Kiln left). The port accepting is not
    /// enough: a killed server's orphaned `runc exec` holds its listening socket until reaped.
    final class ServerProcess {
        let process = Process()
        let log: String

        init(config: String, port: Int, log: String) throws {
            self.log = log
            _ = FileManager.default.createFile(atPath: log, contents: nil)
            let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: log))
            process.executableURL = URL(fileURLWithPath: Kiln.binary)
            process.arguments = ["server", "--config", config]
            process.standardOutput = handle
            process.standardError = handle
            try process.run()
            let deadline = Date().addingTimeInterval(120)
            while !(output.contains("kiln server listening on 127.0.0.1:\(port)") && loopbackAccepts(port)) {
                guard process.isRunning, Date() < deadline else {
                    stop()
                    throw FixtureError("kiln server did not listen on 127.0.0.1:\(port):\n\(output.suffix(4000))")
                }
                usleep(50_000)
            }
        }

        var output: String { (try? String(contentsOfFile: log, encoding: .utf8)) ?? "" }

        /// Waits until `condition` holds (true), the server ends or time runs out (false).
        func wait(seconds: Double, until condition: () -> Bool) -> Bool {
            let deadline = Date().addingTimeInterval(seconds)
            while Date() < deadline {
                if condition() { return true }
                guard process.isRunning else { return condition() }
                usleep(100_000)
            }
            return condition()
        }

        /// Whether the server ended within `seconds`.
        func waitForExit(seconds: Double) -> Bool {
            let deadline = Date().addingTimeInterval(seconds)
            while process.isRunning, Date() < deadline { usleep(50_000) }
            return !process.isRunning
        }

        /// The instances the server's log names.
        var instances: Set<String> { Set(output.matches(of: #/kiln-[0-9a-f]{12}/#).map { String($0.output) }) }

        /// Which signals the server blocks, from /proc (for messages about a signal it ignored).
        var blockedSignals: String {
            let status = (try? String(contentsOfFile: "/proc/\(process.processIdentifier)/status", encoding: .utf8)) ?? ""
            return status.split(separator: "\n").first { $0.hasPrefix("SigBlk:") }.map(String.init) ?? "SigBlk: ?"
        }

        /// The graceful stop (SIGINT), then SIGKILL if it takes more than a minute.
        func stop() {
            guard process.isRunning else { return }
            kill(process.processIdentifier, SIGINT)
            let deadline = Date().addingTimeInterval(60)
            while process.isRunning, Date() < deadline { usleep(50_000) }
            if process.isRunning { kill(process.processIdentifier, SIGKILL) }
            process.waitUntilExit()
        }
    }

    /// `aws imagebuilder … --endpoint-url` with the test key pair and no user configuration.
    struct ImageBuilderCLI {
        var endpoint: String
        var home: String

        /// The CLI's JSON output; throws with its stderr when it exits non-zero.
        @discardableResult
        func require(_ arguments: String...) throws -> [String: Any] {
            try require(arguments)
        }

        @discardableResult
        func require(_ arguments: [String]) throws -> [String: Any] {
            let errors = home + "/aws-stderr-\(UUID().uuidString)"
            _ = FileManager.default.createFile(atPath: errors, contents: nil)
            defer { try? FileManager.default.removeItem(atPath: errors) }
            let process = Process()
            let out = Pipe()
            process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            process.arguments = ["aws", "imagebuilder"] + arguments + ["--endpoint-url", endpoint, "--output", "json"]
            process.environment = ProcessInfo.processInfo.environment.merging([
                "AWS_ACCESS_KEY_ID": ServerLifecycleTests.accessKeyId, "AWS_SECRET_ACCESS_KEY": ServerLifecycleTests.secretAccessKey,
                "AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": home + "/no-aws-config",
                "AWS_SHARED_CREDENTIALS_FILE": home + "/no-aws-credentials", "AWS_PAGER": "",
            ]) { _, new in new }
            process.standardOutput = out
            process.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: errors))
            try process.run()
            let data = out.fileHandleForReading.readDataToEndOfFile()
            process.waitUntilExit()
            guard process.terminationStatus == 0 else {
                let stderr = (try? String(contentsOfFile: errors, encoding: .utf8)) ?? ""
                throw FixtureError("aws imagebuilder \(arguments.first ?? "") exited \(process.terminationStatus): \(stderr)")
            }
            if data.isEmpty { return [:] }
            guard let json = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] else {
                throw FixtureError(
                    "aws imagebuilder \(arguments.first ?? "") printed no JSON object: \(String(decoding: data, as: UTF8.self))")
            }
            return json
        }
    }

    /// One POST the receiver got: which try of its event, what it answered, and the event.
    struct WebhookTry {
        var eventId: String
        var attempt: Int
        var answered: Int
        var time: Double
        var headers: [String: String]
        var body: String
        var expectedSignature: String
        var event: [String: Any]

        init(_ line: [String: Any]) {
            eventId = line["eventId"] as? String ?? ""
            attempt = line["try"] as? Int ?? 0
            answered = line["answered"] as? Int ?? 0
            time = line["time"] as? Double ?? 0
            headers = line["headers"] as? [String: String] ?? [:]
            body = line["body"] as? String ?? ""
            expectedSignature = line["expectedSignature"] as? String ?? ""
            event = ((try? JSONSerialization.jsonObject(with: Data(body.utf8))) as? [String: Any]) ?? [:]
        }

        var resources: [String] { event["resources"] as? [String] ?? [] }
        var detail: [String: Any] { event["detail"] as? [String: Any] ?? [:] }
        var status: String? { (detail["state"] as? [String: Any])?["status"] as? String }
        var previous: String? { (detail["previous-state"] as? [String: Any])?["status"] as? String }
        var accepted: Bool { (200..<300).contains(answered) }
    }

    /// What a killed or stopped build of `instances` may have left on the host: runc containers,
    /// mounts, cgroups, instance folders and processes (a `runc exec`, the step) that name them.
    func leftovers(of instances: Set<String>) throws -> [String] {
        var found: [String] = []
        let containers = try shell("runc --root \(Self.runcRoot) list -q 2>/dev/null; true", includeStandardError: false).output
        found += containers.split(separator: "\n").map(String.init).filter(instances.contains).map { "runc container \($0)" }
        let mountinfo = try String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8)
        found += mountinfo.split(separator: "\n").filter { line in instances.contains { line.contains($0) } }.map { "mount \($0)" }
        let cgroups = try shell("ls -d /sys/fs/cgroup/*/kiln/kiln-* /sys/fs/cgroup/kiln/kiln-* 2>/dev/null; true").output
        found += cgroups.split(separator: "\n").filter { path in instances.contains { path.hasSuffix("/" + $0) } }.map { "cgroup \($0)" }
        found += instances.filter { FileManager.default.fileExists(atPath: "\(lifecycleDataDirectory)/instances/\($0)") }.map {
            "instance folder \(lifecycleDataDirectory)/instances/\($0)"
        }
        for pid in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] where Int32(pid) != nil {
            guard let data = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline"), !data.isEmpty else { continue }
            let command = String(decoding: data.map { $0 == 0 ? UInt8(ascii: " ") : $0 }, as: UTF8.self)
            if instances.contains(where: { command.contains($0) }) { found.append("process \(pid): \(command)") }
        }
        return found
    }

    /// The processes holding a listening socket on `port`, as `ss` shows them.
    func listeners(_ port: Int) -> String {
        (try? shell("ss -Hltnp 'sport = :\(port)'").output) ?? ""
    }

    // MARK: Tests

    @Test(
        "kill -9 mid-build, then restart: the build is FAILED 'interrupted by restart' in BUILD, the queued build runs to AVAILABLE, the restart reaps the killed build's instance"
    )
    func killedServerRestarts() throws {
        let rig = try Rig()
        defer { rig.stop() }
        let server = try rig.startServer()
        let (infrastructure, distribution) = try rig.configurations()
        let marker = "lifecycle-\(rig.suffix)-sleeping"
        let slow = try rig.pipeline(
            "lifecycle-slow-\(rig.suffix)", commands: ["echo \(marker)", "sleep 60"], infrastructure: infrastructure,
            distribution: distribution)
        let quick = try rig.pipeline(
            "lifecycle-quick-\(rig.suffix)", commands: ["echo \(rig.suffix) > /etc/kiln-lifecycle"], infrastructure: infrastructure,
            distribution: distribution)
        let first = try rig.start(slow)
        let second = try rig.start(quick)

        // The step is running (the first bootstrap of the parent on a fresh machine takes minutes).
        let running = server.wait(seconds: 900) { server.output.contains("Stdout: \(marker)") }
        try #require(running, "the slow build reached its sleeping step:\n\(rig.logs())")
        #expect(try rig.state(second)["status"] == "PENDING", "the second build waits behind the first (maxConcurrentBuilds 1)")
        let instances = server.instances
        try #require(!instances.isEmpty, "the log names the builder instance:\n\(rig.logs())")

        kill(server.process.processIdentifier, SIGKILL)
        server.process.waitUntilExit()
        let orphaned = try leftovers(of: instances)
        #expect(
            orphaned.contains { $0.hasPrefix("runc container") },
            "the killed server's builder is still running until the restart: \(orphaned)")

        // The builder's `runc exec` outlives the server; it must not have inherited its socket.
        #expect(!loopbackAccepts(rig.port), "nothing listens on the killed server's port \(rig.port): \(listeners(rig.port))")

        let restarted = try rig.startServer()
        // Reaping runs before the restarted server listens.
        let reaped = try leftovers(of: instances)
        #expect(reaped.isEmpty, "the restart removed the killed build's container, mounts, cgroups, folder and processes: \(reaped)")
        #expect(
            instances.allSatisfy { restarted.output.contains($0) } && restarted.output.contains("left by a Kiln that stopped"),
            "the restart says what it removed:\n\(rig.logs())")

        let failed = try rig.state(first)
        #expect(failed["status"] == "FAILED", "\(failed)")
        let reason = failed["reason"] ?? ""
        #expect(reason.contains("interrupted by restart") && reason.contains("BUILD"), "\(failed)")

        let available = try rig.waitForEnd(second, seconds: 600)
        #expect(available["status"] == "AVAILABLE", "the queued build ran after the restart: \(available)\n\(rig.logs())")
        let after = try leftovers(of: instances)
        #expect(after.isEmpty, "\(after)")

        // The FAILED change the restart recorded is a state change like any other: the webhook hears it.
        let heard = rig.tries(of: first, seconds: 30) { tries in tries.contains { $0.status == "FAILED" && $0.accepted } }
        let failure = heard.first { $0.status == "FAILED" }
        #expect(
            failure?.previous == "BUILDING" && (failure?.detail["state"] as? [String: Any])?["reason"] as? String == reason,
            "the webhook got BUILDING -> FAILED with the reason; it got: \(heard.map { "\($0.previous ?? "-") -> \($0.status ?? "?")" })")
    }

    @Test(
        "Webhook answering 500 twice per event: every state change PENDING ... AVAILABLE is accepted exactly once, signed, and its retries carry the same event id"
    )
    func webhookRetries() throws {
        let rig = try Rig(failingTries: 2)
        defer { rig.stop() }
        try rig.startServer()
        let (infrastructure, distribution) = try rig.configurations()
        let pipeline = try rig.pipeline(
            "lifecycle-hook-\(rig.suffix)", commands: ["echo \(rig.suffix) > /etc/kiln-lifecycle"], infrastructure: infrastructure,
            distribution: distribution)
        let image = try rig.start(pipeline)
        let state = try rig.waitForEnd(image, seconds: 900)
        try #require(state["status"] == "AVAILABLE", "\(state)\n\(rig.logs())")

        let tries = rig.tries(of: image, seconds: 90) { tries in tries.filter(\.accepted).count >= Self.chain.count }
        // Anything sent again after an accepted try would show up now.
        sleep(5)
        let all = rig.tries.filter { $0.resources == [image] }
        #expect(all.count == tries.count, "no try after every event was accepted")
        let accepted = all.filter(\.accepted)
        #expect(accepted.count == Self.chain.count, "one accepted try per state change: \(accepted.map { $0.status ?? "?" })")

        // previous-state → state links the changes into the image's one chain of states.
        var next: [String: String] = [:]
        for event in accepted { next[event.previous ?? "-"] = event.status ?? "?" }
        var walked: [String] = []
        var current = "-"
        while let status = next[current], walked.count <= Self.chain.count {
            walked.append(status)
            current = status
        }
        #expect(walked == Self.chain, "the accepted events: \(accepted.map { "\($0.previous ?? "-") -> \($0.status ?? "?")" })")

        for event in accepted {
            #expect(event.event["detail-type"] as? String == "EC2 Image Builder Image State Change")
            #expect(event.event["source"] as? String == "aws.imagebuilder")
            #expect(event.event["account"] as? String == "000000000000" && event.event["region"] as? String == "us-east-1")
            #expect(event.resources == [image])
            #expect(event.event["id"] as? String == event.eventId, "the body's id is X-Kiln-Event-Id")
        }
        for attempt in all {
            #expect(
                attempt.headers["x-kiln-signature"] == attempt.expectedSignature,
                "HMAC-SHA256 of the body under the secret: \(attempt.body)")
            #expect(attempt.headers["x-kiln-delivery-attempt"] == "\(attempt.attempt)")
            #expect(attempt.headers["content-type"] == "application/json")
        }
        // Each event: tries 1 and 2 refused, try 3 accepted, all with one id and one body, waiting longer each time.
        for (id, event) in Dictionary(grouping: all, by: \.eventId) {
            #expect(event.map(\.answered) == [500, 500, 200], "event \(id)")
            #expect(Set(event.map(\.body)).count == 1, "every try of \(id) sends the same body")
            if event.count == 3 {
                let waits = [event[1].time - event[0].time, event[2].time - event[1].time]
                #expect(waits[0] >= 1 && waits[1] >= 3 && waits[1] > waits[0], "backoff 2 s, then 4 s: \(waits)")
            }
        }
    }

    @Test(
        "SIGTERM mid-build: the server exits within 30 s, the image ends CANCELLED naming SIGTERM and BUILD, nothing of the build is left running"
    )
    func terminatedServerCancels() throws {
        let rig = try Rig()
        defer { rig.stop() }
        let server = try rig.startServer()
        let (infrastructure, distribution) = try rig.configurations()
        let marker = "lifecycle-\(rig.suffix)-sleeping"
        let slow = try rig.pipeline(
            "lifecycle-term-\(rig.suffix)", commands: ["echo \(marker)", "sleep 60"], infrastructure: infrastructure,
            distribution: distribution)
        let image = try rig.start(slow)
        let running = server.wait(seconds: 900) { server.output.contains("Stdout: \(marker)") }
        try #require(running, "the build reached its sleeping step:\n\(rig.logs())")
        let instances = server.instances
        try #require(!instances.isEmpty, "the log names the builder instance:\n\(rig.logs())")

        let blocked = server.blockedSignals
        let sent = Date()
        kill(server.process.processIdentifier, SIGTERM)
        let exited = server.waitForExit(seconds: 30)
        let seconds = Date().timeIntervalSince(sent)
        #expect(exited, "kiln server exited within 30 s of SIGTERM (\(blocked)):\n\(rig.logs())")
        try #require(exited)
        server.process.waitUntilExit()
        #expect(
            server.process.terminationReason == .exit && server.process.terminationStatus == 0,
            "a graceful stop exits 0 after \(Int(seconds)) s:\n\(rig.logs())")
        let stopped = try leftovers(of: instances)
        #expect(stopped.isEmpty, "the stopped server removed its builder itself: \(stopped)")

        let restarted = try rig.startServer()
        #expect(!instances.contains { restarted.output.contains($0) }, "the restart had nothing of it to reap:\n\(rig.logs())")
        let cancelled = try rig.state(image)
        let reason = cancelled["reason"] ?? ""
        #expect(cancelled["status"] == "CANCELLED" && reason.contains("SIGTERM") && reason.contains("BUILD"), "\(cancelled)")
        // Recorded in the outbox before the stop, the change reaches the webhook after it.
        let heard = rig.tries(of: image, seconds: 30) { tries in tries.contains { $0.status == "CANCELLED" && $0.accepted } }
        #expect(
            heard.contains { $0.status == "CANCELLED" && $0.previous == "BUILDING" && $0.accepted },
            "the webhook got BUILDING -> CANCELLED: \(heard.map { "\($0.previous ?? "-") -> \($0.status ?? "?")" })")
    }
}
