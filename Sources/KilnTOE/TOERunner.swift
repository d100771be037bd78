import Foundation
import KilnModel

/// Runs component documents with AWSTOE's semantics (reference §2.2–2.7) against one instance.
public struct TOERunner: Sendable {
    public let session: any InstanceSession
    public let options: TOEOptions
    /// Nesting limit of ExecuteDocument: 3 levels below the top document.
    public static let maxNestingDepth = 3

    public init(session: any InstanceSession, options: TOEOptions = TOEOptions()) {
        self.session = session
        self.options = options
    }

    /// Runs every document in order. A document that fails stops the run.
    public func run(_ request: TOERunRequest, log: TOELogWriter, resume: TOEResumeState? = nil) async -> TOERunOutcome {
        let transfers = TransferClients(s3: S3Configuration(environment: options.environment))
        var report =
            resume?.report
            ?? RunReport(
                executionId: request.executionId, status: .success, startTime: TOETime.rfc3339(Date()), endTime: "",
                failureMessage: "", documents: []
            )
        var progress = RunProgress(rebootCount: resume?.rebootCount ?? 0)
        let chaining = ChainingLog()
        if let resume { log.info("Resuming execution \(resume.executionId) after reboot \(resume.rebootCount)") }
        let scratch: Result<String, KilnError>
        do {
            if let parent = options.workingDirectory {
                try await session.createDirectory(parent, mode: 0o755)
                let folder = parent.hasSuffix("/") ? parent + "kiln-toe-" + UUID().uuidString : parent + "/kiln-toe-" + UUID().uuidString
                try await session.createDirectory(folder, mode: 0o700)
                scratch = .success(folder)
            } else {
                scratch = .success(try await session.makeScratchDirectory())
            }
        } catch {
            scratch = .failure(KilnError(.ioFailure, "no scratch folder for scripts in the \(session.displayName): \(error)"))
        }
        let firstDocument = resume?.cursor.document ?? 0
        let outputBudget = OutputBudget()
        documents: for index in firstDocument..<request.documents.count {
            let cursor = index == firstDocument ? resume?.cursor : nil
            let frame = DocumentFrame(
                depth: 0, ancestry: [await documentIdentity(request.documents[index].document.source)], executionId: request.executionId,
                transfers: transfers, chaining: chaining, scratch: scratch, outputBudget: outputBudget
            )
            let result = await runDocument(
                request.documents[index], phases: request.phases, frame: frame, log: log, cursor: cursor, progress: &progress)
            switch result {
            case .finished(let documentReport, _):
                report.documents.append(documentReport)
                if documentReport.status == .failed {
                    report.failureMessage = "Document \(documentReport.filePath) failed!"
                    break documents
                }
            case .rebootPending(var cursor):
                cursor.document = index
                let state = TOEResumeState(
                    executionId: report.executionId, documentSources: request.documents.map(\.document.source),
                    phases: request.phases, logFolder: log.folder, report: report, cursor: cursor, rebootCount: progress.rebootCount
                )
                log.info("TOE stopped for a reboot; run the same command again after the instance restarts to resume")
                return TOERunOutcome(
                    report: report, summary: RunSummary(report: report, logUrl: log.folder ?? "", rebootPending: true), rebootPending: true,
                    resumeState: state, chaining: chaining.all)
            }
        }
        if case .success(let folder) = scratch { try? await session.remove(folder, recursive: true) }
        report.status = AggregateStatus.combining(report.documents.map(\.status))
        report.endTime = TOETime.rfc3339(Date())
        if report.status.succeeded {
            log.info("TOE has completed execution successfully")
        } else {
            log.info("TOE has completed execution with failure - Execution failed!")
        }
        return TOERunOutcome(
            report: report, summary: RunSummary(report: report, logUrl: log.folder ?? "", rebootPending: false), rebootPending: false,
            resumeState: nil, chaining: chaining.all)
    }

    // MARK: Documents and phases

    struct RunProgress {
        var rebootCount: Int
    }

    struct DocumentFrame: Sendable {
        var depth: Int
        /// Sources of the documents that led here, for cycle detection.
        var ancestry: [String]
        var executionId: String
        var transfers: TransferClients
        var chaining: ChainingLog
        /// The run's private scratch folder in the instance (shared by nested documents).
        var scratch: Result<String, KilnError>
        /// Step output the run keeps in its reports, shared with nested documents.
        var outputBudget: OutputBudget
        var inLoop = false
    }

