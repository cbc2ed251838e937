"""Requests, limits, heaps and memory caps of the bundled servers, per profile and size.

Every figure is here, once, with the measurement it is set from; the charts read their CPU
from :func:`sizing` and their memory settings' defaults from :func:`default` (a user's
setting still wins). Keys: ``pi``, ``eks`` (the ``small`` size, the default) and
``eks_production`` (cluster setting ``size=production``).

Measured with ``.venv/bin/python bench/sizes.py`` (each component's servers under their
containers' limits, under the load their own benchmark applies; peak CPU is the highest
rate over 1 s, startup included, "under load" the rate while the load ran; peak RSS the
servers' resident set, peak charged what the cgroup was charged, page cache included; JVM heap after
GC from the GC log, metaspace from ``jcmd GC.heap_info``, direct buffers, thread stacks and
JIT code from Native Memory Tracking), on 2 shared cores, first at the production sizes
(the former EKS defaults), then at the small sizes set from them.

Headroom, per component, and why:

- JVMs (ZooKeeper, Kafka): heap half the memory (the charts' default), at least 4 x the
  largest heap left after a collection (live data plus young survivors); the other half
  holds metaspace, JIT code, thread stacks and direct buffers (measured together at most
  80 MiB) with room to spare, and for a Kafka broker the page cache: recent segments that
  consumers and replicas read without a disk read (Kafka docs, "Design: Don't fear the
  filesystem"). The kernel reclaims page cache at the limit, so the check is on RSS:
  a JVM's peak RSS stays a quarter of its limit below it.
- Redis: ``maxmemory`` bounds the data set; the limit is twice ``maxmemory`` plus 10% for
  allocator fragmentation (measured 1.06-1.08 with a full data set) plus 64 MiB for the
  server itself, replication backlog and client buffers (measured RSS 15 MiB empty),
  because two copies of the data may exist at once: a fork for an AOF rewrite or a
  replica's sync may copy every page it holds (Redis docs, "Redis persistence":
  copy-on-write), and a replica loading a full sync can hold the new set beside the old
  (measured: 1,533 MiB at maxmemory 1,024). Peak RSS stays those 64 MiB below the limit.
- PostgreSQL: ``shared_buffers`` a quarter of memory (PostgreSQL docs, "Resource
  Consumption"); the rest for the backends of every Cadence pool and the page cache; its
  processes share the buffers, so the check is on the charged peak, a quarter below the
  limit.
- Cadence (Go): the limit is twice the peak RSS, as Go's collector lets the heap grow to
  twice the live heap before it collects (GOGC=100: Go docs, "A Guide to the Go Garbage
  Collector"); the request is the peak RSS with a quarter more.
- Envoy: about twice the peak RSS; its overload manager caps the heap at 80% of the memory
  and starts shrinking it at 95% of that (final_problem/renderers/envoy.py): peak RSS stays
  a fifth below the limit.
- CPU: the benchmarks drive each server as fast as one client goes, more than the steady
  use a request reserves, and every server's rate under them together exceeds what three
  m7g.large nodes have; requests are set so the platform stays within 80% of the nodes'
  CPU, in proportion to the measured rates (a broker's 323-330m under load: 200m; a
  controller's 31-56m: 50m), and limits stay above every measured peak (JIT warm-up at
  start included), so the benchmarks' loads run unthrottled.

Not measured here, and unchanged from before: Consul (no Consul server runs on these
machines: BUSL-1.1), its mesh sidecars, the exporters, the Cadence web UI and the jobs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from final_problem.constructs.security import Sizing
from final_problem.profiles import Profile
from final_problem.settings import PerProfile, per_profile


@dataclass(frozen=True)
class Size:
    """One container's CPU (millicores) and memory (MiB), request and limit."""

    cpu_request_m: int
    cpu_limit_m: int
    memory_request_mib: int
    memory_limit_mib: int

    def sizing(self, memory_mib: int | None = None) -> Sizing:
        """The chart's sizing; ``memory_mib`` (a memory setting) is request and limit both."""
        request, limit = (memory_mib, memory_mib) if memory_mib is not None else \
            (self.memory_request_mib, self.memory_limit_mib)
        return Sizing(cpu_request_m=self.cpu_request_m, cpu_limit_m=self.cpu_limit_m,
                      memory_request_mib=request, memory_limit_mib=limit)


