"""The PostgreSQL chart: one server in the ``postgres`` namespace that other components use.

Creates:

- the ``postgres`` namespace (Pod Security "restricted", default-deny);
- Secret ``postgres-superuser`` (key ``password``) generated in the cluster, once;
- a StatefulSet of one server on a retained volume, ``PGDATA`` a subdirectory of the
  mount (initdb refuses a mount point that holds ``lost+found``; docker-library
  ``postgres`` image docs, "PGDATA"), started by the official image's entrypoint with the
  settings of :func:`final_problem.renderers.postgres.server_settings` (the local test
  server uses the same), a postgres_exporter sidecar for metrics;
- a Service ``postgres`` and, per client a component declares with :meth:`PostgresChart.add_client`:
  a login role with the client's password and ``CREATEDB`` (made by a provisioning Job
  that reads the client's own generated Secret through a Role limited to that one name),
  and a NetworkPolicy admitting only that client's pods;
- NetworkPolicies: metrics from namespaces labelled ``final-problem.io/monitoring=true``;
- with ``backups`` on (the default): continuous WAL archiving and scheduled base backups
  (:mod:`final_problem.renderers.postgres_backup`): a ConfigMap of the scripts,
  ``archive_command`` in the server, two sidecars (``base-backup``, ``backup``), the pod's
  service account ``postgres-backup`` and egress to the target. The target is the profile's
  (:mod:`final_problem.constructs.backup_target`: on EKS the stack's bucket through EKS Pod
  Identity, on the Pis the in-cluster S3 server), or the one ``postgres.backup_endpoint``
  names, whose key pair is read from Secret ``postgres-backup-target`` (``access-key-id``,
  ``secret-access-key``) the user creates. The ``backup`` sidecar serves the backups'
  freshness on ``backup_metrics_port``, scraped through the Service ``postgres-backup-metrics``.

One server, not a replicated cluster: a replica set with failover (Patroni, CloudNativePG)
is an operator's job. The volume outlives the pod; a node loss means a restart elsewhere
(EKS: EBS reattaches in the zone) or, on local-path storage, waiting for the node.

Sources: PostgreSQL 17 documentation; docker-library ``postgres`` image (entrypoint,
uid 999); prometheus-community postgres_exporter README (``DATA_SOURCE_*`` variables).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Mapping

from constructs import Construct

from final_problem import sizes, versions
from final_problem.components import PlatformChart, register
from final_problem.config import Settings
from final_problem.constructs import backup_target
from final_problem.constructs.restore import check_restore_to, restore_container, restore_to_setting
from final_problem.constructs.generated_secrets import API_PORTS, GeneratedSecrets, SecretSpec, secret_env
from final_problem.constructs.labels import set_component
from final_problem.constructs.namespace import MONITORING_NAMESPACE_LABEL, RestrictedNamespace, ports
from final_problem.constructs.quorum import ClaimSpec, volume_claim_template
from final_problem.constructs.security import Sizing, container_context, pod_context, raw_resources
from final_problem.errors import ConfigError
from final_problem.imports import int_or_string, k8s, quantity
from final_problem.objects import ObjectChart
from final_problem.profiles import Profile
from final_problem.renderers import postgres_backup, program
from final_problem.renderers.postgres import ROLE_SQL, server_args, server_settings
from final_problem.changes import procedure, rolling, volume_size
from final_problem.settings import ComponentSettings, per_profile, setting

#: The image's postgres user and group (docker-library/postgres Dockerfile: uid/gid 999).
POSTGRES_UID = 999
#: postgres_exporter image: USER nobody (65534).
EXPORTER_UID = 65534
#: The python image has no user of its own; nobody owns nothing in it.
PROVISIONER_UID = 65534
MOUNT = "/var/lib/postgresql/data"
PGDATA = f"{MOUNT}/pgdata"
RUN_DIR = "/var/run/postgresql"
#: Pod label a client's pods carry to reach the server (with their namespace's label).
CLIENT_POD_LABEL = "final-problem.io/postgres-client"
#: terminationGracePeriodSeconds: the preStop's checkpoint and fast shutdown
#: (:func:`pre_stop_command`) must end within it, or the server is SIGKILLed and the next start
#: replays the WAL since the last checkpoint (safe, only slower).
TERMINATION_GRACE_S = 60
#: Seconds ``pg_ctl stop`` waits for the server to exit, within the grace period: the rest is
#: the checkpoint before it and the kubelet's own SIGTERM/SIGKILL.
STOP_WAIT_S = 45
#: The spool the server's archive_command and the backup sidecars share, on the server's volume
#: beside PGDATA: a segment copied there is still there after a restart of the pod.
BACKUP_SPOOL = f"{MOUNT}/backup-spool"
#: Secret (in the postgres namespace) holding an external backup target's key pair.
BACKUP_SECRET = "postgres-backup-target"
#: The service account of the server's pod: the EKS stack associates it with the backup
#: bucket's role (final_problem/stacks/backups.py); in-cluster it may read the S3 server's key pair.
BACKUP_SERVICE_ACCOUNT = "postgres-backup"
#: Where the ``restore`` init container puts the archived WAL recovery reads (beside PGDATA,
#: on the volume: recovery reads it after the init container has ended).
RESTORE_WAL_DIR = f"{MOUNT}/restore-wal"
#: Seconds archive_command waits for the upload of one segment before it fails (PostgreSQL then
#: keeps the segment and retries): a 16 MiB segment compressed and uploaded over a home network
#: takes well under it.
ARCHIVE_UPLOAD_WAIT_S = 120

#: Readiness probe period: with one server, every second the restarted pod waits for its
#: first passing probe is a second of outage (a probe is one pg_isready run).
READINESS_PERIOD_S = 2


def pre_stop_command(*, port: int) -> list[str]:
    """The server's preStop hook: a checkpoint while clients are still served, then a fast
    shutdown, waiting for the server to exit.

    The kubelet's SIGTERM is PostgreSQL's *smart* shutdown: no new connections, but it waits
    for every session to end (PostgreSQL 17 docs, "Shutting Down the Server"), and every
    Cadence process keeps a pool open, so the server would stay up until the grace period
    ends and be SIGKILLed. The image declares ``STOPSIGNAL SIGINT`` (fast shutdown:
    sessions are ended, transactions rolled back, a shutdown checkpoint written), which
    containerd honours, but Kubernetes' own stop signal is still alpha (``lifecycle.stopSignal``,
    1.33): the hook makes the fast shutdown explicit on any runtime. The checkpoint first
    writes the dirty buffers while the server still serves, so the shutdown checkpoint, when
    nothing is served, has little left to write. A failed checkpoint does not stop the
    shutdown; ``-w -t`` waits at most :data:`STOP_WAIT_S`.
    """
    return ["sh", "-c", "\n".join([
        f'PGPASSWORD="$POSTGRES_PASSWORD" psql -X -q -h 127.0.0.1 -p {port} -U postgres -d postgres -c CHECKPOINT'
        ' || echo "checkpoint before shutdown failed" >&2',
        f'exec pg_ctl stop -D "$PGDATA" -m fast -w -t {STOP_WAIT_S}',
    ])]

# Reads one key of one Secret through the API with the pod's token (standard library
# only, the python image) and writes it to a memory-backed file the next container reads.
_FETCH_PASSWORD = r"""
import json, os, ssl, time, urllib.error, urllib.request
sa = "/var/run/secrets/kubernetes.io/serviceaccount"
url = "https://%s:%s/api/v1/namespaces/%s/secrets/%s" % (
    os.environ["KUBERNETES_SERVICE_HOST"], os.environ.get("KUBERNETES_SERVICE_PORT", "443"),
    os.environ["SOURCE_NAMESPACE"], os.environ["SOURCE_OBJECT"])
