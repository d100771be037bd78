import AsyncHTTPClient
import Crypto
import Foundation
import KilnModel
import NIOCore
import NIOHTTP1

#if canImport(FoundationXML)
    import FoundationXML
#endif

/// Where S3 is and who we are: from the standard AWS environment variables, so any
/// S3-compatible endpoint works (`AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL`).
struct S3Configuration: Sendable, Hashable {
    var endpoint: URL?
    var region: String
    var credentials: SigV4Signer.Credentials?

    init(endpoint: URL?, region: String, credentials: SigV4Signer.Credentials?) {
        self.endpoint = endpoint
        self.region = region
        self.credentials = credentials
    }

    init(environment: [String: String]) {
        region = environment["AWS_REGION"] ?? environment["AWS_DEFAULT_REGION"] ?? "us-east-1"
        endpoint = (environment["AWS_ENDPOINT_URL_S3"] ?? environment["AWS_ENDPOINT_URL"]).flatMap(URL.init(string:))
        if let key = environment["AWS_ACCESS_KEY_ID"], let secret = environment["AWS_SECRET_ACCESS_KEY"] {
            credentials = .init(accessKeyID: key, secretAccessKey: secret, sessionToken: environment["AWS_SESSION_TOKEN"])
        } else {
            credentials = Self.sharedCredentials(environment: environment)
        }
    }

    /// `~/.aws/credentials`, profile `AWS_PROFILE` or `default`.
    static func sharedCredentials(environment: [String: String]) -> SigV4Signer.Credentials? {
        let path = environment["AWS_SHARED_CREDENTIALS_FILE"] ?? ((environment["HOME"] ?? NSHomeDirectory()) + "/.aws/credentials")
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return nil }
        let profile = environment["AWS_PROFILE"] ?? "default"
        var current = ""
        var values: [String: String] = [:]
        for raw in text.split(separator: "\n") {
            let line = raw.trimmingCharacters(in: .whitespaces)
            if line.hasPrefix("[") && line.hasSuffix("]") {
                current = String(line.dropFirst().dropLast()).trimmingCharacters(in: .whitespaces)
            } else if current == profile, let equals = line.firstIndex(of: "=") {
                values[line[..<equals].trimmingCharacters(in: .whitespaces)] = line[line.index(after: equals)...].trimmingCharacters(
                    in: .whitespaces)
            }
        }
        guard let key = values["aws_access_key_id"], let secret = values["aws_secret_access_key"] else { return nil }
        return .init(accessKeyID: key, secretAccessKey: secret, sessionToken: values["aws_session_token"])
    }
}

/// `s3://bucket/key`, parsed.
struct S3Location: Sendable, Hashable, CustomStringConvertible {
    var bucket: String
    var key: String

    init(_ uri: String) throws {
        guard uri.hasPrefix("s3://") else {
            throw KilnError(.invalidArgument, "'\(uri)' is not an S3 URI; write s3://bucket/key")
        }
        let rest = uri.dropFirst(5)
        let bucket = rest.prefix { $0 != "/" }
        guard !bucket.isEmpty, bucket.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "-" || $0 == "." || $0 == "_" }) else {
            throw KilnError(.invalidArgument, "'\(uri)' has no valid bucket name; write s3://bucket/key")
        }
        self.bucket = String(bucket)
        key = String(rest.dropFirst(bucket.count).drop { $0 == "/" })
    }

    var description: String { "s3://\(bucket)/\(key)" }
}

/// The few S3 calls the actions need, signed with SigV4, path-style addressing.
struct S3Client: Sendable {
    let configuration: S3Configuration
    let http: HTTPClient

    func url(bucket: String, key: String = "", query: [(String, String)] = []) -> URL {
        let base = configuration.endpoint?.absoluteString ?? "https://s3.\(configuration.region).amazonaws.com"
        var text = base.hasSuffix("/") ? String(base.dropLast()) : base
        text += "/" + SigV4Signer.uriEncode(bucket)
        if !key.isEmpty { text += "/" + SigV4Signer.uriEncode(key, keepSlash: true) }
        if !query.isEmpty {
            text += "?" + query.map { "\(SigV4Signer.uriEncode($0.0))=\(SigV4Signer.uriEncode($0.1))" }.joined(separator: "&")
        }
        return URL(string: text)!
    }

