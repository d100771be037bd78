import Crypto
import Foundation
import KilnModel

/// A content digest such as `sha256:4c3f…`. Built only from valid text or from bytes, so a
/// `Digest` value is always well-formed (and safe to use as a file name).
public struct Digest: Sendable, Hashable, Codable, CustomStringConvertible, Comparable {
    public enum Algorithm: String, Sendable, Hashable, Codable {
        case sha256, sha512

        var hexLength: Int { self == .sha256 ? 64 : 128 }
    }

    public let algorithm: Algorithm
    /// Lowercase hex.
    public let encoded: String

    public init(_ text: String) throws {
        guard let colon = text.firstIndex(of: ":"), let algorithm = Algorithm(rawValue: String(text[..<colon])) else {
            throw KilnError(.invalidArgument, "'\(text)' is not a digest; expected sha256:<64 hex digits> or sha512:<128 hex digits>")
        }
        let encoded = String(text[text.index(after: colon)...])
        guard encoded.count == algorithm.hexLength, encoded.allSatisfy({ $0.isHexDigit && !$0.isUppercase }) else {
            throw KilnError(
                .invalidArgument,
                "'\(text)' is not a valid \(algorithm.rawValue) digest; expected \(algorithm.hexLength) lowercase hex digits")
        }
        self.algorithm = algorithm
        self.encoded = encoded
    }

    /// The SHA-256 digest of `data`.
    public init(sha256Of data: some DataProtocol) {
        algorithm = .sha256
        encoded = SHA256.hash(data: data).hexString
    }

    init(algorithm: Algorithm, hex: String) {
        self.algorithm = algorithm
        self.encoded = hex
    }

    public var description: String { "\(algorithm.rawValue):\(encoded)" }

    public init(from decoder: Decoder) throws {
        try self.init(decoder.singleValueContainer().decode(String.self))
    }

    public func encode(to encoder: Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(description)
    }

    public static func < (lhs: Digest, rhs: Digest) -> Bool { lhs.description < rhs.description }
}

/// SHA-256 computed as bytes stream past, for one-pass layer writing.
public struct SHA256Stream: Sendable {
    private var hasher = SHA256()
    public private(set) var count: Int64 = 0

    public init() {}

    public mutating func update(_ bytes: UnsafeRawBufferPointer) {
        hasher.update(bufferPointer: bytes)
        count += Int64(bytes.count)
    }

    public mutating func update(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { update($0) }
    }

    public func finalize() -> Digest {
        Digest(algorithm: .sha256, hex: hasher.finalize().hexString)
    }
}
