import Foundation
import KilnTestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

@Suite(
    "kiln build: pipelines end to end on runc, with two registries as regions", .serialized,
    .enabled(if: TestEnvironment.requiresRoot("/usr/bin/runc")))
struct BuildCommandTests {
    /// A pipeline whose components write, check and test /etc/kiln-app; `validate` and `test`
    /// are the commands of those phases.
    func project(
        _ scratch: Scratch, regions: (LoopbackRegistry, LoopbackRegistry), validate: String = "test -s /etc/kiln-app",
        test: String = "grep -q ready /etc/kiln-app"
    ) throws -> String {
        try FileManager.default.createDirectory(atPath: scratch.path + "/files", withIntermediateDirectories: true)
        _ = try scratch.write("files/motd", "built by kiln\n")
        _ = try scratch.write(
            "app.yaml",
            """
            name: App
            schemaVersion: 1.0
            phases:
              - name: build
                steps:
                  - name: Write
                    action: ExecuteBash
                    inputs:
                      commands: ["echo ready > /etc/kiln-app"]
              - name: validate
                steps:
                  - name: Check
                    action: ExecuteBash
                    inputs:
                      commands: ["\(validate)"]
              - name: test
                steps:
                  - name: Ready
                    action: ExecuteBash
                    inputs:
                      commands: ["test -f /etc/motd.kiln", "\(test)"]
              - name: container-host-test
                steps:
                  - name: FromTheHost
                    action: ExecuteBash
                    inputs:
                      commands:
                        - test ! -e /.kiln/init
                        - echo "seen-from-host uid=$(id -u) $KILN_IMAGE $KILN_IMAGE_DIGEST"
                        - echo "layout-manifest sha256:$(skopeo inspect --raw oci:$KILN_IMAGE_LAYOUT:latest | sha256sum | cut -d' ' -f1)"
                        - if ls \(sharedDataDirectory) >/dev/null 2>&1; then echo data-directory-readable; fi
                        - setsid sleep 309 >/dev/null 2>&1 < /dev/null &
            """)
        _ = try scratch.write(
            "kiln.yaml",
            """
            dataDirectory: \(sharedDataDirectory)
            regions:
              north: {registry: "\(regions.0.host)"}
              south: {registry: "\(regions.1.host)", repositoryPrefix: mirror}
            """)
        return try scratch.write(
            "pipeline.yaml",
            """
            components:
              - {name: app, semanticVersion: 1.0.0, platform: Linux, uri: app.yaml}
            containerRecipes:
              - name: app-image
                semanticVersion: 2.1.0
                parentImage: bootstrap:debian:bookworm
                components: [{componentArn: app/1.x.x}]
                dockerfileTemplateData: |
                  FROM {{{ imagebuilder:parentImage }}}
                  {{{ imagebuilder:environments }}}
                  {{{ imagebuilder:components }}}
                  COPY files/motd /etc/motd.kiln
                  ENV KILN_APP=1
                  CMD ["cat", "/etc/kiln-app"]
            infrastructureConfigurations:
              - {name: builders, instanceTypes: [t3.small], instanceProfileName: kiln}
            distributionConfigurations:
              - name: both
                distributions:
                  - {region: north, containerDistributionConfiguration: {targetRepository: {repositoryName: app}, containerTags: [stable]}}
                  - {region: south, containerDistributionConfiguration: {targetRepository: {repositoryName: app}}}
            imagePipelines:
              - {name: app-pipeline, containerRecipeArn: app-image/2.x.x, infrastructureConfigurationArn: builders, distributionConfigurationArn: both}
            """)
    }

