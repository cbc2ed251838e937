"""Run a real KRaft cluster on one host's loopback, from the renderer's output.

Used by the integration tests and ``bench/kafka.py``. Each node's ``server.properties``
comes from :func:`final_problem.renderers.kafka.server_properties` (the function the
chart mounts), with hosts set to 127.0.0.1, ports remapped to free ones, a directory per
node and, through ``extra``, shorter failure-detection timeouts. Storage is formatted
with the storage tool and ``--add-scram`` exactly as the chart's init container does.
The jars come from Maven Central (``make kafka``) into
``${XDG_CACHE_HOME:-~/.cache}/final-problem/kafka-<version>/libs``, at the pinned version and
at the previous release line the upgrade rehearsals start from; each node runs the version it
was last started with (:meth:`LocalKafkaCluster.start`).

Layouts: ``dedicated`` (3 controllers + 3 brokers, the EKS layout) and ``combined``
(3 ``broker,controller`` nodes, the Pi layout). The quorum is the chart's dynamic one unless
``props`` say otherwise; ``spare_controllers`` adds controller nodes that are neither formatted
nor started with the others: each joins as an observer when first started, as a controller
pod the StatefulSet adds does, until ``add-controller`` makes it a voter. Every process it starts is stopped by
:meth:`LocalKafkaCluster.close` (also on ``with`` exit).
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence, TypeVar

from final_problem import local, versions
from final_problem.charts.kafka import JMX_EXPORTER_RULES, KafkaProps
from final_problem.clients.kafka import KafkaSettings, admin
from final_problem.clients.kafka_topics import TopicSpec, reconcile
from final_problem.local import LOOPBACK, free_ports
from final_problem.local.limits import Groups, Limits
from final_problem.profiles import EKS, PI
from final_problem.renderers.kafka import (
    ADMIN_PASSWORD_ENV, BROKER, BROKER_ID_OFFSET, CONTROLLER_PASSWORD_ENV, LOG4J2_PROPERTIES, SCRAM_MECHANISM, SERVER_MAIN,
    STORAGE_MAIN, KafkaClusterConfig, KafkaNode, format_args, java_command, layout_nodes, quorum_format_args,
    random_cluster_id, scram_argument, server_properties,
)

T = TypeVar("T")

#: What the tests change from the chart's configuration, and why. Failure detection
#: (``broker.session.timeout.ms``, heartbeats), buffers, threads and the JVM are the
#: chart's, per profile. Source: Kafka 4.4 "Broker Configs".
TEST_TUNING: tuple[tuple[str, str], ...] = (
    # A lagging (not dead) replica leaves the ISR after 6 s, not 30 s: a test that stops a
    # follower's traffic sees the ISR shrink within its wait. A dead broker leaves the ISR
    # when the controllers fence it, which is the chart's session timeout.
    ("replica.lag.time.max.ms", "6000"),
    # Consumer groups start without the 3 s initial rebalance delay.
    ("group.initial.rebalance.delay.ms", "0"),
    # Small segments: a restarted broker recovers little, and the logs roll under test.
    ("log.segment.bytes", str(1024 * 1024)),
    ("num.recovery.threads.per.data.dir", "1"),
)
#: The storage tool runs as the chart's ``format-storage`` init container: 128 MiB of heap
#: under 256 MiB and 1 CPU (charts/kafka.py).
FORMAT_LIMITS = Limits(cpu_m=1000, memory_mib=256)


class KafkaClusterError(RuntimeError):
    """The local cluster did not reach the expected state in time."""


def kafka_home(version: str = versions.KAFKA_VERSION) -> Path:
    """Where ``make kafka`` installs the jars of ``version``."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "final-problem" / f"kafka-{version}"


def missing_binaries(*kafka_versions: str) -> list[str]:
    """What is missing to run a cluster of ``kafka_versions`` (default: the pinned one) here
    (empty when ready)."""
    missing = []
    if not shutil.which("java"):
        missing.append("java (Debian package default-jre-headless)")
    for version in kafka_versions or (versions.KAFKA_VERSION,):
        home = kafka_home(version)
        if not (home / ".installed").exists() or not (home / "libs" / f"kafka_2.13-{version}.jar").exists() \
                or not (home / "agents" / "jmx_prometheus_javaagent.jar").exists():
            missing.append(f"{home}/libs (run `make kafka`)")
    return missing


def classpath(version: str = versions.KAFKA_VERSION) -> str:
    """Every jar of ``libs/``, as ``kafka-run-class.sh`` builds it."""
    return str(kafka_home(version) / "libs" / "*")


