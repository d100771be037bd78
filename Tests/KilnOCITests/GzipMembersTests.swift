import Foundation
import KilnOCI
import KilnTestSupport
import Testing

@Suite("gzip layers made of several members")
struct GzipMembersTests {
    @Test("Two gzip members one after another (pigz, cat a.gz b.gz) read as one stream, as docker and containerd read them")
    func concatenatedMembers() throws {
        let scratch = Scratch("kiln-gzip-members")
        defer { scratch.remove() }
        let first = Data((0..<100_000).map { UInt8($0 % 251) })
        let second = Data("the second member\n".utf8)
        try first.write(to: URL(fileURLWithPath: scratch.path + "/one"))
        try second.write(to: URL(fileURLWithPath: scratch.path + "/two"))
        let made = try shell("cd \(scratch.path) && gzip -c one > both.gz && gzip -c two >> both.gz")
        #expect(made.status == 0, "\(made.text)")
        let reader = try GzipReader(path: scratch.path + "/both.gz")
        var all = Data()
        var buffer: [UInt8] = []
        while true {
            let count = try reader.read(into: &buffer, limit: 4096)
            if count == 0 { break }
            all.append(contentsOf: buffer[0..<count])
        }
        #expect(all == first + second, "read \(all.count) bytes of \(first.count + second.count)")
    }
}
