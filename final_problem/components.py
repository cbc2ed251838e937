"""The component registry and the one function that renders charts for a profile.

A component is a :class:`PlatformChart` subclass registered with :func:`register`. It
names what it ``requires``; :func:`build_charts` renders the enabled components in
dependency order, hands each its dependencies' charts (to read their public attributes)
and records the order as chart dependencies. The CDK platform mirrors those as
CloudFormation dependencies; ``dist/`` files are numbered in that order.

Other apps add components the same way, importing from :mod:`final_problem.api`;
``examples/search/`` in the source repository is a whole one::

    @dataclass(frozen=True, kw_only=True)
    class SearchSettings(ComponentSettings):
        replicas: int = setting(3, doc="Solr nodes.", choices=(3, 5, 7))

    @register
    class SearchChart(PlatformChart):
        component = "search"          # registry key, cdk.json section, default namespace
        construct_id = "Search"       # the manifest's id in the CDK app: a contract
        requires = ("base", "zookeeper")
        version = "9.10.1"            # the upstream version it deploys
        settings_class = SearchSettings
        images = ("docker.io/library/solr:9.10.1",)

        def __init__(self, scope, id, *, settings, profile, dependencies):
            super().__init__(scope, id, settings=settings, profile=profile, dependencies=dependencies)
            self.props.replicas  # this component's settings for this profile
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from typing import Any, ClassVar, Mapping, TypeVar

import cdk8s
from constructs import Construct

from final_problem.changes import UpgradePath
from final_problem.config import Settings
from final_problem.constructs.labels import LabelSet
from final_problem.errors import ConfigError
from final_problem.objects import ObjectChart
from final_problem.profiles import Profile
from final_problem.settings import ComponentSettings

COMPONENTS: dict[str, type["PlatformChart"]] = {}

#: Annotations a chart's record object (its Namespace) carries, read back by
#: ``final-problem plan``: the component's settings as deployed (JSON), the digest of each
#: workload's pod template, and, on the chart applied first, the cluster's settings.
SETTINGS_ANNOTATION = "final-problem.io/settings"
POD_TEMPLATES_ANNOTATION = "final-problem.io/pod-templates"
CLUSTER_SETTINGS_ANNOTATION = "final-problem.io/cluster-settings"
#: Kinds whose pod template changes restart pods.
WORKLOAD_KINDS = ("StatefulSet", "Deployment", "DaemonSet")


def workload_key(obj: Mapping[str, Any]) -> str:
    """``Kind/namespace/name`` of a rendered object."""
    meta = obj.get("metadata", {})
    return f"{obj['kind']}/{meta.get('namespace', '')}/{meta.get('name', '')}"


#: A CDK token's string form (``${Token[TOKEN.123]}``, ``${Token[AWS.Region.9]}``): its number
#: depends on how many tokens the process made before, not on the value it stands for.
_CDK_TOKEN = re.compile(r"\$\{Token\[[^\]]*\]\}")


def pod_template_digests(objects: list[Mapping[str, Any]]) -> dict[str, str]:
    """The digest of each workload's pod template among ``objects``: a workload whose
    digest changes has its pods replaced. A value the cluster stack hands a chart (a CDK
    token, resolved at deploy) counts as the same value whatever its token's number."""
    return {
        workload_key(o): hashlib.sha256(
            _CDK_TOKEN.sub("${Token}", json.dumps(o["spec"]["template"], sort_keys=True)).encode()).hexdigest()[:16]
        for o in objects if o.get("kind") in WORKLOAD_KINDS and "template" in o.get("spec", {})
    }


