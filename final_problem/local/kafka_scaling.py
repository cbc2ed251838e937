"""Grow and shrink the chart's KRaft controller quorum on a local cluster, as ``final-problem
scale kafka.controllers=N --apply`` does on a cluster, while a producer writes.

The steps are the chart's own (:func:`final_problem.scaling.steps_for`), run by
:class:`~final_problem.local.rollout.LocalRunner` over the cluster's StatefulSets
(:func:`~final_problem.local.kafka_rollout.kafka_podsets`): a :class:`Scale` adds or deletes
the pods of spare controller nodes (:class:`~final_problem.local.kafka.LocalKafkaCluster`
``spare_controllers``) as the StatefulSet controller does, and an :class:`Exec` runs the
ConfigMap's ``quorum.sh`` here, in the pod's place: the node's own file, jars and passwords
given through the environment the script reads.

Throughout, a watcher asks the quorum for its leader and voters every quarter second
(``DescribeQuorum``, what ``kafka-metadata-quorum.sh describe --status`` prints); at the
end every running node is asked, through its own metrics, how many voters it counts and
which leader it follows.

Used by ``tests/integration/test_kafka_rollout.py`` and ``bench/kafka_rollout.py``.
"""

from __future__ import annotations

import itertools
import subprocess
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from final_problem import scaling
from final_problem.charts.kafka import KafkaChart, KafkaProps
from final_problem.clients.kafka import admin
from final_problem.local import LOOPBACK
from final_problem.local.kafka import LocalKafkaCluster, kafka_home
from final_problem.local.kafka_rollout import Phase, local_argv
from final_problem.local.rollout import LocalRunner, PodSet
from final_problem.profiles import EKS


@dataclass(frozen=True)
class QuorumSample:
    at: float
    #: -1: no leader known, or no answer.
    leader: int
    voters: tuple[int, ...] = ()


class QuorumWatch:
    """Asks the quorum (through the brokers) for its leader and voters every ``interval_s``."""

    def __init__(self, cluster: LocalKafkaCluster, interval_s: float = 0.25) -> None:
        self.cluster, self.interval_s = cluster, interval_s
        self.samples: list[QuorumSample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="quorum-watch", daemon=True)

    def _run(self) -> None:
        client = None
        while not self._stop.is_set():
            try:
                if client is None:
                    client = admin(self.cluster.app_settings(), bootstrap_timeout_ms=5000)
                quorum = client.describe_metadata_quorum()["topics"][0]["partitions"][0]
                sample = QuorumSample(time.monotonic(), quorum["leader_id"],
                                      tuple(sorted(v["replica_id"] for v in quorum["current_voters"])))
            except Exception:  # noqa: BLE001 - any failure to answer counts as no leader seen
                sample = QuorumSample(time.monotonic(), -1)
                if client is not None:
                    client.close()
                    client = None
            self.samples.append(sample)
            self._stop.wait(self.interval_s)
        if client is not None:
            client.close()

    def __enter__(self) -> "QuorumWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def longest_without_leader_s(self) -> float:
        """The longest time from the last sample that showed a leader to the next one."""
        longest, last = 0.0, None
        for s in self.samples:
            if s.leader >= 0:
                if last is not None:
                    longest = max(longest, s.at - last)
                last = s.at
        if last is None:
            return float("inf")
        return longest

    def voter_sets(self) -> list[tuple[int, ...]]:
        """The voter sets seen, in order, each once."""
        seen: list[tuple[int, ...]] = []
        for s in self.samples:
            if s.leader >= 0 and (not seen or seen[-1] != s.voters):
                seen.append(s.voters)
        return seen


def node_view(cluster: LocalKafkaCluster, node_id: int) -> dict[str, float]:
    """Node ``node_id``'s own raft metrics (``kafka_raft_*``: the leader it follows, the
    voters it counts), from its metrics agent."""
    url = f"http://{LOOPBACK}:{cluster.metrics_ports[node_id]}/metrics"
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    view = {}
    for line in text.splitlines():
        if line.startswith("kafka_raft_") and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            view[name] = float(value)
    return view


