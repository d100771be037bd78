import ArgumentParser

/// `kiln component`: work with component documents.
struct ComponentCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "component",
        abstract: "Work with component documents.",
        subcommands: [ComponentValidateCommand.self]
    )
}

struct ComponentValidateCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "validate",
        abstract: "Check component documents for Linux (the same checks as kiln toe validate)."
    )

    @Argument(help: "Component document files.")
    var files: [String]

    func run() async throws {
        try DocumentValidation.validate(files)
    }
}
