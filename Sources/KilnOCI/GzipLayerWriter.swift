import CZlib
import Foundation
import KilnModel

/// Compresses a layer in one pass with zlib, computing both digests an image needs: the diffID
/// (SHA-256 of the uncompressed tar) and the digest (SHA-256 of the gzip bytes). Memory stays
/// bounded whatever the layer size. The gzip header carries no name or time, so output is stable.
public final class GzipLayerWriter {
    public struct Result: Sendable, Hashable {
        public var diffID: Digest
        public var digest: Digest
        /// Compressed size.
        public var size: Int64
        public var uncompressedSize: Int64
    }

    private let stream: UnsafeMutablePointer<z_stream>
    private var output = [UInt8](repeating: 0, count: 1 << 17)
    private var uncompressed = SHA256Stream()
    private var compressed = SHA256Stream()
    private let sink: (UnsafeRawBufferPointer) throws -> Void
    private var finished = false

    /// `level` as gzip's -1…-9 (default 6, gzip's own default).
    public init(level: Int32 = 6, sink: @escaping (UnsafeRawBufferPointer) throws -> Void) throws {
        self.sink = sink
        // zlib keeps a pointer back to the stream, so it must not move: allocate it once.
        stream = .allocate(capacity: 1)
        stream.initialize(to: z_stream())
        // windowBits 15 + 16 selects the gzip wrapper.
        let status = deflateInit2_(stream, level, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY, ZLIB_VERSION, Int32(MemoryLayout<z_stream>.size))
        guard status == Z_OK else {
            stream.deallocate()
            throw KilnError(.internalError, "zlib could not start compressing (status \(status))")
        }
    }

    deinit {
        deflateEnd(stream)
        stream.deallocate()
    }

    public func write(_ bytes: UnsafeRawBufferPointer) throws {
        guard !bytes.isEmpty else { return }
        uncompressed.update(bytes)
        stream.pointee.next_in = UnsafeMutablePointer(mutating: bytes.baseAddress!.assumingMemoryBound(to: Bytef.self))
        stream.pointee.avail_in = uInt(bytes.count)
        try pump(flush: Z_NO_FLUSH)
    }

    public func finish() throws -> Result {
        guard !finished else { throw KilnError(.internalError, "the gzip stream was already finished") }
        finished = true
        stream.pointee.next_in = nil
        stream.pointee.avail_in = 0
        try pump(flush: Z_FINISH)
        return Result(diffID: uncompressed.finalize(), digest: compressed.finalize(), size: compressed.count, uncompressedSize: uncompressed.count)
    }

    private func pump(flush: Int32) throws {
        let capacity = output.count
        while true {
            let (status, produced) = output.withUnsafeMutableBytes { buffer -> (Int32, Int) in
                stream.pointee.next_out = buffer.baseAddress!.assumingMemoryBound(to: Bytef.self)
                stream.pointee.avail_out = uInt(capacity)
                let status = deflate(stream, flush)
                return (status, capacity - Int(stream.pointee.avail_out))
            }
            guard status == Z_OK || status == Z_STREAM_END || status == Z_BUF_ERROR else {
                throw KilnError(.internalError, "zlib failed while compressing (status \(status))")
            }
            if produced > 0 {
                try output.withUnsafeBytes { buffer in
                    let chunk = UnsafeRawBufferPointer(rebasing: buffer[0..<produced])
                    compressed.update(chunk)
                    try sink(chunk)
                }
            }
            if flush == Z_FINISH {
                if status == Z_STREAM_END { return }
            } else if stream.pointee.avail_in == 0 && produced < capacity {
                return
            }
        }
    }
}

/// Packs a directory into a gzip-compressed, deterministic layer file.
public enum LayerPacker {
    public static func pack(directory: String, to path: String, level: Int32 = 6, sourceDateEpoch: Int64? = nil) throws -> GzipLayerWriter.Result {
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
