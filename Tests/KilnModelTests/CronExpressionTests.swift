import Foundation
import Testing

@testable import KilnModel

private func utc(_ text: String) -> Date {
    let formatter = ISO8601DateFormatter()
    formatter.formatOptions = [.withInternetDateTime]
    guard let date = formatter.date(from: text) else { fatalError("bad test date \(text)") }
    return date
}

private func iso(_ dates: [Date]) -> [String] {
    let formatter = ISO8601DateFormatter()
    formatter.formatOptions = [.withInternetDateTime]
    return dates.map { formatter.string(from: $0) }
}

/// One row: an expression in a zone, a start, and the fires expected strictly after it.
struct FireCase: CustomTestStringConvertible, Sendable {
    let expression: String
    let zone: String?
    let from: String
    let expected: [String]
    var testDescription: String { "\(expression) \(zone ?? "UTC") after \(from)" }

    init(_ expression: String, _ zone: String? = nil, from: String, _ expected: [String]) {
        self.expression = expression
        self.zone = zone
        self.from = from
        self.expected = expected
    }
}

@Suite("Cron schedule expressions, AWS's six-field dialect (reference §4.1)")
struct CronExpressionTests {
    static let documented: [FireCase] = [
        FireCase("cron(0 10 * * ? *)", from: "2026-01-01T00:00:00Z", ["2026-01-01T10:00:00Z", "2026-01-02T10:00:00Z"]),
        FireCase("cron(15 12 * * ? *)", from: "2026-01-01T12:15:00Z", ["2026-01-02T12:15:00Z"]),
        FireCase("cron(0 10 ? * 2-6 *)", from: "2026-01-02T11:00:00Z", ["2026-01-05T10:00:00Z", "2026-01-06T10:00:00Z"]),
        FireCase("cron(0 18 ? * mon-fri *)", from: "2026-01-03T00:00:00Z", ["2026-01-05T18:00:00Z"]),
        FireCase("cron(0 8 1 * ? *)", from: "2026-01-01T08:00:00Z", ["2026-02-01T08:00:00Z", "2026-03-01T08:00:00Z"]),
        FireCase("cron(30 22 ? * tue#2 *)", from: "2026-01-01T00:00:00Z", ["2026-01-13T22:30:00Z", "2026-02-10T22:30:00Z"]),
    ]

