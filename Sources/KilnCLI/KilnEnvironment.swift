import ArgumentParser
import Foundation
import KilnModel
import KilnOCI
import KilnRegistry
import KilnStore

#if canImport(Glibc)
    import Glibc
#endif

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
        try Self.makePrivate(dataDirectory: configuration.dataDirectory)
        store = try ContentStore(root: configuration.dataDirectory + "/content")
        let settings = configuration.registries.mapValues { registry in
            RegistrySettings(
                insecure: registry.insecure, caCertificate: registry.caCertificate,
                credentials: registry.username.map { RegistryCredentials(username: $0, password: registry.password ?? "") }
            )
        }
        registries = RegistryDirectory(settings: settings, logins: RegistryCredentialStore(environment: environment))
    }

    /// The image records: Kiln's SQLite store in the data directory, which `kiln server` shares.
    func records() throws -> SQLiteStore {
        try SQLiteStore(dataDirectory: configuration.dataDirectory)
    }

    /// The data directory holds unpacked layers (setuid programs, device nodes), logs and
    /// records: only root may enter it. One that others can enter is closed, with a note.
    static func makePrivate(dataDirectory: String) throws {
        var info = stat()
        if stat(dataDirectory, &info) != 0 {
            do {
                try FileManager.default.createDirectory(
                    atPath: dataDirectory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
            } catch {
                throw KilnError(.ioFailure, "cannot create the data directory '\(dataDirectory)': \(error.localizedDescription)")
            }
            return
        }
        guard info.st_mode & 0o077 != 0, info.st_uid == geteuid() else { return }
        guard chmod(dataDirectory, 0o700) == 0 else {
            throw KilnError(
                .ioFailure, "cannot make the data directory '\(dataDirectory)' private (0700): \(String(cString: strerror(errno)))")
        }
        TerminalOutput().progress(
            "made the data directory \(dataDirectory) private (mode \(String(info.st_mode & 0o777, radix: 8)) -> 700): local users could run setuid programs from unpacked layers and read logs"
        )
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
