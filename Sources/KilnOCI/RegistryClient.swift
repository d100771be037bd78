import AsyncHTTPClient
import Foundation
import KilnModel
import NIOCore
import NIOHTTP1
import NIOSSL
import Synchronization

/// Credentials for one registry host.
public struct RegistryCredentials: Sendable, Hashable {
    public var username: String
    public var password: String

    public init(username: String, password: String) {
        self.username = username
        self.password = password
    }

    var basicHeader: String { "Basic " + Data("\(username):\(password)".utf8).base64EncodedString() }
}

/// A client for one registry, following the OCI distribution spec: ping and auth (anonymous,
/// Basic, Bearer tokens from `WWW-Authenticate`), manifests by tag or digest, blobs checked
/// against their digests, and pushes that skip what the registry already has.
public final class RegistryClient: Sendable {
    public let registry: String
    public let insecureHTTP: Bool
    private let http: HTTPClient
    private let credentials: RegistryCredentials?
    /// Bearer tokens by scope.
    private let tokens = Mutex<[String: String]>([:])

    public static let manifestAccept = [
        MediaType.imageManifest, MediaType.imageIndex, MediaType.dockerManifest, MediaType.dockerManifestList,
    ].joined(separator: ", ")

    /// `insecureHTTP` speaks plain http (loopback and explicitly insecure registries).
    public init(registry: String, credentials: RegistryCredentials? = nil, insecureHTTP: Bool = false, http: HTTPClient = RegistryClient.sharedHTTPClient) {
        self.registry = registry
        self.credentials = credentials
        self.insecureHTTP = insecureHTTP
        self.http = http
        ownsClient = false
    }

