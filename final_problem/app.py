"""Build the CDK app: settings from context, the stacks, and the YAML in ``dist/``."""

from __future__ import annotations

import json
import os
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping

from final_problem import capacity, components, config, manifests, policy, report
from final_problem.config import Settings
from final_problem.errors import ConfigError
from final_problem.profiles import PROFILES

if TYPE_CHECKING:
    import aws_cdk as cdk
    from aws_cdk import cx_api

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
    import aws_cdk as cdk

    from final_problem.stacks.cluster import ClusterStack
    from final_problem.stacks.network import NetworkStack

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


Objects = dict[str, dict[str, list[dict[str, Any]]]]


def render_profiles(stacks: PlatformStacks) -> Objects:
    """Objects of every profile in the settings, by profile and component: eks from the
    charts applied to the cluster, the others rendered on their own."""
    rendered: Objects = {}
    for profile in stacks.settings.profiles:
        if profile == "eks":
            rendered[profile] = dict(stacks.cluster.platform.objects)
            continue
        charts = manifests.render(stacks.settings, profile)
        rendered[profile] = {name: manifests.chart_objects(chart) for name, chart in charts.items()}
    return rendered


def check_capacity(settings: Settings, rendered: Objects) -> list[capacity.Fit]:
    """Fail when a profile's pods do not fit on its nodes (see final_problem.capacity)."""
    return [capacity.check(settings, profile, objects) for profile, objects in rendered.items()]


def check_policy(rendered: Objects) -> None:
    """Fail on the first policy finding (:mod:`final_problem.policy`) of any profile: every
    chart, bundled or an app's own, is held to the same checks as the tests hold them."""
    for profile, objects in rendered.items():
        policy.check_render(profile, objects)


def write_dist(stacks: PlatformStacks, outdir: Path, rendered: Objects | None = None) -> list[Path]:
    """Write dist/<profile>/ for every profile in the settings, and remove the folder of
    every other profile: a folder an earlier synth wrote with other settings would be
    applied or flashed (``make pi-images`` reads dist/pi/) as if this synth had written it.
    The folders keep their fixed names, which the docs, ``make pi-images`` and users'
    ``kubectl apply -f dist/eks/`` rely on; only a profile's own folder is ever removed,
    never anything else in ``outdir``."""
    written: list[Path] = []
    rendered = rendered or render_profiles(stacks)
    for profile, objects in rendered.items():
        written += manifests.write_objects(objects, outdir / profile)
    for profile in PROFILES:
        if profile not in rendered and (outdir / profile).is_dir():
            shutil.rmtree(outdir / profile)
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


def synth_facts(settings: Settings) -> dict[str, Any]:
    """What the synth report needs beyond the templates and the YAML: the profiles this
    synth wrote, the Pi boards' memory, what each profile left out, and the size rendered with
    the node type each size runs on (written to the cloud assembly, report.SYNTH_FACTS)."""
    return {
        "profiles": list(settings.profiles),
        "size": settings.size,
        "node_types_by_size": settings.node_types_by_size(),
        "pi_memory_gib": settings.pi_memory_gib,
        "left_out": {p: line for p in settings.profiles if (line := components.left_out_line(settings, PROFILES[p]))},
    }


#: Set to 1 to see the traceback of a bad setting instead of its one-line message.
TRACEBACK_ENV = "FINAL_PROBLEM_TRACEBACK"


def write_outputs(app: cdk.App, stacks: PlatformStacks) -> None:
    """Write the YAML of every profile (context ``dist_dir``, default ``dist/``) and the
    cloud assembly, failing on a template CloudFormation would refuse."""
    outdir = Path(app.node.try_get_context("dist_dir") or "dist")
    rendered = render_profiles(stacks)
    check_capacity(stacks.settings, rendered)
    check_policy(rendered)
    # Writing the YAML is Python alone, and synthesis is the Node.js process alone: one
    # waits on the other otherwise (a thread runs while the main one waits on the pipe).
    with ThreadPoolExecutor(max_workers=1) as pool:
        written = pool.submit(write_dist, stacks, outdir, rendered)
        assembly = app.synth()
        written.result()
    check_template_sizes(assembly)
    write_synth_facts(stacks.settings, Path(assembly.directory))


def write_synth_facts(settings: Settings, cdk_out: Path) -> None:
    """:func:`synth_facts` into the cloud assembly, where ``make synth``'s report reads them."""
    (cdk_out / report.SYNTH_FACTS).write_text(json.dumps(synth_facts(settings), indent=2) + "\n")


@contextmanager
def one_line_errors() -> Iterator[None]:
    """End the program with one line on stderr and exit status 1 on a :class:`ConfigError`.

    An app that registers its own components imports them inside this block, so a
    component that breaks the registration contract is reported the same way as a bad
    setting. ``FINAL_PROBLEM_TRACEBACK=1`` shows the traceback instead.
    """
    try:
        yield
    except ConfigError as e:
        if os.environ.get(TRACEBACK_ENV, "") not in ("", "0"):
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


#: Where the CDK CLI hands the app its context (cdk.json, cdk.context.json and ``-c``
#: merged): a JSON object in this variable, or in a file named by the second one when it is
#: too large for the environment (aws-cdk-lib ``cx_api``: CONTEXT_ENV,
#: CONTEXT_OVERFLOW_LOCATION_ENV).
CONTEXT_ENV = "CDK_CONTEXT_JSON"
CONTEXT_OVERFLOW_ENV = "CONTEXT_OVERFLOW_LOCATION_ENV"


def cli_context(environ: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """The context the CDK CLI gave this process, read as aws-cdk-lib's ``App`` reads it."""
    context: dict[str, Any] = {}
    if inline := environ.get(CONTEXT_ENV):
        context.update(json.loads(inline))
    if overflow := environ.get(CONTEXT_OVERFLOW_ENV):  # the file wins, as in App.loadContext
        context.update(json.loads(Path(overflow).read_text()))
    return context


def check_cli_settings(environ: Mapping[str, str] = os.environ) -> Settings:
    """The settings the CDK CLI hands this process, checked before aws-cdk-lib loads (about
    half of the app's start-up): a bad one fails first."""
    context = config.restore_written_numbers(cli_context(environ))
    settings = config.load(context, config.context_origins(context))
    components.check_settings(settings)
    return settings


def synth(settings: Settings | None = None) -> None:
    """Build the stacks (from ``settings``, default the app's context) and write everything."""
    import aws_cdk as cdk

    app = cdk.App()
    write_outputs(app, build(app, settings))


def main() -> None:
    """``cdk synth`` runs this: a bad setting ends it with one line on stderr and exit 1."""
    with one_line_errors():
        synth(check_cli_settings())
