import Foundation
import Synchronization

/// An Image Builder schedule in AWS's six-field cron dialect (reference §4.1):
/// `cron(minutes hours day-of-month month day-of-week year)`, read in an IANA time zone.
///
/// Fields: minutes 0–59, hours 0–23, day-of-month 1–31 (`L`, `LW`, `nW`), month 1–12 or JAN–DEC,
/// day-of-week 1–7 or SUN–SAT with 1 = Sunday (`L` = Saturday, `nL` = the month's last day n,
/// `n#k` = its k-th), year 1970–2199. Exactly one of day-of-month and day-of-week is `?`.
/// `L`, `LW`, `nW`, `nL` and `n#k` stand alone in their field, as in Quartz, which AWS's dialect
/// follows; `nW` never leaves the month and does not fire in a month without day n.
///
/// Daylight saving: each matching wall-clock time fires once. A wall time that a spring-forward
/// skips fires at the same offset after the jump (02:30 on New York's spring-forward day fires at
/// 03:30 EDT, 07:30Z), and only once when another matching time lands on the same instant. A wall
/// time that a fall-back repeats fires only at its first occurrence (01:30 EDT, not 01:30 EST).
public struct CronExpression: Sendable, Hashable {
    /// The expression as given, `cron(...)` included.
    public let text: String
    public let timeZone: TimeZone

    private let minutes: UInt64
    private let hours: UInt64
    private let months: UInt64
    private let years: YearSet
    private let dayOfMonth: DayOfMonthRule
    private let dayOfWeek: DayOfWeekRule
    /// For each weekday of a month's first day (index 1–7), the days 1–31 that fall on the
    /// day-of-week field's weekdays; only used for a plain day-of-week list.
    private let weekdayDays: [UInt64]
    private let zone: ZoneOffsets

    public init(parsing text: String, timezone: String? = nil) throws {
        let fields = try CronSyntax.fields(of: text)
        let parser = CronFieldParser(expression: text)
        minutes = try parser.plainField(fields[0], .minutes)
        hours = try parser.plainField(fields[1], .hours)
        months = try parser.plainField(fields[3], .month)
        years = try parser.yearField(fields[5])
        let (dom, dow) = try parser.dayFields(fields)
        dayOfMonth = dom
        dayOfWeek = dow
        var table = [UInt64](repeating: 0, count: 8)
        if case .weekdays(let set) = dow {
            for first in 1...7 {
                for day in 1...31 where set & (1 << ((first - 1 + day - 1) % 7 + 1)) != 0 { table[first] |= 1 << day }
            }
        }
        weekdayDays = table
        zone = try CronSyntax.timeZone(timezone, expression: text)
        timeZone = zone.zone
        self.text = text
    }

    public static func == (lhs: CronExpression, rhs: CronExpression) -> Bool {
        lhs.text == rhs.text && lhs.timeZone.identifier == rhs.timeZone.identifier
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(text)
        hasher.combine(timeZone.identifier)
    }

    /// The first fire strictly after `date`, or nil when none is left (the year field ends at 2199).
    public func nextFire(after date: Date) -> Date? {
        let seconds = date.timeIntervalSince1970
        guard seconds < 7_258_118_400 else { return nil } // 2200-01-01, and NaN
        // Two days before 1970 still reach a first fire at 1970-01-01 in any zone.
        let earliest = Int(max(seconds, -172_800).rounded(.down)) + 1
        guard let fixed = zone.fixedOffset else { return nextFireAcrossTransitions(earliest: earliest) }
        return nextWall(atOrAfter: earliest + fixed).map { Date(timeIntervalSince1970: TimeInterval($0 - fixed)) }
    }

    public func nextFires(after date: Date, count: Int) -> [Date] {
        var fires: [Date] = []
        var cursor = date
        while fires.count < count, let next = nextFire(after: cursor) {
            fires.append(next)
            cursor = next
        }
        return fires
    }

