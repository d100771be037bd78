import CKilnSystem
import Foundation
import KilnModel
import KilnOCI
import KilnSystem
import Synchronization

/// Reads the root filesystem out of a raw disk into a folder, without mounting it or using a
/// loop device, so an imported disk can be a parent image. debugfs lists every directory by
/// inode number and dumps each file to a name Kiln chooses; Kiln then makes the tree itself.
///
/// The disk is untrusted. Names are checked (UTF-8, no `/`, no line break, not `.` or `..`); a
/// name seen twice in a folder, or a folder reached twice, refuses the disk; every file is
/// created new (never through an existing name), so nothing outside the folder is written.
/// Kept: modes with set-id and sticky bits, owners, hard links, symbolic links, device nodes,
/// FIFOs, and `security.*`, `user.*` and `trusted.*` extended attributes. Not kept: times (the
/// layer's are set when it is packed), sockets and POSIX ACLs (listed in `skipped`).
public enum DiskRootReader {
    public struct Summary: Sendable, Hashable {
        /// The partition's number in the table (1-based), nil for a disk that is one filesystem.
        public var partition: Int?
        public var offset: Int64
        public var entries: Int
        public var fileBytes: Int64
        public var skipped: [String]
    }

    /// Stops a hostile disk from making Kiln list without end.
    static let maximumEntries = 5_000_000

    /// Extracts the disk's root filesystem: the first ext2/3/4 filesystem (a partition, or the
    /// whole disk) whose top holds the folders `etc` and `usr`. `directory` must not exist.
    public static func extract(raw: String, into directory: String, observer: (@Sendable (String) -> Void)? = nil) async throws
        -> Summary
    {
        try DiskTool.debugfs.check()
        let (partition, offset) = try await locateRoot(raw)
        let device = "\(raw)?offset=\(offset)"
        observer?("root filesystem: \(partition.map { "partition \($0)" } ?? "the whole disk") (ext at byte \(offset))")
        let work = (directory as NSString).deletingLastPathComponent + "/" + ProcessOwner.temporaryName("disk-read-")
        guard mkdir(work, 0o700) == 0 else { throw posixError("cannot make the folder", work) }
        defer { try? FileManager.default.removeItem(atPath: work) }
        let session = Session(device: device, work: work, disk: raw)

        let tree = try await session.listTree()
        observer?("listed \(tree.entries.count) entries")
        guard mkdir(directory, 0o700) == 0 else { throw posixError("cannot make the folder", directory) }
        var skipped: [String] = []
        let fileBytes = try await session.makeTree(tree, in: directory, skipped: &skipped)
        observer?("read \(fileBytes) bytes of files\(skipped.isEmpty ? "" : "; not kept: " + skipped.joined(separator: ", "))")
        return Summary(partition: partition, offset: offset, entries: tree.entries.count, fileBytes: fileBytes, skipped: skipped)
    }

    /// The partition (or whole disk) holding the root filesystem, by the table sfdisk reads.
    static func locateRoot(_ raw: String) async throws -> (partition: Int?, offset: Int64) {
        var candidates: [(Int?, Int64)] = [(nil, 0)]
        if let json = try? await DiskTool.sfdisk.run(["--json", raw], what: "reading the partition table"),
            let table = (try? JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any])?["partitiontable"] as? [String: Any]
        {
            let sector = (table["sectorsize"] as? NSNumber)?.int64Value ?? 512
            let partitions = table["partitions"] as? [[String: Any]] ?? []
            candidates = partitions.enumerated().compactMap { index, partition in
                (partition["start"] as? NSNumber).map { (index + 1, $0.int64Value * sector) }
            }
        }
        var looked: [String] = []
        for (number, offset) in candidates {
            let place = number.map { "partition \($0)" } ?? "the whole disk"
            guard hasExtMagic(raw, at: offset) else {
                looked.append("\(place): not ext2/3/4")
                continue
            }
            let listing = try await DiskTool.debugfs.run(["-R", "ls -p <2>", "\(raw)?offset=\(offset)"], what: "reading \(place)")
            let folders = Set(
                listing.split(separator: "\n").compactMap { try? ListedEntry.parse(Array($0.utf8)) }.filter(\.isDirectory).map(\.name))
            if folders.contains("etc") && folders.contains("usr") { return (number, offset) }
            looked.append("\(place): ext without /etc and /usr")
        }
        throw KilnError(
            .invalidArgument,
            "no root filesystem found on \(raw) (\(looked.joined(separator: "; "))); Kiln reads ext2/3/4 roots only (no LVM, XFS or btrfs), so import a disk whose root partition is ext4"
        )
    }

    static func hasExtMagic(_ raw: String, at offset: Int64) -> Bool {
        guard let handle = FileHandle(forReadingAtPath: raw) else { return false }
        defer { try? handle.close() }
        guard (try? handle.seek(toOffset: UInt64(offset) + 1080)) != nil, let bytes = try? handle.read(upToCount: 2) else { return false }
        return bytes.count == 2 && bytes[bytes.startIndex] == 0x53 && bytes[bytes.startIndex + 1] == 0xEF
    }

    static func posixError(_ what: String, _ path: String) -> KilnError {
        KilnError(.ioFailure, "\(what) \(path): \(String(cString: strerror(errno)))")
    }
}

