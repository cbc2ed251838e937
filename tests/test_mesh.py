"""The mesh wired at synthesis: sidecars, registration, upstreams, intentions, and the
errors a bad declaration gives (unknown service, port clash, missing intention)."""

from __future__ import annotations

import json

import pytest

from final_problem import config
from final_problem.charts.envoy import EnvoyProps
from final_problem.errors import ConfigError
from final_problem.profiles import EKS
from final_problem.renderers.consul import (
    SIDECAR_PUBLIC_PORT,
    Intention,
    MeshService,
    Upstream,
    check_mesh,
    intention_entries,
    sidecar_registration,
)
from tests.conftest import CDK_JSON, rendered


def pod_of(component: str, kind: str, name: str) -> dict:
    obj = next(o for o in rendered("eks")[component] if o["kind"] == kind and o["metadata"]["name"] == name)
    return obj["spec"]["template"]


@pytest.mark.parametrize(("component", "kind", "name"), [("demo", "Deployment", "demo"), ("redis", "StatefulSet", "redis")])
def test_mesh_pods_get_native_sidecars(component: str, kind: str, name: str) -> None:
    pod = pod_of(component, kind, name)
    inits = pod["spec"]["initContainers"]
    assert [c["name"] for c in inits[:2]] == ["mesh-register", "consul-dataplane"]
    assert all(c["restartPolicy"] == "Always" for c in inits[:2])
    assert pod["metadata"]["labels"]["final-problem.io/mesh"] == "true"
    assert pod["spec"]["serviceAccountName"] == name
    # No transparent proxy: nothing needs NET_ADMIN or root.
    for c in inits:
        assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]} and c["securityContext"]["runAsNonRoot"]


def test_dataplane_logs_in_through_the_auth_method() -> None:
    dataplane = pod_of("demo", "Deployment", "demo")["spec"]["initContainers"][1]
    args = dataplane["args"]
    assert "-credential-type=login" in args and "-login-auth-method=kubernetes" in args
    assert "-tls-server-name=server.dc1.consul" in args and "-envoy-admin-bind-address=127.0.0.1" in args
    assert dataplane["readinessProbe"] != dataplane["livenessProbe"]


def test_demo_registers_its_upstream_on_localhost() -> None:
    register = pod_of("demo", "Deployment", "demo")["spec"]["initContainers"][0]
    spec = json.loads(next(e["value"] for e in register["env"] if e["name"] == "MESH_SPEC"))
    proxy = spec["sidecar_registration"]["Service"]["Proxy"]
    assert proxy["Mode"] == "direct"
    assert proxy["Upstreams"] == [{"DestinationName": "redis", "LocalBindAddress": "127.0.0.1", "LocalBindPort": 16379}]
    demo = pod_of("demo", "Deployment", "demo")["spec"]["containers"][0]
    assert {"name": "REDIS_UPSTREAM_PORT", "value": "16379"} in demo["env"]


def test_sidecar_registration_points_at_the_local_service() -> None:
    service = MeshService(name="a", port=8080, upstreams=(Upstream(service="b", local_port=15001),))
    doc = sidecar_registration(service, pod_name="a-0", pod_ip="10.0.0.5", namespace="ns")
    assert doc["Service"]["Kind"] == "connect-proxy" and doc["Service"]["Port"] == SIDECAR_PUBLIC_PORT
    assert doc["Service"]["Proxy"]["LocalServicePort"] == 8080 and doc["Service"]["Proxy"]["DestinationServiceID"] == "a-0-a"


def test_intentions_group_by_destination() -> None:
    entries = intention_entries([Intention(source="b", destination="c"), Intention(source="a", destination="c"),
                                 Intention(source="a", destination="d", action="deny")])
    assert entries == [
        {"Kind": "service-intentions", "Name": "c", "Sources": [{"Name": "a", "Action": "allow"}, {"Name": "b", "Action": "allow"}]},
        {"Kind": "service-intentions", "Name": "d", "Sources": [{"Name": "a", "Action": "deny"}]},
    ]


A = MeshService(name="a", port=8080, upstreams=(Upstream(service="b", local_port=15001),))
B = MeshService(name="b", port=9000)


def test_a_consistent_mesh_passes() -> None:
    check_mesh([A, B], [Intention(source="a", destination="b")])


def test_upstream_to_an_unknown_service_fails() -> None:
    with pytest.raises(ConfigError, match=r"mesh.a.upstreams = 'b': names a service that is not in the mesh"):
        check_mesh([A], [])


def test_intention_naming_an_unknown_service_fails() -> None:
    with pytest.raises(ConfigError, match=r"intention a->zz.destination = 'zz': names a service that is not in the mesh"):
        check_mesh([A, B], [Intention(source="a", destination="b"), Intention(source="a", destination="zz")])


def test_upstream_without_an_intention_fails() -> None:
    with pytest.raises(ConfigError, match="no intention allows a to call b"):
        check_mesh([A, B], [])


@pytest.mark.parametrize(
    ("service", "match"),
    [
        (lambda: MeshService(name="a", port=8080, upstreams=(Upstream(service="b", local_port=8080),)), "clashes with a's own port"),
        (lambda: MeshService(name="a", port=8080, upstreams=(Upstream(service="b", local_port=20000),)), "public listener"),
        (lambda: MeshService(name="a", port=8080, upstreams=(Upstream(service="b", local_port=15001),
                                                             Upstream(service="c", local_port=15001))), "the upstream to b"),
        (lambda: MeshService(name="a", port=19000), "Envoy admin"),
    ],
)
def test_port_clashes_fail(service, match: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match=match):
        service()


def test_mesh_without_consul_fails() -> None:
    from final_problem import manifests

    settings = config.from_mapping({**CDK_JSON, "components": ["base", "redis", "demo"]})
    with pytest.raises(ConfigError, match="requires component 'consul'"):
        manifests.render(settings, "eks")


def test_edge_route_to_an_undeployed_service_fails() -> None:
    props = EnvoyProps.for_profile(EKS, routes=("demo", "cadence"))
    with pytest.raises(ConfigError, match=r"envoy.routes = \('demo', 'cadence'\): routes to component 'cadence', which is not deployed"):
        props.route_specs(("base", "demo"))


def test_edge_route_to_a_component_without_a_route_fails() -> None:
    with pytest.raises(ConfigError, match="envoy.routes = .*'redis' has no route"):
        EnvoyProps.for_profile(EKS, routes=("redis",))


def test_edge_routes_only_to_enabled_components() -> None:
    props = EnvoyProps.for_profile(EKS)
    assert [r.name for r in props.route_specs(("base", "demo"))] == ["demo"]
    assert [r.name for r in props.route_specs(("base", "demo", "cadence"))] == ["demo", "cadence-web"]
    with pytest.raises(ConfigError, match="nothing to route to"):
        props.route_specs(("base",))
