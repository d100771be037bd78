import Foundation
import KilnTestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// Fresh inputs: a cached build is never staler than an uncached one. A registry parent is
/// resolved to its current digest at every build; cached steps that installed packages run again
/// when their package sources offer upgrades. Real runc, a real docker-registry, a real apt
/// repository served over HTTP on loopback.
@Suite(
    "kiln build: fresh inputs (a moved parent tag, package upgrades, --offline, --explain-cache)", .serialized,
    .enabled(if: TestEnvironment.requiresRoot("/usr/bin/runc")))
struct FreshInputsTests {
    func record(_ result: Kiln.Result) throws -> [String: Any] {
        try #require(
            (try? JSONSerialization.jsonObject(with: Data(result.stdout.utf8))) as? [String: Any],
            "stdout is not the image record:\n\(result.stdout)\n\(result.stderr)")
    }

    /// The record's cacheDecisions as (step, decision, reason).
    func decisions(_ image: [String: Any]) -> [(step: String, decision: String, reason: String)] {
        (image["cacheDecisions"] as? [[String: Any]] ?? []).map {
            ($0["step"] as? String ?? "", $0["decision"] as? String ?? "", $0["reason"] as? String ?? "")
        }
    }

    /// The one decision whose step label contains `text`.
    func decision(_ image: [String: Any], _ text: String) -> (step: String, decision: String, reason: String)? {
        let matching = decisions(image).filter { $0.step.contains(text) }
        return matching.count == 1 ? matching[0] : nil
    }

    /// "sha256:…" of the manifest a registry holds under `reference`, as skopeo reads it.
    func registryDigest(_ reference: String) throws -> String {
        let raw = try Kiln.shell("skopeo inspect --tls-verify=false --raw docker://\(reference) 2>/dev/null")
        try #require(!raw.isEmpty, "the registry holds \(reference)")
        return "sha256:"
            + (try Kiln.shell("skopeo inspect --tls-verify=false --raw docker://\(reference) | sha256sum | cut -d' ' -f1"))
            .trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// How many records `kiln images` lists for `name` (to see that --explain-cache made none).
    func recordCount(_ name: String, _ scratch: Scratch) throws -> Int {
        try Kiln.run(["images"], in: scratch.path).stdout.split(separator: "\n").filter { $0.hasPrefix(name + "/") }.count
    }

    /// The contents of `paths` in the built image: it is copied out of Kiln's store to an OCI
    /// layout with `kiln image copy`, and each path is read from the topmost layer that holds it
    /// with tar (nil when no layer does, or a whiteout above hides it).
    func files(_ paths: [String], in image: [String: Any], _ scratch: Scratch) throws -> [String: String] {
        let localName = try #require(image["localName"] as? String, "the record names its image in Kiln's store")
        let layout = scratch.path + "/layout-" + UUID().uuidString.prefix(8).lowercased()
        defer { try? FileManager.default.removeItem(atPath: layout) }
        let copied = try Kiln.run(["image", "copy", "-q", "kiln:" + localName, "oci-layout:\(layout):image"], in: scratch.path)
        try #require(copied.status == 0, "kiln image copy kiln:\(localName): \(copied.stderr)")
        func json(_ path: String) throws -> [String: Any] {
            try #require(
                try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as? [String: Any],
                "\(path) is a JSON object")
        }
        func blob(_ digest: String) -> String { layout + "/blobs/sha256/" + digest.dropFirst("sha256:".count) }
        let manifests = try json(layout + "/index.json")["manifests"] as? [[String: Any]] ?? []
        let entry =
            manifests.first { ($0["annotations"] as? [String: String])?["org.opencontainers.image.ref.name"] == "image" } ?? manifests.first
        let manifest = try json(blob(try #require(entry?["digest"] as? String, "the layout's index.json names the image")))
        let layers = (manifest["layers"] as? [[String: Any]] ?? []).compactMap { $0["digest"] as? String }
        func normalized(_ name: Substring) -> String {
            var name = name
            while name.hasPrefix("./") || name.hasPrefix("/") { name = name.dropFirst(name.hasPrefix("./") ? 2 : 1) }
            return String(name)
        }
        var found: [String: String] = [:]
        var pending = Set(paths.map { $0.hasPrefix("/") ? String($0.dropFirst()) : $0 })
        for layer in layers.reversed() where !pending.isEmpty {
            let entries = try Kiln.shell("tar -tf \(blob(layer)) 2>/dev/null").split(separator: "\n")
            for wanted in pending {
                let whiteout = ((wanted as NSString).deletingLastPathComponent as NSString).appendingPathComponent(
                    ".wh." + (wanted as NSString).lastPathComponent)
                if let name = entries.first(where: { normalized($0) == wanted }) {
                    found["/" + wanted] = try Kiln.shell("tar -xOf \(blob(layer)) '\(name)'")
                    pending.remove(wanted)
                } else if entries.contains(where: { normalized($0) == whiteout }) {
                    pending.remove(wanted)
                }
            }
        }
        return found
    }

    // MARK: A moved parent tag

    @Test(
        "A parent pushed twice under one tag: the second build uses the tag's new digest and runs its steps; with the registry down the build fails naming it and --offline, and --offline (or offline: true) builds from the store's copy"
    )
    func movedParentTag() throws {
        let registry = try LoopbackRegistry()
        var registryRunning = true
        defer { if registryRunning { registry.stop() } }
        let scratch = Scratch("kiln-cli-test")
        defer { scratch.remove() }
        // Unique per run: the data directory (and so the step cache) is shared with earlier runs.
        let nonce = UUID().uuidString.prefix(8).lowercased()
        let tag = "\(registry.host)/seed/base:1"
        let configuration = """
            dataDirectory: \(sharedDataDirectory)
            regions:
              seed: {registry: "\(registry.host)"}
            """
        _ = try scratch.write("kiln.yaml", configuration)
        let infrastructure = """
            infrastructureConfigurations:
              - {name: builders, instanceTypes: [t3.small], instanceProfileName: kiln}
            """
        /// The seed pipeline makes the parent with kiln itself and pushes it to seed/base:1.
        func seed(_ version: String) throws -> [String: Any] {
            let file = try scratch.write(
                "seed.yaml",
                """
                containerRecipes:
                  - name: fresh-seed
                    semanticVersion: 1.0.0
                    parentImage: bootstrap:debian:bookworm
                    dockerfileTemplateData: |
                      FROM {{{ imagebuilder:parentImage }}}
                      RUN echo \(version)-\(nonce) > /etc/parent-version
                \(infrastructure)
                distributionConfigurations:
                  - name: seed
                    distributions:
                      - {region: seed, containerDistributionConfiguration: {targetRepository: {repositoryName: seed/base}, containerTags: ["1"]}}
                imagePipelines:
                  - name: fresh-seed
                    containerRecipeArn: fresh-seed/1.x.x
                    infrastructureConfigurationArn: builders
                    distributionConfigurationArn: seed
                    imageTestsConfiguration: {imageTestsEnabled: false}
                """)
            let built = try Kiln.run(["build", "-f", file], in: scratch.path)
            let image = try record(built)
            #expect(built.status == 0 && image["status"] as? String == "AVAILABLE", "seed \(version): \(built.stderr)")
            return image
        }
        let app = try scratch.write(
            "app.yaml",
            """
            containerRecipes:
              - name: fresh-app
                semanticVersion: 1.0.0
                parentImage: "\(tag)"
                dockerfileTemplateData: |
                  FROM {{{ imagebuilder:parentImage }}}
                  RUN cat /etc/parent-version
                  RUN cp /etc/parent-version /etc/seen-parent
            \(infrastructure)
            imagePipelines:
              - name: fresh-app
                containerRecipeArn: fresh-app/1.x.x
                infrastructureConfigurationArn: builders
                imageTestsConfiguration: {imageTestsEnabled: false}
            """)

        let seed1 = try seed("v1")
        let v1 = try registryDigest(tag)
        #expect(seed1["digest"] as? String == v1, "the registry holds the seed's v1 image")

        let first = try Kiln.run(["build", "-f", app], in: scratch.path)
        let firstImage = try record(first)
        #expect(first.status == 0 && firstImage["status"] as? String == "AVAILABLE", "\(first.stderr)")
        #expect(
            firstImage["parentImage"] as? String == tag,
            "the record keeps the parent as the recipe writes it: \(firstImage["parentImage"] ?? "nil")")
        #expect(firstImage["parentDigest"] as? String == v1, "the first build used v1 \(v1): \(firstImage["parentDigest"] ?? "nil")")
        #expect(try files(["/etc/seen-parent"], in: firstImage, scratch)["/etc/seen-parent"] == "v1-\(nonce)\n", "\(first.stderr)")

        // The same tag now names another image.
        let seed2 = try seed("v2")
        let v2 = try registryDigest(tag)
        #expect(v2 != v1 && seed2["digest"] as? String == v2, "the tag moved to the seed's v2 image")

        let recordsBefore = try recordCount("fresh-app/1.0.0", scratch)
        let explained = try Kiln.run(["build", "-f", app, "--explain-cache"], in: scratch.path)
        let lines = explained.stdout.split(separator: "\n").map(String.init)
        #expect(explained.status == 0, "\(explained.stderr)")
        #expect(
            lines.first == "parent \(tag): \(v2)",
            "the first line names the parent and the digest the tag has now: \(explained.stdout)\n\(explained.stderr)")
        #expect(lines.count == 3, "a line for the parent and one per RUN: \(explained.stdout)")
        for step in ["cat /etc/parent-version", "cp /etc/parent-version /etc/seen-parent"] {
            #expect(
                lines.contains(where: { $0.hasPrefix("RUN ") && $0.contains(step + ": run (") }),
                "\(step) runs on the new parent: \(explained.stdout)")
        }
        #expect(try recordCount("fresh-app/1.0.0", scratch) == recordsBefore, "--explain-cache builds nothing and records no image")

        let second = try Kiln.run(["build", "-f", app], in: scratch.path)
        let secondImage = try record(second)
        #expect(second.status == 0 && secondImage["status"] as? String == "AVAILABLE", "\(second.stderr)")
        #expect(
            secondImage["parentDigest"] as? String == v2,
            "a cached build resolves the tag again and uses v2 \(v2): \(secondImage["parentDigest"] ?? "nil")\n\(second.stderr)")
        #expect(secondImage["parentDigest"] as? String != firstImage["parentDigest"] as? String)
        #expect(
            try files(["/etc/seen-parent"], in: secondImage, scratch)["/etc/seen-parent"] == "v2-\(nonce)\n",
            "the image is built on v2: \(second.stderr)")
        let cat = decision(secondImage, "cat /etc/parent-version"), copy = decision(secondImage, "cp /etc/parent-version /etc/seen-parent")
        #expect(cat?.decision == "run" && copy?.decision == "run", "both steps run on the new parent: \(decisions(secondImage))")
        #expect(cat?.reason.contains("parent") == true, "the first step's reason names the moved parent: \(cat?.reason ?? "none")")
        #expect(secondImage["builtSteps"] as? Int == 2 && secondImage["cachedSteps"] as? Int == 0, "\(second.stderr)")
        #expect(
            second.stderr.contains("BUILD: cache: RUN") && second.stderr.contains("cat /etc/parent-version: run ("),
            "progress shows each decision: \(second.stderr)")
        let version = "fresh-app/1.0.0/\(try #require(secondImage["build"] as? Int))"
        let shown = try Kiln.run(["images", "show", version], in: scratch.path)
        #expect(
            (try? JSONSerialization.jsonObject(with: Data(shown.stdout.utf8)) as? [String: Any])?["parentDigest"] as? String == v2,
            "kiln images show has parentDigest: \(shown.stdout)\(shown.stderr)")

        // An image ARN parent is the newest AVAILABLE build that matches, as in Image Builder.
        let child = try scratch.write(
            "child.yaml",
            """
            containerRecipes:
              - name: fresh-child
                semanticVersion: 1.0.0
                parentImage: "arn:aws:imagebuilder:us-east-1:000000000000:image/fresh-app/1.x.x"
                dockerfileTemplateData: |
                  FROM {{{ imagebuilder:parentImage }}}
                  RUN cat /etc/seen-parent
            \(infrastructure)
            imagePipelines:
              - name: fresh-child
                containerRecipeArn: fresh-child/1.x.x
                infrastructureConfigurationArn: builders
                imageTestsConfiguration: {imageTestsEnabled: false}
            """)
        let childBuild = try Kiln.run(["build", "-f", child], in: scratch.path)
        let childImage = try record(childBuild)
        #expect(childBuild.status == 0, "\(childBuild.stderr)")
        #expect(
            childImage["parentDigest"] as? String == secondImage["digest"] as? String,
            "the ARN resolved to the newest fresh-app build: \(childBuild.stderr)")
        #expect(try files(["/etc/seen-parent"], in: childImage, scratch)["/etc/seen-parent"] == "v2-\(nonce)\n")

        // The parent's registry is gone: no silent fallback to the store's copy.
        registry.stop()
        registryRunning = false
        let down = try Kiln.run(["build", "-f", app], in: scratch.path)
        let downImage = try record(down)
        let failure = try #require(downImage["failure"] as? [String: Any], "\(down.stderr)")
        #expect(
            down.status == 1 && downImage["status"] as? String == "FAILED" && failure["stage"] as? String == "BUILD",
            "\(failure)\n\(down.stderr)")
        let reason = failure["reason"] as? String ?? ""
        #expect(reason.contains(registry.host) && reason.contains("--offline"), "the reason names the registry and --offline: \(reason)")

        let offline = try Kiln.run(["build", "-f", app, "--offline"], in: scratch.path)
        let offlineImage = try record(offline)
        #expect(
            offline.status == 0 && offlineImage["status"] as? String == "AVAILABLE", "--offline uses the store's copy: \(offline.stderr)")
        #expect(offline.stderr.contains("offline"), "the log says the build is offline: \(offline.stderr)")
        #expect(
            offlineImage["parentDigest"] as? String == v2,
            "the store holds v2 since the second build: \(offlineImage["parentDigest"] ?? "nil")")
        #expect(
            offlineImage["builtSteps"] as? Int == 0 && offlineImage["cachedSteps"] as? Int == 2,
            "same parent and steps as the second build: every step cached")

        _ = try scratch.write("kiln.yaml", configuration + "\noffline: true\n")
        let configured = try Kiln.run(["build", "-f", app], in: scratch.path)
        let configuredImage = try record(configured)
        #expect(
            configured.status == 0 && configuredImage["status"] as? String == "AVAILABLE",
            "kiln.yaml's offline: true works as --offline: \(configured.stderr)")
        #expect(configuredImage["parentDigest"] as? String == v2)
    }

    // MARK: Package upgrades in a local apt repository

    @Test(
        "A local apt repository: a new package version makes the steps from the package step on run again (the earlier RUN is reused), --explain-cache says so beforehand, nothing new reuses every step, and kilnCache packageUpdates: ignore opts out"
    )
    func packageUpgrades() throws {
        let scratch = Scratch("kiln-cli-test")
        defer { scratch.remove() }
        let nonce = UUID().uuidString.prefix(8).lowercased()
        let recipe = "fresh-apt-\(nonce)"
        let root = scratch.path + "/apt", repository = root + "/repo"
        try FileManager.default.createDirectory(atPath: repository, withIntermediateDirectories: true)

        // A flat repository: the .debs and one Packages index beside them.
        var lastPublished: Date?
        func publish(_ version: String, package name: String = "kiln-hello") throws {
            // The index's mtime is its Last-Modified: keep each version's a second apart, so no
            // If-Modified-Since check can take a new index for the old one.
            if let lastPublished {
                let wait = 1.1 - Date().timeIntervalSince(lastPublished)
                if wait > 0 { usleep(UInt32(wait * 1_000_000)) }
            }
            let package = "\(root)/\(name)-\(version)"
            try FileManager.default.createDirectory(atPath: package + "/DEBIAN", withIntermediateDirectories: true)
            try FileManager.default.createDirectory(atPath: package + "/usr/share/\(name)", withIntermediateDirectories: true)
            try
                "Package: \(name)\nVersion: \(version)\nArchitecture: all\nMaintainer: Kiln Tests <tests@kiln.invalid>\nDescription: a package for Kiln's fresh-inputs tests\n"
                .write(toFile: package + "/DEBIAN/control", atomically: true, encoding: .utf8)
            try "\(version)\n".write(toFile: package + "/usr/share/\(name)/version", atomically: true, encoding: .utf8)
            let output = try Kiln.shell(
                """
                chmod -R u=rwX,go=rX \(package) && \
                dpkg-deb --root-owner-group -Zgzip --build \(package) \(repository)/\(name)_\(version)_all.deb 2>&1 && \
                cd \(repository) && dpkg-scanpackages --multiversion . /dev/null 2>&1 > \(root)/Packages.new && \
                mv \(root)/Packages.new \(repository)/Packages && grep '^Version:' \(repository)/Packages
                """)
            try #require(output.contains("Version: \(version)\n"), "the repository offers kiln-hello \(version): \(output)")
            lastPublished = Date()
        }
        try publish("1.0")
        // Builders have their own network: they reach a host service listening on 0.0.0.0 as host.kiln.internal.
        let server = try LoopbackServer(
            executable: "python3", arguments: { ["-m", "http.server", String($0), "--bind", "0.0.0.0", "--directory", repository] })
        defer { server.stop() }
        try #require(
            try Kiln.shell("curl -sf http://127.0.0.1:\(server.port)/Packages").contains("Package: kiln-hello"), "the repository is served")

        _ = try scratch.write("kiln.yaml", "dataDirectory: \(sharedDataDirectory)\n")
        // Only the local repository is a source, so upgrades in Debian's archive play no part.
        // The description makes the document (and so the component's step key) new in every run.
        _ = try scratch.write(
            "hello.yaml",
            """
            name: HelloApt
            description: installs kiln-hello from the test's repository (run \(nonce))
            schemaVersion: 1.0
            phases:
              - name: build
                steps:
                  - name: Install
                    action: ExecuteBash
                    inputs:
                      commands:
                        - set -e
                        - rm -f /etc/apt/sources.list /etc/apt/sources.list.d/*
                        - echo 'deb [trusted=yes] http://host.kiln.internal:\(server.port)/ ./' > /etc/apt/sources.list.d/kiln-test.list
                        - apt-get update
                        - DEBIAN_FRONTEND=noninteractive apt-get install -y kiln-hello
                        - dpkg-query -W -f='installed=${Version}\\n' kiln-hello
            """)
        func pipeline(kilnCache: String? = nil, lastStep: String = "RUN cp /usr/share/kiln-hello/version /etc/kiln-hello-seen") throws
            -> String
        {
            try scratch.write(
                "pipeline.yaml",
                """
                components:
                  - {name: hello-apt, semanticVersion: 1.0.0, platform: Linux, uri: hello.yaml}
                containerRecipes:
                  - name: \(recipe)
                    semanticVersion: 1.0.0
                    parentImage: bootstrap:debian:bookworm
                    components: [{componentArn: hello-apt/1.x.x}]
                    dockerfileTemplateData: |
                      FROM {{{ imagebuilder:parentImage }}}
                      RUN echo early > /etc/early
                      {{{ imagebuilder:environments }}}
                      {{{ imagebuilder:components }}}
                      \(lastStep)
                infrastructureConfigurations:
                  - {name: builders, instanceTypes: [t3.small], instanceProfileName: kiln}
                imagePipelines:
                  - name: fresh-apt
                    containerRecipeArn: \(recipe)/1.x.x
                    infrastructureConfigurationArn: builders
                    imageTestsConfiguration: {imageTestsEnabled: false}
                \(kilnCache.map { "    kilnCache: \($0)" } ?? "")
                """)
        }
        let file = try pipeline()
        let component = "kiln component hello-apt/1.0.0"
        let versionFiles = ["/usr/share/kiln-hello/version", "/etc/kiln-hello-seen", "/etc/early"]

        let first = try Kiln.run(["build", "-f", file], in: scratch.path)
        let firstImage = try record(first)
        #expect(first.status == 0 && firstImage["status"] as? String == "AVAILABLE", "\(first.stderr)")
        #expect(
            try files(versionFiles, in: firstImage, scratch) == [
                "/usr/share/kiln-hello/version": "1.0\n", "/etc/kiln-hello-seen": "1.0\n", "/etc/early": "early\n",
            ], "\(first.stderr)")

        try publish("1.1")
        let recordsBefore = try recordCount(recipe + "/1.0.0", scratch)
        let explained = try Kiln.run(["build", "-f", file, "--explain-cache"], in: scratch.path)
        let lines = explained.stdout.split(separator: "\n").map(String.init)
        #expect(explained.status == 0, "\(explained.stderr)")
        #expect(lines.first?.hasPrefix("parent bootstrap:debian:bookworm: sha256:") == true, "\(explained.stdout)")
        #expect(lines.count == 4, "the parent, then the early RUN, the component and the last RUN: \(explained.stdout)")
        #expect(
            lines.contains(where: { $0.hasPrefix("RUN ") && $0.contains("echo early > /etc/early: reused (") }),
            "the RUN before any package step stays cached: \(explained.stdout)\n\(explained.stderr)")
        #expect(
            lines.contains(where: { $0.hasPrefix(component + ": run (") && $0.contains("kiln-hello 1.0 → 1.1") }),
            "the component will run for kiln-hello 1.1: \(explained.stdout)\n\(explained.stderr)")
        #expect(
            lines.contains(where: { $0.hasPrefix("RUN ") && $0.contains("/etc/kiln-hello-seen: run (") }),
            "the step after it runs too: \(explained.stdout)")
        #expect(try recordCount(recipe + "/1.0.0", scratch) == recordsBefore, "--explain-cache builds nothing and records no image")

        let second = try Kiln.run(["build", "-f", file], in: scratch.path)
        let secondImage = try record(second)
        #expect(second.status == 0 && secondImage["status"] as? String == "AVAILABLE", "\(second.stderr)")
        #expect(
            try files(versionFiles, in: secondImage, scratch) == [
                "/usr/share/kiln-hello/version": "1.1\n", "/etc/kiln-hello-seen": "1.1\n", "/etc/early": "early\n",
            ], "the cached chain did not hide 1.1: \(second.stderr)")
        #expect(second.stderr.contains("kiln-hello 1.0 → 1.1"), "the log names the upgrade with both versions: \(second.stderr)")
        #expect(second.stderr.contains("BUILD: cache: \(component): run ("), "\(second.stderr)")
        #expect(
            second.stderr.split(separator: "\n").contains(where: {
                $0.contains("BUILD: cache: RUN") && $0.contains("echo early > /etc/early: reused (")
            }), "\(second.stderr)")
        #expect(second.stderr.contains("installed=1.1"), "the component ran again and installed 1.1: \(second.stderr)")
        let chosen = decisions(secondImage)
        #expect(chosen.count == 3, "one decision per file-changing step: \(chosen)")
        #expect(decision(secondImage, "echo early > /etc/early")?.decision == "reused", "\(chosen)")
        let rerun = decision(secondImage, component)
        #expect(rerun?.decision == "run" && rerun?.reason.contains("kiln-hello 1.0 → 1.1") == true, "\(chosen)")
        #expect(decision(secondImage, "/etc/kiln-hello-seen")?.decision == "run", "\(chosen)")
        let updates = (secondImage["packageUpdates"] as? [[String: Any]] ?? []).map {
            "\($0["name"] ?? "") \($0["installed"] ?? "") \($0["candidate"] ?? "")"
        }
        #expect(updates == ["kiln-hello 1.0 1.1"], "packageUpdates: \(secondImage["packageUpdates"] ?? "none")")
        #expect(secondImage["cachedSteps"] as? Int == 1 && secondImage["builtSteps"] as? Int == 2, "\(second.stderr)")

        // The rule is right: an uncached build now holds exactly what the partly cached one does.
        let uncached = try Kiln.run(["build", "-f", file, "--no-cache"], in: scratch.path)
        let uncachedImage = try record(uncached)
        #expect(uncached.status == 0, "\(uncached.stderr)")
        #expect(decisions(uncachedImage).allSatisfy { $0.decision == "run" && $0.reason == "--no-cache" }, "\(decisions(uncachedImage))")
        let compared = versionFiles + ["/etc/apt/sources.list.d/kiln-test.list"]
        #expect(
            try files(compared, in: uncachedImage, scratch) == files(compared, in: secondImage, scratch),
            "the cached build holds what an uncached one does")

        // Nothing new: every step is reused, and the explanation says so.
        let third = try Kiln.run(["build", "-f", file], in: scratch.path)
        let thirdImage = try record(third)
        #expect(third.status == 0 && thirdImage["status"] as? String == "AVAILABLE", "\(third.stderr)")
        #expect(
            thirdImage["builtSteps"] as? Int == 0 && thirdImage["cachedSteps"] as? Int == 3 && thirdImage["cacheHit"] as? Bool == true,
            "nothing new to install: \(third.stderr)")
        #expect(
            decisions(thirdImage).count == 3 && decisions(thirdImage).allSatisfy({ $0.decision == "reused" }), "\(decisions(thirdImage))")
        #expect((thirdImage["packageUpdates"] as? [Any] ?? []).isEmpty, "\(thirdImage["packageUpdates"] ?? "none")")
        #expect(third.stderr.contains("BUILD: cache: \(component): reused ("), "\(third.stderr)")
        let again = try Kiln.run(["build", "-f", file, "--explain-cache"], in: scratch.path)
        let againLines = again.stdout.split(separator: "\n").map(String.init)
        #expect(again.status == 0 && againLines.count == 4, "\(again.stdout)\n\(again.stderr)")
        #expect(againLines.dropFirst().allSatisfy({ $0.contains(": reused (") }), "every step reused: \(again.stdout)")

        // The index changes but offers no upgrade of what the image holds (another package): a
        // build that reuses every step stays as it is, but a later step that runs may install
        // from the cached package lists, so the package step runs again first.
        try publish("1.0", package: "kiln-other")
        let unchanged = try record(try Kiln.run(["build", "-f", file], in: scratch.path))
        #expect(unchanged["builtSteps"] as? Int == 0, "nothing installed is upgradable: \(decisions(unchanged))")
        let changedLast = try pipeline(lastStep: "RUN cp /usr/share/kiln-hello/version /etc/kiln-hello-seen && true")
        let later = try Kiln.run(["build", "-f", changedLast], in: scratch.path)
        let laterImage = try record(later)
        #expect(later.status == 0, "\(later.stderr)")
        let laterRun = decision(laterImage, component)
        #expect(laterRun?.decision == "run" && laterRun?.reason.contains("a later step runs") == true, "\(decisions(laterImage))")
        #expect(decision(laterImage, "echo early > /etc/early")?.decision == "reused", "\(decisions(laterImage))")

        // A pipeline that pins its versions opts out: 1.2 is published, the steps are reused anyway.
        let optedOut = try pipeline(
            kilnCache: "{packageUpdates: ignore}", lastStep: "RUN cp /usr/share/kiln-hello/version /etc/kiln-hello-seen && true")
        try publish("1.2")
        let fourth = try Kiln.run(["build", "-f", optedOut], in: scratch.path)
        let fourthImage = try record(fourth)
        #expect(fourth.status == 0 && fourthImage["status"] as? String == "AVAILABLE", "\(fourth.stderr)")
        #expect(fourth.stderr.contains("packageUpdates: ignore"), "the log says the check was skipped and why: \(fourth.stderr)")
        #expect(fourthImage["builtSteps"] as? Int == 0 && fourthImage["cachedSteps"] as? Int == 3, "\(fourth.stderr)")
        #expect(
            decisions(fourthImage).count == 3 && decisions(fourthImage).allSatisfy({ $0.decision == "reused" }), "\(decisions(fourthImage))"
        )
        #expect((fourthImage["packageUpdates"] as? [Any] ?? []).isEmpty)
        #expect(
            try files(versionFiles, in: fourthImage, scratch)["/usr/share/kiln-hello/version"] == "1.1\n",
            "the opt-out keeps the cached 1.1: \(fourth.stderr)")

        // The repository is gone: its indexes cannot be fetched and apt-get update fails, so the
        // steps run as an uncached build would, and fail the same way, naming the step.
        server.stop()
        let checked = try pipeline(lastStep: "RUN cp /usr/share/kiln-hello/version /etc/kiln-hello-seen && true")
        let gone = try Kiln.run(["build", "-f", checked], in: scratch.path)
        let goneImage = try record(gone)
        let failure = goneImage["failure"] as? [String: Any]
        #expect(
            gone.status == 1 && failure?["stage"] as? String == "BUILD" && failure?["step"] as? String == "HelloApt/build/Install",
            "\(failure ?? [:])\n\(gone.stderr)")
        #expect(decision(goneImage, component)?.reason.contains("could not be asked") == true, "\(decisions(goneImage))")
        let offline = try Kiln.run(["build", "-f", checked, "--offline"], in: scratch.path)
        let offlineImage = try record(offline)
        #expect(
            offline.status == 0 && offlineImage["builtSteps"] as? Int == 0, "offline asks nothing and reuses every step: \(offline.stderr)")
    }
}
