"""Restore inside the cluster: a component's ``restore_to`` setting and its ``restore`` init container.

A component with backups (PostgreSQL, Redis, ZooKeeper) declares ``restore_to``
(:func:`restore_to_setting`). Set, the server's pod gets an init container ``restore``
(:func:`restore_container`) that runs :mod:`final_problem.renderers.restore_init` from the
ConfigMap of scripts its backup containers already mount: on an empty data volume (a new
cluster after ``make destroy`` + ``make deploy``, or a lost volume) it restores the backup
chosen by the setting, with the same code as ``final-problem backup restore``; on a volume
that holds data it does nothing. It reads the backups with the backup containers' access
(their environment, credentials and egress), from the cluster setting ``restore_bucket`` when
one is named on EKS (the bucket of an earlier deploy), else from the component's target.

On EKS the init container gets its credentials as the backup containers do: the Pod Identity
webhook patches init containers like containers (aws/amazon-eks-pod-identity-webhook, test
case ``rawPodWithInitContainer``).

The idea is CloudNativePG's ``bootstrap.recovery`` (a new cluster's first volume is filled
from a backup, never an existing one) and KubeBlocks' restore (a new cluster created from a
backup), with this platform's own backups.
"""

from __future__ import annotations

from typing import Any, Sequence

from final_problem import versions
from final_problem.changes import rolling
from final_problem.constructs.security import Sizing, container_context, raw_resources
from final_problem.imports import k8s
from final_problem.profiles import Profile
from final_problem.renderers import restore_init
from final_problem.renderers.backup_agent import BackupError
from final_problem.settings import setting

#: The init container's name.
NAME = "restore"
#: The program, in each component's ConfigMap of backup scripts.
PROGRAM = "restore_init.pyz"


def restore_to_setting(component: str, *, chosen: str) -> Any:
    """The ``restore_to`` setting of ``component``; ``chosen`` says what a time picks."""
    return setting(
        "", example="latest",
        doc=f"Restore an empty data volume from the backups before the server starts: `latest`, or an ISO 8601 "
            f"time with its zone (`2026-12-07T03:40:00Z`): {chosen}. Empty: no restore. Only a volume that holds "
            "nothing is restored (a new cluster, a lost volume); a volume with data is left alone. A refused "
            "restore (no backup, a corrupt one) keeps the pod from starting, with the reason in the `restore` "
            "container's log. On EKS the cluster setting `restore_bucket` names the bucket of an earlier deploy.",
        change=rolling(f"the {component} pods gain or lose the `restore` init container and restart one at a time; "
                       "it restores only an empty volume, so no volume that holds data is changed"),
    )


def check_restore_to(props: Any, *, backups: bool | None = None) -> None:
    """``restore_to`` is empty, ``latest`` or a time with its zone, and (``backups`` given)
    backups are on: the restore reads through the backup containers' access."""
    value = props.restore_to
    if not value:
        return
    section = props.section
    try:
        restore_init.target(value)
    except BackupError:
        raise props.error("restore_to", "is neither latest nor an ISO 8601 time with its zone",
                          f"set {section}.restore_to=latest or e.g. {section}.restore_to=2026-12-07T03:40:00Z") from None
    if backups is False:
        raise props.error("restore_to", "needs the cluster setting backups=true: the restore reads the backups with "
                          "the backup containers' access", f"set backups=true, or leave {section}.restore_to unset")


def restore_container(*, component: str, to: str, args: Sequence[str], env: Sequence[Any],
                      mounts: Sequence[Any], scripts_dir: str, uid: int, sizing: Sizing, profile: Profile,
                      restore_bucket: str = "", own_endpoint: bool = False) -> k8s.Container:
    """The ``restore`` init container: ``restore_init.pyz COMPONENT --to TO ARGS`` in the python
    image, as ``uid`` (the server's, which then owns what it writes), under the Pod Security
    "restricted" context of the sidecars.

    ``env``: the backup containers' target environment (``BACKUP_S3_*``, credentials);
    ``mounts``: the data volumes, the scripts and the credentials' volumes. ``restore_bucket``
    (EKS, the profile's bucket target, no ``own_endpoint``) replaces the bucket read.
    ``sizing``: the server container's. The init container runs before the containers, and
    kube-scheduler reserves the larger of an init container's requests and the sum of the
    containers' (Kubernetes docs, "Init Containers", "Resource sharing within containers"): the
    server's own size costs the pod nothing more, and leaves room for a dump read whole.
    """
    own_env = [k8s.EnvVar(name="PYTHONDONTWRITEBYTECODE", value="1"),
               k8s.EnvVar(name="POD_NAME", value_from=k8s.EnvVarSource(
                   field_ref=k8s.ObjectFieldSelector(field_path="metadata.name")))]
    read_from_old_bucket = bool(restore_bucket) and profile.backup_target == "bucket" and not own_endpoint
    for var in env:
        name = var.name
        if name in ("PYTHONDONTWRITEBYTECODE", "POD_NAME"):
            continue
        if not (name.startswith("BACKUP_S3_") or name.startswith("AWS_")):
            continue  # only the target's: not the sidecar's other secrets
        if name == "BACKUP_S3_BUCKET" and read_from_old_bucket:
            var = k8s.EnvVar(name=name, value=restore_bucket)
        own_env.append(var)
    return k8s.Container(
        name=NAME,
        image=versions.PYTHON_IMAGE,
        image_pull_policy="IfNotPresent",
        command=["python3", f"{scripts_dir}/{PROGRAM}", component, "--to", to, *args],
        env=own_env,
        security_context=container_context(uid=uid),
        resources=raw_resources(sizing),
        volume_mounts=list(mounts),
    )


def snapshot_restore_container(backup: Any, *, component: str, to: str, args: Sequence[str],
                               data_mounts: Sequence[Any], uid: int, sizing: Sizing, profile: Profile,
                               restore_bucket: str = "", own_endpoint: bool = False) -> k8s.Container:
    """:func:`restore_container` for a component with snapshot backups, with the access of its
    ``backup`` sidecar (a :class:`~final_problem.constructs.snapshot_backup.SnapshotBackup`):
    the sidecar's target environment, and its mounts of the volumes the backup brings (the
    scripts, the credentials' token), beside ``data_mounts`` (writable)."""
    from final_problem.constructs.snapshot_backup import SCRIPTS_DIR

    brought = {volume.name for volume in backup.volumes}
    mounts = [*data_mounts, *(m for m in backup.container.volume_mounts if m.name in brought)]
    return restore_container(component=component, to=to, args=args, env=backup.container.env, mounts=mounts,
                             scripts_dir=SCRIPTS_DIR, uid=uid, sizing=sizing, profile=profile,
                             restore_bucket=restore_bucket, own_endpoint=own_endpoint)
