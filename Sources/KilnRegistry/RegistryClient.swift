import AsyncHTTPClient
import Foundation
import KilnModel
import KilnOCI
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

/// How often and how patiently a request is retried after a 5xx, a 429 or a dropped connection.
public struct RetryPolicy: Sendable, Hashable {
    public var attempts: Int
    public var firstDelay: Duration
    public var maximumDelay: Duration

    public init(attempts: Int = 5, firstDelay: Duration = .milliseconds(250), maximumDelay: Duration = .seconds(8)) {
        self.attempts = max(1, attempts)
        self.firstDelay = firstDelay
        self.maximumDelay = maximumDelay
    }

    /// Doubling delays, capped.
    func delay(beforeAttempt attempt: Int) -> Duration {
        var delay = firstDelay
        for _ in 1..<max(1, attempt - 1) where delay < maximumDelay { delay *= 2 }
        return min(delay, maximumDelay)
    }

    static func isRetryable(status: UInt) -> Bool { status == 429 || status == 500 || status == 502 || status == 503 || status == 504 }
}

/// A client for one registry, following the OCI distribution spec 1.1: ping and auth
/// (anonymous, Basic, Bearer tokens from `WWW-Authenticate`), manifests by tag or digest, and
/// blobs (see RegistryClient+Blobs.swift). Requests are retried with backoff by `retry`.
public final class RegistryClient: Sendable {
    public let registry: String
    public let insecureHTTP: Bool
    public let retry: RetryPolicy
    /// Blobs up to this size go in one PUT; larger ones in PATCH chunks of `chunkSize`.
    public let monolithicLimit: Int64
    public let chunkSize: Int64
    let http: HTTPClient
    private let credentials: RegistryCredentials?
    /// Bearer tokens by scope.
    private let tokens = Mutex<[String: String]>([:])
    /// Set once the registry has asked for Basic credentials; until then requests go without them.
    private let basicRequested = Mutex<Bool>(false)
    /// Clients made with their own TLS settings must be shut down.
    private let ownsClient: Bool

    /// The largest manifest or index Kiln reads (containerd's limit too); real ones are a few KiB.
    public static let maximumManifestBytes = 4 << 20
    /// The largest image config Kiln downloads; history and labels make configs larger than manifests.
    public static let maximumConfigBytes = 8 << 20

    public static let manifestAccept = [
        MediaType.imageManifest, MediaType.imageIndex, MediaType.dockerManifest, MediaType.dockerManifestList,
    ].joined(separator: ", ")