/// One line of `ls -p`: `/INODE/MODE/UID/GID/NAME/SIZE/`, MODE in octal.
struct ListedEntry: Hashable {
    var inode: UInt32
    var mode: UInt32
    var uid: UInt32
    var gid: UInt32
    var name: String
    var size: Int64

    var type: mode_t { mode & S_IFMT }
    var isDirectory: Bool { type == S_IFDIR }

    struct Unreadable: Error {}

    /// The entry on `line`, or nil for an unused slot (`/0/000000/0/0//0/`, as in lost+found).
    static func parse(_ line: [UInt8]) throws -> ListedEntry? {
        if line.starts(with: Array("/0/".utf8)) { return nil }
        return try ListedEntry(parsing: line)
    }

    init(parsing line: [UInt8]) throws {
        let fields = line.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: false)
        // A name holding `/` would add fields: such a line cannot be read unambiguously.
        guard fields.count == 8, fields[0].isEmpty, fields[7].isEmpty,
            let inode = UInt32(String(decoding: fields[1], as: UTF8.self)),
            let mode = UInt32(String(decoding: fields[2], as: UTF8.self), radix: 8),
            let uid = UInt32(String(decoding: fields[3], as: UTF8.self)),
            let gid = UInt32(String(decoding: fields[4], as: UTF8.self)),
            let name = String(validating: fields[5], as: UTF8.self), !name.isEmpty
        else { throw Unreadable() }
        let sizeText = String(decoding: fields[6], as: UTF8.self)
        (self.inode, self.mode, self.uid, self.gid, self.name) = (inode, mode, uid, gid, name)
        self.size = sizeText.isEmpty ? 0 : Int64(sizeText) ?? -1
        guard size >= 0 else { throw Unreadable() }
    }
}

extension DiskRootReader {
    struct Tree {
        /// Every entry but the root, parents before children, with its path from the root.
        var entries: [(path: String, entry: ListedEntry)]
        var root: ListedEntry
    }

    /// debugfs runs against one filesystem; commands go in batches through a command file, and
    /// each command's output is found after debugfs's echo of it.
    struct Session {
        let device: String
        let work: String
        let disk: String

        func batch(_ commands: [String]) async throws -> [ArraySlice<UInt8>] {
            guard !commands.isEmpty else { return [] }
            let file = work + "/commands"
            try (commands.joined(separator: "\n") + "\n").write(toFile: file, atomically: false, encoding: .utf8)
            let output = ByteSink()
            let errors = OutputCollector(headLimit: 0, tailLimit: 4096)
            let result = try await ProcessRunner.run(
                executablePath: DiskTool.debugfs.path, argumentZero: "debugfs", arguments: ["-f", "commands", device],
                environment: ["PATH": "/usr/sbin:/usr/bin:/sbin:/bin"], workingDirectory: work, timeout: .seconds(3600)
            ) { stream, bytes in
                if stream == .stdout { output.append(bytes) } else { errors.append(bytes) }
            }
            guard result.exitCode == 0, !result.timedOut else {
                throw KilnError(
                    .execFailure, "reading \(disk) with debugfs failed (exit \(result.exitCode)): \(errors.text.suffix(1500))")
            }
            return try Self.sections(of: output.bytes, commands: commands)
        }

