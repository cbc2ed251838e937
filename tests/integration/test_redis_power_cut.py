"""The chart's Redis set after a power cut: pods restarting together, in any order.

One primary, two replicas and three Sentinels run on loopback from the files the chart
renders, started by the chart's own start scripts (final_problem.local.redis), with the
Sentinel timing of ``local_options`` (the chart's down-after). Every process is killed with SIGKILL. A write
counts as acknowledged when ``WAIT 1`` confirmed it (the client's ``set_durable``); after
each restart the set must give a writable primary again, and every acknowledged write
must be on it. Restart orders and delays are random; the seed is printed.
"""

from __future__ import annotations

import random
import shutil
import time
from pathlib import Path
from typing import Iterator

import pytest
import redis

from final_problem.clients.redis import RedisClient, RedisSettings
from final_problem.local.redis import LocalRedisError, LocalRedisSet, first_acknowledged_write, local_options
from tests.integration.conftest import REDIS_DOWN_AFTER_MS, REDIS_FAILOVER_TIMEOUT_MS

pytestmark = pytest.mark.integration

#: Seconds a restarted set has to give a writable primary with a linked replica. The
#: scripts need a few seconds here; the margin is for a host busy with other tests.
RECOVERY_TIMEOUT_S = 60


@pytest.fixture
def cluster(redis_binaries: None, tmp_path: Path) -> Iterator[LocalRedisSet]:
    with LocalRedisSet(workdir=tmp_path, options=local_options()) as started:
        yield started


class Ledger:
    """Writes through the application's Sentinel client, and those ``WAIT 1`` acknowledged."""

    def __init__(self, cluster: LocalRedisSet) -> None:
        self.cluster = cluster
        self.client = RedisClient(settings=RedisSettings.from_env(cluster.client_env(), secret=lambda key: ""))
        self.acknowledged: dict[str, str] = {}

    def close(self) -> None:
        self.client.close()

    def write(self, prefix: str, count: int) -> None:
        for i in range(count):
            key, value = f"{prefix}:{i}", f"{prefix}:{i}:{time.monotonic_ns()}"
            self.client.set_durable(key, value, replicas=1, timeout_ms=2000)
            self.acknowledged[key] = value

    def first_acknowledged_write(self, what: str, *, timeout_s: float = RECOVERY_TIMEOUT_S) -> float:
        """Retry one acknowledged write until it succeeds; return the seconds it took."""
        key, value = f"{what}:first", str(time.monotonic_ns())
        elapsed = first_acknowledged_write(self.client, key, value, timeout_s=timeout_s)
        self.acknowledged[key] = value
        return elapsed

    def primary_index(self) -> int:
        """The member the Sentinels name, checked to be a primary that answers."""
        index = self.cluster.member_index(self.client.primary_address()[1])
        assert self.cluster.replication(index)["role"] == "master"
        return index

    def assert_all_on_primary(self, context: str) -> int:
        index = self.primary_index()
        primary = self.cluster.admin(index)
        keys = list(self.acknowledged)
        values = primary.mget(keys)
        missing = [k for k, v in zip(keys, values, strict=True) if v != self.acknowledged[k]]
        assert not missing, (
            f"{context}: {len(missing)} of {len(keys)} acknowledged writes missing on the primary "
            f"{self.cluster.members[index].name}, e.g. {missing[:3]}")
        return index


@pytest.fixture
def ledger(cluster: LocalRedisSet) -> Iterator[Ledger]:
    book = Ledger(cluster)
    try:
        yield book
    finally:
        book.close()


def fail_over_away_from_redis_0(cluster: LocalRedisSet) -> int:
    """A normal failover: kill the first-boot primary redis-0, wait for the promotion, and
    bring redis-0 back as a synchronised replica. Return the new primary's index."""
    old_port = cluster.member_ports[0]
    cluster.kill_member(0)
    new_port, _ = cluster.wait_new_primary(
        old_port, timeout_s=3 * (REDIS_DOWN_AFTER_MS + REDIS_FAILOVER_TIMEOUT_MS) / 1000)
    cluster.start_member(0)
    cluster.wait_rejoined(0)
    cluster.wait_promotable(0)
    return cluster.member_index(new_port)


def power_cut(cluster: LocalRedisSet) -> None:
    """Every process dies at once (SIGKILL)."""
    cluster.stop()


