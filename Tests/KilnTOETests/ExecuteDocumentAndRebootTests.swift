import Foundation
import KilnModel
import KilnSystem
import KilnTestSupport
import Testing

@testable import KilnTOE

@Suite("ExecuteDocument nesting and cycles; reboot and resume")
struct ExecuteDocumentAndRebootTests {
    /// level0 → level1 → … → level`depth`, each echoing its name and passing a parameter down.
    func chain(depth: Int, in dir: Scratch) throws -> String {
        var path = ""
        for level in stride(from: depth, through: 0, by: -1) {
            let child =
                level == depth
                ? ""
                : """
                      - name: Nested
                        action: ExecuteDocument
                        inputs:
                          document: \(dir.file("level\(level + 1).yaml"))
                          parameters:
                            - name: From
                              value: level\(level)
                """
            path = try dir.write(
                "level\(level).yaml",
                """
                name: Level\(level)
                schemaVersion: 1.0
                parameters:
                  - From:
                      type: string
                      default: top
                phases:
                  - name: build
                    steps:
                      - name: Say
                        action: ExecuteBash
                        inputs:
                          commands: ['echo "level\(level) called by {{ From }}" >> \(dir.file("trail"))']
                \(child)
                """)
        }
        return path
    }

    func run(_ path: String) async throws -> RunResult {
        let text = try String(contentsOfFile: path, encoding: .utf8)
        return try await runDocument(text, source: path)
    }

