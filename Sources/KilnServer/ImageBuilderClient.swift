import AsyncHTTPClient
import Crypto
import Foundation
import KilnModel
import NIOCore
import NIOHTTP1

/// A client of `kiln server` (or of any Image Builder endpoint): it builds each request from
/// botocore's model, as the AWS SDKs do, and signs it with SigV4 (service `imagebuilder`).
/// `kiln apply`, `kiln pipeline start` and the `--endpoint` forms of `kiln images`, `logs` and
/// `cost` use it.
public struct ImageBuilderClient: Sendable {
    public let endpoint: String
    public let accessKeyId: String
    let secretAccessKey: String
    public let region: String
    let model = APIModel.imagebuilder

    public init(endpoint: String, accessKeyId: String, secretAccessKey: String, region: String) throws {
        guard let url = URL(string: endpoint), ["http", "https"].contains(url.scheme ?? ""), url.host != nil else {
            throw KilnError(.invalidArgument, "the endpoint must be an http or https URL like http://127.0.0.1:8080, not '\(endpoint)'")
        }
        self.endpoint = endpoint.hasSuffix("/") ? String(endpoint.dropLast()) : endpoint
        self.accessKeyId = accessKeyId
        self.secretAccessKey = secretAccessKey
        self.region = region
    }

    /// Calls `operation` with `input` (member names); returns the output object. An API error
    /// becomes a KilnError whose message starts with the exception's code.
    public func call(_ operation: String, _ input: [String: JSONValue] = [:]) async throws -> [String: JSONValue] {
        guard let described = model.operations[operation], let shape = model.inputShape(of: described) else {
            throw KilnError(.invalidArgument, "\(operation) is not an Image Builder operation")
        }
        var path = described.requestURI.split(separator: "?").first.map(String.init) ?? described.requestURI
        var query: [String] = []
        var body: [String: JSONValue] = [:]
        var input = input
        if shape.members["clientToken"] != nil, input["clientToken"] == nil {
            input["clientToken"] = .string(UUID().uuidString.lowercased())
        }
        for (name, value) in input {
            guard let member = shape.members[name] else { continue }
            switch member.location {
            case .uri:
                let text = value.string ?? value.description
                path = path.replacingOccurrences(of: "{\(member.wireName)}", with: Self.encode(text))
            case .querystring:
                let values = value.array ?? [value]
                for item in values { query.append("\(Self.encode(member.wireName))=\(Self.encode(item.string ?? item.description))") }
            default:
                body[member.wireName] = value
            }
        }
        let bodyBytes = described.method == "GET" || described.method == "DELETE" ? [] : JSONValue.object(body).encoded()
        let (status, data) = try await send(described.method, path: path, query: query.joined(separator: "&"), body: bodyBytes)
        let parsed = (try? JSONValue(parsing: data))?.object ?? [:]
        guard (200..<300).contains(status) else {
            let code = parsed["__type"]?.string ?? "HTTP \(status)"
            let message = parsed["message"]?.string ?? String(decoding: data.prefix(500), as: UTF8.self)
            throw KilnError(status == 404 ? .notFound : .invalidArgument, "\(operation): \(code): \(message)")
        }
        return parsed
    }

    /// A signed GET of one of Kiln's own routes (`/kiln/...`); the body on success.
    public func get(_ path: String, query: String = "") async throws -> Data {
        try await kilnRoute("GET", path, query: query)
    }

    /// A signed POST, with no body, of one of Kiln's own routes; the body on success.
    public func post(_ path: String) async throws -> Data {
        try await kilnRoute("POST", path, query: "")
    }

    func kilnRoute(_ method: String, _ path: String, query: String) async throws -> Data {
        let (status, data) = try await send(method, path: path, query: query, body: [])
        guard (200..<300).contains(status) else {
            let parsed = (try? JSONValue(parsing: data))?.object ?? [:]
            throw KilnError(
                status == 404 ? .notFound : .invalidArgument,
                "\(endpoint)\(path): \(parsed["__type"]?.string ?? "HTTP \(status)"): \(parsed["message"]?.string ?? String(decoding: data.prefix(300), as: UTF8.self))"
            )
        }
        return Data(data)
    }

