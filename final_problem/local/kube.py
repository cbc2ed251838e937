"""A real Kubernetes control plane on loopback, with fake Nodes shaped like a profile's.

etcd, kube-apiserver, kube-controller-manager and kube-scheduler are built from the
published Go modules by ``make kube-binaries`` (``deps/kubernetes/``) into
``${XDG_CACHE_HOME:-~/.cache}/final-problem/kubernetes-<version>/bin``. A
:class:`LocalControlPlane` starts them on free 127.0.0.1 ports with a CA, serving and
client certificates and a service-account key generated per run (``openssl``), RBAC and
Pod Security admission on (``restricted`` enforced by default in every namespace).

No kubelet runs: :func:`register_nodes` creates Nodes with the capacity and labels of
:func:`fake_nodes`, kept Ready by running the controller manager without its node
lifecycle controller (nothing marks them NotReady or evicts their pods). KWOK
(``sigs.k8s.io/kwok``, also built by ``make kube-binaries``) plays their kubelets: pods bound
to them turn Running and Ready and Jobs' pods complete, so the workload controllers and
PodDisruptionBudgets progress; no container runs and no probe is called. A
:class:`Provisioner` thread does what a volume provisioner does for claims the scheduler
selected a node for: it creates a matching PersistentVolume, which the persistent-volume
controller binds. Before the platform, :func:`platform` applies what the target itself runs
in kube-system (:func:`final_problem.capacity.system_objects`: EKS's add-ons, or k3s's
CoreDNS, metrics-server, local-path provisioner and a ServiceLB DaemonSet with host ports
per LoadBalancer Service), with their requests, so the scheduler places the platform
beside them as on the real target. So everything up to a pod bound to a node is the real thing: admission,
RBAC, the workload controllers, volume binding and the scheduler.

Every process is stopped by :meth:`LocalControlPlane.stop`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import yaml

from final_problem import capacity, local, versions
from final_problem.config import Settings
from final_problem.local import LOOPBACK, free_ports
from final_problem.profiles import ARM64_VA_BITS_LABEL

#: The wrapper module that pins the control plane's and etcd's versions.
GO_MOD = Path(__file__).resolve().parents[2] / "deps" / "kubernetes" / "go.mod"
#: The field manager of everything this module applies.
FIELD_MANAGER = "final-problem"
#: The pod and service address ranges only need to be valid; nothing routes them.
SERVICE_CIDR = "10.96.0.0/16"


class ControlPlaneError(RuntimeError):
    """A server did not start, or the API did not reach the expected state in time."""


# --- versions and binaries ---------------------------------------------------------------

def module_versions(go_mod: Path = GO_MOD) -> dict[str, str]:
    """``{"kubernetes": "1.36.5", "etcd": "3.6.8"}`` as ``deps/kubernetes/go.mod`` requires them."""
    text = go_mod.read_text()
    found = {}
    for name, module in (("kubernetes", "k8s.io/kubernetes"), ("etcd", "go.etcd.io/etcd/server/v3")):
        match = re.search(rf"^\s*{re.escape(module)} v(\S+)", text, re.MULTILINE)
        if not match:
            raise ControlPlaneError(f"{go_mod} requires no {module}")
        found[name] = match.group(1)
    return found


def bin_dir(version: str | None = None) -> Path:
    """Where ``make kube-binaries`` puts the binaries of ``version`` (default: go.mod's)."""
    version = version or module_versions()["kubernetes"]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "final-problem" / f"kubernetes-{version}" / "bin"


BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")


def kwok_dir(version: str = versions.KWOK_VERSION) -> Path:
    """Where ``make kube-binaries`` puts KWOK (``bin/kwok``) and its stages (``stages.yaml``)."""
    return bin_dir().parents[1] / f"kwok-{version}"


def missing_binaries(directory: Path | None = None) -> list[str]:
    directory = directory or bin_dir()
    paths = [directory / b for b in BINARIES] + [kwok_dir() / "bin" / "kwok"]
    missing = [str(p) for p in paths if not os.access(p, os.X_OK)]
    if not (kwok_dir() / "stages.yaml").exists():
        missing.append(str(kwok_dir() / "stages.yaml"))
    return missing


# --- node shapes -------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class FakeNode:
    """A Node registered without a kubelet: a profile's node (:class:`final_problem.capacity.NodeShape`)
    as the scheduler sees it, named and labelled."""

    name: str
    cpu_m: int
    memory_mib: int
    pods: int
    labels: Mapping[str, str] = field(default_factory=dict)


def _labels(settings: Settings, profile_name: str, index: int) -> dict[str, str]:
    if profile_name == "pi":
        # The label first boot sets from the kernel (pi/README.md, "Envoy on a Raspberry
        # Pi"), as the settings say the kernels are: 39 for Raspberry Pi OS's stock Pi 4
        # kernel (the default), 47 for a Pi 5, 48 for a Pi 4 with a 48-bit kernel.
        return {"kubernetes.io/arch": "arm64", "kubernetes.io/os": "linux",
                ARM64_VA_BITS_LABEL: str(settings.pi_arm64_va_bits)}
    instance = capacity.instance_type(settings.node_instance_type)
    return {
        "kubernetes.io/arch": "arm64" if instance.arch == "arm64" else "amd64",
        "kubernetes.io/os": "linux",
        "node.kubernetes.io/instance-type": instance.name,
        # Managed node groups spread instances over the subnets' zones in turn.
        "topology.kubernetes.io/zone": f"zone-{chr(ord('a') + index % settings.az_count)}",
    }


def fake_nodes(settings: Settings, profile_name: str) -> list[FakeNode]:
    """The Nodes a profile runs on, with the allocatable CPU, memory and pods of
    :func:`final_problem.capacity.node_shapes` (the one source of the figures).

    ``eks``: ``node_desired`` nodes of ``node_instance_type``, one zone each in turn over
    ``az_count`` zones. ``pi``: three Raspberry Pi k3s servers of ``pi_memory_gib``, arm64,
    labelled with ``pi_arm64_va_bits``, no zone label (k3s sets none).
    """
    prefix = {"eks": "eks-node", "pi": "pi"}.get(profile_name)
    if prefix is None:
        raise ValueError(f"no nodes for profile {profile_name!r}")
    return [
        FakeNode(name=f"{prefix}-{i + 1}", cpu_m=node.cpu_m, memory_mib=node.memory_mib, pods=node.max_pods,
                 labels=_labels(settings, profile_name, i))
        for i, node in enumerate(capacity.node_shapes(settings, profile_name))
    ]


# --- certificates --------------------------------------------------------------------------

def _openssl(*args: str, cwd: Path) -> None:
    result = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if result.returncode:
        raise ControlPlaneError(f"openssl {' '.join(args)} failed: {result.stderr.strip()}")


@dataclass(frozen=True)
class Pki:
    """Files of a throw-away CA and the certificates signed by it (P-256 keys)."""

    directory: Path

    def path(self, name: str) -> Path:
        return self.directory / name

    @classmethod
    def create(cls, directory: Path, *, clients: Mapping[str, tuple[str, str | None]]) -> "Pki":
        """A CA, the API server's serving certificate and one client certificate per entry
        (``{file_stem: (common name, organization or None)}``), plus the service-account key."""
        directory.mkdir(parents=True, exist_ok=True)
        ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
        _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
                 "-subj", "/CN=final-problem-test-ca", cwd=directory)
        sans = ",".join([
            "IP:127.0.0.1", "IP:10.96.0.1", "DNS:localhost", "DNS:kubernetes", "DNS:kubernetes.default",
            "DNS:kubernetes.default.svc", "DNS:kubernetes.default.svc.cluster.local",
        ])
        certs: dict[str, tuple[str, list[str]]] = {
            "apiserver": ("/CN=kube-apiserver", ["-addext", f"subjectAltName={sans}",
                                                  "-addext", "extendedKeyUsage=serverAuth"]),
        }
        for stem, (cn, org) in clients.items():
            subject = f"/CN={cn}" + (f"/O={org}" if org else "")
            certs[stem] = (subject, ["-addext", "extendedKeyUsage=clientAuth"])
        for stem, (subject, extensions) in certs.items():
            _openssl("req", "-x509", *ec, "-keyout", f"{stem}.key", "-out", f"{stem}.crt", "-days", "2",
                     "-subj", subject, "-CA", "ca.crt", "-CAkey", "ca.key",
                     "-addext", "basicConstraints=critical,CA:FALSE", *extensions, cwd=directory)
        _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "sa.key", cwd=directory)
        _openssl("ec", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=directory)
        return cls(directory)


