import Foundation
import KilnTestSupport
import Testing

/// What a user sees from the kiln executable when a document or a parameter passes Kiln's bounds.
@Suite("Document bounds through the kiln executable", .serialized)
struct DocumentBoundsCommandTests {
    @Test("component validate refuses a nested-alias bomb at once, naming the file")
    func validateAliasBomb() throws {
        let scratch = Scratch("kiln-cli-bounds")
        defer { scratch.remove() }
        var lines = ["schemaVersion: 1.0", "x0: &x0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
        for level in 1...9 {
            lines.append("x\(level): &x\(level) [\(Array(repeating: "*x\(level - 1)", count: 9).joined(separator: ", "))]")
        }
        let path = try scratch.write("bomb.yaml", lines.joined(separator: "\n") + "\n")
        let result = try Kiln.run(["component", "validate", path])
        #expect(result.status != 0)
        #expect(
            result.stderr.contains(
                "\(path): the YAML has more than 1,000,000 nodes once its anchors and aliases (&name, *name) are expanded"),
            "\(result.stderr)")
    }

    @Test(
        "build refuses a recipe's component parameter outside allowedValues before any instance starts",
        .enabled(if: TestEnvironment.requiresRoot("/usr/bin/runc")))
    func buildParameterOutsideAllowedValues() throws {
        let scratch = Scratch("kiln-cli-bounds")
        defer { scratch.remove() }
        _ = try scratch.write(
            "mode.yaml",
            """
            name: Mode
            schemaVersion: 1.0
            parameters:
              - Mode:
                  type: string
                  default: fast
                  allowedValues: [fast, safe]
            phases:
              - name: build
                steps:
                  - name: Say
                    action: ExecuteBash
                    inputs:
                      commands: ["echo {{ Mode }}"]
            """)
        _ = try scratch.write("kiln.yaml", "dataDirectory: \(sharedDataDirectory)\n")
        let pipeline = try scratch.write(
            "pipeline.yaml",
            """
            components:
              - {name: mode, semanticVersion: 1.0.0, platform: Linux, uri: mode.yaml}
            containerRecipes:
              - name: mode-image
                semanticVersion: 1.0.0
                parentImage: bootstrap:debian:bookworm
                components: [{componentArn: mode/1.x.x, parameters: [{name: Mode, value: [reckless]}]}]
                dockerfileTemplateData: |
                  FROM {{{ imagebuilder:parentImage }}}
                  {{{ imagebuilder:components }}}
            infrastructureConfigurations:
              - {name: builders, instanceTypes: [t3.small], instanceProfileName: kiln}
            imagePipelines:
              - {name: mode-pipeline, containerRecipeArn: mode-image/1.x.x, infrastructureConfigurationArn: builders, imageTestsConfiguration: {imageTestsEnabled: false}}
            """)
        let built = try Kiln.run(["build", "-f", pipeline, "--no-cache"], in: scratch.path)
        #expect(built.status != 0)
        let error = built.stderr.split(separator: "\n").first { $0.hasPrefix("kiln: error: ") }
        #expect(
            error?.hasSuffix(
                "mode.yaml: parameter 'Mode' is 'reckless', which is not one of its allowedValues ('fast', 'safe'); pass one of those")
                == true, "\(built.stderr)")
        #expect(!built.stderr.contains("BUILD: "), "refused while preparing, before the build began: \(built.stderr)")
    }
}