    /// The zone has offset changes: walk wall times and map each to its instant (see the type's
    /// daylight-saving rule). `earliest` is the first acceptable instant in whole seconds.
    private func nextFireAcrossTransitions(earliest: Int) -> Date? {
        let offsetNow = zone.offset(at: earliest)
        let offsetBefore = zone.offset(at: earliest - ZoneOffsets.window)
        var start = earliest + offsetNow
        if offsetBefore < offsetNow {
            // Just after a spring-forward the skipped wall times still map to instants ahead.
            start = earliest + offsetBefore
        } else if offsetBefore > offsetNow, let transition = zone.transition(after: earliest - ZoneOffsets.window) {
            // In a repeated hour's second pass: its wall times already fired in the first.
            start = max(start, transition + offsetBefore)
        }
        while let wall = nextWall(atOrAfter: start) {
            let (instant, gap) = zone.instant(forWall: wall)
            guard instant >= earliest else {
                start = wall + 60
                continue
            }
            guard gap > 0 else { return Date(timeIntervalSince1970: TimeInterval(instant)) }
            // A skipped wall time fires late; a matching time just after the gap may come first.
            var best = instant
            var probe = wall + 60
            while let later = nextWall(atOrAfter: probe), later < wall + gap {
                let candidate = zone.instant(forWall: later).instant
                if candidate >= earliest, candidate < best { best = candidate }
                probe = later + 60
            }
            return Date(timeIntervalSince1970: TimeInterval(best))
        }
        return nil
    }

    /// The first matching wall-clock minute at or after `wall` (seconds since 1970 read as local
    /// time), stepping field by field.
    private func nextWall(atOrAfter wall: Int) -> Int? {
        let rounded = wall.roundedUp(toMultipleOf: 60)
        let days = rounded.floorDivided(by: 86400)
        let seconds = rounded - days * 86400
        var (year, month, day) = Civil.date(fromDays: days)
        var hour = seconds / 3600
        var minute = seconds % 3600 / 60
        while true {
            guard let nextYear = years.first(atOrAfter: year) else { return nil }
            if nextYear != year { (year, month, day, hour, minute) = (nextYear, 1, 1, 0, 0) }
            guard let nextMonth = months.firstBit(atOrAfter: month) else {
                (year, month, day, hour, minute) = (year + 1, 1, 1, 0, 0)
                continue
            }
            if nextMonth != month { (month, day, hour, minute) = (nextMonth, 1, 0, 0) }
            guard let nextDay = dayMask(year: year, month: month).firstBit(atOrAfter: day) else {
                (month, day, hour, minute) = (month + 1, 1, 0, 0)
                if month > 12 { (year, month) = (year + 1, 1) }
                continue
            }
            if nextDay != day { (day, hour, minute) = (nextDay, 0, 0) }
            guard let nextHour = hours.firstBit(atOrAfter: hour) else {
                (day, hour, minute) = (day + 1, 0, 0)
                continue
            }
            if nextHour != hour { (hour, minute) = (nextHour, 0) }
            guard let nextMinute = minutes.firstBit(atOrAfter: minute) else {
                (hour, minute) = (hour + 1, 0)
                continue
            }
            return Civil.days(year: year, month: month, day: day) * 86400 + hour * 3600 + nextMinute * 60
        }
    }

    /// Bits 1...31: the days of this month both day fields accept.
    private func dayMask(year: Int, month: Int) -> UInt64 {
        let length = Civil.daysIn(year: year, month: month)
        let all: UInt64 = ((1 << (length + 1)) - 1) & ~1
        let firstWeekday = Civil.weekday(days: Civil.days(year: year, month: month, day: 1))
        func weekday(_ day: Int) -> Int { (firstWeekday - 1 + day - 1) % 7 + 1 }
        var mask = all
        switch dayOfMonth {
        case .any: break
        case .days(let set): mask &= set
        case .last: mask = 1 << length
        case .lastWeekday:
            let last = weekday(length)
            mask = 1 << (last == 7 ? length - 1 : last == 1 ? length - 2 : length)
        case .nearestWeekday(let day):
            guard day <= length else { return 0 }
            switch weekday(day) {
            case 7: mask = 1 << (day == 1 ? 3 : day - 1)
            case 1: mask = 1 << (day == length ? day - 2 : day + 1)
            default: mask = 1 << day
            }
        }
        switch dayOfWeek {
        case .any: break
        case .weekdays: mask &= weekdayDays[firstWeekday]
        case .last(let target):
            mask &= 1 << (length - (weekday(length) - target + 7) % 7)
        case .nth(let target, let week):
            let day = 1 + (target - firstWeekday + 7) % 7 + 7 * (week - 1)
            mask = day <= length ? mask & (1 << day) : 0
        }
        return mask
    }
}

/// What a pipeline's `schedule.scheduleExpression` may hold: AWS's cron dialect, or a
/// `rate(value unit)` (reference §4.1; accepted for pipelines as EventBridge accepts it).
public enum ScheduleExpression: Sendable, Hashable {
    case cron(CronExpression)
    case rate(seconds: Int, text: String)

