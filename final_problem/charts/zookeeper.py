"""The ZooKeeper chart: a highly available ensemble in the ``zookeeper`` namespace.

Creates:

- the ``zookeeper`` namespace (Pod Security "restricted", default-deny);
- a ConfigMap with ``zoo.cfg`` from :mod:`final_problem.renderers.zookeeper` (the same
  renderer a bare-metal Pi ensemble uses) and a console-only ``logback.xml``;
- a StatefulSet of ``replicas`` members (PDB, one per node, spread over zones, retained
  volumes for snapshots and the transaction log), each writing ``myid`` from its ordinal;
- a headless Service giving each member a stable DNS name, published before it is ready
  (members must find each other to form the quorum that makes them ready), and a client
  Service that routes only to members in a quorum;
- NetworkPolicies: clients from this namespace and from namespaces labelled
  ``final-problem.io/zookeeper-client=true``; quorum and election traffic only between
  members; metrics from namespaces labelled ``final-problem.io/monitoring=true``;
- with ``backups`` on (the default): a ``backup`` sidecar in each member's pod
  (:mod:`final_problem.constructs.snapshot_backup`) that, while its member leads, uploads
  the newest snapshot and the transaction logs after it, each with its SHA-256, and a
  listing (:mod:`final_problem.renderers.snapshot_agent`). The target is the profile's (EKS:
  the stack's bucket through EKS Pod Identity, as service account
  :data:`BACKUP_SERVICE_ACCOUNT`; Pis: the in-cluster S3 server), or the one
  ``zookeeper.backup_endpoint`` names, key pair from Secret ``zookeeper-backup-target``.

Sources: ZooKeeper Administrator's Guide 3.9; Kubernetes tutorial "Running ZooKeeper, A
Distributed System Coordinator"; docker-library ``zookeeper`` image (31z4/zookeeper-docker).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Mapping

from constructs import Construct

from final_problem import sizes, versions
from final_problem.components import PlatformChart, register
from final_problem.config import Settings
from final_problem.constructs.labels import set_component
from final_problem.constructs.namespace import MONITORING_NAMESPACE_LABEL, RestrictedNamespace, ports
from final_problem.constructs.quorum import ClaimSpec, QuorumStatefulSet
from final_problem.constructs.security import Sizing, container_context, raw_resources
from final_problem.constructs.restore import check_restore_to, restore_to_setting, snapshot_restore_container
from final_problem.constructs.snapshot_backup import SidecarSnapshotSettings, SnapshotBackup, snapshots_on
from final_problem.imports import int_or_string, k8s, quantity
from final_problem.profiles import Profile
from final_problem import scaling
from final_problem.changes import nothing, peer_port, rolling, volume_size
from final_problem.settings import per_profile, setting
from final_problem.renderers.zookeeper import (
    RECONFIG_SCRIPT_PATH, START_SCRIPT_PATH, EnsembleConfig, Member, dynamic_cfg, java_command, zoo_cfg,
)

#: The image's user and group (31z4/zookeeper-docker Dockerfile: uid/gid 1000).
ZOOKEEPER_UID = 1000
#: Where the official image unpacks the release (its WORKDIR); lib/ holds every jar,
#: the Prometheus provider included.
ZOOKEEPER_HOME = f"/apache-zookeeper-{versions.ZOOKEEPER_VERSION}-bin"
CONF_DIR = "/conf"
DATA_DIR = "/data"
DATA_LOG_DIR = "/datalog"
#: The ConfigMap's scripts, mounted in CONF_DIR: the member's start (membership from the
#: running ensemble or its volume, this pod's reconfig superuser) and one membership change.
START_SCRIPT = f"{CONF_DIR}/start.sh"
RECONFIG_SCRIPT = f"{CONF_DIR}/reconfig.sh"
#: Where each pod's reconfig superuser password lives: its own /tmp (an emptyDir), never a Secret.
SUPER_PASSWORD_FILE = "/tmp/zookeeper-super-password"
#: Four-letter words the members answer: the probes' ``ruok`` and ``mntr``, ``srvr`` for the
#: mode, ``conf`` for the committed membership a starting member and the reconfig script read.
FOUR_LETTER_WORDS = ("ruok", "srvr", "mntr", "conf")
#: The members' service account while they back up: the EKS stack associates it with the
#: bucket's role (final_problem/stacks/backups.py).
BACKUP_SERVICE_ACCOUNT = "zookeeper-backup"
#: The backup sidecar's scratch space for the copies it uploads (an emptyDir).
BACKUP_SPOOL = "/backup-spool"
#: Label a namespace carries to reach the client port.
CLIENT_NAMESPACE_LABEL = {"final-problem.io/zookeeper-client": "true"}
#: Replica counts allowed: odd (quorum is floor(n/2)+1, so an even ensemble tolerates no
#: more failures than the odd one below it), at least 3 (one failure tolerated), at most 7:
#: every write waits for a majority, so more voters slow writes; scale reads with
#: observers instead (Administrator's Guide, "Clustered (Multi-Server) Setup"; "Observers").
REPLICAS_ALLOWED = (3, 5, 7)
#: Largest heap as a share of the memory limit: the JVM also needs metaspace, thread
#: stacks and Netty's direct buffers outside the heap.
MAX_HEAP_SHARE = 0.75
#: Readiness probe period and initial delay, seconds.
READINESS_PERIOD_S = 5
#: terminationGracePeriodSeconds. ZooKeeper registers no shutdown hook (3.9.4: only the
#: audit logger, off here), so SIGTERM ends the JVM at once, and every acknowledged write is
#: already fsynced to the transaction log (``forceSync`` defaults to yes: Administrator's
#: Guide, "Advanced Configuration"); Kubernetes' default of 30 s only bounds a hung JVM.
TERMINATION_GRACE_S = 30

#: The members' logback.xml, on the classpath ahead of the jars: the console only. The local
#: servers of the tests use it too (final_problem.local.zookeeper).
LOGBACK = """<configuration>
  <!-- Console only: the root filesystem is read-only and the kubelet collects stdout. -->
  <appender name="CONSOLE" class="ch.qos.logback.core.ConsoleAppender">
    <encoder><pattern>%d{ISO8601} [myid:%X{myid}] %-5level [%t] %logger{36} - %msg%n</pattern></encoder>
  </appender>
  <root level="INFO"><appender-ref ref="CONSOLE"/></root>
