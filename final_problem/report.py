"""Print what ``make synth`` wrote: stacks with resource counts, manifest files, the
capacity fit of each profile and the monthly cost estimate."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from final_problem import capacity, cost
from final_problem.errors import ConfigError


def _nodegroup(out: Path, manifest: dict[str, Any]) -> tuple[str, int] | None:
    """Instance type and desired size of the (first) managed node group in the templates."""
    for artifact in manifest["artifacts"].values():
        if artifact["type"] != "aws:cloudformation:stack":
            continue
        template = json.loads((out / artifact["properties"]["templateFile"]).read_text())
        for body in template.get("Resources", {}).values():
            if body["Type"] == "AWS::EKS::Nodegroup":
                props = body["Properties"]
                return props["InstanceTypes"][0], int(props["ScalingConfig"]["DesiredSize"])
    return None


def capacity_lines(out: Path, dist_dir: Path, manifest: dict[str, Any]) -> list[str]:
    """The fit of each profile in ``dist_dir``, read back from the written YAML."""
    lines: list[str] = []
    nodegroup = _nodegroup(out, manifest)
    for profile_dir in sorted(p for p in dist_dir.iterdir() if p.is_dir()):
        if profile_dir.name == "eks" and nodegroup is None:
            continue
        instance_type, count = nodegroup or ("", 0)
        objects = {
            path.stem.split("-", 1)[1]: [d for d in yaml.safe_load_all(path.read_text()) if d]
            for path in sorted(profile_dir.glob("*.yaml"))
        }
        nodes = capacity.profile_nodes(profile_dir.name, instance_type=instance_type, count=count)
        lines += capacity.describe(capacity.fit(profile_dir.name, nodes, capacity.workloads(objects)))
    return lines


def main(cdk_out: str = "cdk.out", dist: str = "dist") -> int:
    out, dist_dir = Path(cdk_out), Path(dist)
    manifest = json.loads((out / "manifest.json").read_text())
    print(f"CloudFormation ({out}/):")
    for artifact in manifest["artifacts"].values():
        if artifact["type"] != "aws:cloudformation:stack":
            continue
        template_file = out / artifact["properties"]["templateFile"]
        template = json.loads(template_file.read_text())
        kinds = Counter(body["Type"] for body in template.get("Resources", {}).values())
        env = artifact["environment"].removeprefix("aws://")
        print(
            f"  {artifact['properties'].get('stackName', template_file.stem):<28} "
            f"{sum(kinds.values()):>3} resources  {template_file.stat().st_size:>8,} B  {env}"
        )
    for profile_dir in sorted(p for p in dist_dir.iterdir() if p.is_dir()):
        print(f"Kubernetes YAML ({profile_dir}/):")
        for path in sorted(profile_dir.glob("*.yaml")):
            docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
            kinds = Counter(d["kind"] for d in docs)
            summary = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
            print(f"  {path.name:<28} {len(docs):>3} objects  ({summary})")
    print(f"Capacity (requests of long-running pods; fails synth over {capacity.MAX_SHARE:.0%}):")
    for line in capacity_lines(out, dist_dir, manifest):
        print(f"  {line}")
    print("Monthly cost:")
    try:
        lines = cost.from_cdk_out(out).summary()
    except ConfigError as e:
        # The templates are fine; only the price table lacks them (a region or type).
        lines = [f"not estimated: {e}"]
    for line in lines:
        print(f"  {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
