"""Rehearse version upgrades on real servers, rolled as Kubernetes rolls them, under live writes.

Each rehearsal starts the component at the previous release line (``KAFKA_UPGRADE_FROM``,
``ZOOKEEPER_UPGRADE_FROM`` in :mod:`final_problem.versions`, jars from ``make kafka`` and
``make zookeeper``), from the configuration the chart renders, under each pod's limits, with
a client writing throughout (:class:`final_problem.local.powercut.LiveWriter`: every write
acknowledged by the servers is counted). It then changes the image version as a deploy
would: the rendered StatefulSet is rolled by :func:`final_problem.local.rollout.roll_statefulset`
(highest ordinal first; the next pod only once the replaced one passes the rendered readiness
probe, run here as the kubelet runs it, and stays Ready for ``minReadySeconds``), each new
pod starting the same data directory (its PersistentVolumeClaim) with the new version's jars.
Kafka then finalizes the upgrade as its upgrade notes say (Kafka 4.4 docs, "Upgrading
Servers to 4.4.x from any version 3.3.x through 4.3.x": upgrade the brokers one at a time,
then ``kafka-features.sh upgrade --release-version 4.4``) and checks that the finalized
``metadata.version`` cannot be downgraded ("cluster metadata downgrade is not supported").
ZooKeeper's 3.9 patches share one data format and protocol: a rolling restart is the whole
upgrade (ZooKeeper 3.9 Administrator's Guide, "Upgrading").

At the end every acknowledged write is read back. :class:`Rehearsal` holds what a
reviewer asks of an upgrade: writes acknowledged, refused and lost, the longest time no
write was acknowledged, how long the roll took, and every member's version afterwards.

The rendered readiness probe becomes a local one in one place, :func:`local_readiness`:
``httpGet`` and ``tcpSocket`` probes with their ports mapped, ``exec`` probes with the
container's ports and paths rewritten to this host's.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from final_problem import config, manifests, versions
from final_problem.local import LOOPBACK
from final_problem.local.powercut import LiveWriter, losses
from final_problem.local.rollout import (
    Endpoints, ExecProbe, Pod, PodSet, Readiness, RolloutResult, rendered_readiness, roll_statefulset,
)

#: The components rendered for a rehearsal: the component and what its chart requires.
_COMPONENTS = {"kafka": ["base", "kafka"], "zookeeper": ["base", "zookeeper"]}
#: How a rehearsal replaces the pods: as the StatefulSet controller does, or every pod at
#: once (``kubectl delete pods --all`` on an ``OnDelete`` set): the mistake the readiness
#: gating prevents, for checking that a rehearsal notices it.
ROLLS = ("statefulset", "all-at-once")


class UpgradeError(RuntimeError):
    """A rehearsal could not be run (a missing binary, a server that never came up)."""


# -- the rendered workloads and their probes, run here ----------------------------------------

def rendered_workloads(component: str, profile: str) -> list[tuple[dict[str, Any], dict[str, Any] | None]]:
    """The component's StatefulSets as rendered for ``profile`` (default settings), each with
    its PodDisruptionBudget, in the chart's order."""
    charts = manifests.render(config.from_mapping({"components": _COMPONENTS[component]}), profile)
    objects = manifests.chart_objects(charts[component])
    pdbs = {o["metadata"]["name"]: o for o in objects if o["kind"] == "PodDisruptionBudget"}
    return [(o, pdbs.get(o["metadata"]["name"])) for o in objects if o["kind"] == "StatefulSet"]


def container_of(workload: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in workload["spec"]["template"]["spec"]["containers"] if c["name"] == name)


def local_ports(container: dict[str, Any], by_name: Mapping[str, int]) -> dict[int, int]:
    """Rendered container port -> this host's port, matched by the ports' names."""
    return {p["containerPort"]: by_name[p["name"]] for p in container.get("ports", []) if p.get("name") in by_name}


