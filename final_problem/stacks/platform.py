"""Apply the enabled charts to the EKS cluster, in dependency order."""

from __future__ import annotations

import cdk8s
from aws_cdk import aws_eks_v2 as eks
from constructs import Construct

from final_problem.components import PlatformChart, build_charts
from final_problem.config import Settings
from final_problem.profiles import EKS


class Platform(Construct):
    """Render the enabled charts for the ``eks`` profile and apply each one.

    Each chart becomes one manifest resource through the cluster's ``add_cdk8s_chart``
    (so its id, the chart's ``construct_id``, is a contract); a chart's requirements become
    CloudFormation dependencies between those resources.
    Exposes ``charts`` (component name to chart) and ``manifests`` (to manifest).
    """

    def __init__(self, scope: Construct, id: str, *, cluster: eks.Cluster, settings: Settings) -> None:
        super().__init__(scope, id)
        self.cdk8s_app = cdk8s.App()
        self.charts: dict[str, PlatformChart] = build_charts(self.cdk8s_app, settings, EKS)
        self.manifests: dict[str, eks.KubernetesManifest] = {}
        #: Component to the objects applied (what dist/eks/ is written from, too).
        self.objects: dict[str, list[dict]] = {}
        for name, chart in self.charts.items():
            self.objects[name] = chart.apply()
            manifest = cluster.add_cdk8s_chart(chart.construct_id, chart)
            for dep in chart.requires:
                manifest.node.add_dependency(self.manifests[dep])
            self.manifests[name] = manifest
        from final_problem.tour.discovery import client_services

        #: Component to its client Service, for discovery (the cluster stack's outputs).
        self.client_services = client_services(self.charts)