#: Each container's size per profile key (``eks``: the small size). "production" figures are
#: from ``bench/sizes.py --size production``, "small" from ``bench/sizes.py`` (the default
#: size), both on 2 shared cores; "under load" is the CPU rate while the benchmark's load ran.
SIZES: dict[str, dict[str, Size]] = {
    # ZooKeeper member. production (heap 1,024 MiB): peak RSS 147-210 MiB, heap after GC at
    # most 12 MiB, metaspace 17, JIT code 10, threads 5, direct 0; peak CPU 594-769m (start),
    # 194-442m under load. Small: heap 256 MiB (20 x the live heap), 512 MiB; small: peak RSS
    # 140-178 MiB (of 384 allowed), GC pauses p99 48-90 ms.
    "zookeeper": {
        "pi": Size(100, 500, 320, 320),
        "eks": Size(100, 1000, 512, 512),
        "eks_production": Size(250, 1000, 2048, 2048),
    },
    # KRaft controller. production (heap 384 MiB): peak RSS 181-202 MiB, heap after GC at most
    # 43 MiB, metaspace 39, code 15, threads 4, direct 0; peak CPU 338-373m, 31-56m under load
    # (the pod's request is at least its format-storage init container's 100m). Small: heap
    # 192 MiB (4 x), 384 MiB; small: peak RSS 160-202 MiB (of 288), GC p99 77-131 ms.
    "kafka_controller": {
        "pi": Size(100, 1000, 768, 768),
        "eks": Size(50, 1000, 384, 384),
        "eks_production": Size(200, 1000, 768, 768),
    },
    # Kafka broker (or the Pi's combined node). production (heap 768 MiB): peak RSS 305-314 MiB,
    # charged 437-448 (page cache), heap after GC at most 73 MiB, metaspace 46, code 21,
    # threads 9, direct 1; peak CPU 507-566m, 323-330m under load. Small: heap 384 MiB (5 x),
    # 768 MiB, about 300 MiB left for page cache; small: peak RSS 261-275 MiB (of 576),
    # charged 391-409, GC p99 84-117 ms.
    "kafka_broker": {
        "pi": Size(200, 1000, 448, 448),
        "eks": Size(200, 1500, 768, 768),
        "eks_production": Size(250, 1500, 1536, 1536),
    },
    # Redis server. production (maxmemory 1,024 MiB): RSS 15 MiB under the SET/GET load (primary
    # 223m under load, replicas 69-90m); filled, used_memory 874 MiB, RSS 923 MiB (fragmentation
    # about 1.06), a replica 1,533 MiB through a full sync (two copies). Small: maxmemory 256 MiB,
    # 2 x 256 x 1.1 + 64 = 627, rounded up to 640 MiB; small, filled (206 MiB used): peak RSS
    # 222-224 MiB (of 576), no OOM kill through the AOF rewrite.
    "redis": {
        "pi": Size(100, 500, 256, 256),
        "eks": Size(100, 1000, 640, 640),
        "eks_production": Size(250, 1000, 2048, 2048),
    },
    # Sentinel: peak RSS 12 MiB, 2m under load, peak 4-9m (both sizes).
    "sentinel": {
        "pi": Size(20, 100, 32, 48),
        "eks": Size(10, 200, 32, 64),
        "eks_production": Size(50, 200, 32, 64),
    },
    # PostgreSQL under the Cadence load. production (shared_buffers 512 MiB): peak charged 210 MiB
    # (its processes share the buffers: their summed RSS, 1,606 MiB, counts them once per
    # process), peak CPU 507m, 396m under load. Small: 768 MiB, shared_buffers 192; small: peak
    # charged 189 MiB (of 576).
    "postgres": {
        "pi": Size(100, 1000, 384, 384),
        "eks": Size(100, 1000, 768, 768),
        "eks_production": Size(250, 1000, 2048, 2048),
    },
    # Cadence services (Go). production: peak RSS frontend 62-83 MiB (147m under load), history
    # 148-168 (188-231m), matching 68-75 (131m), worker 66 (17m). Small: request the peak RSS
    # with a quarter more (rounded to 16 MiB), limit at least twice it; small: frontend 64-83
    # (of 112), history 130-163, matching 67-72 (of 96), worker 68 (of 96). A history host
    # that owns every shard (the others down: tests/integration/test_eks_limits.py runs one)
    # peaked at 262 MiB under the same load: history is sized for that, 320 / 576.
    "cadence_frontend": {
        "pi": Size(50, 500, 192, 256),
        "eks": Size(50, 1000, 112, 224),
        "eks_production": Size(100, 1000, 256, 512),
    },
    "cadence_history": {
        "pi": Size(100, 1000, 192, 384),
        "eks": Size(100, 1000, 320, 576),
        "eks_production": Size(250, 1000, 512, 768),
    },
    "cadence_matching": {
        "pi": Size(50, 500, 128, 256),
        "eks": Size(50, 1000, 96, 192),
        "eks_production": Size(100, 1000, 256, 384),
    },
    "cadence_worker": {
        "pi": Size(50, 500, 128, 192),
        "eks": Size(20, 500, 96, 192),
        "eks_production": Size(100, 500, 128, 256),
    },
    # Not measured (a Node.js server: none runs here); as before.
    "cadence_web": {
        "pi": Size(20, 300, 96, 192),
        "eks": Size(50, 500, 128, 256),
        "eks_production": Size(50, 500, 128, 256),
    },
    # Edge Envoy (2 workers). production (256 MiB): peak RSS 65 MiB, 384m under one client's
    # sequential load. Small: 160 MiB (the overload manager's heap cap is then 128 MiB); small:
    # peak RSS 65 MiB (of 128).
    "envoy": {
        "pi": Size(100, 1000, 96, 96),
        "eks": Size(100, 2000, 160, 160),
        "eks_production": Size(250, 2000, 256, 256),
    },
}

