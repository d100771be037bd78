import Foundation
import KilnModel
import KilnTestSupport
import Testing

@Suite("kiln.yaml's server keys: listen, credentials, maxConcurrentBuilds, webhooks; the environment wins")
struct ServerConfigurationTests {
    func load(_ text: String, environment: [String: String] = [:]) throws -> KilnConfiguration {
        let scratch = Scratch("kiln-config")
        defer { scratch.remove() }
        return try KilnConfiguration.load(path: try scratch.write("kiln.yaml", text), environment: environment)
    }

    @Test("The keys read, secrets come from the environment, and KILN_* variables override the file")
    func reads() throws {
        let text = """
            listen: 0.0.0.0:9443
            accountId: "123456789012"
            maxConcurrentBuilds: 3
            credentials:
              - {accessKeyId: AKIAONE, secretAccessKey: one}
              - {accessKeyId: AKIATWO, secretAccessKeyEnv: TWO_SECRET}
            webhooks:
              - {name: ops, url: "https://hooks.example/kiln", secretEnv: HOOK_SECRET}
              - {name: audit, url: "http://127.0.0.1:9/x", allImages: true}
            """
        let configuration = try load(text, environment: ["TWO_SECRET": "two", "HOOK_SECRET": "hook"])
        #expect(configuration.listen == "0.0.0.0:9443" && configuration.accountId == "123456789012")
        #expect(configuration.maxConcurrentBuilds == 3)
        #expect(configuration.credentials.map(\.secretAccessKey) == ["one", "two"])
        #expect(configuration.webhooks.map(\.name) == ["ops", "audit"] && configuration.webhooks[0].secret == "hook")
        #expect(configuration.webhooks[1].allImages && !configuration.webhooks[0].allImages)

        let overridden = try load(
            text,
            environment: [
                "TWO_SECRET": "two", "HOOK_SECRET": "hook", "KILN_LISTEN": "127.0.0.1:8181", "KILN_MAX_CONCURRENT_BUILDS": "5",
                "KILN_ACCESS_KEY_ID": "AKIAONE", "KILN_SECRET_ACCESS_KEY": "rotated", "KILN_ACCOUNT_ID": "000000000001",
            ])
        #expect(overridden.listen == "127.0.0.1:8181" && overridden.maxConcurrentBuilds == 5 && overridden.accountId == "000000000001")
        #expect(overridden.credentials.first { $0.accessKeyId == "AKIAONE" }?.secretAccessKey == "rotated")
        #expect(KilnConfiguration.listenAddress("[::1]:8080")?.host == "::1")
    }

    @Test("triggers: registry notifications with a secret from the environment, polling, debounce and package checks")
    func readsTriggers() throws {
        let configuration = try load(
            """
            triggers:
              registryEvents: {header: X-Registry-Token, secretEnv: REGISTRY_SECRET}
              parentPollInterval: 5m
              debounce: 10s
              packageChecks:
                - {pipeline: web, schedule: "rate(6 hours)", securityOnly: true}
                - {pipeline: api, schedule: "cron(0 3 ? * MON *)", timezone: Europe/Berlin}
            """, environment: ["REGISTRY_SECRET": "s3"])
        let triggers = configuration.triggers
        #expect(triggers.registryEventSecret == "s3" && triggers.registryEventHeader == "X-Registry-Token")
        #expect(triggers.parentPollSeconds == 300 && triggers.debounceSeconds == 10)
        #expect(triggers.packageChecks.map(\.pipeline) == ["web", "api"])
        #expect(triggers.packageChecks[0].securityOnly && !triggers.packageChecks[1].securityOnly)
        #expect(try load("listen: 127.0.0.1:1").triggers.parentPollSeconds == nil, "polling is off unless asked for")
    }

