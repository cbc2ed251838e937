"""Cluster-level settings of the platform, read from ``cdk.json`` context.

Every key can be overridden on the command line: ``make synth CDK_ARGS="-c nat_gateways=3"``
or ``cdk synth -c nat_gateways=3``. Values from ``-c`` arrive as strings; values in
``cdk.json`` may be JSON numbers, booleans and lists. Both are accepted.

Components own their settings (:mod:`final_problem.settings`): each reads its own section,
``"zookeeper": {"replicas": 5}`` in cdk.json or ``-c zookeeper.replicas=5``. This module
knows none of them; it keeps the raw sections and hands each component its own.

Each default is written once, here, and the README's table is generated from it.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from final_problem import versions
from final_problem.errors import ConfigError
from final_problem.profiles import ARM64_VA_BITS, PROFILES, SIZES, Profile
from final_problem.changes import kubernetes_version_change, nothing, procedure, refused, rolling, volume_size
from final_problem.settings import (
    ComponentSettings, SettingInfo, _check_value, _infos, how_to_set, parse_value, setting, unknown_key,
)

# CloudFormation stack names: letters, digits and hyphens, starting with a letter, at most
# 128 characters (CloudFormation API reference, CreateStack "StackName"). EKS also allows
# '_' (CreateCluster "name"), but the cluster name prefixes the stack names.
_CLUSTER_NAME = re.compile(r"[A-Za-z][A-Za-z0-9-]{0,99}")
_ACCOUNT = re.compile(r"[0-9]{12}")
# S3 general purpose bucket names: 3-63 characters, lowercase letters, digits, '.' and '-',
# beginning and ending with a letter or digit (Amazon S3 user guide, "Bucket naming rules").
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_REGION = re.compile(r"[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-[0-9]")
# IAM role names: ASCII letters, digits and +=,.@_- (IAM user guide, "IAM object names").
_ROLE_ARN = re.compile(r"arn:aws(-cn|-us-gov)?:iam::[0-9]{12}:role/([A-Za-z0-9+=,.@_-]+/)*[A-Za-z0-9+=,.@_-]{1,64}")
# EC2 instance types are FAMILY.SIZE (EC2 docs, "Amazon EC2 instance type naming
# conventions"): a series letter(s), a generation digit, options (g = Graviton, d, n, ...).
_INSTANCE_TYPE = re.compile(r"(?P<family>[a-z]+[0-9]+[a-z-]*)\.(?P<size>[a-z0-9-]+)")
_SIZES = ("nano", "micro", "small", "medium", "large", "xlarge", "metal")
_SIZE = re.compile(r"nano|micro|small|medium|large|xlarge|[0-9]{1,2}xlarge|metal|metal-[0-9]{1,2}xl")
# Graviton families carry "g" right after the generation digit (m7g, c7gn, r8g, t4g);
# a1 is Graviton 1 (EC2 docs, "Instance type naming conventions").
_GRAVITON_FAMILY = re.compile(r"[a-z]+[0-9]+g[a-z]*|a1")
# The only retention periods CloudWatch Logs accepts (PutRetentionPolicy API reference).
LOG_RETENTION_DAYS = (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653)
#: The node type when none is set, per size: three of it carry every bundled component at
#: that size within 80% of allocatable CPU and memory (README, "Capacity";
#: tests/test_capacity.py), and m7g is the cheapest Graviton family that does not throttle
#: (final_problem/prices.py).
NODE_TYPE_BY_SIZE = {"small": "m7g.large", "production": "m7g.xlarge"}
# EKS quota "Nodes per managed node group": 450 (EKS user guide, "Amazon EKS service quotas").
MAX_NODES_PER_NODEGROUP = 450
#: Context keys the CDK CLI or toolkit reads itself, besides those with a ":" or "@"
#: (feature flags, aws:cdk:*, lookups cached in cdk.context.json).
CDK_KEYS = frozenset({"cli-telemetry", "acknowledged-issue-numbers", "dist_dir"})


# Change rules shared by the settings that place the cluster (final_problem/changes.py).
_NEW_CLUSTER = "a deploy with another value creates a second, empty cluster and leaves this one, with its volumes, behind"
_KEEP_OR_REBUILD = "keep {name}={old}, or deploy the new cluster deliberately with ALLOW_REBUILD=1 and move the data"


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything a user can choose about the cluster; components keep their own.

    Validation runs in ``__post_init__``: a bad value raises :class:`ConfigError` naming
    the setting, the value and the fix, before any resource is created.
    """

    cluster_name: str = setting(
        "final-problem",
        doc="EKS cluster name; stacks are `<name>-network` and `<name>-cluster`. Letters, digits and '-', "
            "starting with a letter (it prefixes CloudFormation stack names).",
        change=refused(f"names the EKS cluster and both stacks: {_NEW_CLUSTER}", _KEEP_OR_REBUILD),
    )
    kubernetes_version: str = setting(
        versions.KUBERNETES_VERSION,
        doc=f"Kubernetes minor version, {versions.SUPPORTED_KUBERNETES_VERSIONS[0]} to "
            f"{versions.SUPPORTED_KUBERNETES_VERSIONS[-1]}; the default is the newest both `aws_eks_v2` and a "
            "published kubectl layer package support (other versions need their "
            "`aws-cdk.lambda-layer-kubectl-vNN` package).",
        change=kubernetes_version_change,
    )
    account: str | None = setting(
        doc="AWS account id (12 digits). Unset gives an environment-agnostic synth (CDK then uses 2 AZs).",
        change=refused(f"the AWS account the stacks live in: {_NEW_CLUSTER}", _KEEP_OR_REBUILD),
    )
    region: str | None = setting(
        doc="AWS region, e.g. `eu-west-1`. With `account`, CDK looks the AZs up once (credentials needed) "
            "and caches them in `cdk.context.json`. The cost estimate uses its prices (unset: us-east-1's).",
        change=refused(f"the AWS region the stacks live in: {_NEW_CLUSTER}", _KEEP_OR_REBUILD),
    )
    vpc_cidr: str = setting(
        "10.0.0.0/16",
        doc="VPC range, /16 or /17: each zone gets a /24 public and a /19 private subnet, because the VPC CNI "
            "gives every pod a VPC address.",
        change=refused("the VPC's range cannot change: CloudFormation replaces the VPC, and the cluster, nodes and zonal volumes "
                        "with it", "keep {name}={old}"),
    )
    az_count: int = setting(
        3, choices=(2, 3),
        doc="Zones the VPC spans when the environment is known. A quorum of 3 survives a zone's loss only "
            "over 3 zones.",
        change=refused("the cluster's subnets cannot change: CloudFormation replaces the cluster, and volumes stay in zones "
                        "the new nodes may not have", "keep {name}={old}"),
    )
    nat_gateways: int = setting(
        1, minimum=1,
        doc="NAT gateways, 1..az_count; set it to az_count so one zone's outage does not cut the others' egress. "
            "Without account and region, at most 2 (CDK then makes 2 zones).",
        change=nothing("egress routes only"),
    )
    backup_version_days: int = setting(
        30, minimum=1, maximum=3650,
        doc="Days the backup bucket keeps an object version after it is replaced or deleted (its lifecycle "
            "rule): how long a backup deleted by retention, or by mistake, can still be recovered.",
        change=nothing("the bucket's lifecycle rule only"),
    )
    backups: bool = setting(
        True,
        doc="Back up every component that has backups (PostgreSQL: WAL archiving and base backups) to the "
            "profile's target: on EKS the cluster stack's bucket, on the Pis the S3-compatible server the base "
            "chart runs (versitygw); a component's own `backup_endpoint` names another. `false`: no backups, and "
            "no S3 server on the Pis.",
        change=rolling("the backing-up pods restart with or without their backup containers (PostgreSQL: the "
                       "one server, an outage until it is Ready); on the Pis the S3 server is added or removed, "
                       "its volume kept"),
    )
    backup_server_storage_gib: int = setting(
        16, minimum=1, maximum=16_384,
        doc="Volume of the Pis' S3 server: every component's base backups for their retention days, and the "
            "WAL between them.",
        change=volume_size("the S3 server's volume"),
    )
    restore_bucket: str = setting(
        "", example="final-problem-cluster-backupbucket1a2b3c4d-5e6f7g8h9i0j",
        doc="EKS: the backup bucket of an earlier deploy (its stack output `BackupBucket`; `make destroy` keeps the "
            "bucket and its KMS key) that the components' `restore_to` restores from. The backup role may then "
            "list it, read its objects and decrypt them through S3 with its key, nothing more; backups still go to "
            "the new stack's bucket. Empty: restores read this cluster's own bucket. The Pis restore from their "
            "S3 server's volume (or a component's `backup_endpoint`).",
        change=nothing("the backup role's read access to that bucket, and where a `restore` init container (a component "
                       "with restore_to) reads from: those pods restart (plan's pod lines) and restore only an empty "
                       "volume; no volume that holds data is changed"),
    )
    flow_log_retention_days: int = setting(
        90, choices=LOG_RETENTION_DAYS, doc="VPC flow log retention in days (a value CloudWatch Logs accepts).",
        change=nothing("the flow log group only"),
    )
    size: str = setting(
        SIZES[0], choices=SIZES,
        doc="Requests, limits, heaps and memory caps of the EKS profile's servers (final_problem/sizes.py): `small` "
            "is set from measured use with a stated headroom and fits 3 x m7g.large; `production` (the sizes "
            "before, 2-4 times the memory) fits 3 x m7g.xlarge and leaves room to grow. A component's own memory "
            "settings still win. The Pi profile has one size, its boards'. A change is a rolling restart of every "
            "sized workload (new requests, limits and heaps), and with the node type unset a replacement of the "
            "node group's nodes.",
        change=procedure("every sized workload rolls, and with node_instance_type unset the node group of the other "
                         "size's type replaces the old one, whose nodes are drained together",
                         "set node_instance_type to the type the nodes have now, deploy the new size (a rolling "
                         "restart), then change the type with a second node group (see node_instance_type)"),
    )
    node_instance_type: str | None = setting(
        default_doc="`m7g.large` (size production: `m7g.xlarge`)",
        doc="Node instance type. Graviton (arm64, like a Pi) by default; x86 types get the x86 AMI. "
            "Must be in the capacity table (README, \"Capacity\"). Unset: the smallest Graviton type on "
            "which three nodes carry every bundled component at `size` within 80%.",
        example="m7g.large",
        change=procedure("CloudFormation replaces the managed node group: the old nodes are drained together when it is "
                          "deleted, so every quorum restarts at once",
                          "add a node group of the new type beside the old, drain the old nodes one at a time (kubectl drain; the "
                          "disruption budgets hold), then deploy"),
    )
    node_min: int = setting(
        3, minimum=3, maximum=MAX_NODES_PER_NODEGROUP,
        doc="Smallest node group size: one node per quorum member (required hostname anti-affinity).",
        change=nothing("the node group's bounds; a scale-in drains nodes through the disruption budgets"),
    )
    node_desired: int = setting(
        3, minimum=3, maximum=MAX_NODES_PER_NODEGROUP, doc="Nodes started; between node_min and node_max.",
        change=nothing("the node group's size; a scale-in drains nodes through the disruption budgets"),
    )
    node_max: int = setting(
        6, minimum=3, maximum=MAX_NODES_PER_NODEGROUP, doc="Largest node group size (EKS allows 450).",
        change=nothing("the node group's bounds"),
    )
    endpoint_public_cidrs: tuple[str, ...] = setting(
        (), doc="IPv4 CIDRs allowed to the public API endpoint; empty means a private endpoint only. An address "
                "alone means that one address (/32). `0.0.0.0/0` needs endpoint_public_anywhere.",
        example=("203.0.113.7/32",),
        change=nothing("who reaches the API endpoint"),
    )
    endpoint_public_anywhere: bool = setting(
        False, doc="Allow `0.0.0.0/0` in endpoint_public_cidrs: the API endpoint open to the whole internet "
                   "(its authentication still applies).",
        change=nothing("who reaches the API endpoint"),
    )
    endpoint_private_access: bool = setting(
        True, doc="Keep the private API endpoint; false needs endpoint_public_cidrs.",
        change=nothing("who reaches the API endpoint"),
    )
    admin_role_arn: str | None = setting(
        doc="IAM role granted `AmazonEKSClusterAdminPolicy` through an access entry.",
        example="arn:aws:iam::123456789012:role/Admin",
        change=nothing("an access entry"),
    )
    components: tuple[str, ...] = setting(
        ("base",),
        doc="Components to render (cdk.json enables every bundled one); each one's requirements must be "
            "enabled too.",
        change=nothing("each component added or removed is judged on its own line"),
    )
    profiles: tuple[str, ...] = setting(
        ("eks", "pi"), doc="Which `dist/<profile>/` folders to write.",
        change=nothing("which dist/ folders synth writes"),
    )
    pi_memory_gib: int = setting(
        # Raspberry Pi 4 Model B comes with 1, 2, 4 or 8 GB, Pi 5 with 2, 4, 8 or 16 GB
        # (raspberrypi.com product pages); below 4 GB k3s and the platform do not fit.
        4, choices=(4, 8, 16),
        doc="Memory of each of the three Pi nodes (the capacity check's node shape; 4 cores each, Pi 4 or Pi 5).",
        change=nothing("the capacity check's node shape"),
    )
    pi_arm64_va_bits: int = setting(
        # Raspberry Pi OS's only Pi 4 kernel (kernel8.img) has 3-level page tables: 39 bits
        # (pi/README.md, "Envoy on a Raspberry Pi").
        39, choices=ARM64_VA_BITS,
        doc="User virtual address bits of the Pi nodes' kernels (first boot labels each node with it): 39 for "
            "Raspberry Pi OS's stock Pi 4 kernel, 47 for a Pi 5's default 16K-page kernel, 48 for a Pi 4 kernel "
            "built with CONFIG_ARM64_VA_BITS_48. Below 47 the pi profile leaves out what runs Envoy (its "
            "allocator aborts there): the edge Envoy, and Consul with the mesh and what needs it. Say 47 or 48 "
            "only when every Pi node has such a kernel.",
        change=nothing("which components the pi profile renders: each is judged on its own line"),
    )
    #: Raw values of each component's section, keys already checked; see :meth:`component`.
    sections: Mapping[str, Mapping[str, Any]] = field(default_factory=dict, compare=False, hash=False, repr=False)
    #: Where each given value came from, by setting name ("cdk.json", "-c").
    origins: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False, repr=False)
    _cache: dict = field(default_factory=dict, init=False, compare=False, hash=False, repr=False)

    def __post_init__(self) -> None:
        if self.node_instance_type is None and self.size in NODE_TYPE_BY_SIZE:
            object.__setattr__(self, "node_instance_type", NODE_TYPE_BY_SIZE[self.size])
        for info in cluster_infos():
            try:
                _check_value("", info, getattr(self, info.name), PROFILES["eks"])
            except ConfigError as e:
                self._origin(e)
                raise
        # A CIDR is kept in its network form, prefix and all (203.0.113.7 -> 203.0.113.7/32), as
        # EKS's publicAccessCidrs lists it; one that does not parse is left for _check to report.
        object.__setattr__(self, "endpoint_public_cidrs", tuple(_network(c) for c in self.endpoint_public_cidrs))
        try:
            _check(self)
        except ConfigError as e:
            self._origin(e)
            raise

    def _origin(self, e: ConfigError) -> ConfigError:
        origin = self.origins.get(e.setting)
        return e.add_origin(origin) if origin else e

    @property
    def is_graviton(self) -> bool:
        family = _INSTANCE_TYPE.fullmatch(self.node_instance_type)
        return bool(family and _GRAVITON_FAMILY.fullmatch(family.group("family")))

    def node_types_by_size(self) -> dict[str, str]:
        """The node type of each size: its own default (:data:`NODE_TYPE_BY_SIZE`) while the
        node type is this size's default (unset), else the one set, for every size."""
        assert self.node_instance_type is not None
        if self.node_instance_type != NODE_TYPE_BY_SIZE.get(self.size):
            return {size: self.node_instance_type for size in SIZES}
        return dict(NODE_TYPE_BY_SIZE)

    def component(self, settings_class: type[ComponentSettings], profile: Profile) -> ComponentSettings:
        """The settings of one component for ``profile``: its section's values over its defaults.

        A bad value raises :class:`ConfigError` naming ``<component>.<key>``, where the value
        came from, and the profile when the component's defaults differ by profile.
        """
        profile = profile.sized(self.size)
        key = (settings_class, profile.name, profile.size)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        values = self.sections.get(settings_class.section, {})
        try:
            result = settings_class.from_values(values, profile)
        except ConfigError as e:
            self._origin(e)
            raise
        self._cache[key] = result
        return result


