import ArgumentParser
import Foundation
import KilnEngine
import KilnInstances
import KilnModel
import KilnOCI
import KilnRegistry
import KilnServer
import KilnSystem

#if canImport(Glibc)
    import Glibc
#endif

/// `kiln logs`: an image's pipeline log (stages, steps, component and command output);
/// `--follow` waits for more until the image reaches a final state.
struct LogsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "logs", abstract: "Print an image's build and test logs.")

    @Argument(help: "name/x.y.z/build or the image's ARN (see kiln images).")
    var image: String

    @Flag(name: [.customShort("f"), .long], help: "Keep printing new lines until the image is AVAILABLE, FAILED or CANCELLED.")
    var follow = false

    @OptionGroup var options: KilnOptions
    @OptionGroup var remote: RemoteOptions

    func run() async throws {
        try await KilnEnvironment.reportingErrors {
            if let endpoint = remote.resolvedEndpoint() {
                // The server streams the log (server-sent events) until the image ends.
                let client = try remote.client(endpoint, configuration: try KilnEnvironment.configurationOnly(options))
                try await client.stream("/kiln/logs/" + ImageBuilderClient.encode(image), query: follow ? "" : "follow=false") {
                    name, data in
                    if name == "message" { print(data) }
                }
                return
            }
            let environment = try KilnEnvironment(options)
            let records = try environment.records()
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
