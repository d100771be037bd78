import Foundation
import GRDB
import KilnModel
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// Kiln's store: one SQLite database (`<dataDirectory>/kiln.sqlite`, WAL, synchronous FULL)
/// holding image records, resources, tags, idempotency tokens and the build queue. `kiln build`
/// and `kiln server` open the same file; SQLite's locks keep them apart. Each build's logs stay
/// in folders under `<dataDirectory>/images`. Opening it migrates the schema, imports the JSON
/// records of an older Kiln once, and ends the records a dead Kiln left running.
public final class SQLiteStore: ImageRecords, ResourceRecords, BuildQueue, WebhookOutbox, TriggerRecords, Sendable {
    public let path: String
    /// `<dataDirectory>/images`: each build's log folder, and where older Kilns kept records.
    public let imagesFolder: String
    let pool: DatabasePool
    /// The records opening ended as interrupted, with the state each was in (the server sends
    /// their state changes to webhooks).
    public var endedAtOpen: [(record: ImageRecord, previous: ImageStatus)] { ended.withLock { $0 } }
    private let ended = Mutex<[(record: ImageRecord, previous: ImageStatus)]>([])

    /// Opens (creating) the store. `interruption` says what ended the builds a dead Kiln left
    /// running, in their failure reason (`kiln server` says "interrupted by restart").
    public init(dataDirectory: String, interruption: String = "interrupted") throws {
        path = dataDirectory + "/kiln.sqlite"
        imagesFolder = dataDirectory + "/images"
        try FileManager.default.createDirectory(atPath: imagesFolder, withIntermediateDirectories: true)
        var configuration = Configuration()
        // A build in another process may hold the write lock for a moment.
        configuration.busyMode = .timeout(30)
        configuration.prepareDatabase { db in
            try db.execute(sql: "PRAGMA synchronous = FULL")
        }
        do {
            pool = try DatabasePool(path: path, configuration: configuration)
            try Self.migrator.migrate(pool)
        } catch {
            throw KilnError(
                .ioFailure, "cannot open Kiln's store \(path): \(error); if the file is damaged, move it away and Kiln imports what it can",
                cause: error)
        }
        try importJSONRecords()
        let ended = recoverInterrupted(interruption)
        self.ended.withLock { $0 = ended }
    }

