import Crypto
import Foundation
import KilnInstances
import KilnModel
import KilnOCI
import KilnSystem
import KilnTOE
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// An image recipe's machine image (AMI): after BUILD made its root filesystem in runc, the
/// disk is assembled from it (`MachineDisk`), TEST boots a copy-on-write overlay of it in QEMU
/// and runs the components' test phases and Kiln's suites over SSH, and DISTRIBUTE copies the
/// disk into each region's image store, verified by digest.
extension PipelineRun {
    /// The root volume when the recipe's blockDeviceMappings name none, as a typical AMI's.
    static let defaultVolumeGiB = 8

    /// Why the parent cannot make a machine image (it has no kernel), or nil when it can.
    func kernelRefusal(parent: Descriptor, name: String) throws -> String? {
        let boot = (try? ImageFiles(image: parent, host: host).list("/boot")) ?? []
        if boot.contains(where: { $0.hasPrefix("vmlinuz-") }) { return nil }
        return
            "the parent image \(name) has no kernel (no /boot/vmlinuz-*), so an image recipe cannot make a bootable disk from it; use bootstrap:debian:bookworm:vm (kiln image pull bootstrap:debian:bookworm:vm makes it), an image ARN of a machine image Kiln built, or a container recipe for a container image"
    }

    /// The recipe fields a disk has no use for, said once in the log.
    func ignoredVolumeFields(_ recipe: PipelineSelection.Recipe) -> [String] {
        var ignored: [String] = []
        let root = recipe.blockDeviceMappings.firstIndex { $0.ebs?.volumeSize != nil }
        for (index, mapping) in recipe.blockDeviceMappings.enumerated() {
            let prefix = "blockDeviceMappings[\(index)]"
            if mapping.ebs?.volumeSize != nil, index != root { ignored.append("\(prefix).ebs.volumeSize (the disk has one volume)") }
            let ebs = mapping.ebs
            let named: [(String, Bool)] = [
                ("volumeType", ebs?.volumeType != nil), ("iops", ebs?.iops != nil), ("throughput", ebs?.throughput != nil),
                ("encrypted", ebs?.encrypted != nil), ("kmsKeyId", ebs?.kmsKeyId != nil), ("snapshotId", ebs?.snapshotId != nil),
                ("deleteOnTermination", ebs?.deleteOnTermination != nil),
            ]
            ignored += named.filter(\.1).map { "\(prefix).ebs.\($0.0)" }
            if mapping.virtualName != nil { ignored.append("\(prefix).virtualName") }
            if mapping.noDevice != nil { ignored.append("\(prefix).noDevice") }
        }
        return ignored
    }

    /// BUILD's last step: the built root filesystem becomes `disk.raw` and `disk.qcow2` beside
    /// the image's logs. Nil when the image FAILED.
    func assembleDisk(_ prepared: Prepared, built: Descriptor, image: ImageRun) async throws -> MachineDisk? {
        let recipe = prepared.recipe
        let volume = recipe.rootVolumeGiB ?? Self.defaultVolumeGiB
        let ignored = ignoredVolumeFields(recipe)
        if !ignored.isEmpty { image.progress("BUILD: disk: ignored (no meaning for a disk file): \(ignored.joined(separator: ", "))") }
        let folder = (image.record.logDirectory as NSString).deletingLastPathComponent + "/disk"
        image.progress("BUILD: disk: assembling a \(volume) GiB GPT disk from \(built.digest.encoded.prefix(12))")
        let start = ContinuousClock.now
        let disk: MachineDisk
        let progress = image.progress
        do {
            disk = try await ImageRootView.with(image: built, host: host) { root in
                try await MachineDisk.assemble(
                    rootFilesystem: root, volumeSizeGiB: volume, into: folder, name: "disk", scratchTree: true,
                    observer: { progress("BUILD: disk: \($0)") })
            }
        } catch let error as KilnError {
            _ = try image.fail(.build, step: "disk", error.message)
            return nil
        }
        let seconds = (ContinuousClock.now - start).inSeconds
        image.record.timings.append(.init(stage: "ASSEMBLE", seconds: seconds))
        // Kiln's own work on the host: metered as the builder's instance type for that long.
        image.charge("disk-assembly", ContainerInstance.Usage(seconds: seconds, cpuSeconds: seconds))
        let (digest, bytes) = try DiskImageStore.sha256(of: disk.qcow2)
        var machine = MachineImage(
            amiId: MachineImage.amiId(forArn: image.record.arn) { Array(SHA256.hash(data: $0)) }, disk: disk.qcow2, format: "qcow2",
            digest: digest, bytes: bytes, virtualSize: disk.sizeBytes)
        machine.raw = disk.raw
        machine.kernelRelease = disk.kernelRelease
        image.record.machineImage = machine
        try image.save()
        image.progress(
            "BUILD: disk: \(machine.amiId) \(disk.qcow2) (\(bytes >> 20) MiB qcow2, \(volume) GiB, kernel \(disk.kernelRelease))")
        return disk
    }

