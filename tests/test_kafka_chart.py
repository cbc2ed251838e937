"""Precise tests of the Kafka chart and its renderer: layout, durability, security, every settings error."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from final_problem import config, manifests, versions
from final_problem.charts.kafka import DEFAULT_TOPICS, KAFKA_UID, KafkaProps, _read_lock
from final_problem.clients.kafka import KafkaSettings
from final_problem.clients.kafka_topics import TopicSpec
from final_problem.errors import ConfigError
from final_problem.profiles import EKS, PI
from final_problem.renderers.kafka import (
    KafkaClusterConfig, KafkaNode, layout_nodes, quorum_format_args, server_properties,
)
from tests.conftest import one


def render(profile: str = "eks") -> list[dict[str, Any]]:
    s = config.from_mapping({"components": ["base", "kafka"]})
    return manifests.chart_objects(manifests.render(s, profile)["kafka"])


def properties(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))


@pytest.fixture(scope="module")
def eks() -> list[dict[str, Any]]:
    return render("eks")


@pytest.fixture(scope="module")
def pi() -> list[dict[str, Any]]:
    return render("pi")


def test_eks_runs_three_dedicated_controllers_and_three_brokers_from_the_pinned_image(eks: list[dict[str, Any]]) -> None:
    controllers, brokers = one(eks, "StatefulSet", "kafka-controller"), one(eks, "StatefulSet", "kafka-broker")
    assert controllers["spec"]["replicas"] == brokers["spec"]["replicas"] == 3
    for sts in (controllers, brokers):
        pod = sts["spec"]["template"]["spec"]
        assert pod["containers"][0]["image"] == versions.KAFKA_IMAGE == "docker.io/apache/kafka:4.4.0"
        assert pod["securityContext"]["runAsUser"] == KAFKA_UID == 1000
        assert [c["name"] for c in pod["initContainers"]] == ["fetch-metrics-agent", "format-storage"]
    assert {o["metadata"]["name"] for o in eks if o["kind"] == "PodDisruptionBudget"} == {"kafka-controller", "kafka-broker"}


def test_pi_combines_both_roles_in_three_nodes(pi: list[dict[str, Any]]) -> None:
    (sts,) = [o for o in pi if o["kind"] == "StatefulSet"]
    assert sts["metadata"]["name"] == "kafka" and sts["spec"]["replicas"] == 3
    data = one(pi, "ConfigMap", "kafka-config")["data"]
    assert properties(data["kafka-0.properties"])["process.roles"] == "broker,controller"
    limit = sts["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"]
    assert limit == "448Mi"


def test_every_pod_gets_its_own_rendered_file_with_the_quorum_bootstrap_and_its_own_advertised_name(
        eks: list[dict[str, Any]]) -> None:
    data = one(eks, "ConfigMap", "kafka-config")["data"]
    bootstrap = ",".join(f"kafka-controller-{i}.kafka-controller-headless.kafka.svc.cluster.local:9093" for i in range(3))
    for i in range(3):
        controller = properties(data[f"kafka-controller-{i}.properties"])
        broker = properties(data[f"kafka-broker-{i}.properties"])
        assert controller["process.roles"] == "controller" and controller["node.id"] == str(i)
        assert broker["process.roles"] == "broker" and broker["node.id"] == str(100 + i)
        assert controller["controller.quorum.bootstrap.servers"] == broker["controller.quorum.bootstrap.servers"] == bootstrap
        assert "controller.quorum.voters" not in controller and "controller.quorum.voters" not in broker
        assert broker["advertised.listeners"].startswith(
            f"CLIENT://kafka-broker-{i}.kafka-broker-headless.kafka.svc.cluster.local:9092,")
    # The container reads its own file, read-only, and starts kafka.Kafka directly.
    container = one(eks, "StatefulSet", "kafka-broker")["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][-2:] == ["kafka.Kafka", "/opt/kafka-config/$(POD_NAME).properties"]
    assert {"name": "config", "mountPath": "/opt/kafka-config", "readOnly": True} in container["volumeMounts"]


def test_durability_defaults(eks: list[dict[str, Any]]) -> None:
    data = one(eks, "ConfigMap", "kafka-config")["data"]
    broker = properties(data["kafka-broker-0.properties"])
    controller = properties(data["kafka-controller-0.properties"])
    # Topic-creation defaults are the controllers' in KRaft, and only theirs.
    assert controller["default.replication.factor"] == "3" and controller["num.partitions"] == "3"
    assert "default.replication.factor" not in broker and "num.partitions" not in broker
    # Set on the controllers too: with eligible leader replicas theirs is the cluster value.
    assert broker["min.insync.replicas"] == controller["min.insync.replicas"] == "2"
    assert broker["unclean.leader.election.enable"] == "false"
    assert broker["auto.create.topics.enable"] == "false"
    for key in ("offsets.topic.replication.factor", "transaction.state.log.replication.factor",
                "share.coordinator.state.topic.replication.factor"):
        assert broker[key] == "3"


def test_every_listener_authenticates_and_no_password_is_rendered(eks: list[dict[str, Any]]) -> None:
    data = one(eks, "ConfigMap", "kafka-config")["data"]
    broker = properties(data["kafka-broker-0.properties"])
    assert broker["listener.security.protocol.map"] == "CONTROLLER:SASL_PLAINTEXT,CLIENT:SASL_PLAINTEXT,REPLICATION:SASL_PLAINTEXT"
    assert broker["sasl.mechanism.inter.broker.protocol"] == "SCRAM-SHA-512"
    assert broker["sasl.mechanism.controller.protocol"] == "PLAIN"
    assert 'password="${env:KAFKA_ADMIN_PASSWORD}"' in broker["listener.name.replication.scram-sha-512.sasl.jaas.config"]
    assert not [o for o in eks if o["kind"] == "Secret"]
    init = one(eks, "StatefulSet", "kafka-broker")["spec"]["template"]["spec"]["initContainers"][1]
    assert "SCRAM-SHA-512=[name=app,password=$(KAFKA_APP_PASSWORD)]" in init["command"]
    assert "$(KAFKA_CLUSTER_ID)" in init["command"] and "--ignore-formatted" in init["command"]


def test_cluster_id_is_generated_in_the_cluster_as_a_kafka_uuid(eks: list[dict[str, Any]]) -> None:
    job = next(o for o in eks if o["kind"] == "Job" and o["metadata"]["name"].startswith("secret-generator-"))
    spec = job["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"]
    assert '"format": "kafka-uuid"' in spec and '"name": "kafka-cluster-id"' in spec


def test_heap_is_half_the_memory_limit(eks: list[dict[str, Any]]) -> None:
    container = one(eks, "StatefulSet", "kafka-broker")["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["memory"] == "768Mi"
    assert "-Xmx384m" in container["command"] and "-Xms384m" in container["command"]


def test_topic_job_applies_the_declared_topics(eks: list[dict[str, Any]]) -> None:
    job = next(o for o in eks if o["kind"] == "Job" and o["metadata"]["name"].startswith("kafka-topics-"))
    env = {e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert '"name": "events"' in env["KAFKA_TOPICS"]
    assert env["KAFKA_BOOTSTRAP_SERVERS"] == "kafka-bootstrap.kafka.svc:9092"


def test_the_partitions_lock_matches_the_default_topics() -> None:
    # Raising a topic's partitions is done in both places in one change.
    assert _read_lock() == {t.name: t.partitions for t in DEFAULT_TOPICS}


def test_metrics_port_open_to_monitoring_only(eks: list[dict[str, Any]]) -> None:
    policy = one(eks, "NetworkPolicy", "kafka-broker")["spec"]
    metrics = [r for r in policy["ingress"] if r["ports"] == [{"port": 9404, "protocol": "TCP"}]]
    assert metrics and metrics[0]["from"] == [{"namespaceSelector": {"matchLabels": {"final-problem.io/monitoring": "true"}}}]


def test_agent_fetch_downloads_checks_and_keeps_the_pinned_jar(tmp_path: Path) -> None:
    from final_problem.charts.kafka import _FETCH_AGENT

    source = tmp_path / "agent.jar"
    source.write_bytes(b"agent bytes")
    digest = hashlib.sha256(b"agent bytes").hexdigest()
    target = tmp_path / "volume" / "metrics-agent" / "agent.jar"

    def fetch(url: str, sha: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", _FETCH_AGENT, url, sha, str(target)],
                              capture_output=True, text=True, timeout=60, check=False)

    assert fetch(source.as_uri(), digest).returncode == 0 and target.read_bytes() == b"agent bytes"
    # Kept on the volume: a restart without network needs no download.
    assert fetch((tmp_path / "missing.jar").as_uri(), digest).returncode == 0
    target.unlink()
    bad = fetch(source.as_uri(), "0" * 64)
    assert bad.returncode != 0 and "SHA-256 mismatch" in bad.stderr and not target.exists()


# -- settings errors ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "setting"),
    [
        ({"replication_factor": 4}, "kafka.replication_factor"),
        ({"min_insync_replicas": 3}, "kafka.min_insync_replicas"),
        ({"controllers": 4}, "kafka.controllers"),
        ({"num_partitions": 0}, "kafka.num_partitions"),
        ({"topics": (TopicSpec(name="a", partitions=0),)}, "kafka.topics.a.partitions"),
        ({"topics": (TopicSpec(name="bad name"),)}, "kafka.topics"),
        ({"topics": (TopicSpec(name="a.b"), TopicSpec(name="a_b"))}, "kafka.topics"),
        ({"topics": (TopicSpec(name="x"), TopicSpec(name="x"))}, "kafka.topics"),
        ({"topics": (TopicSpec(name="events", partitions=3),)}, "kafka.topics.events.partitions"),
        ({"topics": (TopicSpec(name="t", replication_factor=4),)}, "kafka.topics.t.replication_factor"),
        ({"topics": (TopicSpec(name="t", configs={"min.insync.replicas": "3"}),)}, "kafka.topics.t.min.insync.replicas"),
        ({"broker_heap_mib": 1200}, "kafka.broker_heap_mib"),
        ({"controller_memory_mib": 256, "controller_heap_mib": 200}, "kafka.controller_heap_mib"),
        ({"metrics_port": 9092}, "kafka.metrics_port"),
        ({"controllers": 1}, "kafka.controllers"),
    ],
)
def test_bad_settings_fail_synthesis_with_the_setting_named(overrides: dict[str, Any], setting: str) -> None:
    with pytest.raises(ConfigError) as info:
        KafkaProps.for_profile(EKS, **overrides)
    assert info.value.setting == setting


def test_suggested_fixes_are_valid() -> None:
    # "use 3", "use 2", "declare 6 or more": each fix passes validation.
    KafkaProps.for_profile(EKS, controllers=3, min_insync_replicas=2, replication_factor=3)
    KafkaProps.for_profile(EKS, topics=(TopicSpec(name="events", partitions=6),))
    KafkaProps.for_profile(PI, broker_heap_mib=None)


def test_raising_partitions_is_allowed() -> None:
    props = KafkaProps.for_profile(EKS, topics=(TopicSpec(name="events", partitions=12),))
    assert props.topics[0].partitions == 12


def test_combined_layout_counts_its_nodes_as_brokers() -> None:
    # On the Pi, brokers is ignored: the 3 combined nodes are the brokers.
    props = KafkaProps.for_profile(PI, brokers=5)
    assert props.combined and props.broker_count == 3
    with pytest.raises(ConfigError, match="odd and at least 3"):
        KafkaProps.for_profile(EKS, brokers=4)
    with pytest.raises(ConfigError, match="broker count"):
        KafkaProps.for_profile(PI, replication_factor=5)


def test_settings_come_from_the_kafka_section() -> None:
    s = config.from_mapping({"components": ["base", "kafka"], "kafka": {"brokers": "5", "broker_memory_mib": 2048}})
    objects = manifests.chart_objects(manifests.render(s, "eks")["kafka"])
    broker = one(objects, "StatefulSet", "kafka-broker")
    assert broker["spec"]["replicas"] == 5
    assert "-Xmx1024m" in broker["spec"]["template"]["spec"]["containers"][0]["command"]


# -- renderer ----------------------------------------------------------------------------


def _place(kind: str, ordinal: int) -> dict[str, Any]:
    return {"host": f"{kind}-{ordinal}"}


def test_renderer_refuses_an_even_quorum_and_rf_above_brokers() -> None:
    with pytest.raises(ConfigError, match="must be odd"):
        KafkaClusterConfig(nodes=layout_nodes(controllers=2, brokers=3, combined=False, place=_place))
    with pytest.raises(ConfigError, match="above the broker count"):
        KafkaClusterConfig(nodes=layout_nodes(controllers=3, brokers=2, combined=False, place=_place))


def test_controller_only_nodes_have_no_client_listener() -> None:
    cluster = KafkaClusterConfig(nodes=layout_nodes(controllers=3, brokers=3, combined=False, place=_place))
    text = properties(server_properties(cluster, 0))
    assert text["listeners"] == "CONTROLLER://0.0.0.0:9093"
    assert "inter.broker.listener.name" not in text
    assert 'user_controller="${env:KAFKA_CONTROLLER_PASSWORD}"' in text["listener.name.controller.plain.sasl.jaas.config"]
    broker = properties(server_properties(cluster, 100))
    # A broker only connects to controllers: it presents the user but accepts none.
    assert "user_controller" not in broker["listener.name.controller.plain.sasl.jaas.config"]


def test_renderer_refuses_unknown_roles_and_duplicate_ids() -> None:
    with pytest.raises(ConfigError, match="role"):
        KafkaNode(node_id=1, roles=("controller", "broker"), host="h")
    node = KafkaNode(node_id=0, roles=("broker", "controller"), host="h")
    with pytest.raises(ConfigError, match="used twice"):
        KafkaClusterConfig(nodes=(node, replace(node, host="g"), replace(node, host="f")))


def test_client_settings_come_from_the_environment_or_the_secret() -> None:
    asked: list[str] = []

    def secret(key: str) -> str:
        asked.append(key)
        return "from-secret"

    s = KafkaSettings.from_env({"KAFKA_BOOTSTRAP_SERVERS": "a:1,b:2"}, secret=secret)
    assert (s.username, s.password, asked) == ("app", "from-secret", ["app-password"])
    assert s.common()["bootstrap_servers"] == ["a:1", "b:2"] and s.common()["sasl_mechanism"] == "SCRAM-SHA-512"
    s = KafkaSettings.from_env({"KAFKA_PASSWORD": "env"}, secret=secret)
    assert s.password == "env" and s.bootstrap_servers == "kafka-bootstrap.kafka.svc:9092"


def test_combined_nodes_carry_the_controller_defaults(pi: list[dict[str, Any]]) -> None:
    node = properties(one(pi, "ConfigMap", "kafka-config")["data"]["kafka-0.properties"])
    assert node["num.partitions"] == node["default.replication.factor"] == "3"


@pytest.mark.parametrize(("profile", "session", "heartbeat"), [("eks", "3000", "500"), ("pi", "6000", "1000")])
def test_failure_detection_per_profile_on_the_role_that_reads_it(profile: str, session: str, heartbeat: str) -> None:
    data = one(render(profile), "ConfigMap", "kafka-config")["data"]
    files = {name: properties(text) for name, text in data.items() if name.endswith(".properties") and name.startswith("kafka-")}
    for name, conf in files.items():
        roles = conf["process.roles"].split(",")
        # broker.session.timeout.ms is read by the controllers (they fence), the interval by brokers.
        assert conf.get("broker.session.timeout.ms") == (session if "controller" in roles else None), name
        assert conf.get("broker.heartbeat.interval.ms") == (heartbeat if "broker" in roles else None), name


def test_heartbeat_not_below_the_session_is_refused_in_one_line() -> None:
    with pytest.raises(ConfigError, match=r"kafka\.broker_heartbeat_interval_ms = 6000: must be positive and below "
                                          r"kafka\.broker_session_timeout_ms \(6000\).*use 1000"):
        KafkaProps.for_profile(PI, broker_heartbeat_interval_ms=6000).check()


@pytest.mark.parametrize(("profile", "heap", "dedupe_mib"), [("eks", 384, 24), ("pi", 224, 14)])
def test_the_collector_and_heap_bound_buffers_are_sized_for_the_profiles_heap(profile: str, heap: int, dedupe_mib: int) -> None:
    objects = render(profile)
    kind = "kafka-broker" if profile == "eks" else "kafka"
    container = one(objects, "StatefulSet", kind)["spec"]["template"]["spec"]["containers"][0]
    command = container["command"]
    # The image's start script's collector, named: inside the pod's limits the JVM would
    # otherwise pick Serial.
    assert f"-Xmx{heap}m" in command and "-XX:+UseG1GC" in command and "-XX:MaxGCPauseMillis=20" in command
    name = "kafka-broker-0.properties" if profile == "eks" else "kafka-0.properties"
    conf = properties(one(objects, "ConfigMap", "kafka-config")["data"][name])
    mib = 1024 * 1024
    assert int(conf["log.cleaner.dedupe.buffer.size"]) == dedupe_mib * mib
    assert int(conf["log.cleaner.dedupe.buffer.size"]) <= heap * mib // 16
    # Kafka requires a request to fit the queue.
    assert int(conf["socket.request.max.bytes"]) <= int(conf["queued.max.request.bytes"]) <= heap * mib // 4
    assert int(conf["replica.fetch.response.max.bytes"]) <= 10 * mib


def test_pi_brokers_fsync_every_write_and_eks_brokers_rest_on_replication() -> None:
    pi_node = properties(one(render("pi"), "ConfigMap", "kafka-config")["data"]["kafka-0.properties"])
    assert pi_node["log.flush.interval.messages"] == "1"
    eks_broker = properties(one(render("eks"), "ConfigMap", "kafka-config")["data"]["kafka-broker-0.properties"])
    assert "log.flush.interval.messages" not in eks_broker
    s = config.from_mapping({"components": ["base", "kafka"], "kafka": {"fsync_every_write": "false"}})
    objects = manifests.chart_objects(manifests.render(s, "pi")["kafka"])
    off = properties(one(objects, "ConfigMap", "kafka-config")["data"]["kafka-0.properties"])
    assert "log.flush.interval.messages" not in off


def _quorum_files(objects: list[dict[str, Any]]) -> dict[str, str]:
    return {k: v for k, v in one(objects, "ConfigMap", "kafka-config")["data"].items() if k.endswith(".quorum")}


def test_the_first_voters_format_with_the_same_initial_controllers_and_spares_as_observers(eks: list[dict[str, Any]]) -> None:
    """Kafka docs, "KRaft", Provisioning Nodes: the same --initial-controllers on every first
    voter (id@host:port:directory-id), --no-initial-controllers on a controller added later,
    neither on a broker."""
    files = _quorum_files(eks)
    assert sorted(files) == [f"kafka-controller-{i}.quorum" for i in range(5)]
    initial = {files[f"kafka-controller-{i}.quorum"] for i in range(3)}
    assert len(initial) == 1
    flag, voters = initial.pop().splitlines()
    assert flag == "--initial-controllers"
    entries = [v.split(":") for v in voters.split(",")]
    assert [e[0] for e in entries] == [f"{i}@kafka-controller-{i}.kafka-controller-headless.kafka.svc.cluster.local"
                                       for i in range(3)]
    directory_ids = [e[2] for e in entries]
    assert len(set(directory_ids)) == 3 and all(len(d) == 22 and not d.startswith("-") for d in directory_ids)
    assert files["kafka-controller-3.quorum"] == files["kafka-controller-4.quorum"] == "--no-initial-controllers\n"
    # The spares' own files exist before a scale adds their pods; the set runs the 3 voters.
    data = one(eks, "ConfigMap", "kafka-config")["data"]
    assert properties(data["kafka-controller-4.properties"])["node.id"] == "4"
    assert one(eks, "StatefulSet", "kafka-controller")["spec"]["replicas"] == 3


def test_the_combined_nodes_format_as_the_initial_voters(pi: list[dict[str, Any]]) -> None:
    files = _quorum_files(pi)
    assert sorted(files) == [f"kafka-{i}.quorum" for i in range(3)]
    assert all(f.startswith("--initial-controllers\n0@kafka-0.kafka-headless.kafka.svc.cluster.local:9093:")
               for f in files.values())


def test_a_controller_count_changes_no_file_a_pod_reads() -> None:
    """Growing or shrinking the quorum is the procedure's: the deploy after it rolls nothing."""
    def objects(controllers: int) -> list[dict[str, Any]]:
        settings = config.from_mapping({"components": ["base", "kafka"], "kafka": {"controllers": controllers}})
        return manifests.chart_objects(manifests.render(settings, "eks")["kafka"])

    three, five = objects(3), objects(5)
    for name in ("kafka-controller", "kafka-broker"):
        assert one(three, "StatefulSet", name)["spec"]["template"] == one(five, "StatefulSet", name)["spec"]["template"]
    changed = {k for k, v in one(three, "ConfigMap", "kafka-config")["data"].items()
               if one(five, "ConfigMap", "kafka-config")["data"][k] != v}
    # Only what a volume formatted from now on would read: controllers 3 and 4 as first voters.
    assert changed == {f"kafka-controller-{i}.quorum" for i in range(5)}


