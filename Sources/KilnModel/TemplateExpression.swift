/// One `{{ ... }}` expression in a document string (reference §2.3).
public enum TemplateReference: Sendable, Hashable {
    /// `{{ Name }}`: a parameter or constant.
    case variable(String)
    /// `{{ loop.index }}`, `{{ myLoop.value }}`.
    case loop(name: String, field: String)
    /// `{{ phase.step.inputs[0].key }}` / `{{ phase.step.outputs.key }}`.
    case chained(phase: String, step: String, part: ChainedPart, key: String)
    /// Anything else between braces; left as written.
    case other

    public enum ChainedPart: Sendable, Hashable {
        case inputs(index: Int?)
        case outputs
    }
}

public struct TemplateExpression: Sendable, Hashable {
    /// The whole `{{ ... }}` text, as written.
    public var text: String
    /// The trimmed inside.
    public var body: String
    public var reference: TemplateReference

    /// Every `{{ ... }}` in `string`, in order, with the range it spans.
    public static func scan(_ string: String) -> [(range: Range<String.Index>, expression: TemplateExpression)] {
        var found: [(Range<String.Index>, TemplateExpression)] = []
        var searchStart = string.startIndex
        while let open = string.range(of: "{{", range: searchStart..<string.endIndex),
            let close = string.range(of: "}}", range: open.upperBound..<string.endIndex)
        {
            let inside = string[open.upperBound..<close.lowerBound]
            if inside.contains("{{") {
                // `{{ {{ x }}`: restart at the inner opening so the innermost pair is matched.
                searchStart = string.index(after: open.lowerBound)
                continue
            }
            let body = inside.trimmingWhitespace()
            let whole = open.lowerBound..<close.upperBound
            found.append((whole, TemplateExpression(text: String(string[whole]), body: body, reference: classify(body))))
            searchStart = close.upperBound
        }
        return found
    }

    static func classify(_ body: String) -> TemplateReference {
        let segments = body.split(separator: ".", omittingEmptySubsequences: false).map(String.init)
        guard segments.allSatisfy({ !$0.isEmpty }) else { return .other }
        if segments.count == 1 {
            return isIdentifier(segments[0]) ? .variable(segments[0]) : .other
        }
        if segments.count == 2, isIdentifier(segments[0]), segments[1] == "index" || segments[1] == "value" {
            return .loop(name: segments[0], field: segments[1])
        }
        guard segments.count == 4, isIdentifier(segments[0]), isIdentifier(segments[1]), isIdentifier(segments[3]) else {
            return .other
        }
        let part = segments[2]
        if part == "outputs" {
            return .chained(phase: segments[0], step: segments[1], part: .outputs, key: segments[3])
        }
        if part == "inputs" {
            return .chained(phase: segments[0], step: segments[1], part: .inputs(index: nil), key: segments[3])
        }
        if part.hasPrefix("inputs["), part.hasSuffix("]"),
            let index = Int(part.dropFirst("inputs[".count).dropLast()), index >= 0
        {
            return .chained(phase: segments[0], step: segments[1], part: .inputs(index: index), key: segments[3])
        }
        return .other
    }

    static func isIdentifier(_ text: String) -> Bool {
        !text.isEmpty
            && text.unicodeScalars.allSatisfy { scalar in
                scalar.properties.isAlphabetic && scalar.isASCII || ("0"..."9").contains(scalar) || scalar == "_" || scalar == "-"
            }
    }
}

extension StringProtocol {
    func trimmingWhitespace() -> String {
        let scalars = unicodeScalars
        guard let first = scalars.firstIndex(where: { !$0.properties.isWhitespace }) else { return "" }
        let last = scalars.lastIndex(where: { !$0.properties.isWhitespace })!
        return String(String.UnicodeScalarView(scalars[first...last]))
    }
}
