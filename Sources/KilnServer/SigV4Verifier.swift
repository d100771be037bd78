import Crypto
import Foundation
import Synchronization

/// A request as it arrived on the wire, before any decoding: SigV4 signs the raw bytes, so the
/// path and query stay percent-encoded exactly as the client sent them.
public struct SigV4Request: Sendable {
    public var method: String
    /// The path as received, still percent-encoded: `/tags/arn%3Aaws%3Aimagebuilder%3A…`.
    public var rawPath: String
    /// The query as received, without `?`, still percent-encoded; "" when there is none.
    public var rawQuery: String
    /// Every header as received, in order; a name may repeat.
    public var headers: [(name: String, value: String)]
    public var body: [UInt8]

    public init(method: String, rawPath: String, rawQuery: String = "", headers: [(name: String, value: String)], body: [UInt8] = []) {
        self.method = method
        self.rawPath = rawPath
        self.rawQuery = rawQuery
        self.headers = headers
        self.body = body
    }

    /// `target` is the request line's target, `/path?query`, as received.
    public init(method: String, target: String, headers: [(name: String, value: String)], body: [UInt8] = []) {
        let parts = target.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false)
        self.init(
            method: method, rawPath: String(parts[0]), rawQuery: parts.count > 1 ? String(parts[1]) : "", headers: headers, body: body)
    }
}

/// Why a request's signature was refused, in the words and status AWS uses (the Image Builder API
/// reference's common errors), so the AWS CLI and SDKs show their usual message.
public struct SigV4Failure: Error, Sendable, Hashable, CustomStringConvertible {
    public var code: String
    public var message: String
    public var status: Int

    public init(code: String, message: String, status: Int = 403) {
        self.code = code
        self.message = message
        self.status = status
    }

    public var description: String { "\(code) (\(status)): \(message)" }

    public static let missingAuthenticationToken = SigV4Failure(
        code: "MissingAuthenticationTokenException", message: "Missing Authentication Token")
    public static let unrecognizedClient = SigV4Failure(
        code: "UnrecognizedClientException", message: "The security token included in the request is invalid.")
    public static let signatureMismatch = invalidSignature(
        "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details."
    )

    static func incompleteSignature(_ message: String) -> SigV4Failure {
        SigV4Failure(code: "IncompleteSignatureException", message: message)
    }

    static func invalidSignature(_ message: String) -> SigV4Failure {
        SigV4Failure(code: "InvalidSignatureException", message: message)
    }
}

/// Checks AWS Signature Version 4 (AWS4-HMAC-SHA256) on requests to one service, signed either in
/// the `Authorization` header or in a presigned URL's query, and canonicalised as botocore does for
/// every service but S3 (the path is URI-encoded once more, and dot segments and empty segments
/// are removed). Any region in the credential scope is accepted; the service must match.
///
/// Derived signing keys are cached per access key, date and region, so checking a presigned URL
/// costs two SHA-256 hashes and one HMAC. Only keys that verified a request are cached: a caller
/// without the secret cannot grow the cache by naming new regions.
public struct SigV4Verifier: Sendable {
    public let service: String
    public let allowedSkew: Duration
    private let secrets: [String: String]
    private let signingKeys = SigningKeyCache()

    static let algorithm = "AWS4-HMAC-SHA256"
    static let unsignedPayload = "UNSIGNED-PAYLOAD"
    /// Presigned URLs may live at most a week, as in AWS.
    static let longestExpiry = 604_800

    /// `secrets` maps access key ids to secret access keys.
    public init(secrets: [String: String], service: String = "imagebuilder", allowedSkew: Duration = .seconds(900)) {
        self.secrets = secrets
        self.service = service
        self.allowedSkew = allowedSkew
    }

