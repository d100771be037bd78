import AsyncHTTPClient
import Foundation
import KilnModel
import NIOCore
import NIOSSL

/// HTTP clients for WebDownload and S3, shared by the steps of a run.
struct TransferClients: Sendable {
    var http: HTTPClient = TransferClients.sharedClient
    var s3: S3Configuration

    /// One client for the process, like `HTTPClient.shared`, but failing fast on refused
    /// connections: the actions retry on their own terms.
    static let sharedClient = makeClient(verifyCertificates: true)

    static func makeClient(verifyCertificates: Bool) -> HTTPClient {
        var configuration = verifyCertificates ? HTTPClient.Configuration() : HTTPClient.Configuration(certificateVerification: .none)
        configuration.connectionPool.retryConnectionEstablishment = false
        configuration.redirectConfiguration = .follow(max: 10, allowCycles: false)
        configuration.timeout.connect = .seconds(30)
        return HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
    }

    /// Streams a GET into a host file, hashing as it goes. Returns the digest when asked for one.
    static func download(
        _ request: HTTPClientRequest, client: HTTPClient, to hostPath: String, hashing algorithm: HashAlgorithm?,
        log: TOELogWriter, label: String
    ) async throws -> (bytes: Int64, digest: String?) {
        let response = try await client.execute(request, timeout: .hours(24))
        guard response.status == .ok else {
            var detail = ""
            if let body = try? await response.body.collect(upTo: 4096) { detail = String(buffer: body).prefix(300).description }
            throw HTTPStatusError(status: Int(response.status.code), reason: response.status.reasonPhrase, detail: detail)
        }
        _ = FileManager.default.createFile(atPath: hostPath, contents: nil)
        guard let handle = FileHandle(forWritingAtPath: hostPath) else {
            throw KilnError(.ioFailure, "cannot write the download to '\(hostPath)'")
        }
        defer { try? handle.close() }
        let expected = response.headers.first(name: "content-length").flatMap { Int64($0) }
        var hasher = algorithm.map(HashAlgorithm.Hasher.init)
        var received: Int64 = 0
        var nextReport: Int64 = 0
        for try await buffer in response.body {
            let data = Data(buffer.readableBytesView)
            try handle.write(contentsOf: data)
            hasher?.update(data)
            received += Int64(data.count)
            if received >= nextReport {
                log.info("\(label): \(Self.progress(received, of: expected))")
                nextReport = received + max(expected.map { $0 / 10 } ?? 0, 16 << 20)
            }
        }
        if let expected, received != expected {
            throw KilnError(.network, "\(label): the connection closed after \(received) of \(expected) bytes")
        }
        log.info("\(label): done, \(Self.progress(received, of: expected))")
        return (received, hasher?.finalizeHex())
    }

    static func progress(_ bytes: Int64, of total: Int64?) -> String {
        func mib(_ value: Int64) -> String { String(format: "%.1f MiB", Double(value) / 1_048_576) }
        guard let total, total > 0 else { return mib(bytes) }
        return "\(mib(bytes)) of \(mib(total)) (\(bytes * 100 / total)%)"
    }
}

struct HTTPStatusError: Error, CustomStringConvertible {
    var status: Int
    var reason: String
    var detail: String

    var retryable: Bool { status >= 500 || status == 429 || status == 408 }
    var description: String { "HTTP \(status) \(reason)\(detail.isEmpty ? "" : ": \(detail)")" }
}

/// A host file as a stream of buffers, for uploads.
struct FileChunks: AsyncSequence, Sendable {
    typealias Element = ByteBuffer
    let path: String

    struct AsyncIterator: AsyncIteratorProtocol {
        let handle: FileHandle?
        mutating func next() async throws -> ByteBuffer? {
            guard let handle, let chunk = try handle.read(upToCount: 1 << 20), !chunk.isEmpty else {
                try? handle?.close()
                return nil
            }
            return ByteBuffer(bytes: chunk)
        }
    }

    func makeAsyncIterator() -> AsyncIterator { AsyncIterator(handle: FileHandle(forReadingAtPath: path)) }
}

/// Host scratch space for files on their way in or out of an instance: one private folder
/// per process (mkdtemp, mode 0700), so no other user can swap a verified file.
enum HostScratch {
    static let folder: Result<String, KilnError> = {
        var template = Array((NSTemporaryDirectory() + "kiln-transfer.XXXXXX").utf8CString)
        guard let made = mkdtemp(&template) else {
            return .failure(KilnError(.ioFailure, "cannot create a private transfer folder in \(NSTemporaryDirectory())"))
        }
        return .success(String(cString: made))
    }()

    static func file(_ hint: String) throws -> String {
        try folder.get() + "/" + UUID().uuidString + "-" + hint.replacingOccurrences(of: "/", with: "_")
    }

    /// The hash of a file in the instance, read in chunks on the host.
    static func hash(_ path: String, in session: any InstanceSession, algorithm: HashAlgorithm) async throws -> String {
        let copy = try file(basename(path))
        defer { try? FileManager.default.removeItem(atPath: copy) }
        try await session.exportFile(path, toHost: copy)
        return try algorithm.hex(ofFile: copy)
    }
}

