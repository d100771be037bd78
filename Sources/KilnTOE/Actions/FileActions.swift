import Foundation
import KilnModel

/// The file-system action modules (reference §2.6), all list-form, all through the session.
struct FileAction: TOEAction {
    let name: String

    func run(_ inputs: InputValue?, context: ActionContext) async throws -> ActionResult {
        let reader = InputReader(value: inputs, action: name, stepPath: context.stepPath)
        var outputs: [String: [String]] = [:]
        let files = FileOperations(context: context, action: name)
        for item in reader.items() {
            for (key, value) in try await files.perform(item) {
                outputs[key, default: []].append(value)
            }
        }
        return .completed(outputs.mapValues { $0.joined(separator: "\n") })
    }
}

struct FileOperations {
    let context: ActionContext
    let action: String
    var session: any InstanceSession { context.session }

    func fail(_ message: String) -> KilnError { context.failure(message) }

    func perform(_ item: InputReader) async throws -> [String: String] {
        switch action {
        case "AppendFile":
            let path = try item.required("path")
            guard try await session.fileInfo(path, followSymlinks: true)?.kind == .file else {
                throw fail("AppendFile: '\(path)' does not exist; create it first with CreateFile")
            }
            let data = try encode(item.string("content") ?? "", encoding: item.string("encoding"))
            try await session.writeFile(path, contents: data, append: true, mode: 0o666)
            context.log.info("Appended \(data.count) bytes to \(path)")
        case "CreateFile":
            try await createFile(item)
        case "CreateFolder":
            try await createFolder(item)
        case "CopyFile", "MoveFile":
            try await transferFiles(item, move: action == "MoveFile")
        case "CopyFolder", "MoveFolder":
            try await transferFolder(item, move: action == "MoveFolder")
        case "CreateSymlink":
            try await createSymlink(item)
        case "DeleteFile":
            try await deleteFiles(item)
        case "DeleteFolder":
            let path = try item.required("path")
            let force = try item.bool("force", default: false)
            guard let info = try await session.fileInfo(path, followSymlinks: false) else {
                throw fail("DeleteFolder: '\(path)' does not exist")
            }
            guard info.kind == .directory else { throw fail("DeleteFolder: '\(path)' is not a folder; use DeleteFile") }
            if !force, !(try await session.listDirectory(path)).isEmpty {
                throw fail("DeleteFolder: '\(path)' is not empty; set force: true to delete it with its contents")
            }
            try await session.remove(path, recursive: true)
            context.log.info("Deleted folder \(path)")
        case "ListFiles":
            return ["files": try await listFiles(item).joined(separator: ",")]
        case "ReadFile":
            let path = try item.required("path")
            let data = try await session.readFile(path)
            let content = try decode(data, encoding: item.string("encoding"), path: path)
            if try item.bool("printFileContent", default: false) { context.log.info("Content of \(path):\n\(content)") }
            return ["content": content]
        case "SetFileEncoding":
            let path = try item.required("path")
            let text = try decode(try await session.readFile(path), encoding: "utf8", path: path)
            let mode = try await session.fileInfo(path, followSymlinks: true)?.mode ?? 0o644
            try await session.writeFile(path, contents: try encode(text, encoding: item.required("encoding")), append: false, mode: mode)
        case "SetFileOwner", "SetFolderOwner":
            let path = try item.required("path")
            let folder = action == "SetFolderOwner"
            try await expectKind(path, folder: folder)
            try await session.setOwner(
                path, owner: try item.required("owner"), group: item.string("group"),
                recursive: folder ? try item.bool("recursive", default: true) : false)
        case "SetFilePermissions", "SetFolderPermissions":
            let path = try item.required("path")
            let folder = action == "SetFolderPermissions"
            try await expectKind(path, folder: folder)
            let mode = try Self.permissions(try item.required("permissions"), stepPath: context.stepPath)
            try await session.setPermissions(path, mode: mode, recursive: folder ? try item.bool("recursive", default: true) : false)
        default:
            throw fail("no file action named \(action)")
        }
        return [:]
    }