    static let specials: [FireCase] = [
        // L: the month's last day, leap Februaries included.
        FireCase("cron(0 0 L * ? *)", from: "2026-01-01T00:00:00Z", ["2026-01-31T00:00:00Z", "2026-02-28T00:00:00Z"]),
        FireCase("cron(0 0 L 2 ? *)", from: "2027-03-01T00:00:00Z", ["2028-02-29T00:00:00Z", "2029-02-28T00:00:00Z"]),
        // LW: Jan 31 and Feb 28 2026 are Saturdays, May 31 a Sunday.
        FireCase(
            "cron(0 0 LW * ? *)", from: "2026-01-01T00:00:00Z", ["2026-01-30T00:00:00Z", "2026-02-27T00:00:00Z", "2026-03-31T00:00:00Z"]),
        FireCase("cron(0 0 LW 5 ? *)", from: "2026-01-01T00:00:00Z", ["2026-05-29T00:00:00Z"]),
        // nW: 1 Aug 2026 is a Saturday, so Monday the 3rd (never back into July).
        FireCase("cron(0 0 1W * ? *)", from: "2026-07-15T00:00:00Z", ["2026-08-03T00:00:00Z", "2026-09-01T00:00:00Z"]),
        // 15 Feb and 15 Mar 2026 are Sundays (→ Monday), 15 Aug a Saturday (→ Friday).
        FireCase(
            "cron(0 0 15W * ? *)", from: "2026-02-01T00:00:00Z", ["2026-02-16T00:00:00Z", "2026-03-16T00:00:00Z", "2026-04-15T00:00:00Z"]),
        FireCase("cron(0 0 15W 8 ? *)", from: "2026-01-01T00:00:00Z", ["2026-08-14T00:00:00Z"]),
        // 31W: 31 May 2026 is a Sunday → Friday 29; months without a 31st do not fire; 31 Oct is a Saturday.
        FireCase(
            "cron(0 0 31W * ? *)", from: "2026-05-01T00:00:00Z",
            ["2026-05-29T00:00:00Z", "2026-07-31T00:00:00Z", "2026-08-31T00:00:00Z", "2026-10-30T00:00:00Z"]),
        // #: the fifth Sunday exists only in some months.
        FireCase(
            "cron(0 0 ? * 1#5 *)", from: "2026-01-01T00:00:00Z", ["2026-03-29T00:00:00Z", "2026-05-31T00:00:00Z", "2026-08-30T00:00:00Z"]),
        FireCase("cron(0 0 ? * SUN#5 *)", from: "2026-01-01T00:00:00Z", ["2026-03-29T00:00:00Z"]),
        // nL: the month's last Friday; L alone is Saturday.
        FireCase(
            "cron(0 12 ? * 6L *)", from: "2026-01-01T00:00:00Z", ["2026-01-30T12:00:00Z", "2026-02-27T12:00:00Z", "2026-03-27T12:00:00Z"]),
        FireCase("cron(0 12 ? * friL *)", from: "2026-01-31T00:00:00Z", ["2026-02-27T12:00:00Z"]),
        FireCase("cron(0 12 ? * L *)", from: "2026-01-01T00:00:00Z", ["2026-01-03T12:00:00Z", "2026-01-10T12:00:00Z"]),
        // Names, any case, in lists and ranges.
        FireCase("cron(0 6 1 jan,JUL ? *)", from: "2026-01-02T00:00:00Z", ["2026-07-01T06:00:00Z", "2027-01-01T06:00:00Z"]),
        FireCase("cron(0 6 ? Nov-Dec Sat,sun *)", from: "2026-10-31T12:00:00Z", ["2026-11-01T06:00:00Z", "2026-11-07T06:00:00Z"]),
        // Steps: */n, a/n, a-b/n.
        FireCase(
            "cron(*/20 9-10 * * ? *)", from: "2026-01-01T09:30:00Z",
            ["2026-01-01T09:40:00Z", "2026-01-01T10:00:00Z", "2026-01-01T10:20:00Z", "2026-01-01T10:40:00Z", "2026-01-02T09:00:00Z"]),
        FireCase(
            "cron(5/15 * * * ? *)", from: "2026-01-01T00:00:00Z", ["2026-01-01T00:05:00Z", "2026-01-01T00:20:00Z", "2026-01-01T00:35:00Z"]),
        FireCase(
            "cron(0 0 1 */4 ? *)", from: "2026-01-02T00:00:00Z", ["2026-05-01T00:00:00Z", "2026-09-01T00:00:00Z", "2027-01-01T00:00:00Z"]),
        FireCase(
            "cron(0 0 1-10/3 1 ? 2026)", from: "2026-01-01T00:00:00Z",
            ["2026-01-04T00:00:00Z", "2026-01-07T00:00:00Z", "2026-01-10T00:00:00Z"]),
        // Years: a list, a step, a range that has ended, the last possible minute.
        FireCase("cron(0 0 1 1 ? 2027,2029)", from: "2026-01-01T00:00:00Z", ["2027-01-01T00:00:00Z", "2029-01-01T00:00:00Z"]),
        FireCase("cron(0 0 1 1 ? 2030/10)", from: "2026-01-01T00:00:00Z", ["2030-01-01T00:00:00Z", "2040-01-01T00:00:00Z"]),
        FireCase("cron(0 0 1 1 ? 2020-2025)", from: "2026-01-01T00:00:00Z", []),
        FireCase("cron(59 23 31 12 ? 2199)", from: "2199-01-01T00:00:00Z", ["2199-12-31T23:59:00Z"]),
        FireCase("cron(59 23 31 12 ? *)", from: "2199-12-31T23:59:00Z", []),
        // Leap years: the 29th of February from 2027 is in 2028, then 2032.
        FireCase("cron(0 0 29 2 ? *)", from: "2027-01-01T00:00:00Z", ["2028-02-29T00:00:00Z", "2032-02-29T00:00:00Z"]),
        // Strictly after: a start inside the firing minute still waits for the next one.
        FireCase("cron(* * * * ? *)", from: "2026-01-01T00:00:30Z", ["2026-01-01T00:01:00Z", "2026-01-01T00:02:00Z"]),
    ]