    /// A client that trusts the registry's own CA (a PEM file), for private registries.
    public init(registry: String, credentials: RegistryCredentials? = nil, caCertificatePath: String) throws {
        var tls = TLSConfiguration.makeClientConfiguration()
        do {
            tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(caCertificatePath))
        } catch {
            throw KilnError(.invalidArgument, "cannot read the CA certificate '\(caCertificatePath)' for \(registry): \(error); give a PEM file")
        }
        self.registry = registry
        self.credentials = credentials
        self.insecureHTTP = false
        self.http = Self.makeHTTPClient(tls: tls)
        ownsClient = true
    }

    /// One client for the process. A refused connection or a failed TLS handshake fails at once
    /// instead of being retried until the deadline; retries are the caller's decision.
    public static let sharedHTTPClient = makeHTTPClient(tls: nil)

    static func makeHTTPClient(tls: TLSConfiguration?) -> HTTPClient {
        var configuration = HTTPClient.Configuration()
        if let tls { configuration.tlsConfiguration = tls }
        configuration.connectionPool.retryConnectionEstablishment = false
        configuration.timeout.connect = .seconds(30)
        return HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
    }

    /// Clients made with their own TLS settings must be shut down.
    private let ownsClient: Bool

    public func shutdown() async {
        if ownsClient { try? await http.shutdown() }
    }

    var baseURL: String { "\(insecureHTTP ? "http" : "https")://\(registry)/v2" }

    // MARK: Manifests

    public struct FetchedManifest: Sendable {
        public var data: Data
        public var mediaType: String
        public var digest: Digest
    }

    public func manifest(_ reference: ImageReference) async throws -> FetchedManifest {
        let url = "\(baseURL)/\(reference.repository)/manifests/\(reference.manifestReference)"
        let response = try await send(.GET, url, repository: reference.repository, actions: "pull", headers: ["Accept": Self.manifestAccept])
        let body = try await collect(response, limit: 8 << 20, what: "manifest \(reference)")
        let digest = Digest(sha256Of: body)
        if let expected = reference.digest, expected != digest {
            throw KilnError(.checksumMismatch, "registry \(registry) sent a manifest for \(reference) whose digest is \(digest); refusing it")
        }
        let mediaType = response.headers.first(name: "content-type").map { $0.split(separator: ";")[0].trimmingCharacters(in: .whitespaces) } ?? MediaType.imageManifest
        return FetchedManifest(data: body, mediaType: mediaType, digest: digest)
    }

    public func putManifest(_ data: Data, mediaType: String, repository: String, reference: String) async throws -> Digest {
        let url = "\(baseURL)/\(repository)/manifests/\(reference)"
        let response = try await send(.PUT, url, repository: repository, actions: "pull,push", headers: ["Content-Type": mediaType], body: data)
        _ = try await collect(response, limit: 1 << 20, what: "manifest upload to \(repository):\(reference)", expect: [201])
        return Digest(sha256Of: data)
    }

    // MARK: Blobs

    public func blobExists(_ digest: Digest, repository: String) async throws -> Bool {
        let response = try await send(.HEAD, "\(baseURL)/\(repository)/blobs/\(digest)", repository: repository, actions: "pull")
        switch response.status.code {
        case 200: return true
        case 404: return false
        default: throw KilnError(.network, "registry \(registry): HEAD of blob \(digest) in \(repository) answered HTTP \(response.status.code)")
        }
    }

    /// Streams a blob into the content store, verifying its digest.
    public func pullBlob(_ descriptor: Descriptor, repository: String, into store: ContentStore) async throws {
        if store.contains(descriptor.digest) { return }
        let response = try await send(.GET, "\(baseURL)/\(repository)/blobs/\(descriptor.digest)", repository: repository, actions: "pull")
        guard response.status == .ok else {
            _ = try? await response.body.collect(upTo: 1 << 16)
            throw KilnError(.network, "registry \(registry): GET blob \(descriptor.digest) from \(repository) answered HTTP \(response.status.code)")
        }
        let writer = try ContentStore.BlobWriter(store: store)
        for try await buffer in response.body {
            try writer.write(Data(buffer.readableBytesView))
        }
        _ = try writer.commit(mediaType: descriptor.mediaType, expected: descriptor.digest)
    }

    /// Uploads a blob from the store unless the registry has it (monolithic POST + PUT).
    /// Returns whether bytes were sent.
    @discardableResult
    public func pushBlob(_ descriptor: Descriptor, repository: String, from store: ContentStore) async throws -> Bool {
        if try await blobExists(descriptor.digest, repository: repository) { return false }
        let start = try await send(.POST, "\(baseURL)/\(repository)/blobs/uploads/", repository: repository, actions: "pull,push")
        _ = try await collect(start, limit: 1 << 16, what: "upload start for \(descriptor.digest)", expect: [202])
        guard let location = start.headers.first(name: "location") else {
            throw KilnError(.network, "registry \(registry) started an upload without a Location header")
        }
        var url = location.hasPrefix("http") ? location : (insecureHTTP ? "http" : "https") + "://\(registry)" + location
        url += (url.contains("?") ? "&" : "?") + "digest=\(descriptor.digest)"
        let data = try store.read(descriptor.digest)
        let response = try await send(.PUT, url, repository: repository, actions: "pull,push", headers: ["Content-Type": "application/octet-stream"], body: data)
        _ = try await collect(response, limit: 1 << 16, what: "upload of \(descriptor.digest)", expect: [201])
        return true
    }

    // MARK: HTTP and auth

    private func send(
        _ method: HTTPMethod, _ url: String, repository: String, actions: String,
        headers: [String: String] = [:], body: Data? = nil
    ) async throws -> HTTPClientResponse {
        let scope = "repository:\(repository):\(actions)"
        var attempt = 0
        while true {
            attempt += 1
            var request = HTTPClientRequest(url: url)
            request.method = method
            for (name, value) in headers { request.headers.add(name: name, value: value) }
            if let token = tokens.withLock({ $0[scope] }) {
                request.headers.add(name: "Authorization", value: "Bearer \(token)")
            } else if let credentials {
                request.headers.add(name: "Authorization", value: credentials.basicHeader)
            }
            if let body { request.body = .bytes(ByteBuffer(bytes: body)) }
            let response: HTTPClientResponse
            do {
                response = try await http.execute(request, timeout: .minutes(30))
            } catch {
                throw KilnError(.network, "cannot reach registry \(registry) (\(url)): \(error)")
            }
            guard response.status == .unauthorized, attempt == 1 else {
                if response.status == .unauthorized {
                    throw KilnError(.invalidArgument, "registry \(registry) refused the credentials for \(scope); check the username and password (or token) for \(registry)")
                }
                return response
            }
            _ = try? await response.body.collect(upTo: 1 << 16)
            let challenge = response.headers.first(name: "www-authenticate") ?? ""
            if challenge.lowercased().hasPrefix("bearer") {
                let token = try await fetchToken(challenge: challenge, scope: scope)
                tokens.withLock { $0[scope] = token }
            } else if credentials == nil {
                throw KilnError(.invalidArgument, "registry \(registry) needs credentials (\(challenge.isEmpty ? "no challenge given" : challenge)); add them to ~/.docker/config.json or Kiln's config")
            }
        }
    }

    /// `Bearer realm="…",service="…",scope="…"` → a token from the realm.
    private func fetchToken(challenge: String, scope: String) async throws -> String {
        let parameters = Self.challengeParameters(challenge)
        guard let realm = parameters["realm"], var components = URLComponents(string: realm) else {
            throw KilnError(.network, "registry \(registry) sent a Bearer challenge without a realm: \(challenge)")
        }
        var query = components.queryItems ?? []
        if let service = parameters["service"] { query.append(URLQueryItem(name: "service", value: service)) }
        query.append(URLQueryItem(name: "scope", value: parameters["scope"] ?? scope))
        components.queryItems = query
        var request = HTTPClientRequest(url: components.url!.absoluteString)
        if let credentials { request.headers.add(name: "Authorization", value: credentials.basicHeader) }
        let response = try await http.execute(request, timeout: .minutes(1))
        let body = try await collect(response, limit: 1 << 20, what: "token from \(realm)")
        let object = (try? JSONSerialization.jsonObject(with: body)) as? [String: Any]
        guard let token = (object?["token"] ?? object?["access_token"]) as? String else {
            throw KilnError(.network, "the token service \(realm) answered without a token")
        }
        return token
    }

    static func challengeParameters(_ challenge: String) -> [String: String] {
        var result: [String: String] = [:]
        let body = challenge.drop { $0 != " " }
        let pattern = try! NSRegularExpression(pattern: #"(\w+)="([^"]*)""#)
        let text = String(body)
        for match in pattern.matches(in: text, range: NSRange(text.startIndex..., in: text)) {
            if let key = Range(match.range(at: 1), in: text), let value = Range(match.range(at: 2), in: text) {
                result[String(text[key])] = String(text[value])
            }
        }
        return result
    }

    private func collect(_ response: HTTPClientResponse, limit: Int, what: String, expect: Set<UInt> = [200]) async throws -> Data {
        let body = try await response.body.collect(upTo: limit)
        guard expect.contains(response.status.code) else {
            throw KilnError(.network, "registry \(registry): \(what) answered HTTP \(response.status.code): \(String(buffer: body).prefix(300))")
        }
        return Data(body.readableBytesView)
    }
}
