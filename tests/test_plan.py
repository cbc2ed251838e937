"""``final-problem plan`` from pairs of real renders: every class of change of every bundled
component, the versions' upgrade paths, the one-line output, the exit status, the live
reader and ``make deploy`` stopping before the CDK CLI.

Each pair renders only the components it needs (``components``), so a case costs a fraction
of a second: the deployed side renders the defaults (or older pins), the other side the
change.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping

import pytest
import yaml

from final_problem import changes, components, config, manifests, plan, versions
from final_problem.changes import Effect, UpgradePath, Verdict
from final_problem.charts.kafka import KafkaProps
from final_problem.clients.kafka_topics import TopicSpec
from final_problem.profiles import PROFILES
from tests.conftest import CDK_JSON, ROOT

#: The components a change of each component's settings needs rendered (its requirements).
NEEDS = {
    "base": ("base",), "zookeeper": ("base", "zookeeper"), "kafka": ("base", "kafka"),
    "postgres": ("base", "postgres"), "cadence": ("base", "postgres", "cadence"), "redis": ("base", "redis"),
    "consul": ("base", "consul"), "envoy": ("base", "postgres", "cadence", "redis", "consul", "demo", "envoy"),
    "demo": ("base", "redis", "consul", "demo"),
}


def settings_of(enabled: Iterable[str], **values: Any) -> config.Settings:
    """Settings as cdk.json has them, with only ``enabled`` components and ``values`` over
    them (``zookeeper={"replicas": 5}`` for a section, ``cluster_name="x"`` for the cluster)."""
    context = {**CDK_JSON, "components": list(enabled)}
    for key, value in values.items():
        context[key] = {**context.get(key, {}), **value} if isinstance(value, dict) else value
    return config.from_mapping(context)


def objects_of(settings: config.Settings, profile: str) -> list[dict[str, Any]]:
    return [o for chart in manifests.render(settings, profile).values() for o in manifests.chart_objects(chart)]


def deployments(settings: config.Settings, profile: str = "eks") -> dict[str, plan.Deployment]:
    return plan.from_objects(objects_of(settings, profile), source="test", digests_from_objects=True)


def plan_of(component: str, profile: str = "eks", before: Mapping[str, Any] | None = None,
            after: Mapping[str, Any] | None = None) -> plan.Plan:
    enabled = NEEDS[component]
    old = deployments(settings_of(enabled, **(before or {})), profile)
    new = deployments(settings_of(enabled, **(after or {})), profile)
    return plan.compare(old, new)


def of(p: plan.Plan, name: str) -> plan.ComponentPlan:
    return next(c for c in p.components if c.name == name)


def lines(c: plan.ComponentPlan) -> list[str]:
    return [line.text() for line in c.lines]


# --- settings: one case per class of change of every bundled component -------------------

#: (component, profile, change, expected verdict of the component, a line expected, pods rolled).
SETTING_CASES = [
    # ZooKeeper: zoo.cfg rolls the ensemble; membership is a procedure; a smaller volume and a
    # peer port are refused / a procedure.
    ("zookeeper", "eks", {"zookeeper": {"tick_time_ms": 3000}}, Effect.ROLLING,
     "zookeeper.tick_time_ms 2000 -> 3000: rolling restart", ["zookeeper-2", "zookeeper-1", "zookeeper-0"]),
    ("zookeeper", "eks", {"zookeeper": {"replicas": 5}}, Effect.PROCEDURE,
     "zookeeper.replicas 3 -> 5: procedure needed: members are added and removed one at a time", None),
    ("zookeeper", "eks", {"zookeeper": {"quorum_port": 2889}}, Effect.PROCEDURE,
     "zookeeper.quorum_port 2888 -> 2889: procedure needed", None),
    ("zookeeper", "eks", {"zookeeper": {"storage_gib": 5}}, Effect.REFUSED,
     "zookeeper.storage_gib 10 -> 5: refused: each member's two volumes: a volume cannot shrink", None),
    ("zookeeper", "eks", {"zookeeper": {"storage_gib": 20}}, Effect.PROCEDURE,
     "StatefulSet zookeeper/zookeeper volume data 10Gi -> 20Gi: procedure needed", None),
    ("zookeeper", "pi", {"zookeeper": {"hosts": ["pi1", "pi2", "pi3"]}}, Effect.NOTHING,
     "zookeeper.hosts [] -> pi1,pi2,pi3: nothing: bare-metal members only", []),
    # Kafka (eks: separate controllers and brokers).
    ("kafka", "eks", {"kafka": {"broker_memory_mib": 2048}}, Effect.ROLLING,
     "kafka.broker_memory_mib 768 -> 2048: rolling restart",
     # Each set's pods carry a digest of the files that set reads: only the brokers roll.
     ["kafka-broker-2", "kafka-broker-1", "kafka-broker-0"]),
    ("kafka", "eks", {"kafka": {"controllers": 5}}, Effect.PROCEDURE,
     "kafka.controllers 3 -> 5: procedure needed: voters join and leave a dynamic quorum one at a time", None),
    # New brokers join empty and no running broker restarts; the partitions move by a procedure.
    ("kafka", "eks", {"kafka": {"brokers": 5}}, Effect.PROCEDURE,
     "kafka.brokers 3 -> 5: procedure needed: new brokers join empty", []),
    ("kafka", "eks", {"kafka": {"brokers": 3}}, Effect.NOTHING, None, []),
    ("kafka", "eks", {"kafka": {"combined": True}}, Effect.REFUSED, "kafka.combined false -> true: refused", None),
    ("kafka", "eks", {"kafka": {"broker_storage_gib": 10}}, Effect.REFUSED,
     "StatefulSet kafka/kafka-broker volume data 20Gi -> 10Gi: refused: a volume cannot shrink", None),
    ("kafka", "eks", {"kafka": {"controller_port": 9095}}, Effect.PROCEDURE,
     "kafka.controller_port 9093 -> 9095: procedure needed", None),
    # Redis: redis.conf rolls the members; the Sentinel count is a procedure.
    ("redis", "eks", {"redis": {"appendfsync": "always"}}, Effect.ROLLING,
     "redis.appendfsync everysec -> always: rolling restart", None),
    ("redis", "eks", {"redis": {"sentinels": 5, "quorum": 3}}, Effect.PROCEDURE,
     "redis.sentinels 3 -> 5: procedure needed", None),
    ("redis", "eks", {"redis": {"replicas": 2}, "kafka": {}}, Effect.NOTHING, None, []),
    ("redis", "pi", {"redis": {"storage_gib": 1, "maxmemory_mib": 64}}, Effect.REFUSED,
     "redis.storage_gib 2 -> 1: refused", None),
    # PostgreSQL: one server; a restart is an outage until Ready.
    ("postgres", "eks", {"postgres": {"max_connections": 200}}, Effect.ROLLING,
     "postgres.max_connections 100 -> 200: rolling restart: read at start: the one server restarts", ["postgres-0"]),
    ("postgres", "eks", {"postgres": {"storage_gib": 10}}, Effect.REFUSED, "postgres.storage_gib 20 -> 10: refused", None),
    ("postgres", "eks", {"postgres": {"storage_gib": 40}}, Effect.PROCEDURE,
     "postgres.storage_gib 20 -> 40: procedure needed", None),
    # Cadence: the history shard count and the databases are refused; replicas change nothing running.
    ("cadence", "eks", {"cadence": {"num_history_shards": 1024}}, Effect.REFUSED,
     "cadence.num_history_shards 512 -> 1024: refused: history shards are fixed", None),
    ("cadence", "eks", {"cadence": {"cadence_db": "cadence2"}}, Effect.REFUSED,
     "cadence.cadence_db cadence -> cadence2: refused", None),
    ("cadence", "eks", {"cadence": {"frontend_replicas": 3}}, Effect.NOTHING,
     "cadence.frontend_replicas 2 -> 3: nothing: scales the Deployment", []),
    ("cadence", "eks", {"cadence": {"max_conns": 6}}, Effect.ROLLING, "cadence.max_conns 8 -> 6: rolling restart", None),
    # Consul: membership shrinking is a procedure; memory rolls; certificate lifetimes change nothing running.
    ("consul", "eks", {"consul": {"memory_mib": 768}}, Effect.ROLLING,
     "consul.memory_mib 512 -> 768: rolling restart", ["consul-server-2", "consul-server-1", "consul-server-0"]),
    ("consul", "eks", {"consul": {"replicas": 3}}, Effect.NOTHING, None, []),
    ("consul", "eks", {"consul": {"cert_days": 400}}, Effect.NOTHING, "consul.cert_days 825 -> 400: nothing", []),
    ("consul", "eks", {"consul": {"storage_gib": 5}}, Effect.REFUSED, "consul.storage_gib 10 -> 5: refused", None),
    # Snapshots are a CronJob: turning them off, or another target, restarts no server.
    ("consul", "eks", {"backups": False}, Effect.NOTHING, None, []),
    ("consul", "eks", {"consul": {"backup_endpoint": "http://minio.lan:9000"}}, Effect.NOTHING,
     "consul.backup_endpoint -> http://minio.lan:9000: nothing", []),
    # The edge and the demo: configuration rolls, replicas scale.
    ("envoy", "eks", {"envoy": {"retries": 3}}, Effect.ROLLING, "envoy.retries 2 -> 3: rolling restart", ["2 envoy pods (surge 1, unavailable 0)"]),
    ("envoy", "eks", {"envoy": {"replicas": 3}}, Effect.NOTHING, "envoy.replicas 2 -> 3: nothing", []),
    ("demo", "eks", {"demo": {"replicas": 3}}, Effect.NOTHING, "demo.replicas 2 -> 3: nothing", []),
    ("base", "eks", {}, Effect.NOTHING, None, []),
]


@pytest.mark.parametrize("component, profile, change, effect, expected, pods", SETTING_CASES,
                         ids=[f"{c[0]}-{c[1]}-{json.dumps(c[2], sort_keys=True)}" for c in SETTING_CASES])
def test_a_setting_change_gets_its_class(component: str, profile: str, change: dict[str, Any], effect: Effect,
                                         expected: str | None, pods: list[str] | None) -> None:
    result = of(plan_of(component, profile, after=change), component)
    assert result.effect == effect, (result.summary(), lines(result))
    if expected is not None:
        assert any(line.startswith(expected) for line in lines(result)), lines(result)
    if pods is not None:
        assert [p for _, names in result.restarts for p in names] == pods


def test_consul_scale_down_is_a_procedure() -> None:
    result = of(plan_of("consul", before={"consul": {"replicas": 5}}, after={"consul": {"replicas": 3}}), "consul")
    assert result.effect == Effect.PROCEDURE
    assert any(line.startswith("consul.replicas 5 -> 3: procedure needed") for line in lines(result))


def test_kafka_broker_scale_down_is_a_procedure() -> None:
    result = of(plan_of("kafka", before={"kafka": {"brokers": 5}}, after={"kafka": {"brokers": 3}}), "kafka")
    assert result.effect == Effect.PROCEDURE
    assert any("kafka.brokers 5 -> 3: procedure needed" in line and "kafka-reassign-partitions" in line
               for line in lines(result))


#: A controller setting (topic defaults are applied by the controllers) and a broker one.
BOTH_SETS = {"kafka": {"num_partitions": 6, "broker_memory_mib": 2048}}


def test_a_kafka_restart_lists_controllers_then_brokers_each_from_the_highest_ordinal() -> None:
    result = of(plan_of("kafka", after=BOTH_SETS), "kafka")
    assert result.restarts == [
        ("StatefulSet kafka/kafka-controller", ["kafka-controller-2", "kafka-controller-1", "kafka-controller-0"]),
        ("StatefulSet kafka/kafka-broker", ["kafka-broker-2", "kafka-broker-1", "kafka-broker-0"]),
    ]
    assert result.summary().startswith("rolling restart of StatefulSet kafka/kafka-controller: kafka-controller-2, "
                                       "kafka-controller-1, kafka-controller-0; StatefulSet kafka/kafka-broker: ")


def test_a_storage_class_change_is_refused() -> None:
    """The same ensemble rendered for the Pis after EKS: its claims would move from
    gp3-encrypted to local-path-retain, which a bound volume cannot."""
    enabled = NEEDS["zookeeper"]
    p = plan.compare(deployments(settings_of(enabled), "eks"), deployments(settings_of(enabled), "pi"))
    zk = of(p, "zookeeper")
    assert zk.effect == Effect.REFUSED
    assert "StatefulSet zookeeper/zookeeper volume data StorageClass gp3-encrypted -> local-path-retain: refused: " \
           "a bound volume cannot move to another StorageClass" in "\n".join(lines(zk))


# --- Kafka's declared topics (set in code) --------------------------------------------------

def _kafka_with_topics(partitions: int, *, extra: tuple[TopicSpec, ...] = ()) -> dict[str, plan.Deployment]:
    settings = settings_of(NEEDS["kafka"])
    profile = PROFILES["eks"].sized(settings.size)
    props = KafkaProps.for_profile(profile, topics=(TopicSpec(name="events", partitions=partitions), *extra))
    settings._cache[(KafkaProps, profile.name, profile.size)] = props
    return deployments(settings)


def test_fewer_kafka_partitions_are_refused() -> None:
    result = of(plan.compare(_kafka_with_topics(12), _kafka_with_topics(6)), "kafka")
    assert result.effect == Effect.REFUSED
    assert any("topic events: 12 -> 6 partitions: Kafka cannot remove partitions" in line and "Fix: declare 12 or more"
               in line for line in lines(result))


def test_more_kafka_partitions_are_a_procedure_and_a_new_topic_nothing() -> None:
    more = of(plan.compare(_kafka_with_topics(6), _kafka_with_topics(12)), "kafka")
    assert more.effect == Effect.PROCEDURE and more.restarts == []
    added = of(plan.compare(_kafka_with_topics(6), _kafka_with_topics(6, extra=(TopicSpec(name="audit"),))), "kafka")
    assert added.effect == Effect.NOTHING and added.restarts == []
    assert any("topic audit: the topic Job creates it" in line for line in lines(added))


# --- the cluster's own settings ---------------------------------------------------------------

@pytest.mark.parametrize("before, after, effect, expected", [
    ({}, {"cluster_name": "other"}, Effect.REFUSED, "cluster_name final-problem -> other: refused"),
    ({"kubernetes_version": "1.35"}, {}, Effect.ROLLING, "kubernetes_version 1.35 -> 1.36: rolling restart"),
    ({"kubernetes_version": "1.34"}, {}, Effect.REFUSED, "kubernetes_version 1.34 -> 1.36: refused: Kubernetes 1.34 -> "
                                                          "1.36: EKS updates one minor at a time"),
    ({}, {"kubernetes_version": "1.35"}, Effect.REFUSED, "kubernetes_version 1.36 -> 1.35: refused: Kubernetes 1.36 -> "
                                                          "1.35: EKS cannot downgrade"),
    ({}, {"node_instance_type": "m7g.2xlarge"}, Effect.PROCEDURE, "node_instance_type m7g.large -> m7g.2xlarge"),
    ({}, {"node_desired": 4}, Effect.NOTHING, "node_desired 3 -> 4: nothing"),
])
def test_a_cluster_setting_change_gets_its_class(before: dict[str, Any], after: dict[str, Any], effect: Effect,
                                                 expected: str) -> None:
    cluster = of(plan_of("base", before=before, after=after), "cluster")
    assert cluster.effect == effect
    assert any(line.startswith(expected) for line in lines(cluster)), lines(cluster)


def test_on_the_pis_the_aws_settings_change_nothing() -> None:
    cluster = of(plan_of("base", "pi", after={"cluster_name": "other"}), "cluster")
    assert cluster.effect == Effect.NOTHING and cluster.lines == []


# --- versions: every bundled image along its upgrade path -----------------------------------

#: (component, the versions module's image constant, an older tag on the path, one outside it).
VERSION_CASES = [
    ("kafka", "KAFKA_IMAGE", "4.3.1", "4.2.0"),
    ("zookeeper", "ZOOKEEPER_IMAGE", "3.8.4", "3.7.2"),
    ("cadence", "CADENCE_SERVER_IMAGE", "v1.3.6", "v1.2.18"),
    ("cadence", "CADENCE_WEB_IMAGE", "v4.0.1", "v3.30.0"),
    ("postgres", "POSTGRES_IMAGE", "17.6-trixie", "16.10-trixie"),
    ("postgres", "POSTGRES_EXPORTER_IMAGE", "v0.17.1", None),
    ("redis", "REDIS_IMAGE", "8.2.1-trixie", "7.4.2-trixie"),
    ("demo", "CONSUL_DATAPLANE_IMAGE", "1.8.4", "1.6.0"),
    ("consul", "CONSUL_IMAGE", "1.21.5", "1.20.6"),
    ("envoy", "ENVOY_IMAGE", "distroless-v1.37.2", None),
    ("base", "PYTHON_IMAGE", "3.12.11-slim-trixie", "2.7.18-slim"),
]


def _with_tag(image: str, tag: str) -> str:
    return f"{changes.split_image(image)[0]}:{tag}"


def _version_plan(monkeypatch: pytest.MonkeyPatch, component: str, constant: str, old_tag: str,
                  new_tag: str | None = None) -> plan.ComponentPlan:
    """Render ``component`` with ``constant`` pinned to ``old_tag`` (what runs), then with the
    pin (or ``new_tag``): the plan of the bump."""
    enabled = NEEDS[component]
    pinned = getattr(versions, constant)
    monkeypatch.setattr(versions, constant, _with_tag(pinned, old_tag))
    old = deployments(settings_of(enabled))
    monkeypatch.setattr(versions, constant, _with_tag(pinned, new_tag) if new_tag else pinned)
    new = deployments(settings_of(enabled))
    return of(plan.compare(old, new), component)


@pytest.mark.parametrize("component, constant, on_path, outside", VERSION_CASES,
                         ids=[f"{c[0]}-{c[1]}" for c in VERSION_CASES])
def test_a_version_bump_on_its_path_rolls_and_outside_it_is_refused(
        monkeypatch: pytest.MonkeyPatch, component: str, constant: str, on_path: str, outside: str | None) -> None:
    repository = changes.split_image(getattr(versions, constant))[0]
    bump = _version_plan(monkeypatch, component, constant, on_path)
    image_lines = [line for line in lines(bump) if line.startswith(f"image {repository} ")]
    assert image_lines and ": rolling restart: " in image_lines[0], lines(bump)
    if component != "base":  # the base chart's Python image runs a Job only
        assert bump.restarts, bump.summary()
    if outside is not None:
        jump = _version_plan(monkeypatch, component, constant, outside)
        assert jump.effect == Effect.REFUSED
        assert any(line.startswith(f"image {repository} {outside} -> ") and ": refused: " in line
                   for line in lines(jump)), lines(jump)


def test_kafka_upgrades_one_minor_at_a_time_and_never_back_across_minors(monkeypatch: pytest.MonkeyPatch) -> None:
    two = _version_plan(monkeypatch, "kafka", "KAFKA_IMAGE", "4.2.0")
    assert any("Kafka 4.2.0 -> 4.4.0: one minor at a time. Fix: deploy the newest 4.3.x first" in line
               for line in lines(two)), lines(two)
    back = _version_plan(monkeypatch, "kafka", "KAFKA_IMAGE", "4.4.0", "4.3.1")
    assert back.effect == Effect.REFUSED
    patch_back = _version_plan(monkeypatch, "kafka", "KAFKA_IMAGE", "4.4.1", "4.4.0")
    assert patch_back.effect == Effect.ROLLING


def test_cadence_upgrades_from_the_previous_minor_schema_first_and_refuses_other_jumps(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The path the upgrade rehearsal runs (CADENCE_UPGRADE_FROM -> the pin) rolls, saying
    schema first; skipping a minor and going back across one are refused."""
    repository = changes.split_image(versions.CADENCE_SERVER_IMAGE)[0]
    previous, pinned = versions.CADENCE_UPGRADE_FROM, versions.CADENCE_VERSION
    rehearsed = _version_plan(monkeypatch, "cadence", "CADENCE_SERVER_IMAGE", previous)
    line = next(x for x in lines(rehearsed) if x.startswith(f"image {repository} {previous} -> {pinned}"))
    assert f": rolling restart: Cadence {previous[1:]} -> {pinned[1:]}: from the previous minor, schema first" in line
    major, minor = (int(p) for p in pinned[1:].split(".")[:2])
    skip = _version_plan(monkeypatch, "cadence", "CADENCE_SERVER_IMAGE", f"v{major}.{minor - 2}.0")
    assert skip.effect == Effect.REFUSED
    assert any(f"one minor at a time. Fix: deploy the newest {major}.{minor - 1}.x first" in x for x in lines(skip)), \
        lines(skip)
    back = _version_plan(monkeypatch, "cadence", "CADENCE_SERVER_IMAGE", pinned, previous)
    assert back.effect == Effect.REFUSED
    assert any("a downgrade across minors is not supported" in x for x in lines(back)), lines(back)


