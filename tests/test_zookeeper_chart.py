"""Precise tests of the ZooKeeper chart: defaults, overrides and every settings error."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from final_problem import config, manifests, versions
from final_problem.charts.zookeeper import MONITORING_NAMESPACE_LABEL, CLIENT_NAMESPACE_LABEL
from final_problem.errors import ConfigError
from tests.conftest import one


def render(profile: str = "eks", **settings: Any) -> list[dict[str, Any]]:
    """The chart's objects; a keyword ``zookeeper_x`` stands for the ``-c`` key ``zookeeper.x``."""
    context = {key.replace("zookeeper_", "zookeeper.", 1): value for key, value in settings.items()}
    s = config.from_mapping({"components": ["base", "zookeeper"], **context})
    return manifests.chart_objects(manifests.render(s, profile)["zookeeper"])


def container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return one(objects, "StatefulSet")["spec"]["template"]["spec"]["containers"][0]


def zoo_cfg(objects: list[dict[str, Any]]) -> dict[str, str]:
    text = one(objects, "ConfigMap", "zookeeper-config")["data"]["zoo.cfg"]
    return dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))


@pytest.fixture(scope="module")
def eks() -> list[dict[str, Any]]:
    return render("eks")


@pytest.fixture(scope="module")
def pi() -> list[dict[str, Any]]:
    return render("pi")


def test_three_members_with_stable_names_and_the_pinned_image(eks: list[dict[str, Any]]) -> None:
    sts = one(eks, "StatefulSet")
    assert sts["spec"]["replicas"] == 3
    assert sts["spec"]["serviceName"] == "zookeeper-headless"
    assert container(eks)["image"] == versions.ZOOKEEPER_IMAGE == "docker.io/library/zookeeper:3.9.4"
    cfg = zoo_cfg(eks)
    assert [cfg[f"server.{i}"] for i in (1, 2, 3)] == [
        f"zookeeper-{i}.zookeeper-headless.zookeeper.svc.cluster.local:2888:3888" for i in (0, 1, 2)
    ]


def test_headless_service_publishes_members_before_they_are_ready(eks: list[dict[str, Any]]) -> None:
    headless = one(eks, "Service", "zookeeper-headless")["spec"]
    assert headless["clusterIP"] == "None" and headless["publishNotReadyAddresses"] is True
    client = one(eks, "Service", "zookeeper")["spec"]
    assert [p["port"] for p in client["ports"]] == [2181]
    assert "publishNotReadyAddresses" not in client


def test_zoo_cfg_purges_and_allows_only_named_four_letter_words(eks: list[dict[str, Any]]) -> None:
    cfg = zoo_cfg(eks)
    assert cfg["4lw.commands.whitelist"] == "ruok,srvr,mntr"
    assert int(cfg["autopurge.purgeInterval"]) >= 1 and int(cfg["autopurge.snapRetainCount"]) >= 3
    assert (cfg["dataDir"], cfg["dataLogDir"]) == ("/data", "/datalog")
    assert cfg["metricsProvider.className"].endswith("PrometheusMetricsProvider")
    assert cfg["metricsProvider.httpPort"] == "7000"


def test_config_is_mounted_read_only_and_data_on_two_volumes(eks: list[dict[str, Any]]) -> None:
    mounts = {m["mountPath"]: m for m in container(eks)["volumeMounts"]}
    assert mounts["/conf"]["readOnly"] is True
    claims = {c["metadata"]["name"]: c["spec"] for c in one(eks, "StatefulSet")["spec"]["volumeClaimTemplates"]}
    assert set(claims) == {"data", "datalog"}
    assert {mounts["/data"]["name"], mounts["/datalog"]["name"]} == {"data", "datalog"}
    assert claims["data"]["storageClassName"] == "gp3-encrypted"
    assert claims["data"]["resources"]["requests"]["storage"] == "10Gi"


def test_start_script_writes_myid_from_the_pod_ordinal(eks: list[dict[str, Any]], tmp_path: Path) -> None:
    """Run the container's script with a stand-in ``java`` that records its arguments."""
    c = container(eks)
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "java").write_text('#!/bin/sh\necho "$@" > "$ZOO_DATA_DIR/java-args"\n')
    (fake / "java").chmod(0o755)
    env = {"PATH": f"{fake}:{os.environ['PATH']}", "ZOO_DATA_DIR": str(tmp_path), "HOSTNAME": "zookeeper-2"}
    subprocess.run(c["command"], env=env, check=True, timeout=10)
    assert (tmp_path / "myid").read_text() == "3\n"
    args = (tmp_path / "java-args").read_text()
    assert "-Xmx256m" in args and "QuorumPeerMain /conf/zoo.cfg" in args
    assert {"name": "ZOO_DATA_DIR", "value": "/data"} in c["env"]
    bad = subprocess.run(c["command"], env={**env, "HOSTNAME": "zookeeper"}, capture_output=True, text=True, timeout=10)
    assert bad.returncode == 1 and "no ordinal" in bad.stderr


