import Foundation
import KilnModel
import KilnSystem

#if canImport(Glibc)
    import Glibc
#endif

/// The machine Kiln itself runs on, as an instance (AWSTOE's own mode). Paths resolve under
/// `root`, which is `/` unless a test narrows it.
public struct LocalHostSession: InstanceSession {
    public let fileSystem: RootedFileSystem
    public let baseEnvironment: [String: String]

    public init(
        root: String = "/", workingDirectory: String = FileManager.default.currentDirectoryPath,
        environment: [String: String] = ProcessInfo.processInfo.environment
    ) {
        self.fileSystem = RootedFileSystem(root: root, workingDirectory: workingDirectory)
        self.baseEnvironment = environment
    }

    public var displayName: String { fileSystem.root == "/" ? "local host" : "local host (root \(fileSystem.root))" }

    public func canonicalPath(_ path: String) async throws -> String { try fileSystem.resolve(path) }

    public func makeScratchDirectory() async throws -> String {
        // The instance's /tmp may be a symlink: resolved inside the root, it must be a folder.
        let tmp = try fileSystem.resolve("/tmp")
        var info = stat()
        guard lstat(fileSystem.hostPath(instancePath: tmp), &info) == 0, info.st_mode & S_IFMT == S_IFDIR else {
            throw KilnError(
                .invalidArgument, "/tmp in the \(displayName) is not a folder (it resolves to '\(tmp)'); the scratch folder goes there")
        }
        var template = Array(fileSystem.hostPath(instancePath: tmp + "/kiln-toe.XXXXXX").utf8CString)
        guard let made = mkdtemp(&template) else { throw posixError("create a scratch folder in", "/tmp") }
        let host = String(cString: made)
        return fileSystem.root == "/" ? host : String(host.dropFirst(fileSystem.root.count))
    }

