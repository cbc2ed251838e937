"""The component registry and the one function that renders charts for a profile.

A component is a :class:`PlatformChart` subclass registered with :func:`register`. It
names what it ``requires``; :func:`build_charts` renders the enabled components in
dependency order, hands each its dependencies' charts (to read their public attributes)
and records the order as chart dependencies. The CDK platform mirrors those as
CloudFormation dependencies; ``dist/`` files are numbered in that order.

Other apps add components the same way::

    @register
    class MyChart(PlatformChart):
        component = "mine"
        requires = ("base",)
"""

from __future__ import annotations

from typing import ClassVar, Mapping, TypeVar

import cdk8s
from constructs import Construct

from final_problem.config import Settings
from final_problem.constructs.labels import LabelSet
from final_problem.errors import ConfigError
from final_problem.profiles import Profile

COMPONENTS: dict[str, type["PlatformChart"]] = {}

C = TypeVar("C", bound=type["PlatformChart"])


class PlatformChart(cdk8s.Chart):
    """A cdk8s chart of one platform component.

    Subclasses set ``component`` (the registry key, also the default namespace),
    ``construct_id`` (the id of its manifest in the CDK app: renaming it replaces the
    resources), ``requires`` and ``version`` (the upstream version it deploys).
    """

    component: ClassVar[str]
    construct_id: ClassVar[str]
    requires: ClassVar[tuple[str, ...]] = ()
    version: ClassVar[str]

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

    def dependency(self, name: str) -> "PlatformChart":
        """The chart of a required component (a missing one fails earlier, in build_charts)."""
        return self.dependencies[name]


def register(cls: C) -> C:
    """Add a component to the registry (class decorator)."""
    existing = COMPONENTS.get(cls.component)
    if existing is not None and existing is not cls:
        raise ConfigError(
            "component", cls.component,
            f"already registered by {existing.__module__}.{existing.__qualname__}",
            "give the component a unique name",
        )
    COMPONENTS[cls.component] = cls
    return cls


def resolve(enabled: tuple[str, ...]) -> list[str]:
    """Enabled components in dependency order; fail on unknown, missing or cyclic ones."""
    # Import the bundled charts so they register themselves.
    import final_problem.charts  # noqa: F401

    for name in enabled:
        if name not in COMPONENTS:
            raise ConfigError(
                "components", name, "unknown component",
                f"use one of: {', '.join(sorted(COMPONENTS))}",
            )
    for name in enabled:
        for dep in COMPONENTS[name].requires:
            if dep not in enabled:
                raise ConfigError(
                    "components", ",".join(enabled),
                    f"component '{name}' requires component '{dep}', which is not enabled",
                    f"add '{dep}' to components, or remove '{name}'",
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


def build_charts(app: cdk8s.App, settings: Settings, profile: Profile) -> dict[str, PlatformChart]:
    """Render every enabled component for ``profile`` into ``app``, in dependency order."""
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
        charts[name] = chart
    return charts
