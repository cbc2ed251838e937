"""Consul servers through a rollout and a drain: the rendered settings that keep a quorum.

No Consul server runs here (BUSL-1.1, served by no registry these machines reach), so the
checks are on what the chart renders, and the readiness probe's script is run for real
against a stand-in of the two HTTPS endpoints it reads. What only a cluster proves is
listed in the README ("Changing a running platform").
"""

from __future__ import annotations

import json
import re
import shutil
import ssl
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import pytest

from final_problem.charts.consul import MIN_READY_S
from final_problem.renderers.consul import AUTOPILOT_INTERVAL_S, SERVER_STABILIZATION_S, server_name
from tests.conftest import rendered

POD_IP = "10.0.1.5"


def objects(profile: str) -> list[dict[str, Any]]:
    return rendered(profile)["consul"]


def servers(profile: str = "eks") -> dict[str, Any]:
    return next(o for o in objects(profile) if o["kind"] == "StatefulSet" and o["metadata"]["name"] == "consul-server")


def server_json(profile: str = "eks") -> dict[str, Any]:
    config = next(o for o in objects(profile) if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "consul-config")
    return json.loads(config["data"]["server.json"])


@pytest.mark.parametrize("profile", ["eks", "pi-full"])
def test_a_stopping_server_leaves_raft_and_one_server_at_a_time_is_disrupted(profile: str) -> None:
    sts = servers(profile)
    assert server_json(profile)["leave_on_terminate"] is True
    assert sts["spec"]["updateStrategy"] == {"type": "RollingUpdate"}
    pdb = next(o for o in objects(profile) if o["kind"] == "PodDisruptionBudget" and o["metadata"]["name"] == "consul-server")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == sts["spec"]["selector"]["matchLabels"]
    # A leave takes a few Raft round trips; the grace period is not what bounds it.
    assert sts["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 30


@pytest.mark.parametrize("profile", ["eks", "pi-full"])
def test_the_next_server_stops_only_after_autopilot_can_have_promoted_the_last(profile: str) -> None:
    autopilot = server_json(profile)["autopilot"]
    assert autopilot["server_stabilization_time"] == f"{SERVER_STABILIZATION_S}s"
    assert autopilot["cleanup_dead_servers"] is True
    min_ready = servers(profile)["spec"]["minReadySeconds"]
    assert min_ready == MIN_READY_S
    assert min_ready > SERVER_STABILIZATION_S + AUTOPILOT_INTERVAL_S


# -- the readiness probe's script, run ------------------------------------------------------

class ConsulApi(ThreadingHTTPServer):
    """``/v1/status/leader`` and ``/v1/status/peers`` as a server answers them."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.leader = '"10.0.1.7:8300"'
        self.peers = ["10.0.1.7:8300", "10.0.1.6:8300"]


class _Handler(BaseHTTPRequestHandler):
    server: ConsulApi

    def do_GET(self) -> None:  # noqa: N802
        body = {"/v1/status/leader": self.server.leader,
                "/v1/status/peers": json.dumps(self.server.peers)}.get(self.path)
        self.send_response(200 if body is not None else 404)
        data = (body or "").encode()
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[ConsulApi, Path]]:
    openssl = shutil.which("openssl")
    if not openssl:
        pytest.fail("openssl is not installed: run `sudo make system-deps` (Debian package openssl)")
    tls = tmp_path / "tls"
    tls.mkdir()
    # One self-signed certificate for the server name: the probe's --cacert trusts it.
    subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", str(tls / "tls.key"), "-out", str(tls / "ca.crt"), "-days", "1",
                    "-subj", f"/CN={server_name()}", "-addext", f"subjectAltName=DNS:{server_name()}"],
                   check=True, capture_output=True)
    server = ConsulApi()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(tls / "ca.crt"), str(tls / "tls.key"))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server, tls
    finally:
        server.shutdown()
        server.server_close()


def probe_passes(api: tuple[ConsulApi, Path]) -> bool:
    """The rendered readiness command, its TLS directory and HTTPS port moved to the stand-in's."""
    server, tls = api
    command = servers()["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["exec"]["command"]
    assert command[:2] == ["sh", "-ec"]
    script = re.sub(r":8501\b", f":{server.server_address[1]}", command[2].replace("/consul/tls", str(tls)))
    result = subprocess.run(["sh", "-ec", script], env={"PATH": "/usr/bin:/bin", "POD_IP": POD_IP},
                            capture_output=True, timeout=15, check=False)
    return result.returncode == 0


def test_ready_when_a_leader_is_known_and_this_pods_address_is_a_raft_peer(api: tuple[ConsulApi, Path]) -> None:
    server, _ = api
    server.peers.append(f"{POD_IP}:8300")
    assert probe_passes(api)


def test_not_ready_while_this_pods_new_address_has_not_joined_raft(api: tuple[ConsulApi, Path]) -> None:
    server, _ = api
    # The old pod's address is still in the configuration; a longer IP with the same prefix
    # must not count either.
    server.peers += ["10.0.1.4:8300", f"{POD_IP}5:8300"]
    assert not probe_passes(api)


def test_not_ready_without_a_leader(api: tuple[ConsulApi, Path]) -> None:
    server, _ = api
    server.leader = '""'
    server.peers.append(f"{POD_IP}:8300")
    assert not probe_passes(api)
