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

:func:`roll_statefulset` rolls a StatefulSet as its controller does (highest ordinal first,
the next only once the updated ones are Ready for ``minReadySeconds``), and :func:`drain`
evicts one member of every set at once as far as each set's PodDisruptionBudget allows,
as ``kubectl drain`` does. Each :class:`Pod` is probed in the background as the kubelet
probes it (``httpGet``, ``tcpSocket``, or an ``exec`` command rewritten for this host).

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
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Protocol, Sequence

from final_problem.capacity import scaled as _scaled
from final_problem.capacity import surge_and_unavailable
from final_problem.local import LOOPBACK

if TYPE_CHECKING:
    from final_problem.local.limits import Groups, Limits
    from final_problem.renderers.envoy import EdgeOptions, EdgeRoute


class RolloutError(RuntimeError):
    """A rollout did not finish: a new pod never became ready."""


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


class Readiness(Protocol):
    """What the kubelet runs as a readiness probe, with the probe's timings."""

    period_s: float
    initial_delay_s: float
    success_threshold: int
    failure_threshold: int

    def passes(self) -> bool: ...


def _timings(probe: dict[str, Any]) -> dict[str, Any]:
    """The rendered probe's timings, with the API server's defaults (periodSeconds 10,
    timeoutSeconds 1, successThreshold 1, failureThreshold 3: Kubernetes API reference, Probe)."""
    return {"period_s": probe.get("periodSeconds", 10), "timeout_s": probe.get("timeoutSeconds", 1),
            "initial_delay_s": probe.get("initialDelaySeconds", 0),
            "success_threshold": probe.get("successThreshold", 1), "failure_threshold": probe.get("failureThreshold", 3)}


@dataclass(kw_only=True)
class ProbeTimings:
    """A probe's timings as the kubelet applies them (:func:`_timings` reads them)."""

    period_s: float = 10
    timeout_s: float = 1
    success_threshold: int = 1
    initial_delay_s: float = 0
    failure_threshold: int = 3


@dataclass
class Probe(ProbeTimings):
    """A rendered ``httpGet`` readiness probe, its port mapped to the local one."""

    path: str
    port: int

    @classmethod
    def rendered(cls, probe: dict[str, Any], ports: dict[int, int]) -> "Probe":
        get = probe["httpGet"]
        return cls(path=get.get("path", "/"), port=ports[get["port"]], **_timings(probe))

    def passes(self) -> bool:
        conn = http.client.HTTPConnection(LOOPBACK, self.port, timeout=self.timeout_s)
        try:
            conn.request("GET", self.path)
            return 200 <= conn.getresponse().status < 400  # the kubelet's rule
        except (OSError, http.client.HTTPException):
            return False
        finally:
            conn.close()


@dataclass
class TcpProbe(ProbeTimings):
    """A rendered ``tcpSocket`` readiness probe: passes when the port accepts a connection."""

    port: int

    @classmethod
    def rendered(cls, probe: dict[str, Any], ports: dict[int, int]) -> "TcpProbe":
        return cls(port=ports[probe["tcpSocket"]["port"]], **_timings(probe))

    def passes(self) -> bool:
        try:
            socket.create_connection((LOOPBACK, self.port), timeout=self.timeout_s).close()
            return True
        except OSError:
            return False


@dataclass
class ExecProbe(ProbeTimings):
    """A rendered ``exec`` probe run here: ``argv`` is the rendered command with the
    container's paths and ports rewritten to the local ones; it passes on exit status 0, and
    fails when it outlives ``timeoutSeconds`` (the kubelet's rule since 1.20)."""

    argv: list[str]
    env: dict[str, str] | None = None

    @classmethod
    def rendered(cls, probe: dict[str, Any], argv: Sequence[str], env: dict[str, str] | None = None) -> "ExecProbe":
        if "exec" not in probe:
            raise ValueError(f"not an exec probe: {sorted(probe)}")
        return cls(argv=list(argv), env=env, **_timings(probe))

    def passes(self) -> bool:
        try:
            return subprocess.run(self.argv, env={**os.environ, **(self.env or {})}, stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  timeout=self.timeout_s, check=False).returncode == 0
        except subprocess.TimeoutExpired:
            return False


