"""The Consul TLS Job's storing step against a local double of the Kubernetes API.

The Consul server it prepares cannot run here (BUSL); the Kubernetes side can be checked:
Secrets are created once, a second run never replaces them, the CA published for the mesh
is the stored one, and the CA's private key is never sent.
"""

from __future__ import annotations

import base64
import json
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import pytest

from final_problem.clients import consul_init
from tests.test_secret_generator import _Handler as SecretsHandler


class FakeApi(ThreadingHTTPServer):
    """Secrets and ConfigMaps: POST (409 if present), GET (data base64), PUT (replace)."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.store: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.bodies: list[str] = []


class _Handler(SecretsHandler):
    """Reuses the secret generator test's reply and logging; adds GET, PUT, ConfigMaps."""

    server: FakeApi  # type: ignore[assignment]

    def _key(self) -> tuple[str, str, str] | None:
        parts = self.path.strip("/").split("/")  # api v1 namespaces NS KIND [NAME]
        if parts[:3] != ["api", "v1", "namespaces"] or len(parts) < 5:
            return None
        return parts[3], parts[4], parts[5] if len(parts) > 5 else ""

    def _body(self) -> dict[str, Any]:
        text = self.rfile.read(int(self.headers["Content-Length"])).decode()
        self.server.bodies.append(text)
        return json.loads(text)

    def do_POST(self) -> None:  # noqa: N802
        ns, kind, _ = self._key() or ("", "", "")
        body = self._body()
        key = (ns, kind, body["metadata"]["name"])
        if key in self.server.store:
            return self._reply(409, {"reason": "AlreadyExists"})
        self.server.store[key] = body
        self._reply(201, body)

    def do_PUT(self) -> None:  # noqa: N802
        key = self._key()
        body = self._body()
        if key not in self.server.store:
            return self._reply(404, {"reason": "NotFound"})
        self.server.store[key] = body  # type: ignore[index]
        self._reply(200, body)

    def do_GET(self) -> None:  # noqa: N802
        key = self._key()
        obj = self.server.store.get(key) if key else None  # type: ignore[arg-type]
        if obj is None:
            return self._reply(404, {"reason": "NotFound"})
        values = obj.get("stringData") or obj.get("data") or {}
        data = {k: base64.b64encode(v.encode()).decode() for k, v in values.items()} if obj["kind"] == "Secret" else values
        self._reply(200, {**obj, "data": data})


@pytest.fixture
def api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeApi]:
    server = FakeApi()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    sa = tmp_path / "sa"
    sa.mkdir()
    (sa / "namespace").write_text("consul\n")
    (sa / "token").write_text("token\n")
    monkeypatch.setenv("SA_DIR", str(sa))
    monkeypatch.setenv("KUBERNETES_API_URL", f"http://127.0.0.1:{server.server_address[1]}")
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def generated(tmp_path: Path, tag: str) -> Path:
    """What the Job's first container leaves in its volume (``consul tls`` file names)."""
    work = tmp_path / f"work-{tag}"
    work.mkdir()
    (work / "gossip.key").write_text(f"gossip-{tag}\n")
    (work / "consul-agent-ca.pem").write_text(f"CA-{tag}")
    (work / "dc1-server-consul-0.pem").write_text(f"CERT-{tag}")
    (work / "dc1-server-consul-0-key.pem").write_text(f"KEY-{tag}")
    return work


def test_first_run_stores_keys_and_publishes_the_ca(api: FakeApi, tmp_path: Path) -> None:
    assert consul_init.tls(generated(tmp_path, "one")) == 0
    tls = api.store[("consul", "secrets", "consul-tls")]["stringData"]
    assert tls == {"ca.crt": "CA-one", "tls.crt": "CERT-one", "tls.key": "KEY-one"}
    assert api.store[("consul", "secrets", "consul-gossip")]["stringData"] == {"key": "gossip-one"}
    assert api.store[("consul", "configmaps", "consul-ca")]["data"] == {"ca.crt": "CA-one"}


def test_second_run_keeps_everything_and_republishes_the_stored_ca(api: FakeApi, tmp_path: Path) -> None:
    consul_init.tls(generated(tmp_path, "one"))
    assert consul_init.tls(generated(tmp_path, "two")) == 0
    assert api.store[("consul", "secrets", "consul-tls")]["stringData"]["ca.crt"] == "CA-one"
    assert api.store[("consul", "secrets", "consul-gossip")]["stringData"] == {"key": "gossip-one"}
    # The mesh must trust the CA the servers' certificate comes from: the stored one.
    assert api.store[("consul", "configmaps", "consul-ca")]["data"] == {"ca.crt": "CA-one"}


def test_the_ca_key_is_never_sent(api: FakeApi, tmp_path: Path) -> None:
    work = generated(tmp_path, "one")
    (work / "consul-agent-ca-key.pem").write_text("CA-PRIVATE-KEY")  # even if it were left behind
    consul_init.tls(work)
    assert not any("CA-PRIVATE-KEY" in body for body in api.bodies)


def test_api_errors_fail_the_job(api: FakeApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBERNETES_API_URL", "http://127.0.0.1:9")  # nothing listens: connection refused
    with pytest.raises(OSError):
        consul_init.tls(generated(tmp_path, "one"))
