"""Apply the enabled charts to the EKS cluster, in dependency order."""

from __future__ import annotations

from typing import Any

import cdk8s
from aws_cdk import aws_eks_v2 as eks
from constructs import Construct

from final_problem.components import PlatformChart, build_charts
from final_problem.config import Settings
from final_problem.profiles import EKS, Profile


class Platform(Construct):
    """Render the enabled charts for the ``eks`` profile and apply each one.

    Each chart becomes one manifest resource through the cluster's ``add_cdk8s_chart``
    (so its id, the chart's ``construct_id``, is a contract); a chart's requirements become
    CloudFormation dependencies between those resources.
    Exposes ``charts`` (component name to chart) and ``manifests`` (to manifest).

    ``profile``: the ``eks`` profile with the stack's values in it (the backup bucket's name,
    endpoint and region: CloudFormation values the manifests resolve at deploy). ``objects``,
    what ``dist/eks/`` is written from, carry the profile's placeholders for them instead.
    Default: the ``eks`` profile as it is.
    """

    def __init__(self, scope: Construct, id: str, *, cluster: eks.Cluster, settings: Settings,
                 profile: Profile = EKS) -> None:
        super().__init__(scope, id)
        self.cdk8s_app = cdk8s.App()
        self.charts: dict[str, PlatformChart] = build_charts(self.cdk8s_app, settings, profile)
        # Longest first: the endpoint holds the region.
        deploy_values = sorted(((getattr(profile, f), getattr(EKS, f)) for f in
                                ("backup_endpoint", "backup_bucket", "backup_region")
                                if getattr(profile, f) != getattr(EKS, f)), key=lambda pair: -len(pair[0]))
        self.manifests: dict[str, eks.KubernetesManifest] = {}
        #: Component to the objects applied (what dist/eks/ is written from, too).
        self.objects: dict[str, list[dict]] = {}
        for name, chart in self.charts.items():
            self.objects[name] = _with_placeholders(chart.apply(), deploy_values)
            manifest = cluster.add_cdk8s_chart(chart.construct_id, chart)
            for dep in chart.requires:
                manifest.node.add_dependency(self.manifests[dep])
            self.manifests[name] = manifest
        from final_problem.tour.discovery import client_services

        #: Component to its client Service, for discovery (the cluster stack's outputs).
        self.client_services = client_services(self.charts)


def _with_placeholders(value: Any, replacements: list[tuple[str, str]]) -> Any:
    """``value`` (rendered objects) with each deploy-time value replaced by its placeholder."""
    if not replacements:
        return value
    if isinstance(value, str):
        for deployed, placeholder in replacements:
            value = value.replace(deployed, placeholder)
        return value
    if isinstance(value, list):
        return [_with_placeholders(v, replacements) for v in value]
    if isinstance(value, dict):
        return {k: _with_placeholders(v, replacements) for k, v in value.items()}
    return value
