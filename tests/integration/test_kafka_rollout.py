"""Kafka through a pod-template change and a node drain: no acknowledged write lost, no
acks=all write refused for lack of in-sync replicas.

Each layout (EKS: 3 controllers + 3 brokers; Pi: 3 combined nodes) runs once on real
servers (final_problem.local.kafka_rollout): its StatefulSets as rendered are rolled as
the StatefulSet controller rolls them (highest
ordinal first, SIGTERM and the rendered grace period, the next pod only once the restarted
one passed the rendered readiness probe for minReadySeconds); then the node hosting the
active controller is drained (one pod of every set at once, as far as the PDBs allow).
The project's producer writes acks=all throughout. Run with ``-s`` for the figures.

In the dedicated layout only the brokers roll: every combined node is a controller too, so the
Pi's rollout already restarts each controller under the live producer (its readiness the
controller's check and the broker's), and the drain restarts a dedicated controller, the active
one; rolling the three dedicated controllers again would add about 70 s and prove no other rule.
"""

from __future__ import annotations

from typing import Iterator

import pytest

from final_problem.local.kafka import LocalKafkaCluster, missing_binaries
from final_problem.local.kafka_rollout import DayTwoResult, rendered, roll_and_drain

pytestmark = pytest.mark.integration

PROFILES = {"dedicated": "eks", "combined": "pi"}
#: The sets each layout rolls (above: the controllers' rollout is the combined layout's).
ROLLED = {"dedicated": ("kafka-broker",), "combined": ("kafka",)}


@pytest.fixture(scope="module", params=["dedicated", "combined"])
def day_two(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DayTwoResult]:
    """One cluster per layout, rolled and drained under a live producer; its result."""
    if missing := missing_binaries():
        pytest.fail(f"cannot run Kafka here, missing: {', '.join(missing)}")
    layout = request.param
    workdir = tmp_path_factory.mktemp(f"kafka-rollout-{layout}")
    objects = rendered(PROFILES[layout])
    with LocalKafkaCluster(workdir=workdir / "cluster", layout=layout, metrics=True) as cluster:
        try:
            result = roll_and_drain(cluster, objects, workdir, roll=ROLLED[layout])
        except BaseException:
            print("\n".join(f"--- node {i}\n{cluster.tail(i, 30)}" for i in cluster.procs))
            raise
        for line in result.lines():
            print(line)
        yield result
        assert not cluster.out_of_memory(), cluster.out_of_memory()


def test_no_acknowledged_write_is_lost(day_two: DayTwoResult) -> None:
    assert day_two.acknowledged > 100, "the producer hardly wrote: the run proves nothing"
    assert not day_two.lost, f"{len(day_two.lost)} acknowledged writes lost, e.g. {day_two.lost[:5]}"


def test_no_acks_all_write_is_refused_for_lack_of_in_sync_replicas(day_two: DayTwoResult) -> None:
    assert day_two.not_enough_replicas == 0, f"brokers refused writes: {dict(day_two.refusals)}"


def test_each_restarted_node_is_back_in_sync_within_min_ready_seconds_of_its_probe_passing(
        day_two: DayTwoResult) -> None:
    """What the probe (with minReadySeconds) claims: a broker in the ISR of every partition it
    replicates, a controller at the quorum's high watermark, before the next pod stops."""
    # Every pod restarted by the rollout (three), and one per set by the drain.
    assert len(day_two.checks) == 3 + (2 if day_two.layout == "dedicated" else 1)
    late = [c for c in day_two.checks if c.after_pass_s is None]
    assert not late, f"not back in sync within minReadySeconds of the first passing probe: {late}"


def test_every_stop_is_a_controlled_shutdown_within_the_grace_period(day_two: DayTwoResult) -> None:
    assert not day_two.killed, f"killed at the end of the grace period: {day_two.killed}"
    assert day_two.shutdown_s and max(day_two.shutdown_s) < 60