def record_object(objects: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The object of a chart that carries its record: the one already annotated with it (an
    API server lists objects in its own order: Namespaces by name), else its first Namespace,
    else its first object."""
    annotated = (o for o in objects if POD_TEMPLATES_ANNOTATION in ((o.get("metadata") or {}).get("annotations") or {}))
    return next(annotated, None) or next((o for o in objects if o.get("kind") == "Namespace"),
                                         objects[0] if objects else None)

C = TypeVar("C", bound=type["PlatformChart"])


class PlatformChart(ObjectChart):
    """A cdk8s chart of one platform component.

    The contract of a component class:

    - ``component``: the registry key, the section of its settings in cdk.json and,
      by convention, its namespace; lowercase letters, digits and '-'.
    - ``construct_id``: the id of its manifest in the CDK app; renaming it replaces
      every resource it deployed. PascalCase, unique.
    - ``requires``: components it needs; they render first, and their charts are
      handed to it in ``dependencies`` (read their public attributes).
    - ``version``: the upstream version it deploys (the ``app.kubernetes.io/version`` label).
    - ``settings_class``: its :class:`~final_problem.settings.ComponentSettings`
      (optional); the chart reads the values for its profile from :attr:`props`.
    - ``images``: every image its pods run, pinned to exact tags; the policy checks
      accept these and the platform's own (:mod:`final_problem.versions`).
    - ``calls``: the components its pods call (traffic, not order); the README's
      architecture diagram draws them. An instance attribute when it depends on settings.
    - ``upgrade_paths``: for each image repository its pods run (``docker.io/apache/kafka``),
      the :class:`~final_problem.changes.UpgradePath` a deploy may move its tag along;
      ``final-problem plan`` refuses a move outside it, and a move of an image without one.
    - ``min_arm64_va_bits`` and ``min_arm64_va_bits_reason``: the fewest user virtual
      address bits an arm64 kernel needs for its pods (or the pods it adds to others) to
      start, and why; a profile whose nodes have fewer (``pi_arm64_va_bits``) leaves the
      component out, and what requires it too (:func:`profile_components`). Default: 0, any.

    The constructor takes ``(scope, id, *, settings, profile, dependencies)`` and calls
    ``super().__init__`` with them first.
    """

    component: ClassVar[str]
    construct_id: ClassVar[str]
    requires: ClassVar[tuple[str, ...]] = ()
    version: ClassVar[str]
    settings_class: ClassVar[type[ComponentSettings] | None] = None
    images: ClassVar[tuple[str, ...]] = ()
    calls: tuple[str, ...] = ()
    min_arm64_va_bits: ClassVar[int] = 0
    min_arm64_va_bits_reason: ClassVar[str] = ""
    upgrade_paths: ClassVar[Mapping[str, UpgradePath]] = {}
    #: Whether this chart's record also carries the cluster's settings (the chart applied first).
    records_cluster: bool = False

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        settings: Settings,
        profile: Profile,
        dependencies: Mapping[str, "PlatformChart"],
    ) -> None:
        self.label_set = LabelSet(name=self.component, instance=self.component, version=self.version)
        super().__init__(scope, id, labels=self.label_set.chart_labels(), disable_resource_name_hashes=True)
        self.settings = settings
        self.profile = profile
        self.dependencies = dict(dependencies)
        #: This component's settings for ``profile`` (``None`` without a settings_class).
        self.props: ComponentSettings | None = (
            settings.component(self.settings_class, profile) if self.settings_class is not None else None
        )

    def dependency(self, name: str) -> "PlatformChart":
        """The chart of a required component (a missing one fails earlier, in build_charts)."""
        return self.dependencies[name]

    def to_json(self) -> list[Any]:
        """The rendered objects, the record object (:func:`record_object`) annotated with what
        ``final-problem plan`` compares the next deploy with. Only its metadata changes: no
        pod template, so recording restarts nothing."""
        rendered = super().to_json()
        record = record_object(rendered)
        if record is None:
            return rendered
        annotations = {
            SETTINGS_ANNOTATION: _compact(self.props.recorded_values() if self.props is not None else {}),
            POD_TEMPLATES_ANNOTATION: _compact(pod_template_digests(rendered)),
        }
        if self.records_cluster:
            from final_problem.config import cluster_infos

            # With the profile: the AWS settings mean nothing to a platform on Pis.
            annotations[CLUSTER_SETTINGS_ANNOTATION] = _compact({
                "profile": self.profile.name,
                **{info.name: list(v) if isinstance(v := getattr(self.settings, info.name), tuple) else v
                   for info in cluster_infos()},
            })
        index = rendered.index(record)
        metadata = dict(record.get("metadata", {}))
        metadata["annotations"] = {**metadata.get("annotations", {}), **annotations}
        rendered[index] = {**record, "metadata": dict(sorted(metadata.items()))}
        return rendered


def _compact(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


_COMPONENT_NAME = re.compile(r"[a-z][a-z0-9-]{0,40}")
_CONSTRUCT_ID = re.compile(r"[A-Z][A-Za-z0-9]{0,63}")
# An image reference pinned to an exact tag: registry/path:tag, no "latest", no floating
# major-only tag (a tag must contain a digit and a dot, or be a digest).
_PINNED_IMAGE = re.compile(r"[a-z0-9.-]+(:[0-9]+)?/[a-z0-9._/-]+(:[A-Za-z0-9._-]*[0-9]\.[0-9][A-Za-z0-9._-]*|@sha256:[0-9a-f]{64})")


def register(cls: C) -> C:
    """Add a component to the registry (class decorator).

    Fails with a :class:`ConfigError` when the class breaks the contract of
    :class:`PlatformChart`: a missing or malformed ``component``, ``construct_id`` or
    ``version``, a name or construct id another component already has, a settings class
    that is not a :class:`ComponentSettings` or that another component already uses, or an
    image without an exact tag. A class that fails changes nothing.
    """
    where = f"{cls.__module__}.{cls.__qualname__}"
    name = getattr(cls, "component", None)
    if not isinstance(name, str) or not _COMPONENT_NAME.fullmatch(name):
        raise ConfigError(
            f"{where}.component", name, "a component needs a name of lowercase letters, digits and '-'",
            'set component = "search" (the cdk.json section and namespace)',
        )
    construct_id = cls.__dict__.get("construct_id", getattr(cls, "construct_id", None))
    if not isinstance(construct_id, str) or not _CONSTRUCT_ID.fullmatch(construct_id):
        raise ConfigError(
            f"{where}.construct_id", construct_id,
            "a component needs a PascalCase construct id: the id of its manifest in the CDK app",
            f'set construct_id = "{name.title().replace("-", "")}" and never change it (renaming replaces resources)',
        )
    version = getattr(cls, "version", None)
    if not isinstance(version, str) or not version.strip():
        raise ConfigError(f"{where}.version", version, "a component names the upstream version it deploys",
                          'set version = "1.2.3"')
    if not _bundled(cls):
        # The bundled charts register first, so a clash fails at the newcomer's decorator.
        load_bundled()
    existing = COMPONENTS.get(name)
    if existing is not None and existing is not cls:
        # The newcomer is blamed: the extension, even when a bundled chart registers after it.
        newcomer, other = (existing, cls) if _bundled(cls) and not _bundled(existing) else (cls, existing)
        raise ConfigError(
            f"{_where(newcomer)}.component", name,
            f"already registered by {_where(other)}",
            "give the component a unique name",
        )
    for other in COMPONENTS.values():
        if other is not cls and other.component != name and other.construct_id == construct_id:
            newcomer, owner = (other, cls) if _bundled(cls) and not _bundled(other) else (cls, other)
            raise ConfigError(
                f"{_where(newcomer)}.construct_id", construct_id,
                f"already used by component '{owner.component}' ({_where(owner)})",
                "give the component a unique construct id",
            )
    settings_class = cls.settings_class
    if settings_class is not None:
        if not (isinstance(settings_class, type) and issubclass(settings_class, ComponentSettings)):
            raise ConfigError(
                f"{where}.settings_class", settings_class, "must be a ComponentSettings dataclass",
                "derive it from final_problem.settings.ComponentSettings",
            )
        owner = next((c for c in COMPONENTS.values() if c is not cls and c.settings_class is settings_class), None)
        if owner is not None:
            raise ConfigError(
                f"{where}.settings_class", settings_class.__qualname__,
                f"already the settings of component '{owner.component}': one class reads one cdk.json section",
                f"derive a class of its own from {settings_class.__qualname__}",
            )
    for image in cls.images:
        if not isinstance(image, str) or not _PINNED_IMAGE.fullmatch(image):
            raise ConfigError(
                f"{where}.images", image, "an image must name its registry and an exact version tag (or digest)",
                'use e.g. "docker.io/library/redis:8.10.1-trixie"',
            )
    paths = cls.upgrade_paths
    if not isinstance(paths, Mapping) or not all(isinstance(p, UpgradePath) for p in paths.values()):
        raise ConfigError(
            f"{where}.upgrade_paths", paths, "must map image repositories to final_problem.api.UpgradePath",
            'use e.g. {"docker.io/library/solr": UpgradePath(...)}',
        )
    # Only a class that passed every check changes shared state.
    if settings_class is not None:
        settings_class.section = name
    COMPONENTS[name] = cls
    return cls


_BUNDLED_PACKAGE = "final_problem.charts"


def _bundled(cls: type) -> bool:
    """Whether ``cls`` is one of the charts shipped with the package."""
    return cls.__module__ == _BUNDLED_PACKAGE or cls.__module__.startswith(_BUNDLED_PACKAGE + ".")


def _where(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def load_bundled() -> None:
    """Import the charts shipped with the package, so they register themselves."""
    import final_problem.charts  # noqa: F401


def declared_images() -> frozenset[str]:
    """Every image a registered component declares."""
    return frozenset(image for cls in COMPONENTS.values() for image in cls.images)


def resolve(enabled: tuple[str, ...]) -> list[str]:
    """Enabled components in dependency order; fail on unknown, missing or cyclic ones."""
    load_bundled()

    for name in enabled:
        if name not in COMPONENTS:
            known = [n for n in enabled if n in COMPONENTS]
            raise ConfigError(
                "components", name, f"unknown component (registered: {', '.join(sorted(COMPONENTS))})",
                f"set components={','.join(known or ['base'])}, adding only registered names",
            )
    for name in enabled:
        for dep in COMPONENTS[name].requires:
            if dep not in enabled:
                raise ConfigError(
                    "components", ",".join(enabled),
                    f"component '{name}' requires component '{dep}', which is not enabled",
                    f"set components={','.join((*enabled, dep))}, or remove '{name}'",
                )
    order: list[str] = []
    visiting: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in order:
            return
        if name in visiting:
            raise ConfigError(
                "components", " -> ".join(path + (name,)), "the requirements form a cycle",
                "remove one of the requirements",
            )
        visiting.add(name)
        for dep in COMPONENTS[name].requires:
            visit(dep, path + (name,))
        visiting.discard(name)
        order.append(name)

    for name in enabled:
        visit(name, ())
    return order


def check_settings(settings: Settings) -> None:
    """Resolve every enabled component's settings for every profile rendered, so a bad
    value fails before any construct is built. (``eks`` is always built: the CDK stacks
    apply its charts.)"""
    from final_problem.profiles import PROFILES

    try:
        order = resolve(settings.components)
    except ConfigError as e:
        if origin := settings.origins.get("components"):
            e.add_origin(origin)
        raise
    for profile_name in dict.fromkeys(("eks", *settings.profiles)):
        for name in order:
            settings_class = COMPONENTS[name].settings_class
            if settings_class is not None:
                settings.component(settings_class, PROFILES[profile_name])


def profile_components(settings: Settings, profile: Profile) -> tuple[tuple[str, ...], dict[str, str]]:
    """The enabled components that ``profile``'s nodes can run, in the user's order, and
    those it leaves out with the reason: a component whose pods need more arm64 virtual
    address bits than the profile's kernels have, then every component that requires one
    left out."""
    resolve(settings.components)
    bits = getattr(settings, profile.arm64_va_bits_setting) if profile.arm64_va_bits_setting else None
    left_out: dict[str, str] = {}
    for name in settings.components:
        cls = COMPONENTS[name]
        if bits is not None and bits < cls.min_arm64_va_bits:
            left_out[name] = cls.min_arm64_va_bits_reason or f"needs {cls.min_arm64_va_bits}-bit virtual addresses"
    changed = True
    while changed:
        changed = False
        for name in settings.components:
            missing = [dep for dep in COMPONENTS[name].requires if dep in left_out]
            if name not in left_out and missing:
                left_out[name] = f"requires {', '.join(missing)}"
                changed = True
    return tuple(n for n in settings.components if n not in left_out), left_out


def left_out_line(settings: Settings, profile: Profile) -> str | None:
    """One line saying what ``profile`` leaves out of the enabled components and why, with
    the setting that brings them back; None when it renders every one."""
    _, left_out = profile_components(settings, profile)
    if not left_out:
        return None
    line = f"{profile.name}: left out " + ", ".join(f"{name} ({why})" for name, why in left_out.items())
    needed = max(COMPONENTS[name].min_arm64_va_bits for name in left_out)
    if needed and profile.arm64_va_bits_setting:
        setting_name = profile.arm64_va_bits_setting
        line += (f": they need arm64 kernels with at least {needed}-bit virtual addresses, and "
                 f"{setting_name} is {getattr(settings, setting_name)}. Fix: where every node is a Pi 5 or runs a "
                 f"48-bit kernel, set {setting_name}=48 (pi/README.md, \"What runs on which Pi\")")
    return line


def for_profile(settings: Settings, profile: Profile) -> Settings:
    """``settings`` with only the components ``profile`` renders (:func:`profile_components`):
    what its charts see as ``settings.components``."""
    kept, left_out = profile_components(settings, profile)
    if not left_out:
        return settings
    return dataclasses.replace(settings, components=kept)


def build_charts(app: cdk8s.App, settings: Settings, profile: Profile) -> dict[str, PlatformChart]:
    """Render every enabled component for ``profile`` into ``app``, in dependency order,
    leaving out those the profile's nodes cannot run (:func:`profile_components`), at the
    size the settings choose (cluster setting ``size``)."""
    settings = for_profile(settings, profile)
    profile = profile.sized(settings.size)
    charts: dict[str, PlatformChart] = {}
    for name in resolve(settings.components):
        cls = COMPONENTS[name]
        chart = cls(
            app, cls.construct_id,
            settings=settings, profile=profile,
            dependencies={dep: charts[dep] for dep in cls.requires},
        )
        for dep in cls.requires:
            chart.add_dependency(charts[dep])
        # The chart applied first records the cluster's settings too.
        chart.records_cluster = not charts
        charts[name] = chart
    return charts
