"""The platform's backup target, and what a component's pod needs to write to it.

Two targets, one per kind of profile (:attr:`final_problem.profiles.Profile.backup_target`):

- ``bucket`` (EKS): the cluster stack's S3 bucket (:mod:`final_problem.stacks.backups`), reached
  at the regional endpoint with temporary credentials from EKS Pod Identity. The pod runs as
  the service account the stack associates with the bucket's role; EKS's pod identity webhook
  then adds to every container ``AWS_CONTAINER_CREDENTIALS_FULL_URI``,
  ``AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`` and the projected volume holding that token (a
  service account token for the audience ``pods.eks.amazonaws.com``): it is not the default
  service account token, whose automount stays off. Source: EKS user guide, "Understand how EKS
  Pod Identity works"; AWS SDKs and Tools reference guide, "Container credential provider".
- ``in-cluster`` (Pi): an S3-compatible server the platform runs, :class:`S3Server` (versitygw,
  POSIX backend on a volume; why versitygw: :mod:`final_problem.versions`), its root key pair
  generated in the cluster once. A client pod reads that pair through the API with a service
  account token projected into its backup container only, allowed by a Role to get that one
  Secret.

Either way the server admits only the pods labelled :data:`CLIENT_LABEL`, and each client's
egress is allowed to the target only (and, in-cluster, to the API server).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from final_problem import versions
from final_problem.constructs.generated_secrets import API_PORTS, GeneratedSecrets, SecretSpec, secret_env
from final_problem.constructs.labels import LabelSet, set_component
from final_problem.constructs.namespace import RestrictedNamespace, ports
from final_problem.constructs.quorum import ClaimSpec, volume_claim_template
from final_problem.constructs.security import Sizing, container_context, pod_context, raw_resources
from final_problem.errors import ConfigError
from final_problem.imports import int_or_string, k8s, quantity
from final_problem.objects import Group, ObjectChart
from final_problem.profiles import Profile

#: Namespace, Service, port and StatefulSet of the in-cluster S3 server.
NAMESPACE = "backups"
SERVICE = "s3"
PORT = 7070
NAME = "s3"
#: Secret (in :data:`NAMESPACE`) holding the server's root key pair.
ROOT_SECRET = "backup-target-root"
#: The path versitygw answers its health check on (``--health``).
HEALTH_PATH = "/health"
#: Pod label of every pod that writes backups: the S3 server admits these pods only.
CLIENT_LABEL = {"final-problem.io/backup-client": "true"}
#: The in-cluster endpoint.
ENDPOINT = f"http://{SERVICE}.{NAMESPACE}.svc.cluster.local:{PORT}"
#: The Alpine image declares no user; versitygw needs no privilege, any uid writes the volume
#: its fsGroup owns. 10001: outside the ranges images' own users take.
S3_UID = 10001
#: Where the backup container finds its projected token (in-cluster target).
TOKEN_DIR = "/var/run/secrets/backup"
#: The EKS Pod Identity agent's addresses: it listens on the node at 169.254.170.23 and
#: [fd00:ec2::23], port 80 (EKS user guide, "Set up the Amazon EKS Pod Identity Agent").
POD_IDENTITY_AGENT = ("169.254.170.23/32", "fd00:ec2::23/128")
POD_IDENTITY_PORT = 80
#: Requests and limits of the server. Measured with the versitygw binary of the tests
#: (``make s3-server``, the image's version) in a cgroup of 500m CPU and 512 MiB
#: (final_problem/local/limits.py): 30.5 MiB resident idle; 39.6 MiB at most while two writers
#: put 80 objects of 16 MiB (WAL segments), with HEADs, beside one 256 MiB upload (a base
#: backup), then its download and 20 reads: 1.3 GiB in 18 s, 8.5 CPU seconds (the 500m limit
#: only slows a base backup). Run again under these limits (500m, 128 MiB): 39.9 MiB peak
#: resident, no OOM kill, the page cache reclaimed at the limit. The request covers the peak
#: with half again.
S3_SIZING = Sizing(cpu_request_m=20, cpu_limit_m=500, memory_request_mib=64, memory_limit_mib=128)


@dataclass(frozen=True, kw_only=True)
class BackupAccess:
    """What a backup container and its pod need for the target (see :func:`backup_access`)."""

    #: Environment of the backup container (the agent's ``BACKUP_S3_*`` and credentials).
    env: list[Any]
    #: Mounts of the backup container, and the pod's volumes they name.
    volume_mounts: list[Any] = field(default_factory=list)
    volumes: list[Any] = field(default_factory=list)
    #: The pod's service account and labels.
    service_account: str = ""
    pod_labels: dict[str, str] = field(default_factory=dict)
    #: The objects added to the scope (the caller orders them after its namespace).
    objects: list[Any] = field(default_factory=list)


def backup_access(scope: ObjectChart | Group, *, namespace: str, service_account: str,
                  pod_selector: dict[str, str], profile: Profile, bucket: str, region: str, prefix: str,
                  endpoint: str = "", key_secret: str = "", create_service_account: bool = True) -> BackupAccess:
    """The target for the backup containers of one pod in ``namespace``: its environment,
    mounts and volumes, and, added to ``scope``, the pod's service account, its egress to the
    target and (in-cluster) the Role reading the server's root key pair.

    ``endpoint`` given: an external target, the key pair from the Secret ``key_secret``
    (keys ``access-key-id``, ``secret-access-key``) the user creates in ``namespace``.
    Otherwise the profile's target, where ``bucket`` and ``region`` apply in-cluster only (the
    EKS bucket and region are the stack's, in ``profile``).
    ``create_service_account`` false: ``service_account`` is one the pod already runs as (a mesh
    workload's), created elsewhere.
    """
    labels = {"app.kubernetes.io/component": "backup"}
    objects: list[Any] = []
    if create_service_account:
        objects.append(k8s.KubeServiceAccount(
            scope, f"BackupServiceAccount{service_account}",
            metadata=k8s.ObjectMeta(name=service_account, namespace=namespace, labels=labels),
            automount_service_account_token=False,
        ))
    egress: list[Any] = []
    mounts: list[Any] = []
    volumes: list[Any] = []
    if endpoint:
        env = [k8s.EnvVar(name="BACKUP_S3_ENDPOINT", value=endpoint),
               k8s.EnvVar(name="BACKUP_S3_BUCKET", value=bucket),
               k8s.EnvVar(name="BACKUP_S3_REGION", value=region),
               secret_env("AWS_ACCESS_KEY_ID", key_secret, "access-key-id"),
               secret_env("AWS_SECRET_ACCESS_KEY", key_secret, "secret-access-key")]
        url_port = _port(endpoint)
        # An external target may be anywhere: its port, any address.
        egress.append(k8s.NetworkPolicyEgressRule(ports=ports(url_port)))
    elif profile.backup_target == "bucket":
        env = [k8s.EnvVar(name="BACKUP_S3_ENDPOINT", value=profile.backup_endpoint),
               k8s.EnvVar(name="BACKUP_S3_BUCKET", value=profile.backup_bucket),
               k8s.EnvVar(name="BACKUP_S3_REGION", value=profile.backup_region)]
        # S3's regional endpoint over TLS (any address: S3's ranges are many and change), and
        # the Pod Identity agent on the node.
        egress.append(k8s.NetworkPolicyEgressRule(ports=ports(443)))
        egress.append(k8s.NetworkPolicyEgressRule(
            to=[k8s.NetworkPolicyPeer(ip_block=k8s.IpBlock(cidr=cidr)) for cidr in POD_IDENTITY_AGENT],
            ports=ports(POD_IDENTITY_PORT)))
    else:
        env = [k8s.EnvVar(name="BACKUP_S3_ENDPOINT", value=ENDPOINT),
               k8s.EnvVar(name="BACKUP_S3_BUCKET", value=bucket),
               k8s.EnvVar(name="BACKUP_S3_REGION", value=region),
               k8s.EnvVar(name="BACKUP_S3_KEY_PAIR_FROM", value=f"{NAMESPACE}/{ROOT_SECRET}"),
               k8s.EnvVar(name="BACKUP_S3_SA_DIR", value=TOKEN_DIR)]
        volumes.append(k8s.Volume(name="backup-token", projected=k8s.ProjectedVolumeSource(sources=[
            k8s.VolumeProjection(service_account_token=k8s.ServiceAccountTokenProjection(
                path="token", expiration_seconds=3600)),
            k8s.VolumeProjection(config_map=k8s.ConfigMapProjection(
                name="kube-root-ca.crt", items=[k8s.KeyToPath(key="ca.crt", path="ca.crt")])),
        ])))
        mounts.append(k8s.VolumeMount(name="backup-token", mount_path=TOKEN_DIR, read_only=True))
        egress.append(k8s.NetworkPolicyEgressRule(
            to=[k8s.NetworkPolicyPeer(
                namespace_selector=k8s.LabelSelector(match_labels={"kubernetes.io/metadata.name": NAMESPACE}),
                pod_selector=k8s.LabelSelector(match_labels=server_selector()))],
            ports=ports(PORT)))
        egress.append(k8s.NetworkPolicyEgressRule(ports=ports(*API_PORTS)))
        # The one Secret the pod's service account may read, in the server's namespace.
        role_name = f"{namespace}-{service_account}"
        role = k8s.KubeRole(
            scope, f"BackupRootReader{service_account}",
            metadata=k8s.ObjectMeta(name=role_name, namespace=NAMESPACE, labels=labels),
            rules=[k8s.PolicyRule(api_groups=[""], resources=["secrets"], resource_names=[ROOT_SECRET],
                                  verbs=["get"])],
        )
        binding = k8s.KubeRoleBinding(
            scope, f"BackupRootReaderBinding{service_account}",
            metadata=k8s.ObjectMeta(name=role_name, namespace=NAMESPACE, labels=labels),
            role_ref=k8s.RoleRef(api_group="rbac.authorization.k8s.io", kind="Role", name=role_name),
            subjects=[k8s.Subject(kind="ServiceAccount", name=service_account, namespace=namespace)],
        )
        binding.add_dependency(role)
        objects += [role, binding]
    env.append(k8s.EnvVar(name="BACKUP_S3_PREFIX", value=prefix))
    objects.append(k8s.KubeNetworkPolicy(
        scope, f"BackupEgress{service_account}",
        metadata=k8s.ObjectMeta(name=f"{service_account}-target", namespace=namespace,
                                labels={"app.kubernetes.io/component": "network-policy"}),
        spec=k8s.NetworkPolicySpec(pod_selector=k8s.LabelSelector(match_labels=pod_selector),
                                   policy_types=["Egress"], egress=egress),
    ))
    return BackupAccess(env=env, volume_mounts=mounts, volumes=volumes, service_account=service_account,
                        pod_labels=dict(CLIENT_LABEL), objects=objects)


def _port(endpoint: str) -> int:
    import urllib.parse

    url = urllib.parse.urlsplit(endpoint)
    return url.port or (443 if url.scheme == "https" else 80)


#: The chart (component) the S3 server is part of: its objects carry that chart's labels, so
#: ``final-problem plan`` counts them with it.
SERVER_CHART = "base"


def server_selector() -> dict[str, str]:
    """The S3 server's pod labels a client's egress selects."""
    return LabelSet(name=SERVER_CHART, instance=SERVER_CHART, version="").selector("s3-server")


class S3Server(Group):
    """versitygw in the :data:`NAMESPACE` namespace: one server, POSIX backend on a retained
    volume, root key pair generated once, admitted traffic from :data:`CLIENT_LABEL` pods only.

    Creates the namespace (Pod Security "restricted", default-deny), the generated Secret
    :data:`ROOT_SECRET`, a StatefulSet of one pod with a volume claim, probes on versitygw's
    health path, a Service, and the NetworkPolicy admitting the backup clients.
    Sources: versitygw README and ``versitygw --help`` (``--port``, ``--health``, ``posix``,
    ``ROOT_ACCESS_KEY_ID``/``ROOT_SECRET_ACCESS_KEY``).
    """

    def __init__(self, scope: ObjectChart, id: str, *, profile: Profile, storage_gib: int,
                 pss_version: str, label_set: LabelSet) -> None:
        super().__init__(scope, id)
        if label_set.selector("s3-server") != server_selector():
            raise ConfigError("S3Server.label_set", label_set.name, f"the S3 server belongs to the {SERVER_CHART} "
                              "chart (clients select its pods by that chart's labels)",
                              f"create it in the {SERVER_CHART} chart, with its label set")
        self.namespace = RestrictedNamespace(self, "Namespace", name=NAMESPACE, pss_version=pss_version)
        self.secrets = GeneratedSecrets(
            self, "Secrets", namespace=NAMESPACE, labels=label_set,
            # URL-safe base64 values: no '/' to break the SigV4 Credential field.
            secrets=[SecretSpec(name=ROOT_SECRET, keys=("access-key-id", "secret-access-key"))],
        )
        self.secrets.add_dependency(self.namespace)
        selector = server_selector()
        data_dir = "/data"
        server = k8s.Container(
            name="versitygw",
            image=versions.VERSITYGW_IMAGE,
            image_pull_policy="IfNotPresent",
            args=["--port", f":{PORT}", "--health", HEALTH_PATH, "--quiet", "posix", f"{data_dir}/buckets"],
            env=[secret_env("ROOT_ACCESS_KEY_ID", ROOT_SECRET, "access-key-id"),
                 secret_env("ROOT_SECRET_ACCESS_KEY", ROOT_SECRET, "secret-access-key")],
            ports=[k8s.ContainerPort(name="s3", container_port=PORT)],
            security_context=container_context(uid=S3_UID),
            resources=raw_resources(S3_SIZING),
            readiness_probe=k8s.Probe(http_get=k8s.HttpGetAction(path=HEALTH_PATH, port=int_or_string("s3")),
                                      period_seconds=10, timeout_seconds=5, failure_threshold=3),
            liveness_probe=k8s.Probe(http_get=k8s.HttpGetAction(path=HEALTH_PATH, port=int_or_string("s3")),
                                     initial_delay_seconds=10, period_seconds=20, timeout_seconds=5,
                                     failure_threshold=6),
            volume_mounts=[k8s.VolumeMount(name="data", mount_path=data_dir),
                           k8s.VolumeMount(name="tmp", mount_path="/tmp")],
        )
        # The posix backend serves directories under the volume; it creates none itself.
        init = k8s.Container(
            name="buckets-dir",
            image=versions.VERSITYGW_IMAGE,
            image_pull_policy="IfNotPresent",
            command=["mkdir", "-p", f"{data_dir}/buckets"],
            security_context=container_context(uid=S3_UID),
            resources=raw_resources(Sizing(cpu_request_m=10, cpu_limit_m=100, memory_request_mib=8,
                                           memory_limit_mib=16)),
            volume_mounts=[k8s.VolumeMount(name="data", mount_path=data_dir)],
        )
        pod_labels = {**label_set.chart_labels(), **selector}
        self.stateful_set = k8s.KubeStatefulSet(
            self, "Server",
            metadata=k8s.ObjectMeta(name=NAME, namespace=NAMESPACE, labels=pod_labels, annotations={
                "checkov.io/skip1": "CKV_K8S_35=the root key pair is read by versitygw from its environment; the "
                                    "values come from secretKeyRefs",
                "checkov.io/skip2": "CKV_K8S_43=versitygw's tag is pinned in final_problem/versions.py",
            }),
            spec=k8s.StatefulSetSpec(
                replicas=1,
                service_name=SERVICE,
                selector=k8s.LabelSelector(match_labels=selector),
                update_strategy=k8s.StatefulSetUpdateStrategy(type="RollingUpdate"),
                persistent_volume_claim_retention_policy=k8s.StatefulSetPersistentVolumeClaimRetentionPolicy(
                    when_deleted="Retain", when_scaled="Retain"),
                volume_claim_templates=[volume_claim_template(ClaimSpec(name="data", size_gib=storage_gib),
                                                              profile=profile)],
                template=k8s.PodTemplateSpec(
                    metadata=k8s.ObjectMeta(labels=pod_labels),
                    spec=k8s.PodSpec(
                        automount_service_account_token=False,
                        enable_service_links=False,
                        security_context=pod_context(uid=S3_UID),
                        init_containers=[init],
                        containers=[server],
                        volumes=[k8s.Volume(name="tmp", empty_dir=k8s.EmptyDirVolumeSource(
                            size_limit=quantity("64Mi")))],
                    ),
                ),
            ),
        )
        set_component(self.stateful_set, "s3-server")
        self.service = k8s.KubeService(
            self, "Service",
            metadata=k8s.ObjectMeta(name=SERVICE, namespace=NAMESPACE, labels=pod_labels),
            spec=k8s.ServiceSpec(selector=selector, ports=[
                k8s.ServicePort(name="s3", port=PORT, target_port=int_or_string("s3"))]),
        )
        self.ingress = k8s.KubeNetworkPolicy(
            self, "AllowBackupClients",
            metadata=k8s.ObjectMeta(name="s3-from-backup-clients", namespace=NAMESPACE,
                                    labels={"app.kubernetes.io/component": "network-policy"}),
            spec=k8s.NetworkPolicySpec(
                pod_selector=k8s.LabelSelector(match_labels=selector),
                policy_types=["Ingress"],
                ingress=[k8s.NetworkPolicyIngressRule(
                    from_=[k8s.NetworkPolicyPeer(namespace_selector=k8s.LabelSelector(),
                                                 pod_selector=k8s.LabelSelector(match_labels=CLIENT_LABEL))],
                    ports=ports(PORT))],
            ),
        )
        for child in (self.stateful_set, self.service, self.ingress):
            child.add_dependency(self.namespace.resource)
        self.stateful_set.add_dependency(self.secrets)
