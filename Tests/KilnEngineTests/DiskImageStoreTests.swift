import Foundation
import KilnEngine
import KilnModel
import KilnTestSupport
import Synchronization
import Testing

/// Machine-image disks into regions' image stores: a directory, and an S3 bucket on a real
/// `moto_server`; each copy is read back and checked by digest, here and with the AWS CLI.
@Suite("Disk image stores: directory and S3 (moto_server)", .serialized, .enabled(if: TestEnvironment.requires("moto_server", "aws")))
struct DiskImageStoreTests {
    static let environment = ["AWS_ACCESS_KEY_ID": "kilntest", "AWS_SECRET_ACCESS_KEY": "kilnsecret", "AWS_DEFAULT_REGION": "us-east-1"]

    /// A disk-like file of `mebibytes` random bytes, and its digest.
    func disk(_ scratch: Scratch, mebibytes: Int) throws -> (path: String, digest: String) {
        let path = scratch.file("disk.raw")
        let made = try shell("head -c \(mebibytes)M /dev/urandom > \(path) && sha256sum \(path)")
        try #require(made.status == 0, "\(made.output)")
        return (path, "sha256:" + made.output.prefix(64))
    }

    @Test("A directory store gets the whole disk under its name, synced and renamed into place, with no temporary file left")
    func directory() async throws {
        let scratch = Scratch("kiln-disk-store")
        defer { scratch.remove() }
        let (path, digest) = try disk(scratch, mebibytes: 24)
        let seen = Mutex<Int64>(0)
        let copy = try await DiskImageStore.copy(
            path, name: "web/1.0.0/1/disk.qcow2", digest: digest, region: "lab", to: .directory(scratch.file("store")),
            progress: { bytes in seen.withLock { $0 = bytes } })
        #expect(copy.location == scratch.file("store/web/1.0.0/1/disk.qcow2"))
        #expect(copy.bytes == 24 << 20 && seen.withLock { $0 } == 24 << 20)
        #expect(try DiskImageStore.sha256(of: copy.location).digest == digest)
        let left = try FileManager.default.contentsOfDirectory(atPath: scratch.file("store/web/1.0.0/1"))
        #expect(left == ["disk.qcow2"], "\(left)")

        let wrong = try await #require(throws: KilnError.self) {
            try await DiskImageStore.copy(
                path, name: "bad.raw", digest: "sha256:" + String(repeating: "0", count: 64), region: "lab",
                to: .directory(scratch.file("store")))
        }
        #expect(wrong.message.contains("region lab") && wrong.message.contains("reads back as \(digest)"), "\(wrong.message)")
        #expect(!FileManager.default.fileExists(atPath: scratch.file("store/bad.raw")), "a copy that differs is removed")
    }

    @Test("An S3 store takes a large disk in parts and a small one in one PUT; both read back by digest, and the AWS CLI sees their sizes")
    func s3() async throws {
        let server = try LoopbackServer(executable: "moto_server", arguments: { ["-H", "127.0.0.1", "-p", String($0)] })
        defer { server.stop() }
        let scratch = Scratch("kiln-disk-store")
        defer { scratch.remove() }
        let aws = "aws --endpoint-url \(server.url)"
        #expect(try shell("\(aws) s3 mb s3://kiln-disks", environment: Self.environment).status == 0)
        let bucket = KilnConfiguration.S3Bucket(
            endpoint: server.url, bucket: "kiln-disks", prefix: "amis", region: "us-east-1", accessKeyId: "kilntest",
            secretAccessKey: "kilnsecret")
        let (path, digest) = try disk(scratch, mebibytes: 150)
        let copy = try await DiskImageStore.copy(path, name: "web/1.0.0/1/disk.raw", digest: digest, region: "s3-lab", to: .s3(bucket))
        #expect(copy.location == "s3://kiln-disks/amis/web/1.0.0/1/disk.raw" && copy.digest == digest && copy.bytes == 150 << 20)
        let head = try shell("\(aws) s3api head-object --bucket kiln-disks --key amis/web/1.0.0/1/disk.raw", environment: Self.environment)
        #expect(head.output.contains("\"ContentLength\": \(150 << 20)"), "\(head.output)")
        #expect(head.output.contains("-3\\\""), "150 MiB in 64 MiB parts is a three-part upload (ETag ends -3): \(head.output)")
        let fetched = try shell(
            "\(aws) s3 cp s3://kiln-disks/amis/web/1.0.0/1/disk.raw \(scratch.file("back.raw")) >/dev/null && sha256sum \(scratch.file("back.raw"))",
            environment: Self.environment)
        #expect(fetched.output.hasPrefix(digest.dropFirst("sha256:".count)), "\(fetched.output)")

        let small = try disk(scratch, mebibytes: 1)
        let one = try await DiskImageStore.copy(small.path, name: "small.raw", digest: small.digest, region: "s3-lab", to: .s3(bucket))
        #expect(one.location == "s3://kiln-disks/amis/small.raw" && one.bytes == 1 << 20)

        var missing = bucket
        missing.bucket = "no-such-bucket"
        let error = try await #require(throws: KilnError.self) {
            try await DiskImageStore.copy(small.path, name: "small.raw", digest: small.digest, region: "s3-lab", to: .s3(missing))
        }
        #expect(error.message.contains("region s3-lab") && error.message.contains("no-such-bucket"), "\(error.message)")
    }
}
