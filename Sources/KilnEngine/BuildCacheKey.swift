import Foundation
import KilnModel
import KilnOCI
import KilnTOE

#if canImport(Glibc)
    import Glibc
#endif

/// The cache key of each build step, chained: a step's key hashes the key before it with what
/// the step does (a component's build-version ARN, document digest and parameters; an
/// instruction's text, environment and COPY sources' contents). The first key hashes the parent
/// digest, the platform and SOURCE_DATE_EPOCH. Equal keys mean equal layers, so a step whose
/// key is cached is not run again.
public enum BuildCacheKey {
    /// Names of cached steps' images in the store start with this.
    public static let namePrefix = "kiln-cache/"

    static func first(parent: Digest, platform: String, sourceDateEpoch: Int64?) -> Digest {
        Digest(
            sha256Of: Data(
                "kiln-step-cache-v2\nparent \(parent)\nplatform \(platform)\nepoch \(sourceDateEpoch.map(String.init) ?? "-")\n".utf8))
    }

    static func next(_ previous: Digest, _ step: String) -> Digest {
        Digest(sha256Of: Data("\(previous)\n\(step)\n".utf8))
    }

    /// Where the freshness checks of cached package steps are kept (see `FreshnessRecord`).
    public static func freshnessFolder(dataDirectory: String) -> String { FreshnessRecord.folder(dataDirectory) }

    /// The store name of the image that ends with the step whose key this is.
    static func tag(_ key: Digest) -> String { namePrefix + key.encoded }

    static func component(_ component: RecipeComponent) -> String {
        let parameters = component.run.parameters.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ";")
        return "component \(component.arn) document \(component.documentDigest) parameters \(parameters)"
    }

    /// A file's bytes and mode, or a folder's entries recursively, hashed.
    static func contentDigest(_ path: String) throws -> Digest {
        var text = ""
        func walk(_ path: String, _ relative: String) {
            var info = stat()
            // The named source is followed (COPY refuses it when it leads out of the context);
            // links inside it are keyed by their target text, as COPY copies them.
            let found = relative == "." ? stat(path, &info) : lstat(path, &info)
            guard found == 0 else {
                text += "missing \(relative)\n"
                return
            }
            let mode = info.st_mode & 0o7777
            switch info.st_mode & S_IFMT {
            case S_IFDIR:
                text += "dir \(relative) \(mode)\n"
                for child in ((try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []).sorted() {
                    walk(path + "/" + child, relative + "/" + child)
                }
            case S_IFREG:
                let bytes = (try? HostFileIO.readRegular(path, describe: relative, limit: 1 << 30)) ?? Data()
                text += "file \(relative) \(mode) \(Digest(sha256Of: bytes))\n"
            default:
                // A FIFO is never opened (it would block); COPY refuses it by name.
                let target = (try? FileManager.default.destinationOfSymbolicLink(atPath: path)) ?? ""
                text += "special \(relative) \(info.st_mode) \(target)\n"
            }
        }
        walk(path, ".")
        return Digest(sha256Of: Data(text.utf8))
    }
}
