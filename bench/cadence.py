"""Cadence benchmark: the schema Job's script, then workflows on a real server.

Prints, over ``--runs`` fresh servers (Debian's PostgreSQL, started by
final_problem.local.postgres; ``cadence-sql-tool`` built by ``make cadence-tools``):

- setup on an empty server: both databases created, versioning tables, every versioned
  schema file applied (what the Job does on a new cluster);
- setup on a current schema: the no-op every later run of the Job is;
- wait on a current schema: what each server pod's init container adds to its start.

Then, on one more PostgreSQL, the four Cadence services (final_problem.local.cadence, the
chart's configuration for the Pi profile) and one Python worker process of the sample
(final_problem.clients.cadence), ``EchoWorkflow`` (one activity, the smallest complete
workflow):

- start-to-complete latency p50/p99, one workflow at a time (``--sequential``);
- throughput, workflows started and completed per second with ``--concurrency`` in flight
  (``--workflows`` in all), and the latency p50/p99 under that load.

Then the day-two figures (final_problem.local.cadence_rollout: every process as its rendered
pod, probes, preStop, grace periods and drains as rendered), with a psql session committing a
row per statement and order workflows started every 0.3 s throughout: a PostgreSQL rollout
(one server: a planned restart) and the four Cadence Deployments rolled together, each one's
time, the longest write outage, commits and workflows acknowledged and lost (``--no-rollout``
skips them).

    .venv/bin/python bench/cadence.py [--runs 3] [--workflows 200] [--concurrency 20]   (or: make bench)
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

# Run as a script, this file's folder comes first on the import path, and its name would
# hide the Cadence SDK's package from `import cadence`.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from final_problem.clients import cadence as sample
from final_problem.local import cadence as tools
from final_problem.local import kill_group, limits
from final_problem.local.postgres import LocalPostgres
from final_problem.renderers.cadence import Database


def timed(mode: str, server: LocalPostgres, db: Database) -> float:
    start = time.perf_counter()
    result = tools.run_schema_script(mode, database=db, password=server.password)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"schema script {mode} failed: {result.stderr[-2000:]}")
    return elapsed


def percentile(samples: list[float], q: int) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[q - 1] if len(samples) > 1 else samples[0]


async def one(client, semaphore: asyncio.Semaphore, value: int) -> float:
    async with semaphore:
        start = time.perf_counter()
        execution = await sample.start_echo(client, value)
        result = await sample.wait_for_result(client, execution, int)
        if result != value:
            raise SystemExit(f"EchoWorkflow returned {result}, expected {value}")
        return time.perf_counter() - start


async def workflows(cadence: "tools.LocalCadence", *, count: int, concurrency: int) -> tuple[float, list[float]]:
    from cadence import Client
    async with Client(target=cadence.frontend_address, domain=cadence.props.domain) as client:
        warm_up = asyncio.Semaphore(4)
        await asyncio.gather(*(one(client, warm_up, i) for i in range(8)))
        semaphore = asyncio.Semaphore(concurrency)
        start = time.perf_counter()
        latencies = await asyncio.gather(*(one(client, semaphore, i) for i in range(count)))
        return time.perf_counter() - start, list(latencies)


def workflow_figures(*, sequential: int, count: int, concurrency: int) -> None:
    with LocalPostgres() as server, tempfile.TemporaryDirectory(prefix="final-problem-cadence-") as tmp:
        db = Database(host=server.host, port=server.port, user=server.user)
        timed("setup", server, db)
        with tools.LocalCadence(database=db, password=server.password, workdir=Path(tmp)) as cadence:
            cadence.start_all()
            cadence.wait_ready()
            domain = cadence.register_domain()
            if domain.returncode != 0:
                raise SystemExit(f"domain registration failed: {domain.stderr[-2000:]}")
            worker = sample.spawn_worker(target=cadence.frontend_address, domain=cadence.props.domain,
                                         log=Path(tmp) / "worker.log")
            try:
                _, one_at_a_time = asyncio.run(workflows(cadence, count=sequential, concurrency=1))
                wall, loaded = asyncio.run(workflows(cadence, count=count, concurrency=concurrency))
            finally:
                kill_group(worker)
            processes = len(cadence.instances)
            usage = limits.report("cadence pi", cadence.groups) + limits.report("postgres pi", server.groups)
    print(f"Cadence {tools.cache_dir().name.removeprefix('cadence-')} server ({processes} processes, Pi profile settings), "
          "one Python worker process, EchoWorkflow:")
    print(f"  start-to-complete, one at a time ({sequential}):  p50 {percentile(one_at_a_time, 50) * 1000:6.0f} ms   "
          f"p99 {percentile(one_at_a_time, 99) * 1000:6.0f} ms")
    print(f"  throughput, {concurrency} in flight ({count}):     {count / wall:6.1f} workflows/s   "
          f"latency p50 {percentile(loaded, 50) * 1000:.0f} ms, p99 {percentile(loaded, 99) * 1000:.0f} ms")
    for line in usage:
        print(f"  {line}")


def rollout_figures() -> None:
    from final_problem.local.cadence_rollout import RolloutPlatform, describe, under_load
    from final_problem.local.powercut import LiveWriter
    from final_problem.renderers.cadence import SERVICES

    timings: dict[str, float] = {}
    drains = []

    def roll(writer: LiveWriter) -> None:
        began = time.monotonic()
        timings["postgres"] = platform.roll_postgres()
        timings["postgres outage"] = writer.longest_gap_s(since=began)
        timings.update(platform.roll_cadence())

    with tempfile.TemporaryDirectory(prefix="final-problem-cadence-rollout-") as tmp:
        platform = RolloutPlatform(Path(tmp))
        try:
            platform.start()
            rolled = under_load(platform, roll)
            drained = under_load(platform, lambda writer: drains.append(platform.drain_node()))
        finally:
            platform.close()
    print("Rollouts and a drain under load (Pi profile: one pod each; a psql session committing, an order "
          "workflow started every 0.3 s):")
    print(f"  postgres rollout (planned restart)   {timings['postgres']:5.1f} s   longest write outage "
          f"{timings['postgres outage']:.2f} s")
    print("  cadence Deployments rolled together  " + ", ".join(f"{s} {timings[s]:.1f} s" for s in SERVICES))
    print(f"    rollouts: {describe(rolled)}")
    print(f"  drain of the node running all of them {drains[0].seconds:5.1f} s")
    print(f"    drain: {describe(drained)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sequential", type=int, default=50, help="workflows run one at a time")
    parser.add_argument("--workflows", type=int, default=200, help="workflows run for throughput")
    parser.add_argument("--concurrency", type=int, default=20, help="workflows in flight for throughput")
    parser.add_argument("--no-rollout", action="store_true", help="skip the rollout figures")
    args = parser.parse_args()
    figures: dict[str, list[float]] = {"setup, empty server": [], "setup, current schema (no-op)": [],
                                       "wait, current schema": []}
    for _ in range(args.runs):
        with LocalPostgres() as server:
            db = Database(host=server.host, port=server.port, user=server.user)
            figures["setup, empty server"].append(timed("setup", server, db))
            figures["setup, current schema (no-op)"].append(timed("setup", server, db))
            figures["wait, current schema"].append(timed("wait", server, db))
    print(f"Cadence schema script, cadence-sql-tool {tools.cache_dir().name}, PostgreSQL "
          f"(Debian), median of {args.runs} fresh servers:")
    for name, values in figures.items():
        print(f"  {name:34s} {statistics.median(values):6.2f} s   (min {min(values):.2f}, max {max(values):.2f})")
    workflow_figures(sequential=args.sequential, count=args.workflows, concurrency=args.concurrency)
    if not args.no_rollout:
        rollout_figures()
    return 0


if __name__ == "__main__":
    sys.exit(main())
