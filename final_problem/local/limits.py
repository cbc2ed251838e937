"""Run a local server under the CPU and memory limits its container has in a pod.

A container's ``resources.limits`` become a cgroup: the kubelet writes the memory limit to
``memory.limit_in_bytes`` (cgroup v1) or ``memory.max`` (v2), and the CPU limit to a CFS
quota of ``limit_m / 1000`` CPU per 100 ms period (``cpu.cfs_quota_us`` /
``cpu.cfs_period_us``, or ``cpu.max``). Source: Kubernetes docs, "Resource Management for
Pods and Containers" (how Pods with resource limits are run); kernel docs,
``cgroup-v1/memory.rst``, ``scheduler/sched-bwc.rst`` and ``cgroup-v2.rst``.

A server started here sits in such a group before its first instruction runs (a shell
joins the group, then ``exec``\\ s the server), so a JVM reads the same limits as in the pod
and sizes itself the same way (the collector it picks, its thread pools, its default heap),
and a server that outgrows its limit is OOM-killed here as it would be there.

Each :class:`Cgroup` lives under the cgroup the calling process is in, so whatever limits
the caller has still apply, and is removed by :meth:`Cgroup.remove` once its processes are
gone. Creating one needs root (cgroup directories belong to root); without it, or without
the controllers, :func:`require` fails with one line: the tests never run a server without
its limits.
"""

from __future__ import annotations

import itertools
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from final_problem.constructs.security import Sizing

CGROUP_ROOT = Path("/sys/fs/cgroup")
#: The CFS period the kubelet uses (``--cpu-cfs-quota-period``, default 100 ms).
CFS_PERIOD_US = 100_000
_serial = itertools.count()
#: Every group this process created, removed or not, in order: a test run checks after each
#: test that no server was killed for memory (tests/integration/conftest.py).
created: list["Cgroup"] = []


class LimitsUnavailable(RuntimeError):
    """This host cannot put a server under limits (not root, or no cgroup controllers)."""


@dataclass(frozen=True)
class Limits:
    """A container's ``resources.limits``: CPU in millicores, memory in MiB; and, when known,
    its requests, which only reports show (a cgroup enforces the limits alone)."""

    cpu_m: int
    memory_mib: int
    request_cpu_m: int | None = None
    request_memory_mib: int | None = None

    @classmethod
    def of(cls, sizing: "Sizing") -> "Limits":
        """The limits of a chart's :class:`~final_problem.constructs.security.Sizing`, with its
        requests for the reports."""
        return cls(cpu_m=sizing.cpu_limit_m, memory_mib=sizing.memory_limit_mib,
                   request_cpu_m=sizing.cpu_request_m, request_memory_mib=sizing.memory_request_mib)

    @property
    def memory_bytes(self) -> int:
        return self.memory_mib * 1024 * 1024

    @property
    def cfs_quota_us(self) -> int:
        return self.cpu_m * CFS_PERIOD_US // 1000

    def __str__(self) -> str:
        return f"{self.cpu_m}m CPU, {self.memory_mib} MiB"


#: How often :class:`Groups` reads each group's CPU time: the peak CPU a report shows is the
#: highest rate over one such window (the kubelet's cAdvisor reports a rate over 10 s; a
#: shorter window shows the bursts a CPU limit throttles).
CPU_SAMPLE_S = 1.0


def _v2() -> bool:
    return (CGROUP_ROOT / "cgroup.controllers").exists()


def _own_path(controller: str) -> str:
    """This process's cgroup path in ``controller``'s hierarchy ("" for v2's unified one)."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            return path
    return ""


def _v2_own_path() -> str:
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            return line[3:]
    return "/"


def _hierarchies() -> dict[str, Path]:
    """Where this process's memory and CPU groups are: one directory in v2, two in v1."""
    if _v2():
        own = CGROUP_ROOT / _v2_own_path().lstrip("/")
        return {"memory": own, "cpu": own}
    # cpuacct (CPU time used) is its own hierarchy on some hosts and shares cpu's on others.
    return {name: CGROUP_ROOT / name / _own_path(name).lstrip("/") for name in ("memory", "cpu", "cpuacct")
            if name != "cpuacct" or (CGROUP_ROOT / name).is_dir()}


