import Foundation
import KilnTestSupport
import Testing

@testable import KilnModel

/// Nine anchors, each a list of nine aliases of the one before: 9^9 (387 million) strings once expanded.
private func aliasBomb(indent: String = "") -> String {
    var lines = ["\(indent)a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for level in 1...9 {
        let aliases = Array(repeating: "*a\(level - 1)", count: 9).joined(separator: ", ")
        lines.append("\(indent)a\(level): &a\(level) [\(aliases)]")
    }
    return lines.joined(separator: "\n") + "\n"
}

private let componentBomb =
    """
    name: bomb
    schemaVersion: 1.0
    phases:
      - name: build
        steps:
          - name: Boom
            action: ExecuteBash
            inputs:
              commands: ["echo"]
              extra:

    """ + aliasBomb(indent: "            ")

@Suite("Untrusted YAML: alias expansion, document size, loop length and parameter allowedValues are bounded")
struct DocumentBoundsTests {
    @Test("A nested-alias bomb in a component document is refused quickly, naming the file and the aliases")
    func componentAliasBomb() throws {
        let started = ContinuousClock.now
        let error = #expect(throws: KilnError.self) {
            try ComponentDocumentParser().parse(text: componentBomb, source: "bomb.yml")
        }
        let elapsed = ContinuousClock.now - started
        #expect(error?.message.hasPrefix("bomb.yml: the YAML has more than 1,000,000 nodes") == true, "\(String(describing: error))")
        #expect(error?.message.contains("anchors and aliases (&name, *name) are expanded") == true)
        #expect(error?.message.contains("use fewer nested aliases") == true)
        // Not a timing assertion on the result; a sanity bound so a regression shows as a failure, not a hang.
        #expect(elapsed < .seconds(30), "took \(elapsed)")
    }

    @Test("A component document that uses a few anchors and aliases is still read, aliases expanded")
    func fewAliasesAccepted() throws {
        let document = try ComponentDocumentParser().parse(
            text: """
                schemaVersion: 1.0
                phases:
                  - name: build
                    steps:
                      - name: First
                        action: ExecuteBash
                        onFailure: &policy Continue
                        inputs: &say
                          commands: ["echo hello"]
                      - name: Second
                        action: ExecuteBash
                        onFailure: *policy
                        inputs: *say
                """, source: "aliases.yml")
        let steps = document.phases[0].steps
        #expect(steps.map(\.onFailure) == [.continue, .continue])
        #expect(steps[1].inputs?["commands"]?.listValue?.first?.stringValue == "echo hello")
    }

    @Test("A document larger than 16 MiB is refused before it is parsed, from text or from a file")
    func sizeCap() throws {
        let big = "# " + String(repeating: "x", count: YAMLBounds.maxBytes) + "\n"
        let error = #expect(throws: KilnError.self) { try ComponentDocumentParser().parse(text: big, source: "big.yml") }
        #expect(
            error?.message == "big.yml: the component document is larger than 16 MiB, the most Kiln reads; split it into smaller documents")

        let scratch = Scratch("kiln-bounds")
        defer { scratch.remove() }
        let path = try scratch.write("definitions.yaml", big)
        let fromFile = #expect(throws: KilnError.self) { try Definitions.load(path: path) }
        #expect(fromFile?.message.contains("the definitions file is larger than 16 MiB") == true, "\(String(describing: fromFile))")
    }

    @Test("A definitions file and kiln.yaml refuse an alias bomb too, naming the file")
    func definitionsAndConfigurationBombs() throws {
        let scratch = Scratch("kiln-bounds")
        defer { scratch.remove() }
        let definitions = #expect(throws: KilnError.self) {
            try Definitions.parse(text: "components:\n  - name: x\n    extra:\n" + aliasBomb(indent: "      "), source: "defs.yaml")
        }
        #expect(
            definitions?.message.hasPrefix("defs.yaml: the YAML has more than 1,000,000 nodes") == true,
            "\(String(describing: definitions))")

        let path = try scratch.write("kiln.yaml", "bomb:\n" + aliasBomb(indent: "  "))
        let configuration = #expect(throws: KilnError.self) { try KilnConfiguration.load(path: path, environment: [:]) }
        #expect(configuration?.message.hasPrefix("\(path): the YAML has more than 1,000,000 nodes") == true)
    }

    @Test("Keys that are lists or mappings are bounded too: Yams hashes each whole, again at each level of nesting")
    func complexKeys() throws {
        var lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
        for level in 1...9 {
            lines.append("a\(level): &a\(level) [\(Array(repeating: "*a\(level - 1)", count: 9).joined(separator: ", "))]")
        }
        // 9^8 nodes hashed as one key took Yams 44 s before this check.
        let started = ContinuousClock.now
        #expect(throws: KilnError.self) {
            try ComponentDocumentParser().parse(text: lines.joined(separator: "\n") + "\nk: {*a8: 1}\n", source: "keys.yml")
        }
        #expect(ContinuousClock.now - started < .seconds(30))

        // Ten keys nested in keys: 30 nodes, but Yams hashes 9 + 11 + ... + 27 = 180 of them.
        var nested = "[a, b, c, d, e, f, g, h]"
        for _ in 0..<10 { nested = "{\(nested): 1}" }
        try YAMLBounds.checkExpansion("k: \(nested)\n", source: "n.yaml", limit: 190)
        let error = #expect(throws: KilnError.self) { try YAMLBounds.checkExpansion("k: \(nested)\n", source: "n.yaml", limit: 100) }
        #expect(
            error?.message
                == "n.yaml: mapping keys that are lists or mappings (or aliases of them) add up to more than 100 nodes (passed at line 1); Kiln reads only string keys, so write the keys as strings"
        )
    }

    @Test("The expansion count stops at the bound and counts aliased nodes each time they are used")
    func expansionCount() throws {
        let text = "a: &a [1, 2, 3]\nb: [*a, *a, *a]\n"
        // The root, 2 keys, a's list and its 3 items, b's list and its 3 aliases with 3 items each: 20 nodes.
        try YAMLBounds.checkExpansion(text, source: "t.yaml", limit: 20)
        let error = #expect(throws: KilnError.self) { try YAMLBounds.checkExpansion(text, source: "t.yaml", limit: 19) }
        #expect(error?.message.hasPrefix("t.yaml: the YAML has more than 19 nodes") == true)
        // Syntax errors are left for Yams to report with their place.
        try YAMLBounds.checkExpansion("a: [1, 2\n", source: "bad.yaml")
    }

    @Test("A for loop of 1e12 iterations is refused at validation, naming the step path and the bound")
    func hugeRangeLoop() throws {
        let error = #expect(throws: KilnError.self) {
            try ComponentDocumentParser().parse(
                text: """
                    schemaVersion: 1.0
                    phases:
                      - name: build
                        steps:
                          - name: Forever
                            action: ExecuteBash
                            loop:
                              for: {start: 0, end: 1000000000000, updateBy: 1}
                            inputs:
                              commands: ["echo {{ loop.value }}"]
                    """, source: "loop.yml")
        }
        let issue = try #require(error?.issues.first)
        #expect(issue.stepPath == "build/Forever")
        #expect(
            issue.message
                == "loop from 0 to 1000000000000 by 1 has 1,000,000,000,001 iterations; Kiln runs at most 10,000 iterations per loop. Split the work over several steps, or use a larger updateBy or a smaller range"
        )
        #expect(StepLoop.rangeFits(start: 1, end: 10_000, updateBy: 1))
        #expect(!StepLoop.rangeFits(start: Int.min, end: Int.max, updateBy: 1), "an overflowing span is too many, not a trap")
        #expect(StepLoop.rangeCount(start: 10, end: 0, updateBy: -5) == 3)
    }

    @Test("allowedValues: read from the document, the default must be one of them, a list of strings is required")
    func allowedValuesInDocument() throws {
        func document(_ parameter: String) -> String {
            """
            schemaVersion: 1.0
            parameters:
              - Mode:
                  type: string
            \(parameter)
            phases:
              - name: build
                steps:
                  - name: Say
                    action: ExecuteBash
                    inputs:
                      commands: ["echo {{ Mode }}"]
            """
        }
        let parsed = try ComponentDocumentParser().parse(
            text: document("      default: fast\n      allowedValues: [fast, safe]"), source: "p.yml")
        #expect(parsed.parameters[0].allowedValues == ["fast", "safe"])
        #expect(parsed.parameters[0].defaultValue == "fast")

        let badDefault = #expect(throws: KilnError.self) {
            try ComponentDocumentParser().parse(text: document("      default: slow\n      allowedValues: [fast, safe]"), source: "p.yml")
        }
        #expect(
            badDefault?.issues.first?.message
                == "default 'slow' of parameter 'Mode' is not one of its allowedValues ('fast', 'safe'); make the default one of them")
        #expect(badDefault?.issues.first?.location.line == 5)

        let notList = #expect(throws: KilnError.self) {
            try ComponentDocumentParser().parse(text: document("      allowedValues: fast"), source: "p.yml")
        }
        #expect(
            notList?.issues.first?.message == "allowedValues of parameter 'Mode' must be a non-empty list of strings, e.g. [yes, no]")
    }

    @Test("A supplied parameter value outside allowedValues is refused, naming the parameter, the value and the allowed values")
    func allowedValuesAtBinding() throws {
        let document = try ComponentDocumentParser().parse(
            text: """
                schemaVersion: 1.0
                parameters:
                  - Mode:
                      type: string
                      default: fast
                      allowedValues: [fast, safe]
                phases:
                  - name: build
                    steps:
                      - name: Say
                        action: ExecuteBash
                        inputs:
                          commands: ["echo {{ Mode }}"]
                """, source: "p.yml")
        #expect(try document.parameterValues([:]) == ["Mode": "fast"])
        #expect(try document.parameterValues(["Mode": "safe", "Unknown": "x"]) == ["Mode": "safe"])
        let error = #expect(throws: KilnError.self) { try document.parameterValues(["Mode": "reckless"]) }
        #expect(error?.code == .invalidArgument)
        #expect(
            error?.message
                == "p.yml: parameter 'Mode' is 'reckless', which is not one of its allowedValues ('fast', 'safe'); pass one of those")
    }
}
