"""``final-problem plan``: what the next deploy would do to the running platform.

Compares the platform about to be deployed (rendered from ``cdk.json`` and ``-c``
overrides for one profile, or a synth output with ``--to DIR``) with what is deployed: a
previous synth output (``--from dist/pi``) or the live cluster (``--live``, through
``kubectl`` and the kubeconfig). Each chart records on its Namespace the settings it was
rendered with and a digest of every pod template (:mod:`final_problem.components`), so the
plan reads the deployed values back from the objects themselves.

Per component it prints one verdict, the worst of its changes, and each change on one line
with its reason and fix: **nothing**, **rolling restart** (which pods, in the order
Kubernetes replaces them), **procedure needed**, or **refused**. The rules are the
components' own (:mod:`final_problem.changes`: ``setting(change=...)``, ``upgrade_paths``),
with checks on the objects every component gets: a volume claim template's StorageClass or
a smaller size (refused: a bound claim cannot move or shrink), a larger one (procedure:
claim templates are immutable), a stateful workload or a whole component with volumes
removed (refused), a pod template changed (its pods roll).

Exit status: 0 when the deploy may go ahead (the procedures it names done first), 1 when a
change is refused, 2 when something to read or set is missing or invalid (one line on
stderr). ``--allow-rebuild`` (``make deploy ALLOW_REBUILD=1``) prints the same plan and
exits 0: for a deliberate rebuild, data lost included.

    python -m final_problem.plan --from dist/pi --target pi [-c key=value ...]
    python -m final_problem.plan --live [--kubeconfig FILE] [-c key=value ...]
    python -m final_problem.plan --from old-dist/eks --to dist/eks
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import yaml

from final_problem import versions
from final_problem.changes import Effect, UpgradePath, Verdict, decide, parse_version, refused, split_image
from final_problem.components import (
    CLUSTER_SETTINGS_ANNOTATION, COMPONENTS, POD_TEMPLATES_ANNOTATION, SETTINGS_ANNOTATION, WORKLOAD_KINDS,
    load_bundled, pod_template_digests, record_object, workload_key,
)
from final_problem.errors import ConfigError

NAME_LABEL = "app.kubernetes.io/name"
PART_OF_LABEL = "app.kubernetes.io/part-of"
#: What ``--live`` reads: the record objects (Namespaces) and what runs pods.
LIVE_KINDS = ("namespaces", "statefulsets", "deployments", "daemonsets", "jobs")


class PlanInputError(Exception):
    """Something to read or set is missing or invalid (exit status 2)."""


@dataclass
class Deployment:
    """One component as deployed, or as about to be deployed."""

    name: str
    objects: list[dict[str, Any]]
    #: Recorded settings (None: not recorded, e.g. a render from before records existed).
    settings: dict[str, Any] | None = None
    cluster: dict[str, Any] | None = None
    #: Pod template digests by workload key (None: unknown).
    templates: dict[str, str] | None = None

    @property
    def workloads(self) -> dict[str, dict[str, Any]]:
        return {workload_key(o): o for o in self.objects if o.get("kind") in WORKLOAD_KINDS}

    def images(self) -> dict[str, set[str]]:
        """Tags each image repository runs with, over every pod template (Jobs included)."""
        found: dict[str, set[str]] = {}
        for obj in self.objects:
            spec = obj.get("spec", {})
            template = spec.get("template") or spec.get("jobTemplate", {}).get("spec", {}).get("template")
            if not template:
                continue
            pod = template.get("spec", {})
            for container in [*pod.get("initContainers", []), *pod.get("containers", [])]:
                repository, tag = split_image(container.get("image", ""))
                found.setdefault(repository, set()).add(tag)
        return found


def from_objects(objects: Iterable[Mapping[str, Any]], *, source: str, digests_from_objects: bool) -> dict[str, Deployment]:
    """Components by name from rendered or live objects (grouped by their
    ``app.kubernetes.io/name`` label), their records read from the record objects.
    ``digests_from_objects``: when a component carries no recorded digests, compute them
    from its objects (a synth output; never live objects, which the API server defaulted)."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    for obj in objects:
        labels = obj.get("metadata", {}).get("labels") or {}
        name = labels.get(NAME_LABEL)
        if name:
            grouped.setdefault(name, []).append(dict(obj))
    result: dict[str, Deployment] = {}
    for name, objs in grouped.items():
        record = record_object([o for o in objs if o.get("kind") == "Namespace"] or objs)
        annotations = (record or {}).get("metadata", {}).get("annotations") or {}
        deployment = Deployment(name=name, objects=objs)
        try:
            if SETTINGS_ANNOTATION in annotations:
                deployment.settings = json.loads(annotations[SETTINGS_ANNOTATION])
            if CLUSTER_SETTINGS_ANNOTATION in annotations:
                deployment.cluster = json.loads(annotations[CLUSTER_SETTINGS_ANNOTATION])
            if POD_TEMPLATES_ANNOTATION in annotations:
                deployment.templates = json.loads(annotations[POD_TEMPLATES_ANNOTATION])
        except json.JSONDecodeError as e:
            raise PlanInputError(f"{source}: component {name}: its record annotations are not JSON ({e.msg}): "
                                 "deploy it once with this version, or compare with --from a synth output") from None
        if deployment.templates is None and digests_from_objects:
            deployment.templates = pod_template_digests(objs)
        result[name] = deployment
    return result


