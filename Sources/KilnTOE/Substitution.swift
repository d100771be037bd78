import Foundation
import KilnModel
import Synchronization

/// What earlier steps of a document left for chaining: their resolved inputs and their outputs.
struct ChainStore: Sendable, Codable, Hashable {
    struct Entry: Sendable, Codable, Hashable {
        var inputs: InputValue?
        var outputs: [String: String]
    }

    var steps: [String: Entry] = [:]

    func entry(phase: String, step: String) -> Entry? { steps["\(phase).\(step)"] }

    mutating func record(phase: String, step: String, inputs: InputValue?, outputs: [String: String]) {
        steps["\(phase).\(step)"] = Entry(inputs: inputs, outputs: outputs)
    }
}

/// Collects chaining resolutions from every step of a run, nested documents included.
final class ChainingLog: Sendable {
    private let entries = Mutex<[ChainingResolution]>([])
    func append(_ more: [ChainingResolution]) { entries.withLock { $0 += more } }
    var all: [ChainingResolution] { entries.withLock { $0 } }
}

public struct ChainingResolution: Sendable, Codable, Hashable {
    public var document: String
    public var step: String
    public var expression: String
    public var value: String
}

/// The loop iteration a step is on, for `{{ loop.index }}` / `{{ name.value }}`.
struct LoopBinding: Sendable, Hashable {
    var name: String?
    var index: Int
    var value: String
}

/// Replaces `{{ }}` expressions (reference §2.3). Parameters, constants and chaining must
/// resolve; loop references outside their loop are left as written, as AWSTOE does.
struct Substitution {
    var variables: [String: String]
    var phaseNames: Set<String>
    var chain: ChainStore
    var loop: LoopBinding?
    var documentName: String
    var stepPath: String

    func apply(_ text: String, record: inout [ChainingResolution]) throws -> String {
        let matches = TemplateExpression.scan(text)
        guard !matches.isEmpty else { return text }
        var result = ""
        var cursor = text.startIndex
        for (range, expression) in matches {
            result += text[cursor..<range.lowerBound]
            result += try value(of: expression, record: &record) ?? expression.text
            cursor = range.upperBound
        }
        result += text[cursor...]
        // A 16 MiB chained output repeated in many inputs would multiply: one input stays bounded.
        guard result.utf8.count <= Self.maximumResultBytes else {
            throw KilnError(
                .invalidArgument,
                "\(stepPath): an input grows to \(result.utf8.count >> 20) MiB once its {{ }} references are substituted; Kiln allows \(Self.maximumResultBytes >> 20) MiB per input value"
            )
        }
        return result
    }

    static let maximumResultBytes = 16 << 20

    func apply(_ inputs: InputValue, record: inout [ChainingResolution]) throws -> InputValue {
        var log: [ChainingResolution] = []
        let result = try inputs.mapStrings { try apply($0, record: &log) }
        record += log
        return result
    }

    private func value(of expression: TemplateExpression, record: inout [ChainingResolution]) throws -> String? {
        switch expression.reference {
        case .variable(let name):
            guard let value = variables[name] else {
                throw KilnError(
                    .invalidArgument,
                    "\(stepPath): \(expression.text) names no parameter or constant; pass it with --parameters \(name)=VALUE or define it in the document"
                )
            }
            return value
        case .loop(let name, let field):
            guard let loop, name == "loop" || name == loop.name else { return nil }
            return field == "index" ? String(loop.index) : loop.value
        case .chained(let phase, let step, let part, let key):
            guard phaseNames.contains(phase) else { return nil }
            guard let entry = chain.entry(phase: phase, step: step) else {
                throw KilnError(
                    .invalidArgument,
                    "\(stepPath): \(expression.text) refers to '\(phase)/\(step)', which has not run (skipped, failed or not selected with --phases)"
                )
            }
            let value: String?
            switch part {
            case .outputs:
                value = entry.outputs[key]
            case .inputs(let index):
                let container: InputValue?
                if let index {
                    container = entry.inputs?.listValue.flatMap { index < $0.count ? $0[index] : nil }
                } else {
                    container = entry.inputs
                }
                value = container?[key].map(Self.flatten)
            }
            guard let value else {
                throw KilnError(
                    .invalidArgument,
                    "\(stepPath): \(expression.text) cannot be resolved: '\(phase)/\(step)' has no \(part == .outputs ? "output" : "input") '\(key)'"
                )
            }
            record.append(ChainingResolution(document: documentName, step: stepPath, expression: expression.text, value: value))
            return value
        case .other:
            return nil
        }
    }

    static func flatten(_ value: InputValue) -> String {
        switch value {
        case .string(let text): return text
        case .null: return ""
        case .list, .map:
            let data = (try? JSONSerialization.data(withJSONObject: value.jsonObject, options: [.sortedKeys])) ?? Data()
            return String(decoding: data, as: UTF8.self)
        }
    }
}

extension InputValue: Codable {
    public init(from decoder: Decoder) throws {
        let container = try decoder.singleValueContainer()
        if container.decodeNil() {
            self = .null
        } else if let text = try? container.decode(String.self) {
            self = .string(text)
        } else if let items = try? container.decode([InputValue].self) {
            self = .list(items)
        } else {
            let pairs = try container.decode([String: InputValue].self)
            self = .map(pairs.sorted { $0.key < $1.key }.map { MapEntry(key: $0.key, value: $0.value) })
        }
    }

    public func encode(to encoder: Encoder) throws {
        var container = encoder.singleValueContainer()
        switch self {
        case .string(let text): try container.encode(text)
        case .list(let items): try container.encode(items)
        case .map(let entries):
            var object: [String: InputValue] = [:]
            for entry in entries { object[entry.key] = entry.value }
            try container.encode(object)
        case .null: try container.encodeNil()
        }
    }
}
