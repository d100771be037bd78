import ArgumentParser
import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// `kiln`: the image factory's command line.
public struct KilnCommand: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "kiln",
        abstract: "Kiln bakes, tests and distributes golden images with the model and API of EC2 Image Builder.",
        subcommands: [
            BuildCommand.self, ImagesCommand.self, LogsCommand.self, CostCommand.self, ToeCommand.self, ComponentCommand.self,
            ImageCommand.self, InstanceCommand.self, ServerCommand.self, ApplyCommand.self, PipelineCommand.self, DiskCommand.self,
        ]
    )

    public init() {}
}

extension KilnCommand {
    /// Descriptors kiln inherited beyond stdin, stdout and stderr (a parent's pipes or sockets)
    /// must not reach runc or an instance's processes: they could keep the parent waiting for
    /// an EOF long after kiln exits.
    static func closeInheritedDescriptorsOnExec() {
        for name in (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? [] {
            guard let descriptor = Int32(name), descriptor > 2 else { continue }
            let flags = fcntl(descriptor, F_GETFD)
            if flags >= 0 { _ = fcntl(descriptor, F_SETFD, flags | FD_CLOEXEC) }
        }
    }

    /// Entry point for the `kiln` executable; names the async overload explicitly.
    public static func start() async {
        // A parent that ignores SIGCHLD would let the kernel reap our children and hide their exit codes.
        signal(SIGCHLD, SIG_DFL)
        closeInheritedDescriptorsOnExec()
        let entry: ([String]?) async -> Void = KilnCommand.main
        await entry(nil)
    }
}
