import KilnModel

/// `host[:port]/repository[:tag][@digest]`, parsed once. Names without a registry host mean
/// Docker Hub (`docker.io/library/…`), as every other tool reads them.
public struct ImageReference: Sendable, Hashable, CustomStringConvertible {
    public var registry: String
    public var repository: String
    public var tag: String?
    public var digest: Digest?

    public init(_ text: String) throws {
        var rest = Substring(text)
        if let at = rest.firstIndex(of: "@") {
            digest = try Digest(String(rest[rest.index(after: at)...]))
            rest = rest[..<at]
        }
        let firstSlash = rest.firstIndex(of: "/")
        var registry = "docker.io"
        if let firstSlash {
            let head = rest[..<firstSlash]
            let port = head.split(separator: ":", omittingEmptySubsequences: false).dropFirst().first
            let hasPort = port.map { !$0.isEmpty && $0.allSatisfy(\.isNumber) } ?? false
            if (head.contains(".") && !head.contains(":")) || hasPort || head == "localhost" {
                registry = String(head)
                rest = rest[rest.index(after: firstSlash)...]
            }
        }
        if let colon = rest.lastIndex(of: ":") {
            tag = String(rest[rest.index(after: colon)...])
            rest = rest[..<colon]
        }
        var repository = String(rest)
        if registry == "docker.io", !repository.contains("/") { repository = "library/" + repository }
        guard !repository.isEmpty, repository.allSatisfy({ $0.isLowercase || $0.isNumber || "._-/".contains($0) }),
            !repository.hasPrefix("/"), !repository.hasSuffix("/"), !repository.contains("//")
        else {
            throw KilnError(
                .invalidArgument,
                "'\(text)' is not an image reference: the repository must be lowercase letters, digits and . _ - / (e.g. registry.example:5000/team/app:1.0)"
            )
        }
        if let tag, tag.isEmpty || tag.count > 128 || !tag.allSatisfy({ $0.isLetter || $0.isNumber || "._-".contains($0) }) {
            throw KilnError(.invalidArgument, "'\(text)' has an invalid tag '\(tag)'; use letters, digits, '.', '_' and '-' (at most 128)")
        }
        if tag == nil, digest == nil { tag = "latest" }
        self.registry = registry
        self.repository = repository
    }

    /// The tag or digest a registry's manifest endpoint takes.
    public var manifestReference: String { digest?.description ?? tag ?? "latest" }

    public var description: String {
        var text = "\(registry)/\(repository)"
        if let tag { text += ":\(tag)" }
        if let digest { text += "@\(digest)" }
        return text
    }
}
