import Foundation
import KilnModel

/// Progress and errors go to stderr, so stdout carries only machine-readable results.
struct TerminalOutput: Sendable {
    func progress(_ line: String) {
        FileHandle.standardError.write(Data((line + "\n").utf8))
    }

    func warning(_ message: String) {
        FileHandle.standardError.write(Data("kiln: warning: \(message)\n".utf8))
    }

    /// Pretty, sorted JSON on stdout, as every `--json` and `inspect` prints it.
    static func printJSON<T: Encodable>(_ value: T) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        print(String(decoding: try encoder.encode(value), as: UTF8.self))
    }

    func error(_ error: KilnError) {
        FileHandle.standardError.write(Data("kiln: error: \(error.description)\n".utf8))
    }
}
