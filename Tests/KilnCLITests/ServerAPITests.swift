import Foundation
import KilnTestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// `kiln server` driven as Image Builder's users drive AWS: the AWS CLI and boto3 against
/// `--endpoint-url`, signed with SigV4. boto3's calls are in `Fixtures/server_api_check.py`,
/// which prints every answer for these tests to check.
@Suite(
    "kiln server: the Image Builder API through the AWS CLI and boto3", .serialized,
    .enabled(if: TestEnvironment.requiresRoot("/usr/bin/runc", "aws", "python3", "skopeo", "/usr/bin/docker-registry")))
struct ServerAPITests {
    static let arn = "arn:aws:imagebuilder:us-east-1:000000000000"

    /// Resource names carry it: the tests share the CLI tests' data directory (and its cached parent).
    let suffix = String(UUID().uuidString.prefix(8)).lowercased()

    @Test("Components, recipes, configurations and pipelines: create, get, list, update, tag and delete, and every refusal")
    func resources() throws {
        let server = try KilnServerUnderTest(regions: ["us-east-1": "127.0.0.1:1", "eu-west-1": "127.0.0.1:2"])
        defer { server.stop() }
        let answers = try server.boto("resources", suffix: suffix)
        let refusals: [(label: String, code: String, status: Int, says: String)] = [
            ("missingName", "InvalidRequestException", 400, "Value null at 'name' failed to satisfy constraint: Member must not be null"),
            ("missingInfrastructureArn", "InvalidRequestException", 400, "Value null at 'infrastructureConfigurationArn'"),
            ("badVersion", "InvalidVersionNumberException", 400, "Value '1.0' at 'semanticVersion'"),
            ("badRecipeVersion", "InvalidVersionNumberException", 400, "Value 'one.two.three' at 'semanticVersion'"),
            ("createContainerRecipeTwice", "ResourceAlreadyExistsException", 400, "container recipe api-cr-\(suffix)/1.0.0 already exists"),
            ("createImageRecipeTwice", "ResourceAlreadyExistsException", 400, "image recipe api-ir-\(suffix)/1.0.0 already exists"),
            ("createInfrastructureTwice", "ResourceAlreadyExistsException", 400, "'api-infra-\(suffix)' already exists"),
            ("createDistributionTwice", "ResourceAlreadyExistsException", 400, "'api-dist-\(suffix)' already exists"),
            ("createContainerRecipeUnknownParameter", "InvalidParameterValueException", 400, "has no parameter 'Colour'; it has: Greeting"),
            ("createImageRecipeMissingComponent", "InvalidParameterValueException", 400, "components[0].componentArn"),
            ("createInfrastructureUnknownType", "InvalidParameterValueException", 400, "'z9.colossal' is not an instance type Kiln knows"),
            ("createDistributionUnknownRegion", "InvalidParameterValueException", 400, "'ap-nowhere-9' is not a region of kiln.yaml"),
            ("createPipelineBothRecipes", "InvalidParameterCombinationException", 400, "imageRecipeArn or containerRecipeArn, exactly one"),
            ("createPipelineMissingRecipe", "InvalidParameterValueException", 400, "containerRecipeArn: container recipe"),
            ("startDisabledPipeline", "InvalidRequestException", 400, "is DISABLED"),
            ("listComponentsBadFilter", "InvalidParameterValueException", 400, "filter 'colour' is not supported here"),
            ("listInfrastructureBadToken", "InvalidPaginationTokenException", 400, "nextToken 'not-a-token'"),
            ("tokenMismatch", "IdempotentParameterMismatchException", 400, "clientToken 'api-token-\(suffix)' was used for a different"),
            ("unsupportedOperation", "InvalidRequestException", 400, "Kiln does not support ListLifecyclePolicies"),
            ("deleteUsedComponent", "ResourceDependencyException", 400, "container-recipe/api-cr-\(suffix)/1.0.0"),
            ("deleteUsedRecipe", "ResourceDependencyException", 400, "image-pipeline/api-pipe-\(suffix)"),
            ("deleteUsedInfrastructure", "ResourceDependencyException", 400, "image-pipeline/api-pipe-\(suffix)"),
            ("updateInfrastructureMissing", "ResourceNotFoundException", 404, "api-none-\(suffix) does not exist"),
            ("getMissingImage", "ResourceNotFoundException", 404, "image/api-none-\(suffix)/1.0.0/1 does not exist"),
            ("getMissingRecipe", "ResourceNotFoundException", 404, "image-recipe/api-none-\(suffix)/1.0.0 does not exist"),
            ("deleteMissingDistribution", "ResourceNotFoundException", 404, "api-none-\(suffix) does not exist"),
            ("getMissingWorkflow", "ResourceNotFoundException", 404, "workflow execution wf-0000000f-"),
            ("getMissingWorkflowStep", "ResourceNotFoundException", 404, "workflow step execution step-0000000f-"),
            ("cancelMissingImage", "ResourceNotFoundException", 404, "does not exist"),
            ("tagMissingResource", "ResourceNotFoundException", 404, "image-pipeline/api-none-\(suffix) does not exist"),
            ("getDeletedPipeline", "ResourceNotFoundException", 404, "image-pipeline/api-pipe-\(suffix) does not exist"),
            ("getDeletedInfrastructure", "ResourceNotFoundException", 404, "api-infra-\(suffix) does not exist"),
        ]
        for refusal in refusals {
            answers[refusal.label].expectRefused(refusal.code, status: refusal.status, saying: refusal.says)
        }

        // Components: the same version again is its next build, as Image Builder does since 2025-11.
        let component = "\(Self.arn):component/api-c-\(suffix)"
        #expect(answers["createComponent"].string("componentBuildVersionArn") == component + "/1.0.0/1")
        #expect(answers["createComponent"].string("latestVersionReferences.latestMajorVersionArn") == component + "/1.x.x")
        #expect(answers["createComponentAgain"].string("componentBuildVersionArn") == component + "/1.0.0/2")
        let got = answers["getComponent"]
        #expect(got.string("component.arn") == component + "/1.0.0/1")
        #expect(got.string("component.type") == "BUILD" && got.string("component.platform") == "Linux")
        #expect(got.string("component.parameters.0.name") == "Greeting")
        #expect(got.value("component.parameters.0.defaultValue") as? [String] == ["hello"])
        #expect(got.string("component.data")?.contains("{{ Greeting }}") == true)
        #expect(got.value("component.tags") as? [String: String] == ["team": "api"], "the tags given on create")
        #expect(answers["getComponentNewest"].string("component.arn") == component + "/1.0.1/1", "x.x.x picks the newest version")
        let firstPage = answers["listComponentBuildVersionsPage1"]
        #expect(firstPage.list("componentSummaryList").map { $0["arn"] as? String } == [component + "/1.0.0/1"])
        #expect(firstPage.string("nextToken") != nil)
        let lastPage = answers["listComponentBuildVersionsPage2"]
        #expect(lastPage.list("componentSummaryList").map { $0["arn"] as? String } == [component + "/1.0.0/2"])
        #expect(lastPage.string("nextToken") == nil)
        #expect(answers["listComponents"].list("componentVersionList").map { $0["version"] as? String } == ["1.0.0", "1.0.1"])

        // ImportComponent: the shell script becomes one ExecuteBash step of the build phase.
        #expect(answers["importComponent"].string("componentBuildVersionArn") == "\(Self.arn):component/api-import-\(suffix)/1.0.0/1")
        let imported = answers["getImportedComponent"].string("component.data") ?? ""
        #expect(imported.contains("- name: build") && imported.contains("action: ExecuteBash"), "\(imported)")
        #expect(imported.contains("echo imported > /etc/kiln-imported"), "\(imported)")

        // Recipes.
        let containerRecipe = answers["getContainerRecipe"]
        #expect(containerRecipe.string("containerRecipe.arn") == "\(Self.arn):container-recipe/api-cr-\(suffix)/1.0.0")
        #expect(containerRecipe.string("containerRecipe.containerType") == "DOCKER")
        #expect(containerRecipe.string("containerRecipe.parentImage") == "bootstrap:debian:bookworm")
        #expect(containerRecipe.string("containerRecipe.targetRepository.repositoryName") == "kiln-api/\(suffix)")
        #expect(containerRecipe.value("containerRecipe.components.0.parameters.0.value") as? [String] == ["hi"])
        #expect(containerRecipe.string("containerRecipe.dockerfileTemplateData")?.contains("{{{ imagebuilder:components }}}") == true)
        #expect(answers["getImageRecipe"].value("imageRecipe.tags") as? [String: String] == ["kind": "ami"])
        #expect(answers["listContainerRecipes"].list("containerRecipeSummaryList").count == 1)
        #expect(answers["listImageRecipes"].list("imageRecipeSummaryList").map { $0["name"] as? String } == ["api-ir-\(suffix)"])
        #expect(answers["listImageRecipesAmazon"].list("imageRecipeSummaryList").isEmpty, "Kiln owns no Amazon recipes")

        // Infrastructure configurations: five, two a page, by hand and by boto3's paginator.
        let infrastructureNames = ["api-infra-\(suffix)"] + (1...4).map { "api-page\($0)-\(suffix)" }
        for walk in ["infrastructurePages", "infrastructurePaginator"] {
            #expect(answers[walk].value("pages") as? Int == 3, "\(walk)")
            #expect((answers[walk].value("names") as? [String])?.sorted() == infrastructureNames.sorted(), "\(walk)")
        }
        let infrastructure = answers["getInfrastructure"]
        #expect(answers["updateInfrastructure"].error == nil)
        #expect(infrastructure.value("infrastructureConfiguration.instanceTypes") as? [String] == ["t3.large"])
        #expect(infrastructure.string("infrastructureConfiguration.description") == "bigger")
        #expect(infrastructure.string("infrastructureConfiguration.dateUpdated") != nil)
        #expect(infrastructure.value("infrastructureConfiguration.tags") as? [String: String] == ["team": "api"], "an update keeps tags")

        // Distribution configurations.
        #expect(answers["updateDistribution"].error == nil)
        #expect(answers["getDistribution"].list("distributionConfiguration.distributions").map { $0["region"] as? String } == ["us-east-1"])
        #expect(answers["getDistribution"].string("distributionConfiguration.description") == "one region")
        #expect(answers["listDistributions"].value("distributionConfigurationSummaryList.0.regions") as? [String] == ["us-east-1"])

        // Pipelines and tags.
        let pipeline = answers["getPipeline"]
        #expect(answers["updatePipeline"].error == nil)
        #expect(pipeline.string("imagePipeline.status") == "ENABLED" && pipeline.string("imagePipeline.description") == "enabled now")
        #expect(pipeline.string("imagePipeline.containerRecipeArn") == "\(Self.arn):container-recipe/api-cr-\(suffix)/1.0.0")
        #expect(answers["listPipelines"].list("imagePipelineList").count == 1)
        #expect(answers["listPipelineImages"].list("imageSummaryList").isEmpty)
        #expect(answers["tagPipeline"].error == nil && answers["untagPipeline"].error == nil)
        #expect(answers["listPipelineTags"].value("tags") as? [String: String] == ["cost": "kiln"])
        #expect(answers["listComponentBuildTags"].value("tags") as? [String: String] == ["team": "api", "audited": "yes"])

        // clientToken: the same request is answered as the first time, not refused as a duplicate.
        let first = answers["tokenFirst"].string("infrastructureConfigurationArn")
        #expect(first == "\(Self.arn):infrastructure-configuration/api-token-\(suffix)")
        #expect(answers["tokenReplay"].error == nil && answers["tokenReplay"].string("infrastructureConfigurationArn") == first)

        // Deletes, users first; afterwards nothing is found.
        for label in ["deletePipeline", "deleteContainerRecipe", "deleteImageRecipe", "deleteDistribution", "deleteImportedComponent"]
            + (0...5).map({ "deleteInfrastructure\($0)" }) + ["deleteComponent1.0.1/1"]
        {
            #expect(answers[label].error == nil && answers[label].status == 200, "\(label): \(answers[label])")
        }
        #expect(answers["listDeletedContainerRecipes"].list("containerRecipeSummaryList").isEmpty)
        // Each build of a version with two goes (neither is "used by" the other), and then is not found.
        answers["deleteComponent1.0.0/1"].expectAccepted()
        answers["deleteComponent1.0.0/2"].expectAccepted()
        answers["getDeletedComponent"].expectRefused("ResourceNotFoundException", status: 404, saying: "does not exist")
        // A reference is a whole ARN: …/api-web-X is not used by the pipeline of …/api-web-X-prod.
        answers["deleteInfrastructureNamePrefix"].expectAccepted()
        #expect(answers["deletePipelineWebProd"].error == nil)
    }

