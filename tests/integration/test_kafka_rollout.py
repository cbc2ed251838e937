"""Kafka through a pod-template change and a node drain: no acknowledged write lost, no
acks=all write refused for lack of in-sync replicas.

Each layout (EKS: 3 controllers + 3 brokers; Pi: 3 combined nodes) runs once on real
servers (final_problem.local.kafka_rollout): its StatefulSets as rendered are rolled as
the StatefulSet controller rolls them (highest
ordinal first, SIGTERM and the rendered grace period, the next pod only once the restarted
one passed the rendered readiness probe for minReadySeconds); then the node hosting the
active controller is drained (one pod of every set at once, as far as the PDBs allow).
On EKS's layout the controller quorum then grows 3 -> 5 and shrinks back to 3 by the
chart's procedure (``final-problem scale kafka.controllers=N``: KIP-853 add-controller and
remove-controller, one controller at a time; final_problem.local.kafka_scaling); the Pi's
combined layout refuses it (tests/test_scaling_kafka_controllers.py). Then, on the same EKS
cluster, ``kafka.brokers`` goes 3 -> 5 -> 3 by the chart's procedure (final_problem.scaling),
its ConfigMap script run in the brokers' cgroup as ``kubectl exec`` would, with a scale-down
asked to skip moving the partitions refused on the way. The project's producer writes
acks=all throughout. Run with ``-s`` for the figures.

In the dedicated layout only the brokers roll: every combined node is a controller too, so the
Pi's rollout already restarts each controller under the live producer (its readiness the
controller's check and the broker's), and the drain restarts a dedicated controller, the active
one; rolling the three dedicated controllers again would add about 70 s and prove no other rule.
"""

from __future__ import annotations

from typing import Iterator

import pytest

from final_problem.local.kafka import LocalKafkaCluster, missing_binaries
from final_problem.local.kafka_rollout import NOT_ENOUGH_REPLICAS, BrokerScaling, DayTwoResult, rendered, roll_and_drain, scale_brokers
from final_problem.local.kafka_scaling import ControllerScaling, spare_controllers

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
    counts = (3, 5, 3) if layout == "dedicated" else (3,)
    with LocalKafkaCluster(workdir=workdir / "cluster", layout=layout, metrics=True,
                           spare_controllers=spare_controllers(counts)) as cluster:
        scale = ControllerScaling(cluster, workdir / "kafka-config", counts, echo=print) if len(counts) > 1 else None
        try:
            result = roll_and_drain(cluster, objects, workdir, roll=ROLLED[layout], then=scale)
            if layout == "dedicated":  # kafka.brokers: ignored by the combined layout
                result.scaling = scale_brokers(cluster, result, workdir)
        except BaseException:
            print("\n".join(f"--- node {i}\n{cluster.tail(i, 30)}" for i in cluster.procs))
            raise
        for line in result.lines() + (scale.lines(layout) if scale else []) + (result.scaling.lines() if result.scaling else []):
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


def _scaled(day_two: DayTwoResult) -> ControllerScaling:
    assert isinstance(day_two.then, ControllerScaling)
    return day_two.then


#: EKS's layout only: the combined one refuses a controller change (tests/test_scaling_kafka_controllers.py).
dedicated = pytest.mark.parametrize("day_two", ["dedicated"], indirect=True)


@dedicated
def test_the_controller_quorum_grows_to_5_voters_and_shrinks_back_to_3(day_two: DayTwoResult) -> None:
    scale = _scaled(day_two)
    assert scale.voters_after == [(0, 1, 2, 3, 4), (0, 1, 2)], scale.voters_after
    assert scale.watch is not None
    assert [len(v) for v in scale.watch.voter_sets()] == [3, 4, 5, 4, 3], scale.watch.voter_sets()


@dedicated
def test_the_quorum_keeps_a_leader_throughout_the_membership_changes(day_two: DayTwoResult) -> None:
    """A leader removed from the voters resigns and another is elected: no longer than the
    election takes (controller.quorum.election.timeout.ms, 1 s by default, plus the sampling)."""
    scale = _scaled(day_two)
    assert scale.watch is not None and len(scale.watch.samples) > 100
    assert scale.watch.longest_without_leader_s() < 5, scale.watch.longest_without_leader_s()


@dedicated
def test_every_node_counts_the_same_3_voters_and_follows_the_same_leader_at_the_end(day_two: DayTwoResult) -> None:
    scale = _scaled(day_two)
    # The three voters and the three brokers; the removed controllers are stopped.
    assert sorted(scale.views) == [0, 1, 2, 100, 101, 102]
    voters = {n: v.get("kafka_raft_number_of_voters") for n, v in scale.views.items()}
    leaders = {n: v.get("kafka_raft_current_leader") for n, v in scale.views.items()}
    assert set(voters.values()) == {3.0}, voters
    assert len(set(leaders.values())) == 1 and next(iter(leaders.values())) in (0.0, 1.0, 2.0), leaders


# -- kafka.brokers 3 -> 5 -> 3 (dedicated layout) --------------------------------------------


@pytest.fixture
def scaled(day_two: DayTwoResult) -> BrokerScaling:
    """The broker scaling of EKS's layout (``@dedicated``: the combined layout ignores kafka.brokers)."""
    assert day_two.scaling is not None
    return day_two.scaling


@dedicated
def test_brokers_scale_up_and_down_lose_no_acknowledged_write_and_keep_every_partition_led(
        scaled: BrokerScaling) -> None:
    assert scaled.acknowledged > 100, "the producer hardly wrote: the run proves nothing"
    assert not scaled.lost, f"{len(scaled.lost)} acknowledged writes lost, e.g. {scaled.lost[:5]}"
    assert scaled.leader_polls > 10 and not scaled.offline, f"partitions without a leader: {scaled.offline[:5]}"
    refused = sum(scaled.refusals[name] for name in NOT_ENOUGH_REPLICAS)
    assert refused == 0, f"brokers refused writes: {dict(scaled.refusals)}"


@dedicated
def test_growing_puts_replicas_on_the_new_brokers(scaled: BrokerScaling) -> None:
    # 6 partitions x 3 replicas over 5 brokers: 3 or 4 each.
    assert set(scaled.replicas_up) == {100, 101, 102, 103, 104}
    assert sorted(scaled.replicas_up.values()) == [3, 3, 4, 4, 4]


@dedicated
def test_a_scale_down_that_skips_the_move_is_refused_with_one_line(scaled: BrokerScaling) -> None:
    assert scaled.refusal.startswith("refused: brokers 103 104 still hold 6 partition replicas"), scaled.refusal
    assert "\n" not in scaled.refusal and "move them off first" in scaled.refusal
    assert scaled.pods_after_refusal == 5


@dedicated
def test_shrinking_leaves_every_replica_on_the_brokers_that_stay_and_every_broker_agreeing(
        scaled: BrokerScaling) -> None:
    assert scaled.replicas_down == {100: 6, 101: 6, 102: 6}
    assert scaled.views == {b: [100, 101, 102] for b in (100, 101, 102)}
