import AsyncHTTPClient
import Foundation
import KilnModel
import KilnOCI
import NIOCore

#if canImport(Glibc)
    import Glibc
#endif

extension RegistryClient {
    public func blobExists(_ digest: Digest, repository: String) async throws -> Bool {
        let response = try await send(.HEAD, "\(baseURL)/\(repository)/blobs/\(digest)", scope: .pull(repository))
        switch response.status.code {
        case 200: return true
        case 404: return false
        default:
            throw KilnError(.network, "registry \(registry): HEAD of blob \(digest) in \(repository) answered HTTP \(response.status.code)")
        }
    }

    /// Streams a blob into `store`, verifying its digest. A connection dropped mid-blob resumes
    /// with `Range` from the last byte received (or starts over if the registry ignores Range).
    /// With `tee`, uploads can read the blob while it arrives.
    public func pullBlob(
        _ descriptor: Descriptor, repository: String, into store: ContentStore, tee: GrowingBlob? = nil, observer: TransferObserver? = nil
    ) async throws {
        do {
            try await pullBlobOnce(descriptor, repository: repository, into: store, tee: tee, observer: observer)
            tee?.completed()
        } catch {
            tee?.failed(
                error as? KilnError
                    ?? KilnError(.network, "downloading blob \(descriptor.digest) from \(registry)/\(repository) failed: \(error)"))
            throw error
        }
    }

    private func pullBlobOnce(
        _ descriptor: Descriptor, repository: String, into store: ContentStore, tee: GrowingBlob?, observer: TransferObserver?
    ) async throws {
        let endpoint = registry
        if store.contains(descriptor.digest) {
            observer?(.blobFinished(endpoint: endpoint, digest: descriptor.digest, size: descriptor.size, outcome: .alreadyPresent))
            return
        }
        observer?(.blobStarted(endpoint: endpoint, digest: descriptor.digest, size: descriptor.size))
        var writer = try ContentStore.BlobWriter(store: store)
        tee?.attach(temporaryPath: writer.temporaryPath)
        var failures = 0
        while true {
            let received = writer.count
            let headers = received > 0 ? ["Range": "bytes=\(received)-"] : [:]
            let response = try await send(
                .GET, "\(baseURL)/\(repository)/blobs/\(descriptor.digest)", scope: .pull(repository), headers: headers,
                onRetry: { observer?(.retrying(endpoint: endpoint, reason: $0)) })
            switch response.status.code {
            case 206 where received > 0: break
            case 200:
                if received > 0 {
                    tee?.restarted()
                    writer = try ContentStore.BlobWriter(store: store)
                }
            case 404:
                _ = try? await response.body.collect(upTo: 1 << 16)
                throw KilnError(
                    .notFound,
                    "registry \(registry) has no blob \(descriptor.digest) in \(repository); the manifest points at a missing layer")
            default:
                _ = try? await response.body.collect(upTo: 1 << 16)
                throw KilnError(
                    .network, "registry \(registry): GET blob \(descriptor.digest) from \(repository) answered HTTP \(response.status.code)"
                )
            }
            do {
                for try await buffer in response.body {
                    try buffer.withUnsafeReadableBytes { try writer.write($0) }
                    tee?.wrote(total: writer.count)
                    observer?(.bytes(endpoint: endpoint, digest: descriptor.digest, count: Int64(buffer.readableBytes)))
                    if writer.count > descriptor.size {
                        throw KilnError(
                            .checksumMismatch,
                            "registry \(registry) sent more than the \(descriptor.size) bytes of blob \(descriptor.digest); refusing it")
                    }
                }
                if writer.count < descriptor.size {
                    throw KilnError(.network, "blob \(descriptor.digest) ended after \(writer.count) of \(descriptor.size) bytes")
                }
                break
            } catch let error as KilnError where error.code == .checksumMismatch {
                throw error
            } catch {
                failures += 1
                guard failures < retry.attempts, !(error is CancellationError) else {
                    throw KilnError(
                        .network,
                        "downloading blob \(descriptor.digest) from \(registry)/\(repository) failed \(failures) times; last: \(error)")
                }
                observer?(
                    .retrying(
                        endpoint: endpoint, reason: "blob \(descriptor.digest.encoded.prefix(12)) dropped at byte \(writer.count): \(error)"
                    ))
                try await Task.sleep(for: retry.delay(beforeAttempt: failures + 1))
            }
        }
        _ = try writer.commit(mediaType: descriptor.mediaType, expected: descriptor.digest)
        observer?(.blobFinished(endpoint: endpoint, digest: descriptor.digest, size: descriptor.size, outcome: .downloaded))
    }

