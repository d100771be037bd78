import Foundation
import KilnTestSupport
import Testing

@testable import KilnServer

// The API model, routing, request decoding and validation, checked against the bytes a real
// botocore client sends and reads. botocore comes with the AWS CLI (scripts/setup); in CI its
// absence fails these tests.

/// python3 with botocore: a real client whose `before-send` hook records the request and
/// answers it, so nothing goes over the network.
enum Botocore {
    static let available: Bool = (try? shell("python3 -c 'import botocore'", includeStandardError: false).status) == 0
    static var enabled: Bool { TestEnvironment.isCI || available }

    /// Runs `script` with a JSON file holding `input` as argv[1] and returns the JSON the script
    /// writes to the file named by argv[2].
    static func run(_ script: String, input: JSONValue) throws -> JSONValue {
        let scratch = Scratch("kiln-botocore")
        defer { scratch.remove() }
        let program = try scratch.write("script.py", preamble + script)
        let inputFile = try scratch.write("input.json", input.description)
        let result = try shell("python3 \(program) \(inputFile) \(scratch.file("output.json"))")
        guard result.status == 0, scratch.exists("output.json") else {
            throw FixtureError("python3 with botocore failed (\(result.status)); is botocore installed (scripts/setup)?\n\(result.output)")
        }
        return try JSONValue(parsing: Array(scratch.read("output.json").utf8))
    }

    static let preamble = #"""
        import json, os, sys, urllib.parse
        os.environ["AWS_ACCESS_KEY_ID"] = "AKIDEXAMPLE"
        os.environ["AWS_SECRET_ACCESS_KEY"] = "secret"
        os.environ.pop("AWS_PROFILE", None)
        import botocore.session
        from botocore.awsrequest import AWSResponse
        from botocore.config import Config
        from botocore.exceptions import ClientError

        class Body:
            def __init__(self, data): self.data = data
            def stream(self, **kwargs): yield self.data

        def client(answer):
            c = botocore.session.get_session().create_client(
                "imagebuilder", region_name="us-west-2", endpoint_url="http://127.0.0.1:1",
                config=Config(retries={"total_max_attempts": 1}))
            c.meta.events.register("before-send", answer)
            return c

        arguments = json.load(open(sys.argv[1]))
        def finish(result): json.dump(result, open(sys.argv[2], "w"))

