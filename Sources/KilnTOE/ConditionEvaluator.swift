import Crypto
import Foundation
import KilnModel

/// Evaluates `if` expressions and Assert inputs (reference §2.5) against an instance.
struct ConditionEvaluator {
    let session: any InstanceSession

    func evaluate(_ condition: Condition, substitute: (String) throws -> String) async throws -> Bool {
        switch condition {
        case .and(let parts):
            for part in parts where !(try await evaluate(part, substitute: substitute)) { return false }
            return true
        case .or(let parts):
            for part in parts where try await evaluate(part, substitute: substitute) { return true }
            return false
        case .not(let inner):
            return !(try await evaluate(inner, substitute: substitute))
        case .comparison(let comparison):
            let operand = try substitute(comparison.operand)
            let subject = try comparison.subject.map(substitute)
            return try await compare(comparison.op, operand: operand, subject: subject ?? "")
        }
    }

    func compare(_ op: ComparisonOperator, operand: String, subject: String) async throws -> Bool {
        switch op {
        case .stringIsEmpty: return operand.isEmpty
        case .stringIsWhitespace: return !operand.isEmpty && operand.allSatisfy(\.isWhitespace)
        case .stringEquals: return subject.lowercased() == operand.lowercased()
        case .stringLessThan: return Self.order(subject, operand) < 0
        case .stringLessThanEquals: return Self.order(subject, operand) <= 0
        case .stringGreaterThan: return Self.order(subject, operand) > 0
        case .stringGreaterThanEquals: return Self.order(subject, operand) >= 0
        case .patternMatches:
            do {
                let regex = try NSRegularExpression(pattern: operand)
                return regex.firstMatch(in: subject, range: NSRange(subject.startIndex..., in: subject)) != nil
            } catch {
                throw KilnError(.invalidArgument, "patternMatches: '\(operand)' is not a valid regular expression")
            }
        case .numberEquals, .numberLessThan, .numberLessThanEquals, .numberGreaterThan, .numberGreaterThanEquals:
            guard let baseline = Self.number(operand), let value = Self.number(subject) else { return false }
            switch op {
            case .numberEquals: return value == baseline
            case .numberLessThan: return value < baseline
            case .numberLessThanEquals: return value <= baseline
            case .numberGreaterThan: return value > baseline
            default: return value >= baseline
            }
        case .binaryExists:
            let request = ExecRequest(
                executable: "/bin/sh", arguments: ["-c", "command -v \"$1\" >/dev/null 2>&1", "sh", operand], timeout: .seconds(30))
            return try await session.exec(request) { _, _ in }.exitCode == 0
        case .fileExists:
            return try await session.fileInfo(operand, followSymlinks: true)?.kind == .file
        case .folderExists:
            return try await session.fileInfo(operand, followSymlinks: true)?.kind == .directory
        case .fileMD5Equals, .fileSHA1Equals, .fileSHA256Equals, .fileSHA512Equals:
            guard try await session.fileInfo(subject, followSymlinks: true)?.kind == .file else { return false }
            let algorithm: HashAlgorithm =
                op == .fileMD5Equals ? .md5 : op == .fileSHA1Equals ? .sha1 : op == .fileSHA256Equals ? .sha256 : .sha512
            return try await HostScratch.hash(subject, in: session, algorithm: algorithm) == operand.lowercased()
        }
    }

    /// Case-insensitive ordering of `value` against `baseline`, by Unicode scalar value.
    static func order(_ value: String, _ baseline: String) -> Int {
        let left = value.lowercased().unicodeScalars.map(\.value)
        let right = baseline.lowercased().unicodeScalars.map(\.value)
        if left == right { return 0 }
        return left.lexicographicallyPrecedes(right) ? -1 : 1
    }

    private static let numberPattern = try! NSRegularExpression(pattern: "^[-+]?([0-9]+[.])?[0-9]+$")

    static func number(_ text: String) -> Decimal? {
        guard numberPattern.firstMatch(in: text, range: NSRange(text.startIndex..., in: text)) != nil else { return nil }
        return Decimal(string: text)
    }
}

enum HashAlgorithm: String, Sendable, CaseIterable {
    case md5 = "MD5", sha1 = "SHA1", sha256 = "SHA256", sha512 = "SHA512"

    init?(name: String) {
        guard let match = HashAlgorithm.allCases.first(where: { $0.rawValue.lowercased() == name.lowercased() }) else { return nil }
        self = match
    }

    func hex(of data: Data) -> String {
        var hasher = Hasher(self)
        hasher.update(data)
        return hasher.finalizeHex()
    }

    /// Incremental hashing, for files read in chunks.
    struct Hasher {
        private var md5 = Insecure.MD5()
        private var sha1 = Insecure.SHA1()
        private var sha256 = SHA256()
        private var sha512 = SHA512()
        let algorithm: HashAlgorithm

        init(_ algorithm: HashAlgorithm) { self.algorithm = algorithm }

        mutating func update(_ data: Data) {
            switch algorithm {
            case .md5: md5.update(data: data)
            case .sha1: sha1.update(data: data)
            case .sha256: sha256.update(data: data)
            case .sha512: sha512.update(data: data)
            }
        }

        func finalizeHex() -> String {
            let bytes: [UInt8]
            switch algorithm {
            case .md5: bytes = Array(md5.finalize())
            case .sha1: bytes = Array(sha1.finalize())
            case .sha256: bytes = Array(sha256.finalize())
            case .sha512: bytes = Array(sha512.finalize())
            }
            return bytes.hexString
        }
    }

    /// Hash of a host file, read in chunks.
    func hex(ofFile path: String) throws -> String {
        guard let handle = FileHandle(forReadingAtPath: path) else {
            throw KilnError(.notFound, "cannot read '\(path)' to compute its \(rawValue)")
        }
        defer { try? handle.close() }
        var hasher = Hasher(self)
        while let chunk = try handle.read(upToCount: 1 << 20), !chunk.isEmpty {
            hasher.update(chunk)
        }
        return hasher.finalizeHex()
    }
}
