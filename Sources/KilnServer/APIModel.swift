import Foundation

/// The Image Builder API as botocore describes it (REST-JSON, 2019-12-02): operations with their
/// HTTP routes, the shapes of their inputs and outputs, and the exceptions with their HTTP
/// statuses. `APIModel.imagebuilder` is read once, on first use, from the JSON that
/// `scripts/generate-api-model` embedded in `APIModel+Imagebuilder.swift`.
public struct APIModel: Sendable {
    /// The model's `metadata` (apiVersion, protocol, signingName, …).
    public let metadata: [String: JSONValue]
    public let operations: [String: APIOperation]
    public let shapes: [String: APIShape]
    /// Exception code (its shape name) → HTTP status, from the shape's `error.httpStatusCode`.
    public let exceptionStatus: [String: Int]
    /// Every string shape's pattern, compiled once when the model loads.
    let patterns: [String: ModelPattern]

    /// Image Builder's model. Loading it cannot fail at run time: the embedded JSON is generated
    /// and APIModelTests loads it.
    public static let imagebuilder: APIModel = {
        do {
            return try APIModel(json: Array(imagebuilderJSON.utf8))
        } catch {
            fatalError("The embedded imagebuilder model does not load (\(error)); run scripts/generate-api-model")
        }
    }()

    /// Reads a botocore service model (service-2.json, documentation optional) and checks that
    /// every shape it names exists, every route template parses and every pattern compiles.
    public init(json: [UInt8]) throws(APIModelError) {
        let document: JSONValue
        do throws(JSONParseError) {
            document = try JSONValue(parsing: json, maximumDepth: 32, maximumValues: .max)
        } catch {
            throw APIModelError("The model is not JSON: \(error)")
        }
        guard let operationsJSON = document["operations"]?.object, let shapesJSON = document["shapes"]?.object else {
            throw APIModelError("The model has no operations or shapes")
        }
        metadata = document["metadata"]?.object ?? [:]

        var shapes: [String: APIShape] = [:]
        var exceptionStatus: [String: Int] = [:]
        var patterns: [String: ModelPattern] = [:]
        for (name, json) in shapesJSON {
            let shape = try APIShape(name: name, json: json)
            shapes[name] = shape
            if shape.isException { exceptionStatus[name] = shape.errorStatus ?? 400 }
            if let pattern = shape.pattern, patterns[pattern] == nil {
                patterns[pattern] = try ModelPattern(pattern, shape: name)
            }
        }
        for shape in shapes.values {
            for referenced in shape.referencedShapes where shapes[referenced] == nil {
                throw APIModelError("Shape \(shape.name) names shape \(referenced), which the model does not define")
            }
        }

        var operations: [String: APIOperation] = [:]
        for (name, json) in operationsJSON {
            let operation = try APIOperation(name: name, json: json)
            for referenced in [operation.input, operation.output].compactMap({ $0 }) + operation.errors
            where shapes[referenced] == nil {
                throw APIModelError("Operation \(name) names shape \(referenced), which the model does not define")
            }
            operations[name] = operation
        }
        self.shapes = shapes
        self.operations = operations
        self.exceptionStatus = exceptionStatus
        self.patterns = patterns
    }

    /// The input (or output) structure of `operation`, nil when it has none.
    public func inputShape(of operation: APIOperation) -> APIShape? { operation.input.flatMap { shapes[$0] } }
    public func outputShape(of operation: APIOperation) -> APIShape? { operation.output.flatMap { shapes[$0] } }
}

public struct APIModelError: Error, Sendable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

// MARK: - Routing

extension APIModel {
    /// The operation whose method and `requestUri` template match, with its URI labels
    /// percent-decoded. `path` is the raw request path, still percent-encoded and without the
    /// query: botocore encodes a label whole, so `/tags/arn%3Aaws%3A…%2Fmy-comp%2F1.0.0%2F1` is
    /// one segment, and only splitting before decoding keeps the ARN's slashes in its label.
    /// A literal segment beats a label when two templates match.
    public func route(method: String, path: String) -> (operation: APIOperation, labels: [String: String])? {
        let segments = Self.pathSegments(path)
        let method = method.uppercased()
        var best: (operation: APIOperation, labels: [String: String], literals: Int)?
        for operation in operations.values where operation.method == method {
            guard let labels = operation.match(segments) else { continue }
            if best == nil || operation.literalSegments > best!.literals
                || (operation.literalSegments == best!.literals && operation.name < best!.operation.name)
            {
                best = (operation, labels, operation.literalSegments)
            }
        }
        return best.map { ($0.operation, $0.labels) }
    }