def rewrite(argv: Sequence[str], ports: Mapping[int, int], paths: Mapping[str, str]) -> list[str]:
    """A rendered command with the container's paths (longest first) and port numbers
    replaced by this host's."""
    out = []
    for arg in argv:
        for old in sorted(paths, key=len, reverse=True):
            arg = arg.replace(old, paths[old])
        for old_port, new_port in ports.items():
            arg = re.sub(rf"(?<![0-9]){old_port}(?![0-9])", str(new_port), arg)
        out.append(arg)
    return out


def local_readiness(container: dict[str, Any], ports: Mapping[int, int], *, paths: Mapping[str, str] = {},
                    env: dict[str, str] | None = None) -> Readiness:
    """The container's rendered readiness probe as the kubelet would run it, on this host."""
    probe = container["readinessProbe"]
    if "exec" in probe:
        return ExecProbe.rendered(probe, rewrite(probe["exec"]["command"], ports, paths), env=env)
    return rendered_readiness(container, dict(ports))


# -- what a rehearsal reports ------------------------------------------------------------------

@dataclass
class Rehearsal:
    """What one upgrade rehearsal saw."""

    what: str
    #: The roll (and, for Kafka, the finalization), in seconds.
    seconds: float
    acknowledged: int
    refused: int
    lost: tuple[int, ...]
    #: The longest time no write was acknowledged during the roll.
    longest_outage_s: float
    #: The quickest start of a new pod during the roll: from its process start to the first
    #: pass of its readiness check (polled every 0.1 s, not at the probe's period). A roll
    #: that leaves too few members to serve stops writes for at least this long.
    shortest_start_s: float
    #: Every member's version after the roll, as the server itself reports it.
    versions_after: dict[int, str | None]
    #: Component-specific findings (metadata.version before and after, a refused downgrade,
    #: session state changes).
    facts: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        return (f"{self.what}: {self.seconds:.0f} s, {self.acknowledged} writes acknowledged, {self.refused} refused, "
                f"{len(self.lost)} lost, longest write outage {self.longest_outage_s:.2f} s "
                f"(a pod's start took {self.shortest_start_s:.1f} s or more)")


def _roll(podset: PodSet, roll: str, *, ready_timeout_s: float) -> RolloutResult:
    if roll == "statefulset":
        return roll_statefulset(podset, ready_timeout_s=ready_timeout_s)
    if roll != "all-at-once":
        raise ValueError(f"roll {roll!r}: use one of {', '.join(ROLLS)}")
    start = time.monotonic()
    deleting = [threading.Thread(target=p.delete, args=(podset.endpoints,), daemon=True) for p in podset.pods]
    for t in deleting:
        t.start()
    for t in deleting:
        t.join()
    new = []
    for ordinal in range(len(podset.pods)):
        pod = podset.make_pod(ordinal)
        pod.ordinal, pod.endpoints = ordinal, podset.endpoints
        podset.pods[ordinal] = pod.run()
        new.append(pod)
    for pod in new:
        pod.wait_ready(ready_timeout_s, min_ready_s=podset.min_ready_s)
    return RolloutResult(seconds=time.monotonic() - start, new=new)


class StartTimes:
    """How long each pod started through :meth:`timed` took from its process start to the
    first pass of its readiness check, polled every ``interval_s``."""

    def __init__(self, interval_s: float = 0.1) -> None:
        self.interval_s = interval_s
        self.seconds: list[float] = []
        self._lock = threading.Lock()

    def clear(self) -> None:
        with self._lock:
            self.seconds.clear()

    def shortest(self) -> float:
        with self._lock:
            return min(self.seconds) if self.seconds else float("nan")

    def timed(self, start: Callable[[], Any], readiness: Readiness) -> Callable[[], Any]:
        def run() -> Any:
            proc = start()
            began = time.monotonic()

            def watch() -> None:
                while proc.poll() is None:
                    if readiness.passes():
                        with self._lock:
                            self.seconds.append(time.monotonic() - began)
                        return
                    time.sleep(self.interval_s)

            threading.Thread(target=watch, name="start-timer", daemon=True).start()
            return proc
        return run


# -- Kafka -------------------------------------------------------------------------------------

def release(version: str) -> str:
    """A Kafka version's release line as ``--release-version`` takes it: ``4.4.0`` -> ``4.4``."""
    return ".".join(version.split(".")[:2])