    /// A signed GET of a server-sent event stream; `event` gets each event's name and data
    /// until the server ends the stream.
    public func stream(_ path: String, query: String = "", event: @Sendable (String, String) -> Void) async throws {
        var request = HTTPClientRequest(url: endpoint + path + (query.isEmpty ? "" : "?" + query))
        request.method = .GET
        for (name, value) in try sign("GET", path: path, query: query, body: []) { request.headers.add(name: name, value: value) }
        let response = try await HTTPClient.shared.execute(request, timeout: .hours(24))
        guard response.status == .ok else {
            let data = try await response.body.collect(upTo: 1 << 20)
            throw KilnError(.invalidArgument, "\(endpoint)\(path): HTTP \(response.status.code): \(String(buffer: data))")
        }
        var pending = ""
        var name = "message"
        for try await chunk in response.body {
            pending += String(buffer: chunk)
            while let newline = pending.firstIndex(of: "\n") {
                let line = String(pending[..<newline])
                pending = String(pending[pending.index(after: newline)...])
                if line.hasPrefix("event: ") {
                    name = String(line.dropFirst(7))
                } else if line.hasPrefix("data: ") {
                    event(name, String(line.dropFirst(6)))
                } else if line.isEmpty {
                    name = "message"
                }
            }
        }
    }

    func send(_ method: String, path: String, query: String, body: [UInt8]) async throws -> (Int, [UInt8]) {
        var request = HTTPClientRequest(url: endpoint + path + (query.isEmpty ? "" : "?" + query))
        request.method = HTTPMethod(rawValue: method)
        for (name, value) in try sign(method, path: path, query: query, body: body) { request.headers.add(name: name, value: value) }
        if !body.isEmpty {
            request.headers.add(name: "Content-Type", value: "application/x-amz-json-1.1")
            request.body = .bytes(ByteBuffer(bytes: body))
        }
        do {
            let response = try await HTTPClient.shared.execute(request, timeout: .seconds(120))
            var data = try await response.body.collect(upTo: 64 << 20)
            return (Int(response.status.code), data.readBytes(length: data.readableBytes) ?? [])
        } catch {
            throw KilnError(
                .network, "cannot reach kiln server at \(endpoint): \(error); is it running (kiln server) and is --endpoint right?")
        }
    }

    /// The headers that sign a request (host, x-amz-date, x-amz-content-sha256, authorization).
    func sign(_ method: String, path: String, query: String, body: [UInt8], now: Date = Date()) throws -> [(String, String)] {
        guard let url = URL(string: endpoint), let host = url.host else { throw KilnError(.invalidArgument, "bad endpoint \(endpoint)") }
        let authority = url.port.map { "\(host):\($0)" } ?? host
        let stamp = SigV4Verifier.stamp(now)
        let date = String(stamp.prefix(8))
        let payload = SigV4Verifier.hex(SHA256.hash(data: body))
        let headers = [("host", authority), ("x-amz-content-sha256", payload), ("x-amz-date", stamp)]
        let signedHeaders = headers.map(\.0).joined(separator: ";")
        let canonical = [
            method, SigV4Verifier.canonicalURI(path),
            SigV4Verifier.canonicalQueryString(QueryParameter.parse(query), excludingSignature: false),
            headers.map { "\($0.0):\($0.1)\n" }.joined(), signedHeaders, payload,
        ].joined(separator: "\n")
        let scope = "\(date)/\(region)/imagebuilder/aws4_request"
        let toSign = "AWS4-HMAC-SHA256\n\(stamp)\n\(scope)\n\(SigV4Verifier.hex(SHA256.hash(data: Array(canonical.utf8))))"
        let key = SigV4Verifier.signingKey(secret: secretAccessKey, date: date, region: region, service: "imagebuilder")
        let signature = SigV4Verifier.hex(HMAC<SHA256>.authenticationCode(for: Array(toSign.utf8), using: key))
        return headers + [
            ("authorization", "AWS4-HMAC-SHA256 Credential=\(accessKeyId)/\(scope), SignedHeaders=\(signedHeaders), Signature=\(signature)")
        ]
    }

    /// Percent-encodes everything but RFC 3986's unreserved characters, as botocore encodes labels.
    public static func encode(_ text: String) -> String {
        var bytes: [UInt8] = []
        SigV4Verifier.percentEncode(Array(text.utf8), into: &bytes)
        return String(decoding: bytes, as: UTF8.self)
    }
}
