"""Roll a Deployment's pods over real processes the way Kubernetes does, under live load.

:func:`roll_deployment` replaces every old :class:`Pod` by a new one as the Deployment
controller does for a ``RollingUpdate`` with the rendered ``maxSurge`` and
``maxUnavailable``: a new pod is started while the surge allows, it counts once its
rendered readiness probe passed (``periodSeconds``, ``successThreshold``), and an old pod
is deleted only while enough pods stay ready. Deleting a pod follows the kubelet's
sequence: the endpoint goes out of the Service at once (a terminating endpoint is not
ready: EndpointSlice controller), the rendered ``preStop`` hook runs, then SIGTERM, and
SIGKILL when ``terminationGracePeriodSeconds`` (counted from the deletion, hook included)
ends. Sources: Kubernetes docs, "Deployments" (rolling update, proportional surge),
"Pod Lifecycle" (termination of Pods), "Container Lifecycle Hooks".

:class:`LoadBalancer` stands in for k3s's ServiceLB (klipper-lb forwarding to kube-proxy):
each new client connection goes to one of the Service's current endpoints, round robin,
and an established connection stays with its pod until one side closes it. It is not
the NLB of EKS, whose health check of the node takes 20 s to notice (charts/envoy.py).
:class:`LiveClients` sends requests through it from several threads throughout, on
keep-alive connections as HTTP clients do, and counts the ones that fail.
"""

from __future__ import annotations

import http.client
import itertools
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from final_problem.local import LOOPBACK

if TYPE_CHECKING:
    from final_problem.local.limits import Groups, Limits
    from final_problem.renderers.envoy import EdgeOptions, EdgeRoute


class RolloutError(RuntimeError):
    """A rollout did not finish: a new pod never became ready."""


def _scaled(value: int | str | None, replicas: int, *, round_up: bool, default: str) -> int:
    """An int-or-percent of a rolling update against ``replicas`` (maxSurge rounds up,
    maxUnavailable down; default 25% each: Kubernetes docs, "Deployments")."""
    value = default if value is None else value
    if isinstance(value, int):
        return value
    share = replicas * int(value.rstrip("%")) / 100
    return math.ceil(share) if round_up else math.floor(share)


def surge_and_unavailable(deployment: dict[str, Any]) -> tuple[int, int]:
    """``(maxSurge, maxUnavailable)`` of a rendered Deployment, as pod counts."""
    replicas = deployment["spec"].get("replicas", 1)
    rolling = deployment["spec"].get("strategy", {}).get("rollingUpdate", {})
    surge = _scaled(rolling.get("maxSurge"), replicas, round_up=True, default="25%")
    unavailable = _scaled(rolling.get("maxUnavailable"), replicas, round_up=False, default="25%")
    if surge == 0 and unavailable == 0:
        unavailable = 1  # the API server refuses both at 0; never reached with rendered objects
    return surge, unavailable


class Endpoints:
    """The ready addresses of a Service; ``on_change`` sees every new list."""

    def __init__(self, on_change: Callable[[list[tuple[str, int]]], None] | None = None) -> None:
        self._lock = threading.Lock()
        self._addresses: list[tuple[str, int]] = []
        self._on_change = on_change
        self._turn = itertools.count()

    def add(self, address: tuple[str, int]) -> None:
        with self._lock:
            if address not in self._addresses:
                self._addresses.append(address)
            self._changed()

    def remove(self, address: tuple[str, int]) -> None:
        with self._lock:
            if address in self._addresses:
                self._addresses.remove(address)
            self._changed()

    def pick(self) -> tuple[str, int] | None:
        with self._lock:
            if not self._addresses:
                return None
            return self._addresses[next(self._turn) % len(self._addresses)]

    def current(self) -> list[tuple[str, int]]:
        with self._lock:
            return list(self._addresses)

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change(list(self._addresses))


class LoadBalancer:
    """A TCP forwarder on 127.0.0.1: each connection to one endpoint, kept until closed."""

    def __init__(self, endpoints: Endpoints) -> None:
        self.endpoints = endpoints
        self._server = socket.create_server((LOOPBACK, 0))
        self.port = self._server.getsockname()[1]
        self._closed = False
        self._thread = threading.Thread(target=self._accept, name="load-balancer", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            target = self.endpoints.pick()
            try:
                if target is None:
                    raise OSError("no ready endpoint")
                upstream = socket.create_connection(target, timeout=2)
                upstream.settimeout(None)
            except OSError:
                client.close()  # as kube-proxy with no endpoint: the connection is refused
                continue
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65_536):
                sink.sendall(data)
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            # A reset on one side is passed on as a reset (SO_LINGER 0), as a NAT does.
            try:
                sink.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                sink.close()
            except OSError:
                pass
        finally:
            try:
                source.close()
            except OSError:
                pass

    def close(self) -> None:
        self._closed = True
        self._server.close()