    /// The methods some operation accepts at `path`, sorted; empty when no template matches it.
    /// A non-empty answer for a method `route` refused means the method is wrong, not the path.
    public func allowedMethods(path: String) -> [String] {
        let segments = Self.pathSegments(path)
        return Set(operations.values.filter { $0.match(segments) != nil }.map(\.method)).sorted()
    }

    static func pathSegments(_ path: String) -> [Substring] {
        var path = Substring(path)
        if let query = path.firstIndex(of: "?") { path = path[..<query] }
        if path.hasPrefix("/") { path = path.dropFirst() }
        return path.split(separator: "/", omittingEmptySubsequences: false)
    }

    /// `%XX` sequences become bytes and the bytes UTF-8 text; a `%` not followed by two hex digits
    /// stays as it is, and invalid UTF-8 becomes U+FFFD (so it fails any pattern that follows).
    /// `+` stays `+`: RFC 3986, as botocore encodes (`%20` for a space, `%2B` for a plus).
    static func percentDecoded(_ text: some StringProtocol) -> String {
        guard text.contains("%") else { return String(text) }
        let bytes = Array(text.utf8)
        var output: [UInt8] = []
        output.reserveCapacity(bytes.count)
        var index = 0
        while index < bytes.count {
            if bytes[index] == UInt8(ascii: "%"), index + 2 < bytes.count, let high = hexValue(bytes[index + 1]),
                let low = hexValue(bytes[index + 2])
            {
                output.append(high << 4 | low)
                index += 3
            } else {
                output.append(bytes[index])
                index += 1
            }
        }
        return String(decoding: output, as: UTF8.self)
    }
}

private func hexValue(_ byte: UInt8) -> UInt8? {
    switch byte {
    case UInt8(ascii: "0")...UInt8(ascii: "9"): byte - UInt8(ascii: "0")
    case UInt8(ascii: "a")...UInt8(ascii: "f"): byte - UInt8(ascii: "a") + 10
    case UInt8(ascii: "A")...UInt8(ascii: "F"): byte - UInt8(ascii: "A") + 10
    default: nil
    }
}

// MARK: - Operations

/// One API operation: its HTTP binding and the shapes it reads, writes and throws.
public struct APIOperation: Sendable, Hashable {
    public enum PathSegment: Sendable, Hashable {
        case literal(String)
        /// `{name}` matches one non-empty segment; `{name+}` (greedy) the rest of the path.
        case label(String, greedy: Bool)
    }

    public let name: String
    public let method: String
    /// The template as the model writes it, such as `/tags/{resourceArn}`.
    public let requestURI: String
    public let pathTemplate: [PathSegment]
    /// Literal query parameters in the template (`/x?versioning`); none in Image Builder.
    public let literalQuery: [String: String]
    public let input: String?
    public let output: String?
    /// The exception shapes the operation lists, in the model's order.
    public let errors: [String]
    /// `http.responseCode`, 200 when the model gives none.
    public let successCode: Int

    var literalSegments: Int { pathTemplate.filter { if case .literal = $0 { true } else { false } }.count }

    /// Whether the operation lists `exception` (an exception shape name such as `ResourceNotFoundException`).
    public func lists(_ exception: String) -> Bool { errors.contains(exception) }

