"""What each component's servers use at a size of the EKS profile, under its benchmark's load.

The measured basis of every request, limit and heap (final_problem/sizes.py cites these
lines). For each component, the servers start with the rendered configuration and under
their containers' limits at ``--size`` (the default: the ``size`` setting's default),
take the load their own benchmark applies, and then print, per server, peak CPU (the
highest rate over 1 s) and peak memory beside its request and limit; for the JVMs also the
heap left after each collection (its largest: what the heap must hold), heap and metaspace
in use, and direct buffers, thread stacks and JIT code from Native Memory Tracking, and GC
pauses p99 and longest:

- zookeeper: 3 members; ``bench/zookeeper.py``'s sequential writes and reads (2,000 of 100 B
  each, 100 znodes);
- kafka: 3 controllers + 3 brokers; ``bench/kafka.py``'s produce runs (the project's producer
  and ``kafka-producer-perf-test``, acks=all, 1 KiB records) and its end-to-end latency run;
- redis: 1 primary, 2 replicas, 3 Sentinels; ``bench/redis.py``'s SET/GET runs, then the
  primary filled to ``maxmemory`` with 1 KiB values and an AOF rewrite forked at full
  memory (the case its limit of twice ``maxmemory`` is for);
- cadence and postgres: the four Cadence services on one PostgreSQL; ``bench/cadence.py``'s
  EchoWorkflow runs (one at a time, then 20 in flight);
- envoy: the edge Envoy (the EKS profile's workers); ``bench/edge_proxy.py``'s sequential
  keep-alive GETs.

    .venv/bin/python bench/sizes.py [--size small|production] [--only zookeeper,kafka,...]
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this file's folder comes first on the import path and its neighbours'
# names (kafka, redis, cadence) would hide the client packages; the repository root instead,
# so the other benchmarks' loads import as bench.<name>.
_ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [str(_ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse
import asyncio
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from typing import Callable, Iterable

from final_problem import local
from final_problem.charts.cadence import CadenceProps
from final_problem.charts.envoy import EnvoyProps, chart_config
from final_problem.charts.kafka import KafkaProps
from final_problem.charts.redis import RedisProps
from final_problem.local.limits import Groups
from final_problem.profiles import EKS, SIZES, Profile

COMPONENTS = ("zookeeper", "kafka", "redis", "cadence", "envoy")


def percentile(samples: list[float], q: int) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[q - 1] if len(samples) > 1 else samples[0]


def jvm_line(name: str, pid: int | None, gc_dirs: Iterable[Path]) -> str:
    dirs = list(gc_dirs)
    after = local.gc_heap_after_mib(dirs)
    pauses = local.gc_pauses_ms(dirs)
    memory = local.jvm_memory(pid) if pid else {}
    parts = [f"heap after GC max {max(after)} MiB ({len(after)} GCs)" if after else "no GC"]
    parts += [f"{key} {value:.0f} MiB" for key, value in memory.items()]
    if pauses:
        parts.append(f"GC pauses p99 {percentile(pauses, 99):.1f} ms, longest {max(pauses):.1f} ms")
    return f"{name} JVM: " + ", ".join(parts)


def usage_lines(component: str, groups: Groups) -> list[str]:
    return [f"{component} {u}" for u in groups.usage()]


class LoadCpu:
    """CPU each server used while the benchmark load ran (its start and JIT warm-up left
    out): what a request reserves for."""

    def __init__(self, *groups: Groups) -> None:
        self.groups = groups

    def __enter__(self) -> "LoadCpu":
        self.start = time.monotonic()
        self.before = {name: g.cpu_seconds() for gs in self.groups for name, g in gs.groups.items()}
        return self

    def __exit__(self, *exc: object) -> None:
        self.elapsed = time.monotonic() - self.start
        self.after = {name: g.cpu_seconds() for gs in self.groups for name, g in gs.groups.items()}

    def line(self, component: str) -> str:
        rates = ", ".join(f"{name} {1000 * (self.after[name] - self.before.get(name, 0.0)) / self.elapsed:.0f}m"
                          for name in self.after)
        return f"{component} CPU during the {self.elapsed:.0f} s load: {rates}"


def zookeeper(profile: Profile, tmp: Path) -> list[str]:
    from bench.zookeeper import sequential_ops
    from final_problem.clients.zookeeper import ZooKeeperClient
    from final_problem.local.zookeeper import LocalEnsemble

    with LocalEnsemble(workdir=tmp, profile=profile, jvm_options=[local.NMT_FLAG]) as ensemble:
        ensemble.start_all()
        ensemble.wait_for_quorum(timeout=60)
        with ZooKeeperClient(hosts=ensemble.hosts) as client, LoadCpu(ensemble.groups) as load:
            sequential_ops(client, ops=2000, value=b"x" * 100)
        lines = usage_lines("zookeeper", ensemble.groups) + [load.line("zookeeper")]
        for myid, proc in ensemble.procs.items():
            pids = ensemble.groups.groups[f"zookeeper-{myid}"].pids()
            lines.append(jvm_line(f"zookeeper-{myid}", pids[0] if pids else None, [proc.directory]))
    return lines


def kafka(profile: Profile, tmp: Path) -> list[str]:
    from bench.kafka import end_to_end_latency, perf_test_throughput, project_throughput
    from final_problem.local.kafka import LocalKafkaCluster

    props = KafkaProps.for_profile(profile)
    with LocalKafkaCluster(workdir=tmp, layout="dedicated", props=props, jvm_options=[local.NMT_FLAG]) as cluster:
        cluster.start_all()
        cluster.wait_healthy()
        topic = cluster.create_topic(partitions=3, prefix="bench")
        with LoadCpu(cluster.groups) as load:
            project_throughput(cluster, topic, 20000)
            perf_test_throughput(cluster, topic, 20000)
            end_to_end_latency(cluster, cluster.create_topic(partitions=3, prefix="bench"), 500)
        lines = usage_lines("kafka", cluster.groups) + [load.line("kafka")]
        for node_id, proc in cluster.procs.items():
            pids = cluster.groups.groups[cluster.group_name(node_id)].pids()
            lines.append(jvm_line(cluster.group_name(node_id), pids[0] if pids else None, [proc.directory]))
    return lines


def redis(profile: Profile, tmp: Path) -> list[str]:
    from bench.redis import client_ops, redis_benchmark_ops
    from final_problem.clients.redis import RedisClient, RedisSettings
    from final_problem.local.redis import HOST, LocalRedisSet

    props = RedisProps.for_profile(profile)
    # bench/redis.py's Sentinel timings; the rest (maxmemory, persistence) is the size's.
    options = RedisProps.for_profile(profile, down_after_ms=1000, failover_timeout_ms=5000,
                                     bootstrap_wait_s=1).config_options()
    with LocalRedisSet(workdir=tmp, options=options, profile=profile) as cluster:
        client = RedisClient(settings=RedisSettings.from_env(cluster.client_env(), secret=lambda k: ""))
        with LoadCpu(cluster.groups) as load:
            try:
                client_ops(client, 20000)
                port = client.primary_address()[1]
            finally:
                client.close()
            redis_benchmark_ops(cluster, port, 20000)
        lines = usage_lines("redis (bench load)", cluster.groups) + [load.line("redis")]
        # Fill the primary to maxmemory with 1 KiB values (keys without a TTL: volatile-lru
        # evicts none, writes fail once it is full), then fork an AOF rewrite at full memory.
        admin = cluster.admin(cluster.member_index(port))
        # Random keys out of twice as many as fit: about 86% distinct, more than maxmemory holds.
        keys = 2 * props.maxmemory_mib * 1024 * 1024 // 1100
        subprocess.run([shutil.which("redis-benchmark") or "redis-benchmark", "-h", HOST, "-p", str(port),
                        "--user", "app", "-a", cluster.passwords.app, "-t", "set", "-n", str(keys), "-r", str(keys),
                        "-d", "1024", "-P", "32", "-q"], capture_output=True, timeout=900)
        info = admin.info("memory")
        # Growing the file past auto-aof-rewrite-percentage may have started one already.
        if not admin.info("persistence")["aof_rewrite_in_progress"]:
            admin.bgrewriteaof()
        local.wait_for("the AOF rewrite", lambda: admin.info("persistence")["aof_rewrite_in_progress"] == 0
                       and admin.info("persistence")["aof_rewrite_scheduled"] == 0, timeout_s=600, interval_s=0.5)
        lines.append(f"redis primary filled: used_memory {info['used_memory'] / 2**20:.0f} MiB of maxmemory "
                     f"{props.maxmemory_mib} MiB, used_memory_rss {info['used_memory_rss'] / 2**20:.0f} MiB; "
                     f"then an AOF rewrite (fork)")
        lines += usage_lines("redis (filled, AOF rewrite)", cluster.groups)
    return lines


def cadence(profile: Profile, tmp: Path) -> list[str]:
    from bench.cadence import timed, workflows
    from final_problem.clients import cadence as sample
    from final_problem.local import cadence as tools
    from final_problem.local.postgres import LocalPostgres
    from final_problem.renderers.cadence import Database

    with LocalPostgres(profile=profile) as server:
        db = Database(host=server.host, port=server.port, user=server.user)
        timed("setup", server, db)
        with tools.LocalCadence(database=db, password=server.password, workdir=tmp,
                                props=CadenceProps.for_profile(profile)) as cad:
            cad.start_all()
            cad.wait_ready()
            domain = cad.register_domain()
            if domain.returncode != 0:
                raise SystemExit(f"domain registration failed: {domain.stderr[-2000:]}")
            worker = sample.spawn_worker(target=cad.frontend_address, domain=cad.props.domain, log=tmp / "worker.log")
            try:
                with LoadCpu(cad.groups, server.groups) as load:
                    asyncio.run(workflows(cad, count=50, concurrency=1))
                    asyncio.run(workflows(cad, count=200, concurrency=20))
            finally:
                local.kill_group(worker)
            return usage_lines("cadence", cad.groups) + usage_lines("postgres", server.groups) + [load.line("cadence")]


def envoy(profile: Profile, tmp: Path) -> list[str]:
    from bench.edge_proxy import run_load
    from final_problem.local.envoy import LocalEdge

    (port,) = local.free_ports(1)
    backend = subprocess.Popen([sys.executable, "-m", "final_problem.local.envoy", str(port)])
    try:
        local.wait_for("the backend", lambda: socket.create_connection((local.LOOPBACK, port), timeout=1).close() or True,
                       timeout_s=15, retry_on=(OSError,))
        props = EnvoyProps.for_profile(profile)
        options, routes = chart_config(props, ("base", "demo"))
        with LocalEdge(workdir=tmp, routes=routes, backends={"demo": [(local.LOOPBACK, port)]}, options=options,
                       profile=profile, concurrency=props.concurrency) as edge:
            edge.wait_healthy("demo", 1)
            with LoadCpu(edge.groups) as load:
                run_load(edge.options.port, 5000)
            return usage_lines("envoy", edge.groups) + [load.line("envoy")]
    finally:
        backend.terminate()
        backend.wait(timeout=10)


RUNS: dict[str, Callable[[Profile, Path], list[str]]] = {
    "zookeeper": zookeeper, "kafka": kafka, "redis": redis, "cadence": cadence, "envoy": envoy,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=SIZES, default=SIZES[0])
    parser.add_argument("--only", default=",".join(COMPONENTS), help="comma-separated components")
    args = parser.parse_args(argv)
    profile = EKS.sized(args.size)
    wanted = [c.strip() for c in args.only.split(",") if c.strip()]
    if unknown := [c for c in wanted if c not in RUNS]:
        print(f"--only: unknown component {', '.join(unknown)}; choose from {', '.join(RUNS)}", file=sys.stderr)
        return 2
    for name in wanted:
        with tempfile.TemporaryDirectory(prefix=f"sizes-{name}-") as tmp:
            print(f"{name} at the eks profile's {args.size} size, under {name}'s benchmark load:", flush=True)
            for line in RUNS[name](profile, Path(tmp)):
                print(f"  {line}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
