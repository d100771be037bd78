import Foundation
import KilnEngine
import KilnModel
import KilnOCI
import KilnRegistry
import KilnTestSupport
import Testing

/// KubeVirt containerDisks pushed to a real `docker-registry`, then read back with skopeo, GNU
/// tar and qemu-img, which know nothing of Kiln.
@Suite(
    "ContainerDisk: a qcow2 disk as a KubeVirt containerDisk in a real registry", .serialized,
    .enabled(if: TestEnvironment.requires("/usr/bin/docker-registry", "skopeo", "qemu-img", "tar", "sha256sum", "jq")))
struct ContainerDiskTests {
    /// A small qcow2 with some written data, and its sha256.
    func qcow2(_ scratch: Scratch) throws -> (path: String, sha256: String) {
        let path = scratch.file("source.qcow2")
        let raw = scratch.file("source.raw")
        let made = try shell(
            "head -c 3M /dev/urandom > \(raw) && truncate -s 64M \(raw) && qemu-img convert -f raw -O qcow2 \(raw) \(path) && sha256sum \(path)"
        )
        try #require(made.status == 0, "\(made.output)")
        return (path, String(made.output.prefix(64)))
    }

    func transfer(_ scratch: Scratch) throws -> ImageTransfer {
        ImageTransfer(store: try ContentStore(root: scratch.file("store")), registries: RegistryDirectory())
    }