    @Test("Three levels of nesting run, pass parameters and report nested detailed output")
    func threeLevels() async throws {
        let dir = Scratch()
        defer { dir.remove() }
        let result = try await run(try chain(depth: 3, in: dir))
        #expect(result.report.status == .success, "\(result.console.text)")
        #expect(
            try dir.read("trail") == """
                level0 called by top
                level1 called by level0
                level2 called by level1
                level3 called by level2

                """)
        let nested = try #require(result.step("Nested"))
        #expect(nested.timeoutSeconds == -1)
        #expect(nested.detailedOutput?.first?.documents.first?.name == "Level1")
        #expect(result.outputs("Nested")["status"] == "success")
        #expect(result.outputs("Nested")["executedStepCount"] == "2")
    }

    @Test("A fourth level of nesting fails with a message naming the limit")
    func fourLevelsFail() async throws {
        let dir = Scratch()
        defer { dir.remove() }
        let result = try await run(try chain(depth: 4, in: dir))
        #expect(result.report.status == .failed)
        #expect(result.console.text.contains("nesting is limited to 3 levels"))
        #expect(!(try dir.read("trail").contains("level4")))
    }

    @Test("A document that runs itself (or an ancestor) is a cycle and fails")
    func cycle() async throws {
        let dir = Scratch()
        defer { dir.remove() }
        _ = try dir.write(
            "b.yaml",
            """
            schemaVersion: 1.0
            phases:
              - name: build
                steps:
                  - name: BackToA
                    action: ExecuteDocument
                    inputs:
                      document: \(dir.file("a.yaml"))
            """)
        let a = try dir.write(
            "a.yaml",
            """
            schemaVersion: 1.0
            phases:
              - name: build
                steps:
                  - name: ToB
                    action: ExecuteDocument
                    inputs:
                      document: \(dir.file("b.yaml"))
            """)
        let result = try await run(a)
        #expect(result.report.status == .failed)
        #expect(result.console.text.contains("ExecuteDocument cycle: '\(a)' is already running"))
    }

    @Test("Exit code 194 pauses the run resumably; the resumed run re-runs that step and finishes")
    func rebootAndResume() async throws {
        let dir = Scratch()
        defer { dir.remove() }
        let marker = dir.file("reboot-indicator")
        let yaml = """
            schemaVersion: 1.0
            phases:
              - name: build
                steps:
                  - name: Before
                    action: ExecuteBash
                    inputs: {commands: ['echo before >> \(dir.file("trail"))']}
                  - name: NeedsReboot
                    action: ExecuteBash
                    if:
                      stringEquals: yes
                      value: yes
                    inputs:
                      commands:
                        - echo needs-reboot >> \(dir.file("trail"))
                        - if [ -f \(marker) ]; then echo resumed; exit 0; fi
                        - touch \(marker)
                        - exit 194
                  - name: RebootAction
                    action: Reboot
                  - name: After
                    action: ExecuteBash
                    inputs: {commands: ['echo after >> \(dir.file("trail"))']}
            """
        let first = try await runDocument(yaml)
        #expect(first.outcome.rebootPending)
        #expect(first.outcome.summary.status == "reboot-pending")
        let state = try #require(first.outcome.resumeState)
        #expect(state.cursor.step == 1)
        #expect(state.cursor.conditionPassed)
        try state.save(to: dir.file("state"))
        let loaded = try #require(try TOEResumeState.load(from: dir.file("state")))

        let second = try await runDocument(yaml, resume: loaded)
        #expect(second.outcome.rebootPending, "the Reboot action pauses again")
        let afterReboot = try #require(second.outcome.resumeState)
        #expect(afterReboot.cursor.step == 3)

        let third = try await runDocument(yaml, resume: afterReboot)
        #expect(third.outcome.succeeded)
        #expect(try dir.read("trail") == "before\nneeds-reboot\nneeds-reboot\nafter\n")
        #expect(third.steps.map(\.name) == ["Before", "NeedsReboot", "RebootAction", "After"])
        #expect(third.outputs("NeedsReboot")["stdout"] == "resumed")
        #expect(third.outcome.summary.executedStepCount == 4)
    }

    /// A session that restarts in place, as containers and VMs will.
    struct RestartingSession: InstanceSession {
        var inner = LocalHostSession()
        let restarts: LineCollector
        var displayName: String { "restarting test instance" }
        func canonicalPath(_ path: String) async throws -> String { try await inner.canonicalPath(path) }
        func makeScratchDirectory() async throws -> String { try await inner.makeScratchDirectory() }
        func exec(_ request: ExecRequest, output: @escaping @Sendable (ExecOutputStream, [UInt8]) -> Void) async throws -> ExecResult {
            try await inner.exec(request, output: output)
        }
        func fileInfo(_ path: String, followSymlinks: Bool) async throws -> InstanceFileInfo? {
            try await inner.fileInfo(path, followSymlinks: followSymlinks)
        }
        func readFile(_ path: String) async throws -> Data { try await inner.readFile(path) }
        func writeFile(_ path: String, contents: Data, append: Bool, mode: UInt32) async throws {
            try await inner.writeFile(path, contents: contents, append: append, mode: mode)
        }
        func listDirectory(_ path: String) async throws -> [String] { try await inner.listDirectory(path) }
        func createDirectory(_ path: String, mode: UInt32) async throws { try await inner.createDirectory(path, mode: mode) }
        func remove(_ path: String, recursive: Bool) async throws { try await inner.remove(path, recursive: recursive) }
        func move(_ source: String, to destination: String) async throws { try await inner.move(source, to: destination) }
        func copy(_ source: String, to destination: String) async throws { try await inner.copy(source, to: destination) }
        func createSymlink(_ path: String, target: String) async throws { try await inner.createSymlink(path, target: target) }
        func setOwner(_ path: String, owner: String?, group: String?, recursive: Bool) async throws {
            try await inner.setOwner(path, owner: owner, group: group, recursive: recursive)
        }
        func setPermissions(_ path: String, mode: UInt32, recursive: Bool) async throws {
            try await inner.setPermissions(path, mode: mode, recursive: recursive)
        }
        func importFile(fromHost hostPath: String, to path: String) async throws {
            try await inner.importFile(fromHost: hostPath, to: path)
        }
        func exportFile(_ path: String, toHost hostPath: String) async throws { try await inner.exportFile(path, toHost: hostPath) }
        func reboot() async throws -> RebootDisposition {
            restarts.append("restart")
            return .restarted
        }
    }

    @Test("On an instance that can restart, 194 restarts it and the same step runs again in the same run")
    func rebootInPlace() async throws {
        let dir = Scratch()
        defer { dir.remove() }
        let document = try ComponentDocumentParser().parse(
            text: """
                schemaVersion: 1.0
                phases:
                  - name: build
                    steps:
                      - name: Once
                        action: ExecuteBash
                        inputs:
                          commands:
                            - echo run >> \(dir.file("runs"))
                            - '[ -f \(dir.file("done")) ] && exit 0'
                            - touch \(dir.file("done"))
                            - exit 194
                """, source: "inplace.yaml")
        let restarts = LineCollector()
        let runner = TOERunner(session: RestartingSession(restarts: restarts), options: .forTests)
        let outcome = await runner.run(TOERunRequest(documents: [TOEDocumentRun(document: document)]), log: try TOELogWriter(folder: nil))
        #expect(outcome.succeeded)
        #expect(restarts.all.count == 1)
        #expect(try dir.read("runs") == "run\nrun\n")
    }
}