    /// Programs run on the host itself; a narrowed root only confines file operations (tests).
    public func exec(_ request: ExecRequest, output: @escaping @Sendable (ExecOutputStream, [UInt8]) -> Void) async throws -> ExecResult {
        guard fileSystem.root == "/" else {
            throw KilnError(
                .unsupported,
                "the \(displayName) cannot run programs: only the whole host (root /) can; use a container instance for a separate root")
        }
        if let user = request.user {
            throw KilnError(.unsupported, "the \(displayName) runs programs as Kiln's own user, not as '\(user)'; use a container instance")
        }
        var environment = baseEnvironment
        environment.merge(request.environment) { _, new in new }
        let executable = try locate(
            request.executable, path: environment["PATH"] ?? "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        let directory = try request.workingDirectory.map { try fileSystem.hostPath($0) } ?? fileSystem.hostPath(fileSystem.workingDirectory)
        return try await ProcessRunner.run(
            executablePath: executable, argumentZero: request.executable, arguments: request.arguments, environment: environment,
            workingDirectory: directory, timeout: request.timeout, output: output
        )
    }

    /// Finds `name` the way a shell would, in the instance's PATH.
    func locate(_ name: String, path: String) throws -> String {
        // The program keeps the path it was named by (a venv's python, busybox applets), so the
        // final symlink is not resolved here; the kernel follows it.
        if name.contains("/") {
            let host = try fileSystem.hostPath(name, followFinal: false)
            guard access(host, X_OK) == 0 else {
                throw KilnError(.notFound, "'\(name)' is not an executable file in the \(displayName)")
            }
            return host
        }
        for directory in path.split(separator: ":") where !directory.isEmpty {
            if let host = try? fileSystem.hostPath(String(directory) + "/" + name, followFinal: false), access(host, X_OK) == 0 {
                var info = stat()
                if stat(host, &info) == 0, info.st_mode & S_IFMT == S_IFREG { return host }
            }
        }
        throw KilnError(.notFound, "'\(name)' was not found in PATH (\(path)) of the \(displayName); install it or give its full path")
    }

    public func fileInfo(_ path: String, followSymlinks: Bool) async throws -> InstanceFileInfo? {
        let host = try fileSystem.hostPath(path, followFinal: followSymlinks)
        var info = stat()
        guard lstat(host, &info) == 0 else { return nil }
        let kind: InstanceFileInfo.Kind
        switch info.st_mode & S_IFMT {
        case S_IFREG: kind = .file
        case S_IFDIR: kind = .directory
        case S_IFLNK: kind = .symlink
        default: kind = .other
        }
        return InstanceFileInfo(
            kind: kind, size: Int64(info.st_size), mode: UInt32(info.st_mode & 0o7777), uid: info.st_uid, gid: info.st_gid)
    }

    public func readFile(_ path: String) async throws -> Data {
        try HostFileIO.readRegular(try fileSystem.hostPath(path), describe: "'\(path)' in the \(displayName)")
    }

    public func writeFile(_ path: String, contents: Data, append: Bool, mode: UInt32) async throws {
        let describe = "'\(path)' in the \(displayName)"
        let fd = try HostFileIO.openForWriting(try fileSystem.hostPath(path), append: append, mode: mode, describe: describe)
        defer { close(fd) }
        try contents.withUnsafeBytes { try HostFileIO.writeAll(fd, $0, describe: describe) }
    }

    public func listDirectory(_ path: String) async throws -> [String] {
        let host = try fileSystem.hostPath(path)
        do {
            return try FileManager.default.contentsOfDirectory(atPath: host).sorted()
        } catch {
            throw KilnError(.notFound, "cannot list '\(path)' in the \(displayName): \(error.localizedDescription)")
        }
    }

    public func createDirectory(_ path: String, mode: UInt32) async throws {
        let canonical = try fileSystem.resolve(path)
        var current = ""
        for component in canonical.split(separator: "/") {
            current += "/" + component
            let host = fileSystem.hostPath(instancePath: current)
            if mkdir(host, mode_t(mode)) != 0 && errno != EEXIST {
                throw posixError("create folder", current)
            }
            var info = stat()
            if lstat(host, &info) == 0, info.st_mode & S_IFMT != S_IFDIR {
                throw KilnError(.alreadyExists, "'\(current)' exists in the \(displayName) and is not a folder")
            }
        }
    }

    public func remove(_ path: String, recursive: Bool) async throws {
        let host = try fileSystem.hostPath(path, followFinal: false)
        var info = stat()
        guard lstat(host, &info) == 0 else { throw posixError("delete", path) }
        if info.st_mode & S_IFMT == S_IFDIR {
            if recursive {
                do { try FileManager.default.removeItem(atPath: host) } catch {
                    throw KilnError(.ioFailure, "cannot delete '\(path)' in the \(displayName): \(error.localizedDescription)")
                }
            } else if rmdir(host) != 0 {
                throw posixError("delete folder", path)
            }
        } else if unlink(host) != 0 {
            throw posixError("delete", path)
        }
    }

    public func move(_ source: String, to destination: String) async throws {
        let from = try fileSystem.hostPath(source, followFinal: false)
        let to = try fileSystem.hostPath(destination, followFinal: false)
        if rename(from, to) == 0 { return }
        guard errno == EXDEV else { throw posixError("move '\(source)' to", destination) }
        // Across file systems: copy (symlinks stay symlinks), then remove the original.
        try HostFileIO.copyTree(from: from, to: to, describe: describe)
        try await remove(source, recursive: true)
    }

    public func copy(_ source: String, to destination: String) async throws {
        let from = try fileSystem.hostPath(source)
        let to = try fileSystem.hostPath(destination, followFinal: false)
        try HostFileIO.copyTree(from: from, to: to, describe: describe)
    }

    /// An instance path for a message, from the host path Kiln works on.
    private func describe(_ hostPath: String) -> String {
        let inside = fileSystem.root == "/" ? hostPath : String(hostPath.dropFirst(fileSystem.root.count))
        return "'\(inside)' in the \(displayName)"
    }

    public func createSymlink(_ path: String, target: String) async throws {
        let host = try fileSystem.hostPath(path, followFinal: false)
        guard symlink(target, host) == 0 else { throw posixError("create symlink", path) }
    }

    public func setOwner(_ path: String, owner: String?, group: String?, recursive: Bool) async throws {
        let accounts = UserDatabase(fileSystem: fileSystem)
        let uid = try owner.map { try accounts.userID($0) }
        let gid = try group.map { try accounts.groupID($0) }
        try walk(path, recursive: recursive) { host, instancePath in
            if lchown(host, uid ?? UInt32.max, gid ?? UInt32.max) != 0 { throw posixError("change owner of", instancePath) }
        }
    }

    public func setPermissions(_ path: String, mode: UInt32, recursive: Bool) async throws {
        try walk(path, recursive: recursive) { host, instancePath in
            var info = stat()
            guard lstat(host, &info) == 0 else { throw posixError("change permissions of", instancePath) }
            if info.st_mode & S_IFMT == S_IFLNK { return }
            if chmod(host, mode_t(mode)) != 0 { throw posixError("change permissions of", instancePath) }
        }
    }

    public func importFile(fromHost hostPath: String, to path: String) async throws {
        let destination = try fileSystem.hostPath(path, followFinal: false)
        if rename(hostPath, destination) == 0 { return }
        var info = stat()
        if lstat(destination, &info) == 0 {
            guard info.st_mode & S_IFMT != S_IFDIR, unlink(destination) == 0 else {
                throw KilnError(
                    .alreadyExists, "cannot place a file at '\(path)' in the \(displayName): something is there and cannot be replaced")
            }
        }
        try HostFileIO.copyFile(from: hostPath, to: destination, mode: 0o644, describe: { "'\($0)'" })
        unlink(hostPath)
    }

    public func exportFile(_ path: String, toHost hostPath: String) async throws {
        let source = try fileSystem.hostPath(path)
        try HostFileIO.copyFile(from: source, to: hostPath, mode: 0o600) { $0 == source ? "'\(path)' in the \(displayName)" : "'\($0)'" }
    }

    public func reboot() async throws -> RebootDisposition { .deferred }

    // MARK: Helpers

    private func walk(_ path: String, recursive: Bool, _ body: (String, String) throws -> Void) throws {
        let canonical = try fileSystem.resolve(path)
        let host = fileSystem.hostPath(instancePath: canonical)
        var info = stat()
        guard lstat(host, &info) == 0 else { throw posixError("find", path) }
        try body(host, canonical)
        guard recursive, info.st_mode & S_IFMT == S_IFDIR else { return }
        // Children are visited without following symlinks, so a link cannot lead the walk out.
        let enumerator = FileManager.default.enumerator(atPath: host)
        while let relative = enumerator?.nextObject() as? String {
            try body(host + "/" + relative, canonical + "/" + relative)
        }
    }

    private func posixError(_ operation: String, _ path: String) -> KilnError {
        let code = errno
        let kind: KilnError.Code = code == ENOENT ? .notFound : code == EEXIST ? .alreadyExists : .ioFailure
        return KilnError(kind, "cannot \(operation) '\(path)' in the \(displayName): \(String(cString: strerror(code)))")
    }
}

/// Users and groups as the instance knows them (its own /etc/passwd and /etc/group).
public struct UserDatabase: Sendable {
    let fileSystem: RootedFileSystem