req = urllib.request.Request(url, headers={"Authorization": "Bearer " + open(sa + "/token").read().strip()})
ctx = ssl.create_default_context(cafile=sa + "/ca.crt")
# The client's chart creates the Secret and the Role after this chart: wait for both.
deadline = time.monotonic() + 900
while True:
    try:
        data = json.load(urllib.request.urlopen(req, context=ctx, timeout=30))["data"][os.environ["SOURCE_FIELD"]]
        break
    except (urllib.error.HTTPError, KeyError) as e:
        if time.monotonic() > deadline:
            raise SystemExit("no password yet: %s" % e)
        time.sleep(10)
fd = os.open("/run/client/password", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
os.write(fd, data.encode())
os.close(fd)
print("fetched the password of %s/%s" % (os.environ["SOURCE_NAMESPACE"], os.environ["SOURCE_OBJECT"]))
"""


@dataclass(frozen=True, kw_only=True)
class PostgresProps(ComponentSettings):
    """What a user can choose about PostgreSQL (section ``postgres``); defaults per profile."""

    max_connections: int = setting(
        100, minimum=20, maximum=1000,
        doc="`max_connections` (PostgreSQL's default 100); each connection is a process with its own memory. "
            "Every Cadence process keeps a pool to each of its two databases.",
        change=rolling("read at start: the one server restarts, an outage until it is Ready"),
    )
    memory_mib: int = setting(
        sizes.default("postgres"), minimum=256, maximum=262_144,
        doc="Memory request and limit of the server container.",
        change=rolling("the one server restarts, an outage until it is Ready"),
    )
    shared_buffers_mib: int = setting(
        sizes.default("postgres_shared_buffers_mib"), minimum=16, maximum=131_072,
        doc="`shared_buffers`; at most half of memory_mib (PostgreSQL docs, \"Resource Consumption\": a quarter "
            "of memory is a reasonable start).",
        change=rolling("read at start: the one server restarts, an outage until it is Ready"),
    )
    storage_gib: int = setting(
        per_profile(eks=20, pi=4), minimum=1, maximum=16_384, doc="The server's volume.",
        change=volume_size("the server's volume"),
    )
    port: int = setting(
        5432, minimum=1024, maximum=65535, doc="Client port.",
        change=rolling("the server and its Service move to the new port; clients must use it"),
    )
    metrics_port: int = setting(
        9187, minimum=1024, maximum=65535, doc="postgres_exporter port.",
        change=rolling("the exporter's port: the server's pod restarts with it"),
    )
    backup_endpoint: str = setting(
        "", doc="URL of an S3-compatible backup target of your own (e.g. `https://nas.lan:9000`), its key pair in "
                "the Secret `postgres-backup-target` (keys `access-key-id`, `secret-access-key`) you create in the "
                "`postgres` namespace. Empty: the profile's target (EKS: the cluster stack's bucket; Pis: the "
                "in-cluster S3 server). Backups run while the cluster setting `backups` is on.",
        change=rolling("the backup sidecar's target: the server's pod restarts; the archive starts over at the new "
                       "target (keep the old one until the new one holds a base backup)"),
    )
    backup_bucket: str = setting(
        "final-problem-backups", doc="Bucket on the Pis' in-cluster S3 server or on `backup_endpoint` (on EKS "
                                     "the stack's bucket is used).",
        change=procedure("the archive starts over in the new bucket: no point before the next base backup can be "
                         "restored from it", "keep the old bucket until the new one holds a base backup older than "
                         "every point you may need"),
    )
    backup_prefix: str = setting(
        "", doc="Key prefix inside the bucket (objects under `<prefix>/postgres/`); one per server that shares "
                "the bucket.",
        change=procedure("the archive starts over under the new prefix",
                         "keep the old prefix until the new one holds a base backup"),
    )
    backup_region: str = setting(
        "us-east-1", doc="Region the backup requests are signed for on the in-cluster S3 server or "
                         "`backup_endpoint` (any value the target accepts; versitygw's default is us-east-1); on EKS "
                         "the stack's region.",
        change=rolling("read by the backup sidecar at start"),
    )
    base_backup_hours: int = setting(
        24, minimum=1, maximum=24 * 31,
        doc="Hours between base backups. Recovery replays the WAL since the last one: fewer hours, faster "
            "restores, more space.",
        change=rolling("read by the base-backup sidecar at start: the server's pod restarts"),
    )
    backup_retention_days: int = setting(
        7, minimum=1, maximum=3650,
        doc="Days base backups are kept (the newest always is), and with them the WAL to restore any point "
            "since the oldest.",
        change=rolling("read by the backup sidecar at start: the server's pod restarts; older backups go at the "
                       "next base backup"),
    )
    backup_metrics_port: int = setting(
        9188, minimum=1024, maximum=65535,
        doc="Port the backup sidecar serves the backups' freshness on (Prometheus text: the last success's "
            "age and the upload counts), scraped through the Service `postgres-backup-metrics`.",
        change=rolling("read by the backup sidecar at start: the server's pod restarts"),
    )
    restore_to: str = restore_to_setting(
        "postgres", chosen="PostgreSQL recovers to that time from the newest base backup that ended before it "
                           "and the archived WAL after it (`latest`: to the end of the archive)")
    archive_timeout_s: int = setting(
        60, minimum=10, maximum=3600,
        doc="`archive_timeout`: a segment with writes is archived at least this often, the most a lost volume "
            "loses (PostgreSQL docs 19.5.3: a minute or so is reasonable; each switch archives a 16 MiB segment, "
            "compressed).",
        change=rolling("a server setting passed at start: the server restarts"),
    )

    @property
    def sizing(self) -> Sizing:
        return sizes.sizing("postgres", self.profile, self.memory_mib)

    @property
    def exporter_sizing(self) -> Sizing:
        if self.profile.small:
            return Sizing(cpu_request_m=10, cpu_limit_m=50, memory_request_mib=24, memory_limit_mib=48)
        return Sizing(cpu_request_m=10, cpu_limit_m=100, memory_request_mib=32, memory_limit_mib=64)

    def check(self) -> None:
        if 2 * self.shared_buffers_mib > self.memory_mib:
            raise self.error(
                "shared_buffers_mib",
                f"must be at most half of postgres.memory_mib ({self.memory_mib}): backends, sorts and the page "
                "cache need the rest",
                f"leave postgres.shared_buffers_mib unset (each profile's default is a quarter of its memory), "
                f"or give at most {self.memory_mib // 2}",
            )
        if self.backup_endpoint and not self.backup_endpoint.startswith(("http://", "https://")):
            raise self.error("backup_endpoint", "is not an http(s) URL",
                             "set postgres.backup_endpoint=http://<host>:<port>, or leave it empty for no backups")
        check_restore_to(self)
        if self.port == self.metrics_port:
            raise self.error("metrics_port", "equals postgres.port", "set postgres.metrics_port=9187"
                             if self.port != 9187 else "set postgres.metrics_port=9188")
        if self.backup_metrics_port in (self.port, self.metrics_port):
            raise self.error("backup_metrics_port", "equals postgres.port or postgres.metrics_port",
                             "give the backup sidecar a port of its own, e.g. postgres.backup_metrics_port="
                             f"{max(self.port, self.metrics_port) + 1}")


@dataclass(frozen=True, kw_only=True)
class PostgresClient:
    """A component that logs in: its role, its namespace, and the Secret holding its password."""

    #: Login role (and owner of the databases the client creates).
    role: str
    namespace: str
    #: Secret in ``namespace`` generated by the client's chart; key ``password_key``.
    secret: str
    password_key: str = "password"
    #: Labels of the client's pods; :data:`CLIENT_POD_LABEL` is added to them.
    pod_selector: Mapping[str, str] = field(default_factory=dict)


@register
class PostgresChart(PlatformChart):
    """A PostgreSQL server with a generated superuser password, metrics and per-client access."""

    component = "postgres"
    construct_id = "Postgres"
    requires = ("base",)
    version = versions.POSTGRES_VERSION
    # Supported upgrade paths of the images its pods run (final_problem/versions.py).
    upgrade_paths = versions.upgrade_paths(versions.POSTGRES_IMAGE, versions.POSTGRES_EXPORTER_IMAGE, versions.PYTHON_IMAGE)
    settings_class = PostgresProps
    images = (versions.POSTGRES_IMAGE, versions.POSTGRES_EXPORTER_IMAGE, versions.PYTHON_IMAGE)

    NAMESPACE = "postgres"
    NAME = "postgres"
    SERVICE = "postgres"
    SUPERUSER_SECRET = "postgres-superuser"

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
        p: PostgresProps = self.props  # type: ignore[assignment]
        ns = self.NAMESPACE
        #: DNS name and port clients connect to.
        self.host = f"{self.SERVICE}.{ns}.svc.cluster.local"
        self.port = p.port
        self.selector = self.label_set.selector("server")
        self.clients: list[PostgresClient] = []

        self.postgres_namespace = RestrictedNamespace(self, "Namespace", name=ns, pss_version=f"v{settings.kubernetes_version}")
        self.secrets = GeneratedSecrets(
            self, "Secrets", namespace=ns, labels=self.label_set,
            secrets=[SecretSpec(name=self.SUPERUSER_SECRET, keys=("password",))],
        )
        self.secrets.add_dependency(self.postgres_namespace)

        if p.backup_endpoint and not settings.backups:
            raise ConfigError("postgres.backup_endpoint", p.backup_endpoint, "names a backup target while the "
                              "cluster setting backups is false", "set backups=true, or leave "
                              "postgres.backup_endpoint unset")
        #: Whether the server archives its WAL and takes base backups.
        self.backups = settings.backups
        check_restore_to(p, backups=settings.backups)
        #: The ``restore`` init container (``postgres.restore_to`` set), else None.
        self.restore: k8s.Container | None = None
        self._restore_bucket = settings.restore_bucket
        settings_map = server_settings(max_connections=p.max_connections, shared_buffers_mib=p.shared_buffers_mib)
        if self.backups:
            settings_map.update(postgres_backup.archive_settings(
                spool=BACKUP_SPOOL, archive_timeout_s=p.archive_timeout_s, upload_wait_s=ARCHIVE_UPLOAD_WAIT_S))
        args = server_args(settings_map)
        self.service = k8s.KubeService(
            self, "Service",
            metadata=k8s.ObjectMeta(name=self.SERVICE, namespace=ns),
            spec=k8s.ServiceSpec(selector=self.selector, ports=[
                k8s.ServicePort(name="postgres", port=p.port, target_port=int_or_string("postgres")),
                k8s.ServicePort(name="metrics", port=p.metrics_port, target_port=int_or_string("metrics")),
            ]),
        )
        set_component(self.service, "server")

        is_ready = ["pg_isready", "-h", "127.0.0.1", "-p", str(p.port), "-U", "postgres", "-d", "postgres"]
        server = k8s.Container(
            name="postgres",
            image=versions.POSTGRES_IMAGE,
            image_pull_policy="IfNotPresent",
            # The image's entrypoint runs initdb on an empty PGDATA (superuser password from
            # POSTGRES_PASSWORD, scram-sha-256 for host connections), then execs postgres
            # with these arguments. Running as 999 it changes no ownership.
            args=["postgres", "-c", f"port={p.port}", *args],
            env=[
                k8s.EnvVar(name="PGDATA", value=PGDATA),
                k8s.EnvVar(name="PGPORT", value=str(p.port)),
                secret_env("POSTGRES_PASSWORD", self.SUPERUSER_SECRET, "password"),
                k8s.EnvVar(name="POSTGRES_INITDB_ARGS", value="--auth-local=scram-sha-256 --auth-host=scram-sha-256"),
            ],
            ports=[k8s.ContainerPort(name="postgres", container_port=p.port)],
            security_context=container_context(uid=POSTGRES_UID),
            resources=raw_resources(p.sizing),
            # Ready: accepts connections. Alive: the postmaster answers at all (pg_isready
            # exits 1 "rejecting connections" during startup and recovery, 2 when nothing
            # answers); crash recovery after a power cut must not be killed.
            readiness_probe=k8s.Probe(
                exec=k8s.ExecAction(command=is_ready), period_seconds=READINESS_PERIOD_S, timeout_seconds=5,
                failure_threshold=3,
            ),
            lifecycle=k8s.Lifecycle(pre_stop=k8s.LifecycleHandler(
                exec=k8s.ExecAction(command=pre_stop_command(port=p.port)))),
            liveness_probe=k8s.Probe(
                exec=k8s.ExecAction(command=["sh", "-c", " ".join(is_ready) + '; [ "$?" -ne 2 ]']),
                initial_delay_seconds=30, period_seconds=20, timeout_seconds=10, failure_threshold=6,
            ),
            volume_mounts=[
                k8s.VolumeMount(name="data", mount_path=MOUNT),
                k8s.VolumeMount(name="run", mount_path=RUN_DIR),
                k8s.VolumeMount(name="tmp", mount_path="/tmp"),
            ],
        )
        exporter = k8s.Container(
            name="metrics",
            image=versions.POSTGRES_EXPORTER_IMAGE,
            image_pull_policy="IfNotPresent",
            args=[f"--web.listen-address=:{p.metrics_port}"],
            env=[
                k8s.EnvVar(name="DATA_SOURCE_URI", value=f"127.0.0.1:{p.port}/postgres?sslmode=disable"),
                k8s.EnvVar(name="DATA_SOURCE_USER", value="postgres"),
                secret_env("DATA_SOURCE_PASS", self.SUPERUSER_SECRET, "password"),
            ],
            ports=[k8s.ContainerPort(name="metrics", container_port=p.metrics_port)],
            security_context=container_context(uid=EXPORTER_UID),
            resources=raw_resources(p.exporter_sizing),
            # pg_up in the body says whether the database answers; the endpoint itself
            # answers while the exporter runs.
            readiness_probe=k8s.Probe(
                http_get=k8s.HttpGetAction(path="/metrics", port=int_or_string(p.metrics_port)),
                period_seconds=30, timeout_seconds=10,
            ),
            liveness_probe=k8s.Probe(
                tcp_socket=k8s.TcpSocketAction(port=int_or_string(p.metrics_port)),
                initial_delay_seconds=10, period_seconds=30, timeout_seconds=5, failure_threshold=4,
            ),
        )
        sidecars: list[k8s.Container] = []
        backup_volumes: list[k8s.Volume] = []
        config_text = " ".join(args)
        pod_labels = {**self.label_set.chart_labels(), **self.selector}
        if self.backups:
            sidecars, backup_volumes, backup_labels = self._backups(p)
            pod_labels.update(backup_labels)
            server.volume_mounts.append(  # type: ignore[union-attr]
                k8s.VolumeMount(name="backup-scripts", mount_path=postgres_backup.SCRIPTS_DIR, read_only=True))
            config_text += "".join(postgres_backup.scripts().values()) + program.digest_text(
                postgres_backup.programs(restore=bool(p.restore_to)))
        digest = hashlib.sha256(config_text.encode()).hexdigest()[:16]
        self.stateful_set = k8s.KubeStatefulSet(
            self, "Server",
            metadata=k8s.ObjectMeta(name=self.NAME, namespace=ns, labels={"app.kubernetes.io/component": "server"},
                                    annotations={
                                        "checkov.io/skip1": "CKV_K8S_40=the official postgres image runs as its own uid 999",
                                        "checkov.io/skip2": "CKV_K8S_35=POSTGRES_PASSWORD is read by the image's entrypoint; the value comes from a secretKeyRef",
                                    }),
            spec=k8s.StatefulSetSpec(
                # One server: see the module docstring.
                replicas=1,
                service_name=self.SERVICE,
                selector=k8s.LabelSelector(match_labels=self.selector),
                # One server: a changed pod template is a planned restart (stop, then start on
                # the same volume), an outage of a few seconds; a drain the same.
                update_strategy=k8s.StatefulSetUpdateStrategy(type="RollingUpdate"),
                persistent_volume_claim_retention_policy=k8s.StatefulSetPersistentVolumeClaimRetentionPolicy(
                    when_deleted="Retain", when_scaled="Retain"),
                volume_claim_templates=[volume_claim_template(ClaimSpec(name="data", size_gib=p.storage_gib), profile=profile)],
                template=k8s.PodTemplateSpec(
                    metadata=k8s.ObjectMeta(labels=pod_labels, annotations={
                        "final-problem.io/config-sha256": digest,
                        "prometheus.io/scrape": "true", "prometheus.io/port": str(p.metrics_port),
                    }),
                    spec=k8s.PodSpec(
                        # The backup container's credentials come with this account: EKS Pod
                        # Identity's projected token, or a token projected into it alone.
                        service_account_name=BACKUP_SERVICE_ACCOUNT if self.backups else None,
                        automount_service_account_token=False,
                        enable_service_links=False,
                        security_context=pod_context(uid=POSTGRES_UID),
                        # A fast shutdown checkpoints; give it time before SIGKILL.
                        termination_grace_period_seconds=TERMINATION_GRACE_S,
                        init_containers=[self.restore] if self.restore else None,
                        containers=[server, exporter, *sidecars],
                        volumes=[
                            k8s.Volume(name="run", empty_dir=k8s.EmptyDirVolumeSource(size_limit=quantity("8Mi"))),
                            k8s.Volume(name="tmp", empty_dir=k8s.EmptyDirVolumeSource(size_limit=quantity("256Mi"))),
                            *backup_volumes,
                        ],
                    ),
                ),
            ),
        )
        set_component(self.stateful_set, "server")
        self.metrics_policy = k8s.KubeNetworkPolicy(
            self, "AllowMetrics",
            metadata=k8s.ObjectMeta(name="postgres-metrics", namespace=ns),
            spec=k8s.NetworkPolicySpec(
                pod_selector=k8s.LabelSelector(match_labels=self.selector),
                policy_types=["Ingress"],
                ingress=[k8s.NetworkPolicyIngressRule(
                    from_=[k8s.NetworkPolicyPeer(namespace_selector=k8s.LabelSelector(match_labels=MONITORING_NAMESPACE_LABEL))],
                    ports=ports(p.metrics_port, *([p.backup_metrics_port] if self.backups else [])),
                )],
            ),
        )
        set_component(self.metrics_policy, "network-policy")
        for child in (self.service, self.stateful_set, self.metrics_policy):
            child.add_dependency(self.postgres_namespace.resource)
        self.stateful_set.add_dependency(self.secrets)
        if self.backups:
            self.stateful_set.add_dependency(self.backup_scripts)

    def _backups(self, p: PostgresProps) -> tuple[list[k8s.Container], list[k8s.Volume], dict[str, str]]:
        """The ConfigMap of backup scripts, the two backup sidecars, the pod's service account,
        the egress to the target and the Service its freshness is scraped through; returns the
        sidecars, the pod's volumes and the pod's labels."""
        ns = self.NAMESPACE
        self.backup_scripts = k8s.KubeConfigMap(
            self, "BackupScripts",
            metadata=k8s.ObjectMeta(name="postgres-backup-scripts", namespace=ns),
            data=postgres_backup.scripts(),
            binary_data=program.binary_data(postgres_backup.programs(restore=bool(p.restore_to))),
        )
        set_component(self.backup_scripts, "backup")
        self.backup_scripts.add_dependency(self.postgres_namespace.resource)
        mounts = [
            k8s.VolumeMount(name="data", mount_path=MOUNT),
            k8s.VolumeMount(name="backup-scripts", mount_path=postgres_backup.SCRIPTS_DIR, read_only=True),
        ]
        base_backup = k8s.Container(
            name="base-backup",
            image=versions.POSTGRES_IMAGE,
            image_pull_policy="IfNotPresent",
            command=["sh", f"{postgres_backup.SCRIPTS_DIR}/{postgres_backup.BASE_BACKUP_FILE}", BACKUP_SPOOL,
                     str(p.base_backup_hours)],
            env=[
                k8s.EnvVar(name="PGPORT", value=str(p.port)),
                secret_env("POSTGRES_PASSWORD", self.SUPERUSER_SECRET, "password"),
            ],
            security_context=container_context(uid=POSTGRES_UID),
            # pg_basebackup streams files to disk; the server does the reading.
            resources=raw_resources(Sizing(cpu_request_m=10, cpu_limit_m=500, memory_request_mib=32,
                                           memory_limit_mib=128)),
            volume_mounts=mounts,
            # A sidecar's readiness must never take the server out of its Service: ready once
            # started. Alive while it can write the spool on the server's volume.
            readiness_probe=k8s.Probe(exec=k8s.ExecAction(command=["true"]), period_seconds=60),
            liveness_probe=k8s.Probe(
                exec=k8s.ExecAction(command=["test", "-w", BACKUP_SPOOL]),
                initial_delay_seconds=30, period_seconds=60, timeout_seconds=10, failure_threshold=3),
        )
        access = backup_target.backup_access(
            self, namespace=ns, service_account=BACKUP_SERVICE_ACCOUNT, pod_selector=self.selector,
            profile=self.profile, bucket=p.backup_bucket, region=p.backup_region, prefix=p.backup_prefix,
            endpoint=p.backup_endpoint, key_secret=BACKUP_SECRET)
        for obj in access.objects:
            if obj.metadata.namespace == ns:
                obj.add_dependency(self.postgres_namespace.resource)
        agent = k8s.Container(
            name="backup",
            image=versions.PYTHON_IMAGE,
            image_pull_policy="IfNotPresent",
            command=["python3", f"{postgres_backup.SCRIPTS_DIR}/{postgres_backup.AGENT_FILE}", "agent",
                     "--spool", BACKUP_SPOOL, "--retention-days", str(p.backup_retention_days),
                     "--metrics-port", str(p.backup_metrics_port)],
            env=[k8s.EnvVar(name="PYTHONDONTWRITEBYTECODE", value="1"), *access.env],
            ports=[k8s.ContainerPort(name="backup-metrics", container_port=p.backup_metrics_port)],
            # Same uid as the server: the spool's files are the server's.
            security_context=container_context(uid=POSTGRES_UID),
            # One 16 MiB segment in memory at a time, compressed; base backups stream from disk.
            resources=raw_resources(Sizing(cpu_request_m=10, cpu_limit_m=500, memory_request_mib=48,
                                           memory_limit_mib=128)),
            volume_mounts=[*mounts, *access.volume_mounts],
            # Ready once it listens (it listens before it first reaches the target, and keeps
            # retrying a target that is down: the server stays in its Service); alive while the
            # metrics answer, so a hung agent is restarted.
            readiness_probe=k8s.Probe(tcp_socket=k8s.TcpSocketAction(port=int_or_string("backup-metrics")),
                                      period_seconds=10, timeout_seconds=5),
            liveness_probe=k8s.Probe(
                http_get=k8s.HttpGetAction(path="/metrics", port=int_or_string("backup-metrics")),
                initial_delay_seconds=30, period_seconds=30, timeout_seconds=10, failure_threshold=4),
        )
        # Scraped through a Service of its own: the pod's prometheus.io annotations name the
        # exporter's port, and a pod annotates one (the Prometheus example configuration's
        # kubernetes-pods and kubernetes-service-endpoints jobs read these annotations).
        self.backup_metrics = k8s.KubeService(
            self, "BackupMetrics",
            metadata=k8s.ObjectMeta(name="postgres-backup-metrics", namespace=ns, annotations={
                "prometheus.io/scrape": "true", "prometheus.io/port": str(p.backup_metrics_port),
                "prometheus.io/path": "/metrics"}),
            spec=k8s.ServiceSpec(selector=self.selector, ports=[k8s.ServicePort(
                name="backup-metrics", port=p.backup_metrics_port, target_port=int_or_string("backup-metrics"))]),
        )
        set_component(self.backup_metrics, "backup")
        self.backup_metrics.add_dependency(self.postgres_namespace.resource)
        volume = k8s.Volume(name="backup-scripts", config_map=k8s.ConfigMapVolumeSource(
            name="postgres-backup-scripts", default_mode=0o444))
        if p.restore_to:
            # The same access as the agent's; the server's size (see restore_container).
            self.restore = restore_container(
                component="postgres", to=p.restore_to, args=["--pgdata", PGDATA, "--wal-dir", RESTORE_WAL_DIR],
                env=access.env, mounts=[*mounts, *access.volume_mounts], scripts_dir=postgres_backup.SCRIPTS_DIR,
                uid=POSTGRES_UID, sizing=p.sizing, profile=self.profile, restore_bucket=self._restore_bucket,
                own_endpoint=bool(p.backup_endpoint))
        return [base_backup, agent], [volume, *access.volumes], access.pod_labels

    def client_pod_labels(self) -> dict[str, str]:
        """Labels a client's pods must carry (their namespace must be declared with :meth:`add_client`)."""
        return {CLIENT_POD_LABEL: "true"}

    def add_client(self, scope: ObjectChart, client: PostgresClient) -> None:
        """Give ``client`` a login role with CREATEDB and network access.

        Adds to this chart a NetworkPolicy admitting the client's labelled pods from its
        namespace, and a provisioning Job creating or updating the role from the client's
        Secret; adds to ``scope`` (the client's chart) the Role letting that Job read
        exactly that Secret.
        """
        if any(c.role == client.role for c in self.clients):
            raise ConfigError("postgres.clients", client.role, "role declared twice", "declare each client once")
        self.clients.append(client)
        ns = self.NAMESPACE
        name = f"provision-{client.role}".replace("_", "-")
        pod_selector = {**client.pod_selector, CLIENT_POD_LABEL: "true"}
        policy = k8s.KubeNetworkPolicy(
            self, f"AllowClient{client.role.title().replace('_', '')}",
            metadata=k8s.ObjectMeta(name=f"postgres-client-{client.role}".replace("_", "-"), namespace=ns),
            spec=k8s.NetworkPolicySpec(
                pod_selector=k8s.LabelSelector(match_labels=self.selector),
                policy_types=["Ingress"],
                ingress=[k8s.NetworkPolicyIngressRule(
                    from_=[k8s.NetworkPolicyPeer(
                        namespace_selector=k8s.LabelSelector(match_labels={"kubernetes.io/metadata.name": client.namespace}),
                        pod_selector=k8s.LabelSelector(match_labels=pod_selector),
                    )],
                    ports=ports(self.port),
                )],
            ),
        )
        set_component(policy, "network-policy")
        policy.add_dependency(self.postgres_namespace.resource)

        # The Job's ServiceAccount may get this one Secret in the client's namespace.
        reader_role = k8s.KubeRole(
            scope, f"PostgresSecretReader{client.role.title().replace('_', '')}",
            metadata=k8s.ObjectMeta(name=f"postgres-{name}", namespace=client.namespace,
                                    labels={"app.kubernetes.io/component": "postgres-client"}),
            rules=[k8s.PolicyRule(api_groups=[""], resources=["secrets"], resource_names=[client.secret], verbs=["get"])],
        )
        k8s.KubeRoleBinding(
            scope, f"PostgresSecretReaderBinding{client.role.title().replace('_', '')}",
            metadata=k8s.ObjectMeta(name=f"postgres-{name}", namespace=client.namespace,
                                    labels={"app.kubernetes.io/component": "postgres-client"}),
            role_ref=k8s.RoleRef(api_group="rbac.authorization.k8s.io", kind="Role", name=f"postgres-{name}"),
            subjects=[k8s.Subject(kind="ServiceAccount", name=name, namespace=ns)],
        ).add_dependency(reader_role)

        meta_labels = {"app.kubernetes.io/component": "provisioner"}
        account = k8s.KubeServiceAccount(
            self, f"{name}-account", metadata=k8s.ObjectMeta(name=name, namespace=ns, labels=meta_labels),
            automount_service_account_token=False,
        )
        digest = hashlib.sha256((ROLE_SQL + _FETCH_PASSWORD + repr(client) + versions.POSTGRES_IMAGE).encode()).hexdigest()[:8]
        job_name = f"{name}-{digest}"
        fetch = k8s.Container(
            name="fetch-password",
            image=versions.PYTHON_IMAGE,
            image_pull_policy="IfNotPresent",
            command=["python3", "-c", _FETCH_PASSWORD],
            env=[
                k8s.EnvVar(name="SOURCE_NAMESPACE", value=client.namespace),
                k8s.EnvVar(name="SOURCE_OBJECT", value=client.secret),
                k8s.EnvVar(name="SOURCE_FIELD", value=client.password_key),
            ],
            security_context=container_context(uid=PROVISIONER_UID),
            resources=raw_resources(Sizing(cpu_request_m=10, cpu_limit_m=200, memory_request_mib=32, memory_limit_mib=64)),
            volume_mounts=[k8s.VolumeMount(name="client", mount_path="/run/client")],
        )
        # psql decodes nothing: the Secret's base64 value is decoded by the shell's base64.
        provision = k8s.Container(
            name="provision",
            image=versions.POSTGRES_IMAGE,
            image_pull_policy="IfNotPresent",
            command=["sh", "-c", "\n".join([
                "set -eu",
                'password="$(base64 -d /run/client/password)"',
                f'until pg_isready -h {self.host} -p {self.port} -q; do sleep 2; done',
                f'printf "%s" "$SQL" | psql -X -v ON_ERROR_STOP=1 -h {self.host} -p {self.port} -U postgres -d postgres '
                f'-v role={client.role} -v password="$password"',
                f'echo "role {client.role} ready"',
            ])],
            env=[
                secret_env("PGPASSWORD", self.SUPERUSER_SECRET, "password"),
                k8s.EnvVar(name="SQL", value=ROLE_SQL),
            ],
            security_context=container_context(uid=POSTGRES_UID),
            resources=raw_resources(Sizing(cpu_request_m=10, cpu_limit_m=200, memory_request_mib=32, memory_limit_mib=64)),
            volume_mounts=[k8s.VolumeMount(name="client", mount_path="/run/client", read_only=True)],
        )
        job = k8s.KubeJob(
            self, f"{name}-job",
            metadata=k8s.ObjectMeta(name=job_name, namespace=ns, labels=meta_labels, annotations={
                "checkov.io/skip1": "CKV_K8S_38=the job reads the client's password Secret through the API with this token",
                "checkov.io/skip2": "CKV_K8S_35=PGPASSWORD is read by psql; the value comes from a secretKeyRef",
                "checkov.io/skip3": "CKV_K8S_40=psql runs as the official postgres image's uid 999",
            }),
            spec=k8s.JobSpec(
                backoff_limit=10,
                active_deadline_seconds=1800,
                ttl_seconds_after_finished=24 * 3600,
                template=k8s.PodTemplateSpec(
                    metadata=k8s.ObjectMeta(labels={**self.label_set.chart_labels(), **meta_labels, "final-problem.io/job": job_name}),
                    spec=k8s.PodSpec(
                        restart_policy="Never",
                        service_account_name=name,
                        automount_service_account_token=True,
                        enable_service_links=False,
                        security_context=pod_context(uid=PROVISIONER_UID),
                        init_containers=[fetch],
                        containers=[provision],
                        volumes=[k8s.Volume(name="client", empty_dir=k8s.EmptyDirVolumeSource(
                            medium="Memory", size_limit=quantity("1Mi")))],
                    ),
                ),
            ),
        )
        job_selector = k8s.LabelSelector(match_labels={"final-problem.io/job": job_name})
        egress = k8s.KubeNetworkPolicy(
            self, f"{name}-egress",
            metadata=k8s.ObjectMeta(name=f"{job_name}-egress", namespace=ns, labels={"app.kubernetes.io/component": "network-policy"}),
            spec=k8s.NetworkPolicySpec(
                pod_selector=job_selector,
                policy_types=["Egress"],
                egress=[
                    k8s.NetworkPolicyEgressRule(ports=ports(*API_PORTS)),
                    k8s.NetworkPolicyEgressRule(
                        to=[k8s.NetworkPolicyPeer(pod_selector=k8s.LabelSelector(match_labels=self.selector))],
                        ports=ports(self.port)),
                ],
            ),
        )
        ingress = k8s.KubeNetworkPolicy(
            self, f"{name}-ingress",
            metadata=k8s.ObjectMeta(name=f"postgres-from-{name}", namespace=ns, labels={"app.kubernetes.io/component": "network-policy"}),
            spec=k8s.NetworkPolicySpec(
                pod_selector=k8s.LabelSelector(match_labels=self.selector),
                policy_types=["Ingress"],
                ingress=[k8s.NetworkPolicyIngressRule(
                    from_=[k8s.NetworkPolicyPeer(pod_selector=job_selector)], ports=ports(self.port))],
            ),
        )
        for obj in (account, job, egress, ingress):
            obj.add_dependency(self.postgres_namespace.resource)
        job.add_dependency(account, self.stateful_set)