@dataclass
class Probe:
    """A rendered ``httpGet`` readiness probe, its port mapped to the local one."""

    path: str
    port: int
    period_s: float
    timeout_s: float = 1
    success_threshold: int = 1

    @classmethod
    def rendered(cls, probe: dict[str, Any], ports: dict[int, int]) -> "Probe":
        get = probe["httpGet"]
        return cls(path=get["path"], port=ports[get["port"]], period_s=probe.get("periodSeconds", 10),
                   timeout_s=probe.get("timeoutSeconds", 1), success_threshold=probe.get("successThreshold", 1))

    def passes(self) -> bool:
        conn = http.client.HTTPConnection(LOOPBACK, self.port, timeout=self.timeout_s)
        try:
            conn.request("GET", self.path)
            return 200 <= conn.getresponse().status < 400  # the kubelet's rule
        except OSError:
            return False
        finally:
            conn.close()


@dataclass
class Pod:
    """One pod: a process, its readiness probe, its hook and grace period as rendered."""

    name: str
    start: Callable[[], subprocess.Popen[bytes]]
    #: The container spec as rendered (``readinessProbe``, ``lifecycle``).
    container: dict[str, Any]
    grace_s: float
    #: Rendered container port -> local port.
    ports: dict[int, int]
    #: The address the Service's endpoint points at.
    address: tuple[str, int]
    #: Called once the process is gone (release its cgroup, ...).
    cleanup: Callable[[], None] = lambda: None
    proc: subprocess.Popen[bytes] | None = None
    ready: bool = False
    killed: bool = False
    events: list[tuple[float, str]] = field(default_factory=list)

    def run(self) -> "Pod":
        self.proc = self.start()
        self.events.append((time.monotonic(), "started"))
        return self

    def wait_ready(self, timeout_s: float = 60) -> None:
        """Probe every ``periodSeconds`` until ``successThreshold`` passes in a row."""
        probe = Probe.rendered(self.container["readinessProbe"], self.ports)
        deadline, passed = time.monotonic() + timeout_s, 0
        while passed < probe.success_threshold:
            if time.monotonic() > deadline or (self.proc is not None and self.proc.poll() is not None):
                raise RolloutError(f"pod {self.name} did not become ready within {timeout_s:.0f} s")
            time.sleep(probe.period_s)
            passed = passed + 1 if probe.passes() else 0
        self.ready = True
        self.events.append((time.monotonic(), "ready"))

    def delete(self, endpoints: Endpoints) -> None:
        """The kubelet's termination: endpoint out, preStop, SIGTERM, SIGKILL at the grace end."""
        deadline = time.monotonic() + self.grace_s
        self.ready = False
        endpoints.remove(self.address)
        self.events.append((time.monotonic(), "deleted"))
        hook = self.container.get("lifecycle", {}).get("preStop")
        if hook is not None:
            self._run_hook(hook, deadline)
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.events.append((time.monotonic(), "SIGTERM"))
        try:
            self.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.killed = True
            self.events.append((time.monotonic(), "SIGKILL"))
            self.proc.wait(timeout=10)
        self.events.append((time.monotonic(), f"exited {self.proc.returncode}"))
        self.cleanup()

    def _run_hook(self, hook: dict[str, Any], deadline: float) -> None:
        if "sleep" in hook:
            time.sleep(min(hook["sleep"]["seconds"], max(0.0, deadline - time.monotonic())))
        elif "httpGet" in hook:
            get = hook["httpGet"]
            conn = http.client.HTTPConnection(LOOPBACK, self.ports[get["port"]],
                                              timeout=max(0.1, deadline - time.monotonic()))
            try:
                conn.request("GET", get.get("path", "/"))
                conn.getresponse().read()
            except OSError:
                pass  # a failed hook is logged by the kubelet, and the pod is killed anyway
            finally:
                conn.close()
        else:
            raise RolloutError(f"pod {self.name}: preStop {sorted(hook)} is not run here (only sleep and httpGet)")
        self.events.append((time.monotonic(), "preStop done"))


@dataclass
class RolloutResult:
    seconds: float
    new: list[Pod]


