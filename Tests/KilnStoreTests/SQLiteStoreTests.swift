import Foundation
import KilnModel
import KilnStore
import KilnTestSupport
import Testing

@Suite("SQLite store")
struct SQLiteStoreTests {
    func record(_ name: String, _ version: String, build: Int, status: ImageStatus, owner: ProcessOwner? = nil) throws -> ImageRecord {
        ImageRecord(
            arn: "arn:aws:imagebuilder:us-east-1:000000000000:image/\(name)/\(version)/\(build)", name: name,
            version: try SemanticVersion(parsing: version), build: build, status: status, dateCreated: "2026-11-30T00:00:00Z",
            logDirectory: "/nowhere", owner: owner)
    }

    @Test("Build numbers count up per name and version, also across two handles on one file, and records read back in order")
    func buildNumbersAndRecords() throws {
        let scratch = Scratch("kiln-store")
        defer { scratch.remove() }
        let first = try SQLiteStore(dataDirectory: scratch.path)
        let second = try SQLiteStore(dataDirectory: scratch.path)
        let version = try SemanticVersion(parsing: "1.0.0")
        let numbers = try (0..<20).map { index in
            try (index.isMultiple(of: 2) ? first : second).reserveBuild(name: "web", version: version)
        }
        #expect(numbers == Array(1...20))
        #expect(try first.reserveBuild(name: "web", version: try SemanticVersion(parsing: "1.0.1")) == 1)
        #expect(FileManager.default.fileExists(atPath: scratch.path + "/images/web/1.0.0/20"), "the log folder is made")

        try first.save(try record("web", "1.0.0", build: 2, status: .available))
        try first.save(try record("web", "1.0.0", build: 1, status: .building))
        try second.save(try record("api", "2.0.0", build: 1, status: .failed))
        var updated = try record("web", "1.0.0", build: 1, status: .available)
        updated.digest = "sha256:abc"
        try second.save(updated)
        let all = first.all()
        #expect(
            all.map { "\($0.name)/\($0.version)/\($0.build) \($0.status.rawValue)" } == [
                "api/2.0.0/1 FAILED", "web/1.0.0/1 AVAILABLE", "web/1.0.0/2 AVAILABLE",
            ])
        #expect(try first.find("web/1.0.0/1").digest == "sha256:abc")
        #expect(try first.record(arn: updated.arn)?.digest == "sha256:abc")
        let page = try first.records(name: "web", offset: 0, limit: 1)
        #expect(page.items.map(\.build) == [2] && page.next == 1, "newest first, with a next page")
        #expect(try first.records(name: "web", offset: 1, limit: 1).next == nil)
        let versions = try first.imageVersions(name: nil, offset: 0, limit: 10).items
        #expect(versions.map { "\($0.name)/\($0.version) \($0.type.rawValue)" } == ["api/2.0.0 DOCKER", "web/1.0.0 DOCKER"])
        #expect(try first.imageVersions(name: "web", offset: 0, limit: 1).items.map(\.name) == ["web"])
        #expect(throws: KilnError.self) { try first.find("web/9.9.9/1") }
    }

    @Test("JSON records of an older Kiln are imported once; build numbers continue after them")
    func importsJSONRecords() throws {
        let scratch = Scratch("kiln-store")
        defer { scratch.remove() }
        for build in [1, 3] {
            _ = try scratch.write(
                "images/old/1.0.0/\(build)/image.json",
                """
                {"arn": "arn:aws:imagebuilder:us-east-1:000000000000:image/old/1.0.0/\(build)", "name": "old", "version": "1.0.0",
                 "build": \(build), "type": "DOCKER", "status": "AVAILABLE", "dateCreated": "2026-01-01T00:00:00Z",
                 "distributionTargets": [], "outputContainers": [], "timings": [], "logDirectory": "/nowhere"}
                """)
        }
        let store = try SQLiteStore(dataDirectory: scratch.path)
        #expect(store.all().map(\.build) == [1, 3])
        #expect(try store.reserveBuild(name: "old", version: try SemanticVersion(parsing: "1.0.0")) == 4)
        // A record deleted from the store does not come back from its file on the next start.
        #expect(try store.deleteImage(arn: "arn:aws:imagebuilder:us-east-1:000000000000:image/old/1.0.0/1"))
        let reopened = try SQLiteStore(dataDirectory: scratch.path)
        #expect(reopened.all().map(\.build) == [3])
    }

    @Test("Opening ends running records of dead owners as interrupted, and leaves a live owner's alone")
    func recoversInterrupted() throws {
        let scratch = Scratch("kiln-store")
        defer { scratch.remove() }
        let store = try SQLiteStore(dataDirectory: scratch.path)
        try store.save(try record("a", "1.0.0", build: 1, status: .testing, owner: ProcessOwner(pid: 1, startTime: 1)))
        try store.save(try record("a", "1.0.0", build: 2, status: .building, owner: .current))
        try store.save(try record("a", "1.0.0", build: 3, status: .building))
        let reopened = try SQLiteStore(dataDirectory: scratch.path, interruption: "interrupted by restart")
        let byBuild = Dictionary(uniqueKeysWithValues: reopened.all().map { ($0.build, $0) })
        #expect(byBuild[1]?.status == .failed && byBuild[1]?.failure?.stage == .test)
        #expect(
            byBuild[1]?.failure?.reason.hasPrefix("interrupted by restart in TEST (TESTING)") == true,
            "\(byBuild[1]?.failure?.reason ?? "")")
        #expect(byBuild[2]?.status == .building, "this process still runs it")
        #expect(byBuild[3]?.status == .building, "an ownerless record changed just now is left alone")
    }

    @Test("Resources: a duplicate ARN is refused, pages, references, tags and client tokens")
    func resources() throws {
        let scratch = Scratch("kiln-store")
        defer { scratch.remove() }
        let store = try SQLiteStore(dataDirectory: scratch.path)
        let arn = "arn:aws:imagebuilder:us-east-1:000000000000:component/hello/1.0.0/1"
        let component = StoredResource(
            kind: .component, arn: arn, name: "hello", version: try SemanticVersion(parsing: "1.0.0"), build: 1,
            document: Data(#"{"name":"hello"}"#.utf8), dateCreated: "2026-11-30T00:00:00Z")
        try store.insert(component)
        #expect(throws: KilnError.self) { try store.insert(component) }
        for index in 1...3 {
            try store.insert(
                StoredResource(
                    kind: .imageRecipe, arn: "arn:aws:imagebuilder:us-east-1:000000000000:image-recipe/r\(index)/1.0.0", name: "r\(index)",
                    version: try SemanticVersion(parsing: "1.0.0"), document: Data(#"{"components":[{"componentArn":"\#(arn)"}]}"#.utf8),
                    dateCreated: "2026-11-30T00:00:00Z"))
        }
        let first = try store.resources(kind: .imageRecipe, name: nil, offset: 0, limit: 2)
        #expect(first.items.map(\.name) == ["r1", "r2"] && first.next == 2)
        #expect(try store.resources(kind: .imageRecipe, name: nil, offset: 2, limit: 2).items.map(\.name) == ["r3"])
        #expect(try store.referencing(arn).count == 3)
        #expect(try store.referencing(String(arn.dropLast(2))).isEmpty, "a prefix of a named ARN is no reference")
        try store.update(arn: arn, document: Data(#"{"name":"hello","v":2}"#.utf8))
        #expect(try store.resource(arn: arn)?.document == Data(#"{"name":"hello","v":2}"#.utf8))
        #expect(throws: KilnError.self) { try store.update(arn: arn + "x", document: Data()) }

        try store.setTags(arn: arn, ["team": "platform", "env": "prod"])
        try store.setTags(arn: arn, ["env": "dev"])
        try store.removeTags(arn: arn, keys: ["team"])
        #expect(try store.tags(arn: arn) == ["env": "dev"])
        #expect(try store.delete(arn: arn))
        #expect(try store.tags(arn: arn).isEmpty && (try store.resource(arn: arn)) == nil)
        #expect(try store.delete(arn: arn) == false)

        #expect(try store.idempotentResponse(operation: "CreateComponent", token: "t1") == nil)
        try store.saveIdempotentResponse(operation: "CreateComponent", token: "t1", requestDigest: "d1", response: Data("r".utf8))
        let saved = try #require(try store.idempotentResponse(operation: "CreateComponent", token: "t1"))
        #expect(saved.requestDigest == "d1" && saved.response == Data("r".utf8))
    }

    @Test("The build queue runs in order, at most `limit` at once; a dead worker's entry is released; a queued one can be taken out")
    func buildQueue() throws {
        let scratch = Scratch("kiln-store")
        defer { scratch.remove() }
        let store = try SQLiteStore(dataDirectory: scratch.path)
        for name in ["a", "b", "c"] { try store.enqueue(imageArn: name, request: Data(name.utf8)) }
        let first = try #require(try store.claimNext(owner: .current, limit: 1))
        #expect(first.imageArn == "a" && first.request == Data("a".utf8))
        #expect(try store.claimNext(owner: .current, limit: 1) == nil, "one runs already")
        try store.finish(id: first.id)
        #expect(try store.dequeue(imageArn: "b"))
        let dead = ProcessOwner(pid: 1, startTime: 1)
        let second = try #require(try store.claimNext(owner: dead, limit: 1))
        #expect(second.imageArn == "c")
        #expect(try store.releaseDeadOwners() == ["c"])
        #expect(try store.entries(state: .running).isEmpty && (try store.entries(state: .queued)).isEmpty)
    }

    @Test("One event to two webhooks is two deliveries, each with its own tries")
    func deliveriesPerWebhook() throws {
        let scratch = Scratch("kiln-store")
        defer { scratch.remove() }
        let store = try SQLiteStore(dataDirectory: scratch.path)
        for webhook in ["ops", "audit"] {
            try store.addDelivery(WebhookDelivery(id: "event-1", webhook: webhook, body: Data("{}".utf8)))
        }
        try store.addDelivery(WebhookDelivery(id: "event-1", webhook: "ops", body: Data("{\"again\":1}".utf8)))
        #expect(try store.dueDeliveries(now: Int(Date().timeIntervalSince1970), limit: 10).map(\.webhook).sorted() == ["audit", "ops"])
        try store.recordAttempt(id: "event-1", webhook: "ops", result: "HTTP 200", delivered: true, nextAttemptAt: nil)
        let audit = try #require(try store.deliveries(webhook: "audit").first)
        #expect(!audit.delivered && audit.attempts == 0, "the audit delivery is untouched")
        #expect(try store.deliveries(webhook: "ops").first?.delivered == true)
        #expect(try store.deliveries(webhook: "ops").first?.body == Data("{}".utf8), "a delivery added twice keeps the first body")
    }
}
