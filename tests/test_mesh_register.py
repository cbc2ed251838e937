"""The mesh registration sidecar against local doubles of Consul's HTTPS API and the
Kubernetes API (no Consul server can run here: BUSL).

It is started as the chart starts it (the MESH_SPEC the demo chart renders), with the CA
of the double published in the ``consul-ca`` ConfigMap: it must verify Consul's
certificate with that CA, log in with the pod's token, register the instance and its
sidecar with the pod's name and address, leave the proxy id for consul-dataplane, and
deregister both and log out on SIGTERM.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import pytest

from final_problem.clients import mesh_register
from final_problem.local import wait_for
from tests.conftest import rendered


class Recorder(ThreadingHTTPServer):
    def __init__(self, replies: dict[str, Any]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.replies = replies
        self.calls: list[tuple[str, str, Any, dict[str, str]]] = []


class _Handler(BaseHTTPRequestHandler):
    server: Recorder

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        path = self.path.split("?")[0]
        self.server.calls.append((self.command, path, body, dict(self.headers)))
        reply = self.server.replies.get(f"{self.command} {path}", True)
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_PUT = do_POST = _handle  # noqa: N815

    def log_message(self, *args: Any) -> None:
        pass


def _serve(server: Recorder) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return thread


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    if not openssl:
        pytest.fail("openssl is not installed: run `sudo make system-deps` (Debian package openssl)")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"], check=True, capture_output=True)
    return cert, key


@pytest.fixture
def doubles(certificate: tuple[Path, Path]) -> Iterator[tuple[Recorder, Recorder]]:
    cert, key = certificate
    consul = Recorder({"POST /v1/acl/login": {"SecretID": "login-token"}})
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(cert), str(key))
    consul.socket = context.wrap_socket(consul.socket, server_side=True)
    kube = Recorder({"GET /api/v1/namespaces/consul/configmaps/consul-ca": {"data": {"ca.crt": cert.read_text()}}})
    _serve(consul), _serve(kube)
    try:
        yield consul, kube
    finally:
        for server in (consul, kube):
            server.shutdown()
            server.server_close()


def sidecar_env(consul: Recorder, kube: Recorder, tmp_path: Path, **pod: str) -> tuple[dict[str, str], Path]:
    """The environment the demo chart gives the sidecar, pointed at the doubles."""
    deployment = next(o for o in rendered("eks")["demo"] if o["kind"] == "Deployment")
    register = deployment["spec"]["template"]["spec"]["initContainers"][0]
    spec = json.loads(next(e["value"] for e in register["env"] if e["name"] == "MESH_SPEC"))
    spec["address"] = f"https://localhost:{consul.server_address[1]}"
    sa, mesh_dir = tmp_path / "sa", tmp_path / "mesh"
    sa.mkdir(), mesh_dir.mkdir()
    (sa / "token").write_text("pod-jwt\n")
    env = {**os.environ, "MESH_SPEC": json.dumps(spec), "MESH_DIR": str(mesh_dir), "SA_DIR": str(sa),
           "KUBERNETES_API_URL": f"http://127.0.0.1:{kube.server_address[1]}",
           "POD_IP": "10.1.2.3", "POD_NAMESPACE": "demo", **pod}
    return env, mesh_dir


def test_registers_then_deregisters_on_sigterm(doubles: tuple[Recorder, Recorder], tmp_path: Path) -> None:
    consul, kube = doubles
    env, mesh_dir = sidecar_env(consul, kube, tmp_path, POD_NAME="demo-7f9c-abcde", MESH_REFRESH_S="0.5")
    proc = subprocess.Popen([sys.executable, mesh_register.__file__], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for("the registered marker", lambda: (mesh_dir / "registered").exists(), timeout_s=20)
        # It re-registers on its refresh period.
        wait_for("a second registration", lambda: sum(
            1 for c in consul.calls if c[:2] == ("PUT", "/v1/catalog/register")) >= 4, timeout_s=20)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, out
    login = next(c for c in consul.calls if c[1] == "/v1/acl/login")
    assert login[2] == {"AuthMethod": "kubernetes", "BearerToken": "pod-jwt"}
    registrations = [c for c in consul.calls if c[1] == "/v1/catalog/register"]
    assert all(c[3].get("X-Consul-Token") == "login-token" for c in registrations)
    service, sidecar = registrations[0][2], registrations[1][2]
    assert service["Service"]["ID"] == "demo-7f9c-abcde-demo" and service["Service"]["Address"] == "10.1.2.3"
    assert sidecar["Service"]["Proxy"]["DestinationServiceID"] == "demo-7f9c-abcde-demo"
    assert sidecar["Service"]["Proxy"]["Upstreams"][0]["LocalBindPort"] == 16379
    assert (mesh_dir / "proxy-id").read_text() == "demo-7f9c-abcde-demo-sidecar-proxy"
    assert (mesh_dir / "ca.crt").read_text().startswith("-----BEGIN CERTIFICATE-----")
    # Nothing listens on the demo's port here: the check is reported critical, not passing.
    assert service["Check"]["Status"] == "critical"
    deregistered = [c[2]["ServiceID"] for c in consul.calls if c[1] == "/v1/catalog/deregister"]
    assert deregistered == ["demo-7f9c-abcde-demo-sidecar-proxy", "demo-7f9c-abcde-demo"]
    assert consul.calls[-1][1] == "/v1/acl/logout"


def test_refuses_a_consul_whose_certificate_the_ca_does_not_sign(
        doubles: tuple[Recorder, Recorder], tmp_path: Path) -> None:
    consul, kube = doubles
    other = tmp_path / "other"
    other.mkdir()
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", str(other / "k.pem"), "-out", str(other / "c.pem"), "-days", "1", "-subj", "/CN=x"],
                   check=True, capture_output=True)
    kube.replies["GET /api/v1/namespaces/consul/configmaps/consul-ca"] = {"data": {"ca.crt": (other / "c.pem").read_text()}}
    env, mesh_dir = sidecar_env(consul, kube, tmp_path, POD_NAME="demo-1")
    result = subprocess.run([sys.executable, mesh_register.__file__], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode != 0 and "CERTIFICATE_VERIFY_FAILED" in result.stderr
    assert not [c for c in consul.calls if c[1] == "/v1/acl/login"]
    assert not (mesh_dir / "registered").exists()


def test_liveness_probe_fails_once_registration_stops(doubles: tuple[Recorder, Recorder], tmp_path: Path) -> None:
    consul, kube = doubles
    env, mesh_dir = sidecar_env(consul, kube, tmp_path, POD_NAME="demo-live", MESH_REFRESH_S="0.5")
    deployment = next(o for o in rendered("eks")["demo"] if o["kind"] == "Deployment")
    register = deployment["spec"]["template"]["spec"]["initContainers"][0]
    probe = register["livenessProbe"]["exec"]["command"]
    assert probe[:3] == ["python3", "/opt/mesh/mesh_register.py", "--check-alive"]
    max_age = float(probe[3])
    # The probe as the kubelet runs it, against this machine's copy of the script.
    run_probe = lambda: subprocess.run([sys.executable, mesh_register.__file__, *probe[2:]],  # noqa: E731
                                       env={**env}, capture_output=True, text=True, timeout=30)
    assert run_probe().returncode == 1  # nothing registered yet
    proc = subprocess.Popen([sys.executable, mesh_register.__file__], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for("the registered marker", lambda: (mesh_dir / "registered").exists(), timeout_s=20)
        assert run_probe().returncode == 0
        # The loop stops (a call that never returns): the record ages past the limit.
        proc.send_signal(signal.SIGSTOP)
        (mesh_dir / "alive").write_text(str(float((mesh_dir / "alive").read_text()) - max_age - 1))
        result = run_probe()
        assert result.returncode == 1 and "more than" in result.stdout
    finally:
        proc.send_signal(signal.SIGCONT)
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)