#: Settings that cap memory inside a container, per profile key.
LIMITS_INSIDE: dict[str, dict[str, int]] = {
    # Redis maxmemory: see "redis" above (at most half the memory, with a second copy).
    "redis_maxmemory_mib": {"pi": 128, "eks": 256, "eks_production": 1024},
    # PostgreSQL shared_buffers: a quarter of "postgres" memory (PostgreSQL docs, "Resource
    # Consumption": 25% of memory is a reasonable start).
    "postgres_shared_buffers_mib": {"pi": 128, "eks": 192, "eks_production": 512},
}


def _key(profile: Profile) -> str:
    return profile.name if profile.size == profile.sizes[0] else f"{profile.name}_{profile.size}"


def size(container: str, profile: Profile) -> Size:
    """The size of ``container`` in ``profile`` at its size."""
    return SIZES[container][_key(profile)]


def sizing(container: str, profile: Profile, memory_mib: int | None = None) -> Sizing:
    """``container``'s sizing in ``profile``; ``memory_mib`` (its memory setting) replaces the
    memory request and limit."""
    return size(container, profile).sizing(memory_mib)


def default(name: str) -> PerProfile:
    """A setting's default per profile and size: a container's memory limit (its name in
    :data:`SIZES`) or a cap inside one (:data:`LIMITS_INSIDE`)."""
    values: dict[str, Any] = (
        LIMITS_INSIDE[name] if name in LIMITS_INSIDE else {k: s.memory_limit_mib for k, s in SIZES[name].items()})
    return per_profile(**values)


#: The share of its memory limit each server keeps free at its peak (the tests hold every
#: server to it under its benchmark's load; the module docstring says why each).
HEADROOM_SHARE: dict[str, float] = {
    "zookeeper": 0.25, "kafka_controller": 0.25, "kafka_broker": 0.25, "postgres": 0.25,
    "cadence_frontend": 0.5, "cadence_history": 0.5, "cadence_matching": 0.5, "cadence_worker": 0.5,
    "envoy": 0.2,
}
#: Redis: the server's own allowance in its limit (2 x maxmemory x 1.1 + this); two copies of
#: the data set (a replica loading a full sync beside its old data, or a fork's copy) must
#: fit in the rest.
REDIS_BASE_MIB = 64
#: The longest GC pause (p99) a JVM may take under its benchmark load, in ms: a Kafka broker
#: on EKS heartbeats every 500 ms (broker_heartbeat_interval_ms), so a shorter pause delays
#: at most one heartbeat, far from the 3 s session that fences it; ZooKeeper's tick is 2 s.
GC_PAUSE_P99_MS = 500


def headroom_mib(container: str, limit_mib: int) -> float:
    """How far below ``limit_mib`` the peak of ``container`` must stay, in MiB."""
    if container == "redis":
        return REDIS_BASE_MIB
    return HEADROOM_SHARE[container] * limit_mib