    /// Uploads a blob from `store` unless the registry has it. With `mountFrom` (a repository on
    /// this registry that has the blob) it asks for a cross-repository mount first. Small blobs go
    /// in one PUT, large ones in PATCH chunks; a failed chunk resumes where the registry says the
    /// upload stands. Returns what happened.
    @discardableResult
    public func pushBlob(
        _ descriptor: Descriptor, repository: String, from store: ContentStore, growing: GrowingBlob? = nil, mountFrom: String? = nil,
        observer: TransferObserver? = nil
    ) async throws -> TransferEvent.Outcome {
        let endpoint = registry
        let digest = descriptor.digest
        func finish(_ outcome: TransferEvent.Outcome) -> TransferEvent.Outcome {
            observer?(.blobFinished(endpoint: endpoint, digest: digest, size: descriptor.size, outcome: outcome))
            return outcome
        }
        if try await blobExists(digest, repository: repository) { return finish(.alreadyPresent) }
        let file = store.path(of: digest)
        guard growing != nil || store.contains(digest) else {
            throw KilnError(.notFound, "blob \(digest) is not in the content store at '\(store.root)'")
        }
        observer?(.blobStarted(endpoint: endpoint, digest: digest, size: descriptor.size))
        let onRetry: @Sendable (String) -> Void = { observer?(.retrying(endpoint: endpoint, reason: $0)) }

        var failures = 0
        while true {
            do {
                var start = "\(baseURL)/\(repository)/blobs/uploads/"
                var scope = RegistryClient.Scope.push(repository)
                if let mountFrom, mountFrom != repository {
                    start += "?mount=\(digest)&from=\(mountFrom)"
                    scope = .mount(into: repository, from: mountFrom)
                }
                // The session start retries by itself; only an interrupted body restarts the whole upload.
                let started = try await send(.POST, start, scope: scope, headers: ["Content-Length": "0"], onRetry: onRetry)
                _ = try await collect(started, limit: 1 << 16, what: "upload start for \(digest)", expect: [201, 202])
                if started.status.code == 201 { return finish(.mounted) }
                guard let header = started.headers.first(name: "location") else {
                    throw KilnError(.network, "registry \(registry) started an upload without a Location header")
                }
                let location = try absolute(header)
                do {
                    try await sendBody(
                        descriptor, file: file, growing: growing, location: location, repository: repository, observer: observer)
                } catch let error as KilnError where error.code == .network {
                    throw UploadInterrupted(error: error)
                }
                return finish(.uploaded)
            } catch let interrupted as UploadInterrupted {
                failures += 1
                guard failures < retry.attempts else { throw interrupted.error }
                let error = interrupted.error
                onRetry("upload of \(digest.encoded.prefix(12)) to \(repository): \(error)")
                try await Task.sleep(for: retry.delay(beforeAttempt: failures + 1))
            }
        }
    }

    /// The bytes of an upload session: one PUT for small blobs, PATCH chunks then a PUT for large ones.
    private func sendBody(
        _ descriptor: Descriptor, file: String, growing: GrowingBlob?, location start: String, repository: String,
        observer: TransferObserver?
    ) async throws {
        let endpoint = registry
        let digest = descriptor.digest
        var location = start
        if descriptor.size > monolithicLimit {
            location = try await uploadChunks(
                file: file, growing: growing, size: descriptor.size, digest: digest, location: location, scope: .push(repository),
                observer: observer)
            let url = location + (location.contains("?") ? "&" : "?") + "digest=\(digest)"
            let done = try await send(.PUT, url, scope: .push(repository), headers: ["Content-Length": "0"], retrying: false)
            _ = try await collect(done, limit: 1 << 16, what: "upload of \(digest)", expect: [201])
        } else {
            let url = location + (location.contains("?") ? "&" : "?") + "digest=\(digest)"
            let size = descriptor.size
            let response = try await send(
                .PUT, url, scope: .push(repository), headers: ["Content-Type": "application/octet-stream"],
                body: {
                    .stream(
                        FileByteRange(path: file, growing: growing, offset: 0, length: size) {
                            observer?(.bytes(endpoint: endpoint, digest: digest, count: $0))
                        }, length: .known(size))
                }, retrying: false)
            _ = try await collect(response, limit: 1 << 16, what: "upload of \(digest)", expect: [201])
        }
    }

