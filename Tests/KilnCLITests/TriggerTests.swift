import Foundation
import KilnTestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// Schedules and triggers against the real parts: `kiln server` with its scheduler, a real
/// `docker-registry` whose notifications point at Kiln, the AWS CLI, and an apt repository made
/// here. The servers use the lifecycle suite's data directory (its Debian parent is cached there;
/// the suites run one at a time) and delete their pipelines at the end.
@Suite(
    "Schedules and triggers: registry pushes, parent polls, start conditions, package updates, durability", .serialized,
    .enabled(if: TestEnvironment.requiresRoot("runc", "aws", "python3", "/usr/bin/docker-registry", "dpkg-deb", "dpkg-scanpackages")))
struct TriggerTests {
    typealias Server = ServerLifecycleTests.ServerProcess
    static let eventSecret = "registry-shared-secret"

    /// A kiln.yaml for a server on `port` with the given `triggers` block.
    static func config(_ scratch: Scratch, name: String, port: Int, registry: LoopbackRegistry?, triggers: String) throws -> String {
        try scratch.write(
            name,
            """
            dataDirectory: \(lifecycleDataDirectory)
            listen: 127.0.0.1:\(port)
            credentials:
              - {accessKeyId: \(ServerLifecycleTests.accessKeyId), secretAccessKey: \(ServerLifecycleTests.secretAccessKey)}
            maxConcurrentBuilds: 1
            \(registry.map { "regions:\n  us-east-1: {registry: \"\($0.host)\"}" } ?? "")
            triggers:
            \(triggers)

            """)
    }

    /// `kiln pipeline history NAME --json` entries, newest first.
    static func history(_ pipeline: String, port: Int, scratch: Scratch) throws -> [[String: Any]] {
        let result = try Kiln.run(
            ["pipeline", "history", pipeline, "--json", "--endpoint", "http://127.0.0.1:\(port)"], in: scratch.path,
            environment: [
                "AWS_ACCESS_KEY_ID": ServerLifecycleTests.accessKeyId, "AWS_SECRET_ACCESS_KEY": ServerLifecycleTests.secretAccessKey,
            ])
        guard result.status == 0 else { throw FixtureError("kiln pipeline history failed: \(result.stderr)") }
        return (try JSONSerialization.jsonObject(with: Data(result.stdout.utf8))) as? [[String: Any]] ?? []
    }

    /// Waits up to `seconds` for a history entry that `matches`; returns it.
    static func waitForEntry(
        _ pipeline: String, port: Int, scratch: Scratch, seconds: Double, where matches: ([String: Any]) -> Bool
    ) throws -> [String: Any]? {
        let deadline = Date().addingTimeInterval(seconds)
        repeat {
            if let entry = try history(pipeline, port: port, scratch: scratch).first(where: matches) { return entry }
            usleep(200_000)
        } while Date() < deadline
        return nil
    }

    static func kilnEnvironment(_ port: Int) -> [String: String] {
        [
            "AWS_ACCESS_KEY_ID": ServerLifecycleTests.accessKeyId, "AWS_SECRET_ACCESS_KEY": ServerLifecycleTests.secretAccessKey,
            "KILN_ENDPOINT": "http://127.0.0.1:\(port)",
        ]
    }