    @Test("SigV4: a wrong secret, an unknown key, a clock 20 minutes off, a changed body and no signature are refused with 403")
    func signatures() throws {
        let server = try KilnServerUnderTest(regions: ["us-east-1": "127.0.0.1:1"])
        defer { server.stop() }
        let answers = try server.boto("signatures", suffix: suffix)
        #expect(answers["signedRightly"].status == 200, "\(answers["signedRightly"])")
        let refusals: [(label: String, code: String, says: String)] = [
            ("wrongSecret", "InvalidSignatureException", "The request signature we calculated does not match the signature you provided"),
            ("unknownKey", "UnrecognizedClientException", "The security token included in the request is invalid"),
            ("clockBehind", "InvalidSignatureException", "Signature expired"),
            ("clockAhead", "InvalidSignatureException", "Signature not yet current"),
            ("tamperedBody", "InvalidSignatureException", "does not match"),
            ("unsigned", "MissingAuthenticationTokenException", "Missing Authentication Token"),
        ]
        for refusal in refusals {
            answers[refusal.label].expectRefused(refusal.code, status: 403, saying: refusal.says)
        }
        answers["tamperedNotCreated"].expectRefused("ResourceNotFoundException", status: 404, saying: "does not exist")

        // The AWS CLI with a wrong secret says so, and exits non-zero.
        var cli = server.cli
        cli.secretAccessKey = "not-the-secret"
        cli("list-components").expectRefused("InvalidSignatureException", saying: "does not match")
        server.cli("list-components", "--max-results", "1", "--no-paginate").expectAccepted()
    }