    enum DocumentResult: Sendable {
        case finished(DocumentReport, ChainStore)
        case rebootPending(TOEResumeState.Cursor)
    }

    func runDocument(
        _ run: TOEDocumentRun, phases selection: [String]?, frame: DocumentFrame, log: TOELogWriter,
        cursor: TOEResumeState.Cursor?, progress: inout RunProgress
    ) async -> DocumentResult {
        let document = run.document
        let documentStart = cursor?.documentStart ?? TOETime.rfc3339(Date())
        log.info("Document \(document.source)")
        var documentReport = DocumentReport(
            name: document.name ?? "", filePath: document.source, status: .success, description: document.description ?? "",
            startTime: documentStart, endTime: "", failureMessage: "", phases: cursor?.documentPhases ?? []
        )
        let variables: [String: String]
        do {
            variables = try Self.variables(for: run)
        } catch {
            documentReport.status = .failed
            documentReport.failureMessage = "\(error)"
            documentReport.endTime = TOETime.rfc3339(Date())
            log.error("\(error)")
            return .finished(documentReport, ChainStore())
        }
        var scope = DocumentScope(
            variables: variables, phaseNames: Set(document.phases.map(\.name)), documentName: document.name ?? document.source,
            chain: cursor?.chain ?? ChainStore()
        )

        for (phaseIndex, phase) in document.phases.enumerated() {
            if let cursor, phaseIndex < cursor.phase { continue }
            if let selection, !selection.contains(phase.name) { continue }
            let resuming = cursor.map { $0.phase == phaseIndex } ?? false
            let phaseStart = resuming ? cursor!.phaseStart : TOETime.rfc3339(Date())
            if !resuming { log.info("Phase \(phase.name)") }
            var stepReports = resuming ? cursor!.phaseSteps : []
            var aborted = false
            var stepIndex = resuming ? cursor!.step : 0
            var conditionPassed = resuming ? cursor!.conditionPassed : false

            while stepIndex < phase.steps.count {
                let step = phase.steps[stepIndex]
                let outcome = await runStep(step, phase: phase.name, scope: scope, frame: frame, log: log, conditionPassed: conditionPassed)
                conditionPassed = false
                switch outcome {
                case .finished(let stepReport, let chained):
                    stepReports.append(stepReport)
                    if let chained {
                        scope.chain.record(phase: phase.name, step: step.name, inputs: chained.inputs, outputs: chained.outputs)
                    }
                    stepIndex += 1
                    if stepReport.status == .failed && step.onFailure == .abort {
                        aborted = true
                        stepIndex = phase.steps.count
                    }
                case .reboot(let stepReport, let rerun):
                    var problem: String?
                    if frame.depth > 0 {
                        // A nested document cannot be paused and resumed mid-way yet.
                        problem =
                            "\(phase.name)/\(step.name): a reboot inside a document run by ExecuteDocument is not supported yet; put the step that reboots in the top-level document"
                    } else {
                        progress.rebootCount += 1
                        if progress.rebootCount > options.maxReboots {
                            problem = "the instance asked to reboot \(progress.rebootCount) times; stopping (limit \(options.maxReboots))"
                        }
                    }
                    var disposition: RebootDisposition?
                    if problem == nil {
                        log.info("Rebooting the \(session.displayName)")
                        do {
                            disposition = try await session.reboot()
                        } catch {
                            problem = "reboot failed: \(error)"
                        }
                    }
                    guard let disposition else {
                        // The reboot cannot happen: the step fails and ends the document.
                        var failed = stepReport ?? StepReport.failure(step, message: "")
                        failed.status = .failed
                        failed.failureMessage = problem ?? ""
                        log.error(
                            failed.failureMessage.hasPrefix("\(phase.name)/")
                                ? failed.failureMessage : "\(phase.name)/\(step.name): \(failed.failureMessage)")
                        stepReports.append(failed)
                        aborted = true
                        stepIndex = phase.steps.count
                        continue
                    }
                    // The Reboot action is done once the instance restarts; a 194 step runs again.
                    if !rerun, let stepReport { stepReports.append(stepReport) }
                    let nextStep = rerun ? stepIndex : stepIndex + 1
                    switch disposition {
                    case .restarted:
                        log.info("The \(session.displayName) restarted")
                        conditionPassed = rerun
                        stepIndex = nextStep
                    case .deferred:
                        return .rebootPending(
                            TOEResumeState.Cursor(
                                document: 0, phase: phaseIndex, step: nextStep, conditionPassed: rerun, phaseSteps: stepReports,
                                phaseStart: phaseStart, documentPhases: documentReport.phases, documentStart: documentStart,
                                chain: scope.chain
                            ))
                    }
                }
            }

            let statuses = stepReports.map { AggregateStatus(step: $0.status) }
            let failedSteps = stepReports.filter { $0.status == .failed }.map(\.name)
            let phaseReport = PhaseReport(
                name: phase.name, status: AggregateStatus.combining(statuses), startTime: phaseStart, endTime: TOETime.rfc3339(Date()),
                failureMessage: failedSteps.isEmpty ? "" : "Step(s) \(failedSteps.joined(separator: ", ")) failed",
                steps: stepReports
            )
            documentReport.phases.append(phaseReport)
            if phaseReport.status == .failed, documentReport.failureMessage.isEmpty {
                documentReport.failureMessage = "Phase \(phase.name) failed: \(phaseReport.failureMessage)"
            }
            // Abort ends the document; Continue fails it but lets the later phases run.
            if aborted { break }
        }
        documentReport.status = AggregateStatus.combining(documentReport.phases.map(\.status))
        documentReport.endTime = TOETime.rfc3339(Date())
        return .finished(documentReport, scope.chain)
    }

