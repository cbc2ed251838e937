"""The rollout harness drives pods as Kubernetes' controllers and the kubelet do: StatefulSet
order and gating, PDB-bound evictions, probe thresholds. Pods here are ``sleep`` processes
whose readiness a test switches, so each rule is checked exactly and fast."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import pytest

from final_problem.local.rollout import (
    Endpoints, ExecProbe, Pod, PodSet, RolloutError, TcpProbe, drain, roll_deployment, roll_statefulset,
    rendered_readiness,
)

PERIOD = 0.02


@dataclass
class Switch:
    """A readiness probe a test turns on and off."""

    on: bool = True
    period_s: float = PERIOD
    initial_delay_s: float = 0
    success_threshold: int = 1
    failure_threshold: int = 1

    def passes(self) -> bool:
        return self.on


def wait_until(condition: Any, timeout_s: float = 2) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])


class Cluster:
    """Pods of one set, each made with a Switch; records the order of deletions and starts."""

    def __init__(self, name: str, replicas: int, *, workload: dict[str, Any] | None = None,
                 pdb: dict[str, Any] | None = None, ready_after_s: float = 0) -> None:
        self.log: list[str] = []
        self.switches: dict[str, Switch] = {}
        self.ready_after_s = ready_after_s
        self.made: list[Pod] = []
        workload = workload or {"spec": {"replicas": replicas, "updateStrategy": {"type": "RollingUpdate"}}}
        self.set = PodSet(name=name, workload=workload, pdb=pdb, pods=[], make_pod=self.make, endpoints=Endpoints())
        self.generation = 0
        self.set.launch(ready_timeout_s=5)
        self.generation = 1

    def make(self, ordinal: int) -> Pod:
        name = f"{self.set.name}-{ordinal}-g{self.generation}"
        switch = Switch(on=self.generation == 0 or self.ready_after_s == 0)
        if not switch.on:
            threading.Timer(self.ready_after_s, lambda: setattr(switch, "on", True)).start()
        self.switches[name] = switch

        def start() -> subprocess.Popen[bytes]:
            self.log.append(f"start {name}")
            return sleeper()

        pod = Pod(name=name, start=start, container={}, grace_s=2, ports={}, address=("127.0.0.1", 1000 + ordinal),
                  readiness=switch, ordinal=ordinal,
                  pre_stop=lambda p, deadline: self.log.append(f"delete {p.name}"))
        self.made.append(pod)
        return pod

    def close(self) -> None:
        for pod in self.made:
            if pod.proc is not None and pod.proc.poll() is None:
                pod.proc.kill()
                pod.proc.wait()


@pytest.fixture
def clusters() -> Any:
    made: list[Cluster] = []

    def make(*args: Any, **kwargs: Any) -> Cluster:
        made.append(Cluster(*args, **kwargs))
        return made[-1]

    yield make
    for c in made:
        c.close()


def test_a_statefulset_rolls_from_the_highest_ordinal_one_pod_at_a_time(clusters: Any) -> None:
    c = clusters("zk", 3)
    roll_statefulset(c.set, ready_timeout_s=5)
    assert c.log[3:] == ["delete zk-2-g0", "start zk-2-g1", "delete zk-1-g0", "start zk-1-g1",
                         "delete zk-0-g0", "start zk-0-g1"]
    assert [p.name for p in c.set.pods] == ["zk-0-g1", "zk-1-g1", "zk-2-g1"]
    assert all(p.proc is not None and p.proc.poll() is not None for p in c.made[:3])


def test_the_next_pod_waits_for_the_restarted_one_to_be_ready_for_min_ready_seconds(clusters: Any) -> None:
    workload = {"spec": {"replicas": 2, "minReadySeconds": 0.3, "updateStrategy": {"type": "RollingUpdate"}}}
    c = clusters("kafka", 2, workload=workload, ready_after_s=0.4)
    roll_statefulset(c.set, ready_timeout_s=5)
    restarted, next_deleted = c.set.pods[1], c.made[0]
    ready_at = next(t for t, e in restarted.events if e == "ready")
    deleted_at = next(t for t, e in next_deleted.events if e == "deleted")
    started_at = next(t for t, e in restarted.events if e == "started")
    assert ready_at - started_at >= 0.3  # its probe failed until 0.4 s after the pod was made
    assert deleted_at - ready_at >= 0.3


def test_a_partition_keeps_the_lower_ordinals(clusters: Any) -> None:
    workload = {"spec": {"replicas": 3, "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 2}}}}
    c = clusters("redis", 3, workload=workload)
    result = roll_statefulset(c.set, ready_timeout_s=5)
    assert [p.name for p in result.new] == ["redis-2-g1"]
    assert [p.name for p in c.set.pods] == ["redis-0-g0", "redis-1-g0", "redis-2-g1"]


def test_launch_starts_every_pod_at_once_into_the_endpoints(clusters: Any) -> None:
    c = clusters("zk", 3)
    assert c.log == ["start zk-0-g0", "start zk-1-g0", "start zk-2-g0"]
    assert c.set.endpoints is not None and sorted(c.set.endpoints.current()) == [p.address for p in c.set.pods]
    with pytest.raises(RolloutError, match="launch"):
        c.set.launch()


def test_on_delete_does_not_roll(clusters: Any) -> None:
    c = clusters("x", 1, workload={"spec": {"replicas": 1, "updateStrategy": {"type": "OnDelete"}}})
    with pytest.raises(RolloutError, match="OnDelete"):
        roll_statefulset(c.set)


def test_a_restarted_pod_that_never_becomes_ready_stops_the_rollout(clusters: Any) -> None:
    c = clusters("zk", 3, ready_after_s=60)
    with pytest.raises(RolloutError, match="zk-2-g1 did not become ready"):
        roll_statefulset(c.set, ready_timeout_s=0.5)
    assert "delete zk-1-g0" not in c.log


PDB = {"spec": {"maxUnavailable": 1}}


def test_a_drain_evicts_one_member_of_every_set_at_once(clusters: Any) -> None:
    a, b = clusters("a", 3, pdb=PDB), clusters("b", 3, pdb=PDB)
    result = drain([a.set, b.set], 1, ready_timeout_s=5)
    assert result.refused == {"a": 0, "b": 0}
    assert [p.name for p in a.set.pods] == ["a-0-g0", "a-1-g1", "a-2-g0"]
    assert [p.name for p in b.set.pods] == ["b-0-g0", "b-1-g1", "b-2-g0"]


def test_the_pdb_refuses_an_eviction_while_another_member_is_not_ready(clusters: Any) -> None:
    c = clusters("zk", 3, pdb=PDB)
    c.switches["zk-0-g0"].on = False
    wait_until(lambda: not c.set.pods[0].ready)
    threading.Timer(0.5, lambda: setattr(c.switches["zk-0-g0"], "on", True)).start()
    start = time.monotonic()
    result = drain([c.set], 2, ready_timeout_s=5, retry_s=0.1)
    assert result.refused["zk"] >= 2
    deleted_at = next(t for t, e in c.made[2].events if e == "deleted")
    assert deleted_at - start >= 0.4


def test_a_drained_deployment_pod_is_replaced_while_the_old_one_still_stops(clusters: Any) -> None:
    workload = {"kind": "Deployment", "spec": {"replicas": 2}}
    c = clusters("demo", 2, workload=workload, pdb=PDB)
    old = c.set.pods[0]
    old.pre_stop = lambda p, deadline: time.sleep(0.5)
    drain([c.set], 0, ready_timeout_s=5)
    replacement = c.set.pods[0]
    started = next(t for t, e in replacement.events if e == "started")
    exited = next(t for t, e in old.events if e.startswith("exited"))
    assert started < exited - 0.3


@pytest.mark.parametrize("replicas", [1, 2])
def test_a_deployment_without_surge_deletes_first_then_creates_every_new_pod(clusters: Any, replicas: int) -> None:
    workload = {"kind": "Deployment",
                "spec": {"replicas": replicas, "strategy": {"rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}}}
    c = clusters("web", replicas, workload=workload)
    old = [p.name for p in c.set.pods]
    result = roll_deployment(workload, list(c.set.pods), c.make, c.set.endpoints, ready_timeout_s=5)
    assert len(result.new) == replicas and all(p.ready for p in result.new)
    first_start = c.log.index(f"start {result.new[0].name}")
    assert c.log.index(f"delete {old[0]}") < first_start  # no surge: a pod goes before one comes
    assert all(f"delete {name}" in c.log for name in old)


def test_a_drained_statefulset_pod_is_recreated_once_the_old_one_is_gone(clusters: Any) -> None:
    c = clusters("zk", 3, pdb=PDB)
    old = c.set.pods[0]
    drain([c.set], 0, ready_timeout_s=5)
    started = next(t for t, e in c.set.pods[0].events if e == "started")
    exited = next(t for t, e in old.events if e.startswith("exited"))
    assert started >= exited


def test_min_available_is_counted_against_ready_pods(clusters: Any) -> None:
    c = clusters("pg", 1, pdb={"spec": {"minAvailable": 1}})
    assert c.set.disruptions_allowed() == 0
    with pytest.raises(RolloutError, match="refused by its PDB"):
        drain([c.set], 0, ready_timeout_s=0.3, retry_s=0.1)


def test_a_pod_turns_not_ready_after_failure_threshold_fails_and_leaves_the_endpoints(clusters: Any) -> None:
    c = clusters("r", 1)
    pod = c.set.pods[0]
    assert c.set.endpoints is not None and c.set.endpoints.current() == [pod.address]
    c.switches[pod.name].on = False
    wait_until(lambda: not pod.ready)
    assert c.set.endpoints.current() == []


def test_a_container_that_exits_is_restarted_after_the_kubelets_back_off() -> None:
    runs: list[float] = []

    def start() -> subprocess.Popen[bytes]:
        runs.append(time.monotonic())
        # The first run fails at once (a dependency down), the second keeps running.
        return subprocess.Popen([sys.executable, "-c", "import sys, time; time.sleep(600)" if len(runs) > 1
                                 else "import sys; sys.exit(3)"])

    serving = Switch()
    pod = Pod(name="matching", start=start, container={}, grace_s=2, ports={}, address=("127.0.0.1", 1),
              readiness=serving, restart_on_exit=True)
    # Ready once its process has run half a second (the first one exits before).
    serving.passes = lambda: pod.proc is not None and pod.proc.poll() is None and time.monotonic() - runs[-1] > 0.5
    pod.run()
    try:
        pod.wait_ready(15)
        assert pod.restarts == 1 and len(runs) == 2
        assert runs[1] - runs[0] >= 10  # the first back-off
        assert any(e.startswith("exited 3, restart in 10 s") for _, e in pod.events)
    finally:
        pod.delete()
    assert pod.proc is not None and pod.proc.poll() is not None


def test_an_exec_probe_passes_on_status_zero_and_fails_past_its_timeout() -> None:
    probe = {"exec": {"command": ["x"]}, "periodSeconds": 5, "timeoutSeconds": 1, "failureThreshold": 2}
    assert ExecProbe.rendered(probe, ["true"]).passes()
    assert not ExecProbe.rendered(probe, ["false"]).passes()
    slow = ExecProbe.rendered(probe, ["sleep", "5"])
    start = time.monotonic()
    assert not slow.passes() and time.monotonic() - start < 3
    assert (slow.period_s, slow.failure_threshold) == (5, 2)


def test_rendered_probes_map_their_ports_and_refuse_an_unrewritten_exec() -> None:
    tcp = rendered_readiness({"readinessProbe": {"tcpSocket": {"port": 9092}, "periodSeconds": 10}}, {9092: 1})
    assert isinstance(tcp, TcpProbe) and tcp.port == 1 and not tcp.passes()
    with pytest.raises(RolloutError, match="exec readiness probe needs a local command"):
        rendered_readiness({"name": "zk", "readinessProbe": {"exec": {"command": ["x"]}}}, {})


def test_scaling_up_in_order_waits_for_each_new_pod_and_down_deletes_the_highest_first(clusters: Any) -> None:
    c = clusters("zk", 3, ready_after_s=0.3)
    c.set.scale(5, ready_timeout_s=5)
    assert c.log[3:] == ["start zk-3-g1", "start zk-4-g1"]
    three, four = c.set.pods[3:]
    assert next(t for t, e in four.events if e == "started") >= next(t for t, e in three.events if e == "ready")
    assert c.set.workload["spec"]["replicas"] == 5 and all(p.ready for p in c.set.pods)
    c.set.scale(3, ready_timeout_s=5)
    assert c.log[5:] == ["delete zk-4-g1", "delete zk-3-g1"]
    assert [p.name for p in c.set.pods] == ["zk-0-g0", "zk-1-g0", "zk-2-g0"]
    assert three.proc is not None and three.proc.poll() is not None


def test_scaling_a_parallel_set_starts_every_new_pod_at_once(clusters: Any) -> None:
    workload = {"spec": {"replicas": 1, "podManagementPolicy": "Parallel", "updateStrategy": {"type": "RollingUpdate"}}}
    c = clusters("redis", 1, workload=workload, ready_after_s=0.3)
    c.set.scale(3, ready_timeout_s=5)
    started = [next(t for t, e in p.events if e == "started") for p in c.set.pods[1:]]
    ready = [next(t for t, e in p.events if e == "ready") for p in c.set.pods[1:]]
    assert max(started) < min(ready)


def test_a_local_runner_runs_membership_steps_in_order(clusters: Any) -> None:
    from final_problem import scaling
    from final_problem.local.rollout import LocalRunner

    c = clusters("zk", 3)
    ran: list[str] = []
    runner = LocalRunner({"zk": c.set}, lambda step: ran.append(" ".join(step.command)) or "ok")
    out = scaling.run([scaling.Scale("zk", 4, "a member more"), scaling.WaitReady("zk", 4, "it joined"),
                       scaling.Exec("zk-0", "zookeeper", ("reconfig", "-add", "4"), "a voter")], runner)
    assert out == ["", "", "ok"] and ran == ["reconfig -add 4"] and len(c.set.pods) == 4
    with pytest.raises(RolloutError, match="no StatefulSet kafka"):
        scaling.run([scaling.Scale("kafka", 1, "x")], runner)