    static let daylightSaving: [FireCase] = [
        // New York springs forward on 8 Mar 2026 at 07:00Z: 02:30 EST does not exist and fires
        // at 03:30 EDT (07:30Z), once.
        FireCase("cron(30 2 * * ? *)", "America/New_York", from: "2026-03-07T12:00:00Z", ["2026-03-08T07:30:00Z", "2026-03-09T06:30:00Z"]),
        FireCase(
            "cron(30 2,3 * * ? *)", "America/New_York", from: "2026-03-08T05:00:00Z",
            ["2026-03-08T07:30:00Z", "2026-03-09T06:30:00Z", "2026-03-09T07:30:00Z"]),
        FireCase(
            "cron(0/20 2-3 * * ? *)", "America/New_York", from: "2026-03-08T05:00:00Z",
            ["2026-03-08T07:00:00Z", "2026-03-08T07:20:00Z", "2026-03-08T07:40:00Z", "2026-03-09T06:00:00Z"]),
        // Asked just after the jump, the skipped 02:50 is still ahead (03:50 EDT).
        FireCase("cron(50 2 * * ? *)", "America/New_York", from: "2026-03-08T07:05:00Z", ["2026-03-08T07:50:00Z"]),
        // New York falls back on 1 Nov 2026 at 06:00Z: 01:30 fires at 01:30 EDT only.
        FireCase("cron(30 1 * * ? *)", "America/New_York", from: "2026-10-31T12:00:00Z", ["2026-11-01T05:30:00Z", "2026-11-02T06:30:00Z"]),
        FireCase(
            "cron(*/30 * * * ? *)", "America/New_York", from: "2026-11-01T05:00:00Z",
            ["2026-11-01T05:30:00Z", "2026-11-01T07:00:00Z", "2026-11-01T07:30:00Z"]),
        FireCase("cron(*/30 * * * ? *)", "America/New_York", from: "2026-11-01T06:10:00Z", ["2026-11-01T07:00:00Z"]),
        // Berlin: 29 Mar 2026 01:00Z (02:00 CET → 03:00 CEST) and 25 Oct 2026 01:00Z (03:00 CEST → 02:00 CET).
        FireCase("cron(30 2 * * ? *)", "Europe/Berlin", from: "2026-03-28T12:00:00Z", ["2026-03-29T01:30:00Z", "2026-03-30T00:30:00Z"]),
        FireCase("cron(30 2 * * ? *)", "Europe/Berlin", from: "2026-10-24T12:00:00Z", ["2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"]),
        FireCase(
            "cron(0 9 ? * MON-FRI *)", "Europe/Berlin", from: "2026-03-27T00:00:00Z", ["2026-03-27T08:00:00Z", "2026-03-30T07:00:00Z"]),
        // Lord Howe jumps half an hour (02:00 → 02:30 at 15:30Z on 3 Oct 2026): the skipped 02:10
        // fires at 02:40 LHDT, after the 02:30 that follows the jump.
        FireCase(
            "cron(10,30 2 * * ? *)", "Australia/Lord_Howe", from: "2026-10-03T12:00:00Z",
            ["2026-10-03T15:30:00Z", "2026-10-03T15:40:00Z", "2026-10-04T15:10:00Z"]),
    ]

    @Test("The user guide's examples", arguments: documented)
    func documentedExamples(_ row: FireCase) throws { try check(row) }

    @Test("L, LW, W, #, nL, names, steps, years and leap days", arguments: specials)
    func specialCharacters(_ row: FireCase) throws { try check(row) }

    @Test(
        "Daylight saving: skipped wall times fire once after the jump, repeated ones at their first occurrence", arguments: daylightSaving)
    func daylightSavingRule(_ row: FireCase) throws { try check(row) }

    private func check(_ row: FireCase) throws {
        let expression = try CronExpression(parsing: row.expression, timezone: row.zone)
        #expect(iso(expression.nextFires(after: utc(row.from), count: row.expected.count)) == row.expected)
        if row.expected.isEmpty { #expect(expression.nextFire(after: utc(row.from)) == nil) }
    }

    @Test("A finished year list gives no more fires")
    func yearListRunsOut() throws {
        let expression = try CronExpression(parsing: "cron(0 0 1 1 ? 2027,2029)")
        #expect(
            iso(expression.nextFires(after: utc("2026-01-01T00:00:00Z"), count: 5)) == ["2027-01-01T00:00:00Z", "2029-01-01T00:00:00Z"])
    }

    @Test("The time zone defaults to UTC, Etc/UTC is the same, and equal expressions are equal")
    func zones() throws {
        let plain = try CronExpression(parsing: "cron(0 10 * * ? *)")
        #expect(plain.timeZone.secondsFromGMT(for: Date()) == 0)
        #expect(plain.text == "cron(0 10 * * ? *)")
        let etc = try CronExpression(parsing: "cron(0 10 * * ? *)", timezone: "Etc/UTC")
        #expect(etc.nextFire(after: utc("2026-06-01T00:00:00Z")) == utc("2026-06-01T10:00:00Z"))
        #expect(try CronExpression(parsing: "cron(0 10 * * ? *)", timezone: "UTC") == plain)
        let tokyo = try CronExpression(parsing: "cron(0 10 * * ? *)", timezone: "Asia/Tokyo")
        #expect(tokyo.nextFire(after: utc("2026-06-01T00:00:00Z")) == utc("2026-06-01T01:00:00Z"))
    }

