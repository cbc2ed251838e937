"""Typed settings of the platform, read from ``cdk.json`` context.

Every key can be overridden on the command line: ``make synth CDK_ARGS="-c nat_gateways=3"``
or ``cdk synth -c nat_gateways=3``. Values from ``-c`` arrive as strings; values in
``cdk.json`` may be JSON numbers, booleans and lists. Both are accepted.

Each default is written once, here, and documented in the README's settings table.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from final_problem import versions
from final_problem.errors import ConfigError

# EKS cluster names: 1-100 characters, start with a letter or digit, then letters,
# digits, hyphens and underscores. Source: EKS API reference, CreateCluster "name".
_CLUSTER_NAME = re.compile(r"^[0-9A-Za-z][A-Za-z0-9_-]{0,99}$")
_ACCOUNT = re.compile(r"^\d{12}$")
_REGION = re.compile(r"^[a-z]{2}(-gov|-iso[a-z]*)?-[a-z]+-\d$")
_ROLE_ARN = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]{1,512}$")
# EC2 instance types are FAMILY.SIZE; Graviton families carry a "g" right after the
# generation digit (m7g, c7gn, r8g, t4g). Source: EC2 docs, "Instance type naming".
_INSTANCE_TYPE = re.compile(r"^(?P<family>[a-z]+\d+[a-z-]*)\.(?P<size>[a-z0-9]+)$")
_GRAVITON_FAMILY = re.compile(r"^[a-z]+\d+g[a-z]*$")
# The only retention periods CloudWatch Logs accepts (PutRetentionPolicy API reference).
LOG_RETENTION_DAYS = (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653)


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything a user can choose about the platform.

    Validation runs in ``__post_init__``: a bad value raises :class:`ConfigError` naming
    the setting, the value and the fix, before any resource is created.
    """

    #: EKS cluster name, also the prefix of the stack names. Default: ``final-problem``.
    cluster_name: str = "final-problem"
    #: Kubernetes minor version. Default: :data:`versions.KUBERNETES_VERSION`.
    kubernetes_version: str = versions.KUBERNETES_VERSION
    #: AWS account and region. Default: none, an environment-agnostic synth
    #: (CDK then places the VPC in 2 AZs, the most it can without a lookup).
    account: str | None = None
    region: str | None = None
    #: VPC CIDR. Default ``10.0.0.0/16``: the VPC CNI gives every pod a VPC address,
    #: so the private subnets are /19s (8,190 addresses each).
    vpc_cidr: str = "10.0.0.0/16"
    #: Availability zones used by the VPC when account and region are known. Default 3:
    #: a quorum of 3 survives the loss of one zone only when spread over 3 zones.
    az_count: int = 3
    #: NAT gateways. Default 1 (cost); set it to az_count so one zone's outage does not
    #: cut the others' egress.
    nat_gateways: int = 1
    #: Days the VPC flow logs are kept. Default 90.
    flow_log_retention_days: int = 90
    #: Node instance type. Default ``m7g.large`` (Graviton3, arm64, 2 vCPU / 8 GiB), the
    #: same architecture as a Raspberry Pi 4/5.
    node_instance_type: str = "m7g.large"
    #: Managed node group size. Default 3/3/6: three nodes carry one member of each
    #: quorum set apiece (required hostname anti-affinity).
    node_min: int = 3
    node_desired: int = 3
    node_max: int = 6
    #: CIDRs allowed to reach the public API endpoint. Default: none, so the endpoint is
    #: private only. Give e.g. ``203.0.113.7/32`` to reach it from a workstation.
    endpoint_public_cidrs: tuple[str, ...] = ()
    #: Keep the private API endpoint on (nodes talk to the API inside the VPC). Default true.
    endpoint_private_access: bool = True
    #: IAM role granted cluster-admin through an EKS access entry. Default: none.
    admin_role_arn: str | None = None
    #: Components to render, in any order; dependencies must be listed too.
    #: Default: the base chart alone.
    components: tuple[str, ...] = ("base",)
    #: Render profiles written to dist/<profile>. Default: both.
    profiles: tuple[str, ...] = ("eks", "pi")
    #: Redis (final_problem/charts/redis.py). Unset means the default of
    #: :class:`~final_problem.charts.redis.RedisProps` for the profile, where each is
    #: documented and validated.
    redis_replicas: int | None = None
    redis_sentinels: int | None = None
    redis_quorum: int | None = None
    redis_down_after_ms: int | None = None
    redis_failover_timeout_ms: int | None = None
    redis_maxmemory_mib: int | None = None
    redis_maxmemory_policy: str | None = None
    redis_storage_gib: int | None = None
    #: ZooKeeper (final_problem/charts/zookeeper.py). Unset means the default of
    #: :class:`~final_problem.charts.zookeeper.ZooKeeperProps` for the profile, where
    #: each is documented and validated. Memory is the container limit in MiB.
    zookeeper_replicas: int | None = None
    zookeeper_memory_mib: int | None = None
    zookeeper_heap_mib: int | None = None
    zookeeper_storage_gib: int | None = None
    zookeeper_client_port: int | None = None
    zookeeper_quorum_port: int | None = None
    zookeeper_election_port: int | None = None
    zookeeper_metrics_port: int | None = None
    zookeeper_tick_time_ms: int | None = None
    zookeeper_init_limit: int | None = None
    zookeeper_sync_limit: int | None = None
    #: Hosts of a bare-metal ensemble (Raspberry Pis without Kubernetes), member 1 first;
    #: empty when ZooKeeper runs in the cluster. When given, one per replica.
    zookeeper_hosts: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check(self)

    @property
    def is_graviton(self) -> bool:
        family = _INSTANCE_TYPE.match(self.node_instance_type)
        return bool(family and _GRAVITON_FAMILY.match(family.group("family")))


