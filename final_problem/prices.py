"""AWS list prices the cost estimate uses, per region (USD, on-demand, Linux, shared tenancy).

Sources: the AWS pricing pages of each service (aws.amazon.com/ec2/pricing/on-demand,
/eks/pricing, /vpc/pricing (NAT gateway; public IPv4, 2024-02-01 on), /ebs/pricing,
/elasticloadbalancing/pricing, /kms/pricing, /cloudwatch/pricing). Prices change rarely
and only downwards for these services; each region records when its figures were read.
The us-east-1 instance prices agree with several published copies of the AWS price list
(2026); the European figures were read from the pricing pages in 2025. Refresh a region with ``aws pricing get-products --service-code AmazonEC2 ...``
before relying on it for a budget.

EC2 prices are given for the ``large`` size of each family: within a family the on-demand
price doubles with each size (xlarge = 2 x large, 2xlarge = 4 x, 4xlarge = 8 x), as the
price list shows for every family here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

#: Hours in a month as the AWS Pricing Calculator counts them (24 x 365 / 12).
HOURS_PER_MONTH = 730
#: Price of a size relative to ``large``.
SIZE_FACTOR = {"large": 1, "xlarge": 2, "2xlarge": 4, "4xlarge": 8}
#: Region used when the settings give none (an environment-agnostic synth).
DEFAULT_REGION = "us-east-1"


@dataclass(frozen=True, kw_only=True)
class RegionPrices:
    region: str
    #: When the figures were read from the pricing pages, and how far they were checked.
    as_of: str
    #: USD per hour of the ``large`` size, by instance family.
    ec2_large_hour: Mapping[str, float]
    #: EKS cluster in standard support (extended support: 0.60).
    eks_cluster_hour: float
    nat_gateway_hour: float
    nat_gateway_gb: float
    #: Every public IPv4 address, in use or idle.
    public_ipv4_hour: float
    #: USD per GB-month by EBS volume type.
    ebs_gb_month: Mapping[str, float]
    nlb_hour: float
    nlb_lcu_hour: float
    #: Customer managed key, per month (its first year; each of the first two
    #: rotations adds one more key-month).
    kms_key_month: float
    #: CloudWatch Logs ingestion (standard class), per GB; vended logs (VPC flow logs)
    #: start at the same price.
    logs_ingest_gb: float

    def instance_hour(self, instance_type: str) -> float | None:
        family, _, size = instance_type.partition(".")
        large = self.ec2_large_hour.get(family)
        if large is None or size not in SIZE_FACTOR:
            return None
        return round(large * SIZE_FACTOR[size], 6)

    def priced_types(self) -> list[str]:
        return [f"{family}.{size}" for family in self.ec2_large_hour for size in SIZE_FACTOR
                if not (family.startswith("t") and size == "4xlarge")]


# us-east-1 (N. Virginia); us-west-2 (Oregon) lists the same prices for every item here.
# m7g (the default nodes: m7g.large, size production m7g.xlarge): $0.0816 an hour for
# m7g.large, Linux, on demand (aws.amazon.com/ec2/pricing/on-demand; the same figure in
# factualminds.com, "Amazon EC2 On-Demand Pricing: Instance Families, Regional Multipliers,
# and the Graviton Crossover (2026)", 2026-06-17: "In us-east-1 (June 2026), Linux m7g.large
# is $0.0816/hr"), so 3 nodes cost 3 x 0.0816 x 730 = $178.70 a month.
_US_EC2 = {
    "m5": 0.096, "m5a": 0.086, "m6i": 0.096, "m6a": 0.0864, "m6g": 0.077,
    "m7i": 0.1008, "m7a": 0.11592, "m7g": 0.0816, "m8g": 0.08976,
    "c5": 0.085, "c5a": 0.077, "c6i": 0.085, "c6a": 0.0765, "c6g": 0.068,
    "c7i": 0.08925, "c7a": 0.10264, "c7g": 0.0725, "c8g": 0.07976,
    "r5": 0.126, "r5a": 0.113, "r6i": 0.126, "r6a": 0.1134, "r6g": 0.1008,
    "r7i": 0.1323, "r7a": 0.15215, "r7g": 0.1071, "r8g": 0.11782,
    "t3": 0.0832, "t3a": 0.0752, "t4g": 0.0672,
}
_US = dict(
    as_of="2026, instance prices checked against published copies of the AWS price list",
    ec2_large_hour=_US_EC2,
    eks_cluster_hour=0.10,
    nat_gateway_hour=0.045,
    nat_gateway_gb=0.045,
    public_ipv4_hour=0.005,
    ebs_gb_month={"gp3": 0.08, "gp2": 0.10, "io1": 0.125, "io2": 0.125, "st1": 0.045, "sc1": 0.015},
    nlb_hour=0.0225,
    nlb_lcu_hour=0.006,
    kms_key_month=1.0,
    logs_ingest_gb=0.50,
)

PRICES: Mapping[str, RegionPrices] = {
    "us-east-1": RegionPrices(region="us-east-1", **_US),  # type: ignore[arg-type]
    "us-west-2": RegionPrices(region="us-west-2", **_US),  # type: ignore[arg-type]
    # Europe: the families most used for EKS nodes; others fail with a clear line.
    "eu-west-1": RegionPrices(
        region="eu-west-1",
        as_of="2025, from the pricing pages; not re-checked since",
        ec2_large_hour={
            "m5": 0.107, "m6i": 0.107, "m6g": 0.086, "m7i": 0.1124, "m7g": 0.0912,
            "c5": 0.096, "c6i": 0.096, "c6g": 0.0768, "c7g": 0.0816,
            "r5": 0.141, "r6i": 0.141, "r6g": 0.1128, "r7g": 0.1195,
            "t3": 0.0912, "t3a": 0.0816, "t4g": 0.0736,
        },
        eks_cluster_hour=0.10,
        nat_gateway_hour=0.048,
        nat_gateway_gb=0.048,
        public_ipv4_hour=0.005,
        ebs_gb_month={"gp3": 0.088, "gp2": 0.11, "io1": 0.138, "io2": 0.138, "st1": 0.05, "sc1": 0.0168},
        nlb_hour=0.0252,
        nlb_lcu_hour=0.006,
        kms_key_month=1.0,
        logs_ingest_gb=0.57,
    ),
    "eu-central-1": RegionPrices(
        region="eu-central-1",
        as_of="2025, from the pricing pages; not re-checked since",
        ec2_large_hour={
            "m5": 0.115, "m6i": 0.115, "m6g": 0.092, "m7i": 0.1208, "m7g": 0.0977,
            "c5": 0.097, "c6i": 0.097, "c6g": 0.0776, "c7g": 0.0824,
            "r5": 0.152, "r6i": 0.152, "r6g": 0.1216, "r7g": 0.1292,
            "t3": 0.096, "t3a": 0.0864, "t4g": 0.0768,
        },
        eks_cluster_hour=0.10,
        nat_gateway_hour=0.052,
        nat_gateway_gb=0.052,
        public_ipv4_hour=0.005,
        ebs_gb_month={"gp3": 0.0952, "gp2": 0.119, "io1": 0.149, "io2": 0.149, "st1": 0.054, "sc1": 0.018},
        nlb_hour=0.027,
        nlb_lcu_hour=0.006,
        kms_key_month=1.0,
        logs_ingest_gb=0.63,
    ),
}
