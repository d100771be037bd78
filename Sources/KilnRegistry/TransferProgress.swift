import KilnOCI
import Synchronization

/// What a pull, push or copy reports as it goes. `endpoint` names the registry, layout or store
/// on the far side: the destination of a push, the source of a pull.
public enum TransferEvent: Sendable, Hashable {
    public enum Outcome: String, Sendable, Hashable {
        case uploaded, downloaded, alreadyPresent = "already present", mounted, copied
    }

    case blobStarted(endpoint: String, digest: Digest, size: Int64)
    /// `count` more bytes moved (a delta, not a total).
    case bytes(endpoint: String, digest: Digest, count: Int64)
    case blobFinished(endpoint: String, digest: Digest, size: Int64, outcome: Outcome)
    case retrying(endpoint: String, reason: String)
    case manifestWritten(endpoint: String, reference: String, digest: Digest)
}

extension TransferEvent {
    public var endpoint: String {
        switch self {
        case .blobStarted(let endpoint, _, _), .bytes(let endpoint, _, _), .blobFinished(let endpoint, _, _, _),
            .retrying(let endpoint, _), .manifestWritten(let endpoint, _, _):
            endpoint
        }
    }

    /// The same event, charged to another endpoint (a client names its host; a copy names the destination).
    func charged(to endpoint: String) -> TransferEvent {
        switch self {
        case .blobStarted(_, let digest, let size): .blobStarted(endpoint: endpoint, digest: digest, size: size)
        case .bytes(_, let digest, let count): .bytes(endpoint: endpoint, digest: digest, count: count)
        case .blobFinished(_, let digest, let size, let outcome):
            .blobFinished(endpoint: endpoint, digest: digest, size: size, outcome: outcome)
        case .retrying(_, let reason): .retrying(endpoint: endpoint, reason: reason)
        case .manifestWritten(_, let reference, let digest): .manifestWritten(endpoint: endpoint, reference: reference, digest: digest)
        }
    }
}

public typealias TransferObserver = @Sendable (TransferEvent) -> Void

/// Bytes and blobs moved per endpoint; the pricing work meters cross-region transfer from this.
public final class TransferMeter: Sendable {
    public struct Totals: Sendable, Hashable, Codable {
        public var bytes: Int64 = 0
        public var blobsSent = 0
        public var blobsSkipped = 0
        public var blobsMounted = 0
        public var retries = 0
    }

    private let totals = Mutex<[String: Totals]>([:])

    public init() {}

    public func record(_ event: TransferEvent) {
        totals.withLock { totals in
            switch event {
            case .bytes(let endpoint, _, let count): totals[endpoint, default: Totals()].bytes += count
            case .blobFinished(let endpoint, _, _, .alreadyPresent): totals[endpoint, default: Totals()].blobsSkipped += 1
            case .blobFinished(let endpoint, _, _, .mounted): totals[endpoint, default: Totals()].blobsMounted += 1
            case .blobFinished(let endpoint, _, _, _): totals[endpoint, default: Totals()].blobsSent += 1
            case .retrying(let endpoint, _): totals[endpoint, default: Totals()].retries += 1
            case .blobStarted, .manifestWritten: break
            }
        }
    }

    public var snapshot: [String: Totals] { totals.withLock { $0 } }
}

/// A counting semaphore for async tasks: at most `limit` transfers run at once, served in order.
final class TransferLimiter: Sendable {
    private struct State {
        var available: Int
        var waiting: [CheckedContinuation<Void, Never>] = []
    }

    private let state: Mutex<State>

    init(limit: Int) {
        state = Mutex(State(available: max(1, limit)))
    }

    func withPermit<T: Sendable>(_ body: () async throws -> T) async throws -> T {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let granted = state.withLock { state -> Bool in
                if state.available > 0 {
                    state.available -= 1
                    return true
                }
                state.waiting.append(continuation)
                return false
            }
            if granted { continuation.resume() }
        }
        defer {
            let next = state.withLock { state -> CheckedContinuation<Void, Never>? in
                if state.waiting.isEmpty {
                    state.available += 1
                    return nil
                }
                return state.waiting.removeFirst()
            }
            next?.resume()
        }
        return try await body()
    }
}
