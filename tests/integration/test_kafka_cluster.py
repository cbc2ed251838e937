"""The chart's Kafka configuration on real brokers: authentication, topics as code, durability.

KRaft clusters run on loopback from the ``server.properties`` the chart renders
(final_problem.local.kafka remaps hosts, ports and directories; failure detection, buffers
and threads are the chart's for the profile). Each node runs with its role's JVM command
line from the chart, under its container's CPU and memory limits (cgroups), so the JVM
sizes itself as in the pod. The dedicated layout (3 controllers + 3 brokers, as on EKS)
carries most tests; the combined layout (3 broker+controller nodes, as on the Pi) gets
the crash tests too. Every client logs in as the chart's ``app`` user with SCRAM-SHA-512,
as deployed.

"Power cut" here kills every JVM with SIGKILL at once; the host's page cache survives,
so it proves the on-disk logs and the quorum recover, not what an fsync policy would add
(Kafka relies on replication, not fsync, by default).
"""

from __future__ import annotations

import logging
import random
import time
import urllib.request
import uuid
from collections import defaultdict
from typing import Any, Iterator

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.errors import KafkaError, KafkaTimeoutError

from final_problem.clients.kafka import KafkaClientError, KafkaSettings, admin, produce, producer
from final_problem.clients.kafka_topics import ReconcileError, TopicSpec, reconcile
from final_problem.local.kafka import KafkaClusterError, LocalKafkaCluster, missing_binaries
from tests.integration.conftest import assert_within_headroom

pytestmark = pytest.mark.integration

log = logging.getLogger(__name__)


def running_cluster(tmp_path_factory: pytest.TempPathFactory, layout: str) -> Iterator[LocalKafkaCluster]:
    """A started cluster of ``layout``, stopped at module end, even on failure."""
    missing = missing_binaries()
    if missing:
        pytest.fail(f"cannot run Kafka here, missing: {', '.join(missing)}")
    # The Pi layout also loads the chart's metrics agent and rules.
    cluster = LocalKafkaCluster(workdir=tmp_path_factory.mktemp(f"kafka-{layout}"), layout=layout,
                                metrics=layout == "combined")
    try:
        cluster.start_all()
        cluster.wait_healthy()
    except BaseException:
        logs = "\n".join(f"--- node {i}\n{cluster.tail(i, 40)}" for i in cluster.procs)
        cluster.close()
        pytest.fail(f"the {layout} Kafka cluster did not start:\n{logs}")
    try:
        yield cluster
        # Whatever the module did to it, no node may have run out of memory under its limits.
        assert not cluster.out_of_memory(), f"the {layout} cluster ran out of memory: {cluster.out_of_memory()}"
    finally:
        cluster.close()


@pytest.fixture(scope="module")
def kafka_dedicated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafkaCluster]:
    """3 controllers + 3 brokers (the EKS layout)."""
    yield from running_cluster(tmp_path_factory, "dedicated")


@pytest.fixture(scope="module")
def kafka_combined(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafkaCluster]:
    """3 broker+controller nodes (the Pi layout)."""
    yield from running_cluster(tmp_path_factory, "combined")


@pytest.fixture(params=["dedicated", "combined"])
def kafka_any(request: pytest.FixtureRequest) -> LocalKafkaCluster:
    return request.getfixturevalue(f"kafka_{request.param}")


def app_settings(cluster: LocalKafkaCluster) -> KafkaSettings:
    """The ``app`` user's settings, read the way the client reads them (environment)."""
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": cluster.bootstrap_servers,
        "KAFKA_USERNAME": cluster.credentials.app_user,
        "KAFKA_PASSWORD": cluster.credentials.app,
    }
    return KafkaSettings.from_env(env, secret=lambda key: pytest.fail(f"asked the Secret for {key}"))