    /// `insecureHTTP` speaks plain http (loopback and explicitly insecure registries);
    /// `caCertificatePath` trusts a private CA (a PEM file) instead of the system's.
    public init(
        registry: String, credentials: RegistryCredentials? = nil, insecureHTTP: Bool = false, caCertificatePath: String? = nil,
        retry: RetryPolicy = RetryPolicy(), monolithicLimit: Int64 = 64 << 20, chunkSize: Int64 = 32 << 20
    ) throws {
        self.registry = registry
        self.credentials = credentials
        self.insecureHTTP = insecureHTTP
        self.retry = retry
        self.monolithicLimit = monolithicLimit
        self.chunkSize = max(1, chunkSize)
        if let caCertificatePath, !insecureHTTP {
            var tls = TLSConfiguration.makeClientConfiguration()
            do {
                tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(caCertificatePath))
            } catch {
                throw KilnError(
                    .invalidArgument, "cannot read the CA certificate '\(caCertificatePath)' for \(registry): \(error); give a PEM file")
            }
            http = Self.makeHTTPClient(tls: tls)
            ownsClient = true
        } else {
            http = Self.sharedHTTPClient
            ownsClient = false
        }
    }

    /// One client for the process. A refused connection or a failed TLS handshake fails at once
    /// instead of being retried inside the pool until the deadline; retries follow `retry`.
    public static let sharedHTTPClient = makeHTTPClient(tls: nil)

    package static func makeHTTPClient(tls: TLSConfiguration?) -> HTTPClient {
        var configuration = HTTPClient.Configuration()
        if let tls { configuration.tlsConfiguration = tls }
        configuration.connectionPool.retryConnectionEstablishment = false
        configuration.timeout.connect = .seconds(30)
        return HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
    }

    public func shutdown() async {
        if ownsClient { try? await http.shutdown() }
    }

    var origin: String { "\(insecureHTTP ? "http" : "https")://\(registry)" }
    var baseURL: String { origin + "/v2" }

    /// `GET /v2/`: reachable, and the credentials (if any) are accepted.
    public func ping() async throws {
        let response = try await send(.GET, baseURL + "/", scope: nil)
        _ = try await collect(response, limit: 1 << 16, what: "ping")
    }

    // MARK: Manifests

    public struct FetchedManifest: Sendable {
        public var data: Data
        public var mediaType: String
        public var digest: Digest
    }

    public func manifest(_ reference: ImageReference) async throws -> FetchedManifest {
        try await manifest(repository: reference.repository, reference: reference.manifestReference, expected: reference.digest)
    }

    /// One HEAD of a manifest, not retried: the caller polls, and backs off itself on a 429 or 5xx.
    public func headManifest(_ reference: ImageReference) async throws -> ManifestHead {
        let url = "\(baseURL)/\(reference.repository)/manifests/\(reference.manifestReference)"
        let response = try await send(
            .HEAD, url, scope: .pull(reference.repository), headers: ["Accept": Self.manifestAccept], retrying: false)
        _ = try? await response.body.collect(upTo: 1 << 16)
        let retryAfter = response.headers.first(name: "retry-after").flatMap { Int($0.trimmingCharacters(in: .whitespaces)) }
        return ManifestHead(
            status: response.status.code, digest: response.headers.first(name: "docker-content-digest"), retryAfterSeconds: retryAfter)
    }

    public func manifest(repository: String, reference: String, expected: Digest? = nil) async throws -> FetchedManifest {
        let url = "\(baseURL)/\(repository)/manifests/\(reference)"
        let response = try await send(.GET, url, scope: .pull(repository), headers: ["Accept": Self.manifestAccept])
        if response.status == .notFound {
            _ = try? await response.body.collect(upTo: 1 << 16)
            throw KilnError(
                .notFound, "\(registry)/\(repository):\(reference) does not exist in the registry; check the repository and tag")
        }
        let body = try await collect(
            response, limit: Self.maximumManifestBytes, what: "the manifest of \(repository):\(reference)",
            advice: "real manifests are a few KiB; check that \(registry)/\(repository):\(reference) names an image")
        let digest = Digest(sha256Of: body)
        if let expected, expected != digest {
            throw KilnError(
                .checksumMismatch,
                "registry \(registry) sent a manifest for \(repository)@\(expected) whose digest is \(digest); refusing it")
        }
        let declared = response.headers.first(name: "content-type").map { $0.split(separator: ";")[0].trimmingCharacters(in: .whitespaces) }
        let mediaType = MediaType.sniff(body) ?? declared ?? MediaType.imageManifest
        return FetchedManifest(data: body, mediaType: mediaType, digest: digest)
    }

    @discardableResult
    public func putManifest(_ data: Data, mediaType: String, repository: String, reference: String) async throws -> Digest {
        let url = "\(baseURL)/\(repository)/manifests/\(reference)"
        let response = try await send(
            .PUT, url, scope: .push(repository), headers: ["Content-Type": mediaType], body: { .bytes(ByteBuffer(bytes: data)) })
        _ = try await collect(response, limit: 1 << 20, what: "manifest upload to \(repository):\(reference)", expect: [201])
        let digest = Digest(sha256Of: data)
        if let echoed = response.headers.first(name: "docker-content-digest"), echoed != digest.description {
            throw KilnError(
                .checksumMismatch, "registry \(registry) stored \(repository):\(reference) as \(echoed), but Kiln sent \(digest)")
        }
        return digest
    }

    // MARK: HTTP, auth and retries

    /// Token scopes, as a Bearer challenge names them.
    struct Scope: Hashable {
        var text: String
        static func pull(_ repository: String) -> Scope { Scope(text: "repository:\(repository):pull") }
        static func push(_ repository: String) -> Scope { Scope(text: "repository:\(repository):pull,push") }
        static func mount(into repository: String, from source: String) -> Scope {
            Scope(text: "repository:\(repository):pull,push repository:\(source):pull")
        }
    }

    /// Sends a request, answering one auth challenge and retrying 5xx/429 answers and
    /// connection failures with backoff. `body` is called again for each attempt.
    /// Credentials go only to the registry's own origin, and only once it has asked for them
    /// with a 401 challenge; a URL elsewhere (an upload Location) gets none and its challenges
    /// are not answered.
    func send(
        _ method: HTTPMethod, _ url: String, scope: Scope?, headers: [String: String] = [:],
        body: (() throws -> HTTPClientRequest.Body)? = nil, retrying: Bool = true,
        onRetry: (@Sendable (String) -> Void)? = nil
    ) async throws -> HTTPClientResponse {
        var challenged = false
        var attempt = 0
        let ownOrigin = isOwnOrigin(url)
        while true {
            attempt += 1
            var request = HTTPClientRequest(url: url)
            request.method = method
            for (name, value) in headers { request.headers.add(name: name, value: value) }
            if ownOrigin, let scope, let token = tokens.withLock({ $0[scope.text] }) {
                request.headers.add(name: "Authorization", value: "Bearer \(token)")
            } else if ownOrigin, let credentials, basicRequested.withLock({ $0 }) {
                request.headers.add(name: "Authorization", value: credentials.basicHeader)
            }
            if let body { request.body = try body() }
            let canRetry = retrying && attempt < retry.attempts
            let response: HTTPClientResponse
            do {
                response = try await http.execute(request, timeout: .minutes(30))
            } catch {
                guard canRetry, !(error is CancellationError) else {
                    throw KilnError(.network, "cannot reach registry \(registry) (\(method) \(url)) after \(attempt) attempt(s): \(error)")
                }
                onRetry?("\(method) \(url): \(error)")
                try await Task.sleep(for: retry.delay(beforeAttempt: attempt + 1))
                continue
            }
            if RetryPolicy.isRetryable(status: response.status.code), canRetry {
                _ = try? await response.body.collect(upTo: 1 << 16)
                onRetry?("\(method) \(url): HTTP \(response.status.code)")
                try await Task.sleep(for: retry.delay(beforeAttempt: attempt + 1))
                continue
            }
            guard response.status == .unauthorized else { return response }
            _ = try? await response.body.collect(upTo: 1 << 16)
            let challenge = response.headers.first(name: "www-authenticate") ?? ""
            guard ownOrigin else {
                throw KilnError(
                    .invalidArgument,
                    "registry \(registry) sent Kiln to \(Self.originText(url)) (\(method) \(url)), which asks for credentials; Kiln sends the credentials for \(registry) only to \(origin) itself. Configure the registry to answer with upload locations on its own address (relative Location headers)"
                )
            }
            if challenged {
                throw KilnError(
                    .invalidArgument,
                    "registry \(registry) refused the credentials for \(scope?.text ?? url); check the username and password (or token) for \(registry)"
                )
            }
            challenged = true
            attempt -= 1
            if challenge.lowercased().hasPrefix("bearer") {
                let wanted = scope ?? Scope(text: "")
                let token = try await fetchToken(challenge: challenge, scope: wanted.text)
                tokens.withLock { $0[wanted.text] = token }
            } else if credentials == nil {
                throw KilnError(
                    .invalidArgument,
                    "registry \(registry) needs credentials (\(challenge.isEmpty ? "no challenge given" : challenge)); add a login to ~/.docker/config.json, REGISTRY_AUTH_FILE or kiln.yaml"
                )
            } else {
                basicRequested.withLock { $0 = true }
            }
        }
    }

    /// `Bearer realm="…",service="…",scope="…"` → a token from the realm.
    private func fetchToken(challenge: String, scope: String) async throws -> String {
        let parameters = Self.challengeParameters(challenge)
        guard let realm = parameters["realm"], var components = URLComponents(string: realm) else {
            throw KilnError(.network, "registry \(registry) sent a Bearer challenge without a realm: \(challenge)")
        }
        // Logins and tokens cross the network only over TLS. A plain-http token service is
        // accepted only where nothing leaves the machine: registry and realm both plain http on loopback.
        let realmScheme = components.scheme?.lowercased()
        let localTestSetup =
            realmScheme == "http" && insecureHTTP && Self.isLoopbackHost(Self.hostOf(registry))
            && Self.isLoopbackHost(components.host ?? "")
        guard realmScheme == "https" || localTestSetup else {
            throw KilnError(
                .invalidArgument,
                "registry \(registry) asks Kiln to get a token from \(realm), which is not an https address; Kiln sends logins and takes tokens only over https (plain http only when the registry and its token service are both on loopback). Ask the registry's operator to serve the token service (the realm in its WWW-Authenticate challenge) over https"
            )
        }
        var query = components.queryItems ?? []
        if let service = parameters["service"] { query.append(URLQueryItem(name: "service", value: service)) }
        let scopes = scope.isEmpty ? (parameters["scope"].map { [$0] } ?? []) : scope.split(separator: " ").map(String.init)
        for item in scopes { query.append(URLQueryItem(name: "scope", value: item)) }
        components.queryItems = query
        var request = HTTPClientRequest(url: components.url!.absoluteString)
        if let credentials { request.headers.add(name: "Authorization", value: credentials.basicHeader) }
        let response: HTTPClientResponse
        do {
            response = try await http.execute(request, timeout: .minutes(1))
        } catch {
            throw KilnError(.network, "cannot reach the token service \(realm) for \(registry): \(error)")
        }
        if response.status == .unauthorized || response.status == .forbidden {
            throw KilnError(
                .invalidArgument,
                "the token service \(realm) refused the credentials for \(registry) (HTTP \(response.status.code)); check the login for \(registry)"
            )
        }
        let body = try await collect(
            response, limit: 1 << 20, what: "the token from \(realm)",
            advice: "real tokens are a few KiB; check the token service of \(registry)")
        let object = (try? JSONSerialization.jsonObject(with: body)) as? [String: Any]
        guard let token = (object?["token"] ?? object?["access_token"]) as? String else {
            throw KilnError(.network, "the token service \(realm) answered without a token")
        }
        return token
    }

    static func challengeParameters(_ challenge: String) -> [String: String] {
        var result: [String: String] = [:]
        let text = String(challenge.drop { $0 != " " })
        let pattern = try! NSRegularExpression(pattern: #"(\w+)="([^"]*)""#)
        for match in pattern.matches(in: text, range: NSRange(text.startIndex..., in: text)) {
            if let key = Range(match.range(at: 1), in: text), let value = Range(match.range(at: 2), in: text) {
                result[String(text[key])] = String(text[value])
            }
        }
        return result
    }

    /// A response body in memory, never more than `limit` bytes: refused when Content-Length
    /// says more, and stopped as soon as the stream passes it. An unexpected status throws with
    /// the start of the body only.
    func collect(
        _ response: HTTPClientResponse, limit: Int, what: String, expect: Set<UInt> = [200],
        advice: String = "a registry's answer is far smaller; check that it is a registry"
    ) async throws -> Data {
        guard expect.contains(response.status.code) else {
            let start = await Self.start(of: response, bytes: 1024)
            throw KilnError(
                .network,
                "registry \(registry): \(what) answered HTTP \(response.status.code): \(String(decoding: start, as: UTF8.self).prefix(300))"
            )
        }
        func tooLarge(_ detail: String) -> KilnError {
            KilnError(
                .invalidArgument,
                "registry \(registry): \(what) is larger than Kiln's limit of \(Self.sizeText(limit)) (\(detail)); refusing it: \(advice)")
        }
        if let text = response.headers.first(name: "content-length"), let declared = Int64(text.trimmingCharacters(in: .whitespaces)),
            declared > limit
        {
            throw tooLarge("Content-Length \(declared)")
        }
        var data = Data()
        for try await chunk in response.body {
            guard data.count + chunk.readableBytes <= limit else { throw tooLarge("the body went on past it") }
            data.append(contentsOf: chunk.readableBytesView)
        }
        return data
    }

    /// The first bytes of a body, for error messages; the rest is left unread.
    static func start(of response: HTTPClientResponse, bytes: Int) async -> [UInt8] {
        var start: [UInt8] = []
        do {
            for try await chunk in response.body {
                start += chunk.readableBytesView.prefix(bytes - start.count)
                if start.count >= bytes { break }
            }
        } catch {}
        return start
    }

    static func sizeText(_ bytes: Int) -> String {
        bytes >= 1 << 20 && bytes % (1 << 20) == 0 ? "\(bytes >> 20) MiB" : "\(bytes) bytes"
    }

    // MARK: Origins

    /// Scheme, host and port, the way browsers compare origins (default ports filled in).
    struct Origin: Equatable {
        var scheme: String
        var host: String
        var port: Int

        init?(_ url: String) {
            guard let components = URLComponents(string: url), let scheme = components.scheme?.lowercased(),
                scheme == "http" || scheme == "https", let host = components.host, !host.isEmpty
            else { return nil }
            self.scheme = scheme
            self.host = RegistryClient.hostOf(host)
            port = components.port ?? (scheme == "https" ? 443 : 80)
        }
    }

    func isOwnOrigin(_ url: String) -> Bool {
        guard let own = Origin(origin), let other = Origin(url) else { return false }
        return own == other
    }

    /// `host`, `host:port` or `[v6]:port` → the host alone, lowercased and without brackets.
    static func hostOf(_ authority: String) -> String {
        var host = Substring(authority.lowercased())
        if host.hasPrefix("[") { return String(host.dropFirst().prefix { $0 != "]" }) }
        if host.filter({ $0 == ":" }).count == 1 { host = host.prefix { $0 != ":" } }
        return String(host)
    }

    static func isLoopbackHost(_ host: String) -> Bool {
        host == "localhost" || host.hasPrefix("127.") || host == "::1"
    }

    static func originText(_ url: String) -> String {
        guard let origin = Origin(url) else { return url }
        return "\(origin.scheme)://\(origin.host.contains(":") ? "[\(origin.host)]" : origin.host):\(origin.port)"
    }

    /// A `Location` header made absolute. Another origin is allowed (followed without
    /// credentials), but not plain http from an https registry: the image's bytes would travel in clear.
    func absolute(_ location: String) throws -> String {
        let lowered = location.lowercased()
        guard lowered.hasPrefix("http://") || lowered.hasPrefix("https://") else {
            guard !lowered.contains("://") else {
                throw KilnError(
                    .network, "registry \(registry) answered with the upload location '\(location.prefix(200))', which is not http(s)")
            }
            return origin + (location.hasPrefix("/") ? "" : "/") + location
        }
        if !insecureHTTP, lowered.hasPrefix("http://") {
            throw KilnError(
                .network,
                "registry \(registry) is spoken to over https but answered with the plain-http upload location \(location.prefix(200)); Kiln will not send the image there in clear. Configure the registry (or the proxy in front of it) to answer with https or relative upload locations"
            )
        }
        return location
    }
}

/// What a manifest HEAD answered: the status, the tag's digest, and a 429's Retry-After.
public struct ManifestHead: Sendable, Hashable {
    public var status: UInt
    public var digest: String?
    public var retryAfterSeconds: Int?

    public init(status: UInt, digest: String?, retryAfterSeconds: Int?) {
        self.status = status
        self.digest = digest
        self.retryAfterSeconds = retryAfterSeconds
    }
}