def _check(s: Settings) -> None:
    if not _CLUSTER_NAME.match(s.cluster_name):
        raise ConfigError(
            "cluster_name", s.cluster_name,
            "EKS cluster names are 1-100 letters, digits, '-' or '_', starting with a letter or digit",
            "choose a name such as 'final-problem'",
        )
    if s.kubernetes_version not in versions.SUPPORTED_KUBERNETES_VERSIONS:
        raise ConfigError(
            "kubernetes_version", s.kubernetes_version,
            f"supported versions are {', '.join(versions.SUPPORTED_KUBERNETES_VERSIONS)}",
            f"use one of them, e.g. {versions.KUBERNETES_VERSION!r}",
        )
    if s.account is not None and not _ACCOUNT.match(s.account):
        raise ConfigError("account", s.account, "an AWS account id is 12 digits", "give the 12-digit id or leave it unset")
    if s.region is not None and not _REGION.match(s.region):
        raise ConfigError("region", s.region, "not an AWS region name", "use a name such as 'eu-west-1'")
    try:
        net = ipaddress.IPv4Network(s.vpc_cidr)
    except ValueError as e:
        raise ConfigError("vpc_cidr", s.vpc_cidr, f"not an IPv4 network ({e})", "use e.g. '10.0.0.0/16'") from e
    if not 16 <= net.prefixlen <= 18:
        raise ConfigError(
            "vpc_cidr", s.vpc_cidr,
            "the prefix must be /16 to /18 so each zone gets a /19 or larger private subnet for pod addresses",
            "use a /16, e.g. '10.0.0.0/16'",
        )
    if not 2 <= s.az_count <= 3:
        # EKS requires subnets in at least two AZs (EKS user guide, "VPC and subnet
        # requirements"); /19 private subnets of a /16 fit at most 3 zones with room left.
        raise ConfigError("az_count", s.az_count, "must be 2 or 3 (EKS needs at least two zones)", "use 3 for zone-fault-tolerant quorums")
    if not 1 <= s.nat_gateways <= s.az_count:
        raise ConfigError(
            "nat_gateways", s.nat_gateways,
            f"must be between 1 and az_count ({s.az_count}): nodes in private subnets pull images through NAT",
            "use 1 to save cost or az_count for zone-independent egress",
        )
    if s.flow_log_retention_days not in LOG_RETENTION_DAYS:
        raise ConfigError(
            "flow_log_retention_days", s.flow_log_retention_days,
            "CloudWatch Logs accepts only fixed retention periods",
            f"use one of {LOG_RETENTION_DAYS}",
        )
    if not _INSTANCE_TYPE.match(s.node_instance_type):
        raise ConfigError("node_instance_type", s.node_instance_type, "not an EC2 instance type", "use FAMILY.SIZE, e.g. 'm7g.large'")
    if s.node_min < 3:
        raise ConfigError(
            "node_min", s.node_min,
            "quorum sets of 3 require one node per member (required hostname anti-affinity)",
            "use at least 3",
        )
    if not s.node_min <= s.node_desired <= s.node_max:
        raise ConfigError(
            "node_desired", s.node_desired,
            f"must lie between node_min ({s.node_min}) and node_max ({s.node_max})",
            "set node_min <= node_desired <= node_max",
        )
    for cidr in s.endpoint_public_cidrs:
        try:
            ipaddress.IPv4Network(cidr)
        except ValueError as e:
            raise ConfigError("endpoint_public_cidrs", cidr, f"not an IPv4 CIDR ({e})", "use e.g. '203.0.113.7/32'") from e
    if not s.endpoint_public_cidrs and not s.endpoint_private_access:
        raise ConfigError(
            "endpoint_private_access", s.endpoint_private_access,
            "with no endpoint_public_cidrs the API server would be reachable from nowhere",
            "keep endpoint_private_access=true or give endpoint_public_cidrs",
        )
    if s.admin_role_arn is not None and not _ROLE_ARN.match(s.admin_role_arn):
        raise ConfigError(
            "admin_role_arn", s.admin_role_arn, "not an IAM role ARN",
            "use arn:aws:iam::123456789012:role/NAME, or leave it unset",
        )
    if not s.components:
        raise ConfigError("components", s.components, "no component enabled", "enable at least 'base'")
    if len(set(s.components)) != len(s.components):
        raise ConfigError("components", s.components, "a component is listed twice", "list each component once")
    for p in s.profiles:
        if p not in ("eks", "pi"):
            raise ConfigError("profiles", s.profiles, f"unknown render profile {p!r}", "use 'eks', 'pi' or both")