def rendered_readiness(container: dict[str, Any], ports: dict[int, int]) -> Readiness:
    """The container's rendered readiness probe, for ``httpGet`` and ``tcpSocket``; an
    ``exec`` probe needs its command rewritten for this host: :meth:`ExecProbe.rendered`."""
    probe = container["readinessProbe"]
    if "httpGet" in probe:
        return Probe.rendered(probe, ports)
    if "tcpSocket" in probe:
        return TcpProbe.rendered(probe, ports)
    raise RolloutError(f"container {container.get('name')}: an exec readiness probe needs a local command "
                       "(Pod.readiness=ExecProbe.rendered(probe, argv))")


@dataclass
class Pod:
    """One pod: a process, its readiness probe, its hook and grace period as rendered.

    :meth:`run` starts the process and a prober that runs the readiness probe as the kubelet
    does (first after ``initialDelaySeconds``, then every ``periodSeconds``; Ready after
    ``successThreshold`` passes in a row, not Ready after ``failureThreshold`` fails), and
    keeps the pod's address in ``endpoints`` while it is Ready."""

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
    #: The readiness probe run here; default: the rendered ``httpGet`` or ``tcpSocket`` probe.
    readiness: Readiness | None = None
    #: The ``preStop`` hook run here, given the monotonic time the grace period ends; default:
    #: the rendered ``sleep`` or ``httpGet`` hook.
    pre_stop: Callable[["Pod", float], None] | None = None
    ordinal: int = 0
    #: The kubelet's ``restartPolicy: Always``: a container that exits by itself is started
    #: again after a back-off of 10 s, doubling up to 5 min (Kubernetes docs, "Pod Lifecycle",
    #: container restart policy). Off: an exit fails :meth:`wait_ready` at once, as a test of
    #: a launch wants.
    restart_on_exit: bool = False
    restarts: int = 0
    #: The Service's endpoints this pod is in while Ready (a StatefulSet's governing Service).
    endpoints: Endpoints | None = None
    proc: subprocess.Popen[bytes] | None = None
    ready: bool = False
    killed: bool = False
    terminating: bool = False
    #: When the pod last became Ready (monotonic), for ``minReadySeconds``.
    ready_since: float | None = None
    events: list[tuple[float, str]] = field(default_factory=list)
    _restarting: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def run(self) -> "Pod":
        if self.readiness is None:
            self.readiness = rendered_readiness(self.container, self.ports)
        self.proc = self.start()
        self.events.append((time.monotonic(), "started"))
        threading.Thread(target=self._probe, name=f"probe-{self.name}", daemon=True).start()
        return self

    def _alive(self) -> bool:
        return not self.terminating and self.proc is not None and self.proc.poll() is None

    def _set_ready(self, ready: bool) -> None:
        if ready == self.ready or (ready and not self._alive()):
            return
        self.ready = ready
        self.ready_since = time.monotonic() if ready else None
        self.events.append((time.monotonic(), "ready" if ready else "not ready"))
        if self.endpoints is not None:
            (self.endpoints.add if ready else self.endpoints.remove)(self.address)

    def _probe(self) -> None:
        probe = self.readiness
        assert probe is not None
        time.sleep(probe.initial_delay_s)
        passed = failed = 0
        backoff = 10.0
        while True:
            if not self._alive():
                if self.terminating or not self.restart_on_exit or not self._restart_after(backoff):
                    return
                backoff, passed, failed = min(backoff * 2, 300.0), 0, 0
                continue
            ok = probe.passes()
            if not self._alive():
                return
            passed, failed = (passed + 1, 0) if ok else (0, failed + 1)
            if ok and passed >= probe.success_threshold:
                self._set_ready(True)
            elif not ok and failed >= probe.failure_threshold:
                self._set_ready(False)
            time.sleep(probe.period_s)

    def _restart_after(self, backoff: float) -> bool:
        """The container exited by itself: not Ready, then started again after ``backoff``
        unless the pod is deleted meanwhile. False when it was."""
        assert self.proc is not None
        self._set_ready(False)
        self.events.append((time.monotonic(), f"exited {self.proc.returncode}, restart in {backoff:.0f} s"))
        deadline = time.monotonic() + backoff
        while time.monotonic() < deadline:
            if self.terminating:
                return False
            time.sleep(0.1)
        with self._restarting:
            if self.terminating:
                return False
            self.proc = self.start()
            self.restarts += 1
            self.events.append((time.monotonic(), "restarted"))
        return True

    def abandon(self) -> None:
        """No restart from now on: whatever runs the pod's process is closing it (the end of a
        test), so an exit is not the container's to restart."""
        with self._restarting:
            self.terminating = True

    def available(self, min_ready_s: float) -> bool:
        """Ready for at least ``min_ready_s`` (a workload's ``minReadySeconds``)."""
        since = self.ready_since
        return self.ready and since is not None and time.monotonic() - since >= min_ready_s

    def wait_ready(self, timeout_s: float = 60, *, min_ready_s: float = 0) -> None:
        """Wait until the prober finds the pod Ready (and ``min_ready_s`` has passed)."""
        deadline = time.monotonic() + timeout_s
        while not self.available(min_ready_s):
            exited = not self.restart_on_exit and self.proc is not None and self.proc.poll() is not None
            if time.monotonic() > deadline or exited:
                raise RolloutError(f"pod {self.name} did not become ready within {timeout_s:.0f} s")
            time.sleep(0.05)

    def delete(self, endpoints: Endpoints | None = None) -> None:
        """The kubelet's termination: endpoint out, preStop, SIGTERM, SIGKILL at the grace end."""
        deadline = time.monotonic() + self.grace_s
        self._set_ready(False)
        with self._restarting:  # no restart begins once the pod is deleted
            self.terminating = True
        for eps in {id(e): e for e in (endpoints, self.endpoints) if e is not None}.values():
            eps.remove(self.address)
        self.events.append((time.monotonic(), "deleted"))
        if self.pre_stop is not None:
            self.pre_stop(self, deadline)
            self.events.append((time.monotonic(), "preStop done"))
        else:
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
            except (OSError, http.client.HTTPException):
                pass  # a failed hook is logged by the kubelet, and the pod is killed anyway
            finally:
                conn.close()
        else:
            raise RolloutError(f"pod {self.name}: preStop {sorted(hook)} needs a local command (Pod.pre_stop)")
        self.events.append((time.monotonic(), "preStop done"))


