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
upgrade (ZooKeeper 3.9 Administrator's Guide, "Upgrading"). Cadence (``CADENCE_UPGRADE_FROM``,
its server from ``make cadence-tools``) updates its schema first, with the new release's
schema tool while the old servers serve, then rolls the four Deployments (maxSurge and
maxUnavailable as rendered) onto the new server; a client starts workflows throughout and
every acknowledged one must complete.

At the end every acknowledged write is read back. :class:`Rehearsal` holds what a
reviewer asks of an upgrade: writes acknowledged, refused and lost, the longest time no
write was acknowledged, how long the roll took, and every member's version afterwards.

The pods, their rendered readiness probes run here and their grace periods come from the
rollout tests' wiring (:func:`final_problem.local.kafka_rollout.kafka_podsets`,
:meth:`final_problem.local.zookeeper.LocalEnsemble.pod_set`), given the version to start.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import threading
from contextlib import closing
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from final_problem import versions
from final_problem.local.powercut import LiveWriter, losses
from final_problem.local.rollout import Pod, PodSet, Readiness, RolloutResult, roll_statefulset

#: How a rehearsal replaces the pods: as the StatefulSet controller does, or every pod at
#: once (``kubectl delete pods --all`` on an ``OnDelete`` set): the mistake the readiness
#: gating prevents, for checking that a rehearsal notices it.
ROLLS = ("statefulset", "all-at-once")


class UpgradeError(RuntimeError):
    """A rehearsal could not be run (a missing binary, a server that never came up)."""


# -- what a rehearsal reports ------------------------------------------------------------------

