"""The Kubernetes API used by the charts: :mod:`final_problem.k8s`.

Its objects and types are rendered in Python (:mod:`final_problem.objects`), generated
from the Kubernetes schema (:mod:`final_problem.k8s_api`). :func:`int_or_string` and
:func:`quantity` make the two value types its fields take.
"""

from final_problem import k8s


def int_or_string(value: int | str) -> k8s.IntOrString:
    """A port number or name (``IntOrString``)."""
    return k8s.IntOrString(value)


def quantity(text: str) -> k8s.Quantity:
    """A resource quantity such as ``250m`` or ``2Gi``."""
    return k8s.Quantity(text)


__all__ = ["int_or_string", "k8s", "quantity"]