def read_all(cluster: LocalKafkaCluster, topic: str) -> list[Any]:
    """Every record of ``topic``: each partition read from its first offset up to the high
    watermark its leader reports with the records (the writes have ended). An acknowledged
    (acks=all) record is below it, and so is any duplicate or stray record the writes left, so
    reading stops there instead of after seconds of silence. (The high watermark comes with
    each fetch: a ListOffsets request for the latest offset can be refused for a while after a
    leader change, until the new leader's high watermark passes its epoch's first offset.)"""
    c = KafkaConsumer(**app_settings(cluster).common(), group_id=None, enable_auto_commit=False,
                      client_id=f"check-{uuid.uuid4().hex[:8]}")
    try:
        numbers = cluster.wait_for(f"the partitions of {topic}", lambda: c.partitions_for_topic(topic), timeout=60)
        partitions = [TopicPartition(topic, n) for n in sorted(numbers)]
        c.assign(partitions)
        c.seek_to_beginning()
        records: list[Any] = []

        def read_to_the_end() -> bool:
            for batch in c.poll(timeout_ms=500).values():
                records.extend(batch)
            ends = [c.highwater(tp) for tp in partitions]
            return all(end is not None and c.position(tp) >= end for tp, end in zip(partitions, ends, strict=True))

        cluster.wait_for(f"every record of {topic} up to its high watermarks", read_to_the_end, timeout=120,
                         interval=0, retry_on=())
        return records
    finally:
        c.close()


def assert_exactly_once_in_order(acked: dict[bytes, tuple[int, int]], records: list[Any]) -> None:
    """Each acknowledged value read exactly once, at its acknowledged partition and offset,
    and per partition in the order it was sent."""
    seen: dict[bytes, int] = defaultdict(int)
    for r in records:
        seen[r.value] += 1
    missing = [v for v in acked if seen[v] == 0]
    duplicated = [v for v, n in seen.items() if n > 1]
    assert not missing, f"{len(missing)} acknowledged records lost, e.g. {missing[:5]}"
    assert not duplicated, f"{len(duplicated)} records duplicated, e.g. {duplicated[:5]}"
    where = {r.value: (r.partition, r.offset) for r in records}
    moved = [v for v, pos in acked.items() if where[v] != pos]
    assert not moved, f"records not at their acknowledged offset, e.g. {moved[:5]}"
    by_partition: dict[int, list[int]] = defaultdict(list)
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        by_partition[r.partition].append(int(r.value.split(b"-")[1]))
    for partition, sequence in by_partition.items():
        assert sequence == sorted(sequence), f"partition {partition} out of send order"


def produce_acked(cluster: LocalKafkaCluster, topic: str, count: int, *, during: Any = None,
                  prefix: str = "rec") -> dict[bytes, tuple[int, int]]:
    """Send ``count`` records with the project's producer (acks=all, idempotent), one key
    per partition-bound stream; return the acknowledged ones with partition and offset.
    ``during(i)`` runs before record ``i``."""
    p = producer(app_settings(cluster), delivery_timeout_ms=120_000)
    futures = []
    try:
        for i in range(count):
            if during is not None:
                during(i)
            value = f"{prefix}-{i}".encode()
            futures.append((value, p.send(topic, key=str(i % 3).encode(), value=value)))
            if i % 50 == 0:
                time.sleep(0.01)
        p.flush(timeout=180)
    finally:
        p.close(timeout=30)
    acked: dict[bytes, tuple[int, int]] = {}
    for value, f in futures:
        try:
            meta = f.get(timeout=1)
        except KafkaError as e:  # not acknowledged: allowed to be lost
            log.info("not acknowledged: %s %s", value, e)
            continue
        acked[value] = (meta.partition, meta.offset)
    return acked


# -- authentication ----------------------------------------------------------------------


def _bootstrap(cluster: LocalKafkaCluster, **auth: Any) -> KafkaAdminClient:
    return KafkaAdminClient(bootstrap_servers=cluster.bootstrap_servers.split(",")[:1], bootstrap_timeout_ms=4000, **auth)


