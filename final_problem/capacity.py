"""Capacity fit: do the rendered workloads of a profile fit on its nodes?

The check reads the objects a profile renders (what ``kubectl apply`` would create), never
the settings alone:

- the requests of every long-running pod, as kube-scheduler counts them (:func:`pod_requests`:
  native sidecars added to the main containers, init containers' peak, pod overhead):
  StatefulSets and Deployments (``replicas`` pods) and DaemonSets (one pod per node). Jobs
  are left out: they run once at install (the secret generator) and finish before the
  platform is under load; so are CronJobs: Consul's snapshot pod (10m CPU and 32 MiB
  requested, one at a time) lives for a save and an upload each interval, inside the headroom;
- the cluster's own pods (:func:`system_objects`: the add-ons on EKS; what k3s runs, with
  ServiceLB's DaemonSet per LoadBalancer Service), which take requests and pod slots too;
- one-member-per-node rules: a StatefulSet or Deployment with *required* anti-affinity
  on ``kubernetes.io/hostname`` needs at least as many nodes as replicas;
- pods per node against the kubelet's ``maxPods``, and volumes per node against the EBS
  attachment limit (EKS; k3s local-path volumes are folders and have none).

A profile fits when every figure stays within :data:`MAX_SHARE` (80%) of allocatable:
the rest is headroom for a node drain (the PDBs move one member at a time), rolling
updates and what the figures leave out (the kernel's own memory, image pulls).

The nodes:

- ``eks``: ``node_desired`` nodes of ``node_instance_type``, spread over zones a/b/c.
  Allocatable CPU and memory follow the EKS AMI (AL2023, ``nodeadm``) formula on the memory
  the kubelet sees (less :data:`VM_MEMORY_OVERHEAD`), max pods its ENI table
  (:data:`INSTANCE_TYPES`).
- ``pi``: three Raspberry Pi 4 Model B 4 GB running Raspberry Pi OS Lite (arm64) and a
  k3s server each (:data:`PI4_4GB`).

These are the only node figures in the project: the local control plane's fake Nodes
(``final_problem.local.kube.node_shapes``) take theirs from :func:`node_shapes`, and
:meth:`Fit.fits_within` at 1.0 (all of allocatable) is the answer its scheduler must agree with.

Command line: ``python -m final_problem.capacity [-c key=value ...]`` prints the fit of
every profile in the settings.
"""

from __future__ import annotations

import difflib
import math
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Iterable, Literal, Mapping, Sequence

from final_problem.config import MAX_NODES_PER_NODEGROUP, NODE_TYPE_BY_SIZE, Settings
from final_problem.errors import ConfigError
from final_problem.profiles import PROFILES, SIZES
from final_problem.settings import how_to_set

#: Largest share of allocatable the platform may request (CPU, memory, pods, volumes).
MAX_SHARE = 0.80

# --- EKS nodes -------------------------------------------------------------------------
#
# Sources (amazon-eks-ami, commit 4d63a3bc of 2026-07-01, nodeadm/internal/kubelet/):
# - config.go, withDefaultReservedResources / getCPUMillicoresToReserve /
#   getMemoryMebibytesToReserve: kubeReserved CPU is 6% of the first core, 1% of the
#   second, 0.5% of cores 3-4 and 0.25% of every further core; kubeReserved memory is
#   11 MiB per pod slot + 255 MiB; no systemReserved; evictionHard memory.available 100Mi.
# - eni_max_pods.go, calculateStandardMaxPods: maxPods = ENIs * (IPv4 per ENI - 1) + 2,
#   from instance-info.jsonl (defaultMaxENIs, ipv4AddressesPerInterface), copied below.
# EBS attachments (aws-ebs-csi-driver, commit 429e202e of 2026-08-19):
# - pkg/cloud/limits/volume_limits_table.go: 32 dedicated attachments for the 7th/8th
#   generation types listed there; any other Nitro type shares 27 with its ENIs
#   (volume_limits.go, GetVolumeLimits);
# - pkg/driver/node.go, getVolumesLimit: the driver reserves the root volume + 1, and on a
#   shared limit every ENI after the first.
EVICTION_HARD_MEMORY_MIB = 100
# The kubelet's memory capacity is what the kernel reports (MemTotal), less than the type's
# nominal GiB: the hypervisor, firmware and kernel keep the rest. Karpenter predicts node
# capacity with VM_MEMORY_OVERHEAD_PERCENT, default 0.075 (karpenter.sh docs, "Settings").
VM_MEMORY_OVERHEAD = 0.075
KUBE_RESERVED_CPU_STEPS = ((1000, 600), (2000, 100), (4000, 50), (None, 25))  # (up to m, basis points)
SHARED_ATTACHMENTS = 27
DEDICATED_ATTACHMENTS = 32

