"""A namespace that enforces Pod Security "restricted" and denies traffic by default."""

from __future__ import annotations

import re
from types import ModuleType
from typing import Any, Mapping

from final_problem.objects import Group, ObjectChart, chart_of

from final_problem import versions
from final_problem.errors import ConfigError
from final_problem.imports import int_or_string, k8s
from final_problem.interop import returned_as


#: Label of the namespaces whose pods may scrape every component's metrics port.
MONITORING_NAMESPACE_LABEL = {"final-problem.io/monitoring": "true"}


def dns_peer() -> k8s.NetworkPolicyPeer:
    """The cluster DNS pods: k8s-app=kube-dns in kube-system on EKS (CoreDNS add-on)
    and on k3s (its bundled CoreDNS manifest)."""
    return k8s.NetworkPolicyPeer(
        namespace_selector=k8s.LabelSelector(match_labels={"kubernetes.io/metadata.name": "kube-system"}),
        pod_selector=k8s.LabelSelector(match_labels={"k8s-app": "kube-dns"}),
    )


def pod_peer(selector: dict[str, str]) -> k8s.NetworkPolicyPeer:
    """Pods of this namespace matching ``selector``."""
    return k8s.NetworkPolicyPeer(pod_selector=k8s.LabelSelector(match_labels=selector))


def namespace_peer(label: dict[str, str]) -> k8s.NetworkPolicyPeer:
    """Every pod of the namespaces carrying ``label``."""
    return k8s.NetworkPolicyPeer(namespace_selector=k8s.LabelSelector(match_labels=label))


def ports(*numbers: int, protocol: str = "TCP", api: ModuleType | None = None) -> list[Any]:
    """NetworkPolicy ports for port numbers: ``ports(2181, 7000)``; ``protocol`` TCP or UDP.

    ``api``: a cdk8s ``k8s`` module (``cdk8s_plus_27.k8s``) to get its kinds instead of
    the project's (:mod:`final_problem.interop`). Default: the project's."""
    return returned_as([k8s.NetworkPolicyPort(port=int_or_string(n), protocol=protocol) for n in numbers], api)


#: A Pod Security Standards version label value: "latest" or "v<major>.<minor>"
#: (Kubernetes docs, "Pod Security Admission", "Pod Security Admission labels for namespaces").
_PSS_VERSION = re.compile(r"latest|v[0-9]+\.[0-9]+")
_PSS_PREFIX = "pod-security.kubernetes.io/"


def pss_version_of(scope: object) -> str:
    """The Pod Security Standards version for a namespace under ``scope``: the Kubernetes
    version of the enclosing platform chart's settings (``kubernetes_version``), else the
    platform's default (:data:`final_problem.versions.KUBERNETES_VERSION`)."""
    settings = getattr(chart_of(scope), "settings", None)
    return f"v{getattr(settings, 'kubernetes_version', None) or versions.KUBERNETES_VERSION}"


class RestrictedNamespace(Group):
    """A namespace labelled to enforce, audit and warn at Pod Security "restricted".

    Creates the Namespace, a default-deny NetworkPolicy for ingress and egress, and a
    policy allowing DNS to the cluster resolver; components add their own allows.
    Source: Kubernetes docs, "Enforce Pod Security Standards with Namespace Labels".

    ``pss_version``: the Pod Security Standards version the labels pin ("v1.36" or
    "latest"). Default: the cluster's Kubernetes version from the chart's settings
    (:func:`pss_version_of`), so the policy changes only when the cluster is upgraded.
    ``labels``: extra labels of the Namespace, e.g. :data:`MONITORING_NAMESPACE_LABEL`
    for a namespace whose pods scrape metrics; they cannot replace the Pod Security labels
    or the component label. Default: none.
    """

    def __init__(
        self,
        scope: ObjectChart | Group,
        id: str,
        *,
        name: str,
        pss_version: str | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(scope, id)
        #: The namespace name, for objects placed in it.
        self.name = name
        if pss_version is None:
            pss_version = pss_version_of(self)
        if not _PSS_VERSION.fullmatch(pss_version):
            raise ConfigError(
                f"RestrictedNamespace({name}).pss_version", pss_version,
                'a Pod Security Standards version is "latest" or "v<major>.<minor>"',
                f"leave it unset (the cluster's version, {pss_version_of(self)}) or pass e.g. \"{pss_version_of(self)}\"",
            )
        own = {"app.kubernetes.io/component": "namespace"}
        for key in labels or {}:
            if key.startswith(_PSS_PREFIX) or key in own:
                raise ConfigError(
                    f"RestrictedNamespace({name}).labels", key,
                    "RestrictedNamespace sets this label itself (Pod Security level and version, component)",
                    "remove it from labels; pass pss_version to pin another Pod Security version",
                )
        pss: dict[str, str] = {}
        for mode in ("enforce", "audit", "warn"):
            pss[f"{_PSS_PREFIX}{mode}"] = "restricted"
            pss[f"{_PSS_PREFIX}{mode}-version"] = pss_version
        #: Every label of the Namespace.
        self.labels = {**(labels or {}), **pss, **own}
        self.resource = k8s.KubeNamespace(
            self, "Resource",
            metadata=k8s.ObjectMeta(name=name, labels=self.labels),
        )
        policy_labels = {"app.kubernetes.io/component": "network-policy"}
        self.default_deny = k8s.KubeNetworkPolicy(
            self, "DefaultDeny",
            metadata=k8s.ObjectMeta(name="default-deny", namespace=name, labels=policy_labels),
            spec=k8s.NetworkPolicySpec(pod_selector=k8s.LabelSelector(), policy_types=["Ingress", "Egress"]),
        )
        self.allow_dns = k8s.KubeNetworkPolicy(
            self, "AllowDns",
            metadata=k8s.ObjectMeta(name="allow-dns", namespace=name, labels=policy_labels),
            spec=k8s.NetworkPolicySpec(
                pod_selector=k8s.LabelSelector(),
                policy_types=["Egress"],
                egress=[k8s.NetworkPolicyEgressRule(
                    to=[dns_peer()], ports=ports(53, protocol="UDP") + ports(53),
                )],
            ),
        )
        for obj in (self.default_deny, self.allow_dns):
            obj.add_dependency(self.resource)
