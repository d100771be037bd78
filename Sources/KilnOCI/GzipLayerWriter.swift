import CZlib
import Foundation
import KilnModel

/// Compresses a layer in one pass, computing both digests an image needs: the diffID (SHA-256
/// of the uncompressed tar) and the digest (SHA-256 of the gzip bytes).
///
/// The input is cut into fixed 512 KiB blocks that zlib compresses on all cores at once, each
/// primed with the previous block's last 32 KiB and ended with a sync flush, so the pieces join
/// into one ordinary gzip stream (as pigz does). Block size, not core count, decides the bytes,
/// so the output is the same on every machine. Memory stays bounded whatever the layer size.
public final class GzipLayerWriter {
    public struct Result: Sendable, Hashable {
        public var diffID: Digest
        public var digest: Digest
        /// Compressed size.
        public var size: Int64
        public var uncompressedSize: Int64
    }

    static let blockSize = 512 << 10
    static let window = 32 << 10

    private let level: Int32
    private let sink: (UnsafeRawBufferPointer) throws -> Void
    private var uncompressed = SHA256Stream()
    private var compressed = SHA256Stream()
    private var crc: uLong = crc32(0, nil, 0)
    private var block: [UInt8] = []
    private var dictionary: [UInt8] = []
    private var pending: [CompressionJob] = []
    private let maximumInFlight = max(2, 2 * ProcessInfo.processInfo.activeProcessorCount)
    private var startedOutput = false
    private var finished = false

    /// `level` as gzip's -1…-9 (default 6, gzip's own default).
    public init(level: Int32 = 6, sink: @escaping (UnsafeRawBufferPointer) throws -> Void) throws {
        guard (1...9).contains(level) else { throw KilnError(.invalidArgument, "gzip level \(level) is not 1 to 9") }
        self.level = level
        self.sink = sink
        block.reserveCapacity(Self.blockSize)
    }

    deinit {
        // Let running jobs finish before their inputs go away.
        for job in pending { job.done.wait() }
    }

    public func write(_ bytes: UnsafeRawBufferPointer) throws {
        guard !bytes.isEmpty else { return }
        uncompressed.update(bytes)
        crc = crc32(crc, bytes.baseAddress!.assumingMemoryBound(to: Bytef.self), uInt(bytes.count))
        var offset = 0
        while offset < bytes.count {
            let take = min(Self.blockSize - block.count, bytes.count - offset)
            block.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[offset..<(offset + take)]))
            offset += take
            if block.count == Self.blockSize { try submit(final: false) }
        }
    }

    public func finish() throws -> Result {
        guard !finished else { throw KilnError(.internalError, "the gzip stream was already finished") }
        finished = true
        try submit(final: true)
        while !pending.isEmpty { try emitOldest() }
        var trailer = [UInt8]()
        for value in [UInt32(truncatingIfNeeded: crc), UInt32(truncatingIfNeeded: uncompressed.count)] {
            trailer += [UInt8(value & 0xff), UInt8(value >> 8 & 0xff), UInt8(value >> 16 & 0xff), UInt8(value >> 24)]
        }
        try emit(trailer)
        return Result(
            diffID: uncompressed.finalize(), digest: compressed.finalize(), size: compressed.count, uncompressedSize: uncompressed.count)
    }

    private func submit(final: Bool) throws {
        let job = CompressionJob(input: block, dictionary: dictionary, level: level, final: final)
        dictionary = Array(block.suffix(Self.window))
        block.removeAll(keepingCapacity: true)
        pending.append(job)
        DispatchQueue.global(qos: .userInitiated).async { job.run() }
        while pending.count > maximumInFlight { try emitOldest() }
    }

    private func emitOldest() throws {
        let job = pending.removeFirst()
        job.done.wait()
        if let error = job.error { throw error }
        if !startedOutput {
            startedOutput = true
            // No name, no time; XFL as gzip sets it for the level; OS 3 (Unix).
            try emit([0x1f, 0x8b, 8, 0, 0, 0, 0, 0, level == 9 ? 2 : level == 1 ? 4 : 0, 3])
        }
        try emit(job.output)
    }

    private func emit(_ bytes: [UInt8]) throws {
        try bytes.withUnsafeBytes { buffer in
            compressed.update(buffer)
            try sink(buffer)
        }
    }
}

