"""Set Consul up from inside the cluster, idempotently; run by the Consul chart's Jobs.

Standard library only (it runs in the official ``python`` image), next to
``secret_generator.py`` (its Kubernetes API helpers) in the same ConfigMap.

``tls``: the Job's first container (the Consul image) has written a gossip key, a CA and
one server certificate into a memory volume (``consul keygen``, ``consul tls ca create``,
``consul tls cert create -server``); this stores them as Secrets ``consul-gossip`` and
``consul-tls`` (never replacing existing ones: 409 means an earlier run made them) and
publishes the CA certificate in ConfigMap ``consul-ca``, which every service account may
read (it is public), so mesh sidecars can verify the servers. The CA's private key is never
stored: no one can issue another certificate for this CA.

``acl``: bootstraps the ACL system once (``PUT /v1/acl/bootstrap``) and keeps the
management token in Secret ``consul-bootstrap-token``; on every run after that it reads
it back, then makes the agent token once (set on every server on every run) and the
metrics token a Prometheus scrape presents (Secret ``consul-metrics-token``),
upserts the Kubernetes auth method, and reconciles its binding rules and the declared
intentions (``service-intentions`` config entries): what is declared is created or updated,
what is no longer declared is deleted. Running it again changes nothing.

Sources: Consul docs, "ACL HTTP API" (bootstrap, policy, token, auth-method,
binding-rule), "Config HTTP API", "Agent HTTP API" (``/v1/agent/token``), "consul tls".
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

try:
    import secret_generator as kube  # in the Job: mounted next to this file
except ImportError:
    from final_problem.constructs import secret_generator as kube

AGENT_POLICY = "consul-server-agent"
# Servers register themselves as nodes and read services for DNS and health; Consul docs,
# "Create an agent token".
AGENT_RULES = 'node_prefix "" { policy = "write" }\nservice_prefix "" { policy = "read" }\n'
METRICS_POLICY = "consul-metrics"
# /v1/agent/metrics needs agent:read (Consul docs, "Agent HTTP API", "View Metrics").
METRICS_RULES = 'agent_prefix "" { policy = "read" }\n'
SNAPSHOT_POLICY = "consul-snapshot"
# `consul snapshot save` (GET /v1/snapshot) needs acl:write: a snapshot holds the ACL tokens
# (Consul docs, "Create a snapshot agent token": acl:write "enables the agent [to] read and
# snapshot ACL data"; the Enterprise agent's key, session and service rights are for its own
# leader lock and registration, which a CronJob does not need). Nothing narrower reads a
# snapshot: the token is as strong as a management token for ACLs, so only the snapshot
# CronJob's pods receive it (Secret consul-snapshot-token).
SNAPSHOT_RULES = 'acl = "write"\n'


def _kube_request(method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    sa = os.environ.get("SA_DIR", kube.SA_DIR)
    token = Path(sa, "token").read_text().strip()
    base = kube.api_base()
    context = ssl.create_default_context(cafile=os.path.join(sa, "ca.crt")) if base.startswith("https") else None
    request = urllib.request.Request(
        f"{base}{path}", method=method, data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, context=context, timeout=30) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, {}


def _namespace() -> str:
    return Path(os.environ.get("SA_DIR", kube.SA_DIR), "namespace").read_text().strip()


def create_secret(name: str, values: dict[str, str]) -> str:
    ns = _namespace()
    body = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": name, "namespace": ns, "annotations": {"final-problem.io/generated": "in-cluster"}},
            "stringData": values}
    status, _ = _kube_request("POST", f"/api/v1/namespaces/{ns}/secrets", body)
    if status == 201:
        return "created"
    if status == 409:
        return "exists"
    raise RuntimeError(f"creating secret {name}: HTTP {status}")


def read_secret(name: str) -> dict[str, str]:
    ns = _namespace()
    status, body = _kube_request("GET", f"/api/v1/namespaces/{ns}/secrets/{name}")
    if status != 200:
        raise RuntimeError(f"reading secret {name}: HTTP {status}")
    return {k: base64.b64decode(v).decode() for k, v in (body.get("data") or {}).items()}


def publish_ca(ca_pem: str) -> None:
    """Create or replace ConfigMap consul-ca with the CA certificate in effect."""
    ns = _namespace()
    body = {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "consul-ca", "namespace": ns}, "data": {"ca.crt": ca_pem}}
    status, _ = _kube_request("POST", f"/api/v1/namespaces/{ns}/configmaps", body)
    if status == 409:
        status, _ = _kube_request("PUT", f"/api/v1/namespaces/{ns}/configmaps/consul-ca", body)
    if status not in (200, 201):
        raise RuntimeError(f"publishing consul-ca: HTTP {status}")


def tls(generated: Path) -> int:
    key = (generated / "gossip.key").read_text().strip()
    ca = (generated / "consul-agent-ca.pem").read_text()
    cert = (generated / "dc1-server-consul-0.pem").read_text()
    cert_key = (generated / "dc1-server-consul-0-key.pem").read_text()
    print(f"secret consul-gossip: {create_secret('consul-gossip', {'key': key})}", flush=True)
    outcome = create_secret("consul-tls", {"ca.crt": ca, "tls.crt": cert, "tls.key": cert_key})
    print(f"secret consul-tls: {outcome}", flush=True)
    # The CA in effect is the stored one: an earlier run's, if there was one.
    publish_ca(read_secret("consul-tls")["ca.crt"] if outcome == "exists" else ca)
    print("configmap consul-ca: published", flush=True)
    return 0


class Consul:
    """A minimal client of Consul's HTTPS API, verifying the server certificate."""

    def __init__(self, address: str, ca_file: str, token: str | None = None) -> None:
        self.address = address.rstrip("/")
        self.context = ssl.create_default_context(cafile=ca_file)
        self.token = token

    def call(self, method: str, path: str, body: Any = None, *, ok: tuple[int, ...] = (200,)) -> tuple[int, Any]:
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["X-Consul-Token"] = self.token
        request = urllib.request.Request(f"{self.address}{path}", method=method, headers=headers,
                                         data=json.dumps(body).encode() if body is not None else None)
        try:
            with urllib.request.urlopen(request, context=self.context, timeout=30) as response:
                text = response.read()
                status = response.status
        except urllib.error.HTTPError as e:
            text, status = e.read(), e.code
        if status not in ok:
            raise RuntimeError(f"{method} {path}: HTTP {status} {text[:300]!r}")
        try:
            return status, json.loads(text or b"null")
        except ValueError:
            return status, text.decode(errors="replace")


