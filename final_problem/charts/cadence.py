"""The Cadence chart: the workflow service on PostgreSQL, in the ``cadence`` namespace.

Creates:

- the ``cadence`` namespace (Pod Security "restricted", default-deny);
- Secret ``cadence-postgres`` (key ``password``) generated in the cluster; the postgres
  chart turns it into login role ``cadence`` with CREATEDB (:meth:`PostgresChart.add_client`);
- ConfigMaps: the server configuration from :mod:`final_problem.renderers.cadence` (the
  renderer the tests use), the file-based dynamic configuration, the schema and domain
  scripts;
- a schema Job (server image: ``cadence-sql-tool`` and ``/etc/cadence/schema``) that
  creates the default and visibility databases and schemas when absent, upgrades them
  when the image's schema is newer, and does nothing when they are current;
- frontend, history, matching and worker Deployments, each started directly with
  ``cadence-server ... start --services <name>`` on the rendered configuration (not the
  image's template script), each waiting in an init container for a current schema
  instead of crash-looping; a PDB and preferred hostname anti-affinity per service;
- a headless Service ``cadence-membership`` for ringpop: one port named ``tchannel``
  whose target is each pod's own ``tchannel`` port, so its SRV record lists every server
  with its own TChannel port (ringpop bootstrap mode ``dns-srv``);
- Service ``cadence-frontend`` (gRPC 7833, TChannel 7933) and the web UI
  (``ubercadence/web``, Service ``cadence-web`` on 8088, ``cadence-web-headless`` for the edge);
- a domain Job registering the default domain with its retention, once;
- NetworkPolicies: servers talk to each other on TChannel and gRPC; servers and Jobs
  reach PostgreSQL; the frontend admits the web UI, the domain Job and namespaces
  labelled ``final-problem.io/cadence-client=true``; the web UI admits namespaces
  labelled ``final-problem.io/cadence-web-client=true`` and from the edge Envoy; metrics from monitoring.

Sources: Cadence docs "Cluster configuration" and "Deployment"; cadence v1.4.1
``docker/start-cadence.sh``, ``Dockerfile``; cadence-charts (reference only: it defaults to
Cassandra and is not "restricted").
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, fields
from typing import Mapping

from constructs import Construct

from final_problem import sizes, versions
from final_problem.charts.postgres import PostgresChart, PostgresClient
from final_problem.components import PlatformChart, register
from final_problem.config import Settings
from final_problem.constructs.generated_secrets import GeneratedSecrets, SecretSpec, secret_env
from final_problem.constructs.labels import set_component
from final_problem.constructs.namespace import MONITORING_NAMESPACE_LABEL, RestrictedNamespace, ports
from final_problem.constructs.quorum import HOSTNAME
from final_problem.constructs.security import Sizing, container_context, pod_context, raw_resources
from final_problem.errors import ConfigError
from final_problem.imports import int_or_string, k8s, quantity
from final_problem.profiles import Profile
from final_problem.renderers import cadence as render
from final_problem.changes import nothing, refused, rolling
from final_problem.settings import ComponentSettings, per_profile, setting

#: The server image's user since v1.4.1 (Dockerfile: ``adduser -u 1000 ... cadence``).
CADENCE_UID = 1000
#: The web image's user (cadence-web Dockerfile: ``adduser --system --uid 1001 nextjs``).
WEB_UID = 1001
WEB_PORT = 8088
CADENCE_ROOT = "/etc/cadence"
CONFIG_ENV = "kubernetes"
SCHEMA_DIR = f"{CADENCE_ROOT}/schema/postgres"
SCRIPTS_DIR = "/opt/cadence-scripts"
DYNAMIC_CONFIG_DIR = "/etc/cadence/dynamicconfig"
CLIENT_NAMESPACE_LABEL = {"final-problem.io/cadence-client": "true"}
WEB_CLIENT_NAMESPACE_LABEL = {"final-problem.io/cadence-web-client": "true"}

#: numHistoryShards per profile. Set ONCE: a cluster's shard count is fixed when its
#: database is first set up and can never change (Cadence docs, "Cluster configuration").
#: tests/test_cadence_chart.py fails if either value changes. EKS: 512 shards spread
#: over 3 history hosts leave room to add hosts; a Pi cluster: 16 (each shard is an
#: owner loop and rows in every history host's cache).
HISTORY_SHARDS = {"eks": 512, "pi": 16}
#: Workflow retention bounds: Cadence rejects a domain retention below 1 day, and its
#: frontend caps it at ``frontend.maxRetentionDays`` (dynamic config, default 30).
MIN_RETENTION_DAYS = 1
MAX_RETENTION_DAYS = 30
#: Readiness probe period and initial delay of the servers, seconds: a rolling update
#: waits for it on every new pod; a server starts in a few seconds.
READINESS_PERIOD_S = 5
#: terminationGracePeriodSeconds of the servers: the frontend's preStop sleep
#: (render.FRONTEND_PRE_STOP_S) or the drain history and matching keep serving after SIGTERM
#: (render.SHUTDOWN_DRAIN_S, at most 10 s), then the gRPC server's graceful stop, which waits
#: for the calls in flight, a worker's poll at most render.LONG_POLL_S (20 s); the rest is
#: margin before SIGKILL.
TERMINATION_GRACE_S = 60


@dataclass(frozen=True, kw_only=True)
class ServiceProps:
    replicas: int
    sizing: Sizing


def _sizing(profile: Profile, name: str) -> Sizing:
    """A service's container sizing in ``profile`` at its size (final_problem/sizes.py: each
    figure with the measurement it is set from)."""
    return sizes.sizing(f"cadence_{name}", profile)


@dataclass(frozen=True, kw_only=True)
class CadenceProps(ComponentSettings):
    """What a user can choose about Cadence (section ``cadence``); defaults per profile."""

    num_history_shards: int = setting(
        per_profile(eks=HISTORY_SHARDS["eks"], pi=HISTORY_SHARDS["pi"]),
        minimum=render.MIN_HISTORY_SHARDS, maximum=render.MAX_HISTORY_SHARDS,
        doc="History shards. Fixed when the cluster's database is first set up: never change it for a live cluster.",
        change=refused("history shards are fixed when the database is first set up: servers with another count cannot "
                        "find existing workflows (Cadence docs, numHistoryShards)",
                        "keep {name}={old}; another count is a new cluster on a new database, deployed with ALLOW_REBUILD=1"),
    )
    frontend_replicas: int = setting(
        per_profile(eks=2, pi=1), minimum=1, maximum=10, doc="Frontend pods.",
        change=nothing("scales the Deployment"),
    )
    history_replicas: int = setting(per_profile(eks=3, pi=1), minimum=1, maximum=10,
                                    doc="History pods; no more than num_history_shards.",
        change=nothing("scales the Deployment; shards move between history pods through the membership ring"),
    )
    matching_replicas: int = setting(
        per_profile(eks=2, pi=1), minimum=1, maximum=10, doc="Matching pods.",
        change=nothing("scales the Deployment"),
    )
    worker_replicas: int = setting(
        1, minimum=1, maximum=10, doc="Worker service pods.",
        change=nothing("scales the Deployment"),
    )
    web_replicas: int = setting(
        1, minimum=1, maximum=3, doc="Web UI pods.",
        change=nothing("scales the Deployment"),
    )
    domain: str = setting(
        "default", doc="Domain the domain Job registers.",
        change=nothing("the domain Job registers the new domain; the old one stays, with its workflows"),
    )
    retention_days: int = setting(
        3, minimum=MIN_RETENTION_DAYS, maximum=MAX_RETENTION_DAYS,
        doc="Days closed workflows are kept: Cadence rejects less than 1, its frontend caps it at "
            "`frontend.maxRetentionDays` (30).",
        change=nothing("the domain Job applies it to the domain"),
    )
    max_conns: int = setting(
        per_profile(eks=8, pi=5), minimum=2, maximum=100,
        doc="Connections per server process to the default store (visibility: a quarter, at least 2). All "
            "processes' pools must fit postgres.max_connections less 10.",
        change=rolling("the servers' connection pools: their pods roll"),
    )
    cadence_db: str = setting(
        "cadence", doc="Database of the default store.",
        change=refused("the servers would use a new, empty database; workflows in the old one are orphaned",
                        "keep {name}={old}"),
    )
    visibility_db: str = setting(
        "cadence_visibility", doc="Database of the visibility store.",
        change=refused("the servers would use a new, empty visibility database; listing existing workflows breaks",
                        "keep {name}={old}"),
    )

    @property
    def services(self) -> dict[str, ServiceProps]:
        return {name: ServiceProps(replicas=getattr(self, f"{name}_replicas"), sizing=_sizing(self.profile, name))
                for name in render.SERVICES}

    @property
    def web_sizing(self) -> Sizing:
        return _sizing(self.profile, "web")

    def check(self) -> None:
        if self.history_replicas > self.num_history_shards:
            raise self.error("history_replicas",
                             f"more history hosts than shards ({self.num_history_shards}) leaves hosts idle",
                             f"set cadence.history_replicas={self.num_history_shards}")
        # The two database settings and their defaults, as declared above.
        databases = {f.name: f.default for f in fields(self) if f.name in ("cadence_db", "visibility_db")}
        for name, default in databases.items():
            value = getattr(self, name)
            if not _IDENTIFIER.fullmatch(value):
                other = next(n for n in databases if n != name)
                fix = default if default != getattr(self, other) else f"{default}_2"
                raise self.error(name, "not a plain PostgreSQL identifier (lower-case letters, digits, '_', "
                                 "at most 63, starting with a letter)", f"set cadence.{name}={fix}")
        if self.cadence_db == self.visibility_db:
            # Blame the one moved off its default onto the other's value: a user who set
            # cadence_db=cadence_visibility changed cadence_db, and its default is the fix.
            blamed = "cadence_db" if self.cadence_db != databases["cadence_db"] else "visibility_db"
            other = next(n for n in databases if n != blamed)
            raise self.error(blamed, f"equals cadence.{other}: the two schemas have tables of the same name",
                             f"set cadence.{blamed}={databases[blamed]}")
        if not _DOMAIN.fullmatch(self.domain):
            raise self.error("domain", "not a valid domain name", "set cadence.domain=default")

    def connections(self, max_conns: int | None = None) -> int:
        """Connections all server processes may open at once (default + visibility stores)."""
        m = self.max_conns if max_conns is None else max_conns
        return (m + max(2, m // 4)) * sum(s.replicas for s in self.services.values())


_IDENTIFIER = re.compile(r"[a-z][a-z0-9_]{0,62}")
_DOMAIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}")


#: Connections of PostgreSQL's max_connections kept for the schema Job, the exporter and operators.
RESERVED_CONNECTIONS = 10


def check_connections(props: CadenceProps, max_connections: int) -> None:
    """Every server process's pool must fit PostgreSQL's ``max_connections``: past it, logins
    fail and the services crash-loop."""
    budget = max_connections - RESERVED_CONNECTIONS
    if props.connections() <= budget:
        return
    fitting = [m for m in range(2, props.max_conns) if props.connections(m) <= budget]
    fix = (f"set cadence.max_conns={fitting[-1]}" if fitting
           else f"set postgres.max_connections={props.connections() + RESERVED_CONNECTIONS}")
    raise ConfigError(
        "cadence.max_conns", props.max_conns,
        f"the Cadence processes may open {props.connections()} connections, more than postgres.max_connections "
        f"({max_connections}) less {RESERVED_CONNECTIONS} kept for the schema Job, the exporter and operators",
        fix,
    )


def _labels(chart: PlatformChart, component: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    return {**chart.label_set.chart_labels(), **chart.label_set.selector(component), **(extra or {})}


@register
class CadenceChart(PlatformChart):
    """Cadence frontend, history, matching and worker on PostgreSQL, with its web UI."""

    component = "cadence"
    construct_id = "Cadence"
    requires = ("base", "postgres")
    version = versions.CADENCE_VERSION
    # Supported upgrade paths of the images its pods run (final_problem/versions.py).
    upgrade_paths = versions.upgrade_paths(versions.CADENCE_SERVER_IMAGE, versions.CADENCE_WEB_IMAGE)
    settings_class = CadenceProps
    images = (versions.CADENCE_SERVER_IMAGE, versions.CADENCE_WEB_IMAGE)

    NAMESPACE = "cadence"
    DB_SECRET = "cadence-postgres"
    DB_ROLE = "cadence"
    MEMBERSHIP_SERVICE = "cadence-membership"
    FRONTEND_SERVICE = "cadence-frontend"
    WEB_SERVICE = "cadence-web"
    #: Every web pod's address, for the edge Envoy's health checks and outlier detection.
    WEB_HEADLESS_SERVICE = "cadence-web-headless"
    #: The edge Envoy's namespace (final_problem/charts/envoy.py), admitted to the web UI.
    EDGE_NAMESPACE = "edge"

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
        postgres = self.dependency("postgres")
        if not isinstance(postgres, PostgresChart):
            raise ConfigError("components", "postgres", "cadence needs the postgres chart of final_problem.charts.postgres",
                              "enable the bundled postgres component")
        p: CadenceProps = self.props  # type: ignore[assignment]
        try:
            check_connections(p, postgres.props.max_connections)  # type: ignore[attr-defined]
        except ConfigError as e:
            origin = settings.origins.get(e.setting)
            if origin:
                raise e.add_origin(origin).for_profile(profile.name) from None
            raise e.add_origin(f"default for the {profile.name} profile") from None
        ns = self.NAMESPACE
        self.cadence_namespace = RestrictedNamespace(self, "Namespace", name=ns, pss_version=f"v{settings.kubernetes_version}")
        self.secrets = GeneratedSecrets(self, "Secrets", namespace=ns, labels=self.label_set,
                                        secrets=[SecretSpec(name=self.DB_SECRET, keys=("password",))])
        self.secrets.add_dependency(self.cadence_namespace)
        db_client_labels = postgres.client_pod_labels()
        self.calls = (postgres.component,)
        postgres.add_client(self, PostgresClient(
            role=self.DB_ROLE, namespace=ns, secret=self.DB_SECRET,
            pod_selector={"app.kubernetes.io/name": self.label_set.name},
        ))

        #: gRPC address clients (SDK, CLI, web UI) use.
        self.frontend_address = f"{self.FRONTEND_SERVICE}.{ns}.svc.cluster.local:{render.DEFAULT_PORTS['frontend'].grpc}"
        database = render.Database(host=postgres.host, port=postgres.port, user=self.DB_ROLE,
                                   cadence_db=p.cadence_db, visibility_db=p.visibility_db, max_conns=p.max_conns)
        self.server_config = render.ServerConfig(
            num_history_shards=p.num_history_shards,
            database=database,
            bootstrap_mode="dns-srv",
            bootstrap_hosts=(f"tchannel.{self.MEMBERSHIP_SERVICE}.{ns}.svc.cluster.local",),
            frontend_address=self.frontend_address,
            dynamic_config_path=f"{DYNAMIC_CONFIG_DIR}/dynamicconfig.yaml",
        )
        config_yaml = render.server_config(self.server_config)
        dynamic_yaml = render.dynamic_config()
        domain_sh = render.domain_script(domain=p.domain, retention_days=p.retention_days,
                                         frontend_address=self.frontend_address)
        scripts = {"cadence-schema.sh": render.SCHEMA_SCRIPT, "register-domain.sh": domain_sh}
        self.config_map = k8s.KubeConfigMap(self, "Config", metadata=k8s.ObjectMeta(name="cadence-config", namespace=ns),
                                            data={f"{CONFIG_ENV}.yaml": config_yaml})
        self.dynamic_config_map = k8s.KubeConfigMap(self, "DynamicConfig",
                                                    metadata=k8s.ObjectMeta(name="cadence-dynamicconfig", namespace=ns),
                                                    data={"dynamicconfig.yaml": dynamic_yaml})
        self.scripts_map = k8s.KubeConfigMap(self, "Scripts", metadata=k8s.ObjectMeta(name="cadence-scripts", namespace=ns),
                                             data=scripts)
        for cm in (self.config_map, self.dynamic_config_map, self.scripts_map):
            set_component(cm, "config")
            cm.add_dependency(self.cadence_namespace.resource)

        schema_env = [k8s.EnvVar(name=k, value=v) for k, v in render.schema_env(database, schema_dir=SCHEMA_DIR).items()]
        schema_env.append(secret_env("SQL_PASSWORD", self.DB_SECRET, "password"))
        scripts_volume = k8s.Volume(name="scripts", config_map=k8s.ConfigMapVolumeSource(name="cadence-scripts"))
        scripts_mount = k8s.VolumeMount(name="scripts", mount_path=SCRIPTS_DIR, read_only=True)
        tmp_volume = k8s.Volume(name="tmp", empty_dir=k8s.EmptyDirVolumeSource(size_limit=quantity("64Mi")))
        tmp_mount = k8s.VolumeMount(name="tmp", mount_path="/tmp")
        small_job = Sizing(cpu_request_m=20, cpu_limit_m=500, memory_request_mib=64, memory_limit_mib=128)

        # -- schema Job ---------------------------------------------------------------
        schema_digest = hashlib.sha256((render.SCHEMA_SCRIPT + versions.CADENCE_SERVER_IMAGE + repr(database)).encode()).hexdigest()[:8]
        self.schema_job = self._job(
            "SchemaJob", f"cadence-schema-{schema_digest}", "schema",
            container=k8s.Container(
                name="schema", image=versions.CADENCE_SERVER_IMAGE, image_pull_policy="IfNotPresent",
                command=["sh", f"{SCRIPTS_DIR}/cadence-schema.sh", "setup"],
                env=schema_env, security_context=container_context(uid=CADENCE_UID),
                resources=raw_resources(small_job), volume_mounts=[scripts_mount, tmp_mount],
            ),
            volumes=[scripts_volume, tmp_volume], extra_labels=db_client_labels,
            annotations={"checkov.io/skip2": "CKV_K8S_35=cadence-sql-tool reads SQL_PASSWORD from its environment; "
                                             "the value comes from a secretKeyRef"},
        )

        # -- servers ------------------------------------------------------------------
        config_digest = hashlib.sha256((config_yaml + dynamic_yaml).encode()).hexdigest()[:16]
        self.deployments: dict[str, k8s.KubeDeployment] = {}
        for name in render.SERVICES:
            self.deployments[name] = self._server(name, schema_env=schema_env, config_digest=config_digest,
                                                  scripts_volume=scripts_volume, scripts_mount=scripts_mount,
                                                  tmp_volume=tmp_volume, tmp_mount=tmp_mount,
                                                  extra_labels=db_client_labels)

        server_selector = {"app.kubernetes.io/name": self.label_set.name, "final-problem.io/cadence-role": "server"}
        self.membership_service = k8s.KubeService(
            self, "Membership",
            metadata=k8s.ObjectMeta(name=self.MEMBERSHIP_SERVICE, namespace=ns),
            spec=k8s.ServiceSpec(
                cluster_ip="None", selector=server_selector,
                # Ring members find each other before any is ready.
                publish_not_ready_addresses=True,
                ports=[k8s.ServicePort(name="tchannel", port=render.DEFAULT_PORTS["frontend"].tchannel,
                                       target_port=int_or_string("tchannel"))],
            ),
        )
        fp = self.server_config.ports["frontend"]
        self.frontend_service = k8s.KubeService(
            self, "Frontend",
            metadata=k8s.ObjectMeta(name=self.FRONTEND_SERVICE, namespace=ns),
            spec=k8s.ServiceSpec(selector=self.label_set.selector("frontend"), ports=[
                k8s.ServicePort(name="grpc", port=fp.grpc, target_port=int_or_string("grpc")),
                k8s.ServicePort(name="tchannel", port=fp.tchannel, target_port=int_or_string("tchannel")),
            ]),
        )
        for svc in (self.membership_service, self.frontend_service):
            set_component(svc, "server")
            svc.add_dependency(self.cadence_namespace.resource)

        # -- domain Job and web UI ----------------------------------------------------
        domain_digest = hashlib.sha256((domain_sh + versions.CADENCE_SERVER_IMAGE).encode()).hexdigest()[:8]
        self.domain_job = self._job(
            "DomainJob", f"cadence-domain-{domain_digest}", "domain",
            container=k8s.Container(
                name="register", image=versions.CADENCE_SERVER_IMAGE, image_pull_policy="IfNotPresent",
                command=["sh", f"{SCRIPTS_DIR}/register-domain.sh"],
                security_context=container_context(uid=CADENCE_UID),
                resources=raw_resources(small_job), volume_mounts=[scripts_mount, tmp_mount],
            ),
            volumes=[scripts_volume, tmp_volume],
        )
        self.web = self._web()
        self._network_policies()

    # -- builders ---------------------------------------------------------------------

    def _job(self, id: str, name: str, component: str, *, container: k8s.Container,
             volumes: list[k8s.Volume], extra_labels: Mapping[str, str] | None = None,
             annotations: Mapping[str, str] | None = None) -> k8s.KubeJob:
        job = k8s.KubeJob(
            self, id,
            metadata=k8s.ObjectMeta(name=name, namespace=self.NAMESPACE, annotations={
                "checkov.io/skip1": "CKV_K8S_40=the official ubercadence/server image runs as its own uid 1000",
                **(annotations or {}),
            }),
            spec=k8s.JobSpec(
                backoff_limit=10,
                active_deadline_seconds=3600,
                ttl_seconds_after_finished=24 * 3600,
                template=k8s.PodTemplateSpec(
                    metadata=k8s.ObjectMeta(labels=_labels(self, component, extra_labels)),
                    spec=k8s.PodSpec(
                        restart_policy="Never", automount_service_account_token=False, enable_service_links=False,
                        security_context=pod_context(uid=CADENCE_UID),
                        containers=[container], volumes=volumes,
                    ),
                ),
            ),
        )
        set_component(job, component)
        job.add_dependency(self.cadence_namespace.resource, self.scripts_map)
        return job

    def _server(self, name: str, *, schema_env: list[k8s.EnvVar], config_digest: str, scripts_volume: k8s.Volume,
                scripts_mount: k8s.VolumeMount, tmp_volume: k8s.Volume, tmp_mount: k8s.VolumeMount,
                extra_labels: Mapping[str, str]) -> k8s.KubeDeployment:
        svc = self.props.services[name]
        port = self.server_config.ports[name]
        selector = self.label_set.selector(name)
        pod_labels = _labels(self, name, {**extra_labels, "final-problem.io/cadence-role": "server"})
        wait = k8s.Container(
            name="wait-for-schema", image=versions.CADENCE_SERVER_IMAGE, image_pull_policy="IfNotPresent",
            command=["sh", f"{SCRIPTS_DIR}/cadence-schema.sh", "wait"],
            env=schema_env, security_context=container_context(uid=CADENCE_UID),
            resources=raw_resources(Sizing(cpu_request_m=20, cpu_limit_m=200, memory_request_mib=64, memory_limit_mib=128)),
            volume_mounts=[scripts_mount, tmp_mount],
        )
        server = k8s.Container(
            name=name, image=versions.CADENCE_SERVER_IMAGE, image_pull_policy="IfNotPresent",
            command=render.server_command(root=CADENCE_ROOT, env=CONFIG_ENV, service=name),
            env=[
                k8s.EnvVar(name="POD_IP", value_from=k8s.EnvVarSource(field_ref=k8s.ObjectFieldSelector(field_path="status.podIP"))),
                secret_env("SQL_PASSWORD", self.DB_SECRET, "password"),
            ],
            ports=[
                k8s.ContainerPort(name="tchannel", container_port=port.tchannel),
                k8s.ContainerPort(name="grpc", container_port=port.grpc),
                k8s.ContainerPort(name="metrics", container_port=port.metrics),
            ],
            security_context=container_context(uid=CADENCE_UID),
            resources=raw_resources(svc.sizing),
            # Ready: serving (render.readiness_command: the frontend answers the admin API,
            # the others are in the ring); a rolling update replaces the next pod only then.
            # Alive: the metrics endpoint answers, whatever the database or the ring are doing.
            readiness_probe=k8s.Probe(
                exec=k8s.ExecAction(command=render.readiness_command(
                    name, ports=port, frontend_address=self.frontend_address)),
                initial_delay_seconds=READINESS_PERIOD_S, period_seconds=READINESS_PERIOD_S, timeout_seconds=5,
                failure_threshold=3),
            liveness_probe=k8s.Probe(http_get=k8s.HttpGetAction(path="/metrics", port=int_or_string(port.metrics)),
                                     initial_delay_seconds=60, period_seconds=20, timeout_seconds=10, failure_threshold=6),
            # The frontend keeps serving while its endpoint leaves the Service (render.FRONTEND_PRE_STOP_S);
            # history and matching drain themselves on SIGTERM (render.SHUTDOWN_DRAIN_S).
            lifecycle=k8s.Lifecycle(pre_stop=k8s.LifecycleHandler(
                sleep=k8s.SleepAction(seconds=render.FRONTEND_PRE_STOP_S))) if name == "frontend" else None,
            volume_mounts=[
                k8s.VolumeMount(name="config", mount_path=f"{CADENCE_ROOT}/config", read_only=True),
                k8s.VolumeMount(name="dynamicconfig", mount_path=DYNAMIC_CONFIG_DIR, read_only=True),
                tmp_mount,
            ],
        )
        deployment = k8s.KubeDeployment(
            self, f"{name.title()}Deployment",
            metadata=k8s.ObjectMeta(name=f"cadence-{name}", namespace=self.NAMESPACE, annotations={
                "checkov.io/skip1": "CKV_K8S_40=the official ubercadence/server image runs as its own uid 1000",
                "checkov.io/skip2": "CKV_K8S_35=the server config expands ${SQL_PASSWORD}; the value comes from a secretKeyRef",
            }),
            spec=k8s.DeploymentSpec(
                replicas=svc.replicas,
                selector=k8s.LabelSelector(match_labels=selector),
                # A new pod first, the old one only once it serves: with one replica (the Pi)
                # maxUnavailable 1 would stop the only pod while its successor starts. Two
                # history hosts owning shards at once is safe (each shard's range id fences
                # the older owner), as is a second matching or frontend.
                strategy=k8s.DeploymentStrategy(type="RollingUpdate", rolling_update=k8s.RollingUpdateDeployment(
                    max_unavailable=int_or_string(0), max_surge=int_or_string(1))),
                template=k8s.PodTemplateSpec(
                    metadata=k8s.ObjectMeta(labels=pod_labels, annotations={
                        "final-problem.io/config-sha256": config_digest,
                        "prometheus.io/scrape": "true", "prometheus.io/port": str(port.metrics),
                    }),
                    spec=k8s.PodSpec(
                        automount_service_account_token=False, enable_service_links=False,
                        security_context=pod_context(uid=CADENCE_UID),
                        affinity=k8s.Affinity(pod_anti_affinity=k8s.PodAntiAffinity(
                            # Preferred: a Pi cluster may have fewer nodes than replicas.
                            preferred_during_scheduling_ignored_during_execution=[k8s.WeightedPodAffinityTerm(
                                weight=100, pod_affinity_term=k8s.PodAffinityTerm(
                                    label_selector=k8s.LabelSelector(match_labels=selector), topology_key=HOSTNAME))],
                        )),
                        termination_grace_period_seconds=TERMINATION_GRACE_S,
                        init_containers=[wait],
                        containers=[server],
                        volumes=[
                            k8s.Volume(name="config", config_map=k8s.ConfigMapVolumeSource(name="cadence-config")),
                            k8s.Volume(name="dynamicconfig", config_map=k8s.ConfigMapVolumeSource(name="cadence-dynamicconfig")),
                            scripts_volume, tmp_volume,
                        ],
                    ),
                ),
            ),
        )
        set_component(deployment, name)
        pdb = k8s.KubePodDisruptionBudget(
            self, f"{name.title()}Disruption",
            metadata=k8s.ObjectMeta(name=f"cadence-{name}", namespace=self.NAMESPACE),
            spec=k8s.PodDisruptionBudgetSpec(max_unavailable=int_or_string(1),
                                             selector=k8s.LabelSelector(match_labels=selector)),
        )
        set_component(pdb, name)
        for obj in (deployment, pdb):
            obj.add_dependency(self.cadence_namespace.resource)
        deployment.add_dependency(self.config_map, self.dynamic_config_map, self.scripts_map)
        return deployment

    def _web(self) -> k8s.KubeDeployment:
        p = self.props
        selector = self.label_set.selector("web")
        container = k8s.Container(
            name="web", image=versions.CADENCE_WEB_IMAGE, image_pull_policy="IfNotPresent",
            env=[
                k8s.EnvVar(name="CADENCE_GRPC_PEERS", value=self.frontend_address),
                k8s.EnvVar(name="CADENCE_GRPC_SERVICES_NAMES", value="cadence-frontend"),
                k8s.EnvVar(name="CADENCE_WEB_PORT", value=str(WEB_PORT)),
                k8s.EnvVar(name="NEXT_TELEMETRY_DISABLED", value="1"),
            ],
            ports=[k8s.ContainerPort(name="http", container_port=WEB_PORT)],
            security_context=container_context(uid=WEB_UID),
            resources=raw_resources(p.web_sizing),
            readiness_probe=k8s.Probe(http_get=k8s.HttpGetAction(path="/", port=int_or_string(WEB_PORT)),
                                      period_seconds=10, timeout_seconds=5, failure_threshold=3),
            liveness_probe=k8s.Probe(tcp_socket=k8s.TcpSocketAction(port=int_or_string(WEB_PORT)),
                                     initial_delay_seconds=20, period_seconds=20, timeout_seconds=5, failure_threshold=6),
            volume_mounts=[
                # Next.js writes its image and fetch cache under .next/cache.
                k8s.VolumeMount(name="next-cache", mount_path="/app/.next/cache"),
                k8s.VolumeMount(name="tmp", mount_path="/tmp"),
            ],
        )
        deployment = k8s.KubeDeployment(
            self, "WebDeployment",
            metadata=k8s.ObjectMeta(name="cadence-web", namespace=self.NAMESPACE, annotations={
                "checkov.io/skip1": "CKV_K8S_40=the official ubercadence/web image runs as its own uid 1001",
            }),
            spec=k8s.DeploymentSpec(
                replicas=p.web_replicas,
                selector=k8s.LabelSelector(match_labels=selector),
                template=k8s.PodTemplateSpec(
                    metadata=k8s.ObjectMeta(labels=_labels(self, "web")),
                    spec=k8s.PodSpec(
                        automount_service_account_token=False, enable_service_links=False,
                        security_context=pod_context(uid=WEB_UID),
                        containers=[container],
                        volumes=[
                            k8s.Volume(name="next-cache", empty_dir=k8s.EmptyDirVolumeSource(size_limit=quantity("256Mi"))),
                            k8s.Volume(name="tmp", empty_dir=k8s.EmptyDirVolumeSource(size_limit=quantity("64Mi"))),
                        ],
                    ),
                ),
            ),
        )
        set_component(deployment, "web")
        service = k8s.KubeService(
            self, "WebService", metadata=k8s.ObjectMeta(name=self.WEB_SERVICE, namespace=self.NAMESPACE),
            spec=k8s.ServiceSpec(selector=selector, ports=[k8s.ServicePort(name="http", port=WEB_PORT, target_port=int_or_string("http"))]),
        )
        set_component(service, "web")
        headless = k8s.KubeService(
            self, "WebHeadless", metadata=k8s.ObjectMeta(name=self.WEB_HEADLESS_SERVICE, namespace=self.NAMESPACE),
            spec=k8s.ServiceSpec(cluster_ip="None", selector=selector,
                                 ports=[k8s.ServicePort(name="http", port=WEB_PORT, target_port=int_or_string("http"))]),
        )
        set_component(headless, "web")
        pdb = k8s.KubePodDisruptionBudget(
            self, "WebDisruption", metadata=k8s.ObjectMeta(name="cadence-web", namespace=self.NAMESPACE),
            spec=k8s.PodDisruptionBudgetSpec(max_unavailable=int_or_string(1), selector=k8s.LabelSelector(match_labels=selector)),
        )
        set_component(pdb, "web")
        for obj in (deployment, service, headless, pdb):
            obj.add_dependency(self.cadence_namespace.resource)
        self.web_service = service
        return deployment

    def _network_policies(self) -> None:
        ns = self.NAMESPACE
        name = self.label_set.name
        servers = {"app.kubernetes.io/name": name, "final-problem.io/cadence-role": "server"}
        all_ports = sorted({x for p in self.server_config.ports.values() for x in (p.tchannel, p.grpc)})
        metrics_ports = sorted({p.metrics for p in self.server_config.ports.values()})
        frontend = self.label_set.selector("frontend")
        fp = self.server_config.ports["frontend"]
        postgres = self.dependency("postgres")
        db_users = {"app.kubernetes.io/name": name, **postgres.client_pod_labels()}  # type: ignore[attr-defined]

        def peer(labels: Mapping[str, str]) -> k8s.NetworkPolicyPeer:
            return k8s.NetworkPolicyPeer(pod_selector=k8s.LabelSelector(match_labels=dict(labels)))

        def namespaces(labels: Mapping[str, str]) -> k8s.NetworkPolicyPeer:
            return k8s.NetworkPolicyPeer(namespace_selector=k8s.LabelSelector(match_labels=dict(labels)))

        specs = {
            "AllowServerMesh": ("cadence-server-mesh", servers, ["Ingress", "Egress"],
                                [k8s.NetworkPolicyIngressRule(from_=[peer(servers)], ports=ports(*all_ports))],
                                [k8s.NetworkPolicyEgressRule(to=[peer(servers)], ports=ports(*all_ports))]),
            "AllowPostgres": ("cadence-to-postgres", db_users, ["Egress"], None,
                              [k8s.NetworkPolicyEgressRule(to=[k8s.NetworkPolicyPeer(
                                  namespace_selector=k8s.LabelSelector(match_labels={"kubernetes.io/metadata.name": postgres.NAMESPACE}),  # type: ignore[attr-defined]
                                  pod_selector=k8s.LabelSelector(match_labels=postgres.selector))],  # type: ignore[attr-defined]
                                  ports=ports(postgres.port))]),  # type: ignore[attr-defined]
            "AllowFrontendClients": ("cadence-frontend-clients", frontend, ["Ingress"],
                                     [k8s.NetworkPolicyIngressRule(
                                         from_=[peer(self.label_set.selector("web")), peer(self.label_set.selector("domain")),
                                                namespaces(CLIENT_NAMESPACE_LABEL)],
                                         ports=ports(fp.grpc))], None),
            "AllowFrontendEgress": ("cadence-frontend-egress", {"app.kubernetes.io/name": name}, ["Egress"], None,
                                    [k8s.NetworkPolicyEgressRule(to=[peer(frontend)], ports=ports(fp.grpc))]),
            "AllowWebClients": ("cadence-web-clients", self.label_set.selector("web"), ["Ingress"],
                                [k8s.NetworkPolicyIngressRule(from_=[
                                    namespaces(WEB_CLIENT_NAMESPACE_LABEL),
                                    k8s.NetworkPolicyPeer(
                                        namespace_selector=k8s.LabelSelector(
                                            match_labels={"kubernetes.io/metadata.name": self.EDGE_NAMESPACE}),
                                        pod_selector=k8s.LabelSelector(match_labels={"app.kubernetes.io/name": "envoy"})),
                                ], ports=ports(WEB_PORT))], None),
            "AllowMetrics": ("cadence-metrics", servers, ["Ingress"],
                             [k8s.NetworkPolicyIngressRule(from_=[namespaces(MONITORING_NAMESPACE_LABEL)], ports=ports(*metrics_ports))], None),
        }
        self.network_policies = []
        for id, (policy_name, selector, types, ingress, egress) in specs.items():
            policy = k8s.KubeNetworkPolicy(
                self, id, metadata=k8s.ObjectMeta(name=policy_name, namespace=ns),
                spec=k8s.NetworkPolicySpec(pod_selector=k8s.LabelSelector(match_labels=dict(selector)),
                                           policy_types=types, ingress=ingress, egress=egress),
            )
            set_component(policy, "network-policy")
            policy.add_dependency(self.cadence_namespace.resource)
            self.network_policies.append(policy)