    public init(parsing text: String, timezone: String? = nil) throws {
        guard text.hasPrefix("rate(") else {
            self = .cron(try CronExpression(parsing: text, timezone: timezone))
            return
        }
        if let timezone { _ = try CronSyntax.timeZone(timezone, expression: text) }
        self = .rate(seconds: try Self.rateSeconds(text), text: text)
    }

    /// Next fire strictly after `date`; a rate counts whole periods from `anchor` (the pipeline's
    /// creation/update time).
    public func nextFire(after date: Date, anchor: Date) -> Date? {
        switch self {
        case .cron(let expression):
            return expression.nextFire(after: date)
        case .rate(let seconds, _):
            let elapsed = date.timeIntervalSince(anchor)
            let periods = max(1, Int((elapsed / Double(seconds)).rounded(.down)) + 1)
            return anchor.addingTimeInterval(Double(periods) * Double(seconds))
        }
    }

    private static func rateSeconds(_ text: String) throws -> Int {
        let usage = "write rate(1 minute), rate(N minutes), rate(1 hour), rate(N hours), rate(1 day) or rate(N days)"
        guard text.hasSuffix(")") else {
            throw KilnError(.invalidArgument, "rate expression '\(text)' is missing its closing ')': \(usage)")
        }
        let parts = text.dropFirst(5).dropLast().split(separator: " ", omittingEmptySubsequences: false)
        guard parts.count == 2, parts[0].allSatisfy({ $0.isASCII && $0.isNumber }), let value = Int(parts[0]) else {
            throw KilnError(.invalidArgument, "rate expression '\(text)' is not a whole number and a unit separated by one space: \(usage)")
        }
        guard value >= 1, value <= 1_000_000 else {
            throw KilnError(.invalidArgument, "rate expression '\(text)': the value must be from 1 to 1000000 (\(value) given)")
        }
        let units: [(String, Int)] = [("minute", 60), ("hour", 3600), ("day", 86400)]
        let unit = String(parts[1])
        guard let (singular, seconds) = units.first(where: { unit == $0.0 || unit == $0.0 + "s" }) else {
            throw KilnError(.invalidArgument, "rate expression '\(text)': unknown unit '\(unit)'; \(usage)")
        }
        let expected = value == 1 ? singular : singular + "s"
        guard unit == expected else {
            let rule = value == 1 ? "a value of 1 takes the singular unit" : "a value other than 1 takes the plural unit"
            throw KilnError(.invalidArgument, "rate expression '\(text)': \(rule); use rate(\(value) \(expected))")
        }
        return value * seconds
    }
}

// MARK: - Day rules

private enum DayOfMonthRule: Sendable, Hashable {
    case any
    case days(UInt64)
    case last
    case lastWeekday
    case nearestWeekday(Int)
}

private enum DayOfWeekRule: Sendable, Hashable {
    case any
    case weekdays(UInt64)
    case last(Int)
    case nth(Int, Int)
}

/// Years 1970–2199, one bit each.
private struct YearSet: Sendable, Hashable {
    static let range = 1970...2199
    static let all = YearSet(words: [.max, .max, .max, (1 << (range.count - 192)) - 1])
    var words: [UInt64] = [0, 0, 0, 0]

    mutating func insert(_ year: Int) {
        let index = year - Self.range.lowerBound
        words[index / 64] |= 1 << (index % 64)
    }

    func first(atOrAfter year: Int) -> Int? {
        var index = max(0, year - Self.range.lowerBound)
        while index / 64 < words.count {
            if let bit = words[index / 64].firstBit(atOrAfter: index % 64) {
                return Self.range.lowerBound + (index / 64) * 64 + bit
            }
            index = (index / 64 + 1) * 64
        }
        return nil
    }
}

extension UInt64 {
    fileprivate func firstBit(atOrAfter bit: Int) -> Int? {
        guard bit < 64 else { return nil }
        let rest = self & (UInt64.max << bit)
        return rest == 0 ? nil : rest.trailingZeroBitCount
    }
}

extension Int {
    fileprivate func floorDivided(by divisor: Int) -> Int {
        let quotient = self / divisor
        return self % divisor < 0 ? quotient - 1 : quotient
    }

    fileprivate func roundedUp(toMultipleOf step: Int) -> Int {
        -((-self).floorDivided(by: step)) * step
    }
}

/// Proleptic Gregorian arithmetic on days since 1970-01-01, so the search needs no Calendar.
private enum Civil {
    static func days(year: Int, month: Int, day: Int) -> Int {
        let y = month <= 2 ? year - 1 : year
        let era = y.floorDivided(by: 400)
        let yearOfEra = y - era * 400
        let dayOfYear = (153 * (month + (month > 2 ? -3 : 9)) + 2) / 5 + day - 1
        let dayOfEra = yearOfEra * 365 + yearOfEra / 4 - yearOfEra / 100 + dayOfYear
        return era * 146097 + dayOfEra - 719468
    }

