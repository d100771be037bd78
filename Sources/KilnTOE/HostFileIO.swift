import Foundation
import KilnModel

#if canImport(Glibc)
    import Glibc
#endif

/// File access on paths an instance controls. Nothing here follows a final symlink, opens a
/// FIFO or device (O_NONBLOCK, then fstat must say regular file), or reads without a bound;
/// callers resolve the path inside the instance root first and hold the instance frozen.
public enum HostFileIO {
    /// What `ReadFile` and the account files may hold: enough for any text file an image has.
    public static let readLimit = 64 << 20

    public struct NotRegular: Error {
        public let kind: String
    }

    /// The file type's name for an error message.
    static func kindName(_ mode: mode_t) -> String {
        switch mode & S_IFMT {
        case S_IFDIR: "a folder"
        case S_IFLNK: "a symlink"
        case S_IFIFO: "a FIFO"
        case S_IFCHR: "a character device"
        case S_IFBLK: "a block device"
        case S_IFSOCK: "a socket"
        default: "not a regular file"
        }
    }

    /// Opens a regular file for reading; anything else is refused before a byte is read.
    public static func openRegular(_ hostPath: String, describe: String) throws -> (fd: Int32, size: Int) {
        let fd = open(hostPath, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC)
        guard fd >= 0 else {
            let code = errno
            if code == ELOOP {
                throw KilnError(.invalidArgument, "\(describe) is a symlink that cannot be followed here")
            }
            throw KilnError(code == ENOENT ? .notFound : .ioFailure, "cannot open \(describe): \(String(cString: strerror(code)))")
        }
        var info = stat()
        guard fstat(fd, &info) == 0, info.st_mode & S_IFMT == S_IFREG else {
            close(fd)
            throw KilnError(.invalidArgument, "\(describe) is \(kindName(info.st_mode)), not a regular file; Kiln reads only regular files")
        }
        // Back to blocking reads: a regular file never blocks, and this avoids EAGAIN surprises.
        _ = fcntl(fd, F_SETFL, O_RDONLY)
        return (fd, Int(info.st_size))
    }