        /// The output of each command, in order: what follows `debugfs: COMMAND\n` up to the next echo.
        static func sections(of output: [UInt8], commands: [String]) throws -> [ArraySlice<UInt8>] {
            var starts: [(echo: Int, body: Int)] = []
            var from = 0
            for command in commands {
                let echo = Array("debugfs: \(command)\n".utf8)
                guard let at = find(echo, in: output, from: from) else {
                    throw KilnError(.execFailure, "debugfs's output lacks the answer to '\(command)'")
                }
                starts.append((at, at + echo.count))
                from = at + echo.count
            }
            return starts.indices.map { index in
                let end = index + 1 < starts.count ? starts[index + 1].echo : output.count
                return output[starts[index].body..<end]
            }
        }

        /// The first `needle` at a line's start at or after `from`.
        static func find(_ needle: [UInt8], in haystack: [UInt8], from: Int) -> Int? {
            var index = from
            while index + needle.count <= haystack.count {
                if index == 0 || haystack[index - 1] == 0x0A, haystack[index] == needle[0],
                    haystack[index..<index + needle.count].elementsEqual(needle)
                {
                    return index
                }
                guard let next = haystack[index...].firstIndex(of: 0x0A) else { return nil }
                index = next + 1
            }
            return nil
        }

        /// Lists the filesystem breadth first: one debugfs run per depth.
        func listTree() async throws -> Tree {
            var entries: [(path: String, entry: ListedEntry)] = []
            var root: ListedEntry?
            var folders: Set<UInt32> = [2]
            var level: [(inode: UInt32, path: String)] = [(2, "")]
            while !level.isEmpty {
                let sections = try await batch(level.map { "ls -p <\($0.inode)>" })
                var next: [(inode: UInt32, path: String)] = []
                for (folder, section) in zip(level, sections) {
                    let shown = "/" + folder.path
                    var names = Set<String>()
                    for line in section.split(separator: 0x0A) {
                        let parsed: ListedEntry?
                        do {
                            parsed = try ListedEntry.parse(Array(line))
                        } catch {
                            throw KilnError(
                                .invalidArgument,
                                "\(disk): the folder \(shown) has an entry Kiln cannot read safely (a name with a line break, a '/', or not UTF-8); the disk is refused"
                            )
                        }
                        guard let entry = parsed else { continue }
                        if entry.name == "." {
                            if folder.inode == 2 { root = entry }
                            continue
                        }
                        if entry.name == ".." { continue }
                        guard names.insert(entry.name).inserted else {
                            throw KilnError(.invalidArgument, "\(disk): the folder \(shown) names \(entry.name) twice; the disk is refused")
                        }
                        let path = folder.path.isEmpty ? entry.name : folder.path + "/" + entry.name
                        if entry.isDirectory {
                            guard folders.insert(entry.inode).inserted else {
                                throw KilnError(
                                    .invalidArgument, "\(disk): the folder /\(path) is reached twice (a folder loop); the disk is refused")
                            }
                            next.append((entry.inode, path))
                        }
                        entries.append((path, entry))
                        guard entries.count <= maximumEntries else {
                            throw KilnError(.invalidArgument, "\(disk) holds more than \(maximumEntries) files; the disk is refused")
                        }
                    }
                }
                level = next
            }
            guard let root else { throw KilnError(.invalidArgument, "\(disk): the root folder has no '.' entry") }
            return Tree(entries: entries, root: root)
        }

