import CYaml
import Foundation
import Yams

/// Reads AWSTOE component documents and checks them the way `awstoe validate` does, collecting
/// every problem with its file:line:column and step path.
public struct ComponentDocumentParser: Sendable {
    public var platform: ActionSpec.Platform

    public init(platform: ActionSpec.Platform = .linux) {
        self.platform = platform
    }

    public func parse(contentsOf path: String) throws -> ComponentDocument {
        let text: String
        do {
            text = try YAMLBounds.readText(path, what: "component document")
        } catch let error as KilnError where error.code == .invalidDocument {
            throw error
        } catch {
            throw KilnError(
                .notFound, "cannot read component document '\(path)': \(error.localizedDescription). Check the path passed to --documents.")
        }
        return try parse(text: text, source: path)
    }

    public func parse(text: String, source: String) throws -> ComponentDocument {
        var reader = DocumentReader(file: source, platform: platform)
        try YAMLBounds.check(text, source: source, what: "component document")
        let root: Node?
        do {
            root = try Yams.compose(yaml: text)
        } catch let error as YamlError {
            throw KilnError(.invalidDocument, "\(source) is not valid YAML", issues: [reader.issue(for: error)])
        } catch {
            throw KilnError(.invalidDocument, "\(source) is not valid YAML", issues: [reader.issue(forOther: error)])
        }
        guard let root else {
            throw KilnError(
                .invalidDocument, "\(source) is empty",
                issues: [
                    DocumentIssue(
                        SourceLocation(file: source, line: 1, column: 1),
                        "the document is empty; a component needs schemaVersion and phases")
                ])
        }
        let document = reader.readDocument(root, text: text)
        reader.removeRepeatedIssues()
        guard reader.issues.isEmpty, let document else {
            let count = reader.issues.count
            throw KilnError(.invalidDocument, "\(source): \(count) problem\(count == 1 ? "" : "s") found", issues: reader.issues)
        }
        return document
    }
}

/// Bounds on YAML that Kiln reads from users. An alias is the node it names, so every walk of the
/// tree (reading, decoding, hashing a mapping key) expands it: nested aliases (a "billion laughs"
/// document) turn a few hundred bytes into gigabytes and hours. `check` refuses them from libyaml's
/// event stream, in one pass, before Yams builds or hashes anything.
public enum YAMLBounds {
    /// Far beyond any real component document or definitions file.
    public static let maxBytes = 16 << 20
    /// Nodes after alias expansion: a 16 MiB document without aliases has fewer than this times 4.
    public static let maxNodes = 1_000_000

    /// Reads a file, refusing more than `maxBytes` (so a FIFO or /dev/zero cannot fill memory either).
    public static func readText(_ path: String, what: String) throws -> String {
        guard let handle = FileHandle(forReadingAtPath: path) else {
            throw KilnError(.notFound, "cannot read the \(what) '\(path)'")
        }
        defer { try? handle.close() }
        let data: Data
        do {
            data = try handle.read(upToCount: maxBytes + 1) ?? Data()
        } catch {
            throw KilnError(.ioFailure, "cannot read the \(what) '\(path)': \(error.localizedDescription)")
        }
        try checkSize(data.count, source: path, what: what)
        return String(decoding: data, as: UTF8.self)
    }

    public static func checkSize(_ byteCount: Int, source: String, what: String) throws {
        guard byteCount <= maxBytes else {
            throw KilnError(
                .invalidDocument,
                "\(source): the \(what) is larger than \(maxBytes >> 20) MiB, the most Kiln reads; split it into smaller documents")
        }
    }

    /// The size and expansion checks, to run before `Yams.compose`.
    public static func check(_ text: String, source: String, what: String) throws {
        try checkSize(text.utf8.count, source: source, what: what)
        try checkExpansion(text, source: source)
    }

    /// Counts nodes as if every alias were expanded, stopping past `limit`: each anchor's expanded
    /// size is recorded once, so the pass is linear in the text. Yams also hashes every mapping key
    /// whole (an alias or a nested key again at each level), so keys that are lists or mappings have
    /// the same bound. A syntax error ends the pass quietly; Yams then reports it with its place.
    public static func checkExpansion(_ text: String, source: String, limit: Int = maxNodes) throws {
        var bytes = Array(text.utf8)
        guard !bytes.isEmpty else { return }
        var parser = yaml_parser_t()
        guard yaml_parser_initialize(&parser) == 1 else { return }
        defer { yaml_parser_delete(&parser) }
        try bytes.withUnsafeMutableBufferPointer { buffer in
            yaml_parser_set_input_string(&parser, buffer.baseAddress, buffer.count)
            yaml_parser_set_encoding(&parser, YAML_UTF8_ENCODING)
            var counter = ExpansionCounter(limit: limit)
            while true {
                var event = yaml_event_t()
                guard yaml_parser_parse(&parser, &event) == 1 else { return }
                defer { yaml_event_delete(&event) }
                let line = Int(event.start_mark.line) + 1
                switch counter.take(event) {
                case .fine: break
                case .done: return
                case .tooLarge:
                    throw KilnError(
                        .invalidDocument,
                        "\(source): the YAML has more than \(grouped(limit)) nodes once its anchors and aliases (&name, *name) are expanded (passed at line \(line)); aliases that repeat other aliases expand too far (a \"billion laughs\" document). Write the values out, or use fewer nested aliases"
                    )
                case .keysTooLarge:
                    throw KilnError(
                        .invalidDocument,
                        "\(source): mapping keys that are lists or mappings (or aliases of them) add up to more than \(grouped(limit)) nodes (passed at line \(line)); Kiln reads only string keys, so write the keys as strings"
                    )
                }
            }
        }
    }

