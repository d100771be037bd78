import Foundation
import KilnEngine
import KilnInstances
import KilnModel
import KilnRegistry
import KilnStore
import Logging
import ServiceLifecycle
import Synchronization

/// What a queued build needs: the image's reserved ARN and build number, and a snapshot of
/// the resources it was started with, as Image Builder snapshots them.
struct BuildRequest: Codable, Sendable {
    var imageArn: String
    var build: Int
    var pipelineName: String
    var definitions: Definitions
}

/// The build queue's workers: they take queued builds from the store, at most
/// `maxConcurrentBuilds` at once, and run each through the engine. On SIGTERM they take no
/// more; the running builds are cancelled and end CANCELLED in their records.
final class BuildScheduler: Service, Sendable {
    let configuration: KilnConfiguration
    let store: SQLiteStore
    let records: any ImageRecords
    let host: InstanceHost
    let transfer: ImageTransfer
    let logger: Logger
    private let running = Mutex<[String: Task<Void, Never>]>([:])
    /// Images CancelImageCreation stopped, so their record says so.
    private let cancelled = Mutex<Set<String>>([])
    private let stopping = Atomic<Bool>(false)
    private let wake: AsyncStream<Void>.Continuation
    private let wakes: AsyncStream<Void>

    init(
        configuration: KilnConfiguration, store: SQLiteStore, records: any ImageRecords, host: InstanceHost, transfer: ImageTransfer,
        logger: Logger
    ) {
        self.configuration = configuration
        self.store = store
        self.records = records
        self.host = host
        self.transfer = transfer
        self.logger = logger
        (wakes, wake) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
    }

    /// Saves the PENDING record, then queues the build; both are in the store before the API answers.
    func enqueue(_ request: BuildRequest, record: ImageRecord) throws {
        try records.save(record)
        try store.enqueue(imageArn: request.imageArn, request: try JSONEncoder().encode(request))
        logger.info("queued \(request.imageArn) (pipeline \(request.pipelineName))")
        wake.yield()
    }

    /// Whether an image of `pipeline` is queued or building.
    func isRunning(pipeline: String) throws -> Bool {
        try store.records(pipeline: pipeline, offset: 0, limit: 1_000).items.contains { $0.isRunning }
    }

    /// Cancels a queued or running build; false when it is not running.
    func cancel(imageArn: String) async throws -> Bool {
        if try store.dequeue(imageArn: imageArn), var record = try store.record(arn: imageArn) {
            record.status = .cancelled
            record.failure = .init(stage: .build, reason: "cancelled before it started (CancelImageCreation)")
            try records.save(record)
            return true
        }
        guard let task = running.withLock({ $0[imageArn] }) else { return false }
        cancelled.withLock { _ = $0.insert(imageArn) }
        task.cancel()
        await task.value
        return true
    }

    /// RetryImage: DISTRIBUTE again for an image that failed there, without rebuilding.
    func retry(_ record: ImageRecord) throws {
        let task = Task { [self] in
            do {
                let run = try PipelineRun(configuration: configuration, host: host, transfer: transfer, records: records) { [logger] line in
                    logger.info("\(line)")
                }
                let result = try await run.distribute(record)
                logger.info("\(record.arn): retried distribution, \(result.status.rawValue)")
            } catch {
                logger.error("\(record.arn): retried distribution failed: \(error)")
            }
            running.withLock { $0[record.arn] = nil }
        }
        running.withLock { $0[record.arn] = task }
    }

    /// ImportDiskImage: the CREATING record is saved before the API answers; the disk is then
    /// fetched and imported in the background, ending AVAILABLE, or FAILED with the reason.
    func importDisk(_ record: ImageRecord, from source: DiskImport.Source, folder: String) throws {
        try records.save(record)
        let task = Task { [self] in
            var record = record
            let arn = record.arn
            let scratch = transfer.store.scratch + "/" + ProcessOwner.temporaryName("import-download-")
            defer { unlink(scratch) }
            do {
                let path = try await DiskImport.fetch(source, downloadingTo: scratch) { [logger] line in
                    logger.info("\(arn): \(line)")
                }
                let inspection = try await DiskImport.inspect(path)
                try await DiskImport.fill(&record, from: path, inspection: inspection, folder: folder, store: transfer.store) {
                    [logger] line in
                    logger.info("\(arn): \(line)")
                }
            } catch {
                record.status = .failed
                record.failure = .init(stage: .build, step: "import", reason: (error as? KilnError)?.message ?? "\(error)")
                logger.error("\(arn): import failed: \(record.failure!.reason)")
            }
            do { try records.save(record) } catch { logger.error("\(arn): cannot save the import's record: \(error)") }
            running.withLock { $0[arn] = nil }
        }
        running.withLock { $0[record.arn] = task }
    }

