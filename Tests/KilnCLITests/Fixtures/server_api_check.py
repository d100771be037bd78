#!/usr/bin/env python3
"""Drives `kiln server` through boto3, as a user's script would, for ServerAPITests.swift.

    server_api_check.py SCENARIO ENDPOINT SUFFIX

SCENARIO is one of: resources, signatures, queue. Every call is recorded under a label as
{"status": HTTP status, "error": code or null, "message": text or null, "output": the
response without ResponseMetadata}, and the scenario prints one JSON object, label ->
outcome, that the Swift test asserts on. SUFFIX makes the resource names unique, because
the tests share Kiln's data directory. A call the scenario needs in order to go on that
fails ends it: it still prints what it recorded, with "_abort" saying why, and exits 1.
"""

import datetime
import json
import sys
import time
import traceback
import urllib.error
import urllib.request

import boto3
import botocore.auth
from botocore.config import Config

ACCESS_KEY = "AKIAKILNTEST"
SECRET_KEY = "kilnsecret"
ARN = "arn:aws:imagebuilder:us-east-1:000000000000"

COMPONENT = """\
name: api-hello
description: writes a greeting
schemaVersion: 1.0
parameters:
  - Greeting:
      type: string
      default: hello
phases:
  - name: build
    steps:
      - name: Write
        action: ExecuteBash
        inputs:
          commands: ['echo "{{ Greeting }}" > /etc/kiln-api']
"""

SLOW_COMPONENT = """\
name: api-slow
schemaVersion: 1.0
phases:
  - name: build
    steps:
      - name: Wait
        action: ExecuteBash
        inputs:
          commands: ['sleep 300']
"""

DOCKERFILE = (
    "FROM {{{ imagebuilder:parentImage }}}\n"
    "{{{ imagebuilder:environments }}}\n"
    "{{{ imagebuilder:components }}}\n"
)


class Abort(Exception):
    pass


def client(endpoint, secret=SECRET_KEY, access_key=ACCESS_KEY, validate=True):
    # One attempt: a refused request must show as the server answered it, not retried.
    return boto3.client(
        "imagebuilder",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=access_key,
        aws_secret_access_key=secret,
        config=Config(retries={"max_attempts": 1, "mode": "standard"}, parameter_validation=validate, read_timeout=300),
    )


class Recorder:
    def __init__(self):
        self.outcomes = {}

    def call(self, label, api, operation, **parameters):
        try:
            response = getattr(api, operation)(**parameters)
            status = response.pop("ResponseMetadata", {}).get("HTTPStatusCode")
            outcome = {"status": status, "error": None, "message": None, "output": response}
        except botocore.exceptions.ClientError as error:
            outcome = {
                "status": error.response.get("ResponseMetadata", {}).get("HTTPStatusCode"),
                "error": error.response.get("Error", {}).get("Code"),
                "message": error.response.get("Error", {}).get("Message"),
                "output": None,
            }
        self.outcomes[label] = outcome
        return outcome

    def need(self, label, api, operation, **parameters):
        """A call the scenario cannot go on without: its failure ends the scenario."""
        outcome = self.call(label, api, operation, **parameters)
        if outcome["error"]:
            raise Abort(f"{label}: {operation} failed: {outcome['error']}: {outcome['message']}")
        return outcome["output"]

    def note(self, label, output):
        """A value the scenario worked out itself (pages walked, a state reached)."""
        self.outcomes[label] = {"status": None, "error": None, "message": None, "output": output}


def api_delete_quietly(api, operation, **parameters):
    """Cleanup whose answer the scenario does not check (it may already be gone)."""
    try:
        getattr(api, operation)(**parameters)
    except botocore.exceptions.ClientError:
        pass


def wait_for_status(api, image, statuses, seconds):
    """Polls GetImage until the image's status is one of `statuses` or final; returns the state."""
    deadline = time.time() + seconds
    state = {}
    while time.time() < deadline:
        state = api.get_image(imageBuildVersionArn=image)["image"]["state"]
        if state["status"] in statuses or state["status"] in ("AVAILABLE", "FAILED", "CANCELLED"):
            return state
        time.sleep(0.5)
    return state


