"""The chart's Redis configuration on real servers: authentication and Sentinel failover.

One primary, two replicas and three Sentinels run on loopback from the files the chart
renders, started by the chart's own start scripts (ports and paths remapped by
final_problem.local.redis), with the Sentinel timing of ``local_options`` (the chart's down-after).
"""

from __future__ import annotations

import subprocess
import threading
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from final_problem.clients import redis_exporter
from final_problem.clients.redis import RedisClient, RedisSettings
from final_problem.local.redis import LocalRedisSet, local_options
from tests.integration.conftest import (
    REDIS_DOWN_AFTER_MS, REDIS_FAILOVER_TIMEOUT_MS, assert_within_headroom, fill_to_maxmemory,
)

pytestmark = pytest.mark.integration

# A refused login is final: no retries (redis-py retries connection errors by default).
NO_RETRY = Retry(NoBackoff(), 0)


@pytest.fixture(scope="module")
def redis_shared_set(redis_binaries: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedisSet]:
    """A running set for the read-only checks (stopped at module end, even on failure)."""
    with LocalRedisSet(workdir=tmp_path_factory.mktemp("redis-shared"), options=local_options()) as cluster:
        yield cluster


@pytest.fixture
def redis_failover_set(redis_binaries: None, tmp_path: Path) -> Iterator[LocalRedisSet]:
    """A set of its own for the failover test, which kills its primary."""
    with LocalRedisSet(workdir=tmp_path, options=local_options()) as cluster:
        yield cluster


def redis_app_client(cluster: LocalRedisSet) -> RedisClient:
    settings = RedisSettings.from_env(cluster.client_env(), secret=lambda key: pytest.fail(f"asked the Secret for {key}"))
    return RedisClient(settings=settings)


def test_unauthenticated_commands_are_refused(redis_shared_set: LocalRedisSet) -> None:
    for port in redis_shared_set.member_ports:
        anonymous = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2, retry=NO_RETRY)
        with pytest.raises(redis.AuthenticationError):
            anonymous.get("any")
    anonymous_sentinel = redis.Redis(host="127.0.0.1", port=redis_shared_set.sentinel_ports[0], socket_timeout=2, retry=NO_RETRY)
    with pytest.raises(redis.AuthenticationError):
        anonymous_sentinel.execute_command("SENTINEL", "MASTERS")


def test_wrong_password_is_refused(redis_shared_set: LocalRedisSet) -> None:
    wrong = redis.Redis(host="127.0.0.1", port=redis_shared_set.member_ports[0], username="app", password="wrong", socket_timeout=2, retry=NO_RETRY)
    with pytest.raises(redis.AuthenticationError):
        wrong.ping()


def test_app_user_cannot_run_dangerous_commands(redis_shared_set: LocalRedisSet) -> None:
    app = redis.Redis(
        host="127.0.0.1", port=redis_shared_set.member_ports[0],
        username="app", password=redis_shared_set.passwords.app, socket_timeout=2,
    )
    assert app.set("allowed", "yes")
    for command in (("FLUSHALL",), ("CONFIG", "GET", "*"), ("KEYS", "*"), ("SHUTDOWN",), ("REPLICAOF", "NO", "ONE")):
        with pytest.raises(redis.exceptions.NoPermissionError):
            app.execute_command(*command)


def test_persistence_is_aof_everysec(redis_shared_set: LocalRedisSet) -> None:
    config = redis_shared_set.admin(0).config_get("append*")
    assert config["appendonly"] == "yes"
    assert config["appendfsync"] == "everysec"


def test_probes_pass_on_primary_replica_and_sentinel(redis_shared_set: LocalRedisSet) -> None:
    member, sentinel = redis_shared_set.members[1], redis_shared_set.sentinels[0]
    probe = str(member.config_dir / "probe.sh")
    for proc, check in ((member, "redis-live"), (member, "redis-ready"), (sentinel, "sentinel-live"), (sentinel, "sentinel-ready")):
        result = subprocess.run(["sh", probe, check], env=proc.env, capture_output=True, text=True, timeout=10)
        assert result.returncode == 0, f"{check} on {proc.name}: {result.stdout}{result.stderr}"


def test_probe_fails_with_wrong_password(redis_shared_set: LocalRedisSet) -> None:
    member = redis_shared_set.members[0]
    env = {**member.env, "REDIS_METRICS_PASSWORD": "wrong"}
    result = subprocess.run(["sh", str(member.config_dir / "probe.sh"), "redis-ready"], env=env, capture_output=True, timeout=10)
    assert result.returncode != 0


