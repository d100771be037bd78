import Crypto
import Foundation
import KilnModel
import KilnTestSupport
import Testing

@testable import KilnTOE

@Suite("WebDownload against a real HTTP server on loopback", .serialized, .enabled(if: TestEnvironment.requires("python3")))
struct WebDownloadTests {
    func sha256(_ text: String) -> String { SHA256.hash(data: Data(text.utf8)).hexString }

    @Test("Download with checksums, skip-if-hash-matches, a checksum mismatch, a 404 and overwrite false")
    func webDownload() async throws {
        let site = Scratch("kiln-site")
        let dir = Scratch()
        defer {
            site.remove()
            dir.remove()
        }
        try site.write("files/tool.sh", "#!/bin/sh\necho tool\n")
        let server = try LoopbackServer(
            executable: "python3", arguments: { ["-m", "http.server", "--bind", "127.0.0.1", String($0)] }, directory: site.path)
        defer { server.stop() }
        let good = sha256("#!/bin/sh\necho tool\n")
        let md5 = Insecure.MD5.hash(data: Data("#!/bin/sh\necho tool\n".utf8)).hexString

        let result = try await runDocument(
            """
            schemaVersion: 1.0
            phases:
              - name: build
                steps:
                  - name: IntoFolder
                    action: WebDownload
                    inputs:
                      - source: \(server.url)/files/tool.sh
                        destination: \(dir.path)/bin/
                        checksum: \(good.uppercased())
                        algorithm: SHA256
                      - source: \(server.url)/files/tool.sh
                        destination: \(dir.path)/named.sh
                        checksum: \(md5)
                        algorithm: md5
            """)
        #expect(result.report.status == .success, "\(result.console.text)")
        #expect(try dir.read("bin/tool.sh") == "#!/bin/sh\necho tool\n")
        #expect(result.outputs("IntoFolder")["destination"] == "\(dir.path)/bin/tool.sh\n\(dir.path)/named.sh")

        // The server no longer has the file, so only a skipped download can succeed.
        try FileManager.default.removeItem(atPath: site.file("files/tool.sh"))
        let skipped = try await runDocument(
            """
            schemaVersion: 1.0
            phases:
              - name: build
                steps:
                  - name: Again
                    action: WebDownload
                    inputs:
                      - source: \(server.url)/files/tool.sh
                        destination: \(dir.path)/bin/tool.sh
                        checksum: \(good)
                        algorithm: SHA256
            """)
        #expect(skipped.report.status == .success)
        #expect(skipped.console.text.contains("download skipped"))

        try site.write("files/tool.sh", "tampered\n")
        let mismatch = try await runDocument(
            """
            schemaVersion: 1.0
            phases:
              - name: build
                steps:
                  - name: Tampered
                    action: WebDownload
                    inputs:
                      - source: \(server.url)/files/tool.sh
                        destination: \(dir.path)/fresh.sh
                        checksum: \(good)
                        algorithm: SHA256
                  - name: Missing
                    action: WebDownload
                    onFailure: Continue
                    inputs:
                      - source: \(server.url)/files/nope.sh
                        destination: \(dir.path)/nope.sh
            """)
        let tampered = try #require(mismatch.step("Tampered"))
        #expect(tampered.status == .failed)
        #expect(tampered.failureMessage.contains("checksum mismatch"))
        #expect(tampered.failureMessage.contains(sha256("tampered\n")))
        #expect(!dir.exists("fresh.sh"), "a file that fails its checksum is never written")

        let notFound = try await runDocument(
            """
            schemaVersion: 1.0
            phases:
              - name: build
                steps:
                  - name: Missing
                    action: WebDownload
                    inputs:
                      - source: \(server.url)/files/nope.sh
                        destination: \(dir.path)/nope.sh
                  - name: Kept
                    action: WebDownload
                    inputs:
                      - source: \(server.url)/files/tool.sh
                        destination: \(dir.path)/named.sh
                        overwrite: false
            """)
        #expect(notFound.step("Missing")?.failureMessage.contains("HTTP 404") == true)
        #expect(notFound.step("Missing")?.failureMessage.contains("after 1 attempt") == true, "a 404 is not retried")
        #expect(!dir.exists("nope.sh"))
    }