    /// After DeleteImage: the image's own disks in its folder and its name in Kiln's store go
    /// (kiln image gc then frees the blobs). Copies in regions stay, as AMIs outlive a deleted
    /// Image Builder image; the logs stay for the record of what ran.
    func releaseLocalArtifacts(of record: ImageRecord) {
        let folder = records.folder(name: record.name, version: record.version, build: record.build)
        for disk in [record.machineImage?.disk, record.machineImage?.raw].compactMap({ $0 }) where disk.hasPrefix(folder + "/") {
            if unlink(disk) == 0 { logger.info("\(record.arn) deleted: removed its disk \(disk)") }
        }
        if let localName = record.localName, (try? transfer.store.untag(localName)) == true {
            logger.info("\(record.arn) deleted: kiln:\(localName) untagged; kiln image gc frees its blobs")
        }
    }

    func run() async throws {
        for arn in try store.releaseDeadOwners() {
            logger.info("a dead Kiln's build of \(arn) is out of the queue; its record ended FAILED when the store opened")
        }
        let queued = try store.entries(state: .queued).count
        logger.info("build queue: \(queued) queued, up to \(configuration.maxConcurrentBuilds) at once")
        await withGracefulShutdownHandler {
            var iterator = wakes.makeAsyncIterator()
            while !stopping.load(ordering: .relaxed) {
                do {
                    while !stopping.load(ordering: .relaxed),
                        let entry = try store.claimNext(owner: .current, limit: configuration.maxConcurrentBuilds)
                    {
                        start(entry)
                    }
                } catch {
                    logger.error("cannot take a build from the queue: \(error)")
                }
                // A finished build or a new entry wakes the loop; a poll covers another process's queueing.
                let wakeUp = Task { [wake] in
                    try? await Task.sleep(for: .seconds(2))
                    wake.yield()
                }
                _ = await iterator.next()
                wakeUp.cancel()
            }
        } onGracefulShutdown: { [self] in
            stopping.store(true, ordering: .relaxed)
            wake.yield()
        }
        let tasks = running.withLock { Array($0.values) }
        if !tasks.isEmpty { logger.info("stopping: cancelling \(tasks.count) running build(s); they end CANCELLED") }
        for task in tasks { task.cancel() }
        for task in tasks { await task.value }
    }

    private func start(_ entry: QueuedBuild) {
        let task = Task { [self] in
            await build(entry)
            running.withLock { $0[entry.imageArn] = nil }
            try? store.finish(id: entry.id)
            wake.yield()
        }
        running.withLock { $0[entry.imageArn] = task }
    }

    private func build(_ entry: QueuedBuild) async {
        logger.info("building \(entry.imageArn)")
        do {
            let request = try JSONDecoder().decode(BuildRequest.self, from: entry.request)
            let selection = try request.definitions.selectPipeline(request.pipelineName, source: "the stored resources")
            let context = configuration.dataDirectory + "/server/context"
            try FileManager.default.createDirectory(atPath: context, withIntermediateDirectories: true)
            let run = try PipelineRun(configuration: configuration, host: host, transfer: transfer, records: records) { [logger] line in
                logger.info("\(line)")
            }
            var settings = PipelineRun.Settings(
                selection: selection, definitionsPath: context + "/definitions.yaml", contextDirectory: context)
            settings.reservedBuild = request.build
            let record = try await run.run(settings)
            if record.status == .cancelled, cancelled.withLock({ $0.remove(record.arn) }) != nil,
                var stopped = try store.record(arn: record.arn)
            {
                let stage = stopped.failure?.stage.rawValue ?? "the build"
                stopped.failure?.reason = "cancelled by CancelImageCreation during \(stage); its instances were removed"
                try records.save(stopped)
            } else if record.status == .cancelled, stopping.load(ordering: .relaxed), var stopped = try store.record(arn: record.arn) {
                let stage = stopped.failure?.stage.rawValue ?? "the build"
                stopped.failure?.reason = "cancelled: kiln server stopped (SIGTERM) during \(stage); start it again"
                try records.save(stopped)
            }
            logger.info("\(entry.imageArn): \(record.status.rawValue)")
        } catch {
            // The engine could not start (a reference or a parameter); the PENDING record says why.
            let reason = (error as? KilnError)?.message ?? "\(error)"
            if var record = try? store.record(arn: entry.imageArn), record.isRunning {
                record.status = Task.isCancelled ? .cancelled : .failed
                record.failure = .init(stage: record.status.stage, reason: reason)
                try? records.save(record)
            }
            logger.error("\(entry.imageArn) failed: \(reason)")
        }
    }
}