    static func date(fromDays days: Int) -> (year: Int, month: Int, day: Int) {
        let shifted = days + 719468
        let era = shifted.floorDivided(by: 146097)
        let dayOfEra = shifted - era * 146097
        let yearOfEra = (dayOfEra - dayOfEra / 1460 + dayOfEra / 36524 - dayOfEra / 146096) / 365
        let dayOfYear = dayOfEra - (365 * yearOfEra + yearOfEra / 4 - yearOfEra / 100)
        let monthIndex = (5 * dayOfYear + 2) / 153
        let day = dayOfYear - (153 * monthIndex + 2) / 5 + 1
        let month = monthIndex < 10 ? monthIndex + 3 : monthIndex - 9
        return (yearOfEra + era * 400 + (month <= 2 ? 1 : 0), month, day)
    }

    /// 1 = Sunday … 7 = Saturday; 1970-01-01 was a Thursday.
    static func weekday(days: Int) -> Int { ((days + 4) % 7 + 7) % 7 + 1 }

    static func daysIn(year: Int, month: Int) -> Int {
        switch month {
        case 2: return year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) ? 29 : 28
        case 4, 6, 9, 11: return 30
        default: return 31
        }
    }
}

// MARK: - Time zones

/// A zone's UTC offsets from 1969 to 2201 as a sorted table of transitions, built once per zone
/// from Foundation, so the search does not call into ICU for every candidate.
final class ZoneOffsets: Sendable {
    /// Longer than any daylight-saving shift: transitions are looked for this far around a time.
    static let window = 3 * 3600
    private static let cache = Mutex<[String: ZoneOffsets]>([:])
    private static let tableStart = -31_536_000 // 1969-01-01
    private static let tableEnd = 7_289_654_400 // 2201-01-01

    let zone: TimeZone
    /// Instants where the offset changes; `offsets[i]` holds before `transitions[i]`.
    let transitions: [Int]
    let offsets: [Int]
    /// The offset when the zone never changes it between 1969 and 2201.
    var fixedOffset: Int? { transitions.isEmpty ? offsets[0] : nil }

    static let utc = ZoneOffsets(TimeZone(identifier: "UTC")!)

    /// The table of an IANA zone (the API's pattern, then Foundation's list), built once per name.
    static func shared(named name: String) -> ZoneOffsets? {
        if let known = cache.withLock({ $0[name] }) { return known }
        guard isZoneName(name), let zone = TimeZone(identifier: name) else { return nil }
        let built = ZoneOffsets(zone)
        return cache.withLock { cache in
            if let known = cache[name] { return known }
            cache[name] = built
            return built
        }
    }

    /// `[a-zA-Z0-9]{2,}(?:/[a-zA-Z0-9-_+]+)*`, 3–100 characters, as the API's `timezone` member.
    private static func isZoneName(_ name: String) -> Bool {
        let parts = name.utf8.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: false)
        func alphanumeric(_ byte: UInt8) -> Bool {
            (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(byte | 0x20) || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte)
        }
        guard (3...100).contains(name.utf8.count), let first = parts.first, first.count >= 2, first.allSatisfy(alphanumeric) else {
            return false
        }
        return parts.dropFirst().allSatisfy { part in
            !part.isEmpty && part.allSatisfy { alphanumeric($0) || "-_+".utf8.contains($0) }
        }
    }

    init(_ zone: TimeZone) {
        self.zone = zone
        var transitions: [Int] = []
        var offsets = [zone.secondsFromGMT(for: Date(timeIntervalSince1970: TimeInterval(Self.tableStart)))]
        var cursor = Date(timeIntervalSince1970: TimeInterval(Self.tableStart))
        while let next = zone.nextDaylightSavingTimeTransition(after: cursor), next > cursor,
            next.timeIntervalSince1970 < TimeInterval(Self.tableEnd)
        {
            let offset = zone.secondsFromGMT(for: next)
            if offset != offsets.last {
                transitions.append(Int(next.timeIntervalSince1970.rounded(.down)))
                offsets.append(offset)
            }
            cursor = next
        }
        self.transitions = transitions
        self.offsets = offsets
    }

    func offset(at instant: Int) -> Int {
        if transitions.isEmpty { return offsets[0] }
        guard instant >= Self.tableStart, instant < Self.tableEnd else {
            return zone.secondsFromGMT(for: Date(timeIntervalSince1970: TimeInterval(instant)))
        }
        return offsets[firstTransitionIndex(after: instant)]
    }

    /// The first offset change strictly after `instant`.
    func transition(after instant: Int) -> Int? {
        let index = firstTransitionIndex(after: instant)
        return index < transitions.count ? transitions[index] : nil
    }

    private func firstTransitionIndex(after instant: Int) -> Int {
        var low = 0
        var high = transitions.count
        while low < high {
            let middle = (low + high) / 2
            if transitions[middle] > instant { high = middle } else { low = middle + 1 }
        }
        return low
    }

    /// The instant a wall-clock time fires at: its first occurrence when a fall-back repeats it,
    /// the offset before the jump when a spring-forward skips it (then `gap` is the jump's size).
    func instant(forWall wall: Int) -> (instant: Int, gap: Int) {
        let guess = wall - offset(at: wall - offset(at: wall))
        let before = offset(at: guess - Self.window)
        let after = offset(at: guess + Self.window)
        if before == after { return (wall - before, 0) }
        let early = wall - before
        let late = wall - after
        let earlyValid = offset(at: early) == before
        let lateValid = offset(at: late) == after
        switch (earlyValid, lateValid) {
        case (true, true): return (min(early, late), 0)
        case (true, false): return (early, 0)
        case (false, true): return (late, 0)
        case (false, false): return (early, after - before)
        }
    }
}

