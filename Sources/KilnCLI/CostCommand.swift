import ArgumentParser
import Foundation
import KilnEngine
import KilnModel
import KilnServer

/// `kiln cost`: what images cost, from their measured ledgers and the prices in kiln.yaml.
struct CostCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cost",
        abstract: "Print what built images cost: instance time, transfer to regions, and storage per month.",
        discussion: """
            Instance time is priced at the instance type's pricePerHour (defaults: on-demand Linux in us-east-1), storage at the \
            region's storagePerGBMonth, and transfer to regions other than homeRegion at transferPerGB (kiln.yaml). Storage counts \
            each blob once per region.
            """
    )

    @Option(name: .long, help: "One image: name/x.y.z/build or its ARN.")
    var image: String?

    @Option(name: .long, help: "The images one pipeline built.")
    var pipeline: String?

    @Option(name: .long, help: "The images built in one month (YYYY-MM); storage counts every image built by its end.")
    var month: String?

    @Flag(name: .long, help: "Print JSON.")
    var json = false

    @OptionGroup var options: KilnOptions
    @OptionGroup var remote: RemoteOptions

    func validate() throws {
        guard [image, pipeline, month].compactMap({ $0 }).count <= 1 else {
            throw ValidationError("choose one of --image, --pipeline and --month")
        }
        if let month, month.range(of: #"^\d{4}-\d{2}$"#, options: .regularExpression) == nil {
            throw ValidationError("--month must look like 2026-11, not '\(month)'")
        }
    }

    func run() async throws {
        try await KilnEnvironment.reportingErrors {
            if let endpoint = remote.resolvedEndpoint() {
                // Priced by the server, with its kiln.yaml.
                let client = try remote.client(endpoint, configuration: try KilnEnvironment.configurationOnly(options))
                let query = [("image", image), ("pipeline", pipeline), ("month", month)].compactMap { name, value in
                    value.map { "\(name)=\(ImageBuilderClient.encode($0))" }
                }.joined(separator: "&")
                let data = try await client.get("/kiln/cost", query: query)
                if image != nil {
                    let cost = try JSONDecoder().decode(CostReport.ImageCost.self, from: data)
                    if json { try TerminalOutput.printJSON(cost) } else { print(Self.describe(cost)) }
                } else {
                    let summary = try JSONDecoder().decode(CostReport.Summary.self, from: data)
                    if json { try TerminalOutput.printJSON(summary) } else { print(Self.describe(summary)) }
                }
                return
            }
            let environment = try KilnEnvironment(options)
            let records = try environment.records()
            let report = try CostReport(configuration: environment.configuration)
            let all = records.all()
            if let image {
                let cost = report.cost(of: try records.find(image))
                if json { try TerminalOutput.printJSON(cost) } else { print(Self.describe(cost)) }
                return
            }
            let summary: CostReport.Summary
            if let pipeline {
                let built = all.filter { $0.sourcePipelineName == pipeline }
                guard !built.isEmpty else {
                    throw KilnError(
                        .notFound,
                        "no image was built by pipeline '\(pipeline)'; pipelines with images: \(Set(all.compactMap(\.sourcePipelineName)).sorted().joined(separator: ", "))"
                    )
                }
                summary = report.summary("pipeline \(pipeline)", records: built)
            } else if let month {
                summary = report.month(month, records: all)
            } else {
                summary = report.summary("all images", records: all)
            }
            if json { try TerminalOutput.printJSON(summary) } else { print(Self.describe(summary)) }
        }
    }

    static func dollars(_ amount: Double) -> String { String(format: "$%.6f", amount) }

    static func bytes(_ count: Int64) -> String {
        count >= 1 << 20 ? String(format: "%.1f MiB", Double(count) / Double(1 << 20)) : String(format: "%.1f KiB", Double(count) / 1024)
    }

    static func describe(_ cost: CostReport.ImageCost) -> String {
        var lines = ["\(cost.image)  \(cost.status)  pipeline \(cost.pipeline ?? "-")  built \(cost.month)"]
        for run in cost.instances {
            lines.append(
                String(
                    format: "  %-8@ %-10@ %8.1f s (CPU %6.1f s) at $%.4f/h  %@", run.role as NSString, run.instanceType as NSString,
                    run.seconds, run.cpuSeconds, run.pricePerHour, dollars(run.cost) as NSString))
        }
        if cost.instances.isEmpty { lines.append("  no instance ran (every build step cached and no tests)") }
        for region in cost.regions {
            lines.append(
                "  \(region.region.padding(toLength: 12, withPad: " ", startingAt: 0)) stored \(bytes(region.storedBytes)) → \(dollars(region.storagePerMonth))/month; sent \(bytes(region.transferredBytes)) → \(dollars(region.transferCost))"
            )
        }
        lines.append(
            "  build \(dollars(cost.buildCost)) (instances \(dollars(cost.instanceCost)), transfer \(dollars(cost.transferCost))); storage \(dollars(cost.storagePerMonth)) per month"
        )
        return lines.joined(separator: "\n")
    }

    static func describe(_ summary: CostReport.Summary) -> String {
        var lines = ["Cost of \(summary.scope): \(summary.images.count) image(s)"]
        lines.append("IMAGE                              STATUS       INSTANCE s  BUILD $      STORAGE $/MONTH")
        for image in summary.images {
            let seconds = image.instances.reduce(0) { $0 + $1.seconds }
            lines.append(
                "\(image.image.padding(toLength: 34, withPad: " ", startingAt: 0)) \(image.status.padding(toLength: 12, withPad: " ", startingAt: 0)) \(String(format: "%10.1f", seconds))  \(dollars(image.buildCost))  \(dollars(image.storagePerMonth))"
            )
        }
        for region in summary.storage {
            lines.append(
                "storage in \(region.region): \(bytes(region.storedBytes)) (shared blobs once) → \(dollars(region.storagePerMonth)) per month"
            )
        }
        lines.append(
            String(
                format: "instances ran %.1f s (CPU %.1f s); builds %@; storage %@ per month; with a month of storage %@",
                summary.instanceSeconds, summary.cpuSeconds, dollars(summary.buildCost) as NSString,
                dollars(summary.storagePerMonth) as NSString, dollars(summary.monthlyTotal) as NSString))
        return lines.joined(separator: "\n")
    }
}