/// `WebDownload`: HTTP(S) to a file in the instance, with checksums and its own retries.
struct WebDownloadAction: TOEAction {
    func run(_ inputs: InputValue?, context: ActionContext) async throws -> ActionResult {
        let reader = InputReader(value: inputs, action: "WebDownload", stepPath: context.stepPath)
        var written: [String] = []
        for item in reader.items() {
            written.append(try await download(item, context: context))
        }
        return .completed(["destination": written.joined(separator: "\n")])
    }

    func download(_ item: InputReader, context: ActionContext) async throws -> String {
        let source = try item.required("source")
        guard let url = URL(string: source), let scheme = url.scheme?.lowercased(), scheme == "http" || scheme == "https", url.host != nil
        else {
            throw context.failure("WebDownload source '\(source)' is not an http(s) URL", code: .invalidArgument)
        }
        let overwrite = try item.bool("overwrite", default: true)
        let insecure = try item.bool("ignoreCertificateErrors", default: false)
        let checksum = item.string("checksum")?.lowercased()
        let algorithmName = item.string("algorithm")
        if (checksum == nil) != (algorithmName == nil) {
            throw context.failure("WebDownload needs both checksum and algorithm to verify a download, or neither", code: .invalidArgument)
        }
        var algorithm: HashAlgorithm?
        if let algorithmName {
            guard let parsed = HashAlgorithm(name: algorithmName) else {
                throw context.failure(
                    "WebDownload algorithm '\(algorithmName)' is not supported; use MD5, SHA1, SHA256 or SHA512", code: .invalidArgument)
            }
            algorithm = parsed
        }

        var destination = try item.required("destination")
        if destination.hasSuffix("/") || destination.hasSuffix("\\") {
            let name = url.lastPathComponent
            guard !name.isEmpty, name != "/" else {
                throw context.failure(
                    "WebDownload cannot name the file from '\(source)'; give a destination file path instead of a folder",
                    code: .invalidArgument)
            }
            destination = join(destination, name)
        }
        let session = context.session
        if let existing = try await session.fileInfo(destination, followSymlinks: true) {
            guard existing.kind == .file else {
                throw context.failure("WebDownload destination '\(destination)' is a folder; end it with '/' to download into it")
            }
            guard overwrite else { throw context.failure("WebDownload destination '\(destination)' exists and overwrite is false") }
            if let checksum, let algorithm, try await HostScratch.hash(destination, in: session, algorithm: algorithm) == checksum {
                context.log.info("WebDownload: \(destination) already matches the \(algorithm.rawValue) checksum; download skipped")
                return destination
            }
        }

        let client = insecure ? TransferClients.makeClient(verifyCertificates: false) : context.transfers.http
        let temporary = try HostScratch.file(basename(destination))
        defer { try? FileManager.default.removeItem(atPath: temporary) }
        do {
            try await fetch(source, client: client, to: temporary, algorithm: algorithm, checksum: checksum, context: context)
            if insecure { try? await client.shutdown() }
        } catch {
            if insecure { try? await client.shutdown() }
            throw error
        }
        try await session.createDirectory(parent(of: destination), mode: 0o755)
        try await session.importFile(fromHost: temporary, to: destination)
        context.log.info("WebDownload: saved \(source) to \(destination)")
        return destination
    }

    /// Up to `downloadAttempts` tries with doubling delays; a checksum mismatch is final.
    func fetch(
        _ source: String, client: HTTPClient, to temporary: String, algorithm: HashAlgorithm?, checksum: String?, context: ActionContext
    ) async throws {
        var attempt = 0
        var delay = context.options.downloadRetryDelay
        while true {
            attempt += 1
            do {
                let (_, digest) = try await TransferClients.download(
                    HTTPClientRequest(url: source), client: client, to: temporary, hashing: algorithm,
                    log: context.log, label: "WebDownload \(source)"
                )
                if let checksum, let digest, digest != checksum {
                    throw context.failure(
                        "WebDownload checksum mismatch for '\(source)': expected \(algorithm!.rawValue) \(checksum), got \(digest); the file was not written",
                        code: .checksumMismatch)
                }
                break
            } catch let error as KilnError where error.code == .checksumMismatch {
                throw error
            } catch {
                let retryable = (error as? HTTPStatusError)?.retryable ?? !(error is CancellationError)
                guard retryable, attempt < context.options.downloadAttempts, !Task.isCancelled else {
                    throw context.failure(
                        "WebDownload of '\(source)' failed after \(attempt) attempt\(attempt == 1 ? "" : "s"): \(error)", code: .network)
                }
                context.log.info(
                    "WebDownload attempt \(attempt) of \(context.options.downloadAttempts) failed (\(error)); retrying in \(delay)")
                try await Task.sleep(for: delay)
                delay *= 2
            }
        }
    }
}
