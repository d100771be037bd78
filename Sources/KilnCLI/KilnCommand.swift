import ArgumentParser
#if canImport(Glibc)
import Glibc
#endif

/// `kiln`: the image factory's command line.
public struct KilnCommand: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "kiln",
        abstract: "Kiln bakes, tests and distributes golden images with the model and API of EC2 Image Builder.",
        subcommands: [BuildCommand.self, ImagesCommand.self, LogsCommand.self, CostCommand.self, ToeCommand.self, ComponentCommand.self, ImageCommand.self, InstanceCommand.self]
    )

    public init() {}
}

extension KilnCommand {
    /// Entry point for the `kiln` executable; names the async overload explicitly.
    public static func start() async {
        // A parent that ignores SIGCHLD would let the kernel reap our children and hide their exit codes.
        signal(SIGCHLD, SIG_DFL)
        let entry: ([String]?) async -> Void = KilnCommand.main
        await entry(nil)
    }
}