def test_unauthenticated_client_is_refused(kafka_dedicated: LocalKafkaCluster) -> None:
    broker = kafka_dedicated.broker_ids[0]
    before = kafka_dedicated.log(broker).count("during SASL handshake")
    with pytest.raises(KafkaTimeoutError):
        _bootstrap(kafka_dedicated)
    assert kafka_dedicated.log(broker).count("during SASL handshake") > before, "the broker did not refuse the request"


def test_wrong_password_is_refused(kafka_dedicated: LocalKafkaCluster) -> None:
    broker = kafka_dedicated.broker_ids[0]
    marker = "invalid credentials with SASL mechanism SCRAM-SHA-512"
    before = kafka_dedicated.log(broker).count(marker)
    scram = {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-512", "sasl_plain_username": "app"}
    with pytest.raises(KafkaTimeoutError):
        _bootstrap(kafka_dedicated, sasl_plain_password="wrong", **scram)
    assert kafka_dedicated.log(broker).count(marker) > before
    # The same client with the chart's password gets in: the refusal was the password.
    _bootstrap(kafka_dedicated, sasl_plain_password=kafka_dedicated.credentials.app, **scram).close()


def test_min_insync_replicas_is_the_cluster_default(kafka_dedicated: LocalKafkaCluster) -> None:
    from kafka.admin import ConfigResource, ConfigResourceType

    a = admin(app_settings(kafka_dedicated))
    try:
        broker = str(kafka_dedicated.broker_ids[0])
        result = a.describe_configs(
            [ConfigResource(ConfigResourceType.BROKER, broker, configs={"min.insync.replicas": None})], config_filter="all")
        entry = result["broker"][broker]["min.insync.replicas"]
    finally:
        a.close()
    assert entry["value"] == "2"
    # With eligible leader replicas the controllers apply it cluster-wide (KIP-966).
    assert entry["config_source"] == "DYNAMIC_DEFAULT_BROKER_CONFIG"


def test_metrics_agent_serves_the_charts_rules_and_health(kafka_combined: LocalKafkaCluster) -> None:
    node = kafka_combined.controller_ids[0]
    base = f"http://127.0.0.1:{kafka_combined.metrics_ports[node]}"
    # The chart's liveness probe.
    with urllib.request.urlopen(f"{base}/-/healthy", timeout=10) as response:
        assert response.status == 200
    with urllib.request.urlopen(f"{base}/metrics", timeout=30) as response:
        body = response.read().decode()
    names = {line.split("{")[0].split(" ")[0] for line in body.splitlines() if line.startswith("kafka_")}
    for name in ("kafka_server_replicamanager_underreplicatedpartitions",
                 "kafka_controller_kafkacontroller_offlinepartitionscount",
                 "kafka_controller_kafkacontroller_activecontrollercount",
                 "kafka_raft_current_leader", "kafka_server_brokertopicmetrics_messagesin_total"):
        assert name in names, f"{name} not exported"


# -- the pod's limits --------------------------------------------------------------------


def test_each_node_runs_under_its_containers_limits_with_the_charts_collector(kafka_any: LocalKafkaCluster) -> None:
    cluster = kafka_any
    props = cluster.props
    for node_id, proc in cluster.procs.items():
        sizing = props.broker_sizing if proc.node.is_broker else props.controller_sizing
        group = cluster.groups.groups[cluster.group_name(node_id)]
        assert proc.process is not None
        assert proc.process.pid in group.pids(), f"node {node_id} is not in its cgroup"
        limit = group.memory_dir / ("memory.max" if group.v2 else "memory.limit_in_bytes")
        assert int(limit.read_text()) == sizing.memory_limit_mib * 1024 * 1024
        heap = props.broker_heap if proc.node.is_broker else props.controller_heap
        assert proc.heap_mib == heap
        # The chart names G1 (the image's start script does); without it the JVM would pick
        # Serial inside these limits.
        (gc_log,) = proc.directory.glob(f"gc-{proc.process.pid}.log")
        assert "Using G1" in gc_log.read_text()


def test_under_the_benchmark_load_each_node_keeps_its_headroom(kafka_any: LocalKafkaCluster) -> None:
    """bench/kafka.py's load, shortened (the project's producer, acks=all, 1 KiB records; the
    end-to-end latency run): no node comes within its stated headroom of its memory limit
    (final_problem/sizes.py: a quarter, the broker's page cache), none is OOM-killed, and
    GC pauses stay below the stated p99."""
    from bench.kafka import end_to_end_latency, project_throughput

    cluster = kafka_any
    project_throughput(cluster, cluster.create_topic(partitions=3, prefix="load"), 5000)
    end_to_end_latency(cluster, cluster.create_topic(partitions=3, prefix="load"), 200)
    usage = {u.name: u for u in cluster.groups.usage()}
    for role, ids in (("kafka_broker", cluster.broker_ids),
                      ("kafka_controller", [i for i in cluster.controller_ids if i not in cluster.broker_ids])):
        if ids:
            assert_within_headroom([usage[cluster.group_name(i)] for i in ids], role,
                                   gc_pauses_ms=[p for i in ids for p in cluster.gc_pauses_ms(i)])


# -- topics as code ----------------------------------------------------------------------


def test_a_topic_created_without_a_count_gets_the_charts_partitions_and_replicas(kafka_any: LocalKafkaCluster) -> None:
    """In KRaft the controllers apply topic-creation defaults: the chart sets them there,
    on both layouts (set on brokers only, such a topic got Kafka's 1 partition)."""
    from kafka.admin import NewTopic

    name = f"defaults-{uuid.uuid4().hex[:6]}"
    a = admin(app_settings(kafka_any))
    try:
        a.create_topics([NewTopic(name)])  # no count, no factor: -1 in the request

        def described() -> dict[str, Any] | None:
            # A broker's metadata may list the topic a moment before its partitions.
            (topic,) = a.describe_topics([name])
            return topic if topic["partitions"] else None

        topic = kafka_any.wait_for(f"topic {name} with its partitions", described, timeout=60)
    finally:
        a.close()
    assert len(topic["partitions"]) == kafka_any.props.num_partitions == 3
    assert {len(p["replica_nodes"]) for p in topic["partitions"]} == {kafka_any.props.replication_factor}



def test_topic_job_creates_is_idempotent_and_raises_partitions(kafka_dedicated: LocalKafkaCluster) -> None:
    name = f"orders-{uuid.uuid4().hex[:6]}"
    declared = [TopicSpec(name=name, partitions=3, replication_factor=3, configs={"retention.ms": "3600000"})]
    a = admin(app_settings(kafka_dedicated))
    try:
        first = reconcile(a, declared)
        assert first.created == [name]
        settle(kafka_dedicated, a, name, partitions=3, retention="3600000")
        second = reconcile(a, declared)
        assert not second.changed, second.lines()
        raised = [TopicSpec(name=name, partitions=6, replication_factor=3, configs={"retention.ms": "7200000"})]
        third = reconcile(a, raised)
        assert third.partitions_raised == {name: (3, 6)}
        assert third.configs_changed == {name: {"retention.ms": "7200000"}}
        settle(kafka_dedicated, a, name, partitions=6, retention="7200000")
        (topic,) = a.describe_topics([name])
        assert all(len(p["replica_nodes"]) == 3 for p in topic["partitions"])
        with pytest.raises(ReconcileError, match="cannot remove partitions"):
            reconcile(a, [TopicSpec(name=name, partitions=2)])
        assert not reconcile(a, raised).changed
    finally:
        a.close()


def settle(cluster: LocalKafkaCluster, a: KafkaAdminClient, topic: str, *, partitions: int, retention: str) -> None:
    """Wait until every broker serves the topic's new state: brokers apply a change when
    they replay it from the metadata log, so one may answer from just before it."""
    from kafka.admin import ConfigResource, ConfigResourceType

    def seen_by_all() -> bool:
        for broker in cluster.broker_ids:
            one = admin(app_settings(cluster), bootstrap_servers=[cluster.config.node(broker).bootstrap])
            try:
                (t,) = one.describe_topics([topic])
                configs = one.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic, configs={"retention.ms": None})])
                if len(t["partitions"]) != partitions or configs["topic"][topic]["retention.ms"]["value"] != retention:
                    return False
            finally:
                one.close()
        return True

    cluster.wait_for(f"every broker to serve {topic} as declared", seen_by_all, timeout=30)