def test_the_cadence_upgrade_runs_a_new_schema_job_before_the_servers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Schema first: the Job is named after the image, so the bump creates a new one, and the
    servers wait in their init container for its schema."""
    enabled = NEEDS["cadence"]
    pinned = versions.CADENCE_SERVER_IMAGE
    monkeypatch.setattr(versions, "CADENCE_SERVER_IMAGE", _with_tag(pinned, "v1.3.6"))
    old = {o["metadata"]["name"] for o in objects_of(settings_of(enabled), "eks") if o["kind"] == "Job"}
    monkeypatch.setattr(versions, "CADENCE_SERVER_IMAGE", pinned)
    new_objects = objects_of(settings_of(enabled), "eks")
    new = {o["metadata"]["name"] for o in new_objects if o["kind"] == "Job"}
    assert {n for n in new - old if n.startswith("cadence-schema-")}
    server = next(o for o in new_objects if o["kind"] == "Deployment" and o["metadata"]["name"] == "cadence-history")
    assert server["spec"]["template"]["spec"]["initContainers"][0]["name"] == "wait-for-schema"


def test_every_pinned_image_has_an_upgrade_path_that_keeps_the_pin() -> None:
    """The versions module and the plan agree: every image a bundled chart renders (both
    profiles, every component) has a declared path, and the pinned tag parses on it."""
    components.load_bundled()
    settings = dataclasses.replace(settings_of(tuple(components.COMPONENTS)), pi_arm64_va_bits=48, pi_memory_gib=8)
    paths = plan._upgrade_paths()
    for profile in ("eks", "pi"):
        for name, deployment in plan.from_objects(objects_of(settings, profile), source="t",
                                                  digests_from_objects=True).items():
            for repository, tags in deployment.images().items():
                assert repository in paths, (name, repository)
                for tag in tags:
                    assert changes.parse_version(tag) is not None, (repository, tag)
                    assert paths[repository].check(tag, tag).effect == Effect.NOTHING


# --- declarations agree with what a change renders ----------------------------------------

#: Values of settings the generic candidates cannot find, and the settings that must change
#: with them to stay valid.
EXPLICIT: dict[tuple[str, str], tuple[Any, dict[str, Any]]] = {
    ("zookeeper", "hosts"): (("pi1", "pi2", "pi3"), {}),
    ("envoy", "routes"): (("demo",), {}),
    ("redis", "sentinels"): (5, {"quorum": 3}),
    ("kafka", "replication_factor"): (2, {"min_insync_replicas": 1}),
    # Backups render only with a target.
    ("postgres", "backup_endpoint"): ("http://s3.backups.svc.cluster.local:7070", {}),
    ("postgres", "backup_region"): ("eu-west-1", {"backup_endpoint": "http://s3.backups.svc.cluster.local:7070"}),
    ("postgres", "base_backup_hours"): (12, {"backup_endpoint": "http://s3.backups.svc.cluster.local:7070"}),
    ("postgres", "backup_retention_days"): (14, {"backup_endpoint": "http://s3.backups.svc.cluster.local:7070"}),
    ("postgres", "archive_timeout_s"): (120, {"backup_endpoint": "http://s3.backups.svc.cluster.local:7070"}),
    **{(component, name): (value, {} if name == "backup_endpoint" else {"backup_endpoint": "http://s3.backups.svc.cluster.local:7070"})
       for component in ("redis", "zookeeper", "consul")
       for name, value in (("backup_endpoint", "http://s3.backups.svc.cluster.local:7070"), ("backup_region", "eu-west-1"),
                           ("backup_interval_minutes", 30), ("backup_retention_days", 14))},
    # A restore: latest, or a time with its zone.
    **{(component, "restore_to"): ("latest", {}) for component in ("postgres", "redis", "zookeeper")},
}


def _other_value(info: Any, current: Any) -> Iterable[Any]:
    """Candidate values different from ``current`` for a setting (the first valid one is used)."""
    if info.choices:
        yield from (c for c in info.choices if c != current)
    elif info.base_type is bool:
        yield not current
    elif info.base_type is int:
        base = current if current is not None else (info.minimum or 1) * 2
        for candidate in (base + 1, base - 1, base * 2, base // 2, info.minimum, info.maximum):
            if candidate is not None and candidate != current:
                yield candidate
    elif info.base_type is str:
        yield f"{current}x"


def _bundled_settings() -> list[tuple[str, str]]:
    components.load_bundled()
    return [(name, info.name) for name, cls in components.COMPONENTS.items() if cls.settings_class is not None
            for info in cls.settings_class.infos() if name in NEEDS]


@pytest.mark.parametrize("component, name", _bundled_settings())
def test_a_declared_rule_agrees_with_what_its_change_renders(component: str, name: str) -> None:
    """A setting declared "nothing" changes no pod template when it changes, and one declared
    a rolling restart changes at least one (on EKS, with a value the settings accept)."""
    cls = components.COMPONENTS[component]
    info = next(i for i in cls.settings_class.infos() if i.name == name)
    assert info.change is not None, f"{component}.{name} declares no change rule"
    enabled = NEEDS[component]
    base = settings_of(enabled)
    current = getattr(base.component(cls.settings_class, PROFILES["eks"]), name)
    explicit, companions = EXPLICIT.get((component, name), (None, {}))
    for candidate in [explicit] if explicit is not None else _other_value(info, current):
        value = list(candidate) if isinstance(candidate, tuple) else candidate
        try:
            changed = settings_of(enabled, **{component: {**companions, name: value}})
            changed.component(cls.settings_class, PROFILES["eks"])
            new = deployments(changed)
        except config.ConfigError:
            continue
        break
    else:
        pytest.fail(f"no other valid value of {component}.{name} renders alone: add one to _other_value")
    result = of(plan.compare(deployments(base), new), component)
    verdict = changes.decide(info.change, current, candidate)
    if verdict.effect == Effect.NOTHING:
        assert result.restarts == [], f"{component}.{name} is declared nothing but rolls {result.restarts}"
    if verdict.effect == Effect.ROLLING:
        assert result.restarts, f"{component}.{name} is declared a rolling restart but no pod template changes"


def test_every_setting_declares_a_change_rule() -> None:
    components.load_bundled()
    missing = [f"{name}.{info.name}" for name, cls in components.COMPONENTS.items() if cls.settings_class
               for info in cls.settings_class.infos() if info.change is None]
    missing += [info.name for info in config.cluster_infos() if info.change is None]
    assert missing == []


# --- records -----------------------------------------------------------------------------------

def test_each_chart_records_its_settings_on_its_namespace_without_touching_pods() -> None:
    settings = settings_of(NEEDS["zookeeper"], zookeeper={"tick_time_ms": 3000})
    objects = objects_of(settings, "eks")
    namespace = next(o for o in objects if o["kind"] == "Namespace" and o["metadata"]["name"] == "zookeeper")
    recorded = json.loads(namespace["metadata"]["annotations"][components.SETTINGS_ANNOTATION])
    assert recorded["tick_time_ms"] == 3000 and recorded["replicas"] == 3
    digests = json.loads(namespace["metadata"]["annotations"][components.POD_TEMPLATES_ANNOTATION])
    assert digests == components.pod_template_digests(objects)
    assert set(digests) == {"StatefulSet/zookeeper/zookeeper"}
    # The record is no part of a pod template: recording restarts nothing.
    stateful = next(o for o in objects if o["kind"] == "StatefulSet")
    assert components.SETTINGS_ANNOTATION not in json.dumps(stateful)


# --- the command: one line each, exit status, --from/--to, --live ----------------------------

def _write(objects: list[dict[str, Any]], where: Path) -> Path:
    grouped: dict[str, list[dict[str, Any]]] = {}
    for o in objects:
        grouped.setdefault(o["metadata"]["labels"]["app.kubernetes.io/name"], []).append(o)
    manifests.write_objects(grouped, where)
    return where


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    status = plan.main(argv)
    out, err = capsys.readouterr()
    return status, out, err


LINE = re.compile(r"^  \S+.*: (nothing|rolling restart|procedure needed|refused): [^\n]+$")


def test_the_command_prints_one_line_per_change_and_exits_1_on_a_refused_one(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    enabled = NEEDS["cadence"]
    old = _write(objects_of(settings_of(enabled), "pi"), tmp_path / "old")
    new = _write(objects_of(settings_of(enabled, cadence={"num_history_shards": 32},
                                        postgres={"max_connections": 120}), "pi"), tmp_path / "new")
    status, out, err = _run(["--from", str(old), "--to", str(new)], capsys)
    assert status == 1
    assert err.strip().count("\n") == 0 and err.startswith("error: the deploy would destroy data")
    body = out.splitlines()
    assert body[0] == f"plan: {old} -> {new}"
    assert re.search(r"^cadence +refused; the deploy would also roll Deployment cadence/cadence-frontend: 1 "
                     r"cadence-frontend pod", out, re.M)
    assert re.search(r"^postgres +rolling restart of StatefulSet postgres/postgres: postgres-0 ", out, re.M)
    changed = [line for line in body if line.startswith("  ")]
    assert changed and all(LINE.match(line) for line in changed), changed
    assert ("  cadence.num_history_shards 16 -> 32: refused: history shards are fixed when the database is first set up: "
            "servers with another count cannot find existing workflows (Cadence docs, numHistoryShards). Fix: keep "
            "cadence.num_history_shards=16; another count is a new cluster on a new database, deployed with "
            "ALLOW_REBUILD=1") in body
    # A deliberate rebuild: the same plan, status 0.
    status, out, _ = _run(["--from", str(old), "--to", str(new), "--allow-rebuild"], capsys)
    assert status == 0 and "cadence.num_history_shards 16 -> 32: refused" in out


def test_the_command_renders_the_settings_to_deploy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cdk_json = tmp_path / "cdk.json"
    cdk_json.write_text(json.dumps({"context": {**CDK_JSON, "components": list(NEEDS["zookeeper"])}}))
    old = _write(objects_of(settings_of(NEEDS["zookeeper"]), "pi"), tmp_path / "old")
    status, out, _ = _run(["--from", str(old), "--target", "pi", "--cdk-json", str(cdk_json)], capsys)
    assert status == 0 and re.search(r"^zookeeper +nothing$", out, re.M)
    status, out, _ = _run(["--from", str(old), "--target", "pi", "--cdk-json", str(cdk_json),
                           "-c", "zookeeper.sync_limit=4", "--all", "--require-approval", "broadening"], capsys)
    assert status == 0
    assert re.search(r"^zookeeper +rolling restart of StatefulSet zookeeper/zookeeper: zookeeper-2, zookeeper-1, "
                     r"zookeeper-0 ", out, re.M)


@pytest.mark.parametrize("argv, message", [
    (["--from", "/nonexistent/dist/pi"], "error: /nonexistent/dist/pi: no such directory"),
    (["--from", "{tmp}", "--target", "pi", "-c", "zookeeper.replicas=4"],
     "error: zookeeper.replicas = 4 (from -c): must be one of 3, 5, 7. Fix: set zookeeper.replicas=3"),
    (["--live", "--kubeconfig", "{tmp}/missing"], "error: kubectl"),
])
def test_a_missing_input_or_a_bad_setting_is_one_line_and_status_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        argv: list[str], message: str) -> None:
    _write(objects_of(settings_of(NEEDS["zookeeper"]), "pi"), tmp_path)
    monkeypatch.setenv("PATH", str(_fake_kubectl(tmp_path / "bin", None)))
    status, out, err = _run([a.replace("{tmp}", str(tmp_path)) for a in argv], capsys)
    assert status == 2
    assert err.startswith(message) and err.count("\n") == 1, err


def _fake_kubectl(where: Path, answer: Path | None) -> Path:
    """A ``kubectl`` that prints ``answer`` for ``get ... -o json`` (None: fails as an
    unreachable cluster does), recording its arguments."""
    where.mkdir(parents=True, exist_ok=True)
    script = where / "kubectl"
    body = f"cat {answer}" if answer is not None else \
        'echo "The connection to the server localhost:8080 was refused" >&2; exit 1'
    script.write_text(f"#!/bin/sh\necho \"$@\" >> {where}/kubectl.args\n{body}\n")
    script.chmod(0o755)
    return where


def _as_live(objects: list[dict[str, Any]]) -> dict[str, Any]:
    """``kubectl get -o json`` of what the API server holds after applying ``objects``:
    the same objects with server-side fields and defaults added (which a comparison of pod
    templates must not take for changes)."""
    items = []
    for i, o in enumerate(json.loads(json.dumps(objects))):
        o["metadata"].update(uid=f"uid-{i}", resourceVersion=str(1000 + i), generation=1,
                             creationTimestamp="2026-12-01T00:00:00Z")
        o["status"] = {}
        template = o.get("spec", {}).get("template")
        if o["kind"] in components.WORKLOAD_KINDS and template:
            pod = template["spec"]
            pod.setdefault("dnsPolicy", "ClusterFirst")
            pod.setdefault("schedulerName", "default-scheduler")
            for c in pod.get("containers", []):
                c.setdefault("terminationMessagePath", "/dev/termination-log")
                c.setdefault("terminationMessagePolicy", "File")
        items.append(o)
    return {"apiVersion": "v1", "kind": "List", "items": items}


def test_the_live_reader_reads_records_not_server_defaults(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    cdk_json = tmp_path / "cdk.json"
    cdk_json.write_text(json.dumps({"context": {**CDK_JSON, "components": list(NEEDS["redis"])}}))
    answer = tmp_path / "live.json"
    answer.write_text(json.dumps(_as_live(objects_of(settings_of(NEEDS["redis"]), "eks"))))
    bin_dir = _fake_kubectl(tmp_path / "bin", answer)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    status, out, _ = _run(["--live", "--kubeconfig", "/etc/k.yaml", "--cdk-json", str(cdk_json)], capsys)
    assert status == 0
    assert re.search(r"^redis +nothing$", out, re.M) and "rolling" not in out
    args = (bin_dir / "kubectl.args").read_text()
    assert args.startswith("--kubeconfig /etc/k.yaml get namespaces,statefulsets,deployments,daemonsets,jobs")
    assert "-l app.kubernetes.io/part-of=final-problem -o json" in args
    status, out, _ = _run(["--live", "--cdk-json", str(cdk_json), "-c", "redis.storage_gib=4"], capsys)
    assert status == 1 and "redis.storage_gib 8 -> 4: refused" in out


def test_the_live_reader_finds_a_record_whatever_the_order_of_the_namespaces() -> None:
    """An API server lists Namespaces by name: the Pis' base chart has two (``platform``, its
    record, and ``backups``), and the record is read from the one that carries it."""
    objects = objects_of(settings_of(("base",)), "pi")
    namespaces = sorted(o["metadata"]["name"] for o in objects if o["kind"] == "Namespace"
                        and o["metadata"].get("labels", {}).get(plan.NAME_LABEL) == "base")
    assert namespaces[0] != "platform", namespaces  # the case: the record is not on the first by name
    live = _as_live(sorted(objects, key=lambda o: (o["kind"] != "Namespace", o["metadata"]["name"])))
    base = plan.read_live_json(live)["base"]
    assert base.settings is not None and base.templates is not None


def test_a_cluster_with_nothing_deployed_plans_every_component_as_new(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    cdk_json = tmp_path / "cdk.json"
    cdk_json.write_text(json.dumps({"context": {**CDK_JSON, "components": list(NEEDS["kafka"])}}))
    answer = tmp_path / "live.json"
    answer.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": []}))
    monkeypatch.setenv("PATH", f"{_fake_kubectl(tmp_path / 'bin', answer)}{os.pathsep}{os.environ['PATH']}")
    status, out, _ = _run(["--live", "--cdk-json", str(cdk_json)], capsys)
    assert status == 0
    assert "  component: nothing: new: created" in out and out.count("new: created") == 2


def test_a_removed_component_with_volumes_is_refused() -> None:
    old = deployments(settings_of(("base", "zookeeper", "kafka")))
    new = deployments(settings_of(("base", "kafka")))
    zk = of(plan.compare(old, new), "zookeeper")
    assert zk.effect == Effect.REFUSED
    assert "volume claims of StatefulSet zookeeper/zookeeper" in lines(zk)[0]


# --- an extension declares its own rules through final_problem.api ------------------------

def test_an_extension_declares_rules_and_an_upgrade_path_through_the_api(registry: dict[str, Any]) -> None:
    from final_problem import api

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class CacheSettings(api.ComponentSettings):
        size_mib: int = api.setting(64, minimum=16, maximum=4096, doc="Cache size.",
                                    change=api.rolling("read at start"))
        shards: int = api.setting(4, minimum=1, maximum=64, doc="Shards.",
                                  change=lambda old, new: api.refused(f"{old} -> {new} shards rehash every key",
                                                                       "keep {name}={old}"))

    @api.register
    class CacheChart(api.PlatformChart):
        component = "cache"
        construct_id = "Cache"
        requires = ("base",)
        version = "1.2.3"
        settings_class = CacheSettings
        images = ("docker.io/library/memcached:1.6.39",)
        upgrade_paths = {"docker.io/library/memcached": api.UpgradePath(
            name="memcached", within="major", step=None, downgrade="any",
            upgrade=api.rolling("stateless cache pods roll"), outside="a new major", source="memcached release notes")}

        def __init__(self, scope: Any, id: str, *, settings: Any, profile: Any, dependencies: Any) -> None:
            super().__init__(scope, id, settings=settings, profile=profile, dependencies=dependencies)
            api.RestrictedNamespace(self, "Namespace", name="cache")
            api.k8s.KubeDeployment(
                self, "Cache", metadata=api.k8s.ObjectMeta(name="cache", namespace="cache"),
                spec=api.k8s.DeploymentSpec(
                    replicas=2, selector=api.k8s.LabelSelector(match_labels={"app": "cache"}),
                    template=api.k8s.PodTemplateSpec(
                        metadata=api.k8s.ObjectMeta(labels={"app": "cache"}),
                        spec=api.k8s.PodSpec(containers=[api.k8s.Container(
                            name="cache", image=self.images[0], args=[f"-m{self.props.size_mib}"])]))))

    NEEDS["cache"] = ("base", "cache")
    try:
        rolled = of(plan_of("cache", after={"cache": {"size_mib": 128}}), "cache")
        assert rolled.effect == Effect.ROLLING and rolled.restarts == [("Deployment cache/cache", ["2 cache pods (surge 25%, unavailable 25%)"])]
        refused = of(plan_of("cache", after={"cache": {"shards": 8}}), "cache")
        assert refused.effect == Effect.REFUSED
        assert lines(refused) == ["cache.shards 4 -> 8: refused: 4 -> 8 shards rehash every key. Fix: keep cache.shards=4"]
    finally:
        del NEEDS["cache"]


def test_an_upgrade_path_checks_its_own_declaration() -> None:
    with pytest.raises(ValueError, match="within must be"):
        UpgradePath(name="x", within="patch", step=None, downgrade=None, upgrade=changes.rolling("r"), outside="",
                    source="")
    path = versions.ZOOKEEPER_UPGRADE
    assert path.check("3.9.4", "3.9.5").effect == Effect.ROLLING
    assert path.check("3.9.4", "4.0.0") == Verdict(
        Effect.REFUSED, "ZooKeeper 3.9.4 -> 4.0.0: outside the supported path (ZooKeeper 4 is not released; a new "
                        "major's notes decide)",
        "keep ZooKeeper 3.x; ZooKeeper release notes (3.8, 3.9): rolling upgrade from the previous minors")


# --- make deploy: the plan runs first and stops before the CDK CLI --------------------------

@pytest.fixture(scope="module")
def live_platform(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What ``kubectl get`` answers for a cluster running the platform as cdk.json renders it
    for EKS (every component)."""
    answer = tmp_path_factory.mktemp("live") / "live.json"
    settings = manifests.settings_from(ROOT / "cdk.json", [])
    answer.write_text(json.dumps(_as_live(objects_of(settings, "eks"))))
    return answer


