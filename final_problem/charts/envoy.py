"""The edge Envoy: the platform's one entry point from outside the cluster.

Creates, in the ``edge`` namespace (Pod Security "restricted", default-deny):

- ConfigMap ``envoy-config``: the static configuration rendered by
  :func:`final_problem.renderers.envoy.edge_config` (routes, timeouts, retries with a
  retry budget, active health checks, outlier detection, circuit breakers, buffer and
  connection limits, JSON access logs, admin on 127.0.0.1);
- Deployment ``envoy`` of the official distroless image (2 replicas, one per node,
  spread over zones) and a PDB keeping one up through a drain;
- Service ``envoy`` of type LoadBalancer: a Network Load Balancer on EKS (annotations of
  the AWS cloud provider), k3s's service load balancer (ServiceLB) on a Pi;
- NetworkPolicy: the listener from anywhere, metrics from monitoring namespaces, egress
  only to the routed backends.

Stopping a proxy loses no request. The distroless image has no shell or curl, and the
admin interface (the only place a drain can be started) listens on loopback, where a
kubelet ``httpGet`` hook cannot reach it (it connects to the pod's IP). So a terminating
pod waits in Kubernetes' native ``preStop`` sleep action (beta and on by default from
1.30, GA in 1.34; the project supports 1.33-1.36), still serving, for ``drain_seconds``:
meanwhile the EndpointSlice controller takes it out of the Service (a terminating
endpoint is not ready), so ServiceLB / kube-proxy and the NLB send new connections to the
other proxy, and every client connection it still holds is closed cleanly by Envoy's
``max_connection_duration`` (``Connection: close`` on the next response, GOAWAY on
HTTP/2). Only then does SIGTERM arrive, with nothing left to cut. On EKS the NLB (in-tree
AWS provider, instance targets, ``externalTrafficPolicy: Local``) stops sending to a node
once its health check of the Service's ``healthCheckNodePort`` fails: kube-proxy answers
503 there when the node has no ready endpoint of the Service, and the rendered health
check (every 10 s, 2 failures) takes 20 s to notice; ``drain_seconds`` covers that plus
``max_connection_duration``. Target deregistration delay does not apply (the node stays
registered) and readiness gates need the AWS Load Balancer Controller, which the project
does not install.

Routes go only to components that are enabled: the demo service (``/``) and, when the
``cadence`` component is enabled, Cadence's web UI (``/`` of port 8088 of the same Service:
it cannot live under a path prefix). A route naming a component that is not enabled fails
synthesis.
Sources: Envoy docs, "Configuring Envoy as an edge proxy"; Kubernetes docs, "Service"
(type LoadBalancer, ``externalTrafficPolicy``); AWS cloud provider annotations
(``service.beta.kubernetes.io/aws-load-balancer-type: nlb``); k3s docs, "Networking
Services" (ServiceLB).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Mapping

from constructs import Construct

from final_problem import sizes, versions
from final_problem.components import PlatformChart, register
from final_problem.config import Settings
from final_problem.constructs.labels import set_component
from final_problem.constructs.namespace import MONITORING_NAMESPACE_LABEL, RestrictedNamespace, ports
from final_problem.constructs.quorum import QuorumPolicy
from final_problem.constructs.security import Sizing, container_context, pod_context, raw_resources
from final_problem.imports import int_or_string, k8s, quantity
from final_problem.profiles import ENVOY_MIN_ARM64_VA_BITS, Profile
from final_problem.changes import nothing, rolling
from final_problem.settings import ComponentSettings, per_profile, setting
from final_problem.renderers.envoy import EdgeOptions, EdgeRoute, check_routes, envoy_args, render

CONFIG_DIR = "/etc/envoy"
CONFIG_FILE = "envoy.json"


@dataclass(frozen=True, kw_only=True)
class RouteSpec:
    """A route of the edge to a component's Service."""

    #: The component that serves it; it must be enabled.
    component: str
    name: str
    prefix: str
    #: Headless Service (every pod's address) and its namespace.
    service: str
    namespace: str
    port: int
    health_path: str = "/healthz"
    rewrite_prefix: str | None = None
    #: A port of the edge Service of its own, the route at its ``/`` (see EdgeRoute).
    listener_port: int | None = None

    def edge_route(self) -> EdgeRoute:
        host = f"{self.service}.{self.namespace}.svc.cluster.local"
        return EdgeRoute(name=self.name, prefix=self.prefix, endpoints=((host, self.port),),
                         health_path=self.health_path, rewrite_prefix=self.rewrite_prefix,
                         listener_port=self.listener_port)