def restart(cluster: LocalRedisSet, rng: random.Random, *, members: list[int] | None = None, sentinels: bool = True) -> None:
    """Start the given pods (default: all) in a random order, 0 to 0.5 s apart."""
    members = list(range(len(cluster.members))) if members is None else members
    pods: list[tuple[str, int]] = [("member", i) for i in members]
    if sentinels:
        pods += [("sentinel", i) for i in range(len(cluster.sentinels))]
    rng.shuffle(pods)
    print("restart order:", ", ".join(f"{kind}-{i}" for kind, i in pods))
    for kind, index in pods:
        (cluster.spawn_member if kind == "member" else cluster.spawn_sentinel)(index)
        time.sleep(rng.uniform(0, 0.5))


def test_all_sentinels_restart_with_every_member_healthy(cluster: LocalRedisSet, ledger: Ledger, rng: random.Random) -> None:
    fail_over_away_from_redis_0(cluster)
    ledger.write("before", 50)
    for index in range(len(cluster.sentinels)):
        cluster.kill_sentinel(index)
    order = list(range(len(cluster.sentinels)))
    rng.shuffle(order)
    for index in order:
        cluster.spawn_sentinel(index)

    ledger.first_acknowledged_write("the Sentinels' restart")
    # The Sentinels resumed from their saved state (the primary of the latest failover, not
    # redis-0). On a loaded machine a 1 s down-after may fail over once more afterwards:
    # whichever member they agree on must hold every acknowledged write.
    assert cluster.agreed_primary_port() in cluster.member_ports
    ledger.assert_all_on_primary("Sentinels restarted")
    for index in range(len(cluster.sentinels)):
        assert "(saved state)" in cluster.sentinels[index].log.read_text()


def test_member_down_during_acknowledged_writes_then_every_pod_restarts(
    cluster: LocalRedisSet, ledger: Ledger, rng: random.Random,
) -> None:
    fail_over_away_from_redis_0(cluster)
    ledger.write("before", 20)
    cluster.kill_member(0)
    ledger.write("while-redis-0-down", 100)
    power_cut(cluster)
    restart(cluster, rng)

    ledger.first_acknowledged_write("the power cut")
    primary = ledger.assert_all_on_primary("redis-0 was down during 100 acknowledged writes, then every pod restarted")
    assert primary != 0, "redis-0 came back with old data as the primary"
    # redis-0 comes back as a replica and receives what it missed.
    cluster.wait_rejoined(0, timeout_s=RECOVERY_TIMEOUT_S)
    replica = cluster.admin(0)
    assert all(replica.get(k) == v for k, v in ledger.acknowledged.items())


def test_every_pod_restarts_and_redis_0_never_comes_back(cluster: LocalRedisSet, ledger: Ledger, rng: random.Random) -> None:
    primary = fail_over_away_from_redis_0(cluster)
    ledger.write("before", 50)
    power_cut(cluster)
    restart(cluster, rng, members=[1, 2])

    ledger.first_acknowledged_write("the power cut without redis-0")
    assert ledger.assert_all_on_primary("every pod restarted but redis-0") == primary
    other = 3 - primary
    assert cluster.wait_rejoined(other, timeout_s=RECOVERY_TIMEOUT_S)["role"] == "slave"


def test_five_power_cuts_restarting_in_random_order(cluster: LocalRedisSet, ledger: Ledger, rng: random.Random) -> None:
    for round_ in range(5):
        ledger.write(f"round-{round_}", 30)
        # Now and then a replica is already down when the next writes are acknowledged,
        # so it comes back from the cut with old data.
        if rng.random() < 0.5:
            primary = ledger.primary_index()
            stale = rng.choice([i for i in range(len(cluster.members)) if i != primary])
            print(f"round {round_}: redis-{stale} down before the cut")
            cluster.kill_member(stale)
            ledger.write(f"round-{round_}-without-redis-{stale}", 30)
        power_cut(cluster)
        restart(cluster, rng)
        ledger.first_acknowledged_write(f"power cut {round_}")
        ledger.assert_all_on_primary(f"after power cut {round_}")


def test_first_boot_of_an_empty_set_waits_then_bootstraps_redis_0(cluster: LocalRedisSet) -> None:
    log = cluster.members[0].log.read_text()
    assert "starting as primary (first boot: empty data" in log
    for index in (1, 2):
        assert "the most up-to-date member answering" in cluster.members[index].log.read_text()


