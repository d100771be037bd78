import ArgumentParser
import Foundation
import KilnModel
import KilnOCI
import KilnRegistry

/// Options every command that touches images shares.
struct KilnOptions: ParsableArguments {
    @Option(name: .long, help: "Kiln's configuration file (default: $KILN_CONFIG, else ./kiln.yaml when it exists).")
    var config: String?

    @Option(
        name: .long, help: "Where Kiln keeps its content store (default: the config's dataDirectory, $KILN_DATA_DIR, or /var/lib/kiln).")
    var dataDir: String?
}

extension KilnOptions {
    init(config: String? = nil, dataDir: String?) {
        self.init()
        self.config = config
        self.dataDir = dataDir
    }
}

/// The configuration, content store and registry clients, opened once per command.
struct KilnEnvironment {
    let configuration: KilnConfiguration
    let store: ContentStore
    let registries: RegistryDirectory

    init(_ options: KilnOptions, environment: [String: String] = ProcessInfo.processInfo.environment) throws {
        let path = options.config ?? environment["KILN_CONFIG"] ?? (FileManager.default.fileExists(atPath: "kiln.yaml") ? "kiln.yaml" : nil)
        var configuration = try path.map { try KilnConfiguration.load(path: $0, environment: environment) } ?? KilnConfiguration()
        if let dataDir = options.dataDir { configuration.dataDirectory = dataDir }
        self.configuration = configuration
        store = try ContentStore(root: configuration.dataDirectory + "/content")
        let settings = configuration.registries.mapValues { registry in
            RegistrySettings(
                insecure: registry.insecure, caCertificate: registry.caCertificate,
                credentials: registry.username.map { RegistryCredentials(username: $0, password: registry.password ?? "") }
            )
        }
        registries = RegistryDirectory(settings: settings, logins: RegistryCredentialStore(environment: environment))
    }

    /// Runs `body`, printing a KilnError the way every command does and exiting 1.
    static func reportingErrors<T>(_ body: () async throws -> T) async throws -> T {
        do {
            return try await body()
        } catch let error as KilnError {
            TerminalOutput().error(error)
            throw ExitCode.failure
        }
    }
}
