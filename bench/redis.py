"""Redis benchmark: Sentinel failover time and client throughput, on loopback.

Starts the chart's configuration with final_problem.local.redis (one primary, two
replicas, three Sentinels; Sentinel down-after 1000 ms and failover-timeout 5000 ms, as
in the integration tests) and prints:

- failover time: from SIGKILL of the primary until every Sentinel names the promoted
  replica, median over ``--runs`` fresh sets (a Sentinel waits twice failover-timeout
  before failing over the same primary again, so each run starts anew);
- SET/GET ops/s through the Sentinel-aware client (one connection, one command at a
  time) against ``redis-benchmark -c 1`` on the same primary as the same user, and the
  ratio;
- power cut: every member and Sentinel killed (SIGKILL) and started again at once; the
  time from "all pods started" to the first write a primary acknowledged with
  ``WAIT 1``, median over ``--cuts`` cuts of one set;
- day two: the Pi profile's rendered StatefulSets driven by the rollout harness (readiness
  probes and the primary's preStop hand-over as rendered, the chart's Sentinel timing), a
  rollout of the ``redis`` StatefulSet, then a drain of the primary's node (its member and
  a Sentinel at once), while the Sentinel client writes with ``WAIT 1`` throughout: the
  time each took, the acknowledged writes, those lost and the longest write outage;
- membership: on the same kind of set, ``final-problem scale`` redis.replicas 2 -> 4 -> 2 and
  redis.sentinels 3 -> 5 -> 3 (the procedure's steps on the rendered StatefulSets) under the
  same writes: each change's duration, writes lost and longest write outage;
- with ``--only handover``: redis.replicas 2 -> 4, the primary moved to redis-4, then 4 -> 2
  (the scale-down removes the primary's pod: its hand-over) while ``--hogs`` processes burn
  CPU, ``--runs`` times on one set: the longest write outage and what the primary's hook said.

    .venv/bin/python -m bench.redis [--runs 5] [--requests 20000] [--cuts 5]     (or: make bench)
    .venv/bin/python -m bench.redis --only handover [--runs 3] [--hogs 10]
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a file, this folder comes first on sys.path and this module would shadow the
# redis-py package it measures.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse
import csv
import io
import shutil
import statistics
import subprocess
import tempfile
import time
from contextlib import contextmanager
from typing import Iterator

from final_problem import config, manifests
from final_problem.charts.redis import RedisProps
from final_problem.clients.redis import RedisClient, RedisSettings
from final_problem.local import limits
from final_problem.local.redis import (
    HOST, LocalRedisSet, first_acknowledged_write, local_options, scale_under_writes, with_live_writes,
)
from final_problem.local.rollout import PodSet, drain, roll_statefulset
from final_problem.profiles import PI


def options():
    return RedisProps.for_profile(PI, down_after_ms=1000, failover_timeout_ms=5000, bootstrap_wait_s=1).config_options()


def failover_once(workdir: Path) -> float:
    with LocalRedisSet(workdir=workdir, options=options()) as cluster:
        old = cluster.member_ports[0]
        cluster.kill_member(0)
        _, elapsed = cluster.wait_new_primary(old, timeout_s=30)
        return elapsed


def power_cuts(workdir: Path, cuts: int) -> list[float]:
    """Seconds from the last pod started to the first acknowledged write, per power cut."""
    times = []
    with LocalRedisSet(workdir=workdir, options=options()) as cluster:
        client = RedisClient(settings=RedisSettings.from_env(cluster.client_env(), secret=lambda k: ""))
        try:
            for cut in range(cuts):
                first_acknowledged_write(client, f"before-cut-{cut}", "x", timeout_s=60)
                cluster.stop()
                cluster.spawn_all()
                times.append(first_acknowledged_write(client, f"after-cut-{cut}", "x", timeout_s=120))
        finally:
            client.close()
    return times


@contextmanager
def pi_pods(workdir: Path) -> Iterator[tuple[LocalRedisSet, PodSet, PodSet]]:
    """The Pi's rendered members and Sentinels launched as their StatefulSets; every pod
    abandoned (no restart) and the set closed afterwards."""
    charts = manifests.render(config.from_mapping({"components": ["base", "redis"]}), "pi")
    cluster = LocalRedisSet(workdir=workdir, options=local_options())
    servers, sentinels = cluster.podsets(manifests.chart_objects(charts["redis"]))
    try:
        servers.launch(ready_timeout_s=60)
        sentinels.launch(ready_timeout_s=60)
        yield cluster, servers, sentinels
    finally:
        for pod in servers.pods + sentinels.pods:
            pod.abandon()
        cluster.close()


def day_two(workdir: Path) -> list[str]:
    """A rollout of the redis StatefulSet, then a drain of the primary's node, under writes."""
    lines = []
    with pi_pods(workdir) as (cluster, servers, sentinels):
        rolled = []
        outcome = with_live_writes(cluster, lambda: rolled.append(roll_statefulset(servers, ready_timeout_s=90)),
                                   prefix="rollout:")
        lines.append(outcome.summary(f"redis rollout of 3 members in {rolled[0].seconds:.1f} s"))
        node = cluster.member_index(cluster.wait_settled(timeout_s=60))
        drained = []
        outcome = with_live_writes(cluster, lambda: drained.append(drain([servers, sentinels], node, ready_timeout_s=90)),
                                   prefix="drain:")
        lines.append(outcome.summary(f"redis drain of the primary's node (member and Sentinel) in {drained[0].seconds:.1f} s"))
    return lines