# -- durability --------------------------------------------------------------------------


def test_broker_killed_during_acks_all_produce_loses_and_duplicates_nothing(kafka_any: LocalKafkaCluster) -> None:
    cluster = kafka_any
    topic = cluster.create_topic()
    victim = random.choice(cluster.broker_ids)
    count = 3000

    def chaos(i: int) -> None:
        if i == count // 3:
            cluster.kill(victim)
        elif i == 2 * count // 3:
            cluster.start(victim)

    try:
        acked = produce_acked(cluster, topic, count, during=chaos)
    finally:
        cluster.start(victim)
    assert len(acked) >= count * 0.9, f"only {len(acked)} of {count} acknowledged"
    cluster.wait_healthy([topic])
    records = read_all(cluster, topic)
    assert_exactly_once_in_order(acked, records)


def test_two_brokers_down_refuses_acks_all_writes_then_recovers(kafka_dedicated: LocalKafkaCluster) -> None:
    cluster = kafka_dedicated
    topic = cluster.create_topic(partitions=1)
    down = cluster.broker_ids[:2]
    settings = app_settings(cluster)
    try:
        for node in down:
            cluster.kill(node)
        survivor = [b for b in cluster.broker_ids if b not in down]

        def isr_shrunk() -> bool:
            a = admin(settings, bootstrap_timeout_ms=5000)
            try:
                (t,) = a.describe_topics([topic])
                return all(p["isr_nodes"] == survivor and p["leader_id"] == survivor[0] for p in t["partitions"])
            finally:
                a.close()

        cluster.wait_for("the ISR to shrink to the surviving broker", isr_shrunk, timeout=120)
        # Retried until the delivery timeout (kept short here), then reported with the cause.
        with pytest.raises(KafkaClientError, match="NotEnoughReplicas"):
            produce(settings, topic, [b"must-not-be-acknowledged"], timeout_s=60,
                    delivery_timeout_ms=15_000, request_timeout_ms=5_000)
    finally:
        for node in down:
            cluster.start(node)
    cluster.wait_healthy([topic])
    assert produce(settings, topic, [b"after-recovery"], timeout_s=60)