// MARK: - Parsing

private enum CronSyntax {
    static let usage = "cron(minutes hours day-of-month month day-of-week year)"

    /// The six fields inside `cron(...)`, or an error that says how to write them.
    static func fields(of text: String) throws -> [Substring] {
        if let first = text.first, let last = text.last, first.isWhitespace || last.isWhitespace {
            let trimmed = text.trimmingCharacters(in: .whitespaces)
            throw KilnError(.invalidArgument, "cron expression '\(text)' has spaces before or after it; remove them: '\(trimmed)'")
        }
        guard text.hasPrefix("cron(") else {
            if text.lowercased().hasPrefix("cron(") {
                throw KilnError(.invalidArgument, "cron expression '\(text)': write 'cron(' in lower case: cron\(text.dropFirst(4))")
            }
            if text.hasPrefix("rate(") {
                throw KilnError(.invalidArgument, "'\(text)' is a rate expression; this schedule takes a cron expression, \(usage)")
            }
            let bare = text.split(separator: " ", omittingEmptySubsequences: false)
            if bare.count == 5, !bare.contains(where: { $0.isEmpty }) {
                throw KilnError(.invalidArgument, nonStandard(text, fields: bare, unix: true))
            }
            if bare.count == 6, !bare.contains(where: { $0.isEmpty }) {
                let wrapped = "cron(\(text))"
                let fix = (try? CronExpression(parsing: wrapped)) != nil ? "use \(wrapped)" : "wrap the six fields as \(usage)"
                throw KilnError(.invalidArgument, "cron expression '\(text)' must be wrapped in cron(...): \(fix)")
            }
            throw KilnError(
                .invalidArgument, "schedule expression '\(text)' is not a cron expression: write \(usage), e.g. cron(0 10 * * ? *)")
        }
        guard text.hasSuffix(")"), text.count > 5 else {
            throw KilnError(.invalidArgument, "cron expression '\(text)' is missing its closing ')': write \(usage)")
        }
        let inner = text.dropFirst(5).dropLast()
        if inner.isEmpty { throw KilnError(.invalidArgument, "cron expression '\(text)' has no fields: write \(usage)") }
        let fields = inner.split(separator: " ", omittingEmptySubsequences: false)
        if fields.contains(where: { $0.isEmpty }) {
            let single = "cron(" + inner.split(separator: " ").joined(separator: " ") + ")"
            throw KilnError(
                .invalidArgument, "cron expression '\(text)': fields are separated by exactly one space, with none at the ends: \(single)")
        }
        if inner.utf8.contains(where: { (9...13).contains($0) }) {
            throw KilnError(
                .invalidArgument,
                "cron expression '\(text)' contains a tab or another whitespace character; separate fields with single spaces")
        }
        switch fields.count {
        case 6: return fields
        case 5: throw KilnError(.invalidArgument, nonStandard(text, fields: fields, unix: false))
        default:
            throw KilnError(
                .invalidArgument,
                "cron expression '\(text)' has \(fields.count) field\(fields.count == 1 ? "" : "s"); Image Builder takes six: \(usage)")
        }
    }

