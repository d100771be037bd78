import Foundation

/// Reads an HTTP request the way an AWS REST-JSON service does: the route picks the operation,
/// the input is gathered from URI labels, query string, headers and JSON body, and the input is
/// validated against the operation's input shape before any handler sees it. The way back,
/// `shapeOutput` and `response`, keeps a handler's result to what the output shape defines.
///
/// Which exception a validation failure is, first that the operation lists (boto3 users catch
/// `client.exceptions.<code>`, and a listed code is one the operation's documentation names):
/// 1. InvalidVersionNumberException, when every problem is in the top-level `semanticVersion`;
/// 2. InvalidParameterValueException ("The value that you provided … is invalid");
/// 3. InvalidRequestException (every operation but the tag operations and the two imports);
/// 4. InvalidParameterException (the tag operations list it and neither of the above);
/// 5. ClientException, defined for the whole service, when the operation lists none of these.
/// A body that is not a JSON object takes the same choice without step 1.
public struct APIRequestDecoder: Sendable {
    /// Largest request body accepted; the server should refuse larger bodies before reading
    /// them, and `decode` refuses them too.
    public static let maximumBodyBytes = 8 << 20
    /// Validation problems listed in one message; the count in front is always the full count.
    public static let maximumListedProblems = 20
    /// Longest rendering of a value inside a validation message.
    static let maximumRenderedValue = 256

    public let model: APIModel

    public init(model: APIModel = .imagebuilder) {
        self.model = model
    }

    /// The operation a request asks for and its validated input, keyed by member name (not by
    /// wire name). `rawPath` is the request path as received, still percent-encoded; `rawQuery`
    /// the part after `?` (nil or empty when none); `headers` are matched case-insensitively.
    /// Members the input shape does not define, at any depth, are dropped, as AWS ignores
    /// unknown JSON members; JSON nulls count as absent. Timestamps become seconds since the
    /// epoch (a JSON number), whether sent as a number or as ISO 8601 text.
    public func decode(
        method: String, rawPath: String, rawQuery: String?, headers: [String: String], body: [UInt8]
    ) throws(APIError) -> (operation: APIOperation, input: [String: JSONValue]) {
        var path = rawPath
        var query = rawQuery
        if let mark = rawPath.firstIndex(of: "?") {
            path = String(rawPath[..<mark])
            if query == nil { query = String(rawPath[rawPath.index(after: mark)...]) }
        }
        guard let (operation, labels) = model.route(method: method, path: path) else {
            let allowed = model.allowedMethods(path: path)
            if allowed.isEmpty { throw .unknownOperation(method: method, path: path) }
            throw .methodNotAllowed(method: method.uppercased(), path: path, allowed: allowed)
        }
        guard body.count <= Self.maximumBodyBytes else {
            throw .requestTooLarge(bytes: body.count, limit: Self.maximumBodyBytes)
        }
        let input = try input(for: operation, labels: labels, query: query ?? "", headers: headers, body: body)
        try validate(input, for: operation)
        return (operation, input)
    }

    /// Checks `input` against the operation's input shape as AWS does server-side: required
    /// members, types, string lengths (in Unicode scalars, as Smithy's length trait counts),
    /// patterns (whole-value match, see `ModelPattern`), enums, numeric ranges, list and map
    /// sizes, map keys, nested structures. Every problem is reported in one message, in AWS's
    /// words: "2 validation errors detected: Value 'abc' at 'semanticVersion' failed to
    /// satisfy constraint: Member must satisfy regular expression pattern: …; Value null at
    /// 'name' failed to satisfy constraint: Member must not be null".
    public func validate(_ input: [String: JSONValue], for operation: APIOperation) throws(APIError) {
        guard let shape = model.inputShape(of: operation) else { return }
        var problems: [ValidationProblem] = []
        checkStructure(input, shape: shape, path: "", problems: &problems)
        guard !problems.isEmpty else { return }
        let onlyVersion = problems.allSatisfy { $0.path == "semanticVersion" }
        let listed = problems.prefix(Self.maximumListedProblems).map(\.text)
        var message = "\(problems.count) validation error\(problems.count == 1 ? "" : "s") detected: "
        message += listed.joined(separator: "; ")
        if problems.count > listed.count { message += "; and \(problems.count - listed.count) more" }
        throw requestError(operation, message, semanticVersion: onlyVersion)
    }