    /// Parameter defaults, overridden by given values (unknown names are ignored, as in AWSTOE), plus constants.
    static func variables(for run: TOEDocumentRun) throws -> [String: String] {
        var values = try run.document.parameterValues(run.parameters)
        for constant in run.document.constants { values[constant.name] = constant.value }
        return values
    }

    // MARK: Steps

    struct DocumentScope: Sendable {
        var variables: [String: String]
        var phaseNames: Set<String>
        var documentName: String
        var chain: ChainStore

        func substitution(stepPath: String, loop: LoopBinding?) -> Substitution {
            Substitution(
                variables: variables, phaseNames: phaseNames, chain: chain, loop: loop, documentName: documentName, stepPath: stepPath)
        }
    }

    enum StepOutcome: Sendable {
        case finished(StepReport, ChainStore.Entry?)
        /// `report` is the finished step when it need not run again (the Reboot action).
        case reboot(StepReport?, rerun: Bool)
    }

    enum AttemptResult: Sendable {
        case success(
            outputs: [String: String], inputs: InputValue?, loop: LoopReport?, nested: [RunReport]?, chaining: [ChainingResolution])
        case reboot(outputs: [String: String], rerun: Bool)
        /// `outputs` holds what the successful loop iterations produced.
        case failure(message: String, loop: LoopReport?, nested: [RunReport]?, outputs: [String: String] = [:])
    }

