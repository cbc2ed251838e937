"""Create named Secrets with random values, once; run inside the cluster by a Job.

Standard library only: it runs in the official ``python`` image. It reads which
Secrets to create from ``GENERATOR_SPEC`` (JSON: names, keys and lengths, never values)
and POSTs each one to the Kubernetes API. ``201 Created`` means it was made now;
``409 AlreadyExists`` means an earlier run (or another pod) made it, and it is left
untouched. So the Job is idempotent, and its service account needs ``create`` only:
it can never read a Secret back. Values are never printed.

Source: Kubernetes API reference, "Secret v1" create (POST
/api/v1/namespaces/{namespace}/secrets); "Accessing the API from a Pod".
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import ssl
import sys
import urllib.error
import urllib.request

SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


def api_base() -> str:
    # KUBERNETES_API_URL lets a test point the generator at a local API double.
    if url := os.environ.get("KUBERNETES_API_URL"):
        return url.rstrip("/")
    host = os.environ["KUBERNETES_SERVICE_HOST"]
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    if ":" in host:  # IPv6 service address
        host = f"[{host}]"
    return f"https://{host}:{port}"


def value(spec: dict) -> str:
    """One fresh random value in the spec's format."""
    if spec.get("format") == "kafka-uuid":
        # Kafka's Uuid.toString: URL-safe base64 of 16 bytes without padding; like
        # Uuid.randomUuid, skip ids starting with "-" (they read as a command-line option).
        while True:
            text = base64.urlsafe_b64encode(secrets.token_bytes(16)).decode().rstrip("=")
            if not text.startswith("-"):
                return text
    return secrets.token_urlsafe(int(spec.get("bytes", 32)))


def secret_body(spec: dict, namespace: str) -> dict:
    """The Secret object for one spec entry, with fresh random values."""
    values = {key: value(spec) for key in spec["keys"]}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": spec["name"],
            "namespace": namespace,
            "labels": dict(spec.get("labels", {})),
            "annotations": {"final-problem.io/generated": "in-cluster"},
        },
        "stringData": values,
    }


def create(base: str, namespace: str, body: dict, token: str, context: ssl.SSLContext | None) -> str:
    request = urllib.request.Request(
        f"{base}/api/v1/namespaces/{namespace}/secrets",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, context=context, timeout=30) as response:
            if response.status == 201:
                return "created"
            raise RuntimeError(f"unexpected status {response.status}")
    except urllib.error.HTTPError as e:
        if e.code == 409:
            return "exists"
        raise RuntimeError(f"HTTP {e.code} {e.reason}") from None


def main() -> int:
    sa_dir = os.environ.get("SA_DIR", SA_DIR)
    specs = json.loads(os.environ["GENERATOR_SPEC"])
    with open(os.path.join(sa_dir, "namespace")) as f:
        namespace = f.read().strip()
    with open(os.path.join(sa_dir, "token")) as f:
        token = f.read().strip()
    base = api_base()
    context = ssl.create_default_context(cafile=os.path.join(sa_dir, "ca.crt")) if base.startswith("https") else None
    failed = 0
    for spec in specs:
        try:
            outcome = create(base, namespace, secret_body(spec, namespace), token, context)
        except Exception as e:  # report every secret, then fail so the Job retries
            print(f"secret {namespace}/{spec['name']}: failed: {e}", flush=True)
            failed += 1
            continue
        verb = "created" if outcome == "created" else "already exists, left unchanged"
        print(f"secret {namespace}/{spec['name']}: {verb}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
