import ArgumentParser
import Foundation
import KilnEngine
import KilnInstances
import KilnModel
import KilnOCI
import KilnRegistry

/// `kiln image`: move images between registries, OCI layouts and Kiln's content store.
struct ImageCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "image",
        abstract: "Pull, push, copy, inspect and list images in Kiln's content store.",
        discussion: """
            References: host[:port]/repo[:tag][@sha256:…] (a registry), oci-layout:PATH[:TAG], \
            oci-archive:PATH[:TAG], and kiln:NAME for an image in Kiln's store.
            """,
        subcommands: [
            ImagePullCommand.self, ImagePushCommand.self, ImageCopyCommand.self, ImageInspectCommand.self,
            ImageListCommand.self, ImageRemoveCommand.self, ImageGarbageCollectCommand.self, ImagePackCommand.self,
            ImageImportDiskCommand.self, ImageExportDiskCommand.self,
            ImageRetryDistributionCommand.self,
        ]
    )
}

/// Flags shared by the commands that move images.
struct TransferOptions: ParsableArguments {
    @Option(name: .long, help: "The platform to take from a multi-platform image, os/arch[/variant] (default: this machine's).")
    var platform: String?

    @Flag(name: .long, help: "Copy every platform of a multi-platform image.")
    var all = false

    @Option(name: .long, help: "Blob transfers in flight at once (default: the config's transfers.concurrency, 4).")
    var concurrency: Int?

    @Flag(name: [.customShort("q"), .long], help: "No progress output.")
    var quiet = false

    func transfer(_ environment: KilnEnvironment, view: TransferProgressView) throws -> ImageTransfer {
        let platform = all ? nil : try self.platform.map(Platform.init(parsing:)) ?? .host
        return ImageTransfer(
            store: environment.store, registries: environment.registries, platform: platform,
            concurrency: concurrency ?? environment.configuration.transferConcurrency, observer: view.observer
        )
    }
}

extension KilnEnvironment {
    /// A name in Kiln's store as given, or in its full form (`app` → `docker.io/library/app:latest`).
    func localName(_ text: String) -> String? {
        if text.hasPrefix("kiln:") { return localName(String(text.dropFirst(5))) }
        if (try? store.resolve(text)) != nil { return text }
        if let full = try? ImageReference(text).description, (try? store.resolve(full)) != nil { return full }
        return nil
    }

    /// A source: an explicit form, a name in Kiln's store, or else a registry reference.
    func source(_ text: String) throws -> ImageLocation {
        if let name = localName(text) { return .store(name: name) }
        return try ImageLocation(text)
    }

    /// Copies with progress as the flags ask, prints one line per destination and the digest on
    /// stdout; fails naming every destination that failed.
    func copy(from source: ImageLocation, to destinations: [ImageLocation], with flags: TransferOptions) async throws {
        guard !destinations.isEmpty else { throw KilnError(.invalidArgument, "give at least one destination") }
        let view = TransferProgressView(quiet: flags.quiet)
        let result = try await flags.transfer(self, view: view).copy(from: source, to: destinations)
        view.finish()
        if !view.quiet { report(result, from: source) }
        await registries.shutdown()
        print(try result.checked().digest)
    }

    private func report(_ result: ImageTransfer.Result, from source: ImageLocation) {
        if let received = result.totals[source.description], received.bytes > 0 {
            TerminalOutput().progress("\(source): \(TransferProgressView.size(received.bytes)) received, \(received.blobsSent) blob(s)")
        }
        for destination in result.destinations where destination.error == nil {
            let sent = destination.totals
            TerminalOutput().progress(
                "\(destination.location): \(result.digest) (\(TransferProgressView.size(sent.bytes)) sent, \(sent.blobsSent) blob(s) written, \(sent.blobsSkipped) already there, \(sent.blobsMounted) mounted)"
            )
        }
    }
}

struct ImagePullCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pull", abstract: "Pull an image into Kiln's content store; prints its digest.")

    @Argument(
        help:
            "The image, e.g. registry.example:5000/team/app:1.0, oci-archive:app.tar:1.0, or bootstrap:debian:SUITE (made once with mmdebstrap)."
    )
    var reference: String

    @OptionGroup var options: KilnOptions
    @OptionGroup var transferOptions: TransferOptions

    func run() async throws {
        try await KilnEnvironment.reportingErrors {
            let environment = try KilnEnvironment(options)
            if reference.hasPrefix("bootstrap:") {
                let view = TransferProgressView(quiet: transferOptions.quiet)
                let made = try await ParentImageResolver(
                    transfer: try transferOptions.transfer(environment, view: view), mirrors: environment.configuration.bootstrapMirrors,
                    observer: { TerminalOutput().progress($0) }
                ).resolve(reference)
                print(made.digest)
                return
            }
            let source = try ImageLocation(reference)
            let name = if case .registry(let parsed) = source { parsed.description } else { reference }
            try await environment.copy(from: source, to: [.store(name: name)], with: transferOptions)
        }
    }
}

