import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// State files that survive a crash or a power cut whole: the bytes go to a temp file beside the
/// target (named with the writing process, see `ProcessOwner.temporaryName`), are fsynced, then
/// renamed over the target, and the folder is fsynced so the rename itself is on disk. A reader
/// sees the old file or the new one, never a part.
public enum DurableFile {
    /// The prefix of every temp file this makes; a sweep removes those of dead processes.
    public static let temporaryPrefix = ".tmp-"

    /// Writes `data` to `path`. `scratch` is where the temp file goes (default: `path`'s folder);
    /// it must be on the same file system.
    public static func write(_ data: Data, to path: String, mode: mode_t = 0o644, scratch: String? = nil) throws {
        let folder = (path as NSString).deletingLastPathComponent
        let temporary = (scratch ?? (folder.isEmpty ? "." : folder)) + "/" + ProcessOwner.temporaryName(temporaryPrefix)
        let fd = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode)
        guard fd >= 0 else { throw failure(path, "cannot write a temp file for") }
        var written = 0
        let complete = data.withUnsafeBytes { bytes -> Bool in
            while written < bytes.count {
                let count = Glibc.write(fd, bytes.baseAddress! + written, bytes.count - written)
                if count < 0 {
                    if errno == EINTR { continue }
                    return false
                }
                written += count
            }
            return true
        }
        guard complete, fchmod(fd, mode) == 0, fsync(fd) == 0 else {
            let error = failure(path, "cannot write")
            close(fd)
            unlink(temporary)
            throw error
        }
        guard close(fd) == 0 else {
            let error = failure(path, "cannot close")
            unlink(temporary)
            throw error
        }
        guard rename(temporary, path) == 0 else {
            let error = failure(path, "cannot rename a temp file onto")
            unlink(temporary)
            throw error
        }
        try syncFolder(folder.isEmpty ? "." : folder)
    }

    /// fsyncs a folder, so entries made, renamed or removed in it are on disk.
    public static func syncFolder(_ path: String) throws {
        let fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw failure(path, "cannot open the folder") }
        defer { close(fd) }
        guard fsync(fd) == 0 else { throw failure(path, "cannot sync the folder") }
    }

    private static func failure(_ path: String, _ what: String) -> KilnError {
        KilnError(.ioFailure, "\(what) '\(path)': \(String(cString: strerror(errno)))")
    }
}
