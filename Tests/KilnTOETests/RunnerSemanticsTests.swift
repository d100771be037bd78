import Foundation
import KilnModel
import KilnTestSupport
import Testing

@testable import KilnTOE

@Suite("Runner semantics: statuses, retries, loops, substitution, conditions")
struct RunnerSemanticsTests {
    @Test("Abort stops the phase: later steps do not run and the run fails")
    func abortStopsPhase() async throws {
        let dir = Scratch()
        defer { dir.remove() }
        let result = try await runDocument(
            """
            schemaVersion: 1.0
            phases:
              - name: build
                steps:
                  - name: Fails
                    action: ExecuteBash
                    inputs:
                      commands: ['exit 3']
                  - name: Never
                    action: ExecuteBash
                    inputs:
                      commands: ['touch \(dir.file("never"))']
              - name: validate
                steps:
                  - name: AlsoNever
                    action: ExecuteBash
                    inputs:
                      commands: ['touch \(dir.file("validate"))']
            """)
        #expect(result.report.status == .failed)
        #expect(result.outcome.summary.status == "failed")
        #expect(result.outcome.summary.failedStepCount == 1)
        #expect(result.outcome.summary.executedStepCount == 1)
        #expect(result.step("Fails")?.failureMessage.contains("exit code 3") == true)
        #expect(!dir.exists("never"))
        #expect(!dir.exists("validate"))
        #expect(result.report.failureMessage == "Document test.yaml failed!")
        #expect(result.console.text.contains("TOE has completed execution with failure - Execution failed!"))
    }

    @Test("Continue: the step fails, the next steps run, the phase and run fail")
    func continueRunsNextSteps() async throws {
        let dir = Scratch()
        defer { dir.remove() }
        let result = try await runDocument(
            """
            schemaVersion: 1.0
            phases:
              - name: build
                steps:
                  - name: Fails
                    action: ExecuteBash
                    onFailure: Continue
                    inputs:
                      commands: ['exit 1']
                  - name: Runs
                    action: ExecuteBash
                    inputs:
                      commands: ['touch \(dir.file("ran"))']
            """)
        #expect(dir.exists("ran"))
        #expect(result.step("Fails")?.status == .failed)
        #expect(result.report.documents[0].phases[0].status == .failed)
        #expect(result.report.status == .failed)
    }

    @Test("Ignore: IgnoredFailure on the step, SuccessWithIgnoredFailure above it, and the run succeeds")
    func ignoreCountsAsSuccess() async throws {
        let result = try await runDocument(
            """
            schemaVersion: 1.0
            phases:
              - name: build
                steps:
                  - name: Fails
                    action: ExecuteBash
                    onFailure: Ignore
                    inputs:
                      commands: ['exit 1']
                  - name: Fine
                    action: ExecuteBash
                    inputs:
                      commands: ['true']
            """)
        #expect(result.step("Fails")?.status == .ignoredFailure)
        #expect(result.report.documents[0].phases[0].status == .successWithIgnoredFailure)
        #expect(result.report.documents[0].status == .successWithIgnoredFailure)
        #expect(result.outcome.summary.status == "success")
        #expect(result.outcome.summary.ignoredFailedStepCount == 1)
        #expect(result.outcome.succeeded)
    }

    @Test("maxAttempts re-runs the whole step: a flaky command succeeds on its third attempt")
    func retriesUntilSuccess() async throws {
        let dir = Scratch()
        defer { dir.remove() }
        let counter = dir.file("count")
        let result = try await runDocument(
            """
            schemaVersion: 1.0
            phases:
              - name: build
                steps:
                  - name: Flaky
                    action: ExecuteBash
                    maxAttempts: 3
                    inputs:
                      commands:
                        - n=$(cat \(counter) 2>/dev/null || echo 0); n=$((n+1)); echo $n > \(counter)
                        - echo "attempt $n"
                        - '[ "$n" -ge 3 ]'
            """)
        #expect(result.step("Flaky")?.status == .success)
        #expect(try dir.read("count").trimmingCharacters(in: .whitespacesAndNewlines) == "3")
        #expect(result.outputs("Flaky")["stdout"] == "attempt 3")
        #expect(result.console.text.contains("attempt 2 failed"))
    }

