"""What the deployment costs each month, from the synthesized templates and manifests.

Everything is read from what ``cdk synth`` wrote (``cdk.out/``) or from an in-memory cloud
assembly, never from the settings: the resources in the CloudFormation templates, and
the Kubernetes objects the cluster stack applies (the manifests inside its templates).

Priced (list prices of :mod:`final_problem.prices`, 730 hours a month):

- the EKS control plane (standard support), per ``AWS::EKS::Cluster``;
- node group instances: desired size x instance type, and their root volumes (the node
  group's ``DiskSize``, default 20 GiB per the EKS CreateNodegroup API, on gp3 like the
  AL2023 EKS AMI's root volume: amazon-eks-ami templates/al2023/variables-default.json);
- NAT gateways (hours) and every public IPv4 address (Elastic IPs; an internet-facing
  load balancer's address in each public subnet);
- EBS volumes of every PersistentVolumeClaim (claim templates x replicas, and bare
  claims), by the volume type of their StorageClass (EBS CSI default: gp3);
- a Network Load Balancer for every Service of type LoadBalancer;
- KMS customer managed keys;
- CloudWatch Logs ingestion of the control-plane log types and the VPC flow logs.

Assumptions (``--help`` shows how to change them): :class:`Assumptions`. Not priced:
data transfer out of AWS, data processed by NAT (0 GB assumed), log storage, Lambda runs
of the kubectl provider (at deploy time only), snapshots.

Command line::

    python -m final_problem.cost [--cdk-out cdk.out] [--json] [--flow-log-gb 5] ...
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Mapping

from final_problem.capacity import close_instance_types, memory_mib
from final_problem.errors import ConfigError
from final_problem.prices import DEFAULT_REGION, HOURS_PER_MONTH, PRICES, RegionPrices
from final_problem.settings import how_to_set

#: EKS managed node groups' root volume when ``DiskSize`` is not set (CreateNodegroup API).
DEFAULT_DISK_GIB = 20
#: The EBS CSI driver's volume type when a StorageClass names none
#: (aws-ebs-csi-driver docs/parameters.md, "type": default gp3).
EBS_CSI_DEFAULT_TYPE = "gp3"
_EBS_PROVISIONERS = ("ebs.csi.aws.com", "kubernetes.io/aws-ebs")
_MANIFEST_RESOURCE = "Custom::AWSCDK-EKS-KubernetesResource"
_UNKNOWN_REGIONS = (None, "", "unknown-region")


@dataclass(frozen=True, kw_only=True)
class Assumptions:
    """Usage figures that no template states; each one is printed with the estimate."""

    #: GB a month each enabled control-plane log type sends to CloudWatch (a quiet
    #: three-node cluster; the audit log grows with API traffic).
    control_plane_log_gb: float = 1.0
    #: GB a month of VPC flow logs (all traffic of three nodes at low load).
    flow_log_gb: float = 5.0
    #: Load balancer capacity units each NLB uses on average (1 LCU = 800 new TCP
    #: connections/s, 100,000 active, or 1 GB/hour).
    nlb_lcu: float = 1.0

    def describe(self) -> list[str]:
        return [
            f"control-plane logs: {self.control_plane_log_gb:g} GB/month per enabled log type",
            f"VPC flow logs: {self.flow_log_gb:g} GB/month",
            f"load balancers: {self.nlb_lcu:g} LCU on average",
            "not priced: data transfer out, data processed by NAT gateways, log storage, snapshots",
        ]


@dataclass(frozen=True, kw_only=True)
class Line:
    """One priced item: ``quantity`` x ``unit_price`` (USD per ``unit``) = ``monthly``."""

    category: str
    item: str
    quantity: float
    unit: str
    unit_price: float

    @property
    def monthly(self) -> float:
        return self.quantity * self.unit_price


@dataclass(frozen=True, kw_only=True)
class Estimate:
    region: str
    #: Why this region (set in the stack environment, or the default).
    region_source: str
    prices_as_of: str
    lines: tuple[Line, ...]
    assumptions: Assumptions = field(default_factory=Assumptions)

    @property
    def total(self) -> float:
        return sum(line.monthly for line in self.lines)

    def by_category(self) -> dict[str, float]:
        totals: dict[str, float] = {}
        for line in self.lines:
            totals[line.category] = totals.get(line.category, 0.0) + line.monthly
        return dict(sorted(totals.items(), key=lambda item: -item[1]))

    def to_json(self) -> dict[str, Any]:
        return {
            "region": self.region,
            "region_source": self.region_source,
            "prices_as_of": self.prices_as_of,
            "currency": "USD",
            "hours_per_month": HOURS_PER_MONTH,
            "total_monthly": round(self.total, 2),
            "lines": [{**asdict(line), "monthly": round(line.monthly, 4)} for line in self.lines],
            "assumptions": asdict(self.assumptions),
        }

    def on_nodes(self, instance_type: str) -> "Estimate":
        """This estimate with the node group's instances of ``instance_type`` instead (the same
        count): what another size costs, whose objects differ only in requests and limits."""
        prices = PRICES[self.region]
        hourly = prices.instance_hour(instance_type)
        if hourly is None:
            first, *others = close_instance_types(instance_type, candidates=prices.priced_types())
            raise ConfigError(
                "node_instance_type", instance_type, f"no list price for it in {prices.region} (final_problem/prices.py)",
                f"{how_to_set('node_instance_type', first)} (or {', '.join(others)}), "
                "or add its family to final_problem/prices.py")
        lines = tuple(
            replace(line, item=f"{line.item.split(' x ', 1)[0]} x {instance_type} ({line.item.rsplit('(', 1)[1]}",
                    unit_price=hourly)
            if line.category == "EC2" else line for line in self.lines)
        return replace(self, lines=lines)

    def summary(self, top: int = 4) -> list[str]:
        """The total and the biggest categories (what ``make synth`` prints)."""
        parts = ", ".join(f"{name} ${amount:,.2f}" for name, amount in list(self.by_category().items())[:top])
        return [
            f"${self.total:,.2f}/month at list price in {self.region} ({self.region_source})",
            f"  largest: {parts}",
            "  full breakdown and assumptions: python -m final_problem.cost",
        ]

    def breakdown(self) -> list[str]:
        lines = [f"Monthly estimate, {self.region} ({self.region_source}); prices: {self.prices_as_of}"]
        for line in sorted(self.lines, key=lambda x: -x.monthly):
            lines.append(
                f"  {line.monthly:>10,.2f}  {line.category:<14} {line.item:<52} "
                f"{line.quantity:,.6g} {line.unit} x ${line.unit_price:g}"
            )
        lines.append(f"  {self.total:>10,.2f}  total (USD, {HOURS_PER_MONTH} hours a month)")
        lines.append("Assumptions:")
        lines += [f"  {a}" for a in self.assumptions.describe()]
        return lines


@dataclass(frozen=True)
class StackTemplate:
    name: str
    template: Mapping[str, Any]
    #: The stack's region; None for an environment-agnostic stack.
    region: str | None


def region_prices(region: str | None) -> tuple[RegionPrices, str]:
    """The price table of ``region`` (unset: :data:`DEFAULT_REGION`) and where it came from."""
    if region in _UNKNOWN_REGIONS:
        return PRICES[DEFAULT_REGION], f"region unset, priced as {DEFAULT_REGION}"
    assert region is not None
    if region not in PRICES:
        raise ConfigError(
            "region", region, f"no price table for this region (final_problem/prices.py has {', '.join(PRICES)})",
            f"{how_to_set('region', DEFAULT_REGION)} to price it there, or add the region's prices to final_problem/prices.py",
        )
    return PRICES[region], "from the settings"


def estimate(stacks: Iterable[StackTemplate], assumptions: Assumptions | None = None) -> Estimate:
    """Price the resources of ``stacks`` and the Kubernetes objects they apply."""
    stacks = list(stacks)
    assumptions = assumptions or Assumptions()
    regions = {s.region for s in stacks if s.region not in _UNKNOWN_REGIONS}
    if len(regions) > 1:
        raise ConfigError("region", ",".join(sorted(regions)), "the stacks are in different regions", "deploy every stack to one region")
    prices, source = region_prices(next(iter(regions), None))
    resources = [(s.name, lid, body) for s in stacks for lid, body in s.template.get("Resources", {}).items()]
    objects = [obj for _, _, body in resources if body.get("Type") == _MANIFEST_RESOURCE for obj in _manifest(body)]
    public_subnets = sum(
        1 for _, _, body in resources
        if body.get("Type") == "AWS::EC2::Subnet" and body.get("Properties", {}).get("MapPublicIpOnLaunch")
    )
    lines: list[Line] = []
    month = float(HOURS_PER_MONTH)
    for stack, logical_id, body in resources:
        kind, props = body.get("Type"), body.get("Properties", {})
        if kind == "AWS::EKS::Cluster":
            name = props.get("Name", logical_id)
            lines.append(Line(category="EKS", item=f"control plane {_text(name, logical_id)}",
                              quantity=month, unit="hours", unit_price=prices.eks_cluster_hour))
            enabled = [t for entry in props.get("Logging", {}).get("ClusterLogging", {}).get("EnabledTypes", [])
                       for t in [entry.get("Type")] if t]
            if enabled:
                lines.append(Line(
                    category="CloudWatch", item=f"control-plane logs ({len(enabled)} types, assumed)",
                    quantity=len(enabled) * assumptions.control_plane_log_gb, unit="GB", unit_price=prices.logs_ingest_gb,
                ))
        elif kind == "AWS::EKS::Nodegroup":
            lines += _nodegroup(props, logical_id, prices)
        elif kind == "AWS::EC2::NatGateway":
            lines.append(Line(category="NAT", item=f"NAT gateway {logical_id}", quantity=month, unit="hours",
                              unit_price=prices.nat_gateway_hour))
        elif kind == "AWS::EC2::EIP":
            lines.append(Line(category="Public IPv4", item=f"Elastic IP {logical_id}", quantity=month, unit="hours",
                              unit_price=prices.public_ipv4_hour))
        elif kind == "AWS::KMS::Key":
            lines.append(Line(category="KMS", item=f"key {stack}/{logical_id}", quantity=1, unit="key-months",
                              unit_price=prices.kms_key_month))
        elif kind == "AWS::EC2::FlowLog" and props.get("LogDestinationType", "cloud-watch-logs") == "cloud-watch-logs":
            lines.append(Line(category="CloudWatch", item=f"VPC flow logs {logical_id} (assumed)",
                              quantity=assumptions.flow_log_gb, unit="GB", unit_price=prices.logs_ingest_gb))
    lines += _volumes(objects, prices)
    lines += _load_balancers(objects, prices, public_subnets, assumptions)
    return Estimate(region=prices.region, region_source=source, prices_as_of=prices.as_of,
                    lines=tuple(lines), assumptions=assumptions)


def _text(value: Any, fallback: str) -> str:
    return value if isinstance(value, str) else fallback


def _nodegroup(props: Mapping[str, Any], logical_id: str, prices: RegionPrices) -> list[Line]:
    types = props.get("InstanceTypes") or ["t3.medium"]  # EKS's own default (CreateNodegroup API)
    instance = types[0]
    hourly = prices.instance_hour(instance)
    if hourly is None:
        first, *others = close_instance_types(instance, candidates=prices.priced_types())
        raise ConfigError(
            "node_instance_type", instance, f"no list price for it in {prices.region} (final_problem/prices.py)",
            f"{how_to_set('node_instance_type', first)} (or {', '.join(others)}), "
            "or add its family to final_problem/prices.py",
        )
    desired = int(props.get("ScalingConfig", {}).get("DesiredSize", 2))  # API default: 2
    disk = int(props.get("DiskSize", DEFAULT_DISK_GIB))
    return [
        Line(category="EC2", item=f"{desired} x {instance} ({logical_id})", quantity=desired * HOURS_PER_MONTH,
             unit="instance-hours", unit_price=hourly),
        Line(category="EBS", item=f"node root volumes {desired} x {disk} GiB gp3", quantity=desired * disk,
             unit="GB-months", unit_price=prices.ebs_gb_month["gp3"]),
    ]


def _manifest(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Objects of one manifest resource. Its ``Manifest`` is a JSON string, or a join of
    strings and tokens when an object holds a deploy-time value (tokens become '')."""
    manifest = body.get("Properties", {}).get("Manifest", "[]")
    if isinstance(manifest, dict) and "Fn::Join" in manifest:
        sep, parts = manifest["Fn::Join"]
        manifest = sep.join(p if isinstance(p, str) else "" for p in parts)
    return [o for o in json.loads(manifest) if isinstance(o, dict)]


