"""Python clients that talk to the running platform from any node."""

from __future__ import annotations

import base64
import json
import subprocess


def read_secret(*, namespace: str, name: str, key: str) -> str:
    """One key of a Secret generated in the cluster, through ``kubectl`` (the caller's kubeconfig)."""
    out = subprocess.run(
        ["kubectl", "get", "secret", name, "-n", namespace, "-o", "json"],
        check=True, capture_output=True, text=True, timeout=30,
    ).stdout
    return base64.b64decode(json.loads(out)["data"][key]).decode()
