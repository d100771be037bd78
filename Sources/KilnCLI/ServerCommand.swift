import ArgumentParser
import Foundation
import KilnModel
import KilnRegistry
import KilnServer
import Logging

/// `kiln server`: the Image Builder API (SigV4) on `listen`, with the durable build queue.
struct ServerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "server",
        abstract: "Serve the EC2 Image Builder API (aws imagebuilder --endpoint-url, boto3) and run queued builds.",
        discussion: """
            kiln.yaml keys: listen (default 127.0.0.1:8080), accountId, homeRegion, credentials \
            ([{accessKeyId, secretAccessKey or secretAccessKeyEnv}]), maxConcurrentBuilds, webhooks. \
            KILN_LISTEN, KILN_ACCOUNT_ID, KILN_HOME_REGION, KILN_MAX_CONCURRENT_BUILDS, KILN_ACCESS_KEY_ID and \
            KILN_SECRET_ACCESS_KEY override the file. SIGTERM stops taking work and leaves builds in recorded states.
            """)

    @OptionGroup var options: KilnOptions

    @Option(name: .long, help: "Listen on host:port (overrides kiln.yaml's listen and KILN_LISTEN).")
    var listen: String?

    @Option(name: .long, help: .hidden)
    var benchFloorResponse: String?

    func run() async throws {
        try await KilnEnvironment.reportingErrors {
            let environment = try KilnEnvironment(options)
            var configuration = environment.configuration
            try configuration.applyServerEnvironment(ProcessInfo.processInfo.environment)
            if let listen {
                guard KilnConfiguration.listenAddress(listen) != nil else {
                    throw KilnError(.invalidArgument, "--listen must be host:port, like 127.0.0.1:8080, not '\(listen)'")
                }
                configuration.listen = listen
            }
            var logger = Logger(label: "kiln.server")
            logger.logLevel = .info
            let host = try await environment.instanceHost()
            let transfer = ImageTransfer(
                store: environment.store, registries: environment.registries, concurrency: configuration.transferConcurrency)
            let server = try ImageBuilderServer(configuration: configuration, host: host, transfer: transfer, logger: logger)
            let floor = try benchFloorResponse.map { [UInt8](try Data(contentsOf: URL(fileURLWithPath: $0))) }
            try await server.run(floorResponse: floor)
            await environment.registries.shutdown()
        }
    }
}