def test_a_static_quorum_keeps_its_voters_and_formats_without_quorum_flags() -> None:
    props = KafkaProps.for_profile(EKS, dynamic_quorum=False)
    cluster = props.cluster_config(namespace="kafka")
    assert [n.node_id for n in cluster.controllers] == [0, 1, 2]
    text = properties(server_properties(cluster, 100))
    assert text["controller.quorum.voters"] == ",".join(
        f"{i}@kafka-controller-{i}.kafka-controller-headless.kafka.svc.cluster.local:9093" for i in range(3))
    assert "controller.quorum.bootstrap.servers" not in text
    assert all(quorum_format_args(cluster, n.node_id) == [] for n in cluster.nodes)


def test_the_format_wrapper_adds_the_pods_quorum_arguments(tmp_path: Path) -> None:
    """format-storage.sh runs the storage tool with the lines of $POD_NAME.quorum as
    arguments (a voter list has no spaces, but each line stays one argument), none for a broker."""
    from final_problem.charts.kafka import FORMAT_SCRIPT
    script = tmp_path / "format-storage.sh"
    script.write_text(FORMAT_SCRIPT)
    (tmp_path / "kafka-controller-0.quorum").write_text("--initial-controllers\n0@a b:1:x\n")

    def run(pod: str) -> list[str]:
        show = 'for a in "$@"; do printf "%s|" "$a"; done'
        out = subprocess.run(["sh", str(script), "sh", "-c", show, "sh"], capture_output=True, text=True, check=True,
                             env={"POD_NAME": pod, "PATH": "/usr/bin:/bin"}).stdout
        return out.split("|")[:-1]

    assert run("kafka-controller-0") == ["--initial-controllers", "0@a b:1:x"]
    assert run("kafka-broker-0") == []


def test_quorum_scripts_pass_shellcheck() -> None:
    from final_problem.charts.kafka import FORMAT_SCRIPT, QUORUM_SCRIPT
    shellcheck = shutil.which("shellcheck") or str(Path(sys.executable).with_name("shellcheck"))
    for text in (FORMAT_SCRIPT, QUORUM_SCRIPT):
        result = subprocess.run([shellcheck, "-s", "sh", "-"], input=text, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout
