"""The Kubernetes API used by the charts: :mod:`final_problem.k8s`.

Its objects are rendered in Python (:mod:`final_problem.objects`); its structs are
cdk8s-plus-27's. :func:`int_or_string` and :func:`quantity` make the two value types the
structs expect.
"""

from functools import lru_cache

from final_problem import k8s


@lru_cache(maxsize=None)
def int_or_string(value: int | str) -> k8s.IntOrString:
    """A port number or name (``IntOrString``)."""
    return k8s.int_or_string_value(value)


@lru_cache(maxsize=None)
def quantity(text: str) -> k8s.Quantity:
    """A resource quantity such as ``250m`` or ``2Gi``."""
    return k8s.quantity_value(text)


__all__ = ["int_or_string", "k8s", "quantity"]
