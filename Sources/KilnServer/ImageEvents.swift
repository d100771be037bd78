import AsyncHTTPClient
import Crypto
import Foundation
import KilnModel
import KilnStore
import Logging
import NIOCore
import Prometheus
import ServiceLifecycle

/// The server's image records: the store's, plus what each state change sets off. Before a
/// change is acted on, its webhook deliveries are in the store beside it (so a restart loses
/// none), and the metrics count it.
final class ObservedImageRecords: ImageRecords {
    let store: SQLiteStore
    let configuration: KilnConfiguration
    let metrics: ServerMetrics
    let deliveries: WebhookSender

    init(store: SQLiteStore, configuration: KilnConfiguration, metrics: ServerMetrics, deliveries: WebhookSender) {
        self.store = store
        self.configuration = configuration
        self.metrics = metrics
        self.deliveries = deliveries
    }

    func reserveBuild(name: String, version: SemanticVersion) throws -> Int { try store.reserveBuild(name: name, version: version) }
    func all() -> [ImageRecord] { store.all() }
    func record(arn: String) throws -> ImageRecord? { try store.record(arn: arn) }
    func folder(name: String, version: SemanticVersion, build: Int) -> String { store.folder(name: name, version: version, build: build) }

    func save(_ record: ImageRecord) throws {
        let previous = try store.record(arn: record.arn)
        try store.save(record)
        guard previous?.status != record.status else { return }
        try announce(record, previous: previous?.status)
    }

    /// Counts a state change and records its webhook deliveries; also for the changes the store
    /// made itself when it opened (builds a dead server left running).
    func announce(_ record: ImageRecord, previous: ImageStatus?) throws {
        metrics.changed(record, from: previous)
        for webhook in webhooks(for: record) {
            let body = Self.event(record, previous: previous, configuration: configuration)
            try store.addDelivery(WebhookDelivery(id: body.id, webhook: webhook.name, body: body.data))
        }
        deliveries.wake()
    }

    /// The webhooks that take every image's changes, and the one the image's infrastructure
    /// configuration names by `snsTopicArn`.
    func webhooks(for record: ImageRecord) -> [KilnConfiguration.Webhook] {
        let snapshot = (try? store.resource(arn: record.arn)).flatMap { try? JSONValue(parsing: $0.document) }
        let topic = snapshot?["infrastructureConfiguration"]?["snsTopicArn"]?.string
        let named = topic.flatMap { $0.split(separator: ":").last.map(String.init) }
        return configuration.webhooks.filter { $0.allImages || $0.name == named }
    }

    /// An "EC2 Image Builder Image State Change" event as EventBridge shapes it. Its id is
    /// fixed by the image and the change, so a change is one event however often it is saved.
    static func event(_ record: ImageRecord, previous: ImageStatus?, configuration: KilnConfiguration) -> (id: String, data: Data) {
        let digest = SHA256.hash(data: Data("\(record.arn) \(previous?.rawValue ?? "-") \(record.status.rawValue)".utf8))
        let hex = digest.map { String(format: "%02x", $0) }.joined()
        let id = [
            hex.prefix(8), hex.dropFirst(8).prefix(4), hex.dropFirst(12).prefix(4), hex.dropFirst(16).prefix(4),
            hex.dropFirst(20).prefix(12),
        ]
        .joined(separator: "-")
        var state: [String: JSONValue] = ["status": .string(record.status.rawValue)]
        if let failure = record.failure, record.status == .failed || record.status == .cancelled {
            state["reason"] = .string(failure.reason)
        }
        var detail: [String: JSONValue] = ["state": .object(state)]
        if let previous { detail["previous-state"] = ["status": .string(previous.rawValue)] }
        let formatter = ISO8601DateFormatter()
        let body: JSONValue = [
            "version": "0",
            "id": .string(id),
            "detail-type": "EC2 Image Builder Image State Change",
            "source": "aws.imagebuilder",
            "account": .string(configuration.accountId),
            "time": .string(formatter.string(from: Date())),
            "region": .string(configuration.homeRegion),
            "resources": [.string(record.arn)],
            "detail": .object(detail),
        ]
        return (id, body.encodedData())
    }
}

/// Posts recorded webhook deliveries: signed with HMAC-SHA256 under the webhook's secret
/// (`X-Kiln-Signature: sha256=<hex>` of the body), retried with growing waits (2 s … 5 min) up to
/// 12 tries, each try recorded in the store.
final class WebhookSender: Service, Sendable {
    static let maximumAttempts = 12
    let store: SQLiteStore
    let webhooks: [String: KilnConfiguration.Webhook]
    let logger: Logger
    private let wakeUp: AsyncStream<Void>.Continuation
    private let wakes: AsyncStream<Void>

    init(store: SQLiteStore, configuration: KilnConfiguration, logger: Logger) {
        self.store = store
        webhooks = Dictionary(configuration.webhooks.map { ($0.name, $0) }, uniquingKeysWith: { first, _ in first })
        self.logger = logger
        (wakes, wakeUp) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
    }

    func wake() { wakeUp.yield() }

