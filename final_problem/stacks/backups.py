"""The backup target on EKS: one S3 bucket, written through one EKS Pod Identity role.

- a customer-managed KMS key (rotation on) encrypting every object (SSE-KMS, with an S3 Bucket
  Key so each object does not call KMS; Amazon S3 user guide, "Reducing the cost of SSE-KMS
  with Amazon S3 Bucket Keys");
- versioning, so an object deleted or overwritten (by the backup agent's retention, or by a
  mistake) stays recoverable for ``backup_version_days``, after which a lifecycle rule expires
  it; incomplete multipart uploads are aborted after a week;
- all public access blocked, object ACLs disabled (bucket owner enforced), TLS required;
- bucket and key retained when the stack is deleted (``make destroy`` keeps the backups: a new
  cluster restores from them);
- a role only EKS Pod Identity can assume, allowed to list the bucket, and to get, put and delete
  its objects with the key, nothing else; associated with the service account of each deployed
  component's backing-up pods (:data:`BACKUP_SERVICE_ACCOUNTS`);
- with ``restore_bucket`` (the bucket of an earlier deploy, which ``make destroy`` kept, with
  its key): the same role may list that bucket, get its objects and decrypt them with its key
  through S3, for the components' ``restore`` init containers; nothing else of it.

Sources: Amazon S3 user guide ("Blocking public access", "Using versioning", "Lifecycle
configuration elements"); EKS user guide ("EKS Pod Identity").
"""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_eks_v2 as eks
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from constructs import Construct

from final_problem.charts import consul as consul_chart
from final_problem.charts import postgres as postgres_chart
from final_problem.charts import redis as redis_chart
from final_problem.charts import zookeeper as zookeeper_chart
from final_problem.charts.consul import ConsulChart
from final_problem.charts.postgres import PostgresChart
from final_problem.charts.redis import RedisChart
from final_problem.charts.zookeeper import ZooKeeperChart
from final_problem.config import Settings
from final_problem.stacks import nag

#: Per component, the service account its backup containers run as (namespace, name): one role,
#: one Pod Identity association per service account (EKS user guide, "EKS Pod Identity": an
#: association maps one service account to one role; a role may be in several).
BACKUP_SERVICE_ACCOUNTS = {
    "postgres": (PostgresChart.NAMESPACE, postgres_chart.BACKUP_SERVICE_ACCOUNT),
    "redis": (RedisChart.NAMESPACE, redis_chart.BACKUP_SERVICE_ACCOUNT),
    "zookeeper": (ZooKeeperChart.NAMESPACE, zookeeper_chart.BACKUP_SERVICE_ACCOUNT),
    # The snapshot CronJob's pods (final_problem/charts/consul.py).
    "consul": (ConsulChart.NAMESPACE, consul_chart.BACKUP_SERVICE_ACCOUNT),
}
#: Days an incomplete multipart upload is kept before it is aborted.
ABORT_MULTIPART_DAYS = 7