def problem() -> str | None:
    """Why servers cannot be put under limits here, or ``None`` when they can."""
    if os.geteuid() != 0:
        return "creating cgroups needs root"
    try:
        places = _hierarchies()
    except OSError as e:
        return f"cannot read /proc/self/cgroup ({e})"
    for controller, place in places.items():
        if controller == "cpuacct":
            continue
        if not place.is_dir():
            return f"no {controller} cgroup at {place}"
    return None


def require() -> None:
    """Fail with one line when servers cannot run under their limits here."""
    reason = problem()
    if reason:
        raise LimitsUnavailable(
            f"real servers run under their pods' CPU and memory limits (cgroups): {reason}; run the tests as root "
            "on a host with the memory and cpu controllers (cgroup v1 or v2)")


class Cgroup:
    """One group with a memory limit and a CPU quota, for one server process and its children."""

    def __init__(self, name: str, limits: Limits) -> None:
        require()
        self.name = name
        self.limits = limits
        self._final_oom_kills: int | None = None
        #: When the group was made: its mean CPU rate is over the time since.
        self.created_at = time.monotonic()
        safe = re.sub(r"[^A-Za-z0-9_.-]", "-", name)[:60]
        leaf = f"final-problem-{os.getpid()}-{next(_serial)}-{safe}"
        self.v2 = _v2()
        places = _hierarchies()
        self.dirs = sorted({place / leaf for place in places.values()})
        self.memory_dir = places["memory"] / leaf
        self.cpu_dir = places["cpu"] / leaf
        self.cpuacct_dir = places.get("cpuacct", self.cpu_dir) / leaf
        if self.v2:
            self._enable_v2_controllers(places["memory"])
        for d in self.dirs:
            d.mkdir(exist_ok=True)
        if self.v2:
            _write(self.memory_dir / "memory.max", limits.memory_bytes)
            # No swap for a pod's container (the kubelet's default, NodeSwap off).
            if (self.memory_dir / "memory.swap.max").exists():
                _write(self.memory_dir / "memory.swap.max", 0)
            _write(self.cpu_dir / "cpu.max", f"{limits.cfs_quota_us} {CFS_PERIOD_US}")
        else:
            _write(self.memory_dir / "memory.limit_in_bytes", limits.memory_bytes)
            if (self.memory_dir / "memory.memsw.limit_in_bytes").exists():
                _write(self.memory_dir / "memory.memsw.limit_in_bytes", limits.memory_bytes)
            _write(self.cpu_dir / "cpu.cfs_period_us", CFS_PERIOD_US)
            _write(self.cpu_dir / "cpu.cfs_quota_us", limits.cfs_quota_us)
        created.append(self)

    @staticmethod
    def _enable_v2_controllers(parent: Path) -> None:
        wanted = {"memory", "cpu"}
        enabled = set((parent / "cgroup.subtree_control").read_text().split())
        missing = wanted - enabled
        if missing:
            _write(parent / "cgroup.subtree_control", " ".join(f"+{c}" for c in sorted(missing)))

    def wrap(self, argv: Sequence[str]) -> list[str]:
        """``argv`` started inside this group: a shell writes its own pid into each
        group's ``cgroup.procs`` and then becomes the server (``exec``), so the server's
        first instruction already runs under the limits."""
        joins = " && ".join(f"echo $$ > '{d / 'cgroup.procs'}'" for d in self.dirs)
        return ["/bin/sh", "-c", f'{joins} && exec "$@"', "sh", *argv]

    # -- what the group saw ----------------------------------------------------------------

    def peak_memory_bytes(self) -> int:
        """The most memory the group was charged at once (resident memory and page cache,
        as the kubelet counts a container's memory)."""
        name = "memory.peak" if self.v2 else "memory.max_usage_in_bytes"
        path = self.memory_dir / name
        return int(path.read_text()) if path.exists() else 0

    def oom_kills(self) -> int:
        """How many processes of the group the kernel killed for exceeding the limit (kept
        after the group is removed)."""
        if self._final_oom_kills is not None:
            return self._final_oom_kills
        name = "memory.events" if self.v2 else "memory.oom_control"
        path = self.memory_dir / name
        if not path.exists():
            return 0
        for line in path.read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def cpu_seconds(self) -> float:
        """CPU time used by the group's processes so far."""
        if self.v2:
            for line in (self.cpu_dir / "cpu.stat").read_text().splitlines():
                if line.startswith("usage_usec "):
                    return int(line.split()[1]) / 1e6
            return 0.0
        usage = self.cpuacct_dir / "cpuacct.usage"
        if usage.exists():
            return int(usage.read_text()) / 1e9
        return 0.0

    def throttled_periods(self) -> int:
        """CFS periods in which the group used its whole quota and was held back."""
        for line in (self.cpu_dir / "cpu.stat").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "nr_throttled":
                return int(value)
        return 0

    def peak_rss_bytes(self) -> int:
        """The largest resident set each process of the group has had so far (``VmHWM``),
        summed: the memory the servers themselves held, without the page cache."""
        total = 0
        for pid in self.pids():
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1]) * 1024
        return total

    def memory_breakdown(self) -> dict[str, int]:
        """What the group is charged for now, in bytes: ``anon`` (the processes' own memory),
        ``file`` (page cache), and of that ``dirty``, ``writeback`` and ``mapped`` (pages the
        kernel cannot drop at once when the limit is reached)."""
        path = self.memory_dir / "memory.stat"
        if not path.exists():
            return {}
        stat = dict((k, int(v)) for k, _, v in (line.partition(" ") for line in path.read_text().splitlines()) if v)
        keys = ({"anon": "anon", "file": "file", "dirty": "file_dirty", "writeback": "file_writeback",
                 "mapped": "file_mapped"} if self.v2 else
                {"anon": "rss", "file": "cache", "dirty": "dirty", "writeback": "writeback", "mapped": "mapped_file"})
        return {ours: stat.get(theirs, 0) for ours, theirs in keys.items()}

    def pids(self) -> list[int]:
        path = self.memory_dir / "cgroup.procs"
        return [int(p) for p in path.read_text().split()] if path.exists() else []

    def remove(self) -> None:
        """Remove the group once its processes are gone (a group with a process stays)."""
        if self._final_oom_kills is None:
            self._final_oom_kills = self.oom_kills()
        for d in self.dirs:
            try:
                d.rmdir()
            except FileNotFoundError:
                pass
            except OSError:
                # Still holds a process being reaped: the sweep of a later run removes it.
                pass


