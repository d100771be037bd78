import Synchronization

/// Output bytes from several threads, kept in order, at most 1 MiB of them (the start).
public final class OutputCollector: Sendable {
    private let bytes = Mutex<[UInt8]>([])

    public init() {}

    public func append(_ chunk: [UInt8]) {
        bytes.withLock { $0 += chunk.prefix(max(0, 1 << 20 - $0.count)) }
    }

    public var text: String { bytes.withLock { String(decoding: $0, as: UTF8.self) } }
}