    /// Returns the access key id that signed `request`, or throws why it cannot be trusted.
    public func verify(_ request: SigV4Request, now: Date = Date()) throws(SigV4Failure) -> String {
        let headers = HeaderMap(request.headers)
        let query = QueryParameter.parse(request.rawQuery)
        let authorization = headers.values("authorization")
        let presigned = query.contains { $0.name == "X-Amz-Algorithm" }
        let claim: SignatureClaim
        switch (authorization, presigned) {
        case (nil, false):
            throw .missingAuthenticationToken
        case (.some, true):
            throw .incompleteSignature(
                "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter or the Authorization header should be specified."
            )
        case (let values?, false):
            guard values.count == 1 else { throw .incompleteSignature("The request has \(values.count) Authorization headers; send one.") }
            claim = try SignatureClaim(header: values[0], headers: headers)
        case (nil, true):
            claim = try SignatureClaim(query: query)
        }
        try checkScope(claim)
        try checkTime(claim, now: now)
        guard let secret = secrets[claim.accessKeyId] else { throw .unrecognizedClient }

        let payloadHashes = try Self.payloadHashes(request.body, headers: headers, presigned: claim.expires != nil)
        let canonicalPrefix = try Self.canonicalRequestPrefix(request, query: query, headers: headers, claim: claim)
        let scope = "\(claim.scopeDate)/\(claim.region)/\(claim.service)/aws4_request"
        let cacheKey = "\(claim.accessKeyId)/\(claim.scopeDate)/\(claim.region)"
        let cachedKey = signingKeys[cacheKey]
        let signingKey =
            cachedKey ?? Self.signingKey(secret: secret, date: claim.scopeDate, region: claim.region, service: claim.service)
        for payloadHash in payloadHashes {
            let canonicalRequest = canonicalPrefix + payloadHash
            let stringToSign =
                "\(Self.algorithm)\n\(claim.timestamp.stamp)\n\(scope)\n\(Self.hex(SHA256.hash(data: Array(canonicalRequest.utf8))))"
            let signature = Self.hex(HMAC<SHA256>.authenticationCode(for: Array(stringToSign.utf8), using: signingKey))
            if Self.constantTimeEqual(signature, claim.signature) {
                if cachedKey == nil { signingKeys[cacheKey] = signingKey }
                return claim.accessKeyId
            }
        }
        throw .signatureMismatch
    }

    /// How many derived signing keys are cached (for tests).
    var cachedSigningKeyCount: Int { signingKeys.count }

    private func checkScope(_ claim: SignatureClaim) throws(SigV4Failure) {
        guard claim.terminator == "aws4_request" else {
            throw .invalidSignature("Credential should be scoped with a valid terminator: 'aws4_request', not '\(claim.terminator)'. ")
        }
        guard claim.service == service else { throw .invalidSignature("Credential should be scoped to correct service: '\(service)'. ") }
        let regionIsValid =
            (1...64).contains(claim.region.utf8.count)
            && claim.region.utf8.allSatisfy { ($0 >= 0x61 && $0 <= 0x7A) || ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x2D }
        guard regionIsValid else { throw .invalidSignature("Credential should be scoped to a valid region, not '\(claim.region)'. ") }
        guard claim.scopeDate == claim.timestamp.stamp.prefix(8) else {
            throw .invalidSignature(
                "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: '\(claim.scopeDate)' != '\(claim.timestamp.stamp.prefix(8))', from '\(claim.timestamp.stamp)'."
            )
        }
    }

    /// The AWS window: a signature is good from `allowedSkew` before its date until `allowedSkew`
    /// after it, or, for a presigned URL, until `X-Amz-Expires` seconds after it.
    private func checkTime(_ claim: SignatureClaim, now: Date) throws(SigV4Failure) {
        let skew = Double(allowedSkew.components.seconds)
        let signed = claim.timestamp.date
        if signed.timeIntervalSince(now) > skew {
            throw .invalidSignature(
                "Signature not yet current: \(claim.timestamp.stamp) is still later than \(Self.stamp(now + skew)) (\(Self.stamp(now)) + \(Self.describe(seconds: allowedSkew.components.seconds)))"
            )
        }
        let lifetime = claim.expires.map(Int64.init) ?? allowedSkew.components.seconds
        if now.timeIntervalSince(signed) > Double(lifetime) {
            throw .invalidSignature(
                "Signature expired: \(claim.timestamp.stamp) is now earlier than \(Self.stamp(now - Double(lifetime))) (\(Self.stamp(now)) - \(Self.describe(seconds: lifetime)))"
            )
        }
    }