    /// A component running `commands`, a container recipe on `parent`, and a pipeline with
    /// `schedule` (AWS CLI shorthand) on fresh configurations; returns the pipeline's ARN.
    static func pipeline(
        _ name: String, parent: String, commands: [String], schedule: String?, cli: ServerLifecycleTests.ImageBuilderCLI,
        scratch: Scratch, distribution: Bool, snsTopic: String? = nil
    ) throws -> String {
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
        let prefix = ServerLifecycleTests.arnPrefix
        try cli.require(
            "create-component", "--name", name, "--semantic-version", "1.0.0", "--platform", "Linux", "--data", "file://\(document)")
        try cli.require(
            "create-container-recipe", "--name", name, "--semantic-version", "1.0.0", "--parent-image", parent, "--container-type",
            "DOCKER", "--components", "componentArn=\(prefix):component/\(name)/x.x.x", "--target-repository",
            "service=ECR,repositoryName=triggers/\(name)", "--dockerfile-template-data",
            "FROM {{{ imagebuilder:parentImage }}}\n{{{ imagebuilder:environments }}}\n{{{ imagebuilder:components }}}")
        let infrastructure = try cli.require(
            [
                "create-infrastructure-configuration", "--name", name, "--instance-profile-name", "kiln", "--instance-types", "t3.medium",
            ] + (snsTopic.map { ["--sns-topic-arn", $0] } ?? []))
        var arguments = [
            "create-image-pipeline", "--name", name, "--container-recipe-arn", "\(prefix):container-recipe/\(name)/1.0.0",
            "--infrastructure-configuration-arn", try #require(infrastructure["infrastructureConfigurationArn"] as? String),
            "--image-tests-configuration", "imageTestsEnabled=false",
        ]
        if distribution {
            let made = try cli.require(
                "create-distribution-configuration", "--name", name, "--distributions",
                #"[{"region": "us-east-1", "containerDistributionConfiguration": {"targetRepository": {"service": "ECR", "repositoryName": "triggers/\#(name)"}}}]"#
            )
            arguments += ["--distribution-configuration-arn", try #require(made["distributionConfigurationArn"] as? String)]
        }
        if let schedule { arguments += ["--schedule", schedule] }
        let made = try cli.require(arguments)
        return try #require(made["imagePipelineArn"] as? String, "\(made)")
    }

    /// Deletes what `pipeline` made, so later servers on the shared data directory see none of it.
    static func cleanUp(_ name: String, cli: ServerLifecycleTests.ImageBuilderCLI) {
        let prefix = ServerLifecycleTests.arnPrefix
        for arguments in [
            ["delete-image-pipeline", "--image-pipeline-arn", "\(prefix):image-pipeline/\(name)"],
            ["delete-distribution-configuration", "--distribution-configuration-arn", "\(prefix):distribution-configuration/\(name)"],
            [
                "delete-infrastructure-configuration", "--infrastructure-configuration-arn",
                "\(prefix):infrastructure-configuration/\(name)",
            ],
            ["delete-container-recipe", "--container-recipe-arn", "\(prefix):container-recipe/\(name)/1.0.0"],
        ] {
            _ = try? cli.require(arguments)
        }
    }

    static func waitForEnd(_ image: String, cli: ServerLifecycleTests.ImageBuilderCLI, seconds: Double) throws -> String {
        let deadline = Date().addingTimeInterval(seconds)
        var status = ""
        repeat {
            let got = try cli.require("get-image", "--image-build-version-arn", image)
            status = ((got["image"] as? [String: Any])?["state"] as? [String: Any])?["status"] as? String ?? ""
            if ["AVAILABLE", "FAILED", "CANCELLED"].contains(status) { break }
            sleep(2)
        } while Date() < deadline
        return status
    }

    @Test(
        "Registry pushes start the pipeline within 5 s, a pinned parent's fire builds nothing and says why, an event survives kill -9 before its build, polling finds a moved tag"
    )
    func registryPushesAndPolls() throws {
        let scratch = Scratch("kiln-triggers")
        defer { scratch.remove() }
        let suffix = String(UUID().uuidString.lowercased().prefix(8))
        let name = "triggers-\(suffix)"
        let port = freeLoopbackPort()
        let registry = try LoopbackRegistry(
            notify: (url: "http://127.0.0.1:\(port)/kiln/events/registry", header: "Authorization", value: "Bearer \(Self.eventSecret)"))
        defer { registry.stop() }
        let parent = "\(registry.host)/base-\(suffix):latest"
        let pushConfig = try Self.config(
            scratch, name: "kiln.yaml", port: port, registry: registry,
            triggers: "  registryEvents: {secret: \(Self.eventSecret)}\n  debounce: 3s")
        let cli = ServerLifecycleTests.ImageBuilderCLI(endpoint: "http://127.0.0.1:\(port)", home: scratch.path)
        var server = try Server(config: pushConfig, port: port, log: scratch.file("server-1.log"))
        defer {
            Self.cleanUp(name, cli: cli)
            server.stop()
        }

        // The parent: Debian, bootstrapped once into the data directory, pushed under the tag.
        let bootstrap = try Kiln.run(["image", "pull", "bootstrap:debian:bookworm", "--config", pushConfig], in: scratch.path)
        try #require(bootstrap.status == 0, "\(bootstrap.stderr)")
        let pushed = try Kiln.run(["image", "push", "bootstrap/debian:bookworm", parent, "--config", pushConfig], in: scratch.path)
        try #require(pushed.status == 0, "\(pushed.stderr)")

        // Five fields are refused with the six-field form to use; six are taken, with dateNextRun.
        #expect(throws: FixtureError.self) {
            try cli.require(
                "create-image-pipeline", "--name", "five-\(suffix)", "--container-recipe-arn", "x", "--infrastructure-configuration-arn",
                "y",
                "--schedule", "scheduleExpression=cron(0 9 * * 1)")
        }
        let five = Self.errorText {
            try cli.require(
                "create-image-pipeline", "--name", "five-\(suffix)", "--container-recipe-arn",
                "\(ServerLifecycleTests.arnPrefix):container-recipe/none/1.0.0", "--infrastructure-configuration-arn",
                "\(ServerLifecycleTests.arnPrefix):infrastructure-configuration/none", "--schedule", "scheduleExpression=cron(0 9 * * 1)")
        }
        #expect(five.contains("InvalidParameterValueException") && five.contains("cron(0 9 ? * 2 *)"), "\(five)")

        let pipeline = try Self.pipeline(
            name, parent: parent, commands: ["rm -rf /etc/apt/sources.list /etc/apt/sources.list.d", "echo built > /etc/kiln-triggers"],
            schedule: "scheduleExpression=cron(0 4 ? * MON *),timezone=Europe/Berlin", cli: cli, scratch: scratch, distribution: true)
        let got = try cli.require("get-image-pipeline", "--image-pipeline-arn", pipeline)
        let nextRun = (got["imagePipeline"] as? [String: Any])?["dateNextRun"] as? String ?? ""
        #expect(
            nextRun.contains("T03:00:00") || nextRun.contains("T02:00:00"), "Mondays 04:00 in Berlin is 03:00Z (02:00Z in summer): \(got)")
        let next = try Kiln.run(["pipeline", "next", name], in: scratch.path, environment: Self.kilnEnvironment(port))
        let fires = next.stdout.split(separator: "\n").filter { $0.contains("T03:00:00Z") || $0.contains("T02:00:00Z") }
        #expect(next.status == 0 && fires.count == 5 && next.stdout.contains("Europe/Berlin"), "\(next.stdout)\(next.stderr)")