    @Test(
        "HTTPS: an untrusted certificate is refused unless ignoreCertificateErrors is true",
        .enabled(if: TestEnvironment.requires("openssl")))
    func https() async throws {
        let site = Scratch("kiln-site")
        let dir = Scratch()
        defer {
            site.remove()
            dir.remove()
        }
        try site.write("secure.txt", "over tls\n")
        #expect(
            try shell(
                "cd \(site.path) && openssl req -x509 -newkey rsa:2048 -nodes -keyout key.pem -out cert.pem -days 1 -subj /CN=127.0.0.1 2>&1"
            ).status == 0)
        let serve =
            "import http.server,ssl,sys; s=http.server.HTTPServer(('127.0.0.1',int(sys.argv[1])),http.server.SimpleHTTPRequestHandler); c=ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); c.load_cert_chain('cert.pem','key.pem'); s.socket=c.wrap_socket(s.socket,server_side=True); s.serve_forever()"
        let server = try LoopbackServer(executable: "python3", arguments: { ["-c", serve, String($0)] }, directory: site.path)
        defer { server.stop() }
        let result = try await runDocument(
            """
            schemaVersion: 1.0
            phases:
              - name: build
                steps:
                  - name: Strict
                    action: WebDownload
                    onFailure: Continue
                    inputs:
                      - source: https://127.0.0.1:\(server.port)/secure.txt
                        destination: \(dir.path)/strict.txt
                  - name: Lenient
                    action: WebDownload
                    inputs:
                      - source: https://127.0.0.1:\(server.port)/secure.txt
                        destination: \(dir.path)/lenient.txt
                        ignoreCertificateErrors: true
            """)
        #expect(result.step("Strict")?.status == .failed)
        #expect(!dir.exists("strict.txt"))
        #expect(result.step("Lenient")?.status == .success, "\(result.console.text)")
        #expect(try dir.read("lenient.txt") == "over tls\n")
    }

    @Test("Connection failures are retried up to five times, then reported")
    func retriesConnectionFailures() async throws {
        let dir = Scratch()
        defer { dir.remove() }
        let port = freeLoopbackPort()
        let result = try await runDocument(
            """
            schemaVersion: 1.0
            phases:
              - name: build
                steps:
                  - name: Refused
                    action: WebDownload
                    inputs:
                      - source: http://127.0.0.1:\(port)/file
                        destination: \(dir.path)/file
            """)
        let step = try #require(result.step("Refused"))
        #expect(step.status == .failed)
        #expect(step.failureMessage.contains("failed after 5 attempts"))
        #expect(result.console.all.filter { $0.contains("retrying in") }.count == 4)
    }
}

@Suite("S3Download and S3Upload against moto_server", .serialized, .enabled(if: TestEnvironment.requires("moto_server", "aws")))
struct S3ActionTests {
    static let credentials = ["AWS_ACCESS_KEY_ID": "kilntest", "AWS_SECRET_ACCESS_KEY": "kilnsecret", "AWS_DEFAULT_REGION": "us-east-1"]