    private static func describe(seconds: Int64) -> String { seconds % 60 == 0 ? "\(seconds / 60) min." : "\(seconds) sec." }

    /// The payload hashes the signer may have used: the `x-amz-content-sha256` header when there is
    /// one (a hex digest must match the body), else the body's digest, and for a presigned URL also
    /// UNSIGNED-PAYLOAD, which S3-style presigners use (botocore signs the empty body's digest).
    static func payloadHashes(_ body: [UInt8], headers: HeaderMap, presigned: Bool) throws(SigV4Failure) -> [String] {
        let bodyHash = body.isEmpty ? emptyBodyHash : hex(SHA256.hash(data: body))
        guard let declared = headers.canonicalValue("x-amz-content-sha256") else {
            return presigned ? [bodyHash, unsignedPayload] : [bodyHash]
        }
        if declared == unsignedPayload { return [declared] }
        guard declared.utf8.count == 64, declared.utf8.allSatisfy(\.isHexDigit) else {
            throw SigV4Failure(
                code: "XAmzContentSHA256Mismatch",
                message: "x-amz-content-sha256 is '\(declared)'; send the hex SHA-256 of the body or UNSIGNED-PAYLOAD.", status: 400)
        }
        guard declared.lowercased() == bodyHash else {
            throw SigV4Failure(
                code: "XAmzContentSHA256Mismatch", message: "The provided 'x-amz-content-sha256' header does not match what was computed.",
                status: 400)
        }
        return [declared]
    }

    static let emptyBodyHash = hex(SHA256.hash(data: [UInt8]()))

    /// The canonical request up to (not including) the payload hash.
    private static func canonicalRequestPrefix(
        _ request: SigV4Request, query: [QueryParameter], headers: HeaderMap, claim: SignatureClaim
    ) throws(SigV4Failure) -> String {
        var canonicalHeaders = ""
        for name in claim.signedHeaders {
            guard let value = headers.canonicalValue(name) ?? (name == "host" ? headers.canonicalValue(":authority") : nil) else {
                throw .invalidSignature("SignedHeaders names '\(name)', but the request has no such header.")
            }
            canonicalHeaders += "\(name):\(value)\n"
        }
        let canonicalQuery = canonicalQueryString(query, excludingSignature: claim.expires != nil)
        return
            "\(request.method.uppercased())\n\(canonicalURI(request.rawPath))\n\(canonicalQuery)\n\(canonicalHeaders)\n\(claim.signedHeadersList)\n"
    }

    /// botocore's canonical URI for every service but S3: `remove_dot_segments` (which also drops
    /// empty segments) on the path as sent, then `quote(path, safe='/~')`, so an encoded `%3A` is
    /// signed as `%253A`.
    static func canonicalURI(_ rawPath: String) -> String {
        let slash = UInt8(ascii: "/")
        let path = Array(rawPath.utf8)
        guard !path.isEmpty else { return "/" }
        var segments: [ArraySlice<UInt8>] = []
        for segment in path.split(separator: slash) {
            if segment.elementsEqual(".".utf8) { continue }
            if segment.elementsEqual("..".utf8) {
                if !segments.isEmpty { segments.removeLast() }
                continue
            }
            segments.append(segment)
        }
        var encoded: [UInt8] = []
        encoded.reserveCapacity(path.count + 16)
        if path.first == slash { encoded.append(slash) }
        for (index, segment) in segments.enumerated() {
            if index > 0 { encoded.append(slash) }
            percentEncode(segment, into: &encoded)
        }
        if path.last == slash, !segments.isEmpty { encoded.append(slash) }
        return String(decoding: encoded, as: UTF8.self)
    }

