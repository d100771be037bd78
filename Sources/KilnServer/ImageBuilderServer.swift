import Foundation
import HTTPTypes
import Hummingbird
import KilnEngine
import KilnInstances
import KilnModel
import KilnRegistry
import KilnScheduler
import KilnStore
import Logging
import NIOCore
import ServiceLifecycle

#if canImport(Glibc)
    import Glibc
#endif

/// `kiln server`: the Image Builder API over HTTP, the build queue's workers and the webhook
/// sender, under one service group that stops on SIGTERM or SIGINT (no new work; running
/// builds end in recorded states).
public struct ImageBuilderServer: Sendable {
    public let configuration: KilnConfiguration
    let store: SQLiteStore
    let api: ImageBuilderAPI
    let builds: BuildScheduler
    let triggers: PipelineScheduler
    let webhooks: WebhookSender
    let metrics: ServerMetrics
    let verifier: SigV4Verifier
    let decoder = APIRequestDecoder()
    let logger: Logger
    /// Held while the server runs: one server per data directory, since each runs the queue
    /// with its own regions and webhooks.
    let dataDirectoryLock: Int32

    /// Opens the store (builds a dead server left running end FAILED, "interrupted by restart").
    public init(configuration: KilnConfiguration, host: InstanceHost, transfer: ImageTransfer, logger: Logger) throws {
        guard !configuration.credentials.isEmpty else {
            throw KilnError(
                .invalidArgument,
                "kiln server needs at least one key pair to check signatures against: add credentials: [{accessKeyId, secretAccessKeyEnv}] to kiln.yaml, or set KILN_ACCESS_KEY_ID and KILN_SECRET_ACCESS_KEY"
            )
        }
        self.configuration = configuration
        self.logger = logger
        dataDirectoryLock = try Self.lockDataDirectory(configuration.dataDirectory)
        store = try SQLiteStore(dataDirectory: configuration.dataDirectory, interruption: "interrupted by restart")
        metrics = ServerMetrics(store: store)
        webhooks = WebhookSender(store: store, configuration: configuration, logger: logger)
        let records = ObservedImageRecords(store: store, configuration: configuration, metrics: metrics, deliveries: webhooks)
        for (record, previous) in store.endedAtOpen {
            logger.warning("\(record.arn): \(record.failure?.reason ?? "FAILED")")
            try records.announce(record, previous: previous)
        }
        builds = BuildScheduler(
            configuration: configuration, store: store, records: records, host: host, transfer: transfer, logger: logger)
        api = ImageBuilderAPI(configuration: configuration, store: store, builds: builds)
        let probe = EngineDependencyProbe(
            probe: try DependencyProbe(configuration: configuration, host: host, transfer: transfer, records: records),
            registries: transfer.registries)
        triggers = PipelineScheduler(
            configuration: configuration, store: store, starter: StoredPipelineStarter(api: api), probe: probe, logger: logger)
        api.pipelineChanges.observe { [triggers] in triggers.pipelinesChanged() }
        verifier = SigV4Verifier(
            secrets: Dictionary(
                configuration.credentials.map { ($0.accessKeyId, $0.secretAccessKey) }, uniquingKeysWith: { _, last in last }))
    }