        """#

    /// What botocore sends for each `[method_name, params]` call.
    static func requests(_ calls: [(String, JSONValue)]) throws -> [CapturedRequest] {
        let script = #"""
            sent = []
            def answer(request, **kwargs):
                url = urllib.parse.urlsplit(request.url)
                body = request.body or b""
                sent.append({"method": request.method, "path": url.path, "query": url.query,
                             "headers": {k: (v.decode() if isinstance(v, bytes) else v) for k, v in request.headers.items()},
                             "body": body.decode() if isinstance(body, bytes) else body})
                return AWSResponse(request.url, 200, {}, Body(b"{}"))
            c = client(answer)
            for name, params in arguments:
                getattr(c, name)(**params)
            finish(sent)
            """#
        let output = try run(script, input: .array(calls.map { [.string($0.0), $0.1] }))
        return (output.array ?? []).map { sent in
            CapturedRequest(
                method: sent["method"]?.string ?? "", path: sent["path"]?.string ?? "", query: sent["query"]?.string ?? "",
                headers: (sent["headers"]?.object ?? [:]).compactMapValues(\.string), body: Array((sent["body"]?.string ?? "").utf8))
        }
    }
}

struct CapturedRequest {
    var method: String
    var path: String
    var query: String
    var headers: [String: String]
    var body: [UInt8]
}

let componentBuildARN = "arn:aws:imagebuilder:us-west-2:123456789012:component/my-comp/1.0.0/1"

@Suite struct APIModelTests {
    let model = APIModel.imagebuilder
    let decoder = APIRequestDecoder()

    // MARK: Model

    @Test func allOperationsAndShapesLoad() throws {
        #expect(model.operations.count == 77)
        #expect(model.shapes.count == 479)
        #expect(model.metadata["protocol"] == "rest-json")
        for operation in model.operations.values {
            #expect(model.inputShape(of: operation)?.kind == .structure, "\(operation.name) input")
            #expect(model.outputShape(of: operation)?.kind == .structure, "\(operation.name) output")
            #expect(operation.successCode == 200)
            #expect(operation.errors.allSatisfy { model.shapes[$0]?.isException == true }, "\(operation.name) errors")
        }
        let create = try #require(model.operations["CreateComponent"])
        #expect(create.method == "PUT" && create.requestURI == "/CreateComponent")
        #expect(create.lists("InvalidVersionNumberException"))
        let tag = try #require(model.operations["TagResource"])
        #expect(tag.pathTemplate == [.literal("tags"), .label("resourceArn", greedy: false)])
        let request = try #require(model.shapes["UntagResourceRequest"])
        #expect(request.members["resourceArn"]?.location == .uri)
        #expect(request.members["tagKeys"]?.location == .querystring)
        #expect(request.required == ["resourceArn", "tagKeys"])
        #expect(model.shapes["CreateComponentRequest"]?.members["clientToken"]?.isIdempotencyToken == true)
        #expect(model.shapes["TagMap"]?.kind == .map && model.shapes["TagMap"]?.max == 50)
        #expect(model.shapes["Platform"]?.enumValues == ["Windows", "Linux", "macOS"])
        #expect(model.patterns.count == Set(model.shapes.values.compactMap(\.pattern)).count)
    }

    @Test func exceptionStatusesComeFromTheModel() {
        let expected: [String: Int] = [
            "ClientException": 400, "InvalidRequestException": 400, "InvalidParameterException": 400,
            "InvalidParameterValueException": 400, "InvalidParameterCombinationException": 400,
            "InvalidVersionNumberException": 400, "ResourceAlreadyExistsException": 400, "ResourceDependencyException": 400,
            "ResourceInUseException": 400, "IdempotentParameterMismatchException": 400, "InvalidPaginationTokenException": 400,
            "ForbiddenException": 403, "AccessDeniedException": 403, "ResourceNotFoundException": 404,
            "ServiceQuotaExceededException": 402, "DryRunOperationException": 412, "CallRateLimitExceededException": 429,
            "TooManyRequestsException": 429, "ServiceException": 500, "ServiceUnavailableException": 503,
        ]
        #expect(model.exceptionStatus == expected)
        let constructed: [APIError] = [
            .accessDenied(""), .callRateLimitExceeded(""), .clientException(""), .dryRunOperation(""), .forbidden(""),
            .idempotentParameterMismatch(""), .invalidPaginationToken(""), .invalidParameterCombination(""), .invalidParameter(""),
            .invalidParameterValue(""), .invalidRequest(""), .invalidVersionNumber(""), .resourceAlreadyExists(""),
            .resourceDependency(""), .resourceInUse(""), .resourceNotFound(""), .serviceException(""), .serviceQuotaExceeded(""),
            .serviceUnavailable(""), .tooManyRequests(""),
        ]
        #expect(Set(constructed.map(\.code)) == Set(expected.keys))
        for error in constructed { #expect(error.status == expected[error.code], "\(error.code)") }
        #expect(APIError.notSupported("ImportDiskImage").code == "InvalidRequestException")
        #expect(APIError.notSupported("ImportDiskImage").message == "Kiln does not support ImportDiskImage yet")
    }

    @Test func javaPatternsMatchTheWholeValueWithASCIIClasses() throws {
        let cases: [(pattern: String, value: String, matches: Bool)] = [
            (#"^[0-9]+\.[0-9]+\.[0-9]+$"#, "1.0.0", true),
            (#"^[0-9]+\.[0-9]+\.[0-9]+$"#, "1.0.0\n", false),
            (#"^[0-9]+\.[0-9]+\.[0-9]+$"#, "1.0", false),
            (#"^(?!aws:)[a-zA-Z0-9\s_.:/=+\-@]*$"#, "team name", true),
            (#"^(?!aws:)[a-zA-Z0-9\s_.:/=+\-@]*$"#, "aws:x", false),
            (#"^(?!aws:)[a-zA-Z0-9\s_.:/=+\-@]*$"#, "a\u{2003}b", false),
            (#"[^\x00]+"#, "ab\u{0}c", false),
            (#"[^\x00]+"#, "name: x", true),
            ("^String|Integer|Boolean|StringList$", "Integer", true),
            ("^String|Integer|Boolean|StringList$", "StringX", false),
            (#"^[\w+=,.@-]+$"#, "é", false),
            (#"^[-_A-Za-z-0-9][-_A-Za-z0-9 ]{1,126}[-_A-Za-z-0-9]$"#, "my-comp", true),
        ]
        for row in cases {
            let pattern = try ModelPattern(row.pattern, shape: "Test")
            #expect(pattern.matches(row.value) == row.matches, "\(row.pattern) against \(row.value.debugDescription)")
        }
    }

    // MARK: Routing

    @Test(.enabled(if: Botocore.enabled)) func routesWhatBotocoreSends() throws {
        let sent = try Botocore.requests([
            ("create_component", ["name": "hello", "semanticVersion": "1.0.0", "platform": "Linux", "data": "name: x"]),
            ("get_component", ["componentBuildVersionArn": .string(componentBuildARN)]),
            ("delete_image", ["imageBuildVersionArn": "arn:aws:imagebuilder:us-west-2:123456789012:image/my-img/1.0.0/1"]),
            ("tag_resource", ["resourceArn": .string(componentBuildARN), "tags": ["team": "a b"]]),
            ("list_tags_for_resource", ["resourceArn": .string(componentBuildARN)]),
            ("untag_resource", ["resourceArn": .string(componentBuildARN), "tagKeys": ["team", "x/y", "a+b c"]]),
        ])
        try #require(sent.count == 6)
        // botocore encodes the whole ARN into one segment, slashes included.
        #expect(sent[3].path == "/tags/arn%3Aaws%3Aimagebuilder%3Aus-west-2%3A123456789012%3Acomponent%2Fmy-comp%2F1.0.0%2F1")
        let expected: [(method: String, operation: String, labels: [String: String])] = [
            ("PUT", "CreateComponent", [:]), ("GET", "GetComponent", [:]), ("DELETE", "DeleteImage", [:]),
            ("POST", "TagResource", ["resourceArn": componentBuildARN]),
            ("GET", "ListTagsForResource", ["resourceArn": componentBuildARN]),
            ("DELETE", "UntagResource", ["resourceArn": componentBuildARN]),
        ]
        for (request, want) in zip(sent, expected) {
            #expect(request.method == want.method)
            let route = try #require(model.route(method: request.method, path: request.path), "\(request.method) \(request.path)")
            #expect(route.operation.name == want.operation)
            #expect(route.labels == want.labels)
            let (operation, _) = try decoder.decode(
                method: request.method, rawPath: request.path, rawQuery: request.query, headers: request.headers, body: request.body)
            #expect(operation.name == want.operation)
        }
        let untag = try decoder.decode(method: "DELETE", rawPath: sent[5].path, rawQuery: sent[5].query, headers: [:], body: [])
        #expect(sent[5].query == "tagKeys=team&tagKeys=x%2Fy&tagKeys=a%2Bb%20c")
        #expect(untag.input == ["resourceArn": .string(componentBuildARN), "tagKeys": ["team", "x/y", "a+b c"]])
        let get = try decoder.decode(method: "GET", rawPath: sent[1].path, rawQuery: sent[1].query, headers: [:], body: [])
        #expect(get.input == ["componentBuildVersionArn": .string(componentBuildARN)])
        let tag = try decoder.decode(method: "POST", rawPath: sent[3].path, rawQuery: nil, headers: sent[3].headers, body: sent[3].body)
        #expect(tag.input == ["resourceArn": .string(componentBuildARN), "tags": ["team": "a b"]])
    }

    @Test func wrongMethodAndUnknownPathAreToldApart() throws {
        #expect(model.route(method: "GET", path: "/CreateComponent") == nil)
        #expect(model.allowedMethods(path: "/CreateComponent") == ["PUT"])
        #expect(model.allowedMethods(path: "/tags/arn%3Ax") == ["DELETE", "GET", "POST"])
        #expect(model.allowedMethods(path: "/tags/") == [])
        #expect(model.route(method: "get", path: "/GetComponent")?.operation.name == "GetComponent")
        #expect(model.route(method: "GET", path: "/GetComponent/extra") == nil)
        #expect(model.route(method: "GET", path: "/tags/a/b") == nil)

        let wrongMethod = #expect(throws: APIError.self) {
            try decoder.decode(method: "GET", rawPath: "/CreateComponent", rawQuery: nil, headers: [:], body: [])
        }
        #expect(wrongMethod?.status == 405 && wrongMethod?.headers["Allow"] == "PUT")
        let unknown = #expect(throws: APIError.self) {
            try decoder.decode(method: "GET", rawPath: "/NoSuchThing", rawQuery: nil, headers: [:], body: [])
        }
        #expect(unknown?.code == "UnknownOperationException" && unknown?.status == 404)
    }

    // MARK: Decoding and validation

    @Test(.enabled(if: Botocore.enabled)) func decodesBotocoreCreateComponent() throws {
        let sent = try #require(
            try Botocore.requests([
                (
                    "create_component",
                    [
                        "name": "hello-world", "semanticVersion": "1.2.3", "platform": "Linux", "description": "Says hello",
                        "data": "name: hello\nschemaVersion: 1.0\nphases: []\n", "tags": ["team": "build", "cost:centre": "42"],
                        "supportedOsVersions": ["Ubuntu 22", "Amazon Linux 2023"], "dryRun": false,
                    ]
                )
            ]
            ).first)
        #expect(sent.method == "PUT" && sent.path == "/CreateComponent" && sent.headers["Content-Type"] == "application/json")
        var (operation, input) = try decoder.decode(
            method: sent.method, rawPath: sent.path, rawQuery: sent.query, headers: sent.headers, body: sent.body)
        #expect(operation.name == "CreateComponent")
        // botocore fills the idempotency token with a fresh UUID.
        let token = try #require(input.removeValue(forKey: "clientToken")?.string)
        #expect(UUID(uuidString: token) != nil)
        let expected: [String: JSONValue] = [
            "name": "hello-world", "semanticVersion": "1.2.3", "platform": "Linux", "description": "Says hello",
            "data": "name: hello\nschemaVersion: 1.0\nphases: []\n", "tags": ["team": "build", "cost:centre": "42"],
            "supportedOsVersions": ["Ubuntu 22", "Amazon Linux 2023"], "dryRun": false,
        ]
        #expect(input == expected)
    }

    @Test func queryAndLabelValuesTakeTheirMembersTypes() throws {
        let listed = try decoder.decode(
            method: "POST", rawPath: "/ListComponents", rawQuery: nil, headers: [:],
            body: Array(
                #"{"maxResults": 5, "byName": true, "bogus": {"x": 1}, "filters": [{"name": "name", "values": ["a"], "extra": 1}]}"#.utf8))
        #expect(listed.input == ["maxResults": 5, "byName": true, "filters": [["name": "name", "values": ["a"]]]])
        #expect(listed.input["maxResults"]?.int == 5)

        let deleted = try decoder.decode(
            method: "DELETE", rawPath: "/DeleteComponent",
            rawQuery: "componentBuildVersionArn=arn%3Aaws%3Aimagebuilder%3Aus-west-2%3A123456789012%3Acomponent%2Fc%2F1.0.0%2F1",
            headers: [:], body: [])
        #expect(deleted.input["componentBuildVersionArn"] == "arn:aws:imagebuilder:us-west-2:123456789012:component/c/1.0.0/1")

        // A GET carries no body members; a stray body is not read.
        let fetched = try decoder.decode(
            method: "GET", rawPath: "/GetComponent?componentBuildVersionArn=\(componentBuildARN)", rawQuery: nil, headers: [:],
            body: Array("not json".utf8))
        #expect(fetched.input == ["componentBuildVersionArn": .string(componentBuildARN)])
    }

    struct Refusal: CustomTestStringConvertible {
        var label: String
        var method = "PUT"
        var path: String
        var query: String? = nil
        var body: String
        var code: String
        var message: String
        var testDescription: String { label }
    }

    static let createBase = #""name": "hello", "platform": "Linux", "clientToken": "t-1""#
    static let refusals: [Refusal] = [
        Refusal(
            label: "missing required member", path: "/CreateComponent",
            body: #"{"semanticVersion": "1.0.0", "platform": "Linux", "clientToken": "t"}"#, code: "InvalidRequestException",
            message: "1 validation error detected: Value null at 'name' failed to satisfy constraint: Member must not be null"),
        Refusal(
            label: "JSON null is absent", path: "/CreateComponent",
            body: #"{"name": null, "semanticVersion": "1.0.0", "platform": "Linux", "clientToken": "t"}"#, code: "InvalidRequestException",
            message: "1 validation error detected: Value null at 'name' failed to satisfy constraint: Member must not be null"),
        Refusal(
            label: "bad semantic version", path: "/CreateComponent", body: "{\(createBase), \"semanticVersion\": \"abc\"}",
            code: "InvalidVersionNumberException",
            message:
                #"1 validation error detected: Value 'abc' at 'semanticVersion' failed to satisfy constraint: Member must satisfy regular expression pattern: ^[0-9]+\.[0-9]+\.[0-9]+$"#
        ),
        Refusal(
            label: "semantic version with a trailing newline", path: "/CreateComponent",
            body: "{\(createBase), \"semanticVersion\": \"1.0.0\\n\"}", code: "InvalidVersionNumberException",
            message:
                "1 validation error detected: Value '1.0.0\n' at 'semanticVersion' failed to satisfy constraint: Member must satisfy regular expression pattern: ^[0-9]+\\.[0-9]+\\.[0-9]+$"
        ),
        Refusal(
            label: "two problems", path: "/CreateComponent",
            body: #"{"semanticVersion": "1.0", "platform": "Linux", "clientToken": "t"}"#, code: "InvalidRequestException",
            message:
                #"2 validation errors detected: Value null at 'name' failed to satisfy constraint: Member must not be null; Value '1.0' at 'semanticVersion' failed to satisfy constraint: Member must satisfy regular expression pattern: ^[0-9]+\.[0-9]+\.[0-9]+$"#
        ),
        Refusal(
            label: "description too long", path: "/CreateComponent",
            body: "{\(createBase), \"semanticVersion\": \"1.0.0\", \"description\": \"\(String(repeating: "é", count: 1025))\"}",
            code: "InvalidRequestException",
            message:
                "1 validation error detected: Value '\(String(repeating: "é", count: 256))...' at 'description' failed to satisfy constraint: Member must have length less than or equal to 1024"
        ),
        Refusal(
            label: "reserved tag key", path: "/CreateComponent",
            body: "{\(createBase), \"semanticVersion\": \"1.0.0\", \"tags\": {\"aws:x\": \"y\", \"ok\": \"z\"}}",
            code: "InvalidRequestException",
            message:
                #"1 validation error detected: Value '{aws:x=y, ok=z}' at 'tags' failed to satisfy constraint: Map keys must satisfy constraint: [Member must satisfy regular expression pattern: ^(?!aws:)[a-zA-Z0-9\s_.:/=+\-@]*$]"#
        ),
        Refusal(
            label: "list too long", path: "/CreateComponent",
            body:
                "{\(createBase), \"semanticVersion\": \"1.0.0\", \"supportedOsVersions\": [\((1...26).map { "\"os\($0)\"" }.joined(separator: ", "))]}",
            code: "InvalidRequestException",
            message:
                "1 validation error detected: Value '[\((1...26).map { "os\($0)" }.joined(separator: ", "))]' at 'supportedOsVersions' failed to satisfy constraint: Member must have length less than or equal to 25"
        ),
        Refusal(
            label: "empty list element", path: "/CreateComponent",
            body: "{\(createBase), \"semanticVersion\": \"1.0.0\", \"supportedOsVersions\": [\"\", null]}",
            code: "InvalidRequestException",
            message:
                "1 validation error detected: Value '[, null]' at 'supportedOsVersions' failed to satisfy constraint: Member must satisfy constraint: [Member must have length greater than or equal to 1, Member must not be null]"
        ),
        Refusal(
            label: "enum value", path: "/CreateComponent",
            body: #"{"name": "hello", "semanticVersion": "1.0.0", "platform": "Solaris", "clientToken": "t"}"#,
            code: "InvalidRequestException",
            message:
                "1 validation error detected: Value 'Solaris' at 'platform' failed to satisfy constraint: Member must satisfy enum value set: [Windows, Linux, macOS]"
        ),
        Refusal(
            label: "wrong type", method: "POST", path: "/ListComponents", body: #"{"maxResults": "5", "byName": 1}"#,
            code: "InvalidRequestException",
            message:
                "2 validation errors detected: Value '1' at 'byName' failed to satisfy constraint: Member must be a boolean; Value '5' at 'maxResults' failed to satisfy constraint: Member must be an integer"
        ),
        Refusal(
            label: "maxResults above range", method: "POST", path: "/ListComponents", body: #"{"maxResults": 26}"#,
            code: "InvalidRequestException",
            message:
                "1 validation error detected: Value '26' at 'maxResults' failed to satisfy constraint: Member must have value less than or equal to 25"
        ),
        Refusal(
            label: "maxResults below range", method: "POST", path: "/ListComponents", body: #"{"maxResults": 0}"#,
            code: "InvalidRequestException",
            message:
                "1 validation error detected: Value '0' at 'maxResults' failed to satisfy constraint: Member must have value greater than or equal to 1"
        ),
        Refusal(
            label: "fractional maxResults", method: "POST", path: "/ListComponents", body: #"{"maxResults": 2.5}"#,
            code: "InvalidRequestException",
            message: "1 validation error detected: Value '2.5' at 'maxResults' failed to satisfy constraint: Member must be an integer"),
        Refusal(
            label: "nested structure in a list", method: "POST", path: "/ListComponents",
            body: #"{"filters": [{"name": "name", "values": ["a"]}, {"name": "bad name", "values": []}]}"#, code: "InvalidRequestException",
            message:
                "2 validation errors detected: Value 'bad name' at 'filters.2.member.name' failed to satisfy constraint: Member must satisfy regular expression pattern: ^[a-zA-Z]{1,1024}$; Value '[]' at 'filters.2.member.values' failed to satisfy constraint: Member must have length greater than or equal to 1"
        ),
        Refusal(
            label: "structure expected", method: "POST", path: "/ListComponents", body: #"{"filters": ["name"]}"#,
            code: "InvalidRequestException",
            message:
                "1 validation error detected: Value 'name' at 'filters.1.member' failed to satisfy constraint: Member must be a JSON object"
        ),
        Refusal(
            label: "query maxResults is not a number", method: "DELETE",
            path: "/tags/arn%3Aaws%3Aimagebuilder%3Aus-west-2%3A123456789012%3Aimage%2Fx",
            query: "tagKeys=aws%3Ax", body: "", code: "InvalidParameterException",
            message:
                #"1 validation error detected: Value '[aws:x]' at 'tagKeys' failed to satisfy constraint: Member must satisfy constraint: [Member must satisfy regular expression pattern: ^(?!aws:)[a-zA-Z0-9\s_.:/=+\-@]*$]"#
        ),
        Refusal(
            label: "bad ARN label", method: "GET", path: "/tags/not-an-arn", body: "", code: "InvalidParameterException",
            message:
                #"1 validation error detected: Value 'not-an-arn' at 'resourceArn' failed to satisfy constraint: Member must satisfy regular expression pattern: ^arn:aws[^:]*:imagebuilder:[^:]+:(?:[0-9]{12}|aws(?:-[a-z-]+)?):(?:image-recipe|container-recipe|infrastructure-configuration|distribution-configuration|component|image|image-pipeline|lifecycle-policy|workflow\/(?:build|test|distribution))/[a-z0-9-_]+(?:/(?:(?:x|[0-9]+)\.(?:x|[0-9]+)\.(?:x|[0-9]+))(?:/[0-9]+)?)?$"#
        ),
        Refusal(
            label: "operation listing InvalidParameterValueException", path: "/PutComponentPolicy",
            body: "{\"componentArn\": \"\(componentBuildARN)\"}", code: "InvalidParameterValueException",
            message: "1 validation error detected: Value null at 'policy' failed to satisfy constraint: Member must not be null"),
        Refusal(
            label: "operation listing only ClientException", path: "/ImportVmImage",
            body: #"{"name": "vm", "semanticVersion": "1.0.0", "platform": "Linux", "clientToken": "t"}"#, code: "ClientException",
            message: "1 validation error detected: Value null at 'vmImportTaskId' failed to satisfy constraint: Member must not be null"),
        Refusal(
            label: "body not JSON", path: "/CreateComponent", body: #"{"name": "x",}"#, code: "InvalidRequestException",
            message: "The request body is not valid JSON: Expected a string key at byte 13"),
        Refusal(
            label: "body not an object", path: "/CreateComponent", body: "[1]", code: "InvalidRequestException",
            message: "The request body must be a JSON object, not an array"),
        Refusal(
            label: "body nested too deep", path: "/CreateComponent",
            body: "{\"tags\": " + String(repeating: "[", count: 64) + String(repeating: "]", count: 64) + "}",
            code: "InvalidRequestException",
            message: "The request body is not valid JSON: JSON nested deeper than 64 levels at byte 72"),
    ]

    @Test(arguments: refusals) func refusesInvalidInput(_ row: Refusal) throws {
        let error = #expect(throws: APIError.self) {
            try decoder.decode(method: row.method, rawPath: row.path, rawQuery: row.query, headers: [:], body: Array(row.body.utf8))
        }
        #expect(error?.code == row.code)
        #expect(error?.message == row.message)
        #expect(error?.status == 400)
    }

    @Test func acceptsValidInputAndIgnoresUnknownMembers() throws {
        let body = #"""
            {"name": "hello", "semanticVersion": "1.0.0", "platform": "Linux", "clientToken": "t", "data": "a",
             "tags": {"team": "build"}, "unknownMember": [1, 2], "description": "é"}
            """#
        let (_, input) = try decoder.decode(method: "PUT", rawPath: "/CreateComponent", rawQuery: nil, headers: [:], body: Array(body.utf8))
        #expect(input["unknownMember"] == nil)
        #expect(input["tags"] == ["team": "build"])
        let oversized = [UInt8](repeating: 0x20, count: APIRequestDecoder.maximumBodyBytes + 1)
        let error = #expect(throws: APIError.self) {
            try decoder.decode(method: "PUT", rawPath: "/CreateComponent", rawQuery: nil, headers: [:], body: oversized)
        }
        #expect(error?.status == 413)
    }

    @Test func timestampsBecomeEpochSeconds() throws {
        let body =
            #"{"resourceArn": "arn:aws:imagebuilder:us-west-2:123456789012:image/x/1.0.0/1", "state": {"status": "AVAILABLE"}, "clientToken": "t", "updateAt": "2026-01-02T03:04:05Z"}"#
        let (_, input) = try decoder.decode(
            method: "PUT", rawPath: "/StartResourceStateUpdate", rawQuery: nil, headers: [:], body: Array(body.utf8))
        #expect(input["updateAt"] == .number(1_767_323_045))
    }

    // MARK: Output

    @Test func shapeOutputDropsWhatTheShapeDoesNotDefine() throws {
        let operation = try #require(model.operations["GetComponent"])
        let shaped = decoder.shapeOutput(
            [
                "requestId": "r-1", "internalPath": "/var/lib/kiln",
                "component": [
                    "name": "hello", "version": "1.0.0", "platform": "Linux", "storageKey": "secret", "encrypted": "yes",
                    "tags": ["team": "build"], "parameters": [["name": "p", "type": "string", "defaultValue": ["x"], "hidden": 1]],
                    "description": nil,
                ],
            ], for: operation)
        let expected: [String: JSONValue] = [
            "requestId": "r-1",
            "component": [
                "name": "hello", "version": "1.0.0", "platform": "Linux", "tags": ["team": "build"],
                "parameters": [["name": "p", "type": "string", "defaultValue": ["x"]]],
            ],
        ]
        #expect(shaped == expected)
        #expect(model.outputShape(of: operation)?.locatedMembers == [])
    }

    @Test(.enabled(if: Botocore.enabled)) func botocoreReadsResponsesAndErrors() throws {
        let getComponent = try #require(model.operations["GetComponent"])
        let success = decoder.response(
            ["component": ["name": "hello", "version": "1.0.0", "secret": "x"], "bogus": 1], for: getComponent, requestID: "req-ok")
        #expect(success.status == 200)
        #expect(success.body == Array(#"{"component":{"name":"hello","version":"1.0.0"},"requestId":"req-ok"}"#.utf8))
        let errors: [APIError] = [
            .resourceNotFound("The component arn:aws:…/hello does not exist; list components with ListComponents"),
            .invalidVersionNumber("1 validation error detected: Value 'abc' at 'semanticVersion' failed"),
            .serviceUnavailable("Kiln is shutting down; retry in a minute"),
            .notSupported("ImportDiskImage"),
            .unknownOperation(method: "GET", path: "/Nope"),
        ]
        var responses: [JSONValue] = [Self.json(success)]
        for (index, error) in errors.enumerated() { responses.append(Self.json(error.response(requestID: "req-\(index)"))) }
        let script = #"""
            results = []
            for canned in arguments:
                def answer(request, canned=canned, **kwargs):
                    return AWSResponse(request.url, canned["status"], canned["headers"], Body(canned["body"].encode()))
                c = client(answer)
                try:
                    parsed = c.get_component(componentBuildVersionArn="arn:aws:imagebuilder:us-west-2:123456789012:component/c/1.0.0/1")
                    results.append({"ok": True, "component": parsed["component"], "requestId": parsed["requestId"],
                                    "metadataRequestId": parsed["ResponseMetadata"]["RequestId"]})
                except ClientError as error:
                    modelled = getattr(c.exceptions, error.response["Error"]["Code"], None)
                    results.append({"ok": False, "code": error.response["Error"]["Code"],
                                    "message": error.response["Error"]["Message"],
                                    "status": error.response["ResponseMetadata"]["HTTPStatusCode"],
                                    "requestId": error.response["ResponseMetadata"].get("RequestId"),
                                    "modelledClass": modelled is not None and isinstance(error, modelled)})
            finish(results)
            """#
        let parsed = try #require(try Botocore.run(script, input: .array(responses)).array)
        try #require(parsed.count == errors.count + 1)
        #expect(
            parsed[0] == [
                "ok": true, "component": ["name": "hello", "version": "1.0.0"], "requestId": "req-ok", "metadataRequestId": "req-ok",
            ])
        for (index, error) in errors.enumerated() {
            let reading = parsed[index + 1]
            #expect(reading["code"]?.string == error.code)
            #expect(reading["message"]?.string == error.message)
            #expect(reading["status"]?.int == error.status)
            #expect(reading["requestId"]?.string == "req-\(index)")
            #expect(reading["modelledClass"]?.bool == (model.exceptionStatus[error.code] != nil), "\(error.code)")
        }
    }

    static func json(_ response: APIResponse) -> JSONValue {
        [
            "status": .number(Double(response.status)), "headers": .object(response.headers.mapValues { .string($0) }),
            "body": .string(String(decoding: response.body, as: UTF8.self)),
        ]
    }

    @Test func errorResponseHasAWSHeadersAndBody() {
        let response = APIError.resourceNotFound("gone").response(requestID: "abc")
        #expect(response.status == 404)
        #expect(response.headers["Content-Type"] == "application/json")
        #expect(response.headers["X-Amzn-ErrorType"] == "ResourceNotFoundException")
        #expect(response.headers["x-amzn-RequestId"] == "abc")
        #expect(response.body == Array(#"{"__type":"ResourceNotFoundException","message":"gone"}"#.utf8))
    }

    // MARK: The generated model

    @Test(.enabled(if: Botocore.enabled)) func generatedModelIsUpToDate() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
        let committed = "\(root)/Sources/KilnServer/APIModel+Imagebuilder.swift"
        let scratch = Scratch("kiln-api-model")
        defer { scratch.remove() }
        let result = try shell("python3 \(root)/scripts/generate-api-model --output \(scratch.file("generated.swift"))")
        try #require(result.status == 0, "scripts/generate-api-model failed; is botocore installed (scripts/setup)?\n\(result.output)")
        let generated = try scratch.read("generated.swift")
        let current = try String(contentsOfFile: committed, encoding: .utf8)
        #expect(generated == current, "APIModel+Imagebuilder.swift is stale: run scripts/generate-api-model and commit the result")
    }
}

@Suite struct JSONValueTests {
    @Test func encodesDeterministically() throws {
        let value: JSONValue = [
            "b": 1, "a": [1.5, -0.0, 1e20, true, nil], "é": "line\n\"quoted\"\u{1}", "A": ["z": 1, "y": 2], "n": 9_007_199_254_740_993,
        ]
        let text = value.description
        #expect(
            text
                == #"{"A":{"y":2,"z":1},"a":[1.5,0,1e+20,true,null],"b":1,"n":9007199254740992.0,"é":"line\n\"quoted\"\u0001"}"#)
        #expect(try JSONValue(parsing: value.encoded()) == value)
        #expect(JSONValue.number(.nan).description == "null")
    }

    @Test func parsesBooleansNumbersAndText() throws {
        let parsed = try JSONValue(
            parsing: Array(#" {"t": true, "one": 1, "f": 1.0e2, "s": "\u00e9\ud83d\ude00\/", "n": null, "l": []} "#.utf8))
        #expect(parsed["t"] == .bool(true))
        #expect(parsed["one"] == .number(1) && parsed["one"]?.int == 1 && parsed["one"]?.bool == nil)
        #expect(parsed["f"]?.int == 100)
        #expect(parsed["s"]?.string == "é😀/")
        #expect(parsed["n"]?.isNull == true)
        #expect(parsed["l"]?.array == [])
        #expect(parsed["missing"] == nil)
    }

    @Test(arguments: [
        ("", "Unexpected end of the JSON document at byte 0"),
        ("{} x", "Unexpected data after the JSON value at byte 3"),
        ("[01]", "Expected ',' or ']' in an array at byte 2"),
        ("\"\\ud800\"", "High surrogate without a low surrogate at byte 7"),
        ("\"\\udc00\"", "Low surrogate without a high surrogate at byte 7"),
        ("\"a\u{1}\"", "Unescaped control character in a string at byte 2"),
        ("1e999", "Number out of range at byte 0"),
        ("tru", "Invalid literal, expected true at byte 0"),
        (String(repeating: "[", count: 65) + String(repeating: "]", count: 65), "JSON nested deeper than 64 levels at byte 64"),
    ])
    func refusesMalformedJSON(_ text: String, _ message: String) {
        #expect(throws: JSONParseError.self) { try JSONValue(parsing: Array(text.utf8)) }
        do {
            _ = try JSONValue(parsing: Array(text.utf8))
        } catch {
            #expect(error.description == message)
        }
    }

    @Test func boundsHostileInput() throws {
        #expect(throws: JSONParseError.self) { try JSONValue(parsing: [0x22, 0xFF, 0x22]) }
        let deepest = String(repeating: "[", count: 64) + String(repeating: "]", count: 64)
        #expect(try JSONValue(parsing: Array(deepest.utf8)).array?.count == 1)
        #expect(throws: JSONParseError.self) { try JSONValue(parsing: Array("[1,2,3]".utf8), maximumValues: 3) }
    }

    @Test func codableKeepsBooleansApartFromNumbers() throws {
        let value: JSONValue = ["flag": true, "one": 1, "zero": 0, "list": ["x", false]]
        let data = try JSONEncoder().encode(value)
        let decoded = try JSONDecoder().decode(JSONValue.self, from: data)
        #expect(decoded == value)
        #expect(try JSONDecoder().decode(JSONValue.self, from: Data("[1, true, 0, false]".utf8)) == [1, true, 0, false])
    }
}