    @Test("maxAttempts exhausted: the step fails after exactly that many runs")
    func retriesExhausted() async throws {
        let dir = Scratch()
        defer { dir.remove() }
        let result = try await runDocument(
            """
            schemaVersion: 1.0
            phases:
              - name: build
                steps:
                  - name: AlwaysFails
                    action: ExecuteBash
                    maxAttempts: 2
                    inputs:
                      commands: ['echo x >> \(dir.file("runs"))', 'exit 7']
            """)
        #expect(result.step("AlwaysFails")?.status == .failed)
        #expect(try dir.read("runs").split(separator: "\n").count == 2)
    }

    @Test("A timeout kills the whole process tree and the step ends within seconds")
    func timeoutKillsProcessTree() async throws {
        let marker = "100.\(Int.random(in: 10000...99999))"
        let started = ContinuousClock.now
        let result = try await runDocument(
            """
            schemaVersion: 1.0
            phases:
              - name: build
                steps:
                  - name: Sleeps
                    action: ExecuteBash
                    timeoutSeconds: 1
                    inputs:
                      commands:
                        - sleep \(marker) &
                        - sleep \(marker)
            """)
        let elapsed = ContinuousClock.now - started
        #expect(elapsed < .seconds(3))
        #expect(result.step("Sleeps")?.status == .failed)
        #expect(result.step("Sleeps")?.failureMessage.contains("timed out") == true)
        try await Task.sleep(for: .milliseconds(200))
        let survivors = try shell("pgrep -f '[s]leep \(marker)' || true").output.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(survivors.isEmpty, "processes left running: \(survivors)")
    }

    @Test("Loops: for, forEach list and delimited string; outputs merged with newlines")
    func loopsAndOutputs() async throws {
        let result = try await runDocument(
            """
            schemaVersion: 1.0
            phases:
              - name: build
                steps:
                  - name: Range
                    action: ExecuteBash
                    loop:
                      name: r
                      for: {start: 10, end: 4, updateBy: -3}
                    inputs:
                      commands: ['echo "{{ r.index }}:{{ r.value }}"']
                  - name: List
                    action: ExecuteBash
                    loop:
                      forEach: [alpha, beta]
                    inputs:
                      commands: ['echo "{{ loop.value }}"']
                  - name: Delimited
                    action: ExecuteBash
                    loop:
                      forEach:
                        list: 'x;y;z'
                        delimiter: ';'
                    inputs:
                      commands: ['echo "{{ loop.index }}={{ loop.value }}"']
                  - name: ChainedList
                    action: ExecuteBash
                    loop:
                      forEach:
                        list: '{{ build.List.outputs.stdout }}'
                        delimiter: "\\n"
                    inputs:
                      commands: ['echo "got {{ loop.value }}"']
            """)
        #expect(result.outputs("Range")["stdout"] == "0:10\n1:7\n2:4")
        #expect(result.outputs("List")["stdout"] == "alpha\nbeta")
        #expect(result.outputs("Delimited")["stdout"] == "0=x\n1=y\n2=z")
        #expect(result.outputs("ChainedList")["stdout"] == "got alpha\ngot beta")
        #expect(result.step("Range")?.loop?.iterations == 3)
    }

    @Test("A failed loop iteration fails the step, names the iteration, and is left out of the outputs")
    func failedIteration() async throws {
        let result = try await runDocument(
            """
            schemaVersion: 1.0
            phases:
              - name: build
                steps:
                  - name: Loop
                    action: ExecuteBash
                    onFailure: Continue
                    loop:
                      forEach: ['0', '1', '0']
                    inputs:
                      commands: ['echo "value {{ loop.value }}"', 'exit {{ loop.value }}']
            """)
        let step = try #require(result.step("Loop"))
        #expect(step.status == .failed)
        #expect(step.loop?.failedIterations == [1])
        #expect(step.failureMessage.contains("loop iteration(s) 1 failed"))
    }