@pytest.mark.parametrize("variables, deployed", [
    ({}, True),
    ({"CDK_ARGS": "-c cadence.num_history_shards=1024"}, False),
    ({"CDK_ARGS": "-c cadence.num_history_shards=1024", "ALLOW_REBUILD": "1"}, True),
])
def test_make_deploy_runs_the_plan_first_and_stops_before_the_cdk_cli(
        tmp_path: Path, live_platform: Path, variables: dict[str, str], deployed: bool) -> None:
    bin_dir = _fake_kubectl(tmp_path / "bin", live_platform)
    called = tmp_path / "cdk-called"
    cdk = tmp_path / "cdk"
    cdk.write_text(f"#!/bin/sh\necho \"$@\" > {called}\n")
    cdk.chmod(0o755)
    # -o setup: the installation is there already (and shared); nothing is installed here.
    result = subprocess.run(
        ["make", "--no-print-directory", "-o", "setup", "deploy", f"CDK={cdk}",
         *(f"{k}={v}" for k, v in variables.items())],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"},
    )
    assert (tmp_path / "bin" / "kubectl.args").exists(), result.stderr
    if deployed:
        assert result.returncode == 0, result.stdout + result.stderr
        assert called.read_text().startswith("deploy --all --require-approval broadening")
    else:
        assert result.returncode != 0
        assert not called.exists(), "the CDK CLI ran after a refused plan"
        assert "cadence.num_history_shards 512 -> 1024: refused" in result.stdout
        assert "error: the deploy would destroy data" in result.stderr


