import CKilnSystem
import Foundation
import KilnModel

#if canImport(Glibc)
    import Glibc
#endif

/// Applies layers in order onto a directory, with OCI whiteouts. Layers are untrusted: an
/// entry that would write outside the target (absolute or `..` paths, a parent symlink whose
/// relative target climbs out, a hard link to outside) is refused with an error, and nothing is
/// written for it. Absolute symlink targets are followed inside the target, as in the container.
public struct LayerUnpacker {
    public let target: String
    /// Device nodes need root; without it they are refused.
    public var allowDevices: Bool
    /// Owners are applied only when running as root.
    public var applyOwners: Bool

    /// Writes whiteouts as overlayfs expects them in a lower directory (0/0 character devices,
    /// `trusted.overlay.opaque`) instead of deleting, for a layer unpacked into its own folder.
    public var overlayWhiteouts = false

    public init(target: String, allowDevices: Bool = geteuid() == 0, applyOwners: Bool = geteuid() == 0) {
        self.target = target.count > 1 && target.hasSuffix("/") ? String(target.dropLast()) : target
        self.allowDevices = allowDevices
        self.applyOwners = applyOwners
    }

    /// Applies a gzip-compressed (or plain tar, when `compressed` is false) layer file.
    public func apply(layerFile path: String, compressed: Bool = true) throws {
        var reader = TarReader(source: try TarReader.fileSource(path, compressed: compressed))
        try apply(&reader)
    }

    public func apply(_ reader: inout TarReader) throws {
        var createdHere = Set<String>()
        var opaque: [String] = []
        while let entry = try reader.next() {
            let components = try Self.components(entry.path, what: "path")
            guard let name = components.last else {
                try reader.skipContents()
                continue // the root itself
            }
            let parentComponents = Array(components.dropLast())
            if name == ".wh..wh..opq" {
                if overlayWhiteouts {
                    try ensureDirectories(parentComponents)
                    let folder = try resolveParent(parentComponents, for: entry.path)
                    guard setxattr(folder, "trusted.overlay.opaque", "y", 1, 0) == 0 else {
                        throw KilnError(.ioFailure, "cannot mark '\(entry.path)' opaque for overlayfs: \(String(cString: strerror(errno)))")
                    }
                } else {
                    opaque.append(parentComponents.joined(separator: "/"))
                }
                continue
            }
            let parentHost = try resolveParent(parentComponents, for: entry.path)
            if name.hasPrefix(".wh.") {
                // `.wh.` alone, `.wh..` or `.wh...` would name the folder itself or its parent:
                // at a layer's root that is the layer cache, and other layers would be deleted.
                let target = String(name.dropFirst(4))
                guard !target.isEmpty, target != ".", target != "..", !target.contains("/") else {
                    throw KilnError(
                        .invalidArgument,
                        "layer entry '\(entry.path)' is a whiteout for '\(target)', which is not a file name; refusing the layer")
                }
                let victim = parentHost + "/" + target
                try removeIfPresent(victim)
                if overlayWhiteouts {
                    try ensureDirectories(parentComponents)
                    // overlayfs hides a lower file behind a 0/0 character device of the same name.
                    guard mknod(victim, S_IFCHR | 0o000, 0) == 0 else {
                        throw KilnError(
                            .ioFailure, "cannot write the whiteout '\(entry.path)' for overlayfs: \(String(cString: strerror(errno)))")
                    }
                }
                continue
            }
            let relative = components.joined(separator: "/")
            try ensureDirectories(parentComponents)
            let hostPath = parentHost + "/" + name
            try write(entry, at: hostPath, relative: relative, reader: &reader)
            createdHere.insert(relative)
        }
        // Opaque folders hide everything lower layers put there; what this layer added stays.
        for folder in opaque {
            let host = try resolveParent(try Self.components(folder, what: "path"), for: folder)
            for child in (try? FileManager.default.contentsOfDirectory(atPath: host)) ?? [] {
                let relative = folder.isEmpty ? child : folder + "/" + child
                if !createdHere.contains(relative) { try removeIfPresent(host + "/" + child) }
            }
        }
    }

    // MARK: Paths

    /// Clean components of a layer path; refuses absolute paths and `..`.
    static func components(_ path: String, what: String) throws -> [String] {
        if path.hasPrefix("/") {
            throw KilnError(.invalidArgument, "layer entry '\(path)' has an absolute \(what); refusing to write outside the image root")
        }
        let parts = path.split(separator: "/").map(String.init).filter { $0 != "." }
        if parts.contains("..") {
            throw KilnError(.invalidArgument, "layer entry '\(path)' has '..' in its \(what); refusing to write outside the image root")
        }
        return parts
    }

    /// The host folder for `components`, following symlinks only while they stay inside the target.
    func resolveParent(_ components: [String], for entryPath: String) throws -> String {
        var resolved: [String] = []
        var pending = Array(components.reversed())
        var hops = 0
        while let component = pending.popLast() {
            if component == ".." {
                guard !resolved.isEmpty else {
                    throw KilnError(
                        .invalidArgument, "layer entry '\(entryPath)' goes through a symlink that leads outside the image root; refusing it"
                    )
                }
                resolved.removeLast()
                continue
            }
            if component == "." || component.isEmpty { continue }
            let host = target + "/" + (resolved + [component]).joined(separator: "/")
            var info = stat()
            if lstat(host, &info) == 0, info.st_mode & S_IFMT == S_IFLNK {
                hops += 1
                guard hops <= 40 else { throw KilnError(.invalidArgument, "layer entry '\(entryPath)': too many symlinks") }
                let link = (try? FileManager.default.destinationOfSymbolicLink(atPath: host)) ?? ""
                // An absolute target means the same path inside the image, as the container will see it.
                if link.hasPrefix("/") { resolved = [] }
                pending += link.split(separator: "/").map(String.init).reversed()
                continue
            }
            resolved.append(component)
        }
        return resolved.isEmpty ? target : target + "/" + resolved.joined(separator: "/")
    }

