import Foundation

/// A container recipe's `dockerfileTemplateData`, parsed: Image Builder's placeholders plus the
/// Dockerfile instructions that need no build context, and COPY/ADD from an optional context.
public struct DockerfileTemplate: Sendable, Hashable {
    public enum Instruction: Sendable, Hashable {
        /// `FROM {{{ imagebuilder:parentImage }}}` or any other image.
        case from(image: String)
        /// `{{{ imagebuilder:environments }}}`: where component documents are staged.
        case environments
        /// `{{{ imagebuilder:components }}}`: where the components run.
        case components
        case run(command: [String])
        case env([NameValue])
        case arg(name: String, defaultValue: String?)
        case workdir(String)
        case user(String)
        case entrypoint([String])
        case cmd([String])
        case label([NameValue])
        case expose([String])
        case shell([String])
        case volume([String])
        case stopSignal(String)
        /// nil for `HEALTHCHECK NONE`.
        case healthcheck(command: [String]?, options: [String: String])
        case copy(sources: [String], destination: String, chown: String?)
        case add(sources: [String], destination: String, chown: String?)
    }

    public struct NameValue: Sendable, Hashable {
        public var name: String
        public var value: String
    }

    public struct Step: Sendable, Hashable {
        public var instruction: Instruction
        /// 1-based line in the template where the instruction starts.
        public var line: Int
    }

    public var steps: [Step]

    /// The default of `ARG SOURCE_DATE_EPOCH=N`, a recipe's own setting for reproducible builds.
    public func sourceDateEpoch(source: String) throws -> Int64? {
        for step in steps {
            guard case .arg("SOURCE_DATE_EPOCH", let value?) = step.instruction else { continue }
            guard let seconds = Int64(value), seconds >= 0 else {
                throw KilnError(
                    .invalidDocument,
                    "\(source): dockerfileTemplateData line \(step.line): ARG SOURCE_DATE_EPOCH=\(value) must be whole seconds since 1970, like 1700000000"
                )
            }
            return seconds
        }
        return nil
    }

    public static let canonical =
        "FROM {{{ imagebuilder:parentImage }}}\n{{{ imagebuilder:environments }}}\n{{{ imagebuilder:components }}}\n"

