"""Cadence server configuration, rendered once for the chart and the local tools.

- :func:`server_config` renders the YAML ``cadence-server --root R --env E --config config``
  loads from ``R/config/E.yaml`` (cadence ``common/config/loader.go``); the loader expands
  ``${VAR}`` from the environment, so the database password arrives as ``${SQL_PASSWORD}``
  from a Secret and never sits in the ConfigMap;
- :func:`dynamic_config` renders the file-based dynamic configuration;
- :data:`SCHEMA_SCRIPT` is the schema management script (``cadence_schema.sh``) the schema
  Job and the server pods' init containers run, and the tests run against a real PostgreSQL;
- :func:`domain_script` is the domain registration Job's script.

Sources: cadence v1.4.1 ``config/development_postgres.yaml``, ``config/development.yaml``,
``docker/config_template.yaml``; ``common/peerprovider/ringpopprovider`` (bootstrap modes).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import yaml

from final_problem.errors import ConfigError

SCHEMA_SCRIPT = (Path(__file__).with_name("cadence_schema.sh")).read_text()

#: The four services, in the order the server starts them.
SERVICES = ("frontend", "history", "matching", "worker")

#: numHistoryShards limits: the shard count is fixed at the first start and can never
#: change for a cluster (Cadence docs, "Cluster configuration": numHistoryShards
#: "cannot be changed after the cluster is first set up"); every shard is one row and one
#: owner loop in history, so a Pi cluster stays far below what an EKS cluster can use.
MIN_HISTORY_SHARDS = 1
MAX_HISTORY_SHARDS = 16384


@dataclass(frozen=True, kw_only=True)
class ServicePorts:
    """Ports of one Cadence service: TChannel (membership, internal RPC), gRPC, metrics."""

    tchannel: int
    grpc: int
    metrics: int


#: Cadence's own defaults (config/development.yaml): frontend 7933/7833, history
#: 7934/7834, matching 7935/7835, worker 7939/7839; Prometheus on 9090 (cadence-charts).
DEFAULT_PORTS: Mapping[str, ServicePorts] = {
    "frontend": ServicePorts(tchannel=7933, grpc=7833, metrics=9090),
    "history": ServicePorts(tchannel=7934, grpc=7834, metrics=9090),
    "matching": ServicePorts(tchannel=7935, grpc=7835, metrics=9090),
    "worker": ServicePorts(tchannel=7939, grpc=7839, metrics=9090),
}


@dataclass(frozen=True, kw_only=True)
class Database:
    """Where the server's two SQL databases live. The password comes from ``$SQL_PASSWORD``."""

    host: str
    port: int = 5432
    user: str = "cadence"
    cadence_db: str = "cadence"
    visibility_db: str = "cadence_visibility"
    #: Connections per service process to the default store; visibility gets a quarter.
    max_conns: int = 20


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    """Everything the rendered configuration depends on."""

    #: Fixed for the life of the cluster: see :data:`MIN_HISTORY_SHARDS`.
    num_history_shards: int
    database: Database
    ports: Mapping[str, ServicePorts] = field(default_factory=lambda: dict(DEFAULT_PORTS))
    #: Address every listener binds. In a pod 0.0.0.0 with the pod IP broadcast to peers.
    bind_on_ip: str = "0.0.0.0"
    #: Address announced to ring peers; ``${POD_IP}`` in a pod (downward API).
    broadcast_address: str = "${POD_IP}"
    #: Ringpop bootstrap: "dns-srv" with ``tchannel.<headless service DNS>`` in a cluster,
    #: "hosts" with host:port entries on one machine.
    bootstrap_mode: str = "dns-srv"
    bootstrap_hosts: tuple[str, ...] = ()
    #: gRPC address of the frontend, used by the worker service and the cluster metadata.
    frontend_address: str = "127.0.0.1:7833"
    dynamic_config_path: str = "/etc/cadence/dynamicconfig/dynamicconfig.yaml"
    cluster_name: str = "cluster0"

    def __post_init__(self) -> None:
        check_history_shards(self.num_history_shards)
        if set(self.ports) != set(SERVICES):
            raise ConfigError("cadence.ports", sorted(self.ports), "needs exactly the four services", f"give ports for {', '.join(SERVICES)}")
        if self.bootstrap_mode not in ("hosts", "dns", "dns-srv"):
            raise ConfigError("cadence.bootstrap_mode", self.bootstrap_mode, "unknown ringpop bootstrap mode", "use dns-srv (cluster) or hosts")
        if not self.bootstrap_hosts:
            raise ConfigError("cadence.bootstrap_hosts", self.bootstrap_hosts, "ringpop needs seeds to join", "list the membership Service (dns-srv) or host:port seeds")