    /// Every parameter decoded and encoded again with RFC 3986's unreserved set (a `+` stays a
    /// literal plus, as Hummingbird reads it), sorted by encoded name, then value.
    static func canonicalQueryString(_ query: [QueryParameter], excludingSignature: Bool) -> String {
        var pairs: [(name: [UInt8], value: [UInt8])] = []
        pairs.reserveCapacity(query.count)
        for parameter in query where !(excludingSignature && parameter.name == "X-Amz-Signature") {
            var name: [UInt8] = []
            var value: [UInt8] = []
            percentEncode(parameter.nameBytes, into: &name)
            percentEncode(parameter.valueBytes, into: &value)
            pairs.append((name, value))
        }
        pairs.sort { $0.name != $1.name ? $0.name.lexicographicallyPrecedes($1.name) : $0.value.lexicographicallyPrecedes($1.value) }
        var joined: [UInt8] = []
        for (index, pair) in pairs.enumerated() {
            if index > 0 { joined.append(UInt8(ascii: "&")) }
            joined += pair.name
            joined.append(UInt8(ascii: "="))
            joined += pair.value
        }
        return String(decoding: joined, as: UTF8.self)
    }

    static func signingKey(secret: String, date: String, region: String, service: String) -> SymmetricKey {
        var key = SymmetricKey(data: Array("AWS4\(secret)".utf8))
        for part in [date, region, service, "aws4_request"] {
            key = SymmetricKey(data: HMAC<SHA256>.authenticationCode(for: Array(part.utf8), using: key))
        }
        return key
    }

    static func isUnreserved(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
            UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "~"):
            true
        default: false
        }
    }

    private static let hexDigits = Array("0123456789ABCDEF".utf8)
    private static let lowerHexDigits = Array("0123456789abcdef".utf8)

    static func percentEncode(_ bytes: some Sequence<UInt8>, into output: inout [UInt8]) {
        for byte in bytes {
            if isUnreserved(byte) {
                output.append(byte)
            } else {
                output += [UInt8(ascii: "%"), hexDigits[Int(byte >> 4)], hexDigits[Int(byte & 0x0F)]]
            }
        }
    }

    /// `%XX` becomes its byte; a `%` not followed by two hex digits stays as it is.
    static func percentDecode(_ bytes: ArraySlice<UInt8>) -> [UInt8] {
        guard bytes.contains(UInt8(ascii: "%")) else { return Array(bytes) }
        var decoded: [UInt8] = []
        decoded.reserveCapacity(bytes.count)
        var index = bytes.startIndex
        while index < bytes.endIndex {
            if bytes[index] == UInt8(ascii: "%"), index + 2 < bytes.endIndex, let high = hexValue(bytes[index + 1]),
                let low = hexValue(bytes[index + 2])
            {
                decoded.append(high << 4 | low)
                index += 3
            } else {
                decoded.append(bytes[index])
                index += 1
            }
        }
        return decoded
    }

    private static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): byte - UInt8(ascii: "A") + 10
        default: nil
        }
    }

    static func hex(_ bytes: some Sequence<UInt8>) -> String {
        var text: [UInt8] = []
        text.reserveCapacity(64)
        for byte in bytes {
            text.append(lowerHexDigits[Int(byte >> 4)])
            text.append(lowerHexDigits[Int(byte & 0x0F)])
        }
        return String(decoding: text, as: UTF8.self)
    }

    /// Whether two signatures are equal, in time that depends only on their lengths.
    static func constantTimeEqual(_ left: String, _ right: String) -> Bool {
        let left = Array(left.utf8)
        let right = Array(right.utf8)
        guard left.count == right.count else { return false }
        var difference: UInt8 = 0
        for index in left.indices { difference |= left[index] ^ right[index] }
        return difference == 0
    }

    private static let stampStyle = Date.ISO8601FormatStyle(
        dateSeparator: .omitted, dateTimeSeparator: .standard, timeSeparator: .omitted, timeZone: .gmt)

    /// `20260101T000000Z`, the form AWS uses in its messages.
    static func stamp(_ date: Date) -> String { stampStyle.format(date) }
}