    @Test("The queue: one build running, one queued; both cancel to CANCELLED, and a running image cannot be deleted or retried")
    func cancelQueuedAndRunning() throws {
        let server = try KilnServerUnderTest(regions: [:], maxConcurrentBuilds: 1)
        defer { server.stop() }
        let answers = try server.boto("queue", suffix: suffix)
        let image = "\(Self.arn):image/api-queue-\(suffix)/1.0.0"
        #expect(answers["startPipeline"].string("imageBuildVersionArn") == image + "/1")
        #expect(answers["createImage"].string("imageBuildVersionArn") == image + "/2")
        answers["createImageNoRecipe"].expectRefused("InvalidParameterCombinationException", status: 400, saying: "exactly one")
        try #require(
            answers["runningReached"].string("status") == "BUILDING",
            "the first build reached BUILDING: \(answers["runningReached"])\n\(server.logTail())")
        #expect(answers["getQueued"].string("image.state.status") == "PENDING", "one build at a time: the second waits")
        answers["queuedPackages"].expectRefused(
            "InvalidRequestException", status: 400, saying: "has no package inventory yet (it is PENDING)")
        let running = answers["runningWorkflows"].list("workflowExecutions")
        #expect(running.map { $0["type"] as? String } == ["BUILD"] && running.first?["status"] as? String == "RUNNING", "\(running)")
        answers["deleteRunningImage"].expectRefused("ResourceInUseException", status: 400, saying: "is BUILDING; cancel it")
        answers["deleteBusyPipeline"].expectRefused("ResourceInUseException", status: 400, saying: "has a build running")

