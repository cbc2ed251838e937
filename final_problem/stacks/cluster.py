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
from aws_cdk import aws_s3 as s3
from constructs import Construct

from final_problem.components import BACKUP_SERVICE_ACCOUNT, record_object
from final_problem.config import Settings
from final_problem.errors import ConfigError
from final_problem.stacks import nag
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
    - the enabled charts (see :class:`Platform`);
    - the backup bucket (KMS-encrypted with its own key, versioned, expiring after
      ``backup_retention_days``, public access blocked, TLS only, access-logged, retained on
      destroy) and one role, limited to reading and adding objects there, that the backup
      service account of each component that backs up assumes through EKS Pod Identity.

    Exposes ``cluster``, ``nodegroup``, ``secrets_key``, ``platform``, ``backup_bucket``,
    ``backup_key`` and ``backup_role``.
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
        self.platform = Platform(self, "Platform", cluster=self.cluster, settings=settings)
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
        self._backup_target(settings)
        self._acknowledge_findings()
        # Volumes need the CSI driver and pods need nodes before charts are applied.
        for manifest in self.platform.manifests.values():
            manifest.node.add_dependency(self.ebs_csi_driver)
            manifest.node.add_dependency(self.nodegroup)


    def _backup_target(self, settings: Settings) -> None:
        """The bucket backups go to, its key and access log, and the role that writes them."""
        self.backup_key = kms.Key(
            self, "BackupKey",
            description=f"Encryption of the platform backups of {settings.cluster_name}",
            enable_key_rotation=True,
            removal_policy=cdk.RemovalPolicy.RETAIN,
        )
        expire = s3.LifecycleRule(
            expiration=cdk.Duration.days(settings.backup_retention_days),
            noncurrent_version_expiration=cdk.Duration.days(settings.backup_retention_days),
            abort_incomplete_multipart_upload_after=cdk.Duration.days(1),
        )
        # Server access logs cannot be delivered to a bucket encrypted with a customer key
        # (S3 user guide, "Enabling Amazon S3 server access logging": SSE-S3 only).
        self.backup_access_logs = s3.Bucket(
            self, "BackupAccessLogs",
            encryption=s3.BucketEncryption.S3_MANAGED,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            enforce_ssl=True,
            versioned=True,
            lifecycle_rules=[expire],
            removal_policy=cdk.RemovalPolicy.RETAIN,
        )
        self.backup_bucket = s3.Bucket(
            self, "Backups",
            encryption=s3.BucketEncryption.KMS,
            encryption_key=self.backup_key,
            bucket_key_enabled=True,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            enforce_ssl=True,
            versioned=True,
            lifecycle_rules=[expire],
            server_access_logs_bucket=self.backup_access_logs,
            server_access_logs_prefix="backups/",
            removal_policy=cdk.RemovalPolicy.RETAIN,
        )
        # Backups add objects and read them back (a restore, a verification); they never
        # delete or overwrite one in place: versioning keeps every write, the lifecycle
        # rule alone expires them.
        self.backup_role = iam.Role(
            self, "BackupRole",
            assumed_by=iam.ServicePrincipal("pods.eks.amazonaws.com").with_session_tags(),
            description="Platform backup Jobs, through EKS Pod Identity: read and add objects in the backup bucket",
        )
        self.backup_role.add_to_policy(iam.PolicyStatement(
            actions=["s3:ListBucket", "s3:ListBucketVersions", "s3:GetBucketLocation"],
            resources=[self.backup_bucket.bucket_arn],
        ))
        self.backup_role.add_to_policy(iam.PolicyStatement(
            actions=["s3:PutObject", "s3:GetObject", "s3:GetObjectVersion", "s3:GetObjectAttributes"],
            resources=[self.backup_bucket.arn_for_objects("*")],
        ))
        self.backup_role.add_to_policy(iam.PolicyStatement(
            actions=["kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey"],
            resources=[self.backup_key.key_arn],
        ))
        for name, chart in self.platform.charts.items():
            record = record_object(self.platform.objects[name]) or {}
            if not chart.backs_up or record.get("kind") != "Namespace":
                continue
            identity = eks.CfnPodIdentityAssociation(
                self, f"BackupIdentity{chart.construct_id}",
                cluster_name=self.cluster.cluster_name,
                namespace=record["metadata"]["name"],
                service_account=BACKUP_SERVICE_ACCOUNT,
                role_arn=self.backup_role.role_arn,
            )
            identity.node.add_dependency(self.pod_identity_agent)
        cdk.CfnOutput(self, "BackupBucket", value=self.backup_bucket.bucket_name,
                      description="Bucket the platform's backups go to")
        nag.acknowledge(
            self.backup_access_logs, "AwsSolutions-S1",
            "the backup bucket's access log target: logging its own accesses would log the log deliveries, endlessly",
        )
        nag.checkov_skip(self.backup_access_logs, resource_type="AWS::S3::Bucket", skips={
            "CKV_AWS_18": "the backup bucket's access log target: logging its own accesses would log the log "
            "deliveries, endlessly",
        })
        bucket_id = self.get_logical_id(self.backup_bucket.node.default_child)  # type: ignore[arg-type]
        nag.acknowledge(
            self.backup_role, f"AwsSolutions-IAM5[Resource::<{bucket_id}.Arn>/*]",
            "backups are objects under keys each Job chooses (component/time/...): the role may read and add any "
            "object of this one bucket, nothing else",
        )

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
