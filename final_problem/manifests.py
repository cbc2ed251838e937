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
from typing import Any, Callable, Iterable, Iterator, Mapping

import cdk8s
import yaml

from final_problem import capacity, config, policy
from final_problem.components import PlatformChart, build_charts, left_out_line
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
    return write_objects({name: chart_objects(chart) for name, chart in charts.items()}, outdir)


def write_objects(objects: Mapping[str, list[dict[str, Any]]], outdir: Path) -> list[Path]:
    """Write each component's objects to ``outdir/NN-<component>.yaml`` (in the mapping's
    order); remove stale files."""
    outdir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for index, (name, objs) in enumerate(objects.items(), start=1):
        path = outdir / f"{index:02d}-{name}.yaml"
        tmp = path.with_suffix(".yaml.tmp")
        tmp.write_text(to_yaml(objs))
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


def settings_from(cdk_json: str | Path, overrides: list[str]) -> Settings:
    """Settings as ``cdk synth`` would read them: cdk.json context, then ``-c`` pairs
    (each value remembers where it came from, for the error message)."""
    path = Path(cdk_json)
    context: dict[str, Any] = {}
    if path.exists():
        context = json.loads(path.read_text()).get("context", {})
    origins = {key: str(path) for key in context}
    values = _context_args(overrides)
    context.update(values)
    origins.update({key: "-c" for key in values})
    return config.load(context, origins)


def settings_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """A command line that reads settings as ``cdk synth`` does (``--context``, ``-c``)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--context", type=Path, default=Path("cdk.json"), help="cdk.json to read settings from")
    parser.add_argument("-c", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    return parser


def profile_objects(settings: Settings) -> Iterator[tuple[str, dict[str, list[dict[str, Any]]]]]:
    """Each profile in the settings with its objects, by component."""
    for profile in settings.profiles:
        yield profile, {name: chart_objects(chart) for name, chart in render(settings, profile).items()}


def one_line_errors(command: Callable[[], None]) -> int:
    """Run ``command``; a bad setting ends it with its one line on stderr and exit 1."""
    try:
        command()
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = settings_parser("python -m final_problem.manifests", __doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("dist"))
    args = parser.parse_args(argv)

    def write() -> None:
        settings = settings_from(args.context, args.overrides)
        for profile, objects in profile_objects(settings):
            # A profile whose pods cannot fit on its nodes fails before anything is written.
            capacity.check(settings, profile, objects)
            policy.check_render(profile, dict(objects))
            for path in write_objects(objects, args.out / profile):
                print(path)
            if left_out := left_out_line(settings, PROFILES[profile]):
                print(left_out)

    return one_line_errors(write)


if __name__ == "__main__":
    sys.exit(main())