def _one_line(error: BaseException) -> str:
    """A failure of a thread, named: its own message, or its type and where it was raised
    when it has none (an ``AssertionError``, a ``StopIteration``)."""
    if isinstance(error, RolloutError) and str(error):
        return str(error)
    where = error.__traceback__
    while where is not None and where.tb_next is not None:
        where = where.tb_next
    at = f" at {where.tb_frame.f_code.co_filename}:{where.tb_lineno}" if where is not None else ""
    return f"{type(error).__name__}: {error}{at}"


@dataclass
class RolloutResult:
    seconds: float
    new: list[Pod]


def roll_deployment(deployment: dict[str, Any], old: Sequence[Pod], make_pod: Callable[[int], Pod],
                    endpoints: Endpoints, *, ready_timeout_s: float = 60) -> RolloutResult:
    """Replace ``old`` by ``len(old)`` pods from ``make_pod`` as the Deployment controller does."""
    surge, unavailable = surge_and_unavailable(deployment)
    min_ready_s = deployment["spec"].get("minReadySeconds", 0)
    replicas = len(old)
    start = time.monotonic()
    remaining, new = list(old), []
    starting: list[tuple[Pod, threading.Thread]] = []
    stopping: list[threading.Thread] = []
    errors: list[BaseException] = []

    def become_ready(pod: Pod) -> None:
        try:
            pod.wait_ready(ready_timeout_s, min_ready_s=min_ready_s)
        except BaseException as e:  # noqa: BLE001 - reported by the loop below
            errors.append(e)

    if surge == 0 and unavailable == 0:
        raise RolloutError("a Deployment's maxSurge and maxUnavailable cannot both be 0 (Kubernetes refuses it): "
                           "set one of them")
    # Until every new pod exists and is ready: with maxSurge 0 the old pods may all be gone
    # before the first new one is created.
    while remaining or starting or len(new) < replicas:
        if errors:
            raise RolloutError(_one_line(errors[0]))
        # Terminating pods no longer count (Deployment controller): only these do.
        alive = len(remaining) + len(new)
        if len(new) < replicas and alive < replicas + surge:
            pod = make_pod(len(new))
            pod.endpoints = endpoints  # in the Service while Ready, as the EndpointSlice controller keeps it
            pod.run()
            new.append(pod)
            thread = threading.Thread(target=become_ready, args=(pod,), daemon=True)
            thread.start()
            starting.append((pod, thread))
            continue
        starting = [(p, t) for p, t in starting if t.is_alive()]
        ready = sum(p.available(min_ready_s) for p in (*remaining, *new))
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
        raise RolloutError(_one_line(errors[0]))
    return RolloutResult(seconds=time.monotonic() - start, new=new)