def membership(workdir: Path) -> list[str]:
    """redis.replicas 2 -> 4 -> 2, then redis.sentinels 3 -> 5 -> 3, each under writes."""
    lines = []
    with pi_pods(workdir) as (cluster, servers, sentinels):
        deployed = RedisProps.for_profile(PI)
        for setting, value in (("replicas", 4), ("replicas", 2), ("sentinels", 5), ("sentinels", 3)):
            scaled = scale_under_writes(cluster, servers, sentinels, deployed, setting, value)
            lines.append(scaled.summary(f"redis scale redis.{setting} {getattr(deployed, setting)} -> {value}"))
            deployed = scaled.settings
    return lines


def move_primary_to(cluster: LocalRedisSet, index: int) -> None:
    """Have the Sentinels promote member ``index``: the preferred replica (the lowest
    replica-priority above 0) once every Sentinel has read it, then SENTINEL FAILOVER."""
    name, port = cluster.options.master_name, cluster.member_ports[index]
    cluster.admin(index).config_set("replica-priority", 1)
    cluster.wait_for("every Sentinel to read the preferred replica", lambda: all(
        any(int(r["port"]) == port and int(r["slave-priority"]) == 1
            for r in cluster.sentinel_admin(i).sentinel_slaves(name)) for i in range(len(cluster.sentinels))),
        timeout_s=30, interval_s=0.5)
    old = cluster.wait_settled(timeout_s=60)
    cluster.sentinel_admin(0).sentinel_failover(name)
    cluster.wait_new_primary(old, timeout_s=30)
    cluster.wait_settled(timeout_s=60)


def handover(workdir: Path, runs: int, hogs: int) -> list[str]:
    """redis.replicas 4 -> 2 with the primary on a removed member, under ``hogs`` CPU burners."""
    lines = []
    with pi_pods(workdir) as (cluster, servers, sentinels):
        deployed = RedisProps.for_profile(PI)
        for _ in range(runs):
            up = scale_under_writes(cluster, servers, sentinels, deployed, "replicas", 4).settings
            move_primary_to(cluster, 4)
            log = cluster.members[4].log
            burners = [subprocess.Popen(["sh", "-c", "while :; do :; done"]) for _ in range(hogs)]
            try:
                down = scale_under_writes(cluster, servers, sentinels, up, "replicas", 2)
            finally:
                for burner in burners:
                    burner.kill()
                    burner.wait()
            said = [line for line in log.read_text(errors="replace").splitlines()
                    if "handed over" in line or "hand-over failed" in line]
            lines.append(down.summary(f"redis scale redis.replicas 4 -> 2, the primary removed, {hogs} CPU hogs")
                         + f"; hook: {said[-1] if said else 'no hand-over logged'}")
            deployed = down.settings
    return lines