def cluster_infos() -> tuple[SettingInfo, ...]:
    return _infos(Settings)


def _suggest_cluster_name(name: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9-]+", "-", name).strip("-")[:100] or "final-problem"
    return cleaned if _CLUSTER_NAME.fullmatch(cleaned) else f"fp-{cleaned}"[:100]


def _network(cidr: str) -> str:
    try:
        return str(ipaddress.IPv4Network(cidr.strip()))
    except ValueError:
        return cidr


#: Zones CDK gives a VPC in an environment-agnostic stack (no account and region): it
#: cannot look the region's zones up, so ``Stack.availability_zones`` is two tokens (aws-cdk-lib
#: ``Stack.availabilityZones``).
ENV_AGNOSTIC_ZONES = 2


def _check(s: Settings) -> None:
    if s.kubernetes_version not in versions.SUPPORTED_KUBERNETES_VERSIONS:
        raise ConfigError(
            "kubernetes_version", s.kubernetes_version,
            f"supported versions are {', '.join(versions.SUPPORTED_KUBERNETES_VERSIONS)}",
            how_to_set("kubernetes_version", versions.KUBERNETES_VERSION),
        )
    if not _CLUSTER_NAME.fullmatch(s.cluster_name):
        raise ConfigError(
            "cluster_name", s.cluster_name,
            "must be 1-100 ASCII letters, digits or '-', starting with a letter: it prefixes the "
            "CloudFormation stack names, which allow nothing else",
            how_to_set("cluster_name", _suggest_cluster_name(s.cluster_name)),
        )
    if s.restore_bucket and not _BUCKET.fullmatch(s.restore_bucket):
        raise ConfigError("restore_bucket", s.restore_bucket,
                          "not an S3 bucket name (3-63 lowercase letters, digits, '.' or '-', starting and ending "
                          "with a letter or digit)",
                          "give the BackupBucket output of the earlier cluster stack, e.g. "
                          "aws cloudformation describe-stacks --stack-name final-problem-cluster")
    if s.account is not None and not _ACCOUNT.fullmatch(s.account):
        raise ConfigError("account", s.account, "an AWS account id is 12 ASCII digits", "give the 12-digit id, or leave account unset")
    if s.region is not None and not _REGION.fullmatch(s.region):
        raise ConfigError("region", s.region, "not an AWS region name", how_to_set("region", "eu-west-1"))
    try:
        net = ipaddress.IPv4Network(s.vpc_cidr)
    except ValueError as e:
        raise ConfigError("vpc_cidr", s.vpc_cidr, f"not an IPv4 network ({e})", how_to_set("vpc_cidr", "10.0.0.0/16")) from e
    if not 16 <= net.prefixlen <= 17:
        # A /18 (16,384 addresses) cannot hold two /19 private subnets plus two /24 public ones.
        raise ConfigError(
            "vpc_cidr", s.vpc_cidr,
            "the prefix must be /16 or /17: each zone needs a /19 private subnet (pod addresses) and a /24 public one",
            how_to_set("vpc_cidr", str(net.supernet(new_prefix=16)) if net.prefixlen > 17 else "10.0.0.0/16"),
        )
    zones = s.az_count if s.account is not None and s.region is not None else min(s.az_count, ENV_AGNOSTIC_ZONES)
    if not 1 <= s.nat_gateways <= s.az_count:
        raise ConfigError(
            "nat_gateways", s.nat_gateways,
            f"must be between 1 and az_count ({s.az_count}): nodes in private subnets pull images through NAT",
            f"set nat_gateways=1 to save cost, or nat_gateways={zones} for zone-independent egress",
        )
    if s.nat_gateways > zones:
        raise ConfigError(
            "nat_gateways", s.nat_gateways,
            f"without account and region the synth is environment-agnostic and CDK spreads the VPC over "
            f"{ENV_AGNOSTIC_ZONES} zones, so at most {ENV_AGNOSTIC_ZONES} NAT gateways are made",
            f"set nat_gateways={ENV_AGNOSTIC_ZONES}, or set account and region (then az_count zones)",
        )
    match = _INSTANCE_TYPE.fullmatch(s.node_instance_type)
    if not match or not _SIZE.fullmatch(match.group("size")):
        from final_problem.capacity import close_instance_types

        family = match.group("family") if match else "m7g"
        size = match.group("size") if match else ""
        close = difflib.get_close_matches(size, _SIZES, n=1, cutoff=0.5)
        # The nearest spelling among the types that carry the platform (m7g.lage: m7g.xlarge).
        raise ConfigError(
            "node_instance_type", s.node_instance_type, "not an EC2 instance type (FAMILY.SIZE, e.g. m7g.xlarge)",
            how_to_set("node_instance_type", close_instance_types(f"{family}.{close[0] if close else 'xlarge'}", n=1)[0]),
        )
    if not s.node_min <= s.node_desired <= s.node_max:
        raise ConfigError(
            "node_desired", s.node_desired,
            f"must lie between node_min ({s.node_min}) and node_max ({s.node_max})",
            how_to_set("node_desired", min(max(s.node_desired, s.node_min), s.node_max))
            if s.node_min <= s.node_max else how_to_set("node_max", max(s.node_min, s.node_desired)),
        )
    for cidr in s.endpoint_public_cidrs:
        try:
            ipaddress.IPv4Network(cidr)
        except ValueError as e:
            raise ConfigError(
                "endpoint_public_cidrs", cidr, f"not an IPv4 CIDR ({e})",
                how_to_set("endpoint_public_cidrs", "203.0.113.7/32"),
            ) from e
        if ipaddress.IPv4Network(cidr).prefixlen == 0 and not s.endpoint_public_anywhere:
            raise ConfigError(
                "endpoint_public_cidrs", cidr, "opens the public API endpoint to the whole internet",
                "set endpoint_public_cidrs=203.0.113.7/32 with your own addresses, "
                "or set endpoint_public_anywhere=true to mean it",
            )
    if not s.endpoint_public_cidrs and not s.endpoint_private_access:
        raise ConfigError(
            "endpoint_private_access", s.endpoint_private_access,
            "with no endpoint_public_cidrs the API server would be reachable from nowhere",
            "set endpoint_private_access=true, or give endpoint_public_cidrs",
        )
    if s.admin_role_arn is not None and not _ROLE_ARN.fullmatch(s.admin_role_arn):
        raise ConfigError(
            "admin_role_arn", s.admin_role_arn, "not an IAM role ARN (ASCII, arn:aws:iam::ACCOUNT:role/NAME)",
            how_to_set("admin_role_arn", "arn:aws:iam::123456789012:role/Admin") + ", or leave it unset",
        )
    if not s.components:
        raise ConfigError("components", s.components, "no component enabled", "set components=base")
    if len(set(s.components)) != len(s.components):
        raise ConfigError("components", s.components, "a component is listed twice",
                          how_to_set("components", list(dict.fromkeys(s.components))))
    if not s.profiles:
        raise ConfigError("profiles", s.profiles, "no render profile", "set profiles=eks,pi")
    for p in s.profiles:
        if p not in PROFILES:
            raise ConfigError("profiles", s.profiles, f"unknown render profile {p!r}", "set profiles=eks,pi (or one of them)")