def test_probes_differ_readiness_asks_for_a_synced_quorum_member(eks: list[dict[str, Any]]) -> None:
    c = container(eks)
    ready, live = c["readinessProbe"]["exec"]["command"][-1], c["livenessProbe"]["exec"]["command"][-1]
    assert "printf mntr" in ready
    assert "zk_peer_state[[:space:]]+(leading|following|observing) - broadcast$" in ready
    assert "ruok" in live and "imok" in live


@pytest.mark.parametrize("answer, ready", [
    ("zk_version\t3.9.4\nzk_peer_state\tfollowing - broadcast\nzk_znode_count\t5\n", True),
    ("zk_peer_state\tleading - broadcast\n", True),
    ("zk_peer_state\tobserving - broadcast\n", True),
    # Serving already, still receiving the leader's transactions.
    ("zk_peer_state\tfollowing - synchronization - diff\n", False),
    ("zk_peer_state\tfollowing - discovery\n", False),
    ("zk_peer_state\tlooking\n", False),
    ("This ZooKeeper instance is not currently serving requests\n", False),
])
def test_readiness_passes_only_on_a_synced_peer_state(eks: list[dict[str, Any]], answer: str, ready: bool) -> None:
    """The rendered probe's own pattern against what ``mntr`` answers in each Zab phase
    (QuorumPeer.getDetailedPeerState, 3.9.4)."""
    command = container(eks)["readinessProbe"]["exec"]["command"][-1]
    pattern = command.split("grep -qE '", 1)[1].rsplit("'", 1)[0]
    result = subprocess.run(["grep", "-qE", pattern], input=answer, text=True, timeout=10)
    assert (result.returncode == 0) is ready


