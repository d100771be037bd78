import Foundation
import KilnModel
import KilnTOE

/// `kiln toe run`'s settings: flags override the `--config` file, which overrides defaults.
struct RunSettings {
    var documentPaths: [(path: String, parameters: [String: String])] = []
    var phases: [String]?
    var globalParameters: [String: String] = [:]
    var executionId: String?
    var logDirectory: String?
    var stateDirectory: String?

    init(flags: ToeRunCommand) throws {
        if let configPath = flags.config {
            try apply(configFile: configPath, documentsFromFlags: flags.documents != nil, parametersFromFlags: flags.parameters != nil)
        }
        if let documents = flags.documents {
            documentPaths = documents.split(separator: ",").map { (String($0), [:]) }
        }
        guard !documentPaths.isEmpty else {
            throw KilnError(.invalidArgument, "no documents to run; pass --documents a.yaml,b.yaml or --config run.json")
        }
        if let phases = flags.phases { self.phases = Self.list(phases) }
        if let parameters = flags.parameters { globalParameters = try Self.parameters(parameters) }
        executionId = flags.executionId ?? executionId
        logDirectory = flags.logDirectory ?? logDirectory
        stateDirectory = flags.stateDirectory ?? stateDirectory
    }

    static func list(_ text: String) -> [String] {
        text.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
    }

    /// `name1=value1,name2=value2`; both parts are required, as in awstoe.
    static func parameters(_ text: String) throws -> [String: String] {
        var values: [String: String] = [:]
        for pair in text.split(separator: ",") {
            guard let equals = pair.firstIndex(of: "="), equals != pair.startIndex, pair.index(after: equals) != pair.endIndex else {
                throw KilnError(.invalidArgument, "--parameters entry '\(pair)' must be name=value with both parts")
            }
            values[String(pair[..<equals])] = String(pair[pair.index(after: equals)...])
        }
        return values
    }

    mutating func apply(configFile path: String, documentsFromFlags: Bool, parametersFromFlags: Bool) throws {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw KilnError(.notFound, "cannot read the run configuration '\(path)'")
        }
        guard let object = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] else {
            throw KilnError(.invalidArgument, "\(path): the run configuration must be a JSON object")
        }
        let known: Set<String> = [
            "documents", "phases", "parameters", "executionId", "executonId", "logDirectory", "stateDirectory",
            "logS3BucketName", "logS3KeyPrefix", "logS3BucketOwner", "cwLogGroup", "cwLogStream", "cwLogRegion",
            "cwIgnoreFailures", "documentS3BucketOwner", "trace",
        ]
        if let unknown = object.keys.sorted().first(where: { !known.contains($0) }) {
            throw KilnError(.invalidArgument, "\(path): unknown key '\(unknown)'; allowed: \(known.sorted().joined(separator: ", "))")
        }
        if let documents = object["documents"] {
            if documentsFromFlags { throw KilnError(.invalidArgument, "documents are given both in \(path) and with --documents; use one") }
            guard let entries = documents as? [[String: Any]] else {
                throw KilnError(.invalidArgument, "\(path): documents must be a list of {\"path\": ..., \"parameters\": [...]}")
            }
            documentPaths = try entries.enumerated().map { index, entry in
                guard let documentPath = entry["path"] as? String else {
                    throw KilnError(.invalidArgument, "\(path): documents[\(index)] needs a path")
                }
                return (documentPath, try Self.nameValues(entry["parameters"], where: "\(path): documents[\(index)].parameters"))
            }
        }
        if let phases = object["phases"] {
            if let text = phases as? String {
                self.phases = Self.list(text)
            } else if let items = phases as? [String] {
                self.phases = items
            } else {
                throw KilnError(.invalidArgument, "\(path): phases must be a string such as \"build,validate\"")
            }
        }
        if let parameters = object["parameters"] {
            if parametersFromFlags {
                throw KilnError(.invalidArgument, "parameters are given both in \(path) and with --parameters; use one")
            }
            globalParameters = try Self.nameValues(parameters, where: "\(path): parameters")
        }
        executionId = (object["executionId"] ?? object["executonId"]) as? String
        logDirectory = object["logDirectory"] as? String
        stateDirectory = object["stateDirectory"] as? String
    }

    static func nameValues(_ value: Any?, where location: String) throws -> [String: String] {
        guard let value else { return [:] }
        guard let items = value as? [[String: Any]] else {
            throw KilnError(.invalidArgument, "\(location) must be a list of {\"name\": ..., \"value\": ...}")
        }
        var result: [String: String] = [:]
        for (index, item) in items.enumerated() {
            guard let name = item["name"] as? String, let value = item["value"] else {
                throw KilnError(.invalidArgument, "\(location)[\(index)] needs a name and a value")
            }
            result[name] = (value as? String) ?? (value as? [String])?.first ?? "\(value)"
        }
        return result
    }

    /// Parses every document before anything runs, so a typo in the last one costs nothing.
    func loadDocuments() async throws -> [TOEDocumentRun] {
        let parser = ComponentDocumentParser(platform: .linux)
        var runs: [TOEDocumentRun] = []
        var problems: [DocumentIssue] = []
        var firstError: KilnError?
        for entry in documentPaths {
            if entry.path.hasPrefix("s3://") || entry.path.hasPrefix("arn:") {
                throw KilnError(
                    .unsupported,
                    "'\(entry.path)': kiln toe run reads documents from local files; download it first (aws s3 cp, or an ExecuteDocument step can fetch s3:// documents)"
                )
            }
            do {
                let document = try parser.parse(contentsOf: entry.path)
                runs.append(TOEDocumentRun(document: document, parameters: globalParameters.merging(entry.parameters) { _, own in own }))
            } catch let error as KilnError {
                problems += error.issues
                firstError = firstError ?? error
            }
        }
        if let firstError {
            throw KilnError(
                .invalidDocument, problems.isEmpty ? firstError.message : "the documents are not valid; nothing was run", issues: problems)
        }
        return runs
    }
}