def test_the_cli_runs_the_plan(tmp_path: Path) -> None:
    old = _write(objects_of(settings_of(NEEDS["zookeeper"]), "pi"), tmp_path / "old")
    new = _write(objects_of(settings_of(NEEDS["zookeeper"], zookeeper={"storage_gib": 1}), "pi"), tmp_path / "new")
    result = subprocess.run([sys.executable, "-m", "final_problem.cli", "plan", "--from", str(old), "--to", str(new)],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "zookeeper.storage_gib 2 -> 1: refused" in result.stdout


def test_a_synth_output_reads_back(tmp_path: Path) -> None:
    objects = objects_of(settings_of(NEEDS["zookeeper"]), "pi")
    read = plan.read_dir(_write(objects, tmp_path))
    assert set(read) == {"base", "zookeeper"}
    assert read["zookeeper"].settings is not None and read["zookeeper"].settings["replicas"] == 3
    assert read["zookeeper"].templates == components.pod_template_digests(
        [o for f in sorted(tmp_path.glob("*-zookeeper.yaml")) for o in yaml.safe_load_all(f.read_text())])


def test_the_rules_table_lists_every_setting_and_image_path() -> None:
    table = changes.rules_markdown()
    components.load_bundled()
    for name, cls in components.COMPONENTS.items():
        for info in cls.settings_class.infos() if cls.settings_class else ():
            assert f"| `{name}.{info.name}` | " in table
    assert "undeclared" not in table
    for repository, path in versions.UPGRADE_PATHS.items():
        assert f"| `{repository}` ({path.name}) | " in table
    assert "| `cadence.num_history_shards` | refused: history shards are fixed" in table


def test_a_finished_job_of_an_older_version_is_not_taken_for_what_runs(tmp_path: Path) -> None:
    """A cluster keeps a finished Job a day (ttlSecondsAfterFinished): after an upgrade, the
    previous version's schema Job is still listed beside the new one. The plan of the next
    deploy of the same version changes nothing."""
    enabled = NEEDS["cadence"]
    objects = objects_of(settings_of(enabled), "eks")
    leftover = json.loads(json.dumps(next(o for o in objects if o["metadata"]["name"].startswith("cadence-schema-"))))
    leftover["metadata"]["name"] = "cadence-schema-0ld0ld00"
    leftover["spec"]["template"]["spec"]["containers"][0]["image"] = "docker.io/ubercadence/server:v1.3.6"
    live = plan.read_live_json(_as_live([*objects, leftover]))
    result = of(plan.compare(live, deployments(settings_of(enabled))), "cadence")
    assert result.effect == Effect.NOTHING and lines(result) == []


def test_the_verdict_line_says_how_each_kind_of_workload_rolls() -> None:
    kafka = of(plan_of("kafka", after=BOTH_SETS), "kafka").summary()
    assert kafka.endswith("(a StatefulSet one pod at a time from the highest ordinal, each Ready first; the workloads "
                          "side by side)")
    envoy = of(plan_of("envoy", after={"envoy": {"retries": 3}}), "envoy").summary()
    assert envoy == "rolling restart of Deployment edge/envoy: 2 envoy pods (surge 1, unavailable 0)"


def test_a_setting_without_a_rule_is_judged_by_the_pods_it_changes(registry: dict[str, Any]) -> None:
    from final_problem import api

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class PlainSettings(api.ComponentSettings):
        size_mib: int = api.setting(64, minimum=16, maximum=4096, doc="Size, no rule declared.")

    @api.register
    class PlainChart(api.PlatformChart):
        component = "plain"
        construct_id = "Plain"
        requires = ("base",)
        version = "1.0.0"
        settings_class = PlainSettings

        def __init__(self, scope: Any, id: str, *, settings: Any, profile: Any, dependencies: Any) -> None:
            super().__init__(scope, id, settings=settings, profile=profile, dependencies=dependencies)
            api.RestrictedNamespace(self, "Namespace", name="plain")
            api.k8s.KubeDeployment(
                self, "Plain", metadata=api.k8s.ObjectMeta(name="plain", namespace="plain"),
                spec=api.k8s.DeploymentSpec(
                    replicas=1, selector=api.k8s.LabelSelector(match_labels={"app": "plain"}),
                    template=api.k8s.PodTemplateSpec(
                        metadata=api.k8s.ObjectMeta(labels={"app": "plain"}),
                        spec=api.k8s.PodSpec(containers=[api.k8s.Container(
                            name="plain", image="docker.io/library/busybox:1.37.0",
                            args=[str(self.props.size_mib)])]))))

    NEEDS["plain"] = ("base", "plain")
    try:
        result = of(plan_of("plain", after={"plain": {"size_mib": 128}}), "plain")
    finally:
        del NEEDS["plain"]
    assert lines(result) == ["plain.size_mib 64 -> 128: nothing: no change rule declared: judged by the objects it "
                             "changes"]
    assert result.effect == Effect.ROLLING and result.restarts == [
        ("Deployment plain/plain", ["1 plain pod (surge 25%, unavailable 25%)"])]