Arch = Literal["arm64", "x86_64"]
#: vCPU and memory (GiB) of each size, by family class (EC2 instance type docs:
#: general purpose m 1:4, compute optimized c 1:2, memory optimized r 1:8, burstable t 1:4).
_SIZES: Mapping[str, Mapping[str, tuple[int, int]]] = {
    "m": {"large": (2, 8), "xlarge": (4, 16), "2xlarge": (8, 32), "4xlarge": (16, 64)},
    "c": {"large": (2, 4), "xlarge": (4, 8), "2xlarge": (8, 16), "4xlarge": (16, 32)},
    "r": {"large": (2, 16), "xlarge": (4, 32), "2xlarge": (8, 64), "4xlarge": (16, 128)},
    "t": {"large": (2, 8), "xlarge": (4, 16), "2xlarge": (8, 32)},
}
_STD = {"large": (3, 10), "xlarge": (4, 15), "2xlarge": (4, 15), "4xlarge": (8, 30)}
_GEN8_INTEL = {"large": (3, 20), "xlarge": (4, 30), "2xlarge": (4, 30), "4xlarge": (8, 50)}
_GEN8_AMD = {"large": (3, 20), "xlarge": (4, 20), "2xlarge": (4, 40), "4xlarge": (8, 40)}
_BURST = {"large": (3, 12), "xlarge": (4, 15), "2xlarge": (4, 15)}
#: (ENIs, IPv4 addresses per ENI) by size, per family: amazon-eks-ami instance-info.jsonl.
_ENIS: Mapping[str, Mapping[str, tuple[int, int]]] = {
    **{f: _STD for f in (
        "m5", "m5a", "m6i", "m6a", "m6g", "m7i", "m7a", "m7g", "m8g",
        "c5", "c5a", "c6i", "c6a", "c6g", "c7i", "c7a", "c7g", "c8g",
        "r5", "r5a", "r6i", "r6a", "r6g", "r7i", "r7a", "r7g", "r8g",
    )},
    **{f: _GEN8_INTEL for f in ("m8i", "c8i", "r8i")},
    **{f: _GEN8_AMD for f in ("m8a", "c8a", "r8a")},
    **{f: _BURST for f in ("t3", "t3a", "t4g")},
}
#: Families with dedicated EBS attachments (aws-ebs-csi-driver volume_limits_table.go).
_DEDICATED_EBS = frozenset({
    "m7i", "m7a", "m8g", "m8i", "m8a", "c7i", "c7a", "c8g", "c8i", "c8a", "r7i", "r7a", "r8g", "r8i", "r8a",
})


@dataclass(frozen=True, kw_only=True)
class InstanceType:
    """An EC2 instance type as an EKS node sees it."""

    name: str
    vcpu: int
    memory_gib: int
    arch: Arch
    enis: int
    ips_per_eni: int
    dedicated_ebs: bool

    @property
    def family(self) -> str:
        return self.name.split(".")[0]

    @property
    def max_pods(self) -> int:
        return self.enis * (self.ips_per_eni - 1) + 2

    @property
    def kube_reserved_cpu_m(self) -> int:
        total, reserved, start = self.vcpu * 1000, 0, 0
        for end, basis_points in KUBE_RESERVED_CPU_STEPS:
            top = total if end is None else min(total, end)
            if top > start:
                reserved += (top - start) * basis_points // 10000
            if end is None or total <= end:
                break
            start = end
        return reserved

    @property
    def kube_reserved_memory_mib(self) -> int:
        return 11 * self.max_pods + 255

    @property
    def allocatable_cpu_m(self) -> int:
        return self.vcpu * 1000 - self.kube_reserved_cpu_m

    @property
    def capacity_memory_mib(self) -> int:
        """Memory the kubelet reports: the nominal size less the VM overhead."""
        return int(self.memory_gib * 1024 * (1 - VM_MEMORY_OVERHEAD))

    @property
    def allocatable_memory_mib(self) -> int:
        return self.capacity_memory_mib - self.kube_reserved_memory_mib - EVICTION_HARD_MEMORY_MIB

    @property
    def max_volumes(self) -> int:
        """EBS volumes the CSI driver lets the scheduler place, with every ENI attached."""
        if self.dedicated_ebs:
            return DEDICATED_ATTACHMENTS - 2
        return SHARED_ATTACHMENTS - 2 - (self.enis - 1)


def _instance_types() -> dict[str, InstanceType]:
    table: dict[str, InstanceType] = {}
    for family, sizes in _ENIS.items():
        graviton = re.fullmatch(r"[a-z]+\d+g", family) is not None
        for size, (enis, ips) in sizes.items():
            vcpu, memory = _SIZES[family[0]][size]
            name = f"{family}.{size}"
            table[name] = InstanceType(
                name=name, vcpu=vcpu, memory_gib=memory, arch="arm64" if graviton else "x86_64",
                enis=enis, ips_per_eni=ips, dedicated_ebs=family in _DEDICATED_EBS,
            )
    return table


#: The node types the fit check knows: families m, c, r (generations 5-8, Graviton and
#: x86) and t3/t3a/t4g, sizes large to 4xlarge (t: to 2xlarge).
INSTANCE_TYPES: Mapping[str, InstanceType] = _instance_types()


def instance_type(name: str) -> InstanceType:
    """The table entry of ``name``; an unknown type fails with the closest known ones."""
    try:
        return INSTANCE_TYPES[name]
    except KeyError:
        first, *others = close_instance_types(name)
        raise ConfigError(
            "node_instance_type", name,
            "not in the capacity table (final_problem/capacity.py), so its allocatable CPU, memory and pods are unknown",
            f"{how_to_set('node_instance_type', first)} (or {', '.join(others)})",
        ) from None


