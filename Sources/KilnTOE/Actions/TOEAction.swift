import Foundation
import KilnModel
import KilnSystem

/// One AWSTOE action module. Inputs arrive with `{{ }}` already substituted; failures are thrown
/// as `KilnError` with a message that names the step and what to fix.
protocol TOEAction: Sendable {
    func run(_ inputs: InputValue?, context: ActionContext) async throws -> ActionResult
}

enum ActionResult: Sendable {
    case completed([String: String])
    /// The instance must restart. `rerunStep` is true for exit code 194 (run the step again
    /// afterwards) and false for the Reboot action (the step is then done).
    case rebootRequested(outputs: [String: String], rerunStep: Bool)
}

struct ActionContext: Sendable {
    let session: any InstanceSession
    let log: TOELogWriter
    let stepPath: String
    let options: TOEOptions
    /// Instance folder for this step's scripts, inside the run's private scratch folder.
    let scratchDirectory: Result<String, KilnError>
    let transfers: TransferClients

    func failure(_ message: String, code: KilnError.Code = .stepFailed) -> KilnError {
        KilnError(code, "\(stepPath): \(message)")
    }
}

/// Reads one map of inputs, with AWSTOE's defaults.
struct InputReader {
    let value: InputValue?
    let action: String
    let stepPath: String

    func string(_ key: String) -> String? { value?[key].map(Substitution.flatten) }

    func required(_ key: String) throws -> String {
        guard let text = string(key), !text.isEmpty else {
            throw KilnError(.invalidArgument, "\(stepPath): \(action) input '\(key)' is required and empty")
        }
        return text
    }

    func bool(_ key: String, default defaultValue: Bool) throws -> Bool {
        guard let text = string(key) else { return defaultValue }
        switch text.lowercased() {
        case "true": return true
        case "false": return false
        default: throw KilnError(.invalidArgument, "\(stepPath): \(action) input '\(key)' must be true or false, got '\(text)'")
        }
    }

    func int(_ key: String, default defaultValue: Int) throws -> Int {
        guard let text = string(key) else { return defaultValue }
        guard let number = Int(text) else {
            throw KilnError(.invalidArgument, "\(stepPath): \(action) input '\(key)' must be an integer, got '\(text)'")
        }
        return number
    }

    func list(_ key: String) -> [String] {
        guard let items = value?[key]?.listValue else { return [] }
        return items.map(Substitution.flatten)
    }

    /// The items of a list-form action, each as its own reader.
    func items() -> [InputReader] {
        (value?.listValue ?? []).map { InputReader(value: $0, action: action, stepPath: stepPath) }
    }
}

/// Collects a program's output for the log and for the step's `stdout` output.
struct StreamingExec {
    let context: ActionContext

    func run(_ request: ExecRequest) async throws -> (result: ExecResult, stdout: String) {
        let stdout = LineAssembler()
        let stderr = LineAssembler(captureLimit: 0)
        let log = context.log
        let result = try await context.session.exec(request) { stream, chunk in
            switch stream {
            case .stdout: for line in stdout.append(chunk) { log.info("Stdout: \(line)") }
            case .stderr: for line in stderr.append(chunk) { log.info("Stderr: \(line)") }
            }
        }
        let out = stdout.finish()
        for line in out.lines { log.info("Stdout: \(line)") }
        for line in stderr.finish().lines { log.info("Stderr: \(line)") }
        if out.cutBytes > 0 {
            log.info(
                "kiln: outputs.stdout keeps the first \(byteSize(stdout.captureLimit)) of the output; \(out.cutBytes) more bytes were cut from it"
            )
        }
        return (result, out.text)
    }

    /// Maps an exit code to AWSTOE's result: 0 success, 194 reboot-and-rerun, else failure.
    func finish(_ result: ExecResult, stdout: String, what: String) throws -> ActionResult {
        let outputs = ["stdout": stdout.trimmingTrailingNewlines()]
        if result.timedOut {
            throw context.failure("\(what) timed out")
        }
        context.log.info("ExitCode \(result.exitCode)")
        switch result.exitCode {
        case 0:
            context.log.info("Command execution completed successfully")
            return .completed(outputs)
        case 194:
            context.log.info("Exit code 194: the instance must reboot, then this step runs again")
            return .rebootRequested(outputs: outputs, rerunStep: true)
        default:
            throw context.failure("\(what) failed with exit code \(result.exitCode)")
        }
    }
}

extension String {
    func trimmingTrailingNewlines() -> String {
        var text = Substring(self)
        while let last = text.last, last == "\n" || last == "\r" || last == "\r\n" { text = text.dropLast() }
        return String(text)
    }
}