    /// An exclusive lock on `<dataDirectory>/server.lock`, or an error naming the server that has it.
    static func lockDataDirectory(_ dataDirectory: String) throws -> Int32 {
        try FileManager.default.createDirectory(atPath: dataDirectory, withIntermediateDirectories: true)
        let path = dataDirectory + "/server.lock"
        let descriptor = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard descriptor >= 0 else {
            throw KilnError(.ioFailure, "cannot open \(path): \(String(cString: strerror(errno)))")
        }
        guard flock(descriptor, LOCK_EX | LOCK_NB) == 0 else {
            let holder = (try? String(contentsOfFile: path, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines) ?? "?"
            close(descriptor)
            throw KilnError(
                .alreadyExists,
                "another kiln server (pid \(holder)) serves the data directory \(dataDirectory); stop it, or give this one another dataDirectory"
            )
        }
        ftruncate(descriptor, 0)
        let pid = "\(getpid())\n"
        _ = pid.withCString { write(descriptor, $0, strlen($0)) }
        return descriptor
    }

    /// Serves until SIGTERM or SIGINT; `onListening` gets the bound port (for `listen: host:0`).
    /// `floorResponse` (benchmarks only): answer every request with these bytes, with no store
    /// and no signature check, to measure what Hummingbird alone costs.
    public func run(floorResponse: [UInt8]? = nil, onListening: @escaping @Sendable (Int) async -> Void = { _ in }) async throws {
        guard let (host, port) = KilnConfiguration.listenAddress(configuration.listen) else {
            throw KilnError(.invalidArgument, "listen '\(configuration.listen)' is not host:port")
        }
        let responder = CallbackResponder { (request: Request, context: BasicRequestContext) in
            if let floorResponse {
                return Response(
                    status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(bytes: floorResponse)))
            }
            return await respond(to: request)
        }
        let application = Application(
            responder: responder, configuration: .init(address: .hostname(host, port: port), serverName: "kiln"),
            onServerRunning: { channel in
                let bound = channel.localAddress?.port ?? port
                logger.info(
                    "kiln server listening on \(host):\(bound) (account \(configuration.accountId), region \(configuration.homeRegion))")
                await onListening(bound)
            }, logger: logger)
        let group = ServiceGroup(
            configuration: .init(
                services: [.init(service: application), .init(service: builds), .init(service: triggers), .init(service: webhooks)],
                gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try await group.run()
        logger.info("kiln server stopped")
    }

    func respond(to request: Request) async -> Response {
        let requestID = UUID().uuidString.lowercased()
        let target = request.head.path ?? "/"
        let path = target.split(separator: "?", maxSplits: 1).first.map(String.init) ?? "/"
        let method = request.method.rawValue
        if method == "GET", path == "/healthz" {
            return Response(
                status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(string: #"{"status":"ok"}"#)))
        }
        if method == "GET", path == "/metrics" {
            return Response(
                status: .ok, headers: [.contentType: "text/plain; version=0.0.4"],
                body: .init(byteBuffer: ByteBuffer(bytes: metrics.scrape())))
        }
        // SigV4 signs a path with dot and empty segments removed; Kiln routes the path as sent,
        // so two paths that share a signature must not reach different places.
        let segments = path.split(separator: "/", omittingEmptySubsequences: false).dropFirst()
        if segments.contains(where: { $0 == "." || $0 == ".." || ($0.isEmpty && segments.count > 1) }) {
            return send(
                APIError.invalidRequest("the path \(path) has empty, '.' or '..' segments; send the path as the AWS SDKs do").response(
                    requestID: requestID))
        }
        let body: [UInt8]
        do {
            var buffer = try await request.body.collect(upTo: APIRequestDecoder.maximumBodyBytes)
            body = buffer.readBytes(length: buffer.readableBytes) ?? []
        } catch {
            return send(
                APIError.requestTooLarge(bytes: APIRequestDecoder.maximumBodyBytes + 1, limit: APIRequestDecoder.maximumBodyBytes).response(
                    requestID: requestID))
        }
        var headers = request.headers.map { (name: $0.name.rawName, value: $0.value) }
        if method == "POST", path == "/kiln/events/registry" {
            return registryEvent(headers: headers, body: body, requestID: requestID)
        }
        // HTTPTypes keeps Host as the request's authority, not among the header fields.
        if let authority = request.head.authority, !headers.contains(where: { $0.name.lowercased() == "host" }) {
            headers.append((name: "host", value: authority))
        }
        let keyId: String
        do {
            keyId = try verifier.verify(SigV4Request(method: method, target: target, headers: headers, body: body))
        } catch {
            logger.notice("\(method) \(path): refused, \(error.code): \(error.message)")
            return send(APIError(code: error.code, status: error.status, message: error.message).response(requestID: requestID))
        }
        if method == "POST", path.hasPrefix("/kiln/pipelines/"), path.hasSuffix("/fire") {
            let name = String(path.dropFirst("/kiln/pipelines/".count).dropLast("/fire".count)).removingPercentEncoding ?? ""
            do {
                let id = try triggers.fireNow(pipeline: name)
                logger.info("pipeline \(name): fired by \(keyId) (event \(id))")
                return kilnJSON(["event": id])
            } catch let error as KilnError {
                return send(error.apiError.response(requestID: requestID))
            } catch {
                return send(APIError.serviceException("\(error)").response(requestID: requestID))
            }
        }
        if method == "GET", path.hasPrefix("/kiln/") {
            return kilnRoute(
                path, query: target.split(separator: "?", maxSplits: 1).dropFirst().first.map(String.init) ?? "", requestID: requestID)
        }
        var headerMap: [String: String] = [:]
        for (name, value) in headers { headerMap[name.lowercased()] = headerMap[name.lowercased()].map { $0 + "," + value } ?? value }
        let started = ContinuousClock.now
        do {
            let (operation, input) = try decoder.decode(method: method, rawPath: target, rawQuery: nil, headers: headerMap, body: body)
            let output: [String: JSONValue]
            do {
                output = try await api.perform(operation.name, input, requestId: requestID)
            } catch let error as APIError {
                throw error
            } catch let error as KilnError {
                throw error.apiError
            }
            logger.info(
                "\(operation.name) by \(keyId): \(operation.successCode) in \(Int((ContinuousClock.now - started).inSeconds * 1000)) ms")
            return send(decoder.response(output, for: operation, requestID: requestID))
        } catch let error as APIError {
            logger.info("\(method) \(path) by \(keyId): \(error.code): \(error.message)")
            return send(error.response(requestID: requestID))
        } catch {
            logger.error("\(method) \(path) by \(keyId): \(error)")
            return send(APIError.serviceException("Kiln could not complete the request: \(error)").response(requestID: requestID))
        }
    }

    func send(_ response: APIResponse) -> Response {
        var fields = HTTPFields()
        for (name, value) in response.headers {
            if let field = HTTPField.Name(name) { fields[field] = value }
        }
        return Response(status: .init(code: response.status), headers: fields, body: .init(byteBuffer: ByteBuffer(bytes: response.body)))
    }

    /// Kiln's own routes, for `kiln images`, `logs` and `cost --endpoint` (signed like the API):
    /// `/kiln/records` (every image record), `/kiln/records/{ARN or name/x.y.z/build}`,
    /// `/kiln/cost?image=|pipeline=|month=` (priced with the server's kiln.yaml) and
    /// `/kiln/logs/{ARN}` (server-sent events; `?follow=false` for what is there now).
    func kilnRoute(_ path: String, query: String, requestID: String) -> Response {
        var parameters: [String: String] = [:]
        for pair in query.split(separator: "&") {
            let parts = pair.split(separator: "=", maxSplits: 1).map { String($0).removingPercentEncoding ?? String($0) }
            parameters[parts[0]] = parts.count > 1 ? parts[1] : ""
        }
        func json(_ value: some Encodable) -> Response { kilnJSON(value) }
        do {
            if path == "/kiln/records" { return json(store.all()) }
            if path.hasPrefix("/kiln/records/") {
                let name = String(path.dropFirst("/kiln/records/".count)).removingPercentEncoding ?? ""
                return json(try store.find(name))
            }
            if path.hasPrefix("/kiln/pipelines/"), path.hasSuffix("/history") {
                let name = String(path.dropFirst("/kiln/pipelines/".count).dropLast("/history".count)).removingPercentEncoding ?? ""
                return json(try pipelineHistory(name))
            }
            if path.hasPrefix("/kiln/logs/") {
                return logStream(
                    String(path.dropFirst("/kiln/logs/".count)), follow: parameters["follow"] != "false", requestID: requestID)
            }
            if path == "/kiln/cost" {
                let report = try CostReport(configuration: configuration)
                let all = store.all()
                if let image = parameters["image"] { return json(report.cost(of: try store.find(image))) }
                if let pipeline = parameters["pipeline"] {
                    let built = all.filter { $0.sourcePipelineName == pipeline }
                    guard !built.isEmpty else { throw KilnError(.notFound, "no image was built by pipeline '\(pipeline)'") }
                    return json(report.summary("pipeline \(pipeline)", records: built))
                }
                if let month = parameters["month"] { return json(report.month(month, records: all)) }
                return json(report.summary("all images", records: all))
            }
            return send(APIError.unknownOperation(method: "GET", path: path).response(requestID: requestID))
        } catch let error as KilnError {
            return send(error.apiError.response(requestID: requestID))
        } catch {
            return send(APIError.serviceException("\(error)").response(requestID: requestID))
        }
    }

    func kilnJSON(_ value: some Encodable) -> Response {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        let data = (try? encoder.encode(value)) ?? Data("null".utf8)
        return Response(status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(bytes: data)))
    }

    /// `GET /kiln/logs/{image ARN}`: the image's pipeline log as server-sent events, one `data:`
    /// line per log line, following it until the image ends; then an `end` event with the state.
    func logStream(_ encodedArn: String, follow: Bool, requestID: String) -> Response {
        let name = encodedArn.removingPercentEncoding ?? encodedArn
        guard let record = try? store.find(name) else {
            return send(APIError.resourceNotFound("image \(name) does not exist").response(requestID: requestID))
        }
        let path = record.logDirectory + "/pipeline.log"
        let store = store
        let body = ResponseBody { writer in
            var offset: UInt64 = 0
            var pending = Data()
            while true {
                let current = try? store.record(arn: record.arn)
                if let handle = FileHandle(forReadingAtPath: path) {
                    try? handle.seek(toOffset: offset)
                    let chunk = (try? handle.readToEnd()) ?? Data()
                    try? handle.close()
                    offset += UInt64(chunk.count)
                    pending.append(chunk)
                    var text = ""
                    while let newline = pending.firstIndex(of: UInt8(ascii: "\n")) {
                        text += "data: " + String(decoding: pending[pending.startIndex..<newline], as: UTF8.self) + "\n\n"
                        pending = Data(pending[pending.index(after: newline)...])
                    }
                    if !text.isEmpty { try await writer.write(ByteBuffer(string: text)) }
                }
                if !follow || current.map({ !$0.isRunning }) ?? true {
                    try await writer.write(ByteBuffer(string: "event: end\ndata: \(current?.status.rawValue ?? "UNKNOWN")\n\n"))
                    break
                }
                try await Task.sleep(for: .milliseconds(300))
            }
            try await writer.finish(nil)
        }
        return Response(
            status: .ok, headers: [.contentType: "text/event-stream", .cacheControl: "no-cache"], body: body)
    }
}