    /// The exception code for a request `operation` refuses as invalid (see the type's
    /// documentation for the order).
    public static func validationExceptionCode(for operation: APIOperation, semanticVersion: Bool = false) -> String {
        if semanticVersion, operation.lists("InvalidVersionNumberException") { return "InvalidVersionNumberException" }
        let preference = ["InvalidParameterValueException", "InvalidRequestException", "InvalidParameterException"]
        return preference.first { operation.lists($0) } ?? "ClientException"
    }

    func requestError(_ operation: APIOperation, _ message: String, semanticVersion: Bool = false) -> APIError {
        let code = Self.validationExceptionCode(for: operation, semanticVersion: semanticVersion)
        return APIError(code: code, status: model.exceptionStatus[code] ?? 400, message: message)
    }
}

// MARK: - Gathering the input

extension APIRequestDecoder {
    func input(
        for operation: APIOperation, labels: [String: String], query: String, headers: [String: String], body: [UInt8]
    ) throws(APIError) -> [String: JSONValue] {
        guard let shape = model.inputShape(of: operation) else { return [:] }
        let queryPairs = Self.queryPairs(query)
        var lowercasedHeaders: [String: String] = [:]
        for (name, value) in headers where lowercasedHeaders[name.lowercased()] == nil {
            lowercasedHeaders[name.lowercased()] = value
        }

        var bodyMembers: [String: JSONValue] = [:]
        let hasBodyMembers = shape.members.values.contains { $0.location == .body }
        let isBlank = body.allSatisfy { $0 == 0x20 || $0 == 0x09 || $0 == 0x0A || $0 == 0x0D }
        if let payload = shape.payload, let member = shape.members[payload], let payloadShape = model.shapes[member.shape] {
            // A payload member is the whole body; Image Builder has none, so only the simple cases.
            if payloadShape.kind == .structure {
                if !isBlank { bodyMembers[member.wireName] = .object(try bodyObject(body, operation)) }
            } else if !body.isEmpty {
                bodyMembers[member.wireName] =
                    payloadShape.kind == .blob ? .string(Data(body).base64EncodedString()) : .string(String(decoding: body, as: UTF8.self))
            }
        } else if hasBodyMembers, !isBlank {
            bodyMembers = try bodyObject(body, operation)
        }

        var input: [String: JSONValue] = [:]
        for name in shape.memberNames {
            guard let member = shape.members[name], let memberShape = model.shapes[member.shape] else { continue }
            var value: JSONValue?
            switch member.location {
            case .uri:
                value = labels[member.wireName].map { scalar(fromText: $0, shape: memberShape) }
            case .querystring:
                value = queryValue(member, memberShape, in: shape, pairs: queryPairs)
            case .header:
                value = lowercasedHeaders[member.wireName.lowercased()].map { scalar(fromText: $0, shape: memberShape) }
            case .headers:
                let prefix = member.wireName.lowercased()
                var map: [String: JSONValue] = [:]
                for (header, text) in lowercasedHeaders where header.hasPrefix(prefix) {
                    map[String(header.dropFirst(prefix.count))] = .string(text)
                }
                value = map.isEmpty ? nil : .object(map)
            case .statusCode:
                value = nil
            case .body:
                value = bodyMembers[shape.payload == nil ? member.wireName : name].map { sanitized($0, shape: memberShape) }
            }
            if let value, value != .null { input[name] = value }
        }
        return input
    }

    func bodyObject(_ body: [UInt8], _ operation: APIOperation) throws(APIError) -> [String: JSONValue] {
        let document: JSONValue
        do throws(JSONParseError) {
            document = try JSONValue(parsing: body)
        } catch {
            throw requestError(operation, "The request body is not valid JSON: \(error)")
        }
        guard case .object(let members) = document else {
            throw requestError(operation, "The request body must be a JSON object, not \(Self.kindName(document))")
        }
        return members
    }

