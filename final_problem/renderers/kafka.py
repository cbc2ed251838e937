"""Render Kafka's ``server.properties`` for a KRaft cluster, one file per node.

One renderer for every place a Kafka node runs: the chart mounts its output read-only,
and :mod:`final_problem.local.kafka` starts real nodes on loopback from the same text with
only hosts, ports and directories remapped.

Roles: dedicated controllers, dedicated brokers, or combined ``broker,controller`` nodes
(the Pi layout).

The controller quorum is dynamic by default (KIP-853, ``kraft.version`` 1): every node finds
it through ``controller.quorum.bootstrap.servers``, the voter set lives in the metadata log,
and ``kafka-metadata-quorum.sh add-controller`` / ``remove-controller`` change it one
controller at a time. Storage is formatted with ``--initial-controllers`` on the first
voters (each with a directory id of its own), ``--no-initial-controllers`` on a controller
that joins later as an observer, and neither on a broker (:func:`quorum_format_args`). A
cluster formatted before (``dynamic_quorum=False``) keeps its static
``controller.quorum.voters`` until ``kraft.version`` is upgraded to 1 (Kafka 4.1 and later).

Listeners, each authenticated:

- ``CLIENT`` (SASL_PLAINTEXT, SCRAM-SHA-512): applications;
- ``REPLICATION`` (SASL_PLAINTEXT, SCRAM-SHA-512): broker to broker, as the admin user;
- ``CONTROLLER`` (SASL_PLAINTEXT, PLAIN): the quorum, and brokers to controllers. SCRAM
  cannot serve here: SCRAM credentials live in the metadata log the controllers
  themselves serve, so a controller could not check them before it has a quorum. PLAIN
  checks a static user given in the listener's JAAS configuration.

No password is in the rendered text: JAAS settings name environment variables through
Kafka's ``EnvVarConfigProvider`` (``${env:NAME}``), which the chart fills from the
generated Secret and the local launcher from its own random values. SCRAM users are
bootstrapped into the metadata at format time (``kafka-storage format --add-scram``).

Sources: Kafka 4.4 docs, "KRaft" (Configuration, Process Roles, Controllers, Upgrade,
Provisioning Nodes, Controller membership changes), KIP-853,
"Authentication using SASL" (SASL/SCRAM, SASL/PLAIN), "Listener configuration",
"Configuration Providers" (EnvVarConfigProvider), "Broker Configs";
KIP-966 (eligible leader replicas: the cluster-level ``min.insync.replicas``).
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from final_problem.errors import ConfigError

BROKER = "broker"
CONTROLLER = "controller"
ROLES_ALLOWED = ((BROKER,), (CONTROLLER,), (BROKER, CONTROLLER))

CLIENT_LISTENER = "CLIENT"
REPLICATION_LISTENER = "REPLICATION"
CONTROLLER_LISTENER = "CONTROLLER"
#: Clients and brokers authenticate with SCRAM-SHA-512 (salted challenge-response: the
#: password never crosses the wire and the broker stores only salted hashes).
SCRAM_MECHANISM = "SCRAM-SHA-512"
#: The controller listener's mechanism (see the module docstring for why not SCRAM).
CONTROLLER_MECHANISM = "PLAIN"

#: Environment variables the rendered JAAS settings read (via ``${env:...}``).
ADMIN_PASSWORD_ENV = "KAFKA_ADMIN_PASSWORD"
CONTROLLER_PASSWORD_ENV = "KAFKA_CONTROLLER_PASSWORD"

#: The broker main class (the scripts' ``kafka-server-start.sh``) and the storage tool
#: (``kafka-storage.sh``); both are in ``kafka_2.13-<version>.jar``.
SERVER_MAIN = "kafka.Kafka"
STORAGE_MAIN = "kafka.tools.StorageTool"

_TOPIC_NAME = re.compile(r"^[a-zA-Z0-9._-]{1,249}$")
_USER = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


@dataclass(frozen=True, kw_only=True)
class KafkaNode:
    """One node: its id, roles, the host others reach it at, and its ports."""

    node_id: int
    roles: tuple[str, ...]
    host: str
    client_port: int = 9092
    controller_port: int = 9093
    replication_port: int = 9094

    def __post_init__(self) -> None:
        if self.roles not in ROLES_ALLOWED:
            raise ConfigError(
                "kafka.roles", ",".join(self.roles), "not a KRaft role set",
                "use broker, controller, or broker,controller (in that order)",
            )
        if self.node_id < 0:
            raise ConfigError("kafka.node_id", self.node_id, "node ids are non-negative", "number nodes from 0")

    @property
    def is_broker(self) -> bool:
        return BROKER in self.roles

    @property
    def is_controller(self) -> bool:
        return CONTROLLER in self.roles

    @property
    def voter(self) -> str:
        """This controller's entry in ``controller.quorum.voters``."""
        return f"{self.node_id}@{self.host}:{self.controller_port}"

    @property
    def bootstrap(self) -> str:
        """``host:port`` of this broker's client listener."""
        return f"{self.host}:{self.client_port}"

    @property
    def controller_endpoint(self) -> str:
        """``host:port`` of this controller's listener (``controller.quorum.bootstrap.servers``)."""
        return f"{self.host}:{self.controller_port}"

    @property
    def directory_id(self) -> str:
        """The directory id this controller's metadata log is formatted with when it is one of
        the first voters (``--initial-controllers``): 16 bytes as Kafka prints a Uuid (URL-safe
        base64, no padding), derived from its id and address, so every voter formats with the
        same list without a shared secret (a directory id names a log directory, it grants
        nothing). A controller that joins later gets a random one from the storage tool."""
        seed = self.voter.encode()
        while True:
            value = base64.urlsafe_b64encode(hashlib.sha256(seed).digest()[:16]).decode().rstrip("=")
            # Not read as an option, and clear of Kafka's reserved ids (all-zero, 1, 2: DirectoryId).
            if not value.startswith("-") and not value.startswith("AAAAAAAAAAAAAAAAAAAA"):
                return value
            seed += b"'"


