"""Render profiles: the two places the same charts run.

A profile says what differs between targets — storage, sizing and how hard zone spread
is — never what the platform is: replica counts are the same in both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Mapping


@dataclass(frozen=True, kw_only=True)
class Profile:
    """Where a chart is rendered for."""

    name: str
    #: StorageClass every volume claim uses; the base chart creates it.
    storage_class: str
    storage_provisioner: str
    storage_parameters: Mapping[str, str] = field(default_factory=dict)
    #: Whether the base chart marks its StorageClass as the cluster default.
    storage_default: bool
    #: ``DoNotSchedule`` needs a ``topology.kubernetes.io/zone`` label on every node:
    #: EKS sets it, k3s does not (nodes without the key are filtered out under
    #: DoNotSchedule; Kubernetes docs, "Pod Topology Spread Constraints").
    zone_spread: Literal["DoNotSchedule", "ScheduleAnyway"]
    #: Raspberry Pi sizing (4-8 GiB boards shared by every component).
    small: bool
    #: Node labels an Envoy pod (the edge proxy) requires, label -> accepted values.
    #: On a Pi, Envoy aborts on kernels with fewer than 47-bit virtual addresses
    #: (pi/README.md); first boot labels each node with its kernel's.
    envoy_node_labels: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


EKS = Profile(
    name="eks",
    storage_class="gp3-encrypted",
    # EBS CSI driver StorageClass parameters: type, encrypted, fstype.
    # Source: kubernetes-sigs/aws-ebs-csi-driver docs/parameters.md.
    storage_provisioner="ebs.csi.aws.com",
    storage_parameters={"type": "gp3", "encrypted": "true", "csi.storage.k8s.io/fstype": "ext4"},
    storage_default=True,
    zone_spread="DoNotSchedule",
    small=False,
)

PI = Profile(
    name="pi",
    storage_class="local-path-retain",
    # k3s ships the local-path provisioner as its default StorageClass, with
    # reclaimPolicy Delete (k3s docs, "Volumes and Storage"); ours keeps released data.
    storage_provisioner="rancher.io/local-path",
    storage_default=False,
    zone_spread="ScheduleAnyway",
    small=True,
    envoy_node_labels={"final-problem.io/arm64-va-bits": ("47", "48", "52")},
)

PROFILES: Mapping[str, Profile] = {p.name: p for p in (EKS, PI)}
