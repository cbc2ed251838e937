"""Render profiles: the two places the same charts run.

A profile says what differs between targets — storage, sizing and how hard zone spread
is — never what the platform is: replica counts are the same in both. The one exception is
what a target's nodes cannot run at all: a profile whose arm64 kernels have too few virtual
address bits for a component leaves it out, and says so (``arm64_va_bits_setting``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal, Mapping

#: The fewest user virtual address bits of an arm64 kernel on which Envoy starts: its
#: tcmalloc maps memory at addresses up to 2^45 and aborts on kernels with 39 bits
#: (envoyproxy/envoy#15235 and #23339, raspberrypi/linux#4375); a Pi 5's 16K-page kernel
#: has 47 (raspberrypi/linux#6261), a kernel built with CONFIG_ARM64_VA_BITS_48 has 48.
ENVOY_MIN_ARM64_VA_BITS = 47
#: What first boot labels each Pi node with (pi/firstboot/firstboot.sh, fb_label_va_bits).
ARM64_VA_BITS_LABEL = "final-problem.io/arm64-va-bits"
#: The virtual address sizes an arm64 Linux kernel can be built with (CONFIG_ARM64_VA_BITS;
#: 47 is how first boot labels a 16K-page kernel, which has 47 bits).
ARM64_VA_BITS = (39, 47, 48, 52)
#: The sizes a profile's requests, limits and heaps come in (cluster setting ``size``):
#: ``small``, set from measured use with a stated headroom (final_problem/sizes.py), and
#: ``production``, room to grow for a loaded platform. The first is every profile's own.
SIZES = ("small", "production")


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
    #: The cluster setting that says how many virtual address bits the nodes' arm64 kernels
    #: have; components that need more are left out of this profile
    #: (:func:`final_problem.components.profile_components`). None: every kernel is enough
    #: (EKS's AL2023 arm64 AMIs have 48 bits).
    arm64_va_bits_setting: str | None = None
    #: The sizes this profile comes in (:data:`SIZES`), its own first; ``size`` is the one
    #: these values are for.
    sizes: tuple[str, ...] = ("small",)
    size: str = "small"
    #: Where backups go unless a component names its own target
    #: (:mod:`final_problem.constructs.backup_target`): ``bucket``, the cluster stack's S3 bucket
    #: through EKS Pod Identity, or ``in-cluster``, the S3-compatible server the base chart runs.
    backup_target: Literal["bucket", "in-cluster"] = "in-cluster"
    #: The ``bucket`` target: its name, regional endpoint and region. The cluster stack passes
    #: its bucket's (CloudFormation values, resolved at deploy); rendered without the stack
    #: they are placeholders that say where the value comes from.
    backup_bucket: str = "<BackupBucket output of the cluster stack>"
    backup_endpoint: str = "https://s3.<region>.amazonaws.com"
    backup_region: str = "<region>"

    def with_backup_bucket(self, *, bucket: str, endpoint: str, region: str) -> "Profile":
        """This profile writing its backups to ``bucket`` (the cluster stack's)."""
        return replace(self, backup_bucket=bucket, backup_endpoint=endpoint, backup_region=region)

    def sized(self, size: str) -> "Profile":
        """This profile at ``size``, or as it is when it has no such size (a Pi board has no
        room for a production size: its sizes are the boards')."""
        return replace(self, size=size) if size in self.sizes else self


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
    sizes=SIZES,
    backup_target="bucket",
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
    envoy_node_labels={ARM64_VA_BITS_LABEL: tuple(str(b) for b in ARM64_VA_BITS if b >= ENVOY_MIN_ARM64_VA_BITS)},
    arm64_va_bits_setting="pi_arm64_va_bits",
)

PROFILES: Mapping[str, Profile] = {p.name: p for p in (EKS, PI)}
