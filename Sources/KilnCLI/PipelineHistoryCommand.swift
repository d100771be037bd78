import ArgumentParser
import Foundation
import KilnModel
import KilnServer

/// `kiln pipeline history NAME`: the pipeline's runs and skipped fires, newest first, with why.
struct PipelineHistoryCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "history",
        abstract: "Show a pipeline's runs and skipped fires on a kiln server: what triggered each, and why it built or not.")

    @Argument(help: "The pipeline's name or ARN.")
    var pipeline: String

    @Option(name: .long, help: "Show at most this many entries.")
    var limit = 20

    @Flag(name: .long, help: "Print the entries as JSON.")
    var json = false

    @OptionGroup var options: KilnOptions
    @OptionGroup var remote: RemoteOptions

    func run() async throws {
        try await KilnEnvironment.reportingErrors {
            let client = try remote.requiredClient(for: "kiln pipeline history", options: options)
            let data = try await client.get("/kiln/pipelines/" + ImageBuilderClient.encode(pipeline) + "/history")
            if json {
                print(String(decoding: data, as: UTF8.self))
                return
            }
            let entries = try JSONDecoder().decode([PipelineHistoryEntry].self, from: data).prefix(limit)
            guard !entries.isEmpty else {
                print("pipeline \(pipeline): no runs or fires yet")
                return
            }
            for entry in entries {
                let state = entry.outcome == "started" ? "started \(entry.imageArn ?? "") \(entry.imageStatus ?? "")" : entry.outcome
                print("\(entry.time)  \(entry.trigger)  \(state)")
                print("    \(entry.detail)")
                if let reason = entry.reason { print("    why: \(reason)") }
                for line in entry.resolved ?? [] { print("    resolved: \(line)") }
                for package in (entry.packages ?? []).prefix(20) { print("    package: \(package)") }
            }
        }
    }
}

/// `kiln pipeline fire NAME`: decide the pipeline's start condition now, as a cron fire would.
struct PipelineFireCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fire",
        abstract:
            "Fire a pipeline's schedule now on a kiln server: its start condition decides whether it builds (see kiln pipeline history)."
    )

    @Argument(help: "The pipeline's name.")
    var pipeline: String

    @OptionGroup var options: KilnOptions
    @OptionGroup var remote: RemoteOptions

    func run() async throws {
        try await KilnEnvironment.reportingErrors {
            let client = try remote.requiredClient(for: "kiln pipeline fire", options: options)
            let data = try await client.post("/kiln/pipelines/" + ImageBuilderClient.encode(pipeline) + "/fire")
            let event = (try? JSONValue(parsing: data))?["event"]?.int.map(String.init) ?? "?"
            print("pipeline \(pipeline): fired (event \(event)); kiln pipeline history \(pipeline) shows what it decided")
        }
    }
}
