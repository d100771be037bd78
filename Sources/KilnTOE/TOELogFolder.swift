import Foundation
import KilnModel

/// The AWSTOE log folder: `TOE_<date>_UTC-0_<executionId>/` with `console.log`, `application.log`,
/// `detailedoutput.json`, `chaining.json` and `document.yaml`.
public enum TOELogFolder {
    public static func path(in logDirectory: String, executionId: String, date: Date = Date()) -> String {
        let base = logDirectory.hasSuffix("/") ? String(logDirectory.dropLast()) : logDirectory
        return base + "/" + TOELogWriter.folderName(executionId: executionId, date: date)
    }

    /// The documents as given, one YAML document each.
    public static func writeDocuments(_ documents: [ComponentDocument], to folder: String) throws {
        let text = documents.map { "# source: \($0.source)\n" + $0.text + ($0.text.hasSuffix("\n") ? "" : "\n") }.joined(separator: "---\n")
        try Data(text.utf8).write(to: URL(fileURLWithPath: folder + "/document.yaml"))
    }

    public static func writeResults(_ outcome: TOERunOutcome, to folder: String) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .withoutEscapingSlashes]
        try encoder.encode(outcome.report).write(to: URL(fileURLWithPath: folder + "/detailedoutput.json"))
        try encoder.encode(ChainingFile(executionId: outcome.report.executionId, resolutions: outcome.chaining))
            .write(to: URL(fileURLWithPath: folder + "/chaining.json"))
    }

    struct ChainingFile: Encodable {
        var executionId: String
        var resolutions: [ChainingResolution]
    }
}
