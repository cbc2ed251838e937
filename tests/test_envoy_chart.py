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


@pytest.mark.parametrize(("profile", "drain"), [("eks", 35), ("pi-full", 15)])
def test_a_terminating_proxy_drains_before_sigterm(profile: str, drain: int) -> None:
    """No shell in the image: the kubelet's native sleep, within the grace period."""
    pod = find("Deployment", profile)["spec"]["template"]["spec"]
    assert pod["containers"][0]["lifecycle"] == {"preStop": {"sleep": {"seconds": drain}}}
    assert pod["terminationGracePeriodSeconds"] == drain + 15
    config = json.loads(find("ConfigMap", profile)["data"]["envoy.json"])
    edge = next(listener for listener in config["static_resources"]["listeners"] if listener["name"] == "edge")
    duration = edge["filter_chains"][0]["filters"][0]["typed_config"]["common_http_protocol_options"][
        "max_connection_duration"]
    assert int(duration.rstrip("s")) < drain


def test_the_nlb_health_check_the_drain_waits_for_is_pinned() -> None:
    annotations = find("Service", "eks")["metadata"]["annotations"]
    prefix = "service.beta.kubernetes.io/aws-load-balancer-healthcheck-"
    interval, failures = int(annotations[prefix + "interval"]), int(annotations[prefix + "unhealthy-threshold"])
    assert interval * failures + 10 <= EnvoyProps.for_profile(EKS).drain_seconds


def test_pdb_keeps_one_up() -> None:
    assert find("PodDisruptionBudget")["spec"]["maxUnavailable"] == 1


def test_load_balancer_per_profile() -> None:
    eks, pi = find("Service", "eks"), find("Service", "pi-full")
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
    config = json.loads(find("ConfigMap", "pi-full")["data"]["envoy.json"])
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
    pi = find("Deployment", "pi-full")["spec"]["template"]["spec"]["affinity"]
    term = pi["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]
    assert term["matchExpressions"] == [
        {"key": "final-problem.io/arm64-va-bits", "operator": "In", "values": ["47", "48", "52"]}]
    assert "nodeAffinity" not in find("Deployment", "eks")["spec"]["template"]["spec"]["affinity"]


def _matches(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items())


@pytest.mark.parametrize("profile", ["eks", "pi-full"])
def test_every_route_reaches_a_backend_that_admits_the_edge(profile: str) -> None:
    """What the edge's configuration names exists in the rendered platform: the route's
    Service (headless, so Envoy resolves each pod), on the route's port, selecting pods that
    a NetworkPolicy of their namespace lets the envoy pods reach on that port."""
    objects = [o for objs in rendered(profile).values() for o in objs]
    config = json.loads(find("ConfigMap", profile)["data"]["envoy.json"])
    envoy_pod = find("Deployment", profile)["spec"]["template"]["metadata"]["labels"]
    edge_namespace = {"kubernetes.io/metadata.name": "edge"}
    routed = 0
    for cluster in config["static_resources"]["clusters"]:
        if cluster["name"] == "admin":
            continue
        address = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
        service_name, namespace = address["address"].split(".")[:2]
        port = address["port_value"]
        service = next((o for o in objects if o["kind"] == "Service" and o["metadata"]["name"] == service_name
                        and o["metadata"]["namespace"] == namespace), None)
        assert service is not None, f"route {cluster['name']}: no Service {service_name} in {namespace}"
        assert service["spec"].get("clusterIP") == "None", f"{service_name} is not headless"
        assert port in [p["port"] for p in service["spec"]["ports"]]
        pods = [o["spec"]["template"]["metadata"]["labels"] for o in objects
                if o["kind"] in ("Deployment", "StatefulSet") and o["metadata"]["namespace"] == namespace
                and _matches({"matchLabels": service["spec"]["selector"]}, o["spec"]["template"]["metadata"]["labels"])]
        assert pods, f"{service_name} selects no pods"
        admitted = [
            p for p in objects if p["kind"] == "NetworkPolicy" and p["metadata"]["namespace"] == namespace
            and all(_matches(p["spec"]["podSelector"], labels) for labels in pods)
            for rule in p["spec"].get("ingress", [])
            if any(port_rule["port"] == port for port_rule in rule.get("ports", []))
            and any(_matches(peer.get("namespaceSelector", {}), edge_namespace)
                    and _matches(peer.get("podSelector", {}), envoy_pod) for peer in rule.get("from", []))
        ]
        assert admitted, f"no NetworkPolicy in {namespace} admits the edge Envoy to {service_name}:{port}"
        routed += 1
    assert routed == 2


def test_the_web_ui_has_a_port_of_the_edge_to_itself() -> None:
    config = json.loads(find("ConfigMap")["data"]["envoy.json"])
    listeners = {item["name"]: item for item in config["static_resources"]["listeners"]}
    web = listeners["edge-cadence-web"]
    assert web["address"]["socket_address"]["port_value"] == 8088
    routes = web["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]["virtual_hosts"][0]["routes"]
    assert [(r["match"], r["route"]["cluster"]) for r in routes] == [({"prefix": "/"}, "cadence-web")]
    edge_routes = listeners["edge"]["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]["virtual_hosts"][0]["routes"]
    assert [r["route"]["cluster"] for r in edge_routes] == ["demo"]
    service = find("Service")
    assert [(p["name"], p["port"]) for p in service["spec"]["ports"]] == [("http", 80), ("cadence-web", 8088)]
    ingress = find("NetworkPolicy", name="envoy")["spec"]["ingress"][0]
    assert [p["port"] for p in ingress["ports"]] == [8080, 8088]


def test_a_service_port_taken_by_a_route_listener_fails() -> None:
    with pytest.raises(ConfigError, match="envoy.service_port = 8088: the edge Service already uses this port"):
        EnvoyProps(service_port=8088).route_specs(("base", "demo", "cadence"))