def test_with_the_quorum_lost_dead_brokers_still_listed_as_unfenced_are_not_healthy(kafka_combined: LocalKafkaCluster) -> None:
    """Two of the three Pi-layout nodes killed: no controller majority is left to fence them,
    so the survivor's metadata still lists them as live brokers. wait_healthy must not trust
    that listing (clients that pick one of them are refused) and must wait until each
    restarted broker answers clients itself."""
    cluster = kafka_combined
    topic = cluster.create_topic(partitions=1)
    survivor, *down = cluster.broker_ids
    try:
        for node in down:
            cluster.kill(node)
        # A write the minority cannot acknowledge is reported when its timeout says, not later:
        # the flush, every acknowledgement and the close share one deadline.
        started = time.monotonic()
        with pytest.raises(KafkaClientError, match="not acknowledged"):
            produce(app_settings(cluster), topic, [b"minority"], timeout_s=6, request_timeout_ms=3_000)
        assert time.monotonic() - started < 6 + 10

        def listed() -> list[int]:
            # The client sends to a broker of the listing, and is refused when it picks a dead one.
            a = admin(app_settings(cluster), bootstrap_timeout_ms=5000)
            try:
                return sorted(b["broker_id"] for b in a.describe_cluster()["brokers"] if not b.get("is_fenced"))
            finally:
                a.close()

        assert cluster.wait_for("the survivor's broker listing", listed, timeout=60) == sorted(cluster.broker_ids)
        assert [cluster.serves(n) for n in cluster.broker_ids] == [True, False, False]
        with pytest.raises(KafkaClusterError, match="all brokers up"):
            cluster.wait_healthy(timeout=8)
    finally:
        for node in down:
            cluster.start(node)
    cluster.wait_healthy()
    assert all(cluster.serves(n) for n in cluster.broker_ids)