def test_a_member_with_data_and_nobody_answering_waits(cluster: LocalRedisSet, ledger: Ledger) -> None:
    ledger.write("data", 10)
    power_cut(cluster)
    # redis-0 holds data: with no Sentinel and no member answering it must not elect itself.
    cluster.spawn_member(0)
    time.sleep(3 * local_options().bootstrap_wait_s + 1)
    proc = cluster.members[0]
    assert cluster.running(proc)
    with pytest.raises(redis.ConnectionError):
        cluster.admin(0).ping()
    assert "does not elect itself" in proc.log.read_text()
    # Once the Sentinels are back it follows the primary they name.
    for index in range(len(cluster.sentinels)):
        cluster.spawn_sentinel(index)
    cluster.wait_member_answers(0, timeout_s=RECOVERY_TIMEOUT_S)


def test_primary_never_back_no_stale_promotion_until_an_operator_chooses(cluster: LocalRedisSet, ledger: Ledger, rng: random.Random) -> None:
    """After a full restart without the primary, offsets no longer tell a current replica
    from a stale one (they restart at 0): no replica is promoted on its own. An operator
    restores the priority of the replica they trust and asks for a failover."""
    ledger.write("before", 20)
    cluster.kill_member(1)
    ledger.write("without-redis-1", 50)  # acknowledged by redis-2 only: redis-1 is stale
    power_cut(cluster)
    restart(cluster, rng, members=[1, 2])

    # Once down-after has passed the Sentinels try to fail over: the attempt must find no
    # promotable replica, and leave both as they were.
    def aborted() -> bool:
        return any("-failover-abort-no-good-slave" in proc.log.read_text() for proc in cluster.sentinels)
    try:
        cluster.wait_for("the Sentinels' failover attempt", aborted, timeout_s=RECOVERY_TIMEOUT_S)
    except LocalRedisError:
        pytest.fail("the Sentinels never tried to fail over, or did not abort the attempt")
    for index in (1, 2):
        cluster.wait_member_answers(index)
        info = cluster.replication(index)
        assert info["role"] == "slave" and int(info["slave_priority"]) == 0, (index, info)

    cluster.admin(2).config_set("replica-priority", 100)

    def failover_started() -> bool:
        try:
            return bool(cluster.sentinel_admin(0).execute_command("SENTINEL", "FAILOVER", cluster.options.master_name))
        except redis.ResponseError:  # INPROG or NOGOODSLAVE while Sentinel's view settles
            return False
    cluster.wait_for("Sentinel to accept a failover", failover_started, timeout_s=RECOVERY_TIMEOUT_S, interval_s=0.5)
    cluster.wait_new_primary(cluster.member_ports[0], timeout_s=RECOVERY_TIMEOUT_S)
    ledger.first_acknowledged_write("the operator's failover")
    assert ledger.assert_all_on_primary("the operator promoted redis-2") == 2


def test_primary_back_without_its_volume_waits_for_the_failover(cluster: LocalRedisSet, ledger: Ledger) -> None:
    """The Sentinels still name redis-0 when it restarts with an empty volume: started as an
    empty primary it would empty its replicas. It waits, and follows the promoted replica."""
    ledger.write("before", 50)
    cluster.kill_member(0)
    shutil.rmtree(cluster.members[0].env["REDIS_DATA_DIR"])
    Path(cluster.members[0].env["REDIS_DATA_DIR"]).mkdir()
    cluster.spawn_member(0)

    new_port, _ = cluster.wait_new_primary(
        cluster.member_ports[0], timeout_s=3 * (REDIS_DOWN_AFTER_MS + REDIS_FAILOVER_TIMEOUT_MS) / 1000)
    ledger.first_acknowledged_write("the failover")
    assert ledger.assert_all_on_primary("redis-0 lost its volume") == cluster.member_index(new_port)
    assert cluster.wait_rejoined(0, timeout_s=RECOVERY_TIMEOUT_S)["role"] == "slave"
    assert "whose data directory is empty: waiting for their failover" in cluster.members[0].log.read_text()
    replica = cluster.admin(0)
    assert all(replica.get(k) == v for k, v in ledger.acknowledged.items())
