"""A namespace that enforces Pod Security "restricted" and denies traffic by default."""

from __future__ import annotations

from constructs import Construct

from final_problem.imports import int_or_string, k8s


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


def ports(*numbers: int, protocol: str = "TCP") -> list[k8s.NetworkPolicyPort]:
    return [k8s.NetworkPolicyPort(port=int_or_string(n), protocol=protocol) for n in numbers]


class RestrictedNamespace(Construct):
    """A namespace labelled to enforce, audit and warn at Pod Security "restricted".

    Creates the Namespace, a default-deny NetworkPolicy for ingress and egress, and a
    policy allowing DNS to the cluster resolver; components add their own allows.
    Source: Kubernetes docs, "Enforce Pod Security Standards with Namespace Labels".
    """

    def __init__(self, scope: Construct, id: str, *, name: str, pss_version: str) -> None:
        super().__init__(scope, id)
        #: The namespace name, for objects placed in it.
        self.name = name
        pss: dict[str, str] = {}
        for mode in ("enforce", "audit", "warn"):
            pss[f"pod-security.kubernetes.io/{mode}"] = "restricted"
            pss[f"pod-security.kubernetes.io/{mode}-version"] = pss_version
        self.resource = k8s.KubeNamespace(
            self, "Resource",
            metadata=k8s.ObjectMeta(name=name, labels={**pss, "app.kubernetes.io/component": "namespace"}),
        )
        labels = {"app.kubernetes.io/component": "network-policy"}
        self.default_deny = k8s.KubeNetworkPolicy(
            self, "DefaultDeny",
            metadata=k8s.ObjectMeta(name="default-deny", namespace=name, labels=labels),
            spec=k8s.NetworkPolicySpec(pod_selector=k8s.LabelSelector(), policy_types=["Ingress", "Egress"]),
        )
        self.allow_dns = k8s.KubeNetworkPolicy(
            self, "AllowDns",
            metadata=k8s.ObjectMeta(name="allow-dns", namespace=name, labels=labels),
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
