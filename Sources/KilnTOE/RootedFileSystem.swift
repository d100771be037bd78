import Foundation
import KilnModel

#if canImport(Glibc)
    import Glibc
#endif

/// Maps instance paths to host paths under a root directory, resolving `..` and symlinks
/// component by component so that nothing an instance contains can point outside its root.
/// With root `/` (the local host) it is plain path resolution.
public struct RootedFileSystem: Sendable {
    public let root: String
    /// Instance directory that relative paths start from.
    public var workingDirectory: String

    public init(root: String, workingDirectory: String = "/") {
        let trimmed = root.count > 1 && root.hasSuffix("/") ? String(root.dropLast()) : root
        self.root = trimmed
        self.workingDirectory = workingDirectory
    }

    /// The host path for `path`. Symlinks in the parent directories are always followed inside
    /// the root; the final component is followed only with `followFinal`.
    public func hostPath(_ path: String, followFinal: Bool = true) throws -> String {
        try hostPath(instancePath: resolve(path, followFinal: followFinal))
    }

    /// The canonical instance path for `path`.
    public func resolve(_ path: String, followFinal: Bool = true) throws -> String {
        let absolute = path.hasPrefix("/") ? path : workingDirectory + "/" + path
        var pending = absolute.split(separator: "/", omittingEmptySubsequences: true).map(String.init)
        pending.reverse()
        var resolved: [String] = []
        var linksFollowed = 0
        while let component = pending.popLast() {
            switch component {
            case ".":
                continue
            case "..":
                _ = resolved.popLast()
                continue
            default:
                break
            }
            let candidate = resolved + [component]
            let isFinal = pending.isEmpty
            if isFinal && !followFinal {
                resolved = candidate
                continue
            }
            let host = hostPath(instancePath: "/" + candidate.joined(separator: "/"))
            var info = stat()
            guard lstat(host, &info) == 0, info.st_mode & S_IFMT == S_IFLNK else {
                resolved = candidate
                continue
            }
            linksFollowed += 1
            if linksFollowed > 40 {
                throw KilnError(.invalidArgument, "too many levels of symbolic links resolving '\(path)' in the instance")
            }
            let target = try FileManager.default.destinationOfSymbolicLink(atPath: host)
            if target.hasPrefix("/") { resolved = [] }
            let targetComponents = target.split(separator: "/", omittingEmptySubsequences: true).map(String.init)
            pending.append(contentsOf: targetComponents.reversed())
        }
        return "/" + resolved.joined(separator: "/")
    }

    func hostPath(instancePath: String) -> String {
        root == "/" ? instancePath : root + instancePath
    }
}