    static var migrator: DatabaseMigrator {
        var migrator = DatabaseMigrator()
        migrator.registerMigration("1 images, resources, tags, tokens, queue") { db in
            try db.execute(
                sql: """
                    CREATE TABLE image (
                        arn TEXT PRIMARY KEY,
                        name TEXT NOT NULL,
                        version TEXT NOT NULL,
                        major INTEGER NOT NULL, minor INTEGER NOT NULL, patch INTEGER NOT NULL,
                        build INTEGER NOT NULL,
                        status TEXT NOT NULL,
                        pipeline TEXT,
                        dateCreated TEXT NOT NULL,
                        updatedAt INTEGER NOT NULL,
                        record BLOB NOT NULL,
                        UNIQUE (name, major, minor, patch, build)
                    );
                    CREATE INDEX image_status ON image(status);
                    CREATE INDEX image_pipeline ON image(pipeline);
                    CREATE TABLE image_build_number (
                        name TEXT NOT NULL, version TEXT NOT NULL, last INTEGER NOT NULL,
                        PRIMARY KEY (name, version)
                    );
                    CREATE TABLE resource (
                        arn TEXT PRIMARY KEY,
                        kind TEXT NOT NULL,
                        name TEXT NOT NULL,
                        version TEXT,
                        major INTEGER, minor INTEGER, patch INTEGER,
                        build INTEGER,
                        document BLOB NOT NULL,
                        dateCreated TEXT NOT NULL
                    );
                    CREATE INDEX resource_kind_name ON resource(kind, name, major, minor, patch, build);
                    CREATE TABLE tag (
                        arn TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
                        PRIMARY KEY (arn, key)
                    );
                    CREATE TABLE idempotency (
                        operation TEXT NOT NULL, token TEXT NOT NULL, requestDigest TEXT NOT NULL,
                        response BLOB NOT NULL, createdAt INTEGER NOT NULL,
                        PRIMARY KEY (operation, token)
                    );
                    CREATE TABLE build_queue (
                        id INTEGER PRIMARY KEY AUTOINCREMENT,
                        imageArn TEXT NOT NULL,
                        request BLOB NOT NULL,
                        state TEXT NOT NULL,
                        owner TEXT,
                        enqueuedAt INTEGER NOT NULL,
                        startedAt INTEGER
                    );
                    CREATE INDEX build_queue_state ON build_queue(state, id);
                    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
                    """)
        }
        migrator.registerMigration("2 webhook deliveries") { db in
            try db.execute(
                sql: """
                    CREATE TABLE webhook_delivery (
                        id TEXT PRIMARY KEY,
                        webhook TEXT NOT NULL,
                        body BLOB NOT NULL,
                        attempts INTEGER NOT NULL DEFAULT 0,
                        nextAttemptAt INTEGER NOT NULL,
                        lastResult TEXT,
                        deliveredAt INTEGER,
                        createdAt INTEGER NOT NULL
                    );
                    CREATE INDEX webhook_delivery_due ON webhook_delivery(deliveredAt, nextAttemptAt);
                    """)
        }
        migrator.registerMigration("3 pipeline events, scheduler state") { db in
            try db.execute(
                sql: """
                    CREATE TABLE pipeline_event (
                        id INTEGER PRIMARY KEY AUTOINCREMENT,
                        pipeline TEXT NOT NULL,
                        kind TEXT NOT NULL,
                        receivedAt INTEGER NOT NULL,
                        dueAt INTEGER NOT NULL,
                        detail TEXT NOT NULL,
                        count INTEGER NOT NULL DEFAULT 1,
                        outcome TEXT NOT NULL,
                        reason TEXT,
                        imageArn TEXT,
                        resolved TEXT,
                        packages TEXT,
                        reviewed INTEGER NOT NULL DEFAULT 0
                    );
                    CREATE INDEX pipeline_event_pending ON pipeline_event(outcome, dueAt);
                    CREATE INDEX pipeline_event_pipeline ON pipeline_event(pipeline, id);
                    CREATE TABLE scheduler_state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
                    """)
        }
        // One event goes to several webhooks: a delivery is an event and a webhook.
        migrator.registerMigration("4 webhook deliveries keyed by event and webhook") { db in
            try db.execute(
                sql: """
                    CREATE TABLE webhook_delivery_new (
                        id TEXT NOT NULL,
                        webhook TEXT NOT NULL,
                        body BLOB NOT NULL,
                        attempts INTEGER NOT NULL DEFAULT 0,
                        nextAttemptAt INTEGER NOT NULL,
                        lastResult TEXT,
                        deliveredAt INTEGER,
                        createdAt INTEGER NOT NULL,
                        PRIMARY KEY (id, webhook)
                    );
                    INSERT INTO webhook_delivery_new SELECT id, webhook, body, attempts, nextAttemptAt, lastResult, deliveredAt, createdAt
                        FROM webhook_delivery;
                    DROP TABLE webhook_delivery;
                    ALTER TABLE webhook_delivery_new RENAME TO webhook_delivery;
                    CREATE INDEX webhook_delivery_due ON webhook_delivery(deliveredAt, nextAttemptAt);
                    """)
        }
        return migrator
    }

    // MARK: Image records

    public func folder(name: String, version: SemanticVersion, build: Int) -> String {
        "\(imagesFolder)/\(name)/\(version)/\(build)"
    }

    /// The next build number of `name/version`, counted in the store; its log folder is made
    /// too, and a number whose folder an older Kiln left is skipped.
    public func reserveBuild(name: String, version: SemanticVersion) throws -> Int {
        let versions = "\(imagesFolder)/\(name)/\(version)"
        try FileManager.default.createDirectory(atPath: versions, withIntermediateDirectories: true)
        while true {
            let build = try writing("reserve a build number of \(name)/\(version)") { db in
                try Int.fetchOne(
                    db,
                    sql: """
                        INSERT INTO image_build_number(name, version, last) VALUES (?, ?, 1)
                        ON CONFLICT(name, version) DO UPDATE SET last = last + 1 RETURNING last
                        """, arguments: [name, version.description])!
            }
            if mkdir("\(versions)/\(build)", 0o755) == 0 {
                try DurableFile.syncFolder(versions)
                return build
            }
            guard errno == EEXIST else {
                throw KilnError(.ioFailure, "cannot create \(versions)/\(build): \(String(cString: strerror(errno)))")
            }
        }
    }