#: Routes of the platform's own components, taken when the component is enabled; each
#: component's chart creates the headless Service and admits the edge namespace.
#: Cadence's web UI (ubercadence/web, port 8088, NOTES) answers ``/`` for its health; it is
#: a Next.js app built without a base path (its pages load ``/_next/...``), so it cannot
#: live under a prefix and gets port 8088 of the edge to itself.
KNOWN_ROUTES = (
    RouteSpec(component="demo", name="demo", prefix="/", service="demo-headless", namespace="demo", port=8080),
    RouteSpec(component="cadence", name="cadence-web", prefix="/", service="cadence-web-headless",
              namespace="cadence", port=8088, health_path="/", listener_port=8088),
)


@dataclass(frozen=True, kw_only=True)
class EnvoyProps(ComponentSettings):
    """What a user can choose about the edge (section ``envoy``); defaults per profile."""

    replicas: int = setting(2, minimum=2, maximum=20,
                            doc="Proxies; at least 2: the edge is the only entry point, one replica makes every "
                                "drain an outage.",
        change=nothing("scales the Deployment"),
    )
    routes: tuple[str, ...] | None = setting(
        default_doc="every enabled component with a route", example=("demo",),
        doc="Components the edge routes to (`demo` at `/`, `cadence`'s web UI at `/` of port 8088); each must be "
            "enabled.",
        change=rolling("the proxy configuration: proxies drain and roll one at a time (a surge pod first)"),
    )
    service_port: int = setting(
        80, minimum=1, maximum=65_535, doc="Port of the LoadBalancer Service.",
        change=nothing("the LoadBalancer Service's port: clients must use the new port"),
    )
    request_timeout_ms: int = setting(EdgeOptions.request_timeout_ms, minimum=100, maximum=3_600_000,
                                      doc="Whole request, retries included (Envoy's own default is 15 s).",
        change=rolling("the proxy configuration: proxies drain and roll one at a time (a surge pod first)"),
    )
    per_try_timeout_ms: int = setting(EdgeOptions.per_try_timeout_ms, minimum=50, maximum=3_600_000,
                                      doc="One try; at most request_timeout_ms, so retries fit.",
        change=rolling("the proxy configuration: proxies drain and roll one at a time (a surge pod first)"),
    )
    retries: int = setting(EdgeOptions.retries, minimum=0, maximum=5,
                           doc="Retries of a request that failed to connect, was reset or got 503.",
        change=rolling("the proxy configuration: proxies drain and roll one at a time (a surge pod first)"),
    )
    retry_budget_percent: int = setting(
        int(EdgeOptions.retry_budget_percent), minimum=1, maximum=100,
        doc="Share of active requests that may be retries (Envoy docs, \"Circuit breaking\", retry budgets).",
        change=rolling("the proxy configuration: proxies drain and roll one at a time (a surge pod first)"),
    )
    max_connections: int = setting(EdgeOptions.max_connections, minimum=1, maximum=1_000_000,
                                   doc="Circuit breaker per backend: connections, pending and active requests.",
        change=rolling("the proxy configuration: proxies drain and roll one at a time (a surge pod first)"),
    )
    max_downstream_connections: int = setting(per_profile(eks=10_000, pi=2000), minimum=10, maximum=1_000_000,
                                              doc="Client connections the proxy accepts in all.",
        change=rolling("the proxy configuration: proxies drain and roll one at a time (a surge pod first)"),
    )
    concurrency: int = setting(per_profile(eks=2, pi=1), minimum=1, maximum=64,
                               doc="Worker threads (Envoy defaults to every hardware thread of the node).",
        change=rolling("the proxy configuration: proxies drain and roll one at a time (a surge pod first)"),
    )
    drain_seconds: int = setting(
        per_profile(eks=35, pi=15), minimum=5, maximum=600,
        doc="A terminating proxy keeps serving this long (preStop sleep) while the load balancer stops sending to it "
            "and its clients' connections close (EKS: the NLB's 2 x 10 s health check + 10 s "
            "max_connection_duration + 5 s; a Pi: ServiceLB follows endpoints in about a second).",
        change=rolling("the proxies' preStop and grace period: they roll one at a time"),
    )
    memory_mib: int = setting(sizes.default("envoy"), minimum=64, maximum=16_384,
                              doc="Memory request and limit; the overload manager's heap limit is 80% of it.",
        change=rolling("the proxy configuration: proxies drain and roll one at a time (a surge pod first)"),
    )

    @property
    def sizing(self) -> Sizing:
        return sizes.sizing("envoy", self.profile, self.memory_mib)

    def check(self) -> None:
        if self.per_try_timeout_ms > self.request_timeout_ms:
            raise self.error("per_try_timeout_ms", f"longer than request_timeout_ms ({self.request_timeout_ms}), "
                             "so no retry could ever run",
                             f"set envoy.per_try_timeout_ms={max(50, self.request_timeout_ms // (self.retries + 1))}")
        known = {r.component for r in KNOWN_ROUTES}
        for name in self.routes or ():
            if name not in known:
                raise self.error("routes", f"'{name}' has no route",
                                 f"set envoy.routes={','.join(sorted(known & set(self.routes or ())) or ['demo'])}")

    def edge_options(self) -> EdgeOptions:
        return EdgeOptions(
            request_timeout_ms=self.request_timeout_ms,
            per_try_timeout_ms=self.per_try_timeout_ms,
            retries=self.retries,
            retry_budget_percent=float(self.retry_budget_percent),
            max_connections=self.max_connections,
            max_downstream_connections=self.max_downstream_connections,
            max_heap_bytes=self.sizing.memory_limit_mib * 1024 * 1024 * 8 // 10,
        )

    def route_specs(self, enabled: tuple[str, ...]) -> tuple[RouteSpec, ...]:
        """The routes for the enabled components; a route to a disabled one is an error."""
        if self.routes is None:
            chosen = tuple(r for r in KNOWN_ROUTES if r.component in enabled)
        else:
            for name in self.routes:
                if name not in enabled:
                    raise self.error(
                        "routes", f"routes to component '{name}', which is not deployed",
                        f"enable '{name}' in components, or set envoy.routes without it",
                        value=self.routes,
                    )
            chosen = tuple(r for r in KNOWN_ROUTES if r.component in self.routes)
        if not chosen:
            raise self.error(
                "routes", "the edge has nothing to route to: no routed component is enabled",
                f"enable one of {', '.join(r.component for r in KNOWN_ROUTES)}", value=self.routes or (),
            )
        check_routes([r.edge_route() for r in chosen], self.edge_options())
        if self.service_port in {r.listener_port for r in chosen}:
            raise self.error("service_port", "the edge Service already uses this port for a route's own listener",
                             "set envoy.service_port=80", value=self.service_port)
        return chosen


