"""The VPC the cluster runs in."""

from __future__ import annotations

from typing import Any

import aws_cdk as cdk
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from constructs import Construct

from final_problem.config import LOG_RETENTION_DAYS, Settings
from final_problem.stacks import nag


class NetworkStack(cdk.Stack):
    """A VPC with public and private subnets in each zone, NAT and flow logs.

    Public subnets are tagged ``kubernetes.io/role/elb`` and private ones
    ``kubernetes.io/role/internal-elb`` so the AWS Load Balancer Controller finds them
    (EKS user guide, "Subnet requirements and considerations").
    Exposes ``vpc``.
    """

    def __init__(self, scope: Construct, id: str, *, settings: Settings, **kwargs: Any) -> None:
        super().__init__(scope, id, **kwargs)
        self.flow_log_key = kms.Key(
            self, "FlowLogsKey",
            description=f"Encryption of the VPC flow logs of {settings.cluster_name}",
            enable_key_rotation=True,
            removal_policy=cdk.RemovalPolicy.RETAIN,
        )
        # CloudWatch Logs encrypts with the key only if its regional service principal may
        # use it, for log groups of this account and region (CloudWatch Logs user guide,
        # "Encrypt log data in CloudWatch Logs using AWS KMS").
        self.flow_log_key.add_to_resource_policy(iam.PolicyStatement(
            principals=[iam.ServicePrincipal(f"logs.{cdk.Aws.REGION}.amazonaws.com")],
            actions=["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"],
            resources=["*"],
            conditions={"ArnLike": {"kms:EncryptionContext:aws:logs:arn": cdk.Arn.format(
                cdk.ArnComponents(service="logs", resource="log-group", resource_name="*",
                                  arn_format=cdk.ArnFormat.COLON_RESOURCE_NAME), self)}},
        ))
        self.flow_log_group = logs.LogGroup(
            self, "FlowLogs",
            retention=_retention(settings.flow_log_retention_days),
            encryption_key=self.flow_log_key,
            removal_policy=cdk.RemovalPolicy.RETAIN,
        )
        self.vpc = ec2.Vpc(
            self, "Vpc",
            ip_addresses=ec2.IpAddresses.cidr(settings.vpc_cidr),
            max_azs=settings.az_count,
            nat_gateways=settings.nat_gateways,
            subnet_configuration=[
                ec2.SubnetConfiguration(name="Public", subnet_type=ec2.SubnetType.PUBLIC, cidr_mask=24),
                # /19: the VPC CNI gives each pod a VPC address (EKS best practices guide,
                # "VPC and Subnet Considerations").
                ec2.SubnetConfiguration(name="Private", subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS, cidr_mask=19),
            ],
            flow_logs={
                "All": ec2.FlowLogOptions(
                    destination=ec2.FlowLogDestination.to_cloud_watch_logs(self.flow_log_group),
                    traffic_type=ec2.FlowLogTrafficType.ALL,
                )
            },
            restrict_default_security_group=True,
        )
        for subnet in self.vpc.public_subnets:
            cdk.Tags.of(subnet).add("kubernetes.io/role/elb", "1")
        for subnet in self.vpc.private_subnets:
            cdk.Tags.of(subnet).add("kubernetes.io/role/internal-elb", "1")
        # aws-cdk-lib's stack-level provider that empties the default security group.
        restrictor = self.node.find_child("Custom::VpcRestrictDefaultSGCustomResourceProvider")
        nag.checkov_skip(restrictor, resource_type="AWS::Lambda::Function", skips={
            **nag.provider_lambda_skips("aws-cdk-lib's default-security-group restrictor"),
            "CKV_AWS_117": "aws-cdk-lib's default-security-group restrictor calls only the EC2 API; placing it in "
            "the VPC would make it depend on the NAT it runs beside",
        })


def _retention(days: int) -> logs.RetentionDays:
    """The RetentionDays member for a number of days (config admits only these).

    aws-cdk-lib lists the finite members in the same ascending order as CloudWatch's
    allowed values, INFINITE last.
    """
    finite = [m for m in logs.RetentionDays if m.name != "INFINITE"]
    return dict(zip(LOG_RETENTION_DAYS, finite, strict=True))[days]
