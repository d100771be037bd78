import CKilnSystem
import Foundation
import KilnModel
import KilnOCI

#if canImport(Glibc)
    import Glibc
#endif

/// Reads an image's files from its unpacked layer folders on the host, without an instance and
/// without a mount: the topmost layer that has a path wins; overlay whiteouts (0/0 character
/// devices) and opaque folders hide what lies below. Layers are untrusted: symlinks are resolved
/// by Kiln inside the image (as in a chroot), and every host call uses O_NOFOLLOW, so no path
/// can lead to a host file.
public struct ImageFiles: Sendable {
    /// Layer folders, topmost first.
    let folders: [String]

    public init(image: Descriptor, host: InstanceHost) throws {
        let (manifest, config) = try host.store.image(image.digest)
        folders = try host.layers.folders(for: manifest, config: config, store: host.store).reversed()
    }

    public init(folders topmostFirst: [String]) {
        folders = topmostFirst
    }

    /// What one layer holds at a path (lstat semantics for the last component).
    enum Entry {
        case absent, deleted, file(Int32?), directory(opaque: Bool), symlink(String), other
        /// A component before the last is not a folder in this layer.
        case notFolder
    }

    /// `components` in `folder`, one component at a time with O_NOFOLLOW; a regular file is
    /// opened when `openFile` (O_NONBLOCK, so a FIFO can never block).
    private func lookup(_ components: [String], in folder: String, openFile: Bool = false) -> Entry {
        guard !components.isEmpty else { return .directory(opaque: false) }
        var directory = open(folder, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard directory >= 0 else { return .absent }
        defer { close(directory) }
        for (index, component) in components.enumerated() {
            var info = stat()
            guard fstatat(directory, component, &info, AT_SYMLINK_NOFOLLOW) == 0 else { return .absent }
            let type = info.st_mode & S_IFMT
            if type == S_IFCHR && info.st_rdev == 0 { return .deleted }
            guard index == components.count - 1 else {
                guard type == S_IFDIR else { return .notFolder }
                let child = openat(directory, component, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
                guard child >= 0 else { return .absent }
                close(directory)
                directory = child
                continue
            }
            switch type {
            case S_IFREG:
                guard openFile else { return .file(nil) }
                let file = openat(directory, component, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC)
                return file >= 0 ? .file(file) : .other
            case S_IFDIR:
                let child = openat(directory, component, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
                defer { if child >= 0 { close(child) } }
                return .directory(opaque: child >= 0 && Self.isOpaque(child))
            case S_IFLNK:
                var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
                let count = readlinkat(directory, component, &buffer, Int(PATH_MAX))
                guard count > 0 else { return .other }
                return .symlink(String(decoding: buffer[0..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self))
            default:
                return .other
            }
        }
        return .absent
    }

    static func isOpaque(_ descriptor: Int32) -> Bool {
        var value: UInt8 = 0
        return fgetxattr(descriptor, "trusted.overlay.opaque", &value, 1) == 1 && value == UInt8(ascii: "y")
    }

    /// Whether an opaque folder (or a non-folder) in `folder` hides `components` in lower layers.
    private func hiddenBelow(_ components: [String], in folder: String) -> Bool {
        for length in stride(from: components.count - 1, through: 1, by: -1) {
            switch lookup(Array(components.prefix(length)), in: folder) {
            case .directory(let opaque): if opaque { return true }
            case .absent: continue
            default: return true
            }
        }
        return false
    }

    /// The entry the merged image has at exactly `components` (topmost layer wins).
    private func merged(_ components: [String], openFile: Bool = false) -> Entry {
        for folder in folders {
            switch lookup(components, in: folder, openFile: openFile) {
            case .absent, .notFolder:
                if hiddenBelow(components, in: folder) { return .absent }
            case let entry:
                return entry
            }
        }
        return .absent
    }

    /// `path` with every symlink resolved inside the image: an absolute target starts again at
    /// the image's root and `..` stops there, as in a chroot. Returns the entry and its components.
    private func resolve(_ path: String, openFile: Bool = false) -> (Entry, [String]) {
        var pending = path.split(separator: "/").map(String.init)
        var resolved: [String] = []
        var hops = 0
        while !pending.isEmpty {
            let component = pending.removeFirst()
            if component == "." { continue }
            if component == ".." {
                _ = resolved.popLast()
                continue
            }
            let candidate = resolved + [component]
            let entry = merged(candidate, openFile: openFile && pending.isEmpty)
            if case .symlink(let target) = entry {
                hops += 1
                guard hops <= 40 else { return (.other, candidate) }
                if target.hasPrefix("/") { resolved = [] }
                pending = target.split(separator: "/").map(String.init) + pending
                continue
            }
            if pending.isEmpty { return (entry, candidate) }
            guard case .directory = entry else { return (.absent, candidate) }
            resolved = candidate
        }
        return (.directory(opaque: false), resolved)
    }

    public enum ReadError: Error, CustomStringConvertible {
        case tooLarge(String, Int), notRegular(String), unreadable(String, String)

        public var description: String {
            switch self {
            case .tooLarge(let path, let limit): "the image's \(path) is larger than \(limit >> 10) KiB"
            case .notRegular(let path): "the image's \(path) is not a regular file"
            case .unreadable(let path, let why): "the image's \(path) cannot be read: \(why)"
            }
        }
    }

    /// A regular file's bytes (at most `limit`), nil when the image has none there.
    public func read(_ path: String, limit: Int = 1 << 20) throws -> Data? {
        switch resolve(path, openFile: true).0 {
        case .absent, .deleted: return nil
        case .file(let descriptor):
            guard let descriptor else { throw ReadError.unreadable(path, "it could not be opened") }
            defer { close(descriptor) }
            var data = Data()
            var buffer = [UInt8](repeating: 0, count: 65536)
            while true {
                let count = Glibc.read(descriptor, &buffer, buffer.count)
                if count < 0 && errno == EINTR { continue }
                if count < 0 { throw ReadError.unreadable(path, String(cString: strerror(errno))) }
                if count == 0 { break }
                data.append(contentsOf: buffer[0..<count])
                if data.count > limit { throw ReadError.tooLarge(path, limit) }
            }
            return data
        default: throw ReadError.notRegular(path)
        }
    }

    public func text(_ path: String, limit: Int = 1 << 20) throws -> String? {
        try read(path, limit: limit).map { String(decoding: $0, as: UTF8.self) }
    }

    /// Whether the topmost layer that has `path` holds any entry there, a whiteout included,
    /// without following a symlink on the way (for one layer's folder: did the layer touch it).
    public func hasEntry(_ path: String) -> Bool {
        let components = path.split(separator: "/").map(String.init)
        for folder in folders {
            switch lookup(components, in: folder) {
            case .absent, .notFolder:
                if hiddenBelow(components, in: folder) { return false }
            case .file(let descriptor):
                if let descriptor { close(descriptor) }
                return true
            default:
                return true
            }
        }
        return false
    }

    public func isRegularFile(_ path: String) -> Bool {
        if case .file = resolve(path).0 { return true }
        return false
    }

    /// The names in a folder across layers, whiteouts and opaque folders applied.
    public func list(_ path: String) throws -> [String] {
        let (entry, components) = resolve(path)
        guard case .directory = entry else { return [] }
        var names = Set<String>(), hidden = Set<String>()
        for folder in folders {
            switch lookup(components, in: folder) {
            case .absent, .notFolder:
                if hiddenBelow(components, in: folder) { return names.sorted() }
            case .directory(let opaque):
                let full = ([folder] + components).joined(separator: "/")
                for name in (try? FileManager.default.contentsOfDirectory(atPath: full)) ?? []
                where !hidden.contains(name) && !names.contains(name) {
                    var info = stat()
                    if lstat(full + "/" + name, &info) == 0, info.st_mode & S_IFMT == S_IFCHR, info.st_rdev == 0 {
                        hidden.insert(name)
                    } else {
                        names.insert(name)
                    }
                }
                if opaque { return names.sorted() }
            default:
                return names.sorted()
            }
        }
        return names.sorted()
    }
}

extension ImageFiles {
    /// The key=value fields of the image's os-release (`/etc/os-release`, else
    /// `/usr/lib/os-release`), quotes removed; empty when it has none or it cannot be read.
    public func osRelease() -> [String: String] {
        let text = ((try? text("/etc/os-release")) ?? nil) ?? ((try? text("/usr/lib/os-release")) ?? nil) ?? ""
        var fields: [String: String] = [:]
        for line in text.split(separator: "\n") {
            guard let equals = line.firstIndex(of: "=") else { continue }
            fields[String(line[..<equals])] = String(line[line.index(after: equals)...]).trimmingCharacters(
                in: CharacterSet(charactersIn: "\"'"))
        }
        return fields
    }
}
