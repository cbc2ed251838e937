"""Talk to the platform's Kafka: a durable producer, consumer groups, and a look at the cluster.

The producer waits for every in-sync replica (``acks=all``; with the cluster's
``min.insync.replicas=2`` a write is on two brokers before it is acknowledged) and is
idempotent, so its retries across a broker restart never duplicate or reorder a record
within a partition. Consumers join a group and commit offsets only after processing
(at-least-once). Credentials come from the environment or from the Kubernetes Secret
``kafka/kafka-auth`` (read with ``kubectl``), never from code.

Environment: ``KAFKA_BOOTSTRAP_SERVERS`` (default the in-cluster bootstrap Service),
``KAFKA_USERNAME`` (default ``app``), ``KAFKA_PASSWORD``.

Command line (``--timeout`` bounds the first connection to the brokers, default 5 s: no
broker answering ends the command with one line and exit status 3)::

    final-problem kafka describe
    final-problem kafka produce TOPIC VALUE [VALUE ...] [--key KEY]
    final-problem kafka consume TOPIC [--group G] [--max N] [--idle S]
    final-problem kafka group-demo TOPIC [--consumers 3] [--records 300]

Sources: kafka-python docs (``KafkaProducer``, ``KafkaConsumer``, ``KafkaAdminClient``);
Kafka 4.4 docs, "Producer Configs" (acks, enable.idempotence), "Consumer Configs".
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.errors import KafkaError, KafkaTimeoutError

from final_problem.clients import ClientError, Unreachable, add_timeout, password, read_secret, run_command, short

DEFAULT_BOOTSTRAP = "kafka-bootstrap.kafka.svc:9092"
SECRET_NAMESPACE, SECRET_NAME = "kafka", "kafka-auth"


class KafkaClientError(ClientError):
    """The client is misconfigured or a write was not acknowledged."""


def secret_from_kubernetes(key: str, *, namespace: str = SECRET_NAMESPACE, name: str = SECRET_NAME) -> str:
    """One key of the generated Secret, through ``kubectl`` (the caller's kubeconfig)."""
    return read_secret(namespace=namespace, name=name, key=key)


@dataclass(frozen=True, kw_only=True)
class KafkaSettings:
    """Where the brokers are and who to log in as."""

    bootstrap_servers: str
    username: str = "app"
    password: str
    #: Seconds a request may take before the client retries or gives up.
    request_timeout_s: float = 30.0
    #: Seconds to wait for the first broker to answer (kafka-python's ``bootstrap_timeout_ms``;
    #: its default, 30 s, here too; the command line passes ``--timeout``).
    connect_timeout_s: float = 30.0

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, *, secret: Callable[[str], str] = secret_from_kubernetes,
        connect_timeout_s: float = 30.0,
    ) -> "KafkaSettings":
        """Settings from the environment; a missing password is read from the Secret."""
        env = os.environ if env is None else env
        username = env.get("KAFKA_USERNAME", "app")
        return cls(
            bootstrap_servers=env.get("KAFKA_BOOTSTRAP_SERVERS", DEFAULT_BOOTSTRAP),
            username=username,
            password=password(env, "KAFKA_PASSWORD", lambda _key: secret(f"{username}-password"), f"{username}-password"),
            connect_timeout_s=connect_timeout_s,
        )

    def common(self) -> dict[str, Any]:
        """kafka-python arguments shared by producers, consumers and admin clients."""
        if not self.password:
            raise KafkaClientError("no password: set KAFKA_PASSWORD")
        return {
            "bootstrap_servers": [s.strip() for s in self.bootstrap_servers.split(",") if s.strip()],
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_plain_username": self.username,
            "sasl_plain_password": self.password,
            "request_timeout_ms": int(self.request_timeout_s * 1000),
            "bootstrap_timeout_ms": int(self.connect_timeout_s * 1000),
        }


