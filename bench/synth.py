"""Benchmark: how much the platform adds to the cost of synthesizing a bare EKS app.

Prints median wall times of the full synth (both stacks, all charts, dist/ for both
profiles) and of the floor, a bare VPC + aws_eks_v2 cluster app written by this script,
measured two ways: as ``make synth`` runs them (the pinned CDK CLI's ``cdk synth``, which
starts the app), and as the app process alone (``python3 -O app.py``, with the interpreter
flags of cdk.json's app command, for both apps, and the environment the CLI gives it). Then
their ratios, and the YAML-only render (``python -m final_problem.manifests``). Commands run
in turn, each as a fresh process; one warm-up round is not counted. Last, each component's
cost, measured in this process (the Kubernetes types' checks on, as in the tests).

    make bench            # or: .venv/bin/python bench/synth.py [--runs N]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

BARE_APP = '''
import aws_cdk as cdk
from aws_cdk import aws_ec2 as ec2, aws_eks_v2 as eks
from aws_cdk.lambda_layer_kubectl_v36 import KubectlV36Layer

app = cdk.App()
stack = cdk.Stack(app, "Bare")
vpc = ec2.Vpc(stack, "Vpc", max_azs=3, nat_gateways=1)
cluster = eks.Cluster(
    stack, "Cluster", version=eks.KubernetesVersion.V1_36, vpc=vpc,
    default_capacity_type=eks.DefaultCapacityType.NODEGROUP, default_capacity=0,
    kubectl_provider_options=eks.KubectlProviderOptions(kubectl_layer=KubectlV36Layer(stack, "Kubectl")),
)
cluster.add_nodegroup_capacity("Workers", instance_types=[ec2.InstanceType("m7g.large")], min_size=3)
app.synth()
'''


def run_once(command: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def timed(commands: list[list[str]], env: dict[str, str], runs: int) -> list[list[float]]:
    """Run the commands in turn (A B A B ...), so drift in machine speed hits all alike.

    The first round warms caches and is not counted.
    """
    times: list[list[float]] = [[] for _ in commands]
    for i in range(runs + 1):
        for j, command in enumerate(commands):
            seconds = run_once(command, env)
            if i:
                times[j].append(seconds)
    return times


def component_costs(context: dict, rounds: int) -> dict[str, float]:
    """Seconds each component's charts take in the app process (both profiles: construct
    the chart, then render its objects), median of ``rounds``, measured in-process."""
    from final_problem import components, config
    from final_problem.profiles import PROFILES

    settings = config.from_mapping(context)
    order = components.resolve(settings.components)
    samples: dict[str, list[float]] = {name: [] for name in order}
    import cdk8s

    for _ in range(rounds + 1):
        for profile in settings.profiles:
            app = cdk8s.App()
            charts: dict[str, components.PlatformChart] = {}
            for name in order:
                cls = components.COMPONENTS[name]
                start = time.perf_counter()
                chart = cls(app, cls.construct_id, settings=settings, profile=PROFILES[profile],
                            dependencies={dep: charts[dep] for dep in cls.requires})
                chart.to_json()
                samples[name].append(time.perf_counter() - start)
                charts[name] = chart
    per_round = len(settings.profiles)
    # Drop the warm-up round (the first `per_round` samples of each component).
    return {name: statistics.median(
        sum(times[i:i + per_round]) for i in range(per_round, len(times), per_round)) for name, times in samples.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    cdk_json = json.loads((ROOT / "cdk.json").read_text())
    context = cdk_json["context"]
    # The interpreter's flags in cdk.json's app command (python3 -O app.py): the floor runs
    # with the same ones, so both pay (or skip) jsii's run-time type checks alike.
    flags = [w for w in shlex.split(cdk_json["app"])[1:] if w.startswith("-")]
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        bare = tmp_path / "bare_app.py"
        bare.write_text(BARE_APP)
        env = {
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "CDK_OUTDIR": str(tmp_path / "cdk.out"),
            "CDK_CONTEXT_JSON": json.dumps({**context, "dist_dir": str(tmp_path / "dist")}),
        }
        cli_env = {
            **env, "CDK_DISABLE_VERSION_CHECK": "true", "CDK_DISABLE_CLI_TELEMETRY": "true",
            "AWS_EC2_METADATA_DISABLED": "true",
        }
        cli_env.pop("CDK_OUTDIR")
        cli_env.pop("CDK_CONTEXT_JSON")

        def cdk_synth(app: str) -> list[str]:
            return [str(ROOT / "node_modules" / ".bin" / "cdk"), "synth", "--quiet", "--no-notices",
                    "--app", app, "--output", str(tmp_path / "cli.out"), "-c", f"dist_dir={tmp_path / 'dist'}"]

        cli_full, cli_floor = timed([
            cdk_synth(shlex.join([sys.executable, *flags, "app.py"])), cdk_synth(shlex.join([sys.executable, *flags, str(bare)])),
        ], cli_env, args.runs)
        full, floor, yaml_only = timed([
            [sys.executable, *flags, "app.py"],
            [sys.executable, *flags, str(bare)],
            [sys.executable, "-m", "final_problem.manifests", "--out", str(tmp_path / "yaml")],
        ], env, args.runs)

    def row(label: str, times: list[float]) -> str:
        return f"  {label:<52} {statistics.median(times):6.2f} s  (min {min(times):.2f}, max {max(times):.2f})"

    def ratio(a: list[float], b: list[float]) -> float:
        return statistics.median(x / y for x, y in zip(a, b, strict=True))

    components = ", ".join(context["components"])
    print(f"synth benchmark (target: ratio <= 1.3): median of {args.runs} rounds after one warm-up round, wall seconds")
    print(f"  full synth = 2 stacks, charts {components}, dist/eks + dist/pi; floor = bare VPC + aws_eks_v2 app;")
    print(f"  both run as cdk.json's app command runs Python: python3 {' '.join(flags)}")
    print(row("cdk synth, full (as make synth runs it)", cli_full))
    print(row("cdk synth, floor", cli_floor))
    print(f"  {'ratio full / floor, cdk synth':<52} {ratio(cli_full, cli_floor):6.2f}")
    print(row("app process alone, full (python app.py)", full))
    print(row("app process alone, floor", floor))
    print(f"  {'ratio full / floor, app process alone':<52} {ratio(full, floor):6.2f}")
    print(row("YAML-only render (python -m final_problem.manifests)", yaml_only))
    costs = component_costs(context, args.runs)
    print(f"per-component cost (both profiles: build the chart, render its objects; in-process, type checks on; median of {args.runs}):")
    for name, seconds in costs.items():
        print(f"  {name:<20} {1000 * seconds:7.0f} ms")
    print(f"  {'all charts':<20} {1000 * sum(costs.values()):7.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