# --- reading context ------------------------------------------------------------------

def is_cdk_key(key: str) -> bool:
    """Context the CDK itself reads: feature flags, aws:cdk:*, cached lookups, CLI keys."""
    return ":" in key or key.startswith("@") or key in CDK_KEYS


def load(context: Mapping[str, Any], origins: Mapping[str, str] | None = None) -> Settings:
    """Settings from every context value: cluster keys, component sections, CDK's own keys.

    Any other key fails with a did-you-mean. ``origins`` says where each key came from.
    """
    from final_problem import components

    components.load_bundled()
    origins = dict(origins or {})
    infos = {i.name: i for i in cluster_infos()}
    sections_known = {name: cls.settings_class for name, cls in components.COMPONENTS.items()}
    known_keys = list(infos) + [
        f"{name}.{i.name}" for name, sc in sections_known.items() if sc is not None for i in sc.infos()
    ]
    cluster: dict[str, Any] = {}
    sections: dict[str, dict[str, Any]] = {}
    for key, raw in context.items():
        if is_cdk_key(key):
            continue
        origin = origins.get(key)
        try:
            if key in infos:
                cluster[key] = parse_value(key, infos[key], raw)
            elif key in sections_known and not isinstance(raw, Mapping):
                raise ConfigError(
                    key, raw, "a component's settings are an object of its keys",
                    f'write "{key}": {{"key": value}} in cdk.json, or -c {key}.key=value',
                )
            elif key in sections_known:
                for sub, value in raw.items():
                    _section_value(sections, sections_known, key, str(sub), value, known_keys)
                    origins.setdefault(f"{key}.{sub}", origin or "cdk.json")
            elif "." in key and key.split(".", 1)[0] in sections_known:
                section, sub = key.split(".", 1)
                _section_value(sections, sections_known, section, sub, raw, known_keys)
            else:
                raise unknown_key(key, raw, known_keys + list(sections_known))
        except ConfigError as e:
            if origin:
                e.add_origin(origin)
            raise
    # Section values named by a dotted key (-c) win over the section object (cdk.json).
    for key, raw in context.items():
        if "." in key and not is_cdk_key(key) and key.split(".", 1)[0] in sections_known:
            section, sub = key.split(".", 1)
            sections[section][sub] = raw
    return Settings(**cluster, sections=sections, origins=origins)