# MARK: resources: create, get, list, update, delete, tags, tokens, pages and refusals


def resources(endpoint, suffix, record):
    api = client(endpoint)
    unchecked = client(endpoint, validate=False)
    component, imported = f"api-c-{suffix}", f"api-import-{suffix}"
    image_recipe, container_recipe = f"api-ir-{suffix}", f"api-cr-{suffix}"
    infrastructure, distribution, pipeline = f"api-infra-{suffix}", f"api-dist-{suffix}", f"api-pipe-{suffix}"
    component_arn = f"{ARN}:component/{component}/1.0.0"
    infrastructure_arn = f"{ARN}:infrastructure-configuration/{infrastructure}"
    distribution_arn = f"{ARN}:distribution-configuration/{distribution}"
    container_recipe_arn = f"{ARN}:container-recipe/{container_recipe}/1.0.0"
    image_recipe_arn = f"{ARN}:image-recipe/{image_recipe}/1.0.0"
    pipeline_arn = f"{ARN}:image-pipeline/{pipeline}"

    # Components: a new build of the same version, and versions listed newest build per version.
    record.need(
        "createComponent", api, "create_component", name=component, semanticVersion="1.0.0", platform="Linux",
        data=COMPONENT, description="first", tags={"team": "api"})
    record.need(
        "createComponentAgain", api, "create_component", name=component, semanticVersion="1.0.0", platform="Linux",
        data=COMPONENT)
    record.need(
        "createComponent101", api, "create_component", name=component, semanticVersion="1.0.1", platform="Linux",
        data=COMPONENT)
    record.call("getComponent", api, "get_component", componentBuildVersionArn=component_arn + "/1")
    record.call("getComponentNewest", api, "get_component", componentBuildVersionArn=f"{ARN}:component/{component}/x.x.x")
    record.call(
        "listComponentBuildVersionsPage1", api, "list_component_build_versions", componentVersionArn=component_arn,
        maxResults=1)
    token = (record.outcomes["listComponentBuildVersionsPage1"]["output"] or {}).get("nextToken")
    record.call(
        "listComponentBuildVersionsPage2", api, "list_component_build_versions", componentVersionArn=component_arn,
        maxResults=1, nextToken=token or "none")
    record.call("listComponents", api, "list_components", filters=[{"name": "name", "values": [component]}])
    record.call("listComponentsBadFilter", api, "list_components", filters=[{"name": "colour", "values": ["red"]}])

    # ImportComponent: a shell script becomes an ExecuteBash step.
    record.need(
        "importComponent", api, "import_component", name=imported, semanticVersion="1.0.0", type="BUILD",
        format="SHELL", platform="Linux", data="#!/bin/bash\necho imported > /etc/kiln-imported\n")
    record.call("getImportedComponent", api, "get_component", componentBuildVersionArn=f"{ARN}:component/{imported}/1.0.0/1")

    # Recipes.
    record.need(
        "createContainerRecipe", api, "create_container_recipe", name=container_recipe, semanticVersion="1.0.0",
        containerType="DOCKER", parentImage="bootstrap:debian:bookworm",
        components=[{"componentArn": component_arn, "parameters": [{"name": "Greeting", "value": ["hi"]}]}],
        targetRepository={"service": "ECR", "repositoryName": f"kiln-api/{suffix}"}, dockerfileTemplateData=DOCKERFILE)
    record.call(
        "createContainerRecipeTwice", api, "create_container_recipe", name=container_recipe, semanticVersion="1.0.0",
        containerType="DOCKER", parentImage="bootstrap:debian:bookworm", components=[{"componentArn": component_arn}],
        targetRepository={"service": "ECR", "repositoryName": f"kiln-api/{suffix}"}, dockerfileTemplateData=DOCKERFILE)
    record.call(
        "createContainerRecipeUnknownParameter", api, "create_container_recipe", name=container_recipe,
        semanticVersion="1.0.9", containerType="DOCKER", parentImage="bootstrap:debian:bookworm",
        components=[{"componentArn": component_arn, "parameters": [{"name": "Colour", "value": ["red"]}]}],
        targetRepository={"service": "ECR", "repositoryName": f"kiln-api/{suffix}"}, dockerfileTemplateData=DOCKERFILE)
    record.need(
        "createImageRecipe", api, "create_image_recipe", name=image_recipe, semanticVersion="1.0.0",
        parentImage="bootstrap:debian:bookworm", components=[{"componentArn": component_arn}], tags={"kind": "ami"})
    record.call(
        "createImageRecipeTwice", api, "create_image_recipe", name=image_recipe, semanticVersion="1.0.0",
        parentImage="bootstrap:debian:bookworm", components=[{"componentArn": component_arn}])
    record.call(
        "createImageRecipeMissingComponent", api, "create_image_recipe", name=image_recipe, semanticVersion="2.0.0",
        parentImage="bootstrap:debian:bookworm", components=[{"componentArn": f"{ARN}:component/api-none-{suffix}/1.0.0"}])
    record.call("getContainerRecipe", api, "get_container_recipe", containerRecipeArn=container_recipe_arn)
    record.call("getImageRecipe", api, "get_image_recipe", imageRecipeArn=image_recipe_arn)
    record.call(
        "listContainerRecipes", api, "list_container_recipes", filters=[{"name": "name", "values": [container_recipe]}])
    record.call("listImageRecipes", api, "list_image_recipes", filters=[{"name": "name", "values": [image_recipe]}])
    record.call("listImageRecipesAmazon", api, "list_image_recipes", owner="Amazon")

    # Infrastructure configurations: five, to page through two at a time.
    infrastructure_names = [infrastructure] + [f"api-page{index}-{suffix}" for index in range(1, 5)]
    for index, name in enumerate(infrastructure_names):
        record.need(
            f"createInfrastructure{index}", api, "create_infrastructure_configuration", name=name,
            instanceProfileName="kiln", instanceTypes=["t3.medium"], tags={"team": "api"})
    record.call(
        "createInfrastructureTwice", api, "create_infrastructure_configuration", name=infrastructure,
        instanceProfileName="kiln", instanceTypes=["t3.medium"])
    record.call(
        "createInfrastructureUnknownType", api, "create_infrastructure_configuration", name=f"api-odd-{suffix}",
        instanceProfileName="kiln", instanceTypes=["z9.colossal"])
    record.call(
        "updateInfrastructure", api, "update_infrastructure_configuration", infrastructureConfigurationArn=infrastructure_arn,
        instanceProfileName="kiln", instanceTypes=["t3.large"], description="bigger")
    record.call("getInfrastructure", api, "get_infrastructure_configuration", infrastructureConfigurationArn=infrastructure_arn)
    record.call(
        "updateInfrastructureMissing", api, "update_infrastructure_configuration",
        infrastructureConfigurationArn=f"{ARN}:infrastructure-configuration/api-none-{suffix}", instanceProfileName="kiln")
    pages, names, token = 0, [], None
    while True:
        extra = {"nextToken": token} if token else {}
        output = record.need(
            f"listInfrastructurePage{pages + 1}", api, "list_infrastructure_configurations", maxResults=2,
            filters=[{"name": "name", "values": infrastructure_names}], **extra)
        pages += 1
        names += [summary["name"] for summary in output["infrastructureConfigurationSummaryList"]]
        token = output.get("nextToken")
        if not token or pages > 10:
            break
    record.note("infrastructurePages", {"pages": pages, "names": names})
    paginator = api.get_paginator("list_infrastructure_configurations")
    walked = paginator.paginate(
        filters=[{"name": "name", "values": infrastructure_names}], PaginationConfig={"PageSize": 2})
    pages = list(walked)
    record.note("infrastructurePaginator", {
        "pages": len(pages),
        "names": [summary["name"] for page in pages for summary in page["infrastructureConfigurationSummaryList"]],
    })
    record.call(
        "listInfrastructureBadToken", api, "list_infrastructure_configurations", maxResults=2, nextToken="not-a-token")

    # Distribution configurations.
    distributions = [
        {"region": "us-east-1", "containerDistributionConfiguration": {
            "targetRepository": {"service": "ECR", "repositoryName": f"kiln-api/{suffix}"}, "containerTags": ["latest"]}},
        {"region": "eu-west-1", "containerDistributionConfiguration": {
            "targetRepository": {"service": "ECR", "repositoryName": f"kiln-api/{suffix}"}}},
    ]
    record.need(
        "createDistribution", api, "create_distribution_configuration", name=distribution, distributions=distributions)
    record.call(
        "createDistributionTwice", api, "create_distribution_configuration", name=distribution, distributions=distributions)
    record.call(
        "createDistributionUnknownRegion", api, "create_distribution_configuration", name=f"api-far-{suffix}",
        distributions=[{"region": "ap-nowhere-9", "containerDistributionConfiguration": {
            "targetRepository": {"service": "ECR", "repositoryName": "far"}}}])
    record.call(
        "updateDistribution", api, "update_distribution_configuration", distributionConfigurationArn=distribution_arn,
        distributions=distributions[:1], description="one region")
    record.call("getDistribution", api, "get_distribution_configuration", distributionConfigurationArn=distribution_arn)
    record.call(
        "listDistributions", api, "list_distribution_configurations", filters=[{"name": "name", "values": [distribution]}])

    # Pipelines.
    record.call(
        "createPipelineBothRecipes", api, "create_image_pipeline", name=f"api-both-{suffix}",
        containerRecipeArn=container_recipe_arn, imageRecipeArn=image_recipe_arn,
        infrastructureConfigurationArn=infrastructure_arn)
    record.call(
        "createPipelineMissingRecipe", api, "create_image_pipeline", name=f"api-lost-{suffix}",
        containerRecipeArn=f"{ARN}:container-recipe/api-none-{suffix}/1.0.0", infrastructureConfigurationArn=infrastructure_arn)
    record.need(
        "createPipeline", api, "create_image_pipeline", name=pipeline, containerRecipeArn=container_recipe_arn,
        infrastructureConfigurationArn=infrastructure_arn, distributionConfigurationArn=distribution_arn,
        status="DISABLED", tags={"stage": "one"})
    record.call("startDisabledPipeline", api, "start_image_pipeline_execution", imagePipelineArn=pipeline_arn)
    record.call(
        "updatePipeline", api, "update_image_pipeline", imagePipelineArn=pipeline_arn, containerRecipeArn=container_recipe_arn,
        infrastructureConfigurationArn=infrastructure_arn, distributionConfigurationArn=distribution_arn,
        status="ENABLED", description="enabled now")
    record.call("getPipeline", api, "get_image_pipeline", imagePipelineArn=pipeline_arn)
    record.call("listPipelines", api, "list_image_pipelines", filters=[{"name": "name", "values": [pipeline]}])
    record.call("listPipelineImages", api, "list_image_pipeline_images", imagePipelineArn=pipeline_arn)

    # A configuration whose name begins another's is not used by what uses the other.
    record.need(
        "createInfrastructureWeb", api, "create_infrastructure_configuration", name=f"api-web-{suffix}",
        instanceProfileName="kiln")
    record.need(
        "createInfrastructureWebProd", api, "create_infrastructure_configuration", name=f"api-web-{suffix}-prod",
        instanceProfileName="kiln")
    record.need(
        "createPipelineWebProd", api, "create_image_pipeline", name=f"api-webpipe-{suffix}",
        containerRecipeArn=container_recipe_arn,
        infrastructureConfigurationArn=f"{ARN}:infrastructure-configuration/api-web-{suffix}-prod")
    record.call(
        "deleteInfrastructureNamePrefix", api, "delete_infrastructure_configuration",
        infrastructureConfigurationArn=f"{ARN}:infrastructure-configuration/api-web-{suffix}")
    record.call(
        "deletePipelineWebProd", api, "delete_image_pipeline", imagePipelineArn=f"{ARN}:image-pipeline/api-webpipe-{suffix}")
    for name in (f"api-web-{suffix}-prod", f"api-web-{suffix}"):
        api_delete_quietly(
            api, "delete_infrastructure_configuration",
            infrastructureConfigurationArn=f"{ARN}:infrastructure-configuration/{name}")

    # Tags.
    record.call("tagPipeline", api, "tag_resource", resourceArn=pipeline_arn, tags={"cost": "kiln", "owner": "api"})
    record.call("untagPipeline", api, "untag_resource", resourceArn=pipeline_arn, tagKeys=["stage", "owner"])
    record.call("listPipelineTags", api, "list_tags_for_resource", resourceArn=pipeline_arn)
    record.call("tagComponentBuild", api, "tag_resource", resourceArn=component_arn + "/1", tags={"audited": "yes"})
    record.call("listComponentBuildTags", api, "list_tags_for_resource", resourceArn=component_arn + "/1")
    record.call(
        "tagMissingResource", api, "tag_resource", resourceArn=f"{ARN}:image-pipeline/api-none-{suffix}", tags={"a": "b"})

    # clientToken: the same request replays the first answer; another request is refused.
    token = f"api-token-{suffix}"
    record.call(
        "tokenFirst", api, "create_infrastructure_configuration", name=f"api-token-{suffix}",
        instanceProfileName="kiln", clientToken=token)
    record.call(
        "tokenReplay", api, "create_infrastructure_configuration", name=f"api-token-{suffix}",
        instanceProfileName="kiln", clientToken=token)
    record.call(
        "tokenMismatch", api, "create_infrastructure_configuration", name=f"api-token-{suffix}",
        instanceProfileName="kiln", description="another request", clientToken=token)

    # What the server itself refuses (the client's own checks switched off).
    record.call(
        "missingName", unchecked, "create_component", semanticVersion="1.0.0", platform="Linux", data=COMPONENT)
    record.call(
        "missingInfrastructureArn", unchecked, "create_image_pipeline", name=f"api-half-{suffix}",
        containerRecipeArn=container_recipe_arn)
    record.call(
        "badVersion", api, "create_component", name=f"api-v-{suffix}", semanticVersion="1.0", platform="Linux",
        data=COMPONENT)
    record.call(
        "badRecipeVersion", api, "create_image_recipe", name=f"api-v-{suffix}", semanticVersion="one.two.three",
        parentImage="bootstrap:debian:bookworm", components=[{"componentArn": component_arn}])
    record.call("getMissingImage", api, "get_image", imageBuildVersionArn=f"{ARN}:image/api-none-{suffix}/1.0.0/1")
    record.call("getMissingRecipe", api, "get_image_recipe", imageRecipeArn=f"{ARN}:image-recipe/api-none-{suffix}/1.0.0")
    record.call(
        "deleteMissingDistribution", api, "delete_distribution_configuration",
        distributionConfigurationArn=f"{ARN}:distribution-configuration/api-none-{suffix}")
    record.call(
        "getMissingWorkflow", api, "get_workflow_execution", workflowExecutionId="wf-0000000f-0000-4000-8000-00000000abcd")
    record.call(
        "getMissingWorkflowStep", api, "get_workflow_step_execution",
        stepExecutionId="step-0000000f-0000-4000-8000-00000000abcd")
    record.call("cancelMissingImage", api, "cancel_image_creation", imageBuildVersionArn=f"{ARN}:image/api-none-{suffix}/1.0.0/1")
    record.call("unsupportedOperation", api, "list_lifecycle_policies")

    # In use: what others name cannot go.
    record.call("deleteUsedComponent", api, "delete_component", componentBuildVersionArn=component_arn + "/1")
    record.call("deleteUsedRecipe", api, "delete_container_recipe", containerRecipeArn=container_recipe_arn)
    record.call(
        "deleteUsedInfrastructure", api, "delete_infrastructure_configuration",
        infrastructureConfigurationArn=infrastructure_arn)

    # Deletes, users first, and then nothing is left to find.
    record.call("deletePipeline", api, "delete_image_pipeline", imagePipelineArn=pipeline_arn)
    record.call("deleteContainerRecipe", api, "delete_container_recipe", containerRecipeArn=container_recipe_arn)
    record.call("deleteImageRecipe", api, "delete_image_recipe", imageRecipeArn=image_recipe_arn)
    record.call(
        "deleteDistribution", api, "delete_distribution_configuration", distributionConfigurationArn=distribution_arn)
    for index, name in enumerate(infrastructure_names + [f"api-token-{suffix}"]):
        record.call(
            f"deleteInfrastructure{index}", api, "delete_infrastructure_configuration",
            infrastructureConfigurationArn=f"{ARN}:infrastructure-configuration/{name}")
    for build in ("1.0.0/1", "1.0.0/2", "1.0.1/1"):
        record.call(
            f"deleteComponent{build}", api, "delete_component",
            componentBuildVersionArn=f"{ARN}:component/{component}/{build}")
    record.call(
        "deleteImportedComponent", api, "delete_component", componentBuildVersionArn=f"{ARN}:component/{imported}/1.0.0/1")
    record.call("getDeletedPipeline", api, "get_image_pipeline", imagePipelineArn=pipeline_arn)
    record.call("getDeletedComponent", api, "get_component", componentBuildVersionArn=component_arn + "/1")
    record.call("getDeletedInfrastructure", api, "get_infrastructure_configuration", infrastructureConfigurationArn=infrastructure_arn)
    record.call(
        "listDeletedContainerRecipes", api, "list_container_recipes",
        filters=[{"name": "name", "values": [container_recipe]}])