def kafka_features(cluster: Any) -> dict[str, str]:
    """Each feature's finalized level (``kafka-features describe``, run with the pinned tools)."""
    out = cluster.tool("org.apache.kafka.tools.FeatureCommand", [
        "--bootstrap-server", cluster.bootstrap_servers, "--command-config", str(cluster.admin_properties), "describe"])
    found = {}
    for line in out.splitlines():
        match = re.match(r"Feature:\s*(\S+).*FinalizedVersionLevel:\s*(\S+)", line)
        if match:
            found[match.group(1)] = match.group(2)
    return found


def kafka_read_values(cluster: Any, topic: str, *, timeout_s: float = 120) -> set[int]:
    """Every sequence number in ``topic``: each partition read up to the high watermark its
    leader reports with the records (the writes have ended)."""
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(**cluster.app_settings().common(), group_id=None, enable_auto_commit=False,
                      client_id=f"check-{uuid.uuid4().hex[:8]}")
    try:
        numbers = cluster.wait_for(f"the partitions of {topic}", lambda: c.partitions_for_topic(topic), timeout=60)
        partitions = [TopicPartition(topic, n) for n in sorted(numbers)]
        c.assign(partitions)
        c.seek_to_beginning()
        seen: set[int] = set()

        def read_to_the_end() -> bool:
            for batch in c.poll(timeout_ms=500).values():
                seen.update(int(r.value) for r in batch)
            ends = [c.highwater(tp) for tp in partitions]
            return all(end is not None and c.position(tp) >= end for tp, end in zip(partitions, ends, strict=True))

        cluster.wait_for(f"every record of {topic}", read_to_the_end, timeout=timeout_s, interval=0, retry_on=())
        return seen
    finally:
        c.close()


def _kafka_node_ids(cluster: Any, workload: dict[str, Any]) -> list[int]:
    """The node id of each ordinal of a rendered Kafka StatefulSet (ids as the chart gives
    them: controllers and combined nodes from 0, brokers from BROKER_ID_OFFSET)."""
    name = workload["metadata"]["name"]
    if name.endswith("-controller"):
        return sorted(cluster.controller_ids)
    if name.endswith("-broker"):
        return sorted(cluster.broker_ids)
    return sorted(cluster.procs)


