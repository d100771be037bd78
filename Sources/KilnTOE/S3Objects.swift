import AsyncHTTPClient
import Crypto
import Foundation
import KilnModel
import NIOCore
import NIOHTTP1

/// Large objects in one S3-compatible bucket, for machine-image disks: uploads stream from a
/// file (multipart above `partSize`, aborted when a part fails), and `digest` reads an object
/// back to check what landed.
public struct S3Objects: Sendable {
    let client: S3Client
    public let bucket: String

    public init(endpoint: String?, region: String, bucket: String, accessKeyId: String, secretAccessKey: String) {
        client = S3Client(
            configuration: S3Configuration(
                endpoint: endpoint.flatMap(URL.init(string:)), region: region,
                credentials: .init(accessKeyID: accessKeyId, secretAccessKey: secretAccessKey, sessionToken: nil)),
            http: TransferClients.sharedClient)
        self.bucket = bucket
    }

    /// Uploads `path` as `key`; returns the bytes sent. `progress` gets the bytes so far.
    @discardableResult
    public func put(
        file path: String, key: String, partSize: Int64 = 64 << 20, progress: @escaping @Sendable (Int64) -> Void = { _ in }
    ) async throws -> Int64 {
        let size = (try FileManager.default.attributesOfItem(atPath: path)[.size] as? NSNumber)?.int64Value ?? 0
        guard size > partSize else {
            try await putPart(path, offset: 0, length: size, url: client.url(bucket: bucket, key: key), what: "PUT s3://\(bucket)/\(key)")
            progress(size)
            return size
        }
        let created = try await send(
            .POST, client.url(bucket: bucket, key: key, query: [("uploads", "")]), what: "start the upload of s3://\(bucket)/\(key)")
        guard let uploadId = Self.element("UploadId", in: created) else {
            throw KilnError(.network, "S3 answered CreateMultipartUpload for s3://\(bucket)/\(key) without an UploadId")
        }
        do {
            var tags: [String] = []
            var offset: Int64 = 0
            while offset < size {
                try Task.checkCancellation()
                let length = min(partSize, size - offset)
                let number = tags.count + 1
                let url = client.url(bucket: bucket, key: key, query: [("partNumber", String(number)), ("uploadId", uploadId)])
                tags.append(
                    try await putPart(path, offset: offset, length: length, url: url, what: "part \(number) of s3://\(bucket)/\(key)"))
                offset += length
                progress(offset)
            }
            let parts = tags.enumerated().map { "<Part><PartNumber>\($0.offset + 1)</PartNumber><ETag>\($0.element)</ETag></Part>" }
            let body = Data("<CompleteMultipartUpload>\(parts.joined())</CompleteMultipartUpload>".utf8)
            let completed = try await send(
                .POST, client.url(bucket: bucket, key: key, query: [("uploadId", uploadId)]), body: body,
                what: "complete the upload of s3://\(bucket)/\(key)")
            // S3 may answer 200 with an Error document when completing fails.
            if let code = Self.element("Code", in: completed) {
                throw KilnError(.network, "S3 could not complete the upload of s3://\(bucket)/\(key): \(code)")
            }
            return size
        } catch {
            _ = try? await send(.DELETE, client.url(bucket: bucket, key: key, query: [("uploadId", uploadId)]), what: "abort")
            throw error
        }
    }

    /// Reads the object back: its sha256 (`sha256:…`) and size.
    public func digest(key: String) async throws -> (digest: String, bytes: Int64) {
        let response = try await get(key: key)
        var hasher = SHA256()
        var bytes: Int64 = 0
        for try await chunk in response.body {
            chunk.withUnsafeReadableBytes { hasher.update(bufferPointer: $0) }
            bytes += Int64(chunk.readableBytes)
        }
        return ("sha256:" + SigV4Signer.hex(hasher.finalize()), bytes)
    }