@dataclass(frozen=True, kw_only=True)
class KafkaClusterConfig:
    """What every node of one cluster shares, and the nodes themselves.

    Defaults are the platform's durability and security choices; ``extra`` appends
    properties (the local launcher shortens timeouts with it).
    """

    nodes: tuple[KafkaNode, ...]
    #: Where partitions and the metadata log live (one directory per node).
    log_dir: str = "/var/lib/kafka/data"
    #: Address listeners bind to. Default all interfaces (a pod's own); loopback locally.
    bind_host: str = "0.0.0.0"
    #: Replicas of every topic created without an explicit factor. Default 3.
    default_replication_factor: int = 3
    #: Replicas that must acknowledge an acks=all write. Default 2: with RF 3, one
    #: broker may be down and writes go on; with two down they fail instead of being
    #: acknowledged by a single copy.
    min_insync_replicas: int = 2
    #: Partitions of a topic created without an explicit count. Default 3.
    num_partitions: int = 3
    #: Partitions of ``__consumer_offsets``. Default 50 (Kafka's own default).
    offsets_topic_partitions: int = 50
    #: How long the controllers wait for a broker's heartbeat before fencing it (its
    #: partitions then get new leaders). A controller setting. Default Kafka's 9000.
    broker_session_timeout_ms: int = 9000
    #: How often a broker heartbeats to the active controller. A broker setting. Default
    #: Kafka's 2000.
    broker_heartbeat_interval_ms: int = 2000
    #: The brokers' heap: what the heap-bound buffers below are sized from. ``None``
    #: keeps Kafka's defaults (sized for a 1 GiB heap and more).
    broker_heap_mib: int | None = None
    #: Messages a partition's log takes before the broker fsyncs it; ``None`` leaves
    #: Kafka's default (never: the OS writes the page cache back in its own time, and
    #: durability rests on replication). 1 fsyncs every append before the broker
    #: acknowledges or a follower fetches on, so an acks=all record is on disk on every
    #: in-sync replica when the producer hears of it.
    flush_interval_messages: int | None = None
    #: Network and request-handler threads of a broker. ``None``: Kafka's defaults (3 and 8).
    network_threads: int | None = None
    io_threads: int | None = None
    #: SCRAM user of the replication listener and of operators (the topic Job).
    admin_user: str = "admin"
    #: PLAIN user of the controller listener.
    controller_user: str = "controller"
    #: A dynamic quorum (KIP-853, ``kraft.version`` 1): ``controller.quorum.bootstrap.servers``
    #: and a voter set kept in the metadata log. False: the static ``controller.quorum.voters``
    #: of a cluster formatted before (kraft.version 0).
    dynamic_quorum: bool = True
    #: How many controllers (the lowest ids) are voters when storage is formatted; the others
    #: are spare controller nodes that join as observers and become voters by ``add-controller``.
    #: None: every controller.
    voters: int | None = None
    #: How many voters (the lowest ids) ``controller.quorum.bootstrap.servers`` lists. None:
    #: every voter. The chart lists the controllers every allowed count keeps, so growing or
    #: shrinking the quorum changes no node's file.
    bootstrap_controllers: int | None = None
    extra: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        ids = [n.node_id for n in self.nodes]
        if len(set(ids)) != len(ids):
            raise ConfigError("kafka.node_id", ids, "a node id is used twice", "give every node its own id")
        if not self.controllers:
            raise ConfigError("kafka.controllers", 0, "a KRaft cluster needs controllers", "use 3")
        if self.voters is not None and not 0 < self.voters <= len(self.controllers):
            raise ConfigError("kafka.controllers", self.voters, f"more voters than the {len(self.controllers)} controller nodes",
                              f"use at most {len(self.controllers)}")
        if self.voters is not None and self.voters != len(self.controllers) and not self.dynamic_quorum:
            raise ConfigError("kafka.controllers", self.voters, "a static quorum (controller.quorum.voters) has no spare "
                              "controllers: every controller node is a voter", "use a dynamic quorum")
        controllers = self.initial_voters
        if len(controllers) % 2 == 0:
            raise ConfigError(
                "kafka.controllers", len(controllers),
                "must be odd: the quorum is a majority, so an even count tolerates no more failures "
                "than the odd one below it",
                f"use {len(controllers) - 1 if len(controllers) > 2 else 3}",
            )
        brokers = self.brokers
        if not brokers:
            raise ConfigError("kafka.brokers", 0, "a cluster needs brokers", "use 3")
        if self.default_replication_factor > len(brokers):
            raise ConfigError(
                "kafka.replication_factor", self.default_replication_factor,
                f"above the broker count ({len(brokers)}): topics could not be created",
                f"use at most {len(brokers)}, or add brokers",
            )
        check_min_isr(self.min_insync_replicas, self.default_replication_factor)
        for name, user in (("kafka.admin_user", self.admin_user), ("kafka.controller_user", self.controller_user)):
            if not _USER.match(user):
                raise ConfigError(name, user, "not a plain user name", "use letters, digits, '-' and '_'")
        if not 0 < self.broker_heartbeat_interval_ms < self.broker_session_timeout_ms:
            raise ConfigError(
                "kafka.broker_heartbeat_interval_ms", self.broker_heartbeat_interval_ms,
                f"must be positive and below kafka.broker_session_timeout_ms ({self.broker_session_timeout_ms}): "
                "a broker that heartbeats less often than the session lasts is fenced while healthy",
                f"use {max(1, self.broker_session_timeout_ms // 6)} (a sixth of the session)",
            )
        if self.flush_interval_messages is not None and self.flush_interval_messages < 1:
            raise ConfigError("kafka.flush_interval_messages", self.flush_interval_messages,
                              "a log cannot be flushed every 0 or fewer messages",
                              "use 1 (fsync every write) or leave it unset (Kafka's default)")
        if self.num_partitions < 1 or self.offsets_topic_partitions < 1:
            raise ConfigError("kafka.num_partitions", self.num_partitions, "a topic needs a partition", "use 1 or more")

    @property
    def controllers(self) -> tuple[KafkaNode, ...]:
        return tuple(n for n in self.nodes if n.is_controller)

    @property
    def brokers(self) -> tuple[KafkaNode, ...]:
        return tuple(n for n in self.nodes if n.is_broker)

    @property
    def initial_voters(self) -> tuple[KafkaNode, ...]:
        """The controllers that are voters when storage is formatted (the lowest ids)."""
        return self.controllers[:self.voters]

    @property
    def quorum_voters(self) -> str:
        """``controller.quorum.voters`` of a static quorum; with a dynamic one, the value of
        ``--initial-controllers`` (each entry also names the voter's directory id)."""
        if self.dynamic_quorum:
            return ",".join(f"{n.voter}:{n.directory_id}" for n in self.initial_voters)
        return ",".join(n.voter for n in self.initial_voters)

    @property
    def quorum_bootstrap_servers(self) -> str:
        """``controller.quorum.bootstrap.servers``: where every node finds the quorum."""
        return ",".join(n.controller_endpoint for n in self.initial_voters[:self.bootstrap_controllers])

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(n.bootstrap for n in self.brokers)

    def node(self, node_id: int) -> KafkaNode:
        for n in self.nodes:
            if n.node_id == node_id:
                return n
        raise KeyError(node_id)


