"""Render the Consul server configuration (JSON) and the mesh's Consul API payloads.

JSON rather than HCL so the tests parse exactly what the servers read without Consul
(a Consul server cannot run here: it is BUSL-licensed and installs from no registry these
machines reach). No secret is rendered: the gossip key and the TLS material reach the
servers as files and an environment variable from Secrets generated in the cluster.

Sources: Consul docs (1.22), "Agent configuration file reference" (``tls``, ``acl``,
``ports``, ``telemetry``, ``encrypt_verify_*``), "Enable TLS encryption for Consul
agents", "Gossip encryption", "ACL system overview" (default policy),
"Kubernetes auth method", "Binding rules", "Service intentions configuration entry",
"Catalog HTTP API" (register), "Consul dataplane".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence

from final_problem.errors import ConfigError

_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")

DATACENTER = "dc1"
#: The domain of Consul's server certificates: ``server.<dc>.<domain>`` is the name
#: every server verifies on the others (``verify_server_hostname``).
DOMAIN = "consul"
TLS_DIR = "/consul/tls"
#: The node every mesh service instance is registered on (there are no client agents).
MESH_NODE = "k8s-service-mesh"
#: Auth method workloads log in through with their service account token.
AUTH_METHOD = "kubernetes"


#: Autopilot adds a (re)joining server to Raft as a non-voter and promotes it once it has
#: been healthy this long (Consul docs, "Autopilot": ``server_stabilization_time``, default
#: 10 s). Rendered rather than left to the default: the StatefulSet's ``minReadySeconds`` is
#: derived from it (charts/consul.py), so both change together.
SERVER_STABILIZATION_S = 10
#: How often the leader's autopilot reconciles (promotes stable non-voters): Consul's
#: ``AutopilotInterval``, 10 s (agent/consul/config.go, DefaultConfig); not a setting.
AUTOPILOT_INTERVAL_S = 10
#: The fewest servers autopilot leaves when it prunes dead ones (``min_quorum``; Consul docs,
#: "Bootstrap configuration": autopilot stops pruning dead servers at this count; no default).
#: The smallest set the chart allows, whatever the count: a 5 -> 3 scale-down whose server
#: died before its leave completed is cleaned up, and nothing is pruned below 3 servers.
MIN_QUORUM = 3
#: Seconds a server added to Raft needs to become a voter: stable for
#: server_stabilization_time, then the leader's next reconcile.
PROMOTION_S = SERVER_STABILIZATION_S + AUTOPILOT_INTERVAL_S


@dataclass(frozen=True, kw_only=True)
class ServerPorts:
    rpc: int = 8300
    serf_lan: int = 8301
    https: int = 8501
    grpc_tls: int = 8502


@dataclass(frozen=True, kw_only=True)
class ServerConfigOptions:
    """What the server configuration depends on; the chart fills it from its props."""

    replicas: int = 3
    #: Stable DNS names of the servers (retry_join).
    join: tuple[str, ...] = ()
    data_dir: str = "/consul/data"
    tls_dir: str = TLS_DIR
    ports: ServerPorts = ServerPorts()
    log_level: str = "INFO"


def server_config(options: ServerConfigOptions) -> dict[str, Any]:
    """The configuration every server reads (``-config-dir``), as a JSON document."""
    if options.replicas < 3 or options.replicas % 2 == 0:
        raise ConfigError(
            "consul.replicas", options.replicas,
            "Raft needs an odd number of servers, at least 3: quorum is floor(n/2)+1",
            "use 3 or 5",
        )
    p = options.ports
    tls_files = {
        "ca_file": f"{options.tls_dir}/ca.crt",
        "cert_file": f"{options.tls_dir}/tls.crt",
        "key_file": f"{options.tls_dir}/tls.key",
    }
    return {
        "datacenter": DATACENTER,
        "domain": DOMAIN,
        "server": True,
        "bootstrap_expect": options.replicas,
        "data_dir": options.data_dir,
        "retry_join": list(options.join),
        "bind_addr": "0.0.0.0",
        "client_addr": "0.0.0.0",
        "ports": {
            "server": p.rpc,
            "serf_lan": p.serf_lan,
            # Plain-text HTTP and gRPC off: only the TLS listeners answer.
            "http": -1,
            "https": p.https,
            "grpc": -1,
            "grpc_tls": p.grpc_tls,
            # One datacenter: no WAN gossip, no DNS interface (the mesh does not use it).
            "serf_wan": -1,
            "dns": -1,
        },
        "ui_config": {"enabled": True},
        # Gossip: the key arrives on the command line (-encrypt, from a Secret), and
        # every gossip message in or out must be encrypted with it.
        "encrypt_verify_incoming": True,
        "encrypt_verify_outgoing": True,
        "tls": {
            "defaults": {**tls_files, "verify_incoming": True, "verify_outgoing": True, "tls_min_version": "TLSv1_2"},
            # Servers check that a peer's certificate is server.<dc>.<domain>: a
            # client certificate signed by the same CA cannot pose as a server.
            "internal_rpc": {"verify_server_hostname": True},
            # The HTTPS API, the UI and the dataplanes' gRPC authenticate callers with ACL
            # tokens, not client certificates (dataplanes present none), so these two
            # listeners encrypt and authenticate the server but do not ask for a client
            # certificate.
            "https": {"verify_incoming": False},
            "grpc": {"verify_incoming": False, "use_auto_cert": False},
        },
        "acl": {
            "enabled": True,
            "default_policy": "deny",
            # A partitioned server keeps serving cached decisions instead of denying all.
            "down_policy": "extend-cache",
            # Agent tokens set by the ACL Job through the API survive restarts.
            "enable_token_persistence": True,
        },
        "connect": {"enabled": True},
        "peering": {"enabled": False},
        "telemetry": {
            # Enables /v1/agent/metrics?format=prometheus (Consul docs, "Telemetry").
            "prometheus_retention_time": "60s",
            "disable_hostname": True,
        },
        "performance": {"raft_multiplier": 1},
        # A stopping server leaves Raft gracefully: its replacement comes back with the same
        # node ID on a new pod IP and joins at once, instead of waiting for Serf to declare
        # the old address failed while it calls elections (consul-k8s PR #3000). A leave
        # shrinks the peer set, 3 -> 2, which keeps a quorum of 2: with the PDB and the
        # rolling update taking one server at a time, no second server leaves before the
        # first is back as a voter (minReadySeconds, charts/consul.py).
        "leave_on_terminate": True,
        # Read once, when the datacenter bootstraps; a later change needs
        # `consul operator autopilot set-config` (Consul docs, "Bootstrap configuration").
        # The values are Consul's defaults, written out because the chart depends on them,
        # and min_quorum (no default), which membership changes count on.
        "autopilot": {
            "cleanup_dead_servers": True,
            "last_contact_threshold": "200ms",
            "max_trailing_logs": 250,
            "min_quorum": MIN_QUORUM,
            "server_stabilization_time": f"{SERVER_STABILIZATION_S}s",
        },
        "disable_update_check": True,
        "log_json": True,
        "log_level": options.log_level,
    }


#: Membership steps of ``final-problem scale consul.replicas=N`` (charts/consul.py), run in a
#: server with ``kubectl exec``. Both read only the status endpoints, which need no ACL token.
MEMBERSHIP_SH = r"""#!/bin/sh
# Membership steps of the Consul servers, one per call; safe to repeat.
#   check N          refuse unless a leader is elected and Raft lists exactly N servers: one
#                    server less must still leave a quorum of the servers Raft counts.
#   peers N HOLD_S   wait until a leader is elected and Raft lists exactly N servers, then
#                    HOLD_S seconds more (a joining server becomes a voter once stable for
#                    server_stabilization_time and the leader's next autopilot reconcile).
# Failure: one line (what, why, what to do), exit 1.
set -eu
api="https://__NAME__:__HTTPS__/v1/status"
get() {
  curl -sf --max-time 4 --cacert "__TLS__/ca.crt" --resolve "__NAME__:__HTTPS__:127.0.0.1" "$api/$1" || true
}
servers() {
  get peers | tr ',' '\n' | grep -c ':__RPC__' || true
}
has_leader() {
  get leader | grep -q ':__RPC__'
}
timeout_s=${MEMBERSHIP_TIMEOUT_S:-600}
case "${1:-}" in
  check)
    [ "$#" -eq 2 ] || { echo "usage: membership.sh check SERVERS" >&2; exit 1; }
    if ! has_leader || [ "$(servers)" -ne "$2" ]; then
      echo "check: refused, Raft lists $(servers) servers (expected $2) or has no leader; removing a server now could lose the quorum; wait until every server is back (consul operator raft list-peers), then run the command again" >&2
      exit 1
    fi
    echo "a leader and $2 servers"
    ;;
  peers)
    [ "$#" -eq 3 ] || { echo "usage: membership.sh peers SERVERS HOLD_S" >&2; exit 1; }
    deadline=$(($(date +%s) + timeout_s))
    until has_leader && [ "$(servers)" -eq "$2" ]; do
      if [ "$(date +%s)" -ge "$deadline" ]; then
        echo "peers: Raft lists $(servers) servers, not $2, after $timeout_s s; a removed server that died before leaving is pruned by autopilot (cleanup_dead_servers), else consul operator raft remove-peer with an operator token; then run the command again" >&2
        exit 1
      fi
      sleep 2
    done
    sleep "$3"
    echo "a leader and $2 servers"
    ;;
  *)
    echo "usage: membership.sh check SERVERS | peers SERVERS HOLD_S" >&2
    exit 1
    ;;