def carries_the_defaults(t: InstanceType) -> bool:
    """Whether ``t`` has at least the allocatable CPU and memory of the default node type, on
    which every bundled component fits: a type suggested as a fix must carry them too."""
    default = INSTANCE_TYPES[NODE_TYPE_BY_SIZE[SIZES[0]]]
    return t.allocatable_cpu_m >= default.allocatable_cpu_m and t.allocatable_memory_mib >= default.allocatable_memory_mib


def close_instance_types(name: str, n: int = 3, candidates: Iterable[str] | None = None) -> list[str]:
    """The ``n`` types closest to ``name`` among those of the capacity table that carry the
    default platform (:func:`carries_the_defaults`; or among ``candidates``): the same size
    first, then by spelling."""
    size = name.partition(".")[2]

    def score(candidate: str) -> tuple[bool, float, str]:
        return (candidate.split(".")[1] != size, -difflib.SequenceMatcher(None, candidate, name).ratio(), candidate)

    if candidates is None:
        candidates = [t for t, info in INSTANCE_TYPES.items() if carries_the_defaults(info)]
    return sorted(candidates, key=score)[:n]


# --- Nodes of a profile ------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class NodeShape:
    """What one node offers the platform's pods."""

    #: e.g. ``m7g.large`` or ``Raspberry Pi 4 Model B 4 GB``.
    kind: str
    zone: str
    cpu_m: int
    memory_mib: int
    max_pods: int
    #: Volumes the scheduler may attach; None when the storage has no attach limit.
    max_volumes: int | None


#: A Raspberry Pi 4 Model B with 4 GB (4 Cortex-A72 cores) running Raspberry Pi OS Lite
#: (arm64) and a k3s server (HA control plane, embedded etcd). Reserved for the host:
#: - k3s with embedded etcd: 30% of a core and 1613 MB (1539 MiB), "K3s server with a
#:   workload" on a Pi4B (k3s docs, "Resource Profiling", measured with K3s v1.26.5);
#: - Raspberry Pi OS Lite: 256 MiB and 100m, an estimate: the firmware keeps 76 MiB for
#:   the GPU by default on a Pi 4 (Raspberry Pi docs, config.txt "gpu_mem"), and the
#:   kernel, systemd, journald, sshd and cloud-init's leftovers take about as much again;
#: - the kubelet's default eviction threshold memory.available<100Mi (k3s sets none
#:   of its own, so kube-reserved and system-reserved are 0 and this is the only cut).
#: k3s keeps the kubelet's default of 110 pods per node; local-path volumes are folders.
def pi_shape(memory_gib: int) -> NodeShape:
    """A Raspberry Pi k3s server with ``memory_gib`` GB (``pi_memory_gib``). The host's share
    is the same on every board: k3s's figure was measured on a Pi 4 (a Pi 5 has the same 4
    cores, faster), and the OS's does not grow with the memory."""
    return NodeShape(
        kind="Raspberry Pi 4 Model B 4 GB" if memory_gib == 4 else f"Raspberry Pi {memory_gib} GB",
        zone="home",
        cpu_m=4000 - 300 - 100,
        memory_mib=memory_gib * 1024 - 1539 - 256 - 100,
        max_pods=110,
        max_volumes=None,
    )


PI4_4GB = pi_shape(4)
PI_NODES = 3
EKS_ZONES = ("a", "b", "c")
PROFILE_NAMES = tuple(PROFILES)


def eks_shapes(type_name: str, count: int) -> list[NodeShape]:
    t = instance_type(type_name)
    return [
        NodeShape(
            kind=t.name, zone=EKS_ZONES[i % len(EKS_ZONES)], cpu_m=t.allocatable_cpu_m,
            memory_mib=t.allocatable_memory_mib, max_pods=t.max_pods, max_volumes=t.max_volumes,
        )
        for i in range(count)
    ]


def node_shapes(settings: Settings, profile_name: str) -> list[NodeShape]:
    """The nodes a profile runs on: EKS from the node group settings, Pi a fixed shape."""
    try:
        return profile_nodes(profile_name, instance_type=settings.node_instance_type, count=settings.node_desired,
                             pi_memory_gib=settings.pi_memory_gib)
    except ConfigError as e:
        origin = settings.origins.get(e.setting)
        if origin:
            e.add_origin(origin)
        raise


def profile_nodes(profile_name: str, *, instance_type: str, count: int, pi_memory_gib: int = 4) -> list[NodeShape]:
    """The nodes of a profile, given the EKS node group's type and desired size and the Pi
    boards' memory."""
    if profile_name == "eks":
        return eks_shapes(instance_type, count)
    if profile_name == "pi":
        return [pi_shape(pi_memory_gib)] * PI_NODES
    raise ConfigError("profiles", profile_name, "no node shape for this profile", "use 'eks' or 'pi'")


# --- What the platform asks for ------------------------------------------------------------