    public func save(_ record: ImageRecord) throws {
        let data = try Self.encoder.encode(record)
        try writing("save the image record \(record.arn)") { db in
            try Self.upsert(record, data: data, updatedAt: Int(Date().timeIntervalSince1970), in: db)
        }
    }

    static func upsert(_ record: ImageRecord, data: Data, updatedAt: Int, in db: Database) throws {
        try db.execute(
            sql: """
                INSERT INTO image(arn, name, version, major, minor, patch, build, status, pipeline, dateCreated, updatedAt, record)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                ON CONFLICT(arn) DO UPDATE SET status = excluded.status, pipeline = excluded.pipeline,
                    updatedAt = excluded.updatedAt, record = excluded.record
                """,
            arguments: [
                record.arn, record.name, record.version.description, record.version.major, record.version.minor,
                record.version.patch, record.build, record.status.rawValue, record.sourcePipelineName, record.dateCreated,
                updatedAt, data,
            ])
    }

    public func all() -> [ImageRecord] {
        (try? reading { db in
            try Data.fetchAll(db, sql: "SELECT record FROM image ORDER BY name, major, minor, patch, build")
        })?.compactMap { try? JSONDecoder().decode(ImageRecord.self, from: $0) } ?? []
    }

    public func record(arn: String) throws -> ImageRecord? {
        try reading { db in try Data.fetchOne(db, sql: "SELECT record FROM image WHERE arn = ?", arguments: [arn]) }
            .map { try JSONDecoder().decode(ImageRecord.self, from: $0) }
    }

    /// Records by name (all names when nil), newest version and build first, a page at a time.
    public func records(name: String? = nil, pipeline: String? = nil, offset: Int, limit: Int) throws -> Page<ImageRecord> {
        var conditions: [String] = []
        var arguments: StatementArguments = []
        if let name {
            conditions.append("name = ?")
            _ = arguments.append(contentsOf: [name])
        }
        if let pipeline {
            conditions.append("pipeline = ?")
            _ = arguments.append(contentsOf: [pipeline])
        }
        let filter = conditions.isEmpty ? "" : "WHERE " + conditions.joined(separator: " AND ")
        _ = arguments.append(contentsOf: [limit + 1, offset])
        let rows = try reading { db in
            try Data.fetchAll(
                db,
                sql: "SELECT record FROM image \(filter) ORDER BY name, major DESC, minor DESC, patch DESC, build DESC LIMIT ? OFFSET ?",
                arguments: arguments)
        }
        let records = try rows.prefix(limit).map { try JSONDecoder().decode(ImageRecord.self, from: $0) }
        return Page(items: records, next: rows.count > limit ? offset + limit : nil)
    }

    /// The image's row number, which workflow execution ids carry.
    public func rowID(arn: String) throws -> Int64? {
        try reading { db in try Int64.fetchOne(db, sql: "SELECT rowid FROM image WHERE arn = ?", arguments: [arn]) }
    }

    public func record(rowID: Int64) throws -> ImageRecord? {
        try reading { db in try Data.fetchOne(db, sql: "SELECT record FROM image WHERE rowid = ?", arguments: [rowID]) }
            .map { try JSONDecoder().decode(ImageRecord.self, from: $0) }
    }

    /// How many images are in each state.
    public func imageCounts() throws -> [String: Int] {
        try reading { db in
            var counts: [String: Int] = [:]
            for row in try Row.fetchAll(db, sql: "SELECT status, count(*) AS n FROM image GROUP BY status") {
                counts[row["status"]] = row["n"] as Int
            }
            return counts
        }
    }

    /// The newest build of each image version (by name when given), a page at a time: only
    /// what ListImages shows, read without decoding whole records (a page stays cheap with
    /// many images).
    public func imageVersions(name: String?, offset: Int, limit: Int) throws -> Page<ImageVersionSummary> {
        let newest = """
            SELECT name, version, dateCreated, json_extract(CAST(record AS TEXT), '$.type') AS type FROM image AS newest
            WHERE %@ build = (
                SELECT max(build) FROM image AS other
                WHERE other.name = newest.name AND other.major = newest.major AND other.minor = newest.minor AND other.patch = newest.patch)
            ORDER BY name, major, minor, patch LIMIT ? OFFSET ?
            """
        let rows = try reading { db in
            if let name {
                return try Row.fetchAll(
                    db, sql: newest.replacingOccurrences(of: "%@", with: "name = ? AND"), arguments: [name, limit + 1, offset])
            }
            return try Row.fetchAll(db, sql: newest.replacingOccurrences(of: "%@", with: ""), arguments: [limit + 1, offset])
        }
        let items = rows.prefix(limit).compactMap { row -> ImageVersionSummary? in
            let versionText: String = row["version"]
            guard let version = try? SemanticVersion(parsing: versionText) else { return nil }
            let type: String? = row["type"]
            return ImageVersionSummary(
                name: row["name"], version: version, type: type.flatMap(ImageType.init(rawValue:)) ?? .docker,
                dateCreated: row["dateCreated"])
        }
        return Page(items: items, next: rows.count > limit ? offset + limit : nil)
    }

