#if canImport(Glibc)
import Glibc
#endif
import CKilnSystem
import Foundation
import KilnModel

/// Writes a directory tree as a deterministic tar stream: entries in byte order of their paths,
/// modification times clamped to `SOURCE_DATE_EPOCH`, numeric owners only, no atime or ctime,
/// hard links recorded once, symlinks, devices and fifos kept.
public struct DirectoryArchiver {
    public var sourceDateEpoch: Int64?
    /// The directory is an overlayfs upper dir: whiteouts (char device 0/0) become `.wh.<name>`
    /// and opaque folders (`trusted.overlay.opaque=y`) get `.wh..wh..opq`.
    public var overlayUpperDirectory: Bool

    public init(sourceDateEpoch: Int64? = ProcessInfo.processInfo.environment["SOURCE_DATE_EPOCH"].flatMap(Int64.init), overlayUpperDirectory: Bool = false) {
        self.sourceDateEpoch = sourceDateEpoch
        self.overlayUpperDirectory = overlayUpperDirectory
    }

    /// Archives the contents of `directory` (not the directory itself) into `writer`.
    public func archive(_ directory: String, into writer: inout TarWriter) throws {
        var hardLinks: [HardLinkKey: String] = [:]
        try walk(directory, relative: "", writer: &writer, hardLinks: &hardLinks)
        try writer.finish()
    }

    struct HardLinkKey: Hashable {
        var device: UInt64
        var inode: UInt64
    }

    private func walk(_ root: String, relative: String, writer: inout TarWriter, hardLinks: inout [HardLinkKey: String]) throws {
        let folder = relative.isEmpty ? root : root + "/" + relative
        let names: [String]
        do {
            names = try FileManager.default.contentsOfDirectory(atPath: folder)
        } catch {
            throw KilnError(.ioFailure, "cannot read folder '\(folder)' while packing a layer: \(error.localizedDescription)")
        }
        for name in names.sorted(by: { Array($0.utf8).lexicographicallyPrecedes(Array($1.utf8)) }) {
            let path = relative.isEmpty ? name : relative + "/" + name
            let hostPath = root + "/" + path
            var info = stat()
            guard lstat(hostPath, &info) == 0 else {
                throw KilnError(.ioFailure, "cannot read '\(hostPath)' while packing a layer: \(String(cString: strerror(errno)))")
            }
            var entry = TarEntry(path: path, kind: .file, mode: UInt32(info.st_mode & 0o7777))
            entry.uid = info.st_uid
            entry.gid = info.st_gid
            entry.modificationTime = clamp(Int64(info.st_mtim.tv_sec))
            entry.extendedAttributes = Self.extendedAttributes(hostPath)
            var opaque = false
            if overlayUpperDirectory {
                opaque = entry.extendedAttributes["trusted.overlay.opaque"] == Array("y".utf8)
                // overlayfs bookkeeping is not part of the image.
                entry.extendedAttributes = entry.extendedAttributes.filter { !$0.key.hasPrefix("trusted.overlay.") }
                if info.st_mode & S_IFMT == S_IFCHR, info.st_rdev == 0 {
                    var whiteout = TarEntry(path: (relative.isEmpty ? "" : relative + "/") + ".wh." + name, kind: .file, mode: 0o600)
                    whiteout.modificationTime = entry.modificationTime
                    try writer.writeHeader(whiteout)
                    continue
                }
            }
            switch info.st_mode & S_IFMT {
            case S_IFDIR:
                entry.kind = .directory
                try writer.writeHeader(entry)
                if opaque {
                    var marker = TarEntry(path: path + "/.wh..wh..opq", kind: .file, mode: 0o600)
                    marker.modificationTime = entry.modificationTime
                    try writer.writeHeader(marker)
                }
                try walk(root, relative: path, writer: &writer, hardLinks: &hardLinks)
            case S_IFREG:
                let key = HardLinkKey(device: UInt64(info.st_dev), inode: UInt64(info.st_ino))
                if info.st_nlink > 1, let first = hardLinks[key] {
                    entry.kind = .hardLink
                    entry.linkTarget = first
                    try writer.writeHeader(entry)
                    continue
                }
                if info.st_nlink > 1 { hardLinks[key] = path }
                entry.size = Int64(info.st_size)
                try writer.writeHeader(entry)
                try copyContents(hostPath, expected: entry.size, into: &writer)
            case S_IFLNK:
                entry.kind = .symlink
                entry.mode = 0o777
                entry.linkTarget = try FileManager.default.destinationOfSymbolicLink(atPath: hostPath)
                try writer.writeHeader(entry)
            case S_IFCHR, S_IFBLK:
                entry.kind = info.st_mode & S_IFMT == S_IFCHR ? .characterDevice : .blockDevice
                entry.deviceMajor = UInt32((info.st_rdev >> 8) & 0xfff) | UInt32((info.st_rdev >> 32) & ~0xfff)
                entry.deviceMinor = UInt32(info.st_rdev & 0xff) | UInt32((info.st_rdev >> 12) & ~0xff)
                try writer.writeHeader(entry)
            case S_IFIFO:
                entry.kind = .fifo
                try writer.writeHeader(entry)
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
        guard fd >= 0 else { throw KilnError(.ioFailure, "cannot open '\(path)' while packing a layer: \(String(cString: strerror(errno)))") }
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
