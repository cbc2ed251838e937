"""Measure the project's Kafka client against a real 3 controller + 3 broker cluster on loopback.

Starts a cluster of each layout (EKS: 3 controllers + 3 brokers; Pi: 3 combined nodes) with
the launcher the integration tests use (final_problem.local.kafka: the chart's rendered
configuration and JVM command line, each node under its container's CPU and memory limits),
then prints for each:

- produce throughput, acks=all, 1 KiB records, of the project's producer
  (final_problem.clients.kafka: kafka-python, idempotent) and of Kafka's own
  ``kafka-producer-perf-test`` (org.apache.kafka.tools.ProducerPerformance) with the same
  acks, idempotence, linger and user, and their ratio;
- end-to-end latency (send to receipt by a group consumer) p50/p99 at a modest rate;
- on the Pi layout, the produce throughput without fsync on every write, against which
  the default's cost is stated;
- the time from ``kill -9`` of the partition leader to the first acknowledged acks=all write
  (the profile's ``broker.session.timeout.ms`` bounds it);
- per node, peak memory against its limit, OOM kills, CPU time and throttling, and the
  JVM's GC pauses (p99 and longest, from its GC log).

Needs ``make kafka`` (the jars) and Java.

    .venv/bin/python bench/kafka.py [--records 20000] [--latency-records 500]
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

# Run as a script, this file's folder comes first on the import path, and its name would
# hide the kafka-python package from `import kafka`.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from final_problem.clients.kafka import admin, consumer, producer
from final_problem.charts.kafka import KafkaProps
from final_problem.local.kafka import LocalKafkaCluster, missing_binaries
from final_problem.profiles import PI

RECORD = b"x" * 1024


def percentile(samples: list[float], q: int) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[q - 1] if len(samples) > 1 else samples[0]


def project_throughput(cluster: LocalKafkaCluster, topic: str, records: int) -> float:
    p = producer(cluster.app_settings())
    try:
        for _ in range(200):  # warm up: connections, metadata, producer id
            p.send(topic, RECORD)
        p.flush()
        start = time.perf_counter()
        for _ in range(records):
            p.send(topic, RECORD)
        p.flush(timeout=300)
        return records / (time.perf_counter() - start)
    finally:
        p.close()


def perf_test_throughput(cluster: LocalKafkaCluster, topic: str, records: int) -> float:
    out = cluster.tool("org.apache.kafka.tools.ProducerPerformance", [
        "--topic", topic, "--num-records", str(records), "--record-size", str(len(RECORD)), "--throughput", "-1",
        "--producer-props", f"bootstrap.servers={cluster.bootstrap_servers}", "acks=all", "enable.idempotence=true",
        "linger.ms=5", "--producer.config", str(client_properties(cluster)),
    ], timeout=600, heap_mib=512, jvm=())
    match = re.findall(r"([\d.]+) records/sec", out)
    if not match:
        raise RuntimeError(f"no throughput in: {out}")
    return float(match[-1])


def client_properties(cluster: LocalKafkaCluster) -> Path:
    path = cluster.workdir / "app.properties"
    path.write_text(
        "security.protocol=SASL_PLAINTEXT\nsasl.mechanism=SCRAM-SHA-512\n"
        "sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required "
        f'username="{cluster.credentials.app_user}" password="{cluster.credentials.app}";\n'
    )
    path.chmod(0o600)
    return path


def end_to_end_latency(cluster: LocalKafkaCluster, topic: str, records: int) -> list[float]:
    """Milliseconds from send to receipt, one record every 5 ms."""
    settings = cluster.app_settings()
    c = consumer(settings, group_id=f"latency-{topic}", topics=[topic], auto_offset_reset="latest")
    received: dict[bytes, float] = {}
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            for recs in c.poll(timeout_ms=100).values():
                now = time.perf_counter()
                for r in recs:
                    received[r.value] = now

    # Join the group before producing, so nothing is missed at "latest".
    deadline = time.monotonic() + 60
    while not c.assignment() and time.monotonic() < deadline:
        c.poll(timeout_ms=200)
    reader = threading.Thread(target=poll, daemon=True)
    reader.start()
    p = producer(settings, linger_ms=0)
    sent: dict[bytes, float] = {}
    try:
        for i in range(records):
            key = f"lat-{i}".encode()
            sent[key] = time.perf_counter()
            p.send(topic, key)
            time.sleep(0.005)
        p.flush()
        deadline = time.monotonic() + 60
        while len(received) < records and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop.set()
        reader.join(timeout=10)
        p.close()
        c.close()
    return [(received[k] - sent[k]) * 1000 for k in sent if k in received]


def kill_to_first_write(cluster: LocalKafkaCluster, topic: str) -> float:
    """Seconds from SIGKILL of the partition's leader to the first acknowledged acks=all write."""
    settings = cluster.app_settings()
    a = admin(settings)
    try:
        (t,) = a.describe_topics([topic])
        leader = t["partitions"][0]["leader_id"]
    finally:
        a.close()
    p = producer(settings, request_timeout_ms=2000, delivery_timeout_ms=60_000, retry_backoff_ms=50)
    try:
        p.send(topic, b"before").get(timeout=30)
        start = time.perf_counter()
        cluster.kill(leader)
        p.send(topic, b"after").get(timeout=120)
        return time.perf_counter() - start
    finally:
        p.close()
        cluster.start(leader)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=20000, help="1 KiB records per throughput run")
    parser.add_argument("--latency-records", type=int, default=500)
    args = parser.parse_args()
    if missing := missing_binaries():
        print(f"missing {', '.join(missing)}: run `make kafka`", file=sys.stderr)
        return 1
    pi_without_fsync = KafkaProps.for_profile(PI, fsync_every_write=False)
    throughput: dict[str, float] = {}
    for name, layout, props in (("kafka eks", "dedicated", None), ("kafka pi", "combined", None),
                                ("kafka pi without fsync", "combined", pi_without_fsync)):
        with tempfile.TemporaryDirectory(prefix="kafka-bench-") as tmp, \
                LocalKafkaCluster(workdir=Path(tmp), layout=layout, props=props) as cluster:
            cluster.start_all()
            cluster.wait_healthy()
            nodes = "3 controllers + 3 brokers" if layout == "dedicated" else "3 broker+controller nodes"
            print(f"{name}: {nodes} on loopback (SASL/SCRAM) under their pods' limits, acks=all, {len(RECORD)} B records"
                  f", fsync every write {'on' if cluster.props.fsync_every_write else 'off'}")
            topic = cluster.create_topic(partitions=3, prefix="bench")
            throughput[name] = ours = project_throughput(cluster, topic, args.records)
            if props is not None:
                print(f"{name} produce  project client {ours:9.0f} rec/s; with fsync every write "
                      f"{throughput['kafka pi'] / ours:5.2f} of that ({args.records} records each)")
                continue
            theirs = perf_test_throughput(cluster, topic, args.records)
            print(f"{name} produce  project client {ours:9.0f} rec/s  kafka-producer-perf-test {theirs:9.0f} rec/s  "
                  f"ratio {ours / theirs:5.2f}  ({args.records} records each)")
            latency = end_to_end_latency(cluster, cluster.create_topic(partitions=3, prefix="bench"), args.latency_records)
            print(f"{name} e2e      p50 {percentile(latency, 50):7.2f} ms  p99 {percentile(latency, 99):7.2f} ms  "
                  f"({len(latency)} of {args.latency_records} records, one per 5 ms)")
            failover = kill_to_first_write(cluster, cluster.create_topic(partitions=1, prefix="bench"))
            print(f"{name} failover kill -9 of the partition leader to first acks=all write {failover:6.2f} s "
                  f"(broker.session.timeout.ms {cluster.props.broker_session_timeout_ms})")
            print_usage(name, cluster)
    return 0


def print_usage(name: str, cluster: LocalKafkaCluster) -> None:
    """Per node: peak memory against the container's limit, and the JVM's GC pauses."""
    usage = {u.name: u for u in cluster.groups.usage()}
    for node_id in cluster.procs:
        u = usage.get(cluster.group_name(node_id))
        pauses = cluster.gc_pauses_ms(node_id)
        gc = (f"GC pauses p99 {percentile(pauses, 99):6.1f} ms, max {max(pauses):6.1f} ms ({len(pauses)})"
              if pauses else "no GC pause")
        print(f"{name} node {node_id:3d} {u}; {gc}")


if __name__ == "__main__":
    sys.exit(main())