    func run() async throws {
        guard !webhooks.isEmpty else { return try await gracefulShutdown() }
        await cancelWhenGracefulShutdown { [self] in
            var iterator = wakes.makeAsyncIterator()
            while !Task.isCancelled {
                await deliverDue()
                let timer = Task { [wakeUp] in
                    try? await Task.sleep(for: .seconds(1))
                    wakeUp.yield()
                }
                _ = await iterator.next()
                timer.cancel()
            }
        }
    }

    func deliverDue() async {
        let now = Int(Date().timeIntervalSince1970)
        guard let due = try? store.dueDeliveries(now: now, limit: 50) else { return }
        for delivery in due {
            guard let webhook = webhooks[delivery.webhook] else {
                try? store.recordAttempt(
                    id: delivery.id, webhook: delivery.webhook, result: "webhook '\(delivery.webhook)' is no longer in kiln.yaml",
                    delivered: false, nextAttemptAt: nil
                )
                continue
            }
            let result = await post(delivery, to: webhook)
            let attempts = delivery.attempts + 1
            let next = result.delivered || attempts >= Self.maximumAttempts ? nil : now + min(300, 1 << min(attempts, 9))
            try? store.recordAttempt(
                id: delivery.id, webhook: delivery.webhook, result: result.text, delivered: result.delivered, nextAttemptAt: next)
            if result.delivered {
                logger.info("webhook \(webhook.name): delivered event \(delivery.id) (try \(attempts))")
            } else {
                logger.warning(
                    "webhook \(webhook.name): event \(delivery.id) try \(attempts) failed: \(result.text)\(next == nil ? "; giving up" : "; trying again")"
                )
            }
        }
    }

    func post(_ delivery: WebhookDelivery, to webhook: KilnConfiguration.Webhook) async -> (delivered: Bool, text: String) {
        var request = HTTPClientRequest(url: webhook.url)
        request.method = .POST
        request.headers.add(name: "Content-Type", value: "application/json")
        request.headers.add(name: "X-Kiln-Event-Id", value: delivery.id)
        request.headers.add(name: "X-Kiln-Delivery-Attempt", value: "\(delivery.attempts + 1)")
        if let secret = webhook.secret {
            let signature = HMAC<SHA256>.authenticationCode(for: delivery.body, using: SymmetricKey(data: Data(secret.utf8)))
            request.headers.add(name: "X-Kiln-Signature", value: "sha256=" + signature.map { String(format: "%02x", $0) }.joined())
        }
        request.body = .bytes(ByteBuffer(data: delivery.body))
        do {
            let response = try await HTTPClient.shared.execute(request, timeout: .seconds(10))
            _ = try? await response.body.collect(upTo: 64 << 10)
            return ((200..<300).contains(Int(response.status.code)), "HTTP \(response.status.code)")
        } catch {
            return (false, "\(error)")
        }
    }
}

/// Prometheus metrics on `/metrics`: images by state and the queue's depth (read from the store
/// at each scrape, so they survive restarts), stage durations and bytes sent per region.
final class ServerMetrics: Sendable {
    let registry = PrometheusCollectorRegistry()
    let store: SQLiteStore

    init(store: SQLiteStore) {
        self.store = store
    }

    func changed(_ record: ImageRecord, from previous: ImageStatus?) {
        registry.makeCounter(
            descriptor: .init(namespace: "kiln", metricName: "image_state_changes", unitName: "total", helpText: "Image state changes"),
            labels: [("state", record.status.rawValue)]
        ).increment()
        guard !record.isRunning else { return }
        for timing in record.timings {
            registry.makeValueHistogram(
                descriptor: .init(
                    namespace: "kiln", metricName: "stage_duration", unitName: "seconds", helpText: "How long each stage of a build took"),
                labels: [("stage", timing.stage)], buckets: [0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600]
            ).record(timing.seconds)
        }
        for region in record.ledger?.regions ?? [] {
            registry.makeCounter(
                descriptor: .init(
                    namespace: "kiln", metricName: "region_sent", unitName: "bytes_total", helpText: "Bytes sent to each region"),
                labels: [("region", region.region)]
            ).increment(by: region.transferredBytes)
        }
    }

    /// The exposition text, with the store's counts as of now.
    func scrape() -> [UInt8] {
        let counts = (try? store.imageCounts()) ?? [:]
        for status in ["PENDING", "CREATING", "BUILDING", "TESTING", "DISTRIBUTING", "INTEGRATING", "AVAILABLE", "FAILED", "CANCELLED"] {
            registry.makeGauge(
                descriptor: .init(namespace: "kiln", metricName: "images", unitName: "", helpText: "Images in the store by state"),
                labels: [("state", status)]
            ).set(Double(counts[status] ?? 0))
        }
        let queued = (try? store.entries(state: .queued).count) ?? 0
        let running = (try? store.entries(state: .running).count) ?? 0
        registry.makeGauge(
            descriptor: .init(namespace: "kiln", metricName: "build_queue_depth", unitName: "", helpText: "Builds waiting for a worker")
        ).set(Double(queued))
        registry.makeGauge(descriptor: .init(namespace: "kiln", metricName: "builds_running", unitName: "", helpText: "Builds running now"))
            .set(Double(running))
        return registry.emitToBuffer()
    }
}