    func queryValue(_ member: APIMember, _ memberShape: APIShape, in shape: APIShape, pairs: [(String, String)]) -> JSONValue? {
        switch memberShape.kind {
        case .list:
            // A list is the key repeated: ?tagKeys=a&tagKeys=b.
            let elementShape = memberShape.listMember.flatMap { model.shapes[$0] } ?? memberShape
            let values = pairs.filter { $0.0 == member.wireName }.map { scalar(fromText: $0.1, shape: elementShape) }
            return values.isEmpty ? nil : .array(values)
        case .map:
            // A map takes every query parameter no other member claims.
            let claimed = Set(shape.members.values.filter { $0.location == .querystring && $0.name != member.name }.map(\.wireName))
            var map: [String: JSONValue] = [:]
            for (key, text) in pairs where !claimed.contains(key) && map[key] == nil { map[key] = .string(text) }
            return map.isEmpty ? nil : .object(map)
        default:
            return pairs.first { $0.0 == member.wireName }.map { scalar(fromText: $0.1, shape: memberShape) }
        }
    }

    /// `a=1&b=x%20y` as decoded pairs, in order; a key without `=` has an empty value.
    static func queryPairs(_ query: String) -> [(String, String)] {
        query.split(separator: "&").map { pair in
            let halves = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            return (APIModel.percentDecoded(halves[0]), halves.count == 2 ? APIModel.percentDecoded(halves[1]) : "")
        }
    }

    /// Text from a label, query or header as the member's type; text that is not a valid number
    /// or boolean stays text, so validation names the member and the type it needs.
    func scalar(fromText text: String, shape: APIShape) -> JSONValue {
        switch shape.kind {
        case .integer, .long:
            if let value = Int64(text) { return .number(Double(value)) }
        case .double, .float:
            if let value = Double(text), value.isFinite { return .number(value) }
        case .boolean:
            if text.lowercased() == "true" { return .bool(true) }
            if text.lowercased() == "false" { return .bool(false) }
        case .timestamp:
            if let seconds = Self.epochSeconds(text) { return .number(seconds) }
        default:
            break
        }
        return .string(text)
    }

    /// The value with members the shape does not define dropped at every depth, nulls in
    /// structures dropped, and timestamps as epoch seconds. A value of the wrong JSON type is
    /// kept as it is, for validation to report.
    func sanitized(_ value: JSONValue, shape: APIShape) -> JSONValue {
        switch (shape.kind, value) {
        case (.structure, .object(let members)):
            var kept: [String: JSONValue] = [:]
            for name in shape.memberNames {
                guard let member = shape.members[name], let memberShape = model.shapes[member.shape] else { continue }
                if let item = members[member.wireName], item != .null { kept[name] = sanitized(item, shape: memberShape) }
            }
            return .object(kept)
        case (.list, .array(let elements)):
            guard let elementShape = shape.listMember.flatMap({ model.shapes[$0] }) else { return value }
            return .array(elements.map { $0 == .null ? .null : sanitized($0, shape: elementShape) })
        case (.map, .object(let members)):
            guard let valueShape = shape.mapValue.flatMap({ model.shapes[$0] }) else { return value }
            return .object(members.mapValues { $0 == .null ? .null : sanitized($0, shape: valueShape) })
        case (.timestamp, .string(let text)):
            return Self.epochSeconds(text).map { .number($0) } ?? value
        default:
            return value
        }
    }

    /// Seconds since the epoch from `1700000000`, `1700000000.5` or ISO 8601 text.
    static func epochSeconds(_ text: String) -> Double? {
        if let seconds = Double(text), seconds.isFinite { return seconds }
        let formatter = ISO8601DateFormatter()
        if let date = formatter.date(from: text) { return date.timeIntervalSince1970 }
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return formatter.date(from: text)?.timeIntervalSince1970
    }
}

// MARK: - Validation