def producer(settings: KafkaSettings, **overrides: Any) -> KafkaProducer:
    """An idempotent producer that waits for all in-sync replicas.

    ``delivery_timeout_ms`` bounds how long a record is retried (a broker restart takes
    seconds); idempotence keeps the retries free of duplicates, and up to 5 requests in
    flight keep their order (Kafka "Producer Configs": max.in.flight.requests.per.connection).
    """
    config: dict[str, Any] = {
        **settings.common(),
        "acks": "all",
        "enable_idempotence": True,
        "max_in_flight_requests_per_connection": 5,
        "retries": 2**31 - 1,
        "delivery_timeout_ms": 120_000,
        "linger_ms": 5,
        "client_id": "final-problem-producer",
    }
    config.update(overrides)
    return KafkaProducer(**config)


def consumer(settings: KafkaSettings, *, group_id: str, topics: Sequence[str] = (), **overrides: Any) -> KafkaConsumer:
    """A group member that starts at the earliest offset and commits only when told."""
    config: dict[str, Any] = {
        **settings.common(),
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "client_id": f"final-problem-{group_id}",
    }
    config.update(overrides)
    c = KafkaConsumer(**config)
    if topics:
        c.subscribe(list(topics))
    return c


def admin(settings: KafkaSettings, **overrides: Any) -> KafkaAdminClient:
    return KafkaAdminClient(**{**settings.common(), "client_id": "final-problem-admin", **overrides})


def produce(settings: KafkaSettings, topic: str, values: Iterable[bytes], *, key: bytes | None = None,
            timeout_s: float = 120.0, **producer_overrides: Any) -> list[tuple[int, int]]:
    """Send ``values`` and wait for each acknowledgement; return ``(partition, offset)`` each.
    A refused write raises :class:`KafkaClientError` naming the broker's error; one not
    acknowledged within ``timeout_s`` raises it too, and the call returns about then."""
    # send() waits for the topic's metadata up to max.block.ms: within the call's timeout too.
    p = producer(settings, **{"max_block_ms": int(timeout_s * 1000), **producer_overrides})
    errors = _RetriedErrors(topic)
    sender_log = logging.getLogger("kafka.producer.sender")
    sender_log.addHandler(errors)
    def refused(e: KafkaError) -> KafkaClientError:
        cause = f"; the brokers answered {', '.join(errors.seen)}" if errors.seen else ""
        return KafkaClientError(f"write to {topic} not acknowledged: {type(e).__name__}: {e}{cause}")

    # One deadline for the flush and every acknowledgement together.
    deadline = time.monotonic() + timeout_s
    acked = False
    try:
        futures = [p.send(topic, value=v, key=key) for v in values]
        try:
            p.flush(timeout=timeout_s)
        except KafkaError:
            pass  # each record's own outcome is reported below
        acks = []
        for f in futures:
            try:
                meta = f.get(timeout=max(0.0, deadline - time.monotonic()))
            except KafkaError as e:
                raise refused(e) from e
            acks.append((meta.partition, meta.offset))
        acked = True
        return acks
    finally:
        sender_log.removeHandler(errors)
        # Nothing is left to wait for once a record went unacknowledged: close at once.
        close(p, timeout_s=10 if acked else 0)


def close(p: KafkaProducer, *, timeout_s: float) -> None:
    """Close ``p``, waiting up to ``timeout_s`` for what it still sends, and drop what is
    left unacknowledged then (it was never acknowledged, so nobody counts on it)."""
    try:
        p.close(timeout=timeout_s)
    except KafkaError:
        # kafka-python's close() flushes first and gives up while records nobody took are
        # queued (no leader: a minority side, or brokers gone), leaving the producer open for
        # its __del__ to fail again: stop the sender thread.
        sender = getattr(p, "_sender", None)
        if sender is not None:
            sender.force_close()
        p._closed = True


