import Foundation
import KilnTestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

@Suite(
    "kiln apply, pipeline start, images, logs and cost against a kiln server (--endpoint)", .serialized,
    .enabled(if: TestEnvironment.requiresRoot("/usr/bin/runc", "/usr/bin/docker-registry", "aws")))
struct RemoteCommandTests {
    @Test(
        "apply is idempotent (created, unchanged, updated; a changed recipe is refused); a started pipeline is AVAILABLE; images, logs and cost read the server"
    )
    func applyAndStart() throws {
        let scratch = Scratch("kiln-remote")
        let registry = try LoopbackRegistry()
        defer {
            registry.stop()
            scratch.remove()
        }
        let suffix = String(UUID().uuidString.prefix(8)).lowercased()
        let port = freeLoopbackPort()
        let config = try scratch.write(
            "kiln.yaml",
            """
            dataDirectory: /var/tmp/kiln-cli-instances
            listen: 127.0.0.1:\(port)
            credentials:
              - {accessKeyId: AKIAKILNREMOTE, secretAccessKey: remote-secret}
            regions:
              us-east-1: {registry: "\(registry.host)", insecure: true}
            """)
        _ = try scratch.write(
            "hello.yaml",
            """
            name: hello
            schemaVersion: 1.0
            phases:
              - name: build
                steps:
                  - name: Hello
                    action: ExecuteBash
                    inputs:
                      commands: ["echo remote > /etc/kiln-remote"]
              - name: test
                steps:
                  - name: Check
                    action: ExecuteBash
                    inputs:
                      commands: ["grep -q remote /etc/kiln-remote"]
            """)
        func definitions(instanceType: String, parent: String = "bootstrap:debian:bookworm") throws {
            _ = try scratch.write(
                "pipeline.yaml",
                """
                components:
                  - {name: remote-hello-\(suffix), semanticVersion: 1.0.0, platform: Linux, uri: hello.yaml}
                containerRecipes:
                  - name: remote-web-\(suffix)
                    semanticVersion: 1.0.0
                    parentImage: \(parent)
                    components: [{componentArn: remote-hello-\(suffix)/1.x.x}]
                    targetRepository: {service: ECR, repositoryName: team/remote-\(suffix)}
                    dockerfileTemplateData: |
                      FROM {{{ imagebuilder:parentImage }}}
                      {{{ imagebuilder:environments }}}
                      {{{ imagebuilder:components }}}
                infrastructureConfigurations:
                  - {name: remote-infra-\(suffix), instanceTypes: [\(instanceType)]}
                distributionConfigurations:
                  - name: remote-dist-\(suffix)
                    distributions:
                      - region: us-east-1
                        containerDistributionConfiguration: {targetRepository: {service: ECR, repositoryName: team/remote-\(suffix)}}
                imagePipelines:
                  - name: remote-pipe-\(suffix)
                    containerRecipeArn: remote-web-\(suffix)/1.0.0
                    infrastructureConfigurationArn: remote-infra-\(suffix)
                    distributionConfigurationArn: remote-dist-\(suffix)
                """)
        }
        let server = Process()
        server.executableURL = URL(fileURLWithPath: Kiln.binary)
        server.arguments = ["server", "--config", config]
        let log = scratch.path + "/server.log"
        FileManager.default.createFile(atPath: log, contents: nil)
        server.standardOutput = try FileHandle(forWritingTo: URL(fileURLWithPath: log))
        server.standardError = server.standardOutput
        try server.run()
        defer {
            kill(server.processIdentifier, SIGTERM)
            server.waitUntilExit()
        }
        var waited = 0
        while !loopbackAccepts(port), waited < 300, server.isRunning {
            usleep(100_000)
            waited += 1
        }
        try #require(loopbackAccepts(port), "the server listens: \((try? String(contentsOfFile: log, encoding: .utf8)) ?? "")")
        let remote = ["--config", config, "--endpoint", "http://127.0.0.1:\(port)"]

        try definitions(instanceType: "t3.small")
        let first = try Kiln.run(["apply", "-f", "pipeline.yaml"] + remote, in: scratch.path)
        #expect(first.status == 0, "\(first.stdout)\(first.stderr)")
        #expect(first.stdout.split(separator: "\n").filter { $0.contains(": created (") }.count == 5, "\(first.stdout)")
        let again = try Kiln.run(["apply", "-f", "pipeline.yaml"] + remote, in: scratch.path)
        #expect(again.status == 0 && again.stdout.split(separator: "\n").allSatisfy { $0.contains(": unchanged (") }, "\(again.stdout)")
        try definitions(instanceType: "t3.medium")
        let changed = try Kiln.run(["apply", "-f", "pipeline.yaml"] + remote, in: scratch.path)
        #expect(changed.stdout.contains("infrastructure configuration remote-infra-\(suffix): updated"), "\(changed.stdout)")
        #expect(changed.stdout.contains("container recipe remote-web-\(suffix) 1.0.0: unchanged"), "\(changed.stdout)")
        try definitions(instanceType: "t3.medium", parent: "bootstrap:debian:trixie")
        let refused = try Kiln.run(["apply", "-f", "pipeline.yaml"] + remote, in: scratch.path)
        #expect(refused.status != 0 && refused.stderr.contains("raise its semanticVersion"), "\(refused.stdout)\(refused.stderr)")

        let started = try Kiln.run(["pipeline", "start", "remote-pipe-\(suffix)", "--wait"] + remote, in: scratch.path)
        let image = started.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(started.status == 0, "\(started.stdout)\(started.stderr)\n\((try? String(contentsOfFile: log, encoding: .utf8)) ?? "")")
        #expect(image.hasSuffix(":image/remote-web-\(suffix)/1.0.0/1"), "\(started.stdout)")
        #expect(started.stderr.contains("AVAILABLE"), "--wait follows the log: \(started.stderr)")

        let pipelineState = try shell(
            "AWS_ACCESS_KEY_ID=AKIAKILNREMOTE AWS_SECRET_ACCESS_KEY=remote-secret AWS_DEFAULT_REGION=us-east-1 aws imagebuilder get-image-pipeline --endpoint-url http://127.0.0.1:\(port) --image-pipeline-arn arn:aws:imagebuilder:us-east-1:000000000000:image-pipeline/remote-pipe-\(suffix) --query 'imagePipeline.[status,lastRunStatus,consecutiveFailures]' --output text"
        ).output
        #expect(pipelineState.split(whereSeparator: \.isWhitespace) == ["ENABLED", "AVAILABLE", "0"], "\(pipelineState)")

        let listed = try Kiln.run(["images"] + remote, in: scratch.path)
        #expect(listed.stdout.contains("remote-web-\(suffix)/1.0.0/1"), "\(listed.stdout)")
        #expect(
            listed.stdout.split(separator: "\n").first { $0.hasPrefix("remote-web-\(suffix)/1.0.0/1 ") }?.contains("AVAILABLE") == true)
        let logs = try Kiln.run(["logs", image] + remote, in: scratch.path)
        #expect(logs.status == 0 && logs.stdout.contains("TEST:") && logs.stdout.contains("AVAILABLE"), "\(logs.stdout)\(logs.stderr)")
        let cost = try Kiln.run(["cost", "--image", image] + remote, in: scratch.path)
        #expect(
            cost.status == 0 && cost.stdout.contains("builder t3.medium"), "the server's pricing of the image: \(cost.stdout)\(cost.stderr)"
        )

        // Only /healthz and /metrics answer unsigned; the metrics count the store's images.
        let health = try shell("curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:\(port)/healthz").output
        #expect(health == "200")
        let metrics = try shell("curl -s http://127.0.0.1:\(port)/metrics").output
        #expect(
            metrics.contains("kiln_images{state=\"AVAILABLE\"}") && metrics.contains("kiln_build_queue_depth"), "\(metrics.prefix(2000))")
        #expect(metrics.contains("kiln_stage_duration_seconds_bucket"), "stage durations of the build: \(metrics.prefix(3000))")
        let unsigned = try shell("curl -s -w ' %{http_code}' http://127.0.0.1:\(port)/kiln/records").output
        #expect(unsigned.hasSuffix(" 403") && unsigned.contains("MissingAuthenticationTokenException"), "\(unsigned)")

        let badKey = try scratch.write(
            "other.yaml", "credentials:\n  - {accessKeyId: AKIAKILNREMOTE, secretAccessKey: wrong}\n")
        let refusedKey = try Kiln.run(["images", "--config", badKey, "--endpoint", "http://127.0.0.1:\(port)"], in: scratch.path)
        #expect(refusedKey.status != 0 && refusedKey.stderr.contains("InvalidSignatureException"), "\(refusedKey.stderr)")
        let noServer = try Kiln.run(["apply", "-f", "pipeline.yaml", "--config", config], in: scratch.path)
        #expect(noServer.status != 0 && noServer.stderr.contains("--endpoint"), "\(noServer.stderr)")
    }
}