    // MARK: Create

    func createFile(_ item: InputReader) async throws {
        let path = try item.required("path")
        let overwrite = try item.bool("overwrite", default: true)
        let existing = try await session.fileInfo(path, followSymlinks: true)
        if let existing {
            guard existing.kind == .file else { throw fail("CreateFile: '\(path)' exists and is not a file") }
            guard overwrite else { throw fail("CreateFile: '\(path)' already exists and overwrite is false") }
        }
        let data = try encode(item.string("content") ?? "", encoding: item.string("encoding"))
        try await session.createDirectory(parent(of: path), mode: 0o777)
        try await session.writeFile(path, contents: data, append: false, mode: 0o666)
        try await applyOwnership(path, item)
        context.log.info("Created file \(path)")
    }

    func createFolder(_ item: InputReader) async throws {
        let path = try item.required("path")
        let overwrite = try item.bool("overwrite", default: true)
        if let existing = try await session.fileInfo(path, followSymlinks: true) {
            guard existing.kind == .directory else { throw fail("CreateFolder: '\(path)' exists and is not a folder") }
            guard overwrite else { throw fail("CreateFolder: '\(path)' already exists and overwrite is false") }
        }
        try await session.createDirectory(path, mode: 0o777)
        try await applyOwnership(path, item)
        context.log.info("Created folder \(path)")
    }

    func applyOwnership(_ path: String, _ item: InputReader) async throws {
        if let permissions = item.string("permissions") {
            try await session.setPermissions(path, mode: try Self.permissions(permissions, stepPath: context.stepPath), recursive: false)
        }
        let owner = item.string("owner")
        let group = item.string("group")
        if owner != nil || group != nil {
            try await session.setOwner(path, owner: owner, group: group, recursive: false)
        }
    }

    // MARK: Copy and move

    func transferFiles(_ item: InputReader, move: Bool) async throws {
        let source = try item.required("source")
        let destination = try item.required("destination")
        let overwrite = try item.bool("overwrite", default: true)
        let sources = try await expand(source)
        guard !sources.isEmpty else { throw fail("\(action): no file matches '\(source)'") }
        let intoFolder = destination.hasSuffix("/") || sources.count > 1 || source.contains("*")
        if intoFolder { try await session.createDirectory(destination, mode: 0o777) }
        for file in sources {
            guard let info = try await session.fileInfo(file, followSymlinks: true) else {
                throw fail("\(action): '\(file)' does not exist")
            }
            guard info.kind == .file else { throw fail("\(action): '\(file)' is a folder; use \(move ? "MoveFolder" : "CopyFolder")") }
            let target = intoFolder ? join(destination, basename(file)) : destination
            if !intoFolder { try await session.createDirectory(parent(of: target), mode: 0o777) }
            try await refuseSamePath(file, target)
            if let existing = try await session.fileInfo(target, followSymlinks: false) {
                guard overwrite else { throw fail("\(action): '\(target)' already exists and overwrite is false") }
                guard existing.kind != .directory else {
                    throw fail("\(action): '\(target)' is a folder; end the destination with '/' to put the file inside it")
                }
                try await session.remove(target, recursive: false)
            }
            if move { try await session.move(file, to: target) } else { try await session.copy(file, to: target) }
            context.log.info("\(move ? "Moved" : "Copied") \(file) to \(target)")
        }
    }