#: Broker node ids start here, so controller ids (from 0) never collide with them when
#: either set grows. Combined nodes use their ordinal.
BROKER_ID_OFFSET = 100


def layout_nodes(
    *, controllers: int, brokers: int, combined: bool, place: Callable[[str, int], Mapping[str, Any]],
) -> tuple[KafkaNode, ...]:
    """The nodes of a cluster: ``controllers`` dedicated controllers (ids from 0) and
    ``brokers`` dedicated brokers (ids from :data:`BROKER_ID_OFFSET`), or, ``combined``,
    ``controllers`` nodes with both roles. ``place(kind, ordinal)`` gives each node's
    ``host`` and ports (``kind`` is ``controller``, ``broker`` or ``combined``)."""
    if combined:
        return tuple(
            KafkaNode(node_id=i, roles=(BROKER, CONTROLLER), **place("combined", i))  # type: ignore[arg-type]
            for i in range(controllers)
        )
    return tuple(
        [KafkaNode(node_id=i, roles=(CONTROLLER,), **place("controller", i)) for i in range(controllers)]  # type: ignore[arg-type]
        + [KafkaNode(node_id=BROKER_ID_OFFSET + i, roles=(BROKER,), **place("broker", i)) for i in range(brokers)]  # type: ignore[arg-type]
    )


