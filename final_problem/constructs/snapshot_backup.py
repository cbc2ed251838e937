"""Scheduled snapshots to an S3-compatible target, as a ``backup`` sidecar of a quorum set's members.

:class:`SnapshotBackupSettings` holds the settings a component with snapshot backups adds to
its own (Redis, ZooKeeper: ``redis.backup_endpoint``, ...). :func:`snapshots_on` says whether
a chart has them: while the cluster setting ``backups`` is on (the default), to the profile's
target (:mod:`final_problem.constructs.backup_target`: on EKS the cluster stack's bucket
through EKS Pod Identity, on the Pis the in-cluster S3 server), or to the component's own
``backup_endpoint``. :class:`SnapshotBackup` then creates:

- ConfigMap ``<name>-backup-scripts``: the program, :mod:`final_problem.renderers.snapshot_agent`
  (the snapshots) with :mod:`final_problem.renderers.backup_agent` (the S3 client) beside it,
  a zip application (:mod:`final_problem.renderers.program`);
- what :func:`~final_problem.constructs.backup_target.backup_access` adds: the pods' service
  account (unless the pod has one already), their egress to the target and, in-cluster, the
  Role reading the S3 server's key pair;
- :attr:`SnapshotBackup.container`, the sidecar (the python image, under the members' uid),
  and :attr:`SnapshotBackup.volumes`, :attr:`SnapshotBackup.pod_labels` and
  :attr:`SnapshotBackup.service_account`, for the chart to put in its pod template;
- Service ``<name>-backup-metrics``, annotated ``prometheus.io/scrape``, through which the
  sidecar's freshness metrics are scraped on ``backup_metrics_port`` (a settings class of
  :class:`SidecarSnapshotSettings`), and NetworkPolicy ``<name>-backup-metrics`` admitting
  that port from namespaces labelled ``final-problem.io/monitoring=true``, as PostgreSQL's.

With ``backup_endpoint`` set, the key pair is read from Secret ``<name>-backup-target``
(``access-key-id``, ``secret-access-key``) the user creates in the component's namespace.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping, Sequence

from final_problem import versions
from final_problem.changes import procedure, rolling
from final_problem.constructs.backup_target import backup_access
from final_problem.constructs.labels import set_component
from final_problem.constructs.namespace import MONITORING_NAMESPACE_LABEL, ports
from final_problem.constructs.security import Sizing, container_context, raw_resources
from final_problem.errors import ConfigError
from final_problem.imports import int_or_string, k8s
from final_problem.objects import Group, ObjectChart
from final_problem.profiles import Profile
from final_problem.renderers import program
from final_problem.settings import ComponentSettings, setting

if TYPE_CHECKING:
    from final_problem.config import Settings

#: Where the ConfigMap of programs is mounted in the sidecar.
SCRIPTS_DIR = "/backup"
AGENT_FILE = "snapshot_agent.pyz"
#: The restore init container's program (final_problem.constructs.restore).
RESTORE_FILE = "restore_init.pyz"
#: The sidecar's container port (and its Service's) for the freshness metrics.
METRICS_PORT_NAME = "backup-metrics"
#: The sidecar's resources: it streams files from disk; one copy at a time.
SIDECAR_SIZING = Sizing(cpu_request_m=10, cpu_limit_m=500, memory_request_mib=32, memory_limit_mib=96)


def scripts(*, restore: bool = False) -> dict[str, bytes]:
    """The ConfigMap's programs (zip applications, :mod:`final_problem.renderers.program`): the
    snapshot agent with the S3 client it imports, and with ``restore`` the restore init
    container's (final_problem.constructs.restore)."""
    programs = {AGENT_FILE: program.zipapp("snapshot_agent.py", ["backup_agent.py"])}
    if restore:
        programs[RESTORE_FILE] = program.zipapp("restore_init.py", ["backup_agent.py", "snapshot_agent.py"])
    return programs