def test_metrics_exporter_reports_info(redis_shared_set: LocalRedisSet) -> None:
    port = redis_shared_set.member_ports[0]
    server = redis_exporter.serve(redis_port=port, password=redis_shared_set.passwords.metrics, bind="127.0.0.1", port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.server_address[1]}/metrics", timeout=5) as response:
            text = response.read().decode()
    finally:
        server.shutdown()
        server.server_close()
    metrics = dict(line.split(" ", 1) for line in text.splitlines())
    assert metrics["redis_up"] == "1"
    assert metrics["redis_role_primary"] == "1"
    assert metrics["redis_connected_slaves"] == "2"
    assert metrics["redis_aof_enabled"] == "1"


def test_failover_keeps_acknowledged_writes_and_old_primary_rejoins(redis_failover_set: LocalRedisSet) -> None:
    cluster = redis_failover_set
    old_port = cluster.member_ports[0]
    assert cluster.primary_by_sentinel() == ("127.0.0.1", old_port)
    client = redis_app_client(cluster)
    try:
        acknowledged = {}
        for i in range(200):
            key, value = f"key:{i}", f"value:{i}"
            assert client.set_durable(key, value, replicas=1, timeout_ms=2000) >= 1
            acknowledged[key] = value
        assert client.primary_address() == ("127.0.0.1", old_port)

        cluster.kill_member(0)
        # Sentinel needs down-after to see the primary down, then an election and the
        # promotion; the failover must finish within the configured timeouts.
        new_port, elapsed_s = cluster.wait_new_primary(
            old_port, timeout_s=(REDIS_DOWN_AFTER_MS + REDIS_FAILOVER_TIMEOUT_MS) / 1000
        )
        assert new_port in cluster.member_ports[1:]
        new_index = cluster.member_index(new_port)
        assert cluster.replication(new_index)["role"] == "master"

        # The client follows the promoted replica by itself and writes there.
        assert client.set_durable("after-failover", "yes", replicas=1, timeout_ms=5000) >= 1
        assert client.primary_address() == ("127.0.0.1", new_port)

        new_primary = cluster.admin(new_index)
        missing = [k for k, v in acknowledged.items() if new_primary.get(k) != v]
        assert not missing, f"{len(missing)} acknowledged writes lost, e.g. {missing[:3]}"

        # The old primary restarts through the chart's start script: it asks the
        # Sentinels and rejoins the new primary as a replica, with the new writes.
        # (On a busy host the Sentinels may fail over once more while it rejoins; what
        # must hold is that it comes back as a replica of whatever primary they agree on,
        # asked of the Sentinels rather than assumed, and that no acknowledged write is lost.)
        cluster.start_member(0)
        info = cluster.wait_rejoined(0, timeout_s=30)
        assert info["role"] == "slave"
        assert cluster.admin(0).get("after-failover") == "yes"
        assert all(cluster.admin(0).get(k) == v for k, v in acknowledged.items())
        log = cluster.members[0].log.read_text()
        assert "starting as replica of 127.0.0.1:" in log and "(named by the Sentinels)" in log
        # Reads through Sentinel go to a replica and see the data.
        assert client.get("key:7") == "value:7"
    finally:
        client.close()


def test_client_example_and_cache_aside(redis_shared_set: LocalRedisSet) -> None:
    from final_problem.clients.redis import cache_demo, example

    client = redis_app_client(redis_shared_set)
    lines: list[str] = []
    try:
        example(client, out=lines.append)
        cache_demo(client, out=lines.append, delay_s=0.01)
    finally:
        client.close()
    assert "1 replica(s) acknowledged" in lines[0] or "2 replica(s) acknowledged" in lines[0]
    assert lines[1].endswith("'hello from the platform'")
    assert lines[2].startswith("call 1: miss") and lines[3].startswith("call 2: hit")


def test_under_the_benchmark_load_and_full_every_member_keeps_its_headroom(redis_shared_set: LocalRedisSet) -> None:
    """bench/redis.py's SET/GET load (shortened), then the primary filled to maxmemory and forked
    for an AOF rewrite (bench/sizes.py): at the Pi's rendered limit no member is OOM-killed and
    each stays the stated allowance below it (final_problem/sizes.py: two copies of the data
    fit). Last in this module: the set is emptied afterwards."""
    from bench.redis import client_ops

    cluster = redis_shared_set
    client = redis_app_client(cluster)
    try:
        client_ops(client, 5000)
        port = client.primary_address()[1]
    finally:
        client.close()
    fill_to_maxmemory(cluster, port, cluster.options.maxmemory_mib)
    try:
        assert_within_headroom([u for u in cluster.groups.usage() if u.name.startswith("redis-")], "redis")
    finally:
        cluster.admin(cluster.member_index(port)).flushall()
