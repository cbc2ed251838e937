"""The Kubernetes API objects used where cdk8s-plus has no construct.

cdk8s-plus-27 bundles the Kubernetes 1.27 API as ``cdk8s_plus_27.k8s``; every field used
here exists unchanged up to 1.36 (checked by kubernetes-validate in the tests).
"""

from cdk8s_plus_27 import k8s

__all__ = ["k8s"]
