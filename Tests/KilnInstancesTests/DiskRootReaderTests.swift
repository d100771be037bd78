import Foundation
import KilnModel
import KilnTestSupport
import Testing

@testable import KilnInstances

#if canImport(Glibc)
    import Glibc
#endif

/// A root tree with what `rdump` would lose, in an ext4 partition of a GPT disk made with the
/// real tools (sfdisk, mkfs.ext4 -d at an offset), read back by `DiskRootReader`.
@Suite("Reading an imported disk's root filesystem without mounting it", .serialized)
struct DiskRootReaderTests {
    /// Partition 1 is a small unformatted one, so the reader must find the root in partition 2.
    static func disk(from tree: String, in scratch: Scratch, name: String = "disk") throws -> String {
        let raw = scratch.file(name + ".raw")
        let made = try shell(
            """
            set -e
            truncate -s 80M \(raw)
            printf 'label: gpt\\nstart=2048, size=4096, name=spare\\nstart=8192, name=root\\n' | sfdisk -q \(raw)
            mkfs.ext4 -q -F -d \(tree) -E offset=\(8192 * 512) \(raw) 70M
            """)
        try #require(made.status == 0, "\(made.output)")
        return raw
    }

    static func statOf(_ path: String) -> stat? {
        var info = stat()
        return lstat(path, &info) == 0 ? info : nil
    }

    @Test(
        "Set-id and sticky bits, owners, hard links, fast and slow links, devices, FIFOs, capabilities and odd names come back as they were",
        .enabled(if: TestEnvironment.requiresRoot("debugfs", "mkfs.ext4", "sfdisk", "setcap", "getcap")))
    func faithfulCopy() async throws {
        let scratch = Scratch("kiln-disk-read")
        defer { scratch.remove() }
        let tree = scratch.file("tree")
        let longTarget = "../" + String(repeating: "deep/", count: 20) + "target"
        let setUp = try shell(
            """
            set -e
            mkdir -p \(tree)/usr/bin \(tree)/etc \(tree)/boot \(tree)/dev \(tree)/tmp \(tree)/home/user \(tree)/run
            echo su > \(tree)/usr/bin/su; chmod 4755 \(tree)/usr/bin/su
            ln \(tree)/usr/bin/su \(tree)/usr/bin/su-again
            echo wall > \(tree)/usr/bin/wall; chown 0:5 \(tree)/usr/bin/wall; chmod 2755 \(tree)/usr/bin/wall
            echo ping > \(tree)/usr/bin/ping; chmod 755 \(tree)/usr/bin/ping; setcap cap_net_raw+ep \(tree)/usr/bin/ping
            chmod 1777 \(tree)/tmp; chown 1000:1000 \(tree)/home/user; chmod 700 \(tree)/home/user
            echo 'ID=debian' > \(tree)/etc/os-release; echo secret > \(tree)/home/user/notes; chown 1000:1000 \(tree)/home/user/notes
            ln -s ../usr/lib/os-release \(tree)/etc/short-link
            ln -s '\(longTarget)' \(tree)/etc/long-link
            ln -s /etc/passwd \(tree)/etc/host-link
            printf 'with space' > '\(tree)/etc/a name with spaces'
            printf 'utf8' > '\(tree)/etc/caf\u{e9}'
            echo kernel > \(tree)/boot/vmlinuz-6.1.0-9-cloud-amd64
            head -c 300000 /dev/urandom > \(tree)/usr/bin/big
            mknod \(tree)/dev/null c 1 3; chmod 666 \(tree)/dev/null; mknod \(tree)/dev/sda b 8 0
            mkfifo \(tree)/run/initctl
            """)
        try #require(setUp.status == 0, "\(setUp.output)")
        let raw = try Self.disk(from: tree, in: scratch)
        let lines = LinesSeen()
        let summary = try await DiskRootReader.extract(raw: raw, into: scratch.file("out"), observer: { lines.add($0) })
        #expect(summary.partition == 2, "the root is found in partition 2: \(lines.all)")
        #expect(summary.offset == 8192 * 512)

        let out = scratch.file("out")
        // Every entry of the source has the same type, mode, owner, size and contents (or link target).
        let compared = try shell(
            """
            cd \(tree) && find . -mindepth 1 ! -name lost+found \\( -type d -printf '%p %M %U:%G folder\\n' -o -printf '%p %M %U:%G %s %l\\n' \\) | sort > \(scratch.file("a"))
            cd \(out) && find . -mindepth 1 ! -path './lost+found*' \\( -type d -printf '%p %M %U:%G folder\\n' -o -printf '%p %M %U:%G %s %l\\n' \\) | sort > \(scratch.file("b"))
            diff \(scratch.file("a")) \(scratch.file("b")) && echo SAME-METADATA
            cd \(tree) && find . -type f -exec sha256sum {} + | sort > \(scratch.file("c"))
            cd \(out) && find . -type f ! -path './lost+found*' -exec sha256sum {} + | sort > \(scratch.file("d"))
            diff \(scratch.file("c")) \(scratch.file("d")) && echo SAME-CONTENTS
            """)
        #expect(compared.output.contains("SAME-METADATA"), "\(compared.output)")
        #expect(compared.output.contains("SAME-CONTENTS"), "\(compared.output)")

        let su = try #require(Self.statOf(out + "/usr/bin/su"))
        let again = try #require(Self.statOf(out + "/usr/bin/su-again"))
        #expect(su.st_mode & 0o7777 == 0o4755, "su keeps its set-uid bit")
        #expect(su.st_ino == again.st_ino && su.st_nlink == 2, "hard links stay one file")
        #expect(Self.statOf(out + "/tmp").map { $0.st_mode & 0o7777 } == 0o1777, "/tmp keeps its sticky bit")
        #expect(Self.statOf(out + "/dev/null").map { ($0.st_mode & S_IFMT) == S_IFCHR && $0.st_rdev == (1 << 8 | 3) } == true)
        #expect(Self.statOf(out + "/dev/sda").map { ($0.st_mode & S_IFMT) == S_IFBLK } == true)
        #expect(Self.statOf(out + "/run/initctl").map { ($0.st_mode & S_IFMT) == S_IFIFO } == true)
        let capability = try shell("getcap \(out)/usr/bin/ping")
        #expect(capability.output.contains("cap_net_raw=ep"), "\(capability.output)")
        #expect(try FileManager.default.destinationOfSymbolicLink(atPath: out + "/etc/long-link") == longTarget)
        #expect(try FileManager.default.destinationOfSymbolicLink(atPath: out + "/etc/host-link") == "/etc/passwd")
        #expect(lines.all.contains { $0.contains("root filesystem: partition 2") }, "\(lines.all)")
    }