    /// AWS's refusal of five-field cron, with the six-field form to use. Inside `cron(...)` the
    /// five fields are taken as AWS fields missing the year when they follow the `?` rule, and as
    /// unix cron otherwise.
    static func nonStandard(_ text: String, fields: [Substring], unix bare: Bool) -> String {
        let head = "Non-standard cron expressions are not supported: '\(text)' has five fields"
        let awsStyle = !bare && (fields[2] == "?") != (fields[4] == "?")
        var candidates: [String] = []
        var note = ""
        if awsStyle {
            candidates = ["cron(\(fields.joined(separator: " ")) *)"]
        } else if let days = unixDaysOfWeek(fields[4]) {
            let prefix = "\(fields[0]) \(fields[1])"
            switch (fields[2] == "*", days == "*") {
            case (_, true): candidates = ["cron(\(prefix) \(fields[2]) \(fields[3]) ? *)"]
            case (true, false): candidates = ["cron(\(prefix) ? \(fields[3]) \(days) *)"]
            case (false, false):
                note = "; unix cron fires when either day field matches, which one AWS expression cannot say, so use two pipelines"
                candidates = ["cron(\(prefix) \(fields[2]) \(fields[3]) ? *)", "cron(\(prefix) ? \(fields[3]) \(days) *)"]
            }
        }
        let valid = candidates.filter { (try? CronExpression(parsing: $0)) != nil }
        guard !valid.isEmpty, valid.count == candidates.count else {
            return "\(head); Image Builder takes six: \(usage), with '?' in day-of-month or day-of-week and day-of-week 1–7 from Sunday"
        }
        let reading =
            bare || !awsStyle
            ? " (read as unix cron: days of the week become 1–7 from Sunday, '?' goes in the unused day field, and a year field is added)"
            : " (a year field is missing)"
        return "\(head)\(reading)\(note); use \(valid.joined(separator: " and "))"
    }

    /// A unix day-of-week field (0–7, 0 and 7 = Sunday, names, ranges, steps) in AWS numbering.
    static func unixDaysOfWeek(_ field: Substring) -> String? {
        if field == "*" { return "*" }
        let names = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"]
        func value(_ token: Substring) -> Int? {
            if let number = Int(token), (0...7).contains(number) { return number }
            return names.firstIndex(of: token.uppercased())
        }
        var days = Set<Int>()
        for item in field.split(separator: ",", omittingEmptySubsequences: false) {
            let parts = item.split(separator: "/", omittingEmptySubsequences: false)
            guard parts.count <= 2 else { return nil }
            let step = parts.count == 2 ? Int(parts[1]) : 1
            guard let step, step >= 1 else { return nil }
            let bounds = parts[0].split(separator: "-", omittingEmptySubsequences: false)
            var low: Int
            var high: Int
            if parts[0] == "*" {
                (low, high) = (0, 6)
            } else if bounds.count == 1, let single = value(bounds[0]) {
                (low, high) = (single, parts.count == 2 ? 6 : single)
            } else if bounds.count == 2, let first = value(bounds[0]), let last = value(bounds[1]), first <= last {
                (low, high) = (first, last)
            } else {
                return nil
            }
            for day in stride(from: low, through: high, by: step) { days.insert(day % 7 + 1) }
        }
        if days.count == 7 { return "*" }
        let usesNames = field.contains { $0.isLetter }
        let sorted = days.sorted()
        var runs: [String] = []
        var index = 0
        while index < sorted.count {
            var end = index
            while end + 1 < sorted.count, sorted[end + 1] == sorted[end] + 1 { end += 1 }
            func show(_ day: Int) -> String { usesNames ? names[day - 1] : String(day) }
            runs.append(
                end - index >= 2
                    ? "\(show(sorted[index]))-\(show(sorted[end]))" : (index...end).map { show(sorted[$0]) }.joined(separator: ","))
            index = end + 1
        }
        return runs.joined(separator: ",")
    }

    static func timeZone(_ name: String?, expression: String) throws -> ZoneOffsets {
        guard let name else { return ZoneOffsets.utc }
        guard let zone = ZoneOffsets.shared(named: name) else {
            throw KilnError(
                .invalidArgument,
                "time zone '\(name)' for schedule '\(expression)' is not a known IANA time zone; give a name such as America/New_York, Europe/Berlin or Etc/UTC"
            )
        }
        return zone
    }
}

private enum CronField: String {
    case minutes, hours, dayOfMonth = "day-of-month", month, dayOfWeek = "day-of-week", year