extension UInt8 {
    fileprivate var isHexDigit: Bool {
        (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(self) || (UInt8(ascii: "a")...UInt8(ascii: "f")).contains(self)
            || (UInt8(ascii: "A")...UInt8(ascii: "F")).contains(self)
    }
}

/// Signing keys derived from a secret, keyed by access key id, date and region (the service is the
/// verifier's). Emptied when full: entries are only ever one day's worth per key and region.
final class SigningKeyCache: Sendable {
    private let keys = Mutex<[String: SymmetricKey]>([:])
    static let capacity = 1024

    subscript(id: String) -> SymmetricKey? {
        get { keys.withLock { $0[id] } }
        set {
            keys.withLock { keys in
                if keys[id] == nil, keys.count >= Self.capacity { keys.removeAll(keepingCapacity: true) }
                keys[id] = newValue
            }
        }
    }

    var count: Int { keys.withLock { $0.count } }
}

/// Headers by lowercased name, values in arrival order.
struct HeaderMap {
    private var values: [String: [String]] = [:]

    init(_ headers: [(name: String, value: String)]) {
        for header in headers { values[header.name.lowercased(), default: []].append(header.value) }
    }

    func values(_ name: String) -> [String]? { values[name] }

    /// SigV4's canonical value: each value trimmed with inner runs of whitespace made one space
    /// (botocore's `' '.join(value.split())`), repeated headers joined by `,`.
    func canonicalValue(_ name: String) -> String? {
        values[name].map { $0.map { $0.split(whereSeparator: \.isWhitespace).joined(separator: " ") }.joined(separator: ",") }
    }
}

/// One `name=value` of a query string, percent-decoded (a `+` is not a space).
struct QueryParameter {
    var nameBytes: [UInt8]
    var valueBytes: [UInt8]
    var name: String { String(decoding: nameBytes, as: UTF8.self) }
    var value: String { String(decoding: valueBytes, as: UTF8.self) }

    static func parse(_ rawQuery: String) -> [QueryParameter] {
        guard !rawQuery.isEmpty else { return [] }
        return Array(rawQuery.utf8).split(separator: UInt8(ascii: "&")).map { piece in
            guard let equals = piece.firstIndex(of: UInt8(ascii: "=")) else {
                return QueryParameter(nameBytes: SigV4Verifier.percentDecode(piece), valueBytes: [])
            }
            return QueryParameter(
                nameBytes: SigV4Verifier.percentDecode(piece[..<equals]),
                valueBytes: SigV4Verifier.percentDecode(piece[piece.index(after: equals)...]))
        }
    }
}

/// A signing time as the string to sign carries it (`20150830T123600Z`) and as a date.
struct SigV4Timestamp {
    var stamp: String
    var date: Date

    /// ISO 8601 basic format, as in `X-Amz-Date`.
    init?(basic text: String) {
        let bytes = Array(text.utf8)
        guard bytes.count == 16, bytes[8] == UInt8(ascii: "T"), bytes[15] == UInt8(ascii: "Z") else { return nil }
        func number(_ range: Range<Int>) -> Int? {
            var value = 0
            for byte in bytes[range] {
                guard (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) else { return nil }
                value = value * 10 + Int(byte - UInt8(ascii: "0"))
            }
            return value
        }
        guard let year = number(0..<4), let month = number(4..<6), let day = number(6..<8), let hour = number(9..<11),
            let minute = number(11..<13), let second = number(13..<15)
        else { return nil }
        self.init(year: year, month: month, day: day, hour: hour, minute: minute, second: second)
    }

    /// An HTTP `Date` header, `Sun, 30 Aug 2015 12:36:00 GMT` (Python's `formatdate` writes `-0000`).
    init?(httpDate text: String) {
        let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
        let fields = text.split(separator: " ")
        guard fields.count == 6, fields[0].hasSuffix(","), ["GMT", "UTC", "+0000", "-0000"].contains(fields[5]),
            let day = Int(fields[1]), let monthIndex = months.firstIndex(of: String(fields[2])), let year = Int(fields[3]),
            fields[3].count == 4
        else { return nil }
        let time = fields[4].split(separator: ":", omittingEmptySubsequences: false)
        guard time.count == 3, time.allSatisfy({ $0.count == 2 }), let hour = Int(time[0]), let minute = Int(time[1]),
            let second = Int(time[2])
        else { return nil }
        self.init(year: year, month: monthIndex + 1, day: day, hour: hour, minute: minute, second: second)
    }