class _RetriedErrors(logging.Handler):
    """Collects the broker errors kafka-python retried for one topic: when the delivery
    timeout expires it reports only a timeout, and the cause (NotEnoughReplicas while
    min.insync.replicas is not met, say) is what an operator needs."""

    def __init__(self, topic: str) -> None:
        super().__init__(level=logging.WARNING)
        self.topic = topic
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "Got error produce response" not in str(record.msg) or not isinstance(record.args, tuple):
            return
        if len(record.args) > 3 and self.topic in str(record.args[1]) and str(record.args[3]) not in self.seen:
            self.seen.append(str(record.args[3]))


def consume(settings: KafkaSettings, topic: str, *, group_id: str, max_records: int | None = None,
            idle_timeout_s: float = 10.0) -> list[Any]:
    """Records of ``topic`` for ``group_id`` until ``max_records`` or ``idle_timeout_s`` of
    silence; offsets are committed after the batch is read."""
    c = consumer(settings, group_id=group_id, topics=[topic])
    records: list[Any] = []
    try:
        idle_since = time.monotonic()
        while max_records is None or len(records) < max_records:
            batch = c.poll(timeout_ms=500)
            got = [r for recs in batch.values() for r in recs]
            if got:
                records += got
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since > idle_timeout_s:
                break
        c.commit()
        return records[:max_records] if max_records is not None else records
    finally:
        c.close()


def describe(settings: KafkaSettings) -> dict[str, Any]:
    """Brokers, the active controller and every topic's partitions and ISR."""
    a = admin(settings)
    try:
        cluster = a.describe_cluster()
        quorum = a.describe_metadata_quorum()["topics"][0]["partitions"][0]
        topics = {
            t["name"]: [
                {"partition": p["partition_index"], "leader": p["leader_id"], "isr": p["isr_nodes"]}
                for p in sorted(t["partitions"], key=lambda p: p["partition_index"])
            ]
            for t in a.describe_topics() if not t.get("is_internal")
        }
        return {
            "cluster_id": cluster["cluster_id"],
            "brokers": sorted(b["broker_id"] for b in cluster["brokers"]),
            "active_controller": quorum["leader_id"],
            "voters": sorted(v["replica_id"] for v in quorum["current_voters"]),
            "topics": topics,
        }
    finally:
        a.close()


@dataclass
class GroupDemoResult:
    produced: int
    #: Partitions each consumer was assigned, by consumer index.
    assignments: dict[int, list[int]]
    #: Records each consumer processed.
    consumed: dict[int, int]


