import Testing

@testable import KilnModel

@Suite("Definitions files with Image Builder's field names")
struct DefinitionsTests {
    let sample = """
        components:
          - name: update-os
            semanticVersion: 1.0.0
            platform: Linux
            uri: components/update-os.yaml
          - name: web-server
            semanticVersion: 1.2.0
            platform: Linux
            data: |
              name: WebServer
              schemaVersion: 1.0
              phases: []
        containerRecipes:
          - name: web
            semanticVersion: 1.0.0
            containerType: DOCKER
            parentImage: bootstrap:debian:bookworm
            components:
              - componentArn: arn:aws:imagebuilder:us-east-1:000000000000:component/update-os/1.x.x
              - componentArn: web-server/x.x.x
                parameters:
                  - name: Port
                    value: ["8080"]
            dockerfileTemplateData: |
              FROM {{{ imagebuilder:parentImage }}}
              {{{ imagebuilder:environments }}}
              {{{ imagebuilder:components }}}
            targetRepository: {service: ECR, repositoryName: web}
        infrastructureConfigurations:
          - name: small
            instanceTypes: [t3.small]
            instanceProfileName: kiln
            terminateInstanceOnFailure: false
        distributionConfigurations:
          - name: two-regions
            distributions:
              - region: eu-west-1
                containerDistributionConfiguration:
                  containerTags: [latest, "1.0"]
                  targetRepository: {service: ECR, repositoryName: web}
              - region: us-east-1
                containerDistributionConfiguration:
                  targetRepository: {repositoryName: web}
        imagePipelines:
          - name: web-nightly
            containerRecipeArn: web/1.0.0
            infrastructureConfigurationArn: small
            distributionConfigurationArn: two-regions
            imageTestsConfiguration: {imageTestsEnabled: true}
            schedule: {scheduleExpression: "cron(0 3 * * ? *)"}
        """

    @Test("Every resource kind parses with the API's field names")
    func parsesSample() throws {
        let definitions = try Definitions.parse(text: sample, source: "kiln-pipeline.yaml")
        #expect(definitions.components.map(\.name) == ["update-os", "web-server"])
        #expect(definitions.components[1].semanticVersion == SemanticVersion(1, 2, 0))
        #expect(definitions.containerRecipes[0].components?[1].parameters?.first == ComponentParameter(name: "Port", value: ["8080"]))
        #expect(definitions.containerRecipes[0].dockerfileTemplateData?.hasPrefix("FROM {{{ imagebuilder:parentImage }}}") == true)
        #expect(definitions.infrastructureConfigurations[0].terminateInstanceOnFailure == false)
        #expect(definitions.distributionConfigurations[0].distributions.map(\.region) == ["eu-west-1", "us-east-1"])
        #expect(
            definitions.distributionConfigurations[0].distributions[0].containerDistributionConfiguration?.containerTags == [
                "latest", "1.0",
            ])
        #expect(definitions.imagePipelines[0].schedule?.scheduleExpression == "cron(0 3 * * ? *)")
    }

    @Test("An image recipe's blockDeviceMappings size the root disk; AMI distribution fields parse; a misspelt volume field is refused")
    func machineImageFields() throws {
        let text = """
            imageRecipes:
              - name: vm-image
                semanticVersion: 1.0.0
                parentImage: bootstrap:debian:bookworm:vm
                workingDirectory: /var/lib/work
                blockDeviceMappings:
                  - {deviceName: /dev/sdb, noDevice: ""}
                  - {deviceName: /dev/xvda, ebs: {volumeSize: 12, volumeType: gp3, deleteOnTermination: true}}
                amiTags: {team: platform}
            infrastructureConfigurations:
              - {name: small, instanceTypes: [t3.small]}
            distributionConfigurations:
              - name: disks
                distributions:
                  - region: lab
                    amiDistributionConfiguration:
                      name: "vm {{ imagebuilder:buildDate }}"
                      amiTags: {stage: lab}
                      launchPermission: {userGroups: [all]}
            imagePipelines:
              - {name: vm-pipeline, imageRecipeArn: vm-image/1.x.x, infrastructureConfigurationArn: small, distributionConfigurationArn: disks}
            """
        let selection = try Definitions.parse(text: text, source: "vm.yaml").selectPipeline("vm-pipeline", source: "vm.yaml")
        #expect(selection.recipe.imageType == .ami && selection.recipe.rootVolumeGiB == 12, "the first mapping with a size is the root")
        #expect(selection.recipe.workingDirectory == "/var/lib/work" && selection.recipe.amiTags == ["team": "platform"])
        let ami = try #require(selection.distribution?.distributions.first?.amiDistributionConfiguration)
        #expect(ami.amiTags == ["stage": "lab"] && ami.launchPermission?.userGroups == ["all"])
        let misspelt = try #require(throws: KilnError.self) {
            try Definitions.parse(text: text.replacingOccurrences(of: "volumeType", with: "volumeTyp"), source: "vm.yaml")
        }
        let issue = try #require(misspelt.issues.first)
        #expect(issue.location.line == 8 && issue.stepPath == "imageRecipes[0].blockDeviceMappings[1].ebs")
        #expect(issue.message.contains("unknown field 'volumeTyp' (did you mean 'volumeType'?)"), "\(issue.message)")
    }

    @Test("A misspelt field is an error with its line, its path and a suggestion")
    func unknownField() throws {
        let text = sample.replacingOccurrences(of: "        containerTags: [latest", with: "        containerTag: [latest")
        let error = try #require(throws: KilnError.self) { try Definitions.parse(text: text, source: "p.yaml") }
        let issue = try #require(error.issues.first)
        #expect(issue.location.line == 39)
        #expect(issue.stepPath == "distributionConfigurations[0].distributions[0].containerDistributionConfiguration")
        #expect(issue.message.contains("unknown field 'containerTag' (did you mean 'containerTags'?)"))
    }

    @Test("Missing, mistyped and malformed values name the field and the line")
    func badValues() throws {
        let missing = try #require(throws: KilnError.self) {
            try Definitions.parse(text: "components:\n  - name: a\n    platform: Linux\n", source: "p.yaml")
        }
        #expect(
            missing.message.contains("p.yaml:2") && missing.message.contains("components[0]")
                && missing.message.contains("'semanticVersion' is required"), "\(missing.message)")
        let version = try #require(throws: KilnError.self) {
            try Definitions.parse(text: "components:\n  - name: a\n    platform: Linux\n    semanticVersion: 1.0\n", source: "p.yaml")
        }
        #expect(version.message.contains("'1.0' is not a semantic version"), "\(version.message)")
        let typed = try #require(throws: KilnError.self) {
            try Definitions.parse(text: "infrastructureConfigurations:\n  - name: a\n    instanceTypes: t3.small\n", source: "p.yaml")
        }
        #expect(
            typed.message.contains("p.yaml:3") && typed.message.contains("infrastructureConfigurations[0].instanceTypes"),
            "\(typed.message)")
    }
}

