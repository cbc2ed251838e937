"""Node shapes of the local control plane, and the versions its binaries are built at."""

from __future__ import annotations

import dataclasses

import pytest

from final_problem import versions
from final_problem.local.kube import ec2_instance, eks_kube_reserved, memory_mib, module_versions, node_shapes
from tests.conftest import full_settings


def test_binaries_are_built_at_the_clusters_kubernetes_minor() -> None:
    built = module_versions()
    assert built["kubernetes"].rsplit(".", 1)[0] == versions.KUBERNETES_VERSION
    assert built["etcd"] == "3.6.8"  # build/dependencies.yaml of Kubernetes 1.36.5


def test_eks_reservations_follow_the_eks_ami_formula() -> None:
    # m7g.large: 2 vCPU, 29 pods -> 60m + 10m, 11 * 29 + 255 = 574 MiB.
    assert eks_kube_reserved(2, 29) == (70, 574)
    # 8 vCPU: 60 + 10 + 5 + 5 + 4 * 2.5 = 90m.
    assert eks_kube_reserved(8, 58) == (90, 893)


def test_eks_nodes_follow_the_settings() -> None:
    shapes = node_shapes(full_settings(), "eks")
    assert [s.name for s in shapes] == ["eks-node-1", "eks-node-2", "eks-node-3"]
    # m7g.xlarge: 4 vCPU, 16 GiB, 58 pods (EKS AMI figures, final_problem/local/kube.py).
    assert {(s.cpu_m, s.memory_mib, s.pods) for s in shapes} == {(3920, 14162, 58)}
    assert [s.labels["topology.kubernetes.io/zone"] for s in shapes] == ["zone-a", "zone-b", "zone-c"]
    assert {s.labels["kubernetes.io/arch"] for s in shapes} == {"arm64"}
    bigger = node_shapes(dataclasses.replace(full_settings(), node_instance_type="r7g.xlarge", node_desired=4, node_max=6), "eks")
    assert len(bigger) == 4 and bigger[3].labels["topology.kubernetes.io/zone"] == "zone-a"
    assert (bigger[0].cpu_m, bigger[0].pods) == (4000 - 80, 58)


def test_pi_nodes_are_three_pi4_k3s_servers_without_zones() -> None:
    shapes = node_shapes(full_settings(), "pi")
    assert len(shapes) == 3
    assert {(s.cpu_m, s.memory_mib, s.pods) for s in shapes} == {(3700, 2382, 110)}
    assert all("topology.kubernetes.io/zone" not in s.labels for s in shapes)


def test_unknown_instance_type_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="known are c/m/r"):
        ec2_instance("x2gd.large")


@pytest.mark.parametrize("quantity, mib", [("512Mi", 512), ("1Gi", 1024), ("1G", 954), ("2048Ki", 2), ("1048576", 1)])
def test_memory_quantities(quantity: str, mib: int) -> None:
    assert memory_mib(quantity) == mib
