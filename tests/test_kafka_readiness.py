"""The Kafka pods' day-two mechanics as rendered: readiness, minReadySeconds, grace, what rolls.

The readiness script is run for real (sh, wget, awk, as the image's busybox runs it) against
a stand-in of the JMX exporter's ``/metrics`` serving chosen values; the real exporter and
brokers are in tests/integration/test_kafka_rollout.py.
"""

from __future__ import annotations

import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import parse_qs, urlparse

import pytest

from final_problem import config, manifests
from final_problem.charts.kafka import (
    CONFIG_DIR, CONTROLLER_CAUGHT_UP_MS, JMX_EXPORTER_RULES, MIN_READY_S, READY_SCRIPT, READY_SCRIPT_NAME,
    TERMINATION_GRACE_S,
)
from final_problem.local.kafka_rollout import local_argv
from tests.conftest import one, require_binary


def render(profile: str, **kafka: Any) -> list[dict[str, Any]]:
    s = config.from_mapping({"components": ["base", "kafka"], "kafka": kafka})
    return manifests.chart_objects(manifests.render(s, profile)["kafka"])


def stateful_sets(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == "StatefulSet"}


def kafka_container(sts: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in sts["spec"]["template"]["spec"]["containers"] if c["name"] == "kafka")


@pytest.mark.parametrize(("profile", "roles"), [
    ("eks", {"kafka-controller": "controller", "kafka-broker": "broker"}),
    ("pi", {"kafka": "broker,controller"}),
])
def test_readiness_runs_the_configmaps_script_on_the_nodes_own_metrics(profile: str, roles: dict[str, str]) -> None:
    objects = render(profile)
    assert one(objects, "ConfigMap", "kafka-config")["data"][READY_SCRIPT_NAME] == READY_SCRIPT
    sets = stateful_sets(objects)
    assert set(sets) == set(roles)
    for name, sts in sets.items():
        probe = kafka_container(sts)["readinessProbe"]
        assert "tcpSocket" not in probe
        assert probe["exec"]["command"] == ["sh", f"{CONFIG_DIR}/{READY_SCRIPT_NAME}", "9404", roles[name],
                                            str(CONTROLLER_CAUGHT_UP_MS)]
        assert (probe["periodSeconds"], probe["timeoutSeconds"], probe["failureThreshold"]) == (5, 5, 3)


