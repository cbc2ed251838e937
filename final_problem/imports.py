"""The Kubernetes API objects used where cdk8s-plus has no construct.

cdk8s-plus-27 bundles the Kubernetes 1.27 API as ``cdk8s_plus_27.k8s``; every field used
here exists unchanged up to 1.36 (checked by kubernetes-validate in the tests).

``IntOrString`` and ``Quantity`` values are immutable, and each one made costs a round
trip to the jsii runtime at synthesis; :func:`int_or_string` and :func:`quantity` make
each distinct value once and reuse it.
"""

from functools import lru_cache

from cdk8s_plus_27 import k8s


@lru_cache(maxsize=None)
def int_or_string(value: int | str) -> k8s.IntOrString:
    """A port number or name (``IntOrString``)."""
    if isinstance(value, int):
        return k8s.IntOrString.from_number(value)
    return k8s.IntOrString.from_string(value)


@lru_cache(maxsize=None)
def quantity(text: str) -> k8s.Quantity:
    """A resource quantity such as ``250m`` or ``2Gi``."""
    return k8s.Quantity.from_string(text)


__all__ = ["int_or_string", "k8s", "quantity"]
