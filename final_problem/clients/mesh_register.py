"""Register a pod's service and its sidecar in Consul, keep them fresh, remove them on exit.

Runs as the first native sidecar of every mesh pod (official ``python`` image, standard
library only); there are no Consul client agents, so this does what an agent or
consul-k8s's endpoints controller would for this one pod:

1. reads the Consul CA certificate from ConfigMap ``consul/consul-ca`` (Kubernetes API,
   the pod's service account token) into the shared memory volume, for itself and for
   the consul-dataplane sidecar (``-ca-certs``);
2. logs in through the Kubernetes auth method (``POST /v1/acl/login``): the token carries
   the service identity named after the service account;
3. registers the service instance and its ``connect-proxy`` with the explicit upstreams
   (``PUT /v1/catalog/register``; payloads from
   :func:`final_problem.renderers.consul.registration`), writes the proxy's id for the
   dataplane (``-proxy-service-id-path``) and a ``registered`` marker for the startup probe;
4. every ``MESH_REFRESH_S`` seconds registers again, with the check ``passing`` when the
   application answers on its port and ``critical`` when it does not;
5. after every registration writes the time to ``alive`` in the shared volume, which the
   container's liveness probe reads (``mesh_register.py --check-alive SECONDS``: exit 1
   when the last registration is older), so a registration loop that hangs is restarted;
6. on SIGTERM deregisters both and logs out.

Environment: ``MESH_SPEC`` (JSON: the MeshService and Consul's address), ``POD_NAME``,
``POD_IP``, ``POD_NAMESPACE``, ``MESH_DIR``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


def kube_get(path: str) -> dict[str, Any]:
    sa = os.environ.get("SA_DIR", SA_DIR)
    token = Path(sa, "token").read_text().strip()
    base = os.environ.get("KUBERNETES_API_URL") or (
        f"https://{os.environ['KUBERNETES_SERVICE_HOST']}:{os.environ.get('KUBERNETES_SERVICE_PORT', '443')}")
    context = ssl.create_default_context(cafile=os.path.join(sa, "ca.crt")) if base.startswith("https") else None
    request = urllib.request.Request(f"{base}{path}", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, context=context, timeout=15) as response:
        return json.loads(response.read())


def consul(spec: dict[str, Any], method: str, path: str, body: Any = None, token: str | None = None) -> Any:
    context = ssl.create_default_context(cafile=spec["ca_file"])
    context.check_hostname = True
    headers = {"Content-Type": "application/json"}
    if token:
        headers["X-Consul-Token"] = token
    request = urllib.request.Request(f"{spec['address']}{path}", method=method, headers=headers,
                                     data=json.dumps(body).encode() if body is not None else None)
    with urllib.request.urlopen(request, context=context, timeout=15) as response:
        text = response.read()
    return json.loads(text) if text else None


def app_healthy(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        return True
    except OSError:
        return False


#: File in MESH_DIR holding the time of the last registration (the liveness probe's).
ALIVE = "alive"


def check_alive(mesh_dir: Path, max_age_s: float, now: float | None = None) -> int:
    """0 when the last registration is at most ``max_age_s`` old, else 1 with the reason."""
    try:
        last = float((mesh_dir / ALIVE).read_text())
    except (OSError, ValueError) as e:
        print(f"no registration recorded: {e}", flush=True)
        return 1
    age = (time.time() if now is None else now) - last
    if age > max_age_s:
        print(f"last registration {age:.0f} s ago, more than {max_age_s:.0f} s", flush=True)
        return 1
    return 0


def main() -> int:
    if sys.argv[1:2] == ["--check-alive"]:
        return check_alive(Path(os.environ.get("MESH_DIR", "/consul-mesh")), float(sys.argv[2]))
    spec = json.loads(os.environ["MESH_SPEC"])
    mesh_dir = Path(os.environ.get("MESH_DIR", "/consul-mesh"))
    pod, pod_ip, ns = os.environ["POD_NAME"], os.environ["POD_IP"], os.environ["POD_NAMESPACE"]
    refresh = float(os.environ.get("MESH_REFRESH_S", "30"))
    ca = kube_get(f"/api/v1/namespaces/{spec['consul_namespace']}/configmaps/consul-ca")["data"]["ca.crt"]
    ca_file = mesh_dir / "ca.crt"
    ca_file.write_text(ca)
    spec["ca_file"] = str(ca_file)
    jwt = Path(os.environ.get("SA_DIR", SA_DIR), "token").read_text().strip()
    login = consul(spec, "POST", "/v1/acl/login", {"AuthMethod": spec["auth_method"], "BearerToken": jwt})
    token = login["SecretID"]
    service, sidecar = spec["registration"], spec["sidecar_registration"]
    # Pod-specific fields, filled here (the chart renders the rest).
    for doc in (service, sidecar):
        doc["Service"]["ID"] = doc["Service"]["ID"].replace("POD_NAME", pod)
        doc["Service"]["Address"] = pod_ip
        doc["Service"]["Meta"].update({"pod-name": pod, "k8s-namespace": ns})
        doc["Check"]["CheckID"] = doc["Check"]["CheckID"].replace("POD_NAME", pod)
        doc["Check"]["ServiceID"] = doc["Service"]["ID"]
    sidecar["Service"]["Proxy"]["DestinationServiceID"] = service["Service"]["ID"]
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    first = True
    while not stopping:
        status = "passing" if app_healthy(service["Service"]["Port"]) else "critical"
        for doc in (service, sidecar):
            doc["Check"]["Status"] = status
            consul(spec, "PUT", "/v1/catalog/register", doc, token)
        (mesh_dir / ALIVE).write_text(f"{time.time():.3f}")
        if first:
            (mesh_dir / "proxy-id").write_text(sidecar["Service"]["ID"])
            (mesh_dir / "registered").write_text("1")
            print(f"registered {service['Service']['ID']} and its sidecar on {spec['node']}", flush=True)
            first = False
        deadline = time.monotonic() + refresh
        while not stopping and time.monotonic() < deadline:
            time.sleep(0.5)
    for doc in (sidecar, service):
        try:
            consul(spec, "PUT", "/v1/catalog/deregister",
                   {"Node": spec["node"], "ServiceID": doc["Service"]["ID"]}, token)
        except (OSError, urllib.error.URLError) as e:
            print(f"deregistering {doc['Service']['ID']}: {e}", flush=True)
    try:
        consul(spec, "POST", "/v1/acl/logout", None, token)
    except (OSError, urllib.error.URLError):
        pass
    print("deregistered", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