    @Test("Substitution: parameters override defaults, constants, chaining, and loop references left literal outside a loop")
    func substitution() async throws {
        let result = try await runDocument(
            """
            schemaVersion: 1.0
            parameters:
              - Who:
                  type: string
                  default: world
              - Unused:
                  type: string
                  default: x
            constants:
              - Greeting:
                  type: string
                  value: hello
            phases:
              - name: build
                steps:
                  - name: Say
                    action: ExecuteBash
                    inputs:
                      commands: ['echo "{{Greeting}} {{ Who }}"']
                  - name: Echo
                    action: ExecuteBinary
                    inputs:
                      path: /bin/echo
                      arguments: ['{{ build.Say.outputs.stdout }}', '{{ build.Say.inputs.commands }}', '{{ loop.value }}']
            """, parameters: ["Who": "kiln", "NotDeclared": "ignored"])
        #expect(result.outputs("Say")["stdout"] == "hello kiln")
        let echoed = try #require(result.outputs("Echo")["stdout"])
        #expect(echoed.hasPrefix("hello kiln "))
        #expect(echoed.contains(#"["echo \"hello kiln\""]"#), "chained inputs are the step's resolved inputs")
        #expect(echoed.hasSuffix("{{ loop.value }}"))
    }

    @Test("A parameter without a default and without a value fails the document before any step runs")
    func missingParameter() async throws {
        let result = try await runDocument(
            """
            schemaVersion: 1.0
            parameters:
              - Needed:
                  type: string
            phases:
              - name: build
                steps:
                  - name: Use
                    action: ExecuteBash
                    inputs:
                      commands: ['echo {{ Needed }}']
            """)
        #expect(result.report.status == .failed)
        #expect(result.report.documents[0].failureMessage.contains("--parameters Needed=VALUE"))
        #expect(result.steps.isEmpty)
    }

    @Test("Phases run in document order whatever order --phases lists, and only those selected")
    func phaseSelection() async throws {
        let dir = Scratch()
        defer { dir.remove() }
        let log = dir.file("order")
        let result = try await runDocument(
            """
            schemaVersion: 1.0
            phases:
              - name: build
                steps:
                  - name: B
                    action: ExecuteBash
                    inputs: {commands: ['echo build >> \(log)']}
              - name: validate
                steps:
                  - name: V
                    action: ExecuteBash
                    inputs: {commands: ['echo validate >> \(log)']}
              - name: test
                steps:
                  - name: T
                    action: ExecuteBash
                    inputs: {commands: ['echo test >> \(log)']}
            """, phases: ["test", "build"])
        #expect(try dir.read("order") == "build\ntest\n")
        #expect(result.report.documents[0].phases.map(\.name) == ["build", "test"])
    }

    @Test("if: then/else branches, Skip counts as success, Abort fails the step")
    func conditionalSteps() async throws {
        let dir = Scratch()
        defer { dir.remove() }
        let existing = try dir.write("present", "x")
        let result = try await runDocument(
            """
            schemaVersion: 1.0
            phases:
              - name: build
                steps:
                  - name: RunsWhenPresent
                    action: ExecuteBash
                    if:
                      fileExists: '\(existing)'
                    inputs: {commands: ['echo ran']}
                  - name: SkippedWhenAbsent
                    action: ExecuteBash
                    if:
                      fileExists: '\(dir.file("absent"))'
                    inputs: {commands: ['exit 1']}
                  - name: ElseExecute
                    action: ExecuteBash
                    if:
                      and:
                        - stringEquals: 'ABC'
                          value: 'abc'
                        - not:
                            numberGreaterThan: 10
                            value: '11'
                      then: Skip
                      else: Execute
                    inputs: {commands: ['echo else-branch']}
                  - name: Aborted
                    action: ExecuteBash
                    onFailure: Continue
                    if:
                      binaryExists: bash
                      then: Abort
                    inputs: {commands: ['echo should not run']}
            """)
        #expect(result.outputs("RunsWhenPresent")["stdout"] == "ran")
        #expect(result.step("SkippedWhenAbsent")?.status == .skipped)
        #expect(result.outputs("ElseExecute")["stdout"] == "else-branch")
        #expect(result.step("Aborted")?.status == .failed)
        #expect(result.step("Aborted")?.outputs == "[]")
        #expect(result.outcome.summary.executedStepCount == 3)
    }

