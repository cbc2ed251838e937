"""Consul servers: the service registry and mesh control plane, secured from the first start.

Creates, in the ``consul`` namespace (Pod Security "restricted", default-deny):

- Job ``consul-tls-init-<hash>``: the Consul image makes a gossip key, a CA and a server
  certificate (``consul keygen``, ``consul tls ca create``, ``consul tls cert create
  -server``) in a memory volume; a Python step stores them as Secrets ``consul-gossip``
  and ``consul-tls`` unless they exist (the CA key is discarded) and publishes the CA
  certificate as ConfigMap ``consul-ca``, readable by every service account;
- StatefulSet ``consul-server`` (QuorumStatefulSet: PDB, one per node, zone spread, raft
  data on retained volumes) of ``hashicorp/consul`` as uid 100 with
  ``CONSUL_DISABLE_PERM_MGMT``; configuration rendered by
  :func:`final_problem.renderers.consul.server_config` (``bootstrap_expect`` = replicas,
  TLS verify incoming/outgoing/server hostname, gossip encryption verified both ways, ACLs
  default deny, Prometheus metrics);
- Job ``consul-acl-init-<hash>``: bootstraps ACLs once and keeps the management token in
  Secret ``consul-bootstrap-token``, sets the servers' agent token, creates the Kubernetes
  auth method (reviewer token: a service-account-token Secret of ``consul-auth-method``,
  bound to ``system:auth-delegator``) and its binding rules, applies the intentions;
- headless Service ``consul-server`` and Service ``consul-ui`` (HTTPS 443 → 8501);
- NetworkPolicies: server ports between servers, HTTPS and gRPC from mesh pods, the
  Jobs' egress;
- with ``backups`` on (the default): CronJob ``consul-snapshot`` every
  ``backup_interval_minutes``: ``consul snapshot save`` (a point-in-time Raft snapshot the
  command verifies after saving) with the token of Secret ``consul-snapshot-token`` (policy
  ``acl = "write"``, the least a snapshot needs: :data:`final_problem.clients.consul_init.SNAPSHOT_RULES`),
  made by the ACL Job and read by these pods alone, then the upload
  (:mod:`final_problem.renderers.snapshot_agent`) with its SHA-256 and a listing. The target
  is the profile's (:func:`final_problem.constructs.backup_target.backup_access`; EKS: the
  cluster stack's bucket, the pods running as service account :data:`BACKUP_SERVICE_ACCOUNT`,
  associated with its role through EKS Pod Identity; Pis: the in-cluster S3 server, its key
  pair read with a token projected into the upload container), or ``consul.backup_endpoint``
  with the key pair of Secret ``consul-backup-target``. The pods may reach the servers' HTTPS
  port and the target (and the API server, or the Pod Identity agent) only.

The image is BUSL-1.1 (HashiCorp's Business Source License) since Consul 1.17: the
platform runs it unmodified and builds nothing from its source.
Sources: Consul docs, "Consul on Kubernetes" architecture, "Deployment guide", "Gossip
encryption", "Enable TLS", "Bootstrap the ACL system", "Kubernetes auth method"; the
official image's notes (uid 100, ``CONSUL_DISABLE_PERM_MGMT``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from constructs import Construct

from final_problem import versions
from final_problem.clients import consul_init
from final_problem.components import PlatformChart, register
from final_problem.config import Settings
from final_problem.constructs import secret_generator
from final_problem.constructs.mesh import (
    CONSUL_GRPC_PORT,
    CONSUL_HTTPS_PORT,
    MESH_LABEL,
    intentions_of,
    services_of,
)
from final_problem.constructs.namespace import MONITORING_NAMESPACE_LABEL, RestrictedNamespace, ports
from final_problem.constructs.quorum import ClaimSpec, QuorumStatefulSet
from final_problem.constructs.security import Sizing, container_context, pod_context, raw_resources
from final_problem.imports import int_or_string, k8s, quantity
from final_problem.profiles import ENVOY_MIN_ARM64_VA_BITS, Profile
from final_problem.changes import nothing, rolling, volume_size
from final_problem.scaling import Exec, Refused, Scale, Step, WaitReady, membership, membership_change
from final_problem.settings import per_profile, setting
from final_problem.constructs.backup_target import backup_access
from final_problem.constructs.snapshot_backup import (
    AGENT_FILE as BACKUP_AGENT_FILE, SCRIPTS_DIR, SnapshotBackupSettings, scripts as backup_scripts, snapshots_on,
)
from final_problem.renderers import program
from final_problem.renderers.consul import (
    AUTH_METHOD,
    AUTOPILOT_INTERVAL_S,
    DATACENTER,
    PROMOTION_S,
    SERVER_STABILIZATION_S,
    ServerConfigOptions,
    ServerPorts,
    auth_method,
    binding_rules,
    check_mesh,
    intention_entries,
    membership_script,
    server_config,
    server_name,
)

#: The image's consul user and group (hashicorp/consul Dockerfile: adduser -u 100 -G consul, gid 1000).
CONSUL_UID = 100
CONSUL_GID = 1000
RUNNER_UID = 65534
CONFIG_DIR = "/consul/config"
TLS_DIR = "/consul/tls"
API_PORTS = (443, 6443)
#: Labels of the snapshot CronJob's pods (the servers admit them on HTTPS).
SNAPSHOT_POD_LABELS = {"app.kubernetes.io/component": "backup", "final-problem.io/job": "consul-snapshot"}
#: The service account the snapshot CronJob's pods run as: on EKS the cluster stack associates it
#: with the backup bucket's role (final_problem/stacks/backups.py); on the Pis a Role lets it read
#: the in-cluster S3 server's key pair. It holds no right in this namespace.
BACKUP_SERVICE_ACCOUNT = "consul-backup"
#: Secret (keys ``access-key-id``, ``secret-access-key``) the user creates for ``consul.backup_endpoint``.
BACKUP_TARGET_SECRET = "consul-backup-target"
#: A restarted server is taken as back only once autopilot can have promoted it to a voter:
#: stable for server_stabilization_time, then the next reconcile, plus one probe period
#: (10 s) for the time between its rejoin and the first passing probe. A rolling update
#: stops the next server only after this, so at most one server is ever out of the voters.
MIN_READY_S = SERVER_STABILIZATION_S + AUTOPILOT_INTERVAL_S + 10


@dataclass(frozen=True, kw_only=True)
class ConsulProps(SnapshotBackupSettings):
    """What a user can choose about Consul (section ``consul``); defaults per profile."""

    replicas: int = setting(
        3, choices=(3, 5, 7),
        doc="Servers (`bootstrap_expect`): odd, as Raft's quorum is floor(n/2)+1, so an even count tolerates "
            "no more failures than the odd one below it (Consul docs, \"Deployment guide\": 3 or 5). A live change: "
            "`final-problem scale consul.replicas=N --apply`, then deploy (servers join and leave Raft one at a time).",
        change=membership_change(
            "consul", "replicas",
            "the Raft peer set changes: servers must join one at a time, each a voter before the next, and leave one at a "
            "time (the removed ones would otherwise stop together, podManagementPolicy Parallel)"),
    )
    storage_gib: int = setting(per_profile(eks=10, pi=1), minimum=1, maximum=16_384,
                               doc="Raft data volume of each server.",
        change=volume_size("each server's Raft volume"),
    )
    memory_mib: int = setting(per_profile(eks=512, pi=128), minimum=128, maximum=65_536,
                              doc="Memory request and limit of each server.",
        change=rolling("servers restart one at a time, each leaving and rejoining (leave_on_terminate, PDB maxUnavailable 1)"),
    )
    ca_days: int = setting(
        3650, minimum=365, maximum=10_950, doc="Lifetime of the CA certificate (`consul tls ca create -days`).",
        change=nothing("the TLS Job creates the CA once and never replaces it: the deployed CA keeps its lifetime"),
    )
    cert_days: int = setting(
        825, minimum=30, maximum=3650,
        doc="Lifetime of the server certificate; at most ca_days (825 days, the longest public browsers accept).",
        change=nothing("the TLS Job creates the certificate once and never replaces it: the deployed one keeps its lifetime"),
    )

    @property
    def sizing(self) -> Sizing:
        cpu = (100, 500) if self.profile.small else (200, 1000)
        return Sizing(cpu_request_m=cpu[0], cpu_limit_m=cpu[1],
                      memory_request_mib=self.memory_mib, memory_limit_mib=self.memory_mib)

    # The backup settings are SnapshotBackupSettings'; Consul's snapshots run as a CronJob, not
    # in the servers' pods, so a change of them restarts nothing, and the interval is a schedule.
    setting_overrides = {
        "backup_endpoint": {"change": nothing(
            "the snapshot CronJob's target (the profile's, or this one with the Secret's key pair); the servers "
            "keep running; snapshots start over at the new target (keep the old one until the new one holds a "
            "snapshot)")},
        "backup_region": {"change": nothing("the snapshot CronJob's next run signs with it")},
        "backup_interval_minutes": {
            "doc": "Minutes between snapshots, the schedule of CronJob `consul-snapshot`: a divisor of an hour, "
                   "whole hours dividing a day, or whole days (crontab steps restart at each hour, day and month). "
                   "The most a restore loses (writes after the newest snapshot are not in it). Default 60: hourly.",
            # Day steps restart on each month's 1st (crontab(5)): runs come at most this far apart
            # (closer at a month's end); at most 28 days, the shortest month, as cron_schedule allows.
            "maximum": 60 * 24 * 28,
            "change": nothing("the snapshot CronJob's schedule"),
        },
        "backup_retention_days": {"change": nothing("the snapshot CronJob's next run prunes with it")},
    }

    def check(self) -> None:
        self.check_backup()
        if cron_schedule(self.backup_interval_minutes) is None:
            raise self.error("backup_interval_minutes", "is not a schedule a CronJob can keep (a divisor of an hour, "
                             "whole hours dividing a day, or whole days)", "set consul.backup_interval_minutes=60")
        if self.cert_days > self.ca_days:
            raise self.error("cert_days", f"outlives the CA ({self.ca_days} days)", f"set consul.cert_days={min(825, self.ca_days)}")


def cron_schedule(minutes: int) -> str | None:
    """A CronJob schedule every ``minutes`` (crontab(5) steps restart at each hour, day and
    month, so only a divisor of the next unit keeps an even interval); None when there is none."""
    if minutes < 60 and 60 % minutes == 0:
        return f"*/{minutes} * * * *"
    if minutes % 60 == 0 and minutes < 1440 and 24 % (minutes // 60) == 0:
        return "0 * * * *" if minutes == 60 else f"0 */{minutes // 60} * * *"
    if minutes % 1440 == 0 and minutes // 1440 <= 28:
        return "0 0 * * *" if minutes == 1440 else f"0 0 */{minutes // 1440} * *"
    return None


def _meta(name: str, ns: str, component: str, **extra: object) -> k8s.ObjectMeta:
    return k8s.ObjectMeta(name=name, namespace=ns, labels={"app.kubernetes.io/component": component}, **extra)  # type: ignore[arg-type]


@register
class ConsulChart(PlatformChart):
    """Consul servers in the ``consul`` namespace, TLS, gossip encryption and ACLs on."""

    component = "consul"
    construct_id = "Consul"
    requires = ("base",)
    version = versions.CONSUL_VERSION
    # Supported upgrade paths of the images its pods run (final_problem/versions.py).
    upgrade_paths = versions.upgrade_paths(versions.CONSUL_IMAGE, versions.PYTHON_IMAGE)
    settings_class = ConsulProps
    # Envoy's allocator (tcmalloc) aborts below 47 bits: final_problem.profiles, pi/README.md.
    min_arm64_va_bits = ENVOY_MIN_ARM64_VA_BITS
    min_arm64_va_bits_reason = "its mesh sidecars embed Envoy"

    NAMESPACE = "consul"
    SERVER = "consul-server"
    PORTS = ServerPorts()

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
        p: ConsulProps = self.props
        ns = self.NAMESPACE
        enabled = tuple(settings.components)
        #: The mesh: services of the enabled components and who may call whom.
        self.mesh_services = services_of(enabled)
        self.intentions = intentions_of(self.mesh_services)
        check_mesh(self.mesh_services, self.intentions)
        #: Whether CronJob ``consul-snapshot`` runs (and the ACL Job makes its token): while the
        #: cluster setting ``backups`` is on.
        self.snapshots = snapshots_on(settings, p)
        #: HTTPS API and UI inside the cluster; gRPC for dataplanes on :data:`CONSUL_GRPC_PORT`.
        self.address = f"https://{self.SERVER}.{ns}.svc:{self.PORTS.https}"

        self.consul_namespace = RestrictedNamespace(self, "Namespace", name=ns, pss_version=f"v{settings.kubernetes_version}")
        members = [f"{self.SERVER}-{i}.{self.SERVER}.{ns}.svc" for i in range(p.replicas)]
        self.config_options = ServerConfigOptions(replicas=p.replicas, join=tuple(members), tls_dir=TLS_DIR,
                                                  ports=self.PORTS)
        self.server_config = server_config(self.config_options)
        config_text = json.dumps(self.server_config, indent=2, sort_keys=True) + "\n"
        self.config_map = k8s.KubeConfigMap(self, "Config", metadata=_meta("consul-config", ns, "config"),
                                            # membership.sh: the steps of a scale, which the
                                            # agent skips (with a warning) as neither .json nor .hcl.
                                            data={"server.json": config_text,
                                                  "membership.sh": membership_script(self.config_options)})
        scripts = {
            "consul_init.py": Path(consul_init.__file__).read_text(),
            "secret_generator.py": Path(secret_generator.__file__).read_text(),
        }
        self.scripts = k8s.KubeConfigMap(self, "Scripts", metadata=_meta("consul-init", ns, "config"), data=scripts)
        self._rbac(ns)
        self._tls_job(ns, scripts, p)
        selector = self.label_set.selector("server")
        self._services(ns, selector)
        self._servers(ns, selector, profile, config_text)
        self._acl_job(ns, members, scripts)
        self.snapshot_job = self._snapshots(ns, selector, p, profile) if self.snapshots else None
        self._network_policies(ns, selector)
        self.put_first(self.consul_namespace)

    # -- RBAC ---------------------------------------------------------------------------

    def _rbac(self, ns: str) -> None:
        sa = lambda id, name: k8s.KubeServiceAccount(  # noqa: E731
            self, id, metadata=_meta(name, ns, "rbac"), automount_service_account_token=False)
        self.init_account = sa("InitAccount", "consul-init")
        self.reviewer_account = sa("ReviewerAccount", "consul-auth-method")
        # A long-lived token for the auth method's TokenReview calls, filled in by
        # Kubernetes (no value in the manifest).
        self.reviewer_token = k8s.KubeSecret(
            self, "ReviewerToken",
            metadata=_meta("consul-auth-method-token", ns, "rbac",
                           annotations={"kubernetes.io/service-account.name": "consul-auth-method"}),
            type="kubernetes.io/service-account-token",
        )
        self.reviewer_binding = k8s.KubeClusterRoleBinding(
            self, "ReviewerBinding",
            metadata=k8s.ObjectMeta(name="consul-auth-method", labels={"app.kubernetes.io/component": "rbac"}),
            role_ref=k8s.RoleRef(api_group="rbac.authorization.k8s.io", kind="ClusterRole", name="system:auth-delegator"),
            subjects=[k8s.Subject(kind="ServiceAccount", name="consul-auth-method", namespace=ns)],
        )
        own = ["consul-tls", "consul-bootstrap-token", "consul-agent-token", "consul-metrics-token",
               "consul-auth-method-token", *(["consul-snapshot-token"] if self.snapshots else [])]
        self.init_role = k8s.KubeRole(
            self, "InitRole", metadata=_meta("consul-init", ns, "rbac"),
            rules=[
                # create cannot be limited by name (Kubernetes docs, "Using RBAC Authorization").
                k8s.PolicyRule(api_groups=[""], resources=["secrets", "configmaps"], verbs=["create"]),
                k8s.PolicyRule(api_groups=[""], resources=["secrets"], resource_names=own, verbs=["get"]),
                k8s.PolicyRule(api_groups=[""], resources=["configmaps"], resource_names=["consul-ca"],
                               verbs=["get", "update"]),
            ],
        )
        self.init_binding = k8s.KubeRoleBinding(
            self, "InitBinding", metadata=_meta("consul-init", ns, "rbac"),
            role_ref=k8s.RoleRef(api_group="rbac.authorization.k8s.io", kind="Role", name="consul-init"),
            subjects=[k8s.Subject(kind="ServiceAccount", name="consul-init", namespace=ns)],
        )
        # The CA certificate is public: every service account may read it, as every pod
        # may read kube-root-ca.crt.
        self.ca_reader = k8s.KubeRole(
            self, "CaReaderRole", metadata=_meta("consul-ca-reader", ns, "rbac"),
            rules=[k8s.PolicyRule(api_groups=[""], resources=["configmaps"], resource_names=["consul-ca"], verbs=["get"])],
        )
        self.ca_reader_binding = k8s.KubeRoleBinding(
            self, "CaReaderBinding", metadata=_meta("consul-ca-reader", ns, "rbac"),
            role_ref=k8s.RoleRef(api_group="rbac.authorization.k8s.io", kind="Role", name="consul-ca-reader"),
            subjects=[k8s.Subject(kind="Group", name="system:serviceaccounts", api_group="rbac.authorization.k8s.io")],
        )

    # -- Jobs ---------------------------------------------------------------------------

    def _job(self, id: str, ns: str, name: str, *, init: list[k8s.Container], main: k8s.Container,
             volumes: list[k8s.Volume]) -> k8s.KubeJob:
        job_labels = {**self.label_set.chart_labels(), "app.kubernetes.io/component": "init",
                      "final-problem.io/job": name}
        return k8s.KubeJob(
            self, id,
            metadata=_meta(name, ns, "init", annotations={
                "checkov.io/skip1": "CKV_K8S_38=the init Jobs call the Kubernetes API with this token"}),
            spec=k8s.JobSpec(
                backoff_limit=20,
                active_deadline_seconds=1800,
                ttl_seconds_after_finished=24 * 3600,
                template=k8s.PodTemplateSpec(
                    metadata=k8s.ObjectMeta(labels=job_labels),
                    spec=k8s.PodSpec(
                        restart_policy="OnFailure",
                        service_account_name="consul-init",
                        automount_service_account_token=True,
                        enable_service_links=False,
                        security_context=pod_context(uid=RUNNER_UID),
                        init_containers=init or None,
                        containers=[main],
                        volumes=volumes,
                    ),
                ),
            ),
        )

    def _python(self, name: str, args: list[str], env: list[k8s.EnvVar], mounts: list[k8s.VolumeMount]) -> k8s.Container:
        return k8s.Container(
            name=name,
            image=versions.PYTHON_IMAGE,
            image_pull_policy="IfNotPresent",
            command=["python3", "/opt/consul-init/consul_init.py", *args],
            env=[*env, k8s.EnvVar(name="PYTHONDONTWRITEBYTECODE", value="1")],
            volume_mounts=[k8s.VolumeMount(name="scripts", mount_path="/opt/consul-init", read_only=True), *mounts],
            security_context=container_context(uid=RUNNER_UID),
            resources=raw_resources(Sizing(cpu_request_m=10, cpu_limit_m=200, memory_request_mib=32, memory_limit_mib=64)),
        )

    @staticmethod
    def _digest(*parts: object) -> str:
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:8]

    def _tls_job(self, ns: str, scripts: dict[str, str], p: ConsulProps) -> None:
        sans = [f"{self.SERVER}.{ns}.svc", f"*.{self.SERVER}.{ns}.svc", f"{self.SERVER}.{ns}.svc.cluster.local",
                "consul-ui." + ns + ".svc", "localhost"]
        generate = " && ".join([
            "cd /work",
            "consul keygen > gossip.key",
            f"consul tls ca create -days={p.ca_days} -domain=consul",
            "consul tls cert create -server -dc=" + DATACENTER + f" -days={p.cert_days} -additional-ipaddress=127.0.0.1 "
            + " ".join(f"-additional-dnsname='{s}'" for s in sans),
            # The CA key never leaves this memory volume.
            "rm -f consul-agent-ca-key.pem",
        ])
        work = k8s.VolumeMount(name="work", mount_path="/work")
        generator = k8s.Container(
            name="generate",
            image=versions.CONSUL_IMAGE,
            image_pull_policy="IfNotPresent",
            command=["sh", "-ec", generate],
            volume_mounts=[work],
            security_context=container_context(uid=RUNNER_UID),
            resources=raw_resources(Sizing(cpu_request_m=10, cpu_limit_m=500, memory_request_mib=32, memory_limit_mib=128)),
        )
        store = self._python("store", ["tls", "/work"], [], [work])
        name = f"consul-tls-init-{self._digest(generate, scripts, versions.CONSUL_IMAGE, versions.PYTHON_IMAGE)}"
        self.tls_job = self._job("TlsJob", ns, name, init=[generator], main=store, volumes=[
            k8s.Volume(name="scripts", config_map=k8s.ConfigMapVolumeSource(name="consul-init")),
            k8s.Volume(name="work", empty_dir=k8s.EmptyDirVolumeSource(medium="Memory", size_limit=quantity("4Mi"))),
        ])
        self.tls_job.add_dependency(self.init_binding, self.scripts)
        #: SANs on the server certificate (besides server.<dc>.consul).
        self.certificate_names = sans

    def _acl_job(self, ns: str, members: list[str], scripts: dict[str, str]) -> None:
        spec = {
            "address": self.address,
            "ca_file": f"{TLS_DIR}/ca.crt",
            "servers": [f"https://{m}:{self.PORTS.https}" for m in members],
            "reviewer_secret": "consul-auth-method-token",
            "auth_method": auth_method(kubernetes_host="https://kubernetes.default.svc", ca_cert="", reviewer_jwt=""),
            "binding_rules": binding_rules(),
            "intentions": intention_entries(self.intentions),
            # The snapshot CronJob's token (consul_init.snapshot_token), only with snapshots on.
            **({"snapshot": True} if self.snapshots else {}),
        }
        spec_json = json.dumps(spec, sort_keys=True)
        main = self._python("acl", ["acl"], [k8s.EnvVar(name="CONSUL_INIT_SPEC", value=spec_json)],
                            [k8s.VolumeMount(name="tls", mount_path=TLS_DIR, read_only=True)])
        name = f"consul-acl-init-{self._digest(spec, scripts, versions.PYTHON_IMAGE)}"
        self.acl_job = self._job("AclJob", ns, name, init=[], main=main, volumes=[
            k8s.Volume(name="scripts", config_map=k8s.ConfigMapVolumeSource(name="consul-init")),
            k8s.Volume(name="tls", secret=k8s.SecretVolumeSource(
                secret_name="consul-tls", items=[k8s.KeyToPath(key="ca.crt", path="ca.crt")])),
        ])
        self.acl_job.add_dependency(self.init_binding, self.scripts, self.servers.resource)
        self.acl_spec = spec

    # -- servers ------------------------------------------------------------------------

    def _services(self, ns: str, selector: dict[str, str]) -> None:
        q = self.PORTS
        server_ports = [
            k8s.ServicePort(name="rpc", port=q.rpc, target_port=int_or_string(q.rpc)),
            k8s.ServicePort(name="serf-tcp", port=q.serf_lan, target_port=int_or_string(q.serf_lan)),
            k8s.ServicePort(name="serf-udp", port=q.serf_lan, protocol="UDP", target_port=int_or_string(q.serf_lan)),
            k8s.ServicePort(name="https", port=q.https, target_port=int_or_string(q.https)),
            k8s.ServicePort(name="grpc-tls", port=q.grpc_tls, target_port=int_or_string(q.grpc_tls)),
        ]
        self.headless = k8s.KubeService(
            self, "Headless", metadata=_meta(self.SERVER, ns, "server"),
            spec=k8s.ServiceSpec(cluster_ip="None", publish_not_ready_addresses=True, selector=selector,
                                 ports=server_ports),
        )
        self.ui = k8s.KubeService(
            self, "Ui", metadata=_meta("consul-ui", ns, "server"),
            spec=k8s.ServiceSpec(selector=selector, ports=[
                k8s.ServicePort(name="https", port=443, target_port=int_or_string(q.https))]),
        )

    def _servers(self, ns: str, selector: dict[str, str], profile: Profile, config_text: str) -> None:
        p, q = self.props, self.PORTS
        field = lambda path: k8s.EnvVarSource(field_ref=k8s.ObjectFieldSelector(field_path=path))  # noqa: E731
        api = (f"curl -sf --max-time 4 --cacert {TLS_DIR}/ca.crt --resolve {server_name()}:{q.https}:127.0.0.1 "
               f"https://{server_name()}:{q.https}/v1/status")
        ready = (
            # Ready only when this server knows a leader and is in the Raft configuration
            # under this pod's address (a replacement pod rejoins under a new IP). Both
            # endpoints need no ACL token (Consul docs, "Status HTTP API"). /status/peers
            # lists non-voters too: minReadySeconds covers autopilot's promotion.
            f"{api}/leader | grep -q ':{q.rpc}' && "
            f"{api}/peers | grep -qF \"\\\"$POD_IP:{q.rpc}\\\"\""
        )
        container = k8s.Container(
            name="consul",
            image=versions.CONSUL_IMAGE,
            image_pull_policy="IfNotPresent",
            # The image's entrypoint would chown and step down with su-exec, which only
            # root can; the agent is started directly as uid 100.
            command=["consul", "agent", f"-config-dir={CONFIG_DIR}", "-advertise=$(POD_IP)",
                     "-encrypt=$(CONSUL_GOSSIP_KEY)", "-node=$(POD_NAME)"],
            env=[
                k8s.EnvVar(name="POD_IP", value_from=field("status.podIP")),
                k8s.EnvVar(name="POD_NAME", value_from=field("metadata.name")),
                k8s.EnvVar(name="CONSUL_DISABLE_PERM_MGMT", value="true"),
                k8s.EnvVar(name="CONSUL_GOSSIP_KEY", value_from=k8s.EnvVarSource(
                    secret_key_ref=k8s.SecretKeySelector(name="consul-gossip", key="key"))),
            ],
            ports=[
                k8s.ContainerPort(name="rpc", container_port=q.rpc),
                k8s.ContainerPort(name="serf-tcp", container_port=q.serf_lan),
                k8s.ContainerPort(name="serf-udp", container_port=q.serf_lan, protocol="UDP"),
                k8s.ContainerPort(name="https", container_port=q.https),
                k8s.ContainerPort(name="grpc-tls", container_port=q.grpc_tls),
            ],
            volume_mounts=[
                k8s.VolumeMount(name="data", mount_path="/consul/data"),
                k8s.VolumeMount(name="config", mount_path=CONFIG_DIR, read_only=True),
                k8s.VolumeMount(name="tls", mount_path=TLS_DIR, read_only=True),
                k8s.VolumeMount(name="tmp", mount_path="/tmp"),
            ],
            security_context=container_context(uid=CONSUL_UID, gid=CONSUL_GID),
            resources=raw_resources(p.sizing),
            readiness_probe=k8s.Probe(exec=k8s.ExecAction(command=["sh", "-ec", ready]),
                                      period_seconds=10, timeout_seconds=5, failure_threshold=3),
            # Alive while the gossip port accepts: a server without a leader is not restarted.
            liveness_probe=k8s.Probe(tcp_socket=k8s.TcpSocketAction(port=int_or_string(q.serf_lan)),
                                     initial_delay_seconds=30, period_seconds=10, failure_threshold=6),
        )
        self.servers = QuorumStatefulSet(
            self, "Server",
            name=self.SERVER, namespace=ns, labels=self.label_set, component="server",
            replicas=p.replicas, service_name=self.SERVER, profile=profile,
            uid=CONSUL_UID, gid=CONSUL_GID, containers=[container],
            volumes=[
                k8s.Volume(name="config", config_map=k8s.ConfigMapVolumeSource(name="consul-config")),
                k8s.Volume(name="tls", secret=k8s.SecretVolumeSource(secret_name="consul-tls", items=[
                    k8s.KeyToPath(key=k, path=k) for k in ("ca.crt", "tls.crt", "tls.key")])),
                k8s.Volume(name="tmp", empty_dir=k8s.EmptyDirVolumeSource(size_limit=quantity("64Mi"))),
            ],
            claims=[ClaimSpec(name="data", size_gib=p.storage_gib)],
            pod_annotations={
                "final-problem.io/config-hash": hashlib.sha256(config_text.encode()).hexdigest()[:16],
                "prometheus.io/scrape": "true", "prometheus.io/scheme": "https",
                "prometheus.io/port": str(q.https), "prometheus.io/path": "/v1/agent/metrics?format=prometheus",
            },
            # Consul's graceful leave is quick; Raft keeps the data on the volume.
            termination_grace_seconds=30,
            min_ready_seconds=MIN_READY_S,
        )
        self.servers.resource.metadata.add_annotation(
            "checkov.io/skip1", "CKV_K8S_40=the official consul image runs as its own uid 100")
        self.servers.resource.metadata.add_annotation(
            "checkov.io/skip2", "CKV_K8S_35=consul reads the gossip key from its -encrypt flag; the value comes from a secretKeyRef")
        self.servers.resource.add_dependency(self.tls_job)

    def _network_policies(self, ns: str, selector: dict[str, str]) -> None:
        q = self.PORTS
        servers = k8s.NetworkPolicyPeer(pod_selector=k8s.LabelSelector(match_labels=selector))
        mesh = k8s.NetworkPolicyPeer(namespace_selector=k8s.LabelSelector(),
                                     pod_selector=k8s.LabelSelector(match_labels=MESH_LABEL))
        jobs = k8s.NetworkPolicyPeer(pod_selector=k8s.LabelSelector(
            match_labels={"app.kubernetes.io/component": "init"}))
        snapshots = [k8s.NetworkPolicyPeer(pod_selector=k8s.LabelSelector(match_labels=SNAPSHOT_POD_LABELS))
                     ] if self.snapshot_job is not None else []
        gossip = ports(q.rpc, q.serf_lan) + ports(q.serf_lan, protocol="UDP")
        self.server_policy = k8s.KubeNetworkPolicy(
            self, "ServerPolicy", metadata=_meta("consul-server", ns, "network-policy"),
            spec=k8s.NetworkPolicySpec(
                pod_selector=k8s.LabelSelector(match_labels=selector),
                policy_types=["Ingress", "Egress"],
                ingress=[
                    k8s.NetworkPolicyIngressRule(from_=[servers], ports=gossip),
                    k8s.NetworkPolicyIngressRule(from_=[servers, mesh, jobs], ports=ports(q.https, q.grpc_tls)),
                    *([k8s.NetworkPolicyIngressRule(from_=snapshots, ports=ports(q.https))] if snapshots else []),
                    k8s.NetworkPolicyIngressRule(
                        from_=[k8s.NetworkPolicyPeer(namespace_selector=k8s.LabelSelector(
                            match_labels=MONITORING_NAMESPACE_LABEL))],
                        ports=ports(q.https)),
                ],
                egress=[
                    k8s.NetworkPolicyEgressRule(to=[servers], ports=gossip + ports(q.https)),
                    # The Kubernetes auth method reviews tokens with the API server.
                    k8s.NetworkPolicyEgressRule(ports=ports(*API_PORTS)),
                ],
            ),
        )
        self.job_policy = k8s.KubeNetworkPolicy(
            self, "JobPolicy", metadata=_meta("consul-init", ns, "network-policy"),
            spec=k8s.NetworkPolicySpec(
                pod_selector=k8s.LabelSelector(match_labels={"app.kubernetes.io/component": "init"}),
                policy_types=["Egress"],
                egress=[
                    k8s.NetworkPolicyEgressRule(ports=ports(*API_PORTS)),
                    k8s.NetworkPolicyEgressRule(to=[servers], ports=ports(q.https)),
                ],
            ),
        )


    # -- snapshots ----------------------------------------------------------------------

    def _snapshots(self, ns: str, selector: dict[str, str], p: ConsulProps, profile: Profile) -> k8s.KubeCronJob:
        """CronJob ``consul-snapshot``: save (consul image), then upload (python image) to the
        profile's target, or to ``consul.backup_endpoint``."""
        self.backup_scripts = k8s.KubeConfigMap(
            self, "BackupScripts", metadata=_meta("consul-backup-scripts", ns, "backup"),
            binary_data=program.binary_data(backup_scripts()))
        # The pods' service account, their egress to the target and, in-cluster, the Role that
        # reads the S3 server's key pair (final_problem/constructs/backup_target.py).
        self.backup_access = access = backup_access(
            self, namespace=ns, service_account=BACKUP_SERVICE_ACCOUNT, pod_selector=SNAPSHOT_POD_LABELS,
            profile=profile, bucket=p.backup_bucket, region=p.backup_region, prefix=p.backup_prefix,
            endpoint=p.backup_endpoint, key_secret=BACKUP_TARGET_SECRET)
        work = k8s.VolumeMount(name="work", mount_path="/work")
        save = k8s.Container(
            name="save",
            image=versions.CONSUL_IMAGE,
            image_pull_policy="IfNotPresent",
            # The time first: every write the servers acknowledged before it is in the snapshot
            # (the leader's state when the save runs; `-stale` is not used).
            # The token as a file, not a value in the environment (Consul docs, "Consul Commands
            # (CLI)": -token-file), from the Secret mounted in this container alone.
            command=["sh", "-ec", "date -u +%Y-%m-%dT%H:%M:%SZ > /work/started && "
                     "consul snapshot save -token-file=/consul/token/token /work/consul.snap"],
            env=[
                k8s.EnvVar(name="CONSUL_HTTP_ADDR", value=self.address),
                k8s.EnvVar(name="CONSUL_CACERT", value="/consul/ca/ca.crt"),
            ],
            volume_mounts=[work, k8s.VolumeMount(name="ca", mount_path="/consul/ca", read_only=True),
                           k8s.VolumeMount(name="snapshot-token", mount_path="/consul/token", read_only=True)],
            security_context=container_context(uid=RUNNER_UID),
            resources=raw_resources(Sizing(cpu_request_m=10, cpu_limit_m=500, memory_request_mib=32, memory_limit_mib=128)),
        )
        upload = k8s.Container(
            name="upload",
            image=versions.PYTHON_IMAGE,
            image_pull_policy="IfNotPresent",
            command=["python3", f"{SCRIPTS_DIR}/{BACKUP_AGENT_FILE}", "upload", "consul", "--file", "/work/consul.snap",
                     "--started-file", "/work/started", "--retention-days", str(p.backup_retention_days)],
            env=[
                k8s.EnvVar(name="PYTHONDONTWRITEBYTECODE", value="1"),
                k8s.EnvVar(name="POD_NAME", value_from=k8s.EnvVarSource(
                    field_ref=k8s.ObjectFieldSelector(field_path="metadata.name"))),
                *access.env,
            ],
            # The target's credentials (in-cluster: the projected token) are in this container only.
            volume_mounts=[work, k8s.VolumeMount(name="backup-scripts", mount_path=SCRIPTS_DIR, read_only=True),
                           *access.volume_mounts],
            security_context=container_context(uid=RUNNER_UID),
            resources=raw_resources(Sizing(cpu_request_m=10, cpu_limit_m=500, memory_request_mib=32, memory_limit_mib=96)),
        )
        job = k8s.KubeCronJob(
            self, "SnapshotJob",
            metadata=_meta("consul-snapshot", ns, "backup"),
            spec=k8s.CronJobSpec(
                schedule=cron_schedule(p.backup_interval_minutes) or "",
                # One save at a time; a missed run is not made up later in a burst.
                concurrency_policy="Forbid",
                starting_deadline_seconds=600,
                successful_jobs_history_limit=1,
                failed_jobs_history_limit=3,
                job_template=k8s.JobTemplateSpec(spec=k8s.JobSpec(
                    backoff_limit=3,
                    active_deadline_seconds=1800,
                    template=k8s.PodTemplateSpec(
                        metadata=k8s.ObjectMeta(labels={**self.label_set.chart_labels(), **SNAPSHOT_POD_LABELS,
                                                        **access.pod_labels}),
                        spec=k8s.PodSpec(
                            restart_policy="Never",
                            # Its service account has no right in this namespace; the one token
                            # the target needs in-cluster is projected into the upload container
                            # alone (on EKS, Pod Identity's webhook adds its own).
                            service_account_name=access.service_account,
                            automount_service_account_token=False,
                            enable_service_links=False,
                            security_context=pod_context(uid=RUNNER_UID),
                            init_containers=[save],
                            containers=[upload],
                            volumes=[
                                k8s.Volume(name="work", empty_dir=k8s.EmptyDirVolumeSource(size_limit=quantity("1Gi"))),
                                k8s.Volume(name="ca", config_map=k8s.ConfigMapVolumeSource(name="consul-ca")),
                                k8s.Volume(name="snapshot-token", secret=k8s.SecretVolumeSource(
                                    secret_name="consul-snapshot-token",
                                    items=[k8s.KeyToPath(key="token", path="token")])),
                                k8s.Volume(name="backup-scripts", config_map=k8s.ConfigMapVolumeSource(
                                    name="consul-backup-scripts", default_mode=0o444)),
                                *access.volumes,
                            ],
                        ),
                    ),
                )),
            ),
        )
        job.add_dependency(self.backup_scripts, self.acl_job, *access.objects)
        # The target's egress is access's policy (consul-backup-target); this one adds the servers.
        self.snapshot_policy = k8s.KubeNetworkPolicy(
            self, "SnapshotPolicy", metadata=_meta("consul-snapshot", ns, "network-policy"),
            spec=k8s.NetworkPolicySpec(
                pod_selector=k8s.LabelSelector(match_labels=SNAPSHOT_POD_LABELS),
                policy_types=["Egress"],
                egress=[
                    k8s.NetworkPolicyEgressRule(to=[k8s.NetworkPolicyPeer(
                        pod_selector=k8s.LabelSelector(match_labels=selector))], ports=ports(self.PORTS.https)),
                ],
            ),
        )
        return job


