"""The Kubernetes API for charts: the typed structs of ``cdk8s_plus_27.k8s`` (the 1.27 API;
every field used here exists unchanged up to 1.36, checked by kubernetes-validate in the
tests) and one class per kind, ``KubeService``, ``KubeStatefulSet``, ..., that builds an
:class:`~final_problem.objects.ApiObject` rendered in Python.

``KubeService(scope, "Id", metadata=k8s.ObjectMeta(...), spec=k8s.ServiceSpec(...))`` takes
the same arguments as its cdk8s-plus counterpart, checked against the same props struct.
``IntOrString`` and ``Quantity`` values come from :func:`final_problem.imports.int_or_string`
and :func:`final_problem.imports.quantity`.
"""

from __future__ import annotations

from typing import Any

from cdk8s_plus_27 import k8s as _k8s
from cdk8s_plus_27.k8s import *  # noqa: F401,F403  (the structs, by their cdk8s-plus names)

from final_problem.objects import ApiObject, Value


def _kind_class(name: str) -> type[ApiObject]:
    jsii_class = getattr(_k8s, name)
    return type(name, (ApiObject,), {
        "__module__": __name__,
        "__qualname__": name,
        "__doc__": (jsii_class.__doc__ or "").split("\n")[0] + "\n\nRendered in Python; see final_problem.objects.ApiObject.",
        "_jsii_class": jsii_class,
        "_props_class": getattr(_k8s, f"{name}Props"),
    })


_NAMES = frozenset(_k8s.__all__)
#: The kinds: each ``KubeX`` with a ``KubeXProps``. Their classes are made on first use
#: (``__getattr__``), so importing this module costs no more than importing cdk8s-plus-27's.
_KINDS = frozenset(n for n in _NAMES if n.startswith("Kube") and not n.endswith("Props") and f"{n}Props" in _NAMES)
for _name in _KINDS:
    del globals()[_name]  # cdk8s-plus-27's jsii class, from the star import


def __getattr__(name: str) -> Any:
    if name not in _KINDS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    cls = globals()[name] = _kind_class(name)
    return cls


class _Known(Value):
    """A value of a jsii class known in Python: no jsii object unless a jsii call needs one."""

    raw: Any
    _jsii_class: Any

    @property  # type: ignore[override]
    def value(self) -> Any:
        return self.raw

    @property
    def __jsii_ref__(self) -> Any:  # handed to a jsii call: make the real value then
        jsii_class = self._jsii_class
        made = jsii_class.from_number(self.raw) if isinstance(self.raw, (int, float)) else jsii_class.from_string(self.raw)
        return made.__jsii_ref__

    @classmethod
    def of(cls, raw: Any) -> Any:
        value = object.__new__(cls)  # not cls(...): that would make the jsii object now
        value.raw = raw
        return value


class _IntOrStringValue(_Known, _k8s.IntOrString):
    """An ``IntOrString`` known in Python."""

    _jsii_class = _k8s.IntOrString


class _QuantityValue(_Known, _k8s.Quantity):
    """A ``Quantity`` known in Python."""

    _jsii_class = _k8s.Quantity


def int_or_string_value(raw: int | str) -> _k8s.IntOrString:
    """An ``IntOrString``: a port number or name."""
    return _IntOrStringValue.of(raw)


def quantity_value(raw: int | float | str) -> _k8s.Quantity:
    """A ``Quantity``: ``250m``, ``2Gi``."""
    return _QuantityValue.of(raw)


__all__ = [*_k8s.__all__]