    /// The expanded size of the node being read at each level, and of each anchor once read.
    private struct ExpansionCounter {
        enum Verdict { case fine, done, tooLarge, keysTooLarge }
        struct Frame {
            var size = 1
            var anchor: String?
            var isMapping: Bool
            /// This node is a mapping key.
            var isKey: Bool
            /// In a mapping: the next node is a key.
            var expectKey = true
        }

        let limit: Int
        var frames: [Frame] = []
        var anchors: [String: Int] = [:]
        var total = 0
        /// Nodes Yams hashes to check mapping keys for duplicates.
        var keyCost = 0

        init(limit: Int) { self.limit = limit }

        mutating func take(_ event: yaml_event_t) -> Verdict {
            switch event.type {
            case YAML_STREAM_END_EVENT:
                return .done
            case YAML_SCALAR_EVENT:
                _ = nextIsKey()
                if let anchor = Self.string(event.data.scalar.anchor) { anchors[anchor] = 1 }
                return add(1, isKey: false)
            case YAML_ALIAS_EVENT:
                let isKey = nextIsKey()
                return add(Self.string(event.data.alias.anchor).flatMap { anchors[$0] } ?? 1, isKey: isKey)
            case YAML_SEQUENCE_START_EVENT, YAML_MAPPING_START_EVENT:
                let isKey = nextIsKey()
                let isMapping = event.type == YAML_MAPPING_START_EVENT
                let anchor = Self.string(isMapping ? event.data.mapping_start.anchor : event.data.sequence_start.anchor)
                frames.append(Frame(anchor: anchor, isMapping: isMapping, isKey: isKey))
                return .fine
            case YAML_SEQUENCE_END_EVENT, YAML_MAPPING_END_EVENT:
                guard let frame = frames.popLast() else { return .fine }
                if let anchor = frame.anchor { anchors[anchor] = frame.size }
                return add(frame.size, isKey: frame.isKey)
            default:
                return .fine
            }
        }

        /// Whether the node now starting is a mapping key; moves the mapping on to its next node.
        private mutating func nextIsKey() -> Bool {
            guard let last = frames.indices.last, frames[last].isMapping else { return false }
            defer { frames[last].expectKey.toggle() }
            return frames[last].expectKey
        }

        /// Adds a finished node of `size` expanded nodes to its parent.
        private mutating func add(_ size: Int, isKey: Bool) -> Verdict {
            if isKey {
                keyCost += size
                if keyCost > limit { return .keysTooLarge }
            }
            if frames.isEmpty {
                total += size
                return total > limit ? .tooLarge : .fine
            }
            frames[frames.count - 1].size += size
            return frames[frames.count - 1].size > limit ? .tooLarge : .fine
        }

        private static func string(_ pointer: UnsafeMutablePointer<yaml_char_t>?) -> String? {
            pointer.map { String(cString: $0) }
        }
    }

    /// 1000000 as "1,000,000".
    public static func grouped(_ number: Int) -> String {
        var digits = String(number.magnitude)
        var index = digits.endIndex
        while digits.distance(from: digits.startIndex, to: index) > 3 {
            index = digits.index(index, offsetBy: -3)
            digits.insert(",", at: index)
        }
        return (number < 0 ? "-" : "") + digits
    }
}

extension StepLoop {
    /// AWSTOE documents no limit; each iteration runs an action (a process, a download), so this
    /// many take hours, and a step's default timeout is 2 hours anyway.
    public static let maxIterations = 10_000

    /// How many values `for` yields; nil when that does not fit in an Int (always too many).
    public static func rangeCount(start: Int, end: Int, updateBy: Int) -> Int? {
        guard updateBy != 0 else { return nil }
        let (span, overflow) = end.subtractingReportingOverflow(start)
        guard !overflow else { return nil }
        if span.signum() * updateBy.signum() < 0 { return 0 }
        let (steps, tooBig) = span.dividedReportingOverflow(by: updateBy)
        guard !tooBig, steps < Int.max else { return nil }
        return steps + 1
    }

    /// Whether a `for` loop stays within `maxIterations`.
    public static func rangeFits(start: Int, end: Int, updateBy: Int) -> Bool {
        rangeCount(start: start, end: end, updateBy: updateBy).map { $0 <= maxIterations } ?? false
    }

    /// The error text for a loop with too many iterations; `what` describes the loop.
    public static func tooManyIterations(_ what: String, count: Int?, isRange: Bool) -> String {
        let size = count.map { " has \(YAMLBounds.grouped($0)) iterations" } ?? " has too many iterations"
        let hint = isRange ? "use a larger updateBy or a smaller range" : "use a shorter list"
        return
            "\(what)\(size); Kiln runs at most \(YAMLBounds.grouped(maxIterations)) iterations per loop. Split the work over several steps, or \(hint)"
    }
}

extension ParameterDefinition {
    /// Values for display: 'a', 'b'.
    static func list(_ values: [String]) -> String { values.map { "'\($0)'" }.joined(separator: ", ") }
}

extension ComponentDocument {
    /// Parameter values for a run: given values (unknown names ignored, as in AWSTOE) over the
    /// defaults. A value outside a parameter's allowedValues, or a parameter with no value, is refused.
    public func parameterValues(_ given: [String: String]) throws -> [String: String] {
        var values: [String: String] = [:]
        for parameter in parameters {
            guard let value = given[parameter.name] ?? parameter.defaultValue else {
                throw KilnError(
                    .invalidArgument,
                    "\(source): parameter '\(parameter.name)' has no default and no value; pass --parameters \(parameter.name)=VALUE")
            }
            if let allowed = parameter.allowedValues, !allowed.contains(value) {
                throw KilnError(
                    .invalidArgument,
                    "\(source): parameter '\(parameter.name)' is '\(value)', which is not one of its allowedValues (\(ParameterDefinition.list(allowed))); pass one of those"
                )
            }
            values[parameter.name] = value
        }
        return values
    }
}