    public func deleteImage(arn: String) throws -> Bool {
        try writing("delete the image \(arn)") { db in
            try db.execute(sql: "DELETE FROM image WHERE arn = ?", arguments: [arn])
            let deleted = db.changesCount > 0
            try db.execute(sql: "DELETE FROM resource WHERE arn = ?", arguments: [arn])
            try db.execute(sql: "DELETE FROM tag WHERE arn = ?", arguments: [arn])
            return deleted
        }
    }

    /// Ends records a dead Kiln left in a running state: FAILED, saying the stage and that the
    /// process died. A record's owner is alive only while that very process (pid and start time)
    /// runs. A record of an older Kiln names no owner: it counts as dead once unchanged since
    /// before the machine booted or for a day. Returns the records it ended.
    @discardableResult
    public func recoverInterrupted(_ interruption: String = "interrupted") -> [(record: ImageRecord, previous: ImageStatus)] {
        let running = ImageStatus.allRunning.map { "'\($0.rawValue)'" }.joined(separator: ",")
        guard
            let rows = try? reading({ db in
                // A queued build has not started: it runs after the restart.
                try Row.fetchAll(
                    db,
                    sql: """
                        SELECT record, updatedAt FROM image WHERE status IN (\(running))
                        AND arn NOT IN (SELECT imageArn FROM build_queue WHERE state = 'queued')
                        """)
            })
        else { return [] }
        let bootTime = Self.bootTime()
        let now = Int(Date().timeIntervalSince1970)
        var ended: [(record: ImageRecord, previous: ImageStatus)] = []
        for row in rows {
            let data: Data = row["record"]
            let updatedAt: Int = row["updatedAt"]
            guard var record = try? JSONDecoder().decode(ImageRecord.self, from: data), record.isRunning else { continue }
            if let owner = record.owner {
                guard !owner.isAlive else { continue }
            } else {
                guard updatedAt < bootTime || updatedAt < now - 86_400 else { continue }
            }
            let status = record.status
            let who = record.owner.map { "the Kiln process that ran it (\($0)) died" } ?? "the Kiln that ran it is gone"
            record.status = .failed
            record.failure = .init(
                stage: status.stage, log: record.logDirectory,
                reason:
                    "\(interruption) in \(status.stage.rawValue) (\(status.rawValue)): \(who) before the image was finished; build it again"
            )
            if (try? save(record)) != nil { ended.append((record, status)) }
        }
        return ended
    }

    /// When the machine booted, in seconds since 1970 (`btime` of /proc/stat).
    static func bootTime() -> Int {
        let text = (try? String(contentsOfFile: "/proc/stat", encoding: .utf8)) ?? ""
        let line = text.split(separator: "\n").first { $0.hasPrefix("btime ") }
        return line.flatMap { Int($0.dropFirst(6).trimmingCharacters(in: .whitespaces)) } ?? 0
    }

    // MARK: Resources, tags, tokens

    public func insert(_ resource: StoredResource) throws {
        try writing("store \(resource.arn)") { db in
            let taken = try Int.fetchOne(db, sql: "SELECT 1 FROM resource WHERE arn = ?", arguments: [resource.arn]) != nil
            guard !taken else { throw KilnError(.alreadyExists, "\(resource.arn) already exists") }
            try db.execute(
                sql: """
                    INSERT INTO resource(arn, kind, name, version, major, minor, patch, build, document, dateCreated)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                    """,
                arguments: [
                    resource.arn, resource.kind.rawValue, resource.name, resource.version?.description, resource.version?.major,
                    resource.version?.minor, resource.version?.patch, resource.build, resource.document, resource.dateCreated,
                ])
        }
    }

