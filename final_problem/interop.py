"""Values that cross between the project's typed Kubernetes API and cdk8s's ``k8s`` modules.

cdk8s's promise is that constructs compose across libraries, so an extension may build with
cdk8s-plus-27's ``k8s`` module (jsii structs, ``k8s.Quantity``, ``k8s.IntOrString``) as
well as with :mod:`final_problem.k8s`. The project's objects accept cdk8s's values in any
field (:func:`from_cdk8s`, applied by :mod:`final_problem.objects`), and the building blocks
of :mod:`final_problem.api` return cdk8s's kinds when given the module (``api=k8s``),
through :func:`to_cdk8s`. Both keep the names: the project's API is generated with cdk8s's
class and field names (tools/gen_k8s_api.py).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, Mapping

from final_problem.errors import ConfigError


def is_cdk8s_value(value: Any) -> bool:
    """Whether ``value`` is a jsii struct or value type (``cdk8s_plus_27.k8s.Quantity``, ...)."""
    return getattr(type(value), "__jsii_type__", None) is not None


def from_cdk8s(value: Any) -> Any:
    """``value`` with every cdk8s ``k8s`` struct made the project's struct of the same name,
    and ``k8s.Quantity`` / ``k8s.IntOrString`` the project's value types."""
    from final_problem import k8s_api
    from final_problem.objects import IntOrString, Quantity

    if isinstance(value, list | tuple):
        return [from_cdk8s(v) for v in value]
    if isinstance(value, Mapping):
        return {k: from_cdk8s(v) for k, v in value.items()}
    if not is_cdk8s_value(value):
        return value
    name = type(value).__name__
    if name == "Quantity":
        return Quantity(value.value)
    if name == "IntOrString":
        return IntOrString(value.value)
    values = getattr(value, "_values", None)
    struct = getattr(k8s_api, name, None)
    if values is None or struct is None:
        raise ConfigError(
            "k8s", type(value).__jsii_type__,
            "not a struct of the Kubernetes API (only structs, Quantity and IntOrString convert)",
            "give the struct of final_problem.api.k8s or of cdk8s's k8s module",
        )
    return struct(**{k: from_cdk8s(v) for k, v in values.items()})


def to_cdk8s(value: Any, module: ModuleType) -> Any:
    """``value`` (a project struct or value, or lists and maps of them) as the kinds of the
    cdk8s ``k8s`` module ``module`` (e.g. ``cdk8s_plus_27.k8s``)."""
    from final_problem.objects import IntOrString, Quantity, Struct

    if isinstance(value, list | tuple):
        return [to_cdk8s(v, module) for v in value]
    if isinstance(value, Mapping):
        return {k: to_cdk8s(v, module) for k, v in value.items()}
    if isinstance(value, Quantity | IntOrString):
        kind = getattr(module, type(value).__name__)
        return kind.from_number(value.raw) if isinstance(value.raw, int | float) else kind.from_string(value.raw)
    if isinstance(value, Struct):
        name = type(value).__name__
        kind = getattr(module, name, None)
        if kind is None:
            raise ConfigError(
                "k8s", name, f"{module.__name__} has no struct of this name (an older Kubernetes API)",
                f"build it with final_problem.api.k8s.{name}, or leave api= unset",
            )
        return kind(**{k: to_cdk8s(v, module) for k, v in value._values.items()})
    return value


def returned_as(value: Any, api: ModuleType | None) -> Any:
    """``value`` as the kinds of ``api`` (a cdk8s ``k8s`` module), or unchanged without one."""
    return value if api is None else to_cdk8s(value, api)
