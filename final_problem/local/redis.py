"""A Redis primary, its replicas and Sentinels on loopback, started like the chart starts them.

Each member runs the chart's ``start-redis.sh`` and each Sentinel ``start-sentinel.sh``
with the files :func:`final_problem.renderers.redis.config_files` renders; only ports
(free loopback ports), the bind address (127.0.0.1) and directories (a work folder)
differ. Passwords are generated per run, as the cluster's secret Job would. As in the
chart, a member's data directory and a Sentinel's state directory survive restarts (the
retained volumes) and a member's runtime directory does not (a memory-backed emptyDir).

Needs ``redis-server`` and ``redis-cli`` (Debian: redis-server, redis-tools).
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import secrets
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

import redis
from redis.sentinel import Sentinel

from final_problem import local
from final_problem.charts.redis import RedisProps
from final_problem.clients.redis import RedisClient, RedisClientError, RedisSettings
from final_problem.local import LOOPBACK, free_ports
from final_problem.local.powercut import Ack, LiveWriter
from final_problem.local.rollout import ExecProbe, Pod, PodSet
from final_problem.local.limits import Groups, Limits
from final_problem.profiles import PI, Profile
from final_problem.renderers.redis import ADMIN_USER, APP_USER, RedisConfigOptions, config_files

HOST = LOOPBACK
T = TypeVar("T")
#: Errors that mean "not yet" while a server starts or a failover runs.
NOT_YET: tuple[type[BaseException], ...] = (redis.RedisError, OSError)


class LocalRedisError(RuntimeError):
    """A local server did not start or did not reach the expected state in time."""


class _Timeout(Exception):
    """A wait of :meth:`LocalRedisSet.wait_for` ran out (reported as LocalRedisError)."""


def local_options() -> RedisConfigOptions:
    """The Pi profile's configuration for servers started here (tests, ``--local``), validated
    like the chart's. Sentinel's down-after is the chart's (5 s): shorter, a host busy with other
    servers answers a ping late and the Sentinels fail over a primary that is up. The failover
    timeout is the shortest the chart accepts with it (twice down-after), so an aborted attempt
    is retried after 20 s instead of 2 min. The first boot of an empty set waits 1 s for a peer
    instead of 30: here the members start before the Sentinels, so nobody could answer."""
    chart = RedisProps.for_profile(PI)
    return RedisProps.for_profile(
        PI, failover_timeout_ms=2 * chart.down_after_ms, bootstrap_wait_s=1,
    ).config_options()


@dataclass(frozen=True, kw_only=True)
class Passwords:
    """The credentials of the chart's ``redis-auth`` Secret."""

    admin: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    app: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    sentinel: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    metrics: str = field(default_factory=lambda: secrets.token_urlsafe(32))


@dataclass
class _Process:
    name: str
    port: int
    config_dir: Path
    runtime_dir: Path
    env: dict[str, str]
    script: str
    log: Path
    limits: Limits
    popen: subprocess.Popen[bytes] | None = None


