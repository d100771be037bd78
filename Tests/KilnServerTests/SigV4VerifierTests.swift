import Foundation
import KilnTestSupport
import Testing

@testable import KilnServer

/// Requests signed by the real botocore, as the AWS CLI sends them: an Image Builder client whose
/// endpoint is a loopback Python server that records each request as it arrived (request target,
/// headers, body), presigned URLs fetched the same way, and a few hand-made `AWSRequest`s signed by
/// `SigV4Auth` for the cases the service model never produces.
enum BotocoreSigV4 {
    static let accessKeyId = "AKIDKILNSIGV4TEST01"
    static let secret = "kiln/SigV4+Secret/Key0123456789abcdefEXAMPLE"
    static let region = "us-west-2"
    static let presignLifetime = 900

    /// Runs wherever python3 can import botocore, and always in CI, where a missing one fails.
    static let available: Bool = {
        if TestEnvironment.isCI { return true }
        guard let python = TestEnvironment.executable("python3") else { return false }
        return (try? shell("\(python) -c 'import botocore'").status) == 0
    }()

    static let script = #"""
        import base64, http.client, http.server, json, os, sys, threading
        os.environ.update({'AWS_CONFIG_FILE': '/dev/null', 'AWS_SHARED_CREDENTIALS_FILE': '/dev/null'})
        for name in ('AWS_PROFILE', 'AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY', 'AWS_SESSION_TOKEN'):
            os.environ.pop(name, None)
        import botocore.auth, botocore.awsrequest, botocore.config, botocore.credentials, botocore.httpsession, botocore.session
        output, key, secret, region, expires = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])

        seen = []
        class Recorder(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass
            def answer(self):
                body = self.rfile.read(int(self.headers.get('Content-Length') or 0))
                seen.append({'method': self.command, 'target': self.path, 'headers': [[k, v] for k, v in self.headers.items()],
                             'body': base64.b64encode(body).decode()})
                reply = b'{}'
                self.send_response(200)
                self.send_header('Content-Type', 'application/json')
                self.send_header('Content-Length', str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)
            do_GET = do_PUT = do_POST = do_DELETE = answer
        server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Recorder)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        port = server.server_address[1]
        endpoint = f'http://127.0.0.1:{port}'

        session = botocore.session.get_session()
        session.set_credentials(key, secret)
        client = session.create_client('imagebuilder', region_name=region, endpoint_url=endpoint,
                                       config=botocore.config.Config(retries={'max_attempts': 1}))
        arn = f'arn:aws:imagebuilder:{region}:000000000000:component/x/1.0.0/1'
        captured = {}
        def record(name, send):
            before = len(seen)
            send()
            if len(seen) != before + 1:
                sys.exit(f'{name}: the recorder saw {len(seen) - before} requests, not 1')
            captured[name] = seen[-1]

        def fetch(url):
            botocore.httpsession.URLLib3Session().send(botocore.awsrequest.AWSRequest(method='GET', url=url).prepare())

        def signed_by_hand(method, target, headers, body=b''):
            # SigV4Auth on an AWSRequest, then sent by http.client with exactly the headers botocore
            # signed (AWSRequest.prepare() would fold repeated headers into one).
            request = botocore.awsrequest.AWSRequest(method=method, url=endpoint + target, data=body)
            for name, value in headers:
                request.headers[name] = value
            botocore.auth.SigV4Auth(botocore.credentials.Credentials(key, secret), 'imagebuilder', region).add_auth(request)
            connection = http.client.HTTPConnection('127.0.0.1', port)
            connection.putrequest(method, target, skip_accept_encoding=True)
            for name, value in request.headers.items():
                connection.putheader(name, value)
            if body:
                connection.putheader('Content-Length', str(len(body)))
            connection.endheaders(body or None)
            connection.getresponse().read()
            connection.close()

        record('create-component', lambda: client.create_component(
            name='x', semanticVersion='1.0.0', platform='Linux', clientToken='token-1',
            data='name: x\nschemaVersion: 1.0\nphases: []\n', description='a "quoted" désc'))
        record('get-component', lambda: client.get_component(componentBuildVersionArn=arn))
        record('tag-resource', lambda: client.tag_resource(resourceArn=arn, tags={'team': 'kiln', 'cost centre': 'a/b'}))
        record('list-tags', lambda: client.list_tags_for_resource(resourceArn=arn))
        record('presigned-get-component', lambda: fetch(client.generate_presigned_url(
            'get_component', Params={'componentBuildVersionArn': arn}, ExpiresIn=expires)))
        record('presigned-list-tags', lambda: fetch(client.generate_presigned_url(
            'list_tags_for_resource', Params={'resourceArn': arn}, ExpiresIn=expires)))
        record('repeated-headers', lambda: signed_by_hand('POST', '/CreateImage', [
            ('Content-Type', 'application/json'), ('X-Kiln-Trace', '  a   b  '), ('X-Kiln-Trace', 'c\t d')], b'{"a": 1}'))
        record('date-header', lambda: signed_by_hand('GET', '/ListComponents', [('Date', 'set by the signer')]))
        record('unsigned-payload', lambda: signed_by_hand('PUT', '/CreateComponent', [
            ('X-Amz-Content-SHA256', 'UNSIGNED-PAYLOAD')], b'{"name": "x"}'))
        record('declared-payload-hash', lambda: signed_by_hand('PUT', '/CreateComponent', [
            ('X-Amz-Content-SHA256', botocore.auth.sha256(b'{"name": "x"}').hexdigest())], b'{"name": "x"}'))
        record('raw-query', lambda: signed_by_hand('GET', '/GetImage?name=a%2Fb%20c&empty=&flag&name=0~', []))
        record('dot-segments', lambda: signed_by_hand('GET', '/a/./b/../tags//x', []))
        with open(output, 'w') as file:
            json.dump(captured, file)
        """#

    struct Recorded: Decodable {
        var method: String
        var target: String
        var headers: [[String]]
        var body: String
    }

    struct SignerError: Error, CustomStringConvertible {
        var description: String
    }

    /// Every request botocore signed, by case name; botocore runs once for the whole suite.
    static let recorded: Result<[String: SigV4Request], SignerError> = {
        guard let python = TestEnvironment.executable("python3") else {
            return .failure(SignerError(description: "python3 is not installed; run scripts/setup"))
        }
        let scratch = Scratch("kiln-sigv4")
        defer { scratch.remove() }
        let output = scratch.file("requests.json")
        let process = Process()
        process.executableURL = URL(fileURLWithPath: python)
        process.arguments = ["-c", script, output, accessKeyId, secret, region, String(presignLifetime)]
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        do { try process.run() } catch { return .failure(SignerError(description: "cannot run python3: \(error)")) }
        let printed = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        guard process.terminationStatus == 0, let data = FileManager.default.contents(atPath: output) else {
            return .failure(
                SignerError(description: "botocore did not sign the requests (is it installed? run scripts/setup):\n\(printed)"))
        }
        do {
            let decoded = try JSONDecoder().decode([String: Recorded].self, from: data)
            return .success(
                decoded.mapValues { recorded in
                    SigV4Request(
                        method: recorded.method, target: recorded.target,
                        headers: recorded.headers.map { (name: $0[0], value: $0[1]) },
                        body: Array(Data(base64Encoded: recorded.body) ?? Data()))
                })
        } catch {
            return .failure(SignerError(description: "cannot read botocore's requests: \(error)"))
        }
    }()

    static let caseNames = [
        "create-component", "get-component", "tag-resource", "list-tags", "presigned-get-component", "presigned-list-tags",
        "repeated-headers", "date-header", "unsigned-payload", "declared-payload-hash", "raw-query", "dot-segments",
    ]

    static func request(_ name: String) throws -> SigV4Request {
        let all = try recorded.get()
        guard let request = all[name] else { throw SignerError(description: "botocore recorded no request named \(name)") }
        return request
    }

    /// When botocore signed `request`: its X-Amz-Date header or query parameter, or its Date header.
    static func signingTime(_ request: SigV4Request) throws -> SigV4Timestamp {
        let query = QueryParameter.parse(request.rawQuery)
        if let stamp = request.headers.first(where: { $0.name.lowercased() == "x-amz-date" })?.value
            ?? query.first(where: { $0.name == "X-Amz-Date" })?.value,
            let time = SigV4Timestamp(basic: stamp)
        {
            return time
        }
        guard let date = request.headers.first(where: { $0.name.lowercased() == "date" }), let time = SigV4Timestamp(httpDate: date.value)
        else { throw SignerError(description: "no signing time in \(request.headers)") }
        return time
    }
}

/// A way to spoil a signed request, and the refusal it must meet.
enum SigV4Tampering: String, CaseIterable, Sendable {
    case changedBody, changedPath, changedQuery, changedSignedHeader, changedPresignedQuery, removedPresignedParameter
    case wrongSecret, unknownKey, sixteenMinutesLate, sixteenMinutesEarly, presignedURLExpired, presignedURLFromTheFuture
    case missingAuthorization

    var baseCase: String {
        switch self {
        case .changedBody, .changedSignedHeader: "create-component"
        case .changedPath, .wrongSecret, .unknownKey, .missingAuthorization: "tag-resource"
        case .changedQuery, .sixteenMinutesLate, .sixteenMinutesEarly: "get-component"
        case .changedPresignedQuery, .removedPresignedParameter, .presignedURLExpired, .presignedURLFromTheFuture: "presigned-get-component"
        }
    }

    var expectedCode: String {
        switch self {
        case .unknownKey: "UnrecognizedClientException"
        case .missingAuthorization: "MissingAuthenticationTokenException"
        case .removedPresignedParameter: "IncompleteSignatureException"
        default: "InvalidSignatureException"
        }
    }

    func apply(to request: inout SigV4Request) {
        switch self {
        case .changedBody:
            request.body = Array(String(decoding: request.body, as: UTF8.self).replacingOccurrences(of: "1.0.0", with: "1.0.1").utf8)
        case .changedPath: request.rawPath = request.rawPath.replacingOccurrences(of: "component%2Fx", with: "component%2Fy")
        case .changedQuery, .changedPresignedQuery:
            request.rawQuery = request.rawQuery.replacingOccurrences(of: "component%2Fx", with: "component%2Fy")
        case .changedSignedHeader:
            request.headers = request.headers.map { $0.name.lowercased() == "content-type" ? (name: $0.name, value: "text/plain") : $0 }
        case .removedPresignedParameter:
            request.rawQuery = request.rawQuery.split(separator: "&").filter { !$0.hasPrefix("X-Amz-SignedHeaders=") }.joined(
                separator: "&")
        case .missingAuthorization: request.headers.removeAll { $0.name.lowercased() == "authorization" }
        default: break
        }
    }

    func now(signedAt: Date) -> Date {
        switch self {
        case .sixteenMinutesLate: signedAt + 16 * 60
        case .sixteenMinutesEarly, .presignedURLFromTheFuture: signedAt - 16 * 60
        case .presignedURLExpired: signedAt + Double(BotocoreSigV4.presignLifetime) + 1
        default: signedAt + 1
        }
    }
}

@Suite("SigV4 requests signed by botocore", .enabled(if: BotocoreSigV4.available))
struct SigV4BotocoreTests {
    let verifier = SigV4Verifier(secrets: [BotocoreSigV4.accessKeyId: BotocoreSigV4.secret, "AKIDSOMEONEELSE": "another-secret"])

    @Test("botocore's requests verify, at the real time, and name the key that signed them", arguments: BotocoreSigV4.caseNames)
    func botocoreRequestVerifies(name: String) throws {
        let request = try BotocoreSigV4.request(name)
        #expect(try verifier.verify(request) == BotocoreSigV4.accessKeyId)
        // The same request twice: the second uses the cached signing key.
        #expect(try verifier.verify(request) == BotocoreSigV4.accessKeyId)
    }

    @Test("what the CLI sends: the ARN label percent-encoded once on the wire, signed encoded twice")
    func resourceArnIsEncodedOnTheWireAndAgainInTheSignature() throws {
        let tagging = try BotocoreSigV4.request("tag-resource")
        #expect(tagging.method == "POST")
        #expect(tagging.rawPath == "/tags/arn%3Aaws%3Aimagebuilder%3Aus-west-2%3A000000000000%3Acomponent%2Fx%2F1.0.0%2F1")
        #expect(
            SigV4Verifier.canonicalURI(tagging.rawPath)
                == "/tags/arn%253Aaws%253Aimagebuilder%253Aus-west-2%253A000000000000%253Acomponent%252Fx%252F1.0.0%252F1")
        let presigned = try BotocoreSigV4.request("presigned-get-component")
        #expect(presigned.rawQuery.contains("X-Amz-SignedHeaders=host&"))
        #expect(presigned.headers.allSatisfy { $0.name.lowercased() != "authorization" })
        let dotted = try BotocoreSigV4.request("dot-segments")
        #expect(dotted.rawPath == "/a/./b/../tags//x")
        #expect(SigV4Verifier.canonicalURI(dotted.rawPath) == "/a/tags/x")
    }

    @Test("a spoiled request is refused with AWS's code, 403, and no secret in the message", arguments: SigV4Tampering.allCases)
    func spoiledRequestIsRefused(tampering: SigV4Tampering) throws {
        var request = try BotocoreSigV4.request(tampering.baseCase)
        let signedAt = try BotocoreSigV4.signingTime(request)
        tampering.apply(to: &request)
        let verifier =
            switch tampering {
            case .wrongSecret: SigV4Verifier(secrets: [BotocoreSigV4.accessKeyId: "not-the-secret"])
            case .unknownKey: SigV4Verifier(secrets: ["AKIDSOMEONEELSE": BotocoreSigV4.secret])
            default: self.verifier
            }
        let now = tampering.now(signedAt: signedAt.date)
        let failure = #expect(throws: SigV4Failure.self) { try verifier.verify(request, now: now) }
        #expect(failure?.code == tampering.expectedCode)
        #expect(failure?.status == 403)
        #expect(failure?.message.contains(BotocoreSigV4.secret) == false)
        #expect(failure?.message.contains("not-the-secret") == false)
        #expect(verifier.cachedSigningKeyCount == 0, "a refused request leaves no signing key in the cache")
        let stamp = signedAt.stamp
        switch tampering {
        case .wrongSecret, .changedBody, .changedPath, .changedQuery, .changedSignedHeader, .changedPresignedQuery:
            #expect(failure == .signatureMismatch)
        case .unknownKey: #expect(failure == .unrecognizedClient)
        case .missingAuthorization: #expect(failure == .missingAuthenticationToken)
        case .sixteenMinutesLate:
            #expect(
                failure?.message
                    == "Signature expired: \(stamp) is now earlier than \(SigV4Verifier.stamp(now - 900)) (\(SigV4Verifier.stamp(now)) - 15 min.)"
            )
        case .presignedURLExpired:
            #expect(
                failure?.message
                    == "Signature expired: \(stamp) is now earlier than \(SigV4Verifier.stamp(now - 900)) (\(SigV4Verifier.stamp(now)) - 15 min.)"
            )
        case .sixteenMinutesEarly, .presignedURLFromTheFuture:
            #expect(
                failure?.message
                    == "Signature not yet current: \(stamp) is still later than \(SigV4Verifier.stamp(now + 900)) (\(SigV4Verifier.stamp(now)) + 15 min.)"
            )
        case .removedPresignedParameter: #expect(failure?.message.contains("Missing: X-Amz-SignedHeaders.") == true)
        }
    }

    @Test("a declared payload hash that is not the body's is refused with 400")
    func declaredPayloadHashMustMatchTheBody() throws {
        var request = try BotocoreSigV4.request("declared-payload-hash")
        request.body = Array(#"{"name": "y"}"#.utf8)
        let failure = #expect(throws: SigV4Failure.self) { try verifier.verify(request) }
        #expect(failure?.code == "XAmzContentSHA256Mismatch")
        #expect(failure?.status == 400)
    }

    @Test("UNSIGNED-PAYLOAD leaves the body out of the signature, as the signer asked")
    func unsignedPayloadAcceptsAnyBody() throws {
        var request = try BotocoreSigV4.request("unsigned-payload")
        request.body = Array("something else".utf8)
        #expect(try verifier.verify(request) == BotocoreSigV4.accessKeyId)
    }
}

/// The published AWS SigV4 test suite's "get-vanilla" request.
enum SigV4GetVanilla {
    static let secret = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
    static let signedAt = Date(timeIntervalSince1970: 1_440_938_160) // 20150830T123600Z
    static let authorization =
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
    static let verifier = SigV4Verifier(secrets: ["AKIDEXAMPLE": secret], service: "service")

    static func request(authorization: String? = authorization, extraHeaders: [(name: String, value: String)] = []) -> SigV4Request {
        var headers: [(name: String, value: String)] = [("Host", "example.amazonaws.com"), ("X-Amz-Date", "20150830T123600Z")]
        if let authorization { headers.append(("Authorization", authorization)) }
        return SigV4Request(method: "GET", rawPath: "/", headers: headers + extraHeaders)
    }
}

@Suite("SigV4 verifier")
struct SigV4VerifierTests {
    @Test("the AWS test suite's get-vanilla verifies")
    func getVanillaVerifies() throws {
        #expect(try SigV4GetVanilla.verifier.verify(SigV4GetVanilla.request(), now: SigV4GetVanilla.signedAt) == "AKIDEXAMPLE")
        #expect(SigV4GetVanilla.verifier.cachedSigningKeyCount == 1)
        // Exactly 15 minutes either side is still inside the window.
        #expect(try SigV4GetVanilla.verifier.verify(SigV4GetVanilla.request(), now: SigV4GetVanilla.signedAt + 900) == "AKIDEXAMPLE")
        #expect(try SigV4GetVanilla.verifier.verify(SigV4GetVanilla.request(), now: SigV4GetVanilla.signedAt - 900) == "AKIDEXAMPLE")
    }

    @Test("the clock-skew messages are AWS's, word for word")
    func skewMessages() {
        let late = #expect(throws: SigV4Failure.self) {
            try SigV4GetVanilla.verifier.verify(SigV4GetVanilla.request(), now: SigV4GetVanilla.signedAt + 960)
        }
        #expect(
            late
                == .invalidSignature(
                    "Signature expired: 20150830T123600Z is now earlier than 20150830T123700Z (20150830T125200Z - 15 min.)"))
        let early = #expect(throws: SigV4Failure.self) {
            try SigV4GetVanilla.verifier.verify(SigV4GetVanilla.request(), now: SigV4GetVanilla.signedAt - 960)
        }
        #expect(
            early
                == .invalidSignature(
                    "Signature not yet current: 20150830T123600Z is still later than 20150830T123500Z (20150830T122000Z + 15 min.)"))
    }

    @Test("a credential scoped to another service names the one expected")
    func wrongServiceIsRefused() {
        let verifier = SigV4Verifier(secrets: ["AKIDEXAMPLE": SigV4GetVanilla.secret])
        let failure = #expect(throws: SigV4Failure.self) { try verifier.verify(SigV4GetVanilla.request(), now: SigV4GetVanilla.signedAt) }
        #expect(failure == .invalidSignature("Credential should be scoped to correct service: 'imagebuilder'. "))
        #expect(failure?.status == 403)
    }

    struct MalformedCase: Sendable, CustomTestStringConvertible {
        var label: String
        var authorization: String
        var code: String
        var message: String
        var testDescription: String { label }
    }

    static let scope = "Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request"
    static let signature = "Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"

    static let malformed: [MalformedCase] = [
        MalformedCase(
            label: "no Signature nor SignedHeaders", authorization: "AWS4-HMAC-SHA256 \(scope)", code: "IncompleteSignatureException",
            message:
                "Authorization header requires 'Signature' parameter. Authorization header requires 'SignedHeaders' parameter. Authorization=AWS4-HMAC-SHA256 \(scope)"
        ),
        MalformedCase(
            label: "a part without '='", authorization: "AWS4-HMAC-SHA256 \(scope), SignedHeaders, \(signature)",
            code: "IncompleteSignatureException",
            message:
                "'SignedHeaders' not a valid key=value pair (missing equal-sign) in Authorization header: 'AWS4-HMAC-SHA256 \(scope), SignedHeaders, \(signature)'."
        ),
        MalformedCase(
            label: "Host not signed", authorization: "AWS4-HMAC-SHA256 \(scope), SignedHeaders=x-amz-date, \(signature)",
            code: "IncompleteSignatureException", message: "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization."),
        MalformedCase(
            label: "a bearer token", authorization: "Bearer eyJhbGciOiJIUzI1NiJ9.c2VjcmV0.c2ln", code: "IncompleteSignatureException",
            message:
                "The Authorization header uses 'Bearer'; sign requests with AWS Signature Version 4 (AWS4-HMAC-SHA256), as the AWS CLI and SDKs do."
        ),
        MalformedCase(
            label: "a bare token", authorization: "c2VjcmV0LXRva2Vu", code: "IncompleteSignatureException",
            message:
                "The Authorization header is not SigV4; sign requests with AWS Signature Version 4 (AWS4-HMAC-SHA256), as the AWS CLI and SDKs do."
        ),
        MalformedCase(
            label: "a short credential",
            authorization:
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/service/aws4_request, SignedHeaders=host;x-amz-date, \(signature)",
            code: "IncompleteSignatureException",
            message:
                "Credential 'AKIDEXAMPLE/20150830/service/aws4_request' is not of the form <access key id>/<YYYYMMDD>/<region>/<service>/aws4_request."
        ),
        MalformedCase(
            label: "a wrong terminator",
            authorization:
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws5_request, SignedHeaders=host;x-amz-date, \(signature)",
            code: "InvalidSignatureException",
            message: "Credential should be scoped with a valid terminator: 'aws4_request', not 'aws5_request'. "),
        MalformedCase(
            label: "a scope date not the request's",
            authorization:
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150831/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, \(signature)",
            code: "InvalidSignatureException",
            message:
                "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: '20150831' != '20150830', from '20150830T123600Z'."
        ),
        MalformedCase(
            label: "a region that is no region",
            authorization:
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/US EAST/service/aws4_request, SignedHeaders=host;x-amz-date, \(signature)",
            code: "InvalidSignatureException", message: "Credential should be scoped to a valid region, not 'US EAST'. "),
        MalformedCase(
            label: "a signed header the request lacks",
            authorization: "AWS4-HMAC-SHA256 \(scope), SignedHeaders=host;x-amz-date;x-kiln-missing, \(signature)",
            code: "InvalidSignatureException", message: "SignedHeaders names 'x-kiln-missing', but the request has no such header."),
    ]

    @Test("a malformed Authorization header is refused with 403 and says what is wrong", arguments: malformed)
    func malformedAuthorizationIsRefused(row: MalformedCase) {
        let failure = #expect(throws: SigV4Failure.self) {
            try SigV4GetVanilla.verifier.verify(SigV4GetVanilla.request(authorization: row.authorization), now: SigV4GetVanilla.signedAt)
        }
        #expect(failure?.code == row.code)
        #expect(failure?.message == row.message)
        #expect(failure?.status == 403)
    }

    @Test("no Authorization header and no presigned query: Missing Authentication Token")
    func missingAuthentication() {
        let failure = #expect(throws: SigV4Failure.self) {
            try SigV4GetVanilla.verifier.verify(SigV4GetVanilla.request(authorization: nil), now: SigV4GetVanilla.signedAt)
        }
        #expect(failure == SigV4Failure(code: "MissingAuthenticationTokenException", message: "Missing Authentication Token", status: 403))
    }

    @Test("a Date header with no X-Amz-Date is read as HTTP dates are written")
    func httpDates() {
        #expect(SigV4Timestamp(httpDate: "Sun, 30 Aug 2015 12:36:00 GMT")?.stamp == "20150830T123600Z")
        #expect(SigV4Timestamp(httpDate: "Sun, 30 Aug 2015 12:36:00 -0000")?.date == SigV4GetVanilla.signedAt)
        #expect(SigV4Timestamp(basic: "20150830T123600Z")?.date == SigV4GetVanilla.signedAt)
        #expect(SigV4Timestamp(basic: "2015-08-30T12:36:00Z") == nil)
        #expect(SigV4Timestamp(httpDate: "Sunday, 30-Aug-15 12:36:00 GMT") == nil)
    }

    @Test(
        "canonical URIs as botocore builds them for services other than S3",
        arguments: [
            ("", "/"), ("/", "/"), ("/tags/arn%3Aaws%3Aimagebuilder", "/tags/arn%253Aaws%253Aimagebuilder"),
            ("/a/./b/../c//d/", "/a/c/d/"), ("/..", "/"), ("/~user/a b+c", "/~user/a%20b%2Bc"), ("/%2F", "/%252F"),
        ])
    func canonicalURI(raw: String, canonical: String) {
        #expect(SigV4Verifier.canonicalURI(raw) == canonical)
    }

    @Test(
        "canonical query strings: decoded, encoded again, sorted by name then value",
        arguments: [
            ("b=2&a=1&a=0", "a=0&a=1&b=2"), ("x=a+b", "x=a%2Bb"), ("k=%3a%2F", "k=%3A%2F"), ("flag&&e=", "e=&flag="),
            ("n=%zz", "n=%25zz"), ("t=%7E%41", "t=~A"), ("X-Amz-Signature=abc&a=1", "a=1"),
        ])
    func canonicalQuery(raw: String, canonical: String) {
        #expect(SigV4Verifier.canonicalQueryString(QueryParameter.parse(raw), excludingSignature: true) == canonical)
    }

    @Test("a payload hash header must be the body's digest or UNSIGNED-PAYLOAD")
    func payloadHashHeader() {
        let failure = #expect(throws: SigV4Failure.self) {
            try SigV4GetVanilla.verifier.verify(
                SigV4GetVanilla.request(extraHeaders: [("X-Amz-Content-SHA256", String(repeating: "a", count: 64))]),
                now: SigV4GetVanilla.signedAt)
        }
        #expect(failure?.code == "XAmzContentSHA256Mismatch")
        #expect(failure?.status == 400)
    }

    @Test("only requests that verified leave a signing key in the cache")
    func failedRequestsDoNotFillTheCache() {
        let verifier = SigV4Verifier(secrets: ["AKIDEXAMPLE": SigV4GetVanilla.secret], service: "service")
        for region in ["eu-west-1", "ap-south-2", "us-gov-west-1"] {
            let forged = SigV4GetVanilla.authorization.replacingOccurrences(of: "us-east-1", with: region)
            #expect(throws: SigV4Failure.signatureMismatch) {
                try verifier.verify(SigV4GetVanilla.request(authorization: forged), now: SigV4GetVanilla.signedAt)
            }
        }
        #expect(verifier.cachedSigningKeyCount == 0)
    }
}