esac
"""


def membership_script(options: ServerConfigOptions) -> str:
    """:data:`MEMBERSHIP_SH` for these ports and certificate directory."""
    return (MEMBERSHIP_SH.replace("__NAME__", server_name()).replace("__HTTPS__", str(options.ports.https))
            .replace("__RPC__", str(options.ports.rpc)).replace("__TLS__", options.tls_dir))


def server_name() -> str:
    """The name on every server certificate and the one servers verify."""
    return f"server.{DATACENTER}.{DOMAIN}"


# ---- the mesh: services, upstreams, intentions -------------------------------------------

#: Ports the consul-dataplane sidecar takes in every mesh pod: the Envoy public listener
#: (mTLS from other sidecars), Envoy's admin (loopback), the readiness endpoint and the
#: Prometheus endpoint (consul-dataplane defaults; "Consul dataplane CLI reference").
SIDECAR_PUBLIC_PORT = 20000
SIDECAR_ADMIN_PORT = 19000
SIDECAR_READY_PORT = 21000
SIDECAR_METRICS_PORT = 20200
RESERVED_PORTS = {
    SIDECAR_PUBLIC_PORT: "the sidecar's public listener",
    SIDECAR_ADMIN_PORT: "the sidecar's Envoy admin",
    SIDECAR_READY_PORT: "the sidecar's readiness endpoint",
    SIDECAR_METRICS_PORT: "the sidecar's metrics",
}


@dataclass(frozen=True, kw_only=True)
class Upstream:
    """A service this workload calls, reached at 127.0.0.1:``local_port`` through its sidecar."""

    service: str
    local_port: int


@dataclass(frozen=True, kw_only=True)
class MeshService:
    """One workload in the mesh: its Consul service name (= its service account)."""

    name: str
    #: The port the application listens on (on 127.0.0.1 or the pod address).
    port: int
    #: ``http`` or ``tcp`` (Envoy's L7 or L4 proxying, and intentions' kinds).
    protocol: str = "tcp"
    upstreams: tuple[Upstream, ...] = ()

    def __post_init__(self) -> None:
        if not _NAME.match(self.name) or len(self.name) > 63:
            raise ConfigError("mesh.service", self.name, "not a DNS label", "use lower-case letters, digits and '-'")
        if self.protocol not in ("tcp", "http"):
            raise ConfigError(f"mesh.{self.name}.protocol", self.protocol, "unknown protocol", "use 'tcp' or 'http'")
        taken: dict[int, str] = {**RESERVED_PORTS, self.port: f"{self.name}'s own port"}
        if self.port in RESERVED_PORTS:
            raise ConfigError(f"mesh.{self.name}.port", self.port, f"clashes with {RESERVED_PORTS[self.port]}",
                              "use another port, e.g. 8080")
        for u in self.upstreams:
            if u.local_port in taken:
                raise ConfigError(
                    f"mesh.{self.name}.upstreams[{u.service}].local_port", u.local_port,
                    f"clashes with {taken[u.local_port]}",
                    f"use a free port, e.g. {max(list(taken) + [15000]) + 1}",
                )
            if not 1024 <= u.local_port <= 65535:
                raise ConfigError(f"mesh.{self.name}.upstreams[{u.service}].local_port", u.local_port,
                                  "must be 1024-65535 (the sidecar runs without privileges)", "use e.g. 16379")
            taken[u.local_port] = f"the upstream to {u.service}"


@dataclass(frozen=True, kw_only=True)
class Intention:
    """``source`` may (``allow``) or may not (``deny``) call ``destination``."""

    source: str
    destination: str
    action: str = "allow"

    def __post_init__(self) -> None:
        if self.action not in ("allow", "deny"):
            raise ConfigError(f"intention {self.source}->{self.destination}", self.action,
                              "unknown action", "use 'allow' or 'deny'")


def check_mesh(services: Sequence[MeshService], intentions: Sequence[Intention]) -> None:
    """Every upstream and intention names a service in the mesh; every upstream is allowed."""
    known = {s.name for s in services}
    if len(known) != len(services):
        raise ConfigError("mesh.services", [s.name for s in services], "a service is declared twice", "declare each once")
    for s in services:
        for u in s.upstreams:
            if u.service not in known:
                raise ConfigError(
                    f"mesh.{s.name}.upstreams", u.service, "names a service that is not in the mesh",
                    f"use one of {', '.join(sorted(known))}, or enable the component that provides it",
                )
    for i in intentions:
        for side, name in (("source", i.source), ("destination", i.destination)):
            if name not in known:
                raise ConfigError(
                    f"intention {i.source}->{i.destination}.{side}", name, "names a service that is not in the mesh",
                    f"use one of {', '.join(sorted(known))}",
                )
    allowed = {(i.source, i.destination) for i in intentions if i.action == "allow"}
    for s in services:
        for u in s.upstreams:
            if (s.name, u.service) not in allowed:
                raise ConfigError(
                    f"mesh.{s.name}.upstreams", u.service,
                    f"no intention allows {s.name} to call {u.service}: the mesh denies by default, so the call "
                    "would always fail",
                    f"declare Intention(source='{s.name}', destination='{u.service}')",
                )


def intention_entries(intentions: Sequence[Intention]) -> list[dict[str, Any]]:
    """One ``service-intentions`` config entry per destination (PUT /v1/config)."""
    by_destination: dict[str, list[Intention]] = {}
    for i in intentions:
        by_destination.setdefault(i.destination, []).append(i)
    return [
        {
            "Kind": "service-intentions",
            "Name": destination,
            "Sources": [{"Name": i.source, "Action": i.action} for i in sorted(items, key=lambda i: i.source)],
        }
        for destination, items in sorted(by_destination.items())
    ]


def registration(service: MeshService, *, pod_name: str, pod_ip: str, namespace: str) -> dict[str, Any]:
    """Catalog registration (PUT /v1/catalog/register) of one instance and its sidecar."""
    service_id = f"{pod_name}-{service.name}"
    meta = {"k8s-namespace": namespace, "pod-name": pod_name, "managed-by": "final-problem"}
    return {
        "Node": MESH_NODE,
        "Address": "127.0.0.1",
        "SkipNodeUpdate": True,
        "Service": {
            "ID": service_id,
            "Service": service.name,
            "Address": pod_ip,
            "Port": service.port,
            "Meta": meta,
        },
        "Check": {
            "CheckID": f"{service_id}-pod",
            "Name": "Kubernetes pod running",
            "ServiceID": service_id,
            "Status": "passing",
            "Notes": "registered by the pod's own mesh-register sidecar; removed when the pod stops",
        },
    }


def sidecar_registration(service: MeshService, *, pod_name: str, pod_ip: str, namespace: str) -> dict[str, Any]:
    """The sidecar proxy's registration, with the explicit upstreams on localhost."""
    service_id = f"{pod_name}-{service.name}"
    proxy_id = f"{service_id}-sidecar-proxy"
    return {
        "Node": MESH_NODE,
        "Address": "127.0.0.1",
        "SkipNodeUpdate": True,
        "Service": {
            "Kind": "connect-proxy",
            "ID": proxy_id,
            "Service": f"{service.name}-sidecar-proxy",
            "Address": pod_ip,
            "Port": SIDECAR_PUBLIC_PORT,
            "Meta": {"k8s-namespace": namespace, "pod-name": pod_name, "managed-by": "final-problem"},
            "Proxy": {
                "DestinationServiceName": service.name,
                "DestinationServiceID": service_id,
                "LocalServiceAddress": "127.0.0.1",
                "LocalServicePort": service.port,
                "Mode": "direct",  # explicit upstreams: no transparent proxy, no iptables
                "Config": {"protocol": service.protocol},
                "Upstreams": [
                    {"DestinationName": u.service, "LocalBindAddress": "127.0.0.1", "LocalBindPort": u.local_port}
                    for u in service.upstreams
                ],
            },
        },
        "Check": {
            "CheckID": f"{proxy_id}-pod",
            "Name": "Kubernetes pod running",
            "ServiceID": proxy_id,
            "Status": "passing",
        },
    }


def auth_method(*, kubernetes_host: str, ca_cert: str, reviewer_jwt: str) -> dict[str, Any]:
    """The Kubernetes auth method (PUT /v1/acl/auth-method): service account tokens are
    checked with the TokenReview API using ``reviewer_jwt``."""
    return {
        "Name": AUTH_METHOD,
        "Type": "kubernetes",
        "Description": "workloads log in with their Kubernetes service account",
        "Config": {"Host": kubernetes_host, "CACert": ca_cert, "ServiceAccountJWT": reviewer_jwt},
    }


def binding_rules() -> list[dict[str, Any]]:
    """A login gets the service identity named after its service account, and write on
    the mesh node (to register itself there: there are no client agents)."""
    return [
        {"AuthMethod": AUTH_METHOD, "BindType": "service", "BindName": "${serviceaccount.name}",
         "Description": "service identity = service account name"},
        {"AuthMethod": AUTH_METHOD, "BindType": "node", "BindName": MESH_NODE,
         "Description": "register instances on the mesh node"},
    ]