def read_dir(path: Path) -> dict[str, Deployment]:
    """The components of a synth output directory (``dist/pi``: ``NN-<component>.yaml``)."""
    if not path.is_dir():
        raise PlanInputError(f"{path}: no such directory: give a synth output, e.g. --from dist/pi (after make synth)")
    files = sorted(path.glob("*.yaml"))
    if not files:
        raise PlanInputError(f"{path}: no .yaml files: give a synth output directory, e.g. dist/pi")
    objects: list[dict[str, Any]] = []
    for file in files:
        try:
            objects += [o for o in yaml.safe_load_all(file.read_text()) if isinstance(o, dict)]
        except yaml.YAMLError as e:
            raise PlanInputError(f"{file}: not YAML ({str(e).splitlines()[0]}): give a synth output directory") from None
    return from_objects(objects, source=str(path), digests_from_objects=True)


def read_live_json(document: Mapping[str, Any]) -> dict[str, Deployment]:
    """The components in ``kubectl get ... -o json`` output (a ``List``)."""
    items = document.get("items")
    if not isinstance(items, list):
        raise PlanInputError("the cluster's answer is not a list of objects (kubectl get -o json)")
    return from_objects(items, source="the live cluster", digests_from_objects=False)


def read_live(kubeconfig: str | None) -> dict[str, Deployment]:
    """The platform's objects in the cluster the kubeconfig points at, through ``kubectl``."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise PlanInputError("kubectl is not on the PATH: install it, or compare with --from a previous synth output")
    command = [kubectl, "get", ",".join(LIVE_KINDS), "--all-namespaces", "-l", f"{PART_OF_LABEL}=final-problem", "-o", "json"]
    if kubeconfig:
        command[1:1] = ["--kubeconfig", kubeconfig]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    except subprocess.TimeoutExpired:
        raise PlanInputError("kubectl get did not answer within 60 s: check the kubeconfig's cluster is reachable") from None
    if done.returncode != 0:
        first = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise PlanInputError(f"kubectl get failed ({first}): check the kubeconfig (--kubeconfig or KUBECONFIG; EKS: "
                             "aws eks update-kubeconfig); before the first deploy, make deploy FIRST_DEPLOY=1")
    try:
        return read_live_json(json.loads(done.stdout))
    except json.JSONDecodeError:
        raise PlanInputError("kubectl get printed no JSON: check kubectl and the kubeconfig") from None


def render(cdk_json: Path, overrides: Sequence[str], target: str) -> dict[str, Deployment]:
    """The components ``make synth`` would write for profile ``target``."""
    from final_problem import manifests

    settings = manifests.settings_from(cdk_json, list(overrides))
    charts = manifests.render(settings, target)
    objects = [o for chart in charts.values() for o in manifests.chart_objects(chart)]
    return from_objects(objects, source=f"render for {target}", digests_from_objects=True)


# --- comparing ------------------------------------------------------------------------

@dataclass
class Line:
    """One change: what changed, and its verdict."""

    what: str
    verdict: Verdict

    def text(self) -> str:
        reason = self.verdict.reason.rstrip(".")
        fix = f". Fix: {self.verdict.fix.rstrip('.')}" if self.verdict.fix else ""
        return " ".join(f"{self.what}: {self.verdict.effect.label}: {reason}{fix}".split())


@dataclass
class ComponentPlan:
    name: str
    lines: list[Line] = field(default_factory=list)
    #: Pods replaced, by workload, in the order Kubernetes replaces them.
    restarts: list[tuple[str, list[str]]] = field(default_factory=list)

    @property
    def effect(self) -> Effect:
        worst = max((line.verdict.effect for line in self.lines), default=Effect.NOTHING)
        return max(worst, Effect.ROLLING) if self.restarts else worst

    def summary(self) -> str:
        """The verdict; with the pods a deploy replaces, in the order Kubernetes replaces them."""
        if not self.restarts:
            return self.effect.label
        pods = "; ".join(f"{workload}: {', '.join(names)}" for workload, names in self.restarts)
        notes = []
        if any(workload.startswith("StatefulSet ") for workload, _ in self.restarts):
            notes.append("a StatefulSet one pod at a time from the highest ordinal, each Ready first")
        if len(self.restarts) > 1:
            notes.append("the workloads side by side")
        order = f" ({'; '.join(notes)})" if notes else ""
        if self.effect == Effect.ROLLING:
            return f"rolling restart of {pods}{order}"
        return f"{self.effect.label}; the deploy would also roll {pods}{order}"


@dataclass
class Plan:
    components: list[ComponentPlan]

    @property
    def effect(self) -> Effect:
        return max((c.effect for c in self.components), default=Effect.NOTHING)

    def text(self) -> str:
        width = max((len(c.name) for c in self.components), default=8) + 2
        out = []
        for c in self.components:
            out.append(f"{c.name:{width}}{c.summary()}")
            out += [f"  {line.text()}" for line in c.lines]
        return "\n".join(out)


def _quantity_bytes(text: Any) -> float | None:
    match = re.fullmatch(r"([0-9.]+)([KMGTPE]i?)?", str(text))
    if not match:
        return None
    units = {"": 1, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
             "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
    return float(match.group(1)) * units[match.group(2) or ""]


def _claims(workload: Mapping[str, Any]) -> dict[str, tuple[str | None, str]]:
    return {
        c.get("metadata", {}).get("name", ""): (
            c.get("spec", {}).get("storageClassName"),
            str(c.get("spec", {}).get("resources", {}).get("requests", {}).get("storage", "")),
        )
        for c in workload.get("spec", {}).get("volumeClaimTemplates") or []
    }


def _short(key: str) -> str:
    kind, namespace, name = key.split("/", 2)
    return f"{kind} {namespace}/{name}" if namespace else f"{kind} {name}"


def _pods(workload: Mapping[str, Any], old: Mapping[str, Any]) -> list[str]:
    """The pods a rolling update of ``workload`` replaces, in order. A StatefulSet replaces
    one pod at a time from the largest ordinal to the smallest, each Ready before the next
    (Kubernetes docs, StatefulSets, "Rolling Updates"); a Deployment as its strategy allows
    (``maxSurge`` and ``maxUnavailable``, 25% each unless set: Deployments, "Rolling Update
    Deployment")."""
    name = workload["metadata"]["name"]
    replicas = int(old.get("spec", {}).get("replicas", 1) or 0)
    kind = workload["kind"]
    if kind == "StatefulSet":
        return [f"{name}-{i}" for i in reversed(range(replicas))]
    if kind == "DaemonSet":
        return [f"{name} on every node"]
    rolling = (workload.get("spec", {}).get("strategy") or {}).get("rollingUpdate") or {}
    surge, unavailable = rolling.get("maxSurge", "25%"), rolling.get("maxUnavailable", "25%")
    return [f"{replicas} {name} pod{'s' if replicas != 1 else ''} (surge {surge}, unavailable {unavailable})"]


def _upgrade_paths() -> dict[str, UpgradePath]:
    """Every declared upgrade path by image repository: the platform's own, then the
    components'."""
    load_bundled()
    paths = dict(versions.UPGRADE_PATHS)
    for cls in COMPONENTS.values():
        paths.update(cls.upgrade_paths)
    return paths


def _setting_rules(component: str) -> tuple[dict[str, Any], str]:
    """Change rules of ``component``'s recorded values by name, and its settings section."""
    cls = COMPONENTS.get(component)
    settings_class = cls.settings_class if cls is not None else None
    if settings_class is None:
        return {}, component
    rules: dict[str, Any] = {info.name: info.change for info in settings_class.infos()}
    rules.update(settings_class.change_rules)
    return rules, settings_class.section or component


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "unset"
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "[]"
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    return str(value)


def _compare_values(old: Mapping[str, Any], new: Mapping[str, Any], rules: Mapping[str, Any],
                    prefix: str) -> list[Line]:
    lines = []
    for key in sorted(set(old) | set(new)):
        if key in old and key in new and old[key] == new[key]:
            continue
        what = f"{prefix}{key} {_show(old.get(key))} -> {_show(new.get(key))}"
        rule = rules.get(key)
        if rule is None:
            # Undeclared (an extension's): what the objects show judges it (pod templates, volumes).
            lines.append(Line(what, Verdict(Effect.NOTHING, "no change rule declared: judged by the objects it changes")))
            continue
        verdict = decide(rule, old.get(key), new.get(key), name=f"{prefix}{key}")
        lines.append(Line(what, verdict))
    return lines


def compare_component(name: str, old: Deployment | None, new: Deployment | None,
                      paths: Mapping[str, UpgradePath]) -> ComponentPlan:
    plan = ComponentPlan(name)
    if old is None:
        plan.lines.append(Line("component", Verdict(Effect.NOTHING, "new: created")))
        return plan
    if new is None:
        claims = [k for k, w in old.workloads.items() if _claims(w)]
        if claims:
            plan.lines.append(Line("component", refused(
                f"removed: deleting its namespace deletes the volume claims of {', '.join(_short(k) for k in claims)} "
                "(the volumes are retained, but no longer bound)",
                f"keep {name} in components, or back its data up and deploy with ALLOW_REBUILD=1")))
        else:
            plan.lines.append(Line("component", Verdict(Effect.NOTHING, "removed: it keeps no data")))
        return plan

    rules, section = _setting_rules(name)
    if old.settings is None:
        plan.lines.append(Line("settings", Verdict(Effect.NOTHING,
                                                   "none recorded on the deployed objects: judged by its objects only")))
    elif new.settings is not None:
        plan.lines += _compare_values(old.settings, new.settings, rules, f"{section}.")

    # Versions: every image repository both sides run, along its upgrade path.
    old_images, new_images = old.images(), new.images()
    for repository in sorted(set(old_images) & set(new_images)):
        # What runs is the newest tag deployed: older ones are finished Jobs not yet cleaned up.
        was = [max(old_images[repository], key=lambda tag: parse_version(tag) or ())]
        now = sorted(new_images[repository])
        if was == now:
            continue
        cls = COMPONENTS.get(name)
        path = (cls.upgrade_paths.get(repository) if cls is not None else None) or paths.get(repository)
        what = f"image {repository} {','.join(was)} -> {','.join(now)}"
        if path is None:
            plan.lines.append(Line(what, refused("no upgrade path is declared for this image",
                                                 "declare upgrade_paths for it in the component's chart")))
            continue
        verdicts = [path.check(a, b) for a in was for b in now]
        plan.lines.append(Line(what, max(verdicts, key=lambda v: v.effect)))

    # Objects every component gets checked the same way.
    old_workloads, new_workloads = old.workloads, new.workloads
    for key, workload in old_workloads.items():
        if key not in new_workloads:
            if _claims(workload):
                plan.lines.append(Line(_short(key), refused(
                    "removed with its volume claims: its data is no longer served",
                    "keep the setting that renders it, or back its data up and deploy with ALLOW_REBUILD=1")))
            continue
        if workload.get("kind") != "StatefulSet":
            continue
        before, after = _claims(workload), _claims(new_workloads[key])
        for claim in sorted(set(before) & set(after)):
            (old_class, old_size), (new_class, new_size) = before[claim], after[claim]
            what = f"{_short(key)} volume {claim}"
            if old_class != new_class:
                plan.lines.append(Line(f"{what} StorageClass {old_class} -> {new_class}", refused(
                    "a bound volume cannot move to another StorageClass: new claims would start empty",
                    f"keep StorageClass {old_class}, or back up, restore into the new class and deploy with ALLOW_REBUILD=1")))
            elif old_size != new_size:
                a, b = _quantity_bytes(old_size), _quantity_bytes(new_size)
                if a is not None and b is not None and b < a:
                    plan.lines.append(Line(f"{what} {old_size} -> {new_size}", refused(
                        "a volume cannot shrink (Kubernetes refuses a smaller claim)",
                        f"keep {old_size}, or back up, recreate smaller volumes and deploy with ALLOW_REBUILD=1")))
                else:
                    plan.lines.append(Line(f"{what} {old_size} -> {new_size}", Verdict(
                        Effect.PROCEDURE, "claim templates of a StatefulSet are immutable: the deploy's apply fails",
                        f"grow each claim in place (kubectl -n {key.split('/')[1]} patch pvc {claim}-{key.split('/')[2]}-N "
                        f"to {new_size}; its StorageClass must allow expansion), then kubectl delete statefulset "
                        f"{key.split('/')[2]} --cascade=orphan, then deploy")))

    # Pods: a changed pod template rolls its workload.
    if old.templates is not None and new.templates is not None:
        for key, workload in new_workloads.items():
            if key in old_workloads and old.templates.get(key) not in (None, new.templates.get(key)):
                plan.restarts.append((_short(key), _pods(workload, old_workloads[key])))
    elif old.templates is None:
        plan.lines.append(Line("pods", Verdict(Effect.NOTHING, "no pod template digests recorded: restarts unknown")))
    return plan


def compare(old: Mapping[str, Deployment], new: Mapping[str, Deployment]) -> Plan:
    """The plan of deploying ``new`` over ``old``."""
    paths = _upgrade_paths()
    components: list[ComponentPlan] = []
    from final_problem.config import cluster_infos

    old_cluster = next((d.cluster for d in old.values() if d.cluster is not None), None)
    new_cluster = next((d.cluster for d in new.values() if d.cluster is not None), None)
    if old_cluster is not None and new_cluster is not None:
        old_cluster, new_cluster = dict(old_cluster), dict(new_cluster)
        profiles = {old_cluster.pop("profile", None), new_cluster.pop("profile", None)}
        rules = {info.name: info.change for info in cluster_infos()}
        if profiles != {"eks"}:
            # Off AWS only the settings of the Pi profile mean anything to what runs.
            rules = {k: v for k, v in rules.items() if k.startswith("pi_")}
            old_cluster = {k: v for k, v in old_cluster.items() if k in rules}
            new_cluster = {k: v for k, v in new_cluster.items() if k in rules}
        cluster = ComponentPlan("cluster")
        cluster.lines = _compare_values(old_cluster, new_cluster, rules, "")
        components.append(cluster)
    names = list(new) + [n for n in old if n not in new]
    for name in names:
        components.append(compare_component(name, old.get(name), new.get(name), paths))
    return Plan(components)


# --- command line ---------------------------------------------------------------------

def parser() -> argparse.ArgumentParser:
    # No abbreviations: CDK_ARGS pass through, and the CDK CLI's --all must not read as --allow-rebuild.
    p = argparse.ArgumentParser(
        prog="final-problem plan", allow_abbrev=False,
        description="What the next deploy would do to the running platform: nothing, rolling restarts, "
                    "procedures, or refused changes (exit status 1).",
    )
    deployed = p.add_mutually_exclusive_group(required=True)
    deployed.add_argument("--from", dest="from_dir", type=Path, metavar="DIR",
                          help="what is deployed: a previous synth output, e.g. a copy of dist/pi")
    deployed.add_argument("--live", action="store_true",
                          help="what is deployed: the cluster's objects, through kubectl and the kubeconfig")
    p.add_argument("--kubeconfig", metavar="FILE", help="with --live: the kubeconfig (default: KUBECONFIG, ~/.kube/config)")
    p.add_argument("--to", dest="to_dir", type=Path, metavar="DIR",
                   help="what is about to be deployed: a synth output (default: render cdk.json and -c for --target)")
    p.add_argument("--target", choices=("eks", "pi"), default="eks", help="the render profile (default: eks)")
    p.add_argument("--cdk-json", type=Path, default=Path("cdk.json"), metavar="FILE", help="settings (default: cdk.json)")
    p.add_argument("-c", "--context", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="a setting, as for cdk synth (repeatable)")
    p.add_argument("--allow-rebuild", action="store_true",
                   default=os.environ.get("ALLOW_REBUILD", "") not in ("", "0"),
                   help="exit 0 even when a change is refused: a deliberate rebuild, data loss included "
                        "(also ALLOW_REBUILD=1)")
    return p


def run(argv: Sequence[str]) -> int:
    # Arguments meant for the CDK CLI (make deploy passes CDK_ARGS on) are ignored.
    args, _ = parser().parse_known_args(list(argv))
    if args.kubeconfig and not args.live:
        raise PlanInputError("--kubeconfig goes with --live")
    old = read_live(args.kubeconfig) if args.live else read_dir(args.from_dir)
    if args.to_dir is not None:
        new = read_dir(args.to_dir)
        about = str(args.to_dir)
    else:
        new = render(args.cdk_json, args.overrides, args.target)
        about = f"{args.cdk_json}{' and -c' if args.overrides else ''}, {args.target} profile"
    plan = compare(old, new)
    print(f"plan: {'the live cluster' if args.live else args.from_dir} -> {about}")
    print(plan.text())
    if plan.effect == Effect.REFUSED:
        if args.allow_rebuild:
            print("refused changes allowed (--allow-rebuild / ALLOW_REBUILD=1): a deliberate rebuild")
            return 0
        print("error: the deploy would destroy data or strand the platform (refused above): change the settings back, "
              "or rebuild deliberately with ALLOW_REBUILD=1 (make deploy) / --allow-rebuild", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """The command; a missing input or a bad setting ends in one line on stderr, status 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    traceback = os.environ.get("FINAL_PROBLEM_TRACEBACK", "") not in ("", "0")
    try:
        return run(argv)
    except (PlanInputError, ConfigError) as e:
        if traceback:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
