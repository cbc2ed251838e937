"""The public API of the platform: everything a component written in another app needs.

Import from here, not from the modules behind it; these names are kept stable::

    from final_problem.api import PlatformChart, register, ComponentSettings, setting

- The contract: :class:`PlatformChart` (a component's chart class and its constructor),
  :func:`register` (the class decorator that checks the contract at import time),
  :class:`ConfigError` (the one error type, one line: setting, value, problem, fix).
- Settings: :class:`ComponentSettings`, :func:`setting`, :func:`per_profile`; the chart
  reads its values for the profile being rendered from ``self.props``.
- Change rules (:mod:`final_problem.changes`), what a change does to a live platform, which
  ``final-problem plan`` applies before a deploy: ``setting(..., change=...)`` with
  :func:`nothing`, :func:`rolling`, :func:`procedure`, :func:`refused`, :func:`when_grows`,
  :func:`volume_size`, :func:`peer_port` (or a function of the old and new values returning a
  :class:`Verdict` of an :class:`Effect`); a chart's ``upgrade_paths``, an
  :class:`UpgradePath` per image repository its pods run.
- Where a chart renders: :class:`Settings` (cluster-level settings, ``self.settings``),
  :class:`Profile` and the profiles :data:`EKS` and :data:`PI` (``self.profile``).
- Building blocks (:mod:`final_problem.constructs`): :class:`RestrictedNamespace`,
  :class:`QuorumStatefulSet` with :class:`ClaimSpec`, :class:`GeneratedSecrets` with
  :class:`SecretSpec`, :class:`Sizing`, :func:`container_context`, :func:`pod_context`,
  :func:`raw_resources`, :class:`LabelSet`, :func:`set_component`, :func:`ports`,
  :func:`secret_env`, :data:`MONITORING_NAMESPACE_LABEL`; the helpers that return
  Kubernetes values return cdk8s-plus-27's ``k8s`` kinds, as they always have (so an
  extension built with cdk8s-plus keeps working, and the project's objects take them too),
  or another module's given as ``api=``: ``api=k8s`` for the project's own.
- Wiring to bundled components: :data:`ZOOKEEPER_CLIENT_LABEL` (the label a namespace
  carries for ZooKeeper's NetworkPolicy to admit its pods).
- Kubernetes objects: :mod:`k8s` (the typed Kubernetes 1.34 API with cdk8s's names, one class
  per kind, rendered in Python), :func:`int_or_string` and :func:`quantity` for its value types;
  its fields also take cdk8s's ``k8s`` structs and values, and :func:`to_cdk8s` /
  :func:`from_cdk8s` convert either way;
  :class:`Group` to group objects into a building block of one's own (others depend on a
  group as on each object in it), :class:`ObjectChart` for a chart outside the platform,
  :class:`JsonPatch` to change the rendered JSON.

``examples/search/`` in the source repository is a whole component built on this module.
"""

from types import ModuleType
from typing import Any

from final_problem.changes import (
    Effect, UpgradePath, Verdict, nothing, peer_port, procedure, refused, rolling, volume_size, when_grows,
)
from final_problem.components import PlatformChart, register
from final_problem.charts.zookeeper import CLIENT_NAMESPACE_LABEL as ZOOKEEPER_CLIENT_LABEL
from final_problem.config import Settings
from final_problem.constructs import (
    MONITORING_NAMESPACE_LABEL,
    ClaimSpec,
    GeneratedSecrets,
    LabelSet,
    QuorumStatefulSet,
    RestrictedNamespace,
    SecretSpec,
    Sizing,
    set_component,
)
from final_problem.constructs import container_context as _container_context
from final_problem.constructs import pod_context as _pod_context
from final_problem.constructs import ports as _ports
from final_problem.constructs import raw_resources as _raw_resources
from final_problem.constructs.generated_secrets import secret_env as _secret_env
from final_problem.errors import ConfigError
from final_problem.imports import int_or_string, k8s, quantity
from final_problem.interop import from_cdk8s, to_cdk8s
from final_problem.objects import Group, JsonPatch, ObjectChart
from final_problem.profiles import EKS, PI, Profile
from final_problem.settings import ComponentSettings, per_profile, setting



def _kinds(api: ModuleType | None) -> ModuleType | None:
    """The ``api=`` a building block gets: cdk8s-plus-27's ``k8s`` module when none is given
    (what these helpers have always returned, so an extension that hands their values to
    cdk8s-plus-27's constructs keeps working; the project's own objects take cdk8s's values
    too), none for the project's own kinds (``api=final_problem.api.k8s``)."""
    if api is None:
        import cdk8s_plus_27

        return cdk8s_plus_27.k8s
    return None if api is k8s else api


def raw_resources(sizing: Sizing, *, api: ModuleType | None = None) -> Any:
    """Raw form of :meth:`Sizing.resources`: a ``k8s.ResourceRequirements`` of ``api``
    (default cdk8s-plus-27's; ``api=k8s`` for the project's)."""
    return _raw_resources(sizing, api=_kinds(api))


def container_context(*, uid: int, gid: int | None = None, api: ModuleType | None = None) -> Any:
    """A "restricted" container security context (a ``k8s.SecurityContext`` of ``api``,
    default cdk8s-plus-27's; ``api=k8s`` for the project's)."""
    return _container_context(uid=uid, gid=gid, api=_kinds(api))


def pod_context(*, uid: int, gid: int | None = None, fs_group: int | None = None, api: ModuleType | None = None) -> Any:
    """A "restricted" pod security context with the seccomp profile (a
    ``k8s.PodSecurityContext`` of ``api``, default cdk8s-plus-27's; ``api=k8s`` for the
    project's)."""
    return _pod_context(uid=uid, gid=gid, fs_group=fs_group, api=_kinds(api))


def ports(*numbers: int, protocol: str = "TCP", api: ModuleType | None = None) -> list[Any]:
    """NetworkPolicy ports for port numbers (``k8s.NetworkPolicyPort`` of ``api``, default
    cdk8s-plus-27's; ``api=k8s`` for the project's)."""
    return _ports(*numbers, protocol=protocol, api=_kinds(api))


def secret_env(name: str, secret: str, key: str, *, api: ModuleType | None = None) -> Any:
    """Environment variable ``name`` from key ``key`` of Secret ``secret`` (a ``k8s.EnvVar``
    of ``api``, default cdk8s-plus-27's; ``api=k8s`` for the project's)."""
    return _secret_env(name, secret, key, api=_kinds(api))


__all__ = [
    "EKS",
    "Effect",
    "MONITORING_NAMESPACE_LABEL",
    "PI",
    "ClaimSpec",
    "ComponentSettings",
    "ConfigError",
    "GeneratedSecrets",
    "Group",
    "JsonPatch",
    "LabelSet",
    "ObjectChart",
    "PlatformChart",
    "Profile",
    "QuorumStatefulSet",
    "RestrictedNamespace",
    "SecretSpec",
    "Settings",
    "Sizing",
    "UpgradePath",
    "Verdict",
    "ZOOKEEPER_CLIENT_LABEL",
    "container_context",
    "from_cdk8s",
    "int_or_string",
    "k8s",
    "nothing",
    "peer_port",
    "per_profile",
    "pod_context",
    "ports",
    "procedure",
    "quantity",
    "raw_resources",
    "refused",
    "register",
    "rolling",
    "secret_env",
    "set_component",
    "setting",
    "to_cdk8s",
    "volume_size",
    "when_grows",
]