_CPU = re.compile(r"^(\d+(?:\.\d+)?)(m?)$")
_MEMORY_UNITS = {
    "": 1 / 2**20, "k": 1e3 / 2**20, "M": 1e6 / 2**20, "G": 1e9 / 2**20, "T": 1e12 / 2**20,
    "Ki": 1 / 1024, "Mi": 1, "Gi": 1024, "Ti": 1024**2,
}
_MEMORY = re.compile(r"^(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|k|M|G|T|)$")


def cpu_m(value: Any) -> int:
    """A Kubernetes CPU quantity (``250m``, ``1``, ``0.5``) in millicores."""
    match = _CPU.match(str(value))
    if not match:
        raise ValueError(f"not a CPU quantity: {value!r}")
    number = float(match.group(1))
    return math.ceil(number if match.group(2) else number * 1000)


def memory_mib(value: Any) -> int:
    """A Kubernetes memory quantity (``512Mi``, ``2Gi``, ``1G``) in MiB, rounded up."""
    match = _MEMORY.match(str(value))
    if not match:
        raise ValueError(f"not a memory quantity: {value!r}")
    return math.ceil(float(match.group(1)) * _MEMORY_UNITS[match.group(2)])


@dataclass(frozen=True, kw_only=True)
class Workload:
    """Pods of one controller, with the requests of one pod."""

    component: str
    name: str  # kind/namespace/name
    pods: int  # per cluster; DaemonSets: per node (see per_node)
    cpu_m: int
    memory_mib: int
    volumes: int = 0
    per_node: bool = False
    one_per_node: bool = False
    #: Pods a rolling update starts above ``pods`` (a Deployment's maxSurge, as a count).
    surge: int = 0

    def count(self, nodes: int) -> int:
        return nodes if self.per_node else self.pods


# --- What the cluster itself runs ----------------------------------------------------------
#
# The pods each target runs besides the platform, as the manifests that create them: the
# capacity check counts their requests with the same arithmetic as the platform's, and the
# local control plane (final_problem.local.kube) applies the same objects, so its scheduler
# places them too. Requests per container, each from the manifest that deploys it:
#
# EKS (bootstrap add-ons vpc-cni, kube-proxy and coredns, and the add-ons the cluster stack
# installs, final_problem/stacks/cluster.py):
# - aws-node (amazon-vpc-cni-k8s config/master/aws-k8s-cni.yaml): containers aws-node and
#   aws-eks-nodeagent request cpu 25m each, init container aws-vpc-cni-init 25m; no memory;
# - kube-proxy (EKS kube-proxy add-on DaemonSet, as in Kubernetes' cluster/addons): cpu 100m;
# - coredns (EKS CoreDNS add-on): 2 replicas, cpu 100m, memory 70Mi;
# - aws-ebs-csi-driver (chart values.yaml, 2.64.0): every container requests 10m / 40Mi;
#   the controller runs 2 replicas of 6 containers (ebs-plugin, csi-provisioner,
#   csi-attacher, csi-snapshotter, csi-resizer, liveness-probe), the node DaemonSet 3
#   (ebs-plugin, node-driver-registrar, liveness-probe);
# - eks-pod-identity-agent (its add-on chart's values.yaml: resources {}): no requests.
# k3s, configured by pi/inventory.py with Traefik disabled (pi/README.md, "What k3s runs"):
# - coredns (k3s manifests/coredns.yaml): 1 replica, cpu 100m, memory 70Mi;
# - metrics-server (k3s manifests/metrics-server/metrics-server-deployment.yaml): 1 replica,
#   cpu 100m, memory 70Mi;
# - local-path-provisioner (k3s manifests/local-storage.yaml): 1 replica, no requests;
# - ServiceLB (k3s pkg/cloudprovider/servicelb.go, newDaemonSet): per LoadBalancer Service
#   a DaemonSet svclb-<service>-<uid> in kube-system, one klipper-lb container per port,
#   named lb-<protocol>-<port>, holding that port as a host port, without requests.

#: The scheduler's two built-in classes, as the add-ons' manifests name them.
_NODE_CRITICAL, _CLUSTER_CRITICAL = "system-node-critical", "system-cluster-critical"
#: KWOK runs no container: the image only names the stand-in (Kubernetes 1.36's pause,
#: kubeadm's constants PauseVersion 3.10).
SYSTEM_IMAGE = "registry.k8s.io/pause:3.10"
SYSTEM_NAMESPACE = "kube-system"


def _container(name: str, cpu: str | None = None, memory: str | None = None,
               host_ports: Sequence[tuple[int, str]] = ()) -> dict[str, Any]:
    requests = {k: v for k, v in (("cpu", cpu), ("memory", memory)) if v}
    container: dict[str, Any] = {"name": name, "image": SYSTEM_IMAGE}
    if requests:
        container["resources"] = {"requests": requests}
    if host_ports:
        container["ports"] = [{"containerPort": port, "hostPort": port, "protocol": protocol}
                              for port, protocol in host_ports]
    return container


