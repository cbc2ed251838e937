"""Roll and drain the chart's Kafka StatefulSets over a local cluster while a producer writes.

The cluster is :class:`~final_problem.local.kafka.LocalKafkaCluster` (the chart's
configuration, JVM command line and limits, with the metrics agent and rules). Each
rendered StatefulSet becomes a :class:`~final_problem.local.rollout.PodSet`: its pods are
the cluster's nodes of that set, stopped as the kubelet stops them (SIGTERM, a controlled
shutdown, SIGKILL when the rendered grace period ends) and started again on the same data
directory; their readiness is the rendered exec probe, the ConfigMap's script run here
with the node's local metrics port. The rendered PDBs bound the drain, and
``minReadySeconds`` is the StatefulSet's.

Throughout, the project's producer (acks=all, idempotent) writes numbered records one at a
time (:class:`~final_problem.local.powercut.LiveWriter`); the broker errors it retried are
counted by name (``NotEnoughReplicasError``: a write refused for lack of in-sync
replicas). At the end every partition is read to its high watermark and each acknowledged
number must be there. From each restart, the node's probe is also run every half second;
the first time it passes, a watcher checks through the Admin API that the node is back in
sync (a broker in the ISR of every partition it replicates, a controller's log at the
quorum's high watermark) within ``minReadySeconds``: the kubelet's first passing tick can
come at any moment from then on.

Used by ``tests/integration/test_kafka_rollout.py`` and ``bench/kafka_rollout.py``.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from kafka import KafkaConsumer, TopicPartition

from final_problem import config, manifests, scaling
from final_problem.charts.kafka import CONFIG_DIR, KAFKA_HOME, KafkaChart, KafkaProps, broker_membership
from final_problem.clients.kafka import admin, close, producer
from final_problem.local import LOOPBACK
from final_problem.local.kafka import LocalKafkaCluster, kafka_home
from final_problem.local.powercut import Ack, LiveWriter
from final_problem.local.rollout import (
    ExecProbe, LocalRunner, Pod, PodSet, RolloutError, TcpProbe, drain, roll_statefulset,
)
from final_problem.profiles import EKS
from final_problem.renderers.kafka import BROKERS_SCRIPT_REFUSED
from final_problem.scaling import Exec, Refused, StepFailed

#: Broker errors that refuse an acks=all write for lack of in-sync replicas (kafka-python's names).
NOT_ENOUGH_REPLICAS = ("NotEnoughReplicasError", "NotEnoughReplicasAfterAppendError")


def rendered(profile: str) -> list[dict[str, Any]]:
    """The Kafka chart's objects for ``profile`` (``eks``: dedicated, ``pi``: combined)."""
    settings = config.from_mapping({"components": ["base", "kafka"]})
    return manifests.chart_objects(manifests.render(settings, profile)["kafka"])