@Suite("References between definitions")
struct DefinitionReferenceTests {
    @Test("ARNs and name/version forms select the newest matching component")
    func componentSelection() throws {
        var definitions = Definitions()
        for version in ["1.0.0", "1.2.0", "2.0.0"] {
            definitions.components.append(
                ComponentDefinition(name: "update-os", semanticVersion: try SemanticVersion(parsing: version), platform: "Linux", data: "x")
            )
        }
        #expect(
            definitions.component(try ResourceReference("update-os/1.x.x", resourceType: "component"))?.semanticVersion
                == SemanticVersion(1, 2, 0))
        #expect(
            definitions.component(try ResourceReference("update-os", resourceType: "component"))?.semanticVersion
                == SemanticVersion(2, 0, 0))
        #expect(
            definitions.component(
                try ResourceReference("arn:aws:imagebuilder:us-east-1:000000000000:component/update-os/1.0.x", resourceType: "component"))?
                .semanticVersion == SemanticVersion(1, 0, 0))
        #expect(definitions.component(try ResourceReference("update-os/3.x.x", resourceType: "component")) == nil)
        #expect(throws: KilnError.self) {
            try ResourceReference("arn:aws:imagebuilder:us-east-1:0:image/a/1.0.0", resourceType: "component")
        }
    }

    @Test("Dangling references are all reported together")
    func dangling() throws {
        let text = """
            components:
              - {name: app, semanticVersion: 1.0.0, platform: Linux}
            containerRecipes:
              - name: web
                semanticVersion: 1.0.0
                parentImage: scratch
                components: [{componentArn: missing/1.x.x}]
            imagePipelines:
              - {name: pipe, containerRecipeArn: web/2.x.x, infrastructureConfigurationArn: nowhere}
            """
        let definitions = try Definitions.parse(text: text, source: "p.yaml")
        let error = try #require(throws: KilnError.self) { try definitions.validateReferences(source: "p.yaml") }
        #expect(error.message.contains("4 reference problem(s)"), "\(error.message)")
        #expect(error.message.contains("components[0] (app): give exactly one of data"))
        #expect(error.message.contains("no component matches missing/1.x.x"))
        #expect(error.message.contains("containerRecipeArn web/2.x.x matches no container recipe"))
        #expect(error.message.contains("infrastructureConfigurationArn nowhere is not defined"))
    }
}
