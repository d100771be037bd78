import KilnModel
import KilnOCI
import NIOCore
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// A blob being downloaded that uploads can read while it grows: a copy reads each blob from
/// the source once and streams it to every destination at the same time. If the download has to
/// start over, readers wait for the finished blob in the store instead.
public final class GrowingBlob: Sendable {
    enum Phase {
        case waiting, streaming, broken, complete
        case failed(KilnError)
    }

    private struct State {
        var phase = Phase.waiting
        var written: Int64 = 0
        var descriptor: Int32 = -1
        var waiters: [CheckedContinuation<Void, Never>] = []
    }

    private let state = Mutex(State())
    /// Where the blob is once committed.
    let finalPath: String

    init(finalPath: String) {
        self.finalPath = finalPath
    }

    deinit {
        state.withLock { if $0.descriptor >= 0 { close($0.descriptor) } }
    }

    // MARK: Writer side (the download)

    func attach(temporaryPath: String) {
        update { state in
            guard case .waiting = state.phase else {
                state.phase = .broken
                return
            }
            state.descriptor = open(temporaryPath, O_RDONLY | O_CLOEXEC)
            state.phase = state.descriptor >= 0 ? .streaming : .broken
        }
    }

    func wrote(total: Int64) { update { $0.written = total } }

    /// The download restarted from zero; bytes already read may not match what follows.
    func restarted() { update { $0.phase = .broken } }

    func completed() { update { $0.phase = .complete } }

    func failed(_ error: KilnError) { update { $0.phase = .failed(error) } }

    private func update(_ change: (inout State) -> Void) {
        let waiters = state.withLock { state in
            change(&state)
            defer { state.waiters = [] }
            return state.waiters
        }
        waiters.forEach { $0.resume() }
    }

    // MARK: Reader side (the uploads)

    enum Source {
        case stream(descriptor: Int32, available: Int64)
        /// Whole, at `finalPath`.
        case file
    }

    /// Waits until bytes past `offset` can be read (or the blob is whole in the store).
    func source(after offset: Int64) async throws -> Source {
        while true {
            if let ready = state.withLock({ Self.ready($0, after: offset) }) { return try ready.get() }
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let now = state.withLock { state -> Bool in
                    if Self.ready(state, after: offset) != nil { return true }
                    state.waiters.append(continuation)
                    return false
                }
                if now { continuation.resume() }
            }
        }
    }

    private static func ready(_ state: State, after offset: Int64) -> Result<Source, KilnError>? {
        switch state.phase {
        case .complete: .success(.file)
        case .failed(let error): .failure(error)
        case .streaming where state.written > offset: .success(.stream(descriptor: state.descriptor, available: state.written))
        case .waiting, .streaming, .broken: nil
        }
    }
}