# -- StatefulSets and node drains ------------------------------------------------------------

@dataclass
class PodSet:
    """A rendered workload and its pods: ``pods[i]`` is ordinal ``i``; ``make_pod(i)`` makes
    the replacement of ordinal ``i`` (same data directory: the same PersistentVolumeClaim),
    not yet run."""

    name: str
    workload: dict[str, Any]
    pdb: dict[str, Any] | None
    pods: list[Pod]
    make_pod: Callable[[int], Pod]
    endpoints: Endpoints | None = None

    @property
    def min_ready_s(self) -> float:
        return self.workload["spec"].get("minReadySeconds", 0)

    def launch(self, replicas: int | None = None, *, ready_timeout_s: float = 180) -> "PodSet":
        """Create every pod at once (``podManagementPolicy: Parallel``) and wait until each is
        available; ``pods`` must be empty."""
        if self.pods:
            raise RolloutError(f"{self.name}: launch() starts the set's first pods; it has {len(self.pods)}")
        for ordinal in range(self.workload["spec"].get("replicas", 1) if replicas is None else replicas):
            pod = self.make_pod(ordinal)
            pod.ordinal = ordinal
            if pod.endpoints is None:
                pod.endpoints = self.endpoints
            self.pods.append(pod.run())
        for pod in self.pods:
            pod.wait_ready(ready_timeout_s, min_ready_s=self.min_ready_s)
        return self

    def replace(self, ordinal: int, *, ready_timeout_s: float) -> Pod:
        """The controller recreates ordinal ``ordinal``; returns once it is available."""
        pod = self.make_pod(ordinal)
        pod.ordinal = ordinal
        if pod.endpoints is None:
            pod.endpoints = self.endpoints
        self.pods[ordinal] = pod.run()
        pod.wait_ready(ready_timeout_s, min_ready_s=self.min_ready_s)
        return pod

    def scale(self, replicas: int, *, ready_timeout_s: float = 180) -> "PodSet":
        """The StatefulSet controller's scale to ``replicas``: new ordinals are created (with
        ``podManagementPolicy: Parallel`` all at once, else one at a time, each Ready before
        the next), removed ones deleted from the highest ordinal down, each a full
        termination (Parallel: together). ``workload``'s ``spec.replicas`` follows, for the
        disruption budget. Kubernetes docs, "StatefulSets" (pod management policies,
        deployment and scaling guarantees)."""
        parallel = self.workload["spec"].get("podManagementPolicy", "OrderedReady") == "Parallel"
        self.workload = {**self.workload, "spec": {**self.workload["spec"], "replicas": replicas}}
        if replicas > len(self.pods):
            added = []
            for ordinal in range(len(self.pods), replicas):
                pod = self.make_pod(ordinal)
                pod.ordinal = ordinal
                if pod.endpoints is None:
                    pod.endpoints = self.endpoints
                self.pods.append(pod.run())
                added.append(pod)
                if not parallel:
                    pod.wait_ready(ready_timeout_s, min_ready_s=self.min_ready_s)
            for pod in added:
                pod.wait_ready(ready_timeout_s, min_ready_s=self.min_ready_s)
        else:
            removed = self.pods[replicas:][::-1]
            if parallel:
                threads = [threading.Thread(target=p.delete, args=(self.endpoints,), daemon=True) for p in removed]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
            else:
                for pod in removed:
                    pod.delete(self.endpoints)
            del self.pods[replicas:]
        return self

    def disruptions_allowed(self) -> int:
        """The PDB's ``disruptionsAllowed`` now: the set's Ready pods less the ones it must keep
        (Disruption controller: currentHealthy - desiredHealthy; maxUnavailable counts
        against the workload's replicas). Kubernetes docs, "Specifying a Disruption Budget"."""
        if self.pdb is None:
            return len(self.pods)
        spec = self.pdb["spec"]
        expected = self.workload["spec"].get("replicas", len(self.pods))
        healthy = sum(p.ready and not p.terminating for p in self.pods)
        if "minAvailable" in spec:
            desired = _scaled(spec["minAvailable"], expected, round_up=True, default="0")
        else:
            desired = expected - _scaled(spec.get("maxUnavailable"), expected, round_up=True, default="0")
        return max(0, healthy - desired)