def sweep() -> None:
    """Remove empty groups left by earlier runs whose process is gone (a test killed mid-way)."""
    if problem():
        return
    for place in set(_hierarchies().values()):
        for d in place.glob("final-problem-*"):
            owner = d.name.split("-")[2]
            if owner.isdigit() and Path(f"/proc/{owner}").exists():
                continue
            try:
                d.rmdir()
            except OSError:
                pass


def _write(path: Path, value: object) -> None:
    path.write_text(f"{value}\n")


@dataclass(frozen=True)
class Usage:
    """What one server's group used, against its limits (read while its servers run: the
    peak resident set is the live processes')."""

    name: str
    limits: Limits
    peak_memory_mib: float
    peak_rss_mib: float
    oom_kills: int
    cpu_seconds: float
    throttled_periods: int
    #: The highest CPU rate over one sampling window (:data:`CPU_SAMPLE_S`), in millicores.
    peak_cpu_m: int = 0
    #: CPU time over the group's lifetime so far (start included), in millicores.
    mean_cpu_m: int = 0

    def __str__(self) -> str:
        lim = self.limits
        share = 100 * self.peak_memory_mib / lim.memory_mib
        cpu_request = f"request {lim.request_cpu_m}m, " if lim.request_cpu_m is not None else ""
        memory_request = f"request {lim.request_memory_mib}, " if lim.request_memory_mib is not None else ""
        return (f"{self.name}: peak CPU {self.peak_cpu_m}m, mean {self.mean_cpu_m}m ({cpu_request}limit {lim.cpu_m}m), "
                f"peak RSS {self.peak_rss_mib:.0f} MiB, peak charged (RSS and page cache) "
                f"{self.peak_memory_mib:.0f} MiB ({memory_request}limit {lim.memory_mib}, {share:.0f}% of it), "
                f"{self.oom_kills} OOM kills, {self.cpu_seconds:.1f} CPU s "
                f"({self.throttled_periods} periods throttled)")