/// The walk over the YAML tree. Each `read…` returns what it could make of a node and records
/// problems instead of stopping, so one validation run reports them all.
struct DocumentReader {
    let file: String
    let platform: ActionSpec.Platform
    var issues: [DocumentIssue] = []

    init(file: String, platform: ActionSpec.Platform) {
        self.file = file
        self.platform = platform
    }

    // MARK: Locations and problems

    /// One expression can be seen twice (an Assert's inputs are also its condition).
    mutating func removeRepeatedIssues() {
        var seen = Set<DocumentIssue>()
        issues = issues.filter { seen.insert($0).inserted }
    }

    func location(_ node: Node?) -> SourceLocation {
        let mark = node?.mark
        return SourceLocation(file: file, line: mark?.line ?? 1, column: mark?.column ?? 1)
    }

    mutating func problem(_ node: Node?, _ path: String?, _ message: String) {
        issues.append(DocumentIssue(location(node), stepPath: path, message))
    }

    func issue(for error: YamlError) -> DocumentIssue {
        switch error {
        case .scanner(let context, let problem, let mark, _), .parser(let context, let problem, let mark, _),
            .composer(let context, let problem, let mark, _):
            let where_ = context.map { " (\($0.text))" } ?? ""
            var hint = ""
            if problem.contains("mapping values are not allowed") || problem.contains("did not find expected key") {
                hint = "; check indentation, and quote values that contain ': ' or start with '{'"
            }
            return DocumentIssue(
                SourceLocation(file: file, line: mark.line, column: mark.column), "YAML syntax error: \(problem)\(where_)\(hint)")
        default:
            return issue(forOther: error)
        }
    }