def exec_local(cluster: LocalKafkaCluster, config_dir: Path, *, wait_s: float = 240) -> Callable[[scaling.Exec], str]:
    """Runs a chart :class:`~final_problem.scaling.Exec` on this host: the ConfigMap's files
    from ``config_dir``, and the pod's node file, jars and passwords through the environment
    ``quorum.sh`` reads (``KAFKA_NODE_CONFIG``, ``KAFKA_HOME``; the chart's defaults are the
    container's paths)."""
    controller, _ = KafkaChart.workload("controller")

    def run(step: scaling.Exec) -> str:
        workload, _, ordinal = step.pod.rpartition("-")
        if workload != controller:
            raise scaling.StepFailed(f"in {step.pod}: no local pod of that name (controllers are {controller}-N)")
        node_id = cluster.controller_ids[int(ordinal)]
        proc = cluster.procs[node_id]
        env = {**cluster._env(), "POD_NAME": step.pod, "KAFKA_NODE_CONFIG": str(proc.directory / "server.properties"),
               "KAFKA_HOME": str(kafka_home(proc.version)), "QUORUM_WAIT_S": str(int(wait_s)),
               "TMPDIR": str(proc.directory)}
        done = subprocess.run(local_argv(step.command, config_dir=config_dir, ports={}), capture_output=True, text=True,
                              env=env, timeout=wait_s + 60, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            last = (done.stderr.strip() or done.stdout.strip() or f"exit status {done.returncode}").splitlines()[-1]
            raise scaling.StepFailed(f"in {step.pod}: {last}")
        return done.stdout

    return run


@dataclass
class ControllerScaling:
    """The chart's controller procedure through ``counts`` (e.g. 3 -> 5 -> 3), run after the
    rollout on its StatefulSets (:func:`~final_problem.local.kafka_rollout.roll_and_drain`'s
    ``then``). ``steps`` replaces the chart's procedure (a check that the test fails without it)."""

    cluster: LocalKafkaCluster
    config_dir: Path
    counts: Sequence[int] = (3, 5, 3)
    steps: Callable[[Any, Any, str], list[scaling.Step]] | None = None
    echo: Callable[[str], None] = lambda _: None
    watch: QuorumWatch | None = None
    #: Voters the quorum listed after each change.
    voters_after: list[tuple[int, ...]] = field(default_factory=list)
    #: Each running node's raft metrics at the end, by node id.
    views: dict[int, dict[str, float]] = field(default_factory=dict)

    def __call__(self, podsets: Sequence[PodSet]) -> list[Phase]:
        runner = LocalRunner({s.name: s for s in podsets}, exec_local(self.cluster, self.config_dir))
        phases = []
        with QuorumWatch(self.cluster) as self.watch:
            for before, after in itertools.pairwise(self.counts):
                old = KafkaProps.for_profile(EKS, controllers=before)
                new = KafkaProps.for_profile(EKS, controllers=after)
                steps = (self.steps or scaling.PROCEDURES[("kafka", "controllers")])(old, new, "kafka")
                started = time.monotonic()
                scaling.run(steps, runner, echo=self.echo)
                what = "scale-up" if after > before else "scale-down"
                phases.append(Phase(f"{what} of the controllers {before} -> {after}", started,
                                    time.monotonic() - started))
                self.voters_after.append(self._voters())
            time.sleep(2)
        self.views = {n: node_view(self.cluster, n) for n in self.cluster.running()}
        return phases

    def _voters(self) -> tuple[int, ...]:
        a = admin(self.cluster.app_settings(), bootstrap_timeout_ms=5000)
        try:
            quorum = a.describe_metadata_quorum()["topics"][0]["partitions"][0]
        finally:
            a.close()
        return tuple(sorted(v["replica_id"] for v in quorum["current_voters"]))

    def lines(self, layout: str) -> list[str]:
        assert self.watch is not None
        seen = " -> ".join(str(len(v)) for v in self.watch.voter_sets())
        return [f"{layout}: controller quorum voters seen {seen}; longest time without a known leader "
                f"{self.watch.longest_without_leader_s():.2f} s ({len(self.watch.samples)} samples)"]


def spare_controllers(counts: Sequence[int]) -> int:
    """Controller nodes beyond the first count that ``counts`` needs."""
    return max(counts) - counts[0]