    func runStep(_ step: Step, phase: String, scope: DocumentScope, frame: DocumentFrame, log: TOELogWriter, conditionPassed: Bool) async
        -> StepOutcome
    {
        let stepPath = "\(phase)/\(step.name)"
        log.info("Step \(step.name)")
        var report = StepReport.failure(step, message: "")
        report.status = .success
        report.inputs = Self.jsonArray(step.inputs)

        if let condition = step.condition, !conditionPassed {
            let substitution = scope.substitution(stepPath: stepPath, loop: nil)
            var ignored: [ChainingResolution] = []
            let branch: ConditionBranch
            do {
                let truth = try await ConditionEvaluator(session: session).evaluate(condition.expression) {
                    try substitution.apply($0, record: &ignored)
                }
                branch = truth ? condition.then : condition.otherwise
                log.debug("\(stepPath): condition is \(truth); \(branch.rawValue)")
            } catch {
                return .finished(
                    finishFailed(report, step: step, message: "condition could not be evaluated: \(error)", log: log, stepPath: stepPath),
                    nil)
            }
            switch branch {
            case .skip:
                report.status = .skipped
                report.endTime = TOETime.rfc3339(Date())
                log.info("Step \(step.name) skipped by its condition")
                return .finished(report, nil)
            case .abort:
                return .finished(
                    finishFailed(report, step: step, message: "the step's condition chose Abort", log: log, stepPath: stepPath), nil)
            case .execute:
                break
            }
        }

        var lastFailure = ""
        var partialOutputs: [String: String] = [:]
        for attempt in 1...step.maxAttempts {
            if attempt > 1 { log.info("\(stepPath): attempt \(attempt) of \(step.maxAttempts)") }
            let result: AttemptResult
            do {
                result = try await withStepTimeout(step.timeoutSeconds) {
                    await self.attempt(step, phase: phase, scope: scope, frame: frame, log: log)
                }
            } catch {
                let what =
                    step.loop == nil
                    ? "Step timed out after \(step.timeoutSeconds ?? 0) seconds"
                    : "loop run timed out after \(step.timeoutSeconds ?? 0) seconds"
                result = .failure(message: what, loop: nil, nested: nil)
            }
            switch result {
            case .success(let outputs, let inputs, let loop, let nested, let resolutions):
                frame.chaining.append(resolutions)
                report.outputs = Self.jsonArray(
                    outputs.isEmpty ? nil : .map(outputs.sorted { $0.key < $1.key }.map { .init(key: $0.key, value: .string($0.value)) }))
                if let inputs { report.inputs = Self.jsonArray(inputs) }
                report.loop = loop
                report.detailedOutput = nested
                report.endTime = TOETime.rfc3339(Date())
                return .finished(report, ChainStore.Entry(inputs: inputs, outputs: outputs))
            case .reboot(let outputs, let rerun):
                if rerun { return .reboot(nil, rerun: true) }
                report.outputs = Self.jsonArray(outputs.isEmpty ? nil : .map(outputs.map { .init(key: $0.key, value: .string($0.value)) }))
                report.endTime = TOETime.rfc3339(Date())
                return .reboot(report, rerun: false)
            case .failure(let message, let loop, let nested, let outputs):
                lastFailure = message
                report.loop = loop
                report.detailedOutput = nested
                partialOutputs = outputs
                if attempt < step.maxAttempts { log.info("\(stepPath): attempt \(attempt) failed: \(message); retrying") }
            }
        }
        // Successful loop iterations keep their outputs, for the report and for chaining.
        report.outputs = Self.jsonArray(
            partialOutputs.isEmpty
                ? nil : .map(partialOutputs.sorted { $0.key < $1.key }.map { .init(key: $0.key, value: .string($0.value)) }))
        let failed = finishFailed(report, step: step, message: lastFailure, log: log, stepPath: stepPath)
        let chained =
            partialOutputs.isEmpty || step.onFailure == .abort ? nil : ChainStore.Entry(inputs: step.inputs, outputs: partialOutputs)
        return .finished(failed, chained)
    }

    private func finishFailed(_ report: StepReport, step: Step, message: String, log: TOELogWriter, stepPath: String) -> StepReport {
        var report = report
        report.status = step.onFailure == .ignore ? .ignoredFailure : .failed
        report.failureMessage = message
        report.endTime = TOETime.rfc3339(Date())
        log.error(message.hasPrefix(stepPath) ? message : "\(stepPath): \(message)")
        if step.onFailure != .abort { log.info("onFailure is \(step.onFailure.rawValue); continuing") }
        return report
    }