struct ImagePushCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "push", abstract: "Push an image from Kiln's content store to one or more destinations at once."
    )

    @Argument(help: "An image in Kiln's store (see kiln image ls).")
    var reference: String

    @Argument(help: "Destinations: registry references, oci-layout:PATH:TAG or oci-archive:PATH:TAG.")
    var destinations: [String]

    @OptionGroup var options: KilnOptions
    @OptionGroup var transferOptions: TransferOptions

    func run() async throws {
        try await KilnEnvironment.reportingErrors {
            let environment = try KilnEnvironment(options)
            guard let name = environment.localName(reference) else {
                throw KilnError(
                    .notFound,
                    "'\(reference)' is not in Kiln's content store at \(environment.store.root); pull it first, or use kiln image copy for a remote source"
                )
            }
            try await environment.copy(from: .store(name: name), to: try destinations.map(ImageLocation.init), with: transferOptions)
        }
    }
}

struct ImageCopyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "copy",
        abstract: "Copy an image to one or more destinations; each blob is read once and written to all of them concurrently."
    )

    @Argument(help: "The source: a registry reference, oci-layout:…, oci-archive:…, or an image in Kiln's store.")
    var source: String

    @Argument(help: "Destinations: registry references, oci-layout:PATH:TAG, oci-archive:PATH:TAG or kiln:NAME.")
    var destinations: [String]

    @OptionGroup var options: KilnOptions
    @OptionGroup var transferOptions: TransferOptions

    func run() async throws {
        try await KilnEnvironment.reportingErrors {
            let environment = try KilnEnvironment(options)
            try await environment.copy(
                from: try environment.source(source), to: try destinations.map(ImageLocation.init), with: transferOptions)
        }
    }
}

struct ImageInspectCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "inspect", abstract: "Describe an image (local or remote) as JSON.")

    @Argument(help: "An image in Kiln's store, a registry reference, oci-layout:… or oci-archive:….")
    var reference: String

    @Flag(name: .long, help: "Print the manifest exactly as stored.")
    var raw = false

    @Option(name: .long, help: "The platform to describe from a multi-platform image (default: this machine's).")
    var platform: String?

    @OptionGroup var options: KilnOptions

    func run() async throws {
        try await KilnEnvironment.reportingErrors {
            let environment = try KilnEnvironment(options)
            let source = try environment.source(reference)
            let transfer = ImageTransfer(
                store: environment.store, registries: environment.registries,
                platform: raw ? nil : try platform.map(Platform.init(parsing:)) ?? .host)
            if raw {
                FileHandle.standardOutput.write(try await transfer.manifestData(source))
            } else {
                try TerminalOutput.printJSON(try await transfer.inspect(source))
            }
            await environment.registries.shutdown()
        }
    }
}

struct ImageListCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "ls", abstract: "List the images in Kiln's content store.")

    @OptionGroup var options: KilnOptions

    @Flag(name: .long, help: "Print JSON instead of a table.")
    var json = false

    @Flag(name: .long, help: "Also list kiln build's step cache (kiln-cache/…).")
    var all = false

    func run() async throws {
        try await KilnEnvironment.reportingErrors {
            let environment = try KilnEnvironment(options)
            let images = try environment.store.summaries().filter { all || !$0.name.hasPrefix(BuildCacheKey.namePrefix) }
            if json {
                try TerminalOutput.printJSON(images)
                return
            }
            let width = max(4, images.map(\.name.count).max() ?? 0)
            print("NAME".padding(toLength: width, withPad: " ", startingAt: 0) + "  DIGEST         SIZE      CREATED")
            for image in images {
                let size = TransferProgressView.size(image.size).padding(toLength: 9, withPad: " ", startingAt: 0)
                print(
                    "\(image.name.padding(toLength: width, withPad: " ", startingAt: 0))  \(image.digest.encoded.prefix(12))   \(size) \(image.created ?? "-")"
                )
            }
        }
    }
}

struct ImageRemoveCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rm", abstract: "Remove image names from Kiln's store; kiln image gc frees their blobs."
    )

    @Argument(help: "Images in Kiln's store.")
    var references: [String]

    @OptionGroup var options: KilnOptions

    func run() async throws {
        try await KilnEnvironment.reportingErrors {
            let environment = try KilnEnvironment(options)
            for reference in references {
                guard let name = environment.localName(reference) else {
                    throw KilnError(.notFound, "'\(reference)' is not in Kiln's content store; see kiln image ls")
                }
                try environment.store.untag(name)
                print("removed \(name)")
            }
        }
    }
}