    init(name: String, json: JSONValue) throws(APIModelError) {
        guard let method = json["http"]?["method"]?.string, let requestURI = json["http"]?["requestUri"]?.string else {
            throw APIModelError("Operation \(name) has no http method or requestUri")
        }
        self.name = name
        self.method = method.uppercased()
        self.requestURI = requestURI
        input = json["input"]?["shape"]?.string
        output = json["output"]?["shape"]?.string
        errors = (json["errors"]?.array ?? []).compactMap { $0["shape"]?.string }
        successCode = json["http"]?["responseCode"]?.int ?? 200

        let parts = requestURI.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false)
        var query: [String: String] = [:]
        if parts.count == 2 {
            for pair in parts[1].split(separator: "&") {
                let halves = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
                query[String(halves[0])] = halves.count == 2 ? String(halves[1]) : ""
            }
        }
        literalQuery = query
        var template: [PathSegment] = []
        let segments = APIModel.pathSegments(String(parts[0]))
        for (index, segment) in segments.enumerated() {
            if segment.hasPrefix("{") && segment.hasSuffix("}") {
                var label = segment.dropFirst().dropLast()
                let greedy = label.hasSuffix("+")
                if greedy { label = label.dropLast() }
                guard !label.isEmpty, !greedy || index == segments.count - 1 else {
                    throw APIModelError("Operation \(name): unsupported requestUri template \(requestURI)")
                }
                template.append(.label(String(label), greedy: greedy))
            } else if segment.contains("{") || segment.contains("}") {
                throw APIModelError("Operation \(name): a label must fill its path segment in \(requestURI)")
            } else {
                template.append(.literal(String(segment)))
            }
        }
        pathTemplate = template
    }

    /// The decoded labels when `segments` (raw, still percent-encoded) fit the template.
    func match(_ segments: [Substring]) -> [String: String]? {
        var labels: [String: String] = [:]
        for (index, part) in pathTemplate.enumerated() {
            switch part {
            case .literal(let literal):
                guard index < segments.count, APIModel.percentDecoded(segments[index]) == literal else { return nil }
            case .label(let label, greedy: false):
                guard index < segments.count, !segments[index].isEmpty else { return nil }
                labels[label] = APIModel.percentDecoded(segments[index])
            case .label(let label, greedy: true):
                guard index < segments.count else { return nil }
                let rest = segments[index...].map { APIModel.percentDecoded($0) }.joined(separator: "/")
                guard !rest.isEmpty else { return nil }
                labels[label] = rest
                return labels
            }
        }
        return segments.count == pathTemplate.count ? labels : nil
    }
}

// MARK: - Shapes

/// A named shape of the model. Which fields mean something depends on `kind`: `members` and
/// `required` for structures, `listMember` for lists, `mapKey`/`mapValue` for maps, `pattern`
/// and `enumValues` for strings; `min`/`max` bound a string's length, a list's or map's size
/// or a number's value.
public struct APIShape: Sendable, Hashable {
    public enum Kind: String, Sendable, Hashable {
        case structure, list, map, string, integer, long, double, float, boolean, timestamp, blob
    }

    public let name: String
    public let kind: Kind
    public let members: [String: APIMember]
    /// Member names sorted, the order in which members are read, validated and reported.
    public let memberNames: [String]
    public let required: [String]
    /// A structure member sent as the whole HTTP body; none in Image Builder.
    public let payload: String?
    public let listMember: String?
    public let mapKey: String?
    public let mapValue: String?
    public let min: Double?
    public let max: Double?
    public let pattern: String?
    public let enumValues: [String]?
    public let timestampFormat: String?
    public let isException: Bool
    /// `error.httpStatusCode` of an exception shape.
    public let errorStatus: Int?

    init(name: String, json: JSONValue) throws(APIModelError) {
        guard let typeName = json["type"]?.string, let kind = Kind(rawValue: typeName) else {
            throw APIModelError("Shape \(name) has an unsupported type \(json["type"]?.description ?? "(none)")")
        }
        self.name = name
        self.kind = kind
        var members: [String: APIMember] = [:]
        for (memberName, memberJSON) in json["members"]?.object ?? [:] {
            members[memberName] = try APIMember(name: memberName, json: memberJSON, in: name)
        }
        self.members = members
        memberNames = members.keys.sorted()
        required = (json["required"]?.array ?? []).compactMap(\.string)
        payload = json["payload"]?.string
        listMember = json["member"]?["shape"]?.string
        mapKey = json["key"]?["shape"]?.string
        mapValue = json["value"]?["shape"]?.string
        min = json["min"]?.double
        max = json["max"]?.double
        pattern = json["pattern"]?.string
        enumValues = json["enum"]?.array?.compactMap(\.string)
        timestampFormat = json["timestampFormat"]?.string
        isException = json["exception"]?.bool ?? false
        errorStatus = json["error"]?["httpStatusCode"]?.int
        switch kind {
        case .list where listMember == nil: throw APIModelError("List shape \(name) has no member shape")
        case .map where mapKey == nil || mapValue == nil: throw APIModelError("Map shape \(name) has no key or value shape")
        default: break
        }
        for requiredName in required where members[requiredName] == nil {
            throw APIModelError("Shape \(name) requires \(requiredName), which is not one of its members")
        }
    }

