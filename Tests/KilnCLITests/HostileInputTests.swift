import Foundation
import KilnTestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// Build inputs that try to reach the host: COPY links out of the context, names that climb
/// out of the data directory, and a data directory others can enter.
@Suite(
    "Hostile build inputs: COPY links, resource names, the data directory", .serialized,
    .enabled(if: TestEnvironment.requiresRoot("/usr/bin/runc")))
struct HostileInputTests {
    /// A container pipeline on the bootstrapped Debian whose Dockerfile is `template`; its
    /// component's validate step runs `check` after the template's COPYs.
    func pipeline(_ scratch: Scratch, template: String, check: String = "true", recipeName: String = "copy-image") throws -> String {
        _ = try scratch.write(
            "check.yaml",
            """
            name: Check
            schemaVersion: 1.0
            phases:
              - name: validate
                steps:
                  - name: Inspect
                    action: ExecuteBash
                    inputs:
                      commands: ["\(check)"]
            """)
        _ = try scratch.write("kiln.yaml", "dataDirectory: \(sharedDataDirectory)\n")
        return try scratch.write(
            "pipeline.yaml",
            """
            components:
              - {name: check, semanticVersion: 1.0.0, platform: Linux, uri: check.yaml}
            containerRecipes:
              - name: \(recipeName)
                semanticVersion: 1.0.0
                parentImage: bootstrap:debian:bookworm
                components: [{componentArn: check/1.x.x}]
                dockerfileTemplateData: |
            \(template.split(separator: "\n").map { "      " + $0 }.joined(separator: "\n"))
            infrastructureConfigurations:
              - {name: builders, instanceTypes: [t3.small], instanceProfileName: kiln}
            imagePipelines:
              - {name: copy-pipeline, containerRecipeArn: "\(recipeName)/1.x.x", infrastructureConfigurationArn: builders, imageTestsConfiguration: {imageTestsEnabled: false}}
            """)
    }

    /// A host file a build must never copy.
    func hostSecret() throws -> String {
        let path = "/var/tmp/kiln-host-secret-\(UUID().uuidString)"
        try "HOST-SECRET-b41d\n".write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    @Test("COPY of a symlink that leads out of the build context fails the build naming the link, the target and what to do")
    func copyLinkOutOfContext() throws {
        let scratch = Scratch("kiln-hostile-copy")
        defer { scratch.remove() }
        let secret = try hostSecret()
        defer { unlink(secret) }
        try FileManager.default.createSymbolicLink(atPath: scratch.path + "/config.json", withDestinationPath: secret)
        let file = try pipeline(
            scratch,
            template:
                "FROM {{{ imagebuilder:parentImage }}}\n{{{ imagebuilder:environments }}}\nCOPY config.json /root/config.json\n{{{ imagebuilder:components }}}"
        )
        let built = try Kiln.run(["build", "-f", file, "--no-cache"], in: scratch.path)
        #expect(built.status != 0)
        #expect(
            built.stderr.contains("'config.json' is a symlink to '\(secret)', outside the build context")
                && built.stderr.contains("copy the file itself into it"), "\(built.stderr)")

        // A relative link climbing out with ../ is caught the same way.
        let climbs = String(repeating: "../", count: scratch.path.split(separator: "/").count) + secret.dropFirst()
        try FileManager.default.createSymbolicLink(atPath: scratch.path + "/relative.json", withDestinationPath: climbs)
        let relative = try pipeline(
            scratch,
            template:
                "FROM {{{ imagebuilder:parentImage }}}\n{{{ imagebuilder:environments }}}\nCOPY relative.json /root/config.json\n{{{ imagebuilder:components }}}"
        )
        let refused = try Kiln.run(["build", "-f", relative, "--no-cache"], in: scratch.path)
        #expect(refused.status != 0)
        #expect(refused.stderr.contains("'relative.json' is a symlink to '\(secret)', outside the build context"), "\(refused.stderr)")
    }

    @Test("COPY of a folder keeps a link inside it as a link: the host file it points at is not copied")
    func copyFolderKeepsLinks() throws {
        let scratch = Scratch("kiln-hostile-copy")
        defer { scratch.remove() }
        let secret = try hostSecret()
        defer { unlink(secret) }
        try FileManager.default.createDirectory(atPath: scratch.path + "/tree", withIntermediateDirectories: true)
        _ = try scratch.write("tree/plain.txt", "plain\n")
        try FileManager.default.createSymbolicLink(atPath: scratch.path + "/tree/secret", withDestinationPath: secret)
        let file = try pipeline(
            scratch,
            template:
                "FROM {{{ imagebuilder:parentImage }}}\n{{{ imagebuilder:environments }}}\nCOPY tree/ /opt/tree/\n{{{ imagebuilder:components }}}",
            check:
                "test \\\"$(readlink /opt/tree/secret)\\\" = \(secret) && ! test -e /opt/tree/secret && grep -q plain /opt/tree/plain.txt")
        let built = try Kiln.run(["build", "-f", file, "--no-cache"], in: scratch.path)
        #expect(built.status == 0, "the link arrived as a link, dangling in the image: \(built.stderr)")
    }

    @Test("A recipe named ../../escape is refused with Image Builder's name rule before anything is written")
    func nameClimbsOut() throws {
        let scratch = Scratch("kiln-hostile-name")
        defer { scratch.remove() }
        let file = try pipeline(scratch, template: "FROM {{{ imagebuilder:parentImage }}}", recipeName: "../../escape")
        let built = try Kiln.run(["build", "-f", file], in: scratch.path)
        #expect(built.status != 0)
        #expect(
            built.stderr.contains("containerRecipes[0]: name '../../escape' may hold only letters, digits, '-', '_' and inner spaces"),
            "\(built.stderr)")
        #expect(!FileManager.default.fileExists(atPath: sharedDataDirectory + "/../escape"))
        #expect(!FileManager.default.fileExists(atPath: (sharedDataDirectory as NSString).deletingLastPathComponent + "/escape"))
    }

    @Test("A data directory others can enter is made private (0700), with a note; a new one is created 0700")
    func privateDataDirectory() throws {
        let scratch = Scratch("kiln-hostile-data")
        defer { scratch.remove() }
        let open = scratch.path + "/open-data"
        try FileManager.default.createDirectory(atPath: open, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o755])
        let listed = try Kiln.run(["images", "--data-dir", open], in: scratch.path)
        #expect(listed.status == 0, "\(listed.stderr)")
        #expect(listed.stderr.contains("made the data directory \(open) private (mode 755 -> 700)"), "\(listed.stderr)")
        #expect(try FileManager.default.attributesOfItem(atPath: open)[.posixPermissions] as? Int == 0o700)
        let fresh = scratch.path + "/fresh-data"
        #expect(try Kiln.run(["images", "--data-dir", fresh], in: scratch.path).status == 0)
        #expect(try FileManager.default.attributesOfItem(atPath: fresh)[.posixPermissions] as? Int == 0o700)
    }
}