struct ValidationProblem: Sendable, Hashable {
    /// Member path in AWS's form: `name`, `parent.child`, `list.1.member.child`.
    var path: String
    var text: String
}

extension APIRequestDecoder {
    func checkStructure(_ members: [String: JSONValue], shape: APIShape, path prefix: String, problems: inout [ValidationProblem]) {
        for name in shape.memberNames {
            guard let member = shape.members[name], let memberShape = model.shapes[member.shape] else { continue }
            let path = prefix.isEmpty ? name : "\(prefix).\(name)"
            guard let value = members[name], value != .null else {
                if shape.required.contains(name) { problems.append(problem(.null, at: path, "Member must not be null")) }
                continue
            }
            check(value, shape: memberShape, path: path, problems: &problems)
        }
    }

    func check(_ value: JSONValue, shape: APIShape, path: String, problems: inout [ValidationProblem]) {
        switch shape.kind {
        case .structure:
            guard case .object(let members) = value else { return problems.append(problem(value, at: path, typeRequirement(shape))) }
            checkStructure(members, shape: shape, path: path, problems: &problems)
        case .list:
            guard case .array(let elements) = value, let elementShape = shape.listMember.flatMap({ model.shapes[$0] }) else {
                return problems.append(problem(value, at: path, typeRequirement(shape)))
            }
            for constraint in sizeConstraints(elements.count, shape) { problems.append(problem(value, at: path, constraint)) }
            if elementShape.isContainer {
                for (index, element) in elements.enumerated() {
                    let elementPath = "\(path).\(index + 1).member"
                    if element == .null {
                        problems.append(problem(.null, at: elementPath, "Member must not be null"))
                    } else {
                        check(element, shape: elementShape, path: elementPath, problems: &problems)
                    }
                }
            } else {
                let found = unique(elements.flatMap { scalarConstraints($0, shape: elementShape) })
                if !found.isEmpty {
                    problems.append(problem(value, at: path, "Member must satisfy constraint: [\(found.joined(separator: ", "))]"))
                }
            }
        case .map:
            guard case .object(let members) = value, let keyShape = shape.mapKey.flatMap({ model.shapes[$0] }),
                let valueShape = shape.mapValue.flatMap({ model.shapes[$0] })
            else { return problems.append(problem(value, at: path, typeRequirement(shape))) }
            for constraint in sizeConstraints(members.count, shape) { problems.append(problem(value, at: path, constraint)) }
            let keys = members.keys.sorted(by: JSONValue.keyOrder)
            let keyProblems = unique(keys.flatMap { scalarConstraints(.string($0), shape: keyShape) })
            if !keyProblems.isEmpty {
                problems.append(problem(value, at: path, "Map keys must satisfy constraint: [\(keyProblems.joined(separator: ", "))]"))
            }
            if valueShape.isContainer {
                for key in keys {
                    let item = members[key]!
                    if item == .null {
                        problems.append(problem(.null, at: "\(path).\(key)", "Member must not be null"))
                    } else {
                        check(item, shape: valueShape, path: "\(path).\(key)", problems: &problems)
                    }
                }
            } else {
                let valueProblems = unique(keys.flatMap { scalarConstraints(members[$0]!, shape: valueShape) })
                if !valueProblems.isEmpty {
                    problems.append(
                        problem(value, at: path, "Map values must satisfy constraint: [\(valueProblems.joined(separator: ", "))]"))
                }
            }
        default:
            for constraint in scalarConstraints(value, shape: shape) { problems.append(problem(value, at: path, constraint)) }
        }
    }