def group_demo(settings: KafkaSettings, topic: str, *, consumers: int = 3, records: int = 300,
               group_id: str = "group-demo", timeout_s: float = 120.0,
               during_produce: Callable[[int], None] | None = None) -> GroupDemoResult:
    """``consumers`` members of one group share ``topic``'s partitions while a producer writes
    ``records`` records; ``during_produce(i)`` is called before record ``i`` (to restart a
    broker mid-stream, say). Returns who held which partitions at the end and how much each
    processed.

    Members join one after another, so the first one briefly owns every partition until the
    group rebalances; the producer starts only once the group has settled (every partition
    owned by exactly one member), so the records are shared, not read by whoever came first."""
    stop = threading.Event()
    assignments: dict[int, set[int]] = defaultdict(set)
    consumed: dict[int, int] = defaultdict(int)
    lock = threading.Lock()
    errors: list[BaseException] = []

    def member(index: int) -> None:
        try:
            c = consumer(settings, group_id=group_id, topics=[topic])
            try:
                while not stop.is_set():
                    batch = c.poll(timeout_ms=300)
                    with lock:
                        assignments[index] = {tp.partition for tp in c.assignment()}
                        consumed[index] += sum(len(v) for v in batch.values())
                    if batch:
                        c.commit()
            finally:
                c.close()
        except BaseException as e:  # reported by the caller's thread
            errors.append(e)

    threads = [threading.Thread(target=member, args=(i,), daemon=True) for i in range(consumers)]
    for t in threads:
        t.start()
    p = producer(settings)
    try:
        partitions = p.partitions_for(topic)
        settle_by = time.monotonic() + timeout_s
        while time.monotonic() < settle_by and not errors:
            with lock:
                held = [assignments[i] for i in range(consumers)]
            if sum(map(len, held)) == len(partitions) and set().union(*held) == partitions \
                    and sum(1 for h in held if h) == min(consumers, len(partitions)):
                break
            time.sleep(0.2)
        futures = []
        for i in range(records):
            if during_produce is not None:
                during_produce(i)
            futures.append(p.send(topic, key=str(i).encode(), value=f"record-{i}".encode()))
        p.flush(timeout=timeout_s)
        for f in futures:
            f.get(timeout=timeout_s)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with lock:
                if sum(consumed.values()) >= records:
                    break
            time.sleep(0.2)
    finally:
        p.close(timeout=10)
        stop.set()
        for t in threads:
            t.join(timeout=30)
    if errors:
        raise KafkaClientError(f"a consumer failed: {type(errors[0]).__name__}: {short(errors[0])}")
    return GroupDemoResult(
        produced=records,
        assignments={i: sorted(assignments[i]) for i in range(consumers)},
        consumed={i: consumed[i] for i in range(consumers)},
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="final-problem kafka", description=__doc__.splitlines()[0])
    add_timeout(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    p_desc = sub.add_parser("describe", help="brokers, controller quorum and topics")
    p_prod = sub.add_parser("produce", help="send values with acks=all")
    p_prod.add_argument("topic", help="the topic to write to")
    p_prod.add_argument("values", nargs="+", help="one record per value")
    p_prod.add_argument("--key", help="the records' key (same key, same partition)")
    p_cons = sub.add_parser("consume", help="read as a consumer group member, commit after reading")
    p_cons.add_argument("topic", help="the topic to read")
    p_cons.add_argument("--group", default="cli", help="consumer group (default: cli)")
    p_cons.add_argument("--max", type=int, help="stop after this many records")
    p_cons.add_argument("--idle", type=float, default=10.0, help="stop after this many idle seconds (default: 10)")
    p_demo = sub.add_parser("group-demo", help="several consumers of one group share a topic's partitions")
    p_demo.add_argument("topic", help="the topic they share")
    p_demo.add_argument("--consumers", type=int, default=3, help="members of the group (default: 3)")
    p_demo.add_argument("--records", type=int, default=300, help="records to write (default: 300)")
    for p in (p_desc, p_prod, p_cons, p_demo):
        add_timeout(p, default=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    settings = KafkaSettings.from_env(connect_timeout_s=args.timeout)
    try:
        if args.command == "describe":
            print(json.dumps(describe(settings), indent=2))
        elif args.command == "produce":
            key = args.key.encode() if args.key else None
            for partition, offset in produce(settings, args.topic, [v.encode() for v in args.values], key=key):
                print(f"acknowledged partition={partition} offset={offset}")
        elif args.command == "consume":
            for r in consume(settings, args.topic, group_id=args.group, max_records=args.max, idle_timeout_s=args.idle):
                print(f"{r.partition}:{r.offset} {(r.key or b'').decode(errors='replace')} {r.value.decode(errors='replace')}")
        else:
            result = group_demo(settings, args.topic, consumers=args.consumers, records=args.records)
            for i in sorted(result.assignments):
                print(f"consumer {i}: partitions {result.assignments[i]}, {result.consumed[i]} records")
            print(f"produced {result.produced}, consumed {sum(result.consumed.values())}")
    except KafkaError as e:
        if isinstance(e, KafkaTimeoutError) and "bootstrap" in str(e).lower():
            raise Unreachable(f"no Kafka broker of {settings.bootstrap_servers} answered within {args.timeout:g} s: "
                              "give --kafka H:P,... or set KAFKA_BOOTSTRAP_SERVERS, or raise --timeout") from None
        raise KafkaClientError(f"Kafka: {type(e).__name__}: {short(e)}") from e
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))
