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
    @OptionGroup var remote: RemoteOptions

    func run() async throws {
        try await KilnEnvironment.reportingErrors {
            let records: [ImageRecord]
            if let endpoint = remote.resolvedEndpoint() {
                records = try await remote.client(endpoint, configuration: try KilnEnvironment.configurationOnly(options)).records()
            } else {
                let environment = try KilnEnvironment(options)
                // What a killed Kiln left goes first, so its records say FAILED, not BUILDING.
                _ = try await environment.instanceHost()
                records = try environment.records().all()
            }
            print("IMAGE                              STATUS        CREATED                PIPELINE          AMI")
            for record in records {
                let version = "\(record.name)/\(record.version)/\(record.build)".padding(toLength: 34, withPad: " ", startingAt: 0)
                print(
                    "\(version) \(record.status.rawValue.padding(toLength: 13, withPad: " ", startingAt: 0)) \(record.dateCreated.padding(toLength: 22, withPad: " ", startingAt: 0)) \((record.sourcePipelineName ?? "-").padding(toLength: 17, withPad: " ", startingAt: 0)) \(record.machineImage?.amiId ?? "-")"
                )
            }
        }
    }
}

struct ImagesShowCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "show", abstract: "Show one image version as JSON (name/version/build or its ARN).")

    @Argument(help: "name/x.y.z/build, or the image's ARN.")
    var image: String

    @OptionGroup var options: KilnOptions
    @OptionGroup var remote: RemoteOptions

    func run() async throws {
        try await KilnEnvironment.reportingErrors {
            if let endpoint = remote.resolvedEndpoint() {
                let client = try remote.client(endpoint, configuration: try KilnEnvironment.configurationOnly(options))
                try TerminalOutput.printJSON(try await client.record(image))
                return
            }
            let environment = try KilnEnvironment(options)
            _ = try await environment.instanceHost()
            try TerminalOutput.printJSON(try environment.records().find(image))
        }
    }
}
