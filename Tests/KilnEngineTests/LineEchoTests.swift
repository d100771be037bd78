import Foundation
import Synchronization
import Testing

@testable import KilnEngine

/// Progress lines as a terminal would get them.
private final class Echoed: Sendable {
    private let lines = Mutex<[String]>([])
    func append(_ line: String) { lines.withLock { $0.append(line) } }
    var all: [String] { lines.withLock { $0 } }
}

@Suite("LineEcho: program output shown as progress, with bounded memory")
struct LineEchoTests {
    @Test("Output without a newline is echoed in 64 KiB pieces marked as continued; nothing grows with the output")
    func endlessLine() {
        let echoed = Echoed()
        let echo = LineEcho(prefix: "BUILD: ", progress: { echoed.append($0) })
        let chunk = [UInt8](repeating: UInt8(ascii: "a"), count: 65536)
        for _ in 0..<64 { echo.append(chunk) }
        echo.append(Array("\nerror: it broke\n".utf8))
        echo.flush()
        let lines = echoed.all
        // 4 MiB of 'a': 64 pieces, the last completed by the newline; then the error line.
        #expect(lines.count == 65)
        #expect(lines.dropLast(2).allSatisfy { $0.hasPrefix("BUILD: aaaa") && $0.hasSuffix("a [kiln: line continues]") })
        #expect(lines.last == "BUILD: error: it broke")
        #expect(echo.tail.hasSuffix("error: it broke"))
        #expect(echo.tail.count < 5 * 1002 + 20, "each kept line is cut to its last 1,000 characters in a failure message")
    }

    @Test("Kept lines are bounded by count and by bytes, and keep the latest")
    func keptLines() {
        let echo = LineEcho(prefix: "", progress: { _ in }, keep: 10_000)
        for index in 0..<30_000 { echo.append(Array("package-\(index) 1.0 -> 1.1\n".utf8)) }
        echo.flush()
        let lines = echo.lines
        #expect(lines.count == 10_000)
        #expect(lines.first == "package-20000 1.0 -> 1.1")
        #expect(lines.last == "package-29999 1.0 -> 1.1")

        let wide = LineEcho(prefix: "", progress: { _ in }, keep: 10_000)
        let long = [UInt8](repeating: UInt8(ascii: "x"), count: 60_000) + [10]
        for _ in 0..<200 { wide.append(long) }
        #expect(wide.lines.count == LineEcho.maxKeptBytes / 60_000, "4 MiB of kept lines at most")
    }

    @Test("A last line without a newline is echoed by flush")
    func flushLastLine() {
        let echoed = Echoed()
        let echo = LineEcho(prefix: "> ", progress: { echoed.append($0) })
        echo.append(Array("one\ntw".utf8))
        echo.append(Array("o".utf8))
        echo.flush()
        #expect(echoed.all == ["> one", "> two"])
        #expect(echo.tail == "one | two")
    }
}
