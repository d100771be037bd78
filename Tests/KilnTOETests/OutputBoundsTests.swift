import Foundation
import KilnModel
import KilnSystem
import KilnTestSupport
import Testing

@testable import KilnTOE

@Suite("Bounded output: lines, logs, kept outputs and loop length stay within their limits")
struct OutputBoundsTests {
    @Test("LineSplitter: a line without a newline comes out in 64 KiB pieces marked as continued; each chunk is scanned once")
    func splitterPieces() {
        var splitter = LineSplitter()
        var lines: [LineSplitter.Line] = []
        let chunk = [UInt8](repeating: UInt8(ascii: "a"), count: 50_000)
        for _ in 0..<4 { lines += splitter.append(chunk) }
        #expect(lines.count == 3)
        #expect(lines.allSatisfy { $0.continues && $0.text.utf8.count == 64 << 10 })
        #expect(splitter.pendingCount == 200_000 - 3 * (64 << 10), "never more than one piece held back")
        #expect(lines[0].display.hasSuffix("a [kiln: line continues]"))
        lines = splitter.append(Array("b\nc\n".utf8))
        #expect(lines.map(\.continues) == [false, false])
        #expect(lines.last?.text == "c")
        #expect(splitter.finish() == nil)
    }

    @Test("LineSplitter: a piece never ends inside a UTF-8 character")
    func splitterCharacters() {
        var splitter = LineSplitter(maxLineBytes: 5)
        let lines = splitter.append(Array("abcdé€x\n".utf8))
        #expect(lines.map(\.text) == ["abcd", "é€", "x"])
        #expect(lines.map(\.continues) == [true, true, false])
    }

    @Test("OutputCollector keeps the start and the end of endless output and says how much was cut between")
    func collectorHeadAndTail() {
        let collector = OutputCollector(headLimit: 10, tailLimit: 6)
        collector.append(Array("0123456789".utf8))
        for _ in 0..<1000 { collector.append(Array("middle".utf8)) }
        collector.append(Array("the end".utf8))
        #expect(collector.cutBytes == 6001)
        #expect(collector.text == "0123456789\n[kiln: 6001 bytes of output cut here]\nhe end")
        let small = OutputCollector()
        small.append(Array("all of it".utf8))
        #expect(small.text == "all of it")
        #expect(small.cutBytes == 0)
    }

    @Test("LineAssembler: past the log limit no more lines are logged; the end shows a cut note and the last bytes")
    func assemblerLogLimit() {
        let assembler = LineAssembler(captureLimit: 100, logLimit: 40, tailLimit: 16)
        var logged: [String] = []
        for index in 0..<1000 { logged += assembler.append(Array("line \(index)\n".utf8)) }
        let end = assembler.finish()
        #expect(logged.prefix(2) == ["line 0", "line 1"])
        #expect(logged.count == 7, "six lines reach the limit, then the note: \(logged)")
        #expect(logged.last == "[kiln: output cut: 40 bytes logged; the rest is not logged, only its last 16 bytes at the end]")
        #expect(end.lines.first?.hasPrefix("[kiln: output cut: ") == true)
        #expect(end.lines.first?.hasSuffix(" bytes were not logged; the last 16 bytes follow]") == true)
        #expect(end.lines.last == "line 999")
        #expect(end.text.utf8.count == 100, "outputs.stdout keeps the first captureLimit bytes")
        #expect(end.text.hasPrefix("line 0\nline 1\n"))
        #expect(end.cutBytes > 0)
    }