class BackupBucket(Construct):
    """The bucket, its key and the Pod Identity role limited to it, associated with the backing-up
    service accounts of the deployed components. Exposes ``bucket``, ``key``, ``role`` and
    ``associations`` (component: association)."""

    def __init__(self, scope: Construct, id: str, *, cluster: eks.Cluster, settings: Settings) -> None:
        super().__init__(scope, id)
        self.key = kms.Key(
            self, "Key",
            description=f"Backups of {settings.cluster_name}",
            enable_key_rotation=True,
            removal_policy=cdk.RemovalPolicy.RETAIN,
        )
        self.bucket = s3.Bucket(
            self, "Bucket",
            encryption=s3.BucketEncryption.KMS,
            encryption_key=self.key,
            bucket_key_enabled=True,
            versioned=True,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            enforce_ssl=True,
            removal_policy=cdk.RemovalPolicy.RETAIN,
            lifecycle_rules=[s3.LifecycleRule(
                id="expire-replaced-and-deleted",
                noncurrent_version_expiration=cdk.Duration.days(settings.backup_version_days),
                abort_incomplete_multipart_upload_after=cdk.Duration.days(ABORT_MULTIPART_DAYS),
                expired_object_delete_marker=True,
            )],
        )
        self.role = iam.Role(
            self, "Role",
            assumed_by=iam.ServicePrincipal("pods.eks.amazonaws.com").with_session_tags(),
            description=f"Backup containers of {settings.cluster_name}, through EKS Pod Identity: its bucket only",
        )
        # Explicit actions, no wildcard: list the bucket, read, write and delete its objects, abort
        # an upload in parts that failed (s3:PutObject covers the parts themselves).
        self.role.add_to_policy(iam.PolicyStatement(actions=["s3:ListBucket"], resources=[self.bucket.bucket_arn]))
        self.role.add_to_policy(iam.PolicyStatement(
            actions=["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"],
            resources=[self.bucket.arn_for_objects("*")]))
        self.role.add_to_policy(iam.PolicyStatement(
            actions=["kms:Decrypt", "kms:GenerateDataKey"], resources=[self.key.key_arn]))
        if settings.restore_bucket:
            self._read_restore_bucket(settings.restore_bucket)
        self.associations: dict[str, eks.CfnPodIdentityAssociation] = {}
        for component, (namespace, service_account) in BACKUP_SERVICE_ACCOUNTS.items():
            if component not in settings.components:
                continue
            # postgres keeps the logical id it was deployed with: a new id would replace it.
            self.associations[component] = eks.CfnPodIdentityAssociation(
                self, "Association" if component == "postgres" else f"Association{component.capitalize()}",
                cluster_name=cluster.cluster_name, namespace=namespace,
                service_account=service_account, role_arn=self.role.role_arn,
            )
        cdk.CfnOutput(scope, "BackupBucket", value=self.bucket.bucket_name, description="Bucket of the backups")
        nag.acknowledge(
            self.role, f"AwsSolutions-IAM5[Resource::<{cdk.Stack.of(self).get_logical_id(self.bucket.node.default_child)}.Arn>/*]",
            "the backup containers write, read and expire objects under every key of their own bucket (one "
            "prefix per component); the role may touch no other bucket",
        )
        nag.acknowledge(
            self.bucket, "AwsSolutions-S1",
            "server access logs need a second bucket; the bucket is written by one role, whose use CloudTrail "
            "records (data events, where the account enables them)",
        )
        self.bucket.node.default_child.add_metadata("checkov", {"skip": [  # type: ignore[union-attr]
            {"id": "CKV_AWS_18", "comment": "server access logs need a second bucket; see the cdk-nag S1 "
                                            "acknowledgment"},
            {"id": "CKV_AWS_144", "comment": "cross-region replication doubles the cost of backups; the "
                                             "bucket is versioned and retained"},
        ]})

    def _read_restore_bucket(self, name: str) -> None:
        """List, get and (through S3 only) decrypt the objects of the bucket ``name``.

        Its key is unknown at synth (a retained key of the old stack), so kms:Decrypt names any
        key of this account and region, and is allowed only for a request S3 makes on the
        role's behalf (``kms:ViaService``) for an object of that bucket: the encryption context
        S3 passes is the object's ARN, or with an S3 Bucket Key the bucket's (Amazon S3 user
        guide, "Using Amazon S3 Bucket Keys"; AWS KMS developer guide, "kms:ViaService",
        "kms:EncryptionContext:context-key"). An IAM policy in the key's account is enough: the
        old stack's key policy (the default this stack also gets) allows the account to grant
        its use through IAM (AWS KMS developer guide, "Default key policy": "Allows access to the
        AWS account and enables IAM policies"), and the old bucket's policy only denies requests
        without TLS.
        """
        stack = cdk.Stack.of(self)
        bucket_arn = f"arn:{stack.partition}:s3:::{name}"
        self.role.add_to_policy(iam.PolicyStatement(
            sid="RestoreList", actions=["s3:ListBucket"], resources=[bucket_arn]))
        self.role.add_to_policy(iam.PolicyStatement(
            sid="RestoreRead", actions=["s3:GetObject"], resources=[f"{bucket_arn}/*"]))
        self.role.add_to_policy(iam.PolicyStatement(
            sid="RestoreDecrypt", actions=["kms:Decrypt"],
            resources=[f"arn:{stack.partition}:kms:{stack.region}:{stack.account}:key/*"],
            conditions={
                "StringEquals": {"kms:ViaService": f"s3.{stack.region}.amazonaws.com"},
                "StringLike": {"kms:EncryptionContext:aws:s3:arn": [bucket_arn, f"{bucket_arn}/*"]},
            },
        ))
        # cdk-nag names a resource with its tokens as <AWS::...>, its literals as they are.
        partition, region, account = (
            f"<{ref}>" if cdk.Token.is_unresolved(value) else value for value, ref in (
                (stack.partition, "AWS::Partition"), (stack.region, "AWS::Region"), (stack.account, "AWS::AccountId")))
        nag.acknowledge(
            self.role, f"AwsSolutions-IAM5[Resource::arn:{partition}:s3:::{name}/*]",
            "the restore reads every backup of the earlier cluster's bucket (restore_bucket), read only",
        )
        nag.acknowledge(
            self.role, f"AwsSolutions-IAM5[Resource::arn:{partition}:kms:{region}:{account}:key/*]",
            "the earlier cluster's retained key is not known at synth; kms:Decrypt is allowed only through S3 "
            "(kms:ViaService) for objects of restore_bucket (kms:EncryptionContext:aws:s3:arn)",
        )