        answers["cancelQueued"].expectAccepted()
        #expect(answers["getQueuedAfterCancel"].string("image.state.status") == "CANCELLED")
        #expect(answers["getQueuedAfterCancel"].string("image.state.reason")?.contains("before it started") == true)
        answers["cancelRunning"].expectAccepted()
        #expect(answers["runningAfterCancel"].string("status") == "CANCELLED", "\(answers["runningAfterCancel"])\n\(server.logTail())")
        #expect((answers["cancelRunningSeconds"].output["value"] as? Double ?? 99) < 60, "a cancelled build stops promptly")
        answers["cancelAgain"].expectRefused("ResourceInUseException", status: 400, saying: "is CANCELLED; only a build in progress")
        answers["retryCancelled"].expectRefused(
            "InvalidRequestException", status: 400, saying: "RetryImage sends an image that failed in DISTRIBUTE")
        let cancelled = answers["cancelledWorkflows"].list("workflowExecutions")
        #expect(cancelled.first?["type"] as? String == "BUILD" && cancelled.first?["status"] as? String == "CANCELLED", "\(cancelled)")

        #expect(
            answers["pipelineImages"].list("imageSummaryList").map { $0["arn"] as? String } == [image + "/1"],
            "CreateImage's is not the pipeline's")
        #expect(Set(answers["buildVersions"].list("imageSummaryList").compactMap { $0["arn"] as? String }) == [image + "/1", image + "/2"])
        #expect(answers["listImages"].list("imageVersionList").map { $0["arn"] as? String } == [image])
        #expect(answers["queuedTags"].value("tags") as? [String: String] == ["queued": "yes"])
        for label in [
            "deleteRunningAfterCancel", "deleteQueuedAfterCancel", "deletePipeline", "deleteRecipe", "deleteInfrastructure",
            "deleteComponent",
        ] {
            answers[label].expectAccepted()
        }
        answers["getDeletedImage"].expectRefused("ResourceNotFoundException", status: 404, saying: "does not exist")
    }

    @Test(
        "A container pipeline through the AWS CLI: built, tested and pushed to both regions' registries, with packages and workflow steps")
    func pipelineThroughTheCLI() throws {
        let east = try LoopbackRegistry()
        defer { east.stop() }
        let west = try LoopbackRegistry()
        defer { west.stop() }
        let server = try KilnServerUnderTest(regions: ["us-east-1": east.host, "eu-west-1": west.host])
        defer { server.stop() }
        let cli = server.cli
        let made = try createContainerResources(cli, scratch: server.scratch)
        let pipeline = cli(
            "create-image-pipeline", "--name", "api-web-\(suffix)", "--container-recipe-arn", made.recipe,
            "--infrastructure-configuration-arn", made.infrastructure, "--distribution-configuration-arn", made.distribution,
            "--image-tests-configuration", "imageTestsEnabled=true,timeoutMinutes=60", "--tags", "team=api")
        let pipelineArn = try #require(pipeline.string("imagePipelineArn"), "\(pipeline)")

        let started = cli("start-image-pipeline-execution", "--image-pipeline-arn", pipelineArn)
        let image = try #require(started.string("imageBuildVersionArn"), "\(started)")
        #expect(image == "\(Self.arn):image/api-web-\(suffix)/1.0.0/1")
        let state = server.waitForImage(image, cli: cli)
        try #require(state["status"] == "AVAILABLE", "the image is AVAILABLE: \(state)\n\(server.logTail())")

        // Both regions' registries hold the image under the digest the API reports.
        let got = cli("get-image", "--image-build-version-arn", image)
        #expect(got.string("image.containerRecipe.arn") == made.recipe)
        #expect(got.string("image.sourcePipelineName") == "api-web-\(suffix)")
        let containers = got.list("image.outputResources.containers")
        #expect(Set(containers.compactMap { $0["region"] as? String }) == ["us-east-1", "eu-west-1"], "\(containers)")
        var digests: Set<String> = []
        for container in containers {
            let region = container["region"] as? String ?? ""
            let registry = region == "us-east-1" ? east.host : west.host
            let uris = container["imageUris"] as? [String] ?? []
            #expect(!uris.isEmpty, "\(region) has an image URI")
            for uri in uris {
                let parts = uri.split(separator: "@").map(String.init)
                #expect(parts.count == 2 && parts[0].hasPrefix("\(registry)/kiln-api/\(suffix):"), "\(region): \(uri)")
                let inspected = try shell("skopeo inspect --tls-verify=false docker://\(parts[0])", includeStandardError: true)
                let manifest = (try? JSONSerialization.jsonObject(with: Data(inspected.output.utf8))) as? [String: Any]
                #expect(
                    inspected.status == 0 && manifest?["Digest"] as? String == parts.last, "skopeo inspect \(parts[0]): \(inspected.output)"
                )
                digests.insert(parts.last ?? "")
            }
        }
        #expect(digests.count == 1, "one image in both regions: \(digests)")
        let tags = containers.first { $0["region"] as? String == "us-east-1" }?["imageUris"] as? [String] ?? []
        #expect(tags.contains { $0.contains(":latest@") }, "us-east-1 has the containerTags: \(tags)")

        // The image's dpkg inventory, whole and a page at a time.
        let packages = cli("list-image-packages", "--image-build-version-arn", image, "--page-size", "10")
        let names = packages.list("imagePackageList").compactMap { $0["packageName"] as? String }
        #expect(names.contains("base-files") && names.contains("dpkg"), "\(names)")
        #expect(names.count == Set(names).count && names.count > 50, "\(names.count) packages, no repeats")
        let onePage = cli("list-image-packages", "--image-build-version-arn", image, "--max-results", "10", "--no-paginate")
        #expect(onePage.list("imagePackageList").count == 10 && onePage.string("nextToken") != nil, "\(onePage)")

        // BUILD, TEST and DISTRIBUTION, their steps, and one of each read back.
        let workflows = cli("list-workflow-executions", "--image-build-version-arn", image).list("workflowExecutions")
        #expect(workflows.map { $0["type"] as? String } == ["BUILD", "TEST", "DISTRIBUTION"], "\(workflows)")
        #expect(workflows.allSatisfy { $0["status"] as? String == "COMPLETED" }, "\(workflows)")
        let buildId = workflows.first?["workflowExecutionId"] as? String ?? ""
        let buildWorkflow = cli("get-workflow-execution", "--workflow-execution-id", buildId)
        #expect(buildWorkflow.string("type") == "BUILD" && buildWorkflow.string("imageBuildVersionArn") == image, "\(buildWorkflow)")
        let buildSteps = cli("list-workflow-step-executions", "--workflow-execution-id", buildId).list("steps")
        let stepNames = buildSteps.compactMap { $0["name"] as? String }
        #expect(stepNames.contains { $0.contains("api-hello-\(suffix)") }, "the BUILD steps name the component: \(stepNames)")
        #expect(stepNames.contains { $0.contains("api-import-\(suffix)") }, "and the imported one: \(stepNames)")
        let stepId = buildSteps.first?["stepExecutionId"] as? String ?? ""
        let step = cli("get-workflow-step-execution", "--step-execution-id", stepId)
        #expect(step.string("name") == stepNames.first && step.string("workflowExecutionId") == buildId, "\(step)")
        let distributeId = workflows.last?["workflowExecutionId"] as? String ?? ""
        let distributeSteps = cli("list-workflow-step-executions", "--workflow-execution-id", distributeId).list("steps")
        #expect(distributeSteps.map { $0["name"] as? String } == ["Distribute eu-west-1", "Distribute us-east-1"], "\(distributeSteps)")
        #expect(distributeSteps.allSatisfy { $0["status"] as? String == "COMPLETED" }, "\(distributeSteps)")

        // Listings that name the image.
        let pipelineImages = cli("list-image-pipeline-images", "--image-pipeline-arn", pipelineArn).list("imageSummaryList")
        #expect(pipelineImages.map { $0["arn"] as? String } == [image], "\(pipelineImages)")
        let versions = cli("list-image-build-versions", "--image-version-arn", "\(Self.arn):image/api-web-\(suffix)/1.0.0")
        #expect(versions.list("imageSummaryList").first?["arn"] as? String == image, "\(versions)")
        let listed = cli("list-images", "--filters", "name=name,values=api-web-\(suffix)").list("imageVersionList")
        #expect(listed.map { $0["arn"] as? String } == ["\(Self.arn):image/api-web-\(suffix)/1.0.0"], "\(listed)")
        #expect(cli("get-image-pipeline", "--image-pipeline-arn", pipelineArn).string("imagePipeline.dateLastRun") != nil)
        cli("tag-resource", "--resource-arn", image, "--tags", "release=candidate").expectAccepted()
        #expect(cli("list-tags-for-resource", "--resource-arn", image).value("tags") as? [String: String] == ["release": "candidate"])

        // What the AWS CLI shows for refusals, then everything is deleted, the image first.
        cli("delete-component", "--component-build-version-arn", made.component + "/1")
            .expectRefused("ResourceDependencyException", saying: "is used by \(made.recipe)")
        cli("get-image", "--image-build-version-arn", "\(Self.arn):image/api-web-\(suffix)/9.9.9/1")
            .expectRefused("ResourceNotFoundException", saying: "does not exist")
        cli("list-lifecycle-policies").expectRefused("InvalidRequestException", saying: "Kiln does not support ListLifecyclePolicies")
        cli("delete-image", "--image-build-version-arn", image).expectAccepted()
        cli("delete-image-pipeline", "--image-pipeline-arn", pipelineArn).expectAccepted()
        try deleteContainerResources(made, cli: cli)
    }

    @Test("RetryImage: CreateImage fails in DISTRIBUTE while one region's registry is down, and a retry pushes it without rebuilding")
    func retryAfterDistributionFailed() throws {
        let east = try LoopbackRegistry()
        defer { east.stop() }
        let westPort = freeLoopbackPort()
        let server = try KilnServerUnderTest(regions: ["us-east-1": east.host, "eu-west-1": "127.0.0.1:\(westPort)"])
        defer { server.stop() }
        let cli = server.cli
        let made = try createContainerResources(cli, scratch: server.scratch)
        let created = cli(
            "create-image", "--container-recipe-arn", made.recipe, "--infrastructure-configuration-arn", made.infrastructure,
            "--distribution-configuration-arn", made.distribution)
        let image = try #require(created.string("imageBuildVersionArn"), "\(created)")
        let failed = server.waitForImage(image, cli: cli)
        try #require(failed["status"] == "FAILED", "the push to the missing registry failed: \(failed)\n\(server.logTail())")
        #expect(failed["reason"]?.contains("127.0.0.1:\(westPort)") == true, "\(failed)")
        let workflows = cli("list-workflow-executions", "--image-build-version-arn", image).list("workflowExecutions")
        #expect(workflows.map { $0["status"] as? String } == ["COMPLETED", "COMPLETED", "FAILED"], "\(workflows)")
        let distributeId = workflows.last?["workflowExecutionId"] as? String ?? ""
        let steps = cli("list-workflow-step-executions", "--workflow-execution-id", distributeId).list("steps")
        let west = steps.first { $0["name"] as? String == "Distribute eu-west-1" }
        #expect(west?["status"] as? String == "FAILED" && (west?["message"] as? String)?.contains("\(westPort)") == true, "\(steps)")
        cli("list-image-packages", "--image-build-version-arn", image).expectRefused("InvalidRequestException", saying: "FAILED")

        let westRegistry = try LoopbackRegistry(port: westPort)
        defer { westRegistry.stop() }
        cli("retry-image", "--image-build-version-arn", image).expectAccepted()
        let state = server.waitForImage(image, cli: cli, seconds: 300)
        try #require(state["status"] == "AVAILABLE", "the retry distributed it: \(state)\n\(server.logTail())")
        let containers = cli("get-image", "--image-build-version-arn", image).list("image.outputResources.containers")
        #expect(Set(containers.compactMap { $0["region"] as? String }) == ["us-east-1", "eu-west-1"], "\(containers)")
        let westUri = (containers.first { $0["region"] as? String == "eu-west-1" }?["imageUris"] as? [String])?.first ?? ""
        let parts = westUri.split(separator: "@").map(String.init)
        let inspected = try shell("skopeo inspect --tls-verify=false docker://\(parts.first ?? "none")")
        #expect(inspected.output.contains("\"Digest\": \"\(parts.last ?? "none")\""), "\(westUri): \(inspected.output)")
        #expect(
            server.log.components(separatedBy: "building \(image)").count == 2, "one build; the retry only distributed: \(server.logTail())"
        )
        let names = cli("list-image-packages", "--image-build-version-arn", image).list("imagePackageList").compactMap {
            $0["packageName"] as? String
        }
        #expect(names.contains("base-files"), "\(names)")
        cli("retry-image", "--image-build-version-arn", image).expectRefused("InvalidRequestException", saying: "is AVAILABLE")
        cli("delete-image", "--image-build-version-arn", image).expectAccepted()
        try deleteContainerResources(made, cli: cli)
    }

    // MARK: Resources made with the AWS CLI

    struct ContainerResources {
        var component: String
        var imported: String
        var recipe: String
        var infrastructure: String
        var distribution: String
    }

    /// A component (files), an imported shell script whose file its test phase checks, a container
    /// recipe of both, and configurations for both regions, each made with the AWS CLI.
    func createContainerResources(_ cli: AWSCLI, scratch: Scratch) throws -> ContainerResources {
        let document = try scratch.write(
            "component.yaml",
            """
            name: api-hello
            schemaVersion: 1.0
            phases:
              - name: build
                steps:
                  - name: Write
                    action: ExecuteBash
                    inputs:
                      commands: ["echo 'hello from the API' > /etc/kiln-api"]
              - name: validate
                steps:
                  - name: Check
                    action: ExecuteBash
                    inputs:
                      commands: ["grep -q 'hello from the API' /etc/kiln-api"]
              - name: test
                steps:
                  - name: BothRan
                    action: ExecuteBash
                    inputs:
                      commands: ["grep -q 'hello from the API' /etc/kiln-api", "grep -q imported /etc/kiln-imported"]
            """)
        let distributions = try scratch.write(
            "distributions.json",
            """
            [{"region": "us-east-1", "containerDistributionConfiguration": {"targetRepository": {"service": "ECR", "repositoryName": "kiln-api/\(suffix)"}, "containerTags": ["latest", "api"]}},
             {"region": "eu-west-1", "containerDistributionConfiguration": {"targetRepository": {"service": "ECR", "repositoryName": "kiln-api/\(suffix)"}}}]
            """)
        let component = cli(
            "create-component", "--name", "api-hello-\(suffix)", "--semantic-version", "1.0.0", "--platform", "Linux", "--data",
            "file://\(document)")
        let imported = cli(
            "import-component", "--name", "api-import-\(suffix)", "--semantic-version", "1.0.0", "--type", "BUILD", "--format", "SHELL",
            "--platform", "Linux", "--data", "#!/bin/bash\nset -e\necho imported > /etc/kiln-imported\n")
        let componentArn = try #require(component.string("componentBuildVersionArn"), "\(component)")
        let importedArn = try #require(imported.string("componentBuildVersionArn"), "\(imported)")
        let recipe = cli(
            "create-container-recipe", "--name", "api-web-\(suffix)", "--semantic-version", "1.0.0", "--container-type", "DOCKER",
            "--parent-image", "bootstrap:debian:bookworm", "--components",
            "componentArn=\(Self.arn):component/api-hello-\(suffix)/1.0.0", "componentArn=\(Self.arn):component/api-import-\(suffix)/1.x.x",
            "--target-repository", "service=ECR,repositoryName=kiln-api/\(suffix)", "--dockerfile-template-data",
            "FROM {{{ imagebuilder:parentImage }}}\n{{{ imagebuilder:environments }}}\n{{{ imagebuilder:components }}}\nENV KILN_API=1\n")
        let infrastructure = cli(
            "create-infrastructure-configuration", "--name", "api-infra-\(suffix)", "--instance-profile-name", "kiln", "--instance-types",
            "t3.medium")
        let distribution = cli(
            "create-distribution-configuration", "--name", "api-dist-\(suffix)", "--distributions", "file://\(distributions)")
        #expect(componentArn == "\(Self.arn):component/api-hello-\(suffix)/1.0.0/1")
        #expect(importedArn == "\(Self.arn):component/api-import-\(suffix)/1.0.0/1")
        return ContainerResources(
            component: String(componentArn.dropLast(2)), imported: importedArn,
            recipe: try #require(recipe.string("containerRecipeArn"), "\(recipe)"),
            infrastructure: try #require(infrastructure.string("infrastructureConfigurationArn"), "\(infrastructure)"),
            distribution: try #require(distribution.string("distributionConfigurationArn"), "\(distribution)"))
    }

    func deleteContainerResources(_ made: ContainerResources, cli: AWSCLI) throws {
        cli("delete-container-recipe", "--container-recipe-arn", made.recipe).expectAccepted()
        cli("delete-distribution-configuration", "--distribution-configuration-arn", made.distribution).expectAccepted()
        cli("delete-infrastructure-configuration", "--infrastructure-configuration-arn", made.infrastructure).expectAccepted()
        cli("delete-component", "--component-build-version-arn", made.component + "/1").expectAccepted()
        cli("delete-component", "--component-build-version-arn", made.imported).expectAccepted()
    }
}

