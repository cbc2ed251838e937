"""The service mesh, wired at synthesis: what a pod needs to join it, in the manifests.

consul-k8s injects sidecars with a mutating webhook at run time; here every sidecar,
registration, upstream and intention is in the YAML, reviewable in snapshots and in
``cdk diff``, the same on EKS and k3s. :class:`MeshWorkload` adds to one workload:

- a ServiceAccount named after the service: the Kubernetes auth method maps it to the
  Consul service identity of that name (Consul binding rule ``${serviceaccount.name}``);
- two native sidecars (init containers with ``restartPolicy: Always``, so Jobs in the
  mesh still finish, and the sidecars start before and stop after the application):
  ``mesh-register`` (:mod:`final_problem.clients.mesh_register`: CA, login, catalog
  registration with the explicit upstreams, health, deregistration on exit) and
  ``consul-dataplane`` (Envoy, configured over xDS by the servers, logging in through the
  auth method with the pod's token). No client agents: dataplanes talk gRPC to the
  servers directly, so there is no gossip key on workloads and nothing to run per node
  (Consul docs, "Consul dataplane");
- upstreams on 127.0.0.1 ports (explicit, no transparent proxy: no iptables, so no
  NET_ADMIN, no root init container and no CNI plugin, and the pod stays "restricted");
- a NetworkPolicy: the sidecar's public port from other mesh pods, egress to the Consul
  servers, the API server and the upstreams' sidecars.

Intentions (who may call whom) are declared in :data:`INTENTIONS`; the Consul chart's ACL
Job applies them. With ACLs in default-deny, a call no intention allows is refused by the
destination's sidecar.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from final_problem.objects import ApiObject, Group, JsonPatch, ObjectChart

from final_problem import versions
from final_problem.clients import mesh_register
from final_problem.constructs.namespace import ports
from final_problem.constructs.secret_generator import SA_DIR
from final_problem.constructs.security import Sizing, container_context, raw_resources
from final_problem.errors import ConfigError
from final_problem.imports import int_or_string, k8s, quantity
from final_problem.profiles import Profile
from final_problem.renderers.consul import (
    AUTH_METHOD,
    MESH_NODE,
    SIDECAR_ADMIN_PORT,
    SIDECAR_METRICS_PORT,
    SIDECAR_PUBLIC_PORT,
    SIDECAR_READY_PORT,
    Intention,
    MeshService,
    Upstream,
    registration,
    server_name,
    sidecar_registration,
)

#: Label of every pod in the mesh (NetworkPolicies select sidecar peers with it).
MESH_LABEL = {"final-problem.io/mesh": "true"}
CONSUL_NAMESPACE = "consul"
CONSUL_SERVICE = "consul-server"
CONSUL_HTTPS_PORT = 8501
CONSUL_GRPC_PORT = 8502
MESH_DIR = "/consul-mesh"
REGISTER_SCRIPT = Path(mesh_register.__file__)
#: uid of consul-dataplane's image (its Dockerfile: USER 100).
DATAPLANE_UID = 100
#: The python image's "nobody" runs the registration sidecar.
REGISTER_UID = 65534
API_PORTS = (443, 6443)
#: Seconds after its last registration round the mesh-register sidecar counts as hung:
#: twice the longest healthy gap (a 30 s refresh and two calls with 15 s timeouts,
#: final_problem.clients.mesh_register).
REGISTER_STALE_S = 2 * (30 + 2 * 15)

#: Mesh services of the platform's components, by component.
SERVICES: dict[str, MeshService] = {
    "redis": MeshService(name="redis", port=6379, protocol="tcp"),
    "demo": MeshService(name="demo", port=8080, protocol="http",
                        upstreams=(Upstream(service="redis", local_port=16379),)),
}
#: Who may call whom. Everything else is denied (ACL default policy deny).
INTENTIONS: tuple[Intention, ...] = (Intention(source="demo", destination="redis"),)


def services_of(enabled: tuple[str, ...]) -> list[MeshService]:
    """The mesh services of the enabled components (the mesh needs ``consul``)."""
    if "consul" not in enabled:
        return []
    return [s for component, s in SERVICES.items() if component in enabled]


def intentions_of(services: list[MeshService]) -> list[Intention]:
    names = {s.name for s in services}
    return [i for i in INTENTIONS if i.source in names and i.destination in names]


@dataclass(frozen=True, kw_only=True)
class SidecarSizing:
    register: Sizing
    dataplane: Sizing

    @classmethod
    def for_profile(cls, profile: Profile) -> "SidecarSizing":
        if profile.small:
            return cls(register=Sizing(cpu_request_m=10, cpu_limit_m=100, memory_request_mib=24, memory_limit_mib=48),
                       dataplane=Sizing(cpu_request_m=50, cpu_limit_m=500, memory_request_mib=64, memory_limit_mib=96))
        return cls(register=Sizing(cpu_request_m=10, cpu_limit_m=100, memory_request_mib=32, memory_limit_mib=64),
                   dataplane=Sizing(cpu_request_m=100, cpu_limit_m=1000, memory_request_mib=128, memory_limit_mib=192))


class MeshWorkload(Group):
    """What one workload needs in the mesh; the chart puts :attr:`init_containers`,
    :attr:`volumes` and :attr:`pod_labels` into its pod template, names
    :attr:`service_account` in it, then calls :meth:`apply` on the workload object."""

    def __init__(
        self,
        scope: ObjectChart | Group,
        id: str,
        *,
        service: MeshService,
        namespace: str,
        profile: Profile,
        enabled: tuple[str, ...],
    ) -> None:
        super().__init__(scope, id)
        if "consul" not in enabled:
            raise ConfigError(
                "components", ",".join(enabled), f"'{service.name}' joins the service mesh, which needs 'consul'",
                "add 'consul' to components",
            )
        known = {s.name for s in services_of(enabled)}
        for u in service.upstreams:
            if u.service not in known:
                raise ConfigError(
                    f"mesh.{service.name}.upstreams", u.service, "names a service that is not in the mesh",
                    f"enable the component that provides '{u.service}', or remove the upstream",
                )
        self.service = service
        self.namespace = namespace
        sizing = SidecarSizing.for_profile(profile)
        self.pod_labels = dict(MESH_LABEL)
        self.service_account = k8s.KubeServiceAccount(
            self, "ServiceAccount",
            metadata=k8s.ObjectMeta(name=service.name, namespace=namespace,
                                    labels={"app.kubernetes.io/component": "mesh"}),
            automount_service_account_token=False,
        )
        address = f"https://{CONSUL_SERVICE}.{CONSUL_NAMESPACE}.svc:{CONSUL_HTTPS_PORT}"
        spec = {
            "address": address,
            "consul_namespace": CONSUL_NAMESPACE,
            "auth_method": AUTH_METHOD,
            "node": MESH_NODE,
            "registration": registration(service, pod_name="POD_NAME", pod_ip="", namespace=namespace),
            "sidecar_registration": sidecar_registration(service, pod_name="POD_NAME", pod_ip="", namespace=namespace),
        }
        self.config_map = k8s.KubeConfigMap(
            self, "Script",
            metadata=k8s.ObjectMeta(name=f"{service.name}-mesh", namespace=namespace,
                                    labels={"app.kubernetes.io/component": "mesh"}),
            data={"mesh_register.py": REGISTER_SCRIPT.read_text()},
        )
        field = lambda path: k8s.EnvVarSource(field_ref=k8s.ObjectFieldSelector(field_path=path))  # noqa: E731
        pod_env = [
            k8s.EnvVar(name="POD_NAME", value_from=field("metadata.name")),
            k8s.EnvVar(name="POD_IP", value_from=field("status.podIP")),
            k8s.EnvVar(name="POD_NAMESPACE", value_from=field("metadata.namespace")),
        ]
        mesh_mount = k8s.VolumeMount(name="consul-mesh", mount_path=MESH_DIR)
        token_mount = k8s.VolumeMount(name="mesh-token", mount_path=SA_DIR, read_only=True)
        register = k8s.Container(
            name="mesh-register",
            image=versions.PYTHON_IMAGE,
            image_pull_policy="IfNotPresent",
            command=["python3", "/opt/mesh/mesh_register.py"],
            env=pod_env + [
                k8s.EnvVar(name="MESH_SPEC", value=json.dumps(spec, sort_keys=True)),
                k8s.EnvVar(name="MESH_DIR", value=MESH_DIR),
                k8s.EnvVar(name="PYTHONDONTWRITEBYTECODE", value="1"),
            ],
            volume_mounts=[mesh_mount, token_mount,
                           k8s.VolumeMount(name="mesh-script", mount_path="/opt/mesh", read_only=True)],
            security_context=container_context(uid=REGISTER_UID),
            resources=raw_resources(sizing.register),
            # The dataplane starts only once this passes: CA, login and registration done.
            startup_probe=k8s.Probe(
                exec=k8s.ExecAction(command=["test", "-f", f"{MESH_DIR}/registered"]),
                period_seconds=2, failure_threshold=150),
            # A loop that stops registering (hung on a call) is restarted: a healthy one
            # records each round, every MESH_REFRESH_S (30 s) plus two calls of at most 15 s.
            liveness_probe=k8s.Probe(
                exec=k8s.ExecAction(command=["python3", "/opt/mesh/mesh_register.py", "--check-alive",
                                             str(REGISTER_STALE_S)]),
                period_seconds=30, timeout_seconds=5, failure_threshold=2),
        )
        dataplane = k8s.Container(
            name="consul-dataplane",
            image=versions.CONSUL_DATAPLANE_IMAGE,
            image_pull_policy="IfNotPresent",
            args=[
                f"-addresses={CONSUL_SERVICE}.{CONSUL_NAMESPACE}.svc",
                f"-grpc-port={CONSUL_GRPC_PORT}",
                f"-ca-certs={MESH_DIR}/ca.crt",
                f"-tls-server-name={server_name()}",
                "-credential-type=login",
                f"-login-auth-method={AUTH_METHOD}",
                f"-login-bearer-token-path={SA_DIR}/token",
                f"-service-node-name={MESH_NODE}",
                f"-proxy-service-id-path={MESH_DIR}/proxy-id",
                "-envoy-admin-bind-address=127.0.0.1",
                f"-envoy-admin-bind-port={SIDECAR_ADMIN_PORT}",
                "-envoy-ready-bind-address=0.0.0.0",
                f"-envoy-ready-bind-port={SIDECAR_READY_PORT}",
                "-envoy-concurrency=1",
                "-telemetry-prom-scrape-path=/metrics",
                "-log-json",
                "-shutdown-drain-listeners",
                "-shutdown-grace-period-seconds=10",
            ],
            env=pod_env,
            ports=[
                k8s.ContainerPort(name="mesh-public", container_port=SIDECAR_PUBLIC_PORT),
                k8s.ContainerPort(name="mesh-ready", container_port=SIDECAR_READY_PORT),
                k8s.ContainerPort(name="mesh-metrics", container_port=SIDECAR_METRICS_PORT),
            ],
            volume_mounts=[mesh_mount, token_mount],
            security_context=container_context(uid=DATAPLANE_UID),
            resources=raw_resources(sizing.dataplane),
            readiness_probe=k8s.Probe(
                http_get=k8s.HttpGetAction(path="/ready", port=int_or_string(SIDECAR_READY_PORT)),
                period_seconds=5, failure_threshold=3),
            liveness_probe=k8s.Probe(
                tcp_socket=k8s.TcpSocketAction(port=int_or_string(SIDECAR_READY_PORT)),
                initial_delay_seconds=10, period_seconds=10, failure_threshold=3),
        )
        self.init_containers = [register, dataplane]
        self.volumes = [
            k8s.Volume(name="consul-mesh", empty_dir=k8s.EmptyDirVolumeSource(
                medium="Memory", size_limit=quantity("1Mi"))),
            k8s.Volume(name="mesh-script", config_map=k8s.ConfigMapVolumeSource(name=f"{service.name}-mesh")),
            # The service account token, projected for the mesh containers only: the
            # application containers get none (automountServiceAccountToken is off).
            k8s.Volume(name="mesh-token", projected=k8s.ProjectedVolumeSource(sources=[
                k8s.VolumeProjection(service_account_token=k8s.ServiceAccountTokenProjection(
                    path="token", expiration_seconds=3600)),
                k8s.VolumeProjection(config_map=k8s.ConfigMapProjection(
                    name="kube-root-ca.crt", items=[k8s.KeyToPath(key="ca.crt", path="ca.crt")])),
                k8s.VolumeProjection(downward_api=k8s.DownwardApiProjection(items=[
                    k8s.DownwardApiVolumeFile(path="namespace", field_ref=k8s.ObjectFieldSelector(
                        field_path="metadata.namespace"))])),
            ])),
        ]

    def network_policy(self, scope: ObjectChart | Group, id: str, *, pod_selector: dict[str, str]) -> k8s.KubeNetworkPolicy:
        """Ingress to the sidecar from mesh pods; egress to Consul, the API server and the
        upstreams' sidecars."""
        mesh_peer = k8s.NetworkPolicyPeer(namespace_selector=k8s.LabelSelector(),
                                          pod_selector=k8s.LabelSelector(match_labels=MESH_LABEL))
        consul_peer = k8s.NetworkPolicyPeer(
            namespace_selector=k8s.LabelSelector(match_labels={"kubernetes.io/metadata.name": CONSUL_NAMESPACE}))
        egress = [
            k8s.NetworkPolicyEgressRule(to=[consul_peer], ports=ports(CONSUL_HTTPS_PORT, CONSUL_GRPC_PORT)),
            k8s.NetworkPolicyEgressRule(ports=ports(*API_PORTS)),
        ]
        if self.service.upstreams:
            egress.append(k8s.NetworkPolicyEgressRule(to=[mesh_peer], ports=ports(SIDECAR_PUBLIC_PORT)))
        policy = k8s.KubeNetworkPolicy(
            scope, id,
            metadata=k8s.ObjectMeta(name=f"{self.service.name}-mesh", namespace=self.namespace,
                                    labels={"app.kubernetes.io/component": "network-policy"}),
            spec=k8s.NetworkPolicySpec(
                pod_selector=k8s.LabelSelector(match_labels=pod_selector),
                policy_types=["Ingress", "Egress"],
                ingress=[k8s.NetworkPolicyIngressRule(from_=[mesh_peer], ports=ports(SIDECAR_PUBLIC_PORT))],
                egress=egress,
            ),
        )
        return policy

    @staticmethod
    def apply(workload: ApiObject) -> ApiObject:
        """Make the two mesh init containers native sidecars (``restartPolicy: Always``;
        beta and on by default since Kubernetes 1.29, GA in 1.33) and return the workload.

        The field is added to the rendered object as a JSON patch, so this works on any
        workload, however its containers were built. Call it last, after every change to
        the workload's containers.
        """
        manifest = workload.to_json()
        spec = "/spec" if manifest["kind"] == "Pod" else "/spec/template/spec"
        pod = manifest["spec"] if manifest["kind"] == "Pod" else manifest["spec"]["template"]["spec"]
        for index, container in enumerate(pod.get("initContainers") or []):
            if container["name"] in ("mesh-register", "consul-dataplane"):
                workload.add_json_patch(JsonPatch.add(f"{spec}/initContainers/{index}/restartPolicy", "Always"))
        return workload