def _kafka_podset(cluster: Any, workload: dict[str, Any], pdb: dict[str, Any] | None,
                  version: Callable[[], str], starts: StartTimes) -> PodSet:
    from final_problem.charts.kafka import KAFKA_HOME
    from final_problem.local.kafka import kafka_home

    container = container_of(workload, "kafka")
    grace = workload["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30)
    ids = _kafka_node_ids(cluster, workload)

    def make_pod(ordinal: int) -> Pod:
        node_id, at = ids[ordinal], version()
        node = cluster.config.node(node_id)
        by_name = {"client": node.client_port, "controller": node.controller_port,
                   "replication": node.replication_port}
        if node_id in cluster.metrics_ports:
            by_name["metrics"] = cluster.metrics_ports[node_id]
        ports = local_ports(container, by_name)
        readiness = local_readiness(container, ports, paths={KAFKA_HOME: str(kafka_home(at))})
        return Pod(
            name=f"{workload['metadata']['name']}-{ordinal}",
            start=starts.timed(lambda: cluster.start(node_id, at), readiness),
            container=container, grace_s=grace, ports=ports,
            address=(LOOPBACK, node.client_port if node.is_broker else node.controller_port),
            cleanup=lambda: cluster.kill(node_id), ordinal=ordinal, readiness=readiness,
        )

    return PodSet(name=workload["metadata"]["name"], workload=workload, pdb=pdb, pods=[], make_pod=make_pod,
                  endpoints=Endpoints())


def kafka_upgrade(workdir: Path, *, layout: str = "combined", roll: str = "statefulset",
                  from_version: str = versions.KAFKA_UPGRADE_FROM, to_version: str = versions.KAFKA_VERSION,
                  settle_s: float = 3.0, ready_timeout_s: float = 240) -> Rehearsal:
    """Kafka ``from_version`` -> ``to_version`` in ``layout`` (``combined``: the Pi's,
    ``dedicated``: EKS's controllers then brokers), an acks=all producer writing throughout;
    then ``metadata.version`` finalized and a downgrade tried."""
    from kafka.errors import KafkaError

    from final_problem.clients.kafka import close, producer
    from final_problem.local.kafka import KafkaClusterError, LocalKafkaCluster, missing_binaries

    if missing := missing_binaries(from_version, to_version):
        raise UpgradeError(f"cannot run Kafka here, missing: {', '.join(missing)}")
    profile = "pi" if layout == "combined" else "eks"
    version = {"now": from_version}
    with LocalKafkaCluster(workdir=workdir, layout=layout, version=from_version,
                           metrics=layout == "combined") as cluster:
        starts = StartTimes()
        sets = [_kafka_podset(cluster, w, pdb, lambda: version["now"], starts)
                for w, pdb in rendered_workloads("kafka", profile)]
        cluster.format_all()
        for podset in sets:
            podset.launch(ready_timeout_s=ready_timeout_s)
        cluster.wait_healthy()
        before = kafka_features(cluster)
        topic = cluster.create_topic(partitions=3, replication_factor=3, prefix="upgrade")
        p = producer(cluster.app_settings(), linger_ms=0, request_timeout_ms=5000)
        writer = LiveWriter(lambda seq: p.send(topic, value=str(seq).encode()).get(timeout=15),
                            refused=(KafkaError,), name="kafka-writer").start()
        try:
            writer.wait_for(20, timeout_s=60)
            time.sleep(settle_s)
            version["now"] = to_version
            starts.clear()
            rolled_at = time.monotonic()
            for podset in sets:
                _roll(podset, roll, ready_timeout_s=ready_timeout_s)
            cluster.tool("org.apache.kafka.tools.FeatureCommand", [
                "--bootstrap-server", cluster.bootstrap_servers, "--command-config", str(cluster.admin_properties),
                "upgrade", "--release-version", release(to_version)])
            seconds = time.monotonic() - rolled_at
            time.sleep(settle_s)
            acks = writer.stop()
            outage = writer.longest_outage_s(since=rolled_at)
        finally:
            writer.stop()
            close(p, timeout_s=5)
            writer.join()
        after = kafka_features(cluster)
        try:
            cluster.tool("org.apache.kafka.tools.FeatureCommand", [
                "--bootstrap-server", cluster.bootstrap_servers, "--command-config", str(cluster.admin_properties),
                "downgrade", "--release-version", release(from_version)])
            downgrade = None
        except KafkaClusterError as e:
            # The tool's own line among the client's log lines.
            downgrade = next((line.strip() for line in str(e).splitlines() if line.startswith("Could not")), str(e))
        present = kafka_read_values(cluster, topic)
        result = losses(acks, present, frozen_at=writer.stopped_at or 0.0, started_at=writer.started_at)
        return Rehearsal(
            what=f"Kafka {from_version} -> {to_version} ({layout}, {roll})", seconds=seconds,
            acknowledged=result.acknowledged, refused=writer.refused, lost=result.lost, longest_outage_s=outage,
            shortest_start_s=starts.shortest(),
            versions_after={n: cluster.reported_version(n) for n in cluster.procs},
            facts={"metadata.version before": before.get("metadata.version"),
                   "metadata.version after": after.get("metadata.version"),
                   "metadata.version after the downgrade": kafka_features(cluster).get("metadata.version"),
                   "downgrade refused": downgrade,
                   "out of memory": cluster.out_of_memory()},
        )


# -- ZooKeeper ---------------------------------------------------------------------------------

def _zookeeper_podset(ensemble: Any, workload: dict[str, Any], pdb: dict[str, Any] | None,
                      version: Callable[[], str], starts: StartTimes) -> PodSet:
    from final_problem.charts.zookeeper import ZOOKEEPER_HOME
    from final_problem.local.zookeeper import zookeeper_home

    container = container_of(workload, "zookeeper")
    grace = workload["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30)

    def make_pod(ordinal: int) -> Pod:
        myid, at = ordinal + 1, version()  # myid = ordinal + 1 (the chart's start script)
        member = ensemble.procs[myid].member
        by_name = {"client": member.client_port, "quorum": member.quorum_port, "election": member.election_port,
                   "metrics": ensemble.metrics_ports[myid]}
        ports = local_ports(container, by_name)
        readiness = local_readiness(container, ports, paths={ZOOKEEPER_HOME: str(zookeeper_home(at))})
        return Pod(
            name=f"{workload['metadata']['name']}-{ordinal}",
            start=starts.timed(lambda: ensemble.start(myid, at), readiness),
            container=container, grace_s=grace, ports=ports, address=(LOOPBACK, member.client_port),
            cleanup=lambda: ensemble.kill(myid), ordinal=ordinal, readiness=readiness,
        )

    return PodSet(name=workload["metadata"]["name"], workload=workload, pdb=pdb, pods=[], make_pod=make_pod,
                  endpoints=Endpoints())


def zookeeper_upgrade(workdir: Path, *, roll: str = "statefulset",
                      from_version: str = versions.ZOOKEEPER_UPGRADE_FROM,
                      to_version: str = versions.ZOOKEEPER_VERSION, settle_s: float = 3.0,
                      ready_timeout_s: float = 120) -> Rehearsal:
    """ZooKeeper ``from_version`` -> ``to_version`` on the Pi profile's ensemble, a kazoo
    session creating one znode per write throughout (each acknowledged by a quorum)."""
    from kazoo.exceptions import KazooException
    from kazoo.handlers.threading import KazooTimeoutError

    from final_problem.clients.zookeeper import ZooKeeperClient
    from final_problem.local.zookeeper import LocalEnsemble, missing_binaries

    if missing := missing_binaries(from_version, to_version):
        raise UpgradeError(f"cannot run ZooKeeper here, missing: {', '.join(missing)}")
    version = {"now": from_version}
    ((workload, pdb),) = rendered_workloads("zookeeper", "pi")
    with LocalEnsemble(workdir=workdir, version=from_version) as ensemble:
        starts = StartTimes()
        podset = _zookeeper_podset(ensemble, workload, pdb, lambda: version["now"], starts)
        podset.launch(ready_timeout_s=ready_timeout_s)
        ensemble.wait_for_quorum(timeout=30)
        client = ZooKeeperClient(hosts=ensemble.hosts, timeout=5, session_timeout=10).start()
        try:
            client.kazoo.ensure_path("/upgrade")
            session = client.kazoo.client_id
            writer = LiveWriter(lambda seq: client.kazoo.create_async(f"/upgrade/{seq:08d}", b"x").get(timeout=5),
                                refused=(KazooException, KazooTimeoutError), name="zookeeper-writer").start()
            try:
                writer.wait_for(20, timeout_s=60)
                time.sleep(settle_s)
                version["now"] = to_version
                starts.clear()
                rolled_at = time.monotonic()
                result = _roll(podset, roll, ready_timeout_s=ready_timeout_s)
                time.sleep(settle_s)
                acks = writer.stop()
                outage = writer.longest_outage_s(since=rolled_at)
            finally:
                writer.stop()
                writer.join()
            ensemble.wait_for_quorum(timeout=60)
            # Each path once, read from a member in sync with the leader.
            client.kazoo.sync("/upgrade")
            present = {int(name) for name in client.kazoo.get_children("/upgrade")}
            same_session = client.kazoo.client_id == session
            states = list(client.states)
        finally:
            client.close()
        found = losses(acks, present, frozen_at=writer.stopped_at or 0.0, started_at=writer.started_at)
        return Rehearsal(
            what=f"ZooKeeper {from_version} -> {to_version} ({roll})", seconds=result.seconds,
            acknowledged=found.acknowledged, refused=writer.refused, lost=found.lost, longest_outage_s=outage,
            shortest_start_s=starts.shortest(),
            versions_after={myid: ensemble.reported_version(myid) for myid in ensemble.procs},
            facts={"same session": same_session, "session states": states,
                   "out of heap": [i for i in ensemble.procs if "OutOfMemoryError" in ensemble.log(i)]},
        )
