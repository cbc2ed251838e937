"""Run a real ZooKeeper ensemble on one host's loopback, from the renderer's output.

Used by the integration tests and by ``bench/zookeeper.py``: it renders each member's
``zoo.cfg`` and ``myid`` with :mod:`final_problem.renderers.zookeeper` (the same functions
the chart and the Pi hosts use), with ports remapped so three members share 127.0.0.1,
and starts them at the version the chart's image pins (``ZOOKEEPER_VERSION``), from the jars
``make zookeeper`` resolves from Maven Central into
``${XDG_CACHE_HOME:-~/.cache}/final-problem/zookeeper-<version>/lib``, on Debian's Java 17
(the image's ``3.9.4-jre-17`` variant runs the same Java); the upgrade rehearsals start members
at the previous patch (``ZOOKEEPER_UPGRADE_FROM``, installed the same way) and again at the
pinned one. Each member logs to its console with
the chart's ``logback.xml`` and serves Prometheus metrics on the rendered port, as in the pod.

Every process it starts is stopped by :meth:`LocalEnsemble.close` (also on ``with`` exit).
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from final_problem import local, versions
from final_problem.clients.zookeeper import four_letter_word, server_mode
from final_problem.charts.zookeeper import LOGBACK, ZooKeeperProps
from final_problem.local import LOOPBACK, free_ports
from final_problem.local.limits import Groups, Limits
from final_problem.profiles import PI, Profile
from final_problem.renderers.zookeeper import EnsembleConfig, Member, java_command, myid_file, zoo_cfg


def zookeeper_home(version: str = versions.ZOOKEEPER_VERSION) -> Path:
    """Where ``make zookeeper`` installs the jars of ``version``."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "final-problem" / f"zookeeper-{version}"


class EnsembleError(RuntimeError):
    """The local ensemble did not reach the expected state in time."""


def missing_binaries(*zookeeper_versions: str) -> list[str]:
    """What is missing to run an ensemble of ``zookeeper_versions`` (default: the pinned one)
    here (empty when ready)."""
    missing = []
    if not shutil.which("java"):
        missing.append("java (Debian package default-jre-headless)")
    for version in zookeeper_versions or (versions.ZOOKEEPER_VERSION,):
        home = zookeeper_home(version)
        if not (home / ".installed").exists() or not (home / "lib" / f"zookeeper-{version}.jar").exists():
            missing.append(f"{home}/lib (run `make zookeeper`)")
    return missing


def classpath(conf_dir: Path, version: str = versions.ZOOKEEPER_VERSION) -> str:
    """The member's configuration folder (its ``logback.xml``), then every jar of ``lib/``:
    the chart's ``/conf:<release>/lib/*``."""
    return f"{conf_dir}:{zookeeper_home(version) / 'lib' / '*'}"


@dataclass
class _Process:
    member: Member
    directory: Path
    #: The ZooKeeper version this member runs (its jars: :func:`zookeeper_home`).
    version: str = versions.ZOOKEEPER_VERSION
    process: subprocess.Popen[bytes] | None = None