    public init(fileSystem: RootedFileSystem) {
        self.fileSystem = fileSystem
    }

    public func userID(_ name: String) throws -> UInt32 {
        if let id = UInt32(name) { return id }
        if let id = lookup(name, in: "/etc/passwd", idField: 2) { return id }
        throw KilnError(.notFound, "user '\(name)' does not exist in the instance (/etc/passwd); create it first or use a numeric id")
    }

    public func groupID(_ name: String) throws -> UInt32 {
        if let id = UInt32(name) { return id }
        if let id = lookup(name, in: "/etc/group", idField: 2) { return id }
        throw KilnError(.notFound, "group '\(name)' does not exist in the instance (/etc/group); create it first or use a numeric id")
    }

    /// The primary group of a user, from /etc/passwd.
    public func primaryGroupID(ofUser uid: UInt32) -> UInt32? {
        guard let text = try? accountFile("/etc/passwd") else { return nil }
        for line in text.split(separator: "\n") {
            let fields = line.split(separator: ":", omittingEmptySubsequences: false)
            if fields.count > 3, UInt32(fields[2]) == uid { return UInt32(fields[3]) }
        }
        return nil
    }

    /// /etc/passwd or /etc/group, which runc also reads when a process starts: a FIFO there would
    /// hang it, so anything but a regular file (or none) is an error.
    public func accountFile(_ file: String) throws -> String? {
        let host = try fileSystem.hostPath(file)
        do {
            return String(decoding: try HostFileIO.readRegular(host, describe: "the instance's \(file)", limit: 16 << 20), as: UTF8.self)
        } catch let error as KilnError where error.code == .notFound {
            return nil
        }
    }

    /// Refuses account files runc could not read (a FIFO, device or folder in their place).
    public func checkAccountFiles() throws {
        for file in ["/etc/passwd", "/etc/group"] { _ = try accountFile(file) }
    }

    private func lookup(_ name: String, in file: String, idField: Int) -> UInt32? {
        guard let text = try? accountFile(file) else { return nil }
        for line in text.split(separator: "\n") {
            let fields = line.split(separator: ":", omittingEmptySubsequences: false)
            if fields.count > idField, fields[0] == name { return UInt32(fields[idField]) }
        }
        return nil
    }
}