    /// Parses `text`, with `parentImage` put in for its placeholder. `source` names the recipe in errors.
    public init(parsing text: String, parentImage: String, source: String) throws {
        var steps: [Step] = []
        var shell = ["/bin/sh", "-c"]
        var sawEnvironments = false
        for (line, logical) in Self.logicalLines(text) {
            let trimmed = logical.trimmingCharacters(in: .whitespaces)
            if trimmed.isEmpty || trimmed.hasPrefix("#") { continue }
            func fail(_ message: String) -> KilnError {
                KilnError(.invalidDocument, "\(source): dockerfileTemplateData line \(line): \(message)")
            }
            let placeholder = trimmed.replacingOccurrences(of: " ", with: "")
            if placeholder == "{{{imagebuilder:environments}}}" {
                sawEnvironments = true
                steps.append(Step(instruction: .environments, line: line))
                continue
            }
            if placeholder == "{{{imagebuilder:components}}}" {
                guard sawEnvironments else {
                    throw fail("{{{ imagebuilder:components }}} must come after {{{ imagebuilder:environments }}}")
                }
                steps.append(Step(instruction: .components, line: line))
                continue
            }
            let keywordEnd = trimmed.firstIndex(where: \.isWhitespace) ?? trimmed.endIndex
            let keyword = trimmed[..<keywordEnd].uppercased()
            let rest = trimmed[keywordEnd...].trimmingCharacters(in: .whitespaces)
            let instruction: Instruction
            switch keyword {
            case "FROM":
                let image = rest.replacingOccurrences(
                    of: #"\{\{\{\s*imagebuilder:parentImage\s*\}\}\}"#, with: parentImage, options: .regularExpression)
                guard !image.isEmpty, !image.contains("{{{") else {
                    throw fail("FROM needs an image, usually {{{ imagebuilder:parentImage }}}")
                }
                guard steps.isEmpty || steps.allSatisfy({ if case .arg = $0.instruction { true } else { false } }) else {
                    throw fail("FROM must be the first instruction; multi-stage templates are not supported")
                }
                instruction = .from(image: image.split(separator: " ").first.map(String.init) ?? image)
            case "RUN":
                instruction = .run(command: try Self.command(rest, shell: shell) ?? { throw fail("RUN needs a command") }())
            case "CMD":
                instruction = .cmd(try Self.command(rest, shell: shell) ?? { throw fail("CMD needs a command") }())
            case "ENTRYPOINT":
                instruction = .entrypoint(try Self.command(rest, shell: shell) ?? { throw fail("ENTRYPOINT needs a command") }())
            case "SHELL":
                guard let form = try Self.jsonArray(rest), !form.isEmpty else {
                    throw fail("SHELL takes a JSON array, e.g. [\"/bin/bash\", \"-c\"]")
                }
                shell = form
                instruction = .shell(form)
            case "ENV":
                instruction = .env(try Self.pairs(rest, legacySpaceForm: true) { fail($0) })
            case "LABEL":
                instruction = .label(try Self.pairs(rest, legacySpaceForm: false) { fail($0) })
            case "ARG":
                guard !rest.isEmpty, !rest.contains(" ") else { throw fail("ARG takes one NAME or NAME=default") }
                let parts = rest.split(separator: "=", maxSplits: 1).map(String.init)
                instruction = .arg(name: parts[0], defaultValue: parts.count > 1 ? Self.unquote(parts[1]) : nil)
            case "WORKDIR":
                guard !rest.isEmpty else { throw fail("WORKDIR needs a path") }
                instruction = .workdir(Self.unquote(rest))
            case "USER":
                guard !rest.isEmpty, !rest.contains(" ") else { throw fail("USER takes one user[:group]") }
                instruction = .user(rest)
            case "EXPOSE":
                let ports = rest.split(separator: " ").map(String.init)
                guard !ports.isEmpty,
                    ports.allSatisfy({ $0.range(of: #"^[0-9]+(-[0-9]+)?(/(tcp|udp|sctp))?$"#, options: .regularExpression) != nil })
                else {
                    throw fail("EXPOSE takes ports such as 80 or 8080/tcp")
                }
                instruction = .expose(ports)
            case "VOLUME":
                let paths = try Self.jsonArray(rest) ?? rest.split(separator: " ").map(String.init)
                guard !paths.isEmpty else { throw fail("VOLUME needs a path") }
                instruction = .volume(paths)
            case "STOPSIGNAL":
                guard !rest.isEmpty else { throw fail("STOPSIGNAL needs a signal, e.g. SIGTERM") }
                instruction = .stopSignal(rest)
            case "HEALTHCHECK":
                instruction = try Self.healthcheck(rest, shell: shell) { fail($0) }
            case "COPY", "ADD":
                var words = try Self.jsonArray(rest) ?? rest.split(separator: " ").map(String.init)
                var chown: String?
                while let flag = words.first, flag.hasPrefix("--") {
                    if flag.hasPrefix("--chown=") {
                        chown = String(flag.dropFirst("--chown=".count))
                    } else {
                        throw fail("\(keyword) option \(flag) is not supported; only --chown")
                    }
                    words.removeFirst()
                }
                guard words.count >= 2 else { throw fail("\(keyword) needs at least one source and a destination") }
                if let remote = words.dropLast().first(where: { $0.contains("://") }) {
                    throw fail("\(keyword) from a URL (\(remote)) is not supported; download it in a component step (WebDownload)")
                }
                let sources = Array(words.dropLast())
                instruction =
                    keyword == "COPY"
                    ? .copy(sources: sources, destination: words.last!, chown: chown)
                    : .add(sources: sources, destination: words.last!, chown: chown)
            case "ONBUILD", "MAINTAINER":
                throw fail("\(keyword) is not supported in a container recipe; use LABEL for metadata")
            default:
                throw fail(
                    "unknown instruction '\(keyword)'; allowed: FROM, RUN, ENV, ARG, WORKDIR, USER, ENTRYPOINT, CMD, LABEL, EXPOSE, SHELL, VOLUME, STOPSIGNAL, HEALTHCHECK, COPY, ADD and the imagebuilder placeholders"
                )
            }
            steps.append(Step(instruction: instruction, line: line))
        }
        guard let first = steps.first(where: { if case .arg = $0.instruction { false } else { true } }), case .from = first.instruction
        else {
            throw KilnError(.invalidDocument, "\(source): dockerfileTemplateData must start with FROM {{{ imagebuilder:parentImage }}}")
        }
        self.steps = steps
    }

    /// Lines joined across trailing backslashes, each with the number of its first line.
    static func logicalLines(_ text: String) -> [(Int, String)] {
        var result: [(Int, String)] = []
        var pending = ""
        var start = 1
        for (index, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = String(raw)
            if pending.isEmpty { start = index + 1 }
            if pending.isEmpty == false, line.trimmingCharacters(in: .whitespaces).hasPrefix("#") { continue }
            if line.hasSuffix("\\") {
                pending += line.dropLast() + " "
            } else {
                result.append((start, pending + line))
                pending = ""
            }
        }
        if !pending.isEmpty { result.append((start, pending)) }
        return result
    }

    /// Exec form (a JSON array) as is; shell form wrapped in the current SHELL.
    static func command(_ text: String, shell: [String]) throws -> [String]? {
        if text.isEmpty { return nil }
        if let exec = try jsonArray(text) { return exec }
        return shell + [text]
    }

    /// A JSON array of strings, or nil when `text` is not one.
    static func jsonArray(_ text: String) throws -> [String]? {
        guard text.hasPrefix("[") else { return nil }
        guard let value = try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String] else { return nil }
        return value
    }

    static func unquote(_ text: String) -> String {
        if text.count >= 2, let first = text.first, first == "\"" || first == "'", text.last == first {
            return String(text.dropFirst().dropLast()).replacingOccurrences(of: "\\\(first)", with: String(first))
        }
        return text
    }

    /// `a=1 b="two words"`, or the legacy `NAME value with spaces` for ENV.
    static func pairs(_ text: String, legacySpaceForm: Bool, fail: (String) -> KilnError) throws -> [NameValue] {
        let words = splitWords(text)
        if legacySpaceForm, let first = words.first, !first.contains("=") {
            let value = text.dropFirst(first.count).trimmingCharacters(in: .whitespaces)
            return [NameValue(name: first, value: value)]
        }
        return try words.map { word in
            guard let equals = word.firstIndex(of: "="), equals != word.startIndex else { throw fail("'\(word)' must be NAME=value") }
            return NameValue(name: String(word[..<equals]), value: unquote(String(word[word.index(after: equals)...])))
        }
    }

    /// Words split on spaces outside quotes.
    static func splitWords(_ text: String) -> [String] {
        var words: [String] = []
        var current = ""
        var quote: Character?
        var escaped = false
        for character in text {
            if escaped {
                current.append(character)
                escaped = false
            } else if character == "\\" {
                current.append(character)
                escaped = true
            } else if let open = quote {
                current.append(character)
                if character == open { quote = nil }
            } else if character == "\"" || character == "'" {
                current.append(character)
                quote = character
            } else if character == " " || character == "\t" {
                if !current.isEmpty { words.append(current) }
                current = ""
            } else {
                current.append(character)
            }
        }
        if !current.isEmpty { words.append(current) }
        return words
    }

    static func healthcheck(_ text: String, shell: [String], fail: (String) -> KilnError) throws -> Instruction {
        if text.uppercased() == "NONE" { return .healthcheck(command: nil, options: [:]) }
        var rest = Substring(text)
        var options: [String: String] = [:]
        while rest.hasPrefix("--") {
            let end = rest.firstIndex(of: " ") ?? rest.endIndex
            let option = rest[rest.index(rest.startIndex, offsetBy: 2)..<end]
            guard let equals = option.firstIndex(of: "="),
                ["interval", "timeout", "start-period", "start-interval", "retries"].contains(String(option[..<equals]))
            else {
                throw fail(
                    "HEALTHCHECK option --\(option) is not one of --interval, --timeout, --start-period, --start-interval, --retries")
            }
            options[String(option[..<equals])] = String(option[option.index(after: equals)...])
            rest = rest[end...].drop { $0 == " " }
        }
        guard rest.uppercased().hasPrefix("CMD") else { throw fail("HEALTHCHECK needs CMD followed by a command, or NONE") }
        let command = rest.dropFirst(3).trimmingCharacters(in: .whitespaces)
        guard let parsed = try Self.command(command, shell: shell) else { throw fail("HEALTHCHECK CMD needs a command") }
        return .healthcheck(command: parsed, options: options)
    }
}