def check_min_isr(min_isr: int, replication_factor: int, *, setting: str = "kafka.min_insync_replicas") -> None:
    """``1 <= min.insync.replicas < RF``: equal to RF, one broker down stops every write."""
    if not 1 <= min_isr < replication_factor:
        raise ConfigError(
            setting, min_isr,
            f"must be at least 1 and below the replication factor ({replication_factor}): at RF or above, "
            "one broker down stops every acks=all write",
            f"use {max(1, replication_factor - 1)}",
        )


def check_topic_name(name: str, *, setting: str = "kafka.topics") -> None:
    """Kafka's topic name rule: 1-249 of ``[a-zA-Z0-9._-]``, not ``.`` or ``..``."""
    if not _TOPIC_NAME.match(name) or name in (".", ".."):
        raise ConfigError(setting, name, "not a valid topic name", "use 1-249 letters, digits, '.', '_' or '-'")


def _jaas(module: str, **options: str) -> str:
    # Options are quoted strings; the module line ends with ';' (JAAS syntax).
    body = " ".join(f'{k}="{v}"' for k, v in options.items())
    return f"{module} required{(' ' + body) if body else ''};"


_SCRAM_MODULE = "org.apache.kafka.common.security.scram.ScramLoginModule"
_PLAIN_MODULE = "org.apache.kafka.common.security.plain.PlainLoginModule"


def _env(name: str) -> str:
    return "${env:" + name + "}"


