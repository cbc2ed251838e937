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
starts one process per replica, as the chart runs one Deployment per service, from
:func:`~final_problem.renderers.cadence.server_config` with ports and addresses remapped to
one host and ringpop bootstrapped from every instance's TChannel port (the chart: the
membership Service's SRV record).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import threading
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from final_problem import local, versions
from final_problem.charts.cadence import CadenceProps
from final_problem.local import LOOPBACK, free_ports
from final_problem.local.limits import Groups, Limits
from final_problem.profiles import PI, Profile
from final_problem.renderers import cadence as render
from final_problem.renderers.cadence import SCHEMA_SCRIPT, Database, domain_script, schema_env


if TYPE_CHECKING:
    from final_problem.local.rollout import Pod


def rendered_workloads(profile: Profile = PI) -> dict[str, dict[str, Any]]:
    """The PostgreSQL StatefulSet (``"postgres"``) and the Cadence servers' Deployments (by
    service) as ``profile`` renders them."""
    from final_problem import config, manifests

    charts = manifests.render(config.from_mapping({"components": ["base", "postgres", "cadence"]}), profile.name)
    objects = {name: manifests.chart_objects(chart) for name, chart in charts.items()}
    workloads = {"postgres": next(o for o in objects["postgres"] if o["kind"] == "StatefulSet")}
    for service in render.SERVICES:
        workloads[service] = next(o for o in objects["cadence"]
                                  if o["kind"] == "Deployment" and o["metadata"]["name"] == f"cadence-{service}")
    return workloads


def rendered_budgets(profile: Profile = PI) -> dict[str, dict[str, Any] | None]:
    """The PodDisruptionBudget of each workload of :func:`rendered_workloads` (None: none
    rendered, as for the one PostgreSQL server), matched by its selector."""
    from final_problem import config, manifests

    charts = manifests.render(config.from_mapping({"components": ["base", "postgres", "cadence"]}), profile.name)
    budgets = [o for chart in charts.values() for o in manifests.chart_objects(chart) if o["kind"] == "PodDisruptionBudget"]
    found: dict[str, dict[str, Any] | None] = {}
    for name, workload in rendered_workloads(profile).items():
        labels = workload["spec"]["template"]["metadata"]["labels"]
        found[name] = next((b for b in budgets if b["metadata"].get("namespace") == workload["metadata"].get("namespace")
                            and b["spec"]["selector"]["matchLabels"].items() <= labels.items()), None)
    return found


class CadenceToolsMissing(RuntimeError):
    """The tools are not built: run ``make cadence-tools``."""


def cache_dir(version: str | None = None) -> Path:
    """``${XDG_CACHE_HOME:-~/.cache}/final-problem/cadence-<version>`` (default: the pinned
    :data:`~final_problem.versions.CADENCE_VERSION`; ``make cadence-tools`` also builds the
    server of :data:`~final_problem.versions.CADENCE_UPGRADE_FROM` there, from
    ``deps/cadence-previous``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "final-problem" / f"cadence-{version or versions.CADENCE_VERSION}"


def _binary(name: str, version: str | None = None) -> Path:
    path = cache_dir(version) / "bin" / name
    if not path.exists():
        raise CadenceToolsMissing(f"{path} is missing: run `make cadence-tools` (deps/cadence/build.sh)")
    return path


def sql_tool() -> Path:
    return _binary("cadence-sql-tool")


def schema_dir(version: str | None = None) -> Path:
    """The module's ``schema/postgres`` folder (``cadence/``, ``visibility/``) at ``version``
    (default: the pinned one), copied by the build."""
    path = cache_dir(version) / "schema" / "postgres"
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
    schema_version: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run the schema script (``setup`` or ``wait``) with the locally built tool (the pinned
    release's), on the schema files of ``schema_version`` (default: the pinned release's, as
    the schema Job runs it)."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        **schema_env(database, schema_dir=str(schema_dir(schema_version)), wait_timeout_s=wait_timeout_s),
        "SQL_PASSWORD": password,
        "SQL_TOOL": str(sql_tool()),
    }
    return subprocess.run(
        ["sh", "-c", SCHEMA_SCRIPT, "cadence-schema.sh", mode],
        env=env, capture_output=True, text=True, timeout=timeout_s,
    )


def cli() -> Path:
    return _binary("cadence")


def run_domain_script(
    *, frontend_address: str, domain: str, retention_days: int, wait_timeout_s: int = 60, timeout_s: float = 300,
) -> subprocess.CompletedProcess[str]:
    """Run the domain Job's script with the locally built CLI."""
    script = domain_script(domain=domain, retention_days=retention_days, frontend_address=frontend_address, cli=str(cli()))
    return subprocess.run(
        ["sh", "-c", script], capture_output=True, text=True, timeout=timeout_s,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "WAIT_TIMEOUT_S": str(wait_timeout_s), "HOME": "/tmp"},
    )