    private init?(year: Int, month: Int, day: Int, hour: Int, minute: Int, second: Int) {
        guard (1...12).contains(month), (1...31).contains(day), (0...23).contains(hour), (0...59).contains(minute),
            (0...60).contains(second)
        else { return nil }
        // Days since 1970-01-01 in the proleptic Gregorian calendar (Howard Hinnant's days_from_civil).
        let shiftedYear = month <= 2 ? year - 1 : year
        let era = (shiftedYear >= 0 ? shiftedYear : shiftedYear - 399) / 400
        let yearOfEra = shiftedYear - era * 400
        let dayOfYear = (153 * (month + (month > 2 ? -3 : 9)) + 2) / 5 + day - 1
        let dayOfEra = yearOfEra * 365 + yearOfEra / 4 - yearOfEra / 100 + dayOfYear
        let days = era * 146_097 + dayOfEra - 719_468
        date = Date(timeIntervalSince1970: Double(days * 86_400 + hour * 3_600 + minute * 60 + second))
        func pad(_ value: Int, _ width: Int) -> String {
            let digits = String(value)
            return String(repeating: "0", count: max(0, width - digits.count)) + digits
        }
        stamp = pad(year, 4) + pad(month, 2) + pad(day, 2) + "T" + pad(hour, 2) + pad(minute, 2) + pad(second, 2) + "Z"
    }
}

/// What a request says about its signature, from the `Authorization` header or a presigned query.
struct SignatureClaim {
    var accessKeyId: String
    var scopeDate: String
    var region: String
    var service: String
    var terminator: String
    var signedHeaders: [String]
    /// The `SignedHeaders` value as sent, which is what the canonical request carries.
    var signedHeadersList: String
    var signature: String
    var timestamp: SigV4Timestamp
    /// Seconds a presigned URL lives (`X-Amz-Expires`); nil for the header form.
    var expires: Int?

    /// `AWS4-HMAC-SHA256 Credential=AKID/20260101/us-east-1/imagebuilder/aws4_request, SignedHeaders=host;x-amz-date, Signature=…`
    init(header: String, headers: HeaderMap) throws(SigV4Failure) {
        let trimmed = header.trimmingCharacters(in: .whitespaces)
        let scheme = trimmed.prefix { $0 != " " }
        guard scheme == SigV4Verifier.algorithm else {
            // Only a short scheme name is echoed: a bare token in this header may be someone's secret.
            let named = scheme.count < trimmed.count && scheme.count <= 32 ? " uses '\(scheme)'" : " is not SigV4"
            throw .incompleteSignature(
                "The Authorization header\(named); sign requests with AWS Signature Version 4 (\(SigV4Verifier.algorithm)), as the AWS CLI and SDKs do."
            )
        }
        var fields: [String: String] = [:]
        for part in trimmed.dropFirst(scheme.count).split(separator: ",") {
            let part = part.trimmingCharacters(in: .whitespaces)
            guard let equals = part.firstIndex(of: "=") else {
                throw .incompleteSignature(
                    "'\(part)' not a valid key=value pair (missing equal-sign) in Authorization header: '\(trimmed)'.")
            }
            fields[String(part[..<equals])] = String(part[part.index(after: equals)...])
        }
        let date: (text: String, basic: Bool)? =
            headers.canonicalValue("x-amz-date").map { ($0, true) } ?? headers.canonicalValue("date").map { ($0, false) }
        var missing = ""
        for name in ["Credential", "Signature", "SignedHeaders"] where fields[name] == nil {
            missing += "Authorization header requires '\(name)' parameter. "
        }
        if date == nil { missing += "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header. " }
        guard missing.isEmpty, let credential = fields["Credential"], let signedHeaders = fields["SignedHeaders"],
            let signature = fields["Signature"], let date
        else { throw .incompleteSignature(missing + "Authorization=\(trimmed)") }
        guard let timestamp = date.basic ? SigV4Timestamp(basic: date.text) : SigV4Timestamp(httpDate: date.text) else {
            throw .incompleteSignature(
                date.basic
                    ? "Date must be in ISO-8601 'basic format'. Got '\(date.text)'. See http://en.wikipedia.org/wiki/ISO_8601"
                    : "The Date header '\(date.text)' is not an HTTP date such as 'Sun, 30 Aug 2015 12:36:00 GMT'; or send X-Amz-Date.")
        }
        try self.init(credential: credential, signedHeaders: signedHeaders, signature: signature, timestamp: timestamp, expires: nil)
    }