@pytest.mark.parametrize("profile", ["eks", "pi"])
def test_the_next_pod_stops_only_min_ready_seconds_after_the_probe_and_shutdown_has_its_grace(profile: str) -> None:
    for sts in stateful_sets(render(profile)).values():
        assert sts["spec"]["minReadySeconds"] == MIN_READY_S == 3
        assert sts["spec"]["updateStrategy"] == {"type": "RollingUpdate"}
        assert sts["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == TERMINATION_GRACE_S == 120


def test_the_controllers_are_rendered_before_the_brokers() -> None:
    assert list(stateful_sets(render("eks"))) == ["kafka-controller", "kafka-broker"]


def test_a_change_to_one_sets_files_rolls_only_that_set() -> None:
    def digests(**kafka: Any) -> dict[str, str]:
        return {name: sts["spec"]["template"]["metadata"]["annotations"]["final-problem.io/config-sha256"]
                for name, sts in stateful_sets(render("eks", **kafka)).items()}

    before = digests()
    # Read by the brokers only (the controllers fence on the session timeout).
    brokers_only = digests(broker_heartbeat_interval_ms=400)
    assert brokers_only["kafka-broker"] != before["kafka-broker"]
    assert brokers_only["kafka-controller"] == before["kafka-controller"]
    controllers_only = digests(broker_session_timeout_ms=4000)
    assert controllers_only["kafka-controller"] != before["kafka-controller"]
    assert controllers_only["kafka-broker"] == before["kafka-broker"]


def test_the_exporter_names_each_followed_partitions_lag_for_the_probe() -> None:
    rules = JMX_EXPORTER_RULES.split("rules:")[1]
    first = rules.split("- pattern:")[1]
    assert "FetcherLagMetrics" in first and "kafka_server_fetcherlagmetrics_consumerlag" in first


# -- the script itself, against a stand-in exporter -------------------------------------------

BROKER_READY = {
    "kafka_server_kafkaserver_brokerstate": "3.0",
    'kafka_server_replicafetchermanager_maxlag{clientid="Replica"}': "0.0",
    'kafka_server_replicafetchermanager_maxlag{clientid="ReplicaAlterLogDirs"}': "0.0",
    'kafka_server_replicafetchermanager_failedpartitionscount{clientid="Replica"}': "0.0",
    "kafka_server_replicamanager_partitioncount": "3.0",
    "kafka_server_replicamanager_leadercount": "1.0",
    'kafka_server_fetcherlagmetrics_consumerlag{clientid="ReplicaFetcherThread-0-1",topic="events",partition="0"}': "0.0",
    'kafka_server_fetcherlagmetrics_consumerlag{clientid="ReplicaFetcherThread-0-2",topic="events",partition="1"}': "0.0",
}
CONTROLLER_READY = {
    "kafka_controller_kafkacontroller_lastappliedrecordlagms": "312.0",
    "kafka_raft_current_leader": "2.0",
}


class Exporter:
    """Serves ``metrics`` as the JMX exporter does, honouring ``name[]`` filters."""

    def __init__(self) -> None:
        self.metrics: dict[str, str] = {}
        self.requested: list[list[str]] = []
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                url = urlparse(self.path)
                names = parse_qs(url.query).get("name[]", [])
                exporter.requested.append(names)
                lines = [f"# HELP {k.split('{')[0]} stand-in\n{k} {v}\n" for k, v in exporter.metrics.items()
                         if not names or k.split("{")[0] in names]
                body = "".join(lines).encode()
                self.send_response(200 if url.path == "/metrics" else 404)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def exporter() -> Iterator[Exporter]:
    for binary, package in (("wget", "wget"), ("awk", "mawk")):
        require_binary(binary, package)
    e = Exporter()
    yield e
    e.close()


@pytest.fixture(scope="module")
def script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("kafka-config")
    (directory / READY_SCRIPT_NAME).write_text(READY_SCRIPT)
    return directory


def probe(exporter: Exporter, config_dir: Path, roles: str, metrics: dict[str, str], port: int | None = None) -> tuple[bool, str]:
    """Runs the rendered probe command of a pod with ``roles`` here, against ``metrics``."""
    exporter.metrics = metrics
    command = ["sh", f"{CONFIG_DIR}/{READY_SCRIPT_NAME}", "9404", roles, str(CONTROLLER_CAUGHT_UP_MS)]
    argv = local_argv(command, config_dir=config_dir, ports={9404: port or exporter.port})
    result = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    return result.returncode == 0, result.stdout.strip()


def test_a_running_broker_in_sync_with_every_partition_it_follows_is_ready(exporter: Exporter, script: Path) -> None:
    assert probe(exporter, script, "broker", BROKER_READY) == (True, "")
    # It asks the exporter for the families it reads only.
    assert "kafka_server_kafkaserver_brokerstate" in exporter.requested[-1]
    assert "kafka_server_fetcherlagmetrics_consumerlag" in exporter.requested[-1]


@pytest.mark.parametrize(("change", "reason"), [
    ({"kafka_server_kafkaserver_brokerstate": "2.0"}, "broker state 2, not 3 (RUNNING)"),
    ({"kafka_server_kafkaserver_brokerstate": None}, "broker state unknown"),
    # MaxLag is 0 before the first fetch: the per-partition series are not there yet.
    ({'kafka_server_fetcherlagmetrics_consumerlag{clientid="ReplicaFetcherThread-0-2",topic="events",partition="1"}': None},
     "fetching 1 of the 2 partitions it follows"),
    ({'kafka_server_fetcherlagmetrics_consumerlag{clientid="ReplicaFetcherThread-0-1",topic="events",partition="0"}': "-1.0"},
     "1 followed partitions behind the high watermark"),
    ({'kafka_server_replicafetchermanager_maxlag{clientid="Replica"}': "17.0"}, "replica MaxLag 17"),
    ({'kafka_server_replicafetchermanager_failedpartitionscount{clientid="Replica"}': "1.0"}, "1 failed partitions"),
    ({"kafka_server_replicamanager_leadercount": "0.0"}, "fetching 2 of the 3 partitions it follows"),
])
def test_a_broker_is_not_ready_until_running_and_caught_up_on_every_followed_partition(
        exporter: Exporter, script: Path, change: dict[str, str | None], reason: str) -> None:
    metrics = {k: v for k, v in {**BROKER_READY, **change}.items() if v is not None}
    ready, said = probe(exporter, script, "broker", metrics)
    assert not ready
    assert reason in said


def test_a_lagging_alter_log_dirs_fetcher_does_not_count(exporter: Exporter, script: Path) -> None:
    metrics = {**BROKER_READY, 'kafka_server_replicafetchermanager_maxlag{clientid="ReplicaAlterLogDirs"}': "40.0",
               'kafka_server_fetcherlagmetrics_consumerlag{clientid="ReplicaAlterLogDirsThread-0",topic="events",partition="2"}': "40.0"}
    assert probe(exporter, script, "broker", metrics)[0]


def test_a_controller_is_ready_once_it_knows_the_leader_and_applies_recent_records(exporter: Exporter, script: Path) -> None:
    assert probe(exporter, script, "controller", CONTROLLER_READY) == (True, "")
    old = {**CONTROLLER_READY, "kafka_controller_kafkacontroller_lastappliedrecordlagms": "7512.0"}
    assert probe(exporter, script, "controller", old) == (
        False, "not ready; last applied metadata record 7512 ms old, over 2000 ms")
    # Nothing applied yet: the lag is measured from the epoch.
    never = {**CONTROLLER_READY, "kafka_controller_kafkacontroller_lastappliedrecordlagms": "1.796603512486E12"}
    assert not probe(exporter, script, "controller", never)[0]
    assert probe(exporter, script, "controller", {**CONTROLLER_READY, "kafka_raft_current_leader": "-1.0"}) == (
        False, "not ready; no known quorum leader")


def test_a_combined_node_needs_both(exporter: Exporter, script: Path) -> None:
    assert probe(exporter, script, "broker,controller", {**BROKER_READY, **CONTROLLER_READY})[0]
    assert not probe(exporter, script, "broker,controller", BROKER_READY)[0]
    assert not probe(exporter, script, "broker,controller", CONTROLLER_READY)[0]


def test_no_exporter_answering_is_not_ready(exporter: Exporter, script: Path) -> None:
    from final_problem.local import free_ports

    (closed,) = free_ports(1)
    assert probe(exporter, script, "broker", BROKER_READY, port=closed) == (False, f"no metrics from 127.0.0.1:{closed}")