def roll_deployment(deployment: dict[str, Any], old: Sequence[Pod], make_pod: Callable[[int], Pod],
                    endpoints: Endpoints, *, ready_timeout_s: float = 60) -> RolloutResult:
    """Replace ``old`` by ``len(old)`` pods from ``make_pod`` as the Deployment controller does."""
    surge, unavailable = surge_and_unavailable(deployment)
    replicas = len(old)
    start = time.monotonic()
    remaining, new = list(old), []
    starting: list[tuple[Pod, threading.Thread]] = []
    stopping: list[threading.Thread] = []
    errors: list[BaseException] = []

    def become_ready(pod: Pod) -> None:
        try:
            pod.wait_ready(ready_timeout_s)
            endpoints.add(pod.address)
        except BaseException as e:  # noqa: BLE001 - reported by the loop below
            errors.append(e)

    while remaining or starting:
        if errors:
            raise RolloutError(str(errors[0]))
        # Terminating pods no longer count (Deployment controller): only these do.
        alive = len(remaining) + len(new)
        if len(new) < replicas and alive < replicas + surge:
            pod = make_pod(len(new)).run()
            new.append(pod)
            thread = threading.Thread(target=become_ready, args=(pod,), daemon=True)
            thread.start()
            starting.append((pod, thread))
            continue
        starting = [(p, t) for p, t in starting if t.is_alive()]
        ready = sum(p.ready for p in (*remaining, *new))
        if remaining and ready - 1 >= replicas - unavailable:
            victim = remaining.pop(0)
            victim.ready = False
            thread = threading.Thread(target=victim.delete, args=(endpoints,), daemon=True)
            thread.start()
            stopping.append(thread)
            continue
        time.sleep(0.05)
    for thread in stopping:
        thread.join()
    if errors:
        raise RolloutError(str(errors[0]))
    return RolloutResult(seconds=time.monotonic() - start, new=new)


class LiveClients:
    """``threads`` clients sending GETs to ``url_path`` on ``port`` throughout, on keep-alive
    connections (a fresh one after any error or ``Connection: close``)."""

    def __init__(self, port: int, *, threads: int = 8, path: str = "/", timeout_s: float = 20) -> None:
        self.port, self.path, self.timeout_s = port, path, timeout_s
        self.ok = 0
        self.failed: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._successes: list[float] = []
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self) -> "LiveClients":
        self.started = time.monotonic()
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=self.timeout_s + 5)
        self.stopped = time.monotonic()

    def _run(self) -> None:
        conn: http.client.HTTPConnection | None = None
        while not self._stop.is_set():
            if conn is None:
                conn = http.client.HTTPConnection(LOOPBACK, self.port, timeout=self.timeout_s)
            try:
                conn.request("GET", self.path)
                response = conn.getresponse()
                response.read()
                outcome = None if response.status == 200 else str(response.status)
                if response.will_close:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as e:
                outcome = type(e).__name__
                conn.close()
                conn = None
            with self._lock:
                if outcome is None:
                    self.ok += 1
                    self._successes.append(time.monotonic())
                else:
                    self.failed.append(outcome)
        if conn is not None:
            conn.close()

    @property
    def total(self) -> int:
        return self.ok + len(self.failed)

    @property
    def success_ratio(self) -> float:
        return self.ok / self.total if self.total else 0.0

    def longest_gap_s(self) -> float:
        """The longest time no request succeeded, from the start to the stop."""
        with self._lock:
            times = [self.started, *self._successes, getattr(self, "stopped", time.monotonic())]
        return max(b - a for a, b in zip(times, times[1:], strict=False))


# -- the edge and the demo, as rendered --------------------------------------------------

def _container(deployment: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == name)


