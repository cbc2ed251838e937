"""The Kubernetes API for charts: one typed class per type (``ObjectMeta``, ``ServiceSpec``)
and one per kind (``KubeService``, ``KubeStatefulSet``, ...) that builds an
:class:`~final_problem.objects.ApiObject` rendered in Python.

The classes are generated from the Kubernetes v1.34 schema (:mod:`final_problem.k8s_api`,
``tools/gen_k8s_api.py``), the oldest version the platform deploys to, with the names
cdk8s's import gives them: ``KubeService(scope, "Id", metadata=k8s.ObjectMeta(...),
spec=k8s.ServiceSpec(...))`` reads as it would with ``cdk8s_plus_27.k8s``.
``IntOrString`` and ``Quantity`` values come from :func:`final_problem.imports.int_or_string`
and :func:`final_problem.imports.quantity`.
"""

from __future__ import annotations

from final_problem.k8s_api import *  # noqa: F401,F403  (IntOrString and Quantity too)
from final_problem.k8s_api import __all__  # noqa: F401  (the same names)