def test_active_controller_killed_a_new_one_is_elected_and_metadata_changes_work(kafka_any: LocalKafkaCluster) -> None:
    cluster = kafka_any
    settings = app_settings(cluster)

    def leader(other_than: int | None = None) -> list[int] | None:
        """[the quorum leader's id] (a list: node id 0 is falsy), once it is not ``other_than``."""
        a = admin(settings, bootstrap_timeout_ms=5000)
        try:
            lid = a.describe_metadata_quorum()["topics"][0]["partitions"][0]["leader_id"]
        finally:
            a.close()
        return [lid] if lid >= 0 and lid != other_than else None

    (old,) = cluster.wait_for("a quorum leader", leader, timeout=60)
    try:
        cluster.kill(old)
        (new,) = cluster.wait_for("a new quorum leader", lambda: leader(other_than=old), timeout=120)
        assert new in cluster.controller_ids
        name = f"after-failover-{uuid.uuid4().hex[:6]}"
        # In the combined layout the killed node was also a broker: two are left.
        replication = 3 if cluster.layout == "dedicated" else 2

        def created() -> bool:
            a = admin(settings, bootstrap_timeout_ms=5000)
            try:
                reconcile(a, [TopicSpec(name=name, partitions=2, replication_factor=replication)])
                return name in a.list_topics()
            finally:
                a.close()

        cluster.wait_for("a topic created through the new controller", created, timeout=120)
    finally:
        cluster.start(old)
    cluster.wait_healthy()


def test_power_cut_every_node_killed_at_once_keeps_every_acknowledged_record(kafka_any: LocalKafkaCluster) -> None:
    cluster = kafka_any
    topic = cluster.create_topic()
    acked = produce_acked(cluster, topic, 1500, prefix="pc")
    assert len(acked) == 1500
    cluster.kill_all()
    order = list(cluster.procs)
    random.shuffle(order)
    log.info("restart order %s", order)
    # Restarted with a pause between, in random order: brokers may come before any controller.
    for node in order:
        cluster.start(node)
        time.sleep(random.uniform(0.0, 2.0))
    cluster.wait_healthy([topic], timeout=240)
    records = read_all(cluster, topic)
    assert_exactly_once_in_order(acked, records)
    # And the cluster takes writes again.
    assert produce(app_settings(cluster), topic, [b"pc-after"], timeout_s=60)


def test_consumer_group_shares_partitions_while_the_producer_rides_out_a_broker_restart(kafka_dedicated: LocalKafkaCluster) -> None:
    from final_problem.clients.kafka import group_demo

    cluster = kafka_dedicated
    topic = cluster.create_topic(partitions=6)
    victim = cluster.broker_ids[-1]

    def restart_a_broker(i: int) -> None:
        if i == 100:
            cluster.kill(victim)
        elif i == 200:
            cluster.start(victim)

    try:
        result = group_demo(app_settings(cluster), topic, consumers=3, records=300, group_id=f"g-{topic}",
                            timeout_s=180, during_produce=restart_a_broker)
    finally:
        cluster.start(victim)
    # The producer survived the restart: every record acknowledged and consumed.
    assert sum(result.consumed.values()) >= 300
    owned = [p for parts in result.assignments.values() for p in parts]
    assert sorted(set(owned)) == list(range(6))
    assert sum(1 for parts in result.assignments.values() if parts) >= 2, result.assignments

