import Foundation
import KilnModel
import KilnOCI

/// Registry logins as the container tools keep them: `REGISTRY_AUTH_FILE` (podman, skopeo,
/// buildah) or `~/.docker/config.json`, both `{"auths": {"host": {"auth": base64("user:pass")}}}`.
public struct RegistryCredentialStore: Sendable {
    public var files: [String]

    public init(environment: [String: String] = ProcessInfo.processInfo.environment) {
        var files: [String] = []
        if let file = environment["REGISTRY_AUTH_FILE"] { files.append(file) }
        let home = environment["HOME"] ?? NSHomeDirectory()
        files.append((environment["DOCKER_CONFIG"] ?? home + "/.docker") + "/config.json")
        self.files = files
    }

    public init(files: [String]) {
        self.files = files
    }

    /// The first login found for `registry`, or nil.
    public func credentials(for registry: String) throws -> RegistryCredentials? {
        for file in files {
            guard let data = FileManager.default.contents(atPath: file) else { continue }
            guard let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else {
                throw KilnError(.invalidArgument, "\(file) is not valid JSON; fix it or point REGISTRY_AUTH_FILE elsewhere")
            }
            let auths = object["auths"] as? [String: Any] ?? [:]
            let keys =
                [registry, "https://\(registry)", "http://\(registry)"]
                + (registry == "docker.io" ? ["https://index.docker.io/v1/", "index.docker.io"] : [])
            for key in keys {
                guard let entry = auths[key] as? [String: Any] else { continue }
                if let encoded = entry["auth"] as? String {
                    guard let decoded = Data(base64Encoded: encoded).map({ String(decoding: $0, as: UTF8.self) }),
                        let colon = decoded.firstIndex(of: ":")
                    else {
                        throw KilnError(.invalidArgument, "\(file): the auth entry for \(key) is not base64 of user:password")
                    }
                    return RegistryCredentials(
                        username: String(decoded[..<colon]), password: String(decoded[decoded.index(after: colon)...]))
                }
                if let username = entry["username"] as? String, let password = entry["password"] as? String {
                    return RegistryCredentials(username: username, password: password)
                }
            }
        }
        return nil
    }
}
