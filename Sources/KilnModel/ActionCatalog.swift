/// What each AWSTOE action module accepts (reference §2.6). The validator checks documents
/// against it and the runner's actions read inputs by the same names.
public struct ActionSpec: Sendable, Hashable {
    public enum InputForm: Sendable, Hashable {
        /// `inputs` is a map of the listed keys.
        case map
        /// `inputs` is a list of maps, each with the listed keys.
        case list
        /// `inputs` is one conditional expression (Assert).
        case condition
    }

    public enum Platform: String, Sendable, Hashable {
        case linux, windows, macos
    }

    public var name: String
    public var form: InputForm
    public var inputsRequired: Bool
    public var keys: [InputKey]
    public var platforms: Set<Platform>

    public func key(named name: String) -> InputKey? { keys.first { $0.name == name } }
}

public struct InputKey: Sendable, Hashable {
    public enum Kind: Sendable, Hashable {
        case string
        case stringList
        case boolean
        case integer
        /// A map of string to string (InstallMSI properties).
        case stringMap
        /// A list of `{name, value}` maps (ExecuteDocument parameters).
        case nameValueList
    }

    public var name: String
    public var kind: Kind
    public var required: Bool

    public init(_ name: String, _ kind: Kind = .string, required: Bool = false) {
        self.name = name
        self.kind = kind
        self.required = required
    }
}

public enum ActionCatalog {
    private static let linuxAndMac: Set<ActionSpec.Platform> = [.linux, .macos]
    private static let everywhere: Set<ActionSpec.Platform> = [.linux, .windows, .macos]
    private static let posixOnly: Set<ActionSpec.Platform> = [.linux, .macos]
    private static let windowsOnly: Set<ActionSpec.Platform> = [.windows]

    private static func list(_ name: String, _ keys: [InputKey], _ platforms: Set<ActionSpec.Platform> = everywhere) -> ActionSpec {
        ActionSpec(name: name, form: .list, inputsRequired: true, keys: keys, platforms: platforms)
    }

    private static func map(_ name: String, _ keys: [InputKey], required: Bool = true, _ platforms: Set<ActionSpec.Platform> = everywhere)
        -> ActionSpec
    {
        ActionSpec(name: name, form: .map, inputsRequired: required, keys: keys, platforms: platforms)
    }

    private static let transfer = [
        InputKey("source", required: true), InputKey("destination", required: true), InputKey("overwrite", .boolean),
    ]
    private static let msiKeys = [
        InputKey("path", required: true), InputKey("reboot"), InputKey("logOptions"), InputKey("logFile"),
        InputKey("properties", .stringMap), InputKey("ignoreAuthenticodeSignatureErrors", .boolean),
        InputKey("allowUnsignedInstaller", .boolean),
    ]

