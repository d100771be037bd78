import Foundation
import KilnModel
import Testing

@Suite("Temp names that carry their owner")
struct ProcessOwnerTests {
    @Test("A name made by temporaryName gives its owner back; a plain UUID name never reads as an owner, even one of digits")
    func ownerOfTemporaryName() {
        let made = ProcessOwner.temporaryName(".tmp-")
        #expect(ProcessOwner.owner(ofTemporaryName: made, prefix: ".tmp-") == ProcessOwner.current)
        // A UUID whose first two groups are decimal digits, as about one in three hundred are.
        let plain = ".tmp-12345678-1234-4ABC-8DEF-123456789012"
        #expect(UUID(uuidString: String(plain.dropFirst(5))) != nil)
        #expect(ProcessOwner.owner(ofTemporaryName: plain, prefix: ".tmp-") == nil)
    }
}
