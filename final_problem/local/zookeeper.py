"""Run a real ZooKeeper ensemble on one host's loopback, from the renderer's output.

Used by the integration tests and by ``bench/zookeeper.py``: it renders each member's
``zoo.cfg`` and ``myid`` with :mod:`final_problem.renderers.zookeeper` (the same functions
the chart and the Pi hosts use), with ports remapped so three members share 127.0.0.1,
and starts them with Debian's ``zookeeper`` package (``sudo make system-deps``).

Every process it starts is stopped by :meth:`LocalEnsemble.close` (also on ``with`` exit).
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from final_problem import local
from final_problem.clients.zookeeper import server_mode
from final_problem.charts.zookeeper import ZooKeeperProps
from final_problem.local import LOOPBACK, free_ports
from final_problem.local.limits import Groups, Limits
from final_problem.profiles import PI, Profile
from final_problem.renderers.zookeeper import EnsembleConfig, Member, java_command, myid_file, zoo_cfg

#: Debian's ``zookeeper`` package: the jar's manifest lists its dependencies.
DEBIAN_JAR = "/usr/share/java/zookeeper.jar"
#: An SLF4J binding that logs to stderr; without one the server is silent.
DEBIAN_SLF4J_SIMPLE = "/usr/share/java/slf4j-simple.jar"


class EnsembleError(RuntimeError):
    """The local ensemble did not reach the expected state in time."""


def missing_binaries() -> list[str]:
    """What is missing to run an ensemble here (empty when ready)."""
    missing = []
    if not shutil.which("java"):
        missing.append("java (Debian package default-jre-headless)")
    if not Path(DEBIAN_JAR).exists():
        missing.append(f"{DEBIAN_JAR} (Debian package zookeeper)")
    return missing


@dataclass
class _Process:
    member: Member
    directory: Path
    process: subprocess.Popen[bytes] | None = None


class LocalEnsemble:
    """``size`` ZooKeeper members on 127.0.0.1 with free ports, in ``workdir``.

    Short ticks (250 ms) make elections and failure detection quick enough for tests;
    the rest of the configuration is the platform's. Each member runs with the chart's heap
    for ``profile`` and, with ``limits``, under its container's CPU and memory limits.
    """

    def __init__(self, *, workdir: Path, size: int = 3, tick_time_ms: int = 250, profile: Profile = PI,
                 limits: bool = True) -> None:
        props = ZooKeeperProps.for_profile(profile)
        heap_mib = props.effective_heap_mib
        self.limits = Limits.of(props.sizing)
        self.groups = Groups(enabled=limits)
        ports = free_ports(3 * size)
        members = tuple(
            Member(
                myid=i + 1, host=LOOPBACK,
                client_port=ports[3 * i], quorum_port=ports[3 * i + 1], election_port=ports[3 * i + 2],
            )
            for i in range(size)
        )
        self.workdir = workdir
        self.heap_mib = heap_mib
        self.procs = {m.myid: _Process(member=m, directory=workdir / f"member-{m.myid}") for m in members}
        self.config = EnsembleConfig(
            members=members,
            # Directories are set per member when its files are written.
            tick_time_ms=tick_time_ms,
            client_port_address=LOOPBACK,
            # Servers started here listen on loopback only.
            listen_on_all_ips=False,
            # Debian's package has no Prometheus provider jar.
            metrics_port=None,
        )

    # -- lifecycle -------------------------------------------------------------------

    def _write(self, proc: _Process) -> Path:
        data = proc.directory / "data"
        datalog = proc.directory / "datalog"
        for d in (data, datalog):
            d.mkdir(parents=True, exist_ok=True)
        member_config = dataclasses.replace(self.config, data_dir=str(data), data_log_dir=str(datalog))
        cfg = proc.directory / "zoo.cfg"
        cfg.write_text(zoo_cfg(member_config, client_port=proc.member.client_port))
        (data / "myid").write_text(myid_file(proc.member.myid))
        return cfg

    def start(self, myid: int) -> None:
        """Start member ``myid`` (again); its data directories are kept."""
        proc = self.procs[myid]
        if proc.process is not None and proc.process.poll() is None:
            return
        cfg = self._write(proc)
        classpath = ":".join(p for p in (str(proc.directory), DEBIAN_JAR, DEBIAN_SLF4J_SIMPLE) if Path(p).exists())
        command = java_command(java=shutil.which("java") or "java", classpath=classpath, config_path=str(cfg), heap_mib=self.heap_mib)
        command.insert(1, local.gc_log_flag(proc.directory))
        log = open(proc.directory / "server.log", "ab")
        try:
            proc.process = subprocess.Popen(
                self.groups.wrap(f"zookeeper-{myid}", self.limits, command), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=proc.directory, start_new_session=True,
            )
        finally:
            log.close()

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