def _gib(quantity: str) -> float:
    return memory_mib(quantity) / 1024


def _volumes(objects: list[dict[str, Any]], prices: RegionPrices) -> list[Line]:
    classes: dict[str, str] = {}
    default_class: str | None = None
    for obj in objects:
        if obj.get("kind") != "StorageClass":
            continue
        name = obj["metadata"]["name"]
        if obj.get("provisioner") in _EBS_PROVISIONERS:
            fallback = EBS_CSI_DEFAULT_TYPE if obj["provisioner"] == "ebs.csi.aws.com" else "gp2"
            classes[name] = (obj.get("parameters") or {}).get("type", fallback)
        if (obj["metadata"].get("annotations") or {}).get("storageclass.kubernetes.io/is-default-class") == "true":
            default_class = name

    def line(owner: str, claim: Mapping[str, Any], count: int) -> Line:
        spec = claim.get("spec", {})
        class_name = spec.get("storageClassName", default_class)
        volume_type = classes.get(class_name or "", EBS_CSI_DEFAULT_TYPE)
        if volume_type not in prices.ebs_gb_month:
            raise ConfigError(
                "StorageClass", class_name, f"EBS volume type {volume_type!r} has no price in final_problem/prices.py",
                f"give the StorageClass one of the types {', '.join(prices.ebs_gb_month)}",
            )
        size = _gib(spec.get("resources", {}).get("requests", {}).get("storage", "0"))
        return Line(category="EBS", item=f"{owner} {claim.get('metadata', {}).get('name')} {count} x {size:g} GiB {volume_type}",
                    quantity=count * size, unit="GB-months", unit_price=prices.ebs_gb_month[volume_type])

    lines: list[Line] = []
    for obj in objects:
        meta = obj.get("metadata", {})
        owner = f"{meta.get('namespace', 'default')}/{meta.get('name')}"
        if obj.get("kind") == "StatefulSet":
            replicas = int(obj.get("spec", {}).get("replicas", 1))
            lines += [line(owner, claim, replicas) for claim in obj["spec"].get("volumeClaimTemplates", [])]
        elif obj.get("kind") == "PersistentVolumeClaim":
            lines.append(line(meta.get("namespace", "default"), obj, 1))
    return lines


