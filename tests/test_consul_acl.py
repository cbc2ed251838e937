"""The Consul ACL Job (``consul_init.py acl``) against a stateful double of Consul's HTTPS
API and the Kubernetes API double of tests/test_consul_init.py.

No Consul server can run here (BUSL). The double keeps what the Job writes (the bootstrap
state, policies, tokens, the auth method, binding rules, config entries) and answers only a
request carrying the management token once the ACL system is bootstrapped, so the tests
check what the Job leaves behind, that a second run changes nothing, and that it follows
changed declarations. The spec is the one the chart renders into the Job.
"""

from __future__ import annotations

import copy
import itertools
import json
import ssl
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import parse_qs, urlparse

import pytest

from final_problem.clients import consul_init
from tests.conftest import rendered
from tests.test_consul_init import FakeApi, api  # noqa: F401 - the Kubernetes API fixture
from tests.test_mesh_register import certificate  # noqa: F401 - a self-signed certificate fixture
from tests.test_secret_generator import _Handler as JsonHandler


class FakeConsul(ThreadingHTTPServer):
    """The part of Consul's HTTP API the Job uses, with state."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _ConsulHandler)
        self.management: str | None = None
        self.policies: dict[str, dict[str, Any]] = {}
        self.tokens: dict[str, dict[str, Any]] = {}
        self.auth_methods: dict[str, dict[str, Any]] = {}
        self.binding_rules: dict[str, dict[str, Any]] = {}
        self.config: dict[tuple[str, str], dict[str, Any]] = {}
        self.agent_tokens: list[str] = []
        self.writes: list[str] = []
        self._ids = itertools.count(1)

    def new_id(self, kind: str) -> str:
        return f"{kind}-{next(self._ids)}"

    def state(self) -> dict[str, Any]:
        return copy.deepcopy({"management": self.management, "policies": self.policies, "tokens": self.tokens,
                              "auth_methods": self.auth_methods, "binding_rules": self.binding_rules,
                              "config": {f"{k}/{n}": v for (k, n), v in self.config.items()}})


class _ConsulHandler(JsonHandler):
    """JSON replies and quiet logs from the secret generator test's handler."""

    server: FakeConsul  # type: ignore[assignment]

    def _handle(self) -> None:  # noqa: C901 - one branch per endpoint
        s = self.server
        url = urlparse(self.path)
        path, query = url.path, parse_qs(url.query)
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        method = self.command
        if method != "GET":
            s.writes.append(f"{method} {path}")
        if (method, path) == ("GET", "/v1/status/leader"):
            return self._reply(200, "10.0.0.1:8300")
        if (method, path) == ("PUT", "/v1/acl/bootstrap"):
            if s.management is not None:
                return self._reply(403, "ACL bootstrap no longer allowed")
            s.management = s.new_id("management")
            return self._reply(200, {"SecretID": s.management})
        if s.management is None or self.headers.get("X-Consul-Token") != s.management:
            return self._reply(403, "Permission denied")
        parts = path.split("/")[2:]  # after /v1/
        if parts[:3] == ["acl", "policy", "name"] and method == "GET":
            found = next((p for p in s.policies.values() if p["Name"] == parts[3]), None)
            return self._reply(200, found) if found else self._reply(404, "not found")
        if parts[:2] == ["acl", "policy"] and method == "PUT":
            pid = parts[2] if len(parts) > 2 else s.new_id("policy")
            s.policies[pid] = {**body, "ID": pid}
            return self._reply(200, s.policies[pid])
        if parts == ["acl", "token"] and method == "PUT":
            secret = s.new_id("token")
            s.tokens[secret] = {**body, "SecretID": secret}
            return self._reply(200, s.tokens[secret])
        if parts == ["agent", "token", "agent"] and method == "PUT":
            s.agent_tokens.append(body["Token"])
            return self._reply(200, None)  # type: ignore[arg-type]
        if parts[:2] == ["acl", "auth-method"]:
            if method == "GET":
                found = s.auth_methods.get(parts[2])
                return self._reply(200, found) if found else self._reply(404, "not found")
            s.auth_methods[body["Name"]] = body
            return self._reply(200, body)
        if parts == ["acl", "binding-rules"] and method == "GET":
            return self._reply(200, [r for r in s.binding_rules.values() if r["AuthMethod"] == query["authmethod"][0]])
        if parts[:2] == ["acl", "binding-rule"]:
            if method == "DELETE":
                s.binding_rules.pop(parts[2])
                return self._reply(200, True)
            rid = parts[2] if len(parts) > 2 else s.new_id("rule")
            if len(parts) > 2 and rid not in s.binding_rules:
                return self._reply(404, "not found")
            s.binding_rules[rid] = {**body, "ID": rid}
            return self._reply(200, s.binding_rules[rid])
        if parts == ["config"] and method == "PUT":
            s.config[(body["Kind"], body["Name"])] = body
            return self._reply(200, True)
        if parts[:1] == ["config"] and method == "GET":
            return self._reply(200, [v for (k, _), v in s.config.items() if k == parts[1]])
        if parts[:1] == ["config"] and method == "DELETE":
            s.config.pop((parts[1], parts[2]))
            return self._reply(200, True)
        self._reply(404, f"unexpected {method} {path}")

    do_GET = do_PUT = do_POST = do_DELETE = _handle  # noqa: N815


