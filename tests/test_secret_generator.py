"""The in-cluster secret mechanism: the Job's script against a local Kubernetes API double,
and the objects that run it (least privilege, no values in the manifest)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import pytest

from final_problem.constructs import generated_secrets as secrets_mod
from final_problem.constructs.generated_secrets import SecretSpec
from final_problem.errors import ConfigError
from tests.conftest import objects_of

TOKEN = "service-account-token"


class FakeSecretsApi(ThreadingHTTPServer):
    """Just enough of the Kubernetes API: POST /api/v1/namespaces/{ns}/secrets."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.store: dict[tuple[str, str], dict[str, Any]] = {}
        self.requests: list[tuple[str, str, str | None]] = []
        self.fail_with: int | None = None


class _Handler(BaseHTTPRequestHandler):
    server: FakeSecretsApi

    def do_POST(self) -> None:  # noqa: N802 (http.server API)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append(("POST", self.path, self.headers.get("Authorization")))
        parts = self.path.strip("/").split("/")
        if self.server.fail_with:
            return self._reply(self.server.fail_with, {"kind": "Status", "reason": "InternalError"})
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            return self._reply(401, {"kind": "Status", "reason": "Unauthorized"})
        if parts[:3] != ["api", "v1", "namespaces"] or parts[4:] != ["secrets"]:
            return self._reply(404, {"kind": "Status", "reason": "NotFound"})
        key = (parts[3], body["metadata"]["name"])
        if key in self.server.store:
            return self._reply(409, {"kind": "Status", "reason": "AlreadyExists"})
        self.server.store[key] = body
        return self._reply(201, body)

    def _reply(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def api() -> Iterator[FakeSecretsApi]:
    server = FakeSecretsApi()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def sa_dir(tmp_path: Path) -> Path:
    (tmp_path / "namespace").write_text("platform\n")
    (tmp_path / "token").write_text(TOKEN)
    return tmp_path


def run_generator(api: FakeSecretsApi, sa_dir: Path, specs: list[dict[str, Any]]) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ["PATH"],
        "GENERATOR_SPEC": json.dumps(specs),
        "SA_DIR": str(sa_dir),
        "KUBERNETES_API_URL": f"http://127.0.0.1:{api.server_address[1]}",
    }
    return subprocess.run([sys.executable, str(secrets_mod.SCRIPT)], env=env, capture_output=True, text=True, timeout=60)


SPEC = [{"name": "platform-admin", "keys": ["password", "api-key"], "bytes": 32, "labels": {"a": "b"}}]


def test_first_run_creates_the_secret_with_random_values(api: FakeSecretsApi, sa_dir: Path) -> None:
    result = run_generator(api, sa_dir, SPEC)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "secret platform/platform-admin: created" in result.stdout
    body = api.store[("platform", "platform-admin")]
    values = body["stringData"]
    assert set(values) == {"password", "api-key"}
    assert all(len(v) >= 43 for v in values.values())  # 32 bytes, URL-safe base64
    assert values["password"] != values["api-key"]
    assert body["metadata"]["labels"] == {"a": "b"}
    assert api.requests[0][2] == f"Bearer {TOKEN}"


def test_kafka_uuid_values_are_cluster_ids_the_storage_tool_accepts(api: FakeSecretsApi, sa_dir: Path) -> None:
    spec = [{"name": "kafka-cluster-id", "keys": ["cluster-id"], "bytes": 16, "labels": {}, "format": "kafka-uuid"}]
    result = run_generator(api, sa_dir, spec)
    assert result.returncode == 0, result.stdout + result.stderr
    value = api.store[("platform", "kafka-cluster-id")]["stringData"]["cluster-id"]
    # Kafka's Uuid.fromString: 16 bytes as URL-safe base64 without padding (22 characters).
    assert len(value) == 22 and "=" not in value and not value.startswith("-")
    assert len(base64.urlsafe_b64decode(value + "==")) == 16


def test_values_are_never_printed(api: FakeSecretsApi, sa_dir: Path) -> None:
    result = run_generator(api, sa_dir, SPEC)
    for value in api.store[("platform", "platform-admin")]["stringData"].values():
        assert value not in result.stdout + result.stderr


def test_second_run_leaves_the_existing_secret_unchanged(api: FakeSecretsApi, sa_dir: Path) -> None:
    assert run_generator(api, sa_dir, SPEC).returncode == 0
    first = json.dumps(api.store[("platform", "platform-admin")])
    again = run_generator(api, sa_dir, SPEC)
    assert again.returncode == 0
    assert "already exists, left unchanged" in again.stdout
    assert json.dumps(api.store[("platform", "platform-admin")]) == first


def test_api_errors_fail_the_job_so_kubernetes_retries(api: FakeSecretsApi, sa_dir: Path) -> None:
    api.fail_with = 500
    result = run_generator(api, sa_dir, SPEC)
    assert result.returncode == 1
    assert "failed: HTTP 500" in result.stdout
    assert api.store == {}


def test_rendered_job_runs_the_packaged_script_with_names_only() -> None:
    objs = [o for o in objects_of("eks") if o["metadata"].get("namespace") == "platform"]
    config_map = next(o for o in objs if o["kind"] == "ConfigMap")
    assert config_map["data"]["secret_generator.py"] == secrets_mod.SCRIPT.read_text()
    job = next(o for o in objs if o["kind"] == "Job")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    spec = json.loads(next(e["value"] for e in container["env"] if e["name"] == "GENERATOR_SPEC"))
    assert spec == [{"bytes": 32, "keys": ["password"], "labels": {}, "name": "platform-admin"}]
    assert job["metadata"]["name"] == config_map["metadata"]["name"]


def test_generator_role_can_only_create_secrets() -> None:
    role = next(o for o in objects_of("eks") if o["kind"] == "Role" and o["metadata"]["name"] == "secret-generator")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]}]


def test_only_the_generator_pod_may_reach_the_api_server() -> None:
    # One generator per namespace that generates secrets (platform, redis, ...).
    policies = [o for o in objects_of("pi") if o["kind"] == "NetworkPolicy" and o["metadata"]["name"].endswith("-api")]
    assert policies
    for policy in policies:
        assert list(policy["spec"]["podSelector"]["matchLabels"]) == ["final-problem.io/job"]
        assert [p["port"] for p in policy["spec"]["egress"][0]["ports"]] == [443, 6443]


def test_no_secret_object_is_rendered() -> None:
    """The only Secrets in a manifest are service-account-token requests without data
    (Consul's auth method reviewer token): Kubernetes's token controller fills them in the
    cluster, so no value travels in a manifest."""
    for profile in ("eks", "pi"):
        secrets = [o for o in objects_of(profile) if o["kind"] == "Secret"]
        assert all(o.get("type") == "kubernetes.io/service-account-token" for o in secrets), secrets
        assert not [o for o in secrets if o.get("data") or o.get("stringData")]


@pytest.mark.parametrize(
    ("kwargs", "setting"),
    [
        ({"name": "Bad_Name", "keys": ("k",)}, "secret.name"),
        ({"name": "ok", "keys": ()}, "secret ok.keys"),
        ({"name": "ok", "keys": ("k",), "bytes": 8}, "secret ok.bytes"),
        ({"name": "ok", "keys": ("k",), "format": "hex"}, "secret ok.format"),
        ({"name": "ok", "keys": ("k",), "format": "kafka-uuid"}, "secret ok.bytes"),
    ],
)
def test_bad_secret_specs_are_refused(kwargs: dict[str, Any], setting: str) -> None:
    with pytest.raises(ConfigError) as info:
        SecretSpec(**kwargs)
    assert info.value.setting == setting