    /// TEST for a machine image: one VM boot serves the components' test phases and the suites.
    /// Whether the image passed (or was not tested); false when it FAILED.
    func machineTestStage(
        _ prepared: Prepared, built: (image: Descriptor, parent: Descriptor, builder: RecipeBuilder), disk: MachineDisk, image: ImageRun
    ) async throws -> Bool {
        let pipeline = prepared.selection.pipeline
        guard pipeline.imageTestsConfiguration?.imageTestsEnabled ?? true else { return true }
        try image.enter(.testing)
        let folder = image.record.logDirectory + "/test"
        try? FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        let suites = pipeline.kilnTests ?? KilnTests()
        let bootLimit = Duration.seconds(suites.functionality?.bootSeconds ?? 300)
        let serialLog = folder + "/serial.log"
        let scratch = host.dataDirectory + "/tmp/" + ProcessOwner.temporaryName("vm-files-")
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let options = VirtualMachineOptions(
            instanceType: prepared.type, sshTimeout: bootLimit, forwardedGuestPort: suites.health?.httpPort, serialLog: serialLog,
            scratchDirectory: host.dataDirectory + "/tmp")
        let parentLayers = try transfer.store.image(built.parent.digest).manifest.layers.count
        let testable = prepared.components.filter { $0.run.document.phases.contains { $0.name == "test" } }
        let builder = built.builder
        let start = ContinuousClock.now
        let progress = image.progress
        let network = builder.network
        let host = self.host
        let type = prepared.type
        let label = image.record.arn
        defer {
            image.charge("test", ContainerInstance.Usage(seconds: (ContinuousClock.now - start).inSeconds, cpuSeconds: 0))
            image.record.machineImage?.serialLog = serialLog
        }
        do {
            let (results, boot, extra) = try await image.timed(.test) {
                try await VirtualMachine.withBooted(disk: disk, options: options, observer: { progress("TEST: vm: \($0)") }) { machine in
                    let session = VirtualMachineSession(machine: machine, scratch: scratch)
                    var results: [TestCaseResult] = []
                    if !testable.isEmpty {
                        progress("TEST: components' test phases over SSH in the \(session.displayName)")
                        do {
                            let outcome = try await builder.runTOE(testable, phases: ["test"], in: session, folder: folder, stage: "TEST")
                            results += RecipeBuilder.results(of: outcome, suite: { "component \($0)" })
                        } catch {
                            results.append(
                                TestCaseResult(
                                    suite: "components", name: "test phases", status: .failed,
                                    message: (error as? KilnError)?.message ?? "\(error)", seconds: 0))
                        }
                    }
                    let (suiteResults, extra) = await ImageTestSuites(
                        settings: suites, host: host, type: type, parentLayerCount: parentLayers, progress: progress, network: network
                    ).runMachine(image: built.image, machine: machine, session: session, bootLimit: bootLimit)
                    return (results + suiteResults, (machine.bootSeconds, machine.accelerator.rawValue), extra)
                }
            }
            for usage in extra { image.charge("test", usage) }
            image.record.machineImage?.bootSeconds = boot.0
            image.record.machineImage?.accelerator = boot.1
            try TestReportWriter.write(results, image: label, to: folder)
            image.record.testResults = folder + "/junit.xml"
            let failed = results.filter { $0.status == .failed }
            image.progress(
                "TEST: \(results.count - failed.count - results.filter { $0.status == .skipped }.count) passed, \(failed.count) failed; \(folder)/junit.xml"
            )
            if let first = failed.first {
                _ = try image.fail(.test, step: "\(first.suite)/\(first.name)", log: folder + "/junit.xml", first.message)
                return false
            }
            return true
        } catch let error as KilnError {
            // The boot itself failed: the reason carries the serial console's tail.
            _ = try image.fail(.test, step: "boot", log: serialLog, error.message)
            return false
        }
    }

