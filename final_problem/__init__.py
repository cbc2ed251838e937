"""The Final Problem: one typed model of a stateful distributed-systems platform.

The same cdk8s charts are rendered for two targets: Amazon EKS (applied through the
cluster's manifest API by the CDK stacks in :mod:`final_problem.stacks`) and k3s on
Raspberry Pis (plain YAML, see ``pi/``). A component written in another app imports
what it needs from :mod:`final_problem.api`.
"""

from final_problem.errors import ConfigError

__all__ = ["ConfigError"]
__version__ = "0.1.0"
