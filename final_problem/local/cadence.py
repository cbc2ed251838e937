"""Cadence's tools on one host, run from what the chart renders.

``make cadence-tools`` (a dependency of ``make test`` and ``make bench``) builds
``cadence-sql-tool`` and the ``cadence`` CLI from the ``github.com/uber/cadence`` Go module at
:data:`final_problem.versions.CADENCE_VERSION` into :func:`cache_dir` (see
``deps/cadence/``); the schema files it applies are the module's ``schema/postgres``, the
same files the server image ships under ``/etc/cadence/schema/postgres``.

:func:`run_schema_script` runs the schema Job's script (:data:`~final_problem.renderers.cadence.SCHEMA_SCRIPT`)
against a local PostgreSQL exactly as the Job and the server pods' init containers run it;
:func:`run_domain_script` runs the domain Job's script with the real CLI.

The same build makes ``cadence-server`` from ``deps/cadence/cmd/cadence-server``: the
release's own ``main`` package and its service wiring (``cmd/server``) form a nested module,
``github.com/uber/cadence/cmd/server``, that the Go module proxy does not serve
(``@v/v1.4.1.info``: 404 Not Found), so the project's launcher wires the four services from
the root module's packages, with the image binary's command line. :class:`LocalCadence`
starts one process per service, as the chart runs one Deployment per service, from
:func:`~final_problem.renderers.cadence.server_config` with ports and addresses remapped to
one host and ringpop bootstrapped from the four TChannel ports (the chart: the membership
Service's SRV record).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
from pathlib import Path
from typing import IO

from final_problem import local, versions
from final_problem.charts.cadence import CadenceProps
from final_problem.local import LOOPBACK, free_ports
from final_problem.profiles import PI
from final_problem.renderers import cadence as render
from final_problem.renderers.cadence import SCHEMA_SCRIPT, Database, domain_script, schema_env


class CadenceToolsMissing(RuntimeError):
    """The tools are not built: run ``make cadence-tools``."""


def cache_dir() -> Path:
    """``${XDG_CACHE_HOME:-~/.cache}/final-problem/cadence-<version>``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "final-problem" / f"cadence-{versions.CADENCE_VERSION}"


def sql_tool() -> Path:
    path = cache_dir() / "bin" / "cadence-sql-tool"
    if not path.exists():
        raise CadenceToolsMissing(f"{path} is missing: run `make cadence-tools` (deps/cadence/build.sh)")
    return path


def schema_dir() -> Path:
    """The module's ``schema/postgres`` folder (``cadence/``, ``visibility/``), copied by the build."""
    path = cache_dir() / "schema" / "postgres"
    if not (path / "cadence" / "versioned").is_dir():
        raise CadenceToolsMissing(f"{path} is missing: run `make cadence-tools` (deps/cadence/build.sh)")
    return path


def latest_version(kind: str, *, root: Path | None = None) -> str:
    """Newest ``vX.Y`` folder of ``<schema dir>/<kind>/versioned``, without the ``v``."""
    folders = [p.name[1:] for p in ((root or schema_dir()) / kind / "versioned").glob("v*") if p.is_dir()]
    if not folders:
        raise CadenceToolsMissing(f"no versioned schema under {(root or schema_dir()) / kind}")
    return max(folders, key=lambda v: tuple(int(x) for x in re.findall(r"\d+", v)))


def run_schema_script(
    mode: str, *, database: Database, password: str, wait_timeout_s: int = 60, timeout_s: float = 300,
) -> subprocess.CompletedProcess[str]:
    """Run the schema script (``setup`` or ``wait``) with the locally built tool."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        **schema_env(database, schema_dir=str(schema_dir()), wait_timeout_s=wait_timeout_s),
        "SQL_PASSWORD": password,
        "SQL_TOOL": str(sql_tool()),
    }
    return subprocess.run(
        ["sh", "-c", SCHEMA_SCRIPT, "cadence-schema.sh", mode],
        env=env, capture_output=True, text=True, timeout=timeout_s,
    )


def cli() -> Path:
    path = cache_dir() / "bin" / "cadence"
    if not path.exists():
        raise CadenceToolsMissing(f"{path} is missing: run `make cadence-tools` (deps/cadence/build.sh)")
    return path


def run_domain_script(
    *, frontend_address: str, domain: str, retention_days: int, wait_timeout_s: int = 60, timeout_s: float = 300,
) -> subprocess.CompletedProcess[str]:
    """Run the domain Job's script with the locally built CLI."""
    script = domain_script(domain=domain, retention_days=retention_days, frontend_address=frontend_address, cli=str(cli()))
    return subprocess.run(
        ["sh", "-c", script], capture_output=True, text=True, timeout=timeout_s,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "WAIT_TIMEOUT_S": str(wait_timeout_s), "HOME": "/tmp"},
    )