    /// PATCHes `file` in chunks; after a failed chunk asks the registry how far it got and goes on
    /// from there. Returns the Location for the closing PUT.
    private func uploadChunks(
        file: String, growing: GrowingBlob?, size: Int64, digest: Digest, location start: String, scope: Scope, observer: TransferObserver?
    ) async throws -> String {
        let endpoint = registry
        var location = start
        var offset: Int64 = 0
        var failures = 0
        while offset < size {
            let length = min(chunkSize, size - offset)
            let chunkStart = offset
            do {
                let response = try await send(
                    .PATCH, location, scope: scope,
                    headers: [
                        "Content-Type": "application/octet-stream",
                        "Content-Range": "\(chunkStart)-\(chunkStart + length - 1)",
                    ],
                    body: {
                        .stream(
                            FileByteRange(path: file, growing: growing, offset: chunkStart, length: length) {
                                observer?(.bytes(endpoint: endpoint, digest: digest, count: $0))
                            }, length: .known(length))
                    }, retrying: false)
                _ = try await collect(
                    response, limit: 1 << 16, what: "chunk \(chunkStart)-\(chunkStart + length - 1) of \(digest)", expect: [202])
                if let next = response.headers.first(name: "location") { location = try absolute(next) }
                offset = chunkStart + length
            } catch {
                failures += 1
                guard failures < retry.attempts, !(error is CancellationError) else { throw error }
                observer?(.retrying(endpoint: endpoint, reason: "chunk at \(chunkStart) of \(digest.encoded.prefix(12)): \(error)"))
                try await Task.sleep(for: retry.delay(beforeAttempt: failures + 1))
                // The registry's Range says what it kept: "0-N" means resume at N+1.
                let status = try await send(.GET, location, scope: scope)
                _ = try await collect(status, limit: 1 << 16, what: "upload status of \(digest)", expect: [204])
                if let next = status.headers.first(name: "location") { location = try absolute(next) }
                let kept = status.headers.first(name: "range").flatMap { $0.split(separator: "-").last }.flatMap { Int64($0) }
                let resumeAt = kept.map { $0 + 1 } ?? 0
                offset = min(resumeAt, size)
            }
        }
        return location
    }
}

/// An upload whose body did not get through; the whole upload starts again.
private struct UploadInterrupted: Error {
    let error: KilnError
}

/// Part of a blob as an async sequence of buffers, for streamed request bodies: read from the
/// store's file, or from a `GrowingBlob` while its download is still running. Reports each
/// chunk's size as it is handed to the connection.
struct FileByteRange: AsyncSequence, Sendable {
    typealias Element = ByteBuffer
    let path: String
    let growing: GrowingBlob?
    let offset: Int64
    let length: Int64
    let onChunk: @Sendable (Int64) -> Void

    init(path: String, growing: GrowingBlob? = nil, offset: Int64, length: Int64, onChunk: @escaping @Sendable (Int64) -> Void) {
        self.path = path
        self.growing = growing
        self.offset = offset
        self.length = length
        self.onChunk = onChunk
    }

    final class AsyncIterator: AsyncIteratorProtocol {
        private let range: FileByteRange
        private var position: Int64
        /// Our own descriptor for the finished file; a growing blob lends its own.
        private var ownDescriptor: Int32 = -1

        init(_ range: FileByteRange) {
            self.range = range
            position = range.offset
        }

        deinit { if ownDescriptor >= 0 { close(ownDescriptor) } }

        func next() async throws -> ByteBuffer? {
            let end = range.offset + range.length
            guard position < end else { return nil }
            var descriptor = ownDescriptor
            var limit = end
            if descriptor < 0, let growing = range.growing {
                if case .stream(let lent, let available) = try await growing.source(after: position) {
                    descriptor = lent
                    limit = Swift.min(end, available)
                }
            }
            if descriptor < 0 {
                ownDescriptor = open(range.path, O_RDONLY | O_CLOEXEC)
                guard ownDescriptor >= 0 else {
                    throw KilnError(.ioFailure, "cannot open '\(range.path)': \(String(cString: strerror(errno)))")
                }
                descriptor = ownDescriptor
            }
            let count = Int(Swift.min(Int64(1 << 20), limit - position))
            var buffer = ByteBuffer()
            let got = try buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: count) { bytes in
                let got = pread(descriptor, bytes.baseAddress, count, off_t(position))
                guard got >= 0 else { throw KilnError(.ioFailure, "cannot read '\(range.path)': \(String(cString: strerror(errno)))") }
                return got
            }
            guard got > 0 else { throw KilnError(.ioFailure, "'\(range.path)' is shorter than its descriptor says") }
            position += Int64(got)
            range.onChunk(Int64(got))
            return buffer
        }
    }

    func makeAsyncIterator() -> AsyncIterator { AsyncIterator(self) }
}