    @Test("Assert succeeds on a true expression and fails the step, naming the values, on a false one")
    func assertAction() async throws {
        let result = try await runDocument(
            """
            schemaVersion: 1.0
            phases:
              - name: validate
                steps:
                  - name: Version
                    action: ExecuteBash
                    inputs: {commands: ['echo 2.1.1']}
                  - name: Good
                    action: Assert
                    inputs:
                      stringEquals: '2.1.1'
                      value: '{{ validate.Version.outputs.stdout }}'
                  - name: Bad
                    action: Assert
                    inputs:
                      numberLessThan: 2
                      value: '{{ validate.Version.outputs.stdout }}'
            """)
        #expect(result.step("Good")?.status == .success)
        let bad = try #require(result.step("Bad"))
        #expect(bad.status == .failed)
        #expect(bad.failureMessage.contains("numberLessThan '2' (value '2.1.1') is false"))
    }
}

@Suite("Comparison operators")
struct ComparisonOperatorTests {
    static let cases: [(ComparisonOperator, String, String, Bool)] = [
        (.stringIsEmpty, "", "", true), (.stringIsEmpty, " ", "", false),
        (.stringIsWhitespace, " \t", "", true), (.stringIsWhitespace, "a ", "", false),
        (.stringEquals, "Hello", "hELLO", true), (.stringEquals, "a ", "a", false),
        (.stringLessThan, "b", "a", true), (.stringLessThan, "a", "b", false),
        (.stringLessThanEquals, "A", "a", true), (.stringGreaterThan, "a", "1", false),
        (.stringGreaterThan, "1", "a", true), (.stringGreaterThanEquals, "b", "B", true),
        (.patternMatches, "^v[0-9]+\\.[0-9]+$", "v12.3", true), (.patternMatches, "^x", "yx", false),
        (.numberEquals, "3", "3.0", true), (.numberEquals, "3", "three", false),
        (.numberLessThan, "2", "1", true), (.numberLessThan, "2", "2", false),
        (.numberLessThanEquals, "2", "2", true), (.numberGreaterThan, "-1.5", "-1", true),
        (.numberGreaterThanEquals, "10", "9.99", false), (.numberEquals, "12345678901234567890", "12345678901234567890", true),
    ]

    @Test(arguments: cases)
    func compare(_ op: ComparisonOperator, _ operand: String, _ value: String, _ expected: Bool) async throws {
        let evaluator = ConditionEvaluator(session: LocalHostSession())
        #expect(try await evaluator.compare(op, operand: operand, subject: value) == expected)
    }

    @Test("File operators check the instance's files and hashes")
    func fileOperators() async throws {
        let dir = Scratch()
        defer { dir.remove() }
        let file = try dir.write("data.txt", "kiln\n")
        let evaluator = ConditionEvaluator(session: LocalHostSession())
        #expect(try await evaluator.compare(.fileExists, operand: file, subject: ""))
        #expect(!(try await evaluator.compare(.fileExists, operand: dir.path, subject: "")))
        #expect(try await evaluator.compare(.folderExists, operand: dir.path, subject: ""))
        #expect(try await evaluator.compare(.binaryExists, operand: "sh", subject: ""))
        #expect(!(try await evaluator.compare(.binaryExists, operand: "no-such-binary-kiln", subject: "")))
        for (op, tool) in [
            (ComparisonOperator.fileMD5Equals, "md5sum"), (.fileSHA1Equals, "sha1sum"), (.fileSHA256Equals, "sha256sum"),
            (.fileSHA512Equals, "sha512sum"),
        ] {
            let hash = try shell("\(tool) \(file) | cut -d' ' -f1").output.trimmingCharacters(in: .whitespacesAndNewlines)
            #expect(try await evaluator.compare(op, operand: hash.uppercased(), subject: file), "\(op)")
            #expect(!(try await evaluator.compare(op, operand: String(repeating: "0", count: hash.count), subject: file)))
        }
    }
}