# MARK: signatures: what SigV4 refuses


def signatures(endpoint, suffix, record):
    record.call("signedRightly", client(endpoint), "list_image_pipelines", maxResults=1)
    record.call("wrongSecret", client(endpoint, secret="not-the-secret"), "list_image_pipelines")
    record.call("unknownKey", client(endpoint, access_key="AKIANOBODY"), "list_image_pipelines")
    now = botocore.auth.get_current_datetime
    for label, minutes in (("clockBehind", -20), ("clockAhead", 20)):
        botocore.auth.get_current_datetime = lambda remove_tzinfo=True, minutes=minutes: (
            now(remove_tzinfo) + datetime.timedelta(minutes=minutes))
        try:
            record.call(label, client(endpoint), "list_image_pipelines")
        finally:
            botocore.auth.get_current_datetime = now
    # A body changed after it was signed (same length, one letter) must not be acted on.
    tampered = client(endpoint)
    name = f"api-signed-{suffix}"

    def tamper(request, **_):
        request.body = request.body.replace(name.encode(), name.replace("signed", "sugned").encode())

    tampered.meta.events.register("before-send.imagebuilder.CreateInfrastructureConfiguration", tamper)
    record.call("tamperedBody", tampered, "create_infrastructure_configuration", name=name, instanceProfileName="kiln")
    record.call(
        "tamperedNotCreated", client(endpoint), "get_infrastructure_configuration",
        infrastructureConfigurationArn=f"{ARN}:infrastructure-configuration/{name.replace('signed', 'sugned')}")
    request = urllib.request.Request(endpoint + "/ListImagePipelines", data=b"{}", method="POST")
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            record.note("unsigned", {"httpStatus": response.status})
    except urllib.error.HTTPError as error:
        body = json.loads(error.read() or b"{}")
        record.outcomes["unsigned"] = {
            "status": error.code, "error": error.headers.get("X-Amzn-ErrorType"), "message": body.get("message"),
            "output": None,
        }


