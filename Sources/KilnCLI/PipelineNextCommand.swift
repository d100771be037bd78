import ArgumentParser
import Foundation
import KilnModel
import KilnServer

/// `kiln pipeline next`: when a schedule fires next, read from a kiln server's pipeline or from
/// an expression given on the command line.
struct PipelineNextCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "next",
        abstract: "Print a pipeline's next scheduled runs, in UTC and in its time zone.",
        discussion: """
            From a kiln server:  kiln pipeline next NAME --endpoint URL
            Offline:             kiln pipeline next --expression 'cron(0 9 ? * MON-FRI *)' --timezone Europe/Berlin
            """
    )

    @Argument(help: "The pipeline's name or ARN (needs --endpoint).")
    var pipeline: String?

    @Option(
        name: .long,
        help: "A schedule expression to read instead of a pipeline's, like 'cron(0 10 * * ? *)' (a rate(...) counts from --from).")
    var expression: String?

    @Option(name: .long, help: "The IANA time zone of --expression (default: UTC).")
    var timezone: String?

    @Option(name: .long, help: "Count fires strictly after this ISO-8601 time (default: now).")
    var from: String?

    @Option(name: .long, help: "How many fires to print.")
    var count = 5

    @Option(name: .long, help: .hidden)
    var expressionsFile: String?

    @OptionGroup var options: KilnOptions
    @OptionGroup var remote: RemoteOptions

    func validate() throws {
        guard count >= 1, count <= 10_000 else { throw ValidationError("--count must be from 1 to 10000") }
        let sources = [pipeline != nil, expression != nil, expressionsFile != nil].filter { $0 }.count
        guard sources == 1 else {
            throw ValidationError("give one of: a pipeline NAME (with --endpoint), --expression 'cron(...)', or --expressions-file FILE")
        }
        if timezone != nil, expression == nil { throw ValidationError("--timezone goes with --expression") }
    }

    func run() async throws {
        try await KilnEnvironment.reportingErrors {
            let start = try from.map { try Self.date($0, option: "--from") } ?? Date()
            if let expressionsFile {
                try Self.benchmark(file: expressionsFile, from: start)
            } else if let expression {
                let schedule = try ScheduleExpression(parsing: expression, timezone: timezone)
                let zone = Self.zone(of: schedule, named: timezone)
                print("\(expression) in \(timezone ?? "UTC")")
                Self.printFires(schedule, zone: zone, after: start, anchor: start, count: count)
            } else if let pipeline {
                try await remoteSchedule(pipeline, after: start)
            }
        }
    }

    private func remoteSchedule(_ pipeline: String, after start: Date) async throws {
        guard let endpoint = remote.resolvedEndpoint() else {
            throw KilnError(
                .invalidArgument,
                "kiln pipeline next NAME reads the pipeline from a kiln server: give --endpoint URL or set KILN_ENDPOINT (or use --expression 'cron(...)' offline)"
            )
        }
        let configuration = try KilnEnvironment.configurationOnly(options)
        let client = try remote.client(endpoint, configuration: configuration)
        let arn =
            pipeline.hasPrefix("arn:")
            ? pipeline
            : ImageBuilderARN(
                region: configuration.homeRegion, account: configuration.accountId, resourceType: "image-pipeline", name: pipeline
            )
            .description
        let answer = try await client.call("GetImagePipeline", ["imagePipelineArn": .string(arn)])
        guard let found = answer["imagePipeline"] else {
            throw KilnError(.internalError, "the server answered GetImagePipeline for \(arn) without an imagePipeline: \(answer)")
        }
        let name = found["name"]?.string ?? pipeline
        guard let text = found["schedule"]?["scheduleExpression"]?.string, !text.isEmpty else {
            print("\(name) has no schedule: it runs only when started (kiln pipeline start \(name))")
            return
        }
        let zoneName = found["schedule"]?["timezone"]?.string
        let condition = found["schedule"]?["pipelineExecutionStartCondition"]?.string ?? "EXPRESSION_MATCH_AND_DEPENDENCY_UPDATES_AVAILABLE"
        if let status = found["status"]?.string, status != "ENABLED" {
            print("\(name) is \(status): its schedule \(text) (\(zoneName ?? "UTC")) starts nothing until it is enabled")
            return
        }
        let schedule: ScheduleExpression
        do {
            schedule = try ScheduleExpression(parsing: text, timezone: zoneName)
        } catch let error as KilnError {
            throw KilnError(.invalidArgument, "pipeline \(name)'s schedule cannot be read: \(error.message)")
        }
        let anchorText = found["dateUpdated"]?.string ?? found["dateCreated"]?.string
        let anchor = try anchorText.map { try Self.date($0, option: "the pipeline's dateUpdated") } ?? start
        let zone = Self.zone(of: schedule, named: zoneName)
        print("\(name): \(text) in \(zoneName ?? "UTC"), \(condition)")
        if condition == "EXPRESSION_MATCH_AND_DEPENDENCY_UPDATES_AVAILABLE" {
            print("  (each fire builds only if the recipe's base image or components have newer matching versions)")
        }
        Self.printFires(schedule, zone: zone, after: start, anchor: anchor, count: count)
    }

    private static func printFires(_ schedule: ScheduleExpression, zone: TimeZone, after start: Date, anchor: Date, count: Int) {
        let universal = formatter(TimeZone(identifier: "UTC")!)
        let local = formatter(zone)
        var cursor = start
        var printed = 0
        while printed < count, let next = schedule.nextFire(after: cursor, anchor: anchor) {
            print("\(universal.string(from: next))  \(local.string(from: next))")
            cursor = next
            printed += 1
        }
        if printed < count { print(printed == 0 ? "no fires left (the year field has ended)" : "no more fires (the year field ends)") }
    }

    /// For bench/cron.sh: one expression per line, optionally a tab and a time zone. Prints each
    /// next fire (or its error); stderr gets the time spent computing fires, parsing apart.
    private static func benchmark(file: String, from start: Date) throws {
        let text: String
        do { text = try String(contentsOfFile: file, encoding: .utf8) } catch {
            throw KilnError(.ioFailure, "cannot read --expressions-file \(file): \(error.localizedDescription)")
        }
        let lines = text.split(separator: "\n", omittingEmptySubsequences: true)
        let parseStart = ContinuousClock.now
        let parsed: [Result<CronExpression, KilnError>] = lines.map { line in
            let parts = line.split(separator: "\t", maxSplits: 1)
            do {
                return .success(try CronExpression(parsing: String(parts[0]), timezone: parts.count > 1 ? String(parts[1]) : nil))
            } catch let error as KilnError { return .failure(error) } catch { return .failure(KilnError(.invalidArgument, "\(error)")) }
        }
        let parseTime = ContinuousClock.now - parseStart
        var fires = [Date?](repeating: nil, count: parsed.count)
        let computeStart = ContinuousClock.now
        for (index, entry) in parsed.enumerated() {
            if case .success(let expression) = entry { fires[index] = expression.nextFire(after: start) }
        }
        let computeTime = ContinuousClock.now - computeStart
        let universal = formatter(TimeZone(identifier: "UTC")!)
        var output = ""
        output.reserveCapacity(parsed.count * 24)
        for (index, entry) in parsed.enumerated() {
            switch entry {
            case .failure(let error): output += "error: \(error.message)\n"
            case .success: output += (fires[index].map { universal.string(from: $0) } ?? "none") + "\n"
            }
        }
        FileHandle.standardOutput.write(Data(output.utf8))
        let valid = parsed.filter { if case .success = $0 { true } else { false } }.count
        func seconds(_ duration: Duration) -> String {
            String(format: "%.4f", Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18)
        }
        FileHandle.standardError.write(
            Data(
                "parsed \(parsed.count) expressions (\(parsed.count - valid) refused) in \(seconds(parseTime)) s; computed \(valid) next fires in \(seconds(computeTime)) s\n"
                    .utf8))
    }

    /// A rate has no zone of its own; its fires are still shown in the one given.
    private static func zone(of schedule: ScheduleExpression, named name: String?) -> TimeZone {
        if case .cron(let expression) = schedule { return expression.timeZone }
        return name.flatMap { TimeZone(identifier: $0) } ?? TimeZone(identifier: "UTC")!
    }

    private static func formatter(_ zone: TimeZone) -> ISO8601DateFormatter {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime]
        formatter.timeZone = zone
        return formatter
    }

    static func date(_ text: String, option: String) throws -> Date {
        let formatter = ISO8601DateFormatter()
        for options: ISO8601DateFormatter.Options in [[.withInternetDateTime], [.withInternetDateTime, .withFractionalSeconds]] {
            formatter.formatOptions = options
            if let date = formatter.date(from: text) { return date }
        }
        throw KilnError(
            .invalidArgument, "\(option) '\(text)' is not an ISO-8601 time like 2026-03-08T07:30:00Z or 2026-03-08T02:30:00-05:00")
    }
}