def _internal(annotations: Mapping[str, str]) -> bool:
    # AWS Load Balancer Controller: scheme annotation (its default is internal when
    # absent, the in-tree controller's is internet-facing: count absent as public).
    return (annotations.get("service.beta.kubernetes.io/aws-load-balancer-scheme") == "internal"
            or annotations.get("service.beta.kubernetes.io/aws-load-balancer-internal") == "true")


def _load_balancers(objects: list[dict[str, Any]], prices: RegionPrices, public_subnets: int,
                    assumptions: Assumptions) -> list[Line]:
    lines: list[Line] = []
    for obj in objects:
        if obj.get("kind") != "Service" or obj.get("spec", {}).get("type") != "LoadBalancer":
            continue
        meta = obj.get("metadata", {})
        name = f"{meta.get('namespace', 'default')}/{meta.get('name')}"
        lines.append(Line(category="Load balancer", item=f"NLB for Service {name}", quantity=HOURS_PER_MONTH,
                          unit="hours", unit_price=prices.nlb_hour))
        lines.append(Line(category="Load balancer", item=f"NLB capacity for Service {name} (assumed)",
                          quantity=HOURS_PER_MONTH * assumptions.nlb_lcu, unit="LCU-hours", unit_price=prices.nlb_lcu_hour))
        if not _internal(meta.get("annotations") or {}):
            lines.append(Line(category="Public IPv4", item=f"NLB {name}: one address per public subnet",
                              quantity=HOURS_PER_MONTH * max(public_subnets, 1), unit="hours",
                              unit_price=prices.public_ipv4_hour))
    return lines


