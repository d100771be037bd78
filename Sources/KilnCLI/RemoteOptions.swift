import ArgumentParser
import Foundation
import KilnModel
import KilnServer

/// `--endpoint`: talk to a `kiln server` instead of this machine's data directory.
struct RemoteOptions: ParsableArguments {
    @Option(name: .long, help: "A kiln server's URL, like http://127.0.0.1:8080 (default: $KILN_ENDPOINT); requests are signed with SigV4.")
    var endpoint: String?

    /// The endpoint given, or $KILN_ENDPOINT; nil means work locally.
    func resolvedEndpoint(environment: [String: String] = ProcessInfo.processInfo.environment) -> String? {
        endpoint ?? environment["KILN_ENDPOINT"].flatMap { $0.isEmpty ? nil : $0 }
    }

    /// A signing client for the endpoint. The key pair comes from AWS_ACCESS_KEY_ID and
    /// AWS_SECRET_ACCESS_KEY (as the AWS CLI reads them), else KILN_ACCESS_KEY_ID and
    /// KILN_SECRET_ACCESS_KEY, else the first of kiln.yaml's `credentials`; the region from
    /// AWS_REGION or AWS_DEFAULT_REGION, else kiln.yaml's homeRegion.
    func client(
        _ endpoint: String, configuration: KilnConfiguration, environment: [String: String] = ProcessInfo.processInfo.environment
    ) throws -> ImageBuilderClient {
        func value(_ names: String...) -> String? { names.lazy.compactMap { environment[$0] }.first { !$0.isEmpty } }
        let keyId = value("AWS_ACCESS_KEY_ID", "KILN_ACCESS_KEY_ID") ?? configuration.credentials.first?.accessKeyId
        let secret = value("AWS_SECRET_ACCESS_KEY", "KILN_SECRET_ACCESS_KEY") ?? configuration.credentials.first?.secretAccessKey
        guard let keyId, let secret else {
            throw KilnError(
                .invalidArgument,
                "no key pair to sign requests to \(endpoint) with: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (one of the server's credentials)"
            )
        }
        let region = value("AWS_REGION", "AWS_DEFAULT_REGION") ?? configuration.homeRegion
        return try ImageBuilderClient(endpoint: endpoint, accessKeyId: keyId, secretAccessKey: secret, region: region)
    }
}

extension RemoteOptions {
    /// The signing client for commands that only work against a server.
    func requiredClient(for command: String, options: KilnOptions) throws -> ImageBuilderClient {
        guard let endpoint = resolvedEndpoint() else {
            throw KilnError(.invalidArgument, "\(command) talks to a kiln server: give --endpoint URL or set KILN_ENDPOINT")
        }
        return try client(endpoint, configuration: try KilnEnvironment.configurationOnly(options))
    }
}

extension KilnEnvironment {
    /// The configuration alone (no data directory is touched), for commands that talk to a server.
    static func configurationOnly(_ options: KilnOptions, environment: [String: String] = ProcessInfo.processInfo.environment) throws
        -> KilnConfiguration
    {
        let path = options.config ?? environment["KILN_CONFIG"] ?? (FileManager.default.fileExists(atPath: "kiln.yaml") ? "kiln.yaml" : nil)
        var configuration = try path.map { try KilnConfiguration.load(path: $0, environment: environment) } ?? KilnConfiguration()
        try configuration.applyServerEnvironment(environment)
        return configuration
    }
}

extension ImageBuilderClient {
    /// Every image record the server holds (`GET /kiln/records`).
    func records() async throws -> [ImageRecord] {
        try JSONDecoder().decode([ImageRecord].self, from: try await get("/kiln/records"))
    }

    /// One record by `name/x.y.z/build` or ARN.
    func record(_ name: String) async throws -> ImageRecord {
        try JSONDecoder().decode(ImageRecord.self, from: try await get("/kiln/records/" + Self.encode(name)))
    }
}