    /// What a scalar value breaks, in AWS's words ("Member must …").
    func scalarConstraints(_ value: JSONValue, shape: APIShape) -> [String] {
        if value == .null { return ["Member must not be null"] }
        var broken: [String] = []
        switch (shape.kind, value) {
        case (.string, .string(let text)):
            broken += lengthConstraints(text.unicodeScalars.count, shape)
            if let pattern = shape.pattern, let compiled = model.patterns[pattern], !compiled.matches(text) {
                broken.append("Member must satisfy regular expression pattern: \(pattern)")
            }
            if let allowed = shape.enumValues, !allowed.contains(text) {
                broken.append("Member must satisfy enum value set: [\(allowed.joined(separator: ", "))]")
            }
        case (.integer, .number(let number)) where Int32(exactly: number) != nil,
            (.long, .number(let number)) where number.rounded(.towardZero) == number && Int64(exactly: number) != nil,
            (.double, .number(let number)), (.float, .number(let number)):
            if let min = shape.min, number < min { broken.append("Member must have value greater than or equal to \(Self.text(min))") }
            if let max = shape.max, number > max { broken.append("Member must have value less than or equal to \(Self.text(max))") }
        case (.boolean, .bool), (.timestamp, .number):
            break
        case (.blob, .string(let text)):
            guard let bytes = Data(base64Encoded: text) else { return [typeRequirement(shape)] }
            broken += lengthConstraints(bytes.count, shape)
        default:
            return [typeRequirement(shape)]
        }
        return broken
    }

    func lengthConstraints(_ length: Int, _ shape: APIShape) -> [String] {
        var broken: [String] = []
        if let min = shape.min, Double(length) < min { broken.append("Member must have length greater than or equal to \(Self.text(min))") }
        if let max = shape.max, Double(length) > max { broken.append("Member must have length less than or equal to \(Self.text(max))") }
        return broken
    }

    func sizeConstraints(_ count: Int, _ shape: APIShape) -> [String] { lengthConstraints(count, shape) }

    func typeRequirement(_ shape: APIShape) -> String {
        switch shape.kind {
        case .structure, .map: "Member must be a JSON object"
        case .list: "Member must be a JSON array"
        case .string: "Member must be a string"
        case .integer, .long: "Member must be an integer"
        case .double, .float: "Member must be a number"
        case .boolean: "Member must be a boolean"
        case .timestamp: "Member must be a timestamp (seconds since the epoch, or ISO 8601 text)"
        case .blob: "Member must be base64-encoded text"
        }
    }

    func problem(_ value: JSONValue, at path: String, _ constraint: String) -> ValidationProblem {
        let shown = value == .null ? "null" : "'\(Self.render(value))'"
        return ValidationProblem(path: path, text: "Value \(shown) at '\(path)' failed to satisfy constraint: \(constraint)")
    }

    func unique(_ items: [String]) -> [String] {
        var seen: Set<String> = []
        return items.filter { seen.insert($0).inserted }
    }

    static func text(_ number: Double) -> String { JSONValue.numberText(number) }

    static func kindName(_ value: JSONValue) -> String {
        switch value {
        case .string: "a string"
        case .number: "a number"
        case .bool: "a boolean"
        case .array: "an array"
        case .object: "an object"
        case .null: "null"
        }
    }

    /// The value as Java's `toString` shows it (`[a, b]`, `{k=v}`), as AWS messages do, cut at
    /// `maximumRenderedValue` characters so a huge value cannot make a huge message.
    static func render(_ value: JSONValue) -> String {
        var output = ""
        render(value, into: &output)
        if output.count > maximumRenderedValue { return String(output.prefix(maximumRenderedValue)) + "..." }
        return output
    }

    static func render(_ value: JSONValue, into output: inout String) {
        guard output.utf8.count <= maximumRenderedValue * 4 else { return }
        switch value {
        case .string(let text): output += text.utf8.count > maximumRenderedValue * 4 ? String(text.prefix(maximumRenderedValue + 1)) : text
        case .number(let number): output += text(number)
        case .bool(let flag): output += flag ? "true" : "false"
        case .null: output += "null"
        case .array(let elements):
            output += "["
            for (index, element) in elements.enumerated() {
                if output.utf8.count > maximumRenderedValue * 4 { break }
                if index > 0 { output += ", " }
                render(element, into: &output)
            }
            output += "]"
        case .object(let members):
            output += "{"
            for (index, key) in members.keys.sorted(by: JSONValue.keyOrder).enumerated() {
                if output.utf8.count > maximumRenderedValue * 4 { break }
                if index > 0 { output += ", " }
                output += key + "="
                render(members[key]!, into: &output)
            }
            output += "}"
        }
    }
}