/// One block of a layer, deflated on a worker thread. Its fields are written only by `run`, and
/// read only after `done` is signalled.
private final class CompressionJob: @unchecked Sendable {
    let input: [UInt8]
    let dictionary: [UInt8]
    let level: Int32
    let final: Bool
    var output: [UInt8] = []
    var error: KilnError?
    let done = DispatchSemaphore(value: 0)

    init(input: [UInt8], dictionary: [UInt8], level: Int32, final: Bool) {
        self.input = input
        self.dictionary = dictionary
        self.level = level
        self.final = final
    }

    func run() {
        defer { done.signal() }
        // zlib keeps a pointer back to the stream, so it must not move.
        let stream = UnsafeMutablePointer<z_stream>.allocate(capacity: 1)
        stream.initialize(to: z_stream())
        defer { stream.deallocate() }
        // Negative window bits: raw deflate, the gzip wrapper is written once around all blocks.
        guard deflateInit2_(stream, level, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY, ZLIB_VERSION, Int32(MemoryLayout<z_stream>.size)) == Z_OK
        else {
            error = KilnError(.internalError, "zlib could not start compressing")
            return
        }
        defer { deflateEnd(stream) }
        if !dictionary.isEmpty {
            _ = dictionary.withUnsafeBufferPointer { deflateSetDictionary(stream, $0.baseAddress, uInt($0.count)) }
        }
        output = [UInt8](repeating: 0, count: Int(deflateBound(stream, uLong(input.count))) + 64)
        let flush = final ? Z_FINISH : Z_SYNC_FLUSH
        var produced = 0
        input.withUnsafeBufferPointer { source in
            stream.pointee.next_in = UnsafeMutablePointer(mutating: source.baseAddress)
            stream.pointee.avail_in = uInt(source.count)
            while true {
                if produced == output.count { output += [UInt8](repeating: 0, count: 1 << 16) }
                let status = output.withUnsafeMutableBufferPointer { target -> Int32 in
                    stream.pointee.next_out = target.baseAddress! + produced
                    stream.pointee.avail_out = uInt(target.count - produced)
                    let status = deflate(stream, flush)
                    produced = target.count - Int(stream.pointee.avail_out)
                    return status
                }
                if final ? status == Z_STREAM_END : (status == Z_OK && stream.pointee.avail_in == 0 && stream.pointee.avail_out > 0) {
                    break
                }
                guard status == Z_OK || status == Z_BUF_ERROR else {
                    error = KilnError(.internalError, "zlib failed while compressing (status \(status))")
                    return
                }
            }
        }
        output.removeSubrange(produced...)
    }
}

/// Packs a directory into a gzip-compressed, deterministic layer file.
public enum LayerPacker {
    public static func pack(directory: String, to path: String, level: Int32 = 6, sourceDateEpoch: Int64? = nil) throws
        -> GzipLayerWriter.Result
    {
        guard FileManager.default.createFile(atPath: path, contents: nil), let handle = FileHandle(forWritingAtPath: path) else {
            throw KilnError(.ioFailure, "cannot create the layer file '\(path)'")
        }
        defer { try? handle.close() }
        let gzip = try GzipLayerWriter(level: level) { bytes in
            try handle.write(contentsOf: Data(bytes))
        }
        var tar = TarWriter { try gzip.write($0) }
        try DirectoryArchiver(sourceDateEpoch: sourceDateEpoch).archive(directory, into: &tar)
        return try gzip.finish()
    }
}
