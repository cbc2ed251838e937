"""The recommended ``app.kubernetes.io/*`` labels.

Source: Kubernetes docs, "Recommended Labels".
"""

from __future__ import annotations

from dataclasses import dataclass

import cdk8s

from final_problem.objects import ApiObject, Group, api_object_of

PART_OF = "final-problem"


@dataclass(frozen=True, kw_only=True)
class LabelSet:
    """Labels shared by every object of one component instance."""

    name: str
    instance: str
    version: str

    def chart_labels(self) -> dict[str, str]:
        """Labels a chart puts on all of its objects."""
        return {
            "app.kubernetes.io/name": self.name,
            "app.kubernetes.io/instance": self.instance,
            "app.kubernetes.io/version": self.version,
            "app.kubernetes.io/part-of": PART_OF,
            "app.kubernetes.io/managed-by": "cdk8s",
        }

    def selector(self, component: str) -> dict[str, str]:
        """Stable pod-selector labels of one component (never the version)."""
        return {
            "app.kubernetes.io/name": self.name,
            "app.kubernetes.io/instance": self.instance,
            "app.kubernetes.io/component": component,
        }


def set_component(obj: object, component: str) -> None:
    """Label an object with its component: a :mod:`final_problem.k8s` object, a group
    (its ``Resource`` object), or a cdk8s construct (cdk8s-plus resource, ApiObject)."""
    if isinstance(obj, (ApiObject, Group)):
        api_object_of(obj).metadata.add_label("app.kubernetes.io/component", component)
        return
    api = obj if isinstance(obj, cdk8s.ApiObject) else cdk8s.ApiObject.of(obj)  # type: ignore[arg-type]
    api.metadata.add_label("app.kubernetes.io/component", component)