// MARK: - The server, the AWS CLI and the boto3 script

/// A `kiln server` on a free loopback port with its own kiln.yaml (the CLI tests' data
/// directory, the test key pair, `regions` as name → registry) and its log in a scratch
/// folder; `stop()` sends SIGINT, its graceful stop.
final class KilnServerUnderTest {
    static let accessKeyId = "AKIAKILNTEST"
    static let secretAccessKey = "kilnsecret"
    static let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures/server_api_check.py")
        .path

    let scratch = Scratch("kiln-server-api")
    let port = freeLoopbackPort()
    private let process = Process()

    /// `regions`: name → registry. `regionsBlock`: a whole `regions:` block instead (image stores).
    init(regions: [String: String], regionsBlock: String? = nil, maxConcurrentBuilds: Int = 2) throws {
        var config = """
            dataDirectory: \(sharedDataDirectory)
            listen: 127.0.0.1:\(port)
            maxConcurrentBuilds: \(maxConcurrentBuilds)
            credentials:
              - {accessKeyId: \(Self.accessKeyId), secretAccessKey: \(Self.secretAccessKey)}

            """
        if let regionsBlock {
            config += regionsBlock
        } else if !regions.isEmpty {
            config +=
                "regions:\n"
                + regions.sorted { $0.key < $1.key }.map { "  \($0.key): {registry: \"\($0.value)\", insecure: true}\n" }.joined()
        }
        let configuration = try scratch.write("kiln.yaml", config)
        _ = FileManager.default.createFile(atPath: scratch.file("server.log"), contents: nil)
        let log = try FileHandle(forWritingTo: URL(fileURLWithPath: scratch.file("server.log")))
        process.executableURL = URL(fileURLWithPath: Kiln.binary)
        process.arguments = ["server", "--config", configuration]
        process.currentDirectoryURL = URL(fileURLWithPath: scratch.path)
        process.standardOutput = log
        process.standardError = log
        try process.run()
        let deadline = Date().addingTimeInterval(60)
        while !loopbackAccepts(port) {
            guard process.isRunning, Date() < deadline else {
                let tail = logTail()
                stop()
                throw FixtureError("kiln server did not listen on 127.0.0.1:\(port): \(tail)")
            }
            usleep(50_000)
        }
    }