def _one(objects: Sequence[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def kafka_container(workload: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in workload["spec"]["template"]["spec"]["containers"] if c["name"] == "kafka")


def local_argv(argv: Sequence[str], *, config_dir: Path, ports: dict[int, int]) -> list[str]:
    """A rendered command run here: files of the ConfigMap's mount from ``config_dir``, the
    container's ports (as arguments) replaced by the local ones."""
    out = []
    for arg in argv:
        if arg.startswith(CONFIG_DIR + "/"):
            arg = str(config_dir / arg[len(CONFIG_DIR) + 1:])
        elif arg.isdigit() and int(arg) in ports:
            arg = str(ports[int(arg)])
        out.append(arg)
    return out


class Refusals(logging.Handler):
    """Counts, by error name, the produce errors kafka-python retried (it logs each one)."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.counts: Counter[str] = Counter()
        self._logger = logging.getLogger("kafka.producer.sender")

    def emit(self, record: logging.LogRecord) -> None:
        if "Got error produce response" in str(record.msg) and isinstance(record.args, tuple) and len(record.args) > 3:
            self.counts[str(record.args[3])] += 1

    def __enter__(self) -> "Refusals":
        self._logger.addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        self._logger.removeHandler(self)

    @property
    def not_enough_replicas(self) -> int:
        return sum(self.counts[name] for name in NOT_ENOUGH_REPLICAS)


@dataclass
class SyncCheck:
    """One restarted node whose probe passed: how long after the first pass the Admin API
    showed it back in sync (``None``: not within the deadline)."""

    pod: str
    node_id: int
    after_pass_s: float | None


class SyncWatcher:
    """Runs a check when a node's probe first passes after a (re)start."""

    def __init__(self, cluster: LocalKafkaCluster, deadline_s: float) -> None:
        self.cluster = cluster
        self.deadline_s = deadline_s
        #: Off while the cluster is first started: a new topic's ISR is complete before any fetch.
        self.active = False
        self.checks: list[SyncCheck] = []
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def in_sync(self, node_id: int) -> bool:
        """A broker in the ISR of every partition it replicates (and the metadata answers
        for every topic); a controller-only node's log at the quorum's high watermark."""
        a = admin(self.cluster.app_settings(), bootstrap_timeout_ms=5000)
        try:
            if node_id in self.cluster.broker_ids:
                topics = a.describe_topics()
                if any(t["error_code"] for t in topics):
                    return False
                mine = [p for t in topics for p in t["partitions"] if node_id in p["replica_nodes"]]
                if not all(node_id in p["isr_nodes"] for p in mine):
                    return False
            if node_id in self.cluster.controller_ids:
                quorum = a.describe_metadata_quorum()["topics"][0]["partitions"][0]
                voter = next(v for v in quorum["current_voters"] if v["replica_id"] == node_id)
                if voter["log_end_offset"] < quorum["high_watermark"]:
                    return False
            return True
        finally:
            a.close()

    def passed(self, pod: str, node_id: int) -> None:
        if not self.active:
            return
        first_pass = time.monotonic()

        def watch() -> None:
            while True:
                elapsed = time.monotonic() - first_pass
                try:
                    if self.in_sync(node_id):
                        result: float | None = elapsed
                        break
                except Exception:  # noqa: BLE001 - a broker still starting; retried until the deadline
                    pass
                if elapsed > self.deadline_s:
                    result = None
                    break
                time.sleep(0.1)
            with self._lock:
                self.checks.append(SyncCheck(pod=pod, node_id=node_id, after_pass_s=result))

        thread = threading.Thread(target=watch, name=f"sync-{pod}", daemon=True)
        thread.start()
        self._threads.append(thread)

    def join(self) -> None:
        for thread in self._threads:
            thread.join(timeout=self.deadline_s + 30)


@dataclass
class ProbeOnce:
    """The rendered probe, and beside it, from the pod's start, the same probe run every
    ``sample_s`` until it first passes, which is reported to ``on_first_pass``: the
    kubelet's first passing tick can fall anywhere after that moment, so what the probe
    claims must already hold then."""

    probe: Any
    on_first_pass: Callable[[], None]
    #: Sample only while this says so (not while the cluster first starts: six samplers
    #: scraping at once slow every JVM's start here).
    enabled: Callable[[], bool] = lambda: True
    sample_s: float = 0.5
    _sampling: bool = False

    def __getattr__(self, name: str) -> Any:  # the probe's timings
        return getattr(self.probe, name)

    def _sample(self) -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.probe.passes():
                self.on_first_pass()
                return
            time.sleep(self.sample_s)

    def passes(self) -> bool:
        if not self._sampling:  # the prober's first call: the pod has just started
            self._sampling = True
            if self.enabled():
                threading.Thread(target=self._sample, name="probe-sampler", daemon=True).start()
        return bool(self.probe.passes())


def kafka_podsets(cluster: LocalKafkaCluster, objects: Sequence[dict[str, Any]], workdir: Path,
                  watcher: SyncWatcher | None = None,
                  version: Callable[[], str | None] = lambda: None) -> list[PodSet]:
    """One PodSet per rendered StatefulSet, in the order rendered (controllers first), over
    ``cluster``'s nodes (not started). A pod starts its node at ``version()`` when it is made
    (None: the version the node ran; an upgrade changes it between rollouts)."""
    config_dir = workdir / "kafka-config"
    config_dir.mkdir(parents=True, exist_ok=True)
    for name, text in _one(objects, "ConfigMap", "kafka-config")["data"].items():
        (config_dir / name).write_text(text)
    sets = []
    for kind in ("combined",) if cluster.layout == "combined" else ("controller", "broker"):
        name, _ = KafkaChart.workload(kind)
        workload = _one(objects, "StatefulSet", name)
        container = kafka_container(workload)
        grace = workload["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        metrics_port = next(p["containerPort"] for p in container["ports"] if p["name"] == "metrics")
        client_port, controller_port = cluster.props.client_port, cluster.props.controller_port

        def make_pod(ordinal: int, *, kind: str = kind, name: str = name, container: dict[str, Any] = container,
                     grace: int = grace, metrics_port: int = metrics_port, client_port: int = client_port,
                     controller_port: int = controller_port) -> Pod:
            # Looked up when the pod is made: a scaled-up set's new ordinals are brokers added since.
            ids = {"controller": cluster.controller_ids, "broker": cluster.broker_ids, "combined": cluster.broker_ids}
            node_id = ids[kind][ordinal]
            node = cluster.config.node(node_id)
            probe_spec = container["readinessProbe"]
            ports = {metrics_port: cluster.metrics_ports[node_id], client_port: node.client_port,
                     controller_port: node.controller_port}
            if "exec" in probe_spec:
                probe: Any = ExecProbe.rendered(probe_spec, local_argv(probe_spec["exec"]["command"],
                                                                       config_dir=config_dir, ports=ports))
            else:  # the chart's earlier tcpSocket probe, for comparison
                probe = TcpProbe.rendered(probe_spec, ports)
            pod_name = f"{name}-{ordinal}"
            if watcher is not None:
                probe = ProbeOnce(probe, lambda: watcher.passed(pod_name, node_id), enabled=lambda: watcher.active)

            at = version()

            def start() -> Any:
                cluster.start(node_id, at)
                return cluster.procs[node_id].process

            def cleanup() -> None:
                cluster.procs[node_id].process = None

            # The kubelet starts an exited container again: a broker that gave up registering
            # during the controllers' first elections (LocalKafkaCluster.wait_healthy) comes back.
            pod = Pod(name=pod_name, start=start, container=container, grace_s=grace,
                      ports={metrics_port: cluster.metrics_ports[node_id]},
                      address=(LOOPBACK, node.client_port if kind != "controller" else node.controller_port),
                      cleanup=cleanup, readiness=probe, ordinal=ordinal, restart_on_exit=True)
            # The cluster's close stops every node: none may come back after it.
            cluster.on_close.append(pod.abandon)
            return pod

        pdb = _one(objects, "PodDisruptionBudget", name)
        sets.append(PodSet(name=name, workload=workload, pdb=pdb, pods=[], make_pod=make_pod))
    return sets


def read_numbers(cluster: LocalKafkaCluster, topic: str, *, timeout_s: float = 120) -> Counter[int]:
    """Every record of ``topic`` (its value, a number), each partition read from its first
    offset up to the high watermark its leader reports with the records."""
    c = KafkaConsumer(**cluster.app_settings().common(), group_id=None, enable_auto_commit=False,
                      client_id="rollout-check")
    try:
        numbers = cluster.wait_for(f"the partitions of {topic}", lambda: c.partitions_for_topic(topic), timeout=60)
        partitions = [TopicPartition(topic, n) for n in sorted(numbers)]
        c.assign(partitions)
        c.seek_to_beginning()
        seen: Counter[int] = Counter()

        def read_to_the_end() -> bool:
            for batch in c.poll(timeout_ms=500).values():
                seen.update(int(r.value) for r in batch)
            ends = [c.highwater(tp) for tp in partitions]
            return all(end is not None and c.position(tp) >= end for tp, end in zip(partitions, ends, strict=True))

        cluster.wait_for(f"every record of {topic}", read_to_the_end, timeout=timeout_s, interval=0, retry_on=())
        return seen
    finally:
        c.close()


def longest_gap_s(acks: Sequence[Ack], start: float, end: float) -> float:
    """The longest time no write was acknowledged, from ``start`` to ``end``."""
    times = [start, *(a.at for a in acks), end]
    return max(b - a for a, b in itertools.pairwise(times))


@dataclass
class Phase:
    """A rollout of one set, or a drain."""

    what: str
    started: float
    seconds: float
    #: Longest time no write was acknowledged during it.
    outage_s: float = 0.0


@dataclass
class DayTwoResult:
    layout: str
    phases: list[Phase]
    acknowledged: int
    lost: list[int]
    refusals: Counter[str]
    checks: list[SyncCheck]
    #: Seconds from SIGTERM to exit, per stopped pod (a controlled shutdown).
    shutdown_s: list[float] = field(default_factory=list)
    killed: list[str] = field(default_factory=list)
    #: The StatefulSets as they were left (their pods running), and the topic written.
    podsets: list[PodSet] = field(default_factory=list)
    topic: str = ""
    #: The broker scaling that followed on the same cluster (dedicated layout).
    scaling: "BrokerScaling | None" = None
    #: What ``roll_and_drain``'s ``then`` ran (e.g. a :class:`~final_problem.local.kafka_scaling.ControllerScaling`).
    then: Any = None

    @property
    def not_enough_replicas(self) -> int:
        return sum(self.refusals[name] for name in NOT_ENOUGH_REPLICAS)

    @property
    def longest_outage_s(self) -> float:
        return max(p.outage_s for p in self.phases)

    def in_sync_at_pass(self) -> tuple[int, list[float | None]]:
        """Restarts whose node was in sync when its probe first passed, and the delays of the
        others (``None``: not within minReadySeconds). A check takes a few tens of ms
        itself: under 0.1 s counts as at the pass."""
        late = [c.after_pass_s for c in self.checks if c.after_pass_s is None or c.after_pass_s >= 0.1]
        return len(self.checks) - len(late), [round(s, 1) if s is not None else None for s in late]

    def lines(self) -> list[str]:
        """The figures, one line per phase, then the writes, then the restarts."""
        lines = [f"{self.layout}: {p.what} {p.seconds:.1f} s, longest write outage {p.outage_s:.2f} s" for p in self.phases]
        lines.append(f"{self.layout}: {self.acknowledged} acknowledged acks=all writes, {len(self.lost)} lost, "
                     f"{self.not_enough_replicas} refused for lack of in-sync replicas "
                     f"(errors the producer retried: {dict(self.refusals) or 'none'})")
        at_pass, late = self.in_sync_at_pass()
        lines.append(f"{self.layout}: controlled shutdowns {min(self.shutdown_s, default=0):.1f}-"
                     f"{max(self.shutdown_s, default=0):.1f} s, {len(self.killed)} killed at the grace end; "
                     f"{len(self.checks)} restarts, in sync when the probe first passed: {at_pass}"
                     + (f", later (s): {late}" if late else ""))
        return lines


def roll_and_drain(cluster: LocalKafkaCluster, objects: Sequence[dict[str, Any]], workdir: Path, *,
                   settle_s: float = 2.0, write_interval_s: float = 0.02,
                   roll: Sequence[str] | None = None,
                   then: Callable[[list[PodSet]], list[Phase]] | None = None) -> DayTwoResult:
    """Start ``cluster`` as its StatefulSets, then, with a producer writing throughout: roll
    every set named in ``roll`` (default: every set, controllers first), then drain the node
    of the active controller. ``cluster``
    must have ``metrics=True``. The producer waits ``write_interval_s`` before each write (the
    outage is measured to within it) so that the client leaves the two cores here to the brokers.
    ``then(podsets)`` runs after the drain, the producer still writing, and returns its phases
    (a membership change: the sync checks of restarts stop before it)."""
    watcher = SyncWatcher(cluster, deadline_s=1.0)
    podsets = kafka_podsets(cluster, objects, workdir, watcher)
    # Every set at once, as the StatefulSets are created together; storage formatted first,
    # once (a node's first start would format every node, and two sets would race).
    cluster.format_all()
    launching = [threading.Thread(target=s.launch, name=f"launch-{s.name}", daemon=True) for s in podsets]
    for t in launching:
        t.start()
    for t in launching:
        t.join()
    if not all(len(s.pods) == s.workload["spec"]["replicas"] and all(p.ready for p in s.pods) for s in podsets):
        raise RolloutError("the cluster did not start: " + ", ".join(
            f"{p.name} {'ready' if p.ready else 'not ready'}" for s in podsets for p in s.pods))
    cluster.wait_healthy()
    # minReadySeconds, and the half second an Admin round trip here may take.
    watcher.deadline_s = max(s.min_ready_s for s in podsets) + 0.5
    watcher.active = True
    topic = cluster.create_topic(partitions=6, replication_factor=3, prefix="rollout")
    p = producer(cluster.app_settings(), linger_ms=0)
    phases: list[Phase] = []
    stopped: list[Pod] = []
    with Refusals() as refusals:
        def write(seq: int) -> None:
            time.sleep(write_interval_s)
            p.send(topic, value=str(seq).encode()).get(timeout=60)

        writer = LiveWriter(write, name="kafka-writer")
        writer.start()
        writer.wait_for(20, timeout_s=60)
        try:
            for s in podsets:
                if roll is not None and s.name not in roll:
                    continue
                stopped += s.pods
                started = time.monotonic()
                phases.append(Phase(f"rollout of {s.name}", started, roll_statefulset(s).seconds))
            node = _active_controller_ordinal(cluster)
            stopped += [s.pods[node] for s in podsets]
            started = time.monotonic()
            drained = drain(podsets, node)
            phases.append(Phase(f"drain of node {node} ({', '.join(f'{s.name}-{node}' for s in podsets)})",
                                started, drained.seconds))
            if then is not None:
                watcher.active = False
                phases += then(podsets)
            time.sleep(settle_s)
        finally:
            acks = writer.stop()
            close(p, timeout_s=0)
            writer.join()
    for phase in phases:
        end = phase.started + phase.seconds
        phase.outage_s = longest_gap_s([a for a in acks if phase.started <= a.at <= end], phase.started, end)
    watcher.join()
    present = read_numbers(cluster, topic)
    shutdowns, killed = _shutdowns(stopped)
    watcher.active = False
    return DayTwoResult(layout=cluster.layout, phases=phases, acknowledged=len(acks),
                        lost=[a.seq for a in acks if a.seq not in present], refusals=refusals.counts,
                        checks=list(watcher.checks), shutdown_s=shutdowns, killed=killed, podsets=podsets, topic=topic,
                        then=then)


def _active_controller_ordinal(cluster: LocalKafkaCluster) -> int:
    a = admin(cluster.app_settings())
    try:
        leader = a.describe_metadata_quorum()["topics"][0]["partitions"][0]["leader_id"]
    finally:
        a.close()
    return cluster.controller_ids.index(leader)


def _shutdowns(pods: Sequence[Pod]) -> tuple[list[float], list[str]]:
    """Seconds from SIGTERM to exit of each stopped pod, and the pods killed at the grace end."""
    seconds, killed = [], []
    for pod in pods:
        sigterm = next((at for at, what in pod.events if what == "SIGTERM"), None)
        exited = next((at for at, what in pod.events if what.startswith("exited")), None)
        if sigterm is not None and exited is not None:
            seconds.append(exited - sigterm)
        if pod.killed:
            killed.append(pod.name)
    return seconds, killed


# -- kafka.brokers on a live cluster -------------------------------------------------------


def exec_local(cluster: LocalKafkaCluster, config_dir: Path) -> Callable[[Exec], str]:
    """A :class:`~final_problem.scaling.Exec` of the chart's broker script run here, in the cgroup
    of the pod's node (as ``kubectl exec`` runs it in the container's): the ConfigMap's files
    from ``config_dir``, the release's ``libs/`` from the local install, the bootstrap address
    that of the pod's own broker. A refusal (the script's exit status 3) raises
    :class:`~final_problem.scaling.Refused` with its one line, another failure
    :class:`~final_problem.scaling.StepFailed`."""

    def run(step: Exec) -> str:
        ordinal = int(step.pod.rsplit("-", 1)[1])
        node_id = cluster.broker_ids[ordinal]
        local_paths = {KAFKA_HOME: str(kafka_home(cluster.procs[node_id].version)), CONFIG_DIR: str(config_dir)}
        argv = []
        for i, arg in enumerate(step.command):
            if i > 0 and step.command[i - 1] == "--bootstrap":
                arg = cluster.config.node(node_id).bootstrap
            elif arg.startswith(CONFIG_DIR + "/"):
                arg = str(config_dir / arg[len(CONFIG_DIR) + 1:])
            argv.append(local_paths.get(arg, arg))
        argv = cluster.groups.wrap(cluster.group_name(node_id), cluster.procs[node_id].limits, argv)
        done = subprocess.run(argv, capture_output=True, text=True, env=cluster._env(), timeout=900,
                              stdin=subprocess.DEVNULL)
        if done.returncode == BROKERS_SCRIPT_REFUSED:
            raise Refused(done.stdout.strip().splitlines()[-1])
        if done.returncode != 0:
            last = (done.stderr.strip() or done.stdout.strip() or f"exit status {done.returncode}").splitlines()[-1]
            raise StepFailed(f"in {step.pod}: {last}")
        return done.stdout

    return run


def _write_config(objects: Sequence[dict[str, Any]], config_dir: Path) -> None:
    """The ConfigMap ``kafka-config`` of ``objects`` as its pods see it (a deploy)."""
    for name, text in _one(objects, "ConfigMap", "kafka-config")["data"].items():
        (config_dir / name).write_text(text)


@dataclass
class BrokerScaling:
    """kafka.brokers 3 -> 5 -> 3 under a live acks=all producer."""

    up_s: float
    down_s: float
    #: Longest time no write was acknowledged during each move.
    up_outage_s: float
    down_outage_s: float
    acknowledged: int
    lost: list[int]
    #: Produce errors the producer retried, by name (``NotEnoughReplicasError``: a write
    #: refused for lack of in-sync replicas).
    refusals: Counter[str]
    #: Replicas of the written topic per broker after growing, and after shrinking.
    replicas_up: Counter[int]
    replicas_down: Counter[int]
    #: Polls of every partition's leader (through the Admin API, every half second) and the
    #: partitions seen without one.
    leader_polls: int
    offline: list[str]
    #: The line of the refused scale-down (brokers still holding replicas), and the pods
    #: left running by it.
    refusal: str
    pods_after_refusal: int
    #: Each remaining broker's own answer: the brokers of the cluster.
    views: dict[int, list[int]]
    steps_up: list[str] = field(default_factory=list)
    steps_down: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        return [
            f"kafka.brokers 3 -> 5: {self.up_s:.1f} s, longest write outage {self.up_outage_s:.2f} s; "
            f"replicas per broker {dict(sorted(self.replicas_up.items()))}",
            f"kafka.brokers 5 -> 3: {self.down_s:.1f} s, longest write outage {self.down_outage_s:.2f} s; "
            f"replicas per broker {dict(sorted(self.replicas_down.items()))}",
            f"kafka.brokers: {self.acknowledged} acknowledged acks=all writes, {len(self.lost)} lost, "
            f"{sum(self.refusals[n] for n in NOT_ENOUGH_REPLICAS)} refused for lack of in-sync replicas; "
            f"{len(self.offline)} partitions seen without a leader in {self.leader_polls} polls; "
            f"the scale-down that skips the move: {self.refusal}",
        ]


def _replicas(cluster: LocalKafkaCluster, topic: str) -> Counter[int]:
    a = admin(cluster.app_settings())
    try:
        (described,) = a.describe_topics([topic])
        return Counter(b for p in described["partitions"] for b in p["replica_nodes"])
    finally:
        a.close()


def _views(cluster: LocalKafkaCluster) -> dict[int, list[int]]:
    views = {}
    for node_id in cluster.broker_ids:
        settings = dataclasses.replace(cluster.app_settings(), bootstrap_servers=cluster.config.node(node_id).bootstrap)
        a = admin(settings)
        try:
            views[node_id] = sorted(b["broker_id"] for b in a.describe_cluster()["brokers"] if not b.get("is_fenced"))
        finally:
            a.close()
    return views


class LeaderWatch:
    """Polls every partition of ``topic`` for a leader, in a thread, until stopped."""

    def __init__(self, cluster: LocalKafkaCluster, topic: str) -> None:
        self.cluster, self.topic = cluster, topic
        self.polls, self.offline = 0, []  # type: int, list[str]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="leader-watch", daemon=True)

    def _run(self) -> None:
        a = admin(self.cluster.app_settings())
        try:
            while not self._stop.wait(0.5):
                try:
                    (described,) = a.describe_topics([self.topic])
                except Exception:  # noqa: BLE001 - a broker of the bootstrap list stopping; asked again
                    continue
                self.polls += 1
                self.offline += [f"{self.topic}-{p['partition_index']}" for p in described["partitions"] if p["leader_id"] < 0]
        finally:
            a.close()

    def __enter__(self) -> "LeaderWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def scale_brokers(cluster: LocalKafkaCluster, day_two: DayTwoResult, workdir: Path, *,
                  write_interval_s: float = 0.02) -> BrokerScaling:
    """kafka.brokers 3 -> 5 -> 3 on the running dedicated ``cluster`` left by
    :func:`roll_and_drain`, by the chart's procedure (:func:`~final_problem.charts.kafka.broker_membership`),
    with the project's producer writing acks=all to ``day_two``'s topic throughout: grow (the
    deploy of the 5-broker ConfigMap first, then the steps), a shrink asked to skip the move
    (refused: the new brokers hold replicas), then the shrink."""
    (brokers,) = [s for s in day_two.podsets if s.name == KafkaChart.workload("broker")[0]]
    config_dir = workdir / "kafka-config"
    runner = LocalRunner({brokers.name: brokers}, exec_local(cluster, config_dir))
    three, five = (KafkaProps.for_profile(EKS, brokers=n) for n in (3, 5))
    topic = day_two.topic
    p = producer(cluster.app_settings(), linger_ms=0)

    def write(seq: int) -> None:
        time.sleep(write_interval_s)
        p.send(topic, value=str(seq).encode()).get(timeout=60)

    writer = LiveWriter(write, name="kafka-writer")
    with LeaderWatch(cluster, topic) as leaders, Refusals() as refusals:
        writer.start()
        writer.wait_for(20, timeout_s=60)
        try:
            _write_config(rendered_with(brokers=5), config_dir)  # the deploy that comes first
            added = cluster.add_brokers(2)
            steps_up = broker_membership(three, five, "kafka")
            up_at = time.monotonic()
            scaling.run(steps_up, runner)
            up_end = time.monotonic()
            replicas_up = _replicas(cluster, topic)
            try:
                scaling.run(broker_membership(five, three, "kafka", move_partitions=False), runner)
                refusal = ""
            except Refused as e:
                refusal = str(e)
            pods_after_refusal = len(brokers.pods)
            steps_down = broker_membership(five, three, "kafka")
            down_at = time.monotonic()
            scaling.run(steps_down, runner)
            down_end = time.monotonic()
            cluster.forget_brokers(added)
            _write_config(rendered_with(brokers=3), config_dir)  # the deploy that follows
            time.sleep(1.0)
        finally:
            acks = writer.stop()
            close(p, timeout_s=0)
            writer.join()
    present = read_numbers(cluster, topic)
    return BrokerScaling(
        up_s=up_end - up_at, down_s=down_end - down_at,
        up_outage_s=longest_gap_s([a for a in acks if up_at <= a.at <= up_end], up_at, up_end),
        down_outage_s=longest_gap_s([a for a in acks if down_at <= a.at <= down_end], down_at, down_end),
        acknowledged=len(acks), lost=[a.seq for a in acks if a.seq not in present], refusals=refusals.counts,
        replicas_up=replicas_up, replicas_down=_replicas(cluster, topic),
        leader_polls=leaders.polls, offline=leaders.offline, refusal=refusal, pods_after_refusal=pods_after_refusal,
        views=_views(cluster), steps_up=[s.describe() for s in steps_up], steps_down=[s.describe() for s in steps_down],
    )


def rendered_with(**kafka: Any) -> list[dict[str, Any]]:
    """The Kafka chart's objects for EKS with these ``kafka`` settings."""
    settings = config.from_mapping({"components": ["base", "kafka"], "kafka": kafka})
    return manifests.chart_objects(manifests.render(settings, "eks")["kafka"])
