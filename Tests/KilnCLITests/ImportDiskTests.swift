import Foundation
import KilnTestSupport
import Testing

/// `kiln image import-disk` with disks made here by sfdisk and qemu-img: raw, qcow2 and one-file
/// vmdk become AVAILABLE AMIs whose qcow2 holds the same blocks; disks that name host files are
/// refused before anything is written.
@Suite("kiln image import-disk", .serialized, .enabled(if: TestEnvironment.requires("qemu-img", "sfdisk")))
struct ImportDiskTests {
    @Test("raw, qcow2 and vmdk import as AMIs with the same blocks; overlays, vmdk descriptors and non-disks are refused")
    func imports() throws {
        let scratch = Scratch("kiln-import-disk")
        defer { scratch.remove() }
        let config = try scratch.write("kiln.yaml", "dataDirectory: \(scratch.path)/data\n")
        let made = try shell(
            """
            cd \(scratch.path) && truncate -s 64M disk.raw && printf 'label: gpt\\n,,L\\n' | sfdisk -q disk.raw \\
            && printf 'kiln-import-disk' | dd of=disk.raw bs=1 seek=1048576 conv=notrunc status=none \\
            && qemu-img convert -f raw -O qcow2 disk.raw disk.qcow2 \\
            && qemu-img convert -f raw -O vmdk -o subformat=streamOptimized disk.raw disk.vmdk
            """)
        try #require(made.status == 0, "\(made.output)")

        var amis: Set<String> = []
        for file in ["disk.raw", "disk.qcow2", "disk.vmdk"] {
            let result = try Kiln.run(["image", "import-disk", file, "--name", "imported", "--config", config], in: scratch.path)
            try #require(result.status == 0, "\(file): \(result.stderr)")
            let record = try #require(
                (try? JSONSerialization.jsonObject(with: Data(result.stdout.utf8))) as? [String: Any], "\(result.stdout)")
            #expect(record["status"] as? String == "AVAILABLE" && record["type"] as? String == "AMI", "\(record)")
            let machine = try #require(record["machineImage"] as? [String: Any], "\(record)")
            let ami = machine["amiId"] as? String ?? ""
            #expect(ami.wholeMatch(of: #/ami-[0-9a-f]{17}/#) != nil, "\(ami)")
            amis.insert(ami)
            #expect(machine["virtualSize"] as? Int == 64 << 20)
            let disk = try #require(machine["disk"] as? String)
            let same = try shell("qemu-img compare -f raw -F qcow2 \(scratch.file("disk.raw")) \(disk)")
            #expect(same.status == 0, "\(file): the imported qcow2 holds the same blocks: \(same.output)")
            let digest = try shell("sha256sum \(disk)").output.prefix(64)
            #expect(machine["digest"] as? String == "sha256:" + digest)
        }
        #expect(amis.count == 3, "each import is its own build with its own AMI id")
        let listed = try Kiln.run(["images", "--config", config], in: scratch.path)
        #expect(listed.stdout.contains("imported/1.0.0/3"), "\(listed.stdout)")

        let hostile = try shell(
            """
            cd \(scratch.path) && qemu-img create -q -f qcow2 -b /etc/hostname -F raw overlay.qcow2 \\
            && printf '# Disk DescriptorFile\\nversion=1\\nCID=fffffffe\\nparentCID=ffffffff\\ncreateType="monolithicFlat"\\nRW 2048 FLAT "/etc/hostname" 0\\n' > descriptor.vmdk \\
            && head -c 4M /dev/urandom > noise.bin && printf 'hello' > note.txt
            """)
        try #require(hostile.status == 0, "\(hostile.output)")
        for (file, message) in [
            ("overlay.qcow2", "is a qcow2 overlay of /etc/hostname"),
            ("descriptor.vmdk", "is a vmdk descriptor whose data is in other files"),
            ("noise.bin", "is not a disk Kiln can import"),
            ("note.txt", "is not a disk Kiln can import"),
        ] {
            let refused = try Kiln.run(["image", "import-disk", file, "--name", "hostile", "--config", config], in: scratch.path)
            #expect(refused.status != 0 && refused.stderr.contains(message), "\(file): \(refused.stderr)")
        }
        let after = try Kiln.run(["images", "--config", config], in: scratch.path)
        #expect(!after.stdout.contains("hostile/"), "a refused disk leaves no image: \(after.stdout)")
    }
}