    /// One attempt: every loop iteration, in order. A failed iteration does not stop the others.
    func attempt(_ step: Step, phase: String, scope: DocumentScope, frame: DocumentFrame, log: TOELogWriter) async -> AttemptResult {
        let stepPath = "\(phase)/\(step.name)"
        var chaining: [ChainingResolution] = []
        let bindings: [LoopBinding?]
        do {
            bindings =
                try step.loop.map {
                    try Self.iterations(
                        of: $0, substitution: scope.substitution(stepPath: stepPath, loop: nil), record: &chaining, stepPath: stepPath)
                } ?? [nil]
        } catch {
            return .failure(message: "\(error)", loop: nil, nested: nil)
        }
        var merged: [String: [String]] = [:]
        var failedIterations: [Int] = []
        var messages: [String] = []
        var lastInputs: InputValue?
        var nested: [RunReport] = []
        for (index, binding) in bindings.enumerated() {
            // A timeout cancels the attempt: no further iteration starts.
            if Task.isCancelled { break }
            if let binding { log.info("\(stepPath): loop iteration \(binding.index), value '\(binding.value)'") }
            let substitution = scope.substitution(stepPath: stepPath, loop: binding)
            do {
                let inputs = try step.inputs.map { try substitution.apply($0, record: &chaining) }
                lastInputs = inputs
                log.debug("\(stepPath) inputs: \(Self.jsonArray(inputs))")
                let context = ActionContext(
                    session: session, log: log, stepPath: stepPath, options: options,
                    scratchDirectory: frame.scratch.map { "\($0)/\(frame.executionId)/\(phase)-\(step.name)-\(index)" },
                    transfers: frame.transfers
                )
                let result = try await perform(
                    step, inputs: inputs, substitution: substitution, context: context, frame: frame, inLoop: binding != nil,
                    nested: &nested)
                switch result {
                case .completed(let outputs):
                    for (key, value) in outputs.sorted(by: { $0.key < $1.key }) {
                        merged[key, default: []].append(frame.outputBudget.keep(value, what: "\(stepPath) outputs.\(key)", log: log))
                    }
                case .rebootRequested(let outputs, let rerun):
                    return .reboot(outputs: outputs, rerun: rerun)
                }
            } catch {
                failedIterations.append(index)
                let message = Self.message(error)
                // Every failure names its step path, whichever layer raised it.
                messages.append(message.hasPrefix(stepPath) ? message : "\(stepPath): \(message)")
                if let binding { log.error("\(stepPath) iteration \(binding.index): \(message)") }
            }
        }
        let loopReport = step.loop.map { LoopReport(name: $0.name, iterations: bindings.count, failedIterations: failedIterations) }
        guard failedIterations.isEmpty else {
            let message =
                step.loop == nil
                ? messages.joined(separator: "; ")
                : "\(stepPath): loop iteration(s) \(failedIterations.map(String.init).joined(separator: ", ")) failed: \(messages.joined(separator: "; "))"
            return .failure(
                message: message, loop: loopReport, nested: nested.isEmpty ? nil : nested,
                outputs: merged.mapValues { $0.joined(separator: "\n") })
        }
        let outputs = merged.mapValues { $0.joined(separator: "\n") }
        return .success(outputs: outputs, inputs: lastInputs, loop: loopReport, nested: nested.isEmpty ? nil : nested, chaining: chaining)
    }

    static func message(_ error: Error) -> String {
        if let error = error as? KilnError { return error.message }
        return "\(error)"
    }

    func perform(
        _ step: Step, inputs: InputValue?, substitution: Substitution, context: ActionContext, frame: DocumentFrame,
        inLoop: Bool, nested: inout [RunReport]
    ) async throws -> ActionResult {
        switch step.action {
        case "Assert":
            guard let assertion = step.assertion else { throw context.failure("Assert has no expression") }
            var ignored: [ChainingResolution] = []
            let truth = try await ConditionEvaluator(session: session).evaluate(assertion) { try substitution.apply($0, record: &ignored) }
            guard truth else { throw context.failure("Assert failed: \(Self.describe(assertion, substitution: substitution)) is false") }
            context.log.info("Assert passed")
            return .completed([:])
        case "ExecuteDocument":
            var childFrame = frame
            childFrame.inLoop = inLoop
            return try await executeDocument(inputs, context: context, frame: childFrame, nested: &nested)
        default:
            guard let action = Self.actions[step.action] else {
                throw context.failure("action \(step.action) is not available on Linux", code: .unsupported)
            }
            return try await action.run(inputs, context: context)
        }
    }

    static let actions: [String: any TOEAction] = {
        var table: [String: any TOEAction] = [
            "ExecuteBash": ExecuteBashAction(), "ExecuteBinary": ExecuteBinaryAction(), "Reboot": RebootAction(),
            "UpdateOS": UpdateOSAction(), "WebDownload": WebDownloadAction(), "S3Download": S3DownloadAction(),
            "S3Upload": S3UploadAction(),
        ]
        for name in [
            "AppendFile", "CopyFile", "CopyFolder", "MoveFile", "MoveFolder", "CreateFile", "CreateFolder", "CreateSymlink",
            "DeleteFile", "DeleteFolder", "ListFiles", "ReadFile", "SetFileEncoding", "SetFileOwner", "SetFolderOwner",
            "SetFilePermissions", "SetFolderPermissions",
        ] {
            table[name] = FileAction(name: name)
        }
        return table
    }()

