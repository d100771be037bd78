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
}