    /// A regular file's bytes, refusing one larger than `limit` (sparse files count their size).
    public static func readRegular(_ hostPath: String, describe: String, limit: Int = readLimit) throws -> Data {
        let (fd, size) = try openRegular(hostPath, describe: describe)
        defer { close(fd) }
        guard size <= limit else {
            throw KilnError(
                .invalidArgument, "\(describe) is \(size) bytes; Kiln reads at most \(limit >> 20) MiB of it; read a smaller file")
        }
        var data = Data()
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let count = read(fd, &buffer, buffer.count)
            if count < 0 {
                if errno == EINTR { continue }
                throw KilnError(.ioFailure, "cannot read \(describe): \(String(cString: strerror(errno)))")
            }
            if count == 0 { break }
            guard data.count + count <= limit else {
                throw KilnError(.invalidArgument, "\(describe) grew past \(limit >> 20) MiB while Kiln read it")
            }
            data.append(contentsOf: buffer[0..<count])
        }
        return data
    }

    /// Opens (creating) a regular file for writing without following a final symlink; a FIFO,
    /// device or socket there is refused before anything is written.
    public static func openForWriting(_ hostPath: String, append: Bool, mode: UInt32, describe: String) throws -> Int32 {
        let fd = open(hostPath, O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK, mode_t(mode))
        guard fd >= 0 else {
            let code = errno
            throw KilnError(
                code == ENOENT ? .notFound : .ioFailure,
                code == ELOOP
                    ? "\(describe) is a symlink; Kiln does not write through it"
                    : "cannot write \(describe): \(String(cString: strerror(code)))")
        }
        var info = stat()
        guard fstat(fd, &info) == 0, info.st_mode & S_IFMT == S_IFREG else {
            close(fd)
            throw KilnError(
                .invalidArgument, "\(describe) is \(kindName(info.st_mode)), not a regular file; Kiln writes only regular files")
        }
        if !append, ftruncate(fd, 0) != 0 {
            close(fd)
            throw KilnError(.ioFailure, "cannot truncate \(describe): \(String(cString: strerror(errno)))")
        }
        if append { lseek(fd, 0, SEEK_END) }
        _ = fcntl(fd, F_SETFL, O_WRONLY | (append ? O_APPEND : 0))
        return fd
    }

    static func writeAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer, describe: String) throws {
        var offset = 0
        while offset < bytes.count {
            let written = write(fd, bytes.baseAddress! + offset, bytes.count - offset)
            if written < 0 {
                if errno == EINTR { continue }
                throw KilnError(.ioFailure, "cannot write \(describe): \(String(cString: strerror(errno)))")
            }
            offset += written
        }
    }

    /// Copies a tree without following symlinks: regular files by content, folders with their
    /// modes, symlinks as symlinks; a FIFO, device or socket is refused by name. The destination
    /// must not exist (as with `cp -r` onto a new name).
    public static func copyTree(from source: String, to destination: String, describe: (String) -> String) throws {
        var info = stat()
        guard lstat(source, &info) == 0 else {
            throw KilnError(.notFound, "cannot copy \(describe(source)): \(String(cString: strerror(errno)))")
        }
        switch info.st_mode & S_IFMT {
        case S_IFLNK:
            let target = try FileManager.default.destinationOfSymbolicLink(atPath: source)
            guard symlink(target, destination) == 0 else {
                throw KilnError(.ioFailure, "cannot create \(describe(destination)): \(String(cString: strerror(errno)))")
            }
        case S_IFDIR:
            guard mkdir(destination, info.st_mode & 0o1777) == 0 else {
                throw KilnError(
                    errno == EEXIST ? .alreadyExists : .ioFailure,
                    "cannot create folder \(describe(destination)): \(String(cString: strerror(errno)))")
            }
            let names: [String]
            do { names = try FileManager.default.contentsOfDirectory(atPath: source) } catch {
                throw KilnError(.ioFailure, "cannot list \(describe(source)): \(error.localizedDescription)")
            }
            for name in names.sorted() {
                try copyTree(from: source + "/" + name, to: destination + "/" + name, describe: describe)
            }
            chmod(destination, info.st_mode & 0o1777)
        case S_IFREG:
            // Like cp without -p: a copy does not keep setuid or setgid (root would own it).
            try copyFile(from: source, to: destination, mode: UInt32(info.st_mode & 0o1777), describe: describe)
        default:
            throw KilnError(
                .invalidArgument, "\(describe(source)) is \(kindName(info.st_mode)); Kiln copies only files, folders and symlinks")
        }
    }

    /// One regular file's bytes to a new file, streamed.
    /// Linux's lseek whence values for sparse files (Glibc's module leaves them out).
    static let seekData: Int32 = 3
    static let seekHole: Int32 = 4

    /// Holes stay holes: only the data regions (SEEK_DATA/SEEK_HOLE) are read and written, so a
    /// 1 TiB sparse file an instance made costs the host no disk and no time.
    public static func copyFile(from source: String, to destination: String, mode: UInt32, describe: (String) -> String) throws {
        let (input, size) = try openRegular(source, describe: describe(source))
        defer { close(input) }
        let output = open(destination, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode_t(mode))
        guard output >= 0 else {
            throw KilnError(
                errno == EEXIST ? .alreadyExists : .ioFailure, "cannot create \(describe(destination)): \(String(cString: strerror(errno)))"
            )
        }
        defer { close(output) }
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        var offset = off_t(0)
        while offset < off_t(size) {
            // The next data region; ENXIO means only a hole is left. A file system without
            // SEEK_DATA gets the rest copied whole.
            var dataStart = lseek(input, offset, seekData)
            var dataEnd = off_t(size)
            if dataStart < 0 {
                if errno == ENXIO { break }
                dataStart = offset
            } else {
                let hole = lseek(input, dataStart, seekHole)
                if hole >= 0 { dataEnd = min(hole, off_t(size)) }
            }
            var position = dataStart
            while position < dataEnd {
                let count = pread(input, &buffer, min(buffer.count, Int(dataEnd - position)), position)
                if count < 0 {
                    if errno == EINTR { continue }
                    throw KilnError(.ioFailure, "cannot read \(describe(source)): \(String(cString: strerror(errno)))")
                }
                if count == 0 { break }
                guard lseek(output, position, SEEK_SET) >= 0 else {
                    throw KilnError(.ioFailure, "cannot write \(describe(destination)): \(String(cString: strerror(errno)))")
                }
                try buffer.withUnsafeBytes {
                    try writeAll(output, UnsafeRawBufferPointer(rebasing: $0[0..<count]), describe: describe(destination))
                }
                position += off_t(count)
            }
            offset = max(dataEnd, position)
        }
        guard ftruncate(output, off_t(size)) == 0 else {
            throw KilnError(.ioFailure, "cannot size \(describe(destination)): \(String(cString: strerror(errno)))")
        }
        fchmod(output, mode_t(mode))
    }
}
