import Testing

@testable import KilnModel

@Suite("Semantic versions, x wildcards and ARNs (reference §5)")
struct SemanticVersionTests {
    let published = [
        BuildVersion(SemanticVersion(2, 2, 4), build: 1), BuildVersion(SemanticVersion(1, 7, 8), build: 1),
        BuildVersion(SemanticVersion(1, 6, 8), build: 1), BuildVersion(SemanticVersion(1, 6, 8), build: 2),
    ]

    @Test(
        "The reference's examples: x.x.x → 2.2.4, 1.x.x → 1.7.8, 1.6.x → 1.6.8 (latest build)",
        arguments: [("x.x.x", "2.2.4/1"), ("1.x.x", "1.7.8/1"), ("1.6.x", "1.6.8/2"), ("1.6.8", "1.6.8/2"), ("1.6.8/1", "1.6.8/1")])
    func selects(_ selector: String, _ expected: String) throws {
        #expect(try VersionSelector(parsing: selector).select(from: published)?.description == expected)
    }

    @Test("Nothing matches: nil, not an error")
    func noMatch() throws {
        #expect(try VersionSelector(parsing: "3.x.x").select(from: published) == nil)
    }

    @Test(
        "x followed by a number, and other malformed selectors, are errors that say why",
        arguments: [
            ("x.2.x", "every node to its right must be x"), ("1.x.8", "every node to its right must be x"), ("1.2", "major.minor.patch"),
            ("1.2.y", "neither a number"), ("1.x.x/2", "needs a full version"), ("1.0.0/0", "from 1"), ("-1.0.0", "neither a number"),
        ])
    func rejects(_ selector: String, _ reason: String) {
        let error = #expect(throws: KilnError.self) { try VersionSelector(parsing: selector) }
        #expect(error?.message.contains(reason) == true, "\(error?.message ?? "")")
    }

    @Test("Versions compare numerically per node, so dates work")
    func numericOrder() throws {
        #expect(try SemanticVersion(parsing: "2024.5.10") > SemanticVersion(parsing: "2024.5.9"))
        #expect(try SemanticVersion(parsing: "1.10.0") > SemanticVersion(parsing: "1.9.99"))
        #expect(throws: KilnError.self) { try SemanticVersion(parsing: "1.0.x") }
        #expect(throws: KilnError.self) { try SemanticVersion(parsing: "1073741824.0.0") }
    }

    @Test("ARNs round-trip, and names are lowercased with hyphens for spaces")
    func arns() throws {
        let arn = ImageBuilderARN(
            region: "us-east-1", account: "000000000000", resourceType: "component", name: "Update OS", version: "1.0.0/1")
        #expect(arn.description == "arn:aws:imagebuilder:us-east-1:000000000000:component/update-os/1.0.0/1")
        #expect(try ImageBuilderARN(parsing: arn.description) == arn)
        let latest = try ImageBuilderARN(parsing: "arn:aws:imagebuilder:us-east-1:aws:image/amazon-linux-2023-x86-latest/x.x.x")
        #expect(latest.account == "aws" && latest.resourceType == "image" && latest.version == "x.x.x")
        #expect(throws: KilnError.self) { try ImageBuilderARN(parsing: "arn:aws:s3:::bucket") }
        #expect(throws: KilnError.self) { try ImageBuilderARN(parsing: "arn:aws:imagebuilder:us-east-1:1:component/a/x.1.x") }
    }
}
