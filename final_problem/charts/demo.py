"""The demo service: the end-to-end proof of the wiring, edge → demo → mesh → Redis.

Creates, in the ``demo`` namespace (Pod Security "restricted", default-deny):

- Deployment ``demo`` (2 replicas) of the official ``python`` image running
  :mod:`final_problem.clients.demo_service`, in the mesh (:class:`MeshWorkload`): its
  sidecars register it as Consul service ``demo`` with the upstream ``redis`` on
  127.0.0.1:16379, allowed by the intention demo → redis;
  On SIGTERM a pod fails its health check, serves on until the edge has taken it out
  of rotation, then exits (see :mod:`~final_problem.clients.demo_service`): a rollout
  (maxSurge 1, maxUnavailable 0 for 2 replicas: Kubernetes' 25% defaults, rounded) loses
  no request;
- headless Service ``demo-headless`` (every pod's address, for the edge Envoy's health
  checks and outlier detection);
- PodDisruptionBudget ``demo``: a drain evicts one pod at a time;
- a Role in ``redis`` letting the demo's service account read Secret ``redis-auth``
  (its ``app`` password), and the NetworkPolicies: port 8080 from the edge Envoy only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from constructs import Construct

from final_problem import versions
from final_problem.clients import demo_service
from final_problem.components import PlatformChart, register
from final_problem.config import Settings
from final_problem.constructs.labels import set_component
from final_problem.constructs.mesh import SERVICES, MeshWorkload
from final_problem.constructs.namespace import RestrictedNamespace, ports
from final_problem.constructs.quorum import QuorumPolicy
from final_problem.constructs.secret_generator import SA_DIR
from final_problem.constructs.security import Sizing, container_context, pod_context, raw_resources
from final_problem.imports import int_or_string, k8s
from final_problem.profiles import Profile
from final_problem.changes import nothing
from final_problem.settings import ComponentSettings, setting

SCRIPT = Path(demo_service.__file__)
#: The python image's "nobody".
DEMO_UID = 65534


@dataclass(frozen=True, kw_only=True)
class DemoProps(ComponentSettings):
    """What a user can choose about the demo (section ``demo``)."""

    replicas: int = setting(2, minimum=1, maximum=10,
                            doc="Pods; 2, so the edge's retries and outlier detection have a second host.",
        change=nothing("scales the Deployment"),
    )

    @property
    def sizing(self) -> Sizing:
        return Sizing(cpu_request_m=20, cpu_limit_m=200, memory_request_mib=48, memory_limit_mib=64)


@register
class DemoChart(PlatformChart):
    """The demo service in the ``demo`` namespace, in the mesh."""

    component = "demo"
    construct_id = "Demo"
    requires = ("base", "consul", "redis")
    version = versions.PLATFORM_VERSION
    # Supported upgrade paths of the images its pods run (final_problem/versions.py).
    upgrade_paths = versions.upgrade_paths(versions.PYTHON_IMAGE, versions.CONSUL_DATAPLANE_IMAGE)
    settings_class = DemoProps

    NAMESPACE = "demo"
    HEADLESS = "demo-headless"
    EDGE_NAMESPACE = "edge"
    #: Kubernetes' default grace period; the demo's 15 s drain and the longest request fit.
    GRACE_SECONDS = 30

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        settings: Settings,
        profile: Profile,
        dependencies: Mapping[str, PlatformChart],
    ) -> None:
        super().__init__(scope, id, settings=settings, profile=profile, dependencies=dependencies)
        p: DemoProps = self.props
        ns = self.NAMESPACE
        service = SERVICES["demo"]
        self.port = service.port
        self.demo_namespace = RestrictedNamespace(self, "Namespace", name=ns, pss_version=f"v{settings.kubernetes_version}")
        self.mesh = MeshWorkload(self, "Mesh", service=service, namespace=ns, profile=profile,
                                 enabled=tuple(settings.components))
        self.script = k8s.KubeConfigMap(
            self, "Script", metadata=k8s.ObjectMeta(name="demo-script", namespace=ns),
            data={"demo_service.py": SCRIPT.read_text()},
        )
        set_component(self.script, "config")
        # Its mesh upstreams, and Consul (its sidecars log in and fetch their configuration).
        self.calls = (*(u.service for u in service.upstreams), "consul")
        redis_port = next(u.local_port for u in service.upstreams if u.service == "redis")
        selector = self.label_set.selector("server")
        app = k8s.Container(
            name="demo",
            image=versions.PYTHON_IMAGE,
            image_pull_policy="IfNotPresent",
            command=["python3", "/opt/demo/demo_service.py"],
            env=[
                k8s.EnvVar(name="PORT", value=str(service.port)),
                k8s.EnvVar(name="REDIS_UPSTREAM_PORT", value=str(redis_port)),
                k8s.EnvVar(name="SA_DIR", value=SA_DIR),
                k8s.EnvVar(name="PYTHONDONTWRITEBYTECODE", value="1"),
                # SIGTERM: fail /healthz, keep serving until the edge's health checks take
                # the pod out, then finish and exit (clients/demo_service.py).
                k8s.EnvVar(name="DRAIN_SECONDS", value=f"{demo_service.DRAIN_SECONDS:g}"),
            ],
            ports=[k8s.ContainerPort(name="http", container_port=service.port)],
            volume_mounts=[
                k8s.VolumeMount(name="demo-script", mount_path="/opt/demo", read_only=True),
                k8s.VolumeMount(name="mesh-token", mount_path=SA_DIR, read_only=True),
            ],
            security_context=container_context(uid=DEMO_UID),
            resources=raw_resources(p.sizing),
            readiness_probe=k8s.Probe(http_get=k8s.HttpGetAction(path="/healthz", port=int_or_string(service.port)),
                                      period_seconds=5, failure_threshold=2),
            liveness_probe=k8s.Probe(tcp_socket=k8s.TcpSocketAction(port=int_or_string(service.port)),
                                     initial_delay_seconds=5, period_seconds=10, failure_threshold=3),
        )
        self.deployment = k8s.KubeDeployment(
            self, "Deployment",
            metadata=k8s.ObjectMeta(name="demo", namespace=ns, labels={"app.kubernetes.io/component": "server"}),
            spec=k8s.DeploymentSpec(
                replicas=p.replicas,
                selector=k8s.LabelSelector(match_labels=selector),
                template=k8s.PodTemplateSpec(
                    metadata=k8s.ObjectMeta(labels={**self.label_set.chart_labels(), **selector, **self.mesh.pod_labels}),
                    spec=k8s.PodSpec(
                        service_account_name=service.name,
                        automount_service_account_token=False,
                        enable_service_links=False,
                        security_context=pod_context(uid=DEMO_UID),
                        topology_spread_constraints=QuorumPolicy.spread(selector, profile),
                        init_containers=self.mesh.init_containers,
                        # The drain (DRAIN_SECONDS) and the requests in flight fit.
                        termination_grace_period_seconds=self.GRACE_SECONDS,
                        containers=[app],
                        volumes=[*self.mesh.volumes, k8s.Volume(
                            name="demo-script", config_map=k8s.ConfigMapVolumeSource(name="demo-script"))],
                    ),
                ),
            ),
        )
        self.deployment = MeshWorkload.apply(self.deployment)
        self.headless = k8s.KubeService(
            self, "Headless",
            metadata=k8s.ObjectMeta(name=self.HEADLESS, namespace=ns),
            spec=k8s.ServiceSpec(cluster_ip="None", selector=selector,
                                 ports=[k8s.ServicePort(name="http", port=service.port,
                                                        target_port=int_or_string(service.port))]),
        )
        set_component(self.headless, "server")
        # A node drain takes one demo pod at a time, so the edge always has one to send to
        # (maxUnavailable, not minAvailable: with demo.replicas=1 a drain may still proceed).
        self.pdb = k8s.KubePodDisruptionBudget(
            self, "Disruption",
            metadata=k8s.ObjectMeta(name="demo", namespace=ns, labels={"app.kubernetes.io/component": "server"}),
            spec=k8s.PodDisruptionBudgetSpec(
                max_unavailable=int_or_string(1), selector=k8s.LabelSelector(match_labels=selector)),
        )
        # Read access to the one Secret holding the app password, in Redis's namespace.
        self.redis_role = k8s.KubeRole(
            self, "RedisSecretRole",
            metadata=k8s.ObjectMeta(name="demo-read-auth", namespace="redis",
                                    labels={"app.kubernetes.io/component": "rbac"}),
            rules=[k8s.PolicyRule(api_groups=[""], resources=["secrets"], resource_names=["redis-auth"], verbs=["get"])],
        )
        self.redis_role_binding = k8s.KubeRoleBinding(
            self, "RedisSecretBinding",
            metadata=k8s.ObjectMeta(name="demo-read-auth", namespace="redis",
                                    labels={"app.kubernetes.io/component": "rbac"}),
            role_ref=k8s.RoleRef(api_group="rbac.authorization.k8s.io", kind="Role", name="demo-read-auth"),
            subjects=[k8s.Subject(kind="ServiceAccount", name=service.name, namespace=ns)],
        )
        self.mesh_policy = self.mesh.network_policy(self, "MeshPolicy", pod_selector=selector)
        self.edge_policy = k8s.KubeNetworkPolicy(
            self, "EdgePolicy",
            metadata=k8s.ObjectMeta(name="demo-from-edge", namespace=ns),
            spec=k8s.NetworkPolicySpec(
                pod_selector=k8s.LabelSelector(match_labels=selector),
                policy_types=["Ingress"],
                ingress=[k8s.NetworkPolicyIngressRule(
                    from_=[k8s.NetworkPolicyPeer(
                        namespace_selector=k8s.LabelSelector(
                            match_labels={"kubernetes.io/metadata.name": self.EDGE_NAMESPACE}),
                        pod_selector=k8s.LabelSelector(match_labels={"app.kubernetes.io/name": "envoy"}))],
                    ports=ports(service.port))],
            ),
        )
        set_component(self.edge_policy, "network-policy")
        self.put_first(self.demo_namespace)