@dataclass
class Rehearsal:
    """What one upgrade rehearsal saw."""

    what: str
    #: The roll (and, for Kafka, the finalization), in seconds.
    seconds: float
    acknowledged: int
    #: Write attempts refused or unanswered (each retried until acknowledged).
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
    #: What the client's acknowledged operations are (Cadence's: workflow starts).
    unit: str = "writes"

    def summary(self) -> str:
        return (f"{self.what}: {self.seconds:.0f} s, {self.acknowledged} {self.unit} acknowledged, {self.refused} attempts refused and retried, "
                f"{len(self.lost)} lost, longest {'write outage' if self.unit == 'writes' else 'time without one'} "
                f"{self.longest_outage_s:.2f} s "
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


@dataclass
class _Rolled:
    """What :func:`_roll_under_writes` saw: the change's seconds and result, the writes
    acknowledged, when the writer stopped, and the longest time none was acknowledged."""

    seconds: float
    result: Any
    acks: list[Any]
    stopped_at: float
    outage_s: float


def _roll_under_writes(writer: LiveWriter, starts: "StartTimes", switch: Callable[[], None],
                       change: Callable[[], Any], *, settle_s: float) -> _Rolled:
    """With ``writer`` writing: 20 writes and ``settle_s`` first, then ``switch`` to the new
    version, ``change`` (the roll), ``settle_s`` again, and the writer stopped (the caller
    joins it, and closes its client, in its own ``finally``)."""
    writer.wait_for(20, timeout_s=60)
    time.sleep(settle_s)
    switch()
    starts.clear()
    rolled_at = time.monotonic()
    result = change()
    seconds = time.monotonic() - rolled_at
    time.sleep(settle_s)
    acks = writer.stop()
    stopped_at = time.monotonic()
    return _Rolled(seconds=seconds, result=result, acks=acks, stopped_at=stopped_at,
                   outage_s=writer.longest_gap_s(since=rolled_at, until=stopped_at))


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


def _timed(podset: PodSet, starts: "StartTimes") -> PodSet:
    """Every pod ``podset`` makes from now on has its start timed by ``starts``."""
    make = podset.make_pod

    def make_pod(ordinal: int) -> Pod:
        pod = make(ordinal)
        assert pod.readiness is not None
        pod.start = starts.timed(pod.start, pod.readiness)
        return pod

    podset.make_pod = make_pod
    return podset


def kafka_upgrade(workdir: Path, *, layout: str = "combined", roll: str = "statefulset",
                  from_version: str = versions.KAFKA_UPGRADE_FROM, to_version: str = versions.KAFKA_VERSION,
                  settle_s: float = 3.0, ready_timeout_s: float = 240) -> Rehearsal:
    """Kafka ``from_version`` -> ``to_version`` in ``layout`` (``combined``: the Pi's,
    ``dedicated``: EKS's controllers then brokers), an acks=all producer writing throughout;
    then ``metadata.version`` finalized and a downgrade tried."""
    from kafka.errors import KafkaError

    from final_problem.clients.kafka import close, producer
    from final_problem.local.kafka import KafkaClusterError, LocalKafkaCluster, missing_binaries
    from final_problem.local.kafka_rollout import kafka_podsets, read_numbers, rendered

    if missing := missing_binaries(from_version, to_version):
        raise UpgradeError(f"cannot run Kafka here, missing: {', '.join(missing)}")
    profile = "pi" if layout == "combined" else "eks"
    version = {"now": from_version}
    # Every node serves its metrics: the rendered readiness script reads them.
    with LocalKafkaCluster(workdir=workdir, layout=layout, version=from_version, metrics=True) as cluster:
        starts = StartTimes()
        sets = [_timed(s, starts) for s in
                kafka_podsets(cluster, rendered(profile), workdir / "pods", version=lambda: version["now"])]
        cluster.format_all()
        for podset in sets:
            podset.launch(ready_timeout_s=ready_timeout_s)
        cluster.wait_healthy()
        before = kafka_features(cluster)
        topic = cluster.create_topic(partitions=3, replication_factor=3, prefix="upgrade")
        p = producer(cluster.app_settings(), linger_ms=0, request_timeout_ms=5000)
        # A record sent again after a timeout may be there twice: the check counts values.
        writer = LiveWriter(lambda seq: p.send(topic, value=str(seq).encode()).get(timeout=15),
                            retry_on=(KafkaError,), name="kafka-writer").start()
        def roll_and_finalize() -> None:
            for podset in sets:
                _roll(podset, roll, ready_timeout_s=ready_timeout_s)
            cluster.tool("org.apache.kafka.tools.FeatureCommand", [
                "--bootstrap-server", cluster.bootstrap_servers, "--command-config", str(cluster.admin_properties),
                "upgrade", "--release-version", release(to_version)])

        try:
            rolled = _roll_under_writes(writer, starts, lambda: version.update(now=to_version), roll_and_finalize,
                                        settle_s=settle_s)
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
        present = set(read_numbers(cluster, topic))
        result = losses(rolled.acks, present, frozen_at=rolled.stopped_at, started_at=writer.started_at)
        return Rehearsal(
            what=f"Kafka {from_version} -> {to_version} ({layout}, {roll})", seconds=rolled.seconds,
            acknowledged=result.acknowledged, refused=sum(writer.retried.values()), lost=result.lost,
            longest_outage_s=rolled.outage_s,
            shortest_start_s=starts.shortest(),
            versions_after={n: cluster.reported_version(n) for n in cluster.procs},
            facts={"metadata.version before": before.get("metadata.version"),
                   "metadata.version after": after.get("metadata.version"),
                   "metadata.version after the downgrade": kafka_features(cluster).get("metadata.version"),
                   "downgrade refused": downgrade,
                   "out of memory": cluster.out_of_memory(),
                   # The headroom through the roll: each node's peak RSS and charge against its limit.
                   "memory": [str(usage) for usage in cluster.groups.usage()]},
        )


# -- ZooKeeper ---------------------------------------------------------------------------------

def zookeeper_upgrade(workdir: Path, *, roll: str = "statefulset",
                      from_version: str = versions.ZOOKEEPER_UPGRADE_FROM,
                      to_version: str = versions.ZOOKEEPER_VERSION, settle_s: float = 3.0,
                      ready_timeout_s: float = 120) -> Rehearsal:
    """ZooKeeper ``from_version`` -> ``to_version`` on the Pi profile's ensemble, a kazoo
    session creating one znode per write throughout (each acknowledged by a quorum)."""
    from kazoo.exceptions import KazooException, NodeExistsError
    from kazoo.handlers.threading import KazooTimeoutError

    from final_problem.clients.zookeeper import ZooKeeperClient
    from final_problem.local.zookeeper import LocalEnsemble, missing_binaries, rendered_ensemble

    if missing := missing_binaries(from_version, to_version):
        raise UpgradeError(f"cannot run ZooKeeper here, missing: {', '.join(missing)}")
    version = {"now": from_version}
    workload, pdb = rendered_ensemble()
    with LocalEnsemble(workdir=workdir, version=from_version) as ensemble:
        starts = StartTimes()
        podset = _timed(ensemble.pod_set(workload, pdb, version=lambda: version["now"]), starts)
        podset.launch(ready_timeout_s=ready_timeout_s)
        ensemble.wait_for_quorum(timeout=30)
        client = ZooKeeperClient(hosts=ensemble.hosts, timeout=5, session_timeout=10).start()
        try:
            client.kazoo.ensure_path("/upgrade")
            session = client.kazoo.client_id
            def write(seq: int) -> None:
                try:
                    client.kazoo.create_async(f"/upgrade/{seq:08d}", b"x").get(timeout=5)
                except NodeExistsError:
                    pass  # the attempt before, whose answer the restart cut off, was applied

            writer = LiveWriter(write, retry_on=(KazooException, KazooTimeoutError), name="zookeeper-writer").start()
            try:
                rolled = _roll_under_writes(writer, starts, lambda: version.update(now=to_version),
                                            lambda: _roll(podset, roll, ready_timeout_s=ready_timeout_s),
                                            settle_s=settle_s)
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
        found = losses(rolled.acks, present, frozen_at=rolled.stopped_at, started_at=writer.started_at)
        return Rehearsal(
            what=f"ZooKeeper {from_version} -> {to_version} ({roll})", seconds=rolled.result.seconds,
            acknowledged=found.acknowledged, refused=sum(writer.retried.values()), lost=found.lost,
            longest_outage_s=rolled.outage_s,
            shortest_start_s=starts.shortest(),
            versions_after={myid: ensemble.reported_version(myid) for myid in ensemble.procs},
            facts={"same session": same_session, "session states": states,
                   "out of heap": [i for i in ensemble.procs if "OutOfMemoryError" in ensemble.log(i)]},
        )


# -- PostgreSQL --------------------------------------------------------------------------------

def postgres_upgrade(workdir: Path, *, roll: str = "statefulset",
                     from_version: str = versions.POSTGRES_UPGRADE_FROM, to_version: str = versions.POSTGRES_VERSION,
                     settle_s: float = 3.0, ready_timeout_s: float = 90) -> Rehearsal:
    """PostgreSQL ``from_version`` -> ``to_version`` within its major: the chart's one-pod
    StatefulSet rolled onto the new server on the same data directory (its volume), the
    rendered preStop (a checkpoint, then a fast shutdown) and readiness probe as the kubelet
    runs them, a psql session committing one row per statement throughout and reconnecting
    through the Service as an application's pool does."""
    # Both releases where the server's user can reach them (not under a private work folder).
    binaries = Path(tempfile.mkdtemp(prefix="postgres-releases-"))
    binaries.chmod(0o755)
    try:
        return _postgres_upgrade(binaries, roll=roll, from_version=from_version, to_version=to_version,
                                 settle_s=settle_s, ready_timeout_s=ready_timeout_s)
    finally:
        shutil.rmtree(binaries, ignore_errors=True)


def _postgres_upgrade(binaries: Path, *, roll: str, from_version: str, to_version: str, settle_s: float,
                      ready_timeout_s: float) -> Rehearsal:
    from final_problem.local import LOOPBACK
    from final_problem.local.cadence import rendered_workloads
    from final_problem.local.postgres import LocalPostgres, LocalPostgresError, PsqlWriter, SessionLost, cached_release
    from final_problem.local.rollout import Endpoints, LoadBalancer

    try:
        old_bin, new_bin = cached_release(from_version, binaries), cached_release(to_version, binaries)
    except LocalPostgresError as e:
        raise UpgradeError(str(e)) from e
    statefulset = rendered_workloads()["postgres"]
    table = "upgrade_writes"
    endpoints = Endpoints()
    with LocalPostgres(bin_dir=old_bin) as server, closing(LoadBalancer(endpoints)) as service:
        server.stop()  # from here on the server runs as the StatefulSet's pod
        starts = StartTimes()
        podset = _timed(PodSet(name="postgres", workload=statefulset, pdb=None, pods=[],
                               make_pod=lambda _: server.pod(statefulset), endpoints=endpoints), starts)
        podset.launch(ready_timeout_s=ready_timeout_s)
        before = server.server_version()
        server.psql(f"CREATE TABLE {table} (seq int PRIMARY KEY)")
        session = PsqlWriter(host=LOOPBACK, port=service.port, user=server.user, password=server.password,
                             table=table, bin_dir=server.bin_dir)
        writer = LiveWriter(session.insert, retry_on=(SessionLost,), retry_s=0.1, name="psql-writer").start()
        def new_image() -> None:
            server.bin_dir = new_bin  # the pod's next start runs this server

        try:
            rolled = _roll_under_writes(writer, starts, new_image,
                                        lambda: _roll(podset, roll, ready_timeout_s=ready_timeout_s), settle_s=settle_s)
        finally:
            writer.stop()
            writer.join()
            session.close()
        present = {int(row[0]) for row in server.query(f"SELECT seq FROM {table}")}
        found = losses(rolled.acks, present, frozen_at=rolled.stopped_at, started_at=writer.started_at)
        new_pod = rolled.result.new[0] if rolled.result.new else None
        return Rehearsal(
            what=f"PostgreSQL {from_version} -> {to_version} ({roll})", seconds=rolled.result.seconds,
            acknowledged=found.acknowledged, refused=sum(writer.retried.values()), lost=found.lost,
            longest_outage_s=rolled.outage_s, shortest_start_s=starts.shortest(),
            versions_after={0: server.server_version()},
            facts={"version before": before, "sessions": session.sessions,
                   "new pod events": [e for _, e in new_pod.events] if new_pod else []},
        )


# -- Cadence -----------------------------------------------------------------------------------

#: The order of a Cadence upgrade: the schema Job of the new release first, then the servers
#: (as the chart does: the Job is named after the image, the servers' init container waits for
#: its schema), or the servers first: the mistake the order prevents, for checking that the
#: rehearsal notices it.
CADENCE_ORDERS = ("schema-first", "servers-first")


def cadence_upgrade(workdir: Path, *, order: str = "schema-first",
                    from_version: str = versions.CADENCE_UPGRADE_FROM,
                    to_version: str = versions.CADENCE_VERSION, old_servers_s: float = 3.0) -> Rehearsal:
    """Cadence ``from_version`` -> ``to_version`` on PostgreSQL (the Pi profile's one pod of
    each service, :class:`final_problem.local.cadence_rollout.RolloutPlatform`): the schema
    and every server at ``from_version``; then, while a client starts order workflows
    throughout (and a psql session commits rows), the new release's schema Job (its
    cadence-sql-tool on its schema files, old servers serving), and every Deployment rolled
    onto the new server with the rendered maxSurge/maxUnavailable. Every acknowledged
    workflow must complete with its order's outcome.

    ``acknowledged``/``refused``/``lost`` count workflow starts (``lost``: the positions of
    acknowledged ones that did not complete as ordered); the longest outage is the longest
    time without an acknowledged start, ``shortest_start_s`` the quickest start of a new
    history pod, to its joining the ring (its rendered readiness probe); both vary from run to
    run on a loaded machine (0.4 to 1.7 s and 0.5 to 5.2 s seen), so neither bounds the
    other, and the rehearsal's checks are the completions and the refused starts.

    After the schema Job the old servers serve alone on the updated schema for
    ``old_servers_s`` before the roll (on a cluster the new pods' init container finds the
    schema current at its next check, every 5 s)."""
    from final_problem.local import cadence as tools
    from final_problem.local.cadence_rollout import RolloutPlatform, under_load
    from final_problem.local.postgres import LocalPostgresError
    from final_problem.local.rollout import RolloutError

    if order not in CADENCE_ORDERS:
        raise ValueError(f"order {order!r}: use one of {', '.join(CADENCE_ORDERS)}")
    try:
        for version in (from_version, to_version):
            tools.server_binary(version)
            tools.schema_dir(version)
        tools.require_binaries()
    except tools.CadenceToolsMissing as e:
        raise UpgradeError(f"cannot run Cadence here: {e}") from e
    try:
        platform = RolloutPlatform(workdir, server_version=from_version)
    except LocalPostgresError as e:
        raise UpgradeError(str(e)) from e
    try:
        try:
            platform.start()
        except (tools.LocalCadenceError, LocalPostgresError) as e:
            raise UpgradeError(f"Cadence {from_version} did not start: {e}") from e
        assert platform.cadence is not None
        cadence = platform.cadence
        starts = {"frontend": StartTimes(), "history": StartTimes()}
        make_pod = platform._pod

        def timed_pod(instance: str) -> Pod:
            pod = make_pod(instance)
            service = cadence.instances[instance]
            if service in starts:
                assert pod.readiness is not None
                pod.start = starts[service].timed(pod.start, pod.readiness)
            return pod

        platform._pod = timed_pod  # type: ignore[method-assign]
        before = {"schema": platform.schema_versions(), "servers": cadence.running_versions()}
        marks: dict[str, float] = {}

        def schema_job() -> None:
            began = time.monotonic()
            job = platform.run_schema_job(to_version)
            if job.returncode != 0:
                raise UpgradeError(f"the {to_version} schema Job failed: {job.stderr[-2000:]}")
            marks["schema_s"] = time.monotonic() - began

        def upgrade(_writer: LiveWriter) -> None:
            marks["began"] = time.monotonic()
            if order == "schema-first":
                schema_job()
                marks["schema_done"] = time.monotonic()
                time.sleep(old_servers_s)
            cadence.server_version = to_version  # the Deployments' new pod template
            marks["rolled"] = rolled = time.monotonic()
            platform.roll_cadence()
            marks["roll_s"] = time.monotonic() - rolled
            if order == "servers-first":
                schema_job()
            marks["ended"] = time.monotonic()

        try:
            outcome = under_load(platform, upgrade)
        except (RolloutError, TimeoutError) as e:
            raise UpgradeError(f"Cadence {from_version} -> {to_version} ({order}): {e}") from e
        acked = outcome.starts.acked
        wrong = {workflow_id for workflow_id, _ in outcome.wrong}
        return Rehearsal(
            what=f"Cadence {from_version} -> {to_version} ({order})", seconds=marks["ended"] - marks["began"],
            acknowledged=len(acked), refused=len(outcome.starts.failed),
            lost=tuple(i for i, (execution, _, _) in enumerate(acked) if execution.workflow_id in wrong),
            longest_outage_s=outcome.starts.longest_gap_s(), shortest_start_s=starts["history"].shortest(),
            versions_after=dict(enumerate(cadence.running_versions().values())),
            facts={"schema before": before["schema"], "schema after": platform.schema_versions(),
                   "servers before": before["servers"], "servers after": cadence.running_versions(),
                   "schema job s": marks.get("schema_s"), "roll s": marks.get("roll_s"),
                   "workflows started before the upgrade": sum(at < marks["began"] for _, _, at in acked),
                   "workflows started during the upgrade": sum(marks["began"] <= at <= marks["ended"] for _, _, at in acked),
                   "workflows started on the old servers after the schema update": sum(
                       marks.get("schema_done", marks["rolled"]) <= at < marks["rolled"] for _, _, at in acked),
                   "frontend start s": starts["frontend"].shortest(), "history start s": starts["history"].shortest(),
                   "workflows that ran an activity again": outcome.again,
                   "lost or wrong": outcome.wrong[:5],
                   "psql commits": len(outcome.acks), "psql commits lost": len(outcome.lost_rows),
                   "psql longest outage s": outcome.outage_s},
            unit="workflow starts",
        )
    finally:
        platform.close()