@dataclass
class _Process:
    node: KafkaNode
    directory: Path
    heap_mib: int
    limits: Limits | None
    #: The Kafka version this node runs (its jars: :func:`kafka_home`).
    version: str = versions.KAFKA_VERSION
    process: subprocess.Popen[bytes] | None = None

    @property
    def node_id(self) -> int:
        return self.node.node_id


@dataclass(frozen=True)
class Credentials:
    """Random passwords of one local cluster (never written into a rendered file)."""

    admin: str
    controller: str
    app: str
    app_user: str = "app"

    @classmethod
    def random(cls) -> "Credentials":
        return cls(admin=random_cluster_id(), controller=random_cluster_id(), app=random_cluster_id())


class LocalKafkaCluster:
    """A KRaft cluster on 127.0.0.1 with free ports, in ``workdir``."""

    def __init__(
        self, *, workdir: Path, layout: str = "dedicated", controllers: int = 3, brokers: int = 3,
        extra: Sequence[tuple[str, str]] = TEST_TUNING, offsets_topic_partitions: int = 3,
        jvm_options: Sequence[str] = (), props: "KafkaProps | None" = None, metrics: bool = False,
        limits: bool = True, version: str = versions.KAFKA_VERSION, spare_controllers: int = 0,
    ) -> None:
        """``props``: the chart's settings (default: the profile of the layout, EKS for
        ``dedicated``, Pi for ``combined``); each node runs with its role's heap and JVM
        flags from them, and, with ``limits``, under its container's CPU and memory limits
        (:mod:`final_problem.local.limits`). ``jvm_options`` are added after the chart's
        (the tests add none). ``version``: the Kafka version every node is formatted and
        first started with (an upgrade starts nodes again at another one)."""
        if layout not in ("dedicated", "combined"):
            raise ValueError(f"layout {layout!r}: use 'dedicated' or 'combined'")
        self.workdir = workdir
        self.layout = layout
        self.jvm_options = tuple(jvm_options)
        self.credentials = Credentials.random()
        self.cluster_id = random_cluster_id()
        if spare_controllers and layout == "combined":
            raise ValueError("spare controllers are dedicated ones: use layout 'dedicated'")
        count = controllers + spare_controllers + (0 if layout == "combined" else brokers)
        ports = iter(free_ports(3 * count))

        def place(kind: str, ordinal: int) -> dict[str, object]:
            return {"host": LOOPBACK, "client_port": next(ports), "controller_port": next(ports),
                    "replication_port": next(ports)}

        nodes = layout_nodes(
            controllers=controllers + spare_controllers, brokers=0 if layout == "combined" else brokers,
            combined=layout == "combined", place=place,
        )
        # The chart's settings (durability, failure detection, heap-bound buffers, threads)
        # on loopback nodes: the file each node gets is the chart's but for hosts, ports,
        # directories and the ``extra`` test settings.
        self.props = props = props or KafkaProps.for_profile(PI if layout == "combined" else EKS)
        self.config = props.with_durability(
            KafkaClusterConfig(nodes=nodes, voters=controllers), bind_host=LOOPBACK, extra=tuple(extra),
            offsets_topic_partitions=offsets_topic_partitions,
        )
        #: Brokers :meth:`wait_healthy` started again after they exited by themselves.
        self.restarted: list[int] = []
        #: Controller nodes outside the initial voter set, started only when asked for.
        self.spares = {n.node_id for n in self.config.controllers} - {n.node_id for n in self.config.initial_voters}

        def role(node: KafkaNode) -> tuple[int, Limits | None]:
            heap, sizing = (props.broker_heap, props.broker_sizing) if node.is_broker else \
                (props.controller_heap, props.controller_sizing)
            return heap, Limits.of(sizing) if limits else None

        self._role = role
        self.groups = Groups(enabled=limits)
        #: Called first by :meth:`close`: whatever restarts nodes (a pod harness) stops doing so.
        self.on_close: list[Callable[[], None]] = []
        self.procs = {n.node_id: _Process(n, workdir / f"node-{n.node_id}", *role(n), version=version) for n in nodes}
        workdir.mkdir(parents=True, exist_ok=True)
        # With ``metrics``, every node loads the chart's JMX exporter agent and rules, each
        # on a port of its own.
        self.metrics_ports: dict[int, int] = dict(zip(self.procs, free_ports(len(self.procs)), strict=True)) if metrics else {}
        self.metrics_rules = workdir / "jmx-exporter.yaml"
        self.metrics_rules.write_text(JMX_EXPORTER_RULES)
        self.log4j = workdir / "log4j2.properties"
        self.log4j.write_text(LOG4J2_PROPERTIES)
        self.admin_properties = workdir / "admin.properties"
        self.admin_properties.write_text(
            "security.protocol=SASL_PLAINTEXT\n"
            f"sasl.mechanism={SCRAM_MECHANISM}\n"
            "sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required "
            f'username="{self.config.admin_user}" password="{self.credentials.admin}";\n'
        )
        self.admin_properties.chmod(0o600)

    # -- membership ------------------------------------------------------------------

    def add_brokers(self, count: int) -> list[int]:
        """``count`` more dedicated brokers (not started), numbered after the last one as the
        chart's next ordinals are; the ids. No other node's file changes: a broker's file names
        only itself and the controllers."""
        ports = iter(free_ports(3 * count))
        first = BROKER_ID_OFFSET + len(self.config.brokers)
        added = tuple(KafkaNode(node_id=first + i, roles=(BROKER,), host=LOOPBACK, client_port=next(ports),
                                controller_port=next(ports), replication_port=next(ports)) for i in range(count))
        self.config = dataclasses.replace(self.config, nodes=self.config.nodes + added)
        version = next(iter(self.procs.values())).version
        for node in added:
            self.procs[node.node_id] = _Process(node, self.workdir / f"node-{node.node_id}", *self._role(node),
                                                version=version)
        if self.metrics_ports:
            self.metrics_ports.update(zip((n.node_id for n in added), free_ports(count), strict=True))
        return [n.node_id for n in added]

    def forget_brokers(self, node_ids: Sequence[int]) -> None:
        """Brokers removed from the cluster (stopped): no longer among its brokers or in its
        bootstrap list (their processes stay known to :meth:`close`)."""
        self.config = dataclasses.replace(self.config, nodes=tuple(n for n in self.config.nodes
                                                                   if n.node_id not in node_ids))

    # -- lifecycle -------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KAFKA_")}
        env[ADMIN_PASSWORD_ENV] = self.credentials.admin
        env[CONTROLLER_PASSWORD_ENV] = self.credentials.controller
        return env

    def _java(self, main: str, args: Sequence[str], heap_mib: int, jvm: Sequence[str] = (),
              version: str = versions.KAFKA_VERSION) -> list[str]:
        return java_command(
            java=shutil.which("java") or "java", classpath=classpath(version), main=main, args=args,
            heap_mib=heap_mib, log4j_config=str(self.log4j), extra_jvm=jvm,
        )

    def _write(self, proc: _Process) -> Path:
        data = self.log_dir(proc.node_id)
        data.mkdir(parents=True, exist_ok=True)
        node_config = dataclasses.replace(self.config, log_dir=str(data))
        path = proc.directory / "server.properties"
        path.write_text(server_properties(node_config, proc.node_id))
        return path

    def _format_command(self, proc: _Process) -> list[str]:
        path = self._write(proc)
        scram = [
            scram_argument(self.config.admin_user, self.credentials.admin),
            scram_argument(self.credentials.app_user, self.credentials.app),
        ]
        args = format_args(config_path=str(path), cluster_id=self.cluster_id, scram=scram,
                           quorum=quorum_format_args(self.config, proc.node_id))
        command = self._java(STORAGE_MAIN, args, 128, version=proc.version)
        return self.groups.wrap(f"kafka-format-{proc.node_id}", FORMAT_LIMITS, command)

    def format_all(self, node_ids: Sequence[int] | None = None) -> None:
        """Format the storage of every node but the spare controllers, or of ``node_ids`` (in
        parallel: each is a JVM start)."""
        running = []
        for node_id in [i for i in self.procs if i not in self.spares] if node_ids is None else node_ids:
            proc = self.procs[node_id]
            if (self.log_dir(proc.node_id) / "meta.properties").exists():
                continue
            proc.directory.mkdir(parents=True, exist_ok=True)
            log = open(proc.directory / "format.log", "wb")
            running.append((proc, log, subprocess.Popen(
                self._format_command(proc), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=self._env(), start_new_session=True,
            )))
        try:
            for proc, log, p in running:
                if p.wait(timeout=180) != 0:
                    raise KafkaClusterError(f"formatting node {proc.node_id} failed: see {log.name}")
        finally:
            for _, log, p in running:
                log.close()
                local.kill_group(p)

    def start(self, node_id: int, version: str | None = None) -> subprocess.Popen[bytes]:
        """Start node ``node_id`` (again), at ``version`` (default: the version it ran); its
        data directory is kept. Returns its process."""
        proc = self.procs[node_id]
        if proc.process is not None and proc.process.poll() is None:
            if version is not None and version != proc.version:
                raise KafkaClusterError(f"node {node_id} runs {proc.version}: stop it before starting {version}")
            return proc.process
        if version is not None:
            proc.version = version
        if not (self.log_dir(proc.node_id) / "meta.properties").exists():
            self.format_all([node_id] if node_id in self.spares else None)
        path = self._write(proc)
        log = open(proc.directory / "server.log", "ab")
        try:
            agent = (
                [f"-javaagent:{kafka_home(proc.version) / 'agents' / 'jmx_prometheus_javaagent.jar'}="
                 f"{LOOPBACK}:{self.metrics_ports[node_id]}:{self.metrics_rules}"]
                if node_id in self.metrics_ports else []
            )
            gc_log = local.gc_log_flag(proc.directory)
            command = self._java(SERVER_MAIN, [str(path)], proc.heap_mib, [*self.jvm_options, gc_log, *agent],
                                 version=proc.version)
            command = self.groups.wrap(self.group_name(node_id), proc.limits, command)
            proc.process = subprocess.Popen(
                command,
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=proc.directory, env=self._env(), start_new_session=True,
            )
        finally:
            log.close()
        return proc.process

    def start_all(self, order: Sequence[int] | None = None) -> None:
        self.format_all()
        for node_id in order or [i for i in self.procs if i not in self.spares]:
            self.start(node_id)

    def kill(self, node_id: int) -> None:
        """Kill node ``node_id`` with SIGKILL: a crash, not a clean shutdown."""
        proc = self.procs[node_id]
        if proc.process is None:
            return
        local.kill_group(proc.process)
        proc.process = None

    def kill_all(self) -> None:
        """SIGKILL every node at once (a power cut)."""
        for proc in self.procs.values():
            if proc.process is not None:
                local.kill_group(proc.process, reap=False)
        for node_id in self.procs:
            self.kill(node_id)

    def close(self) -> None:
        """Stop every node this cluster started and remove their cgroups (first telling
        whatever restarts nodes, :attr:`on_close`, not to)."""
        for abandon in self.on_close:
            abandon()
        self.kill_all()
        self.groups.remove_all()

    # -- what the nodes used ---------------------------------------------------------

    def volume(self, node_id: int) -> Path:
        """Node ``node_id``'s volume (the chart's ``/var/lib/kafka``, a mounted disk in the
        power-cut tests): the log directory is a folder in it, as in the chart, since a
        file system's root holds ``lost+found``, which Kafka would take for a partition."""
        return self.procs[node_id].directory / "volume"

    def log_dir(self, node_id: int) -> Path:
        return self.volume(node_id) / "data"

    @staticmethod
    def group_name(node_id: int) -> str:
        """The cgroup of node ``node_id`` in :attr:`groups`."""
        return f"kafka-{node_id}"

    def out_of_memory(self) -> dict[int, str]:
        """Per node that ran out of memory: the line of its log that says so (a heap
        ``OutOfMemoryError``, which ``-XX:+ExitOnOutOfMemoryError`` turns into an exit), or
        the count of kernel OOM kills."""
        found: dict[int, str] = {}
        for node_id in self.procs:
            line = next((l for l in self.log(node_id).splitlines() if "OutOfMemoryError" in l), None)
            if line:
                found[node_id] = line.strip()
        for name in self.groups.oom_killed():
            node_id = int(name.rsplit("-", 1)[1])
            found.setdefault(node_id, self.groups.oom_report(name))
        return found

    def gc_pauses_ms(self, node_id: int | None = None) -> list[float]:
        """Every stop-the-world GC pause of node ``node_id`` (or of all nodes), in ms,
        read from the JVMs' GC logs."""
        procs = self.procs.values() if node_id is None else [self.procs[node_id]]
        return local.gc_pauses_ms(p.directory for p in procs)

    def __enter__(self) -> "LocalKafkaCluster":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- observation -----------------------------------------------------------------

    @property
    def bootstrap_servers(self) -> str:
        return self.config.bootstrap_servers

    @property
    def broker_ids(self) -> list[int]:
        return [n.node_id for n in self.config.brokers]

    @property
    def controller_ids(self) -> list[int]:
        return [n.node_id for n in self.config.controllers]

    def running(self) -> list[int]:
        return [i for i, p in self.procs.items() if p.process is not None and p.process.poll() is None]

    def log(self, node_id: int) -> str:
        path = self.procs[node_id].directory / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def reported_version(self, node_id: int) -> str | None:
        """The version node ``node_id`` logged at its last start (``AppInfoParser``: "Kafka
        version: X"), as the running JVM, not the launcher, sees it."""
        found = re.findall(r"Kafka version: (\S+)", self.log(node_id))
        return found[-1] if found else None

    def tail(self, node_id: int, lines: int = 30) -> str:
        return "\n".join(self.log(node_id).splitlines()[-lines:])

    def wait_for(self, what: str, check: Callable[[], T | None], *, timeout: float = 120.0, interval: float = 0.5,
                 retry_on: tuple[type[BaseException], ...] = (Exception,)) -> T:
        return local.wait_for(what, check, timeout_s=timeout, interval_s=interval, retry_on=retry_on,
                              error=KafkaClusterError)

    def tool(self, main: str, args: Sequence[str], *, timeout: float = 120.0, heap_mib: int = 128,
             jvm: Sequence[str] = (), version: str = versions.KAFKA_VERSION) -> str:
        """Run a Kafka command-line tool (a main class of ``libs/`` of ``version``) and return its output."""
        result = subprocess.run(
            self._java(main, args, heap_mib, jvm, version=version), capture_output=True, text=True, timeout=timeout,
            env=self._env(), stdin=subprocess.DEVNULL,
        )
        if result.returncode != 0:
            raise KafkaClusterError(f"{main} {' '.join(args)} failed: {result.stdout[-2000:]}{result.stderr[-2000:]}")
        return result.stdout

    def app_settings(self, *, password: str | None = None) -> KafkaSettings:
        """Client settings of the ``app`` user (the chart's client user) for this cluster."""
        return KafkaSettings(bootstrap_servers=self.bootstrap_servers, username=self.credentials.app_user,
                             password=self.credentials.app if password is None else password)

    def create_topic(self, *, partitions: int = 3, replication_factor: int = 3, prefix: str = "t") -> str:
        """A new topic created by the topic Job's logic, once every replica is in sync."""
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        a = admin(self.app_settings())
        try:
            reconcile(a, [TopicSpec(name=name, partitions=partitions, replication_factor=replication_factor)])
        finally:
            a.close()
        self.wait_healthy([name])
        return name

    def serves(self, node_id: int) -> bool:
        """Whether broker ``node_id`` itself answers a client (connects, authenticates and
        returns metadata). The cluster's metadata alone does not say so: with the controller
        quorum lost, nothing fences a broker that died, and it stays listed as unfenced until
        a quorum is back and its session times out."""
        try:
            admin(dataclasses.replace(self.app_settings(), bootstrap_servers=self.config.node(node_id).bootstrap),
                  bootstrap_timeout_ms=3000).close()
        except Exception:  # noqa: BLE001 - kafka-python raises several types for a node that does not answer
            return False
        return True

    def wait_healthy(self, topics: Sequence[str] = (), *, timeout: float = 180.0) -> None:
        """Every broker answering clients itself, registered and unfenced, and every partition
        of ``topics`` fully in sync. A broker that exited by itself meanwhile is started again,
        as the kubelet restarts a pod's container (``restartPolicy: Always``): with the dynamic
        quorum, a broker that learned of a leader elected during the controllers' first
        elections and lost its voter set to the next leader's truncation never finds the
        controller for its registration and exits after a minute (Kafka 4.4: its controller
        node provider looks leaders up in the voter set; seen once in a dozen cluster starts
        here). Those restarts are in :attr:`restarted`."""
        settings = self.app_settings()

        def healthy() -> bool:
            for n in self.broker_ids:
                process = self.procs[n].process
                if process is not None and process.poll() is not None:
                    self.procs[n].process = None
                    self.restarted.append(n)
                    self.start(n)
            if not all(self.serves(n) for n in self.broker_ids):
                return False
            a = admin(settings, bootstrap_timeout_ms=5000)
            try:
                alive = [b for b in a.describe_cluster()["brokers"] if not b.get("is_fenced")]
                if len(alive) != len(self.broker_ids):
                    return False
                for t in a.describe_topics(list(topics)) if topics else ():
                    for p in t["partitions"]:
                        if len(p["isr_nodes"]) != len(p["replica_nodes"]) or p["leader_id"] < 0:
                            return False
                return True
            finally:
                a.close()

        self.wait_for("all brokers up and every replica in sync", healthy, timeout=timeout)