        // The first image, started by hand.
        let first = try #require(
            try cli.require("start-image-pipeline-execution", "--image-pipeline-arn", pipeline)["imageBuildVersionArn"] as? String)
        #expect(try Self.waitForEnd(first, cli: cli, seconds: 600) == "AVAILABLE", "\(server.output.suffix(4000))")

        // A fire now: the parent is where it was and nothing else moved, so nothing builds, and the history says why.
        let fired = try Kiln.run(["pipeline", "fire", name], in: scratch.path, environment: Self.kilnEnvironment(port))
        #expect(fired.status == 0, "\(fired.stderr)")
        let skipped = try #require(
            try Self.waitForEntry(name, port: port, scratch: scratch, seconds: 120) { $0["outcome"] as? String == "skipped" },
            "\(server.output.suffix(4000))")
        let reason = skipped["reason"] as? String ?? ""
        #expect(reason.contains("no dependency updates since \(first)"), "\(reason)")
        let resolved = skipped["resolved"] as? [String] ?? []
        #expect(resolved.contains { $0.hasPrefix("parent \(parent) = sha256:") }, "\(resolved)")
        #expect(resolved.contains { $0.hasPrefix("component \(ServerLifecycleTests.arnPrefix):component/\(name)/1.0.0/1") }, "\(resolved)")
        let text = try Kiln.run(["pipeline", "history", name], in: scratch.path, environment: Self.kilnEnvironment(port))
        #expect(text.stdout.contains("why: no dependency updates"), "\(text.stdout)")

        // A push of a new parent under the tag: the registry tells Kiln, and the build starts within 5 s.
        let firstRecord = try Kiln.run(["images", "show", first], in: scratch.path, environment: Self.kilnEnvironment(port))
        let builtName = try #require(
            ((try? JSONSerialization.jsonObject(with: Data(firstRecord.stdout.utf8))) as? [String: Any])?["localName"] as? String,
            "\(firstRecord.stdout)\(firstRecord.stderr)")
        let pushedAt = Date()
        let moved = try Kiln.run(["image", "push", builtName, parent, "--config", pushConfig], in: scratch.path)
        try #require(moved.status == 0, "\(moved.stderr)")
        let started = try #require(
            try Self.waitForEntry(name, port: port, scratch: scratch, seconds: 30) {
                $0["trigger"] as? String == "registry-push" && $0["outcome"] as? String == "started"
            }, "\(server.output.suffix(4000))")
        let latency = Date().timeIntervalSince(pushedAt)
        #expect(latency < 5, "started \(latency) s after the push finished (3 s of it the debounce window)")
        let second = try #require(started["imageArn"] as? String)
        #expect(try Self.waitForEnd(second, cli: cli, seconds: 600) == "AVAILABLE", "\(server.output.suffix(4000))")
        let image = try cli.require("get-image", "--image-build-version-arn", second)
        #expect(
            ((image["image"] as? [String: Any])?["buildType"] as? String) == "SCHEDULED", "an automated start is SCHEDULED: \(image)")

        // Durability: the event is stored, then the server is killed inside the debounce window; after the restart it builds.
        let secondRecord = try Kiln.run(["images", "show", second], in: scratch.path, environment: Self.kilnEnvironment(port))
        let secondName = try #require(
            ((try? JSONSerialization.jsonObject(with: Data(secondRecord.stdout.utf8))) as? [String: Any])?["localName"] as? String)
        let stored = server.output.components(separatedBy: "stored for \(name)").count
        let startsBefore = server.output.components(separatedBy: ": started arn").count
        let again = try Kiln.run(["image", "push", secondName, parent, "--config", pushConfig], in: scratch.path)
        try #require(again.status == 0, "\(again.stderr)")
        #expect(server.wait(seconds: 10) { server.output.components(separatedBy: "stored for \(name)").count > stored })
        kill(server.process.processIdentifier, SIGKILL)
        server.process.waitUntilExit()
        #expect(server.output.components(separatedBy: ": started arn").count == startsBefore, "killed before the build started")
        server = try Server(config: pushConfig, port: port, log: scratch.file("server-2.log"))
        let recovered = try #require(
            try Self.waitForEntry(name, port: port, scratch: scratch, seconds: 30) {
                $0["trigger"] as? String == "registry-push" && $0["outcome"] as? String == "started" && $0["imageArn"] as? String != second
            }, "\(server.output.suffix(4000))")
        let third = try #require(recovered["imageArn"] as? String)
        #expect(try Self.waitForEnd(third, cli: cli, seconds: 600) == "AVAILABLE", "\(server.output.suffix(4000))")
        server.stop()

        // Polling instead of notifications: a HEAD every second sees the tag move.
        let pollConfig = try Self.config(
            scratch, name: "kiln-poll.yaml", port: port, registry: registry, triggers: "  parentPollInterval: 1s\n  debounce: 1s")
        server = try Server(config: pollConfig, port: port, log: scratch.file("server-3.log"))
        #expect(server.wait(seconds: 20) { server.output.contains("parent poll: \(parent) is sha256:") }, "\(server.output.suffix(3000))")
        let polledAt = Date()
        let back = try Kiln.run(["image", "push", builtName, parent, "--config", pollConfig], in: scratch.path)
        try #require(back.status == 0, "\(back.stderr)")
        let polled = try #require(
            try Self.waitForEntry(name, port: port, scratch: scratch, seconds: 30) {
                $0["trigger"] as? String == "parent-poll" && $0["outcome"] as? String == "started"
            }, "\(server.output.suffix(4000))")
        #expect(Date().timeIntervalSince(polledAt) < 5, "1 s polls and a 1 s debounce window")
        let fourth = try #require(polled["imageArn"] as? String)
        #expect(try Self.waitForEnd(fourth, cli: cli, seconds: 600) == "AVAILABLE", "\(server.output.suffix(4000))")
    }

    @Test("A package check on its own schedule finds a newer version in the image's apt source, builds, and the new image holds it")
    func packageUpdates() throws {
        let scratch = Scratch("kiln-triggers")
        defer { scratch.remove() }
        let suffix = String(UUID().uuidString.lowercased().prefix(8))
        let name = "packages-\(suffix)"
        let root = scratch.path + "/apt", repository = root + "/repo"
        try FileManager.default.createDirectory(atPath: repository, withIntermediateDirectories: true)
        func publish(_ version: String) throws {
            let package = "\(root)/kiln-hello-\(version)"
            try FileManager.default.createDirectory(atPath: package + "/DEBIAN", withIntermediateDirectories: true)
            try FileManager.default.createDirectory(atPath: package + "/usr/share/kiln-hello", withIntermediateDirectories: true)
            try
                "Package: kiln-hello\nVersion: \(version)\nArchitecture: all\nMaintainer: Kiln Tests <tests@kiln.invalid>\nDescription: trigger tests\n"
                .write(toFile: package + "/DEBIAN/control", atomically: true, encoding: .utf8)
            try "\(version)\n".write(toFile: package + "/usr/share/kiln-hello/version", atomically: true, encoding: .utf8)
            let made = try shell(
                """
                chmod -R u=rwX,go=rX \(package) && dpkg-deb --root-owner-group -Zgzip --build \(package) \(repository)/kiln-hello_\(version)_all.deb \
                && cd \(repository) && dpkg-scanpackages --multiversion . /dev/null > \(root)/Packages.new 2>/dev/null \
                && mv \(root)/Packages.new \(repository)/Packages && grep -c '^Version: \(version)$' Packages
                """)
            try #require(made.status == 0, "publishing kiln-hello \(version): \(made.output)")
        }
        try publish("1.0")
        // Builders reach a host service on 0.0.0.0 as host.kiln.internal.
        let apt = try LoopbackServer(
            executable: "python3", arguments: { ["-m", "http.server", String($0), "--bind", "0.0.0.0", "--directory", repository] })
        defer { apt.stop() }
        let port = freeLoopbackPort()
        let config = try Self.config(
            scratch, name: "kiln.yaml", port: port, registry: nil,
            triggers: "  packageChecks:\n    - {pipeline: \(name), schedule: \"cron(* * * * ? *)\"}")
        let cli = ServerLifecycleTests.ImageBuilderCLI(endpoint: "http://127.0.0.1:\(port)", home: scratch.path)
        let server = try Server(config: config, port: port, log: scratch.file("server.log"))
        defer {
            Self.cleanUp(name, cli: cli)
            server.stop()
        }
        let pipeline = try Self.pipeline(
            name, parent: "bootstrap:debian:bookworm",
            commands: [
                "set -e", "rm -rf /etc/apt/sources.list /etc/apt/sources.list.d/*",
                "echo 'deb [trusted=yes] http://host.kiln.internal:\(apt.port)/ ./' > /etc/apt/sources.list.d/kiln-test.list",
                "apt-get update", "DEBIAN_FRONTEND=noninteractive apt-get install -y kiln-hello",
            ], schedule: nil, cli: cli, scratch: scratch, distribution: false)
        let first = try #require(
            try cli.require("start-image-pipeline-execution", "--image-pipeline-arn", pipeline)["imageBuildVersionArn"] as? String)
        #expect(try Self.waitForEnd(first, cli: cli, seconds: 600) == "AVAILABLE", "\(server.output.suffix(4000))")
        func helloVersion(_ image: String) throws -> String? {
            let listed = try cli.require("list-image-packages", "--image-build-version-arn", image)
            let packages = listed["imagePackageList"] as? [[String: Any]] ?? []
            return packages.first { $0["packageName"] as? String == "kiln-hello" }?["packageVersion"] as? String
        }
        #expect(try helloVersion(first) == "1.0")

        try publish("1.1")
        let started = try #require(
            try Self.waitForEntry(name, port: port, scratch: scratch, seconds: 240) {
                $0["trigger"] as? String == "package-check" && $0["outcome"] as? String == "started"
            }, "\(server.output.suffix(4000))")
        let packages = started["packages"] as? [[String: Any]] ?? []
        #expect(
            packages.contains {
                $0["name"] as? String == "kiln-hello" && $0["installed"] as? String == "1.0" && $0["candidate"] as? String == "1.1"
            },
            "the build records which package and versions triggered it: \(started)")
        let second = try #require(started["imageArn"] as? String)
        #expect(try Self.waitForEnd(second, cli: cli, seconds: 600) == "AVAILABLE", "\(server.output.suffix(4000))")
        #expect(try helloVersion(second) == "1.1", "the rebuilt image holds the new version")
        let shown = try Kiln.run(["images", "show", second], in: scratch.path, environment: Self.kilnEnvironment(port))
        #expect(
            shown.stdout.contains("\"kind\" : \"package-check\"") || shown.stdout.contains("\"kind\":\"package-check\""), "\(shown.stdout)")
    }

    @Test(
        "autoDisablePolicy: two scheduled failures in a row disable the pipeline, a webhook gets 'Automatically Disabled', and the next fire is skipped"
    )
    func autoDisable() throws {
        let scratch = Scratch("kiln-triggers")
        defer { scratch.remove() }
        let suffix = String(UUID().uuidString.lowercased().prefix(8))
        let name = "disable-\(suffix)"
        let record = scratch.file("webhook.jsonl")
        _ = FileManager.default.createFile(atPath: record, contents: nil)
        let receiver = try LoopbackServer(
            executable: "python3",
            arguments: { [ServerLifecycleTests.receiverScript, "\($0)", record, ServerLifecycleTests.webhookSecret, "0"] })
        defer { receiver.stop() }
        let port = freeLoopbackPort()
        let config = try Self.config(
            scratch, name: "kiln.yaml", port: port, registry: nil,
            triggers:
                "  debounce: 1s\nwebhooks:\n  - {name: ops-\(suffix), url: \"\(receiver.url)/hook\", secret: \(ServerLifecycleTests.webhookSecret)}"
        )
        let cli = ServerLifecycleTests.ImageBuilderCLI(endpoint: "http://127.0.0.1:\(port)", home: scratch.path)
        let server = try Server(config: config, port: port, log: scratch.file("server.log"))
        defer {
            Self.cleanUp(name, cli: cli)
            server.stop()
        }
        let pipeline = try Self.pipeline(
            name, parent: "bootstrap:debian:bookworm", commands: ["echo failing on purpose", "exit 3"],
            schedule:
                "scheduleExpression=cron(0 4 1 1 ? 2199),pipelineExecutionStartCondition=EXPRESSION_MATCH_ONLY,autoDisablePolicy={failureCount=2}",
            cli: cli, scratch: scratch, distribution: false, snsTopic: "arn:aws:sns:us-east-1:000000000000:ops-\(suffix)")
        let environment = Self.kilnEnvironment(port)
        for round in 1...2 {
            let fired = try Kiln.run(["pipeline", "fire", name], in: scratch.path, environment: environment)
            try #require(fired.status == 0, "\(fired.stderr)")
            let started = try #require(
                try Self.waitForEntry(name, port: port, scratch: scratch, seconds: 30) {
                    $0["outcome"] as? String == "started" && $0["imageStatus"] as? String == "FAILED"
                        && (try? Self.history(name, port: port, scratch: scratch).filter { $0["outcome"] as? String == "started" }.count)
                            == round
                }, "round \(round): \(server.output.suffix(4000))")
            #expect(started["trigger"] as? String == "schedule")
        }
        let disabled = try Self.waitForEntry(name, port: port, scratch: scratch, seconds: 30) {
            ($0["reason"] as? String)?.contains("DISABLED by its autoDisablePolicy: 2 automated build(s) failed in a row") == true
        }
        #expect(disabled != nil, "\(server.output.suffix(4000))")
        let got = try cli.require("get-image-pipeline", "--image-pipeline-arn", pipeline)
        let document = got["imagePipeline"] as? [String: Any] ?? [:]
        #expect(document["status"] as? String == "DISABLED" && document["dateNextRun"] == nil, "\(document)")
        #expect(document["consecutiveFailures"] as? Int == 2, "\(document)")

        let deadline = Date().addingTimeInterval(30)
        var event: [String: Any]?
        repeat {
            let lines = ((try? String(contentsOfFile: record, encoding: .utf8)) ?? "").split(separator: "\n")
            for line in lines {
                guard let entry = (try? JSONSerialization.jsonObject(with: Data(line.utf8))) as? [String: Any],
                    let body = entry["body"] as? String,
                    let parsed = (try? JSONSerialization.jsonObject(with: Data(body.utf8))) as? [String: Any],
                    parsed["detail-type"] as? String == "EC2 Image Builder Image Pipeline Automatically Disabled"
                else { continue }
                event = parsed
                #expect(entry["expectedSignature"] as? String != nil)
            }
            if event == nil { usleep(250_000) }
        } while event == nil && Date() < deadline
        #expect((event?["resources"] as? [String]) == [pipeline], "\(String(describing: event))")

        let fired = try Kiln.run(["pipeline", "fire", name], in: scratch.path, environment: environment)
        #expect(fired.status == 0)
        let skipped = try Self.waitForEntry(name, port: port, scratch: scratch, seconds: 30) {
            $0["reason"] as? String == "the pipeline is DISABLED"
        }
        #expect(skipped != nil, "a fire of a DISABLED pipeline is skipped and says so")
    }

    /// The AWS CLI's error text for a call expected to fail.
    static func errorText(_ body: () throws -> Any) -> String {
        do {
            _ = try body()
            return "no error"
        } catch {
            return "\(error)"
        }
    }
}