def server_properties(config: KafkaClusterConfig, node_id: int) -> str:
    """The ``server.properties`` of node ``node_id``."""
    node = config.node(node_id)
    bind = config.bind_host
    listeners: list[str] = []
    advertised: list[str] = []
    protocols = {CONTROLLER_LISTENER: "SASL_PLAINTEXT"}
    if node.is_broker:
        listeners += [f"{CLIENT_LISTENER}://{bind}:{node.client_port}", f"{REPLICATION_LISTENER}://{bind}:{node.replication_port}"]
        advertised += [f"{CLIENT_LISTENER}://{node.host}:{node.client_port}", f"{REPLICATION_LISTENER}://{node.host}:{node.replication_port}"]
        protocols[CLIENT_LISTENER] = "SASL_PLAINTEXT"
        protocols[REPLICATION_LISTENER] = "SASL_PLAINTEXT"
    if node.is_controller:
        listeners.append(f"{CONTROLLER_LISTENER}://{bind}:{node.controller_port}")
        advertised.append(f"{CONTROLLER_LISTENER}://{node.host}:{node.controller_port}")
    controller_password = _env(CONTROLLER_PASSWORD_ENV)
    # The controller listener's JAAS entry serves both sides: username/password are what a
    # node presents when it connects to a controller, user_<name> what a controller accepts.
    controller_jaas = {"username": config.controller_user, "password": controller_password}
    if node.is_controller:
        controller_jaas[f"user_{config.controller_user}"] = controller_password
    lines = [
        "# Rendered by final_problem.renderers.kafka: do not edit.",
        f"process.roles={','.join(node.roles)}",
        f"node.id={node.node_id}",
        (f"controller.quorum.bootstrap.servers={config.quorum_bootstrap_servers}" if config.dynamic_quorum
         else f"controller.quorum.voters={config.quorum_voters}"),
        f"controller.listener.names={CONTROLLER_LISTENER}",
        f"listeners={','.join(listeners)}",
        f"advertised.listeners={','.join(advertised)}",
        "listener.security.protocol.map=" + ",".join(f"{k}:{v}" for k, v in protocols.items()),
        f"log.dirs={config.log_dir}",
        # Passwords come from the environment (never in this file).
        "config.providers=env",
        "config.providers.env.class=org.apache.kafka.common.config.provider.EnvVarConfigProvider",
        f"sasl.mechanism.controller.protocol={CONTROLLER_MECHANISM}",
        f"listener.name.{CONTROLLER_LISTENER.lower()}.sasl.enabled.mechanisms={CONTROLLER_MECHANISM}",
        f"listener.name.{CONTROLLER_LISTENER.lower()}.{CONTROLLER_MECHANISM.lower()}.sasl.jaas.config="
        + _jaas(_PLAIN_MODULE, **controller_jaas),
        # Durability: with eligible leader replicas (KIP-966) the controllers apply the
        # cluster-level min.insync.replicas, so every node carries the same value.
        f"min.insync.replicas={config.min_insync_replicas}",
        "unclean.leader.election.enable=false",
    ]
    if node.is_controller:
        lines += [
            # Topic-creation defaults are applied by the controllers in KRaft: set on brokers
            # only, a topic created without a count got Kafka's 1 partition (brokers log
            # "num.partitions is defined in broker. It should be defined in the controller role").
            f"num.partitions={config.num_partitions}",
            f"default.replication.factor={config.default_replication_factor}",
            # The controllers fence a broker whose heartbeats stop for this long.
            f"broker.session.timeout.ms={config.broker_session_timeout_ms}",
        ]
    if node.is_broker:
        lines += [
            f"inter.broker.listener.name={REPLICATION_LISTENER}",
            f"sasl.mechanism.inter.broker.protocol={SCRAM_MECHANISM}",
            f"listener.name.{CLIENT_LISTENER.lower()}.sasl.enabled.mechanisms={SCRAM_MECHANISM}",
            f"listener.name.{CLIENT_LISTENER.lower()}.{SCRAM_MECHANISM.lower()}.sasl.jaas.config=" + _jaas(_SCRAM_MODULE),
            f"listener.name.{REPLICATION_LISTENER.lower()}.sasl.enabled.mechanisms={SCRAM_MECHANISM}",
            f"listener.name.{REPLICATION_LISTENER.lower()}.{SCRAM_MECHANISM.lower()}.sasl.jaas.config="
            + _jaas(_SCRAM_MODULE, username=config.admin_user, password=_env(ADMIN_PASSWORD_ENV)),
            # Topics are declared as code and created by the topic Job, never by a typo.
            "auto.create.topics.enable=false",
            f"broker.heartbeat.interval.ms={config.broker_heartbeat_interval_ms}",
            # Internal topics as durable as user topics.
            f"offsets.topic.replication.factor={config.default_replication_factor}",
            f"offsets.topic.num.partitions={config.offsets_topic_partitions}",
            f"transaction.state.log.replication.factor={config.default_replication_factor}",
            f"transaction.state.log.min.isr={config.min_insync_replicas}",
            f"share.coordinator.state.topic.replication.factor={config.default_replication_factor}",
            f"share.coordinator.state.topic.min.isr={config.min_insync_replicas}",
        ]
        if config.flush_interval_messages is not None:
            lines.append(f"log.flush.interval.messages={config.flush_interval_messages}")
        if config.broker_heap_mib is not None:
            lines += [f"{k}={v}" for k, v in heap_bound_settings(config.broker_heap_mib)]
        if config.network_threads is not None:
            lines.append(f"num.network.threads={config.network_threads}")
        if config.io_threads is not None:
            lines.append(f"num.io.threads={config.io_threads}")
    lines += [f"{k}={v}" for k, v in config.extra]
    return "\n".join(lines) + "\n"


