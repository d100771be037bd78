import ArgumentParser
import Foundation
import KilnModel
import KilnServer
import Synchronization

/// `kiln pipeline start|next|history|fire NAME --endpoint URL`: a kiln server's pipelines.
struct PipelineCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pipeline", abstract: "Work with a kiln server's image pipelines.",
        subcommands: [PipelineStartCommand.self, PipelineNextCommand.self, PipelineHistoryCommand.self, PipelineFireCommand.self])
}

struct PipelineStartCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "start", abstract: "Start a pipeline on a kiln server; print the new image's ARN (with --wait, its log until it ends)."
    )

    @Argument(help: "The pipeline's name or ARN.")
    var pipeline: String

    @Flag(name: .long, help: "Print the build's log as it runs and exit non-zero unless the image becomes AVAILABLE.")
    var wait = false

    @OptionGroup var options: KilnOptions
    @OptionGroup var remote: RemoteOptions

    func run() async throws {
        let status = try await KilnEnvironment.reportingErrors { () -> String in
            guard let endpoint = remote.resolvedEndpoint() else {
                throw KilnError(
                    .invalidArgument, "kiln pipeline start talks to a kiln server: give --endpoint URL or set KILN_ENDPOINT")
            }
            let configuration = try KilnEnvironment.configurationOnly(options)
            let client = try remote.client(endpoint, configuration: configuration)
            let arn =
                pipeline.hasPrefix("arn:")
                ? pipeline
                : ImageBuilderARN(
                    region: configuration.homeRegion, account: configuration.accountId, resourceType: "image-pipeline", name: pipeline
                ).description
            let started = try await client.call("StartImagePipelineExecution", ["imagePipelineArn": .string(arn)])
            guard let image = started["imageBuildVersionArn"]?.string else {
                throw KilnError(.internalError, "the server answered without an image ARN: \(started)")
            }
            print(image)
            guard wait else { return "AVAILABLE" }
            let final = Mutex("UNKNOWN")
            try await client.stream("/kiln/logs/" + ImageBuilderClient.encode(image)) { name, data in
                if name == "end" { final.withLock { $0 = data } } else { FileHandle.standardError.write(Data((data + "\n").utf8)) }
            }
            return final.withLock { $0 }
        }
        if status != "AVAILABLE" {
            FileHandle.standardError.write(Data("kiln: the image ended \(status)\n".utf8))
            throw ExitCode.failure
        }
    }
}
