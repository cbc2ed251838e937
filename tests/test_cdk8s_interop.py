"""An extension built with cdk8s-plus-27's ``k8s`` module through ``final_problem.api``.

Its structs and constructs mix with the building blocks and the project's typed objects in
either direction, and the component synthesizes; an extension that hands the building
blocks' values to cdk8s-plus-27's constructs, unchanged since the building blocks returned
cdk8s-plus-27's kinds, keeps working (the project's ``ResourceRequirements`` was refused by
``cdk8s_plus_27.k8s.Container`` with a TypeError).
"""

from __future__ import annotations

from typing import Any

import cdk8s
import cdk8s_plus_27 as kplus
import pytest
from cdk8s_plus_27 import k8s as plus_k8s

from final_problem import api, components, policy

IMAGE = "docker.io/library/nginx:1.29.3"
SIZING = api.Sizing(cpu_request_m=100, cpu_limit_m=500, memory_request_mib=64, memory_limit_mib=128)


def plus_component(kinds: dict[str, Any]) -> type[api.PlatformChart]:
    """A component whose workload is cdk8s-plus-27 ``k8s`` constructs and structs, built with
    the building blocks of final_problem.api, beside the project's own typed objects."""

    class PlusChart(api.PlatformChart):
        component = "plus"
        construct_id = "Plus"
        version = "1.29.3"
        requires = ("base",)
        images = (IMAGE,)

        def __init__(self, scope, id, *, settings, profile, dependencies) -> None:
            super().__init__(scope, id, settings=settings, profile=profile, dependencies=dependencies)
            ns = api.RestrictedNamespace(self, "Namespace", name="plus", labels=api.ZOOKEEPER_CLIENT_LABEL)
            labels = {**self.label_set.chart_labels(), **self.label_set.selector("server")}
            self.deployment = plus_k8s.KubeDeployment(
                self, "Deployment",
                metadata=plus_k8s.ObjectMeta(name="plus", namespace="plus"),
                spec=plus_k8s.DeploymentSpec(
                    replicas=1,
                    selector=plus_k8s.LabelSelector(match_labels=self.label_set.selector("server")),
                    template=plus_k8s.PodTemplateSpec(
                        metadata=plus_k8s.ObjectMeta(labels=labels),
                        spec=plus_k8s.PodSpec(
                            security_context=api.pod_context(uid=101, **kinds),
                            containers=[plus_k8s.Container(
                                name="nginx", image=IMAGE,
                                resources=api.raw_resources(SIZING, **kinds),
                                security_context=api.container_context(uid=101, **kinds),
                                env=[api.secret_env("ADMIN_PASSWORD", "plus-auth", "password", **kinds)],
                                ports=[plus_k8s.ContainerPort(container_port=8080)],
                            )],
                        ),
                    ),
                ),
            )
            api.set_component(self.deployment, "server")
            # The project's typed API taking cdk8s-plus-27's structs and values.
            self.allow = api.k8s.KubeNetworkPolicy(
                ns, "AllowHttp",
                metadata=api.k8s.ObjectMeta(name="plus-http", namespace="plus"),
                spec=api.k8s.NetworkPolicySpec(
                    pod_selector=plus_k8s.LabelSelector(match_labels=self.label_set.selector("server")),
                    policy_types=["Ingress"],
                    ingress=[api.k8s.NetworkPolicyIngressRule(ports=api.ports(8080, **kinds))],
                ),
            )
            self.config = kplus.ConfigMap(self, "Config", metadata=cdk8s.ApiObjectMetadata(namespace="plus"),
                                          data={"a": "b"})

    return PlusChart


def synthesized(registry: dict, kinds: dict[str, Any]) -> list[dict]:
    api.register(plus_component(kinds))
    charts = components.build_charts(cdk8s.App(), api.Settings(components=("base", "plus")), api.PI)
    return list(charts["plus"].to_json())


#: The building blocks called as an extension written before the project had its own typed
#: API calls them (no ``api=``: they return cdk8s-plus-27's kinds, as they did then), and
#: with ``api=`` naming cdk8s-plus-27's module.
@pytest.mark.parametrize("kinds", [{}, {"api": plus_k8s}], ids=["unchanged extension", "api=plus k8s"])
def test_a_component_of_cdk8s_plus_structs_synthesizes_with_the_building_blocks(registry: dict, kinds: dict[str, Any]) -> None:
    objects = synthesized(registry, kinds)
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"] == {
        "requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"cpu": "500m", "memory": "128Mi"},
    }
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}, "privileged": False,
        "readOnlyRootFilesystem": True, "runAsGroup": 101, "runAsNonRoot": True, "runAsUser": 101,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert container["env"] == [
        {"name": "ADMIN_PASSWORD", "valueFrom": {"secretKeyRef": {"key": "password", "name": "plus-auth"}}},
    ]
    assert pod["securityContext"]["runAsUser"] == 101 and pod["securityContext"]["fsGroup"] == 101
    assert deployment["metadata"]["labels"]["app.kubernetes.io/component"] == "server"
    policy_ = next(o for o in objects if o["kind"] == "NetworkPolicy" and o["metadata"]["name"] == "plus-http")
    assert policy_["spec"]["ingress"] == [{"ports": [{"port": 8080, "protocol": "TCP"}]}]
    assert policy_["spec"]["podSelector"] == {"matchLabels": deployment["spec"]["selector"]["matchLabels"]}
    namespace = next(o for o in objects if o["kind"] == "Namespace")
    assert namespace["metadata"]["labels"]["final-problem.io/zookeeper-client"] == "true"
    assert any(o["kind"] == "ConfigMap" for o in objects)
    # The cdk8s-plus workload passes the same checks as the platform's own.
    workload = [deployment, *(o for o in objects if o["kind"] in ("Namespace", "NetworkPolicy"))]
    for name in ("restricted", "resources", "images", "no_secret_values", "network_policies"):
        assert policy.CHECKS[name](workload) == [], name


def test_values_convert_both_ways() -> None:
    ours = api.raw_resources(SIZING, api=api.k8s)
    theirs = api.to_cdk8s(ours, plus_k8s)
    assert isinstance(theirs, plus_k8s.ResourceRequirements)
    assert isinstance(theirs.limits["cpu"], plus_k8s.Quantity) and theirs.limits["cpu"].value == "500m"
    assert api.from_cdk8s(theirs) == ours
    port = api.to_cdk8s(api.int_or_string(8080), plus_k8s)
    assert isinstance(port, plus_k8s.IntOrString) and api.from_cdk8s(port) == api.int_or_string(8080)


def test_the_building_blocks_return_cdk8s_plus_kinds_unless_told_otherwise() -> None:
    assert isinstance(api.raw_resources(SIZING), plus_k8s.ResourceRequirements)
    assert isinstance(api.ports(80)[0], plus_k8s.NetworkPolicyPort)
    assert isinstance(api.raw_resources(SIZING, api=api.k8s), api.k8s.ResourceRequirements)
    assert isinstance(api.ports(80, api=api.k8s)[0], api.k8s.NetworkPolicyPort)