    @Test("The zone table agrees with Foundation at 2,000 instants per zone, 1970–2199")
    func zoneTable() throws {
        for name in ["America/New_York", "Europe/Berlin", "Australia/Lord_Howe", "America/Sao_Paulo", "Asia/Kolkata", "Pacific/Apia"] {
            let zone = try #require(TimeZone(identifier: name))
            let table = try #require(ZoneOffsets.shared(named: name))
            var state: UInt64 = 0x9E37_79B9_7F4A_7C15
            for _ in 0..<2000 {
                state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
                let instant = Int((state >> 1) % 7_258_118_400)
                #expect(
                    table.offset(at: instant) == zone.secondsFromGMT(for: Date(timeIntervalSince1970: TimeInterval(instant))),
                    "\(name) at \(instant)")
            }
        }
    }

    static let refusals: [(String, String?, [String])] = [
        ("cron(0 9 1 * ?)", nil, ["Non-standard cron expressions are not supported", "use cron(0 9 1 * ? *)"]),
        ("0 9 * * 1", nil, ["Non-standard cron expressions are not supported", "use cron(0 9 ? * 2 *)"]),
        ("0 9 * * MON-FRI", nil, ["Non-standard cron expressions are not supported", "use cron(0 9 ? * MON-FRI *)"]),
        ("0 0 * * 0,6", nil, ["Non-standard", "use cron(0 0 ? * 1,7 *)"]),
        ("*/15 * * * *", nil, ["Non-standard", "use cron(*/15 * * * ? *)"]),
        ("0 0 1 * 1", nil, ["Non-standard", "cron(0 0 1 * ? *) and cron(0 0 ? * 2 *)", "either day field"]),
        ("cron(0 9 * * 1)", nil, ["Non-standard", "use cron(0 9 ? * 2 *)"]),
        ("0 10 * * ? *", nil, ["must be wrapped in cron(...)", "use cron(0 10 * * ? *)"]),
        (
            "cron(0 0 * * SUN *)", nil,
            ["exactly one of day-of-month (field 3) and day-of-week (field 5) must be '?'", "use cron(0 0 ? * SUN *)"]
        ),
        ("cron(0 0 1 * * *)", nil, ["must be '?'", "use cron(0 0 1 * ? *)"]),
        ("cron(0 0 1 * MON *)", nil, ["choose cron(0 0 1 * ? *) or cron(0 0 ? * MON *)"]),
        ("cron(0 0 ? * ? *)", nil, ["both day fields are '?'", "cron(0 0 * * ? *)"]),
        ("cron(60 0 * * ? *)", nil, ["minutes (field 1) '60': 60 is out of range", "0–59"]),
        ("cron(0 24 * * ? *)", nil, ["hours (field 2) '24'", "0–23"]),
        ("cron(0 0 32 * ? *)", nil, ["day-of-month (field 3) '32'", "1–31"]),
        ("cron(0 0 1 13 ? *)", nil, ["month (field 4) '13'", "1–12 or JAN–DEC"]),
        ("cron(0 0 ? * 0 *)", nil, ["day-of-week (field 5) '0': 0 is out of range", "1–7 or SUN–SAT (1 = Sunday)"]),
        ("cron(0 0 ? * 2-8 *)", nil, ["day-of-week (field 5) '2-8': 8 is out of range"]),
        ("cron(0 0 1 1 ? 2200)", nil, ["year (field 6) '2200'", "1970–2199"]),
        ("cron(0 0 ? * TUE#6 *)", nil, ["day-of-week (field 5) 'TUE#6'", "1 to 5"]),
        ("cron(0 0 ? * */2 *)", nil, ["steps ('/') are not allowed in day-of-week"]),
        ("cron(*/0 * * * ? *)", nil, ["minutes (field 1) '*/0'", "from 1 to 60"]),
        ("cron(5-1 * * * ? *)", nil, ["minutes (field 1) '5-1'", "runs backwards"]),
        ("cron(0 0 0W * ? *)", nil, ["day-of-month (field 3) '0W'"]),
        ("cron(0 0 L,15 * ? *)", nil, ["day-of-month (field 3) 'L,15'", "whole field"]),
        ("cron(0 0 ? * MON,5L *)", nil, ["day-of-week (field 5) 'MON,5L'"]),
        ("cron(0 0 ? JAN-FOO ? *)", nil, ["month (field 4) 'JAN-FOO'", "'FOO' is not a number or a name"]),
        ("cron(0,,5 0 * * ? *)", nil, ["minutes (field 1)", "empty item"]),
        ("cron(0  0 * * ? *)", nil, ["exactly one space", "cron(0 0 * * ? *)"]),
        ("cron(0 0 * * ? * *)", nil, ["has 7 fields", "six"]),
        (" cron(0 0 * * ? *)", nil, ["spaces before or after"]),
        ("CRON(0 0 * * ? *)", nil, ["lower case"]),
        ("cron(0 0 * * ? *", nil, ["closing ')'"]),
        ("cron(0 0 * * ? *)", "Mars/Olympus", ["time zone 'Mars/Olympus'", "America/New_York"]),
        ("cron(0 0 * * ? *)", "New York", ["time zone 'New York'", "America/New_York"]),
    ]

    @Test("Refusals say what is wrong, where, and what to write instead", arguments: refusals)
    func refusal(_ text: String, _ zone: String?, _ fragments: [String]) {
        let error = #expect(throws: KilnError.self) { try CronExpression(parsing: text, timezone: zone) }
        #expect(error?.code == .invalidArgument)
        for fragment in fragments {
            #expect(error?.message.contains(fragment) == true, "\(error?.message ?? "no error") lacks \(fragment)")
        }
    }

    @Test(
        "Rates: singular iff 1, and whole periods counted from the anchor",
        arguments: [
            ("rate(1 minute)", 60), ("rate(5 minutes)", 300), ("rate(1 hour)", 3600), ("rate(12 hours)", 43200), ("rate(1 day)", 86400),
            ("rate(7 days)", 604_800),
        ])
    func rates(_ text: String, _ seconds: Int) throws {
        #expect(try ScheduleExpression(parsing: text) == .rate(seconds: seconds, text: text))
    }

    @Test(
        "Rate refusals",
        arguments: [
            ("rate(1 minutes)", "use rate(1 minute)"), ("rate(5 hour)", "use rate(5 hours)"), ("rate(2 day)", "use rate(2 days)"),
            ("rate(0 days)", "from 1"), ("rate(5 weeks)", "unknown unit 'weeks'"), ("rate(+5 minutes)", "whole number"),
            ("rate(5  minutes)", "one space"), ("rate(5 minutes", "closing ')'"),
        ])
    func rateRefusals(_ text: String, _ fragment: String) {
        let error = #expect(throws: KilnError.self) { try ScheduleExpression(parsing: text) }
        #expect(error?.message.contains(fragment) == true, "\(error?.message ?? "no error")")
    }

    @Test("A rate fires at whole periods after its anchor; cron ignores the anchor")
    func rateFires() throws {
        let anchor = utc("2026-01-01T00:00:00Z")
        let rate = try ScheduleExpression(parsing: "rate(5 minutes)")
        #expect(rate.nextFire(after: utc("2026-01-01T00:12:00Z"), anchor: anchor) == utc("2026-01-01T00:15:00Z"))
        #expect(rate.nextFire(after: utc("2026-01-01T00:15:00Z"), anchor: anchor) == utc("2026-01-01T00:20:00Z"))
        #expect(rate.nextFire(after: utc("2025-12-31T00:00:00Z"), anchor: anchor) == utc("2026-01-01T00:05:00Z"))
        let cron = try ScheduleExpression(parsing: "cron(0 10 * * ? *)", timezone: "Europe/Berlin")
        #expect(cron.nextFire(after: utc("2026-01-01T00:00:00Z"), anchor: anchor) == utc("2026-01-01T09:00:00Z"))
        #expect(throws: KilnError.self) { try ScheduleExpression(parsing: "rate(5 minutes)", timezone: "Nowhere/Special") }
    }

    @Test("Far-apart fires are found by stepping fields, not minutes: 10,000 sparse expressions well under a second")
    func sparseIsFast() throws {
        let expressions = try (0..<10_000).map { index in
            try CronExpression(parsing: index % 2 == 0 ? "cron(0 0 29 2 ? *)" : "cron(59 23 ? * 6L 2199)", timezone: "America/New_York")
        }
        let from = utc("2026-01-01T00:00:00Z")
        let start = ContinuousClock.now
        let fires = expressions.compactMap { $0.nextFire(after: from) }
        #expect(fires.count == 10_000)
        #expect(ContinuousClock.now - start < .seconds(2))
    }
}
