import Foundation
import KilnModel
import KilnTestSupport
import Synchronization
import Testing

@testable import KilnTOE

#if canImport(Glibc)
    import Glibc
#endif

/// Collects echoed log lines so tests can assert on what a person would read.
final class LineCollector: Sendable {
    private let lines = Mutex<[String]>([])
    func append(_ line: String) { lines.withLock { $0.append(line) } }
    var all: [String] { lines.withLock { $0 } }
    var text: String { all.joined(separator: "\n") }
}

struct RunResult {
    var outcome: TOERunOutcome
    var console: LineCollector

    var report: RunReport { outcome.report }
    var steps: [StepReport] { report.documents.flatMap { $0.phases.flatMap(\.steps) } }

    func step(_ name: String) -> StepReport? { steps.first { $0.name == name } }

    func outputs(_ name: String) -> [String: String] {
        guard let json = step(name)?.outputs, let data = json.data(using: .utf8),
            let array = try? JSONSerialization.jsonObject(with: data) as? [[String: String]]
        else { return [:] }
        return array.first ?? [:]
    }
}

extension TOEOptions {
    static var forTests: TOEOptions {
        var options = TOEOptions()
        options.downloadRetryDelay = .milliseconds(50)
        return options
    }
}

/// Parses `yaml` and runs it on the local host.
func runDocument(
    _ yaml: String, source: String = "test.yaml", phases: [String]? = nil, parameters: [String: String] = [:],
    options: TOEOptions = .forTests, resume: TOEResumeState? = nil, logFolder: String? = nil
) async throws -> RunResult {
    let document = try ComponentDocumentParser().parse(text: yaml, source: source)
    let console = LineCollector()
    let log = try TOELogWriter(folder: logFolder, echo: { console.append($0) })
    let runner = TOERunner(session: LocalHostSession(), options: options)
    let request = TOERunRequest(documents: [TOEDocumentRun(document: document, parameters: parameters)], phases: phases)
    let outcome = await runner.run(request, log: log, resume: resume)
    return RunResult(outcome: outcome, console: console)
}
