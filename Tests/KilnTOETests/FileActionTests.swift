import Foundation
import KilnModel
import KilnTestSupport
import Testing

@testable import KilnTOE

#if canImport(Glibc)
    import Glibc
#endif

@Suite("File-system actions, with real effects in a temp folder")
struct FileActionTests {
    func mode(_ path: String) -> UInt32 {
        var info = stat()
        lstat(path, &info)
        return UInt32(info.st_mode & 0o7777)
    }

    func owner(_ path: String) -> (uid: UInt32, gid: UInt32) {
        var info = stat()
        lstat(path, &info)
        return (info.st_uid, info.st_gid)
    }

    @Test("Create, append, read, list, copy, move, symlink and delete")
    func lifecycle() async throws {
        let dir = Scratch()
        defer { dir.remove() }
        let d = dir.path
        let result = try await runDocument(
            """
            schemaVersion: 1.0
            phases:
              - name: build
                steps:
                  - name: Folder
                    action: CreateFolder
                    inputs:
                      - path: \(d)/a/b
                        permissions: '0750'
                  - name: File
                    action: CreateFile
                    inputs:
                      - path: \(d)/a/b/one.txt
                        content: "first line\\n"
                        permissions: 0600
                      - path: \(d)/deep/new/two.conf
                        content: two
                  - name: Append
                    action: AppendFile
                    inputs:
                      - path: \(d)/a/b/one.txt
                        content: "second line\\n"
                  - name: Read
                    action: ReadFile
                    inputs:
                      - path: \(d)/a/b/one.txt
                  - name: CopyIntoFolder
                    action: CopyFile
                    inputs:
                      - source: \(d)/a/b/one.txt
                        destination: \(d)/copies/
                  - name: CopyRename
                    action: CopyFile
                    inputs:
                      - source: \(d)/a/b/one.txt
                        destination: \(d)/copies/renamed.txt
                  - name: CopyWildcard
                    action: CopyFile
                    inputs:
                      - source: \(d)/copies/*.txt
                        destination: \(d)/wild/
                  - name: Link
                    action: CreateSymlink
                    inputs:
                      - path: \(d)/link.txt
                        target: \(d)/a/b/one.txt
                  - name: Move
                    action: MoveFile
                    inputs:
                      - source: \(d)/deep/new/two.conf
                        destination: \(d)/moved/
                  - name: CopyTree
                    action: CopyFolder
                    inputs:
                      - source: \(d)/a
                        destination: \(d)/tree/
                  - name: MoveTree
                    action: MoveFolder
                    inputs:
                      - source: \(d)/wild
                        destination: \(d)/wild-moved
                  - name: List
                    action: ListFiles
                    inputs:
                      - path: \(d)/tree
                        recursive: true
                        fileNamePattern: '*.txt'
                  - name: DeleteOne
                    action: DeleteFile
                    inputs:
                      - path: \(d)/copies/*.txt
                  - name: DeleteTree
                    action: DeleteFolder
                    inputs:
                      - path: \(d)/deep
                        force: true
            """)
        #expect(result.report.status == .success, "\(result.console.text)")
        #expect(mode(dir.file("a/b")) == 0o750)
        #expect(mode(dir.file("a/b/one.txt")) == 0o600)
        #expect(try dir.read("a/b/one.txt") == "first line\nsecond line\n")
        #expect(result.outputs("Read")["content"] == "first line\nsecond line\n")
        #expect(try dir.read("wild-moved/one.txt") == "first line\nsecond line\n")
        #expect(try dir.read("wild-moved/renamed.txt") == "first line\nsecond line\n")
        #expect(!dir.exists("wild"))
        #expect(try FileManager.default.destinationOfSymbolicLink(atPath: dir.file("link.txt")) == dir.file("a/b/one.txt"))
        #expect(try dir.read("moved/two.conf") == "two")
        #expect(try dir.read("tree/a/b/one.txt").hasPrefix("first"))
        #expect(result.outputs("List")["files"] == "\(d)/tree/a/b/one.txt")
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir.file("copies")).isEmpty)
        #expect(!dir.exists("deep"))
    }

    @Test("Owner, group and permissions are set by name from the instance's user database")
    func ownership() async throws {
        guard getuid() == 0 else {
            #expect(Bool(!TestEnvironment.isCI), "CI runs as root; changing owners needs root")
            return
        }
        let dir = Scratch()
        defer { dir.remove() }
        try dir.write("tree/sub/file", "x")
        let result = try await runDocument(
            """
            schemaVersion: 1.0
            phases:
              - name: build
                steps:
                  - name: Create
                    action: CreateFile
                    inputs:
                      - path: \(dir.file("owned.txt"))
                        content: hi
                        owner: nobody
                        group: nogroup
                        permissions: '0640'
                  - name: Owner
                    action: SetFolderOwner
                    inputs:
                      - path: \(dir.file("tree"))
                        owner: nobody
                        group: '0'
                  - name: Perms
                    action: SetFolderPermissions
                    inputs:
                      - path: \(dir.file("tree"))
                        permissions: '0700'
                  - name: FilePerms
                    action: SetFilePermissions
                    inputs:
                      - path: \(dir.file("tree/sub/file"))
                        permissions: '4755'
            """)
        #expect(result.report.status == .success, "\(result.console.text)")
        let nobody = UInt32(try shell("id -u nobody").output.trimmingCharacters(in: .whitespacesAndNewlines))!
        let nogroup = UInt32(try shell("getent group nogroup | cut -d: -f3").output.trimmingCharacters(in: .whitespacesAndNewlines))!
        #expect(owner(dir.file("owned.txt")) == (nobody, nogroup))
        #expect(mode(dir.file("owned.txt")) == 0o640)
        #expect(owner(dir.file("tree/sub/file")).uid == nobody)
        #expect(owner(dir.file("tree/sub/file")).gid == 0)
        #expect(mode(dir.file("tree/sub")) == 0o700)
        #expect(mode(dir.file("tree/sub/file")) == 0o4755)
    }

    @Test("Encodings: CreateFile writes UTF-16LE, SetFileEncoding converts, ReadFile decodes")
    func encodings() async throws {
        let dir = Scratch()
        defer { dir.remove() }
        let result = try await runDocument(
            """
            schemaVersion: 1.0
            phases:
              - name: build
                steps:
                  - name: Wide
                    action: CreateFile
                    inputs:
                      - path: \(dir.file("wide.txt"))
                        content: Kiln
                        encoding: utf16
                  - name: Convert
                    action: CreateFile
                    inputs:
                      - path: \(dir.file("be.txt"))
                        content: ok
                  - name: ToBigEndian
                    action: SetFileEncoding
                    inputs:
                      - path: \(dir.file("be.txt"))
                        encoding: UTF-32-BE
                  - name: ReadBack
                    action: ReadFile
                    inputs:
                      - path: \(dir.file("wide.txt"))
                        encoding: utf-16-le
            """)
        #expect(result.report.status == .success, "\(result.console.text)")
        #expect(try Data(contentsOf: URL(fileURLWithPath: dir.file("wide.txt"))) == Data([0x4B, 0, 0x69, 0, 0x6C, 0, 0x6E, 0]))
        #expect(try Data(contentsOf: URL(fileURLWithPath: dir.file("be.txt"))) == Data([0, 0, 0, 0x6F, 0, 0, 0, 0x6B]))
        #expect(result.outputs("ReadBack")["content"] == "Kiln")
    }

    @Test("Refusals: overwrite false, non-empty folder without force, missing file, symlink to nothing")
    func refusals() async throws {
        let dir = Scratch()
        defer { dir.remove() }
        try dir.write("exists.txt", "keep me")
        try dir.write("full/child", "x")
        let cases: [(action: String, inputs: String, message: String)] = [
            (
                "CreateFile", "path: \(dir.file("exists.txt"))\n    content: new\n    overwrite: false",
                "already exists and overwrite is false"
            ),
            (
                "CopyFile", "source: \(dir.file("full/child"))\n    destination: \(dir.file("exists.txt"))\n    overwrite: false",
                "already exists and overwrite is false"
            ),
            ("DeleteFolder", "path: \(dir.file("full"))", "is not empty; set force: true"),
            ("DeleteFile", "path: \(dir.file("missing.txt"))", "does not exist"),
            ("AppendFile", "path: \(dir.file("missing.txt"))\n    content: x", "does not exist; create it first"),
            ("CreateSymlink", "path: \(dir.file("l"))\n    target: \(dir.file("nothing"))", "target"),
            ("SetFilePermissions", "path: \(dir.file("exists.txt"))\n    permissions: rwx", "not an octal mode"),
            ("SetFilePermissions", "path: \(dir.file("full"))\n    permissions: '0644'", "is a folder; use SetFolderPermissions"),
            ("CreateFile", "path: \(dir.file("enc.txt"))\n    encoding: latin1", "encoding 'latin1' is not supported"),
            ("SetFileOwner", "path: \(dir.file("exists.txt"))\n    owner: no-such-user-kiln", "user 'no-such-user-kiln' does not exist"),
        ]
        for testCase in cases {
            let result = try await runDocument(
                """
                schemaVersion: 1.0
                phases:
                  - name: build
                    steps:
                      - name: Try
                        action: \(testCase.action)
                        inputs:
                          - \(testCase.inputs.replacingOccurrences(of: "\n    ", with: "\n            "))
                """)
            let step = try #require(result.step("Try"))
            #expect(step.status == .failed, "\(testCase.action)")
            #expect(step.failureMessage.contains(testCase.message), "\(testCase.action): \(step.failureMessage)")
            #expect(step.failureMessage.hasPrefix("build/Try: "), "messages name the step path")
        }
        #expect(try dir.read("exists.txt") == "keep me")
        #expect(dir.exists("full/child"))
    }

    @Test("Rooted paths: symlinks and .. inside an instance root never leave it")
    func rootedResolution() throws {
        let dir = Scratch()
        defer { dir.remove() }
        try FileManager.default.createDirectory(atPath: dir.file("etc"), withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(atPath: dir.file("escape"), withDestinationPath: "/etc")
        try FileManager.default.createSymbolicLink(atPath: dir.file("up"), withDestinationPath: "../../../..")
        let fs = RootedFileSystem(root: dir.path)
        #expect(try fs.hostPath("/escape/passwd") == dir.path + "/etc/passwd")
        #expect(try fs.hostPath("/up/etc/shadow") == dir.path + "/etc/shadow")
        #expect(try fs.hostPath("/../../etc") == dir.path + "/etc")
        #expect(try fs.hostPath("/escape", followFinal: false) == dir.path + "/escape")
        #expect(try RootedFileSystem(root: "/", workingDirectory: "/tmp").hostPath("x/../y") == "/tmp/y")
    }
}