    public func update(arn: String, document: Data) throws {
        try writing("update \(arn)") { db in
            try db.execute(sql: "UPDATE resource SET document = ? WHERE arn = ?", arguments: [document, arn])
            guard db.changesCount > 0 else { throw KilnError(.notFound, "\(arn) does not exist") }
        }
    }

    public func resource(arn: String) throws -> StoredResource? {
        try reading { db in
            try Row.fetchOne(db, sql: "SELECT * FROM resource WHERE arn = ?", arguments: [arn]).flatMap(Self.resource(from:))
        }
    }

    public func resources(kind: ResourceKind, name: String?, offset: Int, limit: Int) throws -> Page<StoredResource> {
        let rows = try reading { db in
            if let name {
                return try Row.fetchAll(
                    db,
                    sql: "SELECT * FROM resource WHERE kind = ? AND name = ? ORDER BY name, major, minor, patch, build LIMIT ? OFFSET ?",
                    arguments: [kind.rawValue, name, limit + 1, offset])
            }
            return try Row.fetchAll(
                db, sql: "SELECT * FROM resource WHERE kind = ? ORDER BY name, major, minor, patch, build LIMIT ? OFFSET ?",
                arguments: [kind.rawValue, limit + 1, offset])
        }
        return Page(items: rows.prefix(limit).compactMap(Self.resource(from:)), next: rows.count > limit ? offset + limit : nil)
    }

    public func delete(arn: String) throws -> Bool {
        try writing("delete \(arn)") { db in
            try db.execute(sql: "DELETE FROM resource WHERE arn = ?", arguments: [arn])
            let deleted = db.changesCount > 0
            try db.execute(sql: "DELETE FROM tag WHERE arn = ?", arguments: [arn])
            return deleted
        }
    }

    public func referencing(_ text: String) throws -> [String] {
        try reading { db in
            // The whole JSON string: `"…/web"` must not match a document naming `…/web-prod`.
            try String.fetchAll(
                db,
                sql: "SELECT arn FROM resource WHERE kind != 'image' AND instr(CAST(document AS TEXT), ?) > 0 AND arn != ? ORDER BY arn",
                arguments: ["\"" + text + "\"", text])
        }
    }

    public func tags(arn: String) throws -> [String: String] {
        try reading { db in
            var tags: [String: String] = [:]
            for row in try Row.fetchAll(db, sql: "SELECT key, value FROM tag WHERE arn = ?", arguments: [arn]) {
                tags[row["key"]] = row["value"] as String
            }
            return tags
        }
    }

    public func setTags(arn: String, _ tags: [String: String]) throws {
        try writing("tag \(arn)") { db in
            for (key, value) in tags.sorted(by: { $0.key < $1.key }) {
                try db.execute(
                    sql: "INSERT INTO tag(arn, key, value) VALUES (?, ?, ?) ON CONFLICT(arn, key) DO UPDATE SET value = excluded.value",
                    arguments: [arn, key, value])
            }
        }
    }

    public func removeTags(arn: String, keys: [String]) throws {
        try writing("untag \(arn)") { db in
            for key in keys {
                try db.execute(sql: "DELETE FROM tag WHERE arn = ? AND key = ?", arguments: [arn, key])
            }
        }
    }

    public func idempotentResponse(operation: String, token: String) throws -> (requestDigest: String, response: Data)? {
        try reading { db in
            try Row.fetchOne(
                db, sql: "SELECT requestDigest, response FROM idempotency WHERE operation = ? AND token = ?",
                arguments: [operation, token]
            ).map { ($0["requestDigest"], $0["response"]) }
        }
    }

    public func saveIdempotentResponse(operation: String, token: String, requestDigest: String, response: Data) throws {
        try writing("remember client token \(token)") { db in
            // AWS keeps a token for 8 hours.
            try db.execute(sql: "DELETE FROM idempotency WHERE createdAt < ?", arguments: [Int(Date().timeIntervalSince1970) - 8 * 3600])
            try db.execute(
                sql: "INSERT OR REPLACE INTO idempotency(operation, token, requestDigest, response, createdAt) VALUES (?, ?, ?, ?, ?)",
                arguments: [operation, token, requestDigest, response, Int(Date().timeIntervalSince1970)])
        }
    }

    static func resource(from row: Row) -> StoredResource? {
        guard let kind = ResourceKind(rawValue: row["kind"]) else { return nil }
        let version: String? = row["version"]
        return StoredResource(
            kind: kind, arn: row["arn"], name: row["name"], version: version.flatMap { try? SemanticVersion(parsing: $0) },
            build: row["build"], document: row["document"], dateCreated: row["dateCreated"])
    }