def _section_value(
    sections: dict[str, dict[str, Any]], known: Mapping[str, Any], section: str, sub: str, raw: Any, known_keys: list[str],
) -> None:
    settings_class = known[section]
    names = {i.name for i in settings_class.infos()} if settings_class is not None else set()
    if sub not in names:
        raise unknown_key(f"{section}.{sub}", raw, known_keys)
    sections.setdefault(section, {})[sub] = raw


class WrittenNumber(float):
    """A number of a context file beyond what a double holds (``1e400``), kept as written.

    The CDK CLI parses cdk.json with JavaScript's ``JSON.parse``, which makes it Infinity,
    and hands the app its context through ``JSON.stringify``, which writes Infinity as
    ``null``: the app would see no value at all. :func:`restore_written_numbers` puts it back,
    so the error names the number the user wrote."""

    text: str

    def __new__(cls, text: str) -> "WrittenNumber":
        number = super().__new__(cls, "inf" if not text.startswith("-") else "-inf")
        number.text = text
        return number

    def __repr__(self) -> str:
        return self.text

    __str__ = __repr__


def _number(text: str, parse: Callable[[str], Any]) -> Any:
    """``parse(text)``, or a :class:`WrittenNumber` when a double cannot hold it."""
    try:
        finite = math.isfinite(float(text))
    except OverflowError:  # an integer of hundreds of digits
        finite = False
    return parse(text) if finite else WrittenNumber(text)


