"""Creates N scheduled pipelines on a kiln server with boto3, for bench/scheduler-idle.sh.

Usage: python3 make_pipelines.py PORT N ACCESS_KEY SECRET
Every fire of every schedule is in 2030 or later, so none fires while the benchmark measures.
"""
import concurrent.futures
import sys

import boto3

port, count, key, secret = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
client = boto3.client("imagebuilder", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                      aws_access_key_id=key, aws_secret_access_key=secret)
document = ("name: noop\nschemaVersion: 1.0\nphases:\n  - name: build\n    steps:\n      - name: Noop\n"
            "        action: ExecuteBash\n        inputs:\n          commands: ['true']\n")
component = client.create_component(name="noop", semanticVersion="1.0.0", platform="Linux", data=document)
recipe = client.create_container_recipe(
    name="base", semanticVersion="1.0.0", parentImage="bootstrap:debian:bookworm", containerType="DOCKER",
    components=[{"componentArn": component["componentBuildVersionArn"]}],
    targetRepository={"service": "ECR", "repositoryName": "bench/base"},
    dockerfileTemplateData="FROM {{{ imagebuilder:parentImage }}}\n{{{ imagebuilder:environments }}}\n{{{ imagebuilder:components }}}")["containerRecipeArn"]
infrastructure = client.create_infrastructure_configuration(name="bench", instanceProfileName="kiln")
zones = ["UTC", "America/New_York", "Europe/Berlin", "Asia/Tokyo", "Australia/Sydney"]


def expression(index):
    minute, hour = index % 60, (index // 60) % 24
    shapes = [f"cron({minute} {hour} * * ? 2030-2035)", f"cron({minute} {hour} ? * MON-FRI 2031)",
              f"cron({minute} {hour} ? * TUE#2 2032)", f"cron({minute} {hour} L * ? 2030)",
              f"cron({minute} {hour} 15W * ? 2033)", f"cron(0/15 {hour} ? * 6L 2034)",
              f"cron({minute} {hour} 1,15 JAN-JUN ? 2030-2199/5)"]
    return shapes[index % len(shapes)], zones[index % len(zones)]


def create(index):
    text, zone = expression(index)
    client.create_image_pipeline(
        name=f"p{index:05d}", containerRecipeArn=recipe,
        infrastructureConfigurationArn=infrastructure["infrastructureConfigurationArn"],
        schedule={"scheduleExpression": text, "timezone": zone, "pipelineExecutionStartCondition": "EXPRESSION_MATCH_ONLY"})


with concurrent.futures.ThreadPoolExecutor(4) as pool:
    list(pool.map(create, range(count)))
