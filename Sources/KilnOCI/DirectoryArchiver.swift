import CKilnSystem
import Foundation
import KilnModel

#if canImport(Glibc)
    import Glibc
#endif

/// Writes a directory tree as a deterministic tar stream: entries in byte order of their paths,
/// modification times clamped to `SOURCE_DATE_EPOCH`, numeric owners only, no atime or ctime,
/// hard links recorded once, symlinks, devices and fifos kept.
public struct DirectoryArchiver {
    public var sourceDateEpoch: Int64?
    /// The directory is an overlayfs upper dir: whiteouts (char device 0/0) become `.wh.<name>`
    /// and opaque folders (`trusted.overlay.opaque=y`) get `.wh..wh..opq`.
    public var overlayUpperDirectory: Bool
    /// Pack only what changed since this state of the same directory: new or changed entries
    /// (with their parent folders) and a whiteout for each entry that is gone.
    public var changesSince: DirectoryState?

    public init(
        sourceDateEpoch: Int64? = ProcessInfo.processInfo.environment["SOURCE_DATE_EPOCH"].flatMap(Int64.init),
        overlayUpperDirectory: Bool = false, changesSince: DirectoryState? = nil
    ) {
        self.sourceDateEpoch = sourceDateEpoch
        self.overlayUpperDirectory = overlayUpperDirectory
        self.changesSince = changesSince
    }

    /// Archives the contents of `directory` (not the directory itself) into `writer`; returns
    /// how many entries were written (0: nothing changed).
    @discardableResult
    public func archive(_ directory: String, into writer: inout TarWriter) throws -> Int {
        try archiveRecording(directory, into: &writer).entries
    }

    /// Archives like `archive`, and returns the directory's state as the same walk saw it, so
    /// the next step's changes are measured from exactly what this layer holds.
    public func archiveRecording(_ directory: String, into writer: inout TarWriter) throws -> (entries: Int, state: DirectoryState) {
        var walk = Walk()
        try self.walk(directory, relative: "", writer: &writer, state: &walk)
        try writer.finish()
        return (walk.written, walk.seen)
    }

    /// Every whiteout gets this time, however it arose, so equal changes pack to equal bytes.
    static let whiteoutTime: Int64 = 0

    /// Bookkeeping of one archive run.
    struct Walk {
        var hardLinks: [HardLinkKey: String] = [:]
        /// Unchanged folders on the way down, written only if something below them is.
        var pendingFolders: [TarEntry] = []
        var written = 0
        var seen = DirectoryState()

        mutating func write(_ entry: TarEntry, to writer: inout TarWriter) throws {
            for folder in pendingFolders { try writer.writeHeader(folder) }
            written += pendingFolders.count + 1
            pendingFolders.removeAll()
            try writer.writeHeader(entry)
        }
    }

    struct HardLinkKey: Hashable {
        var device: UInt64
        var inode: UInt64
    }

