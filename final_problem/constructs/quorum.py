"""Quorum StatefulSets: members that must not fail together.

A quorum of ``n`` members needs ``floor(n/2) + 1`` of them up. This block makes a
StatefulSet keep that true through node drains, node loss and zone loss:

- a PodDisruptionBudget with ``maxUnavailable: 1``, so a drain never takes two members;
- required pod anti-affinity on ``kubernetes.io/hostname``: one member per node;
- a topology spread constraint on ``topology.kubernetes.io/zone`` (hard on EKS, soft on
  k3s, whose nodes carry no zone label; see :class:`~final_problem.profiles.Profile`);
- volume claim templates on the profile's StorageClass, retained when the StatefulSet is
  deleted or scaled down (``persistentVolumeClaimRetentionPolicy``, GA in Kubernetes 1.32).

cdk8s-plus-27 can express none of the last three nor volume claim templates, so the
StatefulSet is the raw Kubernetes object, built from the same restricted contexts.
Source: Kubernetes docs, "StatefulSets", "Specifying a Disruption Budget", "Pod Topology
Spread Constraints", "Assigning Pods to Nodes".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from final_problem.objects import Group, ObjectChart

from final_problem.constructs.labels import LabelSet
from final_problem.constructs.security import pod_context
from final_problem.errors import ConfigError
from final_problem.imports import int_or_string, k8s, quantity
from final_problem.profiles import Profile

HOSTNAME = "kubernetes.io/hostname"
ZONE = "topology.kubernetes.io/zone"


@dataclass(frozen=True, kw_only=True)
class ClaimSpec:
    """One persistent volume per member."""

    name: str
    size_gib: int

    def __post_init__(self) -> None:
        if self.size_gib < 1:
            raise ConfigError(f"{self.name}.size_gib", self.size_gib, "a volume needs at least 1 GiB", "use 1 or more")


def volume_claim_template(claim: ClaimSpec, *, profile: Profile) -> k8s.KubePersistentVolumeClaimProps:
    """The claim template of one member volume on the profile's StorageClass."""
    return k8s.KubePersistentVolumeClaimProps(
        metadata=k8s.ObjectMeta(name=claim.name),
        spec=k8s.PersistentVolumeClaimSpec(
            access_modes=["ReadWriteOnce"],
            storage_class_name=profile.storage_class,
            resources=k8s.VolumeResourceRequirements(
                requests={"storage": quantity(f"{claim.size_gib}Gi")}
            ),
        ),
    )


class QuorumPolicy:
    """Scheduling and disruption rules shared by every quorum set."""

    @staticmethod
    def affinity(selector: dict[str, str]) -> k8s.Affinity:
        return k8s.Affinity(
            pod_anti_affinity=k8s.PodAntiAffinity(
                required_during_scheduling_ignored_during_execution=[
                    k8s.PodAffinityTerm(
                        label_selector=k8s.LabelSelector(match_labels=selector), topology_key=HOSTNAME
                    )
                ]
            )
        )

    @staticmethod
    def spread(selector: dict[str, str], profile: Profile) -> list[k8s.TopologySpreadConstraint]:
        return [
            k8s.TopologySpreadConstraint(
                max_skew=1,
                topology_key=ZONE,
                when_unsatisfiable=profile.zone_spread,
                label_selector=k8s.LabelSelector(match_labels=selector),
            )
        ]


class QuorumStatefulSet(Group):
    """A StatefulSet of quorum members with a PDB, anti-affinity, spread and retained volumes.

    Exposes ``name``, ``namespace``, ``selector`` and ``replicas``; the headless Service
    named ``service_name`` gives each member the stable DNS name
    ``<name>-<ordinal>.<service_name>.<namespace>.svc``.
    """

    def __init__(
        self,
        scope: ObjectChart | Group,
        id: str,
        *,
        name: str,
        namespace: str,
        labels: LabelSet,
        component: str,
        replicas: int,
        service_name: str,
        containers: Sequence[k8s.Container],
        profile: Profile,
        uid: int,
        gid: int | None = None,
        fs_group: int | None = None,
        init_containers: Sequence[k8s.Container] = (),
        volumes: Sequence[k8s.Volume] = (),
        claims: Sequence[ClaimSpec] = (),
        pod_annotations: dict[str, str] | None = None,
        pod_labels: dict[str, str] | None = None,
        termination_grace_seconds: int = 60,
        pod_management_policy: str = "Parallel",
        service_account_name: str | None = None,
        min_ready_seconds: int = 0,
    ) -> None:
        super().__init__(scope, id)
        if replicas < 3 or replicas % 2 == 0:
            raise ConfigError(
                f"{labels.name}.replicas", replicas,
                "a quorum set needs an odd number of members, at least 3: quorum is floor(n/2)+1, "
                "so an even set tolerates no more failures than the odd one below it",
                "use 3 or 5",
            )
        self.name = name
        self.namespace = namespace
        self.replicas = replicas
        self.service_name = service_name
        self.selector = labels.selector(component)
        pod_labels = {**labels.chart_labels(), **(pod_labels or {}), **self.selector}
        self.resource = k8s.KubeStatefulSet(
            self, "Resource",
            metadata=k8s.ObjectMeta(name=name, namespace=namespace, labels={"app.kubernetes.io/component": component}),
            spec=k8s.StatefulSetSpec(
                replicas=replicas,
                service_name=service_name,
                pod_management_policy=pod_management_policy,
                # A rolling update takes the next member down only once the restarted one has
                # been Ready this long (Kubernetes docs, "StatefulSets", minimum ready seconds):
                # for a probe that passes before the member is fully back in its quorum.
                min_ready_seconds=min_ready_seconds or None,
                selector=k8s.LabelSelector(match_labels=self.selector),
                update_strategy=k8s.StatefulSetUpdateStrategy(type="RollingUpdate"),
                persistent_volume_claim_retention_policy=k8s.StatefulSetPersistentVolumeClaimRetentionPolicy(
                    when_deleted="Retain", when_scaled="Retain"
                ),
                volume_claim_templates=[volume_claim_template(c, profile=profile) for c in claims] or None,
                template=k8s.PodTemplateSpec(
                    metadata=k8s.ObjectMeta(labels=pod_labels, annotations=pod_annotations),
                    spec=k8s.PodSpec(
                        automount_service_account_token=False,
                        enable_service_links=False,
                        service_account_name=service_account_name,
                        security_context=pod_context(uid=uid, gid=gid, fs_group=fs_group),
                        affinity=QuorumPolicy.affinity(self.selector),
                        topology_spread_constraints=QuorumPolicy.spread(self.selector, profile),
                        termination_grace_period_seconds=termination_grace_seconds,
                        init_containers=list(init_containers) or None,
                        containers=list(containers),
                        volumes=list(volumes) or None,
                    ),
                ),
            ),
        )
        self.pdb = k8s.KubePodDisruptionBudget(
            self, "Disruption",
            metadata=k8s.ObjectMeta(name=name, namespace=namespace, labels={"app.kubernetes.io/component": component}),
            spec=k8s.PodDisruptionBudgetSpec(
                max_unavailable=int_or_string(1),
                selector=k8s.LabelSelector(match_labels=self.selector),
            ),
        )

    def member_dns(self, ordinal: int) -> str:
        """Stable DNS name of member ``ordinal``."""
        return f"{self.name}-{ordinal}.{self.service_name}.{self.namespace}.svc"