    /// Yams reports duplicate keys with its own error type, whose text names the line and column.
    func issue(forOther error: Error) -> DocumentIssue {
        let description = "\(error)"
        if description.contains("expected all keys to be unique"),
            let position = description.range(of: #"in line [0-9]+, column [0-9]+"#, options: .regularExpression)
        {
            let numbers = description[position].split(whereSeparator: { !$0.isNumber }).compactMap { Int($0) }
            let keys =
                description.range(of: #"duplicated key\(s\): [^\n]*"#, options: .regularExpression)
                .map {
                    description[$0].replacingOccurrences(of: "duplicated key(s): ", with: "").trimmingCharacters(
                        in: CharacterSet(charactersIn: ". "))
                } ?? "a key"
            return DocumentIssue(
                SourceLocation(file: file, line: numbers[0], column: numbers[1]),
                "duplicate key \(keys): each key may appear only once in a mapping")
        }
        let firstLine = description.split(separator: "\n").first.map(String.init) ?? description
        return DocumentIssue(SourceLocation(file: file, line: 1, column: 1), "YAML error: \(firstLine)")
    }

    // MARK: Node helpers

    /// Mapping entries with string keys; reports non-string and duplicate keys.
    mutating func entries(_ node: Node, _ path: String?, what: String) -> [(key: String, keyNode: Node, value: Node)]? {
        guard case .mapping(let mapping) = node else {
            problem(node, path, "\(what) must be a mapping (key: value pairs), found \(kind(node))")
            return nil
        }
        var result: [(String, Node, Node)] = []
        var seen = Set<String>()
        for (keyNode, value) in mapping {
            guard case .scalar(let scalar) = keyNode else {
                problem(keyNode, path, "keys of \(what) must be plain strings")
                continue
            }
            if !seen.insert(scalar.string).inserted {
                problem(keyNode, path, "duplicate key '\(scalar.string)' in \(what)")
                continue
            }
            result.append((scalar.string, keyNode, value))
        }
        return result
    }

    mutating func scalar(_ node: Node, _ path: String?, what: String) -> String? {
        switch node {
        case .scalar(let scalar):
            return scalar.string
        default:
            var hint = ""
            if case .mapping = node { hint = "; a value starting with '{{' must be quoted, e.g. '{{ Name }}'" }
            problem(node, path, "\(what) must be a string, found \(kind(node))\(hint)")
            return nil
        }
    }

    mutating func integer(_ node: Node, _ path: String?, what: String) -> Int? {
        guard let text = scalar(node, path, what: what) else { return nil }
        guard let value = Int(text.trimmingWhitespace()) else {
            problem(node, path, "\(what) must be an integer, found '\(text)'")
            return nil
        }
        return value
    }

    func kind(_ node: Node) -> String {
        switch node {
        case .scalar: return "a string"
        case .mapping: return "a mapping"
        case .sequence: return "a list"
        case .alias: return "an alias"
        }
    }

    func isNull(_ node: Node) -> Bool {
        if case .scalar(let scalar) = node, scalar.style == .plain, ["", "~", "null", "Null", "NULL"].contains(scalar.string) {
            return true
        }
        return false
    }

    // MARK: Document

    mutating func readDocument(_ root: Node, text: String) -> ComponentDocument? {
        guard let top = entries(root, nil, what: "the document") else { return nil }
        var name: String?
        var description: String?
        var schemaVersion: String?
        var parameters: [ParameterDefinition] = []
        var constants: [ConstantDefinition] = []
        var phases: [Phase] = []
        var phasesNode: Node?
        for (key, keyNode, value) in top {
            switch key {
            case "name": name = scalar(value, nil, what: "name")
            case "description": description = scalar(value, nil, what: "description")
            case "schemaVersion":
                if let version = scalar(value, nil, what: "schemaVersion") {
                    if version == "1.0" || version == "1" {
                        schemaVersion = "1.0"
                    } else {
                        problem(value, nil, "schemaVersion '\(version)' is not supported; use 1.0")
                        schemaVersion = version
                    }
                }
            case "parameters": parameters = readParameters(value)
            case "constants": constants = readConstants(value)
            case "phases":
                phasesNode = value
            default:
                problem(
                    keyNode, nil, "unknown top-level key '\(key)'; allowed: name, description, schemaVersion, parameters, constants, phases"
                )
            }
        }
        if schemaVersion == nil, !top.contains(where: { $0.key == "schemaVersion" }) {
            problem(root, nil, "schemaVersion is required; add 'schemaVersion: 1.0'")
        }
        checkUniqueVariableNames(parameters.map(\.name) + constants.map(\.name), root)
        let variables = Set(parameters.map(\.name) + constants.map(\.name))
        if let phasesNode {
            phases = readPhases(phasesNode, variables: variables)
        } else {
            problem(root, nil, "phases is required; add at least one of the build, validate or test phases")
        }
        return ComponentDocument(
            name: name, description: description, schemaVersion: schemaVersion ?? "1.0",
            parameters: parameters, constants: constants, phases: phases, source: file, text: text
        )
    }

    static let variableNamePattern = try! NSRegularExpression(pattern: "^[a-zA-Z0-9_-]{3,128}$")

    mutating func checkVariableName(_ name: String, _ node: Node, what: String) {
        let range = NSRange(name.startIndex..., in: name)
        if Self.variableNamePattern.firstMatch(in: name, range: range) == nil {
            problem(node, nil, "\(what) name '\(name)' is invalid; use 3–128 characters from a-z, A-Z, 0-9, '_' and '-'")
        }
    }

    private var variableNodes: [String: Node] = [:]

    mutating func checkUniqueVariableNames(_ names: [String], _ root: Node) {
        var seen = Set<String>()
        for name in names where !seen.insert(name).inserted {
            problem(
                variableNodes[name] ?? root, nil,
                "'\(name)' is defined more than once; parameter and constant names must be unique together")
        }
    }

    /// `- Name: {type: string, ...}` entries shared by parameters and constants.
    mutating func readVariableEntries(_ node: Node, what: String) -> [(
        name: String, nameNode: Node, fields: [(key: String, keyNode: Node, value: Node)]
    )] {
        guard case .sequence(let items) = node else {
            if !isNull(node) { problem(node, nil, "\(what)s must be a list of '- Name: {type: string, ...}' entries") }
            return []
        }
        var result: [(String, Node, [(String, Node, Node)])] = []
        for item in items {
            guard let pairs = entries(item, nil, what: "a \(what)"), pairs.count == 1 else {
                if case .mapping = item {
                    problem(item, nil, "each \(what) entry must have exactly one name, e.g. '- MyName: {type: string}'")
                }
                continue
            }
            let (name, nameNode, body) = pairs[0]
            checkVariableName(name, nameNode, what: what)
            if variableNodes[name] == nil { variableNodes[name] = nameNode }
            guard let fields = entries(body, nil, what: "\(what) '\(name)'") else { continue }
            result.append((name, nameNode, fields))
        }
        return result
    }

    mutating func readParameters(_ node: Node) -> [ParameterDefinition] {
        readVariableEntries(node, what: "parameter").map { name, nameNode, fields in
            var definition = ParameterDefinition(name: name)
            var hasType = false
            for (key, keyNode, value) in fields {
                switch key {
                case "type":
                    hasType = true
                    if let type = scalar(value, nil, what: "type of parameter '\(name)'") {
                        if type.lowercased() != "string" {
                            problem(value, nil, "parameter '\(name)' has type '\(type)'; the only supported type is string")
                        }
                        definition.type = type
                    }
                case "default": definition.defaultValue = scalar(value, nil, what: "default of parameter '\(name)'")
                case "description": definition.description = scalar(value, nil, what: "description of parameter '\(name)'")
                case "allowedValues":
                    guard case .sequence(let items) = value, !items.isEmpty else {
                        problem(value, nil, "allowedValues of parameter '\(name)' must be a non-empty list of strings, e.g. [yes, no]")
                        continue
                    }
                    let values = items.compactMap { scalar($0, nil, what: "an item of allowedValues of parameter '\(name)'") }
                    if values.count == items.count { definition.allowedValues = values }
                default:
                    problem(keyNode, nil, "unknown key '\(key)' in parameter '\(name)'; allowed: type, default, description, allowedValues")
                }
            }
            if !hasType { problem(nameNode, nil, "parameter '\(name)' needs 'type: string'") }
            if let allowed = definition.allowedValues, let value = definition.defaultValue, !allowed.contains(value) {
                let node = fields.first { $0.key == "default" }?.value ?? nameNode
                problem(
                    node, nil,
                    "default '\(value)' of parameter '\(name)' is not one of its allowedValues (\(ParameterDefinition.list(allowed))); make the default one of them"
                )
            }
            return definition
        }
    }

    mutating func readConstants(_ node: Node) -> [ConstantDefinition] {
        readVariableEntries(node, what: "constant").compactMap { name, nameNode, fields in
            var type: String?
            var value: String?
            for (key, keyNode, field) in fields {
                switch key {
                case "type":
                    type = scalar(field, nil, what: "type of constant '\(name)'")
                    if let type, type.lowercased() != "string" {
                        problem(field, nil, "constant '\(name)' has type '\(type)'; the only supported type is string")
                    }
                case "value": value = scalar(field, nil, what: "value of constant '\(name)'")
                default: problem(keyNode, nil, "unknown key '\(key)' in constant '\(name)'; allowed: type, value")
                }
            }
            if type == nil, !fields.contains(where: { $0.key == "type" }) {
                problem(nameNode, nil, "constant '\(name)' needs 'type: string'")
            }
            guard let value else {
                if !fields.contains(where: { $0.key == "value" }) { problem(nameNode, nil, "constant '\(name)' needs a value") }
                return nil
            }
            return ConstantDefinition(name: name, type: type ?? "string", value: value)
        }
    }

    // MARK: Phases and steps

    mutating func readPhases(_ node: Node, variables: Set<String>) -> [Phase] {
        guard case .sequence(let items) = node, !items.isEmpty else {
            problem(node, nil, "phases must be a non-empty list of '- name: build' entries with steps")
            return []
        }
        var phases: [Phase] = []
        var phaseNodes: [(Phase, Node)] = []
        for item in items {
            guard let fields = entries(item, nil, what: "a phase") else { continue }
            var name: String?
            var stepsNode: Node?
            for (key, keyNode, value) in fields {
                switch key {
                case "name": name = scalar(value, nil, what: "phase name")
                case "steps": stepsNode = value
                default: problem(keyNode, name, "unknown key '\(key)' in phase; allowed: name, steps")
                }
            }
            guard let name else {
                if !fields.contains(where: { $0.key == "name" }) {
                    problem(item, nil, "a phase needs a name (build, validate, test or container-host-test)")
                }
                continue
            }
            if phases.contains(where: { $0.name == name }) {
                problem(item, name, "phase '\(name)' appears more than once; phase names must be unique")
                continue
            }
            let steps: [Step]
            if let stepsNode {
                steps = readSteps(stepsNode, phase: name)
            } else {
                problem(item, name, "phase '\(name)' needs steps")
                steps = []
            }
            let phase = Phase(name: name, steps: steps, location: location(item))
            phases.append(phase)
            phaseNodes.append((phase, item))
        }
        if !phases.isEmpty, !phases.contains(where: { ["build", "validate", "test"].contains($0.name) }) {
            problem(
                node, nil,
                "a document needs at least one of the build, validate or test phases; found \(phases.map(\.name).joined(separator: ", "))")
        }
        checkReferences(phases: phases, variables: variables)
        return phases
    }

    mutating func readSteps(_ node: Node, phase: String) -> [Step] {
        guard case .sequence(let items) = node, !items.isEmpty else {
            problem(node, phase, "steps must be a non-empty list")
            return []
        }
        var steps: [Step] = []
        var loopNames = Set<String>()
        for item in items {
            guard let step = readStep(item, phase: phase) else { continue }
            if steps.contains(where: { $0.name == step.name }) {
                problem(
                    item, "\(phase)/\(step.name)",
                    "step name '\(step.name)' is used twice in phase '\(phase)'; step names must be unique within a phase")
                continue
            }
            if let loopName = step.loop?.name, !loopNames.insert(loopName).inserted {
                problem(
                    item, "\(phase)/\(step.name)",
                    "loop name '\(loopName)' is used twice in phase '\(phase)'; loop names must be unique within a phase")
            }
            steps.append(step)
        }
        return steps
    }

    static let stepKeys = ["name", "action", "inputs", "onFailure", "timeoutSeconds", "maxAttempts", "loop", "if"]

    mutating func readStep(_ node: Node, phase: String) -> Step? {
        guard let fields = entries(node, phase, what: "a step") else { return nil }
        let field = { (name: String) in fields.first { $0.key == name } }
        guard let nameField = field("name"), let name = scalar(nameField.value, phase, what: "step name") else {
            if field("name") == nil { problem(node, phase, "a step needs a name") }
            return nil
        }
        let path = "\(phase)/\(name)"
        if name.trimmingWhitespace().isEmpty || name.contains(".") {
            problem(
                nameField.value, path,
                "step name '\(name)' is invalid; it must not be empty or contain '.', which chaining uses to separate names")
        }
        for (key, keyNode, _) in fields where !Self.stepKeys.contains(key) {
            problem(keyNode, path, "unknown step key '\(key)'; allowed: \(Self.stepKeys.joined(separator: ", "))")
        }

        guard let actionField = field("action") else {
            problem(
                node, path,
                "step needs an action; \(platform.rawValue) actions: \(ActionCatalog.names(for: platform).joined(separator: ", "))")
            return nil
        }
        guard let actionName = scalar(actionField.value, path, what: "action") else { return nil }
        guard let spec = ActionCatalog.spec(named: actionName) else {
            var hint = ""
            if let close = ActionCatalog.all.first(where: { $0.name.lowercased() == actionName.lowercased() }) {
                hint = " (action names are case-sensitive: did you mean '\(close.name)'?)"
            } else if let close = ActionCatalog.closestName(to: actionName, platform: platform) {
                hint = " (did you mean '\(close)'?)"
            }
            problem(
                actionField.value, path,
                "unknown action '\(actionName)'\(hint); \(platform.rawValue) actions: \(ActionCatalog.names(for: platform).joined(separator: ", "))"
            )
            // Kept, so that chaining to this step is not reported as a second problem.
            return Step(name: name, action: actionName, location: location(node))
        }
        if !spec.platforms.contains(platform) {
            let alternative = spec.name == "ExecutePowerShell" ? "; use ExecuteBash" : ""
            problem(
                actionField.value, path,
                "action '\(spec.name)' runs only on \(spec.platforms.map(\.rawValue).sorted().joined(separator: "/")), not on \(platform.rawValue)\(alternative)"
            )
        }

        var step = Step(name: name, action: spec.name, location: location(node))
        if let onFailure = field("onFailure"), let text = scalar(onFailure.value, path, what: "onFailure") {
            if let value = FailureAction(rawValue: text) {
                step.onFailure = value
            } else {
                problem(onFailure.value, path, "onFailure '\(text)' is invalid; allowed: Abort, Continue, Ignore")
            }
        }
        if let timeout = field("timeoutSeconds"), let seconds = integer(timeout.value, path, what: "timeoutSeconds") {
            if seconds == -1 {
                step.timeoutSeconds = nil
            } else if seconds >= 1 {
                step.timeoutSeconds = seconds
            } else {
                problem(timeout.value, path, "timeoutSeconds \(seconds) is invalid; use a positive number of seconds, or -1 for no timeout")
            }
        }
        if let attempts = field("maxAttempts"), let count = integer(attempts.value, path, what: "maxAttempts") {
            if count >= 1 {
                step.maxAttempts = count
            } else {
                problem(attempts.value, path, "maxAttempts \(count) is invalid; use 1 or more")
            }
        }
        if spec.name == "ExecuteDocument" {
            if let timeout = field("timeoutSeconds"), let seconds = Int(timeout.value.string ?? ""), seconds >= 1 {
                problem(timeout.value, path, "ExecuteDocument always runs with timeoutSeconds -1; remove timeoutSeconds")
            }
            if let attempts = field("maxAttempts"), step.maxAttempts != 1 {
                problem(attempts.value, path, "ExecuteDocument always runs with maxAttempts 1; remove maxAttempts")
            }
            step.timeoutSeconds = nil
            step.maxAttempts = 1
        }
        if spec.name == "Reboot" { step.timeoutSeconds = nil }

        if let loop = field("loop") { step.loop = readLoop(loop.value, path: path) }
        if let condition = field("if") { step.condition = readStepCondition(condition.value, path: path) }

        if let inputs = field("inputs") {
            step.inputs = readInputs(inputs.value, spec: spec, path: path)
            if spec.form == .condition { step.assertion = readCondition(inputs.value, path: path, allowBranches: false) }
        } else if spec.inputsRequired {
            problem(node, path, "\(spec.name) needs inputs\(describeKeys(spec))")
        }
        return step
    }

    func describeKeys(_ spec: ActionSpec) -> String {
        switch spec.form {
        case .condition: return ": one comparison or logical operator"
        case .map: return " (a mapping with \(spec.keys.map(\.name).joined(separator: ", ")))"
        case .list: return " (a list of mappings with \(spec.keys.map(\.name).joined(separator: ", ")))"
        }
    }

    // MARK: Inputs

    mutating func readInputs(_ node: Node, spec: ActionSpec, path: String) -> InputValue? {
        switch spec.form {
        case .condition:
            // Assert: readStep keeps the parsed expression; the raw form is kept for logs.
            return inputValue(node)
        case .map:
            if isNull(node), !spec.inputsRequired { return nil }
            guard let fields = entries(node, path, what: "\(spec.name) inputs") else { return nil }
            checkInputKeys(fields, node: node, spec: spec, path: path)
            return inputValue(node)
        case .list:
            guard case .sequence(let items) = node else {
                var hint = ""
                if case .mapping = node { hint = "; put '- ' before the first key to make a list" }
                problem(node, path, "\(spec.name) inputs must be a list of mappings\(hint)")
                return nil
            }
            if items.isEmpty { problem(node, path, "\(spec.name) inputs list is empty") }
            for item in items {
                guard let fields = entries(item, path, what: "an item of \(spec.name) inputs") else { continue }
                checkInputKeys(fields, node: item, spec: spec, path: path)
            }
            return inputValue(node)
        }
    }

    mutating func checkInputKeys(_ fields: [(key: String, keyNode: Node, value: Node)], node: Node, spec: ActionSpec, path: String) {
        for (key, keyNode, value) in fields {
            guard let inputKey = spec.key(named: key) else {
                problem(keyNode, path, "unknown input '\(key)' for \(spec.name); allowed: \(spec.keys.map(\.name).joined(separator: ", "))")
                continue
            }
            checkInputKind(inputKey, value, action: spec.name, path: path)
        }
        for required in spec.keys where required.required && !fields.contains(where: { $0.key == required.name }) {
            problem(node, path, "\(spec.name) input '\(required.name)' is required")
        }
    }

    mutating func checkInputKind(_ key: InputKey, _ value: Node, action: String, path: String) {
        let what = "\(action) input '\(key.name)'"
        switch key.kind {
        case .string:
            _ = scalar(value, path, what: what)
        case .boolean:
            if let text = scalar(value, path, what: what), !text.contains("{{"),
                !["true", "false"].contains(text.lowercased())
            {
                problem(value, path, "\(what) must be true or false, found '\(text)'")
            }
        case .integer:
            if let text = scalar(value, path, what: what), !text.contains("{{"), Int(text) == nil {
                problem(value, path, "\(what) must be an integer, found '\(text)'")
            }
        case .stringList:
            guard case .sequence(let items) = value else {
                problem(value, path, "\(what) must be a list of strings, e.g. '- echo hello'")
                return
            }
            for item in items { _ = scalar(item, path, what: "an item of \(what)") }
        case .stringMap:
            if let fields = entries(value, path, what: what) {
                for field in fields { _ = scalar(field.value, path, what: "\(what) '\(field.key)'") }
            }
        case .nameValueList:
            guard case .sequence(let items) = value else {
                problem(value, path, "\(what) must be a list of '- name: ..., value: ...' entries")
                return
            }
            for item in items {
                guard let fields = entries(item, path, what: "an item of \(what)") else { continue }
                for (fieldKey, fieldKeyNode, fieldValue) in fields {
                    if fieldKey == "name" || fieldKey == "value" {
                        _ = scalar(fieldValue, path, what: "\(fieldKey) in \(what)")
                    } else {
                        problem(fieldKeyNode, path, "unknown key '\(fieldKey)' in \(what); allowed: name, value")
                    }
                }
                if !fields.contains(where: { $0.key == "name" }) || !fields.contains(where: { $0.key == "value" }) {
                    problem(item, path, "each item of \(what) needs both name and value")
                }
            }
        }
    }

    func inputValue(_ node: Node) -> InputValue {
        switch node {
        case .scalar(let scalar):
            return isNull(node) ? .null : .string(scalar.string)
        case .sequence(let items):
            return .list(items.map(inputValue))
        case .mapping(let mapping):
            return .map(
                mapping.compactMap { key, value in
                    guard case .scalar(let keyScalar) = key else { return nil }
                    return InputValue.MapEntry(key: keyScalar.string, value: inputValue(value), location: location(key))
                })
        case .alias:
            return .null
        }
    }

    // MARK: Loops

    mutating func readLoop(_ node: Node, path: String) -> StepLoop? {
        guard let fields = entries(node, path, what: "loop") else { return nil }
        var name: String?
        var kind: StepLoop.Kind?
        var forms = 0
        for (key, keyNode, value) in fields {
            switch key {
            case "name":
                name = scalar(value, path, what: "loop name")
                if let loopName = name, !TemplateExpression.isIdentifier(loopName) || loopName == "loop" {
                    problem(
                        value, path,
                        "loop name '\(loopName)' is invalid; use letters, digits, '_' and '-', and not the reserved word 'loop'")
                }
            case "for":
                forms += 1
                kind = readRangeLoop(value, path: path)
            case "forEach":
                forms += 1
                kind = readForEachLoop(value, path: path)
            default:
                problem(keyNode, path, "unknown loop key '\(key)'; allowed: name, for, forEach")
            }
        }
        if forms != 1 {
            problem(node, path, forms == 0 ? "loop needs 'for' or 'forEach'" : "loop may have only one of 'for' and 'forEach'")
            return nil
        }
        guard let kind else { return nil }
        return StepLoop(name: name, kind: kind)
    }

    mutating func readRangeLoop(_ node: Node, path: String) -> StepLoop.Kind? {
        guard let fields = entries(node, path, what: "loop 'for'") else { return nil }
        var values: [String: Int] = [:]
        for (key, keyNode, value) in fields {
            guard ["start", "end", "updateBy"].contains(key) else {
                problem(keyNode, path, "unknown key '\(key)' in loop 'for'; allowed: start, end, updateBy")
                continue
            }
            if let text = scalar(value, path, what: "loop \(key)"), text.contains("{{") {
                problem(value, path, "loop \(key) cannot use variables or chaining; write an integer")
                continue
            }
            values[key] = integer(value, path, what: "loop \(key)")
        }
        guard let start = values["start"], let end = values["end"] else {
            for key in ["start", "end"] where !fields.contains(where: { $0.key == key }) {
                problem(node, path, "loop 'for' needs '\(key)'")
            }
            return nil
        }
        let updateBy = values["updateBy"] ?? 1
        if fields.contains(where: { $0.key == "updateBy" }), values["updateBy"] == nil { return nil }
        if updateBy == 0 {
            problem(node, path, "loop updateBy must not be 0 (the loop would never end)")
            return nil
        }
        if (end - start).signum() * updateBy.signum() < 0 {
            problem(
                node, path,
                "loop from \(start) to \(end) by \(updateBy) never reaches its end; use updateBy \(updateBy > 0 ? "-" : "")\(abs(updateBy))"
            )
            return nil
        }
        if !StepLoop.rangeFits(start: start, end: end, updateBy: updateBy) {
            let count = StepLoop.rangeCount(start: start, end: end, updateBy: updateBy)
            problem(node, path, StepLoop.tooManyIterations("loop from \(start) to \(end) by \(updateBy)", count: count, isRange: true))
            return nil
        }
        return .range(start: start, end: end, updateBy: updateBy)
    }

    mutating func readForEachLoop(_ node: Node, path: String) -> StepLoop.Kind? {
        switch node {
        case .sequence(let items):
            if items.count > StepLoop.maxIterations {
                problem(node, path, StepLoop.tooManyIterations("loop forEach", count: items.count, isRange: false))
                return nil
            }
            let values = items.compactMap { scalar($0, path, what: "an item of loop forEach") }
            return values.count == items.count ? .list(values) : nil
        case .mapping:
            guard let fields = entries(node, path, what: "loop forEach") else { return nil }
            var list: String?
            var delimiter = ","
            for (key, keyNode, value) in fields {
                switch key {
                case "list": list = scalar(value, path, what: "loop forEach list")
                case "delimiter":
                    if let text = scalar(value, path, what: "loop forEach delimiter") {
                        if StepLoop.allowedDelimiters.contains(text) {
                            delimiter = text
                        } else {
                            problem(
                                value, path, "loop delimiter '\(text)' is invalid; use one character of . , ; : - _ space, newline or tab")
                        }
                    }
                default: problem(keyNode, path, "unknown key '\(key)' in loop forEach; allowed: list, delimiter")
                }
            }
            guard let list else {
                if !fields.contains(where: { $0.key == "list" }) { problem(node, path, "loop forEach needs 'list'") }
                return nil
            }
            // A list that chaining fills in is counted when the step runs.
            let count = list.contains("{{") ? 0 : list.components(separatedBy: delimiter).count
            if count > StepLoop.maxIterations {
                problem(node, path, StepLoop.tooManyIterations("loop forEach", count: count, isRange: false))
                return nil
            }
            return .delimited(list: list, delimiter: delimiter)
        default:
            problem(node, path, "loop forEach must be a list of strings or a mapping with list and delimiter")
            return nil
        }
    }

    // MARK: Conditions

    mutating func readStepCondition(_ node: Node, path: String) -> StepCondition? {
        guard let fields = entries(node, path, what: "if") else { return nil }
        var condition = StepCondition(expression: .and([]))
        for (key, _, value) in fields where key == "then" || key == "else" {
            guard let text = scalar(value, path, what: "if \(key)") else { continue }
            guard let branch = ConditionBranch(rawValue: text) else {
                problem(value, path, "if \(key) '\(text)' is invalid; allowed: Abort, Execute, Skip")
                continue
            }
            if key == "then" { condition.then = branch } else { condition.otherwise = branch }
        }
        guard let expression = readCondition(node, path: path, allowBranches: true) else { return nil }
        condition.expression = expression
        return condition
    }

    /// One expression: exactly one operator key, plus its `value`/`path` sibling.
    mutating func readCondition(_ node: Node, path: String, allowBranches: Bool) -> Condition? {
        guard let fields = entries(node, path, what: "a condition") else { return nil }
        let operators = fields.filter {
            ComparisonOperator(rawValue: $0.key) != nil || ComparisonOperator.logicalOperators.contains($0.key)
        }
        let allowedSiblings = ["value", "path"] + (allowBranches ? ["then", "else"] : [])
        for (key, keyNode, _) in fields where !operators.contains(where: { $0.key == key }) && !allowedSiblings.contains(key) {
            problem(
                keyNode, path,
                "unknown key '\(key)' in condition; use one comparison operator (\(ComparisonOperator.allCases.map(\.rawValue).joined(separator: ", "))) or and/or/not\(allowBranches ? ", with optional then/else" : "")"
            )
        }
        guard operators.count == 1 else {
            problem(
                node, path,
                operators.isEmpty
                    ? "condition needs one comparison or logical operator, e.g. 'stringEquals: expected' with 'value: ...'"
                    : "condition has \(operators.count) operators (\(operators.map(\.key).joined(separator: ", "))); use exactly one, or combine them with and/or"
            )
            return nil
        }
        let (key, keyNode, value) = operators[0]
        let sibling = { (name: String) in fields.first { $0.key == name } }
        switch key {
        case "and", "or":
            if sibling("value") != nil || sibling("path") != nil {
                problem(keyNode, path, "'\(key)' takes a list of conditions; put value/path inside each item")
            }
            guard case .sequence(let items) = value, !items.isEmpty else {
                problem(value, path, "'\(key)' needs a non-empty list of conditions")
                return nil
            }
            let parts = items.compactMap { readCondition($0, path: path, allowBranches: false) }
            guard parts.count == items.count else { return nil }
            return key == "and" ? .and(parts) : .or(parts)
        case "not":
            guard let inner = readCondition(value, path: path, allowBranches: false) else { return nil }
            return .not(inner)
        default:
            let op = ComparisonOperator(rawValue: key)!
            guard let operand = scalar(value, path, what: "the argument of \(key)") else { return nil }
            var comparison = Comparison(op: op, operand: operand, location: location(keyNode))
            if let subjectKey = op.subjectKey {
                guard let subjectField = sibling(subjectKey) else {
                    problem(keyNode, path, "\(key) needs '\(subjectKey):' beside it")
                    return nil
                }
                comparison.subject = scalar(subjectField.value, path, what: subjectKey)
                let other = subjectKey == "value" ? "path" : "value"
                if let extra = sibling(other) { problem(extra.keyNode, path, "\(key) does not take '\(other)'; it takes '\(subjectKey)'") }
            } else {
                for name in ["value", "path"] {
                    if let extra = sibling(name) {
                        problem(extra.keyNode, path, "\(key) takes no '\(name)'; its argument is the value of '\(key)' itself")
                    }
                }
            }
            return .comparison(comparison)
        }
    }

    // MARK: Variables and chaining

    /// Every `{{ }}` must name a defined parameter or constant, or an earlier step.
    mutating func checkReferences(phases: [Phase], variables: Set<String>) {
        var earlier: [String: Set<String>] = [:]
        for phase in phases {
            var stepsSoFar = Set<String>()
            earlier[phase.name] = stepsSoFar
            for step in phase.steps {
                let path = "\(phase.name)/\(step.name)"
                var strings: [String] = []
                step.inputs?.forEachString { strings.append($0) }
                if case .list(let values)? = step.loop?.kind { strings += values }
                if case .delimited(let list, _)? = step.loop?.kind { strings.append(list) }
                for condition in [step.condition?.expression, step.assertion].compactMap({ $0 }) {
                    condition.forEachString { strings.append($0) }
                }
                for string in strings {
                    for (_, expression) in TemplateExpression.scan(string) {
                        checkReference(expression, path: path, step: step, phases: phases, earlier: earlier, variables: variables)
                    }
                }
                stepsSoFar.insert(step.name)
                earlier[phase.name] = stepsSoFar
            }
        }
    }

    mutating func checkReference(
        _ expression: TemplateExpression, path: String, step: Step, phases: [Phase], earlier: [String: Set<String>], variables: Set<String>
    ) {
        let location = SourceLocation(file: file, line: step.location.line, column: step.location.column)
        switch expression.reference {
        case .variable(let name):
            if !variables.contains(name) {
                let known = variables.isEmpty ? "the document defines none" : "defined: \(variables.sorted().joined(separator: ", "))"
                issues.append(
                    DocumentIssue(
                        location, stepPath: path, "\(expression.text) names no parameter or constant (\(known)); names are case-sensitive"))
            }
        case .chained(let phaseName, let stepName, _, _):
            guard let phase = phases.first(where: { $0.name == phaseName }) else {
                // Not a phase of this document: treated as literal text (e.g. a template for another tool).
                return
            }
            guard phase.steps.contains(where: { $0.name == stepName }) else {
                issues.append(
                    DocumentIssue(
                        location, stepPath: path,
                        "\(expression.text) refers to step '\(stepName)', which phase '\(phaseName)' does not have"))
                return
            }
            if earlier[phaseName]?.contains(stepName) != true {
                issues.append(
                    DocumentIssue(
                        location, stepPath: path,
                        "\(expression.text) refers to '\(phaseName)/\(stepName)', which has not run yet at this step; chaining can only use earlier steps"
                    ))
            }
        case .loop, .other:
            break
        }
    }
}

extension Condition {
    func forEachString(_ body: (String) -> Void) {
        switch self {
        case .and(let parts), .or(let parts): parts.forEach { $0.forEachString(body) }
        case .not(let inner): inner.forEachString(body)
        case .comparison(let comparison):
            body(comparison.operand)
            if let subject = comparison.subject { body(subject) }
        }
    }
}

extension InputValue {
    func forEachString(_ body: (String) -> Void) {
        switch self {
        case .string(let value): body(value)
        case .list(let items): items.forEach { $0.forEachString(body) }
        case .map(let entries): entries.forEach { $0.value.forEachString(body) }
        case .null: break
        }
    }
}