    var referencedShapes: [String] {
        members.values.map(\.shape) + [listMember, mapKey, mapValue].compactMap { $0 }
    }

    /// Members bound to something other than the JSON body (URI, query string, headers, status).
    public var locatedMembers: [APIMember] { memberNames.compactMap { members[$0] }.filter { $0.location != .body } }
}

/// A structure's member: the shape of its value and where it travels in a request or response.
public struct APIMember: Sendable, Hashable {
    public enum Location: String, Sendable, Hashable {
        /// A member of the JSON body, under `wireName`.
        case body
        case uri
        case querystring
        /// One HTTP header named `wireName`.
        case header
        /// Every header starting with the prefix `wireName`, as a map.
        case headers
        /// The HTTP status code of a response.
        case statusCode
    }

    public let name: String
    public let shape: String
    public let location: Location
    public let locationName: String?
    public let isIdempotencyToken: Bool
    public let timestampFormat: String?

    /// The name on the wire: the URI label, query key, header or JSON key.
    public var wireName: String { locationName ?? name }

    init(name: String, json: JSONValue, in structure: String) throws(APIModelError) {
        guard let shape = json["shape"]?.string else { throw APIModelError("Member \(structure).\(name) has no shape") }
        self.name = name
        self.shape = shape
        if let location = json["location"]?.string {
            guard let known = Location(rawValue: location), known != .body else {
                throw APIModelError("Member \(structure).\(name) has an unsupported location \(location)")
            }
            self.location = known
        } else {
            location = .body
        }
        locationName = json["locationName"]?.string
        isIdempotencyToken = json["idempotencyToken"]?.bool ?? false
        timestampFormat = json["timestampFormat"]?.string
    }
}

// MARK: - Patterns

/// A model pattern compiled for ICU (NSRegularExpression), matched the way AWS's Java
/// validators match: the whole value must match (`Matcher.matches()`), whether or not the
/// pattern is anchored. Smithy documents search semantics instead, but AWS answers
/// "Member must satisfy regular expression pattern: [\p{L}…]*" for patterns that a search
/// would always satisfy, so whole-value matching is what the service does. The pattern is
/// wrapped in `\A(?:…)\z`, so ICU backtracks until the match covers the value, and `$` cannot
/// match before a trailing newline as it can in both Java and ICU. Java's `\s`, `\w` and `\d`
/// are ASCII classes where ICU's are Unicode, so they are rewritten to the ASCII sets.
struct ModelPattern: @unchecked Sendable {
    // NSRegularExpression is immutable once made and documented as safe to use from any thread.
    let source: String
    let expression: NSRegularExpression

    init(_ source: String, shape: String) throws(APIModelError) {
        self.source = source
        do {
            expression = try NSRegularExpression(pattern: #"\A(?:"# + Self.icuPattern(source) + #")\z"#)
        } catch {
            throw APIModelError("Shape \(shape): pattern \(source) does not compile: \(error)")
        }
    }

    func matches(_ value: String) -> Bool {
        let range = NSRange(value.startIndex..<value.endIndex, in: value)
        return expression.firstMatch(in: value, options: [], range: range) != nil
    }

    static func icuPattern(_ java: String) -> String {
        let asciiClasses: [Character: (inside: String, outside: String)] = [
            "s": (#" \t\n\x0B\f\r"#, #"[ \t\n\x0B\f\r]"#),
            "w": ("a-zA-Z0-9_", "[a-zA-Z0-9_]"),
            "d": ("0-9", "[0-9]"),
        ]
        var output = ""
        var classDepth = 0
        var escaped = false
        for character in java {
            if escaped {
                escaped = false
                if let ascii = asciiClasses[character] {
                    output += classDepth > 0 ? ascii.inside : ascii.outside
                } else {
                    output += "\\" + String(character)
                }
                continue
            }
            switch character {
            case "\\": escaped = true
            case "[":
                classDepth += 1
                output.append(character)
            case "]":
                if classDepth > 0 { classDepth -= 1 }
                output.append(character)
            default: output.append(character)
            }
        }
        if escaped { output += "\\" }
        return output
    }
}
