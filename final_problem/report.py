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

# libyaml's parser when PyYAML was built with it (its wheels are): several times faster.
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
#: Objects of each written file (``NN-<component>.yaml``), by profile and file name.
Written = dict[str, dict[str, list[dict[str, Any]]]]


def read_dist(dist_dir: Path, profiles: list[str] | None = None) -> Written:
    """The folders of ``profiles`` in ``dist_dir`` (default: every folder), parsed once."""
    folders = sorted(p for p in dist_dir.iterdir() if p.is_dir())
    if profiles is not None:
        folders = [dist_dir / p for p in profiles]
    return {
        profile_dir.name: {
            path.name: [d for d in yaml.load_all(path.read_text(), Loader=_Loader) if d]
            for path in sorted(profile_dir.glob("*.yaml"))
        }
        for profile_dir in folders
    }


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


#: Written by the app beside the templates (final_problem.app.synth_facts).
SYNTH_FACTS = "final-problem.json"


def synth_facts(out: Path) -> dict[str, Any]:
    """The Pi boards' memory and what each profile left out, as the app recorded them."""
    path = out / SYNTH_FACTS
    return json.loads(path.read_text()) if path.exists() else {}


def capacity_lines(out: Path, written: Written, manifest: dict[str, Any]) -> list[str]:
    """The fit of each written profile, read back from its YAML."""
    lines: list[str] = []
    nodegroup = _nodegroup(out, manifest)
    facts = synth_facts(out)
    for profile, files in written.items():
        if profile == "eks" and nodegroup is None:
            continue
        instance_type, count = nodegroup or ("", 0)
        objects = {name.removesuffix(".yaml").split("-", 1)[1]: docs for name, docs in files.items()}
        nodes = capacity.profile_nodes(profile, instance_type=instance_type, count=count,
                                       pi_memory_gib=facts.get("pi_memory_gib", 4))
        lines += capacity.describe(capacity.fit(profile, nodes, capacity.workloads(objects),
                                                system=capacity.system_workloads(profile, objects)))
        if left_out := facts.get("left_out", {}).get(profile):
            lines.append(left_out)
    return lines


def size_costs(estimate: cost.Estimate, facts: dict[str, Any]) -> list[str]:
    """One line: what each size (cluster setting ``size``) costs, on the nodes it runs on."""
    types: dict[str, str] = facts.get("node_types_by_size", {})
    if not types:
        return []
    parts = []
    for size, instance_type in types.items():
        count = next((int(line.quantity) // cost.HOURS_PER_MONTH for line in estimate.lines if line.category == "EC2"), 0)
        this = " (this synth)" if size == facts.get("size") else ""
        parts.append(f"{size}{this} {count} x {instance_type} ${estimate.on_nodes(instance_type).total:,.2f}")
    return ["  by size (-c size=...): " + "; ".join(parts)]


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
    # Only the profiles this synth wrote (the app records them): anything else in dist/ is
    # not this run's output.
    written = read_dist(dist_dir, synth_facts(out).get("profiles"))
    for profile, files in written.items():
        print(f"Kubernetes YAML ({dist_dir / profile}/):")
        for name, docs in files.items():
            kinds = Counter(d["kind"] for d in docs)
            summary = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
            print(f"  {name:<28} {len(docs):>3} objects  ({summary})")
    print(f"Capacity (requests of long-running pods; fails synth over {capacity.MAX_SHARE:.0%}):")
    for line in capacity_lines(out, written, manifest):
        print(f"  {line}")
    print("Monthly cost:")
    try:
        estimate = cost.from_cdk_out(out)
        lines = estimate.summary() + size_costs(estimate, synth_facts(out))
    except ConfigError as e:
        # The templates are fine; only the price table lacks them (a region or type).
        lines = [f"not estimated: {e}"]
    for line in lines:
        print(f"  {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
