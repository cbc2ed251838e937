"""Building blocks every component gets by default.

- :mod:`.labels`: the ``app.kubernetes.io/*`` labels (:class:`LabelSet`, :func:`set_component`).
- :mod:`.security`: the Pod Security Standard "restricted" contexts, resources.
- :mod:`.namespace`: a namespace enforcing "restricted", default-deny with DNS egress;
  :func:`ports` for NetworkPolicy rules, :data:`MONITORING_NAMESPACE_LABEL`.
- :mod:`.quorum`: PDB, hostname anti-affinity, zone spread and retained volumes.
- :mod:`.generated_secrets`: Secrets generated inside the cluster, once (the Job runs
  :mod:`.secret_generator`).

A component written in another app imports these from :mod:`final_problem.api`.
"""

from final_problem.constructs.labels import LabelSet, set_component
from final_problem.constructs.namespace import MONITORING_NAMESPACE_LABEL, RestrictedNamespace, ports
from final_problem.constructs.quorum import ClaimSpec, QuorumPolicy, QuorumStatefulSet, volume_claim_template
from final_problem.constructs.generated_secrets import GeneratedSecrets, SecretSpec
from final_problem.constructs.security import (
    Sizing,
    container_context,
    pod_context,
    raw_resources,
    harden,
    restricted_container,
    restricted_pod,
)

__all__ = [
    "MONITORING_NAMESPACE_LABEL",
    "GeneratedSecrets",
    "LabelSet",
    "ClaimSpec",
    "QuorumPolicy",
    "QuorumStatefulSet",
    "RestrictedNamespace",
    "SecretSpec",
    "Sizing",
    "container_context",
    "pod_context",
    "ports",
    "raw_resources",
    "harden",
    "restricted_container",
    "restricted_pod",
    "set_component",
    "volume_claim_template",
]
