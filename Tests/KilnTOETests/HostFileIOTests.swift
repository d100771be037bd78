import Foundation
import KilnTOE
import KilnTestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

@Suite("Copying files an instance or nobody controls")
struct HostFileIOTests {
    @Test("A copy drops setuid and setgid, as cp does without -p: root would own the copy")
    func copyDropsSetuid() throws {
        let scratch = Scratch("kiln-hostfileio")
        defer { scratch.remove() }
        let source = try scratch.write("tool", "#!/bin/sh\n")
        #expect(chmod(source, 0o6755) == 0)
        try HostFileIO.copyTree(from: source, to: scratch.path + "/copy") { $0 }
        var info = stat()
        #expect(stat(scratch.path + "/copy", &info) == 0)
        #expect(info.st_mode & 0o7777 == 0o755, "mode \(String(info.st_mode & 0o7777, radix: 8))")
    }

    @Test("A 1 TiB sparse file copies as a sparse file: same size and bytes, no disk spent on its holes")
    func sparseCopy() throws {
        let scratch = Scratch("kiln-hostfileio")
        defer { scratch.remove() }
        let source = scratch.path + "/sparse"
        let made = try shell(
            "printf head > \(source) && truncate -s 1T \(source) && printf tail | dd of=\(source) bs=1 seek=1099511627772 conv=notrunc 2>/dev/null"
        )
        #expect(made.status == 0, "\(made.text)")
        try HostFileIO.copyFile(from: source, to: scratch.path + "/copy", mode: 0o644) { $0 }
        var info = stat()
        #expect(stat(scratch.path + "/copy", &info) == 0)
        #expect(info.st_size == 1 << 40)
        #expect(info.st_blocks * 512 < 1 << 20, "allocated \(info.st_blocks * 512) bytes")
        let ends = try shell("head -c 4 \(scratch.path)/copy; tail -c 4 \(scratch.path)/copy")
        #expect(ends.text == "headtail")
    }
}