MIB = 1024 * 1024


def heap_bound_settings(heap_mib: int) -> tuple[tuple[str, str], ...]:
    """A broker's buffers that live on the heap, sized for a heap of ``heap_mib``.

    Kafka's defaults assume a heap of 1 GiB or more (its start script's default is 1 GiB):

    - ``log.cleaner.dedupe.buffer.size`` (default 128 MiB): the log cleaner's offset map,
      one array allocated when the cleaner starts. On a 224 MiB heap it does not fit beside
      the broker's own data (the Pi nodes died with ``OutOfMemoryError: Java heap space``
      right after ``Starting the log cleaner``). A sixteenth of the heap, at least 8 MiB:
      24 bytes a key at a 0.9 load factor (Kafka docs, "Log Compaction"), so 14 MiB holds
      the last offsets of about 500,000 keys per cleaning pass, far more than the
      platform's compacted topics (consumer offsets, transaction state) have.
    - ``queued.max.request.bytes`` (default unbounded): bytes of requests read and not yet
      handled. A quarter of the heap, so a burst of produce requests waits in the socket
      instead of filling the heap.
    - ``socket.request.max.bytes`` (default 100 MiB): the largest request a broker reads;
      an eighth of the heap (Kafka requires it at most ``queued.max.request.bytes``), still
      well above the 1 MiB producers send by default (``max.request.size``).
    - ``replica.fetch.response.max.bytes`` (default 10 MiB): what one follower fetch brings
      onto the heap, per replica fetcher thread and leader. A sixteenth of the heap, at most
      the default.

    Consumer fetches are sent from the page cache (zero copy) and never reach the heap,
    so ``fetch.max.bytes`` keeps its default. Source: Kafka 4.4 docs, "Broker Configs".
    """
    dedupe = max(8, heap_mib // 16)
    queued = max(16, heap_mib // 4)
    request = min(100, max(8, heap_mib // 8))
    fetch = min(10, max(1, heap_mib // 16))
    return (
        ("log.cleaner.dedupe.buffer.size", str(dedupe * MIB)),
        ("queued.max.request.bytes", str(queued * MIB)),
        ("socket.request.max.bytes", str(request * MIB)),
        ("replica.fetch.response.max.bytes", str(fetch * MIB)),
    )


def scram_argument(user: str, password: str) -> str:
    """One ``--add-scram`` value of ``kafka-storage format``."""
    if not _USER.match(user):
        raise ConfigError("kafka.scram_user", user, "not a plain user name", "use letters, digits, '-' and '_'")
    return f"{SCRAM_MECHANISM}=[name={user},password={password}]"


LOG4J2_PROPERTIES = """\
# Console only: the kubelet (or the local launcher) collects stdout.
status = warn
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.stdout.ref = STDOUT
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.apache.name = org.apache.kafka
logger.apache.level = INFO
"""


#: The collector the image's own start script chooses (``kafka-run-class.sh``,
#: ``KAFKA_JVM_PERFORMANCE_OPTS``: G1 with a 20 ms pause goal, concurrent cycles from 35%
#: occupancy, ``System.gc()`` as a concurrent cycle). The chart starts ``kafka.Kafka``
#: directly, so without these the JVM would choose for itself: inside a pod's limits of
#: fewer than 2 CPUs or less than about 1792 MiB it is not a "server class machine" and
#: takes the Serial collector (stop-the-world old-generation collections). Source: Kafka
#: 4.4 ``bin/kafka-run-class.sh``; Kafka docs, "Java Version" (G1 settings of a large
#: production cluster); OpenJDK 17 "Garbage Collector Ergonomics".
G1_FLAGS = ("-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-XX:InitiatingHeapOccupancyPercent=35",
            "-XX:+ExplicitGCInvokesConcurrent", "-Djava.awt.headless=true")


def jvm_flags(*, heap_mib: int, log4j_config: str) -> list[str]:
    """JVM options: a fixed heap, the image's G1 collector (:data:`G1_FLAGS`), exit on OOM
    (the supervisor restarts a clean process), and the Log4j 2 configuration
    (``kafka-run-class.sh`` passes the same property)."""
    if heap_mib < 128:
        raise ConfigError("kafka.heap_mib", heap_mib, "a Kafka node needs at least 128 MiB of heap", "use 256 or more")
    return [f"-Xms{heap_mib}m", f"-Xmx{heap_mib}m", *G1_FLAGS, "-XX:+ExitOnOutOfMemoryError",
            f"-Dlog4j2.configurationFile={log4j_config}"]


def java_command(
    *, java: str, classpath: str, main: str, args: Sequence[str], heap_mib: int, log4j_config: str,
    extra_jvm: Sequence[str] = (),
) -> list[str]:
    """A Kafka JVM in the foreground: ``main`` is :data:`SERVER_MAIN` or :data:`STORAGE_MAIN`."""
    return [java, *jvm_flags(heap_mib=heap_mib, log4j_config=log4j_config), *extra_jvm, "-cp", classpath, main, *args]


def format_args(*, config_path: str, cluster_id: str, scram: Sequence[str], quorum: Sequence[str] = ()) -> list[str]:
    """Arguments of the storage tool's ``format``; ``--ignore-formatted`` makes it idempotent
    (a restarted pod keeps its data). ``quorum``: the node's :func:`quorum_format_args`."""
    args = ["format", "--config", config_path, "--cluster-id", cluster_id, "--ignore-formatted"]
    for entry in scram:
        args += ["--add-scram", entry]
    return args + list(quorum)


def quorum_format_args(config: KafkaClusterConfig, node_id: int) -> list[str]:
    """How node ``node_id`` formats its storage into the quorum (Kafka 4.4 docs, "KRaft",
    Provisioning Nodes): a first voter with ``--initial-controllers`` (the same list on every
    one of them: the voter set of the bootstrap checkpoint, kraft.version 1), a controller
    joining later with ``--no-initial-controllers`` (an observer until ``add-controller``), a
    broker with neither; a static quorum with neither (kraft.version 0)."""
    node = config.node(node_id)
    if not config.dynamic_quorum or not node.is_controller:
        return []
    if node in config.initial_voters:
        return ["--initial-controllers", config.quorum_voters]
    return ["--no-initial-controllers"]


#: The brokers' membership script (``sh brokers.sh COMMAND ...``: spread the partitions
#: over a broker set, check that brokers hold none, unregister stopped ones), rendered into
#: the chart's ConfigMap and run in a broker's container by the ``kafka.brokers`` procedure;
#: the tests run the same file here.
BROKERS_SCRIPT = Path(__file__).with_name("kafka_brokers.sh").read_text()
#: Its exit status when it refuses (one line on standard output says why).
BROKERS_SCRIPT_REFUSED = 3


def brokers_command(
    script: str, command: str, broker_ids: Sequence[int], *, home: str, bootstrap: str, admin_user: str,
    throttle_bytes_s: int | None = None, config_dir: str | None = None, first_id: int = 100,
) -> tuple[str, ...]:
    """The command line of :data:`BROKERS_SCRIPT` at path ``script``: ``command`` (``spread``,
    ``check-empty``, ``has-config`` or ``unregister``) for ``broker_ids``."""
    args = ["sh", script, command, "--home", home, "--bootstrap", bootstrap, "--user", admin_user]
    if throttle_bytes_s is not None:
        args += ["--throttle", str(throttle_bytes_s)]
    if config_dir is not None:
        args += ["--config-dir", config_dir, "--first-id", str(first_id)]
    return (*args, *(str(i) for i in broker_ids))


def random_cluster_id() -> str:
    """A cluster id as ``kafka-storage random-uuid`` prints it: 16 random bytes, URL-safe
    base64 without padding, never starting with ``-`` (it would read as an option)."""
    while True:
        value = base64.urlsafe_b64encode(secrets.token_bytes(16)).decode().rstrip("=")
        if not value.startswith("-") and value != "AAAAAAAAAAAAAAAAAAAAAA":
            return value