</configuration>
"""


@dataclass(frozen=True, kw_only=True)
class ZooKeeperProps(SidecarSnapshotSettings):
    """Settings of the ensemble (section ``zookeeper``); defaults per profile."""

    replicas: int = setting(
        3, choices=REPLICAS_ALLOWED,
        doc="Members: quorum is floor(n/2)+1, so an even ensemble tolerates no more failures than the odd one "
            "below it, 1 tolerates none, and more than 7 slows every write (use observers to scale reads).",
        change=scaling.membership_change(
            "zookeeper", "replicas",
            "members are added and removed one at a time with dynamic reconfiguration: a new member starts as a "
            "non-voting follower of the running ensemble, then `reconfig -add` makes it a voter; a member leaves by "
            "`reconfig -remove` before its pod stops, so a quorum holds at every step (a deploy alone would only "
            "start or stop pods)"),
    )
    memory_mib: int = setting(
        sizes.default("zookeeper"), minimum=256, maximum=65_536,
        doc="Memory request and limit of each member (the heap is fixed, so the pod uses it all).",
        change=rolling("the pod's memory limit: members restart one at a time, the highest ordinal first, a quorum kept"),
    )
    heap_mib: int | None = setting(
        default_doc="half of memory_mib", minimum=64, maximum=49_152,
        doc="JVM heap (-Xms = -Xmx), below 75% of memory_mib: the JVM needs metaspace, thread stacks and "
            "direct buffers outside the heap.",
        change=rolling("the JVM's heap: members restart one at a time, the highest ordinal first, a quorum kept"),
    )
    storage_gib: int = setting(
        per_profile(eks=10, pi=2), minimum=1, maximum=16_384,
        doc="Each of the member's two volumes (snapshots, transaction log).",
        change=volume_size("each member's two volumes"),
    )
    client_port: int = setting(
        2181, minimum=1024, maximum=65_535, doc="Client port.",
        change=rolling("members and the client Service move to the new port; clients must use it"),
    )
    quorum_port: int = setting(
        2888, minimum=1024, maximum=65_535, doc="Port followers connect to the leader on.",
        change=peer_port("followers reach the leader on it"),
    )
    election_port: int = setting(
        3888, minimum=1024, maximum=65_535, doc="Leader election port.",
        change=peer_port("members elect the leader on it"),
    )
    metrics_port: int = setting(
        7000, minimum=1024, maximum=65_535, doc="Prometheus metrics port.",
        change=rolling("the metrics listener moves"),
    )
    tick_time_ms: int = setting(
        2000, minimum=100, maximum=60_000, doc="ZooKeeper's basic time unit.",
        change=rolling("zoo.cfg changes: members restart one at a time, a quorum kept"),
    )
    init_limit: int = setting(
        10, minimum=1, maximum=100, doc="Ticks a follower may take to connect and sync.",
        change=rolling("zoo.cfg changes: members restart one at a time, a quorum kept"),
    )
    sync_limit: int = setting(
        5, minimum=1, maximum=100, doc="Ticks a follower may lag; at most init_limit.",
        change=rolling("zoo.cfg changes: members restart one at a time, a quorum kept"),
    )
    hosts: tuple[str, ...] = setting(
        (), example=("pi1", "pi2", "pi3"),
        doc="Bare-metal member hosts (Raspberry Pis without Kubernetes), member 1 first, one per replica; the "
            "client connects to these when set.",
        change=nothing("bare-metal members only: the Kubernetes ensemble does not read it"),
    )
    restore_to: str = restore_to_setting(
        "zookeeper", chosen="the newest snapshot taken before it (`latest`: the newest), with its transaction "
                            "logs; every member with empty volumes restores the same one")

    @property
    def sizing(self) -> Sizing:
        return sizes.sizing("zookeeper", self.profile, self.memory_mib)

    @property
    def effective_heap_mib(self) -> int:
        return self.heap_mib if self.heap_mib is not None else self.memory_mib // 2

    def check(self) -> None:
        self.check_backup()
        check_restore_to(self)
        self.check_jvm_heap("heap_mib", "memory_mib", max_share=MAX_HEAP_SHARE)
        self.check_distinct_ports("client_port", "quorum_port", "election_port", "metrics_port")
        self.check_backup_metrics_port({f"zookeeper.{name}": getattr(self, name)
                                        for name in ("client_port", "quorum_port", "election_port", "metrics_port")})
        if self.sync_limit > self.init_limit:
            raise self.error(
                "sync_limit",
                f"exceeds zookeeper.init_limit ({self.init_limit}): the initial sync transfers a snapshot and "
                "needs at least as long as staying in sync",
                f"set zookeeper.sync_limit={self.init_limit}",
            )
        if self.hosts and len(self.hosts) != self.replicas:
            hosts = list(self.hosts[: self.replicas])
            hosts += [f"host{i}" for i in range(len(hosts) + 1, self.replicas + 1)]
            raise self.error(
                "hosts", f"{len(self.hosts)} hosts for zookeeper.replicas={self.replicas}",
                f"list exactly one host per replica, e.g. set zookeeper.hosts={','.join(hosts)}",
                value=",".join(self.hosts),
            )
        # The renderer checks the same way for bare metal.
        self.ensemble(hosts=self.hosts or tuple(f"member-{i}" for i in range(self.replicas)))

    def ensemble(self, *, hosts: tuple[str, ...]) -> EnsembleConfig:
        """The rendered configuration of an ensemble on ``hosts`` (member 1 first)."""
        members = tuple(
            Member(myid=i, host=h, client_port=self.client_port, quorum_port=self.quorum_port, election_port=self.election_port)
            for i, h in enumerate(hosts, start=1)
        )
        return EnsembleConfig(
            members=members, data_dir=DATA_DIR, data_log_dir=DATA_LOG_DIR,
            tick_time_ms=self.tick_time_ms, init_limit=self.init_limit, sync_limit=self.sync_limit,
            metrics_port=self.metrics_port, four_letter_words=FOUR_LETTER_WORDS,
            # Membership changes with `reconfig` (final-problem scale zookeeper.replicas=N);
            # the rendered list is only the first one.
            dynamic=True,
        )


def _tcp_word_check(*, port: int, word: str, expect: str) -> list[str]:
    """An exec probe sending a four-letter word with bash's /dev/tcp (the image has bash;
    no nc flags to depend on) and matching the answer."""
    return ["bash", "-c", f"exec 3<>/dev/tcp/127.0.0.1/{port} && printf {word} >&3 && grep -qE '{expect}' <&3"]


#: ``mntr``'s ``zk_peer_state`` once a member leads, follows or observes in step with the
#: quorum: the peer state, then the Zab phase (``QuorumPeer.getDetailedPeerState``, 3.9.4). A
#: follower goes election -> discovery -> synchronization (receiving the leader's DIFF, SNAP or
#: TRUNC) -> broadcast; only in broadcast is it a voter the leader counts. ``mntr`` (like
#: ``srvr``) answers only while the member serves ("not currently serving requests" otherwise).
#: A member joining the ensemble (started as an observer of its membership, before ``reconfig
#: -add``) follows the leader without a vote and reports ``following - broadcast`` once synced
#: (seen on 3.9.4); a member that the membership lists as an observer reports ``observing -
#: broadcast``. Both are Ready: they serve clients in step with the leader.
SYNCED_PEER_STATE = "^zk_peer_state[[:space:]]+(leading|following|observing) - broadcast$"


def readiness_command(*, client_port: int) -> list[str]:
    """Ready only in the quorum and synced with its leader: "safe to stop the next member".
    A rolling update or a drain takes the next member down only once this passes, so at most
    one member is ever out of the quorum."""
    return _tcp_word_check(port=client_port, word="mntr", expect=SYNCED_PEER_STATE)


def liveness_command(*, client_port: int) -> list[str]:
    """Alive while the process answers ``ruok``, with or without a quorum: a member
    waiting for its peers must not be restarted for it."""
    return _tcp_word_check(port=client_port, word="ruok", expect="imok")


@register
class ZooKeeperChart(PlatformChart):
    """A ZooKeeper ensemble with quorum-aware readiness, metrics and tight network policy."""

    component = "zookeeper"
    construct_id = "ZooKeeper"
    requires = ("base",)
    version = versions.ZOOKEEPER_VERSION
    # Supported upgrade paths of the images its pods run (final_problem/versions.py).
    upgrade_paths = versions.upgrade_paths(versions.ZOOKEEPER_IMAGE)
    settings_class = ZooKeeperProps

    NAMESPACE = "zookeeper"
    NAME = "zookeeper"
    HEADLESS_SERVICE = "zookeeper-headless"
    CLIENT_SERVICE = "zookeeper"

    @classmethod
    def client_service_dns(cls) -> str:
        """DNS name of the client Service (port: ``zookeeper_client_port``)."""
        return f"{cls.CLIENT_SERVICE}.{cls.NAMESPACE}.svc.cluster.local"

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
        props: ZooKeeperProps = self.props
        self.zookeeper_namespace = RestrictedNamespace(self, "Namespace", name=self.NAMESPACE, pss_version=f"v{settings.kubernetes_version}")
        ns = self.NAMESPACE
        selector = self.label_set.selector("server")

        member_hosts = tuple(
            f"{self.NAME}-{i}.{self.HEADLESS_SERVICE}.{ns}.svc.cluster.local" for i in range(props.replicas)
        )
        #: Stable DNS names of the members, member 1 (ordinal 0) first.
        self.member_hosts = member_hosts
        #: Connection string for clients inside the cluster.
        self.connect_string = f"{self.client_service_dns()}:{props.client_port}"
        ensemble = props.ensemble(hosts=member_hosts)
        config = zoo_cfg(ensemble, client_port=props.client_port)
        scripts = {"start.sh": START_SCRIPT_PATH.read_text(), "reconfig.sh": RECONFIG_SCRIPT_PATH.read_text()}
        self.config_map = k8s.KubeConfigMap(
            self, "Config",
            metadata=k8s.ObjectMeta(name=f"{self.NAME}-config", namespace=ns),
            # zoo.cfg.dynamic: the initial membership only (a new ensemble's); a running
            # member keeps the one on its volume, so it is not in the pods' digest below.
            data={"zoo.cfg": config, "zoo.cfg.dynamic": dynamic_cfg(ensemble), "logback.xml": LOGBACK, **scripts},
        )
        set_component(self.config_map, "config")

        service_ports = [
            k8s.ServicePort(name="client", port=props.client_port, target_port=int_or_string("client")),
            k8s.ServicePort(name="quorum", port=props.quorum_port, target_port=int_or_string("quorum")),
            k8s.ServicePort(name="election", port=props.election_port, target_port=int_or_string("election")),
            k8s.ServicePort(name="metrics", port=props.metrics_port, target_port=int_or_string("metrics")),
        ]
        self.headless_service = k8s.KubeService(
            self, "Headless",
            metadata=k8s.ObjectMeta(name=self.HEADLESS_SERVICE, namespace=ns),
            spec=k8s.ServiceSpec(
                cluster_ip="None", selector=selector, ports=service_ports,
                # Members resolve each other before any is ready: readiness needs a quorum.
                publish_not_ready_addresses=True,
            ),
        )
        self.client_service = k8s.KubeService(
            self, "Client",
            metadata=k8s.ObjectMeta(name=self.CLIENT_SERVICE, namespace=ns),
            spec=k8s.ServiceSpec(selector=selector, ports=service_ports[:1]),
        )
        for svc in (self.headless_service, self.client_service):
            set_component(svc, "server")

        classpath = f"{CONF_DIR}:{ZOOKEEPER_HOME}/lib/*"
        start = java_command(java="java", classpath=classpath, config_path=f"{DATA_DIR}/zoo.cfg", heap_mib=props.effective_heap_mib)
        container = k8s.Container(
            name="zookeeper",
            image=versions.ZOOKEEPER_IMAGE,
            image_pull_policy="IfNotPresent",
            # The image's entrypoint would write /conf/zoo.cfg; the rendered one is mounted
            # instead, and the start script adds the membership (it appends the config path).
            command=["bash", START_SCRIPT, *start[:-1]],
            env=[k8s.EnvVar(name=name, value=value) for name, value in (
                ("ZOO_DATA_DIR", DATA_DIR), ("ZOO_CONF_DIR", CONF_DIR),
                # A starting member asks the ensemble's members that serve for the membership.
                ("ZOO_ENSEMBLE", self.connect_string),
                ("ZOO_PEER_DOMAIN", f"{self.HEADLESS_SERVICE}.{ns}.svc.cluster.local"),
                ("ZOO_QUORUM_PORT", str(props.quorum_port)), ("ZOO_ELECTION_PORT", str(props.election_port)),
                ("ZOO_CLIENT_PORT", str(props.client_port)), ("ZOO_SUPER_FILE", SUPER_PASSWORD_FILE),
                ("ZOO_CLASSPATH", classpath),
            )],
            ports=[
                k8s.ContainerPort(name="client", container_port=props.client_port),
                k8s.ContainerPort(name="quorum", container_port=props.quorum_port),
                k8s.ContainerPort(name="election", container_port=props.election_port),
                k8s.ContainerPort(name="metrics", container_port=props.metrics_port),
            ],
            security_context=container_context(uid=ZOOKEEPER_UID),
            resources=raw_resources(props.sizing),
            # Every 5 s: a rolling update waits for this probe on each member in turn, so its
            # period adds to every step; a JVM start and a sync take a few seconds.
            readiness_probe=k8s.Probe(
                exec=k8s.ExecAction(command=readiness_command(client_port=props.client_port)),
                initial_delay_seconds=READINESS_PERIOD_S, period_seconds=READINESS_PERIOD_S, timeout_seconds=5,
                failure_threshold=3,
            ),
            liveness_probe=k8s.Probe(
                exec=k8s.ExecAction(command=liveness_command(client_port=props.client_port)),
                # A JVM start plus loading a large snapshot takes a while on a Pi.
                initial_delay_seconds=30, period_seconds=15, timeout_seconds=5, failure_threshold=6,
            ),
            volume_mounts=[
                k8s.VolumeMount(name="config", mount_path=CONF_DIR, read_only=True),
                k8s.VolumeMount(name="data", mount_path=DATA_DIR),
                k8s.VolumeMount(name="datalog", mount_path=DATA_LOG_DIR),
                # The JVM's perf data and Netty's native library unpack into /tmp.
                k8s.VolumeMount(name="tmp", mount_path="/tmp"),
            ],
        )
        # Snapshots to the backup target: a sidecar in each member's pod that reads the two
        # volumes and copies into its own scratch space; it asks its member's mode with srvr.
        self.backup = None
        backup_text = ""
        if snapshots_on(settings, props):
            self.backup = SnapshotBackup(
                self, "Backup", name=self.NAME, namespace=ns, component="zookeeper", settings=props, profile=profile,
                service_account=BACKUP_SERVICE_ACCOUNT,
                selector=selector, uid=ZOOKEEPER_UID,
                args=["--data-dir", DATA_DIR, "--log-dir", DATA_LOG_DIR, "--spool", BACKUP_SPOOL,
                      "--port", str(props.client_port)],
                mounts=[k8s.VolumeMount(name="data", mount_path=DATA_DIR, read_only=True),
                        k8s.VolumeMount(name="datalog", mount_path=DATA_LOG_DIR, read_only=True),
                        k8s.VolumeMount(name="backup-spool", mount_path=BACKUP_SPOOL)],
                alive_path=BACKUP_SPOOL, restore=bool(props.restore_to),
            )
            self.backup.add_dependency(self.zookeeper_namespace)
            backup_text = self.backup.config_text
        check_restore_to(props, backups=settings.backups)
        #: The ``restore`` init container (``zookeeper.restore_to`` set): every member with empty
        #: volumes restores the same snapshot and logs.
        self.restore = snapshot_restore_container(
            self.backup, component="zookeeper", to=props.restore_to,
            args=["--data-dir", DATA_DIR, "--log-dir", DATA_LOG_DIR],
            data_mounts=[k8s.VolumeMount(name="data", mount_path=DATA_DIR),
                         k8s.VolumeMount(name="datalog", mount_path=DATA_LOG_DIR)],
            uid=ZOOKEEPER_UID, sizing=props.sizing, profile=profile, restore_bucket=settings.restore_bucket,
            own_endpoint=bool(props.backup_endpoint),
        ) if props.restore_to and self.backup else None
        digest = hashlib.sha256((config + LOGBACK + "".join(scripts.values()) + backup_text).encode()).hexdigest()[:16]
        self.stateful_set = QuorumStatefulSet(
            self, "Ensemble",
            name=self.NAME,
            namespace=ns,
            labels=self.label_set,
            component="server",
            replicas=props.replicas,
            service_name=self.HEADLESS_SERVICE,
            containers=[container, *([self.backup.container] if self.backup else [])],
            init_containers=[self.restore] if self.restore else (),
            profile=profile,
            uid=ZOOKEEPER_UID,
            service_account_name=self.backup.service_account if self.backup else None,
            pod_labels=self.backup.pod_labels if self.backup else None,
            volumes=[
                k8s.Volume(name="config", config_map=k8s.ConfigMapVolumeSource(name=f"{self.NAME}-config")),
                k8s.Volume(name="tmp", empty_dir=k8s.EmptyDirVolumeSource(size_limit=quantity("64Mi"))),
                *((self.backup.volumes + [k8s.Volume(name="backup-spool", empty_dir=k8s.EmptyDirVolumeSource(
                    size_limit=quantity(f"{props.storage_gib}Gi")))]) if self.backup else []),
            ],
            claims=[
                ClaimSpec(name="data", size_gib=props.storage_gib),
                ClaimSpec(name="datalog", size_gib=props.storage_gib),
            ],
            # Rolling updates and drains: one member at a time, the next only once the
            # restarted one is synced (readiness above), so no minReadySeconds is needed: the
            # probe cannot pass before the member counts in the quorum. No preStop: ZooKeeper
            # 3.9 has no command that hands leadership over (only reconfig, which changes the
            # membership: a restart must not), and the sessions live in the ensemble, so a
            # client reconnects to another member within its session timeout.
            termination_grace_seconds=TERMINATION_GRACE_S,
            pod_annotations={
                # A changed zoo.cfg rolls the members one at a time (PDB maxUnavailable 1).
                "final-problem.io/config-sha256": digest,
                "prometheus.io/scrape": "true",
                "prometheus.io/port": str(props.metrics_port),
            },
        )
        # checkov wants uids >= 10000 so a container user never equals a host user. The
        # image's release files belong to its user 1000 (Dockerfile), which is non-root as
        # Pod Security "restricted" requires; keeping it keeps file ownership as shipped.
        self.stateful_set.resource.metadata.add_annotation(
            "checkov.io/skip1", "CKV_K8S_40=the official zookeeper image runs as its own uid 1000",
        )
        self._network_policies(selector=selector, props=props)
        for child in (self.config_map, self.headless_service, self.client_service):
            child.add_dependency(self.zookeeper_namespace.resource)
        self.stateful_set.add_dependency(self.zookeeper_namespace)
        self.stateful_set.add_dependency(self.config_map)

    def _network_policies(self, *, selector: dict[str, str], props: ZooKeeperProps) -> None:
        ns = self.NAMESPACE
        members = k8s.NetworkPolicyPeer(pod_selector=k8s.LabelSelector(match_labels=selector))
        policies = [
            k8s.KubeNetworkPolicy(
                self, "AllowClients",
                metadata=k8s.ObjectMeta(name="zookeeper-clients", namespace=ns),
                spec=k8s.NetworkPolicySpec(
                    pod_selector=k8s.LabelSelector(match_labels=selector),
                    policy_types=["Ingress"],
                    ingress=[k8s.NetworkPolicyIngressRule(
                        from_=[
                            k8s.NetworkPolicyPeer(pod_selector=k8s.LabelSelector()),
                            k8s.NetworkPolicyPeer(namespace_selector=k8s.LabelSelector(match_labels=CLIENT_NAMESPACE_LABEL)),
                        ],
                        ports=ports(props.client_port),
                    )],
                ),
            ),
            k8s.KubeNetworkPolicy(
                self, "AllowPeers",
                metadata=k8s.ObjectMeta(name="zookeeper-peers", namespace=ns),
                spec=k8s.NetworkPolicySpec(
                    pod_selector=k8s.LabelSelector(match_labels=selector),
                    policy_types=["Ingress", "Egress"],
                    ingress=[k8s.NetworkPolicyIngressRule(from_=[members], ports=ports(props.quorum_port, props.election_port))],
                    # And the client port: a starting member asks the others for the membership
                    # (`conf` through the client Service, whose address is rewritten to a member
                    # before policy applies) and the reconfig script asks each voter's `mntr`.
                    egress=[k8s.NetworkPolicyEgressRule(
                        to=[members], ports=ports(props.quorum_port, props.election_port, props.client_port))],
                ),
            ),
            k8s.KubeNetworkPolicy(
                self, "AllowMetrics",
                metadata=k8s.ObjectMeta(name="zookeeper-metrics", namespace=ns),
                spec=k8s.NetworkPolicySpec(
                    pod_selector=k8s.LabelSelector(match_labels=selector),
                    policy_types=["Ingress"],
                    ingress=[k8s.NetworkPolicyIngressRule(
                        from_=[k8s.NetworkPolicyPeer(namespace_selector=k8s.LabelSelector(match_labels=MONITORING_NAMESPACE_LABEL))],
                        ports=ports(props.metrics_port),
                    )],
                ),
            ),
        ]
        for policy in policies:
            set_component(policy, "network-policy")
            policy.add_dependency(self.zookeeper_namespace.resource)
        self.network_policies = policies


def member_line(myid: int, *, props: ZooKeeperProps, namespace: str) -> str:
    """Member ``myid``'s server line as ``reconfig -add`` takes it: the pod's stable name,
    a participant, its client port on every interface."""
    host = f"{ZooKeeperChart.NAME}-{myid - 1}.{ZooKeeperChart.HEADLESS_SERVICE}.{namespace}.svc.cluster.local"
    member = Member(myid=myid, host=host, client_port=props.client_port, quorum_port=props.quorum_port,
                    election_port=props.election_port)
    return member.dynamic_line()


@scaling.membership("zookeeper", "replicas")
def change_replicas(old: ZooKeeperProps, new: ZooKeeperProps, namespace: str) -> list[scaling.Step]:
    """One member at a time. Growing: the StatefulSet starts the next pod, which joins the
    running ensemble as a non-voting follower (its start script); once it is Ready (synced
    with the leader), ``reconfig -add`` makes it a voter. Shrinking: ``reconfig -remove`` of
    the highest member first, then the StatefulSet stops its pod. Each ``reconfig`` runs in
    member 1's container (ordinal 0, never removed: at least 3 members stay), which checks
    the live voters first. Sources: ZooKeeper Dynamic Reconfiguration guide ("Adding
    servers", "Removing servers"); Kubernetes docs, "StatefulSets" (scaling)."""
    name, container, script = ZooKeeperChart.NAME, "zookeeper", RECONFIG_SCRIPT
    namespace = namespace or ZooKeeperChart.NAMESPACE
    runner = f"{name}-0"
    if new.replicas not in REPLICAS_ALLOWED:
        raise scaling.Refused(
            f"zookeeper.replicas={new.replicas}: an ensemble has {', '.join(map(str, REPLICAS_ALLOWED))} members "
            f"(quorum floor(n/2)+1; fewer than 3 tolerate no failure, an even count no more than the odd one below); "
            f"choose one of them")
    for field_name in ("client_port", "quorum_port", "election_port"):
        if getattr(old, field_name) != getattr(new, field_name):
            raise scaling.Refused(
                f"zookeeper.{field_name} changes with zookeeper.replicas: the new members would be added on ports the "
                f"others do not use; change the replicas first, then the port")
    steps: list[scaling.Step] = []
    for replicas in range(old.replicas + 1, new.replicas + 1):
        myid = replicas
        steps += [
            scaling.Scale(name, replicas, f"start member {myid}: it joins the running ensemble as a non-voting follower",
                          namespace),
            scaling.WaitReady(name, replicas, f"member {myid} synced with the leader", namespace),
            scaling.Exec(runner, container, ("bash", script, "add", member_line(myid, props=new, namespace=namespace)),
                         f"member {myid} becomes a voter ({replicas} voters, quorum {replicas // 2 + 1})", namespace),
        ]
    for replicas in range(old.replicas - 1, new.replicas - 1, -1):
        myid = replicas + 1
        steps += [
            scaling.Exec(runner, container, ("bash", script, "remove", str(myid)),
                         f"member {myid} stops voting ({replicas} voters, quorum {replicas // 2 + 1})", namespace),
            scaling.Scale(name, replicas, f"stop member {myid}, no longer in the ensemble", namespace),
            scaling.WaitReady(name, replicas, f"the {replicas} members Ready before the next step", namespace),
        ]
    return steps

