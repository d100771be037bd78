import KilnModel

/// Where an image is or goes, in the forms skopeo users know:
/// `host[:port]/repo[:tag][@digest]` (or `docker://…`), `oci-layout:PATH[:TAG]`,
/// `oci-archive:PATH[:TAG]`, and `kiln:NAME` for Kiln's own content store.
public enum ImageLocation: Sendable, Hashable, CustomStringConvertible {
    case registry(ImageReference)
    case layout(path: String, tag: String)
    case archive(path: String, tag: String)
    case store(name: String)

    public init(_ text: String) throws {
        if text.hasPrefix("oci-layout:") {
            let (path, tag) = try Self.pathAndTag(String(text.dropFirst("oci-layout:".count)), whole: text)
            self = .layout(path: path, tag: tag)
        } else if text.hasPrefix("oci-archive:") {
            let (path, tag) = try Self.pathAndTag(String(text.dropFirst("oci-archive:".count)), whole: text)
            self = .archive(path: path, tag: tag)
        } else if text.hasPrefix("oci:") {
            let (path, tag) = try Self.pathAndTag(String(text.dropFirst("oci:".count)), whole: text)
            self = .layout(path: path, tag: tag)
        } else if text.hasPrefix("kiln:") {
            let name = String(text.dropFirst("kiln:".count))
            guard !name.isEmpty else { throw KilnError(.invalidArgument, "'\(text)' names no image; use kiln:NAME") }
            self = .store(name: name)
        } else if text.hasPrefix("docker://") {
            self = .registry(try ImageReference(String(text.dropFirst("docker://".count))))
        } else {
            self = .registry(try ImageReference(text))
        }
    }

    /// `PATH[:TAG]`: the tag is what follows the last ':' after the last '/'.
    private static func pathAndTag(_ rest: String, whole: String) throws -> (String, String) {
        var path = rest
        var tag = "latest"
        let lastSlash = rest.lastIndex(of: "/") ?? rest.startIndex
        if let colon = rest[lastSlash...].lastIndex(of: ":") {
            path = String(rest[..<colon])
            tag = String(rest[rest.index(after: colon)...])
        }
        guard !path.isEmpty else {
            throw KilnError(.invalidArgument, "'\(whole)' has no path; use \(whole.prefix { $0 != ":" }):PATH[:TAG]")
        }
        guard !tag.isEmpty, tag.allSatisfy({ $0.isLetter || $0.isNumber || "._-".contains($0) }) else {
            throw KilnError(.invalidArgument, "'\(whole)' has an invalid tag '\(tag)'; use letters, digits, '.', '_' and '-'")
        }
        return (path, tag)
    }

    public var description: String {
        switch self {
        case .registry(let reference): reference.description
        case .layout(let path, let tag): "oci-layout:\(path):\(tag)"
        case .archive(let path, let tag): "oci-archive:\(path):\(tag)"
        case .store(let name): "kiln:\(name)"
        }
    }
}