        /// Makes the listed tree in `directory` and returns the bytes of the files written.
        func makeTree(_ tree: Tree, in directory: String, skipped: inout [String]) async throws -> Int64 {
            // Folders first, parents before children (the listing's order), each made new.
            for (path, entry) in tree.entries where entry.isDirectory {
                guard mkdir(directory + "/" + path, 0o700) == 0 else { throw posixError("cannot make the folder", directory + "/" + path) }
            }

            // Regular files and slow links are dumped by inode; fast links and devices come from stat.
            var firstPath: [UInt32: String] = [:]
            var files: [(path: String, entry: ListedEntry)] = []
            var special: [(path: String, entry: ListedEntry)] = []
            var sockets = 0
            for (path, entry) in tree.entries where !entry.isDirectory {
                switch entry.type {
                case S_IFREG:
                    if firstPath[entry.inode] == nil {
                        firstPath[entry.inode] = path
                        files.append((path, entry))
                    }
                case S_IFLNK, S_IFCHR, S_IFBLK, S_IFIFO: special.append((path, entry))
                case S_IFSOCK: sockets += 1
                default:
                    throw KilnError(.invalidArgument, "\(disk): /\(path) has an unknown file type (mode \(String(entry.mode, radix: 8)))")
                }
            }
            if sockets > 0 { skipped.append("\(sockets) socket(s)") }

            let stats = try await batch(special.map { "stat <\($0.entry.inode)>" })
            var slowLinks: [(path: String, entry: ListedEntry)] = []
            for ((path, entry), section) in zip(special, stats) {
                let target = directory + "/" + path
                switch entry.type {
                case S_IFLNK:
                    guard let destination = Self.fastLinkDestination(section, size: entry.size) else {
                        slowLinks.append((path, entry))
                        continue
                    }
                    guard symlink(destination, target) == 0 else { throw posixError("cannot make the link", target) }
                case S_IFIFO:
                    guard mkfifo(target, 0o600) == 0 else { throw posixError("cannot make the FIFO", target) }
                default:
                    guard let (major, minor) = Self.deviceNumbers(section) else {
                        throw KilnError(.invalidArgument, "\(disk): debugfs gives no device number for /\(path)")
                    }
                    guard mknod(target, entry.type | 0o600, linuxDeviceNumber(major: major, minor: minor)) == 0 else {
                        throw posixError("cannot make the device", target)
                    }
                }
            }

            // Dumped into the work folder under inode numbers, then linked into place (link never replaces a name).
            let dumped = files + slowLinks
            _ = try await batch(dumped.map { "dump <\($0.entry.inode)> i\($0.entry.inode)" })
            var fileBytes: Int64 = 0
            for (path, entry) in dumped {
                let source = work + "/i\(entry.inode)"
                var info = stat()
                guard lstat(source, &info) == 0, (info.st_mode & S_IFMT) == S_IFREG, Int64(info.st_size) == entry.size else {
                    throw KilnError(
                        .invalidArgument,
                        "\(disk): /\(path) (inode \(entry.inode)) could not be read whole: debugfs gave \(lstat(source, &info) == 0 ? "\(info.st_size)" : "no") bytes of \(entry.size)"
                    )
                }
                let target = directory + "/" + path
                if entry.type == S_IFLNK {
                    guard let bytes = FileManager.default.contents(atPath: source), !bytes.isEmpty, !bytes.contains(0),
                        let destination = String(data: bytes, encoding: .utf8)
                    else {
                        throw KilnError(
                            .invalidArgument, "\(disk): the link /\(path) points at a name that is not UTF-8; the disk is refused")
                    }
                    guard symlink(destination, target) == 0 else { throw posixError("cannot make the link", target) }
                    unlink(source)
                    continue
                }
                guard link(source, target) == 0 else { throw posixError("cannot place the file", target) }
                unlink(source)
                fileBytes += entry.size
            }
            for (path, entry) in tree.entries where entry.type == S_IFREG && firstPath[entry.inode] != path {
                guard link(directory + "/" + firstPath[entry.inode]!, directory + "/" + path) == 0 else {
                    throw posixError("cannot make the hard link", directory + "/" + path)
                }
            }

            // Owners, then modes (a change of owner clears set-id bits); folders after their files.
            let ordered = tree.entries.filter { !$0.entry.isDirectory } + tree.entries.filter(\.entry.isDirectory).reversed()
            for (path, entry) in ordered + [("", tree.root)] {
                let target = path.isEmpty ? directory : directory + "/" + path
                guard lchown(target, uid_t(entry.uid), gid_t(entry.gid)) == 0 else { throw posixError("cannot set the owner of", target) }
                if entry.type != S_IFLNK {
                    guard chmod(target, mode_t(entry.mode & 0o7777)) == 0 else { throw posixError("cannot set the mode of", target) }
                }
            }
            // Last: a change of owner also drops file capabilities (security.capability).
            try await copyAttributes(of: tree, in: directory, firstPath: firstPath, skipped: &skipped)
            return fileBytes
        }

