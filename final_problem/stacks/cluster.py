"""The EKS cluster: control plane, Graviton node group, storage driver, platform charts."""

from __future__ import annotations

import importlib
import json
from typing import Any

import aws_cdk as cdk
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_eks_v2 as eks
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from constructs import Construct

from final_problem.config import Settings
from final_problem.errors import ConfigError
from final_problem.stacks import nag
from final_problem.stacks.backups import BackupBucket
from final_problem.profiles import EKS
from final_problem.stacks.platform import Platform

#: All five control-plane log types (EKS user guide, "Control plane logging").
CONTROL_PLANE_LOGS = (
    eks.ClusterLoggingTypes.API,
    eks.ClusterLoggingTypes.AUDIT,
    eks.ClusterLoggingTypes.AUTHENTICATOR,
    eks.ClusterLoggingTypes.CONTROLLER_MANAGER,
    eks.ClusterLoggingTypes.SCHEDULER,
)
#: The EBS CSI driver's controller service account (aws-ebs-csi-driver Helm chart and
#: EKS add-on default), bound to the driver's IAM role through EKS Pod Identity.
EBS_CSI_SERVICE_ACCOUNT = "ebs-csi-controller-sa"


def kubectl_layer(scope: Construct, version: str) -> lambda_.ILayerVersion:
    """The kubectl Lambda layer matching the cluster version.

    Each Kubernetes minor version has its own PyPI package,
    ``aws-cdk.lambda-layer-kubectl-vNN`` (aws-eks-v2 README, "Kubectl Support").
    """
    minor = version.split(".")[1]
    module = f"aws_cdk.lambda_layer_kubectl_v{minor}"
    try:
        layer = getattr(importlib.import_module(module), f"KubectlV{minor}Layer")
    except ImportError as e:
        raise ConfigError(
            "kubernetes_version", version,
            f"the kubectl layer package for it is not installed ({module})",
            f"pip install aws-cdk.lambda-layer-kubectl-v{minor}, or use the default version",
        ) from e
    return layer(scope, "KubectlLayer")