def test_rollout_mechanics(eks: list[dict[str, Any]]) -> None:
    """One member at a time, highest ordinal first, each step gated by the synced readiness
    (no minReadySeconds), no preStop, 30 s grace (SIGTERM ends the JVM at once)."""
    sts = one(eks, "StatefulSet")
    pod_spec = sts["spec"]["template"]["spec"]
    assert sts["spec"]["updateStrategy"] == {"type": "RollingUpdate"}
    assert "minReadySeconds" not in sts["spec"]
    assert pod_spec["terminationGracePeriodSeconds"] == 30
    assert "lifecycle" not in pod_spec["containers"][0]
    probe = pod_spec["containers"][0]["readinessProbe"]
    assert (probe["periodSeconds"], probe["initialDelaySeconds"], probe["failureThreshold"]) == (5, 5, 3)
    assert one(eks, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1


def test_heap_is_half_the_memory_limit_in_each_profile(eks: list[dict[str, Any]], pi: list[dict[str, Any]]) -> None:
    for objects, memory, heap in ((eks, "512Mi", 256), (pi, "320Mi", 160)):
        c = container(objects)
        assert c["resources"]["limits"]["memory"] == memory
        assert f"-Xmx{heap}m" in c["command"][-1] and f"-Xms{heap}m" in c["command"][-1]


def test_pi_is_smaller_with_the_same_replicas(pi: list[dict[str, Any]]) -> None:
    sts = one(pi, "StatefulSet")
    assert sts["spec"]["replicas"] == 3
    assert sts["spec"]["volumeClaimTemplates"][0]["spec"]["storageClassName"] == "local-path-retain"
    assert sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "2Gi"
    assert sts["spec"]["template"]["spec"]["topologySpreadConstraints"][0]["whenUnsatisfiable"] == "ScheduleAnyway"


def test_runs_as_the_image_user(eks: list[dict[str, Any]]) -> None:
    pod = one(eks, "StatefulSet")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == 1000 and pod["securityContext"]["fsGroup"] == 1000
    assert container(eks)["securityContext"]["readOnlyRootFilesystem"] is True


def test_network_policies_open_each_port_only_to_its_peers(eks: list[dict[str, Any]]) -> None:
    selector = one(eks, "StatefulSet")["spec"]["selector"]
    clients = one(eks, "NetworkPolicy", "zookeeper-clients")["spec"]
    assert clients["podSelector"] == selector
    assert clients["ingress"][0]["from"] == [{"podSelector": {}}, {"namespaceSelector": {"matchLabels": CLIENT_NAMESPACE_LABEL}}]
    assert [p["port"] for p in clients["ingress"][0]["ports"]] == [2181]
    peers = one(eks, "NetworkPolicy", "zookeeper-peers")["spec"]
    assert peers["ingress"][0]["from"] == [{"podSelector": selector}]
    assert peers["egress"][0]["to"] == [{"podSelector": selector}]
    assert [p["port"] for p in peers["ingress"][0]["ports"]] == [2888, 3888]
    assert [p["port"] for p in peers["egress"][0]["ports"]] == [2888, 3888]
    metrics = one(eks, "NetworkPolicy", "zookeeper-metrics")["spec"]
    assert metrics["ingress"][0]["from"] == [{"namespaceSelector": {"matchLabels": MONITORING_NAMESPACE_LABEL}}]
    assert [p["port"] for p in metrics["ingress"][0]["ports"]] == [7000]


def test_namespace_enforces_restricted(eks: list[dict[str, Any]]) -> None:
    ns = one(eks, "Namespace", "zookeeper")
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_overrides_reach_config_services_probes_and_policies() -> None:
    objects = render(
        "eks", zookeeper_replicas="5", zookeeper_client_port="12181", zookeeper_metrics_port="17000",
        zookeeper_memory_mib="4096", zookeeper_heap_mib="2048", zookeeper_storage_gib="20",
        zookeeper_tick_time_ms="1000", zookeeper_init_limit="20", zookeeper_sync_limit="10",
    )
    cfg = zoo_cfg(objects)
    assert one(objects, "StatefulSet")["spec"]["replicas"] == 5
    assert "server.5" in cfg and "server.6" not in cfg
    assert (cfg["clientPort"], cfg["metricsProvider.httpPort"]) == ("12181", "17000")
    assert (cfg["tickTime"], cfg["initLimit"], cfg["syncLimit"]) == ("1000", "20", "10")
    c = container(objects)
    assert "/dev/tcp/127.0.0.1/12181" in c["readinessProbe"]["exec"]["command"][-1]
    assert "-Xmx2048m" in c["command"][-1] and c["resources"]["limits"]["memory"] == "4096Mi"
    assert one(objects, "Service", "zookeeper")["spec"]["ports"][0]["port"] == 12181
    assert one(objects, "NetworkPolicy", "zookeeper-clients")["spec"]["ingress"][0]["ports"][0]["port"] == 12181
    claims = one(objects, "StatefulSet")["spec"]["volumeClaimTemplates"]
    assert {c["spec"]["resources"]["requests"]["storage"] for c in claims} == {"20Gi"}


def test_a_config_change_rolls_the_members() -> None:
    def digest(objects: list[dict[str, Any]]) -> str:
        return one(objects, "StatefulSet")["spec"]["template"]["metadata"]["annotations"]["final-problem.io/config-sha256"]
    assert digest(render("eks")) != digest(render("eks", zookeeper_tick_time_ms="3000"))


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"zookeeper_replicas": "4"}, r"zookeeper\.replicas = 4: must be one of 3, 5, 7\. Fix: set zookeeper\.replicas=3$"),
        ({"zookeeper_replicas": "1"}, r"zookeeper\.replicas = 1: must be one of 3, 5, 7"),
        ({"zookeeper_replicas": "9"}, r"zookeeper\.replicas = 9"),
        ({"zookeeper_heap_mib": "2048"}, r"zookeeper\.heap_mib = 2048: must stay below 75% of zookeeper\.memory_mib \(512 MiB\).*Fix: leave zookeeper\.heap_mib unset \(it is then half of zookeeper\.memory_mib\)$"),
        ({"zookeeper_heap_mib": "4096"}, r"zookeeper\.heap_mib = 4096: must stay below 75%"),
        ({"zookeeper_memory_mib": "64"}, r"zookeeper\.memory_mib = 64 \(profile eks\): must be 256 to 65536\. Fix: set zookeeper\.memory_mib=320$"),
        ({"zookeeper_metrics_port": "2181"}, r"zookeeper\.metrics_port = 2181: the same port as zookeeper\.client_port.*Fix: set zookeeper\.metrics_port=2182$"),
        ({"zookeeper_election_port": "2888"}, r"zookeeper\.election_port = 2888: the same port as zookeeper\.quorum_port"),
        ({"zookeeper_client_port": "80"}, r"zookeeper\.client_port = 80: must be 1024 to 65535\. Fix: set zookeeper\.client_port=2181$"),
        ({"zookeeper_hosts": "pi1,pi2"}, r"zookeeper\.hosts = 'pi1,pi2': 2 hosts for zookeeper\.replicas=3"),
        ({"zookeeper_tick_time_ms": "50"}, r"zookeeper\.tick_time_ms = 50: must be 100 to 60000"),
        ({"zookeeper_init_limit": "0"}, r"zookeeper\.init_limit = 0: must be 1 to 100"),
        ({"zookeeper_sync_limit": "20"}, r"zookeeper\.sync_limit = 20: exceeds zookeeper\.init_limit \(10\).*Fix: set zookeeper\.sync_limit=10$"),
        ({"zookeeper_storage_gib": "0"}, r"zookeeper\.storage_gib = 0 \(profile eks\): must be 1 to 16384"),
        ({"zookeeper_memory_mib": "0"}, r"zookeeper\.memory_mib = 0 \(profile eks\): must be 256"),
        ({"zookeeper_replica": "5"}, r"zookeeper\.replica = '5': not a setting.*did you mean zookeeper\.replicas\?$"),
    ],
)
def test_bad_settings_fail_synthesis(settings: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        render("eks", **settings)


def test_matching_bare_metal_hosts_are_accepted() -> None:
    assert one(render("pi", zookeeper_hosts="pi1,pi2,pi3"), "StatefulSet")["spec"]["replicas"] == 3
