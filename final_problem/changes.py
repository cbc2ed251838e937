"""Change rules: what changing a setting or a pinned version does to a live platform.

Every setting declares, beside its documentation, what a change of its value does once the
platform runs (``setting(..., change=...)``), and every image a component runs declares its
supported upgrade path (:class:`UpgradePath`, in :mod:`final_problem.versions` for the
platform's own images). ``final-problem plan`` (:mod:`final_problem.plan`) reads them to
tell, before a deploy, what the deploy would do. The four classes of change, mildest first:

- **nothing**: no pod restarts (a Job or a Service changes, or nothing running reads it);
- **rolling restart**: pods are replaced one at a time, each waiting for the previous to
  be Ready (StatefulSets from the highest ordinal down; Deployments through their
  ``maxUnavailable``/``maxSurge``), the disruption budgets holding;
- **procedure**: the change is safe only with steps the deploy does not take (membership of
  a quorum, a volume grown in place, a schema): the plan names them;
- **refused**: the change destroys data or strands the running platform (a history shard
  count, fewer partitions, a smaller volume, another StorageClass, a version outside its
  path); ``make deploy`` stops on it unless the rebuild is deliberate (``ALLOW_REBUILD=1``).

A rule is one of :func:`nothing`, :func:`rolling`, :func:`procedure`, :func:`refused`, or a
function of the old and new values returning one of them (:func:`when_grows` for the common
"larger is fine, smaller is not"). Extensions declare theirs the same way, through
:mod:`final_problem.api`.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Any, Callable, Union


class Effect(enum.IntEnum):
    """The class of a change, mildest first: a plan's verdict is the worst of its changes."""

    NOTHING = 0
    ROLLING = 1
    PROCEDURE = 2
    REFUSED = 3

    @property
    def label(self) -> str:
        return {0: "nothing", 1: "rolling restart", 2: "procedure needed", 3: "refused"}[int(self)]


@dataclass(frozen=True)
class Verdict:
    """What one change does: its :class:`Effect`, why, and what to do about it (``fix``:
    the steps of a procedure, or how to avoid a refused change)."""

    effect: Effect
    reason: str
    fix: str = ""


#: A change rule: a fixed :class:`Verdict`, or a function of (old value, new value).
ChangeRule = Union[Verdict, Callable[[Any, Any], Verdict]]


def nothing(reason: str) -> Verdict:
    """No pod restarts: ``reason`` says why (what reads the value, if anything)."""
    return Verdict(Effect.NOTHING, reason)


def rolling(reason: str) -> Verdict:
    """Pods restart one at a time; the plan lists which, in order, from the rendered pod
    templates that change. ``reason``: why they must restart (what reads the value)."""
    return Verdict(Effect.ROLLING, reason)


def procedure(reason: str, fix: str) -> Verdict:
    """Safe only with steps the deploy does not take; ``fix`` names them."""
    return Verdict(Effect.PROCEDURE, reason, fix)


def refused(reason: str, fix: str) -> Verdict:
    """Data-destroying (or stranding) on a live platform; ``fix`` says how to keep the data
    or how to rebuild deliberately."""
    return Verdict(Effect.REFUSED, reason, fix)


def when_grows(grow: Verdict, shrink: Verdict) -> Callable[[Any, Any], Verdict]:
    """``grow`` when the new value is larger than the old one, else ``shrink``."""

    def rule(old: Any, new: Any) -> Verdict:
        return grow if new > old else shrink

    return rule


def decide(rule: ChangeRule, old: Any, new: Any, *, name: str = "") -> Verdict:
    """The verdict of ``rule`` for a change of setting ``name`` from ``old`` to ``new``;
    ``{old}``, ``{new}`` and ``{name}`` in its reason and fix are filled in."""
    verdict = rule(old, new) if callable(rule) else rule

    def fill(text: str) -> str:
        return text.replace("{old}", _value(old)).replace("{new}", _value(new)).replace("{name}", name)

    return Verdict(verdict.effect, fill(verdict.reason), fill(verdict.fix))


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return "unset" if value is None else str(value)