def roll_statefulset(podset: PodSet, *, ready_timeout_s: float = 180,
                     on_step: Callable[[Pod], None] | None = None) -> "RolloutResult":
    """The StatefulSet controller's ``RollingUpdate``: from the highest ordinal down to the
    ``partition``, delete one pod (the kubelet's termination), recreate it, and go on only
    once it is Ready for ``minReadySeconds``. Kubernetes docs, "StatefulSets" (rolling updates,
    partitioned rolling updates, minimum ready seconds)."""
    strategy = podset.workload["spec"].get("updateStrategy", {})
    if strategy.get("type", "RollingUpdate") != "RollingUpdate":
        raise RolloutError(f"{podset.name}: updateStrategy {strategy.get('type')} does not roll pods")
    partition = strategy.get("rollingUpdate", {}).get("partition", 0)
    start = time.monotonic()
    new: list[Pod] = []
    for ordinal in range(len(podset.pods) - 1, partition - 1, -1):
        # The controller deletes the next pod only while every pod it already updated is
        # healthy (Ready for minReadySeconds); with podManagementPolicy Parallel it does not
        # wait for the lower ordinals (stateful_set_control.go, updateStatefulSet).
        for done in podset.pods[ordinal + 1:]:
            done.wait_ready(ready_timeout_s, min_ready_s=podset.min_ready_s)
        podset.pods[ordinal].delete(podset.endpoints)
        new.append(podset.replace(ordinal, ready_timeout_s=ready_timeout_s))
        if on_step is not None:
            on_step(new[-1])
    return RolloutResult(seconds=time.monotonic() - start, new=new)


@dataclass
class DrainResult:
    seconds: float
    #: Evictions the PDB refused (``429 Too Many Requests``), per set.
    refused: dict[str, int]


def drain(podsets: Sequence[PodSet], node: int, *, ready_timeout_s: float = 180, retry_s: float = 5) -> DrainResult:
    """``kubectl drain`` of the node that runs ordinal ``node`` of every set (one member of
    each set per node: the charts' anti-affinity). Every pod is evicted at once where its PDB
    allows, a refused eviction is retried every ``retry_s`` (kubectl's interval), and each
    evicted pod is recreated on another node by its controller (a Deployment's at once, a
    StatefulSet's once the old pod is gone); returns when every replacement is available. Kubernetes docs, "Safely Drain a Node", "API-initiated Eviction"."""
    start = time.monotonic()
    refused = {s.name: 0 for s in podsets}
    lock = threading.Lock()
    errors: list[BaseException] = []

    def evict(podset: PodSet) -> None:
        try:
            while True:
                with lock:  # the API server admits one eviction at a time against a budget
                    allowed = podset.disruptions_allowed() > 0
                    pod = podset.pods[node]
                    if allowed:
                        pod.terminating = True
                if allowed:
                    break
                refused[podset.name] += 1
                if time.monotonic() - start > ready_timeout_s:
                    raise RolloutError(f"{podset.name}: eviction of {pod.name} refused by its PDB for "
                                       f"{ready_timeout_s:.0f} s")
                time.sleep(retry_s)
            if podset.workload.get("kind") == "Deployment":
                # A ReplicaSet counts a terminating pod out at once and starts its
                # replacement while the old one still runs its preStop and grace period.
                stopping = threading.Thread(target=pod.delete, args=(podset.endpoints,), daemon=True)
                stopping.start()
                podset.replace(node, ready_timeout_s=ready_timeout_s)
                stopping.join()
            else:
                # A StatefulSet recreates the pod under the same name and volume only once
                # the old one is gone.
                pod.delete(podset.endpoints)
                podset.replace(node, ready_timeout_s=ready_timeout_s)
        except BaseException as e:  # noqa: BLE001 - raised below
            errors.append(e)

    threads = [threading.Thread(target=evict, args=(s,), name=f"evict-{s.name}", daemon=True) for s in podsets]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RolloutError(_one_line(errors[0]))
    return DrainResult(seconds=time.monotonic() - start, refused=refused)


def drain_nodes(podsets: Sequence[PodSet], nodes: Sequence[int], **kwargs: Any) -> list[DrainResult]:
    """Drain ``nodes`` one after another, as a node-group update does."""
    return [drain(podsets, node, **kwargs) for node in nodes]


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


