"""The base chart: what every other component stands on.

- the ``platform`` namespace, enforcing Pod Security "restricted", default-deny with DNS;
- the StorageClass of the profile: encrypted gp3 on EKS (the cluster default), retained
  local-path on k3s; both keep released volumes (``reclaimPolicy: Retain``);
- the in-cluster secret mechanism, shown with the platform's admin credential;
- on a profile whose backups stay in the cluster (the Pis), with ``backups`` on: the
  S3-compatible server they go to (:class:`~final_problem.constructs.backup_target.S3Server`).
"""

from __future__ import annotations

from typing import Mapping

from constructs import Construct

from final_problem import versions
from final_problem.components import PlatformChart, register
from final_problem.config import Settings
from final_problem.constructs.backup_target import S3Server
from final_problem.constructs.labels import set_component
from final_problem.constructs.namespace import RestrictedNamespace
from final_problem.constructs.generated_secrets import GeneratedSecrets, SecretSpec
from final_problem.imports import k8s
from final_problem.profiles import Profile


@register
class BaseChart(PlatformChart):
    """Namespace, storage and secret generation shared by the platform."""

    component = "base"
    construct_id = "Base"
    version = versions.PLATFORM_VERSION
    # Supported upgrade paths of the images its pods run (final_problem/versions.py).
    upgrade_paths = versions.upgrade_paths(versions.PYTHON_IMAGE, versions.VERSITYGW_IMAGE)
    images = (versions.VERSITYGW_IMAGE,)

    #: Namespace of platform-wide objects.
    NAMESPACE = "platform"
    #: Secret holding the platform admin credential (key ``password``).
    ADMIN_SECRET = "platform-admin"

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        settings: Settings,
        profile: Profile,
        dependencies: Mapping[str, PlatformChart],
    ) -> None:
        super().__init__(scope, id, settings=settings, profile=profile, dependencies=dependencies)
        self.platform_namespace = RestrictedNamespace(self, "Namespace", name=self.NAMESPACE)
        #: Name of the StorageClass every volume claim of the platform uses.
        self.storage_class_name = profile.storage_class
        annotations = {"storageclass.kubernetes.io/is-default-class": "true"} if profile.storage_default else None
        self.storage_class = k8s.KubeStorageClass(
            self, "StorageClass",
            metadata=k8s.ObjectMeta(name=profile.storage_class, annotations=annotations),
            provisioner=profile.storage_provisioner,
            parameters=dict(profile.storage_parameters) or None,
            # Data outlives its claim: a released volume is kept until an operator
            # deletes it (README, "Wiping data").
            reclaim_policy="Retain",
            # Bind where the pod lands, so zonal EBS volumes follow zone spread.
            volume_binding_mode="WaitForFirstConsumer",
            allow_volume_expansion=profile.name == "eks",
        )
        set_component(self.storage_class, "storage")
        self.secrets = GeneratedSecrets(
            self, "Secrets",
            namespace=self.NAMESPACE,
            labels=self.label_set,
            secrets=[SecretSpec(name=self.ADMIN_SECRET, keys=("password",))],
        )
        self.secrets.add_dependency(self.platform_namespace)
        #: The in-cluster backup target, or None (EKS's is the stack's bucket).
        self.backup_server: S3Server | None = None
        if settings.backups and profile.backup_target == "in-cluster":
            self.backup_server = S3Server(self, "BackupTarget", profile=profile,
                                          storage_gib=settings.backup_server_storage_gib,
                                          pss_version=f"v{settings.kubernetes_version}",
                                          label_set=self.label_set)
            self.backup_server.add_dependency(self.storage_class)
