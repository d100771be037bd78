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
        ])
    func refuses(_ text: String, line: String, message: String) throws {
        let error = try #require(throws: KilnError.self) { try load("homeRegion: us-east-1\n" + text) }
        #expect(error.message.contains("kiln.yaml:\(line):") && error.message.contains(message), "\(error.message)")
    }
}