def wait_for_leader(consul: Consul, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if consul.call("GET", "/v1/status/leader")[1]:
                return
        except (OSError, RuntimeError):
            pass
        time.sleep(5)
    raise RuntimeError("no Consul leader")


def bootstrap_token(consul: Consul) -> str:
    """The management token: made now (first run) or read back from its Secret."""
    status, body = consul.call("PUT", "/v1/acl/bootstrap", ok=(200, 403))
    if status == 200:
        token = body["SecretID"]
        # Kept before anything else: losing it would need Consul's bootstrap reset.
        for attempt in range(10):
            try:
                create_secret("consul-bootstrap-token", {"token": token})
                return token
            except RuntimeError:
                time.sleep(2 * (attempt + 1))
        raise RuntimeError("bootstrapped, but could not store the token: see Consul docs, 'Reset the ACL system'")
    return read_secret("consul-bootstrap-token")["token"]


def upsert_policy(consul: Consul, name: str, rules: str) -> str:
    status, existing = consul.call("GET", f"/v1/acl/policy/name/{name}", ok=(200, 403, 404))
    body = {"Name": name, "Rules": rules}
    if status == 200:
        consul.call("PUT", f"/v1/acl/policy/{existing['ID']}", body)
        return existing["ID"]
    return consul.call("PUT", "/v1/acl/policy", body)[1]["ID"]


def kept_token(consul: Consul, secret: str, policy: str, rules: str, description: str) -> str:
    """A token of ``policy``, made once and kept in Secret ``secret``; the policy's rules
    are brought up to date on every run."""
    upsert_policy(consul, policy, rules)
    try:
        return read_secret(secret)["token"]
    except RuntimeError:
        pass
    token = consul.call("PUT", "/v1/acl/token", {"Description": description,
                                                  "Policies": [{"Name": policy}]})[1]["SecretID"]
    create_secret(secret, {"token": token})
    return read_secret(secret)["token"]


def agent_token(consul: Consul) -> str:
    """The servers' agent token, kept in Secret consul-agent-token."""
    return kept_token(consul, "consul-agent-token", AGENT_POLICY, AGENT_RULES, "Consul servers' agent token")


def metrics_token(consul: Consul) -> str:
    """The token a Prometheus scrape of ``/v1/agent/metrics`` presents (it needs agent:read),
    kept in Secret consul-metrics-token."""
    return kept_token(consul, "consul-metrics-token", METRICS_POLICY, METRICS_RULES, "metrics scrape (agent:read)")


def snapshot_token(consul: Consul) -> str:
    """The token the snapshot CronJob presents to ``consul snapshot save`` (acl:write), kept in
    Secret consul-snapshot-token."""
    return kept_token(consul, "consul-snapshot-token", SNAPSHOT_POLICY, SNAPSHOT_RULES, "snapshot save (acl:write)")


def acl(spec: dict) -> int:
    ca_file = spec["ca_file"]
    consul = Consul(spec["address"], ca_file)
    wait_for_leader(consul)
    consul.token = bootstrap_token(consul)
    token = agent_token(consul)
    metrics_token(consul)
    if spec.get("snapshot"):
        snapshot_token(consul)
    for server in spec["servers"]:
        # Each server keeps it (enable_token_persistence); retried on the next run if one is down.
        try:
            Consul(server, ca_file, consul.token).call("PUT", "/v1/agent/token/agent", {"Token": token})
            print(f"agent token set on {server}", flush=True)
        except (OSError, RuntimeError) as e:
            print(f"agent token on {server}: {e}", flush=True)
    sa = os.environ.get("SA_DIR", kube.SA_DIR)
    reviewer = read_secret(spec["reviewer_secret"])["token"]
    method = dict(spec["auth_method"])
    method["Config"] = {**method["Config"], "CACert": Path(sa, "ca.crt").read_text(), "ServiceAccountJWT": reviewer}
    status, _ = consul.call("GET", f"/v1/acl/auth-method/{method['Name']}", ok=(200, 403, 404))
    consul.call("PUT", f"/v1/acl/auth-method/{method['Name']}" if status == 200 else "/v1/acl/auth-method", method)
    # Binding rules have no name: one is known by what it binds. Declared ones are created
    # or updated, undeclared ones deleted.
    existing = {(r["BindType"], r["BindName"]): r
                for r in consul.call("GET", f"/v1/acl/binding-rules?authmethod={method['Name']}")[1] or []}
    declared_rules = {(rule["BindType"], rule["BindName"]): rule for rule in spec["binding_rules"]}
    for key, rule in declared_rules.items():
        current = existing.get(key)
        if current is None:
            consul.call("PUT", "/v1/acl/binding-rule", rule)
        elif any(current.get(field) != value for field, value in rule.items()):
            consul.call("PUT", f"/v1/acl/binding-rule/{current['ID']}", rule)
    for key, rule in existing.items():
        if key not in declared_rules:
            consul.call("DELETE", f"/v1/acl/binding-rule/{rule['ID']}")
            print(f"binding rule {key}: deleted (no longer declared)", flush=True)
    declared = {entry["Name"] for entry in spec["intentions"]}
    for entry in spec["intentions"]:
        consul.call("PUT", "/v1/config", entry)
        print(f"intentions for {entry['Name']}: {[(s['Name'], s['Action']) for s in entry['Sources']]}", flush=True)
    for existing in consul.call("GET", "/v1/config/service-intentions")[1] or []:
        if existing["Name"] not in declared:
            consul.call("DELETE", f"/v1/config/service-intentions/{existing['Name']}")
            print(f"intentions for {existing['Name']}: deleted (no longer declared)", flush=True)
    return 0


def main(argv: list[str]) -> int:
    if argv[1:2] == ["tls"]:
        return tls(Path(argv[2]))
    if argv[1:2] == ["acl"]:
        return acl(json.loads(os.environ["CONSUL_INIT_SPEC"]))
    print("usage: consul_init.py tls DIR | acl", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
