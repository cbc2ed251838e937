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
from typing import TYPE_CHECKING, Any, Callable, Sequence

from final_problem import local, versions
from final_problem.clients.zookeeper import four_letter_word, server_mode
from final_problem.charts.zookeeper import LOGBACK, ZooKeeperProps
from final_problem.local import LOOPBACK, free_ports
from final_problem.local.limits import Groups, Limits
from final_problem.profiles import PI, Profile
from final_problem.renderers.zookeeper import (
    RECONFIG_SCRIPT_PATH, START_SCRIPT_PATH, EnsembleConfig, Member, dynamic_cfg, java_command, myid_file, zoo_cfg,
)

if TYPE_CHECKING:
    from final_problem.local.rollout import PodSet, Readiness


def rendered_ensemble(profile: Profile = PI) -> tuple[dict[str, Any], dict[str, Any]]:
    """The chart's StatefulSet and PodDisruptionBudget as ``profile`` renders them."""
    from final_problem import config, manifests

    settings = config.from_mapping({"components": ["base", "zookeeper"]})
    objects = manifests.chart_objects(manifests.render(settings, profile.name)["zookeeper"])
    return (next(o for o in objects if o["kind"] == "StatefulSet"),
            next(o for o in objects if o["kind"] == "PodDisruptionBudget"))


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
        elif not list((home / "lib").glob("commons-cli-*.jar")):
            # zkCli, which the chart's reconfig script runs, needs it (deps/zookeeper/pom.xml).
            missing.append(f"{home}/lib/commons-cli-*.jar (run `make zookeeper` again: its pom gained it)")
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

    ``dynamic``: the members start as the chart starts them, through its start script
    (dynamic membership: the initial list is the ``size`` first members, the membership
    then lives on each member's data directory); ``spare`` more members have ports and
    directories for growing the ensemble (:meth:`exec_step` runs the chart's reconfig
    script), and ``ensemble_address`` stands for the client Service a starting member asks.
    """

    def __init__(self, *, workdir: Path, size: int = 3, tick_time_ms: int = 250, profile: Profile = PI,
                 limits: bool = True, jvm_options: Sequence[str] = (),
                 version: str = versions.ZOOKEEPER_VERSION, dynamic: bool = False, spare: int = 0) -> None:
        """``version``: the ZooKeeper version every member first starts with (an upgrade
        starts members again at another one)."""
        props = ZooKeeperProps.for_profile(profile)
        heap_mib = props.effective_heap_mib
        self.limits = Limits.of(props.sizing)
        self.groups = Groups(enabled=limits)
        if spare and not dynamic:
            raise EnsembleError("spare members join only with dynamic membership (dynamic=True)")
        ports = free_ports(4 * (size + spare))
        every = tuple(
            Member(
                myid=i + 1, host=LOOPBACK,
                client_port=ports[4 * i], quorum_port=ports[4 * i + 1], election_port=ports[4 * i + 2],
            )
            for i in range(size + spare)
        )
        members = every[:size]
        #: Each member's Prometheus metrics port (the chart's ``metrics_port``, remapped).
        self.metrics_ports = {m.myid: ports[4 * i + 3] for i, m in enumerate(every)}
        self.dynamic = dynamic
        #: The client Service a starting member asks for the membership (``host:port``).
        self.ensemble_address = f"{LOOPBACK}:1"
        self.workdir = workdir
        self.heap_mib = heap_mib
        #: JVM options added to the chart's (measurement only, e.g. Native Memory Tracking).
        self.jvm_options = tuple(jvm_options)
        self.procs = {m.myid: _Process(member=m, directory=workdir / f"member-{m.myid}", version=version) for m in every}
        chart = props.ensemble(hosts=tuple(f"member-{i}" for i in range(size))) if dynamic else None
        self.config = EnsembleConfig(
            members=members,
            # Directories are set per member when its files are written.
            tick_time_ms=tick_time_ms,
            client_port_address=LOOPBACK,
            # Servers started here listen on loopback only.
            listen_on_all_ips=False,
            # Each member's own port is set when its files are written.
            metrics_port=self.metrics_ports[members[0].myid],
            **({"dynamic": True, "four_letter_words": chart.four_letter_words} if chart is not None else {}),
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
        if self.dynamic:
            # The initial list, as the chart's ConfigMap holds it; the start script writes
            # myid and the member's own zoo.cfg on its data directory.
            (proc.directory / "zoo.cfg.dynamic").write_text(dynamic_cfg(self.config))
        else:
            (data / "myid").write_text(myid_file(proc.member.myid))
        return cfg

    def _start_env(self, proc: _Process) -> dict[str, str]:
        """The chart's start script's environment for this member on this host."""
        m = proc.member
        return {
            "HOSTNAME": f"zookeeper-{m.myid - 1}", "ZOO_DATA_DIR": str(proc.directory / "data"),
            "ZOO_CONF_DIR": str(proc.directory), "ZOO_ENSEMBLE": self.ensemble_address,
            "ZOO_MEMBER_HOST": m.host, "ZOO_MEMBER_CLIENT": f"{LOOPBACK}:{m.client_port}",
            "ZOO_PEER_DOMAIN": "", "ZOO_QUORUM_PORT": str(m.quorum_port), "ZOO_ELECTION_PORT": str(m.election_port),
            "ZOO_CLIENT_PORT": str(m.client_port), "ZOO_SUPER_FILE": str(proc.directory / "super-password"),
            "ZOO_CLASSPATH": classpath(proc.directory, proc.version),
        }

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
        command[1:1] = [local.gc_log_flag(proc.directory), *self.jvm_options]
        env = None
        if self.dynamic:
            # The chart's command: its start script, then the JVM without the config path
            # (the script adds the member's own zoo.cfg on its data directory).
            command = ["bash", str(START_SCRIPT_PATH), *command[:-1]]
            env = {**os.environ, **self._start_env(proc)}
        log = open(proc.directory / "server.log", "ab")
        try:
            proc.process = subprocess.Popen(
                self.groups.wrap(f"zookeeper-{myid}", self.limits, command), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=proc.directory, start_new_session=True, env=env,
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

    # -- as the StatefulSet's pods ----------------------------------------------------

    def readiness_argv(self, container: dict[str, Any], myid: int) -> list[str]:
        """The container's rendered readiness command, aimed at member ``myid``'s client port."""
        command = list(container["readinessProbe"]["exec"]["command"])
        rendered_port = next(p["containerPort"] for p in container["ports"] if p["name"] == "client")
        target = f"/dev/tcp/127.0.0.1/{rendered_port} "
        if target not in command[-1]:
            raise EnsembleError(f"the rendered readiness probe does not ask 127.0.0.1:{rendered_port}: {command}")
        command[-1] = command[-1].replace(target, f"/dev/tcp/{LOOPBACK}/{self.procs[myid].member.client_port} ")
        return command

    def pod_set(self, statefulset: dict[str, Any], pdb: dict[str, Any] | None = None, *,
                readiness: "Callable[[int], Readiness] | None" = None,
                version: Callable[[], str | None] = lambda: None) -> "PodSet":
        """The members as the rendered StatefulSet's pods, not yet started (:meth:`PodSet.launch`):
        ordinal ``i`` is member ``i + 1`` on its own data directories (its volumes), with the
        rendered readiness probe run here against its client port (``readiness(myid)``
        replaces it), the rendered grace period, no preStop (none is rendered). A pod starts
        its member at ``version()`` when it is made (None: the version the member ran; an
        upgrade changes it between rollouts)."""
        from final_problem.local.rollout import ExecProbe, Pod, PodSet

        spec = statefulset["spec"]["template"]["spec"]
        container = spec["containers"][0]
        grace = spec.get("terminationGracePeriodSeconds", 30)

        def make(ordinal: int) -> Pod:
            myid = ordinal + 1
            member = self.procs[myid].member
            at = version()

            def start() -> "subprocess.Popen[bytes]":
                self.start(myid, at)
                process = self.procs[myid].process
                assert process is not None
                return process

            def forget() -> None:
                self.procs[myid].process = None

            probe = readiness(myid) if readiness is not None else ExecProbe.rendered(
                container["readinessProbe"], self.readiness_argv(container, myid))
            return Pod(name=f"zookeeper-{ordinal}", start=start, container=container, grace_s=grace,
                       ports={}, address=(LOOPBACK, member.client_port), cleanup=forget, readiness=probe,
                       ordinal=ordinal)

        return PodSet(name="zookeeper", workload=statefulset, pdb=pdb, pods=[], make_pod=make)

    def exec_step(self, step: Any) -> str:
        """A :class:`~final_problem.scaling.Exec` of the chart's reconfig script run here: in
        the member of the step's pod, the member named by an ``add`` given its local address.
        A failure raises :class:`~final_problem.scaling.StepFailed` with the script's line."""
        from final_problem.charts.zookeeper import RECONFIG_SCRIPT
        from final_problem.scaling import StepFailed

        command = list(step.command)
        if command[:2] != ["bash", RECONFIG_SCRIPT] or len(command) != 4:
            raise EnsembleError(f"not the chart's reconfig script: {command}")
        proc = self.procs[int(step.pod.rsplit("-", 1)[1]) + 1]
        action, argument = command[2], command[3]
        if action == "add":
            found = re.match(r"^server\.(\d+)=.*:(participant|observer);", argument)
            if not found or int(found.group(1)) not in self.procs:
                raise EnsembleError(f"no local member for {argument}")
            argument = self.procs[int(found.group(1))].member.dynamic_line(role=found.group(2), client_address=LOOPBACK)
        env = {**os.environ, **self._start_env(proc), "JAVA": shutil.which("java") or "java"}
        done = subprocess.run(["bash", str(RECONFIG_SCRIPT_PATH), action, argument], env=env, capture_output=True,
                              text=True, timeout=300, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            last = (done.stderr.strip() or done.stdout.strip() or f"exit status {done.returncode}").splitlines()[-1]
            raise StepFailed(f"in {step.pod}: {last}")
        return done.stdout

    def membership(self, myid: int) -> list[str]:
        """Member ``myid``'s committed membership (``conf``: its server lines, then ``version=``)."""
        m = self.procs[myid].member
        text = four_letter_word(host=m.host, port=m.client_port, word="conf", timeout=2.0)
        lines = text.split("membership:", 1)[1].split() if "membership:" in text else []
        return [line for line in lines if line.startswith(("server.", "version="))]

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


class ZnodeWrites:
    """A session through ``hosts`` (the client Service) creating ``/<prefix>/<seq>`` in a loop,
    counted by a :class:`~final_problem.local.powercut.LiveWriter`: a write not acknowledged
    within ``write_timeout_s`` or cut by a lost connection is written again (a create that finds
    the znode takes it as landed). ``states`` are the session's state changes."""

    def __init__(self, *, hosts: str, prefix: str, write_timeout_s: float = 5) -> None:
        from kazoo.exceptions import ConnectionClosedError, ConnectionLoss, SessionExpiredError
        from kazoo.handlers.threading import KazooTimeoutError

        from final_problem.clients.zookeeper import ZooKeeperClient
        from final_problem.local.powercut import LiveWriter

        self.prefix, self.write_timeout_s = prefix, write_timeout_s
        self._closed = False
        self.client = ZooKeeperClient(hosts=hosts, timeout=10).start()
        self.client.kazoo.ensure_path(f"/{prefix}")
        self.writer = LiveWriter(self._write, name=f"zookeeper-{prefix}",
                                 retry_on=(ConnectionLoss, ConnectionClosedError, KazooTimeoutError, SessionExpiredError))

    def _write(self, seq: int) -> None:
        from kazoo.exceptions import NodeExistsError

        try:
            self.client.kazoo.create_async(f"/{self.prefix}/{seq:08d}", b"x").get(timeout=self.write_timeout_s)
        except NodeExistsError:
            pass  # an earlier try of this write landed

    def start(self) -> "ZnodeWrites":
        self.writer.start()
        self.writer.wait_for(20, timeout_s=30)
        return self

    def finish(self) -> "RolloutWrites":
        """Stop once writes flow again; what was acknowledged, lost and the longest outage."""
        self.writer.wait_for(self.writer.acknowledged + 20, timeout_s=30)
        acks = self.writer.stop()
        self.writer.join()
        states = list(self.client.states)  # before close(), whose own end of the session is LOST
        self.client.kazoo.sync(f"/{self.prefix}")
        present = {int(name) for name in self.client.kazoo.get_children(f"/{self.prefix}")}
        self.close()
        return RolloutWrites(acknowledged=len(acks), lost=tuple(sorted({a.seq for a in acks} - present)),
                             longest_outage_s=self.writer.longest_gap_s(until=acks[-1].at), states=tuple(states),
                             retried=dict(self.writer.retried))

    def close(self) -> None:
        """End the session (once; the writer must be stopped first or it retries for ever)."""
        if not self._closed:
            self._closed = True
            from final_problem.local.powercut import PowerCutError

            try:
                self.writer.stop()
            except PowerCutError:
                pass  # the writer's own error: finish() raises it
            self.client.close()


@dataclasses.dataclass(frozen=True)
class RolloutWrites:
    """What a client writing through a rollout saw."""

    acknowledged: int
    lost: tuple[int, ...]
    longest_outage_s: float
    states: tuple[str, ...]
    retried: dict[str, int]

    @property
    def session_expired(self) -> bool:
        return "LOST" in self.states

    def summary(self, what: str, seconds: float) -> str:
        return (f"{what}: {seconds:.1f} s, {self.acknowledged} acknowledged writes, {len(self.lost)} lost, "
                f"longest write outage {self.longest_outage_s:.2f} s, session "
                f"{'expired' if self.session_expired else 'kept'}")