    func ensureDirectories(_ components: [String]) throws {
        var current: [String] = []
        for component in components {
            current.append(component)
            let host = try resolveParent(current, for: current.joined(separator: "/"))
            var info = stat()
            if lstat(host, &info) == 0 {
                guard info.st_mode & S_IFMT == S_IFDIR else {
                    throw KilnError(.invalidArgument, "layer needs '\(current.joined(separator: "/"))' to be a folder, but it is not")
                }
                continue
            }
            // Every existing part of `host` was resolved above, so what is missing holds no symlink.
            do {
                try FileManager.default.createDirectory(atPath: host, withIntermediateDirectories: true)
            } catch {
                throw posixError("create folder", host)
            }
        }
    }

    // MARK: Writing

    func write(_ entry: TarEntry, at host: String, relative: String, reader: inout TarReader) throws {
        var existing = stat()
        let exists = lstat(host, &existing) == 0
        if exists, !(entry.kind == .directory && existing.st_mode & S_IFMT == S_IFDIR) {
            try removeIfPresent(host)
        }
        switch entry.kind {
        case .directory:
            if !exists || existing.st_mode & S_IFMT != S_IFDIR {
                guard mkdir(host, 0o700) == 0 else { throw posixError("create folder", host) }
            }
            guard chmod(host, mode_t(entry.mode)) == 0 else { throw posixError("set the mode of", host) }
        case .file:
            let fd = open(host, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
            guard fd >= 0 else { throw posixError("create", host) }
            defer { close(fd) }
            while true {
                let chunk = try reader.readContents()
                if chunk.isEmpty { break }
                let ok = chunk.withUnsafeBytes { buffer -> Bool in
                    var offset = 0
                    while offset < buffer.count {
                        let written = Glibc.write(fd, buffer.baseAddress! + offset, buffer.count - offset)
                        if written < 0 {
                            if errno == EINTR { continue }
                            return false
                        }
                        offset += written
                    }
                    return true
                }
                guard ok else { throw posixError("write", host) }
            }
            guard fchmod(fd, mode_t(entry.mode)) == 0 else { throw posixError("set the mode of", host) }
        case .symlink:
            guard symlink(entry.linkTarget, host) == 0 else { throw posixError("create symlink", host) }
        case .hardLink:
            let linkComponents = try Self.components(entry.linkTarget, what: "hard-link target")
            let source = try resolveParent(Array(linkComponents.dropLast()), for: entry.path) + "/" + (linkComponents.last ?? "")
            var info = stat()
            guard lstat(source, &info) == 0, info.st_mode & S_IFMT != S_IFDIR else {
                throw KilnError(
                    .invalidArgument,
                    "layer entry '\(entry.path)' is a hard link to '\(entry.linkTarget)', which is not a file in the image")
            }
            guard link(source, host) == 0 else { throw posixError("create hard link", host) }
            return
        case .characterDevice, .blockDevice:
            guard allowDevices else {
                throw KilnError(.invalidArgument, "layer entry '\(entry.path)' is a device node; unpacking devices needs root")
            }
            let type = entry.kind == .characterDevice ? S_IFCHR : S_IFBLK
            let device = linuxDeviceNumber(major: entry.deviceMajor, minor: entry.deviceMinor)
            guard mknod(host, type | mode_t(entry.mode), device) == 0 else { throw posixError("create device", host) }
            // mknod and mkfifo take the umask off; the layer's mode is what the image holds (/dev/null is 0666).
            guard chmod(host, mode_t(entry.mode)) == 0 else { throw posixError("set the mode of", host) }
        case .fifo:
            guard mkfifo(host, mode_t(entry.mode)) == 0 else { throw posixError("create fifo", host) }
            guard chmod(host, mode_t(entry.mode)) == 0 else { throw posixError("set the mode of", host) }
        }
        if applyOwners {
            lchown(host, entry.uid, entry.gid)
            // chown clears the SUID and SGID bits, so they are set again after it.
            if entry.kind != .symlink, entry.mode & 0o6000 != 0, chmod(host, mode_t(entry.mode)) != 0 {
                throw posixError("set the mode of", host)
            }
        }
        var times = [timespec(tv_sec: Int(entry.modificationTime), tv_nsec: 0), timespec(tv_sec: Int(entry.modificationTime), tv_nsec: 0)]
        utimensat(AT_FDCWD, host, &times, AT_SYMLINK_NOFOLLOW)
    }

    func removeIfPresent(_ host: String) throws {
        var info = stat()
        guard lstat(host, &info) == 0 else { return }
        if info.st_mode & S_IFMT == S_IFDIR {
            try FileManager.default.removeItem(atPath: host)
        } else if unlink(host) != 0 {
            throw posixError("remove", host)
        }
    }

    func posixError(_ what: String, _ path: String) -> KilnError {
        KilnError(.ioFailure, "cannot \(what) '\(path)' while unpacking a layer: \(String(cString: strerror(errno)))")
    }
}

/// Linux's `dev_t` for a device's major and minor numbers, as glibc's `makedev` macro builds it
/// (Swift cannot import the macro): minor bits 0-7 and 20-43, major bits 8-19 and 32-63.
public func linuxDeviceNumber(major: UInt32, minor: UInt32) -> dev_t {
    dev_t((UInt64(major & 0xfff) << 8) | UInt64(minor & 0xff) | (UInt64(minor & ~0xff) << 12) | (UInt64(major & ~0xfff) << 32))
}
