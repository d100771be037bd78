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

    func error(_ error: KilnError) {
        FileHandle.standardError.write(Data("kiln: error: \(error.description)\n".utf8))
    }
}
