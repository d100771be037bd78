import Foundation
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// SIGINT and SIGTERM are watched instead of ending Kiln: `handle` gets each one's number and
/// whether it is the first.
// @unchecked: the sources are set once in init and only cancelled afterwards, and a dispatch
// source may be cancelled from any thread.
public final class InterruptSignals: @unchecked Sendable {
    private final class Flag: Sendable {
        let fired = Atomic<Bool>(false)
    }

    private let sources: [any DispatchSourceSignal]
    private let flag: Flag

    public init(_ handle: @escaping @Sendable (_ signal: Int32, _ first: Bool) -> Void) {
        let flag = Flag()
        self.flag = flag
        sources = [SIGINT, SIGTERM].map { number in
            signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
            source.setEventHandler { handle(number, !flag.fired.exchange(true, ordering: .relaxed)) }
            source.resume()
            return source
        }
    }

    public var interrupted: Bool { flag.fired.load(ordering: .relaxed) }

    /// Gives both signals back their default action.
    public func stop() {
        sources.forEach { $0.cancel() }
        signal(SIGINT, SIG_DFL)
        signal(SIGTERM, SIG_DFL)
    }
}
