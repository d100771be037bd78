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
                // gzip allows members one after another (pigz, cat a.gz b.gz): go on with the next.
                if inputOffset >= input.count {
                    input = Array(try handle.read(upToCount: 1 << 20) ?? Data())
                    inputOffset = 0
                }
                if input.isEmpty {
                    finished = true
                    break
                }
                inflateReset(stream)
                continue
            }
            guard status == Z_OK || status == Z_BUF_ERROR else {
                throw KilnError(.invalidArgument, "the layer is not valid gzip (zlib status \(status))")
            }
        }
        return produced
    }
}

/// How many bytes one layer's tar stream may hold once gunzipped. A small gzip file can inflate
/// to terabytes and fill the disk Kiln (root) unpacks onto; 32 GiB is more than any real layer.
/// `KILN_MAX_LAYER_BYTES` sets another limit (bytes, or with a K, M, G or T suffix).
public enum LayerSizeLimit {
    public static let environmentVariable = "KILN_MAX_LAYER_BYTES"
    public static let defaultBytes: Int64 = 32 << 30

    /// The limit from `KILN_MAX_LAYER_BYTES`, or the default when it is unset.
    public static func configured(_ environment: [String: String] = ProcessInfo.processInfo.environment) throws -> Int64 {
        guard let text = environment[environmentVariable]?.trimmingCharacters(in: .whitespaces), !text.isEmpty else {
            return defaultBytes
        }
        guard let bytes = parse(text) else {
            throw KilnError(
                .invalidArgument,
                "\(environmentVariable)='\(text.prefix(40))' is not a size; give a number of bytes, or one with K, M, G or T (e.g. 64G)")
        }
        return bytes
    }

    /// "68719476736", "64G", "64GiB" or "64GB" (binary units either way).
    static func parse(_ text: String) -> Int64? {
        let shifts: [Character: Int64] = ["K": 10, "M": 20, "G": 30, "T": 40]
        var digits = Substring(text.uppercased())
        if digits.hasSuffix("IB") { digits = digits.dropLast(2) } else if digits.hasSuffix("B") { digits = digits.dropLast() }
        var shift: Int64 = 0
        if let unit = digits.last.flatMap({ shifts[$0] }) {
            shift = unit
            digits = digits.dropLast()
        }
        guard let value = Int64(digits), value > 0, value <= Int64.max >> shift else { return nil }
        return value << shift
    }

    /// The error for `what` (e.g. "layer sha256:…") unpacking past `limit`.
    public static func exceeded(_ what: String, limit: Int64) -> KilnError {
        KilnError(
            .invalidArgument,
            "\(what) unpacks to more than \(describe(limit)), Kiln's limit for one layer; it may be a gzip bomb. If the image is trusted and the layer really is this large, raise the limit with \(environmentVariable) (e.g. \(environmentVariable)=\(limit >> 30 < 1 ? 64 : (limit >> 30) * 2)G)"
        )
    }

    static func describe(_ bytes: Int64) -> String {
        for (unit, shift) in [("GiB", Int64(30)), ("MiB", 20), ("KiB", 10)] where bytes >= 1 << shift && bytes % (1 << shift) == 0 {
            return "\(bytes >> shift) \(unit) (\(bytes) bytes)"
        }
        return "\(bytes) bytes"
    }
}
