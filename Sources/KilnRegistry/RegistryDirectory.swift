import Foundation
import KilnModel
import KilnOCI
import Synchronization

/// How Kiln talks to one registry host, from `kiln.yaml`'s `registries:` section.
public struct RegistrySettings: Sendable, Hashable {
    /// Plain http. Unset means: plain http for loopback hosts without a CA, https otherwise.
    public var insecure: Bool?
    /// A PEM file with the CA that signed the registry's certificate.
    public var caCertificate: String?
    public var credentials: RegistryCredentials?

    public init(insecure: Bool? = nil, caCertificate: String? = nil, credentials: RegistryCredentials? = nil) {
        self.insecure = insecure
        self.caCertificate = caCertificate
        self.credentials = credentials
    }
}

/// One `RegistryClient` per host, made from Kiln's settings, then the stored logins
/// (`REGISTRY_AUTH_FILE`, `~/.docker/config.json`), so every command talks to a host the same way.
public final class RegistryDirectory: Sendable {
    public let settings: [String: RegistrySettings]
    public let logins: RegistryCredentialStore
    public let retry: RetryPolicy
    public let monolithicLimit: Int64
    public let chunkSize: Int64
    private let clients = Mutex<[String: RegistryClient]>([:])

    public init(
        settings: [String: RegistrySettings] = [:], logins: RegistryCredentialStore = RegistryCredentialStore(),
        retry: RetryPolicy = RetryPolicy(), monolithicLimit: Int64 = 64 << 20, chunkSize: Int64 = 32 << 20
    ) {
        self.settings = settings
        self.logins = logins
        self.retry = retry
        self.monolithicLimit = monolithicLimit
        self.chunkSize = chunkSize
    }

    public func client(for registry: String) throws -> RegistryClient {
        if let existing = clients.withLock({ $0[registry] }) { return existing }
        let own = settings[registry] ?? RegistrySettings()
        let credentials = try own.credentials ?? logins.credentials(for: registry)
        let insecure = own.insecure ?? (own.caCertificate == nil && Self.isLoopback(registry))
        let client = try RegistryClient(
            registry: registry, credentials: credentials, insecureHTTP: insecure, caCertificatePath: own.caCertificate,
            retry: retry, monolithicLimit: monolithicLimit, chunkSize: chunkSize
        )
        return clients.withLock { clients in
            if let raced = clients[registry] { return raced }
            clients[registry] = client
            return client
        }
    }

    public func shutdown() async {
        for client in clients.withLock({ Array($0.values) }) { await client.shutdown() }
    }

    /// `localhost`, `127.x.x.x` and `[::1]`, with or without a port.
    public static func isLoopback(_ registry: String) -> Bool {
        var host = Substring(registry)
        if host.hasPrefix("[") {
            host = host.dropFirst().prefix { $0 != "]" }
            return host == "::1"
        }
        host = host.prefix { $0 != ":" }
        return host == "localhost" || host.hasPrefix("127.")
    }
}
