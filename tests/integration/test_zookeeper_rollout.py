"""A ZooKeeper rollout, a node drain and a 3 -> 5 -> 3 membership change under a live
writer: no acknowledged write lost.

One three-member ensemble (the chart's zoo.cfg and start script: dynamic membership, the
pinned jars, the Pi profile's limits; two more members' ports and directories for growing)
is driven as the rendered StatefulSet's pods by :mod:`final_problem.local.rollout`: the
rendered readiness probe runs here against each member (``mntr``: in the quorum and synced),
the rendered grace period, the PodDisruptionBudget. A :class:`~final_problem.local.rollout.LoadBalancer`
stands for the client Service (new connections only to Ready members). A kazoo client
(the platform's :class:`~final_problem.clients.zookeeper.ZooKeeperClient`) creates one znode
per write throughout, retrying a write that lost its connection.

Each step of the rollout stops the next member only once every member is synced again:
checked on the servers themselves (``mntr``) each time the controller moves on. With a
readiness probe that passes as soon as the process runs, that check fails at every step: the
three members were restarted within 1.3 s, none served at any step (the quorum was lost), and
writes stopped for 8.4 s, close to the session's 10 s timeout.

The membership change runs the steps of ``final-problem scale zookeeper.replicas=5`` (and
back to 3) on these servers: the StatefulSet scaled one pod at a time, each new member
joining as a non-voting follower, then ``reconfig -add`` (the chart's reconfig script, run
as member 1's container runs it); shrinking, ``reconfig -remove`` before each pod stops.
Without the reconfig steps (scaling the pods alone) the two new members never vote: at five
pods every member still lists three voters, and the check of the membership at five fails.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Iterator

import pytest

from final_problem import scaling
from final_problem.charts.zookeeper import ZooKeeperProps
from final_problem.clients.zookeeper import four_letter_word
from final_problem.local import LOOPBACK
from final_problem.local.rollout import Endpoints, LoadBalancer, LocalRunner, PodSet, drain, roll_statefulset
from final_problem.local.zookeeper import LocalEnsemble, ZnodeWrites, missing_binaries, rendered_ensemble
from final_problem.profiles import PI

pytestmark = pytest.mark.integration


class Platform:
    def __init__(self, ensemble: LocalEnsemble, podset: PodSet, balancer: LoadBalancer) -> None:
        self.ensemble, self.podset, self.balancer = ensemble, podset, balancer

    @property
    def hosts(self) -> str:
        """The client Service's address."""
        return f"{LOOPBACK}:{self.balancer.port}"

    def peer_states(self) -> dict[int, str]:
        """Each member's ``zk_peer_state`` (empty when it does not serve)."""
        states = {}
        for myid in self.ensemble.running():
            proc = self.ensemble.procs[myid]
            answer = four_letter_word(host=LOOPBACK, port=proc.member.client_port, word="mntr", timeout=2)
            states[myid] = next((line.split("\t", 1)[1] for line in answer.splitlines()
                                 if line.startswith("zk_peer_state\t")), "")
        return states


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    if missing := missing_binaries():
        pytest.fail(f"missing {', '.join(missing)}")
    statefulset, pdb = rendered_ensemble()
    endpoints = Endpoints()
    balancer = LoadBalancer(endpoints)
    ensemble = LocalEnsemble(workdir=Path(tmp_path_factory.mktemp("zookeeper-rollout")), dynamic=True, spare=2)
    # A starting member asks the client Service for the membership.
    ensemble.ensemble_address = f"{LOOPBACK}:{balancer.port}"
    try:
        podset = ensemble.pod_set(statefulset, pdb)
        podset.endpoints = endpoints
        try:
            podset.launch(ready_timeout_s=60)
        except Exception:
            logs = "\n".join(f"--- member {i}\n{ensemble.log(i)[-2000:]}" for i in ensemble.procs)
            pytest.fail(f"the ensemble did not become ready:\n{logs}")
        yield Platform(ensemble, podset, balancer)
        heap = [i for i in ensemble.procs if "OutOfMemoryError" in ensemble.log(i)]
        assert not heap, f"members {heap} ran out of heap under their limits"
    finally:
        balancer.close()
        ensemble.close()