    // MARK: ExecuteDocument

    /// Runs a child document; its detailed report is appended to `nested` whether it passes or fails.
    func executeDocument(_ inputs: InputValue?, context: ActionContext, frame: DocumentFrame, nested: inout [RunReport]) async throws
        -> ActionResult
    {
        let reader = InputReader(value: inputs, action: "ExecuteDocument", stepPath: context.stepPath)
        let reference = try reader.required("document")
        guard frame.depth < Self.maxNestingDepth else {
            throw context.failure(
                "ExecuteDocument nesting is limited to \(Self.maxNestingDepth) levels; '\(reference)' would be level \(frame.depth + 1)")
        }
        let document = try await loadDocument(reference, context: context, owner: reader.string("document-s3-bucket-owner"))
        let identity = await documentIdentity(document.source)
        if !frame.inLoop, frame.ancestry.contains(identity) {
            throw context.failure(
                "ExecuteDocument cycle: '\(document.source)' is already running (\((frame.ancestry + [identity]).joined(separator: " → ")))"
            )
        }
        var parameters: [String: String] = [:]
        for item in reader.value?["parameters"]?.listValue ?? [] {
            if let name = item["name"]?.stringValue { parameters[name] = item["value"].map(Substitution.flatten) ?? "" }
        }
        let phases = reader.string("phases").map { $0.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) } }
        let childId = UUID().uuidString.lowercased()
        var childFrame = frame
        childFrame.depth += 1
        childFrame.ancestry = frame.ancestry + [identity]
        childFrame.executionId = childId
        var progress = RunProgress(rebootCount: 0)
        let result = await runDocument(
            TOEDocumentRun(document: document, parameters: parameters), phases: phases, frame: childFrame, log: context.log, cursor: nil,
            progress: &progress)
        guard case .finished(let documentReport, _) = result else {
            // The nested document needs a reboot: the ExecuteDocument step runs again afterwards.
            throw context.failure("ExecuteDocument: the child document asked for a reboot, which nested documents do not support yet")
        }
        var report = RunReport(
            executionId: childId, status: documentReport.status, startTime: documentReport.startTime, endTime: documentReport.endTime,
            failureMessage: documentReport.status == .failed ? "Document \(document.source) failed!" : "", documents: [documentReport]
        )
        report.status = documentReport.status
        let summary = RunSummary(report: report, logUrl: context.log.folder ?? "", rebootPending: false)
        let outputs = [
            "executionId": summary.executionId, "status": summary.status, "failureMessage": summary.failureMessage,
            "executedStepCount": String(summary.executedStepCount), "failedStepCount": String(summary.failedStepCount),
            "ignoredFailedStepCount": String(summary.ignoredFailedStepCount), "logUrl": summary.logUrl,
        ]
        nested.append(report)
        guard documentReport.status.succeeded else {
            throw context.failure("ExecuteDocument: \(report.failureMessage) \(documentReport.failureMessage)")
        }
        return .completed(outputs)
    }

    func loadDocument(_ reference: String, context: ActionContext, owner: String?) async throws -> ComponentDocument {
        let parser = ComponentDocumentParser()
        if reference.hasPrefix("arn:") {
            guard let resolver = options.componentResolver else {
                throw context.failure(
                    "ExecuteDocument: component ARNs need the Kiln server's component store; give a file path or s3:// URI here",
                    code: .unsupported)
            }
            return try await resolver.document(forARN: reference)
        }
        if reference.hasPrefix("s3://") {
            let temporary = try HostScratch.file("document.yaml")
            defer { try? FileManager.default.removeItem(atPath: temporary) }
            try await S3Client(configuration: context.transfers.s3, http: context.transfers.http)
                .download(try S3Location(reference), to: temporary, expectedOwner: owner, log: context.log)
            return try parser.parse(text: String(contentsOfFile: temporary, encoding: .utf8), source: reference)
        }
        guard let info = try await session.fileInfo(reference, followSymlinks: true), info.kind == .file else {
            throw context.failure("ExecuteDocument: document '\(reference)' does not exist in the \(session.displayName)", code: .notFound)
        }
        let text = String(decoding: try await session.readFile(reference), as: UTF8.self)
        return try parser.parse(text: text, source: reference)
    }

    // MARK: Helpers

    /// Local documents are compared by their canonical path, so `./a.yaml` and `/abs/a.yaml` are one document.
    func documentIdentity(_ source: String) async -> String {
        guard !source.hasPrefix("s3://"), !source.hasPrefix("arn:") else { return source }
        return (try? await session.canonicalPath(source)) ?? source
    }

    /// The loop's values; more than `StepLoop.maxIterations` (a range checked before it is made,
    /// a list that a chained output made long) fail the step.
    static func iterations(of loop: StepLoop, substitution: Substitution, record: inout [ChainingResolution], stepPath: String) throws
        -> [LoopBinding?]
    {
        let values: [String]
        switch loop.kind {
        case .range(let start, let end, let updateBy):
            guard StepLoop.rangeFits(start: start, end: end, updateBy: updateBy) else {
                let what = "loop from \(start) to \(end) by \(updateBy)"
                let count = StepLoop.rangeCount(start: start, end: end, updateBy: updateBy)
                throw KilnError(.invalidArgument, "\(stepPath): " + StepLoop.tooManyIterations(what, count: count, isRange: true))
            }
            values = stride(from: start, through: end, by: updateBy).map(String.init)
        case .list(let items):
            values = try items.map { try substitution.apply($0, record: &record) }
        case .delimited(let list, let delimiter):
            values = try substitution.apply(list, record: &record).components(separatedBy: delimiter)
        }
        guard values.count <= StepLoop.maxIterations else {
            throw KilnError(
                .invalidArgument, "\(stepPath): " + StepLoop.tooManyIterations("loop forEach", count: values.count, isRange: false))
        }
        return values.enumerated().map { LoopBinding(name: loop.name, index: $0.offset, value: $0.element) }
    }

    /// AWSTOE writes inputs and outputs as JSON-encoded arrays.
    static func jsonArray(_ value: InputValue?) -> String {
        guard let value else { return "[]" }
        let object: Any = { if case .list = value { return value.jsonObject } else { return [value.jsonObject] } }()
        guard let data = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes]) else {
            return "[]"
        }
        return String(decoding: data, as: UTF8.self)
    }

    static func describe(_ condition: Condition, substitution: Substitution) -> String {
        var ignored: [ChainingResolution] = []
        switch condition {
        case .and(let parts): return "(" + parts.map { describe($0, substitution: substitution) }.joined(separator: " and ") + ")"
        case .or(let parts): return "(" + parts.map { describe($0, substitution: substitution) }.joined(separator: " or ") + ")"
        case .not(let inner): return "not " + describe(inner, substitution: substitution)
        case .comparison(let comparison):
            let operand = (try? substitution.apply(comparison.operand, record: &ignored)) ?? comparison.operand
            guard let subject = comparison.subject else { return "\(comparison.op.rawValue) '\(operand)'" }
            let value = (try? substitution.apply(subject, record: &ignored)) ?? subject
            return "\(comparison.op.rawValue) '\(operand)' (\(comparison.op.subjectKey ?? "value") '\(value)')"
        }
    }
}

extension StepReport {
    static func failure(_ step: Step, message: String) -> StepReport {
        StepReport(
            name: step.name, action: step.action, status: .failed, failureMessage: message, timeoutSeconds: step.timeoutSecondsForLog,
            onFailure: step.onFailure.rawValue, maxAttempts: step.maxAttempts, startTime: TOETime.rfc3339(Date()), endTime: "",
            inputs: "[]", outputs: "[]", loop: nil, detailedOutput: nil
        )
    }
}

struct StepTimeout: Error {}

/// Runs `operation`, cancelling it (which kills any process it started) after `seconds`.
func withStepTimeout<T: Sendable>(_ seconds: Int?, _ operation: @escaping @Sendable () async throws -> T) async throws -> T {
    guard let seconds else { return try await operation() }
    return try await withThrowingTaskGroup(of: T?.self) { group in
        group.addTask { try await operation() }
        group.addTask {
            try await Task.sleep(for: .seconds(seconds))
            return nil
        }
        defer { group.cancelAll() }
        guard let first = try await group.next(), let value = first else { throw StepTimeout() }
        return value
    }
}
