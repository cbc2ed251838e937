"""A real power cut of the Pi's Kafka nodes: every node loses what it had not synced.

The three combined nodes of the Pi layout run from the chart's configuration under their
pods' limits, each node's log directory an ext4 disk of
:class:`final_problem.local.powercut.PowerStrip` (as a Pi mounts its card). A producer
writes acks=all records, one at a time, until the cut; every node is frozen, its disk
cloned as it stood, killed and restarted from the clone. With the Pi's default
(``kafka.fsync_every_write``) every acknowledged record must be there; with Kafka's own
default (no fsync: durability from replication, which one power strip defeats) the same
cut loses acknowledged records, which shows the harness catches it. Run with ``-s`` for
the figures.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from kafka import KafkaConsumer, TopicPartition

from final_problem.charts.kafka import KafkaProps
from final_problem.clients.kafka import close, producer
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


def kafka_power_cut(strip: PowerStrip, workdir: Path, props: KafkaProps) -> Losses:
    missing = missing_binaries()
    if missing:
        pytest.fail(f"cannot run Kafka here, missing: {', '.join(missing)}")
    with LocalKafkaCluster(workdir=workdir, layout="combined", props=props) as cluster:
        for node_id in cluster.procs:
            strip.add_disk(f"kafka-{node_id}", cluster.volume(node_id), size_gib=props.broker_storage_gib)
        cluster.start_all()
        cluster.wait_healthy()
        topic = cluster.create_topic(partitions=1)
        # The topic's metadata and the nodes' first files written back, as on a cluster that
        # has run for more than 30 s: the cut is about the records.
        strip.settle()
        p = producer(cluster.app_settings(), linger_ms=0, request_timeout_ms=5000)
        writer = LiveWriter(lambda seq: p.send(topic, value=str(seq).encode()).get(timeout=30)).start()
        time.sleep(WRITE_S)
        strip.freeze(proc.process.pid for proc in cluster.procs.values() if proc.process is not None)
        acks = writer.stop()
        strip.cut()
        close(p, timeout_s=0)  # what it still held was never acknowledged
        writer.join()
        cluster.kill_all()  # reaps the processes the cut killed
        cluster.start_all()
        cluster.wait_healthy([topic], timeout=RECOVERY_TIMEOUT_S)
        present = read_back(cluster, topic)
        assert not cluster.out_of_memory()
    return losses(acks, present, frozen_at=strip.frozen_at or 0.0, started_at=writer.started_at)


def test_pi_kafka_fsyncing_every_write_loses_no_acknowledged_record(power_strip: PowerStrip, tmp_path: Path) -> None:
    require_power_cut()
    props = KafkaProps.for_profile(PI)
    assert props.fsync_every_write
    result = kafka_power_cut(power_strip, tmp_path / "kafka", props)
    print(result.summary("Kafka on the Pi, fsync every write (default)"))
    assert result.acknowledged > 0
    assert not result.lost, f"{len(result.lost)} acknowledged records lost, e.g. {result.lost[:5]}"


def test_kafka_without_fsync_loses_acknowledged_records_when_every_node_loses_power(
        power_strip: PowerStrip, tmp_path: Path) -> None:
    """Kafka's own default: acks=all means every in-sync replica has the record in its page
    cache. Three nodes on one power strip lose it together."""
    require_power_cut()
    result = kafka_power_cut(power_strip, tmp_path / "kafka", KafkaProps.for_profile(PI, fsync_every_write=False))
    print(result.summary("Kafka on the Pi, no fsync (Kafka's default)"))
    assert result.lost, f"all {result.acknowledged} acknowledged records survived although nothing was fsynced"
