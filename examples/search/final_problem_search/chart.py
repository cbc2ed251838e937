"""The ``search`` component: Apache Solr in SolrCloud mode, coordinated by the platform's ZooKeeper.

Built only on :mod:`final_problem.api`. Creates, in the ``search`` namespace (Pod Security
"restricted", default-deny, labelled as a ZooKeeper client):

- StatefulSet ``search`` of ``replicas`` Solr nodes (a quorum set: PDB, one node per
  Kubernetes node, zone spread, retained volumes), each keeping its cores under
  ``/var/solr``;
- headless Service ``search-headless`` (each node's stable name, which Solr registers in
  ZooKeeper) and Service ``search`` for clients, port 8983;
- NetworkPolicies: Solr from its own nodes and from namespaces labelled
  ``final-problem.io/search-client: "true"``; egress to its own nodes and to ZooKeeper's
  client port.

Solr keeps its cluster state under the ZooKeeper chroot ``/solr``, which it creates on
first start. The security plugin is left off: access is limited by the NetworkPolicies.
Sources: Solr Reference Guide, "Solr in Docker", "ZooKeeper Ensemble Configuration",
"Taking Solr to Production"; the official image, hub.docker.com/_/solr.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from constructs import Construct

from final_problem.api import (
    ClaimSpec,
    ComponentSettings,
    PlatformChart,
    Profile,
    QuorumStatefulSet,
    RestrictedNamespace,
    Settings,
    Sizing,
    UpgradePath,
    ZOOKEEPER_CLIENT_LABEL,
    container_context,
    int_or_string,
    k8s,
    per_profile,
    ports,
    quantity,
    raw_resources,
    procedure,
    register,
    rolling,
    set_component,
    setting,
    volume_size,
)


# Source: docker-library/official-images, library/solr (Mar 2026): "Tags: 9.10.1, 9.10, 9",
# Architectures: amd64, arm64v8, ppc64le, s390x (GitRepo apache/solr-docker, Directory 9.10).
SOLR_VERSION = "9.10.1"
SOLR_IMAGE = f"docker.io/library/solr:{SOLR_VERSION}"
#: The image's solr user and group (apache/solr-docker 9.10/Dockerfile: SOLR_UID, SOLR_GID 8983).
SOLR_UID = 8983
#: Solr's HTTP port (the image's EXPOSE and Solr's default SOLR_PORT).
PORT = 8983
#: The image's VOLUME: SOLR_HOME (/var/solr/data), logs and the pid file live under it.
VAR_SOLR = "/var/solr"
#: Label a namespace carries to reach Solr.
CLIENT_NAMESPACE_LABEL = {"final-problem.io/search-client": "true"}


@dataclass(frozen=True, kw_only=True)
class SearchSettings(ComponentSettings):
    """What a user can choose about Solr (section ``search``)."""

    replicas: int = setting(
        3, choices=(3, 5, 7),
        doc="Solr nodes, one per Kubernetes node, spread over zones; the platform's quorum set takes odd sizes.",
        # A new node holds no replicas until some are added to it; a removed node takes its
        # replicas with it (Solr Reference Guide, "Replica Management": ADDREPLICA, MOVEREPLICA).
        change=procedure("Solr places no replicas on a new node, and a removed node's replicas go with it",
                         "MOVEREPLICA every replica off the nodes being removed before the deploy; ADDREPLICA onto new "
                         "nodes after it"),
    )
    memory_mib: int = setting(
        per_profile(eks=2048, pi=768), minimum=512, maximum=65_536,
        doc="Memory request and limit of each Solr node. The JVM heap gets half; the rest is left to the "
            "page cache Lucene reads its index through.",
        change=rolling("the nodes' memory and heap: they restart one at a time, the highest ordinal first"),
    )
    storage_gib: int = setting(per_profile(eks=20, pi=4), minimum=1, maximum=16_384, doc="Each node's volume.",
                               change=volume_size("each Solr node's volume"))

    @property
    def heap_mib(self) -> int:
        return self.memory_mib // 2

    @property
    def sizing(self) -> Sizing:
        cpu = (250, 1000) if self.profile.small else (500, 2000)
        return Sizing(cpu_request_m=cpu[0], cpu_limit_m=cpu[1],
                      memory_request_mib=self.memory_mib, memory_limit_mib=self.memory_mib)


@register
class SearchChart(PlatformChart):
    """Apache Solr in SolrCloud mode, its cluster state in the platform's ZooKeeper."""

    component = "search"
    construct_id = "Search"
    requires = ("base", "zookeeper")
    version = SOLR_VERSION
    settings_class = SearchSettings
    images = (SOLR_IMAGE,)
    # Solr nodes of one major version upgrade one at a time; an index written by a newer
    # Lucene cannot be read by an older one (Solr Reference Guide, "Upgrading a Solr Cluster"
    # and "Major Changes" of each 9.x release).
    upgrade_paths = {"docker.io/library/solr": UpgradePath(
        name="Solr", within="major", step=None, downgrade="patch",
        upgrade=rolling("nodes restart one at a time on the new version"),
        outside="a new major reindexes: Lucene reads indexes of the previous major only",
        source="Solr Reference Guide, Upgrading a Solr Cluster",
    )}

    NAMESPACE = "search"
    NAME = "search"
    HEADLESS_SERVICE = "search-headless"
    CLIENT_SERVICE = "search"

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
        props: SearchSettings = self.props
        zookeeper = self.dependency("zookeeper")
        ns = self.NAMESPACE
        # The ZooKeeper chart admits clients from namespaces carrying its label.
        self.search_namespace = RestrictedNamespace(self, "Namespace", name=ns, labels=ZOOKEEPER_CLIENT_LABEL)
        selector = self.label_set.selector("server")
        #: Solr's base URL for clients inside the cluster.
        self.url = f"http://{self.CLIENT_SERVICE}.{ns}.svc.cluster.local:{PORT}/solr"

        service_ports = [k8s.ServicePort(name="http", port=PORT, target_port=int_or_string("http"))]
        self.headless_service = k8s.KubeService(
            self, "Headless",
            metadata=k8s.ObjectMeta(name=self.HEADLESS_SERVICE, namespace=ns),
            # Nodes find each other by these names before they are ready.
            spec=k8s.ServiceSpec(cluster_ip="None", selector=selector, ports=service_ports, publish_not_ready_addresses=True),
        )
        self.client_service = k8s.KubeService(
            self, "Client",
            metadata=k8s.ObjectMeta(name=self.CLIENT_SERVICE, namespace=ns),
            spec=k8s.ServiceSpec(selector=selector, ports=service_ports),
        )
        container = k8s.Container(
            name="solr",
            image=SOLR_IMAGE,
            image_pull_policy="IfNotPresent",
            env=[
                # The image's solr.in.sh reads these (Solr Reference Guide, "Solr in Docker").
                k8s.EnvVar(name="ZK_HOST", value=f"{zookeeper.connect_string}/solr"),
                k8s.EnvVar(name="ZK_CREATE_CHROOT", value="true"),
                k8s.EnvVar(name="SOLR_HEAP", value=f"{props.heap_mib}m"),
                k8s.EnvVar(name="POD_NAME", value_from=k8s.EnvVarSource(
                    field_ref=k8s.ObjectFieldSelector(field_path="metadata.name"))),
                # The name Solr registers in ZooKeeper: stable across restarts.
                k8s.EnvVar(name="SOLR_HOST", value=f"$(POD_NAME).{self.HEADLESS_SERVICE}.{ns}.svc.cluster.local"),
            ],
            ports=[k8s.ContainerPort(name="http", container_port=PORT)],
            security_context=container_context(uid=SOLR_UID),
            resources=raw_resources(props.sizing),
            # Ready once this node is connected to ZooKeeper and its cores are active
            # (the health check handler answers 503 otherwise).
            readiness_probe=k8s.Probe(
                http_get=k8s.HttpGetAction(path="/solr/admin/info/health", port=int_or_string("http")),
                initial_delay_seconds=20, period_seconds=10, timeout_seconds=5, failure_threshold=3,
            ),
            # Alive while Jetty accepts connections: losing ZooKeeper must not restart every node.
            liveness_probe=k8s.Probe(
                tcp_socket=k8s.TcpSocketAction(port=int_or_string("http")),
                initial_delay_seconds=60, period_seconds=15, timeout_seconds=5, failure_threshold=6,
            ),
            volume_mounts=[
                k8s.VolumeMount(name="data", mount_path=VAR_SOLR),
                k8s.VolumeMount(name="tmp", mount_path="/tmp"),
            ],
        )
        self.stateful_set = QuorumStatefulSet(
            self, "Nodes",
            name=self.NAME,
            namespace=ns,
            labels=self.label_set,
            component="server",
            replicas=props.replicas,
            service_name=self.HEADLESS_SERVICE,
            containers=[container],
            profile=profile,
            uid=SOLR_UID,
            volumes=[k8s.Volume(name="tmp", empty_dir=k8s.EmptyDirVolumeSource(size_limit=quantity("256Mi")))],
            claims=[ClaimSpec(name="data", size_gib=props.storage_gib)],
        )
        self._network_policies(selector=selector, zookeeper=zookeeper)
        for child in (self.headless_service, self.client_service):
            set_component(child, "server")
            child.add_dependency(self.search_namespace.resource)
        self.stateful_set.add_dependency(self.search_namespace)

    def _network_policies(self, *, selector: dict[str, str], zookeeper: PlatformChart) -> None:
        nodes = k8s.NetworkPolicyPeer(pod_selector=k8s.LabelSelector(match_labels=selector))
        clients = k8s.NetworkPolicyPeer(namespace_selector=k8s.LabelSelector(match_labels=CLIENT_NAMESPACE_LABEL))
        zookeeper_servers = k8s.NetworkPolicyPeer(
            namespace_selector=k8s.LabelSelector(match_labels={"kubernetes.io/metadata.name": zookeeper.NAMESPACE}),
            pod_selector=k8s.LabelSelector(match_labels=zookeeper.stateful_set.selector),
        )
        self.network_policy = k8s.KubeNetworkPolicy(
            self, "AllowSolr",
            metadata=k8s.ObjectMeta(name="search", namespace=self.NAMESPACE),
            spec=k8s.NetworkPolicySpec(
                pod_selector=k8s.LabelSelector(match_labels=selector),
                policy_types=["Ingress", "Egress"],
                ingress=[k8s.NetworkPolicyIngressRule(from_=[nodes, clients], ports=ports(PORT))],
                egress=[
                    k8s.NetworkPolicyEgressRule(to=[nodes], ports=ports(PORT)),
                    k8s.NetworkPolicyEgressRule(to=[zookeeper_servers], ports=ports(zookeeper.props.client_port)),
                ],
            ),
        )
        set_component(self.network_policy, "network-policy")
        self.network_policy.add_dependency(self.search_namespace.resource)
