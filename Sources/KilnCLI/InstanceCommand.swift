import ArgumentParser
import Foundation
import KilnInstances
import KilnModel

#if canImport(Glibc)
    import Glibc
#endif

/// `kiln instance`: builder and test instances that were kept (or left by a crash).
struct InstanceCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "instance",
        abstract: "List, enter and remove kept builder and test instances.",
        subcommands: [InstanceListCommand.self, InstanceShellCommand.self, InstanceRemoveCommand.self]
    )
}

extension KilnEnvironment {
    /// The instance host, after removing what a stopped Kiln left behind.
    func instanceHost() async throws -> InstanceHost {
        try await InstanceHost.reapingOrphans(dataDirectory: configuration.dataDirectory, store: store) { TerminalOutput().progress($0) }
    }
}

struct InstanceListCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "ls", abstract: "List instances.")

    @OptionGroup var options: KilnOptions

    @Flag(name: .long, help: "Print JSON instead of a table.")
    var json = false

    func run() async throws {
        try await KilnEnvironment.reportingErrors {
            let host = try await KilnEnvironment(options).instanceHost()
            let instances = await ContainerInstance.list(on: host)
            if json {
                try TerminalOutput.printJSON(instances)
                return
            }
            print("ID                 STATE     KEPT  CREATED                IMAGE")
            for instance in instances {
                let state = (instance.running ? "running" : "stopped").padding(toLength: 9, withPad: " ", startingAt: 0)
                print(
                    "\(instance.id.padding(toLength: 18, withPad: " ", startingAt: 0)) \(state) \(instance.kept ? "yes " : "no  ")  \(instance.created.padding(toLength: 22, withPad: " ", startingAt: 0)) \(instance.image)"
                )
            }
        }
    }
}

struct InstanceShellCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "shell", abstract: "Open a shell (or run a command) in a running instance.")

    @Argument(help: "The instance id (see kiln instance ls).")
    var id: String

    @Option(name: .long, help: "The program to start.")
    var shell = "/bin/sh"

    @OptionGroup var options: KilnOptions

    func run() async throws {
        try await KilnEnvironment.reportingErrors {
            let host = try await KilnEnvironment(options).instanceHost()
            guard await ContainerInstance.list(on: host).contains(where: { $0.id == id && $0.running }) else {
                throw KilnError(.notFound, "no running instance '\(id)'; see kiln instance ls")
            }
            let command = ContainerInstance.shellCommand(id: id, on: host, terminal: isatty(STDIN_FILENO) == 1, shell: shell)
            // The shell takes over this terminal; Kiln only waits for it.
            let process = Process()
            process.executableURL = URL(fileURLWithPath: command[0])
            process.arguments = Array(command.dropFirst())
            try process.run()
            process.waitUntilExit()
            throw ExitCode(process.terminationStatus)
        }
    }
}

struct InstanceRemoveCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "rm", abstract: "Stop and remove instances, kept ones included.")

    @Argument(help: "Instance ids.")
    var ids: [String]

    @OptionGroup var options: KilnOptions

    func run() async throws {
        try await KilnEnvironment.reportingErrors {
            let host = try await KilnEnvironment(options).instanceHost()
            for id in ids {
                try await ContainerInstance.remove(id: id, on: host)
                print("removed \(id)")
            }
        }
    }
}