    // MARK: Build queue

    public func enqueue(imageArn: String, request: Data) throws -> Int64 {
        try writing("queue a build of \(imageArn)") { db in
            try db.execute(
                sql: "INSERT INTO build_queue(imageArn, request, state, enqueuedAt) VALUES (?, ?, 'queued', ?)",
                arguments: [imageArn, request, Int(Date().timeIntervalSince1970)])
            return db.lastInsertedRowID
        }
    }

    public func claimNext(owner: ProcessOwner, limit: Int) throws -> QueuedBuild? {
        let ownerText = String(decoding: try Self.encoder.encode(owner), as: UTF8.self)
        return try writing("take the next queued build") { db in
            let running = try Int.fetchOne(db, sql: "SELECT count(*) FROM build_queue WHERE state = 'running'") ?? 0
            guard running < limit,
                let row = try Row.fetchOne(db, sql: "SELECT * FROM build_queue WHERE state = 'queued' ORDER BY id LIMIT 1")
            else { return nil }
            let id: Int64 = row["id"]
            try db.execute(
                sql: "UPDATE build_queue SET state = 'running', owner = ?, startedAt = ? WHERE id = ?",
                arguments: [ownerText, Int(Date().timeIntervalSince1970), id])
            return QueuedBuild(id: id, imageArn: row["imageArn"], request: row["request"], state: .running, owner: owner)
        }
    }

    public func finish(id: Int64) throws {
        try writing("finish queued build \(id)") { db in
            try db.execute(sql: "UPDATE build_queue SET state = 'done' WHERE id = ?", arguments: [id])
        }
    }

    public func dequeue(imageArn: String) throws -> Bool {
        try writing("take \(imageArn) out of the queue") { db in
            try db.execute(sql: "UPDATE build_queue SET state = 'done' WHERE imageArn = ? AND state = 'queued'", arguments: [imageArn])
            return db.changesCount > 0
        }
    }

    public func entries(state: QueuedBuild.State) throws -> [QueuedBuild] {
        try reading { db in
            try Row.fetchAll(db, sql: "SELECT * FROM build_queue WHERE state = ? ORDER BY id", arguments: [state.rawValue]).map(Self.entry)
        }
    }

    public func releaseDeadOwners() throws -> [String] {
        try writing("release the builds of dead workers") { db in
            var released: [String] = []
            for entry in try Row.fetchAll(db, sql: "SELECT * FROM build_queue WHERE state = 'running'").map(Self.entry) {
                guard entry.owner.map({ !$0.isAlive }) ?? true else { continue }
                try db.execute(sql: "UPDATE build_queue SET state = 'done' WHERE id = ?", arguments: [entry.id])
                released.append(entry.imageArn)
            }
            return released
        }
    }

    static func entry(_ row: Row) -> QueuedBuild {
        let owner: String? = row["owner"]
        return QueuedBuild(
            id: row["id"], imageArn: row["imageArn"], request: row["request"],
            state: QueuedBuild.State(rawValue: row["state"]) ?? .done,
            owner: owner.flatMap { try? JSONDecoder().decode(ProcessOwner.self, from: Data($0.utf8)) })
    }

    // MARK: Webhook deliveries

    public func addDelivery(_ delivery: WebhookDelivery) throws {
        try writing("record a webhook delivery") { db in
            try db.execute(
                sql: "INSERT OR IGNORE INTO webhook_delivery(id, webhook, body, nextAttemptAt, createdAt) VALUES (?, ?, ?, ?, ?)",
                arguments: [delivery.id, delivery.webhook, delivery.body, 0, Int(Date().timeIntervalSince1970)])
        }
    }

    public func dueDeliveries(now: Int, limit: Int) throws -> [WebhookDelivery] {
        try reading { db in
            try Row.fetchAll(
                db,
                sql: "SELECT * FROM webhook_delivery WHERE deliveredAt IS NULL AND nextAttemptAt <= ? ORDER BY createdAt, id LIMIT ?",
                arguments: [now, limit]
            ).map(Self.delivery)
        }
    }

