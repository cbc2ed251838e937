"""Building blocks every component gets by default.

- :mod:`.labels`: the ``app.kubernetes.io/*`` labels.
- :mod:`.security`: the Pod Security Standard "restricted" contexts, resources.
- :mod:`.namespace`: a namespace enforcing "restricted", default-deny with DNS egress.
- :mod:`.quorum`: PDB, hostname anti-affinity, zone spread and retained volumes.
- :mod:`.generated_secrets`: Secrets generated inside the cluster, once (the Job runs
  :mod:`.secret_generator`).
"""

from final_problem.constructs.labels import LabelSet
from final_problem.constructs.namespace import RestrictedNamespace
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
    "raw_resources",
    "harden",
    "restricted_container",
    "restricted_pod",
    "volume_claim_template",
]
