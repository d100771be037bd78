import Foundation
import GRDB
import KilnModel

extension SQLiteStore {
    public func addEvent(_ event: PipelineEvent) throws -> Int64 {
        try writing("record a \(event.kind.rawValue) event of pipeline \(event.pipeline)") { db in
            if [.registryPush, .parentPoll].contains(event.kind),
                let pending = try Row.fetchOne(
                    db,
                    sql:
                        "SELECT id, detail FROM pipeline_event WHERE pipeline = ? AND kind = ? AND outcome = 'pending' ORDER BY id LIMIT 1",
                    arguments: [event.pipeline, event.kind.rawValue])
            {
                let id: Int64 = pending["id"]
                // The burst's newest push is what the build will see; the window stays where it began.
                try db.execute(
                    sql: "UPDATE pipeline_event SET count = count + ?, detail = ? WHERE id = ?",
                    arguments: [event.count, event.detail, id])
                return id
            }
            try db.execute(
                sql: """
                    INSERT INTO pipeline_event(pipeline, kind, receivedAt, dueAt, detail, count, outcome, reason, imageArn, resolved, packages)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                    """,
                arguments: [
                    event.pipeline, event.kind.rawValue, event.receivedAt, event.dueAt, event.detail, event.count, event.outcome.rawValue,
                    event.reason, event.imageArn, try Self.json(event.resolved), try Self.json(event.packages),
                ])
            return db.lastInsertedRowID
        }
    }

    public func dueEvents(now: Int) throws -> [PipelineEvent] {
        try reading { db in
            try Row.fetchAll(
                db, sql: "SELECT * FROM pipeline_event WHERE outcome = 'pending' AND dueAt <= ? ORDER BY dueAt, id", arguments: [now]
            ).map(Self.event)
        }
    }

    public func nextDueEvent() throws -> Int? {
        try reading { db in try Int.fetchOne(db, sql: "SELECT min(dueAt) FROM pipeline_event WHERE outcome = 'pending'") }
    }

    public func settle(id: Int64, outcome: PipelineEvent.Outcome, reason: String?, imageArn: String?, resolved: [String]?) throws {
        try writing("record what event \(id) did") { db in
            try db.execute(
                sql: "UPDATE pipeline_event SET outcome = ?, reason = ?, imageArn = ?, resolved = ? WHERE id = ?",
                arguments: [outcome.rawValue, reason, imageArn, try Self.json(resolved), id])
        }
    }

    public func events(pipeline: String, limit: Int) throws -> [PipelineEvent] {
        try reading { db in
            try Row.fetchAll(
                db, sql: "SELECT * FROM pipeline_event WHERE pipeline = ? ORDER BY id DESC LIMIT ?", arguments: [pipeline, limit]
            ).map(Self.event)
        }
    }

    public func unreviewedStarts() throws -> [PipelineEvent] {
        try reading { db in
            try Row.fetchAll(db, sql: "SELECT * FROM pipeline_event WHERE outcome = 'started' AND reviewed = 0 ORDER BY id").map(Self.event)
        }
    }

    public func markReviewed(id: Int64) throws {
        try writing("mark event \(id) reviewed") { db in
            try db.execute(sql: "UPDATE pipeline_event SET reviewed = 1 WHERE id = ?", arguments: [id])
        }
    }

    public func schedulerValue(_ key: String) throws -> String? {
        try reading { db in try String.fetchOne(db, sql: "SELECT value FROM scheduler_state WHERE key = ?", arguments: [key]) }
    }

    public func setSchedulerValue(_ key: String, _ value: String?) throws {
        try writing("save the scheduler's \(key)") { db in
            if let value {
                try db.execute(
                    sql: "INSERT INTO scheduler_state(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    arguments: [key, value])
            } else {
                try db.execute(sql: "DELETE FROM scheduler_state WHERE key = ?", arguments: [key])
            }
        }
    }

    /// Values whose key starts with `prefix`, in one read.
    public func schedulerValues(prefix: String) throws -> [String: String] {
        try reading { db in
            var values: [String: String] = [:]
            for row in try Row.fetchAll(
                db, sql: "SELECT key, value FROM scheduler_state WHERE substr(key, 1, ?) = ?", arguments: [prefix.count, prefix])
            {
                values[row["key"]] = row["value"]
            }
            return values
        }
    }

    /// Several values in one transaction (one sync for thousands of pipelines).
    public func setSchedulerValues(_ values: [String: String]) throws {
        guard !values.isEmpty else { return }
        try writing("save the scheduler's state") { db in
            for (key, value) in values {
                try db.execute(
                    sql: "INSERT INTO scheduler_state(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    arguments: [key, value])
            }
        }
    }

    static func json<T: Encodable>(_ value: T?) throws -> String? {
        guard let value else { return nil }
        return String(decoding: try encoder.encode(value), as: UTF8.self)
    }

    static func event(_ row: Row) -> PipelineEvent {
        func decoded<T: Decodable>(_ column: String) -> T? {
            (row[column] as String?).flatMap { try? JSONDecoder().decode(T.self, from: Data($0.utf8)) }
        }
        return PipelineEvent(
            id: row["id"], pipeline: row["pipeline"], kind: BuildTrigger.Kind(rawValue: row["kind"]) ?? .manual,
            receivedAt: row["receivedAt"], dueAt: row["dueAt"], detail: row["detail"], count: row["count"],
            outcome: PipelineEvent.Outcome(rawValue: row["outcome"]) ?? .skipped, reason: row["reason"], imageArn: row["imageArn"],
            resolved: decoded("resolved"), packages: decoded("packages"))
    }
}
