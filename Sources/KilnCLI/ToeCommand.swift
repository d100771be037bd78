import ArgumentParser
import Foundation
import KilnModel
import KilnTOE

/// `kiln toe`: AWSTOE-compatible `run` and `validate`.
struct ToeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "toe",
        abstract: "Run and validate AWSTOE component documents (the same flags as awstoe).",
        subcommands: [ToeRunCommand.self, ToeValidateCommand.self]
    )
}

/// Exit codes that orchestration can act on.
enum ToeExitCode {
    static let success: Int32 = 0
    static let failed: Int32 = 1
    /// Same code a step uses to ask for a reboot: restart the machine, then run the command again.
    static let rebootPending: Int32 = 194
}

struct ToeRunCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Run component documents on this host, writing AWSTOE's logs and printing the run summary as JSON."
    )

    @Option(name: [.customShort("d"), .long], help: "Comma-separated document paths.")
    var documents: String?

    @Option(name: [.customShort("c"), .long], help: "A run configuration JSON file (awstoe's --config format).")
    var config: String?

    @Option(name: [.customShort("p"), .long], help: "Comma-separated phases to run; they always run in document order.")
    var phases: String?

    @Option(name: .long, help: "Comma-separated name=value parameter overrides.")
    var parameters: String?

    @Option(name: [.customShort("i"), .long], help: "Execution id (default: a new UUID).")
    var executionId: String?

    @Option(name: [.customShort("l"), .long], help: "Folder for the TOE_… log folder (default: the current folder).")
    var logDirectory: String?

    @Option(name: [.customShort("s"), .long], help: "Folder that keeps the run's state across a reboot.")
    var stateDirectory: String?

    @Flag(name: [.customShort("t"), .long], help: "Also print debug lines (application.log) while running.")
    var trace = false

    @OptionGroup(title: "Instance (instead of this host)") var instance: ToeInstanceOptions

    func run() async throws {
        let terminal = TerminalOutput()
        let settings: RunSettings
        let loaded: [TOEDocumentRun]
        do {
            settings = try RunSettings(flags: self)
            loaded = try await settings.loadDocuments()
        } catch let error as KilnError {
            terminal.error(error)
            throw ExitCode(ToeExitCode.failed)
        }

        var resume: TOEResumeState?
        if let stateDirectory = settings.stateDirectory {
            do {
                resume = try TOEResumeState.load(from: stateDirectory)
            } catch let error as KilnError {
                terminal.error(error)
                throw ExitCode(ToeExitCode.failed)
            }
            if let state = resume, state.documentSources != loaded.map(\.document.source) {
                terminal.error(
                    KilnError(
                        .invalidArgument,
                        "the state directory '\(stateDirectory)' holds a paused run of other documents (\(state.documentSources.joined(separator: ","))); use another --state-directory or delete \(stateDirectory)/\(TOEResumeState.fileName)"
                    ))
                throw ExitCode(ToeExitCode.failed)
            }
        }

        let executionId = resume?.executionId ?? settings.executionId ?? UUID().uuidString.lowercased()
        let folder =
            resume?.logFolder
            ?? TOELogFolder.path(in: settings.logDirectory ?? FileManager.default.currentDirectoryPath, executionId: executionId)
        let log: TOELogWriter
        do {
            log = try TOELogWriter(folder: folder, echo: { terminal.progress($0) }, echoDebug: trace)
            if resume == nil { try TOELogFolder.writeDocuments(loaded.map(\.document), to: folder) }
        } catch {
            terminal.error(KilnError(.ioFailure, "cannot create the log folder '\(folder)': \(error)"))
            throw ExitCode(ToeExitCode.failed)
        }

        let request = TOERunRequest(documents: loaded, phases: settings.phases, executionId: executionId)
        let outcome: TOERunOutcome
        if let image = instance.image {
            outcome = try await ToeInstanceRun(options: instance, image: image, terminal: terminal).run(request, log: log)
        } else {
            outcome = await TOERunner(session: LocalHostSession(), options: TOEOptions()).run(request, log: log, resume: resume)
        }
        // The state comes first: exit code 194 promises that the run can resume.
        var resumable = false
        if let stateDirectory = settings.stateDirectory {
            do {
                if let state = outcome.resumeState {
                    try state.save(to: stateDirectory)
                    resumable = true
                } else {
                    TOEResumeState.clear(in: stateDirectory)
                }
            } catch {
                terminal.error(KilnError(.ioFailure, "cannot save the run's state in '\(stateDirectory)': \(error)"))
            }
        } else if outcome.rebootPending {
            terminal.warning(
                "a step asked for a reboot but no --state-directory was given, so this run cannot resume; pass --state-directory to make it resumable"
            )
        }
        do {
            try TOELogFolder.writeResults(outcome, to: folder)
        } catch {
            terminal.error(KilnError(.ioFailure, "cannot write the run's results to '\(folder)': \(error)"))
        }
        print(outcome.summary.json())
        if outcome.rebootPending { throw ExitCode(resumable ? ToeExitCode.rebootPending : ToeExitCode.failed) }
        if !outcome.succeeded { throw ExitCode(ToeExitCode.failed) }
    }
}

struct ToeValidateCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "validate",
        abstract: "Check component documents for Linux without running them."
    )

    @Option(name: [.customShort("d"), .long], help: "Comma-separated document paths.")
    var documents: String

    func run() async throws {
        let paths = documents.split(separator: ",").map(String.init)
        try DocumentValidation.validate(paths)
    }
}

enum DocumentValidation {
    /// Prints awstoe's validation JSON on stdout and every problem on stderr; fails when any document is invalid.
    static func validate(_ paths: [String]) throws {
        let terminal = TerminalOutput()
        var failures: [KilnError] = []
        for path in paths {
            do {
                _ = try ComponentDocumentParser(platform: .linux).parse(contentsOf: path)
            } catch let error as KilnError {
                failures.append(error)
            }
        }
        let list = paths.joined(separator: ",")
        if failures.isEmpty {
            print(#"{"validationStatus":"success","message":"Document(s) [\#(list)] is/are valid."}"#)
            return
        }
        for failure in failures { terminal.error(failure) }
        let count = failures.reduce(0) { $0 + max($1.issues.count, 1) }
        let message = "Document(s) [\(list)] failed validation with \(count) problem\(count == 1 ? "" : "s")"
        let data = try JSONSerialization.data(
            withJSONObject: ["validationStatus": "failed", "message": message], options: [.sortedKeys, .withoutEscapingSlashes])
        print(String(decoding: data, as: UTF8.self))
        throw ExitCode(ToeExitCode.failed)
    }
}