def edge_drain(workdir: Path, deployment: dict[str, Any], pdb: dict[str, Any], demo: DemoPods,
               demo_pdb: dict[str, Any], *, options: "EdgeOptions", routes: Sequence["EdgeRoute"],
               nodes: Sequence[int] = (0, 1), clients: int = 8) -> tuple[LiveClients, list[DrainResult]]:
    """The nodes running the edge and the demo drained one after another, ``clients``
    threads sending through the ServiceLB stand-in, the edge Envoys and the demo pods: on
    each node the edge proxy and the demo pod are evicted at once, as far as their PDBs
    allow, and recreated. Each edge reads the demo's ready pods from its file (the headless
    Service's DNS answer)."""
    from final_problem.local.envoy import LocalEdge

    container = _container(deployment, "envoy")
    edges: list[LocalEdge] = []
    made: list[Pod] = []

    def demo_changed(current: list[tuple[str, int]]) -> None:
        for edge in list(edges):
            edge.set_endpoints("demo", current)

    demo_endpoints = Endpoints(on_change=demo_changed)
    front = Endpoints()
    balancer = LoadBalancer(front)

    def edge_pod(i: int) -> Pod:
        edge = LocalEdge(workdir=workdir / f"edge-{len(made)}", routes=routes,
                         backends={"demo": demo_endpoints.current()}, options=options, dynamic=("demo",))

        def start() -> subprocess.Popen[bytes]:
            edges.append(edge)
            edge.set_endpoints("demo", demo_endpoints.current())
            return edge.start().proc  # type: ignore[return-value]

        def gone() -> None:
            if edge in edges:
                edges.remove(edge)
            edge.close()

        made.append(Pod(name=f"envoy-{len(made)}", start=start, container=container, grace_s=_grace(deployment),
                        ports={8081: edge.options.health_port}, address=(LOOPBACK, edge.options.port), cleanup=gone))
        return made[-1]

    demo_set = PodSet(name="demo", workload=demo.deployment, pdb=demo_pdb, pods=[],
                      make_pod=lambda i: demo.pod(f"demo-{len(demo.made)}"), endpoints=demo_endpoints)
    edge_set = PodSet(name="envoy", workload=deployment, pdb=pdb, pods=[], make_pod=edge_pod, endpoints=front)
    try:
        demo_set.launch(ready_timeout_s=60)
        edge_set.launch(ready_timeout_s=60)
        for edge in edges:
            edge.wait_healthy("demo", len(demo_set.pods))
        with LiveClients(balancer.port, threads=clients) as live:
            time.sleep(1)
            results = drain_nodes([edge_set, demo_set], nodes, ready_timeout_s=120)
            time.sleep(1)
        return live, results
    finally:
        balancer.close()
        _kill_all(made)
        demo.close()


def report(name: str, clients: LiveClients, seconds: float, *, took: str = "rollout") -> str:
    """One line: how long it took, failed requests, the longest time nothing succeeded."""
    kinds = sorted(set(clients.failed))[:5]
    return (f"{name}: {took} {seconds:.1f} s, {len(clients.failed)} of {clients.total} requests failed"
            f"{' ' + str(kinds) if kinds else ''}, longest gap {clients.longest_gap_s():.2f} s")


# -- membership steps on real servers ----------------------------------------------------

class LocalRunner:
    """Membership steps (:mod:`final_problem.scaling`) run on real servers: :class:`Scale`
    and :class:`WaitReady` on the :class:`PodSet` of that StatefulSet name, :class:`Exec`
    through ``exec_local`` (the component's own: the command rewritten for this host, as
    the exec probes are)."""

    def __init__(self, sets: Mapping[str, PodSet], exec_local: Callable[[Any], str], *,
                 ready_timeout_s: float = 180) -> None:
        self.sets, self.exec_local, self.ready_timeout_s = sets, exec_local, ready_timeout_s

    def _set(self, name: str) -> PodSet:
        if name not in self.sets:
            raise RolloutError(f"no StatefulSet {name} here: {sorted(self.sets)}")
        return self.sets[name]

    def exec(self, step: Any) -> str:
        return self.exec_local(step)

    def scale(self, step: Any) -> None:
        self._set(step.name).scale(step.replicas, ready_timeout_s=self.ready_timeout_s)

    def wait_ready(self, step: Any) -> None:
        podset = self._set(step.name)
        deadline = time.monotonic() + min(step.timeout_s, self.ready_timeout_s)
        while sum(p.ready for p in podset.pods) < step.replicas:
            if time.monotonic() > deadline:
                raise RolloutError(f"{step.name}: {sum(p.ready for p in podset.pods)} of {step.replicas} pods Ready")
            time.sleep(0.1)