    @Test("OutputBudget: outputs past the run's budget are cut at a character boundary, with a warning in the log")
    func budget() throws {
        let budget = OutputBudget(bytes: 10)
        let lines = LineCollector()
        let log = try TOELogWriter(folder: nil, echo: { lines.append($0) })
        #expect(budget.keep("12345", what: "build/A outputs.stdout", log: log) == "12345")
        #expect(budget.keep("abcé€", what: "build/B outputs.stdout", log: log) == "abcé")
        #expect(budget.keep("more", what: "build/C outputs.stdout", log: log) == "")
        #expect(
            lines.text.contains(
                "Warn kiln: build/B outputs.stdout cut from 8 to 5 bytes: this run already keeps 10 bytes of step outputs, the most Kiln holds for one run"
            ), "\(lines.text)")
    }

    @Test("A step that prints a long line without a newline: the log has it in pieces, outputs.stdout keeps it")
    func longLineStep() async throws {
        let scratch = Scratch("kiln-output")
        defer { scratch.remove() }
        let result = try await runDocument(
            """
            schemaVersion: 1.0
            phases:
              - name: build
                steps:
                  - name: Long
                    action: ExecuteBash
                    inputs:
                      commands: ["head -c 200000 /dev/zero | tr '\\\\0' a"]
            """, logFolder: scratch.path)
        #expect(result.outcome.succeeded)
        #expect(result.outputs("Long")["stdout"]?.utf8.count == 200_000)
        let console = try String(contentsOfFile: scratch.file("console.log"), encoding: .utf8)
        let pieces = console.split(separator: "\n").filter { $0.contains("Stdout: aaaa") }
        #expect(pieces.count == 4)
        #expect(pieces.prefix(3).allSatisfy { $0.hasSuffix("a [kiln: line continues]") })
    }

    @Test("A for loop past 10,000 iterations fails the step at run time, naming the step path and the bound")
    func hugeLoopAtRunTime() async throws {
        // Checked by the parser too; a forEach list that chaining fills is only known when the step runs.
        let result = try await runDocument(
            """
            schemaVersion: 1.0
            phases:
              - name: build
                steps:
                  - name: Numbers
                    action: ExecuteBash
                    inputs:
                      commands: ["seq -s , 1 10001"]
                  - name: Each
                    action: ExecuteBash
                    loop:
                      forEach:
                        list: "{{ build.Numbers.outputs.stdout }}"
                        delimiter: ","
                    inputs:
                      commands: ["true"]
            """)
        #expect(!result.outcome.succeeded)
        #expect(
            result.step("Each")?.failureMessage
                == "build/Each: loop forEach has 10,001 iterations; Kiln runs at most 10,000 iterations per loop. Split the work over several steps, or use a shorter list"
        )
        var record: [ChainingResolution] = []
        let bindings = try TOERunner.iterations(
            of: StepLoop(kind: .range(start: 1, end: 10_000, updateBy: 1)),
            substitution: Substitution(variables: [:], phaseNames: [], chain: ChainStore(), loop: nil, documentName: "d", stepPath: "b/s"),
            record: &record, stepPath: "b/s")
        #expect(bindings.count == 10_000)
        #expect(throws: KilnError.self) {
            try TOERunner.iterations(
                of: StepLoop(kind: .range(start: 0, end: 1_000_000_000_000, updateBy: 1)),
                substitution: Substitution(
                    variables: [:], phaseNames: [], chain: ChainStore(), loop: nil, documentName: "d", stepPath: "b/s"),
                record: &record, stepPath: "b/s")
        }
    }

    @Test("A parameter value outside allowedValues fails the document, naming the parameter, the value and the allowed values")
    func allowedValuesAtRun() async throws {
        let yaml = """
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
            """
        let good = try await runDocument(yaml, parameters: ["Mode": "safe"])
        #expect(good.outcome.succeeded)
        #expect(good.outputs("Say")["stdout"] == "safe")
        let bad = try await runDocument(yaml, parameters: ["Mode": "reckless"])
        #expect(!bad.outcome.succeeded)
        #expect(
            bad.report.documents[0].failureMessage
                == "test.yaml: parameter 'Mode' is 'reckless', which is not one of its allowedValues ('fast', 'safe'); pass one of those")
        #expect(bad.console.text.contains("parameter 'Mode' is 'reckless'"))
    }
}