    /// Downloads the object into a new file at `path` (never over an existing one); returns its bytes.
    @discardableResult
    public func download(key: String, to path: String, progress: @escaping @Sendable (Int64) -> Void = { _ in }) async throws -> Int64 {
        let response = try await get(key: key)
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw KilnError(.ioFailure, "cannot create \(path): \(String(cString: strerror(errno)))") }
        let handle = FileHandle(fileDescriptor: fd, closeOnDealloc: true)
        var bytes: Int64 = 0
        for try await chunk in response.body {
            try handle.write(contentsOf: Data(chunk.readableBytesView))
            bytes += Int64(chunk.readableBytes)
            progress(bytes)
        }
        try handle.synchronize()
        return bytes
    }

    /// GETs the object; anything but 200 is an error naming the object and S3's words.
    func get(key: String) async throws -> HTTPClientResponse {
        let request = try client.request(.GET, client.url(bucket: bucket, key: key), payloadHash: S3Client.emptyHash)
        let response = try await client.http.execute(request, timeout: .hours(24))
        guard response.status == .ok else {
            let body = try? await response.body.collect(upTo: 4096)
            throw KilnError(
                response.status == .notFound ? .notFound : .network,
                "S3 GET s3://\(bucket)/\(key): HTTP \(response.status.code) \(body.map { String(buffer: $0).prefix(300) } ?? "")")
        }
        return response
    }

    /// PUTs `length` bytes of `path` from `offset`; returns the ETag S3 gave them.
    func putPart(_ path: String, offset: Int64, length: Int64, url: URL, what: String) async throws -> String {
        var request = try client.request(.PUT, url, payloadHash: SigV4Signer.unsignedPayload)
        request.headers.replaceOrAdd(name: "content-length", value: String(length))
        request.body = .stream(FileRange(path: path, offset: offset, length: length), length: .known(length))
        let response = try await client.http.execute(request, timeout: .hours(6))
        let body = try await response.body.collect(upTo: 1 << 20)
        guard response.status == .ok else {
            throw KilnError(.network, "S3 \(what): HTTP \(response.status.code) \(String(buffer: body).prefix(300))")
        }
        return response.headers.first(name: "etag") ?? ""
    }

    func send(_ method: HTTPMethod, _ url: URL, body: Data? = nil, what: String) async throws -> String {
        let hash = SigV4Signer.hex(SHA256.hash(data: body ?? Data()))
        var request = try client.request(method, url, payloadHash: hash)
        if let body {
            request.headers.replaceOrAdd(name: "content-length", value: String(body.count))
            request.body = .bytes(ByteBuffer(bytes: body))
        }
        let response = try await client.http.execute(request, timeout: .minutes(10))
        let text = String(buffer: try await response.body.collect(upTo: 1 << 20))
        guard (200..<300).contains(response.status.code) else {
            throw KilnError(
                response.status == .notFound ? .notFound : .network,
                "S3 could not \(what): HTTP \(response.status.code) \(text.prefix(300)); check the bucket, endpoint and credentials")
        }
        return text
    }

    /// The text of the first `<name>` element (S3's answers are small and flat).
    static func element(_ name: String, in xml: String) -> String? {
        guard let start = xml.range(of: "<\(name)>"), let end = xml.range(of: "</\(name)>", range: start.upperBound..<xml.endIndex) else {
            return nil
        }
        return String(xml[start.upperBound..<end.lowerBound])
    }
}

/// `length` bytes of a file from `offset`, in 1 MiB buffers.
struct FileRange: AsyncSequence, Sendable {
    typealias Element = ByteBuffer
    let path: String
    let offset: Int64
    let length: Int64

    struct AsyncIterator: AsyncIteratorProtocol {
        let handle: FileHandle?
        var remaining: Int64

        mutating func next() async throws -> ByteBuffer? {
            guard let handle, remaining > 0, let chunk = try handle.read(upToCount: Int(Swift.min(remaining, 1 << 20))), !chunk.isEmpty
            else {
                try? handle?.close()
                return nil
            }
            remaining -= Int64(chunk.count)
            return ByteBuffer(bytes: chunk)
        }
    }

    func makeAsyncIterator() -> AsyncIterator {
        let handle = FileHandle(forReadingAtPath: path)
        try? handle?.seek(toOffset: UInt64(offset))
        return AsyncIterator(handle: handle, remaining: length)
    }
}