def _context_files(project_dir: Path) -> list[tuple[str, Mapping[str, Any]]]:
    files: list[tuple[str, Mapping[str, Any]]] = []
    for name, path in (("cdk.json", project_dir / "cdk.json"), ("cdk.context.json", project_dir / "cdk.context.json")):
        try:
            data = json.loads(path.read_text(), parse_float=lambda t: _number(t, float), parse_int=lambda t: _number(t, int))
        except (OSError, ValueError):
            continue
        files.append((name, data.get("context", {}) if name == "cdk.json" else data))
    return files


def restore_written_numbers(context: Mapping[str, Any], project_dir: Path = Path(".")) -> dict[str, Any]:
    """``context`` with each ``null`` the CDK CLI made of a number too large for a double
    (see :class:`WrittenNumber`) replaced by that number as cdk.json or cdk.context.json has it."""
    def restore(value: Any, written: Any) -> Any:
        if value is None and isinstance(written, WrittenNumber):
            return written
        if isinstance(value, Mapping) and isinstance(written, Mapping):
            return {k: restore(v, written.get(k)) for k, v in value.items()}
        return value

    restored = dict(context)
    for key, value in context.items():
        written = next((ctx[key] for _, ctx in _context_files(project_dir) if key in ctx), None)
        restored[key] = restore(value, written)
    return restored