    public func recordAttempt(id: String, webhook: String, result: String, delivered: Bool, nextAttemptAt: Int?) throws {
        try writing("record a webhook attempt") { db in
            try db.execute(
                sql: """
                    UPDATE webhook_delivery SET attempts = attempts + 1, lastResult = ?, deliveredAt = ?, nextAttemptAt = ?
                    WHERE id = ? AND webhook = ?
                    """,
                arguments: [result, delivered ? Int(Date().timeIntervalSince1970) : nil, nextAttemptAt ?? Int.max, id, webhook])
        }
    }

    public func deliveries(webhook: String?) throws -> [WebhookDelivery] {
        try reading { db in
            try Row.fetchAll(
                db, sql: "SELECT * FROM webhook_delivery WHERE ? IS NULL OR webhook = ? ORDER BY createdAt, id",
                arguments: [webhook, webhook]
            ).map(Self.delivery)
        }
    }

    static func delivery(_ row: Row) -> WebhookDelivery {
        WebhookDelivery(
            id: row["id"], webhook: row["webhook"], body: row["body"], attempts: row["attempts"], lastResult: row["lastResult"],
            delivered: (row["deliveredAt"] as Int?) != nil)
    }

    // MARK: Import of older data directories

    /// Copies the `images/<name>/<version>/<build>/image.json` records of an older Kiln into
    /// the store, once; the files stay beside the logs. Temp files of dead writers go.
    func importJSONRecords() throws {
        let done = try reading { db in try String.fetchOne(db, sql: "SELECT value FROM meta WHERE key = 'json-records-imported'") }
        guard done == nil else { return }
        var imported: [(ImageRecord, Data, Int)] = []
        let manager = FileManager.default
        for name in (try? manager.contentsOfDirectory(atPath: imagesFolder)) ?? [] where !name.hasPrefix(".") {
            for version in (try? manager.contentsOfDirectory(atPath: "\(imagesFolder)/\(name)")) ?? [] where !version.hasPrefix(".") {
                let versions = "\(imagesFolder)/\(name)/\(version)"
                for build in (try? manager.contentsOfDirectory(atPath: versions)) ?? [] where Int(build) != nil {
                    let folder = "\(versions)/\(build)"
                    for file in (try? manager.contentsOfDirectory(atPath: folder)) ?? [] {
                        let dead =
                            ProcessOwner.owner(ofTemporaryName: file, prefix: DurableFile.temporaryPrefix).map { !$0.isAlive }
                            ?? (file == ".image.json.tmp")
                        if dead { unlink(folder + "/" + file) }
                    }
                    guard let data = manager.contents(atPath: folder + "/image.json"),
                        let record = try? JSONDecoder().decode(ImageRecord.self, from: data)
                    else { continue }
                    imported.append((record, try Self.encoder.encode(record), ChangeTime(of: folder + "/image.json")?.seconds ?? 0))
                }
            }
        }
        try writing("import the JSON image records of \(imagesFolder)") { db in
            for (record, data, changed) in imported {
                guard try Int.fetchOne(db, sql: "SELECT 1 FROM image WHERE arn = ?", arguments: [record.arn]) == nil else { continue }
                try Self.upsert(record, data: data, updatedAt: changed, in: db)
                try db.execute(
                    sql: """
                        INSERT INTO image_build_number(name, version, last) VALUES (?, ?, ?)
                        ON CONFLICT(name, version) DO UPDATE SET last = max(last, excluded.last)
                        """, arguments: [record.name, record.version.description, record.build])
            }
            try db.execute(
                sql: "INSERT INTO meta(key, value) VALUES ('json-records-imported', ?)",
                arguments: ["\(imported.count) records on \(ISO8601DateFormatter().string(from: Date()))"])
        }
    }

    // MARK: Access

    static var encoder: JSONEncoder {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return encoder
    }

    func reading<T>(_ body: (Database) throws -> T) throws -> T {
        do {
            return try pool.read(body)
        } catch let error as KilnError {
            throw error
        } catch {
            throw KilnError(.ioFailure, "cannot read Kiln's store \(path): \(error)", cause: error)
        }
    }

    func writing<T>(_ what: String, _ body: (Database) throws -> T) throws -> T {
        do {
            return try pool.write(body)
        } catch let error as KilnError {
            throw error
        } catch {
            throw KilnError(.ioFailure, "cannot \(what) in Kiln's store \(path): \(error)", cause: error)
        }
    }
}

extension ImageStatus {
    /// PENDING to INTEGRATING.
    static let allRunning: [ImageStatus] = [.pending, .creating, .building, .testing, .distributing, .integrating]
}
