"""Print what ``make synth`` wrote: stacks with resource counts, manifest files."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import yaml


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
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