    @Test("regions: an image store is a directory or an S3 bucket; a disk-only region needs no registry")
    func readsImageStores() throws {
        let configuration = try load(
            """
            regions:
              lab: {imageStore: {directory: disks}}
              s3-lab:
                registry: 127.0.0.1:5000
                imageStore: {s3: {bucket: amis, prefix: /kiln/, endpoint: "http://127.0.0.1:9000", accessKeyId: AKIAS3, secretAccessKeyEnv: S3_SECRET}}
            """, environment: ["S3_SECRET": "s3cret"])
        guard case .directory(let folder) = configuration.regions["lab"]?.imageStore else {
            Issue.record("lab has no directory store")
            return
        }
        #expect(folder.hasSuffix("/disks") && folder.hasPrefix("/") && configuration.regions["lab"]?.registry == "")
        guard case .s3(let bucket) = configuration.regions["s3-lab"]?.imageStore else {
            Issue.record("s3-lab has no bucket")
            return
        }
        #expect(bucket.bucket == "amis" && bucket.prefix == "kiln" && bucket.secretAccessKey == "s3cret" && bucket.region == "us-east-1")
        let error = try #require(throws: KilnError.self) { try load("regions:\n  lab: {imageStore: {s3: {bucket: b}}}") }
        #expect(error.message.contains("kiln.yaml:2:") && error.message.contains("needs bucket, accessKeyId and secretAccessKey"))
        let empty = try #require(throws: KilnError.self) { try load("regions:\n  lab: {repositoryPrefix: x}") }
        #expect(empty.message.contains("needs registry: host[:port] (container images), imageStore (disks), or both"))
        let kubevirt = try load(
            "regions:\n  lab: {registry: 127.0.0.1:5000, imageStore: {directory: d}, containerDiskRepository: vm-disks}")
        #expect(kubevirt.regions["lab"]?.containerDiskRepository == "vm-disks")
        let nowhere = try #require(throws: KilnError.self) {
            try load("regions:\n  lab: {imageStore: {directory: d}, containerDiskRepository: vm-disks}")
        }
        #expect(
            nowhere.message.contains("kiln.yaml:2:") && nowhere.message.contains("containerDiskRepository needs a registry"),
            "\(nowhere.message)")
    }

    @Test(
        "A bad value names the file, the line and the key",
        arguments: [
            ("listen: localhost", "2", "listen must be host:port"),
            ("maxConcurrentBuilds: 0", "2", "maxConcurrentBuilds must be a number from 1 to 64"),
            ("credentials:\n  - {accessKeyId: AKIAX}", "3", "needs accessKeyId and secretAccessKey"),
            ("credentials:\n  - {accessKeyId: AKIAX, secretAccessKeyEnv: NOPE}", "3", "credentials.secretAccessKeyEnv names NOPE"),
            ("credentials:\n  - {accessKeyId: AKIAX, secret: x}", "3", "unknown key 'credentials.secret'"),
            ("webhooks:\n  - {name: a, url: ftp://x}", "3", "webhooks.url must be an http or https URL"),
            ("webhooks:\n  - {name: a, url: http://x}\n  - {name: a, url: http://y}", "4", "two webhooks are named 'a'"),
            ("listne: 127.0.0.1:1", "2", "unknown key 'listne'"),
            ("triggers:\n  registryEvents: {header: X-Token}", "3", "needs secret or secretEnv"),
            ("triggers:\n  parentPollInterval: soon", "3", "triggers.parentPollInterval must be a duration"),
            (
                "triggers:\n  packageChecks:\n    - {pipeline: web, schedule: \"cron(0 9 * * 1)\"}", "4",
                "Non-standard cron expressions are not supported"
            ),
            ("triggers:\n  packageChecks:\n    - {pipeline: web}", "4", "needs pipeline and schedule"),
            ("triggers:\n  debounse: 2s", "3", "unknown key 'triggers.debounse'"),
        ])
    func refuses(_ text: String, line: String, message: String) throws {
        let error = try #require(throws: KilnError.self) { try load("homeRegion: us-east-1\n" + text) }
        #expect(error.message.contains("kiln.yaml:\(line):") && error.message.contains(message), "\(error.message)")
    }
}
