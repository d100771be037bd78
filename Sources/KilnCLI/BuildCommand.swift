#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import Foundation
import KilnEngine
import KilnInstances
import KilnModel
import KilnSystem
import KilnOCI
import KilnRegistry

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

    @Option(name: .long, help: "Clamp file times and the created date to this (seconds since 1970), for reproducible images (default: $SOURCE_DATE_EPOCH).")
    var sourceDateEpoch: Int64?

    @Flag(name: .long, help: "Build every step again even when an earlier build had the same inputs.")
    var noCache = false

    @Flag(name: .long, help: "Build from what Kiln's store holds: look up no registry parent and ask no package source (kiln.yaml: offline: true).")
    var offline = false

    @Flag(name: .long, help: "Print the parent's digest and each step's cache decision (reused or run, and why), then stop without building.")
    var explainCache = false

    @OptionGroup var options: KilnOptions

    func run() async throws {
        let built = try await KilnEnvironment.reportingErrors { () -> ImageRecord? in
            let environment = try KilnEnvironment(options)
            let host = try await environment.instanceHost()
            let definitions = try Definitions.load(path: file)
            let name = try pipeline ?? {
                guard definitions.imagePipelines.count == 1 else {
                    throw KilnError(.invalidArgument, "\(file) has \(definitions.imagePipelines.count) pipelines; choose one with --pipeline (\(definitions.imagePipelines.map(\.name).joined(separator: ", ")))")
                }
                return definitions.imagePipelines[0].name
            }()
            let view = TransferProgressView()
            let transfer = ImageTransfer(store: environment.store, registries: environment.registries, concurrency: environment.configuration.transferConcurrency, observer: view.observer)
            let started = ContinuousClock.now
            let terminal = TerminalOutput()
            let run = try PipelineRun(configuration: environment.configuration, host: host, transfer: transfer) { line in
                let elapsed = ContinuousClock.now - started
                terminal.progress(String(format: "[%6.1fs] ", elapsed.inSeconds) + line)
            }
            let epoch = sourceDateEpoch ?? ProcessInfo.processInfo.environment["SOURCE_DATE_EPOCH"].flatMap { Int64($0) }
            let settings = PipelineRun.Settings(definitionsPath: file, pipeline: name, contextDirectory: context, sourceDateEpoch: epoch, useCache: !noCache, offline: offline)
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
                FileHandle.standardError.write(Data("kiln: interrupted; cancelling the build and removing its instances (again to quit at once)\n".utf8))
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

/// `kiln images`: the image versions Kiln has built.
struct ImagesCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "images", abstract: "List built image versions, or show one.",
        subcommands: [ImagesListCommand.self, ImagesShowCommand.self], defaultSubcommand: ImagesListCommand.self
    )
}

struct ImagesListCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "ls", abstract: "List image versions.")

    @OptionGroup var options: KilnOptions

    func run() async throws {
        try await KilnEnvironment.reportingErrors {
            let environment = try KilnEnvironment(options)
            let records = try JSONImageRecords(dataDirectory: environment.configuration.dataDirectory).all()
            print("IMAGE                              STATUS        CREATED                PIPELINE")
            for record in records {
                let version = "\(record.name)/\(record.version)/\(record.build)".padding(toLength: 34, withPad: " ", startingAt: 0)
                print("\(version) \(record.status.rawValue.padding(toLength: 13, withPad: " ", startingAt: 0)) \(record.dateCreated.padding(toLength: 22, withPad: " ", startingAt: 0)) \(record.sourcePipelineName ?? "-")")
            }
        }
    }
}

struct ImagesShowCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "show", abstract: "Show one image version as JSON (name/version/build or its ARN).")

    @Argument(help: "name/x.y.z/build, or the image's ARN.")
    var image: String

    @OptionGroup var options: KilnOptions

    func run() async throws {
        try await KilnEnvironment.reportingErrors {
            let environment = try KilnEnvironment(options)
            try TerminalOutput.printJSON(try JSONImageRecords(dataDirectory: environment.configuration.dataDirectory).find(image))
        }
    }
}

/// `kiln image retry-distribution`: Image Builder's RetryImage, distribution without rebuilding.
struct ImageRetryDistributionCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "retry-distribution", abstract: "Distribute a built image again to the regions its build chose, without rebuilding."
    )

    @Argument(help: "name/x.y.z/build or the image's ARN (see kiln images).")
    var image: String

    @OptionGroup var options: KilnOptions

    func run() async throws {
        let record = try await KilnEnvironment.reportingErrors { () -> ImageRecord in
            let environment = try KilnEnvironment(options)
            let host = try InstanceHost(dataDirectory: environment.configuration.dataDirectory, store: environment.store)
            let view = TransferProgressView()
            let transfer = ImageTransfer(store: environment.store, registries: environment.registries, observer: view.observer)
            let run = try PipelineRun(configuration: environment.configuration, host: host, transfer: transfer) { TerminalOutput().progress($0) }
            let record = try run.records.find(image)
            guard [.failed, .available, .cancelled].contains(record.status) else {
                throw KilnError(.invalidArgument, "image \(image) is \(record.status.rawValue); only a FAILED, CANCELLED or AVAILABLE image can be distributed again")
            }
            let retried = try await run.distribute(record)
            view.finish()
            await environment.registries.shutdown()
            return retried
        }
        try TerminalOutput.printJSON(record)
        if record.status != .available { throw ExitCode.failure }
    }
}

/// `kiln logs`: an image's pipeline log (stages, steps, component and command output);
/// `--follow` waits for more until the image reaches a final state.
struct LogsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "logs", abstract: "Print an image's build and test logs.")

    @Argument(help: "name/x.y.z/build or the image's ARN (see kiln images).")
    var image: String

    @Flag(name: [.customShort("f"), .long], help: "Keep printing new lines until the image is AVAILABLE, FAILED or CANCELLED.")
    var follow = false

    @OptionGroup var options: KilnOptions

    func run() async throws {
        try await KilnEnvironment.reportingErrors {
            let environment = try KilnEnvironment(options)
            let records = try JSONImageRecords(dataDirectory: environment.configuration.dataDirectory)
            let first = try records.find(image)
            let files = [first.logDirectory + "/pipeline.log"]
            var offsets = [Int](repeating: 0, count: files.count)
            while true {
                for (index, file) in files.enumerated() {
                    guard let data = FileManager.default.contents(atPath: file), data.count > offsets[index] else { continue }
                    FileHandle.standardOutput.write(data[offsets[index]...])
                    offsets[index] = data.count
                }
                let status = try records.find(image).status
                if !follow || [.available, .failed, .cancelled].contains(status) { break }
                try await Task.sleep(for: .milliseconds(500))
            }
        }
    }
}