def server_binary() -> Path:
    path = cache_dir() / "bin" / "cadence-server"
    if not path.exists():
        raise CadenceToolsMissing(f"{path} is missing: run `make cadence-tools` (deps/cadence/build.sh)")
    return path


class LocalCadenceError(RuntimeError):
    """A service exited or did not get ready in time."""


class LocalCadence:
    """The four Cadence services on one host, one process each, on a PostgreSQL whose schema
    is current (run :func:`run_schema_script` ``setup`` first, as the schema Job does).

    The configuration is the chart's for the Pi profile (:class:`CadenceProps` defaults:
    shard count, connection pool), rendered by the same function; only ports, the bind and
    broadcast address and ringpop's seeds differ. The password reaches the server as
    ``$SQL_PASSWORD``, as from the chart's Secret. ``kill()`` is a crash (SIGKILL),
    ``start()`` brings a service back on the same configuration.
    """

    ENV = "local"

    def __init__(self, *, database: Database, password: str, workdir: Path,
                 props: CadenceProps | None = None) -> None:
        self.props = props or CadenceProps.for_profile(PI)
        self.password = password
        self.workdir = workdir
        ports = free_ports(3 * len(render.SERVICES))
        self.ports = {
            name: render.ServicePorts(tchannel=ports[3 * i], grpc=ports[3 * i + 1], metrics=ports[3 * i + 2])
            for i, name in enumerate(render.SERVICES)
        }
        self.frontend_address = f"{LOOPBACK}:{self.ports['frontend'].grpc}"
        self.config = render.ServerConfig(
            num_history_shards=self.props.num_history_shards,
            database=Database(host=database.host, port=database.port, user=database.user,
                              cadence_db=self.props.cadence_db, visibility_db=self.props.visibility_db,
                              max_conns=self.props.max_conns),
            ports=self.ports,
            bind_on_ip=LOOPBACK,
            broadcast_address=LOOPBACK,
            bootstrap_mode="hosts",
            bootstrap_hosts=tuple(f"{LOOPBACK}:{p.tchannel}" for p in self.ports.values()),
            frontend_address=self.frontend_address,
            dynamic_config_path=str(workdir / "dynamicconfig" / "dynamicconfig.yaml"),
        )
        (workdir / "config").mkdir(parents=True, exist_ok=True)
        (workdir / "dynamicconfig").mkdir(exist_ok=True)
        (workdir / "config" / f"{self.ENV}.yaml").write_text(render.server_config(self.config))
        (workdir / "dynamicconfig" / "dynamicconfig.yaml").write_text(render.dynamic_config())
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: dict[str, IO[bytes]] = {}

    def log_path(self, service: str) -> Path:
        return self.workdir / f"{service}.log"

    def start(self, service: str) -> None:
        """Start ``service`` with the chart's command line, the binary path aside."""
        argv = render.server_command(root=str(self.workdir), env=self.ENV, service=service)
        argv[0] = str(server_binary())
        if service in self._logs:
            self._logs[service].close()
        self._logs[service] = open(self.log_path(service), "ab")
        self.processes[service] = subprocess.Popen(
            argv, stdout=self._logs[service], stderr=subprocess.STDOUT, start_new_session=True,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "SQL_PASSWORD": self.password, "HOME": str(self.workdir)},
        )

    def start_all(self) -> None:
        for service in render.SERVICES:
            self.start(service)

    def _serving(self, service: str) -> bool:
        process = self.processes.get(service)
        if process is not None and process.poll() is not None:
            raise LocalCadenceError(f"{service} exited with {process.returncode}: {self.log_tail(service)}")
        # The chart's readiness probe: the service's gRPC port accepts connections.
        with socket.socket() as s:
            s.settimeout(1)
            return s.connect_ex((LOOPBACK, self.ports[service].grpc)) == 0

    def wait_ready(self, *, timeout_s: float = 90) -> None:
        for service in self.processes:
            local.wait_for(f"cadence {service}", lambda s=service: self._serving(s), timeout_s=timeout_s,
                           interval_s=0.2, error=LocalCadenceError)

    def kill(self, service: str) -> None:
        """SIGKILL ``service``: a crash."""
        process = self.processes.pop(service, None)
        if process is not None:
            local.kill_group(process)

    def kill_all(self) -> None:
        for service in list(self.processes):
            self.kill(service)

    def close(self) -> None:
        """SIGTERM every service, SIGKILL what is still running after 10 s (a frontend with
        clients' long polls open takes about 30 s to drain; the chart gives pods 60 s)."""
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                local.kill_group(process)
        self.processes.clear()
        for log in self._logs.values():
            log.close()
        self._logs.clear()

    def __enter__(self) -> "LocalCadence":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def log_tail(self, service: str, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path(service).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