@register
class EnvoyChart(PlatformChart):
    """The edge Envoy in the ``edge`` namespace, behind a LoadBalancer Service."""

    component = "envoy"
    construct_id = "Envoy"
    requires = ("base",)
    version = versions.ENVOY_VERSION
    # Supported upgrade paths of the images its pods run (final_problem/versions.py).
    upgrade_paths = versions.upgrade_paths(versions.ENVOY_IMAGE)
    settings_class = EnvoyProps
    # Envoy's allocator (tcmalloc) aborts below 47 bits: final_problem.profiles, pi/README.md.
    min_arm64_va_bits = ENVOY_MIN_ARM64_VA_BITS
    min_arm64_va_bits_reason = "runs Envoy"

    NAMESPACE = "edge"
    SERVICE = "envoy"

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
        p: EnvoyProps = self.props
        ns = self.NAMESPACE
        #: The routes deployed, and the Envoy configuration (for the tests and other apps).
        self.route_specs = p.route_specs(tuple(settings.components))
        self.routes = [r.edge_route() for r in self.route_specs]
        self.calls = tuple(r.component for r in self.route_specs)
        #: Routes served on a port of the edge of their own.
        self.own_listeners = [r for r in self.route_specs if r.listener_port is not None]
        #: What clients outside the cluster reach: the LoadBalancer Service's ports.
        self.load_balancer = f"{self.SERVICE}:" + ",".join(
            str(port) for port in (p.service_port, *(r.listener_port for r in self.own_listeners)))
        self.options = p.edge_options()
        self.config_text = render(self.options, self.routes)
        #: In-cluster address of the edge.
        self.service_dns = f"{self.SERVICE}.{ns}.svc"

        self.edge_namespace = RestrictedNamespace(self, "Namespace", name=ns, pss_version=f"v{settings.kubernetes_version}")
        self.config_map = k8s.KubeConfigMap(
            self, "Config", metadata=k8s.ObjectMeta(name="envoy-config", namespace=ns),
            data={CONFIG_FILE: self.config_text},
        )
        set_component(self.config_map, "config")
        selector = self.label_set.selector("proxy")
        o = self.options
        container = k8s.Container(
            name="envoy",
            image=versions.ENVOY_IMAGE,
            image_pull_policy="IfNotPresent",
            command=["/usr/local/bin/envoy"],
            args=envoy_args(f"{CONFIG_DIR}/{CONFIG_FILE}", concurrency=p.concurrency),
            ports=[
                k8s.ContainerPort(name="http", container_port=o.port),
                k8s.ContainerPort(name="health", container_port=o.health_port),
                k8s.ContainerPort(name="metrics", container_port=o.metrics_port),
                *(k8s.ContainerPort(name=r.name, container_port=r.listener_port) for r in self.own_listeners),
            ],
            volume_mounts=[
                k8s.VolumeMount(name="config", mount_path=CONFIG_DIR, read_only=True),
                k8s.VolumeMount(name="tmp", mount_path="/tmp"),
            ],
            security_context=container_context(uid=versions.ENVOY_UID),
            resources=raw_resources(p.sizing),
            # Ready: the health listener answers 200 (503 once draining). Alive: the
            # main listener accepts connections; a backend outage never restarts it.
            # No shell in the image: the kubelet's own sleep (see the module docstring).
            lifecycle=k8s.Lifecycle(pre_stop=k8s.LifecycleHandler(sleep=k8s.SleepAction(seconds=p.drain_seconds))),
            readiness_probe=k8s.Probe(
                http_get=k8s.HttpGetAction(path="/ready", port=int_or_string(o.health_port)),
                period_seconds=5, failure_threshold=2, timeout_seconds=2),
            liveness_probe=k8s.Probe(
                tcp_socket=k8s.TcpSocketAction(port=int_or_string(o.port)),
                initial_delay_seconds=5, period_seconds=10, failure_threshold=3, timeout_seconds=2),
        )
        digest = hashlib.sha256(self.config_text.encode()).hexdigest()[:16]
        self.deployment = k8s.KubeDeployment(
            self, "Deployment",
            metadata=k8s.ObjectMeta(name="envoy", namespace=ns, labels={"app.kubernetes.io/component": "proxy"}),
            spec=k8s.DeploymentSpec(
                replicas=p.replicas,
                selector=k8s.LabelSelector(match_labels=selector),
                strategy=k8s.DeploymentStrategy(
                    type="RollingUpdate",
                    rolling_update=k8s.RollingUpdateDeployment(max_unavailable=int_or_string(0), max_surge=int_or_string(1)),
                ),
                template=k8s.PodTemplateSpec(
                    metadata=k8s.ObjectMeta(
                        labels={**self.label_set.chart_labels(), **selector},
                        annotations={
                            "final-problem.io/config-hash": digest,
                            "prometheus.io/scrape": "true", "prometheus.io/port": str(o.metrics_port),
                            "prometheus.io/path": "/stats/prometheus",
                        },
                    ),
                    spec=k8s.PodSpec(
                        automount_service_account_token=False,
                        enable_service_links=False,
                        security_context=pod_context(uid=versions.ENVOY_UID),
                        affinity=self._affinity(selector, profile),
                        topology_spread_constraints=QuorumPolicy.spread(selector, profile),
                        # The preStop wait counts against the grace period (Kubernetes docs,
                        # "Container Lifecycle Hooks"); 15 s more for Envoy to stop.
                        termination_grace_period_seconds=p.drain_seconds + 15,
                        containers=[container],
                        volumes=[
                            k8s.Volume(name="config", config_map=k8s.ConfigMapVolumeSource(name="envoy-config")),
                            k8s.Volume(name="tmp", empty_dir=k8s.EmptyDirVolumeSource(size_limit=quantity("16Mi"))),
                        ],
                    ),
                ),
            ),
        )
        # The distroless image's nonroot user is 65532 (gcr.io/distroless), above
        # checkov's 10000 threshold; the image has no shell for an exec probe.
        self.pdb = k8s.KubePodDisruptionBudget(
            self, "Disruption",
            metadata=k8s.ObjectMeta(name="envoy", namespace=ns, labels={"app.kubernetes.io/component": "proxy"}),
            spec=k8s.PodDisruptionBudgetSpec(
                max_unavailable=int_or_string(1), selector=k8s.LabelSelector(match_labels=selector)),
        )
        self.service = k8s.KubeService(
            self, "Service",
            metadata=k8s.ObjectMeta(name=self.SERVICE, namespace=ns, annotations=self._lb_annotations(profile)),
            spec=k8s.ServiceSpec(
                type="LoadBalancer",
                selector=selector,
                # EKS: keep the client's address (Envoy logs and forwards it) and skip a
                # second hop between nodes. ServiceLB on k3s forwards from every node, so
                # Cluster there.
                external_traffic_policy="Local" if profile.name == "eks" else "Cluster",
                ports=[k8s.ServicePort(name="http", port=p.service_port, target_port=int_or_string(o.port)),
                       *(k8s.ServicePort(name=r.name, port=r.listener_port, target_port=int_or_string(r.listener_port))
                         for r in self.own_listeners)],
            ),
        )
        set_component(self.service, "proxy")
        self._network_policy(selector)
        self.put_first(self.edge_namespace)

    @staticmethod
    def _affinity(selector: dict[str, str], profile: Profile) -> k8s.Affinity:
        """One proxy per node; on profiles that say so, only on nodes whose kernel runs Envoy."""
        affinity = QuorumPolicy.affinity(selector)
        if not profile.envoy_node_labels:
            return affinity
        return k8s.Affinity(
            pod_anti_affinity=affinity.pod_anti_affinity,
            node_affinity=k8s.NodeAffinity(required_during_scheduling_ignored_during_execution=k8s.NodeSelector(
                node_selector_terms=[k8s.NodeSelectorTerm(match_expressions=[
                    k8s.NodeSelectorRequirement(key=key, operator="In", values=list(values))
                    for key, values in profile.envoy_node_labels.items()
                ])])),
        )

    @staticmethod
    def _lb_annotations(profile: Profile) -> dict[str, str] | None:
        if profile.name != "eks":
            return None  # k3s's ServiceLB serves any LoadBalancer Service on the nodes' addresses
        # Kubernetes AWS cloud provider: an internet-facing NLB across zones. Its health
        # check of each node (healthCheckNodePort, externalTrafficPolicy Local) is what
        # stops new connections to a draining proxy: every 10 s, 2 failures, pinned here
        # because drain_seconds is computed from them (cloud-provider-aws, "Service
        # annotations": aws-load-balancer-healthcheck-*).
        return {
            "service.beta.kubernetes.io/aws-load-balancer-type": "nlb",
            "service.beta.kubernetes.io/aws-load-balancer-cross-zone-load-balancing-enabled": "true",
            "service.beta.kubernetes.io/aws-load-balancer-healthcheck-interval": "10",
            "service.beta.kubernetes.io/aws-load-balancer-healthcheck-unhealthy-threshold": "2",
            "service.beta.kubernetes.io/aws-load-balancer-healthcheck-healthy-threshold": "2",
        }

    def _network_policy(self, selector: dict[str, str]) -> None:
        egress = [
            k8s.NetworkPolicyEgressRule(
                to=[k8s.NetworkPolicyPeer(namespace_selector=k8s.LabelSelector(
                    match_labels={"kubernetes.io/metadata.name": r.namespace}))],
                ports=ports(r.port),
            )
            for r in self.route_specs
        ]
        o = self.options
        self.network_policy = k8s.KubeNetworkPolicy(
            self, "Policy",
            metadata=k8s.ObjectMeta(name="envoy", namespace=self.NAMESPACE),
            spec=k8s.NetworkPolicySpec(
                pod_selector=k8s.LabelSelector(match_labels=selector),
                policy_types=["Ingress", "Egress"],
                ingress=[
                    # The load balancer forwards clients from anywhere.
                    k8s.NetworkPolicyIngressRule(ports=ports(o.port, *(r.listener_port for r in self.own_listeners))),
                    k8s.NetworkPolicyIngressRule(
                        from_=[k8s.NetworkPolicyPeer(namespace_selector=k8s.LabelSelector(
                            match_labels=MONITORING_NAMESPACE_LABEL))],
                        ports=ports(o.metrics_port)),
                ],
                egress=egress,
            ),
        )
        set_component(self.network_policy, "network-policy")


def chart_config(props: EnvoyProps, enabled: tuple[str, ...]) -> tuple[EdgeOptions, list[EdgeRoute]]:
    """The options and routes the chart renders for ``enabled`` components (for tests)."""
    specs = props.route_specs(enabled)
    return props.edge_options(), [r.edge_route() for r in specs]