def from_cdk_out(path: str | Path, assumptions: Assumptions | None = None) -> Estimate:
    """The estimate of the stacks in a cloud assembly directory (``cdk.out``)."""
    out = Path(path)
    manifest = json.loads((out / "manifest.json").read_text())
    stacks = []
    for artifact in manifest["artifacts"].values():
        if artifact["type"] != "aws:cloudformation:stack":
            continue
        props = artifact["properties"]
        template = json.loads((out / props["templateFile"]).read_text())
        region = artifact.get("environment", "aws://unknown-account/unknown-region").rsplit("/", 1)[-1]
        stacks.append(StackTemplate(props.get("stackName", props["templateFile"]), template, region))
    return estimate(stacks, assumptions)


def from_assembly(assembly: Any, assumptions: Assumptions | None = None) -> Estimate:
    """The estimate of an in-memory cloud assembly (``app.synth()``)."""
    return estimate(
        (StackTemplate(s.stack_name, s.template, s.environment.region) for s in assembly.stacks), assumptions
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m final_problem.cost", description=__doc__.split("\n")[0])
    parser.add_argument("--cdk-out", type=Path, default=Path("cdk.out"), help="cloud assembly to price (run make synth first)")
    parser.add_argument("--json", action="store_true", help="print the estimate as JSON")
    defaults = Assumptions()
    parser.add_argument("--control-plane-log-gb", type=float, default=defaults.control_plane_log_gb,
                        help="GB/month per enabled control-plane log type (default %(default)s)")
    parser.add_argument("--flow-log-gb", type=float, default=defaults.flow_log_gb,
                        help="GB/month of VPC flow logs (default %(default)s)")
    parser.add_argument("--nlb-lcu", type=float, default=defaults.nlb_lcu,
                        help="average LCUs per Network Load Balancer (default %(default)s)")
    args = parser.parse_args(argv)
    if not (args.cdk_out / "manifest.json").exists():
        print(f"{args.cdk_out}/manifest.json not found: run `make synth` first", file=sys.stderr)
        return 2
    for value in (args.control_plane_log_gb, args.flow_log_gb, args.nlb_lcu):
        if not (math.isfinite(value) and value >= 0):
            parser.error("usage assumptions must be numbers of at least 0")
    result = from_cdk_out(args.cdk_out, Assumptions(
        control_plane_log_gb=args.control_plane_log_gb, flow_log_gb=args.flow_log_gb, nlb_lcu=args.nlb_lcu,
    ))
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        print("\n".join(result.breakdown()))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
