"""Scheduled snapshots to an S3-compatible target, as a ``backup`` sidecar of a quorum set's members.

:class:`SnapshotBackupSettings` holds the settings a component with snapshot backups adds to
its own (Redis, ZooKeeper: ``redis.backup_endpoint``, ...). :class:`SnapshotBackup` creates,
when the endpoint is set:

- ConfigMap ``<name>-backup-scripts``: the programs, :mod:`final_problem.renderers.backup_agent`
  (the S3 client) and :mod:`final_problem.renderers.snapshot_agent` (the snapshots);
- a NetworkPolicy letting the members reach the target's port (any address: the target may
  be in the cluster or outside it);
- :attr:`SnapshotBackup.container`, the sidecar (the python image, under the members' uid),
  and :attr:`SnapshotBackup.volumes`, for the chart to add to its pod template.

The key pair is read from Secret ``<name>-backup-target`` (``access-key-id``,
``secret-access-key``) in the component's namespace.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from final_problem import versions
from final_problem.changes import procedure, rolling
from final_problem.constructs.generated_secrets import secret_env
from final_problem.constructs.labels import set_component
from final_problem.constructs.namespace import ports
from final_problem.constructs.security import Sizing, container_context, raw_resources
from final_problem.imports import k8s
from final_problem.objects import Group, ObjectChart
from final_problem.renderers import backup_agent, snapshot_agent
from final_problem.settings import ComponentSettings, setting

#: Where the ConfigMap of programs is mounted in the sidecar.
SCRIPTS_DIR = "/backup"
AGENT_FILE = "snapshot_agent.py"
#: The sidecar's resources: it streams files from disk; one copy at a time.
SIDECAR_SIZING = Sizing(cpu_request_m=10, cpu_limit_m=500, memory_request_mib=32, memory_limit_mib=96)


def scripts() -> dict[str, str]:
    """The ConfigMap's data: the two programs (the snapshot agent imports the S3 client beside it)."""
    return {"backup_agent.py": Path(backup_agent.__file__).read_text(),
            AGENT_FILE: Path(snapshot_agent.__file__).read_text()}


@dataclass(frozen=True, kw_only=True)
class SnapshotBackupSettings(ComponentSettings):
    """The backup settings of a component with snapshot backups; call :meth:`check_backup`
    from the component's ``check``."""

    backup_endpoint: str = setting(
        "", doc="URL of the S3-compatible backup target (e.g. `http://s3.backups.svc.cluster.local:7070`). Set, "
                "a snapshot is uploaded every backup_interval_minutes; empty, none.",
        change=rolling("the backup sidecar is part of each member's pod: members restart one at a time"),
    )
    backup_bucket: str = setting(
        "final-problem-backups", doc="Bucket of the backup target.",
        change=procedure("snapshots start over in the new bucket", "keep the old bucket until the new one holds a "
                         "snapshot as old as any you may need"),
    )
    backup_prefix: str = setting(
        "", doc="Key prefix inside the bucket (objects under `<prefix>/<component>/snapshots/`); one per "
                "cluster that shares the bucket.",
        change=procedure("snapshots start over under the new prefix",
                         "keep the old prefix until the new one holds a snapshot"),
    )
    backup_region: str = setting(
        "us-east-1", doc="Region the backup requests are signed for (any value the target accepts; "
                         "versitygw's default is us-east-1).",
        change=rolling("read by the backup sidecar at start: members restart one at a time"),
    )
    # Redis docs, "Redis persistence", backing up Redis data: archive an RDB every hour for
    # the latest day, and one a day for a month.
    backup_interval_minutes: int = setting(
        60, minimum=5, maximum=60 * 24 * 31,
        doc="Minutes between snapshots: the most a restore loses (writes after the newest snapshot are not in it). "
            "Default 60, as the Redis docs suggest (\"Redis persistence\", backing up Redis data).",
        change=rolling("read by the backup sidecar at start: members restart one at a time"),
    )
    backup_retention_days: int = setting(
        7, minimum=1, maximum=3650,
        doc="Days snapshots are kept (the newest always is).",
        change=rolling("read by the backup sidecar at start: members restart one at a time; older snapshots go "
                       "after the next one"),
    )

    def check_backup(self) -> None:
        if self.backup_endpoint and not self.backup_endpoint.startswith(("http://", "https://")):
            raise self.error("backup_endpoint", "is not an http(s) URL",
                             f"set {self.section}.backup_endpoint=http://<host>:<port>, or leave it empty for no backups")


