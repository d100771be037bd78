import Foundation
import KilnOCI
import KilnRegistry
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// Shows transfers on stderr: one redrawn bar per endpoint on a terminal, plain log lines
/// otherwise (CI logs, pipes).
final class TransferProgressView: Sendable {
    private struct Endpoint {
        var expected: Int64 = 0
        var moved: Int64 = 0
        var blobsDone = 0
        var blobsSeen = 0
    }

    private struct State {
        var endpoints: [String: Endpoint] = [:]
        var order: [String] = []
        var drawnLines = 0
        var lastDraw = Date.distantPast
    }

    private let state = Mutex(State())
    private let interactive: Bool
    let quiet: Bool

    init(quiet: Bool = false, interactive: Bool = isatty(STDERR_FILENO) == 1 && ProcessInfo.processInfo.environment["TERM"] != "dumb") {
        self.quiet = quiet
        self.interactive = interactive
    }

    var observer: TransferObserver { { [self] event in handle(event) } }

    private func handle(_ event: TransferEvent) {
        guard !quiet else { return }
        var lines: [String] = []
        var redraw = false
        state.withLock { state in
            func touch(_ endpoint: String) {
                if state.endpoints[endpoint] == nil {
                    state.endpoints[endpoint] = Endpoint()
                    state.order.append(endpoint)
                }
            }
            switch event {
            case .blobStarted(let endpoint, _, let size):
                touch(endpoint)
                state.endpoints[endpoint]!.expected += size
                state.endpoints[endpoint]!.blobsSeen += 1
            case .bytes(let endpoint, _, let count):
                touch(endpoint)
                state.endpoints[endpoint]!.moved += count
            case .blobFinished(let endpoint, let digest, let size, let outcome):
                touch(endpoint)
                state.endpoints[endpoint]!.blobsDone += 1
                if outcome == .alreadyPresent || outcome == .mounted { state.endpoints[endpoint]!.blobsSeen += 1 }
                if !interactive { lines.append("\(endpoint): \(digest.encoded.prefix(12)) \(Self.size(size)) \(outcome.rawValue)") }
            case .retrying(let endpoint, let reason):
                lines.append("\(endpoint): retrying: \(reason)")
            case .manifestWritten(let endpoint, let reference, let digest):
                touch(endpoint)
                lines.append("\(reference): wrote \(digest)")
            }
            if interactive {
                let now = Date()
                if now.timeIntervalSince(state.lastDraw) > 0.1 || !lines.isEmpty {
                    state.lastDraw = now
                    redraw = true
                }
            }
        }
        if interactive {
            if redraw || !lines.isEmpty { draw(messages: lines) }
        } else if !lines.isEmpty {
            FileHandle.standardError.write(Data(lines.map { $0 + "\n" }.joined().utf8))
        }
    }

    /// Clears the bars, prints messages above them, and draws the bars again.
    private func draw(messages: [String]) {
        let text = state.withLock { state -> String in
            var text = state.drawnLines > 0 ? "\u{1B}[\(state.drawnLines)A\u{1B}[J" : ""
            for message in messages { text += message + "\n" }
            for name in state.order {
                let endpoint = state.endpoints[name]!
                let fraction =
                    endpoint.expected > 0
                    ? min(1, Double(endpoint.moved) / Double(endpoint.expected)) : (endpoint.blobsDone == endpoint.blobsSeen ? 1 : 0)
                let filled = Int(fraction * 24)
                let bar = String(repeating: "#", count: filled) + String(repeating: "-", count: 24 - filled)
                text +=
                    "\(name.padding(toLength: max(name.count, 22), withPad: " ", startingAt: 0)) [\(bar)] \(Self.size(endpoint.moved))/\(Self.size(endpoint.expected))  \(endpoint.blobsDone)/\(endpoint.blobsSeen) blobs\n"
            }
            state.drawnLines = state.order.count
            return text
        }
        FileHandle.standardError.write(Data(text.utf8))
    }

    /// Draws the final state (every bar complete or not) once the work is over.
    func finish() {
        if interactive && !quiet { draw(messages: []) }
    }

    static func size(_ bytes: Int64) -> String {
        let units = ["B", "KB", "MB", "GB", "TB"]
        var value = Double(bytes)
        var unit = 0
        while value >= 1000, unit < units.count - 1 {
            value /= 1000
            unit += 1
        }
        return unit == 0 ? "\(bytes) B" : String(format: "%.1f %@", value, units[unit])
    }
}
