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


def checkov_skip(
    scope: IConstruct, *, resource_type: str, skips: dict[str, str], feature_flag: str | None = None
) -> int:
    """Skip checkov checks (id to reason) on the CloudFormation resources of
    ``resource_type`` inside ``scope``; returns how many resources it marked.

    checkov reads ``Metadata.checkov.skip`` on each resource (checkov docs, "Suppressing
    and Skipping Policies", CloudFormation). Used only for resources aws-cdk-lib creates
    for itself (custom resource providers), which this project cannot configure.

    ``feature_flag`` names the CDK feature flag under which aws-cdk-lib creates these
    resources at all: in an app whose cdk.json leaves it off (an app that installs this
    package with CDK's default flags), there are none and nothing is marked. Otherwise
    finding none means aws-cdk-lib changed what it creates, and the skip would silently
    stop applying: that fails, naming the resource type and the scope.
    """
    marked = 0
    for child in scope.node.find_all():
        if isinstance(child, cdk.CfnResource) and child.cfn_resource_type == resource_type:
            child.add_metadata("checkov", {"skip": [{"id": i, "comment": why} for i, why in skips.items()]})
            marked += 1
    if not marked and (feature_flag is None or cdk.FeatureFlags.of(scope).is_enabled(feature_flag)):
        because = f" although the feature flag {feature_flag} is on" if feature_flag else ""
        raise RuntimeError(
            f"aws-cdk-lib created no {resource_type} under {scope.node.path}{because}, so the checkov "
            f"skips {sorted(skips)} would apply to nothing: check what this aws-cdk-lib version creates there"
        )
    return marked


#: The aws-cdk-lib feature flag under which a Lambda function gets a log group of its own
#: (aws-cdk-lib FEATURE_FLAGS.md, "@aws-cdk/aws-lambda:useCdkManagedLogGroup"); without
#: it, Lambda creates the log group itself on first invocation, outside the template.
LAMBDA_LOG_GROUP_FLAG = "@aws-cdk/aws-lambda:useCdkManagedLogGroup"


def provider_lambda_skips(what: str) -> dict[str, str]:
    """The checkov Lambda checks that do not apply to an aws-cdk-lib custom resource provider."""
    return {
        "CKV_AWS_115": f"{what}: invoked only by CloudFormation during deployments, so a reserved concurrency limit would only make deployments fail",
        "CKV_AWS_116": f"{what}: CloudFormation invokes it synchronously and reports failures itself; a dead-letter queue would never receive an event",
        "CKV_AWS_173": f"{what}: its environment holds no secret, only names set by aws-cdk-lib; the default AWS-managed key encrypts it at rest",
    }