    var endpoint: String { "http://127.0.0.1:\(port)" }
    var log: String { (try? scratch.read("server.log")) ?? "" }
    func logTail(_ characters: Int = 8000) -> String { "server log:\n" + String(log.suffix(characters)) }

    /// The AWS CLI as a user configures it: the key pair and region in the environment, nothing else.
    var cli: AWSCLI { AWSCLI(endpoint: endpoint, secretAccessKey: Self.secretAccessKey, home: scratch.path) }

    /// Runs one scenario of the boto3 script; it must exit 0, having recorded every answer.
    func boto(_ scenario: String, suffix: String) throws -> APIAnswers {
        let run = try runTool("python3", [Self.script, scenario, endpoint, suffix], environment: cli.environment)
        let parsed = (try? JSONSerialization.jsonObject(with: Data(run.stdout.utf8))) as? [String: [String: Any]]
        let answers = try #require(parsed, "the script printed its answers: \(run.stdout)\n\(run.stderr)\n\(logTail())")
        #expect(run.status == 0 && answers["_abort"] == nil, "\(scenario): \(answers["_abort"] ?? [:])\n\(run.stderr)\n\(logTail())")
        return APIAnswers(answers: answers.mapValues(APIOutcome.init(recorded:)), log: { [self] in logTail(3000) })
    }