def check_history_shards(value: int) -> None:
    if not isinstance(value, int) or not MIN_HISTORY_SHARDS <= value <= MAX_HISTORY_SHARDS:
        raise ConfigError(
            "cadence.num_history_shards", value,
            f"must be {MIN_HISTORY_SHARDS} to {MAX_HISTORY_SHARDS}; it is fixed when the cluster is first set up "
            "and can never change for a live cluster",
            "keep the value the cluster was created with (a new cluster: 16 on a Pi, 512 on EKS)",
        )


def _sql(db: Database, name: str, max_conns: int) -> dict[str, object]:
    return {
        "pluginName": "postgres",
        "databaseName": name,
        "connectAddr": f"{db.host}:{db.port}",
        "connectProtocol": "tcp",
        "user": db.user,
        # Expanded by the server's config loader from the container environment.
        "password": "${SQL_PASSWORD}",
        "maxConns": max_conns,
        "maxIdleConns": max_conns,
        "maxConnLifetime": "1h",
    }


def server_config_dict(cfg: ServerConfig) -> dict[str, object]:
    db = cfg.database
    services: dict[str, object] = {}
    for name in SERVICES:
        p = cfg.ports[name]
        services[name] = {
            "rpc": {"port": p.tchannel, "grpcPort": p.grpc, "bindOnIP": cfg.bind_on_ip},
            "metrics": {"prometheus": {"timerType": "histogram", "listenAddress": f"{cfg.bind_on_ip}:{p.metrics}"}},
        }
    return {
        "log": {"stdout": True, "level": "info"},
        "persistence": {
            "numHistoryShards": cfg.num_history_shards,
            "defaultStore": "postgres-default",
            "visibilityStore": "postgres-visibility",
            "datastores": {
                "postgres-default": {"sql": _sql(db, db.cadence_db, db.max_conns)},
                "postgres-visibility": {"sql": _sql(db, db.visibility_db, max(2, db.max_conns // 4))},
            },
        },
        "ringpop": {
            "name": "cadence",
            "broadcastAddress": cfg.broadcast_address,
            "bootstrapMode": cfg.bootstrap_mode,
            "bootstrapHosts": list(cfg.bootstrap_hosts),
            "maxJoinDuration": "30s",
        },
        "services": services,
        "clusterGroupMetadata": {
            "failoverVersionIncrement": 10,
            "primaryClusterName": cfg.cluster_name,
            "currentClusterName": cfg.cluster_name,
            "clusterGroup": {
                cfg.cluster_name: {
                    "enabled": True,
                    "initialFailoverVersion": 0,
                    "rpcName": "cadence-frontend",
                    "rpcAddress": cfg.frontend_address,
                    "rpcTransport": "grpc",
                },
            },
        },
        "dcRedirectionPolicy": {"policy": "noop"},
        # No archival: it needs a blob store this platform does not run.
        "archival": {"history": {"status": "disabled"}, "visibility": {"status": "disabled"}},
        "domainDefaults": {"archival": {"history": {"status": "disabled"}, "visibility": {"status": "disabled"}}},
        "publicClient": {"hostPort": cfg.frontend_address},
        "dynamicconfig": {
            "client": "filebased",
            "filebased": {"filepath": cfg.dynamic_config_path, "pollInterval": "60s"},
        },
    }


def server_config(cfg: ServerConfig) -> str:
    """The server's YAML configuration (``<root>/config/<env>.yaml``)."""
    return yaml.safe_dump(server_config_dict(cfg), sort_keys=False)


#: Seconds history and matching go on serving after SIGTERM (``<service>.shutdownDrainDuration``,
#: Cadence's default 0: they stop at once). What each does in them (v1.4.1 ``service/*/service.go``,
#: ``Stop``): history leaves the ring, stops acquiring shards and keeps serving 5 s while the
#: others take its shards over, then 2 s more (``shardOwnershipTransferDelay``, ``gracePeriod``:
#: 7.4 s in all); matching leaves the ring and keeps serving while its task lists move. Their
#: callers are Cadence's own clients, which retry a refused call on the new owner.
#:
#: Not the frontend: its drain fails its health check (which no client here reads: the
#: Python SDK and a Service's kube-proxy do not) and keeps serving, then refuses every call
#: for its last second with "Shutting down" before it closes its connections. Clients stay on
#: their open HTTP/2 connection until it closes, so they meet that second: in a rollout here
#: the worker's RespondActivityTaskCompleted was refused, the SDK did not retry it, and the
#: activity timed out. The frontend waits in a preStop sleep instead (:data:`FRONTEND_PRE_STOP_S`,
#: charts/cadence.py) and stops at once on SIGTERM: it closes its connections (GOAWAY, the
#: calls in flight finish) right after it starts refusing, and clients reconnect through the
#: Service to the new pod.
SHUTDOWN_DRAIN_S: Mapping[str, int] = {"history": 10, "matching": 10}
#: Seconds a terminating frontend keeps serving in its preStop sleep, fully, while the
#: EndpointSlice controller takes it out of the Service and kube-proxy stops sending it new
#: connections.
FRONTEND_PRE_STOP_S = 5
#: Seconds a worker's poll waits in matching for a task before it is answered empty
#: (``matching.longPollExpirationInterval``, Cadence's default 60 s). The frontend's gRPC server
#: stops gracefully (yarpc's inbound: ``GracefulStop``), waiting for every call in flight, the
#: workers' polls included: with 60 s a frontend outlived its 60 s grace period in a rollout
#: and was SIGKILLed with the polls open, and a task handed to a cut poll ran again after its
#: timeout. 20 s ends every poll within the drain's reach (drain + poll < grace); a worker then
#: sends one empty poll per 20 s per poller, nothing to a server.
LONG_POLL_S = 20
#: Longest time an activity with a retry policy waits in its task list before the server
#: schedules its next attempt (``history.activityMaxScheduleToStartTimeoutForRetry``, Cadence's
#: default 30 min). A task matching handed to a poll that a restart then cut is lost to
#: matching: only this timeout dispatches it again. Cadence raises a retryable activity's
#: schedule-to-start to the least of its retry expiration and this value
#: (``service/history/decision/checker.go``, v1.4.1), so with the default a rollout of matching
#: could leave a workflow waiting 30 min; with 30 s the lost dispatch costs at most 30 s. An
#: activity waiting longer for a worker is attempted again every 30 s until its retry policy
#: expires: give activities an expiration, not only a number of attempts.
ACTIVITY_REDISPATCH_S = 30


def dynamic_config(*, history_count_limit_error: int = 51200) -> str:
    """File-based dynamic configuration: each key a list of ``{value, constraints}``.

    Only limits worth stating are set; everything else keeps Cadence's defaults
    (``common/dynamicconfig/dynamicproperties``). ``history.historyCountLimitError``:
    events after which a workflow is terminated (Cadence default 204800); lower here so a
    runaway workflow cannot fill a Pi's disk. The drains of :data:`SHUTDOWN_DRAIN_S`, the
    long poll of :data:`LONG_POLL_S` and the re-dispatch of :data:`ACTIVITY_REDISPATCH_S` (durations as Go strings: the file-based client parses them with ``time.ParseDuration``).
    """
    doc: dict[str, object] = {
        "history.historyCountLimitError": [{"value": history_count_limit_error, "constraints": {}}],
        "system.enableGRPCOutbound": [{"value": True, "constraints": {}}],
    }
    for service, seconds in SHUTDOWN_DRAIN_S.items():
        doc[f"{service}.shutdownDrainDuration"] = [{"value": f"{seconds}s", "constraints": {}}]
    doc["matching.longPollExpirationInterval"] = [{"value": f"{LONG_POLL_S}s", "constraints": {}}]
    doc["history.activityMaxScheduleToStartTimeoutForRetry"] = [
        {"value": f"{ACTIVITY_REDISPATCH_S}s", "constraints": {}}]
    return yaml.safe_dump(doc, sort_keys=True)


def readiness_command(service: str, *, ports: ServicePorts, frontend_address: str, cli: str = "cadence") -> list[str]:
    """The readiness probe of ``service``: serving, not only listening.

    The frontend: it answers the admin API's DescribeCluster on its own gRPC port, which needs
    its handlers registered and its own place in the ring (``WhoAmI``). History, matching and
    worker: the ring the frontend sees lists this pod (its ``$POD_IP`` and TChannel port, the
    ring identity), so the others route shards, task lists and calls to it; a pod leaves the
    ring first thing on SIGTERM. The image ships the ``cadence`` CLI; DescribeCluster reads no
    database. Sources: cadence v1.4.1 ``service/frontend/admin/handler.go`` (DescribeCluster),
    ``tools/cli/admin_cluster_commands.go``.
    """
    if service not in SERVICES:
        raise ConfigError("cadence.service", service, "unknown service", f"use one of {', '.join(SERVICES)}")
    if service == "frontend":
        return [cli, "--address", f"127.0.0.1:{ports.grpc}", "--transport", "grpc", "admin", "cluster", "describe"]
    return ["sh", "-c", f"{cli} --address {frontend_address} --transport grpc admin cluster describe"
                        f' | grep -qF "\\"$POD_IP:{ports.tchannel}\\""']


def server_command(*, root: str, env: str, service: str) -> list[str]:
    """The container command: the server directly, not the image's template script."""
    if service not in SERVICES:
        raise ConfigError("cadence.service", service, "unknown service", f"use one of {', '.join(SERVICES)}")
    return ["cadence-server", "--root", root, "--env", env, "--config", "config", "start", "--services", service]


def schema_env(db: Database, *, schema_dir: str, wait_timeout_s: int = 600) -> dict[str, str]:
    """Environment of :data:`SCHEMA_SCRIPT`, without ``SQL_PASSWORD`` (a secret)."""
    return {
        "SQL_HOST": db.host,
        "SQL_PORT": str(db.port),
        "SQL_USER": db.user,
        "CADENCE_DB": db.cadence_db,
        "VISIBILITY_DB": db.visibility_db,
        "SCHEMA_DIR": schema_dir,
        "WAIT_TIMEOUT_S": str(wait_timeout_s),
    }


def domain_script(*, domain: str, retention_days: int, frontend_address: str, cli: str = "cadence") -> str:
    """Register ``domain`` unless it exists; idempotent, retried until the frontend answers.

    ``cadence --do D domain describe`` succeeds only for an existing domain; ``register``
    of an existing one fails with DomainAlreadyExistsError, also counted as success
    (two Job pods racing). Retention is applied at registration only: changing it later
    is an operator's ``domain update``, never silent.
    """
    q = shlex.quote
    return "\n".join([
        "set -eu",
        f"cli={q(cli)} address={q(frontend_address)} domain={q(domain)}",
        'deadline=$(( $(date +%s) + ${WAIT_TIMEOUT_S:-600} ))',
        "while :; do",
        '  if "$cli" --address "$address" --transport grpc --do "$domain" domain describe >/dev/null 2>&1; then',
        '    echo "domain $domain exists"; exit 0',
        "  fi",
        f'  if out="$("$cli" --address "$address" --transport grpc --do "$domain" domain register --retention {int(retention_days)} 2>&1)"; then',
        f'    echo "registered domain $domain (retention {int(retention_days)} days)"; exit 0',
        "  fi",
        '  case "$out" in *AlreadyExists*|*"already exists"*) echo "domain $domain exists"; exit 0;; esac',
        '  if [ "$(date +%s)" -ge "$deadline" ]; then echo "giving up: $out" >&2; exit 1; fi',
        "  sleep 5",
        "done",
    ])
