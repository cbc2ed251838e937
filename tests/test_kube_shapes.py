"""Node shapes of the local control plane, and the versions its binaries are built at."""

from __future__ import annotations

import dataclasses

import pytest

from final_problem import capacity, versions
from final_problem.errors import ConfigError
from final_problem.local.kube import fake_nodes, memory_mib, module_versions
from tests.conftest import full_settings


def test_binaries_are_built_at_the_clusters_kubernetes_minor() -> None:
    built = module_versions()
    assert built["kubernetes"].rsplit(".", 1)[0] == versions.KUBERNETES_VERSION
    assert built["etcd"] == "3.6.8"  # build/dependencies.yaml of Kubernetes 1.36.5


def test_node_figures_are_the_capacity_checks(settings_and_profile: tuple[str, dict[str, object]]) -> None:
    profile, overrides = settings_and_profile
    settings = dataclasses.replace(full_settings(), **overrides)
    nodes = fake_nodes(settings, profile)
    checked = capacity.node_shapes(settings, profile)
    assert [(s.cpu_m, s.memory_mib, s.pods) for s in nodes] == [(n.cpu_m, n.memory_mib, n.max_pods) for n in checked]


@pytest.fixture(params=[("eks", {}), ("eks", {"node_instance_type": "m7i.large", "node_desired": 5, "node_max": 6}),
                        ("pi", {})], ids=["eks-default", "eks-m7i-large", "pi"])
def settings_and_profile(request: pytest.FixtureRequest) -> tuple[str, dict[str, object]]:
    return request.param


def test_eks_nodes_follow_the_settings() -> None:
    shapes = fake_nodes(full_settings(), "eks")
    assert [s.name for s in shapes] == ["eks-node-1", "eks-node-2", "eks-node-3"]
    # m7g.large (the default at size small): 2 vCPU, 8 GiB less 7.5% VM overhead, 29 pods; EKS AMI
    # reservations 70m and 11 * 29 + 255 = 574 MiB, eviction 100 MiB (final_problem/capacity.py).
    assert {(s.cpu_m, s.memory_mib, s.pods) for s in shapes} == {(1930, int(8192 * 0.925) - 574 - 100, 29)}
    assert [s.labels["topology.kubernetes.io/zone"] for s in shapes] == ["zone-a", "zone-b", "zone-c"]
    assert {s.labels["kubernetes.io/arch"] for s in shapes} == {"arm64"}
    assert {s.labels["node.kubernetes.io/instance-type"] for s in shapes} == {"m7g.large"}
    bigger = fake_nodes(dataclasses.replace(full_settings(), node_instance_type="r7g.xlarge", node_desired=4, node_max=6), "eks")
    assert len(bigger) == 4 and bigger[3].labels["topology.kubernetes.io/zone"] == "zone-a"
    assert (bigger[0].cpu_m, bigger[0].pods) == (4000 - 80, 58)
    x86 = fake_nodes(dataclasses.replace(full_settings(), node_instance_type="m7i.xlarge"), "eks")
    assert {s.labels["kubernetes.io/arch"] for s in x86} == {"amd64"}


def test_pi_nodes_are_three_pi4_k3s_servers_without_zones() -> None:
    shapes = fake_nodes(full_settings(), "pi")
    assert len(shapes) == 3
    # 4 cores less k3s (300m) and the OS (100m); 4096 MiB less k3s (1539), the OS (256) and
    # the eviction threshold (100): capacity.PI4_4GB.
    assert {(s.cpu_m, s.memory_mib, s.pods) for s in shapes} == {(3600, 2201, 110)}
    assert all("topology.kubernetes.io/zone" not in s.labels for s in shapes)
    # Labelled as Raspberry Pi OS's stock Pi 4 kernel (39-bit), the default target.
    assert {(s.labels["kubernetes.io/arch"], s.labels["final-problem.io/arm64-va-bits"]) for s in shapes} == {("arm64", "39")}
    full = fake_nodes(dataclasses.replace(full_settings(), pi_arm64_va_bits=48, pi_memory_gib=8), "pi")
    assert {(s.memory_mib, s.labels["final-problem.io/arm64-va-bits"]) for s in full} == {(8192 - 1539 - 256 - 100, "48")}


def test_unknown_instance_type_fails_like_the_capacity_check() -> None:
    with pytest.raises(ConfigError, match="not in the capacity table"):
        fake_nodes(dataclasses.replace(full_settings(), node_instance_type="x2gd.large"), "eks")


@pytest.mark.parametrize("quantity, mib", [("512Mi", 512), ("1Gi", 1024), ("1G", 954), ("2048Ki", 2), ("1048576", 1)])
def test_memory_quantities(quantity: str, mib: int) -> None:
    assert memory_mib(quantity) == mib


def test_both_request_counts_agree_on_every_rendered_pod() -> None:
    # capacity.pod_requests (synth's figure) and kube.pod_requests (what the tests sum over
    # bound pods) are written apart; on every pod template rendered they give the same.
    from final_problem.local.kube import pod_requests
    from tests.conftest import TARGETS, rendered

    checked = 0
    for target in TARGETS:
        for obj in (o for objs in rendered(target).values() for o in objs):
            template = (obj.get("spec") or {}).get("template")
            if template:
                assert pod_requests(template) == capacity.pod_requests(template["spec"]), obj["metadata"]["name"]
                checked += 1
    assert checked > 30
