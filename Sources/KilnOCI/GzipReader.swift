import CZlib
import Foundation
import KilnModel

/// Streams a gzip (or zlib) file out as plain bytes, for `TarReader`.
public final class GzipReader {
    private let stream: UnsafeMutablePointer<z_stream>
    private let handle: FileHandle
    private var input: [UInt8] = []
    private var inputOffset = 0
    private var finished = false

    public init(path: String) throws {
        guard let handle = FileHandle(forReadingAtPath: path) else {
            throw KilnError(.notFound, "cannot read the layer '\(path)'")
        }
        self.handle = handle
        // zlib keeps a pointer back to the stream, so it must not move.
        stream = .allocate(capacity: 1)
        stream.initialize(to: z_stream())
        // 15 + 32: detect gzip or zlib headers.
        guard inflateInit2_(stream, 15 + 32, ZLIB_VERSION, Int32(MemoryLayout<z_stream>.size)) == Z_OK else {
            stream.deallocate()
            throw KilnError(.internalError, "zlib could not start decompressing")
        }
    }

    deinit {
        inflateEnd(stream)
        stream.deallocate()
        try? handle.close()
    }

    /// Fills `output` with up to `limit` bytes; returns 0 at the end.
    public func read(into output: inout [UInt8], limit: Int) throws -> Int {
        guard !finished else { return 0 }
        output = [UInt8](repeating: 0, count: limit)
        var produced = 0
        while produced == 0 {
            if inputOffset >= input.count {
                input = Array(try handle.read(upToCount: 1 << 20) ?? Data())
                inputOffset = 0
                if input.isEmpty { throw KilnError(.invalidArgument, "the layer's gzip stream ends early; the file is truncated") }
            }
            let available = input.count
            let start = inputOffset
            var remaining = 0
            let status: Int32 = input.withUnsafeMutableBytes { inBuffer in
                output.withUnsafeMutableBytes { outBuffer in
                    stream.pointee.next_in = inBuffer.baseAddress!.advanced(by: start).assumingMemoryBound(to: Bytef.self)
                    stream.pointee.avail_in = uInt(available - start)
                    stream.pointee.next_out = outBuffer.baseAddress!.assumingMemoryBound(to: Bytef.self)
                    stream.pointee.avail_out = uInt(limit)
                    let status = inflate(stream, Z_NO_FLUSH)
                    remaining = Int(stream.pointee.avail_in)
                    produced = limit - Int(stream.pointee.avail_out)
                    return status
                }
            }
            inputOffset = available - remaining
            if status == Z_STREAM_END {
                finished = true
                break
            }
            guard status == Z_OK || status == Z_BUF_ERROR else {
                throw KilnError(.invalidArgument, "the layer is not valid gzip (zlib status \(status))")
            }
        }
        return produced
    }
}
