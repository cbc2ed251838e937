"""Topics as code: make the cluster's topics match a declaration, idempotently.

The chart's topic Job runs this file as a script (it depends on kafka-python and the
standard library only, so it runs from a ConfigMap in the official ``python`` image);
the integration tests import it and run the same :func:`reconcile` against real brokers.

For each declared topic: create it when missing; raise its partition count when the
declaration asks for more; refuse to lower it (Kafka cannot, and synthesis rejects it
first); set its configuration to exactly the declared keys (IncrementalAlterConfigs: SET
what differs, DELETE overrides not declared, so they go back to the broker default). The replication factor
of an existing topic is left alone: changing it is a reassignment, not a config.

Environment of the script: ``KAFKA_BOOTSTRAP_SERVERS``, ``KAFKA_USERNAME``,
``KAFKA_PASSWORD``, ``KAFKA_TOPICS`` (JSON list of ``{name, partitions,
replication_factor, configs}``), ``KAFKA_WAIT_S`` (how long to wait for the brokers,
default 600).

Source: Kafka protocol guide (CreateTopics, CreatePartitions, AlterConfigs,
DescribeConfigs); kafka-python ``KafkaAdminClient``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Mapping

if TYPE_CHECKING:
    from kafka import KafkaAdminClient


class ReconcileError(RuntimeError):
    """The cluster cannot be made to match the declaration."""


@dataclass(frozen=True, kw_only=True)
class TopicSpec:
    """One declared topic."""

    name: str
    partitions: int = 3
    replication_factor: int = 3
    configs: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "partitions": self.partitions, "replication_factor": self.replication_factor,
                "configs": dict(sorted(self.configs.items()))}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "TopicSpec":
        return cls(name=data["name"], partitions=int(data["partitions"]),
                   replication_factor=int(data["replication_factor"]),
                   configs={str(k): str(v) for k, v in data.get("configs", {}).items()})


@dataclass
class Report:
    """What :func:`reconcile` changed."""

    created: list[str] = field(default_factory=list)
    partitions_raised: dict[str, tuple[int, int]] = field(default_factory=dict)
    configs_changed: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        return bool(self.created or self.partitions_raised or self.configs_changed)

    def lines(self) -> list[str]:
        out = [f"created {name}" for name in self.created]
        out += [f"{name}: partitions {a} -> {b}" for name, (a, b) in self.partitions_raised.items()]
        out += [f"{name}: configs set to {cfg}" for name, cfg in self.configs_changed.items()]
        return out or ["no change"]


def _partition_counts(admin: KafkaAdminClient, names: list[str]) -> dict[str, int]:
    existing = set(admin.list_topics())
    present = [n for n in names if n in existing]
    counts: dict[str, int] = {}
    if present:
        for topic in admin.describe_topics(present):
            counts[topic["name"]] = len(topic["partitions"])
    return counts


def _wait_partition_count(admin: KafkaAdminClient, name: str, timeout_s: float = 30.0) -> int:
    deadline = time.monotonic() + timeout_s
    while True:
        count = _partition_counts(admin, [name]).get(name)
        if count:
            return count
        if time.monotonic() > deadline:
            raise ReconcileError(f"topic {name} exists but no broker describes it after {timeout_s:.0f} s")
        time.sleep(0.5)


def _topic_overrides(admin: KafkaAdminClient, name: str) -> dict[str, str]:
    """The topic's own configuration (set on the topic, not inherited)."""
    from kafka.admin import ConfigResource, ConfigResourceType

    result = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name)])
    entries = result.get("topic", {}).get(name, {})
    return {k: v["value"] for k, v in entries.items() if v.get("config_source") == "DYNAMIC_TOPIC_CONFIG"}


def reconcile(admin: KafkaAdminClient, topics: Iterable[TopicSpec]) -> Report:
    """Make the cluster's topics match ``topics``; see the module docstring."""
    # kafka-python is imported here: the chart imports TopicSpec at synthesis without it.
    from kafka.admin import ConfigResource, ConfigResourceType
    from kafka.errors import TopicAlreadyExistsError

    topics = list(topics)
    report = Report()
    counts = _partition_counts(admin, [t.name for t in topics])
    created = set()
    for t in topics:
        if t.name in counts:
            continue
        try:
            admin.create_topics({t.name: {
                "num_partitions": t.partitions, "replication_factor": t.replication_factor, "configs": dict(t.configs),
            }})
            report.created.append(t.name)
            created.add(t.name)
        except TopicAlreadyExistsError:
            # Created meanwhile (another run), or the broker asked first had not yet
            # replayed its creation from the metadata log: reconcile it as existing.
            counts[t.name] = _wait_partition_count(admin, t.name)
    for t in topics:
        if t.name in created:
            continue
        current = counts[t.name]
        if current > t.partitions:
            raise ReconcileError(
                f"topic {t.name} has {current} partitions, the declaration {t.partitions}: Kafka cannot remove "
                f"partitions; declare {current} or more"
            )
        if current < t.partitions:
            admin.create_partitions({t.name: t.partitions})
            report.partitions_raised[t.name] = (current, t.partitions)
        declared = {k: str(v) for k, v in t.configs.items()}
        current_configs = _topic_overrides(admin, t.name)
        if current_configs != declared:
            ops: dict[str, tuple[str, str | None]] = {
                k: ("SET", v) for k, v in declared.items() if current_configs.get(k) != v
            }
            ops.update({k: ("DELETE", None) for k in current_configs if k not in declared})
            admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, t.name, configs=ops)], incremental=True)
            report.configs_changed[t.name] = dict(declared)
    return report


def admin_client(*, bootstrap_servers: str, username: str, password: str, **extra: Any) -> KafkaAdminClient:
    """An admin client authenticating with SCRAM-SHA-512 over SASL_PLAINTEXT."""
    from kafka import KafkaAdminClient

    return KafkaAdminClient(
        bootstrap_servers=bootstrap_servers.split(","),
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_plain_username=username,
        sasl_plain_password=password,
        client_id="final-problem-topics",
        **extra,
    )


def wait_for_brokers(*, bootstrap_servers: str, username: str, password: str, brokers: int, timeout_s: float) -> KafkaAdminClient:
    """An admin client once ``brokers`` unfenced brokers are registered."""
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        admin = None
        try:
            admin = admin_client(bootstrap_servers=bootstrap_servers, username=username, password=password)
            alive = [b for b in admin.describe_cluster()["brokers"] if not b.get("is_fenced")]
            if len(alive) >= brokers:
                return admin
            last = RuntimeError(f"{len(alive)} of {brokers} brokers registered")
        except Exception as e:  # the brokers are still starting: try again until the deadline
            last = e
        if admin is not None:
            admin.close()
        time.sleep(2)
    raise ReconcileError(f"no cluster of {brokers} brokers within {timeout_s:.0f} s: {last}")


def main() -> int:
    env = os.environ
    topics = [TopicSpec.from_json(t) for t in json.loads(env["KAFKA_TOPICS"])]
    needed = max((t.replication_factor for t in topics), default=1)
    admin = wait_for_brokers(
        bootstrap_servers=env["KAFKA_BOOTSTRAP_SERVERS"], username=env["KAFKA_USERNAME"],
        password=env["KAFKA_PASSWORD"], brokers=needed, timeout_s=float(env.get("KAFKA_WAIT_S", "600")),
    )
    try:
        for line in reconcile(admin, topics).lines():
            print(line, flush=True)
    except ReconcileError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 1
    finally:
        admin.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
