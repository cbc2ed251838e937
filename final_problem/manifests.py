"""Write the enabled charts of a profile as plain Kubernetes YAML.

``dist/<profile>/NN-<component>.yaml``, numbered in dependency order, so
``kubectl apply -f dist/<profile>/`` (which reads a folder in name order) and k3s's
auto-deploy folder create what a chart needs before the chart.

Command line (the YAML-only render, no AWS involved)::

    python -m final_problem.manifests --out dist [-c key=value ...]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping

import cdk8s
import yaml

from final_problem import config
from final_problem.components import PlatformChart, build_charts
from final_problem.config import Settings
from final_problem.errors import ConfigError
from final_problem.profiles import PROFILES


# libyaml's emitter when PyYAML was built with it (its wheels are): several times faster.
_BaseDumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


class _Dumper(_BaseDumper):  # type: ignore[misc, valid-type]
    """Block-style YAML; multi-line strings (scripts, config files) as literal blocks."""


def _str(dumper: yaml.BaseDumper, value: str) -> yaml.ScalarNode:
    if "\n" in value:
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|")
    return dumper.represent_scalar("tag:yaml.org,2002:str", value)


_Dumper.add_representer(str, _str)


def to_yaml(objects: Iterable[Mapping[str, Any]]) -> str:
    return yaml.dump_all(list(objects), Dumper=_Dumper, sort_keys=False, default_flow_style=False)


def chart_objects(chart: cdk8s.Chart) -> list[dict[str, Any]]:
    """The chart's objects as plain JSON-compatible dicts (what ``to_json`` returns)."""
    return list(chart.to_json())


def write_charts(charts: Mapping[str, PlatformChart], outdir: Path) -> list[Path]:
    """Write each chart to ``outdir/NN-<component>.yaml``; remove stale files."""
    outdir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for index, (name, chart) in enumerate(charts.items(), start=1):
        path = outdir / f"{index:02d}-{name}.yaml"
        tmp = path.with_suffix(".yaml.tmp")
        tmp.write_text(to_yaml(chart_objects(chart)))
        tmp.replace(path)
        written.append(path)
    for stale in outdir.glob("*.yaml"):
        if stale not in written:
            stale.unlink()
    return written


def render(settings: Settings, profile_name: str) -> dict[str, PlatformChart]:
    """The enabled charts of one profile, in a fresh cdk8s app."""
    return build_charts(cdk8s.App(), settings, PROFILES[profile_name])


def write_profile(settings: Settings, profile_name: str, outdir: Path) -> list[Path]:
    return write_charts(render(settings, profile_name), outdir / profile_name)


def _context_args(pairs: list[str]) -> dict[str, str]:
    values: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"-c expects key=value, got {pair!r}")
        values[key] = value
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m final_problem.manifests", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("dist"))
    parser.add_argument("--context", type=Path, default=Path("cdk.json"), help="cdk.json to read settings from")
    parser.add_argument("-c", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    context: dict[str, Any] = {}
    if args.context.exists():
        context = json.loads(args.context.read_text()).get("context", {})
    origins = {key: str(args.context) for key in context}
    overrides = _context_args(args.overrides)
    context.update(overrides)
    origins.update({key: "-c" for key in overrides})
    try:
        settings = config.load(context, origins)
        for profile in settings.profiles:
            for path in write_profile(settings, profile, args.out):
                print(path)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