    public static let all: [ActionSpec] = [
        ActionSpec(name: "Assert", form: .condition, inputsRequired: true, keys: [], platforms: everywhere),
        map("ExecuteBash", [InputKey("commands", .stringList, required: true)], linuxAndMac),
        map("ExecuteBinary", [InputKey("path", required: true), InputKey("arguments", .stringList)]),
        map("ExecutePowerShell", [InputKey("commands", .stringList), InputKey("file")], windowsOnly),
        map(
            "ExecuteDocument",
            [
                InputKey("document", required: true), InputKey("document-s3-bucket-owner"),
                InputKey("phases"), InputKey("parameters", .nameValueList),
            ]),
        list(
            "S3Download",
            [
                InputKey("source", required: true), InputKey("destination", required: true),
                InputKey("expectedBucketOwner"), InputKey("overwrite", .boolean),
            ]),
        list(
            "S3Upload",
            [
                InputKey("source", required: true), InputKey("destination", required: true),
                InputKey("recurse", .boolean), InputKey("expectedBucketOwner"),
            ]),
        list(
            "WebDownload",
            [
                InputKey("source", required: true), InputKey("destination", required: true),
                InputKey("overwrite", .boolean), InputKey("checksum"), InputKey("algorithm"),
                InputKey("ignoreCertificateErrors", .boolean),
            ]),
        list("AppendFile", [InputKey("path", required: true), InputKey("content"), InputKey("encoding")]),
        list("CopyFile", transfer),
        list("CopyFolder", transfer),
        list("MoveFile", transfer),
        list("MoveFolder", transfer),
        list(
            "CreateFile",
            [
                InputKey("path", required: true), InputKey("content"), InputKey("encoding"),
                InputKey("owner"), InputKey("group"), InputKey("permissions"), InputKey("overwrite", .boolean),
            ]),
        list(
            "CreateFolder",
            [
                InputKey("path", required: true), InputKey("owner"), InputKey("group"),
                InputKey("permissions"), InputKey("overwrite", .boolean),
            ]),
        list(
            "CreateSymlink", [InputKey("path", required: true), InputKey("target", required: true), InputKey("force", .boolean)], posixOnly),
        // `force` is not in AWS's table for DeleteFile, but a public AWS sample uses it; Kiln
        // accepts it and treats it as "a missing file is not an error".
        list("DeleteFile", [InputKey("path", required: true), InputKey("force", .boolean)]),
        list("DeleteFolder", [InputKey("path", required: true), InputKey("force", .boolean)]),
        list("ListFiles", [InputKey("path", required: true), InputKey("fileNamePattern"), InputKey("recursive", .boolean)]),
        list("ReadFile", [InputKey("path", required: true), InputKey("encoding"), InputKey("printFileContent", .boolean)]),
        list("SetFileEncoding", [InputKey("path", required: true), InputKey("encoding", required: true)]),
        list("SetFileOwner", [InputKey("path", required: true), InputKey("owner", required: true), InputKey("group")], posixOnly),
        list(
            "SetFolderOwner",
            [
                InputKey("path", required: true), InputKey("owner", required: true), InputKey("group"), InputKey("recursive", .boolean),
            ], posixOnly),
        list("SetFilePermissions", [InputKey("path", required: true), InputKey("permissions", required: true)], posixOnly),
        list(
            "SetFolderPermissions",
            [
                InputKey("path", required: true), InputKey("permissions", required: true), InputKey("recursive", .boolean),
            ], posixOnly),
        map("InstallMSI", msiKeys, windowsOnly),
        map("UninstallMSI", msiKeys, windowsOnly),
        map("Reboot", [InputKey("delaySeconds", .integer)], required: false),
        list(
            "SetRegistry",
            [
                InputKey("path", required: true), InputKey("name", required: true),
                InputKey("value", required: true), InputKey("type", required: true),
            ], windowsOnly),
        map("UpdateOS", [InputKey("include", .stringList), InputKey("exclude", .stringList)], required: false),
    ]

    public static func spec(named name: String) -> ActionSpec? { all.first { $0.name == name } }

    /// The action name nearest to a misspelling, when one is close enough to suggest.
    public static func closestName(to name: String, platform: ActionSpec.Platform) -> String? {
        let scored = names(for: platform).map { ($0, editDistance(name.lowercased(), $0.lowercased())) }
        guard let best = scored.min(by: { $0.1 < $1.1 }), best.1 <= max(2, name.count / 4) else { return nil }
        return best.0
    }

    static func editDistance(_ a: String, _ b: String) -> Int {
        let left = Array(a.unicodeScalars)
        let right = Array(b.unicodeScalars)
        var previous = Array(0...right.count)
        for (i, l) in left.enumerated() {
            var current = [i + 1] + Array(repeating: 0, count: right.count)
            for (j, r) in right.enumerated() {
                current[j + 1] = min(previous[j + 1] + 1, current[j] + 1, previous[j] + (l == r ? 0 : 1))
            }
            previous = current
        }
        return previous[right.count]
    }

    public static func names(for platform: ActionSpec.Platform) -> [String] {
        all.filter { $0.platforms.contains(platform) }.map(\.name)
    }

    /// Text encodings the file actions accept (case-insensitive).
    public static let encodings = [
        "utf8", "utf-8", "utf16", "utf-16", "utf16-le", "utf-16-le", "utf16-be", "utf-16-be",
        "utf32", "utf-32", "utf32-le", "utf-32-le", "utf32-be", "utf-32-be",
    ]
}