# MARK: queue: one build running, one queued; cancel both, and what a running image refuses


def queue(endpoint, suffix, record):
    api = client(endpoint)
    component, recipe = f"api-slow-{suffix}", f"api-queue-{suffix}"
    infrastructure, pipeline = f"api-qinfra-{suffix}", f"api-qpipe-{suffix}"
    recipe_arn = f"{ARN}:container-recipe/{recipe}/1.0.0"
    infrastructure_arn = f"{ARN}:infrastructure-configuration/{infrastructure}"
    pipeline_arn = f"{ARN}:image-pipeline/{pipeline}"
    record.need(
        "createComponent", api, "create_component", name=component, semanticVersion="1.0.0", platform="Linux",
        data=SLOW_COMPONENT)
    record.need(
        "createRecipe", api, "create_container_recipe", name=recipe, semanticVersion="1.0.0", containerType="DOCKER",
        parentImage="bootstrap:debian:bookworm", components=[{"componentArn": f"{ARN}:component/{component}/1.0.0"}],
        targetRepository={"service": "ECR", "repositoryName": f"kiln-api/{suffix}"}, dockerfileTemplateData=DOCKERFILE)
    record.need(
        "createInfrastructure", api, "create_infrastructure_configuration", name=infrastructure,
        instanceProfileName="kiln", instanceTypes=["t3.small"])
    record.need(
        "createPipeline", api, "create_image_pipeline", name=pipeline, containerRecipeArn=recipe_arn,
        infrastructureConfigurationArn=infrastructure_arn)
    running = record.need("startPipeline", api, "start_image_pipeline_execution", imagePipelineArn=pipeline_arn)[
        "imageBuildVersionArn"]
    record.call("createImageNoRecipe", api, "create_image", infrastructureConfigurationArn=infrastructure_arn)
    queued = record.need(
        "createImage", api, "create_image", containerRecipeArn=recipe_arn, infrastructureConfigurationArn=infrastructure_arn,
        tags={"queued": "yes"})["imageBuildVersionArn"]
    # The first bootstrap of the parent on a fresh machine can take minutes.
    record.note("runningReached", wait_for_status(api, running, ["BUILDING"], 600))
    record.call("getQueued", api, "get_image", imageBuildVersionArn=queued)
    record.call("queuedPackages", api, "list_image_packages", imageBuildVersionArn=queued)
    record.call("runningWorkflows", api, "list_workflow_executions", imageBuildVersionArn=running)
    record.call("deleteRunningImage", api, "delete_image", imageBuildVersionArn=running)
    record.call("deleteBusyPipeline", api, "delete_image_pipeline", imagePipelineArn=pipeline_arn)
    record.call("cancelQueued", api, "cancel_image_creation", imageBuildVersionArn=queued)
    record.call("getQueuedAfterCancel", api, "get_image", imageBuildVersionArn=queued)
    started = time.time()
    record.call("cancelRunning", api, "cancel_image_creation", imageBuildVersionArn=running)
    record.note("cancelRunningSeconds", time.time() - started)
    record.note("runningAfterCancel", wait_for_status(api, running, [], 120))
    record.call("cancelAgain", api, "cancel_image_creation", imageBuildVersionArn=running)
    record.call("retryCancelled", api, "retry_image", imageBuildVersionArn=running)
    record.call("cancelledWorkflows", api, "list_workflow_executions", imageBuildVersionArn=running)
    record.call("pipelineImages", api, "list_image_pipeline_images", imagePipelineArn=pipeline_arn)
    record.call("buildVersions", api, "list_image_build_versions", imageVersionArn=f"{ARN}:image/{recipe}/1.0.0")
    record.call("listImages", api, "list_images", filters=[{"name": "name", "values": [recipe]}])
    record.call("queuedTags", api, "list_tags_for_resource", resourceArn=queued)
    record.call("deleteRunningAfterCancel", api, "delete_image", imageBuildVersionArn=running)
    record.call("deleteQueuedAfterCancel", api, "delete_image", imageBuildVersionArn=queued)
    record.call("getDeletedImage", api, "get_image", imageBuildVersionArn=running)
    record.call("deletePipeline", api, "delete_image_pipeline", imagePipelineArn=pipeline_arn)
    record.call("deleteRecipe", api, "delete_container_recipe", containerRecipeArn=recipe_arn)
    record.call(
        "deleteInfrastructure", api, "delete_infrastructure_configuration", infrastructureConfigurationArn=infrastructure_arn)
    record.call(
        "deleteComponent", api, "delete_component", componentBuildVersionArn=f"{ARN}:component/{component}/1.0.0/1")


def main():
    scenarios = {"resources": resources, "signatures": signatures, "queue": queue}
    if len(sys.argv) != 4 or sys.argv[1] not in scenarios:
        print(f"usage: {sys.argv[0]} {'|'.join(scenarios)} ENDPOINT SUFFIX", file=sys.stderr)
        return 2
    record = Recorder()
    status = 0
    try:
        scenarios[sys.argv[1]](sys.argv[2], sys.argv[3], record)
    except Exception as error:  # a failed need, or anything boto3 raised: report it with what was recorded
        record.outcomes["_abort"] = {
            "status": None, "error": type(error).__name__, "message": str(error), "output": traceback.format_exc()}
        status = 1
    print(json.dumps(record.outcomes, default=str, sort_keys=True))
    return status


if __name__ == "__main__":
    sys.exit(main())
