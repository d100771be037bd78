import Foundation
import KilnTestSupport
import Synchronization
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// A component step that floods its output must not flood Kiln's memory.
@Suite(
    "Step output memory: a build whose step prints 8 GiB without a newline", .serialized,
    .enabled(if: TestEnvironment.requiresRoot("/usr/bin/runc")))
struct StepOutputMemoryTests {
    /// 8 GiB. perl (Essential in Debian, so in the bootstrapped image) writes it in about 3 s here;
    /// `head -c | tr` took 25-38 s for the same bytes.
    static let outputBytes = 8 << 30

    /// Reads a pipe to its end on its own thread, keeping only the last `keep` bytes and whether
    /// `marker` passed by, so kiln's progress (tens of MiB here) never piles up in the test.
    final class Drain: Sendable {
        private struct State {
            var tail: [UInt8] = []
            var total = 0
            var sawMarker = false
        }

        private let state = Mutex(State())
        private let done = DispatchSemaphore(value: 0)

        init(_ handle: FileHandle, marker: String, keep: Int = 256 << 10) {
            let needle = Array(marker.utf8)
            Thread.detachNewThread { self.read(handle, needle: needle, keep: keep) }
        }

        private func read(_ handle: FileHandle, needle: [UInt8], keep: Int) {
            while true {
                let data = handle.availableData
                if data.isEmpty { break }
                state.withLock { state in
                    // Only the new bytes (and the end of the old, for a marker split between reads) are searched.
                    let from = max(0, state.tail.count - needle.count)
                    state.tail.append(contentsOf: data)
                    state.total += data.count
                    if !state.sawMarker, Self.contains(state.tail[from...], needle) { state.sawMarker = true }
                    if state.tail.count > 2 * keep { state.tail.removeFirst(state.tail.count - keep) }
                }
            }
            done.signal()
        }

        static func contains(_ haystack: ArraySlice<UInt8>, _ needle: [UInt8]) -> Bool {
            guard !needle.isEmpty, haystack.count >= needle.count else { return false }
            for start in haystack.startIndex...(haystack.endIndex - needle.count) where haystack[start] == needle[0] {
                if haystack[start..<start + needle.count].elementsEqual(needle) { return true }
            }
            return false
        }

        func wait() { done.wait() }
        var text: String { state.withLock { String(decoding: $0.tail, as: UTF8.self) } }
        var total: Int { state.withLock { $0.total } }
        var sawMarker: Bool { state.withLock { $0.sawMarker } }
    }

    /// VmHWM (peak resident set) of a live process, in KiB.
    static func peakResidentKiB(of pid: pid_t) -> Int? {
        guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return nil }
        guard let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmHWM:") }) else { return nil }
        return line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first.flatMap { Int($0) }
    }

    @Test("Kiln's peak RSS stays under 512 MiB, the build succeeds, and the log says the output was cut")
    func floodWithoutNewline() throws {
        let scratch = Scratch("kiln-output-memory")
        defer { scratch.remove() }
        _ = try scratch.write(
            "flood.yaml",
            """
            name: Flood
            schemaVersion: 1.0
            phases:
              - name: build
                steps:
                  - name: Print
                    action: ExecuteBash
                    inputs:
                      commands:
                        - perl -e 'my $s = "a" x (1 << 20); syswrite(STDOUT, $s) for 1..\(Self.outputBytes >> 20)'
            """)
        _ = try scratch.write("kiln.yaml", "dataDirectory: \(sharedDataDirectory)\n")
        let pipeline = try scratch.write(
            "pipeline.yaml",
            """
            components:
              - {name: flood, semanticVersion: 1.0.0, platform: Linux, uri: flood.yaml}
            containerRecipes:
              - name: flood-image
                semanticVersion: 1.0.0
                parentImage: bootstrap:debian:bookworm
                components: [{componentArn: flood/1.x.x}]
                dockerfileTemplateData: |
                  FROM {{{ imagebuilder:parentImage }}}
                  {{{ imagebuilder:environments }}}
                  {{{ imagebuilder:components }}}
            infrastructureConfigurations:
              - {name: builders, instanceTypes: [t3.small], instanceProfileName: kiln}
            imagePipelines:
              - {name: flood-pipeline, containerRecipeArn: flood-image/1.x.x, infrastructureConfigurationArn: builders, imageTestsConfiguration: {imageTestsEnabled: false}}
            """)

        let process = Process()
        process.executableURL = URL(fileURLWithPath: Kiln.binary)
        process.arguments = ["build", "-f", pipeline, "--no-cache"]
        process.currentDirectoryURL = URL(fileURLWithPath: scratch.path)
        let out = Pipe()
        let err = Pipe()
        process.standardOutput = out
        process.standardError = err
        let started = ContinuousClock.now
        try process.run()
        let stdout = Drain(out.fileHandleForReading, marker: "")
        let stderr = Drain(err.fileHandleForReading, marker: "[kiln: output cut")
        // VmHWM only grows, so the last reading before kiln exits is its peak (to within one poll).
        var peakKiB = 0
        while process.isRunning {
            if let reading = Self.peakResidentKiB(of: process.processIdentifier) { peakKiB = max(peakKiB, reading) }
            usleep(50_000)
        }
        process.waitUntilExit()
        stdout.wait()
        stderr.wait()
        let elapsed = ContinuousClock.now - started
        print("StepOutputMemoryTests: \(Self.outputBytes >> 30) GiB step output; kiln build took \(elapsed), peak RSS \(peakKiB >> 10) MiB")

        #expect(process.terminationStatus == 0, "\(stderr.text.suffix(4000))")
        #expect(peakKiB > 0, "VmHWM was read while kiln ran")
        #expect(peakKiB < 512 << 10, "kiln's peak RSS was \(peakKiB >> 10) MiB")
        #expect(stderr.sawMarker, "the progress says the output was cut")

        let record = try #require(
            (try? JSONSerialization.jsonObject(with: Data(stdout.text.utf8))) as? [String: Any], "\(stdout.text.suffix(2000))")
        #expect(record["status"] as? String == "AVAILABLE")
        let logs = try #require(record["logDirectory"] as? String)
        let folder = try #require(try FileManager.default.contentsOfDirectory(atPath: logs + "/build").first { $0.hasSuffix("flood") })
        let console = logs + "/build/" + folder + "/console.log"
        let size = try #require(try FileManager.default.attributesOfItem(atPath: console)[.size] as? Int)
        #expect(size < 128 << 20, "the console log holds the first 64 MiB and the last 64 KiB, not 8 GiB: \(size) bytes")
        let cut = try shell("grep -a -o '\\[kiln: output cut: [^]]*\\]' \(console) | cut -c1-200")
        #expect(
            cut.output.contains("[kiln: output cut: 64 MiB logged; the rest is not logged, only its last 64 KiB at the end]"),
            "\(cut.output)")
        #expect(cut.output.contains("bytes were not logged; the last 65536 bytes follow]"), "\(cut.output)")
        let kept = try shell("grep -a -c 'kiln: outputs.stdout keeps the first 16 MiB of the output' \(console)")
        #expect(kept.output == "1\n", "the step's kept stdout output says it was cut")
    }
}