def _as_bool(key: str, v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.lower() in ("true", "false"):
        return v.lower() == "true"
    raise ConfigError(key, v, "not a boolean", f"use -c {key}=true or -c {key}=false")


def _as_int(key: str, v: Any) -> int:
    if isinstance(v, bool):
        raise ConfigError(key, v, "not a whole number", f"use e.g. -c {key}=3")
    if isinstance(v, int):
        return v
    if isinstance(v, str) and re.fullmatch(r"-?\d+", v.strip()):
        return int(v)
    raise ConfigError(key, v, "not a whole number", f"use e.g. -c {key}=3")


def _as_tuple(key: str, v: Any) -> tuple[str, ...]:
    if isinstance(v, (list, tuple)):
        return tuple(str(x).strip() for x in v)
    if isinstance(v, str):
        return tuple(x.strip() for x in v.split(",") if x.strip())
    raise ConfigError(key, v, "not a list", f"use a comma-separated list, e.g. -c {key}=a,b")


def _as_opt_int(key: str, v: Any) -> int | None:
    if v is None or v == "":
        return None
    return _as_int(key, v)


def _as_opt_str(key: str, v: Any) -> str | None:
    if v is None or v == "":
        return None
    if isinstance(v, str):
        return v
    raise ConfigError(key, v, "not a string", f"use -c {key}=VALUE")


def _as_str(key: str, v: Any) -> str:
    if isinstance(v, str):
        return v
    raise ConfigError(key, v, "not a string", f"use -c {key}=VALUE")


_PARSERS: dict[str, Callable[[str, Any], Any]] = {}
for _f in dataclasses.fields(Settings):
    _t = str(_f.type)
    _PARSERS[_f.name] = (
        _as_bool if _t == "bool"
        else _as_int if _t == "int"
        else _as_tuple if _t.startswith("tuple")
        else _as_opt_int if _t == "int | None"
        else _as_opt_str if _t.endswith("None")
        else _as_str
    )


def from_context(get: Callable[[str], Any]) -> Settings:
    """Build settings from a context getter such as ``app.node.try_get_context``.

    Only keys that are set are passed on, so every default stays in :class:`Settings`.
    """
    return from_mapping({k: v for k in _PARSERS if (v := get(k)) is not None})


def from_mapping(values: Mapping[str, Any]) -> Settings:
    """Build settings from a mapping of raw (string or JSON) values."""
    return Settings(**{k: _PARSERS[k](k, v) for k, v in values.items() if k in _PARSERS})


def setting_names() -> tuple[str, ...]:
    return tuple(_PARSERS)


__all__ = ["Settings", "from_context", "from_mapping", "setting_names"]