def context_origins(context: Mapping[str, Any], project_dir: Path = Path(".")) -> dict[str, str]:
    """Where each context key came from: ``cdk.json``, ``cdk.context.json`` or ``-c``.

    The CDK CLI merges the three before it starts the app; a key whose value equals the
    one in cdk.json (or cdk.context.json) came from there, any other from the command line.
    """
    files = _context_files(project_dir)
    origins: dict[str, str] = {}
    for key, value in context.items():
        origins[key] = next((name for name, ctx in files if key in ctx and ctx[key] == value), "-c")
    return origins


def from_context(get_all: Callable[[], Mapping[str, Any]], project_dir: Path = Path(".")) -> Settings:
    """Settings from a CDK app's context (``app.node.get_all_context``)."""
    context = restore_written_numbers(get_all(), project_dir)
    return load(context, context_origins(context, project_dir))


def from_mapping(values: Mapping[str, Any]) -> Settings:
    """Settings from a mapping of raw (string or JSON) values, e.g. a cdk.json context."""
    return load(values)


def setting_names() -> tuple[str, ...]:
    return tuple(i.name for i in cluster_infos())


def replace(settings: Settings, **changes: Any) -> Settings:
    """A copy of ``settings`` with ``changes`` (validated again)."""
    return dataclasses.replace(settings, **changes)


__all__ = ["Settings", "load", "from_context", "from_mapping", "setting_names", "context_origins", "is_cdk_key"]