    /// `X-Amz-Algorithm`, `X-Amz-Credential`, `X-Amz-Date`, `X-Amz-Expires`, `X-Amz-SignedHeaders`
    /// and `X-Amz-Signature` in the query.
    init(query: [QueryParameter]) throws(SigV4Failure) {
        let names = ["X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date", "X-Amz-Expires", "X-Amz-SignedHeaders", "X-Amz-Signature"]
        var found: [String: String] = [:]
        for parameter in query where names.contains(parameter.name) {
            guard found[parameter.name] == nil else {
                throw .incompleteSignature("The query has more than one \(parameter.name); a presigned URL carries each once.")
            }
            found[parameter.name] = parameter.value
        }
        guard let algorithm = found["X-Amz-Algorithm"], let credential = found["X-Amz-Credential"], let date = found["X-Amz-Date"],
            let expiresText = found["X-Amz-Expires"], let signedHeaders = found["X-Amz-SignedHeaders"],
            let signature = found["X-Amz-Signature"]
        else {
            throw .incompleteSignature(
                "AWS query-string parameters must include 'X-Amz-Algorithm', 'X-Amz-Credential', 'X-Amz-Signature', 'X-Amz-Date', 'X-Amz-SignedHeaders', and 'X-Amz-Expires'. Missing: \(names.filter { found[$0] == nil }.joined(separator: ", "))."
            )
        }
        guard algorithm == SigV4Verifier.algorithm else {
            throw .incompleteSignature("X-Amz-Algorithm only supports '\(SigV4Verifier.algorithm)', not '\(algorithm.prefix(40))'.")
        }
        guard let timestamp = SigV4Timestamp(basic: date) else {
            throw .incompleteSignature("Date must be in ISO-8601 'basic format'. Got '\(date)'. See http://en.wikipedia.org/wiki/ISO_8601")
        }
        guard expiresText.utf8.allSatisfy({ (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) }), let expires = Int(expiresText),
            (1...SigV4Verifier.longestExpiry).contains(expires)
        else {
            throw .incompleteSignature(
                "X-Amz-Expires is '\(expiresText)'; it must be a number of seconds from 1 to \(SigV4Verifier.longestExpiry) (a week).")
        }
        try self.init(credential: credential, signedHeaders: signedHeaders, signature: signature, timestamp: timestamp, expires: expires)
    }

    private init(credential: String, signedHeaders: String, signature: String, timestamp: SigV4Timestamp, expires: Int?)
        throws(SigV4Failure)
    {
        let scope = credential.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
        guard scope.count == 5, !scope[0].isEmpty else {
            throw .incompleteSignature(
                "Credential '\(credential)' is not of the form <access key id>/<YYYYMMDD>/<region>/<service>/aws4_request.")
        }
        let names = signedHeaders.split(separator: ";", omittingEmptySubsequences: false).map(String.init)
        guard names.contains("host") || names.contains(":authority") else {
            throw .incompleteSignature("'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.")
        }
        guard names.allSatisfy({ !$0.isEmpty && $0 == $0.lowercased() }) else {
            throw .incompleteSignature("SignedHeaders '\(signedHeaders)' must be lowercase header names separated by ';'.")
        }
        accessKeyId = scope[0]
        scopeDate = scope[1]
        region = scope[2]
        service = scope[3]
        terminator = scope[4]
        self.signedHeaders = names
        signedHeadersList = signedHeaders
        self.signature = signature
        self.timestamp = timestamp
        self.expires = expires
    }
}