@dataclass(frozen=True, kw_only=True)
class SnapshotBackupSettings(ComponentSettings):
    """The backup settings of a component with snapshot backups; call :meth:`check_backup`
    from the component's ``check``."""

    backup_endpoint: str = setting(
        "", doc="URL of an S3-compatible backup target of your own (e.g. `https://nas.lan:9000`), its key pair in "
                "the Secret `<component>-backup-target` (keys `access-key-id`, `secret-access-key`) you create in "
                "the component's namespace. Empty: the profile's target (EKS: the cluster stack's bucket; Pis: the "
                "in-cluster S3 server). A snapshot goes up every backup_interval_minutes while the cluster setting "
                "`backups` is on.",
        change=rolling("the backup sidecar's target: members restart one at a time; snapshots start over at the "
                       "new target (keep the old one until the new one holds a snapshot)"),
    )
    backup_bucket: str = setting(
        "final-problem-backups", doc="Bucket on the Pis' in-cluster S3 server or on `backup_endpoint` (on EKS "
                                     "the stack's bucket is used).",
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
        "us-east-1", doc="Region the backup requests are signed for on the in-cluster S3 server or "
                         "`backup_endpoint` (any value the target accepts; versitygw's default is us-east-1); on EKS "
                         "the stack's region.",
        change=rolling("read by the backup sidecar at start: members restart one at a time"),
    )
    # Redis docs, "Redis persistence", backing up Redis data: archive an RDB every hour for
    # the latest day, and one a day for a month.
    backup_interval_minutes: int = setting(
        60, minimum=5, maximum=60 * 24 * 31,
        doc="Minutes between snapshots: the most a restore loses (writes after the newest snapshot are not in it). "
            "Default 60: hourly.",
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


@dataclass(frozen=True, kw_only=True)
class SidecarSnapshotSettings(SnapshotBackupSettings):
    """The backup settings of a component whose members' ``backup`` sidecar takes the snapshots
    (:class:`SnapshotBackup`: Redis, ZooKeeper; Consul's come from a CronJob, which serves
    nothing); call :meth:`check_backup_metrics_port` from the component's ``check``."""

    # The port of postgres.backup_metrics_port: one port for every component's backup
    # freshness, so one scrape rule fits them all.
    backup_metrics_port: int = setting(
        9188, minimum=1024, maximum=65535,
        doc="Port each member's backup sidecar serves the snapshots' freshness on (Prometheus text: the newest "
            "listed snapshot's age, whichever member took it, and this sidecar's upload counts), scraped through "
            "the Service `<component>-backup-metrics`.",
        change=rolling("read by the backup sidecar at start: members restart one at a time"),
    )

    def check_backup_metrics_port(self, taken: Mapping[str, int]) -> None:
        """Refuse a ``backup_metrics_port`` another listener of the member's pod has:
        ``taken`` maps what listens (``"redis.client_port"``, ``"the Redis exporter"``) to its port."""
        for what, port in taken.items():
            if port == self.backup_metrics_port:
                free = next(p for p in range(port + 1, 65_536) if p not in taken.values())
                raise self.error("backup_metrics_port", f"the same port as {what} in each member's pod: two "
                                 "listeners cannot share a port", f"set {self.section}.backup_metrics_port={free}")


def snapshots_on(settings: "Settings", props: SnapshotBackupSettings) -> bool:
    """Whether ``props``' component takes snapshots: while the cluster setting ``backups`` is
    on. A ``backup_endpoint`` while it is off is refused (it would silently back up nothing)."""
    if props.backup_endpoint and not settings.backups:
        raise ConfigError(f"{props.section}.backup_endpoint", props.backup_endpoint, "names a backup target while "
                          "the cluster setting backups is false",
                          f"set backups=true, or leave {props.section}.backup_endpoint unset")
    return settings.backups


class SnapshotBackup(Group):
    """The ``backup`` sidecar of each member of ``name``'s StatefulSet, its programs and its
    access to the target (the profile's, or ``backup_endpoint``), as ``service_account``;
    ``alive_path`` is the directory it writes its copies in (its liveness probe's); ``restore``:
    the ConfigMap also carries the restore init container's program."""

    def __init__(self, scope: ObjectChart | Group, id: str, *, name: str, namespace: str, component: str,
                 settings: SidecarSnapshotSettings, profile: Profile, service_account: str,
                 selector: dict[str, str], uid: int, args: Sequence[str], mounts: Sequence[k8s.VolumeMount],
                 alive_path: str, env: Sequence[k8s.EnvVar] = (), create_service_account: bool = True,
                 sizing: Sizing = SIDECAR_SIZING, restore: bool = False) -> None:
        super().__init__(scope, id)
        s = settings
        self.secret_name = f"{name}-backup-target"
        self.config_map_name = f"{name}-backup-scripts"
        self.config_map = k8s.KubeConfigMap(
            self, "Scripts", metadata=k8s.ObjectMeta(name=self.config_map_name, namespace=namespace),
            binary_data=program.binary_data(scripts(restore=restore)))
        #: Whether the ConfigMap carries the restore init container's program.
        self.restore = restore
        set_component(self.config_map, "backup")
        access = backup_access(
            self, namespace=namespace, service_account=service_account, pod_selector=selector, profile=profile,
            bucket=s.backup_bucket, region=s.backup_region, prefix=s.backup_prefix, endpoint=s.backup_endpoint,
            key_secret=self.secret_name, create_service_account=create_service_account)
        #: The pods' service account and the labels the target admits.
        self.service_account = access.service_account
        self.pod_labels = access.pod_labels
        self.container = k8s.Container(
            name="backup",
            image=versions.PYTHON_IMAGE,
            image_pull_policy="IfNotPresent",
            command=["python3", f"{SCRIPTS_DIR}/{AGENT_FILE}", component, *args,
                     "--interval-minutes", str(s.backup_interval_minutes), "--retention-days", str(s.backup_retention_days),
                     "--metrics-port", str(s.backup_metrics_port)],
            ports=[k8s.ContainerPort(name=METRICS_PORT_NAME, container_port=s.backup_metrics_port)],
            env=[
                k8s.EnvVar(name="PYTHONDONTWRITEBYTECODE", value="1"),
                k8s.EnvVar(name="POD_NAME", value_from=k8s.EnvVarSource(
                    field_ref=k8s.ObjectFieldSelector(field_path="metadata.name"))),
                *access.env,
                *env,
            ],
            # The members' uid: the files it reads (and, for Redis, the hard link it makes
            # beside dump.rdb) are theirs.
            security_context=container_context(uid=uid),
            resources=raw_resources(sizing),
            volume_mounts=[*mounts, *access.volume_mounts,
                           k8s.VolumeMount(name="backup-scripts", mount_path=SCRIPTS_DIR, read_only=True)],
            # A sidecar's readiness must never take the member out of its Services: ready once
            # started. Alive while it can write where it puts its copies (``alive_path``).
            readiness_probe=k8s.Probe(exec=k8s.ExecAction(command=["true"]), period_seconds=60),
            liveness_probe=k8s.Probe(
                exec=k8s.ExecAction(command=["test", "-w", alive_path]),
                initial_delay_seconds=30, period_seconds=60, timeout_seconds=10, failure_threshold=3),
        )
        self.volumes = [k8s.Volume(name="backup-scripts", config_map=k8s.ConfigMapVolumeSource(
            name=self.config_map_name, default_mode=0o444)), *access.volumes]
        self._metrics(name=name, namespace=namespace, selector=selector, port=s.backup_metrics_port)

    def _metrics(self, *, name: str, namespace: str, selector: dict[str, str], port: int) -> None:
        """The Service the sidecars' freshness is scraped through and the policy admitting it."""
        # A Service of its own, as PostgreSQL's: the pods' prometheus.io annotations name the
        # component's exporter, and a pod annotates one port (the Prometheus example
        # configuration's kubernetes-service-endpoints job reads a Service's annotations and
        # scrapes each of its endpoints, so every member is scraped).
        self.metrics_service = k8s.KubeService(
            self, "MetricsService",
            metadata=k8s.ObjectMeta(name=f"{name}-backup-metrics", namespace=namespace, annotations={
                "prometheus.io/scrape": "true", "prometheus.io/port": str(port), "prometheus.io/path": "/metrics"}),
            spec=k8s.ServiceSpec(selector=selector, ports=[k8s.ServicePort(
                name=METRICS_PORT_NAME, port=port, target_port=int_or_string(METRICS_PORT_NAME))]),
        )
        # From the monitoring namespaces only, as every metrics port of the platform.
        self.metrics_policy = k8s.KubeNetworkPolicy(
            self, "MetricsPolicy",
            metadata=k8s.ObjectMeta(name=f"{name}-backup-metrics", namespace=namespace),
            spec=k8s.NetworkPolicySpec(
                pod_selector=k8s.LabelSelector(match_labels=selector),
                policy_types=["Ingress"],
                ingress=[k8s.NetworkPolicyIngressRule(
                    from_=[k8s.NetworkPolicyPeer(namespace_selector=k8s.LabelSelector(
                        match_labels=MONITORING_NAMESPACE_LABEL))],
                    ports=ports(port),
                )],
            ),
        )
        set_component(self.metrics_service, "backup")
        set_component(self.metrics_policy, "network-policy")

    @property
    def config_text(self) -> str:
        """What the pod template's config digest covers: a changed program restarts the members."""
        # Not the restore program: its pods change with the init container anyway, and the
        # other pods sharing the digest (Redis's Sentinels) need not restart for it.
        return program.digest_text(scripts())
