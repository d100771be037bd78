import Foundation
import KilnTestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// Runs the real `kiln` executable, as a user or a pipeline would.
struct Kiln {
    static let binary: String = {
        let directory = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        return directory.appendingPathComponent("kiln").path
    }()

    struct Result {
        var status: Int32
        var stdout: String
        var stderr: String

        var json: [String: Any]? {
            guard let line = stdout.split(separator: "\n").last else { return nil }
            return (try? JSONSerialization.jsonObject(with: Data(line.utf8))) as? [String: Any]
        }
    }

    static func run(_ arguments: [String], in directory: String? = nil, environment: [String: String] = [:]) throws -> Result {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: binary)
        process.arguments = arguments
        if !environment.isEmpty {
            process.environment = ProcessInfo.processInfo.environment.merging(environment) { _, new in new }
        }
        if let directory { process.currentDirectoryURL = URL(fileURLWithPath: directory) }
        let out = Pipe()
        let err = Pipe()
        process.standardOutput = out
        process.standardError = err
        try process.run()
        let stdout = out.fileHandleForReading.readDataToEndOfFile()
        let stderr = err.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return Result(
            status: process.terminationStatus, stdout: String(decoding: stdout, as: UTF8.self),
            stderr: String(decoding: stderr, as: UTF8.self))
    }
}

@Suite("The kiln executable", .serialized)
struct KilnCommandTests {
    let document = """
        name: CliDoc
        schemaVersion: 1.0
        parameters:
          - Word:
              type: string
              default: plain
        phases:
          - name: build
            steps:
              - name: Say
                action: ExecuteBash
                inputs:
                  commands: ['echo "word={{ Word }}"']
          - name: validate
            steps:
              - name: Check
                action: Assert
                inputs:
                  stringEquals: 'word={{ Word }}'
                  value: '{{ build.Say.outputs.stdout }}'
          - name: test
            steps:
              - name: MaybeFail
                action: ExecuteBash
                inputs:
                  commands: ['test "{{ Word }}" != "fail"']
        """