    func request(_ method: HTTPMethod, _ url: URL, headers: [String: String] = [:], payloadHash: String) throws -> HTTPClientRequest {
        guard let credentials = configuration.credentials else {
            throw KilnError(
                .invalidArgument,
                "no AWS credentials for S3: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or a profile in ~/.aws/credentials")
        }
        let signer = SigV4Signer(credentials: credentials, region: configuration.region, service: "s3")
        var request = HTTPClientRequest(url: url.absoluteString)
        request.method = method
        for (name, value) in signer.sign(method: method.rawValue, url: url, headers: headers, payloadHash: payloadHash) {
            request.headers.replaceOrAdd(name: name, value: value)
        }
        return request
    }

    static let emptyHash = SigV4Signer.hex(SHA256.hash(data: Data()))

    func ownerHeaders(_ owner: String?) -> [String: String] {
        owner.map { ["x-amz-expected-bucket-owner": $0] } ?? [:]
    }

    func download(_ location: S3Location, to hostPath: String, expectedOwner: String?, log: TOELogWriter) async throws {
        let request = try request(
            .GET, url(bucket: location.bucket, key: location.key), headers: ownerHeaders(expectedOwner), payloadHash: Self.emptyHash)
        do {
            _ = try await TransferClients.download(
                request, client: http, to: hostPath, hashing: nil, log: log, label: "S3Download \(location)")
        } catch let error as HTTPStatusError {
            throw KilnError(.network, "S3 GET \(location) failed: \(error)\(error.status == 404 ? " (no such object)" : "")")
        }
    }

    func upload(hostPath: String, to location: S3Location, expectedOwner: String?, log: TOELogWriter) async throws {
        let size = (try FileManager.default.attributesOfItem(atPath: hostPath)[.size] as? NSNumber)?.int64Value ?? 0
        var request = try request(
            .PUT, url(bucket: location.bucket, key: location.key), headers: ownerHeaders(expectedOwner),
            payloadHash: SigV4Signer.unsignedPayload)
        request.headers.replaceOrAdd(name: "content-length", value: String(size))
        request.body = .stream(FileChunks(path: hostPath), length: .known(size))
        let response = try await http.execute(request, timeout: .hours(24))
        let body = try await response.body.collect(upTo: 1 << 20)
        guard response.status == .ok else {
            throw KilnError(.network, "S3 PUT \(location) failed: HTTP \(response.status.code) \(String(buffer: body).prefix(300))")
        }
        log.info("S3Upload: \(hostPath.split(separator: "/").last ?? "") → \(location) (\(TransferClients.progress(size, of: nil)))")
    }

    /// Keys under `prefix`, at most `limit`.
    func list(bucket: String, prefix: String, expectedOwner: String?, limit: Int = 1000) async throws -> [String] {
        var keys: [String] = []
        var token: String?
        repeat {
            var query = [("list-type", "2"), ("prefix", prefix), ("max-keys", String(limit))]
            if let token { query.append(("continuation-token", token)) }
            let request = try request(
                .GET, url(bucket: bucket, query: query), headers: ownerHeaders(expectedOwner), payloadHash: Self.emptyHash)
            let response = try await http.execute(request, timeout: .minutes(5))
            let body = try await response.body.collect(upTo: 64 << 20)
            guard response.status == .ok else {
                throw KilnError(
                    .network, "S3 list s3://\(bucket)/\(prefix) failed: HTTP \(response.status.code) \(String(buffer: body).prefix(300))")
            }
            let page = ListBucketResult.parse(Data(body.readableBytesView))
            keys += page.keys
            token = page.truncated ? page.nextToken : nil
        } while token != nil && keys.count < limit
        return Array(keys.prefix(limit))
    }
}

/// The parts of a ListObjectsV2 answer that matter here.
struct ListBucketResult {
    var keys: [String] = []
    var truncated = false
    var nextToken: String?

    static func parse(_ data: Data) -> ListBucketResult {
        let delegate = Delegate()
        let parser = XMLParser(data: data)
        parser.delegate = delegate
        parser.parse()
        return delegate.result
    }

    private final class Delegate: NSObject, XMLParserDelegate {
        var result = ListBucketResult()
        var text = ""
        var inContents = false

        func parser(
            _ parser: XMLParser, didStartElement element: String, namespaceURI: String?, qualifiedName: String?,
            attributes: [String: String] = [:]
        ) {
            text = ""
            if element == "Contents" { inContents = true }
        }

        func parser(_ parser: XMLParser, foundCharacters string: String) { text += string }

        func parser(_ parser: XMLParser, didEndElement element: String, namespaceURI: String?, qualifiedName: String?) {
            switch element {
            case "Key" where inContents: result.keys.append(text)
            case "Contents": inContents = false
            case "IsTruncated": result.truncated = text == "true"
            case "NextContinuationToken": result.nextToken = text
            default: break
            }
        }
    }
}
