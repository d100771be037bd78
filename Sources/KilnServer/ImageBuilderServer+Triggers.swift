import Foundation
import HTTPTypes
import Hummingbird
import KilnModel
import KilnScheduler
import KilnStore
import NIOCore

/// One line of `kiln pipeline history`: an event the scheduler settled, or a build started
/// some other way (StartImagePipelineExecution).
public struct PipelineHistoryEntry: Codable, Sendable, Hashable {
    public var time: String
    public var trigger: String
    public var detail: String
    /// `started`, `skipped`, or `pending` (waiting for its debounce window).
    public var outcome: String
    public var reason: String?
    public var imageArn: String?
    /// The image's state now, for started ones.
    public var imageStatus: String?
    public var resolved: [String]?
    public var packages: [PackageUpgrade]?
}

extension ImageBuilderServer {
    /// `POST /kiln/events/registry`: a distribution registry's notifications. The configured
    /// header must carry the shared secret; the pushes are stored before the answer, so a
    /// registry that got 200 lost nothing, and one that got an error sends again.
    func registryEvent(headers: [(name: String, value: String)], body: [UInt8], requestID: String) -> Response {
        let triggers = configuration.triggers
        guard let secret = triggers.registryEventSecret else {
            return send(
                APIError(
                    code: "ResourceNotFoundException", status: 404,
                    message: "registry notifications are off; set triggers.registryEvents.secret in kiln.yaml"
                ).response(requestID: requestID))
        }
        let presented = headers.first { $0.name.lowercased() == triggers.registryEventHeader.lowercased() }?.value ?? ""
        let accepted = [secret, "Bearer " + secret].contains { Self.constantTimeEqual(presented, $0) }
        guard accepted else {
            logger.notice("registry notification refused: header \(triggers.registryEventHeader) does not carry the shared secret")
            return send(
                APIError(
                    code: "AccessDeniedException", status: 401,
                    message: "header \(triggers.registryEventHeader) must carry the shared secret of triggers.registryEvents"
                ).response(requestID: requestID))
        }
        do {
            let notification = try RegistryNotification(parsing: Data(body))
            let pipelines = try self.triggers.receive(notification)
            return kilnJSON(["pipelines": pipelines])
        } catch let error as KilnError {
            logger.notice("registry notification refused: \(error.message)")
            return send(error.apiError.response(requestID: requestID))
        } catch {
            return send(APIError.serviceException("\(error)").response(requestID: requestID))
        }
    }

    static func constantTimeEqual(_ first: String, _ second: String) -> Bool {
        let a = Array(first.utf8)
        let b = Array(second.utf8)
        guard a.count == b.count else { return false }
        return zip(a, b).reduce(0) { $0 | ($1.0 ^ $1.1) } == 0
    }

    /// The scheduler's events of a pipeline and its builds started otherwise, newest first.
    func pipelineHistory(_ name: String) throws -> [PipelineHistoryEntry] {
        let pipelineName: String
        if name.hasPrefix("arn:") {
            pipelineName = try ImageBuilderARN(parsing: name).name
        } else {
            pipelineName = name
        }
        let formatter = ISO8601DateFormatter()
        let records = try store.records(pipeline: pipelineName, offset: 0, limit: 10_000).items
        let byArn = Dictionary(records.map { ($0.arn, $0) }, uniquingKeysWith: { first, _ in first })
        let events = try store.events(pipeline: pipelineName, limit: 1_000)
        let resource = try store.resources(kind: .imagePipeline, name: pipelineName, offset: 0, limit: 1).items.first
        guard resource != nil || !events.isEmpty || !records.isEmpty else {
            throw KilnError(.notFound, "image pipeline '\(pipelineName)' does not exist and has no history")
        }
        var entries = events.map { event in
            PipelineHistoryEntry(
                time: formatter.string(from: Date(timeIntervalSince1970: Double(event.receivedAt))), trigger: event.kind.rawValue,
                detail: event.count > 1 ? "\(event.detail) (\(event.count) events)" : event.detail, outcome: event.outcome.rawValue,
                reason: event.reason, imageArn: event.imageArn, imageStatus: event.imageArn.flatMap { byArn[$0]?.status.rawValue },
                resolved: event.resolved, packages: event.packages)
        }
        let scheduled = Set(events.compactMap(\.imageArn))
        for record in records where !scheduled.contains(record.arn) {
            entries.append(
                PipelineHistoryEntry(
                    time: record.dateCreated, trigger: record.trigger?.kind.rawValue ?? "manual",
                    detail: record.trigger?.detail ?? "started", outcome: "started", reason: record.failure?.reason,
                    imageArn: record.arn, imageStatus: record.status.rawValue, packages: record.trigger?.packages))
        }
        return entries.sorted { $0.time > $1.time }
    }
}