    var position: Int {
        switch self {
        case .minutes: 1
        case .hours: 2
        case .dayOfMonth: 3
        case .month: 4
        case .dayOfWeek: 5
        case .year: 6
        }
    }

    var range: ClosedRange<Int> {
        switch self {
        case .minutes: 0...59
        case .hours: 0...23
        case .dayOfMonth: 1...31
        case .month: 1...12
        case .dayOfWeek: 1...7
        case .year: YearSet.range
        }
    }

    private static let monthNames = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]
    private static let dayNames = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"]

    var names: [String] {
        switch self {
        case .month: Self.monthNames
        case .dayOfWeek: Self.dayNames
        default: []
        }
    }

    var allowedValues: String {
        switch self {
        case .month: "1–12 or JAN–DEC"
        case .dayOfWeek: "1–7 or SUN–SAT (1 = Sunday)"
        default: "\(range.lowerBound)–\(range.upperBound)"
        }
    }

    var specials: String {
        switch self {
        case .dayOfMonth: ", - * ? / L W"
        case .dayOfWeek: ", - * ? L #"
        default: ", - * /"
        }
    }
}

private struct CronFieldParser {
    let expression: String

    func failure(_ field: CronField, _ token: some StringProtocol, _ problem: String) -> KilnError {
        KilnError(
            .invalidArgument,
            "cron expression '\(expression)': \(field.rawValue) (field \(field.position)) '\(token)': \(problem); \(field.rawValue) takes \(field.allowedValues) and the special characters \(field.specials)"
        )
    }

    func value(_ token: Substring, _ field: CronField, in item: Substring) throws -> Int {
        if !token.isEmpty, token.utf8.allSatisfy({ (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) }) {
            guard token.count <= 4, let number = Int(token), field.range.contains(number) else {
                throw failure(field, item, "\(token) is out of range")
            }
            return number
        }
        if let index = field.names.firstIndex(of: token.uppercased()) { return index + 1 }
        if token.isEmpty { throw failure(field, item, "a value is missing") }
        if token == "?" { throw failure(field, item, "'?' must be the whole field") }
        if "LW#".contains(where: { token.contains($0) }) {
            throw failure(field, item, "'\(token)' is not allowed here (L, W and # stand alone, and only in the day fields)")
        }
        throw failure(field, item, "'\(token)' is not a number\(field.names.isEmpty ? "" : " or a name")")
    }

    /// A field of `, - * /` items as a bit set of its values.
    func plainField(_ text: Substring, _ field: CronField, steps: Bool = true) throws -> UInt64 {
        if text == "*" { return (UInt64.max >> (63 - field.range.upperBound)) & (UInt64.max << field.range.lowerBound) }
        var mask: UInt64 = 0
        for value in try values(text, field, steps: steps) { mask |= 1 << value }
        return mask
    }

    func yearField(_ text: Substring) throws -> YearSet {
        var set = YearSet()
        if text == "*" { return YearSet.all }
        for year in try values(text, .year, steps: true) { set.insert(year) }
        return set
    }

    func values(_ text: Substring, _ field: CronField, steps: Bool) throws -> [Int] {
        if text == "?" {
            throw failure(field, text, "'?' is only for day-of-month or day-of-week")
        }
        var result: [Int] = []
        for item in text.split(separator: ",", omittingEmptySubsequences: false) {
            if item.isEmpty { throw failure(field, text, "the list has an empty item") }
            let parts = item.split(separator: "/", omittingEmptySubsequences: false)
            guard parts.count <= 2 else { throw failure(field, item, "more than one '/'") }
            var step = 1
            if parts.count == 2 {
                guard steps else { throw failure(field, item, "steps ('/') are not allowed in \(field.rawValue); list the values instead") }
                let span = field.range.count
                guard let given = Int(parts[1]), parts[1].allSatisfy({ $0.isASCII && $0.isNumber }), given >= 1, given <= span else {
                    throw failure(field, item, "the step after '/' must be a whole number from 1 to \(span)")
                }
                step = given
            }
            let base = parts[0]
            var low: Int
            var high: Int
            if base == "*" {
                (low, high) = (field.range.lowerBound, field.range.upperBound)
            } else {
                let bounds = base.split(separator: "-", omittingEmptySubsequences: false)
                guard bounds.count <= 2 else { throw failure(field, item, "a range has one '-'") }
                low = try value(bounds[0], field, in: item)
                high = bounds.count == 2 ? try value(bounds[1], field, in: item) : (parts.count == 2 ? field.range.upperBound : low)
                guard low <= high else {
                    throw failure(field, item, "the range runs backwards; write it as a list of two ranges, or swap its ends")
                }
            }
            result.append(contentsOf: stride(from: low, through: high, by: step))
        }
        return result
    }