    @Test(
        "A disk with a name holding a line break, a folder reached twice, or no root is refused, saying what and where, and nothing outside the folder is written",
        .enabled(if: TestEnvironment.requiresRoot("debugfs", "mkfs.ext4", "sfdisk")))
    func hostileDisks() async throws {
        let scratch = Scratch("kiln-disk-hostile")
        defer { scratch.remove() }
        let base = scratch.file("base")
        try #require(
            try shell("mkdir -p \(base)/etc \(base)/usr/bin && echo ID=debian > \(base)/etc/os-release && echo x > \(base)/usr/bin/x")
                .status == 0)

        // A line break in a name could forge a listing line; such a disk is refused.
        let broken = scratch.file("broken")
        try #require(try shell("cp -a \(base) \(broken) && printf x > '\(broken)/etc/evil\nforged'").status == 0)
        let brokenRaw = try Self.disk(from: broken, in: scratch, name: "broken")
        await #expect {
            try await DiskRootReader.extract(raw: brokenRaw, into: scratch.file("out1"))
        } throws: { error in
            let message = (error as? KilnError)?.message ?? ""
            return message.contains("the folder /etc has an entry Kiln cannot read safely") && message.contains(brokenRaw)
        }
        #expect(!FileManager.default.fileExists(atPath: scratch.file("out1")), "nothing is made for a refused disk")

        // A folder linked into itself: debugfs writes the second name without asking.
        let loopRaw = try Self.disk(from: base, in: scratch, name: "loop")
        let linked = try shell("debugfs -w -R 'ln /etc /etc/again' '\(loopRaw)?offset=\(8192 * 512)'")
        try #require(linked.status == 0, "\(linked.output)")
        await #expect {
            try await DiskRootReader.extract(raw: loopRaw, into: scratch.file("out2"))
        } throws: { error in
            (error as? KilnError)?.message.contains("the folder /etc/again is reached twice") == true
        }

        // No ext filesystem with /etc and /usr anywhere.
        let empty = scratch.file("empty")
        try #require(try shell("mkdir -p \(empty)/data && echo 1 > \(empty)/data/one").status == 0)
        let emptyRaw = try Self.disk(from: empty, in: scratch, name: "empty")
        await #expect {
            try await DiskRootReader.extract(raw: emptyRaw, into: scratch.file("out3"))
        } throws: { error in
            let message = (error as? KilnError)?.message ?? ""
            return message.contains("no root filesystem found") && message.contains("partition 1: not ext2/3/4")
                && message.contains("partition 2: ext without /etc and /usr")
        }
        #expect(!FileManager.default.fileExists(atPath: scratch.file("out3")), "a refused disk leaves no folder")
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: scratch.path).filter {
            $0.hasPrefix("disk-read-") || $0.contains("kiln-disk-read")
        }
        #expect(leftovers.isEmpty, "the work folders are removed: \(leftovers)")
    }
}

/// Progress lines, collected from the reader's observer.
final class LinesSeen: @unchecked Sendable {
    private let lock = NSLock()
    private var lines: [String] = []
    func add(_ line: String) { lock.withLock { lines.append(line) } }
    var all: [String] { lock.withLock { lines } }
}