    /// The regions an image recipe's disk goes to, with each one's name, description and tags.
    /// A region without an image store FAILS the image, naming it.
    func amiTargets(_ prepared: Prepared, image: ImageRun) throws -> [AmiTarget]? {
        var targets: [AmiTarget] = []
        let buildDate = Self.buildDateFormatter.string(from: Date())
        let buildVersion = "\(image.record.version)/\(image.record.build)"
        for entry in prepared.selection.distribution?.distributions ?? [] {
            guard let ami = entry.amiDistributionConfiguration else { continue }
            guard configuration.regions[entry.region]?.imageStore != nil else {
                _ = try image.fail(
                    .distribute, region: entry.region,
                    "region \(entry.region) has no image store for machine images; add regions.\(entry.region).imageStore ({directory: PATH} or {s3: {endpoint, bucket, …}}) to kiln.yaml"
                )
                return nil
            }
            let ignored = [
                ("targetAccountIds", ami.targetAccountIds != nil), ("kmsKeyId", ami.kmsKeyId != nil),
                ("launchPermission", ami.launchPermission != nil),
            ].filter(\.1).map(\.0)
            if !ignored.isEmpty {
                image.progress(
                    "DISTRIBUTE: \(entry.region): amiDistributionConfiguration \(ignored.joined(separator: ", ")) ignored (no accounts or keys in an image store)"
                )
            }
            func fill(_ text: String) -> String {
                text.replacingOccurrences(of: #"\{\{\s*imagebuilder:buildDate\s*\}\}"#, with: buildDate, options: .regularExpression)
                    .replacingOccurrences(of: #"\{\{\s*imagebuilder:buildVersion\s*\}\}"#, with: buildVersion, options: .regularExpression)
            }
            var tags = prepared.recipe.amiTags
            tags.merge(ami.amiTags ?? [:]) { _, distribution in distribution }
            targets.append(
                AmiTarget(
                    region: entry.region, name: fill(ami.name ?? "\(image.record.name)-\(buildDate)"),
                    description: ami.description.map(fill),
                    tags: tags.isEmpty ? nil : tags))
        }
        return targets
    }

    /// `yyyyMMddHHmmss` in UTC: a date that fits an AMI name's characters.
    static let buildDateFormatter: DateFormatter = {
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone(identifier: "UTC")
        formatter.dateFormat = "yyyyMMddHHmmss"
        return formatter
    }()

    /// DISTRIBUTE for the disk: a copy into every target region's image store, each read back by
    /// digest, with a `<ami>.json` beside it saying what it is. A region that already holds a
    /// verified copy (a retry) is not copied again. The failed region, or nil.
    func distributeDisk(_ record: inout ImageRecord, progress: @escaping @Sendable (String) -> Void) async throws -> (
        region: String, reason: String
    )? {
        guard var machine = record.machineImage, let targets = record.amiTargets, !targets.isEmpty else { return nil }
        let start = ContinuousClock.now
        defer { record.timings.append(.init(stage: "DISTRIBUTE-DISK", seconds: (ContinuousClock.now - start).inSeconds)) }
        for target in targets {
            try Task.checkCancellation()
            if (machine.copies ?? []).contains(where: { $0.region == target.region && $0.digest == machine.digest }) {
                progress("DISTRIBUTE: \(target.region): \(machine.amiId) already copied and verified")
                continue
            }
            guard let store = configuration.regions[target.region]?.imageStore else {
                return (target.region, "region \(target.region) has no imageStore in kiln.yaml")
            }
            let base = "\(record.name)/\(record.version)/\(record.build)/\(machine.amiId)"
            progress("DISTRIBUTE: \(target.region): copying \(machine.amiId) (\(machine.bytes >> 20) MiB qcow2) as '\(target.name)'")
            do {
                let total = max(machine.bytes, 1)
                let shown = Mutex(Int64(0))
                let copy = try await DiskImageStore.copy(
                    machine.disk, name: base + ".qcow2", digest: machine.digest, region: target.region, to: store, format: machine.format
                ) { sent in
                    // A line per quarter: plain log lines, whatever the terminal.
                    let quarter = sent * 4 / total
                    guard
                        shown.withLock({
                            guard quarter > $0 else { return false }
                            $0 = quarter
                            return true
                        })
                    else { return }
                    progress("DISTRIBUTE: \(target.region): \(sent >> 20) of \(total >> 20) MiB")
                }
                let about = try describe(record, machine: machine, target: target)
                defer { unlink(about.path) }
                _ = try await DiskImageStore.copy(
                    about.path, name: base + ".json", digest: about.digest, region: target.region, to: store, format: "json")
                machine.copies = (machine.copies ?? []).filter { $0.location != copy.location } + [copy]
                record.machineImage = machine
                var ledger = record.ledger ?? CostLedger()
                var blobs = ledger.regions.first { $0.region == target.region }?.blobs ?? [:]
                blobs[copy.digest] = copy.bytes
                ledger.distributed(to: target.region, blobs: blobs, sentBytes: copy.bytes)
                record.ledger = ledger
                try records.save(record)
                progress("DISTRIBUTE: \(target.region): \(copy.location) verified (\(copy.digest))")
                if let repository = configuration.regions[target.region]?.containerDiskRepository,
                    let region = configuration.regions[target.region]
                {
                    let path = [region.repositoryPrefix, repository].compactMap { $0 }.joined(separator: "/")
                    let reference = try ImageReference("\(region.registry)/\(path):\(record.version)")
                    progress("DISTRIBUTE: \(target.region): pushing the KubeVirt containerDisk \(reference)")
                    let pushed = try await ContainerDisk.push(
                        qcow2: machine.disk, transfer: transfer, name: "\(record.name)-containerdisk:\(record.version)-\(record.build)",
                        to: [reference])
                    machine.containerDisks = (machine.containerDisks ?? []).filter { !$0.hasPrefix("\(reference)@") } + pushed.references
                    record.machineImage = machine
                    try records.save(record)
                    progress("DISTRIBUTE: \(target.region): containerDisk \(pushed.references.joined(separator: ", "))")
                }
            } catch let error as KilnError {
                return (target.region, error.message)
            }
        }
        return nil
    }

    /// The metadata file beside a region's disk: the AMI's id, name, description, tags and source.
    private func describe(_ record: ImageRecord, machine: MachineImage, target: AmiTarget) throws -> (path: String, digest: String) {
        var about: [String: String] = [
            "imageId": machine.amiId, "name": target.name, "sourceImageArn": record.arn, "format": machine.format, "digest": machine.digest,
            "virtualSize": String(machine.virtualSize),
        ]
        if let description = target.description { about["description"] = description }
        if let kernel = machine.kernelRelease { about["kernelRelease"] = kernel }
        var document: [String: Any] = about
        if let tags = target.tags { document["tags"] = tags }
        let data = try JSONSerialization.data(withJSONObject: document, options: [.prettyPrinted, .sortedKeys])
        try FileManager.default.createDirectory(atPath: host.dataDirectory + "/tmp", withIntermediateDirectories: true)
        let path = host.dataDirectory + "/tmp/" + ProcessOwner.temporaryName("ami-json-")
        try data.write(to: URL(fileURLWithPath: path))
        return (path, try DiskImageStore.sha256(of: path).digest)
    }
}