extension APIShape {
    var isContainer: Bool { kind == .structure || kind == .list || kind == .map }
}

// MARK: - Output

extension APIRequestDecoder {
    /// `value` with only the members the operation's output shape defines, recursively, by
    /// member name; values of the wrong JSON type and nulls are dropped too, so a handler's
    /// internal fields never reach a client. Members bound to a header or the status code stay
    /// in the result: `response` moves them (the output shape's `locatedMembers` lists them;
    /// Image Builder has none).
    public func shapeOutput(_ value: [String: JSONValue], for operation: APIOperation) -> [String: JSONValue] {
        guard let shape = model.outputShape(of: operation) else { return [:] }
        return shapedMembers(value, shape: shape, wireNames: false)
    }

    /// The success response for `output`: shaped as `shapeOutput` does, header members as
    /// headers, a status-code member as the status (else the operation's success code), the
    /// rest as the JSON body under wire names with sorted keys. An output shape's `requestId`
    /// member that `output` leaves out is filled with `requestID`, as Image Builder does.
    public func response(_ output: [String: JSONValue], for operation: APIOperation, requestID: String) -> APIResponse {
        var headers = ["Content-Type": "application/json", "x-amzn-RequestId": requestID]
        var status = operation.successCode
        guard let shape = model.outputShape(of: operation) else {
            return APIResponse(status: status, headers: headers, body: Array("{}".utf8))
        }
        var output = output
        if let member = shape.members["requestId"], member.location == .body, output["requestId"] == nil {
            output["requestId"] = .string(requestID)
        }
        var body: [String: JSONValue] = [:]
        for name in shape.memberNames {
            guard let member = shape.members[name], let memberShape = model.shapes[member.shape], let item = output[name],
                let kept = shaped(item, shape: memberShape, wireNames: true)
            else { continue }
            switch member.location {
            case .body:
                body[member.wireName] = kept
            case .header:
                headers[member.wireName] = Self.headerText(kept)
            case .headers:
                for (suffix, text) in kept.object ?? [:] { headers[member.wireName + suffix] = Self.headerText(text) }
            case .statusCode:
                status = kept.int ?? status
            case .uri, .querystring:
                break
            }
        }
        return APIResponse(status: status, headers: headers, body: JSONValue.object(body).encoded())
    }

    func shapedMembers(_ members: [String: JSONValue], shape: APIShape, wireNames: Bool) -> [String: JSONValue] {
        var kept: [String: JSONValue] = [:]
        for name in shape.memberNames {
            guard let member = shape.members[name], let memberShape = model.shapes[member.shape], let item = members[name],
                let value = shaped(item, shape: memberShape, wireNames: wireNames)
            else { continue }
            kept[wireNames ? member.wireName : name] = value
        }
        return kept
    }

    func shaped(_ value: JSONValue, shape: APIShape, wireNames: Bool) -> JSONValue? {
        switch (shape.kind, value) {
        case (.structure, .object(let members)):
            return .object(shapedMembers(members, shape: shape, wireNames: wireNames))
        case (.list, .array(let elements)):
            guard let elementShape = shape.listMember.flatMap({ model.shapes[$0] }) else { return nil }
            return .array(elements.compactMap { shaped($0, shape: elementShape, wireNames: wireNames) })
        case (.map, .object(let members)):
            guard let valueShape = shape.mapValue.flatMap({ model.shapes[$0] }) else { return nil }
            return .object(members.compactMapValues { shaped($0, shape: valueShape, wireNames: wireNames) })
        case (.string, .string), (.blob, .string), (.timestamp, .string), (.timestamp, .number), (.integer, .number),
            (.long, .number), (.double, .number), (.float, .number), (.boolean, .bool):
            return value
        default:
            return nil
        }
    }

    static func headerText(_ value: JSONValue) -> String {
        switch value {
        case .string(let text): text
        case .number(let number): text(number)
        case .bool(let flag): flag ? "true" : "false"
        default: value.description
        }
    }
}