    func record(_ result: Kiln.Result) throws -> [String: Any] {
        try #require(
            (try? JSONSerialization.jsonObject(with: Data(result.stdout.utf8))) as? [String: Any], "\(result.stdout)\n\(result.stderr)")
    }

    @Test("A pipeline reaches AVAILABLE in two regions; skopeo sees the recorded digest in both, with the recipe's settings")
    func available() throws {
        let regions = (try LoopbackRegistry(), try LoopbackRegistry())
        defer {
            regions.0.stop()
            regions.1.stop()
        }
        let scratch = Scratch("kiln-cli-test")
        defer { scratch.remove() }
        let pipeline = try project(scratch, regions: regions)
        let built = try Kiln.run(["build", "-f", pipeline, "--no-cache"], in: scratch.path)
        #expect(built.status == 0, "\(built.stderr)")
        let image = try record(built)
        #expect(image["status"] as? String == "AVAILABLE")
        #expect((image["arn"] as? String)?.hasPrefix("arn:aws:imagebuilder:us-east-1:000000000000:image/app-image/2.1.0/") == true)
        let digest = try #require(image["digest"] as? String)
        for reference in ["\(regions.0.host)/app:stable", "\(regions.1.host)/mirror/app:2.1.0"] {
            #expect(
                try Kiln.shell("skopeo inspect --tls-verify=false --raw docker://\(reference) | sha256sum | cut -d' ' -f1") == String(
                    digest.dropFirst(7)) + "\n", "\(reference)")
        }
        let config = try Kiln.shell("skopeo inspect --tls-verify=false --config docker://\(regions.0.host)/app:stable")
        #expect(
            config.contains("KILN_APP=1") && config.contains("/etc/kiln-app") && config.contains("kiln component app/1.0.0"), "\(config)")
        for line in ["BUILDING", "TESTING", "DISTRIBUTING", "AVAILABLE", "TEST: test instance"] {
            #expect(built.stderr.contains(line), "progress shows \(line)")
        }
        let listed = try Kiln.run(["images"], in: scratch.path)
        #expect(listed.stdout.contains("app-image/2.1.0/") && listed.stdout.contains("AVAILABLE"))
        let version = "app-image/2.1.0/\(try #require(image["build"] as? Int))"
        #expect(try junit(image).contains("component App (container-host-test)"))
        let logs = try Kiln.run(["logs", version, "--follow"], in: scratch.path)
        #expect(
            logs.status == 0 && logs.stdout.contains("Step Write") && logs.stdout.contains("Step Ready"),
            "build and test logs: \(logs.stdout)")
        // container-host-test ran on the host (no /.kiln/init) as nobody, with the image as a read-only OCI layout.
        #expect(built.stderr.contains("seen-from-host uid=65534 oci:/run/kiln-host-test/kiln-host-test-image-"), "\(built.stderr)")
        #expect(built.stderr.contains(":latest \(digest)"), "told the image's digest")
        #expect(built.stderr.contains("layout-manifest \(digest)"), "the layout holds the built image")
        #expect(!built.stderr.contains("data-directory-readable"), "the data directory is out of its reach")
        #expect(
            try Kiln.shell("pgrep -u 65534 -f 'sleep 309' || true").isEmpty,
            "what container-host-test left running was killed before Kiln read its folder")
    }

    @Test("A failing validate step fails the image in BUILD and names the step; nothing is distributed")
    func failingValidate() throws {
        let regions = (try LoopbackRegistry(), try LoopbackRegistry())
        defer {
            regions.0.stop()
            regions.1.stop()
        }
        let scratch = Scratch("kiln-cli-test")
        defer { scratch.remove() }
        let pipeline = try project(scratch, regions: regions, validate: "test -e /etc/never-there")
        let built = try Kiln.run(["build", "-f", pipeline], in: scratch.path)
        #expect(built.status == 1)
        let image = try record(built)
        let failure = try #require(image["failure"] as? [String: Any])
        #expect(image["status"] as? String == "FAILED" && failure["stage"] as? String == "BUILD")
        #expect(failure["step"] as? String == "App/validate/Check", "\(failure)")
        let log = try #require(failure["log"] as? String)
        let console = try String(contentsOfFile: log + "/console.log", encoding: .utf8)
        #expect(log.hasSuffix("/logs/build/01-app") && console.contains("Step Check"), "the failed component's own TOE log: \(log)")
        #expect(
            try Kiln.shell("skopeo inspect --tls-verify=false --raw docker://\(regions.0.host)/app:stable >/dev/null 2>&1 && echo found")
                == "")
    }

    @Test("A failing test fails the image in TEST, and no region receives it")
    func failingTest() throws {
        let regions = (try LoopbackRegistry(), try LoopbackRegistry())
        defer {
            regions.0.stop()
            regions.1.stop()
        }
        let scratch = Scratch("kiln-cli-test")
        defer { scratch.remove() }
        let pipeline = try project(scratch, regions: regions, test: "grep -q not-ready /etc/kiln-app")
        let built = try Kiln.run(["build", "-f", pipeline], in: scratch.path)
        #expect(built.status == 1)
        let image = try record(built)
        let failure = try #require(image["failure"] as? [String: Any])
        #expect(
            image["status"] as? String == "FAILED" && failure["stage"] as? String == "TEST"
                && failure["step"] as? String == "App/test/Ready", "\(failure)")
        for reference in ["\(regions.0.host)/app:stable", "\(regions.1.host)/mirror/app:2.1.0"] {
            #expect(
                try Kiln.shell("skopeo inspect --tls-verify=false --raw docker://\(reference) >/dev/null 2>&1 && echo found") == "",
                "\(reference)")
        }
        #expect(try Kiln.shell("mount | grep -c \(sharedDataDirectory)/instances") == "0\n", "builder and test instances are gone")
    }

    @Test(
        "A region down during distribution fails the image naming the region; retry-distribution then makes it AVAILABLE without rebuilding"
    )
    func retryDistribution() throws {
        let north = try LoopbackRegistry()
        let southDown = try LoopbackRegistry()
        southDown.stop()
        defer { north.stop() }
        let scratch = Scratch("kiln-cli-test")
        defer { scratch.remove() }
        let pipeline = try project(scratch, regions: (north, southDown))
        let built = try Kiln.run(["build", "-f", pipeline], in: scratch.path)
        #expect(built.status == 1)
        let image = try record(built)
        let failure = try #require(image["failure"] as? [String: Any])
        #expect(
            image["status"] as? String == "FAILED" && failure["stage"] as? String == "DISTRIBUTE"
                && failure["region"] as? String == "south", "\(failure)")
        #expect(built.stderr.contains("retry with kiln image retry-distribution"))

        let south = try LoopbackRegistry(port: southDown.port)
        defer { south.stop() }
        let version = "app-image/2.1.0/\(try #require(image["build"] as? Int))"
        let retried = try Kiln.run(["image", "retry-distribution", version], in: scratch.path)
        #expect(retried.status == 0, "\(retried.stderr)")
        let after = try record(retried)
        #expect(after["status"] as? String == "AVAILABLE" && after["digest"] as? String == image["digest"] as? String)
        #expect(!retried.stderr.contains("BUILDING"), "no rebuild")
        let digest = try #require(image["digest"] as? String)
        #expect(
            try Kiln.shell("skopeo inspect --tls-verify=false --raw docker://\(south.host)/mirror/app:2.1.0 | sha256sum | cut -d' ' -f1")
                == String(digest.dropFirst(7)) + "\n")
        let shown = try Kiln.run(["images", "show", version], in: scratch.path)
        #expect(shown.stdout.contains("\"status\" : \"AVAILABLE\""))
    }

    @Test(
        "An unchanged rebuild is a cache hit that starts no builder (tests still run); --no-cache builds again; with SOURCE_DATE_EPOCH two fresh builds give one digest"
    )
    func cacheAndReproducibility() throws {
        let regions = (try LoopbackRegistry(), try LoopbackRegistry())
        defer {
            regions.0.stop()
            regions.1.stop()
        }
        let scratch = Scratch("kiln-cli-test")
        defer { scratch.remove() }
        let pipeline = try project(scratch, regions: regions)
        let epoch = ["--source-date-epoch", "1700000000"]
        let first = try record(try Kiln.run(["build", "-f", pipeline, "--no-cache"] + epoch, in: scratch.path))
        let cached = try Kiln.run(["build", "-f", pipeline] + epoch, in: scratch.path)
        let hit = try record(cached)
        #expect(hit["status"] as? String == "AVAILABLE" && hit["cacheHit"] as? Bool == true)
        #expect(hit["digest"] as? String == first["digest"] as? String)
        #expect(
            cached.stderr.contains("kiln component app/1.0.0: cached, not run") && !cached.stderr.contains("BUILD: builder"),
            "no builder on a cache hit")
        #expect(hit["cachedSteps"] as? Int == 2 && hit["builtSteps"] as? Int == 0, "the component and the COPY came from the cache")
        #expect(cached.stderr.contains("TEST: test instance"), "a cache hit is still tested")

        let rebuilt = try Kiln.run(["build", "-f", pipeline, "--no-cache"] + epoch, in: scratch.path)
        #expect(rebuilt.stderr.contains("BUILD: builder"))
        #expect(
            try record(rebuilt)["digest"] as? String == first["digest"] as? String,
            "same inputs and SOURCE_DATE_EPOCH give the same image digest")

        _ = try scratch.write("files/motd", "changed \(UUID().uuidString)\n")
        let changed = try Kiln.run(["build", "-f", pipeline] + epoch, in: scratch.path)
        let changedRecord = try record(changed)
        #expect(
            changed.stderr.contains("BUILD: builder") && changed.stderr.contains("(the parent and 1 cached step(s))"),
            "a changed COPY source is a miss for the COPY only: \(changed.stderr)")
        #expect(
            changed.stderr.contains("kiln component app/1.0.0: cached, not run") && !changed.stderr.contains("Step Write"),
            "the component before it is not run again")
        #expect(changedRecord["cachedSteps"] as? Int == 1 && changedRecord["builtSteps"] as? Int == 1)
        #expect(changedRecord["digest"] as? String != first["digest"] as? String)
        func layers(_ image: [String: Any]) throws -> [String] {
            let raw = try Kiln.run(
                ["image", "inspect", "--raw", "kiln:" + (try #require(image["localName"] as? String))], in: scratch.path)
            let manifest = try #require(try JSONSerialization.jsonObject(with: Data(raw.stdout.utf8)) as? [String: Any], "\(raw.stderr)")
            return (manifest["layers"] as? [[String: Any]] ?? []).compactMap { $0["digest"] as? String }
        }
        let firstLayers = try layers(first), changedLayers = try layers(changedRecord)
        #expect(firstLayers.count == 3 && changedLayers.count == 3, "the parent, the component's layer and the COPY's layer")
        #expect(
            Array(firstLayers.prefix(2)) == Array(changedLayers.prefix(2)) && firstLayers[2] != changedLayers[2],
            "only the COPY layer differs")

        let listed = try Kiln.run(["image", "ls"], in: scratch.path), everything = try Kiln.run(["image", "ls", "--all"], in: scratch.path)
        #expect(
            !listed.stdout.contains("kiln-cache/") && everything.stdout.contains("kiln-cache/"), "the step cache is listed only with --all")
        let forgot = try Kiln.run(["image", "gc", "--build-cache"], in: scratch.path)
        #expect(forgot.status == 0 && forgot.stdout.contains("forgot"), "\(forgot.stdout)\(forgot.stderr)")
        let afterGC = try Kiln.run(["build", "-f", pipeline] + epoch, in: scratch.path)
        let rebuiltDigest = try record(afterGC)["digest"] as? String
        #expect(
            afterGC.stderr.contains("(0 step(s) cached, 2 built") && rebuiltDigest == changedRecord["digest"] as? String,
            "without the cache every step runs again, to the same digest")
    }

    @Test(
        "The cost ledger holds what was measured: instance seconds and cgroup CPU, the image's bytes per region as skopeo sees them, bytes sent; kiln cost prices them with kiln.yaml's prices"
    )
    func costLedger() throws {
        let regions = (try LoopbackRegistry(), try LoopbackRegistry())
        defer {
            regions.0.stop()
            regions.1.stop()
        }
        let scratch = Scratch("kiln-cli-test")
        defer { scratch.remove() }
        let pipeline = try project(scratch, regions: regions)
        // Round prices: $3.60/h is $0.001 a second; north is another region than home, south is home.
        let configuration = try String(contentsOfFile: scratch.path + "/kiln.yaml", encoding: .utf8)
            .replacingOccurrences(
                of: "north: {registry: \"\(regions.0.host)\"}",
                with: "north: {registry: \"\(regions.0.host)\", storagePerGBMonth: 1.5, transferPerGB: 2}")
        _ = try scratch.write(
            "kiln.yaml",
            configuration + "\nhomeRegion: south\ninstanceTypes:\n  t3.small: {pricePerHour: 3.6}\npricing: {storagePerGBMonth: 0.25}\n")
        let epoch = ["--source-date-epoch", "1700000000"]
        let built = try record(try Kiln.run(["build", "-f", pipeline, "--no-cache"] + epoch, in: scratch.path))
        let ledger = try #require(built["ledger"] as? [String: Any], "\(built)")
        let instances = try #require(ledger["instances"] as? [[String: Any]])
        // The builder; then the component tests' instance, the suites' instance and the online update check's.
        #expect(instances.map { $0["role"] as? String } == ["builder", "test", "test", "test"])
        let timings = Dictionary(
            uniqueKeysWithValues: (built["timings"] as? [[String: Any]] ?? []).map { ($0["stage"] as! String, $0["seconds"] as! Double) })
        for (run, stage) in zip(instances, ["BUILD", "TEST", "TEST", "TEST"]) {
            let seconds = try #require(run["seconds"] as? Double), cpu = try #require(run["cpuSeconds"] as? Double)
            let stageSeconds = try #require(timings[stage])
            #expect(seconds > 0 && seconds <= stageSeconds, "an instance runs within its stage: \(seconds) s vs \(timings)")
            #expect(cpu > 0 && cpu <= seconds * 2 + 0.1, "cgroup CPU is measured and at most 2 vCPUs' worth: \(cpu) s in \(seconds) s")
        }

        // What each region holds, measured with skopeo: the manifest's bytes, the config and the layers.
        let raw = try Kiln.shell("skopeo inspect --tls-verify=false --raw docker://\(regions.0.host)/app:stable")
        let manifest = try #require(try JSONSerialization.jsonObject(with: Data(raw.utf8)) as? [String: Any])
        let blobBytes = ((manifest["layers"] as? [[String: Any]] ?? []) + [manifest["config"] as! [String: Any]]).reduce(Int64(0)) {
            $0 + ($1["size"] as! NSNumber).int64Value
        }
        let stored = blobBytes + Int64(raw.utf8.count)
        let usage = try #require(ledger["regions"] as? [[String: Any]])
        #expect(usage.map { $0["region"] as? String } == ["north", "south"])
        for region in usage {
            #expect(
                (region["storedBytes"] as? NSNumber)?.int64Value == stored,
                "\(region["region"]!): stored bytes = manifest + config + layers")
            #expect(
                (region["transferredBytes"] as? NSNumber)?.int64Value == blobBytes,
                "\(region["region"]!): a fresh registry received every blob once")
        }

        let version = "app-image/2.1.0/\(try #require(built["build"] as? Int))"
        let priced = try #require(
            try JSONSerialization.jsonObject(
                with: Data(try Kiln.run(["cost", "--image", version, "--json"], in: scratch.path).stdout.utf8)) as? [String: Any])
        let seconds = instances.reduce(0.0) { $0 + ($1["seconds"] as! Double) }
        let gigabytes = Double(stored) / Double(1 << 30)
        #expect(abs((priced["instanceCost"] as! Double) - seconds * 0.001) < 1e-9, "instance time at $3.60 an hour")
        #expect(
            abs((priced["transferCost"] as! Double) - Double(blobBytes) / Double(1 << 30) * 2) < 1e-12,
            "north is charged $2/GB, the home region nothing")
        #expect(
            abs((priced["storagePerMonth"] as! Double) - gigabytes * (1.5 + 0.25)) < 1e-12,
            "north's own price and pricing's default for south")
        let text = try Kiln.run(["cost", "--image", version], in: scratch.path)
        #expect(text.status == 0 && text.stdout.contains("builder") && text.stdout.contains("north"), "\(text.stdout)\(text.stderr)")

        // A cached rebuild sends nothing (the registries have every blob) and shares the storage.
        let again = try record(try Kiln.run(["build", "-f", pipeline] + epoch, in: scratch.path))
        let againUsage = try #require((again["ledger"] as? [String: Any])?["regions"] as? [[String: Any]])
        #expect(againUsage.allSatisfy { ($0["transferredBytes"] as? NSNumber)?.int64Value == 0 }, "\(againUsage)")
        let summary = try #require(
            try JSONSerialization.jsonObject(
                with: Data(try Kiln.run(["cost", "--pipeline", "app-pipeline", "--json"], in: scratch.path).stdout.utf8)) as? [String: Any])
        let storage = try #require(summary["storage"] as? [[String: Any]])
        #expect(storage.count == 2 && storage.allSatisfy { ($0["storedBytes"] as? NSNumber)?.int64Value ?? 0 >= stored })
        let month = String(try #require(built["dateCreated"] as? String).prefix(7))
        let monthly = try Kiln.run(["cost", "--month", month], in: scratch.path)
        #expect(monthly.status == 0 && monthly.stdout.contains(version), "\(monthly.stdout)\(monthly.stderr)")
        #expect(try Kiln.run(["cost", "--month", "May"], in: scratch.path).stderr.contains("--month must look like"))
    }

    /// A pipeline file around `components` (YAML list items), `template` lines and `kilnTests`.
    func suitePipeline(_ scratch: Scratch, components: String, componentArns: [String], template: String, kilnTests: String) throws
        -> String
    {
        try scratch.write(
            "suites.yaml",
            """
            components:
            \(components)
            containerRecipes:
              - name: suites
                semanticVersion: 1.0.0
                parentImage: bootstrap:debian:bookworm
                components: [\(componentArns.map { "{componentArn: \($0)}" }.joined(separator: ", "))]
                dockerfileTemplateData: |
                  FROM {{{ imagebuilder:parentImage }}}
            \(template.split(separator: "\n").map { "      " + $0 }.joined(separator: "\n"))
            infrastructureConfigurations:
              - {name: builders, instanceTypes: [t3.small], instanceProfileName: kiln}
            distributionConfigurations:
              - name: north
                distributions:
                  - {region: north, containerDistributionConfiguration: {targetRepository: {repositoryName: suites}}}
            imagePipelines:
              - name: suites
                containerRecipeArn: suites/1.x.x
                infrastructureConfigurationArn: builders
                distributionConfigurationArn: north
                kilnTests: \(kilnTests)
            """)
    }

    func junit(_ image: [String: Any]) throws -> String {
        try String(contentsOfFile: try #require(image["testResults"] as? String), encoding: .utf8)
    }

    @Test(
        "Built-in suites: an HTTP health check passes against the image's own server; a build that leaves a world-writable file, a new SUID binary and a deleted private key fails TEST with each named in JUnit XML, and no region receives it"
    )
    func builtInSuites() throws {
        let regions = (try LoopbackRegistry(), try LoopbackRegistry())
        defer {
            regions.0.stop()
            regions.1.stop()
        }
        let scratch = Scratch("kiln-cli-test")
        defer { scratch.remove() }
        _ = try project(scratch, regions: regions)
        // A static server, so the image needs nothing installed: 200 for /ok, 404 otherwise.
        _ = try scratch.write(
            "files/serve.c",
            """
            #include <netinet/in.h>
            #include <stdlib.h>
            #include <string.h>
            #include <sys/socket.h>
            #include <unistd.h>
            int main(int argc, char **argv) {
                int server = socket(AF_INET, SOCK_STREAM, 0), one = 1;
                setsockopt(server, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
                struct sockaddr_in address = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[1]))};
                if (bind(server, (struct sockaddr *)&address, sizeof address) || listen(server, 8)) return 1;
                for (;;) {
                    int client = accept(server, 0, 0);
                    char request[1024] = {0};
                    read(client, request, sizeof request - 1);
                    const char *answer = strncmp(request, "GET /ok ", 8) == 0 ? "HTTP/1.0 200 OK\\r\\n\\r\\nok\\n" : "HTTP/1.0 404 Not Found\\r\\n\\r\\n";
                    write(client, answer, strlen(answer));
                    close(client);
                }
            }
            """)
        _ = try Kiln.shell(
            "gcc -static -O1 -o \(scratch.path)/files/serve \(scratch.path)/files/serve.c && rm \(scratch.path)/files/serve.c")
        let healthy = try suitePipeline(
            scratch, components: "  - {name: app, semanticVersion: 1.0.0, platform: Linux, uri: app.yaml}", componentArns: ["app/1.x.x"],
            template:
                "{{{ imagebuilder:environments }}}\n{{{ imagebuilder:components }}}\nCOPY files/ /opt/files/\nCMD [\"/opt/files/serve\", \"8081\"]",
            kilnTests: "{health: {httpPort: 8081, httpPath: /ok, startupSeconds: 10}}"
        )
        let passed = try Kiln.run(["build", "-f", healthy], in: scratch.path)
        let image = try record(passed)
        #expect(image["status"] as? String == "AVAILABLE", "\(passed.stderr)")
        let report = try junit(image)
        #expect(report.contains("name=\"http 127.0.0.1:8081/ok\"") && report.contains("answered HTTP/1.0 200 OK"), "\(report)")
        #expect(
            report.contains("command starts") && report.contains("was still running after 3 s"), "the server stays up: functionality passes"
        )
        #expect(report.contains("<testsuites") && report.contains("failures=\"0\""))
        let json = try #require(
            try JSONSerialization.jsonObject(
                with: try Data(
                    contentsOf: URL(fileURLWithPath: ((image["testResults"] as! NSString).deletingLastPathComponent) + "/tests.json")))
                as? [[String: Any]])
        #expect(
            Set(json.compactMap { $0["suite"] as? String }) == [
                "component App", "component App (container-host-test)", "functionality", "health", "security",
            ], "\(json)")
        #expect(json.filter { $0["suite"] as? String == "security" }.count == 4 && json.allSatisfy { $0["status"] as? String != "failed" })

        _ = try scratch.write(
            "careless.yaml",
            """
            name: Careless
            schemaVersion: 1.0
            phases:
              - name: build
                steps:
                  - name: Mess
                    action: ExecuteBash
                    inputs:
                      commands:
                        - mkdir -p /root/keys && printf -- '-----BEGIN OPENSSH PRIVATE KEY-----\\nb3BlbnNzaC1rZXktdjEAAAAA\\n-----END OPENSSH PRIVATE KEY-----\\n' > /root/keys/deploy
                        - touch /etc/open.conf && chmod 666 /etc/open.conf
                        - cp /usr/bin/env /usr/local/bin/rootenv && chmod u+s /usr/local/bin/rootenv
            """)
        let careless = try suitePipeline(
            scratch, components: "  - {name: careless, semanticVersion: 1.0.0, platform: Linux, uri: careless.yaml}",
            componentArns: ["careless/1.x.x"],
            template:
                "{{{ imagebuilder:environments }}}\n{{{ imagebuilder:components }}}\nRUN rm -rf /root/keys\nCMD [\"sh\", \"-c\", \"exit 4\"]",
            kilnTests: "{security: {pendingUpdates: false}}"
        )
        let failed = try Kiln.run(["build", "-f", careless], in: scratch.path)
        let failedImage = try record(failed)
        let failure = try #require(failedImage["failure"] as? [String: Any], "\(failed.stderr)")
        #expect(failedImage["status"] as? String == "FAILED" && failure["stage"] as? String == "TEST")
        #expect(
            failure["step"] as? String == "functionality/command starts"
                && (failure["reason"] as? String)?.contains("exited with 4") == true, "\(failure)")
        let failedReport = try junit(failedImage)
        #expect(failedReport.contains("failures=\"4\""), "\(failedReport)")
        for expected in ["/etc/open.conf", "/usr/local/bin/rootenv", "/root/keys/deploy (a private key, layer 2)"] {
            #expect(failedReport.contains(expected), "JUnit names \(expected)")
        }
        let held = try Kiln.shell(
            "skopeo inspect --tls-verify=false --raw docker://\(regions.0.host)/suites:1.0.0 | sha256sum | cut -d' ' -f1")
        #expect(
            "sha256:" + held.trimmingCharacters(in: .whitespacesAndNewlines) == image["digest"] as? String,
            "the region still holds the healthy image, not the failed one")
    }

    @Test("Ctrl-C during BUILD cancels the run: exit 130, the image is CANCELLED, the builder is gone and no region receives anything")
    func interruptCancels() throws {
        let regions = (try LoopbackRegistry(), try LoopbackRegistry())
        defer {
            regions.0.stop()
            regions.1.stop()
        }
        let scratch = Scratch("kiln-cli-test")
        defer { scratch.remove() }
        _ = try project(scratch, regions: regions)
        _ = try scratch.write(
            "slow.yaml",
            """
            name: Slow
            schemaVersion: 1.0
            phases:
              - name: build
                steps:
                  - name: Sleep
                    action: ExecuteBash
                    inputs:
                      commands: ["sleep 300"]
            """)
        let pipeline = try suitePipeline(
            scratch, components: "  - {name: slow, semanticVersion: 1.0.0, platform: Linux, uri: slow.yaml}", componentArns: ["slow/1.x.x"],
            template: "{{{ imagebuilder:environments }}}\n{{{ imagebuilder:components }}}", kilnTests: "{}"
        )
        let kiln = try RunningKiln(["build", "-f", pipeline, "--no-cache"], in: scratch.path)
        let builder = try #require(
            kiln.instance(after: "builder ", once: "Step Sleep", seconds: 90), "a builder started: \(kiln.stderr.text)")
        let stdout = kiln.interrupt()
        let process = kiln.process, collected = kiln.stderr
        #expect(process.terminationStatus == 128 + SIGINT, "\(collected.text)")
        let image = try #require(try JSONSerialization.jsonObject(with: stdout) as? [String: Any], "\(collected.text)")
        #expect(
            image["status"] as? String == "CANCELLED" && (image["failure"] as? [String: Any])?["stage"] as? String == "BUILD", "\(image)")
        #expect(collected.text.contains("interrupted; cancelling the build"))
        #expect(!FileManager.default.fileExists(atPath: "\(sharedDataDirectory)/instances/\(builder)"), "the builder's folder is removed")
        #expect(!(try Kiln.shell("runc --root /run/kiln/runc list")).contains(builder), "the builder container is gone")
        #expect(try Kiln.shell("mount | grep -c \(builder) || true") == "0\n")
        let shown = try Kiln.run(["images", "show", "suites/1.0.0/\(try #require(image["build"] as? Int))"], in: scratch.path)
        #expect(shown.stdout.contains("\"CANCELLED\""))
        #expect(
            try Kiln.shell(
                "skopeo inspect --tls-verify=false --raw docker://\(regions.0.host)/suites:1.0.0 >/dev/null 2>&1 && echo found || true")
                == "", "nothing reached the region")
    }

    @Test(
        "A component document served over https with a private CA builds; a 404 and an OS the component does not support are clear errors")
    func httpsDocumentsAndSupportedOs() throws {
        let regions = (try LoopbackRegistry(), try LoopbackRegistry())
        defer {
            regions.0.stop()
            regions.1.stop()
        }
        let scratch = Scratch("kiln-cli-test")
        defer { scratch.remove() }
        _ = try project(scratch, regions: regions)
        try FileManager.default.createDirectory(atPath: scratch.path + "/served", withIntermediateDirectories: true)
        _ = try Kiln.shell("cp \(scratch.path)/app.yaml \(scratch.path)/served/app.yaml")
        _ = try Kiln.shell(
            "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 -keyout \(scratch.path)/key.pem -out \(scratch.path)/cert.pem 2>/dev/null"
        )
        let site = scratch.path + "/served", certificate = scratch.path + "/cert.pem", key = scratch.path + "/key.pem"
        let server = try LoopbackServer(
            executable: "python3",
            arguments: { port in
                [
                    "-c",
                    """
                    import http.server, ssl, functools
                    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory="\(site)")
                    httpd = http.server.HTTPServer(("127.0.0.1", \(port)), handler)
                    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                    context.load_cert_chain("\(certificate)", "\(key)")
                    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
                    httpd.serve_forever()
                    """,
                ]
            })
        defer { server.stop() }
        let port = server.port
        let configuration = try String(contentsOfFile: scratch.path + "/kiln.yaml", encoding: .utf8)
        _ = try scratch.write(
            "kiln.yaml", configuration + "\nregistries:\n  \"127.0.0.1:\(port)\": {caCertificate: \(scratch.path)/cert.pem}\n")

        func pipeline(uri: String, supported: String) throws -> String {
            try suitePipeline(
                scratch,
                components: "  - {name: app, semanticVersion: 1.0.0, platform: Linux, uri: \"\(uri)\", supportedOsVersions: \(supported)}",
                componentArns: ["app/1.x.x"],
                template: "{{{ imagebuilder:environments }}}\n{{{ imagebuilder:components }}}\nCOPY files/motd /etc/motd.kiln",
                kilnTests: "{security: {pendingUpdates: false}}"
            )
        }
        let served = try Kiln.run(
            ["build", "-f", try pipeline(uri: "https://127.0.0.1:\(port)/app.yaml", supported: "[\"Debian GNU/Linux 12\"]")],
            in: scratch.path)
        #expect(try record(served)["status"] as? String == "AVAILABLE", "\(served.stderr)")
        #expect(
            served.stderr.contains("Step Write") || served.stderr.contains("kiln component app/1.0.0: cached"),
            "the served document ran (or its layer was cached)")

        let missing = try Kiln.run(
            ["build", "-f", try pipeline(uri: "https://127.0.0.1:\(port)/missing.yaml", supported: "[]")], in: scratch.path)
        #expect(
            missing.status == 1
                && missing.stderr.contains(
                    "component app/1.0.0: cannot download https://127.0.0.1:\(port)/missing.yaml: the server answered HTTP 404"),
            "\(missing.stderr)")

        let other = try Kiln.run(
            ["build", "-f", try pipeline(uri: "https://127.0.0.1:\(port)/app.yaml", supported: "[\"Amazon Linux 2\", \"Ubuntu 22\"]")],
            in: scratch.path)
        let failure = try #require(try record(other)["failure"] as? [String: Any])
        #expect(failure["stage"] as? String == "BUILD" && failure["step"] as? String == "app/1.0.0/supportedOsVersions", "\(failure)")
        #expect(
            (failure["reason"] as? String)?.contains("supports Amazon Linux 2, Ubuntu 22; the parent image is Debian GNU/Linux 12") == true,
            "\(failure)")
        #expect(!other.stderr.contains("BUILD: builder"), "no builder starts for an unsupported OS")
    }

    @Test(
        "An image recipe on a parent without a kernel FAILS in BUILD before any builder starts, saying how to get a machine parent"
    )
    func imageRecipeWithoutKernel() throws {
        let regions = (try LoopbackRegistry(), try LoopbackRegistry())
        defer {
            regions.0.stop()
            regions.1.stop()
        }
        let scratch = Scratch("kiln-cli-test")
        defer { scratch.remove() }
        _ = try project(scratch, regions: regions)
        let pipeline = try scratch.write(
            "machine.yaml",
            """
            components:
              - {name: app, semanticVersion: 1.0.0, platform: Linux, uri: app.yaml}
            imageRecipes:
              - {name: machine, semanticVersion: 3.0.0, parentImage: "bootstrap:debian:bookworm", components: [{componentArn: app/1.x.x}]}
            infrastructureConfigurations:
              - {name: builders, instanceTypes: [t3.small], instanceProfileName: kiln}
            distributionConfigurations:
              - name: mixed
                distributions:
                  - {region: south, amiDistributionConfiguration: {name: "machine {{ imagebuilder:buildDate }}"}}
            imagePipelines:
              - name: machine
                imageRecipeArn: machine/3.x.x
                infrastructureConfigurationArn: builders
                distributionConfigurationArn: mixed
            """)
        let built = try Kiln.run(["build", "-f", pipeline], in: scratch.path)
        let image = try record(built)
        let failure = image["failure"] as? [String: Any] ?? [:]
        #expect(image["status"] as? String == "FAILED" && image["type"] as? String == "AMI", "\(built.stderr)")
        #expect(failure["stage"] as? String == "BUILD" && failure["step"] as? String == "parentImage", "\(failure)")
        let reason = failure["reason"] as? String ?? ""
        #expect(
            reason.contains("bootstrap:debian:bookworm has no kernel (no /boot/vmlinuz-*)")
                && reason.contains("kiln image pull bootstrap:debian:bookworm:vm"), "the error says how to get a machine parent: \(reason)")
        #expect(!built.stderr.contains("BUILD: builder"), "no builder starts for a parent without a kernel: \(built.stderr)")
    }

    @Test("A recipe's own ARG SOURCE_DATE_EPOCH makes two fresh builds give one digest, created at that time; a bad value names its line")
    func recipeSourceDateEpoch() throws {
        let regions = (try LoopbackRegistry(), try LoopbackRegistry())
        defer {
            regions.0.stop()
            regions.1.stop()
        }
        let scratch = Scratch("kiln-cli-test")
        defer { scratch.remove() }
        _ = try project(scratch, regions: regions)
        func pipeline(_ epoch: String) throws -> String {
            try suitePipeline(
                scratch, components: "  - {name: app, semanticVersion: 1.0.0, platform: Linux, uri: app.yaml}",
                componentArns: ["app/1.x.x"],
                template:
                    "ARG SOURCE_DATE_EPOCH=\(epoch)\n{{{ imagebuilder:environments }}}\n{{{ imagebuilder:components }}}\nRUN touch /etc/built-at",
                kilnTests: "{security: {pendingUpdates: false}}"
            )
        }
        let file = try pipeline("1700000000")
        let first = try record(try Kiln.run(["build", "-f", file, "--no-cache"], in: scratch.path))
        let second = try record(try Kiln.run(["build", "-f", file, "--no-cache"], in: scratch.path))
        #expect(
            first["digest"] as? String == second["digest"] as? String && first["digest"] != nil,
            "the RUN touches a file now, but file times and created are clamped")
        let config = try Kiln.shell("skopeo inspect --tls-verify=false --config docker://\(regions.0.host)/suites:1.0.0")
        #expect(config.contains("\"created\": \"2023-11-14T22:13:20Z\""), "\(config)")
        let bad = try Kiln.run(["build", "-f", try pipeline("yesterday")], in: scratch.path)
        #expect(
            bad.status == 1 && bad.stderr.contains("dockerfileTemplateData line 2: ARG SOURCE_DATE_EPOCH=yesterday must be whole seconds"),
            "\(bad.stderr)")
    }
}
