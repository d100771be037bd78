import Foundation
import KilnInstances
import KilnModel
import KilnOCI
import KilnTOE

/// The BUILD and TEST stages of a container recipe: the Dockerfile template's instructions and
/// the components' phases, applied in template order in a builder instance, then a snapshot;
/// and the components' test phases in a fresh instance from the result.
struct RecipeBuilder: Sendable {
    /// A step that failed: which, where its log is, and why.
    struct StepFailure: Error {
        var step: String
        var log: String?
        var reason: String
    }

    let host: InstanceHost
    /// `name/x.y.z` of the recipe, for history (never the build number, so rebuilds match).
    let recipeLabel: String
    let template: DockerfileTemplate
    let components: [(ComponentDefinition, TOEDocumentRun)]
    let type: InstanceType
    let logRoot: String
    let context: String
    let sourceDateEpoch: Int64?
    let progress: @Sendable (String) -> Void

    /// What the instructions set on the image, gathered while building.
    struct ImageSettings {
        var environment: [String: String] = [:]
        var arguments: [String: String] = [:]
        var workingDir: String?
        var user: String?
        var history: [String] = []
        var snapshot: ContainerInstance.SnapshotSettings
    }

    func build(parent: Descriptor, as name: String, keepOnFailure: Bool) async throws -> Descriptor {
        let instance = try await ContainerInstance.start(image: parent, on: host, options: InstanceOptions(type: type, network: .host), name: name)
        progress("BUILD: builder \(instance.id) (\(type.name)) from \(parent.digest.encoded.prefix(12))")
        var settings = ImageSettings(snapshot: .init(history: "kiln build \(recipeLabel)", sourceDateEpoch: sourceDateEpoch))
        do {
            for step in template.steps {
                try await apply(step, in: instance, settings: &settings)
            }
            settings.snapshot.environment = settings.environment
            settings.snapshot.workingDir = settings.workingDir
            settings.snapshot.user = settings.user
            settings.snapshot.steps = settings.history
            let image = try instance.snapshot(as: name, settings: settings.snapshot)
            progress("BUILD: snapshot \(image.digest)")
            await instance.destroy()
            return image
        } catch {
            if keepOnFailure {
                try? instance.keep()
                progress("BUILD: kept \(instance.id) for debugging (terminateInstanceOnFailure: false); kiln instance shell \(instance.id)")
            } else {
                await instance.destroy()
            }
            if let failure = error as? StepFailure { throw failure }
            throw StepFailure(step: "snapshot", log: nil, reason: (error as? KilnError)?.message ?? "\(error)")
        }
    }

    private func apply(_ step: DockerfileTemplate.Step, in instance: ContainerInstance, settings: inout ImageSettings) async throws {
        let session = instance.session
        let place = "line \(step.line)"
        switch step.instruction {
        case .from, .environments, .shell:
            break
        case .components:
            try await runComponents(phases: ["build", "validate"], in: session, folder: logRoot + "/build", stage: "BUILD")
            settings.history += components.map { "kiln component \($0.0.name)/\($0.0.semanticVersion)" }
        case .run(let command):
            progress("BUILD: RUN \(command.joined(separator: " ").prefix(100))")
            var environment = settings.arguments
            environment.merge(settings.environment) { _, new in new }
            let output = LineEcho(prefix: "BUILD: ", progress: progress)
            let result = try await session.exec(ExecRequest(
                executable: command[0], arguments: Array(command.dropFirst()), environment: environment,
                workingDirectory: settings.workingDir, user: settings.user
            )) { _, bytes in output.append(bytes) }
            output.flush()
            guard result.exitCode == 0 else {
                throw StepFailure(step: "RUN at \(place)", log: nil, reason: "the command exited with \(result.exitCode): \(output.tail)")
            }
            settings.history.append("RUN " + command.joined(separator: " "))
        case .env(let pairs):
            for pair in pairs { settings.environment[pair.name] = pair.value }
        case .arg(let name, let value):
            settings.arguments[name] = value ?? ""
        case .workdir(let path):
            let absolute = path.hasPrefix("/") ? path : (settings.workingDir ?? "/") + "/" + path
            try await session.createDirectory(absolute, mode: 0o755)
            settings.workingDir = absolute
        case .user(let user):
            settings.user = user
        case .entrypoint(let command):
            settings.snapshot.entrypoint = command
        case .cmd(let command):
            settings.snapshot.cmd = command
        case .label(let pairs):
            for pair in pairs { settings.snapshot.labels[pair.name] = pair.value }
        case .expose(let ports):
            settings.snapshot.exposedPorts += ports
        case .volume(let paths):
            settings.snapshot.volumes += paths
        case .stopSignal(let signal):
            settings.snapshot.stopSignal = signal
        case .healthcheck:
            settings.history.append("HEALTHCHECK (recorded; Kiln's own tests check health)")
        case .copy(let sources, let destination, let owner), .add(let sources, let destination, let owner):
            try await copy(sources, to: destination, owner: owner, into: session, workingDir: settings.workingDir, place: place)
            settings.history.append("COPY \(sources.joined(separator: " ")) \(destination)")
        }
    }