# --- API access ------------------------------------------------------------------------------

class ApiError(RuntimeError):
    def __init__(self, status: int, method: str, path: str, body: Any) -> None:
        self.status, self.body = status, body
        message = body.get("message") if isinstance(body, dict) else body
        super().__init__(f"{method} {path}: HTTP {status}: {message}")


class Api:
    """Minimal JSON client of the Kubernetes API over HTTPS (standard library only)."""

    def __init__(self, base: str, cafile: Path, *, client_cert: tuple[Path, Path] | None = None,
                 token: str | None = None) -> None:
        self.base, self.cafile, self.token = base.rstrip("/"), cafile, token
        self.context = ssl.create_default_context(cafile=str(cafile))
        if client_cert:
            self.context.load_cert_chain(str(client_cert[0]), str(client_cert[1]))
        self._resources: dict[tuple[str, str], tuple[str, bool]] = {}

    def as_token(self, token: str) -> "Api":
        """The same API, authenticated by a bearer token (a service account's)."""
        return Api(self.base, self.cafile, token=token)

    def request(self, method: str, path: str, body: Any = None, *, content_type: str = "application/json",
                query: Mapping[str, str] | None = None, timeout: float = 30) -> Any:
        url = self.base + path + (f"?{urllib.parse.urlencode(query)}" if query else "")
        data = None
        if body is not None:
            data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        headers = {"Accept": "application/json", "Content-Type": content_type}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, context=self.context, timeout=timeout) as response:
                payload = response.read()
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                detail: Any = json.loads(raw)
            except ValueError:
                detail = raw.decode(errors="replace")
            raise ApiError(e.code, method, path, detail) from None
        try:
            return json.loads(payload) if payload else None
        except ValueError:
            return payload.decode(errors="replace")

    def get(self, path: str, **query: str) -> Any:
        return self.request("GET", path, query=query or None)

    def items(self, path: str, **query: str) -> list[dict[str, Any]]:
        return list(self.get(path, **query)["items"])

    # Discovery: which path serves a kind, and whether it is namespaced.
    def resource(self, api_version: str, kind: str) -> tuple[str, bool]:
        key = (api_version, kind)
        if key not in self._resources:
            prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
            for r in self.get(prefix)["resources"]:
                if "/" not in r["name"]:
                    self._resources[(api_version, r["kind"])] = (f"{prefix}/{r['name']}", r["namespaced"])
        if key not in self._resources:
            raise ControlPlaneError(f"the API serves no {kind} in {api_version}")
        return self._resources[key]

    def object_path(self, obj: Mapping[str, Any]) -> str:
        collection, namespaced = self.resource(obj["apiVersion"], obj["kind"])
        meta = obj["metadata"]
        if namespaced:
            group_path, plural = collection.rsplit("/", 1)
            collection = f"{group_path}/namespaces/{meta.get('namespace', 'default')}/{plural}"
        return f"{collection}/{meta['name']}"

    def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply of one object (``kubectl apply --server-side``)."""
        result: dict[str, Any] = self.request(
            "PATCH", self.object_path(obj), obj, content_type="application/apply-patch+yaml",
            query={"fieldManager": FIELD_MANAGER, "force": "true"},
        )
        return result


# --- processes -------------------------------------------------------------------------------

@dataclass
class _Process:
    name: str
    args: list[str]
    log: Path
    process: subprocess.Popen[bytes] | None = None


class LocalControlPlane:
    """etcd, kube-apiserver, kube-controller-manager and kube-scheduler on 127.0.0.1."""

    def __init__(self, *, workdir: Path, binaries: Path | None = None) -> None:
        self.workdir = workdir
        self.binaries = binaries or bin_dir()
        self.procs: dict[str, _Process] = {}
        # All at once, so no two servers are handed the same port.
        (self.etcd_port, self.etcd_peer_port, self.port,
         self._controller_manager_port, self._scheduler_port, self._kwok_port) = free_ports(6)
        self.base = f"https://{LOOPBACK}:{self.port}"
        self.pki: Pki | None = None
        self._api: Api | None = None
        self.started_s = 0.0

    @property
    def api(self) -> Api:
        if self._api is None:
            raise ControlPlaneError("the control plane is not started")
        return self._api

    def _kubeconfig(self, stem: str) -> Path:
        assert self.pki
        path = self.workdir / f"{stem}.kubeconfig"
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "local",
            "clusters": [{"name": "local", "cluster": {
                "server": self.base, "certificate-authority": str(self.pki.path("ca.crt"))}}],
            "users": [{"name": stem, "user": {
                "client-certificate": str(self.pki.path(f"{stem}.crt")),
                "client-key": str(self.pki.path(f"{stem}.key"))}}],
            "contexts": [{"name": "local", "context": {"cluster": "local", "user": stem}}],
        }))
        return path

    def _spawn(self, name: str, args: list[str], *, binary: Path | None = None) -> None:
        binary = binary or self.binaries / name
        proc = _Process(name=name, args=[str(binary), *args], log=self.workdir / f"{name}.log")
        with proc.log.open("ab") as log:
            proc.process = subprocess.Popen(
                proc.args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=self.workdir, start_new_session=True,
            )
        self.procs[name] = proc

    def log_tail(self, name: str, chars: int = 3000) -> str:
        proc = self.procs.get(name)
        if not proc or not proc.log.exists():
            return ""
        return proc.log.read_text(errors="replace")[-chars:]

    def _check_alive(self) -> None:
        for proc in self.procs.values():
            if proc.process and proc.process.poll() is not None:
                raise ControlPlaneError(
                    f"{proc.name} exited with {proc.process.returncode}:\n{self.log_tail(proc.name)}")

    def start(self, *, timeout_s: float = 180) -> None:
        began = time.monotonic()
        missing = missing_binaries(self.binaries)
        if missing:
            raise ControlPlaneError(f"missing {', '.join(missing)}: run `make kube-binaries`")
        self.workdir.mkdir(parents=True, exist_ok=True)
        pki = self.pki = Pki.create(self.workdir / "pki", clients={
            "admin": ("final-problem-admin", "system:masters"),
            "controller-manager": ("system:kube-controller-manager", None),
            "scheduler": ("system:kube-scheduler", None),
        })
        etcd_url = f"http://{LOOPBACK}:{self.etcd_port}"
        peer_url = f"http://{LOOPBACK}:{self.etcd_peer_port}"
        self._spawn("etcd", [
            "--name=local", f"--data-dir={self.workdir / 'etcd'}",
            f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls={peer_url}", f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=local={peer_url}",
            # A throw-away store: losing it on a power cut costs nothing.
            "--unsafe-no-fsync", "--log-level=warn",
        ])
        admission = self.workdir / "admission.yaml"
        # Pod Security "restricted" enforced in every namespace, whatever its labels say
        # (Kubernetes docs, "Enforce Pod Security Standards by Configuring the Built-in
        # Admission Controller").
        admission.write_text(yaml.safe_dump({
            "apiVersion": "apiserver.config.k8s.io/v1", "kind": "AdmissionConfiguration",
            "plugins": [{"name": "PodSecurity", "configuration": {
                "apiVersion": "pod-security.admission.config.k8s.io/v1", "kind": "PodSecurityConfiguration",
                "defaults": {"enforce": "restricted", "enforce-version": "latest",
                             "audit": "restricted", "warn": "restricted"},
                "exemptions": {"namespaces": ["kube-system"]},
            }}],
        }))
        self._spawn("kube-apiserver", [
            f"--etcd-servers={etcd_url}", f"--bind-address={LOOPBACK}", f"--secure-port={self.port}",
            f"--advertise-address={LOOPBACK}",
            f"--tls-cert-file={pki.path('apiserver.crt')}", f"--tls-private-key-file={pki.path('apiserver.key')}",
            f"--client-ca-file={pki.path('ca.crt')}",
            f"--service-account-key-file={pki.path('sa.pub')}",
            f"--service-account-signing-key-file={pki.path('sa.key')}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--authorization-mode=RBAC",
            "--enable-admission-plugins=PodSecurity",
            f"--admission-control-config-file={admission}",
            # No kubelets: the API server must not wait for or proxy to any.
            "--endpoint-reconciler-type=none", "--profiling=false",
            f"--cert-dir={self.workdir / 'apiserver-certs'}",
        ])
        self._api = Api(self.base, pki.path("ca.crt"), client_cert=(pki.path("admin.crt"), pki.path("admin.key")))
        self.wait_ready(timeout_s=timeout_s)
        cm_kubeconfig = self._kubeconfig("controller-manager")
        self._spawn("kube-controller-manager", [
            f"--kubeconfig={cm_kubeconfig}", f"--authentication-kubeconfig={cm_kubeconfig}",
            f"--authorization-kubeconfig={cm_kubeconfig}",
            f"--bind-address={LOOPBACK}", f"--secure-port={self._controller_manager_port}",
            f"--cert-dir={self.workdir / 'controller-manager-certs'}",
            "--leader-elect=false",
            # Each controller acts as its own service account, so RBAC applies to it.
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={pki.path('sa.key')}",
            f"--root-ca-file={pki.path('ca.crt')}",
            # No kubelet renews node leases: without this controller nothing marks the
            # fake Nodes NotReady or evicts their pods.
            "--controllers=*,-node-lifecycle-controller",
        ])
        sched_kubeconfig = self._kubeconfig("scheduler")
        self._spawn("kube-scheduler", [
            f"--kubeconfig={sched_kubeconfig}", f"--authentication-kubeconfig={sched_kubeconfig}",
            f"--authorization-kubeconfig={sched_kubeconfig}",
            f"--bind-address={LOOPBACK}", f"--secure-port={self._scheduler_port}",
            f"--cert-dir={self.workdir / 'scheduler-certs'}",
            "--leader-elect=false",
        ])
        # KWOK plays every Node's kubelet: bound pods turn Running and Ready, Jobs' pods
        # complete (its default "fast" stages). Its own server stays on loopback.
        self._spawn("kwok", [
            f"--kubeconfig={self._kubeconfig('admin')}", f"--config={kwok_dir() / 'stages.yaml'}",
            "--manage-all-nodes=true",
            f"--server-address={LOOPBACK}:{self._kwok_port}", f"--node-ip={LOOPBACK}", "--cidr=10.244.0.0/16",
        ], binary=kwok_dir() / "bin" / "kwok")
        # The service-account controller creates "default" in every namespace: a sign the
        # controller manager is up and authorized.
        self.wait_for("the default ServiceAccount", lambda: self.exists("/api/v1/namespaces/default/serviceaccounts/default"),
                      timeout_s=timeout_s)
        #: Seconds :meth:`start` took.
        self.started_s = time.monotonic() - began

    def exists(self, path: str) -> bool:
        """Whether the API server has the object at ``path`` (404: no)."""
        try:
            self.api.get(path)
            return True
        except ApiError as e:
            if e.status == 404:
                return False
            raise

    def wait_for(self, what: str, check: Any, *, timeout_s: float, interval_s: float = 0.25) -> Any:
        def checked() -> Any:
            self._check_alive()
            return check()
        return local.wait_for(what, checked, timeout_s=timeout_s, interval_s=interval_s,
                              retry_on=(OSError, ApiError), error=ControlPlaneError)

    def wait_ready(self, *, timeout_s: float) -> None:
        self.wait_for("kube-apiserver /readyz", lambda: self.api.get("/readyz") == "ok", timeout_s=timeout_s)

    def stop(self, *, grace_s: float = 3) -> None:
        """SIGTERM every process, SIGKILL what is left after ``grace_s`` (all state is throw-away)."""
        running = [p.process for p in reversed(list(self.procs.values())) if p.process and p.process.poll() is None]
        for proc in running:
            os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for proc in running:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


# --- nodes, volumes, manifests ------------------------------------------------------------------

def register_nodes(api: Api, shapes: Iterable[FakeNode]) -> None:
    """Create a Ready Node per shape, with its allocatable resources and labels."""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    for shape in shapes:
        resources = {"cpu": f"{shape.cpu_m}m", "memory": f"{shape.memory_mib}Mi", "pods": str(shape.pods)}
        status = {
            "capacity": resources, "allocatable": resources,
            "conditions": [
                {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "fake node",
                 "lastHeartbeatTime": now, "lastTransitionTime": now},
                *({"type": t, "status": "False", "reason": "NoPressure", "lastHeartbeatTime": now,
                   "lastTransitionTime": now} for t in ("MemoryPressure", "DiskPressure", "PIDPressure")),
            ],
            "nodeInfo": {"architecture": shape.labels.get("kubernetes.io/arch", "arm64"), "operatingSystem": "linux",
                         "kubeletVersion": "v" + module_versions()["kubernetes"], "machineID": "", "systemUUID": "",
                         "bootID": "", "kernelVersion": "", "osImage": "", "containerRuntimeVersion": "",
                         "kubeProxyVersion": ""},
            "addresses": [{"type": "InternalIP", "address": LOOPBACK}, {"type": "Hostname", "address": shape.name}],
        }
        # Created Ready with its resources, as a kubelet registers its Node: KWOK initialises
        # only a Node that is not Ready, with 1k CPUs and 1 TiB unless set, and a status it
        # computed before a later PATCH could land after it and stay (the scheduler then
        # placed pods beyond the shape on a busy host).
        api.request("POST", "/api/v1/nodes", {
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": shape.name, "labels": {"kubernetes.io/hostname": shape.name, **shape.labels}},
            "status": status,
        })
        # The TaintNodesByCondition admission plugin taints a new Node not-ready; the node
        # lifecycle controller would lift it once Ready, and it does not run here.
        api.request("PATCH", f"/api/v1/nodes/{shape.name}", {"spec": {"taints": None}},
                    content_type="application/merge-patch+json")
        allocatable = api.get(f"/api/v1/nodes/{shape.name}")["status"].get("allocatable", {})
        if (cpu_millicores(allocatable.get("cpu", "0")), memory_mib(allocatable.get("memory", "0")),
                int(allocatable.get("pods", 0))) != (shape.cpu_m, shape.memory_mib, shape.pods):
            raise ControlPlaneError(f"Node {shape.name} stored allocatable {allocatable}, not {resources}")


class Provisioner:
    """Create a PersistentVolume for each claim the scheduler picked a node for.

    What a dynamic provisioner does for ``WaitForFirstConsumer`` classes: the scheduler
    annotates the claim with ``volume.kubernetes.io/selected-node``; a PV of the claim's
    size and class, pre-bound to it and pinned to that node's zone (or the node itself
    when it has no zone), appears; the persistent-volume controller binds the two, and
    the scheduler binds the pod.
    """

    SELECTED_NODE = "volume.kubernetes.io/selected-node"

    def __init__(self, api: Api, *, interval_s: float = 0.2) -> None:
        self.api, self.interval_s = api, interval_s
        self.created: list[str] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="provisioner", daemon=True)

    def __enter__(self) -> "Provisioner":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.provision_once()
            except (OSError, ApiError) as e:
                self.errors.append(str(e))

    def provision_once(self) -> None:
        for claim in self.api.items("/api/v1/persistentvolumeclaims"):
            meta, spec = claim["metadata"], claim["spec"]
            node_name = meta.get("annotations", {}).get(self.SELECTED_NODE)
            if claim["status"].get("phase") != "Pending" or not node_name or spec.get("volumeName"):
                continue
            name = f"pvc-{meta['uid']}"
            try:
                self.api.get(f"/api/v1/persistentvolumes/{name}")
                continue
            except ApiError as e:
                if e.status != 404:
                    raise
            node = self.api.get(f"/api/v1/nodes/{node_name}")
            zone = node["metadata"]["labels"].get("topology.kubernetes.io/zone")
            key, value = ("topology.kubernetes.io/zone", zone) if zone else ("kubernetes.io/hostname", node_name)
            storage_class = self.api.get(f"/apis/storage.k8s.io/v1/storageclasses/{spec['storageClassName']}")
            self.api.request("POST", "/api/v1/persistentvolumes", {
                "apiVersion": "v1", "kind": "PersistentVolume",
                "metadata": {"name": name, "annotations": {
                    "pv.kubernetes.io/provisioned-by": storage_class["provisioner"]}},
                "spec": {
                    "capacity": {"storage": spec["resources"]["requests"]["storage"]},
                    "accessModes": spec["accessModes"],
                    "storageClassName": spec["storageClassName"],
                    "persistentVolumeReclaimPolicy": storage_class.get("reclaimPolicy", "Delete"),
                    "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                                 "namespace": meta["namespace"], "name": meta["name"], "uid": meta["uid"]},
                    **self._source(storage_class["provisioner"], name),
                    "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                        {"key": key, "operator": "In", "values": [value]}]}]}},
                },
            })
            self.created.append(name)


    @staticmethod
    def _source(provisioner: str, name: str) -> dict[str, Any]:
        # A CSI driver's name is a DNS subdomain (ebs.csi.aws.com); k3s's local-path
        # provisioner (rancher.io/local-path) is no CSI driver and makes hostPath volumes
        # under /var/lib/rancher/k3s/storage (k3s docs, "Volumes and Storage").
        if "/" in provisioner:
            return {"hostPath": {"path": f"/var/lib/rancher/k3s/storage/{name}", "type": "DirectoryOrCreate"}}
        return {"csi": {"driver": provisioner, "volumeHandle": name}}


def manifest_objects(paths: Iterable[Path]) -> Iterator[dict[str, Any]]:
    """The objects of YAML files, in file order then document order."""
    for path in paths:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                yield doc


def pod_requests(pod: Mapping[str, Any]) -> tuple[int, int]:
    """(CPU millicores, memory MiB) the scheduler holds on a node for a pod.

    Written after ``PodRequests`` of k8s.io/component-helpers/resource/helpers.go, step by
    step, independently of :func:`final_problem.capacity.pod_requests` (the tests compare
    the two): the main containers' sum; each native sidecar (``restartPolicy: Always``) is
    added to it and to the running sidecars; each init container needs itself plus the
    sidecars started before it; the pod takes the larger, then ``spec.overhead``.
    """
    def requests(container: Mapping[str, Any]) -> dict[str, float]:
        found = (container.get("resources") or {}).get("requests") or {}
        return {"cpu": cpu_millicores(found.get("cpu", "0")), "memory": _bytes(found.get("memory", "0"))}

    def add(total: dict[str, float], more: Mapping[str, float]) -> None:
        for key, value in more.items():
            total[key] = total.get(key, 0) + value

    spec = pod["spec"]
    total: dict[str, float] = {}
    for container in spec["containers"]:
        add(total, requests(container))
    sidecars: dict[str, float] = {}
    init_peak: dict[str, float] = {}
    for container in spec.get("initContainers") or []:
        need = requests(container)
        if container.get("restartPolicy") == "Always":
            add(total, need)
            add(sidecars, need)
            need = dict(sidecars)
        else:
            add(need, sidecars)
        for key, value in need.items():
            init_peak[key] = max(init_peak.get(key, 0), value)
    for key, value in init_peak.items():
        total[key] = max(total.get(key, 0), value)
    overhead = spec.get("overhead") or {}
    add(total, {"cpu": cpu_millicores(overhead.get("cpu", "0")), "memory": _bytes(overhead.get("memory", "0"))})
    return int(total.get("cpu", 0)), round(total.get("memory", 0) / 2**20)


def _bytes(quantity: str) -> float:
    return memory_mib_exact(quantity) * 2**20


def cpu_millicores(quantity: str) -> int:
    quantity = str(quantity)
    return int(quantity[:-1]) if quantity.endswith("m") else round(float(quantity) * 1000)


_MEMORY_UNITS = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024, "Ti": 1024**2,
                 "k": 1000 / 1024**2, "M": 1000**2 / 1024**2, "G": 1000**3 / 1024**2}


def memory_mib_exact(quantity: str) -> float:
    quantity = str(quantity)
    for suffix in sorted(_MEMORY_UNITS, key=len, reverse=True):
        if quantity.endswith(suffix):
            return float(quantity[: -len(suffix)]) * _MEMORY_UNITS[suffix]
    return float(quantity) / 1024**2


def memory_mib(quantity: str) -> int:
    return round(memory_mib_exact(quantity))


# --- the platform on the control plane -----------------------------------------------------------

@dataclass(frozen=True)
class Rejection:
    """An object the API server refused, and why."""

    file: str
    object: str
    message: str


def describe(obj: Mapping[str, Any]) -> str:
    meta = obj["metadata"]
    namespace = f"{meta['namespace']}/" if meta.get("namespace") else ""
    return f"{obj['kind']} {namespace}{meta['name']}"


def apply_files(api: Api, paths: Iterable[Path]) -> tuple[list[dict[str, Any]], list[Rejection]]:
    """Server-side apply every object of ``paths`` in file order; return what the server
    stored and what it refused (apply goes on after a refusal, like ``kubectl apply -f``)."""
    applied, rejected = [], []
    for path in paths:
        for obj in manifest_objects([path]):
            try:
                applied.append(api.apply(obj))
            except (ApiError, ControlPlaneError) as e:  # refused, or a kind the API does not serve
                rejected.append(Rejection(path.name, describe(obj), str(e)))
    return applied, rejected


def expected_pods(objects: Iterable[Mapping[str, Any]], nodes: int = 0) -> dict[str, int]:
    """Pods the workload controllers should create, by workload (``Kind ns/name``);
    DaemonSets (none of which select nodes) one per node of ``nodes``."""
    counts = {}
    for obj in objects:
        spec = obj.get("spec", {})
        if obj["kind"] in ("StatefulSet", "Deployment", "ReplicaSet"):
            counts[describe(obj)] = int(spec.get("replicas", 1))
        elif obj["kind"] == "Job":
            counts[describe(obj)] = int(spec.get("parallelism", 1))
        elif obj["kind"] == "DaemonSet":
            counts[describe(obj)] = nodes
    return counts


def owner_of(pod: Mapping[str, Any]) -> str:
    """The workload that owns a pod, as :func:`expected_pods` names it (Deployments through
    their ReplicaSet)."""
    meta = pod["metadata"]
    owners = meta.get("ownerReferences") or [{"kind": "Pod", "name": meta["name"]}]
    owner = owners[0]
    if owner["kind"] == "ReplicaSet" and "pod-template-hash" in meta.get("labels", {}):
        return f"Deployment {meta['namespace']}/{owner['name'].rsplit('-', 1)[0]}"
    return f"{owner['kind']} {meta['namespace']}/{owner['name']}"


def pods_by_owner(api: Api, namespaces: Iterable[str]) -> dict[str, list[dict[str, Any]]]:
    """The pods of ``namespaces`` by owner, from one list of every namespace's pods: one
    snapshot, so a Job's pod that finished and the pod the scheduler placed in its room are
    never both counted (one list per namespace, taken a moment apart, could see both)."""
    wanted = set(namespaces)
    found: dict[str, list[dict[str, Any]]] = {}
    for pod in api.items("/api/v1/pods"):
        if pod["metadata"]["namespace"] in wanted:
            found.setdefault(owner_of(pod), []).append(pod)
    return found


def events(api: Api, namespaces: Iterable[str], reason: str) -> list[dict[str, Any]]:
    """Events with ``reason`` (e.g. FailedCreate, FailedScheduling) in ``namespaces``."""
    return [
        e for namespace in namespaces
        for e in api.items(f"/api/v1/namespaces/{namespace}/events", fieldSelector=f"reason={reason}")
    ]


def unschedulable(api: Api, namespaces: Iterable[str]) -> dict[str, str]:
    """Pods without a node, with the scheduler's last word on each (its event message)."""
    namespaces = list(namespaces)
    last: dict[str, str] = {}
    failed = sorted(events(api, namespaces, "FailedScheduling"),
                    key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")
    for event in failed:
        involved = event["involvedObject"]
        last[f"{involved['namespace']}/{involved['name']}"] = event["message"]
    pending = {}
    for namespace in namespaces:
        for pod in api.items(f"/api/v1/namespaces/{namespace}/pods"):
            key = f"{namespace}/{pod['metadata']['name']}"
            if not pod["spec"].get("nodeName"):
                pending[key] = last.get(key, "no scheduler event yet")
    return pending


@dataclass
class KubePlatform:
    """The platform's rendered YAML applied to a real control plane with a profile's nodes."""

    profile: str
    control_plane: LocalControlPlane
    shapes: list[FakeNode]
    files: list[Path]
    objects: list[dict[str, Any]]
    rejected: list[Rejection]
    provisioner: Provisioner
    #: What the target itself runs in kube-system (:func:`final_problem.capacity.system_objects`),
    #: applied before the platform.
    system: list[dict[str, Any]] = field(default_factory=list)

    @property
    def api(self) -> Api:
        return self.control_plane.api

    @property
    def namespaces(self) -> list[str]:
        return sorted({o["metadata"]["namespace"] for o in self.objects if o["metadata"].get("namespace")})

    def wait_for_pods(self, *, bound: bool, timeout_s: float = 120,
                      system: bool = False) -> dict[str, list[dict[str, Any]]]:
        """Wait until every workload has its pods (bound to nodes, if ``bound``); return
        them by workload. On time-out, return what there is: the tests say what is missing.
        ``system``: the target's own workloads in kube-system too."""
        expected = expected_pods(self.objects + (self.system if system else []), len(self.shapes))
        namespaces = self.namespaces + ([capacity.SYSTEM_NAMESPACE] if system else [])

        def complete() -> dict[str, list[dict[str, Any]]] | None:
            pods = pods_by_owner(self.api, namespaces)
            for owner, count in expected.items():
                have = pods.get(owner, [])
                if len(have) < count or (bound and not all(p["spec"].get("nodeName") for p in have)):
                    return None
            return pods

        try:
            return self.control_plane.wait_for("the platform's pods", complete, timeout_s=timeout_s, interval_s=0.5)
        except ControlPlaneError:
            return pods_by_owner(self.api, namespaces)


@contextmanager
def platform(workdir: Path, settings: Settings, profile: str, *,
             node_labels: Mapping[str, str] | None = None) -> Iterator[KubePlatform]:
    """Render ``profile`` in-process into ``workdir/dist``, start a control plane with the
    profile's Nodes (``node_labels`` over their own labels) and a provisioner, apply what
    the target itself runs (:func:`final_problem.capacity.system_objects`), wait until the
    scheduler has placed it, then apply the YAML; stop everything on exit."""
    from final_problem import manifests  # the charts, only when a platform is rendered

    files = manifests.write_profile(settings, profile, workdir / "dist")
    control_plane = LocalControlPlane(workdir=workdir / "control-plane")
    try:
        try:
            control_plane.start()
        except ControlPlaneError as e:
            logs = "\n".join(f"--- {name}\n{control_plane.log_tail(name)}" for name in control_plane.procs)
            raise ControlPlaneError(f"{e}\n{logs}") from None
        shapes = [dataclasses.replace(s, labels={**s.labels, **(node_labels or {})}) for s in fake_nodes(settings, profile)]
        register_nodes(control_plane.api, shapes)
        with Provisioner(control_plane.api) as provisioner:
            objects = list(manifest_objects(files))
            system = capacity.system_objects(profile, objects)
            apply_system(control_plane, system, len(shapes))
            _, rejected = apply_files(control_plane.api, files)
            yield KubePlatform(profile, control_plane, shapes, files, objects, rejected, provisioner, system)
    finally:
        control_plane.stop()


def apply_system(control_plane: LocalControlPlane, system: list[dict[str, Any]], nodes: int,
                 *, timeout_s: float = 120) -> None:
    """Apply the target's own workloads and wait until the scheduler has bound their pods,
    as they are when the platform is deployed onto a running cluster. (Any left pending
    are reported by the tests, with the scheduler's reason.)"""
    api = control_plane.api
    control_plane.wait_for(f"{capacity.SYSTEM_NAMESPACE}/default ServiceAccount", lambda: api.get(
        f"/api/v1/namespaces/{capacity.SYSTEM_NAMESPACE}/serviceaccounts/default"), timeout_s=timeout_s)
    for obj in system:
        api.apply(obj)
    expected = expected_pods(system, nodes)

    def placed() -> bool:
        pods = pods_by_owner(api, [capacity.SYSTEM_NAMESPACE])
        return all(len(pods.get(owner, [])) >= count and all(p["spec"].get("nodeName") for p in pods[owner])
                   for owner, count in expected.items())

    try:
        control_plane.wait_for("the target's own pods bound", placed, timeout_s=timeout_s, interval_s=0.5)
    except ControlPlaneError as e:
        pending = unschedulable(api, [capacity.SYSTEM_NAMESPACE])
        raise ControlPlaneError(f"{e}; pending: " + "; ".join(f"{p}: {why}" for p, why in pending.items())) from None
