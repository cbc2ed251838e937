"""Consul: the rendered server configuration parsed back and every security setting checked,
the Jobs that make keys and tokens, and the synth-time errors.

No Consul server can run here (BUSL-1.1, installs from no registry these machines reach):
what only a real cluster exercises is listed in the README.
"""

from __future__ import annotations

import json

import pytest

from final_problem.charts.consul import ConsulProps
from final_problem.errors import ConfigError
from final_problem.profiles import EKS, PI
from final_problem.renderers.consul import ServerConfigOptions, server_config
from tests.conftest import rendered


def objects(profile: str = "eks") -> list[dict]:
    return rendered(profile)["consul"]


def find(kind: str, name_prefix: str, profile: str = "eks") -> dict:
    return next(o for o in objects(profile) if o["kind"] == kind and o["metadata"]["name"].startswith(name_prefix))


def server_json(profile: str = "eks") -> dict:
    """The configuration file the servers read, parsed from the rendered ConfigMap."""
    return json.loads(find("ConfigMap", "consul-config", profile)["data"]["server.json"])


def server_container(profile: str = "eks") -> dict:
    return find("StatefulSet", "consul-server", profile)["spec"]["template"]["spec"]["containers"][0]


@pytest.mark.parametrize("profile", ["eks", "pi-full"])
def test_bootstrap_expect_is_the_replica_count(profile: str) -> None:
    config = server_json(profile)
    assert config["server"] is True
    assert config["bootstrap_expect"] == find("StatefulSet", "consul-server", profile)["spec"]["replicas"] == 3
    assert config["retry_join"] == [f"consul-server-{i}.consul-server.consul.svc" for i in range(3)]


def test_tls_verifies_incoming_outgoing_and_server_hostname() -> None:
    tls = server_json()["tls"]
    assert tls["defaults"]["verify_incoming"] is True
    assert tls["defaults"]["verify_outgoing"] is True
    assert tls["internal_rpc"]["verify_server_hostname"] is True
    assert tls["defaults"]["ca_file"] == "/consul/tls/ca.crt"
    assert tls["defaults"]["cert_file"] == "/consul/tls/tls.crt" and tls["defaults"]["key_file"] == "/consul/tls/tls.key"
    assert tls["defaults"]["tls_min_version"] == "TLSv1_2"


def test_only_tls_listeners_are_open() -> None:
    ports = server_json()["ports"]
    assert ports["http"] == -1 and ports["grpc"] == -1
    assert ports["https"] == 8501 and ports["grpc_tls"] == 8502
    assert ports["serf_wan"] == -1 and ports["dns"] == -1


def test_gossip_is_encrypted_and_verified_both_ways() -> None:
    config = server_json()
    assert config["encrypt_verify_incoming"] is True and config["encrypt_verify_outgoing"] is True
    container = server_container()
    assert "-encrypt=$(CONSUL_GOSSIP_KEY)" in container["command"]
    key_env = next(e for e in container["env"] if e["name"] == "CONSUL_GOSSIP_KEY")
    assert key_env["valueFrom"]["secretKeyRef"] == {"name": "consul-gossip", "key": "key"}
    assert "encrypt" not in config  # never in a manifest


def test_acls_are_on_with_default_deny() -> None:
    acl = server_json()["acl"]
    assert acl["enabled"] is True and acl["default_policy"] == "deny"
    assert acl["down_policy"] == "extend-cache" and acl["enable_token_persistence"] is True


def test_ui_and_metrics() -> None:
    config = server_json()
    assert config["ui_config"]["enabled"] is True
    assert config["telemetry"]["prometheus_retention_time"] == "60s"
    ui = find("Service", "consul-ui")
    assert ui["spec"]["ports"][0]["port"] == 443 and ui["spec"]["ports"][0]["targetPort"] == 8501


def test_servers_run_as_uid_100_without_permission_management() -> None:
    pod = find("StatefulSet", "consul-server")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == 100 and pod["securityContext"]["runAsGroup"] == 1000
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["CONSUL_DISABLE_PERM_MGMT"] == "true"
    assert pod["containers"][0]["command"][:2] == ["consul", "agent"]  # not the root entrypoint