    @Test("Upload a file, a wildcard and a folder; download an object and a prefix; verified with the AWS CLI")
    func roundTrip() async throws {
        let server = try LoopbackServer(executable: "moto_server", arguments: { ["-H", "127.0.0.1", "-p", String($0)] })
        defer { server.stop() }
        let dir = Scratch()
        defer { dir.remove() }
        var environment = Self.credentials
        environment["AWS_ENDPOINT_URL"] = server.url
        let aws = "aws --endpoint-url \(server.url)"
        #expect(try shell("\(aws) s3 mb s3://kiln-bucket", environment: environment).status == 0)
        try dir.write("reports/a.json", "{\"a\":1}")
        try dir.write("reports/b.json", "{\"b\":2}")
        try dir.write("reports/skip.txt", "no")
        try dir.write("tree/x/deep.txt", "deep")
        try dir.write("single.txt", "single file with spaces & symbols")
        try FileManager.default.createDirectory(atPath: dir.file("down/prefix"), withIntermediateDirectories: true)

        var options = TOEOptions.forTests
        options.environment = environment
        let result = try await runDocument(
            """
            schemaVersion: 1.0
            phases:
              - name: build
                steps:
                  - name: Upload
                    action: S3Upload
                    inputs:
                      - source: \(dir.file("single.txt"))
                        destination: s3://kiln-bucket/path/to/single copy.txt
                      - source: \(dir.file("reports"))/*.json
                        destination: s3://kiln-bucket/reports/
                      - source: \(dir.file("tree"))
                        destination: s3://kiln-bucket/trees/
                        recurse: true
                  - name: Download
                    action: S3Download
                    inputs:
                      - source: s3://kiln-bucket/path/to/single copy.txt
                        destination: \(dir.file("down"))/
                      - source: s3://kiln-bucket/reports/*
                        destination: \(dir.file("down/prefix"))
                  - name: NoOverwrite
                    action: S3Download
                    onFailure: Continue
                    inputs:
                      - source: s3://kiln-bucket/reports/a.json
                        destination: \(dir.file("down/prefix/a.json"))
                        overwrite: false
                  - name: MissingObject
                    action: S3Download
                    onFailure: Continue
                    inputs:
                      - source: s3://kiln-bucket/none
                        destination: \(dir.file("down/none"))
            """, options: options)
        #expect(result.step("Upload")?.status == .success, "\(result.console.text)")
        #expect(result.step("Download")?.status == .success, "\(result.console.text)")
        let listing = try shell("\(aws) s3 ls --recursive s3://kiln-bucket/", environment: environment).output
        #expect(listing.contains("path/to/single copy.txt"))
        #expect(listing.contains("reports/a.json") && listing.contains("reports/b.json"))
        #expect(!listing.contains("skip.txt"))
        #expect(listing.contains("trees/tree/x/deep.txt"))
        #expect(try dir.read("down/single copy.txt") == "single file with spaces & symbols")
        #expect(try dir.read("down/prefix/b.json") == "{\"b\":2}")
        #expect(result.step("NoOverwrite")?.failureMessage.contains("overwrite is false") == true)
        #expect(result.step("MissingObject")?.failureMessage.contains("404") == true)
        #expect(!dir.exists("down/none"))
    }

    @Test("Wrong credentials are refused by the server's SigV4 check")
    func wrongSignature() async throws {
        // moto checks signatures only when asked to: run it with auth enabled.
        let server = try LoopbackServer(
            executable: "moto_server", arguments: { ["-H", "127.0.0.1", "-p", String($0)] },
            environment: ["INITIAL_NO_AUTH_ACTION_COUNT": "0"])
        defer { server.stop() }
        let dir = Scratch()
        defer { dir.remove() }
        try dir.write("f.txt", "x")
        var options = TOEOptions.forTests
        options.environment = ["AWS_ACCESS_KEY_ID": "wrong", "AWS_SECRET_ACCESS_KEY": "wrong", "AWS_ENDPOINT_URL": server.url]
        let result = try await runDocument(
            """
            schemaVersion: 1.0
            phases:
              - name: build
                steps:
                  - name: Upload
                    action: S3Upload
                    inputs:
                      - source: \(dir.file("f.txt"))
                        destination: s3://kiln-bucket/f.txt
            """, options: options)
        #expect(result.step("Upload")?.status == .failed)
        #expect(result.step("Upload")?.failureMessage.contains("S3 PUT s3://kiln-bucket/f.txt failed: HTTP 403") == true)
    }
}

@Suite("SigV4 signing")
struct SigV4Tests {
    /// AWS's documented example: GET /test.txt with a Range header (S3 "Example: GET Object").
    @Test("Matches AWS's published S3 GET example signature")
    func awsExample() throws {
        let signer = SigV4Signer(
            credentials: .init(accessKeyID: "AKIAIOSFODNN7EXAMPLE", secretAccessKey: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
            region: "us-east-1", service: "s3"
        )
        let date = Date(timeIntervalSince1970: 1_369_353_600) // 20130524T000000Z
        let headers = signer.sign(
            method: "GET", url: URL(string: "https://examplebucket.s3.amazonaws.com/test.txt")!,
            headers: ["Range": "bytes=0-9"], payloadHash: S3Client.emptyHash, date: date
        )
        #expect(
            headers["authorization"]
                == "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        )
    }
}