    @Test(
        "The pushed image holds /disk/disk.qcow2 owned by 107:107, mode 0440, byte-identical to the disk; skopeo sees linux/amd64 and the format label"
    )
    func pushedLayout() async throws {
        let registry = try LoopbackRegistry()
        defer { registry.stop() }
        let scratch = Scratch("kiln-containerdisk")
        defer { scratch.remove() }
        let (disk, sha256) = try qcow2(scratch)
        let reference = try ImageReference("\(registry.host)/kubevirt/web-disk:1.0.0")
        let second = try ImageReference("\(registry.host)/mirror/web-disk:latest")

        let pushed = try await ContainerDisk.push(qcow2: disk, transfer: try transfer(scratch), name: "web-disk", to: [reference, second])
        #expect(pushed.references == ["\(reference)@\(pushed.digest)", "\(second)@\(pushed.digest)"])
        for target in [reference, second] {
            let seen = try shell("skopeo inspect --tls-verify=false --raw docker://\(target) | sha256sum")
            #expect(seen.output.prefix(64) == pushed.digest.encoded, "skopeo reads \(target) as \(seen.output)")
        }
        let inspect = try shell("skopeo inspect --tls-verify=false docker://\(reference)", includeStandardError: false)
        let details = try #require(try JSONSerialization.jsonObject(with: Data(inspect.output.utf8)) as? [String: Any], "\(inspect.output)")
        #expect(details["Os"] as? String == "linux" && details["Architecture"] as? String == "amd64", "\(details)")
        #expect((details["Labels"] as? [String: String])?[ContainerDisk.formatLabel] == "qcow2", "\(details)")
        #expect((details["Layers"] as? [String])?.count == 1, "one layer, on no base: \(details)")

        // What a container runtime would unpack: copy to an OCI layout, list and extract the layer.
        let layout = scratch.file("layout")
        let copied = try shell("skopeo copy -q --src-tls-verify=false docker://\(reference) oci:\(layout):disk")
        try #require(copied.status == 0, "\(copied.output)")
        let manifest = try shell(
            "jq -r '.manifests[0].digest' \(layout)/index.json | cut -d: -f2 | xargs -I{} jq -r '.layers[0].digest' \(layout)/blobs/sha256/{}"
        )
        let layer = "\(layout)/blobs/sha256/" + manifest.output.trimmingCharacters(in: .whitespacesAndNewlines).dropFirst("sha256:".count)
        let listing = try shell("tar -tvzf \(layer) --numeric-owner")
        let lines = listing.output.split(separator: "\n").map { $0.split(separator: " ", omittingEmptySubsequences: true) }
        #expect(lines.count == 2, "a folder and the disk: \(listing.output)")
        #expect(
            lines.first.map { [String($0[0]), String($0[1]), String($0.last!)] } == ["dr-xr-xr-x", "107/107", "disk/"], "\(listing.output)")
        #expect(
            lines.last.map { [String($0[0]), String($0[1]), String($0.last!)] } == ["-r--r-----", "107/107", "disk/disk.qcow2"],
            "\(listing.output)")
        let unpacked = scratch.file("unpacked")
        let extracted = try shell(
            "mkdir -p \(unpacked) && tar -xzf \(layer) -C \(unpacked) --same-owner && stat -c '%u:%g %a' \(unpacked)/disk/disk.qcow2 && sha256sum \(unpacked)/disk/disk.qcow2"
        )
        let out = extracted.output.split(separator: "\n").map(String.init)
        #expect(extracted.status == 0 && out.first == "107:107 440", "\(extracted.output)")
        #expect(out.last?.prefix(64) == Substring(sha256), "the disk in the image has the source's bytes: \(extracted.output)")
        let info = try shell("qemu-img info --output=json \(unpacked)/disk/disk.qcow2")
        #expect(
            info.status == 0 && info.output.contains("\"format\": \"qcow2\"") && info.output.contains("\"virtual-size\": 67108864"),
            "\(info.output)")
    }

    @Test("Pushing the same disk twice, from two stores, gives the same digest; another disk gives another")
    func reproducible() async throws {
        let registry = try LoopbackRegistry()
        defer { registry.stop() }
        let scratch = Scratch("kiln-containerdisk")
        defer { scratch.remove() }
        let (disk, _) = try qcow2(scratch)
        let first = try await ContainerDisk.push(
            qcow2: disk, transfer: try transfer(scratch), name: "d", to: [try ImageReference("\(registry.host)/r/disk:one")])
        let again = Scratch("kiln-containerdisk")
        defer { again.remove() }
        let second = try await ContainerDisk.push(
            qcow2: disk, transfer: try transfer(again), name: "d", to: [try ImageReference("\(registry.host)/r/disk:two")])
        #expect(first.digest == second.digest && first.layer == second.layer)
        #expect(
            try shell("skopeo inspect --tls-verify=false --raw docker://\(registry.host)/r/disk:two | sha256sum").output.prefix(64)
                == first.digest.encoded)

        let resized = try shell("qemu-img resize -q \(disk) 128M")
        try #require(resized.status == 0, "\(resized.output)")
        let other = try await ContainerDisk.push(
            qcow2: disk, transfer: try transfer(scratch), name: "d", to: [try ImageReference("\(registry.host)/r/disk:three")])
        #expect(other.digest != first.digest)
    }

    @Test(
        "Bad inputs are refused before anything is stored, saying what is wrong",
        arguments: [
            ("missing", "cannot read the disk", KilnError.Code.notFound),
            ("raw", "is not a qcow2 disk", .invalidArgument),
            ("empty", "is not a qcow2 disk", .invalidArgument),
            ("folder", "is not a regular file", .invalidArgument),
        ])
    func badInputs(kind: String, message: String, code: KilnError.Code) async throws {
        let scratch = Scratch("kiln-containerdisk")
        defer { scratch.remove() }
        let path = scratch.file(kind)
        switch kind {
        case "raw": try shell("qemu-img create -q -f raw \(path) 1M")
        case "empty": FileManager.default.createFile(atPath: path, contents: nil)
        case "folder": try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        default: break
        }
        let store = try ContentStore(root: scratch.file("store"))
        let error = try #require(throws: KilnError.self) { try ContainerDisk.make(qcow2: path, in: store, name: "d") }
        #expect(error.code == code && error.message.contains(message) && error.message.contains(path), "\(error.message)")
        #expect(try store.resolve("d") == nil)
        let name = try #require(throws: KilnError.self) {
            try ContainerDisk.make(qcow2: path, in: store, name: "d", diskName: "../x")
        }
        #expect(name.message.contains("'../x' cannot name"), "\(name.message)")
    }
}