class ClusterStack(cdk.Stack):
    """An EKS cluster (aws_eks_v2) with the platform applied.

    - secrets encrypted with a customer-managed KMS key (rotation on);
    - all control-plane log types sent to CloudWatch;
    - API endpoint private, public only from ``endpoint_public_cidrs``;
    - a managed node group, Graviton by default, in the private subnets;
    - EKS Pod Identity agent and the EBS CSI driver add-on using it;
    - an access entry granting ``admin_role_arn`` cluster-admin, when given;
    - the backup bucket and its Pod Identity role (:class:`~final_problem.stacks.backups.BackupBucket`);
    - the enabled charts (see :class:`Platform`).

    Exposes ``cluster``, ``nodegroup``, ``secrets_key``, ``backups`` and ``platform``.
    """

    def __init__(self, scope: Construct, id: str, *, settings: Settings, vpc: ec2.IVpc, **kwargs: Any) -> None:
        super().__init__(scope, id, **kwargs)
        self.secrets_key = kms.Key(
            self, "SecretsKey",
            description=f"Envelope encryption of Kubernetes Secrets in {settings.cluster_name}",
            enable_key_rotation=True,
            removal_policy=cdk.RemovalPolicy.RETAIN,
        )
        private = ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS)
        self.cluster = eks.Cluster(
            self, "Cluster",
            cluster_name=settings.cluster_name,
            version=eks.KubernetesVersion.of(settings.kubernetes_version),
            vpc=vpc,
            vpc_subnets=[private],
            endpoint_access=_endpoint_access(settings),
            cluster_logging=list(CONTROL_PLANE_LOGS),
            secrets_encryption_key=self.secrets_key,
            # Nodes come from the managed node group below, not Auto Mode or a default group.
            default_capacity_type=eks.DefaultCapacityType.NODEGROUP,
            default_capacity=0,
            kubectl_provider_options=eks.KubectlProviderOptions(
                kubectl_layer=kubectl_layer(self, settings.kubernetes_version),
            ),
        )
        self.nodegroup = self.cluster.add_nodegroup_capacity(
            "Workers",
            instance_types=[ec2.InstanceType(settings.node_instance_type)],
            ami_type=(
                eks.NodegroupAmiType.AL2023_ARM_64_STANDARD if settings.is_graviton
                else eks.NodegroupAmiType.AL2023_X86_64_STANDARD
            ),
            min_size=settings.node_min,
            desired_size=settings.node_desired,
            max_size=settings.node_max,
            subnets=private,
            # One node at a time, so quorum sets (PDB maxUnavailable 1) keep quorum.
            max_unavailable=1,
        )
        self.pod_identity_agent = eks.Addon(
            self, "PodIdentityAgent", cluster=self.cluster, addon_name="eks-pod-identity-agent"
        )
        self.ebs_csi_role = iam.Role(
            self, "EbsCsiDriverRole",
            assumed_by=iam.ServicePrincipal("pods.eks.amazonaws.com").with_session_tags(),
            managed_policies=[iam.ManagedPolicy.from_aws_managed_policy_name("service-role/AmazonEBSCSIDriverPolicy")],
            description="EBS CSI driver controller, through EKS Pod Identity",
        )
        self.ebs_csi_driver = eks.CfnAddon(
            self, "EbsCsiDriver",
            addon_name="aws-ebs-csi-driver",
            cluster_name=self.cluster.cluster_name,
            pod_identity_associations=[
                eks.CfnAddon.PodIdentityAssociationProperty(
                    role_arn=self.ebs_csi_role.role_arn, service_account=EBS_CSI_SERVICE_ACCOUNT
                )
            ],
            resolve_conflicts="OVERWRITE",
        )
        self.ebs_csi_driver.node.add_dependency(self.pod_identity_agent)
        self.ebs_csi_driver.node.add_dependency(self.nodegroup)
        if settings.admin_role_arn:
            self.cluster.grant_access(
                "AdminRoleAccess",
                settings.admin_role_arn,
                [eks.AccessPolicy.from_access_policy_name(
                    "AmazonEKSClusterAdminPolicy", access_scope_type=eks.AccessScopeType.CLUSTER
                )],
            )
        # The backup target (final_problem/stacks/backups.py): its Pod Identity association needs the agent.
        self.backups = BackupBucket(self, "Backups", cluster=self.cluster, settings=settings)
        for association in self.backups.associations.values():
            association.node.add_dependency(self.pod_identity_agent)
        # The charts write their backups to this bucket, at the region's endpoint, through the
        # service account its role is associated with.
        profile = EKS.with_backup_bucket(bucket=self.backups.bucket.bucket_name, region=cdk.Aws.REGION,
                                         endpoint=f"https://s3.{cdk.Aws.REGION}.{cdk.Aws.URL_SUFFIX}")
        self.platform = Platform(self, "Platform", cluster=self.cluster, settings=settings, profile=profile)
        # What `final-problem --aws` reads to find the platform (final_problem/tour/discovery.py).
        cdk.CfnOutput(self, "ClusterName", value=self.cluster.cluster_name, description="EKS cluster name")
        cdk.CfnOutput(self, "Region", value=cdk.Aws.REGION, description="Region of the cluster")
        cdk.CfnOutput(
            self, "PlatformEndpoints", description="Client Service of each component (namespace, service, port)",
            value=json.dumps({
                name: {"namespace": ref.namespace, "service": ref.service, "port": ref.port}
                for name, ref in self.platform.client_services.items()
            }, sort_keys=True),
        )
        self._acknowledge_findings()
        # Volumes need the CSI driver and pods need nodes before charts are applied.
        for manifest in self.platform.manifests.values():
            manifest.node.add_dependency(self.ebs_csi_driver)
            manifest.node.add_dependency(self.nodegroup)
            # EKS Pod Identity's webhook injects credentials into pods created after their
            # service account's association exists: a backing-up pod created before it has none.
            manifest.node.add_dependency(*self.backups.associations.values())


    def _acknowledge_findings(self) -> None:
        """Accept the cdk-nag findings that EKS itself requires, each with its reason."""
        nag.acknowledge_managed(
            self.cluster.role, "AmazonEKSClusterPolicy",
            "EKS requires this AWS-managed policy on the cluster service role (EKS user guide, 'Amazon EKS cluster IAM role')",
        )
        node_role = self.nodegroup.role
        for policy, why in (
            ("AmazonEKSWorkerNodePolicy", "lets the kubelet describe the cluster and register the node"),
            ("AmazonEC2ContainerRegistryReadOnly", "lets nodes pull the EKS add-on images from ECR"),
            ("AmazonEKS_CNI_Policy", "lets the VPC CNI assign pod addresses (aws-node runs on every node)"),
        ):
            nag.acknowledge_managed(node_role, policy, f"EKS managed node groups need it: it {why} (EKS user guide, 'Amazon EKS node IAM role')")
        nag.acknowledge_managed(
            self.ebs_csi_role, "service-role/AmazonEBSCSIDriverPolicy",
            "AWS maintains this policy alongside the EBS CSI driver add-on; it is scoped by tags to driver-created volumes",
        )
        provider = self.cluster.node.find_child("KubectlProvider")
        lambda_reason = "the kubectl provider Lambda functions of aws_eks_v2 write their logs with it (created by aws-cdk-lib)"
        nag.acknowledge_managed(provider, "service-role/AWSLambdaBasicExecutionRole", lambda_reason)
        nag.acknowledge_managed(provider, "service-role/AWSLambdaVPCAccessExecutionRole", f"{lambda_reason}; it runs in the VPC to reach a private endpoint")
        nag.acknowledge_managed(provider, "AmazonEC2ContainerRegistryReadOnly", "aws_eks_v2's kubectl handler reads ECR for Helm charts stored there")
        nag.acknowledge(
            provider,
            'AwsSolutions-IAM4[Policy::{"Fn::If":["ClusterKubectlProviderHandlerHasEcrPublic69E09706",{"Fn::Join":["",["arn:",{"Ref":"AWS::Partition"},":iam::aws:policy/AmazonElasticContainerRegistryPublicReadOnly"]]},{"Ref":"AWS::NoValue"}]}]',
            "aws_eks_v2's kubectl handler reads ECR Public (where the partition has it) for Helm charts stored there",
        )
        nag.acknowledge(
            provider, "AwsSolutions-L1",
            "the kubectl handler's runtime is fixed by aws-cdk-lib to match the kubectl layer it bundles",
        )
        nag.acknowledge(
            provider, "AwsSolutions-IAM5[Resource::<ClusterKubectlProviderHandler2E05C68A.Arn>:*]",
            "the custom resource framework invokes any version of its own handler function (ARN:*), nothing else",
        )
        nag.checkov_skip(
            provider, resource_type="AWS::Lambda::Function",
            skips=nag.provider_lambda_skips("aws_eks_v2's kubectl provider"),
        )
        nag.checkov_skip(provider, resource_type="AWS::Logs::LogGroup", feature_flag=nag.LAMBDA_LOG_GROUP_FLAG, skips={
            "CKV_AWS_158": "log group aws_eks_v2 creates for its kubectl provider (no option to pass a key); it "
            "records kubectl runs on manifests that hold no secret values",
        })


def _endpoint_access(settings: Settings) -> eks.EndpointAccess:
    if not settings.endpoint_public_cidrs:
        return eks.EndpointAccess.PRIVATE
    base = eks.EndpointAccess.PUBLIC_AND_PRIVATE if settings.endpoint_private_access else eks.EndpointAccess.PUBLIC
    return base.only_from(*settings.endpoint_public_cidrs)
