"""The edge Envoy chart: what it renders per profile and its errors."""

from __future__ import annotations

import json

import pytest

from final_problem import versions
from final_problem.charts.envoy import EnvoyProps
from final_problem.errors import ConfigError
from final_problem.profiles import EKS, PI
from tests.conftest import rendered


def find(kind: str, profile: str = "eks", name: str | None = None) -> dict:
    return next(o for o in rendered(profile)["envoy"]
                if o["kind"] == kind and (name is None or o["metadata"]["name"] == name))


def test_deployment_two_replicas_distroless_restricted() -> None:
    deployment = find("Deployment")
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == versions.ENVOY_IMAGE
    assert pod["securityContext"]["runAsUser"] == 65532
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": 8081}
    assert "tcpSocket" in container["livenessProbe"]
    anti = pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]
    assert anti["topologyKey"] == "kubernetes.io/hostname"


def test_pdb_keeps_one_up() -> None:
    assert find("PodDisruptionBudget")["spec"]["maxUnavailable"] == 1


def test_load_balancer_per_profile() -> None:
    eks, pi = find("Service", "eks"), find("Service", "pi")
    assert eks["spec"]["type"] == pi["spec"]["type"] == "LoadBalancer"
    assert eks["metadata"]["annotations"]["service.beta.kubernetes.io/aws-load-balancer-type"] == "nlb"
    assert eks["spec"]["externalTrafficPolicy"] == "Local"
    assert "annotations" not in pi["metadata"] and pi["spec"]["externalTrafficPolicy"] == "Cluster"


def test_config_map_holds_the_rendered_routes() -> None:
    config = json.loads(find("ConfigMap")["data"]["envoy.json"])
    assert config["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"
    clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
    endpoint = clusters["demo"]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    assert endpoint["socket_address"] == {"address": "demo-headless.demo.svc.cluster.local", "port_value": 8080}
    # Cadence is a component of this render: its web UI is routed.
    web = clusters["cadence-web"]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    assert web["socket_address"]["port_value"] == 8088


def test_heap_limit_follows_the_memory_limit() -> None:
    config = json.loads(find("ConfigMap", "pi")["data"]["envoy.json"])
    heap = next(m for m in config["overload_manager"]["resource_monitors"] if m["name"].endswith("fixed_heap"))
    assert heap["typed_config"]["max_heap_size_bytes"] == 96 * 1024 * 1024 * 8 // 10


def test_network_policy_egress_only_to_routed_backends() -> None:
    policy = find("NetworkPolicy", name="envoy")
    egress = policy["spec"]["egress"]
    assert [(r["to"][0]["namespaceSelector"]["matchLabels"], r["ports"][0]["port"]) for r in egress] == [
        ({"kubernetes.io/metadata.name": "demo"}, 8080), ({"kubernetes.io/metadata.name": "cadence"}, 8088)]


def test_single_replica_fails() -> None:
    with pytest.raises(ConfigError, match="envoy.replicas = 1"):
        EnvoyProps(replicas=1)


def test_bad_edge_numbers_fail_at_synth() -> None:
    with pytest.raises(ConfigError, match="per_try_timeout_ms"):
        EnvoyProps(per_try_timeout_ms=60_000)


def test_pi_profile_is_smaller() -> None:
    assert EnvoyProps.for_profile(PI).sizing.memory_limit_mib < EnvoyProps.for_profile(EKS).sizing.memory_limit_mib
    assert EnvoyProps.for_profile(PI).replicas == 2


def test_on_a_pi_envoy_runs_only_where_the_kernel_allows() -> None:
    pi = find("Deployment", "pi")["spec"]["template"]["spec"]["affinity"]
    term = pi["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]
    assert term["matchExpressions"] == [
        {"key": "final-problem.io/arm64-va-bits", "operator": "In", "values": ["47", "48", "52"]}]
    assert "nodeAffinity" not in find("Deployment", "eks")["spec"]["template"]["spec"]["affinity"]