def test_a_rollout_keeps_every_acknowledged_write_and_the_session(platform: Platform) -> None:
    """A pod-template change: every member restarted, highest ordinal first, each step only
    once the restarted member is synced (the rendered readiness probe)."""
    unsynced_at_step: list[dict[int, str]] = []

    def every_member_synced(pod: object) -> None:
        states = platform.peer_states()
        if not all(state.endswith(" - broadcast") for state in states.values()):
            unsynced_at_step.append(states)

    writes = ZnodeWrites(hosts=platform.hosts, prefix="rollout").start()
    try:
        result = roll_statefulset(platform.podset, ready_timeout_s=90, on_step=every_member_synced)
        seen = writes.finish()
    finally:
        writes.close()
    print(seen.summary("zookeeper rollout", result.seconds) + f", retried {seen.retried}")
    assert seen.acknowledged > 0 and not seen.lost, f"{len(seen.lost)} acknowledged writes lost: {seen.lost[:10]}"
    assert not seen.session_expired, f"the session expired: {seen.states}"
    assert not unsynced_at_step, f"a member was stopped while another was not synced: {unsynced_at_step}"
    assert [p.name for p in result.new] == ["zookeeper-2", "zookeeper-1", "zookeeper-0"]


def test_a_drain_keeps_every_acknowledged_write_and_the_session(platform: Platform) -> None:
    """``kubectl drain`` of the node of member 0: evicted as its PDB allows (every member
    Ready), recreated, Ready again."""
    writes = ZnodeWrites(hosts=platform.hosts, prefix="drain").start()
    try:
        result = drain([platform.podset], 0, ready_timeout_s=90)
        seen = writes.finish()
    finally:
        writes.close()
    print(seen.summary("zookeeper drain", result.seconds) + f", refused evictions {result.refused}")
    assert seen.acknowledged > 0 and not seen.lost, f"{len(seen.lost)} acknowledged writes lost: {seen.lost[:10]}"
    assert not seen.session_expired, f"the session expired: {seen.states}"
    assert result.refused == {"zookeeper": 0}
    assert all(state.endswith(" - broadcast") for state in platform.peer_states().values())


def test_scaling_three_five_three_keeps_every_write_the_session_and_one_membership(platform: Platform) -> None:
    """``zookeeper.replicas`` 3 -> 5 -> 3 by the registered procedure, after the rollout and
    the drain on the same servers, a session writing throughout."""
    three = ZooKeeperProps.for_profile(PI)
    five = dataclasses.replace(three, replicas=5)
    runner = LocalRunner({"zookeeper": platform.podset}, platform.ensemble.exec_step, ready_timeout_s=90)
    ensemble = platform.ensemble

    def memberships() -> dict[int, list[str]]:
        return {myid: ensemble.membership(myid) for myid in ensemble.running()}

    writes = ZnodeWrites(hosts=platform.hosts, prefix="scale").start()
    try:
        start = time.monotonic()
        scaling.run(scaling.steps_for("zookeeper", "replicas", three, five, "zookeeper"), runner)
        up_s = time.monotonic() - start
        at_five, states_at_five = memberships(), platform.peer_states()
        start = time.monotonic()
        scaling.run(scaling.steps_for("zookeeper", "replicas", five, three, "zookeeper"), runner)
        down_s = time.monotonic() - start
        seen = writes.finish()
    finally:
        writes.close()
    at_three = memberships()
    print(seen.summary("zookeeper 3 -> 5 -> 3", up_s + down_s) + f", up {up_s:.1f} s, down {down_s:.1f} s")
    assert seen.acknowledged > 0 and not seen.lost, f"{len(seen.lost)} acknowledged writes lost: {seen.lost[:10]}"
    assert not seen.session_expired, f"the session expired: {seen.states}"

    def voters(membership: list[str]) -> list[int]:
        return sorted(int(line.split("=")[0][len("server."):]) for line in membership if ":participant;" in line)

    assert sorted(at_five) == [1, 2, 3, 4, 5] and len({tuple(m) for m in at_five.values()}) == 1, at_five
    assert voters(at_five[1]) == [1, 2, 3, 4, 5], at_five[1]
    assert all(state.endswith(" - broadcast") for state in states_at_five.values()), states_at_five
    assert sorted(at_three) == [1, 2, 3] and len({tuple(m) for m in at_three.values()}) == 1, at_three
    assert voters(at_three[1]) == [1, 2, 3], at_three[1]
    assert [p.name for p in platform.podset.pods] == ["zookeeper-0", "zookeeper-1", "zookeeper-2"]
    assert all(state.endswith(" - broadcast") for state in platform.peer_states().values())