    /// COPY from the context folder; sources must stay inside it.
    private func copy(_ sources: [String], to destination: String, owner: String?, into session: ContainerSession, workingDir: String?, place: String) async throws {
        let contextRoot = URL(fileURLWithPath: context).standardizedFileURL.path
        let target = destination.hasPrefix("/") ? destination : (workingDir ?? "/") + "/" + destination
        let intoFolder = destination.hasSuffix("/") || sources.count > 1
        for source in sources {
            let hostPath = URL(fileURLWithPath: contextRoot + "/" + source).standardizedFileURL.path
            guard hostPath == contextRoot || hostPath.hasPrefix(contextRoot + "/") else {
                throw StepFailure(step: "COPY at \(place)", log: nil, reason: "'\(source)' is outside the build context \(contextRoot)")
            }
            var isDirectory: ObjCBool = false
            guard FileManager.default.fileExists(atPath: hostPath, isDirectory: &isDirectory) else {
                throw StepFailure(step: "COPY at \(place)", log: nil, reason: "'\(source)' does not exist in the build context \(contextRoot)")
            }
            let name = (hostPath as NSString).lastPathComponent
            let destinationPath = isDirectory.boolValue ? target : (intoFolder ? target + "/" + name : target)
            try await copyTree(hostPath, to: destinationPath, isDirectory: isDirectory.boolValue, session: session)
            if let owner {
                let parts = owner.split(separator: ":").map(String.init)
                try await session.setOwner(destinationPath, owner: parts.first, group: parts.count > 1 ? parts[1] : parts.first, recursive: true)
            }
        }
    }

    private func copyTree(_ hostPath: String, to path: String, isDirectory: Bool, session: ContainerSession) async throws {
        if isDirectory {
            try await session.createDirectory(path, mode: 0o755)
            for child in try FileManager.default.contentsOfDirectory(atPath: hostPath).sorted() {
                var childIsDirectory: ObjCBool = false
                FileManager.default.fileExists(atPath: hostPath + "/" + child, isDirectory: &childIsDirectory)
                try await copyTree(hostPath + "/" + child, to: path + "/" + child, isDirectory: childIsDirectory.boolValue, session: session)
            }
        } else {
            try await session.createDirectory((path as NSString).deletingLastPathComponent, mode: 0o755)
            let attributes = try FileManager.default.attributesOfItem(atPath: hostPath)
            let mode = (attributes[.posixPermissions] as? NSNumber)?.uint32Value ?? 0o644
            try await session.writeFile(path, contents: try Data(contentsOf: URL(fileURLWithPath: hostPath)), append: false, mode: mode)
            try await session.setPermissions(path, mode: mode, recursive: false)
        }
    }

    /// Runs the components' `phases` as one TOE run; a failure names the component and step.
    private func runComponents(phases: [String], in session: any InstanceSession, folder: String, stage: String) async throws {
        guard !components.isEmpty else { return }
        let log = try TOELogWriter(folder: folder, echo: { progress("\(stage): \($0)") })
        try? TOELogFolder.writeDocuments(components.map(\.1.document), to: folder)
        let outcome = await TOERunner(session: session, options: TOEOptions()).run(
            TOERunRequest(documents: components.map(\.1), phases: phases), log: log, resume: nil
        )
        try? TOELogFolder.writeResults(outcome, to: folder)
        guard outcome.succeeded else {
            let failedDocument = outcome.report.documents.first { $0.status == .failed }
            let failedPhase = failedDocument?.phases.first { $0.status == .failed }
            let failedStep = failedPhase?.steps.first { $0.status == .failed }
            let step = [failedDocument?.name, failedPhase?.name, failedStep?.name].compactMap { $0 }.joined(separator: "/")
            throw StepFailure(step: step.isEmpty ? "components" : step, log: folder, reason: failedStep?.failureMessage ?? outcome.report.failureMessage)
        }
    }

    /// TEST: a fresh instance from the new image, without network, runs every test phase.
    func test(image: Descriptor, keepOnFailure: Bool) async throws {
        let testable = components.filter { $0.1.document.phases.contains { $0.name == "test" } }
        guard !testable.isEmpty else {
            progress("TEST: no component has a test phase")
            return
        }
        let instance = try await ContainerInstance.start(image: image, on: host, options: InstanceOptions(type: type, network: .none))
        progress("TEST: test instance \(instance.id) from \(image.digest.encoded.prefix(12))")
        do {
            try await RecipeBuilder(host: host, recipeLabel: recipeLabel, template: template, components: testable, type: type, logRoot: logRoot, context: context, sourceDateEpoch: sourceDateEpoch, progress: progress)
                .runComponents(phases: ["test"], in: instance.session, folder: logRoot + "/test", stage: "TEST")
            await instance.destroy()
        } catch {
            if keepOnFailure { try? instance.keep() } else { await instance.destroy() }
            throw error
        }
    }
}

/// Program output as progress lines, and the last lines for a failure message.
final class LineEcho: @unchecked Sendable {
    private let lock = NSLock()
    private var pending = Data()
    private var lines: [String] = []
    let prefix: String
    let progress: @Sendable (String) -> Void

    init(prefix: String, progress: @escaping @Sendable (String) -> Void) {
        self.prefix = prefix
        self.progress = progress
    }

    func append(_ bytes: [UInt8]) {
        lock.lock()
        pending.append(contentsOf: bytes)
        var complete: [String] = []
        while let newline = pending.firstIndex(of: 10) {
            complete.append(String(decoding: pending[pending.startIndex..<newline], as: UTF8.self))
            pending.removeSubrange(pending.startIndex...newline)
        }
        lines = Array((lines + complete).suffix(5))
        lock.unlock()
        complete.forEach { progress(prefix + $0) }
    }

    func flush() {
        lock.lock()
        let rest = String(decoding: pending, as: UTF8.self)
        pending.removeAll()
        if !rest.isEmpty { lines = Array((lines + [rest]).suffix(5)) }
        lock.unlock()
        if !rest.isEmpty { progress(prefix + rest) }
    }

    var tail: String {
        lock.lock()
        defer { lock.unlock() }
        return lines.joined(separator: " | ")
    }
}