# --- membership changes (final-problem scale consul.replicas=N) ---------------------------

_MEMBERSHIP = ("sh", f"{CONFIG_DIR}/membership.sh")


@membership("consul", "replicas")
def change_replicas(old: ConsulProps, new: ConsulProps, namespace: str) -> list[Step]:
    """Servers added one at a time, each in Raft and given the time autopilot takes to promote
    it to a voter before the next; removed one at a time from the highest ordinal, each only
    while Raft lists every server and a leader, and gone from Raft (its leave on SIGTERM,
    leave_on_terminate; else autopilot's dead-server cleanup, never below min_quorum) before
    the next. New servers start from the deployed pod template (bootstrap_expect and
    retry_join of the old count): they join the running datacenter, which is already
    bootstrapped; the deploy after the procedure renders the new count."""
    before, after = old.recorded_values(), new.recorded_values()
    others = sorted(k for k in after if k != "replicas" and before.get(k) != after[k])
    if others:
        raise Refused(f"consul.replicas: refused with {', '.join(f'consul.{k}' for k in others)} changing too; "
                      "the steps keep the rest of the servers as deployed: deploy those first, then scale")
    server = ConsulChart.SERVER
    first = f"{server}-0"
    steps: list[Step] = []
    for count in range(old.replicas + 1, new.replicas + 1):
        steps += [
            Scale(server, count, f"add {server}-{count - 1}: it joins through retry_join as a non-voter", namespace),
            WaitReady(server, count, f"{server}-{count - 1} knows the leader and is in Raft", namespace),
            Exec(first, "consul", (*_MEMBERSHIP, "peers", str(count), str(PROMOTION_S)),
                 f"Raft lists {count} servers; autopilot promotes the new one to a voter once stable", namespace),
        ]
    for count in range(old.replicas, new.replicas, -1):
        steps += [
            Exec(first, "consul", (*_MEMBERSHIP, "check", str(count)),
                 f"every one of the {count} servers in Raft and a leader before one leaves", namespace),
            Scale(server, count - 1, f"stop {server}-{count - 1}: it leaves Raft on SIGTERM (leave_on_terminate)",
                  namespace),
            Exec(first, "consul", (*_MEMBERSHIP, "peers", str(count - 1), "0"),
                 f"Raft lists {count - 1} servers before the next leaves", namespace),
        ]
    return steps


__all__ = ["AUTH_METHOD", "CONSUL_GRPC_PORT", "CONSUL_HTTPS_PORT", "ConsulChart", "ConsulProps"]