class SnapshotBackup(Group):
    """The ``backup`` sidecar of each member of ``name``'s StatefulSet, its programs and egress."""

    def __init__(self, scope: ObjectChart | Group, id: str, *, name: str, namespace: str, component: str,
                 settings: SnapshotBackupSettings, selector: dict[str, str], uid: int, args: Sequence[str],
                 mounts: Sequence[k8s.VolumeMount], env: Sequence[k8s.EnvVar] = (),
                 sizing: Sizing = SIDECAR_SIZING) -> None:
        super().__init__(scope, id)
        s = settings
        self.secret_name = f"{name}-backup-target"
        self.config_map_name = f"{name}-backup-scripts"
        self.config_map = k8s.KubeConfigMap(
            self, "Scripts", metadata=k8s.ObjectMeta(name=self.config_map_name, namespace=namespace), data=scripts())
        set_component(self.config_map, "backup")
        self.container = k8s.Container(
            name="backup",
            image=versions.PYTHON_IMAGE,
            image_pull_policy="IfNotPresent",
            command=["python3", f"{SCRIPTS_DIR}/{AGENT_FILE}", component, *args,
                     "--interval-minutes", str(s.backup_interval_minutes), "--retention-days", str(s.backup_retention_days)],
            env=[
                k8s.EnvVar(name="PYTHONDONTWRITEBYTECODE", value="1"),
                k8s.EnvVar(name="POD_NAME", value_from=k8s.EnvVarSource(
                    field_ref=k8s.ObjectFieldSelector(field_path="metadata.name"))),
                k8s.EnvVar(name="BACKUP_S3_ENDPOINT", value=s.backup_endpoint),
                k8s.EnvVar(name="BACKUP_S3_BUCKET", value=s.backup_bucket),
                k8s.EnvVar(name="BACKUP_S3_PREFIX", value=s.backup_prefix),
                k8s.EnvVar(name="BACKUP_S3_REGION", value=s.backup_region),
                secret_env("AWS_ACCESS_KEY_ID", self.secret_name, "access-key-id"),
                secret_env("AWS_SECRET_ACCESS_KEY", self.secret_name, "secret-access-key"),
                *env,
            ],
            # The members' uid: the files it reads (and, for Redis, the hard link it makes
            # beside dump.rdb) are theirs.
            security_context=container_context(uid=uid),
            resources=raw_resources(sizing),
            volume_mounts=[*mounts, k8s.VolumeMount(name="backup-scripts", mount_path=SCRIPTS_DIR, read_only=True)],
        )
        self.volumes = [k8s.Volume(name="backup-scripts", config_map=k8s.ConfigMapVolumeSource(
            name=self.config_map_name, default_mode=0o444))]
        url = urllib.parse.urlsplit(s.backup_endpoint)
        self.target_port = url.port or (443 if url.scheme == "https" else 80)
        self.egress = k8s.KubeNetworkPolicy(
            self, "AllowTarget",
            metadata=k8s.ObjectMeta(name=f"{name}-backup-target", namespace=namespace),
            spec=k8s.NetworkPolicySpec(
                pod_selector=k8s.LabelSelector(match_labels=selector),
                policy_types=["Egress"],
                egress=[k8s.NetworkPolicyEgressRule(ports=ports(self.target_port))],
            ),
        )
        set_component(self.egress, "network-policy")

    @property
    def config_text(self) -> str:
        """What the pod template's config digest covers: a changed program restarts the members."""
        return "".join(scripts().values())