@pytest.fixture
def consul(certificate: tuple[Path, Path]) -> Iterator[FakeConsul]:  # noqa: F811
    cert, key = certificate
    server = FakeConsul()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(cert), str(key))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def chart_spec() -> dict[str, Any]:
    """The spec the chart renders into the ACL Job (CONSUL_INIT_SPEC)."""
    job = next(o for o in rendered("eks")["consul"] if o["kind"] == "Job" and "acl-init" in o["metadata"]["name"])
    env = job["spec"]["template"]["spec"]["containers"][0]["env"]
    return json.loads(next(e["value"] for e in env if e["name"] == "CONSUL_INIT_SPEC"))


@pytest.fixture
def spec(consul: FakeConsul, api: FakeApi, certificate: tuple[Path, Path], tmp_path: Path) -> dict[str, Any]:  # noqa: F811
    """The chart's spec, pointed at the doubles; the auth method's reviewer token is in its Secret."""
    address = f"https://localhost:{consul.server_address[1]}"
    rendered_spec = chart_spec()
    (tmp_path / "sa" / "ca.crt").write_text("KUBERNETES-CA")
    api.store[("consul", "secrets", rendered_spec["reviewer_secret"])] = {
        "kind": "Secret", "metadata": {"name": rendered_spec["reviewer_secret"]}, "data": {"token": "reviewer-jwt"}}
    return {**rendered_spec, "address": address, "ca_file": str(certificate[0]),
            "servers": [address] * len(rendered_spec["servers"])}


def test_the_first_run_sets_everything_up(consul: FakeConsul, api: FakeApi, spec: dict[str, Any]) -> None:  # noqa: F811
    assert consul_init.acl(spec) == 0
    management = api.store[("consul", "secrets", "consul-bootstrap-token")]["stringData"]["token"]
    assert management == consul.management
    agent = api.store[("consul", "secrets", "consul-agent-token")]["stringData"]["token"]
    assert consul.tokens[agent]["Policies"] == [{"Name": consul_init.AGENT_POLICY}]
    assert consul.agent_tokens == [agent] * len(spec["servers"])
    metrics = api.store[("consul", "secrets", "consul-metrics-token")]["stringData"]["token"]
    assert consul.tokens[metrics]["Policies"] == [{"Name": consul_init.METRICS_POLICY}]
    rules = {p["Name"]: p["Rules"] for p in consul.policies.values()}
    assert rules[consul_init.METRICS_POLICY] == 'agent_prefix "" { policy = "read" }\n'
    # Snapshots are on by default (cluster setting backups): the CronJob's token, acl:write only.
    snapshot = api.store[("consul", "secrets", "consul-snapshot-token")]["stringData"]["token"]
    assert consul.tokens[snapshot]["Policies"] == [{"Name": consul_init.SNAPSHOT_POLICY}]
    assert rules[consul_init.SNAPSHOT_POLICY] == 'acl = "write"\n'
    assert len(consul.tokens) == 3  # the agent's, the scrape's and the snapshot CronJob's, nothing else
    method = consul.auth_methods[spec["auth_method"]["Name"]]
    assert method["Config"]["CACert"] == "KUBERNETES-CA" and method["Config"]["ServiceAccountJWT"] == "reviewer-jwt"
    assert sorted((r["BindType"], r["BindName"]) for r in consul.binding_rules.values()) == sorted(
        (r["BindType"], r["BindName"]) for r in spec["binding_rules"])
    assert [v for (k, _), v in sorted(consul.config.items())] == spec["intentions"]
    assert spec["intentions"], "the chart declares intentions"


def test_a_second_run_changes_nothing(consul: FakeConsul, spec: dict[str, Any]) -> None:
    consul_init.acl(spec)
    before, writes = consul.state(), len(consul.writes)
    assert consul_init.acl(spec) == 0
    assert consul.state() == before
    again = consul.writes[writes:]
    # No second bootstrap succeeded, no new token, no new binding rule.
    assert "PUT /v1/acl/token" not in again and "PUT /v1/acl/binding-rule" not in again


def test_changed_declarations_are_followed(consul: FakeConsul, spec: dict[str, Any]) -> None:
    consul_init.acl(spec)
    changed = copy.deepcopy(spec)
    changed["intentions"] = changed["intentions"][1:]            # one destination no longer declared
    changed["binding_rules"][0]["Description"] = "changed"       # a rule changed
    changed["binding_rules"] = changed["binding_rules"][:1]      # a rule no longer declared
    assert consul_init.acl(changed) == 0
    assert [v for (k, _), v in sorted(consul.config.items())] == changed["intentions"]
    rules = list(consul.binding_rules.values())
    assert [(r["BindType"], r["BindName"], r["Description"]) for r in rules] == [
        (changed["binding_rules"][0]["BindType"], changed["binding_rules"][0]["BindName"], "changed")]


def test_a_token_consul_refuses_fails_the_job(consul: FakeConsul, api: FakeApi, spec: dict[str, Any]) -> None:  # noqa: F811
    """The double answers only the management token: the runs above succeeding means the
    Job sent it, and a run with a token Consul does not know fails instead of going on."""
    consul.management = "the-real-token"  # bootstrapped before, by someone else
    api.store[("consul", "secrets", "consul-bootstrap-token")] = {
        "kind": "Secret", "metadata": {"name": "consul-bootstrap-token"}, "data": {"token": "a-stale-token"}}
    with pytest.raises(RuntimeError, match="HTTP 403"):
        consul_init.acl(spec)
    assert consul.policies == {} and consul.binding_rules == {} and consul.config == {}