class Groups:
    """The groups of one launcher's servers, by name: created when a server first starts,
    joined again by its restarts (so a restarted server keeps its figures), and removed
    together by :meth:`remove_all`. Disabled (``enabled=False``), servers run as they are."""

    def __init__(self, *, enabled: bool = True) -> None:
        if enabled:
            require()
        self.enabled = enabled
        self.groups: dict[str, Cgroup] = {}
        self._peak_cpu_m: dict[str, int] = {}
        #: Per group, its memory (:meth:`Cgroup.memory_breakdown`) at the last sample before
        #: its latest OOM kill: what filled the limit.
        self.before_oom_kill: dict[str, dict[str, int]] = {}
        self._stop = threading.Event()
        self._sampler: threading.Thread | None = None

    def _sample(self) -> None:
        """Each group's CPU rate over every window, keeping the highest, and its memory before
        an OOM kill (a daemon thread that only reads cgroup files)."""
        last: dict[str, tuple[float, float]] = {}
        memory: dict[str, tuple[int, dict[str, int]]] = {}
        while not self._stop.wait(CPU_SAMPLE_S):
            for name, group in list(self.groups.items()):
                try:
                    now, used = time.monotonic(), group.cpu_seconds()
                    kills, breakdown = group.oom_kills(), group.memory_breakdown()
                except OSError:
                    continue  # removed meanwhile
                if name in memory and kills > memory[name][0]:
                    self.before_oom_kill[name] = memory[name][1]
                memory[name] = (kills, breakdown)
                if name in last:
                    then, before = last[name]
                    rate = round(1000 * (used - before) / max(now - then, 1e-3))
                    self._peak_cpu_m[name] = max(self._peak_cpu_m.get(name, 0), rate)
                last[name] = (now, used)

    def wrap(self, name: str, limits: Limits | None, argv: Sequence[str]) -> list[str]:
        """``argv`` started in group ``name`` with ``limits`` (as it is without limits or
        when disabled)."""
        if not self.enabled or limits is None:
            return list(argv)
        group = self.groups.get(name)
        if group is None:
            group = self.groups[name] = Cgroup(name, limits)
        if self._sampler is None:
            self._sampler = threading.Thread(target=self._sample, name="cgroup-cpu-sampler", daemon=True)
            self._sampler.start()
        return group.wrap(argv)

    def usage(self) -> list[Usage]:
        return [
            Usage(name=name, limits=g.limits, peak_memory_mib=g.peak_memory_bytes() / (1024 * 1024),
                  peak_rss_mib=g.peak_rss_bytes() / (1024 * 1024),
                  oom_kills=g.oom_kills(), cpu_seconds=g.cpu_seconds(), throttled_periods=g.throttled_periods(),
                  peak_cpu_m=self._peak_cpu_m.get(name, 0),
                  mean_cpu_m=round(1000 * g.cpu_seconds() / max(time.monotonic() - g.created_at, 1e-3)))
            for name, g in self.groups.items()
        ]

    def oom_killed(self) -> dict[str, int]:
        """Groups in which the kernel killed a process for exceeding the memory limit."""
        return {name: g.oom_kills() for name, g in self.groups.items() if g.oom_kills()}

    def oom_report(self, name: str) -> str:
        """Group ``name``'s OOM kills and, when sampled, what it was charged for just before
        the latest: whether the processes' own memory or page cache the kernel could not drop
        (dirty, under writeback, mapped) filled the limit."""
        group = self.groups[name]
        text = f"{group.oom_kills()} OOM kill(s) by the kernel (limit {group.limits.memory_mib} MiB)"
        before = self.before_oom_kill.get(name)
        if before:
            mib = {k: v / (1 << 20) for k, v in before.items()}
            text += (f"; up to {CPU_SAMPLE_S:g} s before: anon {mib['anon']:.0f} MiB, page cache {mib['file']:.0f} MiB "
                     f"(dirty {mib['dirty']:.0f}, writeback {mib['writeback']:.0f}, mapped {mib['mapped']:.0f})")
        return text

    def remove_all(self) -> None:
        self._stop.set()
        if self._sampler is not None:
            self._sampler.join(timeout=5)
        # Servers started again after this get a sampler of their own.
        self._sampler, self._stop = None, threading.Event()
        for group in self.groups.values():
            group.remove()
        self.groups.clear()


def report(component: str, groups: Groups, gc_pauses_ms: Sequence[float] = ()) -> list[str]:
    """Lines for a benchmark: each group's peak memory against its limit, and the JVM's GC
    pauses (p99 and longest) when given."""
    lines = [f"{component} {u}" for u in groups.usage()]
    if gc_pauses_ms:
        ordered = sorted(gc_pauses_ms)
        p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
        lines.append(f"{component} GC pauses p99 {p99:.1f} ms, longest {ordered[-1]:.1f} ms ({len(ordered)} pauses)")
    return lines