struct ImageGarbageCollectCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gc", abstract: "Delete blobs no image name and no running build uses."
    )

    @OptionGroup var options: KilnOptions

    @Flag(name: .long, help: "First forget kiln build's step cache, so the next build runs every step.")
    var buildCache = false

    func run() async throws {
        try await KilnEnvironment.reportingErrors {
            let environment = try KilnEnvironment(options)
            // A killed build's instances, temp files and records go first; its leases die with it.
            _ = try await environment.instanceHost()
            _ = try environment.records()
            if buildCache {
                let cached = try environment.store.summaries().map(\.name).filter { $0.hasPrefix(BuildCacheKey.namePrefix) }
                for name in cached { _ = try environment.store.untag(name) }
                try? FileManager.default.removeItem(
                    atPath: BuildCacheKey.freshnessFolder(dataDirectory: environment.configuration.dataDirectory))
                print("forgot \(cached.count) cached build step(s) and their package freshness checks")
            }
            let removed = try environment.store.garbageCollect()
            print("removed \(removed.blobs.count) blob(s), \(TransferProgressView.size(removed.bytes)) freed")
        }
    }
}

struct ImagePackCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pack",
        abstract: "Pack a root filesystem directory into a one-layer image in Kiln's store (deterministic tar + gzip); prints its digest."
    )

    @Argument(help: "The directory, e.g. one made by mmdebstrap.")
    var directory: String

    @Argument(help: "The name in Kiln's store.")
    var name: String

    @Option(name: .long, help: "Clamp file times to this (seconds since 1970), for reproducible layers (default: $SOURCE_DATE_EPOCH).")
    var sourceDateEpoch: Int64?

    @Option(name: .long, help: "gzip level, 1 (fast) to 9 (small).")
    var level: Int32 = 6

    @OptionGroup var options: KilnOptions

    func run() async throws {
        try await KilnEnvironment.reportingErrors {
            guard (1...9).contains(level) else { throw KilnError(.invalidArgument, "--level must be 1 to 9") }
            var isDirectory: ObjCBool = false
            guard FileManager.default.fileExists(atPath: directory, isDirectory: &isDirectory), isDirectory.boolValue else {
                throw KilnError(.notFound, "'\(directory)' is not a directory")
            }
            let environment = try KilnEnvironment(options)
            let epoch = sourceDateEpoch ?? ProcessInfo.processInfo.environment["SOURCE_DATE_EPOCH"].flatMap { Int64($0) }
            let manifest = try environment.store.importRootFilesystem(directory, name: name, sourceDateEpoch: epoch, level: level)
            print(manifest.digest)
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
            let run = try PipelineRun(
                configuration: environment.configuration, host: host, transfer: transfer, records: try environment.records()
            ) {
                TerminalOutput().progress($0)
            }
            let record = try run.records.find(image)
            guard [.failed, .available, .cancelled].contains(record.status) else {
                throw KilnError(
                    .invalidArgument,
                    "image \(image) is \(record.status.rawValue); only a FAILED, CANCELLED or AVAILABLE image can be distributed again")
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

/// `kiln image import-disk FILE`: Image Builder's ImportDiskImage, on this machine's data directory.
struct ImageImportDiskCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "import-disk",
        abstract: "Import a raw, qcow2 or one-file vmdk disk as an AVAILABLE machine image (AMI); prints its record as JSON.")

    @Argument(help: "The disk file. Its format is read from its bytes; a disk that names other files is refused.")
    var file: String

    @Option(name: .long, help: "The image's name.")
    var name: String

    @Option(name: .long, help: "The image's semantic version (x.y.z); each import is a new build of it.")
    var semanticVersion = "1.0.0"

    @OptionGroup var options: KilnOptions

    func run() async throws {
        try await KilnEnvironment.reportingErrors {
            let environment = try KilnEnvironment(options)
            let version = try SemanticVersion(parsing: semanticVersion)
            let path = file.hasPrefix("/") ? file : FileManager.default.currentDirectoryPath + "/" + file
            let record = try await DiskImport.run(
                path, name: name, version: version, configuration: environment.configuration, records: try environment.records(),
                store: environment.store
            ) { TerminalOutput().progress($0) }
            try TerminalOutput.printJSON(record)
        }
    }
}

/// `kiln image export-disk IMAGE --format vmdk --region R`: a machine image's disk into a region's image store.
struct ImageExportDiskCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "export-disk",
        abstract:
            "Copy a machine image's disk to a region's imageStore in qcow2, raw, vmdk, vhdx or vhd, verified by digest; prints the copy as JSON."
    )

    @Argument(help: "name/x.y.z/build, or the image's ARN.")
    var image: String

    @Option(name: .long, help: "qcow2, raw, vmdk (streamOptimized), vhdx or vhd (fixed).")
    var format = "vmdk"

    @Option(name: .long, help: "A region of kiln.yaml with an imageStore.")
    var region: String

    @OptionGroup var options: KilnOptions

    func run() async throws {
        try await KilnEnvironment.reportingErrors {
            guard let chosen = DiskExport.Format(rawValue: format.lowercased()) else {
                throw KilnError(
                    .invalidArgument,
                    "--format \(format) is not one of \(DiskExport.Format.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            let environment = try KilnEnvironment(options)
            let records = try environment.records()
            let (_, copy) = try await DiskExport.export(
                try records.find(image), format: chosen, region: region, configuration: environment.configuration, records: records
            ) { TerminalOutput().progress($0) }
            try TerminalOutput.printJSON(copy)
        }
    }
}