    private func walk(_ root: String, relative: String, writer: inout TarWriter, state: inout Walk) throws {
        let folder = relative.isEmpty ? root : root + "/" + relative
        let names: [String]
        do {
            names = try FileManager.default.contentsOfDirectory(atPath: folder)
        } catch {
            throw KilnError(.ioFailure, "cannot read folder '\(folder)' while packing a layer: \(error.localizedDescription)")
        }
        state.seen.record(children: names, of: relative)
        // Entries an earlier step left that are gone now get whiteouts, in name order with the rest.
        let gone = changesSince.map { $0.children(of: relative).subtracting(names) } ?? []
        for name in (names + gone).sorted(by: { Array($0.utf8).lexicographicallyPrecedes(Array($1.utf8)) }) {
            if gone.contains(name) {
                var whiteout = TarEntry(path: (relative.isEmpty ? "" : relative + "/") + ".wh." + name, kind: .file, mode: 0o600)
                whiteout.modificationTime = Self.whiteoutTime
                try state.write(whiteout, to: &writer)
                continue
            }
            let path = relative.isEmpty ? name : relative + "/" + name
            // In a layer, `.wh.NAME` deletes NAME: a file an instance made with that name would
            // become a deletion. (A plain folder packed on purpose may use them as whiteouts.)
            guard !(overlayUpperDirectory && name.hasPrefix(".wh.")) else {
                throw KilnError(
                    .invalidArgument,
                    "cannot pack '\(path)': in an OCI layer a name starting with .wh. deletes a file, so a file of that name cannot be stored; rename or remove it"
                )
            }
            let hostPath = root + "/" + path
            var info = stat()
            guard lstat(hostPath, &info) == 0 else {
                throw KilnError(.ioFailure, "cannot read '\(hostPath)' while packing a layer: \(String(cString: strerror(errno)))")
            }
            let attributes = Self.extendedAttributes(hostPath)
            let stamp = DirectoryState.Stamp(info, opaque: attributes["trusted.overlay.opaque"] == Array("y".utf8))
            state.seen.entries[path] = stamp
            let previous = changesSince?.entries[path]
            let unchanged = previous == stamp
            var entry = TarEntry(path: path, kind: .file, mode: UInt32(info.st_mode & 0o7777))
            entry.uid = info.st_uid
            entry.gid = info.st_gid
            entry.modificationTime = clamp(Int64(info.st_mtim.tv_sec))
            entry.extendedAttributes = attributes
            var opaque = false
            if overlayUpperDirectory {
                // A folder already opaque in the last state hid the lower layers then; marking it
                // again would also hide what earlier steps put in it.
                opaque = stamp.opaque && !(previous.map { $0.opaque && $0.inode == stamp.inode } ?? false)
                // overlayfs bookkeeping is not part of the image.
                entry.extendedAttributes = entry.extendedAttributes.filter { !$0.key.hasPrefix("trusted.overlay.") }
                if info.st_mode & S_IFMT == S_IFCHR, info.st_rdev == 0 {
                    if unchanged { continue }
                    var whiteout = TarEntry(path: (relative.isEmpty ? "" : relative + "/") + ".wh." + name, kind: .file, mode: 0o600)
                    whiteout.modificationTime = Self.whiteoutTime
                    try state.write(whiteout, to: &writer)
                    continue
                }
            }
            switch info.st_mode & S_IFMT {
            case S_IFDIR:
                entry.kind = .directory
                if unchanged {
                    state.pendingFolders.append(entry)
                    try walk(root, relative: path, writer: &writer, state: &state)
                    if state.pendingFolders.last?.path == path { state.pendingFolders.removeLast() }
                    continue
                }
                try state.write(entry, to: &writer)
                if opaque {
                    var marker = TarEntry(path: path + "/.wh..wh..opq", kind: .file, mode: 0o600)
                    marker.modificationTime = Self.whiteoutTime
                    try state.write(marker, to: &writer)
                }
                try walk(root, relative: path, writer: &writer, state: &state)
            case S_IFREG:
                if unchanged { continue }
                let key = HardLinkKey(device: UInt64(info.st_dev), inode: UInt64(info.st_ino))
                if info.st_nlink > 1, let first = state.hardLinks[key] {
                    entry.kind = .hardLink
                    entry.linkTarget = first
                    try state.write(entry, to: &writer)
                    continue
                }
                if info.st_nlink > 1 { state.hardLinks[key] = path }
                entry.size = Int64(info.st_size)
                try state.write(entry, to: &writer)
                try copyContents(hostPath, expected: entry.size, into: &writer)
            case S_IFLNK:
                if unchanged { continue }
                entry.kind = .symlink
                entry.mode = 0o777
                entry.linkTarget = try FileManager.default.destinationOfSymbolicLink(atPath: hostPath)
                try state.write(entry, to: &writer)
            case S_IFCHR, S_IFBLK:
                if unchanged { continue }
                entry.kind = info.st_mode & S_IFMT == S_IFCHR ? .characterDevice : .blockDevice
                entry.deviceMajor = UInt32((info.st_rdev >> 8) & 0xfff) | UInt32((info.st_rdev >> 32) & ~0xfff)
                entry.deviceMinor = UInt32(info.st_rdev & 0xff) | UInt32((info.st_rdev >> 12) & ~0xff)
                try state.write(entry, to: &writer)
            case S_IFIFO:
                if unchanged { continue }
                entry.kind = .fifo
                try state.write(entry, to: &writer)
            default:
                continue // Sockets cannot be archived; tar skips them too.
            }
        }
    }