    /// Polls get-image until the image is AVAILABLE, FAILED or CANCELLED, or `seconds` pass
    /// (the first bootstrap of the parent on a fresh machine takes minutes); returns its state.
    func waitForImage(_ image: String, cli: AWSCLI, seconds: Double = 600) -> [String: String] {
        let deadline = Date().addingTimeInterval(seconds)
        var state: [String: String] = [:]
        while Date() < deadline {
            state = cli("get-image", "--image-build-version-arn", image).value("image.state") as? [String: String] ?? [:]
            if ["AVAILABLE", "FAILED", "CANCELLED"].contains(state["status"] ?? "") { return state }
            sleep(2)
        }
        return state
    }

    func stop() {
        if process.isRunning {
            kill(process.processIdentifier, SIGINT)
            let deadline = Date().addingTimeInterval(60)
            while process.isRunning && Date() < deadline { usleep(50_000) }
            if process.isRunning { kill(process.processIdentifier, SIGKILL) }
            process.waitUntilExit()
        }
        scratch.remove()
    }
}

/// `aws imagebuilder … --endpoint-url` with the test key pair; `callAsFunction` returns what
/// the CLI printed: its JSON on success, the error code and message from stderr on failure.
struct AWSCLI {
    var endpoint: String
    var secretAccessKey: String
    var home: String