        /// Extended attributes of files and folders: names from `ea_list`, values through `ea_get -f`.
        func copyAttributes(of tree: Tree, in directory: String, firstPath: [UInt32: String], skipped: inout [String]) async throws {
            var owners: [(path: String, inode: UInt32)] = [("", 2)]
            for (path, entry) in tree.entries where entry.isDirectory || (entry.type == S_IFREG && firstPath[entry.inode] == path) {
                owners.append((path, entry.inode))
            }
            let lists = try await batch(owners.map { "ea_list <\($0.inode)>" })
            var wanted: [(path: String, inode: UInt32, name: String, length: Int)] = []
            var notKept = 0
            for (owner, section) in zip(owners, lists) {
                for line in section.split(separator: 0x0A) {
                    let text = String(decoding: line, as: UTF8.self).trimmingCharacters(in: .whitespaces)
                    guard let open = text.range(of: " ("), let close = text.range(of: ")", range: open.upperBound..<text.endIndex),
                        let length = Int(text[open.upperBound..<close.lowerBound])
                    else { continue }
                    let name = String(text[..<open.lowerBound])
                    let kept =
                        ["security.", "user.", "trusted."].contains { name.hasPrefix($0) }
                        && name.utf8.allSatisfy { $0 > 0x20 && $0 < 0x7F && $0 != UInt8(ascii: "\"") }
                    if kept {
                        wanted.append((owner.path, owner.inode, name, length))
                    } else if name != "system.data" {
                        notKept += 1
                    }
                }
            }
            if notKept > 0 {
                skipped.append("\(notKept) extended attribute(s) outside security.*, user.* and trusted.* (such as POSIX ACLs)")
            }
            _ = try await batch(wanted.enumerated().map { "ea_get -f x\($0.offset) <\($0.element.inode)> \($0.element.name)" })
            for (index, attribute) in wanted.enumerated() {
                let file = work + "/x\(index)"
                guard let value = FileManager.default.contents(atPath: file), value.count == attribute.length else {
                    throw KilnError(.invalidArgument, "\(disk): the attribute \(attribute.name) of /\(attribute.path) could not be read")
                }
                let target = attribute.path.isEmpty ? directory : directory + "/" + attribute.path
                let status = value.withUnsafeBytes { lsetxattr(target, attribute.name, $0.baseAddress, value.count, 0) }
                guard status == 0 else { throw posixError("cannot set \(attribute.name) on", target) }
                unlink(file)
            }
        }

        /// The target of a link kept in its inode: `Fast link dest: "…"`, exactly `size` bytes long.
        static func fastLinkDestination(_ section: ArraySlice<UInt8>, size: Int64) -> String? {
            let marker = Array("Fast link dest: \"".utf8)
            let bytes = Array(section)
            guard let at = find(marker, in: bytes, from: 0) else { return nil }
            let start = at + marker.count
            let end = start + Int(size)
            guard size > 0, end < bytes.count, bytes[end] == UInt8(ascii: "\""), !bytes[start..<end].contains(0) else { return nil }
            return String(validating: bytes[start..<end], as: UTF8.self)
        }

        /// `Device major/minor number: 01:03 (hex 01:03)`, in decimal.
        static func deviceNumbers(_ section: ArraySlice<UInt8>) -> (UInt32, UInt32)? {
            let text = String(decoding: section, as: UTF8.self)
            guard let range = text.range(of: "Device major/minor number: ") else { return nil }
            let numbers = text[range.upperBound...].prefix { $0 != " " && $0 != "\n" }.split(separator: ":")
            guard numbers.count == 2, let major = UInt32(numbers[0]), let minor = UInt32(numbers[1]) else { return nil }
            return (major, minor)
        }
    }
}

/// Standard output kept whole, in order (debugfs's answers are parsed, so none may be cut).
final class ByteSink: Sendable {
    private let state = Mutex<[UInt8]>([])
    func append(_ chunk: [UInt8]) { state.withLock { $0.append(contentsOf: chunk) } }
    var bytes: [UInt8] { state.withLock { $0 } }
}
