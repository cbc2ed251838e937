"""Redis: a replicated primary with Sentinel failover, authentication and persistence.

Creates, in the ``redis`` namespace (Pod Security "restricted", default-deny):

- Secret ``redis-auth`` generated in the cluster (keys ``admin-password``,
  ``app-password``, ``sentinel-password``, ``metrics-password``); no value is in any
  manifest;
- StatefulSet ``redis``: one primary and ``replicas`` replicas, AOF persistence
  (``appendfsync``, default ``everysec``) on retained volumes, a PDB, hostname anti-affinity and zone
  spread; a metrics sidecar serves ``INFO`` as Prometheus text on 9121;
- StatefulSet ``redis-sentinel``: ``sentinels`` Sentinels (quorum a majority), one per
  node, with a PDB; each keeps its state (its rewritten ``sentinel.conf``: primary,
  epochs, peers) on a retained volume, so a power cut does not make it forget the
  latest failover;
- headless Services for stable member names, Service ``redis-sentinel`` for clients;
- NetworkPolicies: Redis and Sentinel ports from each other and from namespaces labelled
  ``final-problem.io/redis-client: "true"``; metrics from namespaces labelled
  ``final-problem.io/monitoring: "true"``;
- with ``backups`` on (the default): a ``backup`` sidecar in each member's pod
  (:mod:`final_problem.constructs.snapshot_backup`) that, while its member is a replica and
  its turn is due, takes an RDB snapshot (``BGSAVE``) and uploads it with its SHA-256 and a
  listing (:mod:`final_problem.renderers.snapshot_agent`). The target is the profile's (EKS:
  the stack's bucket through EKS Pod Identity; Pis: the in-cluster S3 server), the members
  running as service account :data:`BACKUP_SERVICE_ACCOUNT` (the mesh's, with Consul), or the
  one ``redis.backup_endpoint`` names, key pair from Secret ``redis-backup-target``. Writes
  after the newest snapshot are not in it: the append-only file and the replicas cover a lost
  member, the snapshots a lost set.

ACL users: ``admin`` (replication, Sentinel, operators), ``app`` (everything but
``@dangerous``), ``metrics`` (PING, INFO); the ``default`` user is off.
Sources: Redis docs, "High availability with Redis Sentinel", "ACL", "Redis persistence";
official image docs, hub.docker.com/_/redis.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from constructs import Construct

from final_problem import sizes, versions
from final_problem.clients import redis_exporter
from final_problem.components import PlatformChart, register
from final_problem.config import Settings
from final_problem.constructs.labels import set_component
from final_problem.constructs.namespace import (
    MONITORING_NAMESPACE_LABEL, RestrictedNamespace, namespace_peer, pod_peer, ports,
)
from final_problem.constructs.mesh import SERVICES, MeshWorkload
from final_problem.constructs.quorum import ClaimSpec, QuorumStatefulSet
from final_problem.constructs.generated_secrets import GeneratedSecrets, SecretSpec
from final_problem.constructs.restore import check_restore_to, restore_to_setting, snapshot_restore_container
from final_problem.constructs.snapshot_backup import SidecarSnapshotSettings, SnapshotBackup, snapshots_on
from final_problem.constructs.security import Sizing, container_context, raw_resources
from final_problem.imports import int_or_string, k8s, quantity
from final_problem.profiles import Profile
from final_problem.changes import rolling, volume_size
from final_problem.scaling import Exec, Refused, Scale, Step, WaitReady, membership, membership_change
from final_problem.settings import UNSET, per_profile, setting
from final_problem.renderers.redis import APPENDFSYNC_POLICIES, MAXMEMORY_POLICIES, RedisConfigOptions, config_files

#: uid and gid of the ``redis`` user in the official image (its Dockerfile: groupadd -r -g 999).
REDIS_UID = 999
CLIENT_NAMESPACE_LABEL = {"final-problem.io/redis-client": "true"}
METRICS_NAMESPACE_LABEL = MONITORING_NAMESPACE_LABEL
METRICS_PORT = 9121
CONFIG_DIR = "/opt/redis/config"
RUNTIME_DIR = "/run/redis"
#: Data directory of a member and state directory of a Sentinel (the official image's
#: working directory, owned by its redis user), each a retained volume.
DATA_DIR = "/data"
#: A Sentinel's state is a small configuration file; 1 GiB is the smallest whole size.
SENTINEL_STORAGE_GIB = 1
#: Startup probes give a member or Sentinel that waits for its peers (after a power cut)
#: this long before liveness applies: 360 x 10 s = 1 h. Waiting is the safe behaviour;
#: a restart would only start the wait again, with back-off.
STARTUP_PERIOD_S = 10
STARTUP_FAILURES = 360
#: Seconds a Redis member's SIGTERM shutdown may take after its preStop hook: Redis first
#: waits up to ``shutdown-timeout`` (10 s, redis.conf) for lagging replicas, then writes the
#: final RDB snapshot, as save points are set (redis.conf, "SHUTDOWN"; docs "Redis
#: persistence"). 30 s leave 20 s for that snapshot, about a full ``maxmemory`` (1 GiB on
#: EKS) at the 125 MB/s an EBS gp3 volume gives at least.
SHUTDOWN_S = 30
EXPORTER_SCRIPT = Path(redis_exporter.__file__)


#: The members' service account while they back up: the mesh's when Consul is deployed (a pod
#: has one), so the same name either way; the EKS stack associates it with the bucket's role
#: (final_problem/stacks/backups.py).
BACKUP_SERVICE_ACCOUNT = SERVICES["redis"].name


@dataclass(frozen=True, kw_only=True)
class RedisProps(SidecarSnapshotSettings):
    """What a user can choose about Redis (section ``redis``); defaults per profile."""

    replicas: int = setting(
        2, minimum=2, maximum=6,
        doc="Replicas of the primary; even, so data pods (primary + replicas) are an odd set of at least 3. "
            "After a failover one replica is left, so `WAIT 1` still succeeds. A write acknowledged with `WAIT 1` "
            "survives the primary's crash and its planned stops (a rollout, a node drain: its preStop hook pauses "
            "writes, lets the replicas catch up and has the Sentinels promote one, about 1.5 s without writes). "
            "A live change: `final-problem scale redis.replicas=N --apply`, then deploy (members added one at a time "
            "and synchronised; removed ones made unpromotable, stopped, then forgotten by each Sentinel in turn).",
        change=membership_change(
            "redis", "replicas",
            "a new member must be synchronised before it counts; a removed one must never be promoted, and every "
            "Sentinel keeps listing it until reset (Redis docs, Sentinel: removing unreachable replicas)"),
    )
    sentinels: int = setting(
        3, choices=(3, 5, 7),
        doc="Sentinels; odd, at least 3, the minimum for a robust deployment (Redis docs, \"Sentinel\"). A live "
            "change: `final-problem scale redis.sentinels=N --apply`, then deploy (added one at a time, each known to "
            "all before the next; after a removal each Sentinel reset in turn; the quorum set on each).",
        change=membership_change(
            "redis", "sentinels",
            "Sentinels remember every peer they have seen: added ones must be known to all before the next, removed "
            "ones still count toward the majority that authorizes a failover until every Sentinel is reset, and the "
            "quorum follows the count (Redis docs, Sentinel: adding or removing Sentinels)"),
    )
    quorum: int | None = setting(
        UNSET, minimum=2, default_doc="a majority of redis.sentinels",
        doc="Sentinels that must agree the primary is down; a majority. Unset, it follows redis.sentinels "
            "(2 of 3, 3 of 5, 4 of 7), and a change of redis.sentinels sets it on every Sentinel.",
        change=rolling("the Sentinels' configuration: they restart one at a time"),
    )
    down_after_ms: int = setting(
        5000, minimum=1000, maximum=600_000,
        doc="Silence before a Sentinel calls the primary down. The shipped sentinel.conf uses 30000; 5 s cuts "
            "the write outage of a failover and stays well above Sentinel's 1 s ping period.",
        change=rolling("the Sentinels' configuration: they restart one at a time"),
    )
    failover_timeout_ms: int = setting(
        60_000, minimum=2000, maximum=3_600_000,
        doc="Sentinel failover timeout; at least 2 x down_after_ms (sentinel.conf ships 180000; a failover of "
            "a small dataset completes in seconds, a stuck one is retried after twice this).",
        change=rolling("the Sentinels' configuration: they restart one at a time"),
    )
    memory_mib: int = setting(
        sizes.default("redis"), minimum=64, maximum=262_144,
        doc="Memory request and limit of each Redis container (no overcommit).",
        change=rolling("the members' memory limit: they restart one at a time; a stopping primary hands over first (preStop)"),
    )
    maxmemory_mib: int = setting(
        sizes.default("redis_maxmemory_mib"), minimum=16, maximum=131_072,
        doc="Redis `maxmemory`; at most half of memory_mib: a fork for AOF rewrite or replica sync may copy "
            "every page (Redis docs, \"Redis persistence\").",
        change=rolling("redis.conf: members restart one at a time; a stopping primary hands over first (preStop)"),
    )
    maxmemory_policy: str = setting(
        "volatile-lru", choices=MAXMEMORY_POLICIES,
        doc="Eviction policy: keys with a TTL (cache) are evicted, state without one never is (writes fail "
            "instead once memory is full).",
        change=rolling("redis.conf: members restart one at a time; a stopping primary hands over first (preStop)"),
    )
    appendfsync: str = setting(
        "everysec", choices=APPENDFSYNC_POLICIES,
        doc="When a member fsyncs its append-only file (Redis docs, \"Redis persistence\"). `everysec`: a power "
            "cut of every member loses the writes of up to about the last second; `always`: none, but each "
            "write waits for an fsync, about 20 times fewer `WAIT 1` writes per second for one client "
            "(README, Redis, \"Power cut\"); `no`: up to the kernel's writeback delay, 30 s. A change is a "
            "rolling restart of the Redis pods.",
        change=rolling("redis.conf: members restart one at a time; a stopping primary hands over first (preStop)"),
    )
    storage_gib: int = setting(
        per_profile(eks=8, pi=2), minimum=1, maximum=16_384,
        doc="Each member's volume; at least 3 x maxmemory.",
        change=volume_size("each member's volume"),
    )
    bootstrap_wait_s: int = setting(
        30, minimum=0, maximum=600,
        doc="Seconds `redis-0`, when its data directory is empty, waits for a Sentinel or a member to answer "
            "before it starts a new, empty set as its primary. The Sentinels start in parallel and answer from "
            "their saved state within seconds, so an empty `redis-0` (a lost volume) follows them instead.",
        change=rolling("the members' start script"),
    )
    restore_to: str = restore_to_setting(
        "redis", chosen="the newest snapshot taken before it (`latest`: the newest); only `redis-0` restores, and "
                        "starts as the primary when no member or Sentinel answers; the others start empty and "
                        "synchronise from it")

    @property
    def sentinel_quorum(self) -> int:
        """The quorum the Sentinels use: :attr:`quorum`, or a majority of :attr:`sentinels`."""
        return self.quorum if self.quorum is not None else self.sentinels // 2 + 1

    @property
    def redis_sizing(self) -> Sizing:
        return sizes.sizing("redis", self.profile, self.memory_mib)

    @property
    def sentinel_sizing(self) -> Sizing:
        return sizes.sizing("sentinel", self.profile)

    @property
    def metrics_sizing(self) -> Sizing:
        if self.profile.small:
            return Sizing(cpu_request_m=10, cpu_limit_m=50, memory_request_mib=24, memory_limit_mib=48)
        return Sizing(cpu_request_m=10, cpu_limit_m=100, memory_request_mib=32, memory_limit_mib=64)

    def check(self) -> None:
        self.check_backup()
        self.check_backup_metrics_port({"the Redis port": RedisChart.PORT, "the metrics exporter": METRICS_PORT})
        check_restore_to(self)
        if self.replicas % 2:
            raise self.error(
                "replicas",
                "must be even: 1 primary + replicas must be an odd set for the quorum StatefulSet",
                # One fewer, not one more: the set must still fit one member per node.
                f"set redis.replicas={max(2, self.replicas - 1)}",
            )
        majority = self.sentinels // 2 + 1
        if not majority <= self.sentinel_quorum <= self.sentinels:
            raise self.error(
                "quorum",
                f"must be a majority of the {self.sentinels} Sentinels ({majority} to {self.sentinels}), "
                "so a minority partition cannot declare the primary down",
                f"set redis.quorum={majority}",
            )
        if self.failover_timeout_ms < 2 * self.down_after_ms:
            raise self.error(
                "failover_timeout_ms",
                f"must be at least twice down_after_ms ({self.down_after_ms}), or a failover can time "
                "out before the replicas are reconfigured",
                f"set redis.failover_timeout_ms={min(3_600_000, max(60_000, 2 * self.down_after_ms))}",
            )
        if 2 * self.maxmemory_mib > self.memory_mib:
            raise self.error(
                "maxmemory_mib",
                f"must be at most half of redis.memory_mib ({self.memory_mib}): "
                "a fork for persistence or replication can double the memory in use",
                f"set redis.maxmemory_mib={self.memory_mib // 2}, or redis.memory_mib={min(262_144, 2 * self.maxmemory_mib)}",
            )
        needed = math.ceil(3 * self.maxmemory_mib / 1024)
        if self.storage_gib < needed:
            raise self.error(
                "storage_gib",
                f"must hold three times maxmemory ({self.maxmemory_mib} MiB): the AOF grows to twice the "
                "data before it is rewritten, and the rewrite and an RDB snapshot sit beside it",
                f"set redis.storage_gib={needed}",
            )

    def config_options(self) -> RedisConfigOptions:
        return RedisConfigOptions(
            replicas=self.replicas,
            maxmemory_mib=self.maxmemory_mib,
            maxmemory_policy=self.maxmemory_policy,
            appendfsync=self.appendfsync,
            quorum=self.sentinel_quorum,
            down_after_ms=self.down_after_ms,
            failover_timeout_ms=self.failover_timeout_ms,
            bootstrap_wait_s=self.bootstrap_wait_s,
        )


def _secret_env(name: str, key: str) -> k8s.EnvVar:
    return k8s.EnvVar(
        name=name,
        value_from=k8s.EnvVarSource(secret_key_ref=k8s.SecretKeySelector(name=RedisChart.AUTH_SECRET, key=key)),
    )


def _exec_probe(check: str, *, period: int, failures: int) -> k8s.Probe:
    return k8s.Probe(
        exec=k8s.ExecAction(command=["sh", f"{CONFIG_DIR}/probe.sh", check]),
        period_seconds=period,
        timeout_seconds=5,
        failure_threshold=failures,
    )




@register
class RedisChart(PlatformChart):
    """Redis primary and replicas with Sentinel failover, in the ``redis`` namespace."""

    component = "redis"
    construct_id = "Redis"
    requires = ("base",)
    version = versions.REDIS_VERSION
    # Supported upgrade paths of the images its pods run (final_problem/versions.py).
    upgrade_paths = versions.upgrade_paths(versions.REDIS_IMAGE, versions.CONSUL_DATAPLANE_IMAGE, versions.PYTHON_IMAGE)
    settings_class = RedisProps

    NAMESPACE = "redis"
    #: Secret generated in the cluster; keys ``admin-password``, ``app-password``,
    #: ``sentinel-password``, ``metrics-password``.
    AUTH_SECRET = "redis-auth"
    SECRET_KEYS = ("admin-password", "app-password", "sentinel-password", "metrics-password")
    PORT = 6379
    SENTINEL_PORT = 26379

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
        p: RedisProps = self.props
        options = p.config_options()
        ns = self.NAMESPACE
        #: Sentinel's name for the primary (redis-py ``master_for``/``slave_for``).
        self.master_name = options.master_name
        #: Service clients give redis-py's Sentinel (port :attr:`SENTINEL_PORT`).
        self.sentinel_service = "redis-sentinel"
        self.sentinel_service_dns = f"{self.sentinel_service}.{ns}.svc"
        self.client_namespace_label = dict(CLIENT_NAMESPACE_LABEL)

        self.redis_namespace = RestrictedNamespace(self, "Namespace", name=ns, pss_version=f"v{settings.kubernetes_version}")
        self.secrets = GeneratedSecrets(
            self, "Secrets", namespace=ns, labels=self.label_set,
            secrets=[SecretSpec(name=self.AUTH_SECRET, keys=self.SECRET_KEYS)],
        )
        self.secrets.add_dependency(self.redis_namespace)

        files = {**config_files(options), "redis_exporter.py": EXPORTER_SCRIPT.read_text()}
        digest = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16]
        self.config_map = k8s.KubeConfigMap(
            self, "Config", metadata=k8s.ObjectMeta(name="redis-config", namespace=ns), data=files,
        )
        set_component(self.config_map, "config")

        redis_selector = self.label_set.selector("server")
        sentinel_selector = self.label_set.selector("sentinel")
        headless, sentinel_headless = "redis-headless", "redis-sentinel-headless"
        self.headless_service = self._service("Headless", headless, redis_selector, self.PORT, "server", headless=True)
        self.sentinel_headless_service = self._service(
            "SentinelHeadless", sentinel_headless, sentinel_selector, self.SENTINEL_PORT, "sentinel", headless=True)
        self.sentinel_client_service = self._service(
            "SentinelService", self.sentinel_service, sentinel_selector, self.SENTINEL_PORT, "sentinel", headless=False)

        members = 1 + p.replicas
        member_dns = [f"redis-{i}.{headless}.{ns}.svc" for i in range(members)]
        sentinel_dns = [f"redis-sentinel-{i}.{sentinel_headless}.{ns}.svc" for i in range(p.sentinels)]
        common_env = [
            k8s.EnvVar(name="POD_NAME", value_from=k8s.EnvVarSource(field_ref=k8s.ObjectFieldSelector(field_path="metadata.name"))),
            k8s.EnvVar(name="REDIS_CONFIG_DIR", value=CONFIG_DIR),
            k8s.EnvVar(name="REDIS_PORT", value=str(self.PORT)),
            k8s.EnvVar(name="SENTINEL_PORT", value=str(self.SENTINEL_PORT)),
            k8s.EnvVar(name="REDIS_MASTER_NAME", value=self.master_name),
            k8s.EnvVar(name="REDIS_MEMBERS", value=" ".join(f"{d}:{self.PORT}" for d in member_dns)),
            k8s.EnvVar(name="REDIS_SENTINELS", value=" ".join(f"{d}:{self.SENTINEL_PORT}" for d in sentinel_dns)),
        ]
        config_mount = k8s.VolumeMount(name="config", mount_path=CONFIG_DIR, read_only=True)
        runtime_mount = k8s.VolumeMount(name="runtime", mount_path=RUNTIME_DIR)
        config_volume = k8s.Volume(name="config", config_map=k8s.ConfigMapVolumeSource(name="redis-config"))
        # Memory-backed: a member's runtime configuration holds passwords, which never touch
        # its disk. (A Sentinel's configuration is its state and lives on its volume.)
        runtime_volume = k8s.Volume(
            name="runtime", empty_dir=k8s.EmptyDirVolumeSource(medium="Memory", size_limit=quantity("8Mi")))
        # Snapshots to the backup target: a sidecar in each member's pod (the data volume, for
        # the dump; the admin user, for INFO, BGSAVE and the primary's offset).
        self.backup = None
        if snapshots_on(settings, p):
            self.backup = SnapshotBackup(
                self, "Backup", name="redis", namespace=ns, component="redis", settings=p, profile=profile,
                service_account=BACKUP_SERVICE_ACCOUNT, create_service_account="consul" not in settings.components,
                selector=self.label_set.selector("server"), uid=REDIS_UID,
                args=["--data-dir", DATA_DIR, "--port", str(self.PORT)],
                mounts=[k8s.VolumeMount(name="data", mount_path=DATA_DIR)], alive_path=DATA_DIR,
                env=[_secret_env("REDIS_ADMIN_PASSWORD", "admin-password")], restore=bool(p.restore_to),
            )
            self.backup.add_dependency(self.redis_namespace)
            digest = hashlib.sha256((digest + self.backup.config_text).encode()).hexdigest()[:16]
        check_restore_to(p, backups=settings.backups)
        #: The ``restore`` init container (``redis.restore_to`` set): every member runs it, only
        #: ordinal 0 restores (marked to start as the primary); the others stay empty and sync.
        self.restore = snapshot_restore_container(
            self.backup, component="redis", to=p.restore_to, args=["--data-dir", DATA_DIR],
            data_mounts=[k8s.VolumeMount(name="data", mount_path=DATA_DIR)], uid=REDIS_UID, sizing=p.redis_sizing,
            profile=profile, restore_bucket=settings.restore_bucket, own_endpoint=bool(p.backup_endpoint),
        ) if p.restore_to and self.backup else None
        annotations = {"final-problem.io/config-hash": digest}

        redis_container = k8s.Container(
            name="redis",
            image=versions.REDIS_IMAGE,
            image_pull_policy="IfNotPresent",
            command=["sh", f"{CONFIG_DIR}/start-redis.sh"],
            env=common_env + [
                k8s.EnvVar(name="REDIS_ANNOUNCE_HOST", value=f"$(POD_NAME).{headless}.{ns}.svc"),
                k8s.EnvVar(name="REDIS_RUNTIME_DIR", value=RUNTIME_DIR),
                k8s.EnvVar(name="REDIS_DATA_DIR", value=DATA_DIR),
                # Only an empty redis-0 that hears from nobody starts a new set.
                k8s.EnvVar(name="REDIS_BOOTSTRAP_PRIMARY", value=f"{member_dns[0]}:{self.PORT}"),
                k8s.EnvVar(name="REDIS_BOOTSTRAP_WAIT_S", value=str(p.bootstrap_wait_s)),
                k8s.EnvVar(name="REDIS_HANDOVER_TIMEOUT_S", value=str(options.handover_timeout_s)),
                _secret_env("REDIS_ADMIN_PASSWORD", "admin-password"),
                _secret_env("REDIS_APP_PASSWORD", "app-password"),
                _secret_env("REDIS_SENTINEL_PASSWORD", "sentinel-password"),
                _secret_env("REDIS_METRICS_PASSWORD", "metrics-password"),
            ],
            ports=[k8s.ContainerPort(name="redis", container_port=self.PORT)],
            volume_mounts=[k8s.VolumeMount(name="data", mount_path=DATA_DIR), config_mount, runtime_mount],
            security_context=container_context(uid=REDIS_UID),
            resources=raw_resources(p.redis_sizing),
            # After a power cut the start script may wait for its peers before the server
            # starts; the startup probe holds liveness off meanwhile.
            startup_probe=_exec_probe("redis-live", period=STARTUP_PERIOD_S, failures=STARTUP_FAILURES),
            # Replaying a large AOF takes a while: liveness accepts LOADING, and tolerates
            # 6 misses in a row before a restart.
            liveness_probe=_exec_probe("redis-live", period=10, failures=6),
            readiness_probe=_exec_probe("redis-ready", period=5, failures=2),
            # A primary hands over to a caught-up replica before it stops (prestop-redis.sh):
            # a rollout or a drain then costs a second or two of paused writes instead of
            # down-after-milliseconds plus a failover, and loses no acknowledged write.
            lifecycle=k8s.Lifecycle(
                pre_stop=k8s.LifecycleHandler(exec=k8s.ExecAction(command=["sh", f"{CONFIG_DIR}/prestop-redis.sh"])),
            ),
        )
        metrics_container = k8s.Container(
            name="metrics",
            image=versions.PYTHON_IMAGE,
            image_pull_policy="IfNotPresent",
            command=["python3", f"{CONFIG_DIR}/redis_exporter.py"],
            env=[
                k8s.EnvVar(name="REDIS_PORT", value=str(self.PORT)),
                k8s.EnvVar(name="METRICS_PORT", value=str(METRICS_PORT)),
                k8s.EnvVar(name="PYTHONDONTWRITEBYTECODE", value="1"),
                _secret_env("REDIS_METRICS_PASSWORD", "metrics-password"),
            ],
            ports=[k8s.ContainerPort(name="metrics", container_port=METRICS_PORT)],
            volume_mounts=[config_mount],
            security_context=container_context(uid=REDIS_UID),
            resources=raw_resources(p.metrics_sizing),
            liveness_probe=k8s.Probe(
                http_get=k8s.HttpGetAction(path="/healthz", port=int_or_string(METRICS_PORT)),
                period_seconds=20, failure_threshold=3),
            readiness_probe=k8s.Probe(
                http_get=k8s.HttpGetAction(path="/metrics", port=int_or_string(METRICS_PORT)),
                period_seconds=10, timeout_seconds=5),
        )
        # With Consul deployed, Redis joins the service mesh as service "redis": mesh
        # clients reach it through their sidecars' upstreams, as intentions allow.
        self.mesh = None
        if "consul" in settings.components:
            self.mesh = MeshWorkload(self, "Mesh", service=SERVICES["redis"], namespace=ns, profile=profile,
                                     enabled=tuple(settings.components))
            # Its sidecars log in to Consul and fetch their configuration from it.
            self.calls = ("consul",)
        self.redis = QuorumStatefulSet(
            self, "Server",
            name="redis", namespace=ns, labels=self.label_set, component="server",
            replicas=members, service_name=headless, profile=profile, uid=REDIS_UID,
            containers=[redis_container, metrics_container, *([self.backup.container] if self.backup else [])],
            init_containers=[*([self.restore] if self.restore else []), *(self.mesh.init_containers if self.mesh else ())],
            service_account_name=(SERVICES["redis"].name if self.mesh else
                                  self.backup.service_account if self.backup else None),
            pod_labels={**(self.mesh.pod_labels if self.mesh else {}), **(self.backup.pod_labels if self.backup else {})},
            volumes=[config_volume, runtime_volume, *(self.mesh.volumes if self.mesh else []),
                     *(self.backup.volumes if self.backup else [])],
            claims=[ClaimSpec(name="data", size_gib=p.storage_gib)],
            pod_annotations={
                **annotations,
                "prometheus.io/scrape": "true", "prometheus.io/port": str(METRICS_PORT), "prometheus.io/path": "/metrics",
            },
            # The hook's own bound, then the server's shutdown (the kubelet counts both).
            termination_grace_seconds=options.handover_timeout_s + SHUTDOWN_S,
        )
        sentinel_container = k8s.Container(
            name="sentinel",
            image=versions.REDIS_IMAGE,
            image_pull_policy="IfNotPresent",
            command=["sh", f"{CONFIG_DIR}/start-sentinel.sh"],
            env=common_env + [
                k8s.EnvVar(name="REDIS_ANNOUNCE_HOST", value=f"$(POD_NAME).{sentinel_headless}.{ns}.svc"),
                k8s.EnvVar(name="SENTINEL_QUORUM", value=str(p.sentinel_quorum)),
                k8s.EnvVar(name="REDIS_SENTINEL_DIR", value=DATA_DIR),
                _secret_env("REDIS_ADMIN_PASSWORD", "admin-password"),
                _secret_env("REDIS_SENTINEL_PASSWORD", "sentinel-password"),
            ],
            ports=[k8s.ContainerPort(name="sentinel", container_port=self.SENTINEL_PORT)],
            volume_mounts=[k8s.VolumeMount(name="state", mount_path=DATA_DIR), config_mount],
            security_context=container_context(uid=REDIS_UID),
            resources=raw_resources(p.sentinel_sizing),
            startup_probe=_exec_probe("sentinel-live", period=STARTUP_PERIOD_S, failures=STARTUP_FAILURES),
            liveness_probe=_exec_probe("sentinel-live", period=10, failures=3),
            readiness_probe=_exec_probe("sentinel-ready", period=5, failures=2),
        )
        self.sentinel = QuorumStatefulSet(
            self, "Sentinel",
            name="redis-sentinel", namespace=ns, labels=self.label_set, component="sentinel",
            replicas=p.sentinels, service_name=sentinel_headless, profile=profile, uid=REDIS_UID,
            containers=[sentinel_container], volumes=[config_volume],
            # Sentinel state survives restarts: without it, Sentinels restarted together
            # would forget the latest failover and name a replica as the primary.
            claims=[ClaimSpec(name="state", size_gib=SENTINEL_STORAGE_GIB)],
            pod_annotations=annotations, termination_grace_seconds=10,
        )
        # Passwords arrive as secretKeyRef env: redis-cli (start scripts, probes) takes a
        # password only from REDISCLI_AUTH or its command line, and the start scripts write
        # them into the server's configuration; files would be copied to env anyway.
        for workload in (self.redis, self.sentinel):
            workload.resource.metadata.add_annotation(
                "checkov.io/skip1", "CKV_K8S_35=redis-cli reads the password from REDISCLI_AUTH; values come from secretKeyRef",
            )
            # The official image's files belong to its redis user 999 (non-root, as
            # "restricted" requires); checkov's uid >= 10000 preference would break that.
            workload.resource.metadata.add_annotation(
                "checkov.io/skip2", "CKV_K8S_40=the official redis image runs as its own uid 999",
            )
        if self.mesh:
            self.redis.resource = MeshWorkload.apply(self.redis.resource)
            self.mesh_policy = self.mesh.network_policy(self, "MeshPolicy", pod_selector=redis_selector)
        self._network_policies(redis_selector, sentinel_selector)
        self.put_first(self.redis_namespace)

    def _service(self, id: str, name: str, selector: dict[str, str], port: int, component: str, *, headless: bool) -> k8s.KubeService:
        service = k8s.KubeService(
            self, id,
            metadata=k8s.ObjectMeta(name=name, namespace=self.NAMESPACE),
            spec=k8s.ServiceSpec(
                cluster_ip="None" if headless else None,
                # Members resolve each other while starting, before they are ready.
                publish_not_ready_addresses=True if headless else None,
                selector=selector,
                ports=[k8s.ServicePort(name=component, port=port, target_port=int_or_string(port))],
            ),
        )
        set_component(service, component)
        return service

    def _network_policies(self, redis_selector: dict[str, str], sentinel_selector: dict[str, str]) -> None:
        redis_peers = [pod_peer(redis_selector), pod_peer(sentinel_selector), namespace_peer(CLIENT_NAMESPACE_LABEL)]
        egress = [
            k8s.NetworkPolicyEgressRule(to=[pod_peer(redis_selector)], ports=ports(self.PORT)),
            k8s.NetworkPolicyEgressRule(to=[pod_peer(sentinel_selector)], ports=ports(self.SENTINEL_PORT)),
        ]
        self.server_policy = k8s.KubeNetworkPolicy(
            self, "ServerPolicy",
            metadata=k8s.ObjectMeta(name="redis-server", namespace=self.NAMESPACE),
            spec=k8s.NetworkPolicySpec(
                pod_selector=k8s.LabelSelector(match_labels=redis_selector),
                policy_types=["Ingress", "Egress"],
                ingress=[
                    k8s.NetworkPolicyIngressRule(from_=redis_peers, ports=ports(self.PORT)),
                    k8s.NetworkPolicyIngressRule(from_=[namespace_peer(METRICS_NAMESPACE_LABEL)], ports=ports(METRICS_PORT)),
                ],
                egress=egress,
            ),
        )
        self.sentinel_policy = k8s.KubeNetworkPolicy(
            self, "SentinelPolicy",
            metadata=k8s.ObjectMeta(name="redis-sentinel", namespace=self.NAMESPACE),
            spec=k8s.NetworkPolicySpec(
                pod_selector=k8s.LabelSelector(match_labels=sentinel_selector),
                policy_types=["Ingress", "Egress"],
                ingress=[k8s.NetworkPolicyIngressRule(from_=redis_peers, ports=ports(self.SENTINEL_PORT))],
                egress=egress,
            ),
        )
        for policy in (self.server_policy, self.sentinel_policy):
            set_component(policy, "network-policy")



# --- membership changes (final-problem scale redis.replicas=N / redis.sentinels=N) ---------

_MEMBERSHIP = ("sh", f"{CONFIG_DIR}/membership.sh")


def _only_change(old: RedisProps, new: RedisProps, name: str, *also: str) -> None:
    """Refuse a change of anything but ``name`` (and the values that follow it, ``also``):
    the steps are computed for one membership change, the rest of the set as deployed."""
    before, after = old.recorded_values(), new.recorded_values()
    others = sorted(k for k in after if k not in (name, *also) and before.get(k) != after[k])
    if others:
        raise Refused(f"redis.{name}: refused with {', '.join(f'redis.{k}' for k in others)} changing too; "
                      f"the steps keep the rest of the set as deployed: deploy those first, then scale")


def _sentinel_step(ordinal: int, args: tuple[str, ...], why: str, namespace: str) -> Exec:
    return Exec(f"redis-sentinel-{ordinal}", "sentinel", (*_MEMBERSHIP, *args), why, namespace)


def _agree(replicas: int, sentinels: int, quorum: int | None, namespace: str) -> Exec:
    return _sentinel_step(0, ("agree", str(replicas), str(sentinels), *((str(quorum),) if quorum else ())),
                          f"every Sentinel names one primary, lists exactly {replicas} replicas and {sentinels} Sentinels",
                          namespace)


def _resets(replicas: int, sentinels: int, namespace: str) -> list[Step]:
    # One Sentinel at a time, each having found the others again before the next forgets them
    # (Redis docs, Sentinel: removing a Sentinel, step 2).
    return [_sentinel_step(i, ("reset", str(replicas), str(sentinels)),
                           "SENTINEL RESET: forget the removed members and Sentinels", namespace)
            for i in range(sentinels)]


def _quorums(quorum: int, sentinels: int, namespace: str) -> list[Step]:
    return [_sentinel_step(i, ("quorum", str(quorum)), f"SENTINEL SET quorum {quorum}", namespace)
            for i in range(sentinels)]


@membership("redis", "replicas")
def change_replicas(old: RedisProps, new: RedisProps, namespace: str) -> list[Step]:
    """Replicas added one at a time, each Ready (synchronised, promotable, caught up: the
    readiness probe) before the next; removed ones first made unpromotable (replica-priority
    0, which every Sentinel must have read), the primary among them then handing over to a kept
    replica (the steps of its preStop hook, while every member still runs), then stopped and
    forgotten by each Sentinel in turn."""
    _only_change(old, new, "replicas")
    members_old, members_new = 1 + old.replicas, 1 + new.replicas
    quorum, sentinels = new.sentinel_quorum, new.sentinels
    steps: list[Step] = []
    if members_new > members_old:
        for members in range(members_old + 1, members_new + 1):
            steps += [
                Scale("redis", members, f"add redis-{members - 1}: it starts as a replica of the primary the Sentinels name",
                      namespace),
                WaitReady("redis", members, f"redis-{members - 1} synchronised and caught up (its readiness probe) "
                                            "before anything counts on it", namespace),
            ]
    elif members_new < members_old:
        steps += [Exec(f"redis-{i}", "redis", (*_MEMBERSHIP, "retire"),
                       "replica-priority 0: no Sentinel promotes a member being removed", namespace)
                  for i in range(members_old - 1, members_new - 1, -1)]
        # The primary hands over before anything stops: removed members stop together
        # (podManagementPolicy Parallel), and a hand-over waits for every promotable replica.
        steps += [Exec(f"redis-{i}", "redis", ("sh", f"{CONFIG_DIR}/prestop-redis.sh"),
                       "if it is the primary, hand over to a kept replica (its preStop hook's steps)", namespace)
                  for i in range(members_old - 1, members_new - 1, -1)]
        steps.append(Scale("redis", members_new, "stop the removed members, all replicas now", namespace))
        steps += _resets(new.replicas, sentinels, namespace)
    else:
        return []
    steps.append(_agree(new.replicas, sentinels, quorum, namespace))
    return steps


@membership("redis", "sentinels")
def change_sentinels(old: RedisProps, new: RedisProps, namespace: str) -> list[Step]:
    """Sentinels added one at a time, each known to every other before the next; removed in
    rounds that each leave a majority of the Sentinels the others still count, every kept
    Sentinel reset in turn after each round; the quorum set on every Sentinel, lowered before
    a removal and raised after an addition, so it never exceeds the Sentinels running."""
    _only_change(old, new, "sentinels", "quorum")
    replicas, quorum_old, quorum_new = new.replicas, old.sentinel_quorum, new.sentinel_quorum
    if new.sentinels == old.sentinels:
        return []
    steps: list[Step] = []
    if new.sentinels > old.sentinels:
        for count in range(old.sentinels + 1, new.sentinels + 1):
            added = count - 1
            steps += [
                Scale("redis-sentinel", count, f"add redis-sentinel-{added}", namespace),
                WaitReady("redis-sentinel", count, f"redis-sentinel-{added} monitors the primary", namespace),
                # A volume kept from an earlier scale-down holds old peers: forget them.
                _sentinel_step(added, ("reset", str(replicas), str(count)),
                               "start from the live membership only", namespace),
                _agree(replicas, count, quorum_old, namespace),
            ]
        if quorum_new != quorum_old:
            steps += _quorums(quorum_new, new.sentinels, namespace)
    else:
        if quorum_new < quorum_old:
            steps += _quorums(quorum_new, old.sentinels, namespace)
        count = old.sentinels
        while count > new.sentinels:
            # Until reset, the kept Sentinels still count the removed ones: those kept must be a
            # majority of the count they know, or no failover could be authorized meanwhile.
            count = max(new.sentinels, count // 2 + 1)
            steps.append(Scale("redis-sentinel", count, f"stop redis-sentinel-{count} and above", namespace))
            steps += _resets(replicas, count, namespace)
        if quorum_new > quorum_old:
            steps += _quorums(quorum_new, new.sentinels, namespace)
    steps.append(_agree(replicas, new.sentinels, quorum_new, namespace))
    return steps