    func transferFolder(_ item: InputReader, move: Bool) async throws {
        let source = try item.required("source")
        let destination = try item.required("destination")
        let overwrite = try item.bool("overwrite", default: true)
        guard try await session.fileInfo(source, followSymlinks: true)?.kind == .directory else {
            throw fail("\(action): '\(source)' is not an existing folder")
        }
        let target = destination.hasSuffix("/") ? join(destination, basename(source)) : destination
        try await session.createDirectory(parent(of: target), mode: 0o777)
        try await refuseSamePath(source, target)
        if try await session.canonicalPath(target).hasPrefix(try await session.canonicalPath(source) + "/") {
            throw fail("\(action): '\(target)' is inside '\(source)'; a folder cannot be put inside itself")
        }
        if let existing = try await session.fileInfo(target, followSymlinks: false) {
            guard overwrite else { throw fail("\(action): '\(target)' already exists and overwrite is false") }
            guard existing.kind == .directory else { throw fail("\(action): '\(target)' exists and is not a folder") }
            // Like cp -r and mv onto an existing folder: merge, replacing files of the same name.
            try await mergeCopy(source, into: target)
            if move { try await session.remove(source, recursive: true) }
            context.log.info("\(move ? "Moved" : "Copied") folder \(source) into \(target)")
            return
        }
        if move { try await session.move(source, to: target) } else { try await session.copy(source, to: target) }
        context.log.info("\(move ? "Moved" : "Copied") folder \(source) to \(target)")
    }

    /// Replacing a file with itself would delete it first: refuse instead.
    func refuseSamePath(_ source: String, _ target: String) async throws {
        if try await session.canonicalPath(source) == session.canonicalPath(target) {
            throw fail("\(action): source and destination are the same ('\(source)')")
        }
    }

    /// `cp -r` into an existing folder: files are replaced, folders merged.
    func mergeCopy(_ source: String, into target: String) async throws {
        for name in try await session.listDirectory(source) {
            let from = join(source, name)
            let to = join(target, name)
            let info = try await session.fileInfo(from, followSymlinks: false)
            let existing = try await session.fileInfo(to, followSymlinks: false)
            if info?.kind == .directory, existing?.kind == .directory {
                try await mergeCopy(from, into: to)
                continue
            }
            if existing != nil { try await session.remove(to, recursive: true) }
            try await session.copy(from, to: to)
        }
    }

    // MARK: Links, deletes, listings

    func createSymlink(_ item: InputReader) async throws {
        let path = try item.required("path")
        let target = try item.required("target")
        let force = try item.bool("force", default: false)
        let targetForCheck = target.hasPrefix("/") ? target : join(parent(of: path), target)
        guard try await session.fileInfo(targetForCheck, followSymlinks: true) != nil else {
            throw fail("CreateSymlink: target '\(target)' does not exist")
        }
        if try await session.fileInfo(path, followSymlinks: false) != nil {
            guard force else { throw fail("CreateSymlink: '\(path)' already exists; set force: true to replace it") }
            try await session.remove(path, recursive: false)
        }
        try await session.createSymlink(path, target: target)
        context.log.info("Created symlink \(path) -> \(target)")
    }

    func deleteFiles(_ item: InputReader) async throws {
        let path = try item.required("path")
        let force = try item.bool("force", default: false)
        let matches = try await expand(path, followFinal: false)
        if matches.isEmpty {
            if force { return }
            throw fail("DeleteFile: '\(path)' does not exist")
        }
        for file in matches {
            let info = try await session.fileInfo(file, followSymlinks: false)
            if info?.kind == .directory {
                if force, !path.contains("*") {
                    try await session.remove(file, recursive: true)
                    continue
                }
                throw fail("DeleteFile: '\(file)' is a folder; use DeleteFolder")
            }
            try await session.remove(file, recursive: false)
            context.log.info("Deleted \(file)")
        }
    }

    func listFiles(_ item: InputReader) async throws -> [String] {
        let path = try item.required("path")
        let pattern = item.string("fileNamePattern") ?? "*"
        let recursive = try item.bool("recursive", default: false)
        guard try await session.fileInfo(path, followSymlinks: true)?.kind == .directory else {
            throw fail("ListFiles: '\(path)' is not an existing folder")
        }
        var found: [String] = []
        var folders = [path]
        while let folder = folders.popLast() {
            for name in try await session.listDirectory(folder) {
                let child = join(folder, name)
                let info = try await session.fileInfo(child, followSymlinks: false)
                if info?.kind == .directory {
                    if recursive { folders.append(child) }
                } else if Self.matches(name, pattern: pattern) {
                    found.append(child)
                }
            }
        }
        return found.sorted()
    }

