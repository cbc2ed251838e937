"""``final-problem scale``: change a quorum's membership on the running platform.

    final-problem scale zookeeper.replicas=5 --live            # the steps, nothing changed
    final-problem scale zookeeper.replicas=5 --live --apply    # run them, one at a time
    final-problem scale kafka.brokers=3 --from dist/eks        # the steps from a synth output

The deployed settings are read back from the platform's own records (the component's
Namespace, as ``final-problem plan`` reads them): from the live cluster through
``kubectl`` (``--live``), or from a previous synth output (``--from DIR``, steps printed
only). The steps are the component's own procedure (:mod:`final_problem.scaling`): members
added and removed one at a time, data moved first, the quorum kept; a change no procedure
makes safe is refused with one line and exit status 1. Once the steps have run, set the
same value in ``cdk.json`` and deploy: ``final-problem plan`` then shows a rolling restart
at most. Every step is safe to run again, so a failed run is resumed by running it again.

Exit status: 0 done (or printed), 1 refused or a step failed, 2 something to give or set.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Sequence

from final_problem import scaling
from final_problem.components import COMPONENTS, SETTINGS_ANNOTATION, load_bundled
from final_problem.errors import ConfigError
from final_problem.plan import Deployment, PlanInputError, read_dir, read_live
from final_problem.profiles import PROFILES


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="final-problem scale", allow_abbrev=False,
                                description="Change a quorum's membership on the running platform, one member at a time.")
    p.add_argument("change", metavar="COMPONENT.SETTING=VALUE", help="e.g. zookeeper.replicas=5")
    deployed = p.add_mutually_exclusive_group(required=True)
    deployed.add_argument("--live", action="store_true", help="the deployed settings from the cluster, through kubectl")
    deployed.add_argument("--from", dest="from_dir", type=Path, metavar="DIR",
                          help="the deployed settings from a previous synth output (steps printed only)")
    p.add_argument("--kubeconfig", metavar="FILE", help="with --live: the kubeconfig (default: KUBECONFIG, ~/.kube/config)")
    p.add_argument("--target", choices=sorted(PROFILES), default="eks", help="the deployed profile (default: eks)")
    p.add_argument("--apply", action="store_true", help="run the steps (with --live); without it they are printed")
    return p


def _namespace(deployment: Deployment) -> str:
    namespace = next((o for o in deployment.objects if o.get("kind") == "Namespace"), None)
    if namespace is not None:
        return str(namespace["metadata"]["name"])
    return str(deployment.objects[0].get("metadata", {}).get("namespace", "default"))


def plan_steps(change: str, deployed: dict[str, Deployment], target: str) -> list[scaling.Step]:
    """The steps of ``change`` (``component.setting=value``) from the ``deployed`` platform."""
    key, sep, value = change.partition("=")
    component, dot, setting = key.partition(".")
    if not sep or not dot:
        raise PlanInputError(f"{change!r}: not COMPONENT.SETTING=VALUE: give e.g. zookeeper.replicas=5")
    load_bundled()
    if component not in COMPONENTS:
        raise PlanInputError(f"{component}: no such component: one of {', '.join(sorted(COMPONENTS))}")
    if (component, setting) not in scaling.PROCEDURES:
        members = sorted(f"{c}.{s}" for c, s in scaling.PROCEDURES)
        raise PlanInputError(f"{key}: not a membership setting ({', '.join(members)}): change it in cdk.json and "
                             "check with final-problem plan")
    found = deployed.get(component)
    if found is None:
        raise PlanInputError(f"{component}: not deployed there: deploy it first, or check --live/--from")
    if found.settings is None:
        raise PlanInputError(f"{component}: its deployed settings are not recorded: deploy it once with this version")
    cls = COMPONENTS[component].settings_class
    profile = PROFILES[target]
    recorded = {k: v for k, v in found.settings.items() if k in {i.name for i in cls.infos()}}
    old = cls.from_values(recorded, profile)
    new = cls.from_values({**recorded, setting: value}, profile)
    if getattr(old, setting) == getattr(new, setting):
        return []
    return scaling.steps_for(component, setting, old, new, _namespace(found))


def record(runner: scaling.KubectlRunner, change: str, deployed: dict[str, Deployment]) -> None:
    """The new value written into the component's record (its Namespace's settings
    annotation), so the next ``final-problem plan`` compares the deploy with what runs."""
    key, _, value = change.partition("=")
    component, _, setting = key.partition(".")
    found = deployed[component]
    cls = COMPONENTS[component].settings_class
    parsed = getattr(cls.from_values({setting: value}, PROFILES["eks"]), setting)
    settings = {**(found.settings or {}), setting: parsed}
    runner.annotate_namespace(_namespace(found), SETTINGS_ANNOTATION, json.dumps(settings, sort_keys=True))


def run(argv: Sequence[str]) -> int:
    args = parser().parse_args(list(argv))
    if args.kubeconfig and not args.live:
        raise PlanInputError("--kubeconfig goes with --live")
    if args.apply and not args.live:
        raise PlanInputError("--apply runs the steps on the cluster: give --live (and --kubeconfig if needed)")
    deployed = read_live(args.kubeconfig) if args.live else read_dir(args.from_dir)
    try:
        steps = plan_steps(args.change, deployed, args.target)
    except scaling.Refused as e:
        print(f"refused: {e}", file=sys.stderr)
        return 1
    if not steps:
        print(f"{args.change}: already so; nothing to do")
        return 0
    if not args.apply:
        print(f"{args.change}: {len(steps)} steps (run with --apply to carry them out):")
        for number, step in enumerate(steps, 1):
            print(f"  {number}. {step.describe()}")
        return 0
    runner = scaling.KubectlRunner(args.kubeconfig)
    try:
        scaling.run(steps, runner, echo=print)
        record(runner, args.change, deployed)
    except scaling.Refused as e:
        print(f"refused: {e}", file=sys.stderr)
        return 1
    except scaling.StepFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{args.change}: done; set it in cdk.json and deploy (final-problem plan shows what that rolls)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return run(argv)
    except (PlanInputError, ConfigError) as e:
        if os.environ.get("FINAL_PROBLEM_TRACEBACK", "") not in ("", "0"):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