def client_ops(client: RedisClient, requests: int) -> dict[str, float]:
    primary = client.primary
    result = {}
    started = time.perf_counter()
    for i in range(requests):
        primary.set(f"bench:{i}", "x" * 3)
    result["SET"] = requests / (time.perf_counter() - started)
    started = time.perf_counter()
    for i in range(requests):
        primary.get(f"bench:{i}")
    result["GET"] = requests / (time.perf_counter() - started)
    return result


def redis_benchmark_ops(cluster: LocalRedisSet, port: int, requests: int) -> dict[str, float]:
    binary = shutil.which("redis-benchmark")
    if binary is None:
        raise SystemExit("redis-benchmark is not installed: run `sudo make system-deps` (Debian package redis-tools)")
    out = subprocess.run(
        [binary, "-h", HOST, "-p", str(port), "--user", "app", "-a", cluster.passwords.app,
         "-t", "set,get", "-n", str(requests), "-c", "1", "-d", "3", "--csv"],
        check=True, capture_output=True, text=True, timeout=300,
    ).stdout
    rows = list(csv.reader(io.StringIO(out)))
    return {row[0]: float(row[1]) for row in rows[1:] if row and row[0] in ("SET", "GET")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--cuts", type=int, default=5)
    parser.add_argument("--only", choices=("membership", "handover"), help="run only this part")
    parser.add_argument("--hogs", type=int, default=10, help="CPU-burning processes during --only handover")
    args = parser.parse_args(argv)
    if args.only == "handover":
        with tempfile.TemporaryDirectory(prefix="redis-bench-") as tmp:
            for line in handover(Path(tmp), args.runs, args.hogs):
                print(line, flush=True)
        return 0
    if args.only == "membership":
        with tempfile.TemporaryDirectory(prefix="redis-bench-") as tmp:
            for line in membership(Path(tmp)):
                print(line)
        return 0
    with tempfile.TemporaryDirectory(prefix="redis-bench-") as tmp:
        times = [failover_once(Path(tmp) / f"run-{i}") for i in range(args.runs)]
        print(f"redis failover (down-after 1000 ms): median {statistics.median(times):.2f} s "
              f"over {len(times)} runs (min {min(times):.2f}, max {max(times):.2f})")
        with LocalRedisSet(workdir=Path(tmp) / "throughput", options=options()) as cluster:
            client = RedisClient(settings=RedisSettings.from_env(cluster.client_env(), secret=lambda k: ""))
            try:
                ours = client_ops(client, args.requests)
                port = client.primary_address()[1]
            finally:
                client.close()
            theirs = redis_benchmark_ops(cluster, port, args.requests)
            usage = limits.report("redis", cluster.groups)
        for op in ("SET", "GET"):
            print(f"redis {op}: sentinel client {ours[op]:,.0f} ops/s, redis-benchmark -c 1 {theirs[op]:,.0f} ops/s, "
                  f"ratio {ours[op] / theirs[op]:.2f}")
        # Under the Pi pods' limits, after both throughput runs.
        for line in usage:
            print(line)
        cuts = power_cuts(Path(tmp) / "power-cut", args.cuts)
        print(f"redis power cut (all pods killed, then started at once): first acknowledged write (WAIT 1) "
              f"median {statistics.median(cuts):.2f} s after the last pod started, over {len(cuts)} cuts "
              f"(min {min(cuts):.2f}, max {max(cuts):.2f})")
        for line in day_two(Path(tmp) / "day-two"):
            print(line)
        for line in membership(Path(tmp) / "membership"):
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
