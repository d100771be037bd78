import Foundation
import KilnModel

#if canImport(Glibc)
    import Glibc
#endif

/// `oci-archive:` files: an OCI image layout in a tar, as skopeo and buildah write them.
package enum OCIArchive {
    /// Unpacks the layout parts of an archive into `directory`. Only `oci-layout`, `index.json`
    /// and `blobs/<algorithm>/<hex>` are written; links and devices are refused, other files skipped.
    /// Blob contents are verified later, when they are copied on.
    package static func extract(_ path: String, into directory: String) throws {
        guard let handle = FileHandle(forReadingAtPath: path) else {
            throw KilnError(.notFound, "cannot read the OCI archive '\(path)'")
        }
        let gzipped = (try? handle.read(upToCount: 2)).map { Array($0) == [0x1f, 0x8b] } ?? false
        try? handle.close()
        var reader = TarReader(source: try TarReader.fileSource(path, compressed: gzipped))
        try FileManager.default.createDirectory(atPath: directory + "/blobs", withIntermediateDirectories: true)
        var sawLayout = false
        while let entry = try reader.next() {
            var name = entry.path
            while name.hasPrefix("./") { name.removeFirst(2) }
            if name.hasSuffix("/") { name.removeLast() }
            switch entry.kind {
            case .directory:
                try reader.skipContents()
                continue
            case .file:
                break
            default:
                throw KilnError(
                    .invalidArgument,
                    "OCI archive '\(path)': entry '\(entry.path)' is a link or device; an image layout holds only files and directories")
            }
            let parts = name.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
            let destination: String
            if name == "oci-layout" || name == "index.json" {
                destination = directory + "/" + name
                sawLayout = sawLayout || name == "oci-layout"
            } else if parts.count == 3, parts[0] == "blobs", let digest = try? Digest("\(parts[1]):\(parts[2])") {
                try FileManager.default.createDirectory(
                    atPath: directory + "/blobs/" + digest.algorithm.rawValue, withIntermediateDirectories: true)
                destination = directory + "/blobs/\(digest.algorithm.rawValue)/\(digest.encoded)"
            } else {
                try reader.skipContents()
                continue
            }
            let fd = open(destination, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0o644)
            guard fd >= 0 else { throw KilnError(.ioFailure, "cannot write '\(destination)': \(String(cString: strerror(errno)))") }
            defer { close(fd) }
            while true {
                let chunk = try reader.readContents()
                if chunk.isEmpty { break }
                try chunk.withUnsafeBytes { bytes in
                    guard Glibc.write(fd, bytes.baseAddress, bytes.count) == bytes.count else {
                        throw KilnError(.ioFailure, "cannot write '\(destination)': \(String(cString: strerror(errno)))")
                    }
                }
            }
        }
        guard sawLayout, FileManager.default.fileExists(atPath: directory + "/index.json") else {
            throw KilnError(.invalidArgument, "'\(path)' is not an OCI archive: it has no oci-layout or index.json at its top")
        }
    }

    /// Writes the layout at `directory` as a tar at `path` (atomically): entries sorted, owned by
    /// 0:0 and stamped `modificationTime`, so the same layout gives the same archive.
    package static func write(layout directory: String, to path: String, modificationTime: Int64 = 0) throws {
        let temporary = path + ".kiln-partial"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw KilnError(.ioFailure, "cannot create '\(path)': \(String(cString: strerror(errno)))") }
        var closed = false
        defer {
            if !closed {
                close(fd)
                unlink(temporary)
            }
        }
        var tar = TarWriter { bytes in
            guard Glibc.write(fd, bytes.baseAddress, bytes.count) == bytes.count else {
                throw KilnError(.ioFailure, "cannot write '\(path)': \(String(cString: strerror(errno)))")
            }
        }
        func entry(_ name: String, _ kind: TarEntry.Kind, size: Int64 = 0) -> TarEntry {
            var entry = TarEntry(path: name, kind: kind, mode: kind == .directory ? 0o755 : 0o644)
            entry.size = size
            entry.modificationTime = modificationTime
            return entry
        }
        func addFile(_ name: String) throws {
            let source = directory + "/" + name
            let input = open(source, O_RDONLY | O_CLOEXEC)
            guard input >= 0 else { throw KilnError(.ioFailure, "cannot read '\(source)': \(String(cString: strerror(errno)))") }
            defer { close(input) }
            var info = stat()
            fstat(input, &info)
            try tar.writeHeader(entry(name, .file, size: Int64(info.st_size)))
            var buffer = [UInt8](repeating: 0, count: 1 << 20)
            var total = 0
            while true {
                let got = buffer.withUnsafeMutableBytes { Glibc.read(input, $0.baseAddress, $0.count) }
                guard got >= 0 else { throw KilnError(.ioFailure, "cannot read '\(source)': \(String(cString: strerror(errno)))") }
                if got == 0 { break }
                try buffer.withUnsafeBytes { try tar.writeContents(UnsafeRawBufferPointer(rebasing: $0[..<got])) }
                total += got
            }
            guard total == Int(info.st_size) else { throw KilnError(.ioFailure, "'\(source)' changed while it was archived") }
            try tar.padToBlock(total)
        }
        try addFile("oci-layout")
        try addFile("index.json")
        try tar.writeHeader(entry("blobs", .directory))
        for algorithm in try FileManager.default.contentsOfDirectory(atPath: directory + "/blobs").sorted() where !algorithm.hasPrefix(".")
        {
            try tar.writeHeader(entry("blobs/" + algorithm, .directory))
            for blob in try FileManager.default.contentsOfDirectory(atPath: directory + "/blobs/" + algorithm).sorted()
            where !blob.hasPrefix(".") {
                try addFile("blobs/\(algorithm)/\(blob)")
            }
        }
        try tar.finish()
        closed = true
        guard fsync(fd) == 0, close(fd) == 0, rename(temporary, path) == 0 else {
            unlink(temporary)
            throw KilnError(.ioFailure, "cannot write '\(path)': \(String(cString: strerror(errno)))")
        }
    }
}