def test_raft_data_on_retained_volumes() -> None:
    sts = find("StatefulSet", "consul-server")
    assert sts["spec"]["persistentVolumeClaimRetentionPolicy"] == {"whenDeleted": "Retain", "whenScaled": "Retain"}
    assert sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "10Gi"
    pi = find("StatefulSet", "consul-server", "pi-full")
    assert pi["spec"]["volumeClaimTemplates"][0]["spec"]["storageClassName"] == "local-path-retain"


def test_tls_job_generates_in_cluster_and_discards_the_ca_key() -> None:
    job = find("Job", "consul-tls-init-")
    spec = job["spec"]["template"]["spec"]
    script = spec["initContainers"][0]["command"][-1]
    assert "consul keygen" in script and "consul tls ca create" in script and "-server" in script
    assert "rm -f consul-agent-ca-key.pem" in script
    assert spec["containers"][0]["command"][-2:] == ["tls", "/work"]
    work = next(v for v in spec["volumes"] if v["name"] == "work")
    assert work["emptyDir"]["medium"] == "Memory"


def test_no_key_material_in_any_manifest() -> None:
    text = json.dumps(objects()) + json.dumps(objects("pi-full"))
    for marker in ("BEGIN CERTIFICATE", "BEGIN EC PRIVATE KEY", "BEGIN PRIVATE KEY"):
        assert marker not in text
    secrets = [o for o in objects() if o["kind"] == "Secret"]
    # Only the reviewer token, which Kubernetes fills in.
    assert [(s["metadata"]["name"], s["type"], "data" in s) for s in secrets] == [
        ("consul-auth-method-token", "kubernetes.io/service-account-token", False)]


def test_acl_job_bootstraps_the_auth_method_and_intentions() -> None:
    job = find("Job", "consul-acl-init-")
    env = {e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    spec = json.loads(env["CONSUL_INIT_SPEC"])
    assert spec["auth_method"]["Type"] == "kubernetes"
    assert {(r["BindType"], r["BindName"]) for r in spec["binding_rules"]} == {
        ("service", "${serviceaccount.name}"), ("node", "k8s-service-mesh")}
    assert spec["intentions"] == [{"Kind": "service-intentions", "Name": "redis",
                                   "Sources": [{"Name": "demo", "Action": "allow"}]}]
    assert spec["address"] == "https://consul-server.consul.svc:8501"


def test_reviewer_may_review_tokens() -> None:
    binding = find("ClusterRoleBinding", "consul-auth-method")
    assert binding["roleRef"]["name"] == "system:auth-delegator"


def test_network_policy_admits_mesh_pods_to_tls_ports_only() -> None:
    policy = find("NetworkPolicy", "consul-server")
    rules = policy["spec"]["ingress"]
    mesh_rule = next(r for r in rules if any("podSelector" in p and p["podSelector"].get("matchLabels") ==
                                             {"final-problem.io/mesh": "true"} for p in r["from"]))
    assert sorted(p["port"] for p in mesh_rule["ports"]) == [8501, 8502]


@pytest.mark.parametrize("replicas", [1, 2, 4])
def test_even_or_single_server_counts_fail(replicas: int) -> None:
    with pytest.raises(ConfigError, match=f"consul.replicas = {replicas}: must be one of 3, 5, 7"):
        ConsulProps.for_profile(EKS, replicas=replicas)


def test_suggested_fixes_are_valid() -> None:
    for bad, field in ((2, "replicas"), (5000, "cert_days")):
        with pytest.raises(ConfigError) as e:
            ConsulProps.for_profile(EKS, **{field: bad})
        key, _, value = e.value.fix.split()[-1].partition("=")
        assert key == f"consul.{field}"
        ConsulProps.for_profile(EKS, **{field: int(value)})


def test_certificate_outliving_the_ca_fails() -> None:
    with pytest.raises(ConfigError, match="consul.cert_days = 3000: outlives the CA"):
        ConsulProps.for_profile(EKS, ca_days=1000, cert_days=3000)


def test_renderer_refuses_an_even_count_too() -> None:
    with pytest.raises(ConfigError, match="odd number of servers"):
        server_config(ServerConfigOptions(replicas=4))


def test_pi_profile_is_smaller() -> None:
    assert ConsulProps.for_profile(PI).sizing.memory_limit_mib < ConsulProps.for_profile(EKS).sizing.memory_limit_mib
    assert ConsulProps.for_profile(PI).replicas == 3