def volume_size(what: str) -> Callable[[Any, Any], Verdict]:
    """The rule of a StatefulSet's volume size (``what``: whose volumes): larger is a
    procedure (claim templates are immutable, so the deploy's apply would fail), smaller is
    refused (a bound volume cannot shrink; Kubernetes docs, "Expanding Persistent Volumes
    Claims": only growth is supported)."""
    return when_grows(
        procedure(f"{what}: a StatefulSet's claim templates cannot change, and each bound claim must be grown in place",
                  "patch each claim to the new size (its StorageClass must allow expansion), kubectl delete the "
                  "StatefulSet with --cascade=orphan (its pods keep running), then deploy"),
        refused(f"{what}: a volume cannot shrink; smaller claims would be new, empty volumes",
                "keep {name}={old}, or back up, rebuild on smaller volumes and deploy with ALLOW_REBUILD=1"),
    )


def peer_port(what: str) -> Verdict:
    """The rule of a port quorum members reach each other on: a member restarted on the new
    port cannot reach those still on the old one, so a rolling restart stalls at its first
    pod (it never becomes Ready) and one failure more loses the quorum."""
    return procedure(f"{what}: members restarted on the new port cannot reach those still on the old one, so a rolling "
                     "restart stalls at its first pod",
                     "keep {name}={old}, or stop every member and start them together on the new port (a full outage)")


# --- versions -------------------------------------------------------------------------

_VERSION = re.compile(r"(?<![0-9.])v?([0-9]+(?:\.[0-9]+){1,3})")


def parse_version(text: str) -> tuple[int, ...] | None:
    """The release numbers in an image tag or version: ``4.4.0`` -> (4, 4, 0),
    ``17.11-trixie`` -> (17, 11), ``distroless-v1.40.0`` -> (1, 40, 0); None without one."""
    match = _VERSION.search(text)
    return tuple(int(part) for part in match.group(1).split(".")) if match else None


def split_image(image: str) -> tuple[str, str]:
    """``registry/path:tag`` -> (``registry/path``, ``tag``); a digest keeps its ``@``."""
    if "@" in image:
        repository, _, digest = image.partition("@")
        return repository, "@" + digest
    slash = image.rfind("/")
    colon = image.rfind(":")
    if colon > slash:
        return image[:colon], image[colon + 1:]
    return image, ""


def _show(version: tuple[int, ...]) -> str:
    return ".".join(str(part) for part in version)


@dataclass(frozen=True, kw_only=True)
class UpgradePath:
    """The versions one deploy may move an image between, and what such a move does.

    - ``name``: what runs (``Kafka``);
    - ``within``: the part of the version that must not change: ``"major"`` (4.x stays 4.x)
      or ``"minor"`` (3.9.x stays 3.9.x); ``None``: any version;
    - ``step``: how far one deploy may go forward: ``"minor"`` (one minor at a time,
      patches free), or ``None`` (any forward move within ``within``);
    - ``downgrade``: ``"patch"`` (back to an earlier patch of the same minor), ``"any"``
      (within ``within``), or ``None`` (never: a newer version's data or schema stays);
    - ``upgrade``: what a supported move does (usually :func:`rolling`, with the order);
    - ``outside``: why a move outside the path is refused and what to do instead;
    - ``source``: where the path comes from (upstream upgrade notes).
    """

    name: str
    within: str | None
    step: str | None
    downgrade: str | None
    upgrade: Verdict
    outside: str
    source: str

    def __post_init__(self) -> None:
        if self.within not in ("major", "minor", None) or self.step not in ("minor", None) \
                or self.downgrade not in ("patch", "any", None):
            raise ValueError(f"{self.name}: within must be major/minor/None, step minor/None, downgrade patch/any/None")

    def check(self, old: str, new: str) -> Verdict:
        """The verdict of moving from version (or tag) ``old`` to ``new``."""
        was, now = parse_version(old), parse_version(new)
        if was is None or now is None:
            if old == new:
                return nothing(f"{self.name} {new}: unchanged")
            return refused(f"{self.name} {old} -> {new}: not a version this path can compare",
                           f"pin a numbered release tag (and keep {old} until then)")
        was3, now3 = (was + (0, 0))[:3], (now + (0, 0))[:3]
        move = f"{self.name} {_show(was)} -> {_show(now)}"
        if was3 == now3:
            return nothing(f"{self.name} {_show(now)}: unchanged")
        bound = {"major": 1, "minor": 2, None: 0}[self.within]
        if was3[:bound] != now3[:bound]:
            return refused(f"{move}: outside the supported path ({self.outside})",
                           f"keep {self.name} {'.'.join(map(str, was3[:bound]))}.x; {self.source}")
        if now3 < was3:
            allowed = self.downgrade == "any" or (self.downgrade == "patch" and was3[:2] == now3[:2])
            if not allowed:
                return refused(f"{move}: a downgrade {'across minors ' if self.downgrade == 'patch' else ''}"
                               f"is not supported (the newer version's data or schema stays)",
                               f"keep {self.name} {_show(was)}; {self.source}")
            return Verdict(self.upgrade.effect, f"{move}: {self.upgrade.reason}", self.upgrade.fix)
        if self.step == "minor" and (now3[0] != was3[0] or now3[1] > was3[1] + 1):
            return refused(f"{move}: one minor at a time", f"deploy the newest {was3[0]}.{was3[1] + 1}.x first; {self.source}")
        return Verdict(self.upgrade.effect, f"{move}: {self.upgrade.reason}", self.upgrade.fix)


