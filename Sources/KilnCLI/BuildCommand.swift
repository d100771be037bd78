import ArgumentParser
import Foundation
import KilnEngine
import KilnInstances
import KilnModel
import KilnOCI
import KilnRegistry
import KilnSystem

#if canImport(Glibc)
    import Glibc
#endif

/// `kiln build`: run one image pipeline from a definitions file, with no server.
struct BuildCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "build",
        abstract: "Run an image pipeline once: build, test and distribute; prints the image record as JSON."
    )

    @Option(name: [.customShort("f"), .long], help: "The definitions file (components, recipes, configurations, pipelines).")
    var file: String

    @Option(name: .long, help: "The pipeline to run (default: the only one in the file).")
    var pipeline: String?

    @Option(name: .long, help: "The folder COPY and ADD read from (default: the definitions file's folder).")
    var context: String?

    @Option(
        name: .long,
        help: "Clamp file times and the created date to this (seconds since 1970), for reproducible images (default: $SOURCE_DATE_EPOCH).")
    var sourceDateEpoch: Int64?

    @Flag(name: .long, help: "Build every step again even when an earlier build had the same inputs.")
    var noCache = false

    @Flag(
        name: .long,
        help: "Build from what Kiln's store holds: look up no registry parent and ask no package source (kiln.yaml: offline: true).")
    var offline = false

    @Flag(
        name: .long, help: "Print the parent's digest and each step's cache decision (reused or run, and why), then stop without building.")
    var explainCache = false

    @OptionGroup var options: KilnOptions

    func run() async throws {
        let built = try await KilnEnvironment.reportingErrors { () -> ImageRecord? in
            let environment = try KilnEnvironment(options)
            let host = try await environment.instanceHost()
            // The definitions are parsed and checked once, here; the engine gets the selection.
            let selection = try Definitions.load(path: file).selectPipeline(pipeline, source: file)
            let view = TransferProgressView()
            let transfer = ImageTransfer(
                store: environment.store, registries: environment.registries, concurrency: environment.configuration.transferConcurrency,
                observer: view.observer)
            let started = ContinuousClock.now
            let terminal = TerminalOutput()
            let run = try PipelineRun(
                configuration: environment.configuration, host: host, transfer: transfer, records: try environment.records()
            ) { line in
                let elapsed = ContinuousClock.now - started
                terminal.progress(String(format: "[%6.1fs] ", elapsed.inSeconds) + line)
            }
            let epoch = sourceDateEpoch ?? ProcessInfo.processInfo.environment["SOURCE_DATE_EPOCH"].flatMap { Int64($0) }
            let settings = PipelineRun.Settings(
                selection: selection, definitionsPath: file, contextDirectory: context, sourceDateEpoch: epoch, useCache: !noCache,
                offline: offline
            )
            if explainCache {
                let lines = try await run.explain(settings)
                view.finish()
                await environment.registries.shutdown()
                print(lines.joined(separator: "\n"))
                return nil
            }
            let pipelineRun = Task { try await run.run(settings) }
            // Ctrl-C cancels the run: its instances are removed and the image becomes CANCELLED.
            // The first signal cancels; a second quits at once.
            let interrupts = InterruptSignals { number, first in
                if !first { Glibc.exit(128 + number) }
                FileHandle.standardError.write(
                    Data("kiln: interrupted; cancelling the build and removing its instances (again to quit at once)\n".utf8))
                pipelineRun.cancel()
            }
            defer { interrupts.stop() }
            let record = try await pipelineRun.value
            view.finish()
            await environment.registries.shutdown()
            return record
        }
        guard let record = built else { return }
        try TerminalOutput.printJSON(record)
        if record.status == .cancelled { throw ExitCode(128 + SIGINT) }
        if record.status != .available { throw ExitCode.failure }
    }
}