    var environment: [String: String] {
        [
            "AWS_ACCESS_KEY_ID": KilnServerUnderTest.accessKeyId, "AWS_SECRET_ACCESS_KEY": secretAccessKey,
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": home + "/no-aws-config",
            "AWS_SHARED_CREDENTIALS_FILE": home + "/no-aws-credentials",
            "AWS_PAGER": "",
        ]
    }

    @discardableResult
    func callAsFunction(_ arguments: String...) -> APIOutcome {
        let run: ToolRun
        do {
            run = try runTool(
                "aws", ["imagebuilder"] + arguments + ["--endpoint-url", endpoint, "--output", "json"], environment: environment)
        } catch {
            return APIOutcome(status: nil, error: "NotRun", message: "aws could not run: \(error)", output: [:])
        }
        guard run.status == 0 else {
            // "An error occurred (Code) when calling the Operation operation: message"
            let pattern = #/An error occurred \((\w+)\) when calling the \w+ operation: (.*)/#
            let match = run.stderr.firstMatch(of: pattern)
            return APIOutcome(
                status: Int(run.status), error: match.map { String($0.1) } ?? "exit \(run.status)",
                message: match.map { String($0.2) } ?? run.stderr, output: [:])
        }
        let output = run.stdout.isEmpty ? [:] : (try? JSONSerialization.jsonObject(with: Data(run.stdout.utf8))) as? [String: Any]
        return APIOutcome(
            status: 0, error: output == nil ? "NotJSON" : nil, message: output == nil ? run.stdout : "", output: output ?? [:])
    }
}

/// One answer: HTTP status (boto3) or exit status (CLI), the error code and message, and the output.
struct APIOutcome: CustomStringConvertible {
    var status: Int?
    var error: String?
    var message: String
    var output: [String: Any]

    init(status: Int?, error: String?, message: String, output: [String: Any]) {
        self.status = status
        self.error = error
        self.message = message
        self.output = output
    }

    /// As the boto3 script records it; a value it worked out itself (not a dictionary) is `output["value"]`.
    init(recorded: [String: Any]) {
        status = recorded["status"] as? Int
        error = recorded["error"] as? String
        message = recorded["message"] as? String ?? ""
        output = recorded["output"] as? [String: Any] ?? recorded["output"].map { ["value": $0] } ?? [:]
    }

    /// The value at a dotted path of members and list indexes: `image.outputResources.containers.0.region`.
    func value(_ path: String) -> Any? {
        var current: Any? = output
        for key in path.split(separator: ".") {
            if let index = Int(key), let list = current as? [Any] {
                current = index < list.count ? list[index] : nil
            } else {
                current = (current as? [String: Any])?[String(key)]
            }
        }
        return current is NSNull ? nil : current
    }

    func string(_ path: String) -> String? { value(path) as? String }
    func list(_ path: String) -> [[String: Any]] { value(path) as? [[String: Any]] ?? [] }

    var description: String {
        if let error { return "\(error) (\(status.map(String.init) ?? "-")): \(message)" }
        let data = try? JSONSerialization.data(withJSONObject: output, options: [.sortedKeys])
        return String(decoding: (data ?? Data()).prefix(3000), as: UTF8.self)
    }

    func expectAccepted(sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(error == nil, "expected success, got \(self)", sourceLocation: sourceLocation)
    }

    /// Refused with `code` and a message containing `saying`; `status` is the HTTP status (boto3 only).
    func expectRefused(_ code: String, status expected: Int? = nil, saying: String, sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(error == code, "expected \(code), got \(self)", sourceLocation: sourceLocation)
        #expect(message.contains(saying), "\(code)'s message says '\(saying)': \(message)", sourceLocation: sourceLocation)
        if let expected { #expect(status == expected, "\(code) has HTTP status \(expected): \(self)", sourceLocation: sourceLocation) }
    }
}

/// The boto3 script's answers by label; a label it did not record is an issue, not a crash.
struct APIAnswers {
    var answers: [String: APIOutcome]
    var log: () -> String

    subscript(_ label: String) -> APIOutcome {
        guard let answer = answers[label] else {
            Issue.record("the script recorded no answer for \(label)\n\(log())")
            return APIOutcome(status: nil, error: "NotRecorded", message: label, output: [:])
        }
        return answer
    }
}

struct ToolRun {
    var status: Int32
    var stdout: String
    var stderr: String
}

/// Runs a tool from PATH with extra environment; stderr goes through a file, so a chatty
/// stderr cannot block the stdout pipe.
func runTool(_ name: String, _ arguments: [String], environment: [String: String]) throws -> ToolRun {
    guard let path = TestEnvironment.executable(name) else { throw FixtureError("\(name) is not installed; run scripts/setup") }
    let errors = NSTemporaryDirectory() + "kiln-tool-\(UUID().uuidString).err"
    _ = FileManager.default.createFile(atPath: errors, contents: nil)
    defer { try? FileManager.default.removeItem(atPath: errors) }
    let process = Process()
    process.executableURL = URL(fileURLWithPath: path)
    process.arguments = arguments
    // Only the AWS settings given here: a developer's AWS_PROFILE or AWS_ENDPOINT_URL must not leak in.
    process.environment = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("AWS_") }.merging(environment) { _, new in new }
    let output = Pipe()
    process.standardOutput = output
    process.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: errors))
    try process.run()
    let stdout = output.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return ToolRun(
        status: process.terminationStatus, stdout: String(decoding: stdout, as: UTF8.self),
        stderr: (try? String(contentsOfFile: errors, encoding: .utf8)) ?? "")
}