class LocalEnsemble:
    """``size`` ZooKeeper members on 127.0.0.1 with free ports, in ``workdir``.

    Short ticks (250 ms) make elections and failure detection quick enough for tests;
    the rest of the configuration is the platform's. Each member runs with the chart's heap
    for ``profile`` and, with ``limits``, under its container's CPU and memory limits.
    """

    def __init__(self, *, workdir: Path, size: int = 3, tick_time_ms: int = 250, profile: Profile = PI,
                 limits: bool = True, version: str = versions.ZOOKEEPER_VERSION) -> None:
        """``version``: the ZooKeeper version every member first starts with (an upgrade
        starts members again at another one)."""
        props = ZooKeeperProps.for_profile(profile)
        heap_mib = props.effective_heap_mib
        self.limits = Limits.of(props.sizing)
        self.groups = Groups(enabled=limits)
        ports = free_ports(4 * size)
        members = tuple(
            Member(
                myid=i + 1, host=LOOPBACK,
                client_port=ports[4 * i], quorum_port=ports[4 * i + 1], election_port=ports[4 * i + 2],
            )
            for i in range(size)
        )
        #: Each member's Prometheus metrics port (the chart's ``metrics_port``, remapped).
        self.metrics_ports = {m.myid: ports[4 * i + 3] for i, m in enumerate(members)}
        self.workdir = workdir
        self.heap_mib = heap_mib
        self.procs = {m.myid: _Process(member=m, directory=workdir / f"member-{m.myid}", version=version) for m in members}
        self.config = EnsembleConfig(
            members=members,
            # Directories are set per member when its files are written.
            tick_time_ms=tick_time_ms,
            client_port_address=LOOPBACK,
            # Servers started here listen on loopback only.
            listen_on_all_ips=False,
            # Each member's own port is set when its files are written.
            metrics_port=self.metrics_ports[members[0].myid],
        )

    # -- lifecycle -------------------------------------------------------------------

    def _write(self, proc: _Process) -> Path:
        data = proc.directory / "data"
        datalog = proc.directory / "datalog"
        for d in (data, datalog):
            d.mkdir(parents=True, exist_ok=True)
        metrics = self.config.metrics_port is not None
        member_config = dataclasses.replace(
            self.config, data_dir=str(data), data_log_dir=str(datalog),
            metrics_port=self.metrics_ports[proc.member.myid] if metrics else None,
            # The provider binds every interface unless told (metricsProvider.httpHost, default
            # 0.0.0.0: Administrator's Guide 3.9, "Metrics Providers"); servers started here
            # listen on loopback only.
            extra=self.config.extra + ((("metricsProvider.httpHost", LOOPBACK),) if metrics else ()),
        )
        cfg = proc.directory / "zoo.cfg"
        cfg.write_text(zoo_cfg(member_config, client_port=proc.member.client_port))
        # The chart's logback.xml, found on the classpath (the chart mounts it in /conf).
        (proc.directory / "logback.xml").write_text(LOGBACK)
        (data / "myid").write_text(myid_file(proc.member.myid))
        return cfg

    def start(self, myid: int, version: str | None = None) -> subprocess.Popen[bytes]:
        """Start member ``myid`` (again), at ``version`` (default: the version it ran); its
        data directories are kept. Returns its process."""
        proc = self.procs[myid]
        if proc.process is not None and proc.process.poll() is None:
            if version is not None and version != proc.version:
                raise EnsembleError(f"member {myid} runs {proc.version}: stop it before starting {version}")
            return proc.process
        if version is not None:
            proc.version = version
        cfg = self._write(proc)
        command = java_command(
            java=shutil.which("java") or "java", classpath=classpath(proc.directory, proc.version), config_path=str(cfg),
            heap_mib=self.heap_mib,
        )
        command.insert(1, local.gc_log_flag(proc.directory))
        log = open(proc.directory / "server.log", "ab")
        try:
            proc.process = subprocess.Popen(
                self.groups.wrap(f"zookeeper-{myid}", self.limits, command), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=proc.directory, start_new_session=True,
            )
        finally:
            log.close()
        return proc.process

    def start_all(self) -> None:
        for myid in self.procs:
            self.start(myid)

    def kill(self, myid: int) -> None:
        """Kill member ``myid`` with SIGKILL: a crash, not a clean shutdown."""
        proc = self.procs[myid]
        if proc.process is None:
            return
        local.kill_group(proc.process, timeout_s=10)
        proc.process = None

    def close(self) -> None:
        """Stop every member this ensemble started."""
        for myid in self.procs:
            try:
                self.kill(myid)
            except ProcessLookupError:
                pass
        self.groups.remove_all()

    def __enter__(self) -> "LocalEnsemble":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- observation -----------------------------------------------------------------

    def gc_pauses_ms(self) -> list[float]:
        """Every member's stop-the-world GC pauses, in ms (from their GC logs)."""
        return local.gc_pauses_ms(p.directory for p in self.procs.values())

    def running(self) -> list[int]:
        return [i for i, p in self.procs.items() if p.process is not None and p.process.poll() is None]

    def metrics_url(self, myid: int) -> str:
        """Member ``myid``'s Prometheus endpoint (the provider serves ``/metrics``)."""
        return f"http://{self.procs[myid].member.host}:{self.metrics_ports[myid]}/metrics"

    def client_address(self, myid: int) -> str:
        m = self.procs[myid].member
        return f"{m.host}:{m.client_port}"

    @property
    def hosts(self) -> str:
        """The kazoo connection string of all members."""
        return ",".join(self.client_address(i) for i in self.procs)

    def modes(self) -> dict[int, str | None]:
        """Each running member's mode (leader, follower) or None when not serving."""
        result: dict[int, str | None] = {}
        for myid in self.running():
            m = self.procs[myid].member
            result[myid] = server_mode(host=m.host, port=m.client_port, timeout=1.0)
        return result

    def reported_version(self, myid: int) -> str | None:
        """The version member ``myid`` reports (``srvr``: "Zookeeper version: 3.9.4-<commit>,
        built on ..."), or None when it does not answer."""
        m = self.procs[myid].member
        text = four_letter_word(host=m.host, port=m.client_port, word="srvr", timeout=1.0)
        found = re.search(r"^Zookeeper version: ([0-9.]+)", text, re.MULTILINE)
        return found.group(1) if found else None

    def leader(self) -> int | None:
        leaders = [i for i, mode in self.modes().items() if mode == "leader"]
        return leaders[0] if len(leaders) == 1 else None

    def wait_for_quorum(self, *, timeout: float = 30.0) -> int:
        """Wait until one running member leads and every other running one follows; return the leader."""
        def settled() -> int | None:
            modes = self.modes()
            if not modes or any(mode not in ("leader", "follower") for mode in modes.values()):
                return None
            return self.leader()
        return local.wait_for("a leader and followers", settled, timeout_s=timeout, interval_s=0.2, error=EnsembleError)

    def log(self, myid: int) -> str:
        path = self.procs[myid].directory / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""
