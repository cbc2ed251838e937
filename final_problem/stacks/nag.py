"""cdk-nag AwsSolutions findings this platform accepts, each with its reason.

Acknowledgments are granular (one managed policy or one wildcard at a time) and attached
to the construct that causes them, so a new finding anywhere else still fails the tests.
cdk-nag's EKS rules match only the ``aws_eks`` (v1) resources; the cluster's logging,
secrets encryption and endpoint access are asserted in tests/test_stacks.py instead.
"""

from __future__ import annotations

import aws_cdk as cdk
from constructs import IConstruct

MANAGED = "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/{}]"


def acknowledge(scope: IConstruct, rule: str, reason: str) -> None:
    cdk.Validations.of(scope).acknowledge(cdk.Acknowledgment(id=rule, reason=reason))


def acknowledge_managed(scope: IConstruct, policy: str, reason: str) -> None:
    acknowledge(scope, MANAGED.format(policy), reason)


def checkov_skip(scope: IConstruct, *, resource_type: str, skips: dict[str, str]) -> int:
    """Skip checkov checks (id to reason) on the CloudFormation resources of
    ``resource_type`` inside ``scope``; returns how many resources it marked.

    checkov reads ``Metadata.checkov.skip`` on each resource (checkov docs, "Suppressing
    and Skipping Policies", CloudFormation). Used only for resources aws-cdk-lib creates
    for itself (custom resource providers), which this project cannot configure.
    """
    marked = 0
    for child in scope.node.find_all():
        if isinstance(child, cdk.CfnResource) and child.cfn_resource_type == resource_type:
            child.add_metadata("checkov", {"skip": [{"id": i, "comment": why} for i, why in skips.items()]})
            marked += 1
    if not marked:
        raise AssertionError(f"no {resource_type} under {scope.node.path} to skip {sorted(skips)} on")
    return marked


def provider_lambda_skips(what: str) -> dict[str, str]:
    """The checkov Lambda checks that do not apply to an aws-cdk-lib custom resource provider."""
    return {
        "CKV_AWS_115": f"{what}: invoked only by CloudFormation during deployments, so a reserved concurrency limit would only make deployments fail",
        "CKV_AWS_116": f"{what}: CloudFormation invokes it synchronously and reports failures itself; a dead-letter queue would never receive an event",
        "CKV_AWS_173": f"{what}: its environment holds no secret, only names set by aws-cdk-lib; the default AWS-managed key encrypts it at rest",
    }