    @Test("toe run: exit 0, the summary JSON on stdout, and AWSTOE's log folder")
    func runSucceeds() throws {
        let scratch = Scratch("kiln-cli-test")
        defer { scratch.remove() }
        let path = try scratch.write("doc.yaml", document)
        let result = try Kiln.run([
            "toe", "run", "--documents", path, "--parameters", "Word=kiln", "--execution-id", "exec-1", "--log-directory",
            scratch.path + "/logs",
        ])
        #expect(result.status == 0, "\(result.stderr)")
        let summary = try #require(result.json)
        #expect(summary["status"] as? String == "success")
        #expect(summary["executionId"] as? String == "exec-1")
        #expect(summary["executedStepCount"] as? Int == 3)
        #expect(summary["failedStepCount"] as? Int == 0)
        let logUrl = try #require(summary["logUrl"] as? String)
        #expect(logUrl.range(of: #"/logs/TOE_\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2}_UTC-0_exec-1$"#, options: .regularExpression) != nil)
        let files = try FileManager.default.contentsOfDirectory(atPath: logUrl).sorted()
        #expect(files == ["application.log", "chaining.json", "console.log", "detailedoutput.json", "document.yaml"])
        let console = try String(contentsOfFile: logUrl + "/console.log", encoding: .utf8)
        let lines = console.split(separator: "\n")
        #expect(
            lines.allSatisfy {
                $0.range(of: #"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d{3} (Info|Warn|Error) "#, options: .regularExpression) != nil
            })
        #expect(lines.contains { $0.hasSuffix("Info Stdout: word=kiln") })
        #expect(lines.last?.hasSuffix("Info TOE has completed execution successfully") == true)
        let detailed = try #require(
            try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: logUrl + "/detailedoutput.json")))
                as? [String: Any])
        let documents = try #require(detailed["documents"] as? [[String: Any]])
        #expect(documents.first?["name"] as? String == "CliDoc")
        #expect((documents.first?["phases"] as? [[String: Any]])?.map { $0["name"] as? String } == ["build", "validate", "test"])
        #expect(try String(contentsOfFile: logUrl + "/document.yaml", encoding: .utf8).contains("name: CliDoc"))
        #expect(try String(contentsOfFile: logUrl + "/chaining.json", encoding: .utf8).contains("word=kiln"))
        #expect(result.stderr.contains("Info Phase build"), "progress goes to stderr")
    }

    @Test("toe run: a failing step gives exit 1 and status failed")
    func runFails() throws {
        let scratch = Scratch("kiln-cli-test")
        defer { scratch.remove() }
        let path = try scratch.write("doc.yaml", document)
        let result = try Kiln.run(["toe", "run", "-d", path, "--parameters", "Word=fail", "-l", scratch.path])
        #expect(result.status == 1)
        #expect(result.json?["status"] as? String == "failed")
        #expect(result.json?["failedStepCount"] as? Int == 1)
        #expect((result.json?["failureMessage"] as? String)?.contains("failed!") == true)
    }

    @Test("toe run --phases and --config: config file documents and parameters, flags override")
    func configFile() throws {
        let scratch = Scratch("kiln-cli-test")
        defer { scratch.remove() }
        let path = try scratch.write("doc.yaml", document)
        let config = try scratch.write(
            "run.json",
            """
            {"documents": [{"path": "\(path)", "parameters": [{"name": "Word", "value": "fromconfig"}]}],
             "phases": "build,validate", "executionId": "from-config", "logDirectory": "\(scratch.path)/cfg-logs"}
            """)
        let result = try Kiln.run(["toe", "run", "--config", config, "--execution-id", "from-flag"])
        #expect(result.status == 0, "\(result.stderr)")
        #expect(result.json?["executionId"] as? String == "from-flag")
        #expect(result.json?["executedStepCount"] as? Int == 2)
        #expect(result.stderr.contains("Stdout: word=fromconfig"))
        #expect((result.json?["logUrl"] as? String)?.contains("/cfg-logs/") == true)

        let both = try Kiln.run(["toe", "run", "--config", config, "--documents", path])
        #expect(both.status == 1)
        #expect(both.stderr.contains("documents are given both in"))
    }

    @Test("toe validate and component validate: success JSON, and every problem with file:line:column")
    func validate() throws {
        let scratch = Scratch("kiln-cli-test")
        defer { scratch.remove() }
        let good = try scratch.write("good.yaml", document)
        let bad = try scratch.write(
            "bad.yaml",
            """
            schemaVersion: 1.0
            phases:
              - name: build
                steps:
                  - name: One
                    action: ExecuteBash
                    inputs:
                      comands: ['echo']
                  - name: Two
                    action: ExecutePowerShell
                    inputs:
                      commands: ['Write-Host hi']
            """)
        let ok = try Kiln.run(["toe", "validate", "--documents", good])
        #expect(ok.status == 0)
        #expect(ok.json?["validationStatus"] as? String == "success")

        let failed = try Kiln.run(["component", "validate", good, bad])
        #expect(failed.status == 1)
        #expect(failed.json?["validationStatus"] as? String == "failed")
        #expect(failed.stderr.contains("\(bad):8:11: build/One: unknown input 'comands' for ExecuteBash; allowed: commands"))
        #expect(failed.stderr.contains("\(bad):8:11: build/One: ExecuteBash input 'commands' is required"))
        #expect(
            failed.stderr.contains(
                "\(bad):10:17: build/Two: action 'ExecutePowerShell' runs only on windows, not on linux; use ExecuteBash"))

        let run = try Kiln.run(["toe", "run", "--documents", bad, "-l", scratch.path])
        #expect(run.status == 1)
        #expect(run.stderr.contains("nothing was run"))
        #expect((try? FileManager.default.contentsOfDirectory(atPath: scratch.path).filter { $0.hasPrefix("TOE_") })?.isEmpty == true)
    }

    @Test("Bad arguments are refused with what to do")
    func badArguments() throws {
        let scratch = Scratch("kiln-cli-test")
        defer { scratch.remove() }
        let path = try scratch.write("doc.yaml", document)
        let parameters = try Kiln.run(["toe", "run", "-d", path, "--parameters", "Word="])
        #expect(parameters.status == 1)
        #expect(parameters.stderr.contains("--parameters entry 'Word=' must be name=value with both parts"))
        let missing = try Kiln.run(["toe", "run", "-d", scratch.path + "/nope.yaml"])
        #expect(missing.status == 1)
        #expect(missing.stderr.contains("cannot read component document"))
        let none = try Kiln.run(["toe", "run"])
        #expect(none.status == 1)
        #expect(none.stderr.contains("no documents to run"))
    }

    @Test("Exit code 194 leaves a resumable state; the same command resumes and finishes")
    func rebootResume() throws {
        let scratch = Scratch("kiln-cli-test")
        defer { scratch.remove() }
        let path = try scratch.write(
            "reboot.yaml",
            """
            schemaVersion: 1.0
            phases:
              - name: build
                steps:
                  - name: First
                    action: ExecuteBash
                    inputs:
                      commands:
                        - echo first >> \(scratch.path)/trail
                  - name: Kernel
                    action: ExecuteBash
                    inputs:
                      commands:
                        - if [ -f \(scratch.path)/rebooted ]; then echo after-reboot >> \(scratch.path)/trail; exit 0; fi
                        - touch \(scratch.path)/rebooted
                        - exit 194
            """)
        let arguments = ["toe", "run", "-d", path, "--state-directory", scratch.path + "/state", "-l", scratch.path + "/logs"]
        let first = try Kiln.run(arguments)
        #expect(first.status == 194)
        #expect(first.json?["status"] as? String == "reboot-pending")
        #expect(FileManager.default.fileExists(atPath: scratch.path + "/state/state.json"))
        let second = try Kiln.run(arguments)
        #expect(second.status == 0, "\(second.stderr)")
        #expect(second.json?["executionId"] as? String == first.json?["executionId"] as? String)
        #expect(try String(contentsOfFile: scratch.path + "/trail", encoding: .utf8) == "first\nafter-reboot\n")
        #expect(!FileManager.default.fileExists(atPath: scratch.path + "/state/state.json"))
        let logs = try FileManager.default.contentsOfDirectory(atPath: scratch.path + "/logs")
        #expect(logs.count == 1, "the resumed run writes to the same log folder")
    }
}