def _grace(deployment: dict[str, Any]) -> float:
    # Kubernetes' default when the pod spec has none.
    return deployment["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30)


def _kill_all(pods: Sequence[Pod]) -> None:
    for pod in pods:
        if pod.proc is not None and pod.proc.poll() is None:
            pod.proc.kill()
            pod.proc.wait(timeout=10)
        pod.cleanup()


def edge_rollout(workdir: Path, deployment: dict[str, Any], *, options: "EdgeOptions", routes: Sequence["EdgeRoute"],
                 clients: int = 8) -> tuple[LiveClients, RolloutResult]:
    """The edge Deployment (``envoy`` container as rendered) rolled behind the ServiceLB
    stand-in, each Envoy in front of two local backends, ``clients`` threads sending."""
    from final_problem.local.envoy import Backend, LocalEdge

    backends = [Backend("demo-a"), Backend("demo-b")]
    container = _container(deployment, "envoy")
    endpoints = Endpoints()
    balancer = LoadBalancer(endpoints)
    made: list[Pod] = []

    def make(generation: str) -> Callable[[int], Pod]:
        def pod(i: int) -> Pod:
            edge = LocalEdge(workdir=workdir / f"edge-{generation}{i}", routes=routes,
                             backends={r.name: [b.endpoint for b in backends] for r in routes}, options=options)
            made.append(Pod(name=f"envoy-{generation}{i}", start=lambda: edge.start().proc,  # type: ignore[arg-type, return-value]
                            container=container, grace_s=_grace(deployment), ports={8081: edge.options.health_port},
                            address=(LOOPBACK, edge.options.port), cleanup=edge.close))
            return made[-1]
        return pod

    try:
        old = [make("old")(i).run() for i in range(deployment["spec"]["replicas"])]
        for pod in old:
            pod.wait_ready()
            endpoints.add(pod.address)
        with LiveClients(balancer.port, threads=clients, path="/through-the-edge") as live:
            time.sleep(1)
            result = roll_deployment(deployment, old, make("new"), endpoints)
            time.sleep(1)
        return live, result
    finally:
        balancer.close()
        _kill_all(made)
        for b in backends:
            b.close()


@dataclass
class DemoPods:
    """Starts demo pods (the demo script as the ``demo`` container runs it, under its limits)."""

    workdir: Path
    deployment: dict[str, Any]
    limits: "Limits"
    groups: "Groups"
    redis_port: int
    redis_password: str
    drain_s: float
    made: list[Pod] = field(default_factory=list)

    def pod(self, name: str) -> Pod:
        from final_problem.clients import demo_service
        from final_problem.local import free_ports

        (port,) = free_ports(1)
        container = _container(self.deployment, "demo")
        env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}

        def start() -> subprocess.Popen[bytes]:
            with (self.workdir / f"{name}.log").open("wb") as log:
                return subprocess.Popen(
                    self.groups.wrap(name, self.limits, [sys.executable, demo_service.__file__]),
                    env={**os.environ, **env, "PORT": str(port), "REDIS_UPSTREAM_PORT": str(self.redis_port),
                         "REDIS_PASSWORD": self.redis_password, "DRAIN_SECONDS": str(self.drain_s)},
                    stdout=log, stderr=subprocess.STDOUT)

        self.made.append(Pod(name=name, start=start, container=container, grace_s=_grace(self.deployment),
                             ports={container["ports"][0]["containerPort"]: port}, address=(LOOPBACK, port)))
        return self.made[-1]

    def close(self) -> None:
        _kill_all(self.made)


def demo_rollout(workdir: Path, pods: DemoPods, *, options: "EdgeOptions", routes: Sequence["EdgeRoute"],
                 clients: int = 8) -> tuple[LiveClients, RolloutResult, list[Pod]]:
    """The demo Deployment rolled behind the edge Envoy, ``clients`` threads sending through
    it. The edge reads the demo's ready pods from a file (the headless Service's DNS answer)."""
    from final_problem.local.envoy import LocalEdge

    replicas = pods.deployment["spec"]["replicas"]
    old = [pods.pod(f"demo-old{i}").run() for i in range(replicas)]
    edge = LocalEdge(workdir=workdir / "edge", routes=routes, backends={"demo": [p.address for p in old]},
                     options=options, dynamic=("demo",))
    try:
        for pod in old:
            pod.wait_ready()
        endpoints = Endpoints(on_change=lambda current: edge.set_endpoints("demo", current))
        for pod in old:
            endpoints.add(pod.address)
        edge.start()
        edge.wait_healthy("demo", replicas)
        with LiveClients(edge.options.port, threads=clients) as live:
            time.sleep(1)
            result = roll_deployment(pods.deployment, old, lambda i: pods.pod(f"demo-new{i}"), endpoints)
            time.sleep(1)
        return live, result, old
    finally:
        edge.close()


def report(name: str, clients: LiveClients, seconds: float) -> str:
    """One line: rollout time, failed requests, the longest time nothing succeeded."""
    kinds = sorted(set(clients.failed))[:5]
    return (f"{name}: rollout {seconds:.1f} s, {len(clients.failed)} of {clients.total} requests failed"
            f"{' ' + str(kinds) if kinds else ''}, longest gap {clients.longest_gap_s():.2f} s")