    private func clamp(_ seconds: Int64) -> Int64 {
        guard let sourceDateEpoch else { return seconds }
        return min(seconds, sourceDateEpoch)
    }

    private func copyContents(_ path: String, expected: Int64, into writer: inout TarWriter) throws {
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
        guard fd >= 0 else {
            throw KilnError(.ioFailure, "cannot open '\(path)' while packing a layer: \(String(cString: strerror(errno)))")
        }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        var copied: Int64 = 0
        while copied < expected {
            let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, min($0.count, Int(expected - copied))) }
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else {
                throw KilnError(.ioFailure, "'\(path)' changed size while it was being packed (read \(copied) of \(expected) bytes)")
            }
            try buffer.withUnsafeBytes { try writer.writeContents(UnsafeRawBufferPointer(rebasing: $0[0..<count])) }
            copied += Int64(count)
        }
        try writer.padToBlock(Int(expected % 512))
    }

    static func extendedAttributes(_ path: String) -> [String: [UInt8]] {
        let size = llistxattr(path, nil, 0)
        guard size > 0 else { return [:] }
        var names = [CChar](repeating: 0, count: size)
        let length = llistxattr(path, &names, size)
        guard length > 0 else { return [:] }
        var result: [String: [UInt8]] = [:]
        for raw in names[0..<length].split(separator: 0) {
            let name = String(decoding: raw.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            let valueSize = lgetxattr(path, name, nil, 0)
            guard valueSize >= 0 else { continue }
            var value = [UInt8](repeating: 0, count: valueSize)
            _ = lgetxattr(path, name, &value, valueSize)
            result[name] = value
        }
        return result
    }
}

/// What a directory held at one moment, to pack only what changes after it. Each entry's inode
/// and change time (which every write, chmod, chown, link or xattr change updates) identify it.
public struct DirectoryState: Sendable {
    struct Stamp: Hashable, Sendable {
        var inode: UInt64
        var changed: Int64
        var changedNanoseconds: Int
        var mode: UInt32
        /// An overlayfs folder that hides the layers below it.
        var opaque: Bool

        init(_ info: stat, opaque: Bool) {
            inode = UInt64(info.st_ino)
            changed = Int64(info.st_ctim.tv_sec)
            changedNanoseconds = info.st_ctim.tv_nsec
            mode = UInt32(info.st_mode)
            self.opaque = opaque
        }
    }

    var entries: [String: Stamp] = [:]
    private var childNames: [String: Set<String>] = [:]

    init() {}

    /// Scans `directory` recursively without following links.
    public init(scanning directory: String) throws {
        try scan(directory, relative: "")
    }

    func children(of relative: String) -> Set<String> { childNames[relative] ?? [] }

    mutating func record(children names: [String], of relative: String) { childNames[relative] = Set(names) }

    private mutating func scan(_ root: String, relative: String) throws {
        let folder = relative.isEmpty ? root : root + "/" + relative
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: folder) else {
            throw KilnError(.ioFailure, "cannot read folder '\(folder)' while recording a build step's changes")
        }
        childNames[relative] = Set(names)
        for name in names {
            let path = relative.isEmpty ? name : relative + "/" + name
            var info = stat()
            guard lstat(root + "/" + path, &info) == 0 else { continue }
            let isFolder = info.st_mode & S_IFMT == S_IFDIR
            let opaque = isFolder && DirectoryArchiver.extendedAttributes(root + "/" + path)["trusted.overlay.opaque"] == Array("y".utf8)
            entries[path] = Stamp(info, opaque: opaque)
            if isFolder { try scan(root, relative: path) }
        }
    }
}