    /// A path whose last component may hold `*` wildcards, expanded to what exists.
    func expand(_ path: String, followFinal: Bool = true) async throws -> [String] {
        let name = basename(path)
        guard name.contains("*") else {
            return try await session.fileInfo(path, followSymlinks: followFinal) == nil ? [] : [path]
        }
        let folder = parent(of: path)
        if parent(of: folder).contains("*") || folder.contains("*") {
            throw fail("\(action): '*' is allowed only in the last part of a path, got '\(path)'")
        }
        guard try await session.fileInfo(folder, followSymlinks: true)?.kind == .directory else { return [] }
        return try await session.listDirectory(folder).filter { Self.matches($0, pattern: name) }.map { join(folder, $0) }
    }

    func expectKind(_ path: String, folder: Bool) async throws {
        guard let info = try await session.fileInfo(path, followSymlinks: true) else { throw fail("\(action): '\(path)' does not exist") }
        if folder, info.kind != .directory {
            throw fail("\(action): '\(path)' is not a folder; use \(action.replacingOccurrences(of: "Folder", with: "File"))")
        }
        if !folder, info.kind == .directory {
            throw fail("\(action): '\(path)' is a folder; use \(action.replacingOccurrences(of: "File", with: "Folder"))")
        }
    }

    // MARK: Helpers

    static func matches(_ name: String, pattern: String) -> Bool {
        fnmatch(pattern, name, 0) == 0
    }

    /// `0755`, `755` and `0o755` all mean rwxr-xr-x.
    static func permissions(_ text: String, stepPath: String) throws -> UInt32 {
        var digits = Substring(text.trimmingCharacters(in: .whitespaces))
        if digits.hasPrefix("0o") { digits = digits.dropFirst(2) }
        guard !digits.isEmpty, digits.count <= 4, let mode = UInt32(digits, radix: 8) else {
            throw KilnError(.invalidArgument, "\(stepPath): permissions '\(text)' is not an octal mode such as '0755'")
        }
        return mode
    }

    func encode(_ text: String, encoding name: String?) throws -> Data {
        guard let data = text.data(using: try Self.encoding(name, stepPath: context.stepPath)) else {
            throw fail("cannot encode the content as \(name ?? "utf8")")
        }
        return data
    }

    func decode(_ data: Data, encoding name: String?, path: String) throws -> String {
        guard let text = String(data: data, encoding: try Self.encoding(name, stepPath: context.stepPath)) else {
            throw fail("\(action): '\(path)' is not valid \(name ?? "utf8") text")
        }
        return text
    }

    static func encoding(_ name: String?, stepPath: String) throws -> String.Encoding {
        switch (name ?? "utf8").lowercased() {
        case "utf8", "utf-8": return .utf8
        case "utf16", "utf-16", "utf16-le", "utf-16-le": return .utf16LittleEndian
        case "utf16-be", "utf-16-be": return .utf16BigEndian
        case "utf32", "utf-32", "utf32-le", "utf-32-le": return .utf32LittleEndian
        case "utf32-be", "utf-32-be": return .utf32BigEndian
        default:
            throw KilnError(
                .invalidArgument,
                "\(stepPath): encoding '\(name ?? "")' is not supported; use one of \(ActionCatalog.encodings.joined(separator: ", "))")
        }
    }
}

func basename(_ path: String) -> String {
    let trimmed = path.count > 1 && path.hasSuffix("/") ? String(path.dropLast()) : path
    return trimmed.split(separator: "/").last.map(String.init) ?? trimmed
}

func parent(of path: String) -> String {
    let trimmed = path.count > 1 && path.hasSuffix("/") ? String(path.dropLast()) : path
    guard let slash = trimmed.lastIndex(of: "/") else { return "." }
    return slash == trimmed.startIndex ? "/" : String(trimmed[..<slash])
}

func join(_ folder: String, _ name: String) -> String {
    folder.hasSuffix("/") ? folder + name : folder + "/" + name
}