    /// Day-of-month and day-of-week together, since exactly one of them must be `?`.
    func dayFields(_ fields: [Substring]) throws -> (DayOfMonthRule, DayOfWeekRule) {
        let (dom, dow) = (fields[2], fields[4])
        func with(_ newDom: Substring, _ newDow: Substring) -> String {
            "cron(\(fields[0]) \(fields[1]) \(newDom) \(fields[3]) \(newDow) \(fields[5]))"
        }
        let rule = "exactly one of day-of-month (field 3) and day-of-week (field 5) must be '?'"
        switch (dom == "?", dow == "?") {
        case (true, true):
            throw KilnError(
                .invalidArgument, "cron expression '\(expression)': both day fields are '?'; \(rule); for every day use \(with("*", "?"))")
        case (false, false):
            let fix: String
            if dom == "*" {
                fix = "use \(with("?", dow))"
            } else if dow == "*" {
                fix = "use \(with(dom, "?"))"
            } else {
                fix = "AWS cannot combine the two, so choose \(with(dom, "?")) or \(with("?", dow))"
            }
            throw KilnError(
                .invalidArgument, "cron expression '\(expression)': day-of-month is '\(dom)' and day-of-week is '\(dow)'; \(rule); \(fix)")
        case (true, false):
            return (.any, try dayOfWeekRule(dow))
        case (false, true):
            return (try dayOfMonthRule(dom), .any)
        }
    }

    /// Whether a day field holds one of the letters of `L`, `W` or `#` (names use none of them
    /// but W in WED), so the common plain fields skip the special forms.
    private func hasSpecial(_ text: Substring, allowingWED: Bool) -> Bool {
        text.utf8.contains { byte in
            switch byte | 0x20 {
            case UInt8(ascii: "l"), UInt8(ascii: "#") | 0x20: true
            case UInt8(ascii: "w"): !allowingWED
            default: false
            }
        }
    }

    func dayOfMonthRule(_ text: Substring) throws -> DayOfMonthRule {
        if text == "*" { return .any }
        guard hasSpecial(text, allowingWED: false) else { return .days(try plainField(text, .dayOfMonth)) }
        let upper = text.uppercased()
        if upper == "L" { return .last }
        if upper == "LW" { return .lastWeekday }
        if upper.hasSuffix("W") {
            let day = upper.dropLast()
            guard !day.isEmpty, day.allSatisfy({ $0.isASCII && $0.isNumber }) else {
                throw failure(.dayOfMonth, text, "'W' follows a single day, as in 15W, or L, as in LW")
            }
            guard let number = Int(day), CronField.dayOfMonth.range.contains(number) else {
                throw failure(.dayOfMonth, text, "\(day) is out of range")
            }
            return .nearestWeekday(number)
        }
        if upper.contains(where: { $0 == "L" || $0 == "W" }) {
            throw failure(.dayOfMonth, text, "L, LW and nW must be the whole field (L-n offsets and lists with L or W are not supported)")
        }
        throw failure(.dayOfMonth, text, "'#' is only for day-of-week, as in 3#2")
    }

    func dayOfWeekRule(_ text: Substring) throws -> DayOfWeekRule {
        if text == "*" { return .any }
        guard hasSpecial(text, allowingWED: true) else { return .weekdays(try plainField(text, .dayOfWeek, steps: false)) }
        let upper = text.uppercased()
        if upper == "L" { return .weekdays(1 << 7) }
        let isList = upper.contains { $0 == "," || $0 == "-" }
        if let hash = upper.firstIndex(of: "#") {
            guard !isList else {
                throw failure(.dayOfWeek, text, "'#' takes one day, as in 3#2 or TUE#2, and must be the whole field")
            }
            let day = try value(upper[..<hash], .dayOfWeek, in: text)
            let week = upper[upper.index(after: hash)...]
            guard week.allSatisfy({ $0.isASCII && $0.isNumber }), let number = Int(week), (1...5).contains(number) else {
                throw failure(.dayOfWeek, text, "the week after '#' must be 1 to 5")
            }
            return .nth(day, number)
        }
        if upper.hasSuffix("L"), !isList {
            return .last(try value(upper.dropLast(), .dayOfWeek, in: text))
        }
        if upper.hasSuffix("L") {
            throw failure(.dayOfWeek, text, "'L' after a day takes one day, as in 6L (last Friday), and must be the whole field")
        }
        return .weekdays(try plainField(text, .dayOfWeek, steps: false))
    }
}
