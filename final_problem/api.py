"""The public API of the platform: everything a component written in another app needs.

Import from here, not from the modules behind it; these names are kept stable::

    from final_problem.api import PlatformChart, register, ComponentSettings, setting

- The contract: :class:`PlatformChart` (a component's chart class and its constructor),
  :func:`register` (the class decorator that checks the contract at import time),
  :class:`ConfigError` (the one error type, one line: setting, value, problem, fix).
- Settings: :class:`ComponentSettings`, :func:`setting`, :func:`per_profile`; the chart
  reads its values for the profile being rendered from ``self.props``.
- Where a chart renders: :class:`Settings` (cluster-level settings, ``self.settings``),
  :class:`Profile` and the profiles :data:`EKS` and :data:`PI` (``self.profile``).
- Building blocks (:mod:`final_problem.constructs`): :class:`RestrictedNamespace`,
  :class:`QuorumStatefulSet` with :class:`ClaimSpec`, :class:`GeneratedSecrets` with
  :class:`SecretSpec`, :class:`Sizing`, :func:`container_context`, :func:`pod_context`,
  :func:`raw_resources`, :class:`LabelSet`, :func:`set_component`, :func:`ports`,
  :func:`secret_env`, :data:`MONITORING_NAMESPACE_LABEL`; the helpers that return
  Kubernetes values take ``api=`` a cdk8s ``k8s`` module (``cdk8s_plus_27.k8s``) to return
  its kinds, for an extension built with cdk8s-plus.
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
    container_context,
    pod_context,
    ports,
    raw_resources,
    set_component,
)
from final_problem.constructs.generated_secrets import secret_env
from final_problem.errors import ConfigError
from final_problem.imports import int_or_string, k8s, quantity
from final_problem.interop import from_cdk8s, to_cdk8s
from final_problem.objects import Group, JsonPatch, ObjectChart
from final_problem.profiles import EKS, PI, Profile
from final_problem.settings import ComponentSettings, per_profile, setting

__all__ = [
    "EKS",
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
    "ZOOKEEPER_CLIENT_LABEL",
    "container_context",
    "from_cdk8s",
    "int_or_string",
    "k8s",
    "per_profile",
    "pod_context",
    "ports",
    "quantity",
    "raw_resources",
    "register",
    "secret_env",
    "set_component",
    "setting",
    "to_cdk8s",
]
