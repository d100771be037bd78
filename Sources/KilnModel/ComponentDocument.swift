import Foundation

/// An AWSTOE component document, parsed and validated. See reference §2.
public struct ComponentDocument: Sendable, Hashable {
    public var name: String?
    public var description: String?
    public var schemaVersion: String
    public var parameters: [ParameterDefinition]
    public var constants: [ConstantDefinition]
    public var phases: [Phase]
    /// Where the document came from (a path or URI) and its exact text, for logs and `document.yaml`.
    public var source: String
    public var text: String

    public init(
        name: String? = nil, description: String? = nil, schemaVersion: String = "1.0",
        parameters: [ParameterDefinition] = [], constants: [ConstantDefinition] = [],
        phases: [Phase], source: String, text: String
    ) {
        self.name = name
        self.description = description
        self.schemaVersion = schemaVersion
        self.parameters = parameters
        self.constants = constants
        self.phases = phases
        self.source = source
        self.text = text
    }

    /// Image Builder's rule: a component is TEST iff its only phase is `test`.
    public var componentType: String {
        phases.count == 1 && phases[0].name == "test" ? "TEST" : "BUILD"
    }

    public func phase(named name: String) -> Phase? { phases.first { $0.name == name } }
}

public struct ParameterDefinition: Sendable, Hashable {
    public var name: String
    public var type: String
    public var defaultValue: String?
    public var description: String?
    /// The only values the parameter may take, when the document lists them.
    public var allowedValues: [String]?

    public init(
        name: String, type: String = "string", defaultValue: String? = nil, description: String? = nil, allowedValues: [String]? = nil
    ) {
        self.name = name
        self.type = type
        self.defaultValue = defaultValue
        self.description = description
        self.allowedValues = allowedValues
    }
}

public struct ConstantDefinition: Sendable, Hashable {
    public var name: String
    public var type: String
    public var value: String

    public init(name: String, type: String = "string", value: String) {
        self.name = name
        self.type = type
        self.value = value
    }
}

public struct Phase: Sendable, Hashable {
    public static let wellKnownNames = ["build", "validate", "test", "container-host-test"]

    public var name: String
    public var steps: [Step]
    public var location: SourceLocation

    public init(name: String, steps: [Step], location: SourceLocation) {
        self.name = name
        self.steps = steps
        self.location = location
    }
}

public enum FailureAction: String, Sendable, Hashable, CaseIterable, Codable {
    case abort = "Abort"
    case `continue` = "Continue"
    case ignore = "Ignore"
}

public struct Step: Sendable, Hashable {
    public static let defaultTimeoutSeconds = 7200
    public static let defaultMaxAttempts = 1

    public var name: String
    public var action: String
    public var inputs: InputValue?
    public var onFailure: FailureAction
    /// `nil` means no timeout (`-1` in the document).
    public var timeoutSeconds: Int?
    public var maxAttempts: Int
    public var loop: StepLoop?
    public var condition: StepCondition?
    /// For `Assert`: the expression its inputs spell.
    public var assertion: Condition?
    public var location: SourceLocation

    public init(
        name: String, action: String, inputs: InputValue? = nil, onFailure: FailureAction = .abort,
        timeoutSeconds: Int? = Step.defaultTimeoutSeconds, maxAttempts: Int = Step.defaultMaxAttempts,
        loop: StepLoop? = nil, condition: StepCondition? = nil, location: SourceLocation
    ) {
        self.name = name
        self.action = action
        self.inputs = inputs
        self.onFailure = onFailure
        self.timeoutSeconds = timeoutSeconds
        self.maxAttempts = maxAttempts
        self.loop = loop
        self.condition = condition
        self.location = location
    }

    /// The value written to logs, as the document would spell it.
    public var timeoutSecondsForLog: Int { timeoutSeconds ?? -1 }
}

/// Step inputs as written: strings stay strings (YAML `0700` stays "0700"), so actions decide
/// what a value means after `{{ }}` substitution.
public indirect enum InputValue: Sendable, Hashable {
    case string(String)
    case list([InputValue])
    case map([MapEntry])
    case null

    public struct MapEntry: Sendable, Hashable {
        public var key: String
        public var value: InputValue
        public var location: SourceLocation?
        public init(key: String, value: InputValue, location: SourceLocation? = nil) {
            self.key = key
            self.value = value
            self.location = location
        }
    }

    public subscript(key: String) -> InputValue? {
        guard case .map(let entries) = self else { return nil }
        return entries.first { $0.key == key }?.value
    }

    public var stringValue: String? {
        if case .string(let value) = self { return value }
        return nil
    }

    public var listValue: [InputValue]? {
        if case .list(let items) = self { return items }
        return nil
    }

    /// Applies `transform` to every string leaf, keeping the shape.
    public func mapStrings(_ transform: (String) throws -> String) rethrows -> InputValue {
        switch self {
        case .string(let value): return .string(try transform(value))
        case .list(let items): return .list(try items.map { try $0.mapStrings(transform) })
        case .map(let entries):
            return .map(try entries.map { MapEntry(key: $0.key, value: try $0.value.mapStrings(transform), location: $0.location) })
        case .null: return .null
        }
    }

    /// Plain JSON-compatible value, for logs and `detailedoutput.json`.
    public var jsonObject: Any {
        switch self {
        case .string(let value): return value
        case .list(let items): return items.map(\.jsonObject)
        case .map(let entries):
            var object: [String: Any] = [:]
            for entry in entries { object[entry.key] = entry.value.jsonObject }
            return object
        case .null: return NSNull()
        }
    }
}

public struct StepLoop: Sendable, Hashable {
    public enum Kind: Sendable, Hashable {
        case range(start: Int, end: Int, updateBy: Int)
        case list([String])
        case delimited(list: String, delimiter: String)
    }

    public var name: String?
    public var kind: Kind

    public init(name: String? = nil, kind: Kind) {
        self.name = name
        self.kind = kind
    }

    public static let allowedDelimiters: [String] = [".", ",", ";", ":", "\n", "\t", " ", "-", "_"]
}

public enum ConditionBranch: String, Sendable, Hashable, CaseIterable {
    case abort = "Abort"
    case execute = "Execute"
    case skip = "Skip"
}

public struct StepCondition: Sendable, Hashable {
    public var expression: Condition
    public var then: ConditionBranch
    public var otherwise: ConditionBranch

    public init(expression: Condition, then: ConditionBranch = .execute, otherwise: ConditionBranch = .skip) {
        self.expression = expression
        self.then = then
        self.otherwise = otherwise
    }
}
