"""Benchmark: how much the platform adds to the cost of synthesizing a bare EKS app.

Prints the median wall time of (a) the full synth (``app.py`` as ``cdk synth`` runs it:
both stacks, all charts, dist/ for both profiles), (b) the floor: a bare VPC + aws_eks_v2
cluster app written by this script, (c) their ratio, and (d) the YAML-only render
(``python -m final_problem.manifests``). Each command runs as a fresh process, like the CDK
CLI runs the app; one warm-up run is not counted.

    make bench            # or: .venv/bin/python bench/synth.py [--runs N]
"""

from __future__ import annotations

import argparse
import json
import os
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    context = json.loads((ROOT / "cdk.json").read_text())["context"]
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
        full, floor, yaml_only = timed([
            [sys.executable, "app.py"],
            [sys.executable, str(bare)],
            [sys.executable, "-m", "final_problem.manifests", "--out", str(tmp_path / "yaml")],
        ], env, args.runs)
    full_m, floor_m, yaml_m = (statistics.median(t) for t in (full, floor, yaml_only))
    ratio = statistics.median(a / b for a, b in zip(full, floor, strict=True))
    print(f"synth benchmark: median of {args.runs} rounds after one warm-up round, wall seconds, one process per run")
    print(f"  full synth (app.py: 2 stacks, {', '.join(context['components'])}; dist/eks + dist/pi)  {full_m:6.2f} s  (min {min(full):.2f}, max {max(full):.2f})")
    print(f"  floor (bare VPC + aws_eks_v2 cluster app)                  {floor_m:6.2f} s  (min {min(floor):.2f}, max {max(floor):.2f})")
    print(f"  ratio full / floor (median of per-round ratios)          {ratio:6.2f}   (target <= 1.3)")
    print(f"  YAML-only render (python -m final_problem.manifests)        {yaml_m:6.2f} s  (min {min(yaml_only):.2f}, max {max(yaml_only):.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
