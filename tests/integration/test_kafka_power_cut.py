"""A real power cut of the Pi's Kafka nodes: every node loses what it had not synced.

The three combined nodes of the Pi layout run from the chart's configuration under their
pods' limits, each node's log directory an ext4 disk of
:class:`final_problem.local.powercut.PowerStrip` (as a Pi mounts its card). Two producers
write acks=all records, one at a time, until the cut, each to a topic of its own: one topic
with the chart's settings, one with Kafka's own flush default set on the topic
(``flush.messages``, which overrides the broker's ``log.flush.interval.messages`` for its
log). Every node is frozen, its disk cloned as it stood, killed and restarted from the clone:
one cut for both. With the Pi's default (``kafka.fsync_every_write``) every acknowledged
record must be there; with Kafka's own default (no fsync: durability from replication, which
one power strip defeats) the same cut loses acknowledged records, which shows the harness
catches it. Run with ``-s`` for the figures.
"""

from __future__ import annotations

import time
import uuid

import pytest
from kafka import KafkaConsumer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType

from final_problem.charts.kafka import KafkaProps
from final_problem.clients.kafka import admin, close, producer
from final_problem.clients.kafka_topics import TopicSpec, reconcile
from final_problem.local.kafka import LocalKafkaCluster, missing_binaries
from final_problem.local.powercut import Losses, LiveWriter, PowerStrip, losses
from final_problem.profiles import PI
from tests.integration.conftest import require_power_cut

pytestmark = pytest.mark.integration

#: Seconds the producer writes before the cut: longer than one ext4 journal commit (5 s).
WRITE_S = 6
RECOVERY_TIMEOUT_S = 240


def read_back(cluster: LocalKafkaCluster, topic: str) -> set[int]:
    """The sequence numbers in ``topic`` (one partition), read up to its high watermark."""
    c = KafkaConsumer(**cluster.app_settings().common(), group_id=None, enable_auto_commit=False)
    try:
        tp = TopicPartition(topic, 0)
        c.assign([tp])
        c.seek_to_beginning(tp)
        end = cluster.wait_for("the high watermark", lambda: c.end_offsets([tp]), timeout=60)[tp]
        seen: set[int] = set()
        deadline = time.monotonic() + 120
        while c.position(tp) < end and time.monotonic() < deadline:
            for batch in c.poll(timeout_ms=500).values():
                seen.update(int(r.value) for r in batch)
        return seen
    finally:
        c.close()


#: Kafka's own ``log.flush.interval.messages`` (and topic ``flush.messages``): Long.MAX_VALUE,
#: no fsync but the OS's (https://kafka.apache.org/documentation/#topicconfigs_flush.messages).
KAFKA_DEFAULT_FLUSH_MESSAGES = str(2**63 - 1)


@pytest.fixture(scope="module")
def cut(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Losses]:
    """One power cut of the Pi's Kafka nodes (the chart's settings), with a producer writing
    to each of two topics until it: "chart" (the chart's settings) and "kafka-default"
    (Kafka's flush default on the topic). What each lost."""
    require_power_cut()
    missing = missing_binaries()
    if missing:
        pytest.fail(f"cannot run Kafka here, missing: {', '.join(missing)}")
    props = KafkaProps.for_profile(PI)
    assert props.fsync_every_write
    workdir = tmp_path_factory.mktemp("kafka-power-cut")
    with PowerStrip(workdir / "power") as strip, LocalKafkaCluster(workdir=workdir / "kafka", layout="combined",
                                                                    props=props) as cluster:
        for node_id in cluster.procs:
            strip.add_disk(f"kafka-{node_id}", cluster.volume(node_id), size_gib=props.broker_storage_gib)
        cluster.start_all()
        cluster.wait_healthy()
        topics = {"chart": cluster.create_topic(partitions=1)}
        a = admin(cluster.app_settings())
        try:
            name = f"unsynced-{uuid.uuid4().hex[:10]}"
            reconcile(a, [TopicSpec(name=name, partitions=1, replication_factor=3,
                                    configs={"flush.messages": KAFKA_DEFAULT_FLUSH_MESSAGES})])
            # What each topic's log runs with: the chart's fsync of every write, and Kafka's default.
            described = a.describe_configs([ConfigResource(ConfigResourceType.TOPIC, t)
                                            for t in (topics["chart"], name)], config_filter="all")["topic"]
            flush = [described[t]["flush.messages"]["value"] for t in (topics["chart"], name)]
            assert flush == ["1", KAFKA_DEFAULT_FLUSH_MESSAGES], flush
        finally:
            a.close()
        cluster.wait_healthy([name])
        topics["kafka-default"] = name
        # The topics' metadata and the nodes' first files written back, as on a cluster that
        # has run for more than 30 s: the cut is about the records.
        strip.settle()
        producers = {key: producer(cluster.app_settings(), linger_ms=0, request_timeout_ms=5000) for key in topics}

        def writer(key: str) -> LiveWriter:
            p, topic = producers[key], topics[key]
            return LiveWriter(lambda seq: p.send(topic, value=str(seq).encode()).get(timeout=30), name=f"writer-{key}")

        writers = {key: writer(key).start() for key in topics}
        time.sleep(WRITE_S)
        strip.freeze(proc.process.pid for proc in cluster.procs.values() if proc.process is not None)
        acks = {key: w.stop() for key, w in writers.items()}
        strip.cut()
        for p in producers.values():
            close(p, timeout_s=0)  # what it still held was never acknowledged
        for w in writers.values():
            w.join()
        cluster.kill_all()  # reaps the processes the cut killed
        cluster.start_all()
        cluster.wait_healthy(list(topics.values()), timeout=RECOVERY_TIMEOUT_S)
        result = {key: losses(acks[key], read_back(cluster, topic), frozen_at=strip.frozen_at or 0.0,
                              started_at=writers[key].started_at) for key, topic in topics.items()}
        assert not cluster.out_of_memory()
    print()
    print(result["chart"].summary("Kafka on the Pi, fsync every write (default)"))
    print(result["kafka-default"].summary("Kafka on the Pi, no fsync (Kafka's default, on the topic)"))
    return result


def test_pi_kafka_fsyncing_every_write_loses_no_acknowledged_record(cut: dict[str, Losses]) -> None:
    result = cut["chart"]
    assert result.acknowledged > 0
    assert not result.lost, f"{len(result.lost)} acknowledged records lost, e.g. {result.lost[:5]}"


def test_kafka_without_fsync_loses_acknowledged_records_when_every_node_loses_power(cut: dict[str, Losses]) -> None:
    """Kafka's own default: acks=all means every in-sync replica has the record in its page
    cache. Three nodes on one power strip lose it together."""
    result = cut["kafka-default"]
    assert result.lost, f"all {result.acknowledged} acknowledged records survived although nothing was fsynced"