def _system(kind: str, name: str, containers: list[dict[str, Any]], *, priority: str, replicas: int = 1,
            init_containers: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    labels = {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "cluster-add-ons"}
    pod: dict[str, Any] = {"priorityClassName": priority, "containers": containers,
                           "tolerations": [{"key": "CriticalAddonsOnly", "operator": "Exists"}]}
    if init_containers:
        pod["initContainers"] = list(init_containers)
    spec: dict[str, Any] = {"selector": {"matchLabels": labels},
                            "template": {"metadata": {"labels": labels}, "spec": pod}}
    if kind == "Deployment":
        spec["replicas"] = replicas
    return {"apiVersion": "apps/v1", "kind": kind,
            "metadata": {"name": name, "namespace": SYSTEM_NAMESPACE, "labels": labels}, "spec": spec}


def load_balancer_services(objects: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [o for o in objects if o.get("kind") == "Service" and (o.get("spec") or {}).get("type") == "LoadBalancer"]


def system_objects(profile: str, platform_objects: Iterable[Mapping[str, Any]] = ()) -> list[dict[str, Any]]:
    """The Deployments and DaemonSets the target runs in kube-system for ``profile``, given
    the platform's objects (k3s's ServiceLB adds a DaemonSet per LoadBalancer Service)."""
    if profile == "eks":
        ebs = lambda name: _container(name, "10m", "40Mi")  # noqa: E731
        return [
            _system("DaemonSet", "aws-node", [_container("aws-node", "25m"), _container("aws-eks-nodeagent", "25m")],
                    init_containers=[_container("aws-vpc-cni-init", "25m")], priority=_NODE_CRITICAL),
            _system("DaemonSet", "kube-proxy", [_container("kube-proxy", "100m")], priority=_NODE_CRITICAL),
            _system("DaemonSet", "eks-pod-identity-agent", [_container("eks-pod-identity-agent")],
                    priority=_NODE_CRITICAL),
            _system("DaemonSet", "ebs-csi-node",
                    [ebs(n) for n in ("ebs-plugin", "node-driver-registrar", "liveness-probe")], priority=_NODE_CRITICAL),
            _system("Deployment", "coredns", [_container("coredns", "100m", "70Mi")], replicas=2,
                    priority=_CLUSTER_CRITICAL),
            _system("Deployment", "ebs-csi-controller",
                    [ebs(n) for n in ("ebs-plugin", "csi-provisioner", "csi-attacher", "csi-snapshotter", "csi-resizer",
                                      "liveness-probe")], replicas=2, priority=_CLUSTER_CRITICAL),
        ]
    if profile == "pi":
        found = [
            _system("Deployment", "coredns", [_container("coredns", "100m", "70Mi")], priority=_CLUSTER_CRITICAL),
            _system("Deployment", "metrics-server", [_container("metrics-server", "100m", "70Mi")],
                    priority=_NODE_CRITICAL),
            _system("Deployment", "local-path-provisioner", [_container("local-path-provisioner")],
                    priority=_NODE_CRITICAL),
        ]
        for service in load_balancer_services(platform_objects):
            ports = [(int(p["port"]), p.get("protocol", "TCP")) for p in service["spec"].get("ports", [])]
            found.append(_system(
                "DaemonSet", f"svclb-{service['metadata']['name']}",
                [_container(f"lb-{protocol.lower()}-{port}", host_ports=[(port, protocol)]) for port, protocol in ports],
                priority=_NODE_CRITICAL))
        return found
    return []


def system_workloads(profile: str, objects_by_component: Mapping[str, Iterable[Mapping[str, Any]]]) -> list[Workload]:
    """:func:`system_objects` of ``profile`` as workloads of the component ``system``."""
    platform = [o for objects in objects_by_component.values() for o in objects]
    return workloads({"system": system_objects(profile, platform)})


LONG_RUNNING = ("StatefulSet", "Deployment", "DaemonSet")


def _memory_bytes(value: Any) -> float:
    match = _MEMORY.match(str(value))
    if not match:
        raise ValueError(f"not a memory quantity: {value!r}")
    return float(match.group(1)) * _MEMORY_UNITS[match.group(2)] * 2**20


def pod_requests(pod_spec: Mapping[str, Any]) -> tuple[int, int]:
    """(CPU millicores, memory MiB) a pod takes from its node, as kube-scheduler counts it.

    kube-scheduler's NodeResourcesFit takes ``PodRequests`` of
    k8s.io/component-helpers/resource/helpers.go (Kubernetes 1.36; Kubernetes docs,
    "Sidecar Containers", "Resource sharing within containers"):

    - native sidecars (init containers with ``restartPolicy: Always``) run beside the main
      containers, so they are added to the sum of the main containers;
    - each regular init container runs alone with the sidecars started before it, so it
      needs its own requests plus theirs;
    - the pod needs the larger of the two, then its ``spec.overhead`` (RuntimeClass) on top.
    """

    def requests(container: Mapping[str, Any]) -> tuple[int, float]:
        req = (container.get("resources") or {}).get("requests") or {}
        return (cpu_m(req["cpu"]) if "cpu" in req else 0, _memory_bytes(req["memory"]) if "memory" in req else 0.0)

    main = [requests(c) for c in pod_spec.get("containers") or []]
    cpu, memory = sum(c for c, _ in main), sum(m for _, m in main)
    sidecar_cpu, sidecar_memory = 0, 0.0
    init_cpu, init_memory = 0, 0.0
    for container in pod_spec.get("initContainers") or []:
        c, m = requests(container)
        if container.get("restartPolicy") == "Always":
            sidecar_cpu, sidecar_memory = sidecar_cpu + c, sidecar_memory + m
            cpu, memory = cpu + c, memory + m
            # While it starts, the sidecars before it and itself run.
            c, m = sidecar_cpu, sidecar_memory
        else:
            c, m = c + sidecar_cpu, m + sidecar_memory
        init_cpu, init_memory = max(init_cpu, c), max(init_memory, m)
    cpu, memory = max(cpu, init_cpu), max(memory, init_memory)
    overhead = pod_spec.get("overhead") or {}
    if "cpu" in overhead:
        cpu += cpu_m(overhead["cpu"])
    if "memory" in overhead:
        memory += _memory_bytes(overhead["memory"])
    return cpu, math.ceil(memory / 2**20 - 1e-9)


def scaled(value: int | str | None, replicas: int, *, round_up: bool, default: str) -> int:
    """An int-or-percent of a rolling update against ``replicas`` (maxSurge rounds up,
    maxUnavailable down; default 25% each: Kubernetes docs, "Deployments")."""
    value = default if value is None else value
    if isinstance(value, int):
        return value
    share = replicas * int(value.rstrip("%")) / 100
    return math.ceil(share) if round_up else math.floor(share)


def surge_and_unavailable(deployment: dict[str, Any]) -> tuple[int, int]:
    """``(maxSurge, maxUnavailable)`` of a rendered Deployment, as pod counts."""
    replicas = deployment["spec"].get("replicas", 1)
    rolling = deployment["spec"].get("strategy", {}).get("rollingUpdate", {})
    surge = scaled(rolling.get("maxSurge"), replicas, round_up=True, default="25%")
    unavailable = scaled(rolling.get("maxUnavailable"), replicas, round_up=False, default="25%")
    if surge == 0 and unavailable == 0:
        unavailable = 1  # the API server refuses both at 0; never reached with rendered objects
    return surge, unavailable


def _one_per_node(pod_spec: Mapping[str, Any]) -> bool:
    terms = (((pod_spec.get("affinity") or {}).get("podAntiAffinity") or {})
             .get("requiredDuringSchedulingIgnoredDuringExecution") or [])
    return any(term.get("topologyKey") == "kubernetes.io/hostname" for term in terms)


def workloads(objects_by_component: Mapping[str, Iterable[Mapping[str, Any]]]) -> list[Workload]:
    """Long-running workloads in rendered objects (Jobs and bare Pods left out)."""
    found: list[Workload] = []
    for component, objects in objects_by_component.items():
        for obj in objects:
            kind = obj.get("kind")
            if kind not in LONG_RUNNING:
                continue
            spec = obj.get("spec", {})
            pod_spec = spec.get("template", {}).get("spec", {})
            cpu, memory = pod_requests(pod_spec)
            meta = obj.get("metadata", {})
            found.append(Workload(
                component=component,
                name=f"{kind}/{meta.get('namespace', 'default')}/{meta.get('name')}",
                pods=1 if kind == "DaemonSet" else int(spec.get("replicas", 1)),
                cpu_m=cpu, memory_mib=memory,
                volumes=len(spec.get("volumeClaimTemplates", [])),
                per_node=kind == "DaemonSet",
                one_per_node=_one_per_node(pod_spec),
                surge=surge_and_unavailable(obj)[0] if kind == "Deployment" else 0,
            ))
    return found


# --- The fit -----------------------------------------------------------------------------

Resource = Literal["cpu", "memory", "pods", "volumes"]
_UNITS = {"cpu": "m CPU", "memory": " MiB memory", "pods": " pods", "volumes": " volumes"}


@dataclass(frozen=True, kw_only=True)
class Usage:
    resource: Resource
    requested: int
    allocatable: int
    #: The platform's biggest consumers with their amounts, largest first.
    top: tuple[tuple[Workload, int], ...] = ()

    @property
    def share(self) -> float:
        return self.requested / self.allocatable if self.allocatable else 0.0

    @property
    def fits(self) -> bool:
        return self.fits_within(MAX_SHARE)

    def fits_within(self, share: float) -> bool:
        """Whether the requests stay within ``share`` of allocatable (1.0: all of it)."""
        return self.requested <= share * self.allocatable

    def describe(self) -> str:
        return f"{self.requested:,}{_UNITS[self.resource]} of {self.allocatable:,} ({self.share:.0%})"

    def biggest(self) -> str:
        return ", ".join(f"{w.name} {amount:,}" for w, amount in self.top)


@dataclass(frozen=True, kw_only=True)
class Fit:
    """Requests of a profile against its nodes, cluster-wide."""

    profile: str
    nodes: tuple[NodeShape, ...]
    workloads: tuple[Workload, ...]
    usage: tuple[Usage, ...]
    #: Workloads with one pod per node and more replicas than nodes.
    unplaceable: tuple[Workload, ...] = field(default=())
    #: Deployments with one pod per node whose rolling update would start a surge pod no
    #: node may take: the rollout would wait for it forever.
    stalled_rollouts: tuple[Workload, ...] = field(default=())
    #: The cluster's own workloads counted with them.
    system: tuple[Workload, ...] = field(default=())

    @property
    def fits(self) -> bool:
        return self.fits_within(MAX_SHARE)

    def fits_within(self, share: float) -> bool:
        """The raw answer at ``share`` of allocatable: ``fits_within(1.0)`` is whether the
        scheduler can place every pod at all (cluster-wide sums; :attr:`fits` keeps headroom)."""
        return not self.unplaceable and not self.stalled_rollouts and all(u.fits_within(share) for u in self.usage)

    def by_resource(self, resource: Resource) -> Usage:
        return next(u for u in self.usage if u.resource == resource)

    def summary(self) -> str:
        node = self.nodes[0]
        shares = ", ".join(f"{u.resource} {u.share:.0%}" for u in self.usage)
        verdict = "fits" if self.fits else "DOES NOT FIT"
        return f"{self.profile}: {len(self.nodes)} x {node.kind}: {shares} of allocatable ({verdict}; limit {MAX_SHARE:.0%})"


def fit(profile: str, nodes: Sequence[NodeShape], platform: Sequence[Workload], *, system_pods: bool = True,
        system: Sequence[Workload] | None = None) -> Fit:
    """The profile's demand (platform + the cluster's own pods, unless ``system_pods`` is
    False) against ``nodes``. ``system``: the cluster's workloads (:func:`system_workloads`);
    default: those of ``profile`` with no LoadBalancer Service."""
    count = len(nodes)
    if system is None:
        system = system_workloads(profile, {}) if system_pods else ()
    elif not system_pods:
        system = ()
    every = list(platform) + list(system)

    def usage(resource: Resource, per_pod: Any, capacity: int) -> Usage:
        amounts = [(w, w.count(count) * per_pod(w)) for w in every]
        top = sorted(((w, a) for w, a in amounts if a and w.component != "system"), key=lambda item: -item[1])
        return Usage(resource=resource, requested=sum(a for _, a in amounts), allocatable=capacity, top=tuple(top[:3]))

    found = [
        usage("cpu", lambda w: w.cpu_m, sum(n.cpu_m for n in nodes)),
        usage("memory", lambda w: w.memory_mib, sum(n.memory_mib for n in nodes)),
        usage("pods", lambda w: 1, sum(n.max_pods for n in nodes)),
    ]
    if all(n.max_volumes is not None for n in nodes):
        found.append(usage("volumes", lambda w: w.volumes, sum(n.max_volumes or 0 for n in nodes)))
    unplaceable = tuple(w for w in platform if w.one_per_node and w.pods > count)
    stalled = tuple(w for w in platform if w.one_per_node and w.pods <= count < w.pods + w.surge)
    return Fit(profile=profile, nodes=tuple(nodes), workloads=tuple(platform), usage=tuple(found),
               unplaceable=unplaceable, stalled_rollouts=stalled, system=tuple(system))


def fit_of(settings: Settings, profile: str, objects_by_component: Mapping[str, Iterable[Mapping[str, Any]]]) -> Fit:
    return fit(profile, node_shapes(settings, profile), workloads(objects_by_component),
               system=system_workloads(profile, objects_by_component))


def check(settings: Settings, profile: str, objects_by_component: Mapping[str, Iterable[Mapping[str, Any]]]) -> Fit:
    """The fit of ``profile``; raise one ConfigError line when it does not fit."""
    result = fit_of(settings, profile, objects_by_component)
    raise_unless_fits(result, settings)
    return result


def raise_unless_fits(result: Fit, settings: Settings) -> None:
    """One ConfigError line naming the profile, what overflows, the biggest consumers and
    fixes that are themselves valid settings."""
    node = result.nodes[0]
    eks = result.profile == "eks"
    if result.unplaceable:
        w = max(result.unplaceable, key=lambda x: x.pods)
        problem = (f"{w.name} places one pod per node (required hostname anti-affinity) "
                   f"and has {w.pods} replicas on {len(result.nodes)} nodes")
        if eks:
            fix = f"{_node_count_fix(result, settings, w.pods)}, or lower the replicas of {w.component}"
            raise _error(settings, result, "node_desired", settings.node_desired, problem, fix)
        fix = f"lower the replicas of {w.component} to {len(result.nodes)}, or {_without(settings, result.profile)}"
        raise _error(settings, result, "profiles", ",".join(settings.profiles), problem, fix)
    if result.stalled_rollouts:
        w = result.stalled_rollouts[0]
        problem = (f"a rolling update of {w.name} starts {w.surge} pod(s) above its {w.pods} replicas before "
                   f"stopping one, with one pod per node (required hostname anti-affinity) on "
                   f"{len(result.nodes)} nodes: the new pod is never scheduled and the rollout stalls")
        if eks:
            raise _error(settings, result, "node_desired", settings.node_desired, problem,
                         f"{_node_count_fix(result, settings, w.pods + w.surge)}, or lower the replicas of {w.component}")
        raise _error(settings, result, "profiles", ",".join(settings.profiles), problem,
                     f"lower the replicas of {w.component} to {len(result.nodes) - w.surge}, or {_without(settings, result.profile)}")
    over = [u for u in result.usage if not u.fits]
    if not over:
        return
    worst = max(over, key=lambda u: u.share)
    problem = (f"the platform requests {worst.describe()} allocatable on {len(result.nodes)} x {node.kind}, "
               f"over the {MAX_SHARE:.0%} limit (biggest: {worst.biggest()})")
    if eks:
        raise _error(settings, result, "node_instance_type", node.kind, problem, _fix(result, settings, worst))
    raise _error(settings, result, "profiles", ",".join(settings.profiles), problem, _fix(result, settings, worst))


def _error(settings: Settings, result: Fit, setting: str, value: Any, problem: str, fix: str) -> ConfigError:
    error = ConfigError(setting, value, problem, fix).for_profile(result.profile)
    origin = settings.origins.get(setting)
    return error.add_origin(origin) if origin else error


def _without(settings: Settings, profile: str) -> str:
    rest = [p for p in settings.profiles if p != profile] or [p for p in PROFILE_NAMES if p != profile]
    return how_to_set("profiles", ",".join(rest))


def _smaller(worst: Usage) -> str:
    """Which setting of the biggest consumer to lower, when its component declares one."""
    if not worst.top:
        return "disable a component"
    component = worst.top[0][0].component
    from final_problem import components

    cls = components.COMPONENTS.get(component)
    names = [i.name for i in cls.settings_class.infos()] if cls is not None and cls.settings_class else []
    wanted = {"memory": "memory_mib", "cpu": "cpu", "pods": "replicas", "volumes": "replicas"}[worst.resource]
    matches = [n for n in names if n == wanted or n.startswith(wanted)]
    if matches:
        return f"lower {component}.{matches[0]}, or disable a component"
    return f"lower the {worst.resource} requests of {component}, or disable a component"


def _fix(result: Fit, settings: Settings, worst: Usage) -> str:
    smaller = _smaller(worst)
    if result.profile == "pi":
        bigger = next((gib for gib in (8, 16) if gib > settings.pi_memory_gib and worst.resource == "memory"
                       and fit(result.profile, [pi_shape(gib)] * len(result.nodes), result.workloads,
                               system=result.system).fits), None)
        if bigger:
            smaller = f"{smaller}, or on {bigger} GB boards {how_to_set('pi_memory_gib', bigger)}"
    if result.profile != "eks":
        return f"{smaller}, or {_without(settings, result.profile)}"
    options = []
    bigger = _bigger_type(result)
    if bigger:
        options.append(how_to_set("node_instance_type", bigger))
    more = _nodes_needed(result)
    if more:
        options.append(_node_count_fix(result, settings, more))
    return "; or ".join(options + [smaller])


def _node_count_fix(result: Fit, settings: Settings, at_least: int) -> str:
    nodes = max(at_least, _nodes_needed(result) or at_least)
    fix = how_to_set("node_desired", nodes)
    return fix + (f" and {how_to_set('node_max', nodes)}" if nodes > settings.node_max else "")


def _refit(result: Fit, type_name: str, count: int) -> Fit:
    return fit(result.profile, eks_shapes(type_name, count), result.workloads, system=result.system)


def _bigger_type(result: Fit) -> str | None:
    """The cheapest-looking type of the same architecture that fits: same family first."""
    current = INSTANCE_TYPES.get(result.nodes[0].kind)
    if current is None:
        return None
    candidates = sorted(
        (t for t in INSTANCE_TYPES.values() if t.arch == current.arch and not t.family.startswith("t")),
        key=lambda t: (t.family != current.family, t.vcpu, t.memory_gib, t.name),
    )
    for t in candidates:
        if (t.vcpu, t.memory_gib) > (current.vcpu, current.memory_gib) or t.family != current.family:
            if _refit(result, t.name, len(result.nodes)).fits:
                return t.name
    return None


def _nodes_needed(result: Fit) -> int | None:
    """The fewest nodes of the current type that fit (up to the node group quota)."""
    for count in range(len(result.nodes), MAX_NODES_PER_NODEGROUP + 1):
        if _refit(result, result.nodes[0].kind, count).fits:
            return count
    return None


def describe(result: Fit) -> list[str]:
    """Lines for the synth report: the summary, then each resource."""
    lines = [result.summary()]
    for u in result.usage:
        lines.append(f"    {u.resource:<8} {u.describe():<36} {u.biggest()}")
    return lines


def main(argv: list[str] | None = None) -> int:
    from final_problem import manifests

    args = manifests.settings_parser("python -m final_problem.capacity", __doc__.split("\n")[0]).parse_args(argv)

    def show() -> None:
        settings = manifests.settings_from(args.context, args.overrides)
        for profile, objects in manifests.profile_objects(settings):
            print("\n".join(describe(fit_of(settings, profile, objects))))

    return manifests.one_line_errors(show)


if __name__ == "__main__":
    sys.exit(main())
