"""Redis + Sentinel through a rollout, a node drain and a primary restarted mid-failover.

One set (three members, three Sentinels) runs on loopback from the chart's rendered files,
driven by the rollout harness as Kubernetes drives the rendered StatefulSets: readiness is
the rendered exec probe, a member's preStop the rendered hook, grace periods and PDBs as
rendered (final_problem.local.redis ``LocalRedisSet.podsets``). Throughout each scenario the
platform's Sentinel client writes with ``WAIT 1``; every write it saw acknowledged must be
on the primary afterwards, and a planned switchover must pause writes for at most 2 s
(README, ``redis.replicas``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from final_problem.local.redis import LocalRedisSet, local_options, with_live_writes
from final_problem.local.rollout import PodSet, drain, roll_statefulset
from tests.conftest import rendered

pytestmark = pytest.mark.integration

#: The longest write pause a planned switchover may cost (README, ``redis.replicas``).
PLANNED_OUTAGE_S = 2.0


@dataclass
class RedisPods:
    cluster: LocalRedisSet
    servers: PodSet
    sentinels: PodSet


@pytest.fixture(scope="module")
def redis_pods(redis_binaries: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisPods]:
    """The Pi profile's rendered StatefulSets over one local set, every pod Ready."""
    cluster = LocalRedisSet(workdir=tmp_path_factory.mktemp("redis-rollout"), options=local_options())
    servers, sentinels = cluster.podsets(rendered("pi")["redis"])
    try:
        servers.launch(ready_timeout_s=60)
        sentinels.launch(ready_timeout_s=60)
        for index in range(len(cluster.sentinels)):
            cluster.wait_sentinel_ready(index, timeout_s=30)
        yield RedisPods(cluster, servers, sentinels)
    finally:
        for pod in servers.pods + sentinels.pods:
            pod.terminating = True  # stops its prober
        cluster.close()


def primary_ordinal(pods: RedisPods) -> int:
    port = pods.cluster.wait_settled(timeout_s=60)
    return pods.cluster.member_index(port)


def test_rollout_hands_the_primary_over_without_losing_a_write(redis_pods: RedisPods) -> None:
    primary = primary_ordinal(redis_pods)
    old_pods = list(redis_pods.servers.pods)
    result = None

    def roll() -> None:
        nonlocal result
        result = roll_statefulset(redis_pods.servers, ready_timeout_s=90)

    outcome = with_live_writes(redis_pods.cluster, roll, prefix="rollout:")
    assert result is not None
    print(outcome.summary(f"rollout of the redis StatefulSet in {result.seconds:.1f} s"))
    assert not outcome.lost, f"{len(outcome.lost)} acknowledged writes lost, e.g. {outcome.lost[:5]}"
    old = redis_pods.cluster.members[primary].log.read_text()
    assert re.search(r"preStop exited 0: .*handed over to 127\.0\.0\.1:\d+", old, re.DOTALL), old[-2000:]
    assert outcome.outage_s <= PLANNED_OUTAGE_S, outcome.summary("rollout")
    # What the grace period must cover (the rendered one, for the record).
    events = dict((what.split(":")[0], at) for at, what in old_pods[primary].events)
    print(f"the primary's preStop took {events['preStop done'] - events['deleted']:.2f} s, its shutdown "
          f"{events[next(k for k in events if k.startswith('exited'))] - events['SIGTERM']:.2f} s, "
          f"of a {old_pods[primary].grace_s:.0f} s grace period")


def test_drain_of_the_primarys_node_keeps_every_write(redis_pods: RedisPods) -> None:
    node = primary_ordinal(redis_pods)
    result = None

    def drain_node() -> None:
        nonlocal result
        result = drain([redis_pods.servers, redis_pods.sentinels], node, ready_timeout_s=90)

    outcome = with_live_writes(redis_pods.cluster, drain_node, prefix="drain:")
    assert result is not None
    print(outcome.summary(f"drain of node {node} (primary redis-{node} and redis-sentinel-{node}) "
                          f"in {result.seconds:.1f} s, evictions refused {result.refused}"))
    assert not outcome.lost, f"{len(outcome.lost)} acknowledged writes lost, e.g. {outcome.lost[:5]}"
    assert primary_ordinal(redis_pods) != node
    assert outcome.outage_s <= PLANNED_OUTAGE_S, outcome.summary("drain")


def sentinel_flags(cluster: LocalRedisSet, index: int) -> str:
    state = cluster.sentinel_admin(index).execute_command("SENTINEL", "MASTER", cluster.options.master_name)
    fields = dict(zip(state[::2], state[1::2], strict=True)) if isinstance(state, list) else dict(state)
    return str(fields["flags"])


def test_primary_restarted_during_its_failover_comes_back_as_a_replica(redis_pods: RedisPods) -> None:
    """The primary crashes; its container restarts just as the Sentinels hold it objectively
    down and start failing it over, while they still name it: it must wait for the new
    primary and follow it, never start as primary."""
    cluster, servers = redis_pods.cluster, redis_pods.servers
    ordinal = primary_ordinal(redis_pods)
    log = cluster.members[ordinal].log

    def crash_and_restart() -> None:
        old = servers.pods[ordinal]
        old.terminating = True
        assert old.proc is not None
        old.proc.kill()
        old.proc.wait(timeout=10)
        old.cleanup()
        cluster.wait_for("a Sentinel to hold the primary objectively down",
                         lambda: any("o_down" in sentinel_flags(cluster, i) for i in range(len(cluster.sentinels))),
                         timeout_s=30, interval_s=0.02)
        assert cluster.agreed_primary_port() == cluster.member_ports[ordinal], "restarted too late: failover over"
        log.write_text("")  # what the restarted container logs, alone
        servers.pods[ordinal] = servers.make_pod(ordinal).run()
        servers.pods[ordinal].wait_ready(90)

    outcome = with_live_writes(redis_pods.cluster, crash_and_restart, prefix="restart:")
    print(outcome.summary("primary killed, restarted at its failover"))
    started = [line for line in log.read_text().splitlines() if line.startswith("starting as ")]
    assert started and started[0].startswith("starting as replica of"), log.read_text()[-3000:]
    assert cluster.replication(ordinal)["role"] == "slave"
    assert not outcome.lost, f"{len(outcome.lost)} acknowledged writes lost, e.g. {outcome.lost[:5]}"