class LocalRedisSet:
    """``members`` Redis servers (the first is the first-boot primary) and ``sentinels`` Sentinels.

    Use as a context manager: every process started is killed on exit, even on failure.
    """

    def __init__(
        self,
        *,
        workdir: Path,
        options: RedisConfigOptions,
        members: int = 3,
        sentinels: int = 3,
        passwords: Passwords | None = None,
        redis_server: str = "redis-server",
        retry_s: float = 0.5,
        limits: bool = True,
        profile: Profile = PI,
    ) -> None:
        """With ``limits``, each member's and Sentinel's start script (and the server it
        becomes) runs under its container's CPU and memory limits in ``profile``."""
        self.workdir = workdir
        props = RedisProps.for_profile(profile)
        self.groups = Groups(enabled=limits)
        self.limits = {"redis": Limits.of(props.redis_sizing), "sentinel": Limits.of(props.sentinel_sizing)}
        self.options = options
        self.passwords = passwords or Passwords()
        self.redis_server = shutil.which(redis_server) or redis_server
        ports = free_ports(members + sentinels)
        self.member_ports = ports[:members]
        self.sentinel_ports = ports[members:]
        sentinel_list = " ".join(f"{HOST}:{p}" for p in self.sentinel_ports)
        common = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "REDIS_MASTER_NAME": options.master_name,
            "REDIS_MEMBERS": " ".join(f"{HOST}:{p}" for p in self.member_ports),
            "REDIS_BOOTSTRAP_PRIMARY": f"{HOST}:{self.member_ports[0]}",
            "REDIS_BOOTSTRAP_WAIT_S": str(options.bootstrap_wait_s),
            # The chart's scripts ask again every 2 s while they wait; tests ask sooner.
            "REDIS_RETRY_S": str(retry_s),
            "REDIS_SENTINELS": sentinel_list,
            "REDIS_ADMIN_PASSWORD": self.passwords.admin,
            "REDIS_APP_PASSWORD": self.passwords.app,
            "REDIS_SENTINEL_PASSWORD": self.passwords.sentinel,
            "REDIS_METRICS_PASSWORD": self.passwords.metrics,
            "REDIS_ANNOUNCE_HOST": HOST,
            "SENTINEL_QUORUM": str(options.quorum),
            "REDIS_SERVER": self.redis_server,
            "REDIS_HANDOVER_TIMEOUT_S": str(options.handover_timeout_s),
        }
        self._common = common
        self.members: list[_Process] = []
        self.sentinels: list[_Process] = []
        for kind, port_list, target in (("redis", self.member_ports, self.members),
                                        ("sentinel", self.sentinel_ports, self.sentinels)):
            for index, port in enumerate(port_list):
                target.append(self._process(kind, index, port))

    def _process(self, kind: str, index: int, port: int) -> _Process:
        """Member or Sentinel ``index`` on ``port``: its rendered files written, not started."""
        options = self.options
        name = f"{kind}-{index}"
        base = self.workdir / name
        config_dir, runtime_dir, data_dir = base / "config", base / "run", base / "data"
        for d in (config_dir, runtime_dir, data_dir):
            d.mkdir(parents=True, exist_ok=True)
        rendered = dataclasses.replace(
            options, port=port if kind == "redis" else options.port,
            sentinel_port=port if kind == "sentinel" else options.sentinel_port,
            bind=HOST, data_dir=str(data_dir),
        )
        for file_name, text in config_files(rendered).items():
            (config_dir / file_name).write_text(text)
        env = {
            **self._common,
            "REDIS_CONFIG_DIR": str(config_dir),
            "REDIS_PORT": str(port if kind == "redis" else options.port),
            "SENTINEL_PORT": str(port if kind == "sentinel" else options.sentinel_port),
        }
        if kind == "redis":
            env.update(REDIS_RUNTIME_DIR=str(runtime_dir), REDIS_DATA_DIR=str(data_dir))
        else:
            env.update(REDIS_SENTINEL_DIR=str(data_dir))
        return _Process(
            name=name, port=port, config_dir=config_dir, runtime_dir=runtime_dir, env=env,
            script="start-redis.sh" if kind == "redis" else "start-sentinel.sh", log=base / "server.log",
            limits=self.limits[kind],
        )

    def resize(self, *, members: int | None = None, sentinels: int | None = None) -> None:
        """Processes for ``members`` members and ``sentinels`` Sentinels, as the pods of
        StatefulSets scaled to those counts: added ones are prepared (not started) with the
        environment the others have, since a scale does not change the pod template (the member
        and Sentinel lists stay those of the deployed settings until the next deploy); removed
        ones, which must have stopped, are dropped. A pod set's ``scale`` starts and stops them."""
        for kind, count, procs, ports in (("redis", members, self.members, self.member_ports),
                                          ("sentinel", sentinels, self.sentinels, self.sentinel_ports)):
            if count is None:
                continue
            if count > len(procs):
                for index, port in enumerate(free_ports(count - len(procs)), start=len(procs)):
                    procs.append(self._process(kind, index, port))
                    ports.append(port)
            for proc in procs[count:]:
                if self.running(proc):
                    raise LocalRedisError(f"{proc.name} still runs: scale its pod set down first")
            del procs[count:], ports[count:]

    def exec_step(self, step: Any) -> str:
        """A membership step's command (:class:`final_problem.scaling.Exec`) in the process of
        its pod, as ``kubectl exec`` runs it in the container: the rendered configuration
        directory replaced by the local one, the container's environment. Its standard
        output; a failure raises with the command's last line of error."""
        from final_problem.charts.redis import CONFIG_DIR

        kind, _, ordinal = step.pod.rpartition("-")
        procs = {"redis": self.members, "redis-sentinel": self.sentinels}.get(kind)
        if procs is None or not ordinal.isdigit() or int(ordinal) >= len(procs):
            raise LocalRedisError(f"in {step.pod}: no such pod here")
        proc = procs[int(ordinal)]
        if not self.running(proc):
            raise LocalRedisError(f"in {step.pod}: the pod is not running")
        command = [arg.replace(CONFIG_DIR, str(proc.config_dir)) for arg in step.command]
        result = subprocess.run(command, env=proc.env, capture_output=True, text=True, timeout=600, check=False)
        with proc.log.open("a") as log:
            log.write(f"exec {' '.join(step.command[1:])}: exit {result.returncode}: {result.stdout}{result.stderr}")
        if result.returncode != 0:
            lines = (result.stderr.strip() or result.stdout.strip() or f"exit status {result.returncode}").splitlines()
            raise LocalRedisError(f"in {step.pod}: {lines[-1]}")
        return result.stdout

    # Lifecycle -----------------------------------------------------------------------

    def __enter__(self) -> "LocalRedisSet":
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Kill every process and remove the cgroups."""
        self.stop()
        self.groups.remove_all()

    def _spawn(self, proc: _Process) -> None:
        # A pod's memory-backed runtime volume starts empty.
        shutil.rmtree(proc.runtime_dir, ignore_errors=True)
        proc.runtime_dir.mkdir(parents=True)
        with proc.log.open("ab") as log:
            proc.popen = subprocess.Popen(
                self.groups.wrap(proc.name, proc.limits, ["sh", str(proc.config_dir / proc.script)]),
                env=proc.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def start(self, *, timeout_s: float = 20) -> None:
        """First boot of an empty set: start the members (the bootstrap member first), then
        the Sentinels; wait until every replica is synchronised and may be promoted, and
        every Sentinel sees all replicas and peers."""
        for index in range(len(self.members)):
            self.start_member(index, timeout_s=timeout_s + self.options.bootstrap_wait_s)
        for index in range(1, len(self.members)):
            self.wait_promotable(index, timeout_s=timeout_s)
        for proc in self.sentinels:
            self._spawn(proc)
        for index in range(len(self.sentinels)):
            self.wait_sentinel_ready(index, timeout_s=timeout_s)

    def spawn_member(self, index: int) -> None:
        """Start member ``index``'s start script, as a pod starting; do not wait."""
        self._spawn(self.members[index])

    def spawn_sentinel(self, index: int) -> None:
        """Start Sentinel ``index``'s start script, as a pod starting; do not wait."""
        self._spawn(self.sentinels[index])

    def start_member(self, index: int, *, timeout_s: float = 20) -> None:
        """Start member ``index`` through the chart's start script and wait until it answers."""
        self.spawn_member(index)
        self.wait_member_answers(index, timeout_s=timeout_s)

    def wait_member_answers(self, index: int, *, timeout_s: float = 20) -> None:
        proc = self.members[index]
        self.wait_for(f"{proc.name} to answer", lambda: self._alive(proc) and self.admin(index).ping(), timeout_s=timeout_s)

    def kill_member(self, index: int) -> None:
        """Kill member ``index`` hard (SIGKILL: no shutdown, no final fsync)."""
        self._kill(self.members[index])

    def kill_sentinel(self, index: int) -> None:
        """Kill Sentinel ``index`` hard (SIGKILL)."""
        self._kill(self.sentinels[index])

    def running(self, proc: _Process) -> bool:
        return proc.popen is not None and proc.popen.poll() is None

    def stop(self) -> None:
        """Kill every process this set started (SIGKILL: also a power cut)."""
        for proc in self.sentinels + self.members:
            self._kill(proc)

    def spawn_all(self) -> None:
        """Start every member's and Sentinel's start script at once, as pods after a power cut."""
        for index in range(len(self.members)):
            self.spawn_member(index)
        for index in range(len(self.sentinels)):
            self.spawn_sentinel(index)

    def _alive(self, proc: _Process) -> bool:
        if proc.popen is None or proc.popen.poll() is not None:
            raise LocalRedisError(f"{proc.name} exited; log {proc.log}:\n{self.log_tail(proc)}")
        return True

    @staticmethod
    def _kill(proc: _Process) -> None:
        if proc.popen is None:
            return
        try:
            local.kill_group(proc.popen, timeout_s=10)
        finally:
            proc.popen = None

    @staticmethod
    def log_tail(proc: _Process, lines: int = 20) -> str:
        try:
            return "\n".join(proc.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def wait_for(self, what: str, check: Callable[[], T | None], *, timeout_s: float, interval_s: float = 0.05) -> T:
        """:func:`final_problem.local.wait_for`, Redis and socket errors meaning "not yet"; a
        timeout also reports the set's state (:meth:`describe`)."""
        try:
            return local.wait_for(what, check, timeout_s=timeout_s, interval_s=interval_s, retry_on=NOT_YET,
                                  error=_Timeout)
        except _Timeout as e:
            raise LocalRedisError(f"{e}; the set: {self.describe()}") from None

    # Pods: the rendered StatefulSets over these processes --------------------------------

    def podsets(self, objects: Sequence[dict[str, Any]]) -> tuple[PodSet, PodSet]:
        """The ``redis`` and ``redis-sentinel`` StatefulSets of the chart's rendered ``objects``
        (with their PodDisruptionBudgets) as rollout-harness pod sets
        (:class:`~final_problem.local.rollout.PodSet`) over this set's members and Sentinels, for the rollout harness. Each pod runs its
        start script as the container does; its readiness probe, and a member's preStop hook,
        are the rendered commands with the in-container configuration directory replaced by
        the local one (the ports and passwords come from the environment, as in the pod);
        grace periods are the rendered ones. No pod runs yet: :meth:`PodSet.launch` starts
        them (the members first, as :meth:`start` does: a Sentinel without state waits for a
        member answering as primary)."""
        from final_problem.charts.redis import CONFIG_DIR

        def workload(name: str) -> dict[str, Any]:
            return next(o for o in objects if o["kind"] == "StatefulSet" and o["metadata"]["name"] == name)

        def pdb(name: str) -> dict[str, Any] | None:
            return next((o for o in objects if o["kind"] == "PodDisruptionBudget" and o["metadata"]["name"] == name), None)

        def local(command: Sequence[str], proc: _Process) -> list[str]:
            return [arg.replace(CONFIG_DIR, str(proc.config_dir)) for arg in command]

        def maker(set_name: str, container_name: str, procs: list[_Process]) -> Callable[[int], Pod]:
            spec = workload(set_name)["spec"]["template"]["spec"]
            container = next(c for c in spec["containers"] if c["name"] == container_name)
            grace = spec.get("terminationGracePeriodSeconds", 30)
            hook = container.get("lifecycle", {}).get("preStop", {}).get("exec")

            def make(ordinal: int) -> Pod:
                proc = procs[ordinal]

                def start() -> subprocess.Popen[bytes]:
                    self._spawn(proc)
                    assert proc.popen is not None
                    return proc.popen

                def pre_stop(pod: Pod, deadline: float) -> None:
                    assert hook is not None
                    try:
                        result = subprocess.run(local(hook["command"], proc), env=proc.env, capture_output=True,
                                                text=True, timeout=max(0.1, deadline - time.monotonic()), check=False)
                    except subprocess.TimeoutExpired as e:  # the kubelet stops waiting at the grace end
                        result = subprocess.CompletedProcess(e.cmd, -9, str(e.stdout or ""), str(e.stderr or ""))
                    pod.events.append((time.monotonic(), f"preStop exited {result.returncode}: {result.stderr.strip()}"))
                    with proc.log.open("a") as log:
                        log.write(f"preStop exited {result.returncode}: {result.stdout}{result.stderr}")

                return Pod(
                    name=f"{set_name}-{ordinal}", start=start, container=container, grace_s=grace,
                    ports={int(p["containerPort"]): proc.port for p in container.get("ports", [])},
                    address=(HOST, proc.port), cleanup=lambda: self._kill(proc), ordinal=ordinal,
                    readiness=ExecProbe.rendered(container["readinessProbe"],
                                                 local(container["readinessProbe"]["exec"]["command"], proc), proc.env),
                    pre_stop=pre_stop if hook is not None else None,
                )
            return make

        return (
            PodSet(name="redis", workload=workload("redis"), pdb=pdb("redis"), pods=[],
                   make_pod=maker("redis", "redis", self.members)),
            PodSet(name="redis-sentinel", workload=workload("redis-sentinel"), pdb=pdb("redis-sentinel"), pods=[],
                   make_pod=maker("redis-sentinel", "sentinel", self.sentinels)),
        )

    # Clients ---------------------------------------------------------------------------

    def admin(self, index: int) -> redis.Redis:
        return redis.Redis(
            host=HOST, port=self.member_ports[index], username=ADMIN_USER, password=self.passwords.admin,
            socket_timeout=2, socket_connect_timeout=2, decode_responses=True,
        )

    def sentinel_admin(self, index: int) -> redis.Redis:
        return redis.Redis(
            host=HOST, port=self.sentinel_ports[index], password=self.passwords.sentinel,
            socket_timeout=2, socket_connect_timeout=2, decode_responses=True,
        )

    @property
    def sentinel_addresses(self) -> list[tuple[str, int]]:
        return [(HOST, p) for p in self.sentinel_ports]

    def client_env(self) -> dict[str, str]:
        """What an application gets in the cluster, as environment variables."""
        return {
            "REDIS_SENTINELS": ",".join(f"{h}:{p}" for h, p in self.sentinel_addresses),
            "REDIS_MASTER_NAME": self.options.master_name,
            "REDIS_USERNAME": APP_USER,
            "REDIS_PASSWORD": self.passwords.app,
            "REDIS_SENTINEL_PASSWORD": self.passwords.sentinel,
        }

    # State -------------------------------------------------------------------------------

    def primary_by_sentinel(self, index: int = 0) -> tuple[str, int] | None:
        answer = self.sentinel_admin(index).execute_command(
            "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.options.master_name
        )
        return (answer[0], int(answer[1])) if answer else None

    def member_index(self, port: int) -> int:
        return self.member_ports.index(port)

    def replication(self, index: int) -> dict[str, object]:
        return self.admin(index).info("replication")

    def _linked(self, index: int, primary_port: int | None = None) -> dict[str, object] | None:
        """Member ``index``'s replication info when it is a replica with its link up (to
        ``primary_port`` if given), else None."""
        self._alive(self.members[index])
        info = self.replication(index)
        if info.get("role") != "slave" or info.get("master_link_status") != "up":
            return None
        if primary_port is not None and int(info.get("master_port", 0)) != primary_port:
            return None
        return info

    def wait_promotable(self, index: int, *, timeout_s: float = 20) -> dict[str, object]:
        """Wait until member ``index`` is a linked replica that Sentinel may promote (its
        start script restores its priority once it has synchronised)."""
        def promotable() -> dict[str, object] | None:
            info = self._linked(index)
            return info if info and int(info.get("slave_priority", 0)) > 0 else None
        return self.wait_for(f"{self.members[index].name} to be promotable", promotable, timeout_s=timeout_s)

    def wait_sentinel_ready(self, index: int, *, timeout_s: float = 20) -> None:
        """Wait until Sentinel ``index`` sees every replica and every other Sentinel."""
        replicas, peers = len(self.members) - 1, len(self.sentinels) - 1
        name = self.options.master_name

        def ready() -> bool:
            self._alive(self.sentinels[index])
            state = self.sentinel_admin(index).execute_command("SENTINEL", "MASTER", name)
            fields = dict(zip(state[::2], state[1::2], strict=True)) if isinstance(state, list) else dict(state)
            return int(fields["num-slaves"]) >= replicas and int(fields["num-other-sentinels"]) >= peers
        self.wait_for(f"{self.sentinels[index].name} to see the whole set", ready, timeout_s=timeout_s)

    def wait_new_primary(self, old_port: int, *, timeout_s: float,
                         sentinels: Sequence[int] | None = None) -> tuple[int, float]:
        """Wait until every Sentinel (those of index ``sentinels`` if given) names a primary
        other than ``old_port``; return its port and the seconds it took from the call."""
        started = time.monotonic()

        def promoted() -> int | None:
            port = self.agreed_primary_port(sentinels)
            return port if port != old_port else None
        port = self.wait_for("Sentinel to promote a replica", promoted, timeout_s=timeout_s, interval_s=0.02)
        return port, time.monotonic() - started

    def agreed_primary_port(self, sentinels: Sequence[int] | None = None) -> int | None:
        """The primary's port when every Sentinel (of index ``sentinels`` if given) names the
        same one, else None."""
        indexes = range(len(self.sentinels)) if sentinels is None else sentinels
        seen = {self.primary_by_sentinel(i) for i in indexes}
        if len(seen) == 1:
            (addr,) = seen
            if addr:
                return addr[1]
        return None

    def wait_rejoined(self, index: int, *, timeout_s: float = 30) -> dict[str, object]:
        """Wait until member ``index`` replicates, link up, from the primary every Sentinel
        names at that moment. The primary is read again on every poll: Sentinels may still
        be converging when a member comes back, and a busy host can see a further failover."""
        def linked() -> dict[str, object] | None:
            primary = self.agreed_primary_port()
            if primary is None or primary == self.member_ports[index]:
                return None
            return self._linked(index, primary)
        return self.wait_for(f"{self.members[index].name} to rejoin the current primary", linked, timeout_s=timeout_s)

    def wait_settled(self, *, timeout_s: float = 60) -> int:
        """Wait until every Sentinel names one primary and every other member replicates from
        it, link up; return its port. The primary is read again on every poll, as in
        :meth:`wait_rejoined`: a failover can follow another."""
        def settled() -> int | None:
            primary = self.agreed_primary_port()
            if primary is None:
                return None
            for index, port in enumerate(self.member_ports):
                if port != primary and self._linked(index, primary) is None:
                    return None
            return primary
        return self.wait_for("every member to follow the one primary the Sentinels name", settled, timeout_s=timeout_s)

    def describe(self) -> str:
        """Each member's role and primary, and the primary each Sentinel names: what a timed-out
        :meth:`wait_for` reports."""
        parts = []
        for index, proc in enumerate(self.members):
            try:
                self._alive(proc)
                info = self.replication(index)
                role = ("primary" if info.get("role") == "master"
                        else f"replica of {info.get('master_port')} (link {info.get('master_link_status')})")
            except Exception as e:  # noqa: BLE001 - a description of whatever state the set is in
                role = f"not answering ({type(e).__name__})"
            parts.append(f"{proc.name} :{proc.port} {role}")
        for index, proc in enumerate(self.sentinels):
            try:
                named = self.primary_by_sentinel(index)
                parts.append(f"{proc.name} names {named[1] if named else None}")
            except Exception as e:  # noqa: BLE001
                parts.append(f"{proc.name} not answering ({type(e).__name__})")
        return "; ".join(parts)

    def sentinel_client(self, **kwargs: object) -> Sentinel:
        """redis-py's Sentinel as the application user."""
        return Sentinel(
            self.sentinel_addresses,
            sentinel_kwargs={"password": self.passwords.sentinel, "socket_timeout": 1},
            username=APP_USER, password=self.passwords.app, **kwargs,
        )


def first_acknowledged_write(client: RedisClient, key: str, value: str, *, timeout_s: float, replicas: int = 1) -> float:
    """Retry ``SET key value`` + ``WAIT replicas`` through the Sentinel client until a
    primary acknowledges it with ``replicas`` replicas; return the seconds it took."""
    started = time.monotonic()

    def attempt() -> bool:
        try:
            client.set_durable(key, value, replicas=replicas, timeout_ms=1000)
        except RedisClientError:
            return False
        return True
    local.wait_for(f"a primary to acknowledge {key!r} with {replicas} replica(s)", attempt, timeout_s=timeout_s,
                   interval_s=0.05, retry_on=NOT_YET, error=LocalRedisError)
    return time.monotonic() - started


class DurableWrites:
    """``write(seq)`` for a :class:`~final_problem.local.powercut.LiveWriter`: ``SET
    <prefix><seq> <seq>`` then ``WAIT 1`` through the Sentinel client, tried again (the same
    key and value) until a primary acknowledges it with a replica, as an application that
    must not lose the write would. An attempt that fails is counted, never acknowledged;
    after ``give_up_s`` of failures in a row the write raises, which stops the writer.
    """

    def __init__(self, client: RedisClient, *, prefix: str = "live:", give_up_s: float = 60) -> None:
        self.client, self.prefix, self.give_up_s = client, prefix, give_up_s
        self.failed_attempts = 0
        self._lock = threading.Lock()

    def __call__(self, seq: int) -> None:
        started = time.monotonic()
        while True:
            try:
                self.client.set_durable(f"{self.prefix}{seq}", str(seq), replicas=1, timeout_ms=1000)
                return
            except (RedisClientError, redis.RedisError, OSError):
                with self._lock:
                    self.failed_attempts += 1
                if time.monotonic() - started > self.give_up_s:
                    raise
                time.sleep(0.01)

    def present(self, cluster: "LocalRedisSet", primary_index: int, acks: Sequence[Ack]) -> set[int]:
        """The sequence numbers of ``acks`` whose key holds its value on member ``primary_index``."""
        admin = cluster.admin(primary_index)
        found: set[int] = set()
        seqs = [a.seq for a in acks]
        for start in range(0, len(seqs), 1000):
            chunk = seqs[start:start + 1000]
            values = admin.mget([f"{self.prefix}{seq}" for seq in chunk])
            found.update(seq for seq, value in zip(chunk, values, strict=True) if value == str(seq))
        return found


def longest_outage_s(acks: Sequence[Ack], *, start: float, end: float) -> tuple[float, float]:
    """The longest time between ``start`` and ``end`` (``time.monotonic()``) in which no write
    was acknowledged, and when it began."""
    times = [start, *(a.at for a in acks if start <= a.at <= end), end]
    gap, at = max((b - a, a) for a, b in itertools.pairwise(times))
    return gap, at


@dataclass(frozen=True)
class WriteOutcome:
    """What a change cost a client writing throughout: acknowledged writes, those missing
    afterwards, the longest time none was acknowledged, and the attempts that failed."""

    acknowledged: int
    lost: tuple[int, ...]
    outage_s: float
    failed_attempts: int

    def summary(self, what: str) -> str:
        return (f"{what}: {self.acknowledged} acknowledged writes (WAIT 1), {len(self.lost)} lost, "
                f"longest write outage {self.outage_s:.2f} s, {self.failed_attempts} failed attempts")


def with_live_writes(cluster: LocalRedisSet, action: Callable[[], object], *, prefix: str) -> WriteOutcome:
    """Run ``action`` while the platform's Sentinel client writes throughout (``SET`` + ``WAIT
    1``, :class:`DurableWrites`); then compare every acknowledged write with the primary the
    Sentinels agree on once the set has settled."""
    settings = RedisSettings.from_env(cluster.client_env(), secret=lambda key: "")
    client = RedisClient(settings=settings)
    writes = DurableWrites(client, prefix=prefix)
    writer = LiveWriter(writes, name=f"writer-{prefix}").start()
    try:
        writer.wait_for(50, timeout_s=30)
        started = time.monotonic()
        action()
        writer.wait_for(writer.acknowledged + 50, timeout_s=30)
        acks = writer.stop()
        writer.join()
        primary = cluster.wait_settled(timeout_s=60)
        present = writes.present(cluster, cluster.member_index(primary), acks)
    finally:
        writer.stop()
        client.close()
    outage, _ = longest_outage_s(acks, start=started, end=acks[-1].at)
    return WriteOutcome(acknowledged=len(acks), lost=tuple(a.seq for a in acks if a.seq not in present),
                        outage_s=outage, failed_attempts=writes.failed_attempts)


@dataclass(frozen=True)
class ScaleOutcome:
    """A membership change run under writes: its settings, its steps' seconds, what it cost."""

    settings: RedisProps
    seconds: float
    writes: WriteOutcome

    def summary(self, what: str) -> str:
        return self.writes.summary(f"{what} in {self.seconds:.1f} s")


def scale_under_writes(cluster: LocalRedisSet, servers: PodSet, sentinels: PodSet, deployed: RedisProps,
                       setting: str, value: int, *, namespace: str = "redis",
                       steps: Callable[[list[Any]], list[Any]] = lambda s: s) -> ScaleOutcome:
    """``final-problem scale redis.<setting>=<value> --apply`` on this set, its pods the rendered
    StatefulSets of the ``deployed`` settings (``servers``, ``sentinels``), while the Sentinel
    client writes with ``WAIT 1`` (:func:`with_live_writes`). ``steps`` may edit the procedure's
    steps (to show what a missing one costs)."""
    from final_problem import scaling
    from final_problem.local.rollout import LocalRunner

    new = dataclasses.replace(deployed, **{setting: value})
    plan = steps(scaling.steps_for("redis", setting, deployed, new, namespace))
    runner = LocalRunner({"redis": servers, "redis-sentinel": sentinels}, cluster.exec_step, ready_timeout_s=90)
    members, sentinel_count = 1 + new.replicas, new.sentinels
    took: list[float] = []

    def apply() -> None:
        # New pods' processes exist before the StatefulSet asks for them; removed ones go after.
        cluster.resize(members=max(members, len(cluster.members)), sentinels=max(sentinel_count, len(cluster.sentinels)))
        started = time.monotonic()
        scaling.run(plan, runner)
        took.append(time.monotonic() - started)
        cluster.resize(members=members, sentinels=sentinel_count)

    outcome = with_live_writes(cluster, apply, prefix=f"scale-{setting}-{value}:")
    return ScaleOutcome(settings=new, seconds=took[0], writes=outcome)
