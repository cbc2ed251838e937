"""Build the CDK app: settings from context, the stacks, and the YAML in ``dist/``."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import aws_cdk as cdk
from aws_cdk import cx_api

from final_problem import components, config, manifests
from final_problem.config import Settings
from final_problem.errors import ConfigError
from final_problem.stacks.cluster import ClusterStack
from final_problem.stacks.network import NetworkStack

#: CloudFormation's limit on a template uploaded through S3, as CDK deploys them
#: (CloudFormation user guide, "Quotas": template body size in an S3 object, 1 MB).
MAX_TEMPLATE_BYTES = 1_000_000


@dataclass(frozen=True)
class PlatformStacks:
    settings: Settings
    network: NetworkStack
    cluster: ClusterStack


def build(app: cdk.App, settings: Settings | None = None) -> PlatformStacks:
    """Create the platform's stacks in ``app`` from ``settings`` (default: app context)."""
    settings = settings or config.from_context(app.node.get_all_context)
    components.check_settings(settings)
    env = cdk.Environment(account=settings.account, region=settings.region)
    network = NetworkStack(
        app, "Network", settings=settings, env=env, stack_name=f"{settings.cluster_name}-network",
        description="The Final Problem: VPC, subnets, NAT and flow logs",
    )
    cluster = ClusterStack(
        app, "Cluster", settings=settings, vpc=network.vpc, env=env, stack_name=f"{settings.cluster_name}-cluster",
        description="The Final Problem: EKS cluster, node group and platform charts",
    )
    return PlatformStacks(settings=settings, network=network, cluster=cluster)


def write_dist(stacks: PlatformStacks, outdir: Path) -> list[Path]:
    """Write dist/eks from the charts applied to the cluster, and the other profiles."""
    written: list[Path] = []
    for profile in stacks.settings.profiles:
        if profile == "eks":
            written += manifests.write_charts(stacks.cluster.platform.charts, outdir / "eks")
        else:
            written += manifests.write_profile(stacks.settings, profile, outdir)
    return written


def check_template_sizes(assembly: cx_api.CloudAssembly, limit: int = MAX_TEMPLATE_BYTES) -> None:
    """Fail before CloudFormation would: every template must fit in ``limit`` bytes."""
    for stack in assembly.stacks:
        path = Path(stack.template_full_path)
        size = path.stat().st_size
        if size <= limit:
            continue
        resources = stack.template.get("Resources", {})
        biggest = sorted(
            ((len(json.dumps(body)), logical_id) for logical_id, body in resources.items()), reverse=True
        )[:3]
        detail = ", ".join(f"{logical_id} {n:,} B" for n, logical_id in biggest)
        raise ConfigError(
            "components", stack.stack_name,
            f"the template is {size:,} bytes, over CloudFormation's {limit:,}-byte limit (largest: {detail})",
            "disable a component, or move large data (config files, scripts) out of the charts",
        )


#: Set to 1 to see the traceback of a bad setting instead of its one-line message.
TRACEBACK_ENV = "FINAL_PROBLEM_TRACEBACK"


def synth() -> None:
    app = cdk.App()
    stacks = build(app)
    outdir = Path(app.node.try_get_context("dist_dir") or "dist")
    write_dist(stacks, outdir)
    check_template_sizes(app.synth())


def main() -> None:
    """``cdk synth`` runs this: a bad setting ends it with one line on stderr and exit 1."""
    try:
        synth()
    except ConfigError as e:
        if os.environ.get(TRACEBACK_ENV, "") not in ("", "0"):
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