def server_binary(version: str | None = None) -> Path:
    """``cadence-server`` at ``version`` (default: the pinned one)."""
    return _binary("cadence-server", version)


def require_binaries() -> None:
    """Everything a local server needs (the server, the schema tool, the CLI the domain Job
    uses); raises :class:`CadenceToolsMissing` naming the first one missing."""
    server_binary()
    sql_tool()
    cli()


class LocalCadenceError(RuntimeError):
    """A service exited or did not get ready in time."""


class LocalCadence:
    """The Cadence services on one host, one process per replica, on a PostgreSQL whose schema
    is current (run :func:`run_schema_script` ``setup`` first, as the schema Job does).

    The configuration is the chart's (:class:`CadenceProps`, the Pi profile's by default:
    shard count, connection pool, replicas per service), rendered by the same function; only
    ports, the bind and broadcast address and ringpop's seeds differ. Each replica is an
    instance named ``<service>-<n>`` with ports of its own, so it loads a configuration file
    of its own (``config/<instance>.yaml``, the ``--env`` it starts with). The password
    reaches the server as ``$SQL_PASSWORD``, as from the chart's Secret. ``kill()`` is a
    crash (SIGKILL), ``start()`` brings an instance back on the same configuration.
    """

    def __init__(self, *, database: Database, password: str, workdir: Path,
                 props: CadenceProps | None = None, limits: bool = True, frontend_address: str | None = None,
                 server_version: str | None = None) -> None:
        """With ``limits``, each instance runs under its service's container limits.
        ``frontend_address`` is where clients and the services reach the frontend (the chart's
        Service; default: the first frontend's own gRPC port). ``server_version``: the
        release every instance starts from now on (the image of the Deployments' pod
        template; default: the pinned one); an upgrade changes it, then rolls the pods."""
        self.props = props or CadenceProps.for_profile(PI)
        self.server_version = server_version or versions.CADENCE_VERSION
        self.groups = Groups(enabled=limits)
        self.password = password
        self.workdir = workdir
        #: Instance name (``history-1``) to its service.
        self.instances = {f"{name}-{n}": name for name, svc in self.props.services.items() for n in range(svc.replicas)}
        ports = free_ports(3 * len(self.instances))
        self.ports = {
            instance: render.ServicePorts(tchannel=ports[3 * i], grpc=ports[3 * i + 1], metrics=ports[3 * i + 2])
            for i, instance in enumerate(self.instances)
        }
        #: The first frontend's gRPC address (clients, the CLI, the worker service).
        self.frontend_address = frontend_address or f"{LOOPBACK}:{self.ports['frontend-0'].grpc}"
        database = Database(host=database.host, port=database.port, user=database.user,
                            cadence_db=self.props.cadence_db, visibility_db=self.props.visibility_db,
                            max_conns=self.props.max_conns)
        self.database = database
        self.dynamic_config = workdir / "dynamicconfig" / "dynamicconfig.yaml"
        (workdir / "config").mkdir(parents=True, exist_ok=True)
        self.dynamic_config.parent.mkdir(exist_ok=True)
        self.dynamic_config.write_text(render.dynamic_config())
        for instance in self.instances:
            self._write_config(instance, seeds=tuple(self.instances))
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        #: Instances whose pod is gone (deleted and exited).
        self.gone: set[str] = set()
        self._logs: dict[str, IO[bytes]] = {}
        # Deployments roll side by side: instances are added, started and removed from threads.
        self._lock = threading.RLock()

    def _write_config(self, instance: str, *, seeds: tuple[str, ...]) -> None:
        """``config/<instance>.yaml``: ringpop seeded with the TChannel ports of ``seeds``."""
        service = self.instances[instance]
        # Every service's section is needed: a service with no instance among the seeds (its
        # old pod gone, its replacement not yet added) keeps its last instance's ports.
        ports = {name: self.ports[next((i for i in seeds if self.instances[i] == name), self.of(name)[-1])]
                 for name in render.SERVICES}
        ports[service] = self.ports[instance]
        config = render.ServerConfig(
            num_history_shards=self.props.num_history_shards, database=self.database, ports=ports,
            bind_on_ip=LOOPBACK, broadcast_address=LOOPBACK, bootstrap_mode="hosts",
            bootstrap_hosts=tuple(f"{LOOPBACK}:{self.ports[i].tchannel}" for i in seeds),
            frontend_address=self.frontend_address, dynamic_config_path=str(self.dynamic_config),
        )
        (self.workdir / "config" / f"{instance}.yaml").write_text(render.server_config(config))

    def add_instance(self, service: str) -> str:
        """A new instance of ``service`` (a new pod of its Deployment) with ports of its own,
        seeded with the instances running now (the membership Service's SRV record lists the
        pods there are); not started."""
        with self._lock:
            n = len(self.of(service))
            while f"{service}-{n}" in self.instances:
                n += 1
            instance = f"{service}-{n}"
            tchannel, grpc, metrics = free_ports(3)
            self.instances[instance] = service
            self.ports[instance] = render.ServicePorts(tchannel=tchannel, grpc=grpc, metrics=metrics)
            running = tuple(i for i, p in self.processes.items() if p.poll() is None)
            # Every service needs a section: one not running now keeps its last instance's.
            others = tuple(self.of(name)[-1] for name in render.SERVICES
                           if not any(self.instances[i] == name for i in running) and name != service)
            self._write_config(instance, seeds=(*running, *others, instance))
            return instance

    def pod(self, instance: str, deployment: dict[str, Any]) -> "Pod":
        """``instance`` as a pod of the rendered ``deployment``, not yet run: the rendered
        readiness command run here (the CLI built from the same release, this instance's
        ports, ``frontend_address`` for the frontend Service, ``POD_IP`` 127.0.0.1), the
        rendered grace period; its address is its gRPC port."""
        from final_problem.local.rollout import ExecProbe, Pod

        service = self.instances[instance]
        spec = deployment["spec"]["template"]["spec"]
        container = next(c for c in spec["containers"] if c["name"] == service)
        probe = container["readinessProbe"]
        argv = list(probe["exec"]["command"])
        rendered = {p["name"]: p["containerPort"] for p in container["ports"]}
        ports = self.ports[instance]
        if service == "frontend":
            argv[0] = str(cli())
            argv = [a.replace(f"127.0.0.1:{rendered['grpc']}", f"{LOOPBACK}:{ports.grpc}") for a in argv]
        else:
            script = argv[-1]
            rendered_frontend = script.split("--address ", 1)[1].split(" ", 1)[0]
            script = script.replace(f"cadence --address {rendered_frontend} ", f"{cli()} --address {self.frontend_address} ")
            script = script.replace(f"$POD_IP:{rendered['tchannel']}", f"$POD_IP:{ports.tchannel}")
            argv[-1] = script
        if not any(str(ports.grpc) in a or str(ports.tchannel) in a for a in argv):
            raise LocalCadenceError(f"the rendered readiness probe of {service} names none of its ports: {argv}")

        def start() -> "subprocess.Popen[bytes]":
            with self._lock:
                # Seeds as the membership Service's SRV record lists them when the container
                # starts (publishNotReadyAddresses): every pod that exists, the ones started
                # beside this one included, not only those running when it was added.
                self._write_config(instance, seeds=tuple(i for i in self.instances if i not in self.gone))
                self.start(instance)
                return self.processes[instance]

        def cleanup() -> None:
            with self._lock:
                self.processes.pop(instance, None)
                self.gone.add(instance)

        return Pod(name=instance, start=start, container=container,
                   grace_s=spec.get("terminationGracePeriodSeconds", 30), ports={rendered["grpc"]: ports.grpc},
                   address=(LOOPBACK, ports.grpc), cleanup=cleanup,
                   readiness=ExecProbe.rendered(probe, argv, env={"POD_IP": LOOPBACK, "HOME": "/tmp"}))

    def log_path(self, instance: str) -> Path:
        return self.workdir / f"{instance}.log"

    def start(self, instance: str) -> None:
        """Start ``instance`` with the chart's command line, the binary path and ``--env`` aside."""
        argv = render.server_command(root=str(self.workdir), env=instance, service=self.instances[instance])
        argv[0] = str(server_binary(self.server_version))
        if instance in self._logs:
            self._logs[instance].close()
        self._logs[instance] = open(self.log_path(instance), "ab")
        sizing = self.props.services[self.instances[instance]].sizing
        self.processes[instance] = subprocess.Popen(
            self.groups.wrap(instance, Limits.of(sizing), argv), stdout=self._logs[instance], stderr=subprocess.STDOUT, start_new_session=True,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "SQL_PASSWORD": self.password, "HOME": str(self.workdir)},
        )

    def running_versions(self) -> dict[str, str | None]:
        """Each running instance's release, from the executable the kernel runs for it (the
        ``cadence-<version>`` cache folder of its binary); None: not readable."""
        found: dict[str, str | None] = {}
        for instance, process in self.processes.items():
            if process.poll() is not None:
                continue
            try:
                exe = os.readlink(f"/proc/{process.pid}/exe")
            except OSError:
                found[instance] = None
                continue
            match = re.search(r"/cadence-(v[0-9.]+)/bin/", exe)
            found[instance] = match.group(1) if match else None
        return found

    def start_all(self) -> None:
        for instance in self.instances:
            self.start(instance)

    def of(self, service: str) -> list[str]:
        """The instances of ``service``."""
        return [i for i, s in self.instances.items() if s == service]

    def _serving(self, instance: str) -> bool:
        process = self.processes.get(instance)
        if process is not None and process.poll() is not None:
            raise LocalCadenceError(f"{instance} exited with {process.returncode}: {self.log_tail(instance)}")
        # The chart's readiness probe: the service's gRPC port accepts connections.
        with socket.socket() as s:
            s.settimeout(1)
            return s.connect_ex((LOOPBACK, self.ports[instance].grpc)) == 0

    def wait_ready(self, *, timeout_s: float = 90) -> None:
        for instance in self.processes:
            local.wait_for(f"cadence {instance}", lambda i=instance: self._serving(i), timeout_s=timeout_s,
                           interval_s=0.2, error=LocalCadenceError)

    def kill(self, instance: str) -> None:
        """SIGKILL ``instance``: a crash."""
        process = self.processes.pop(instance, None)
        if process is not None:
            local.kill_group(process)

    def kill_all(self) -> None:
        for instance in list(self.processes):
            self.kill(instance)

    def close(self) -> None:
        """SIGTERM every instance, SIGKILL what is still running after 10 s (a frontend with
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
        self.groups.remove_all()

    def __enter__(self) -> "LocalCadence":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def register_domain(self, *, wait_timeout_s: int = 90) -> subprocess.CompletedProcess[str]:
        """The domain Job's script against this server, with the chart's domain and retention."""
        return run_domain_script(frontend_address=self.frontend_address, domain=self.props.domain,
                                 retention_days=self.props.retention_days, wait_timeout_s=wait_timeout_s)

    def shard_owners(self) -> dict[int, str]:
        """History shard to the instance that owns it by the ring, as the frontend reports it
        (``cadence admin shard list``, the admin API's DescribeShardDistribution)."""
        result = subprocess.run(
            [str(cli()), "--address", self.frontend_address, "--transport", "grpc", "admin", "shard", "list",
             "--format", "json"],
            input="", capture_output=True, text=True, timeout=60, env={"PATH": os.environ.get("PATH", ""), "HOME": "/tmp"},
        )
        if result.returncode != 0:
            raise LocalCadenceError(f"admin shard list failed: {result.stderr.strip()[-500:]}")
        by_address = {f"{LOOPBACK}:{p.tchannel}": instance for instance, p in self.ports.items()}
        return {int(shard): by_address.get(identity, identity)
                for shard, identity in re.findall(r'"ShardID": (\d+),\s*"Identity": "([^"]+)"', result.stdout)}

    def log_tail(self, instance: str, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path(instance).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""