def kubernetes_version_change(old: Any, new: Any) -> Verdict:
    """The rule of the cluster's Kubernetes minor: EKS updates a control plane one minor at a
    time and never back (EKS user guide, "Update existing cluster to new Kubernetes
    version"); the managed node group then replaces its nodes one at a time, draining each
    through the disruption budgets."""
    was, now = parse_version(str(old)), parse_version(str(new))
    if was is None or now is None or now < was:
        return refused(f"Kubernetes {old} -> {new}: EKS cannot downgrade a cluster", "keep {name}={old}")
    if now[:2] > (was[0], was[1] + 1):
        return refused(f"Kubernetes {old} -> {new}: EKS updates one minor at a time",
                       f"deploy {was[0]}.{was[1] + 1} first, then {new}")
    return Verdict(Effect.ROLLING, f"Kubernetes {old} -> {new}: the control plane updates in place, then the node group "
                                   "replaces its nodes one at a time, draining each (the disruption budgets hold)")


# --- the rules as a table (README, "Upgrading") ----------------------------------------------

def _rule_cell(rule: Any) -> str:
    if rule is None:
        return "undeclared: judged by the pod templates it changes"
    if isinstance(rule, Verdict):
        return f"{rule.effect.label}: {rule.reason}"
    doc = " ".join((getattr(rule, "__doc__", None) or "").strip().split("\n\n")[0].split())
    return f"depends on the values{': ' + doc if doc else ''}"


def rules_markdown() -> str:
    """Every declared change rule and upgrade path, as Markdown tables: the cluster's settings,
    each registered component's settings, then the upgrade path of each image."""
    from final_problem import components, config, versions

    components.load_bundled()
    rows = ["| setting | on a running platform |", "|---|---|"]
    rows += [f"| `{info.name}` | {_rule_cell(info.change)} |" for info in config.cluster_infos()]
    for name, cls in components.COMPONENTS.items():
        if cls.settings_class is None:
            continue
        rows += [f"| `{name}.{info.name}` | {_rule_cell(info.change)} |" for info in cls.settings_class.infos()]
        rows += [f"| `{name}.{key}` (in code) | {_rule_cell(rule)} |" for key, rule in cls.settings_class.change_rules.items()]
    paths: dict[str, UpgradePath] = dict(versions.UPGRADE_PATHS)
    for cls in components.COMPONENTS.values():
        paths.update(cls.upgrade_paths)
    table = ["| image | supported path | a move on it | source |", "|---|---|---|---|"]
    for repository, path in paths.items():
        span = {"major": "within its major", "minor": "within its minor", None: "any version"}[path.within]
        step = "one minor at a time" if path.step == "minor" else "any step"
        back = {"patch": "back to an earlier patch", "any": "back within the span", None: "never back"}[path.downgrade]
        table.append(f"| `{repository}` ({path.name}) | {span}, {step}, {back} | {path.upgrade.reason} | {path.source} |")
    return "\n".join(rows) + "\n\n" + "\n".join(table) + "\n"


__all__ = [
    "ChangeRule", "Effect", "UpgradePath", "Verdict", "decide", "nothing", "parse_version", "peer_port", "procedure",
    "kubernetes_version_change", "refused", "rolling", "rules_markdown", "split_image", "volume_size", "when_grows",
]


if __name__ == "__main__":
    import sys

    from final_problem.changes import rules_markdown as _rules  # the registry's copy, not __main__'s

    sys.stdout.write(_rules())
