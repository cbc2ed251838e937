"""The servers of every component under the EKS profile's limits and settings, not only the Pi's.

The other real-server tests run the Pi profile and Kafka in both layouts. Here each of
ZooKeeper, Redis with its Sentinels and PostgreSQL starts with the EKS profile's heap or
settings at the default size and runs under the EKS containers' limits, takes acknowledged
writes, rides out a crash of its leader or primary, and keeps every acknowledged write; no
server may run out of memory (the integration conftest checks for OOM kills after each
test). Under the load its benchmark applies, each keeps the headroom below its memory limit
that final_problem/sizes.py states (and the JVMs' GC pauses their bound): ZooKeeper and
Redis here, Cadence with its PostgreSQL in the last test, Kafka in test_kafka_cluster.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest

from bench.cadence import workflows
from bench.zookeeper import sequential_ops
from final_problem.charts.cadence import CadenceProps
from final_problem.charts.postgres import PostgresProps
from final_problem.charts.redis import RedisProps
from final_problem.charts.zookeeper import ZooKeeperProps
from final_problem.clients import cadence as sample
from final_problem.clients.redis import RedisClient, RedisSettings
from final_problem.clients.zookeeper import ZooKeeperClient
from final_problem.local import cadence as tools
from final_problem.local import kill_group
from final_problem.local.limits import Limits
from final_problem.local.postgres import LocalPostgres
from final_problem.local.redis import LocalRedisSet, local_options
from final_problem.local.zookeeper import LocalEnsemble
from final_problem.profiles import EKS
from final_problem.renderers.cadence import Database
from tests.integration.conftest import REDIS_DOWN_AFTER_MS, assert_within_headroom, fill_to_maxmemory

pytestmark = pytest.mark.integration


def test_zookeeper_under_the_eks_limits(tmp_path: Path) -> None:
    props = ZooKeeperProps.for_profile(EKS)
    with LocalEnsemble(workdir=tmp_path, profile=EKS) as ensemble:
        assert ensemble.heap_mib == props.effective_heap_mib == props.memory_mib // 2
        ensemble.start_all()
        leader = ensemble.wait_for_quorum(timeout=60)
        assert {g.limits for g in ensemble.groups.groups.values()} == {Limits.of(props.sizing)}
        with ZooKeeperClient(hosts=ensemble.hosts, timeout=5) as client:
            # bench/zookeeper.py's load: sequential writes, then reads, of 100 B.
            sequential_ops(client, ops=2000, value=b"x" * 100)
            assert_within_headroom(ensemble.groups.usage(), "zookeeper", gc_pauses_ms=ensemble.gc_pauses_ms())
            for i in range(20):
                client.put(f"/eks/{i}", str(i).encode())
            ensemble.kill(leader)
            ensemble.wait_for_quorum(timeout=30)
            client.put("/eks/after", b"x")
            assert [client.get(f"/eks/{i}", linearizable=True) for i in range(20)] == [str(i).encode() for i in range(20)]
        assert not [i for i in ensemble.procs if "OutOfMemoryError" in ensemble.log(i)]


def test_redis_under_the_eks_limits(tmp_path: Path) -> None:
    # The EKS profile's memory, maxmemory and persistence, with the test timing of the other
    # Redis tests (the chart's down-after, a short failover timeout and first-boot wait).
    eks = RedisProps.for_profile(EKS, down_after_ms=REDIS_DOWN_AFTER_MS, failover_timeout_ms=2 * REDIS_DOWN_AFTER_MS,
                                 bootstrap_wait_s=1).config_options()
    options = dataclasses.replace(local_options(), maxmemory_mib=eks.maxmemory_mib, appendfsync=eks.appendfsync)
    with LocalRedisSet(workdir=tmp_path, options=options, profile=EKS) as cluster:
        props = RedisProps.for_profile(EKS)
        assert cluster.limits["redis"] == Limits.of(props.redis_sizing)
        assert cluster.admin(0).config_get("maxmemory")["maxmemory"] == str(props.maxmemory_mib * 1024 * 1024)
        client = RedisClient(settings=RedisSettings.from_env(cluster.client_env(), secret=lambda key: ""))
        try:
            for i in range(100):
                client.set_durable(f"eks:{i}", str(i), replicas=1, timeout_ms=2000)
            old = client.primary_address()[1]
            cluster.kill_member(cluster.member_index(old))
            cluster.wait_new_primary(old, timeout_s=60)
            client.set_durable("eks:after", "x", replicas=1, timeout_ms=2000)
            assert [client.get(f"eks:{i}", from_primary=True) for i in range(100)] == [str(i) for i in range(100)]
            # Last: a full set refuses writes.
            fill_to_maxmemory(cluster, client.primary_address()[1], props.maxmemory_mib)
            # The members still running (the old primary was killed above).
            running = {p.name for p in cluster.members if cluster.running(p)}
            assert_within_headroom([u for u in cluster.groups.usage() if u.name in running], "redis")
        finally:
            client.close()


def test_postgres_under_the_eks_limits_keeps_commits_through_a_crash() -> None:
    props = PostgresProps.for_profile(EKS)
    with LocalPostgres(profile=EKS) as server:
        assert server.query("SHOW shared_buffers") == [[f"{props.shared_buffers_mib}MB"]]
        server.psql("CREATE TABLE eks (n int); INSERT INTO eks SELECT generate_series(1, 1000)")
        server.kill()
        server.start()
        assert server.query("SELECT count(*) FROM eks") == [["1000"]]


def test_cadence_and_postgres_under_the_eks_limits_keep_their_headroom(tmp_path: Path) -> None:
    """bench/cadence.py's workflow load, shortened (EchoWorkflow one at a time, then 20 in
    flight), on one of each Cadence service and PostgreSQL, at the EKS profile's sizes."""
    props = CadenceProps.for_profile(EKS, frontend_replicas=1, history_replicas=1, matching_replicas=1)
    with LocalPostgres(profile=EKS) as server:
        database = Database(host=server.host, port=server.port, user=server.user)
        setup = tools.run_schema_script("setup", database=database, password=server.password)
        assert setup.returncode == 0, setup.stderr[-2000:]
        with tools.LocalCadence(database=database, password=server.password, workdir=tmp_path, props=props) as cadence:
            cadence.start_all()
            cadence.wait_ready()
            domain = cadence.register_domain()
            assert domain.returncode == 0, domain.stderr[-2000:]
            worker = sample.spawn_worker(target=cadence.frontend_address, domain=props.domain,
                                         log=tmp_path / "worker.log")
            try:
                asyncio.run(workflows(cadence, count=20, concurrency=1))
                asyncio.run(workflows(cadence, count=100, concurrency=20))
            finally:
                kill_group(worker)
            for u in cadence.groups.usage():
                assert_within_headroom([u], f"cadence_{cadence.instances[u.name]}")
        # Its processes share the buffers: the charged peak counts them once.
        assert_within_headroom(server.groups.usage(), "postgres", charged=True)
