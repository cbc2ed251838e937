"""Time kazoo writes and reads against a real three-member ZooKeeper ensemble on loopback.

Starts the ensemble with the same launcher as the integration tests
(final_problem.local.zookeeper), then prints p50/p99 latency and throughput of
sequential acknowledged writes (``set``) and reads (``get``), and after a power cut
(every member killed with SIGKILL, then started at once) the time from "all members
started" to the first acknowledged write. Then, on a fresh ensemble driven as the rendered
StatefulSet's pods (final_problem.local.rollout: readiness probe, grace period, PDB as
rendered, the chart's start script and dynamic membership) with a client writing through the
client Service throughout, a rollout, a node drain, and ``zookeeper.replicas`` 3 -> 5 and
5 -> 3 by its procedure (the steps of ``final-problem scale``): their time, the acknowledged
writes, those lost, and the longest write outage.
Needs the server jars of ``make zookeeper`` (Maven Central, the version the chart pins) and Java.

    .venv/bin/python bench/zookeeper.py [--ops 2000] [--size 100] [--cuts 3]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

from final_problem.clients.zookeeper import ZooKeeperClient, ZooKeeperUnavailable
from final_problem.local import limits, wait_for
from final_problem.local.zookeeper import LocalEnsemble, missing_binaries


def percentile(samples: list[float], q: float) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[q - 1] if len(samples) > 1 else samples[0]


def report(name: str, samples: list[float], elapsed: float) -> None:
    ms = [s * 1000 for s in samples]
    print(f"zookeeper {name:5s} p50 {percentile(ms, 50):6.2f} ms  p99 {percentile(ms, 99):6.2f} ms  "
          f"{len(samples) / elapsed:8.0f} ops/s  ({len(samples)} ops)")


def sequential_ops(client: ZooKeeperClient, *, ops: int, value: bytes) -> dict[str, tuple[list[float], float]]:
    """``ops`` acknowledged writes, then ``ops`` reads, one at a time over 100 znodes: each
    one's seconds, and the elapsed seconds of each run (bench/sizes.py applies the same load)."""
    paths = [f"/bench/key-{i % 100}" for i in range(ops)]
    for path in set(paths):  # create outside the timed loop
        client.put(path, value)
    runs = {}
    for name, op in (("write", lambda p: client.put(p, value)), ("read", lambda p: client.get(p))):
        samples = []
        start = time.perf_counter()
        for path in paths:
            t0 = time.perf_counter()
            op(path)
            samples.append(time.perf_counter() - t0)
        runs[name] = (samples, time.perf_counter() - start)
    return runs


def first_write_after_power_cut(ensemble: LocalEnsemble, value: bytes) -> float:
    """Kill every member, start them all, and return the seconds from the last start to
    the first write a quorum acknowledged (a new session each try: none survives)."""
    for myid in ensemble.procs:
        ensemble.kill(myid)
    ensemble.start_all()
    started = time.perf_counter()

    def write() -> bool:
        client = ZooKeeperClient(hosts=ensemble.hosts, timeout=2)
        try:
            client.start()
            client.put("/bench/power-cut", value)
            return True
        except ZooKeeperUnavailable:
            return False
        finally:
            client.close()
    wait_for("a write after the power cut", write, timeout_s=120, interval_s=0.05)
    return time.perf_counter() - started


def rollout_and_drain(workdir: Path) -> None:
    """A rollout of every member, a drain of member 0's node, then the ensemble grown to five
    members and shrunk back to three, each under a live writer."""
    import dataclasses

    from final_problem import scaling
    from final_problem.charts.zookeeper import ZooKeeperProps
    from final_problem.local import LOOPBACK
    from final_problem.local.rollout import Endpoints, LoadBalancer, LocalRunner, drain, roll_statefulset
    from final_problem.local.zookeeper import ZnodeWrites, rendered_ensemble
    from final_problem.profiles import PI

    statefulset, pdb = rendered_ensemble()
    endpoints = Endpoints()
    balancer = LoadBalancer(endpoints)
    three = ZooKeeperProps.for_profile(PI)
    five = dataclasses.replace(three, replicas=5)
    try:
        with LocalEnsemble(workdir=workdir, dynamic=True, spare=2) as ensemble:
            ensemble.ensemble_address = f"{LOOPBACK}:{balancer.port}"
            podset = ensemble.pod_set(statefulset, pdb)
            podset.endpoints = endpoints
            podset.launch(ready_timeout_s=60)
            hosts = f"{LOOPBACK}:{balancer.port}"
            runner = LocalRunner({"zookeeper": podset}, ensemble.exec_step, ready_timeout_s=90)

            def scale(old: ZooKeeperProps, new: ZooKeeperProps) -> float:
                start = time.monotonic()
                scaling.run(scaling.steps_for("zookeeper", "replicas", old, new, "zookeeper"), runner)
                return time.monotonic() - start

            for what, change in (("rollout", lambda: roll_statefulset(podset, ready_timeout_s=90).seconds),
                                 ("drain", lambda: drain([podset], 0, ready_timeout_s=90).seconds),
                                 ("scale-up 3 -> 5", lambda: scale(three, five)),
                                 ("scale-down 5 -> 3", lambda: scale(five, three))):
                writes = ZnodeWrites(hosts=hosts, prefix=what.split()[0]).start()
                try:
                    seconds = change()
                    seen = writes.finish()
                finally:
                    writes.close()
                print(seen.summary(f"zookeeper {what} (the rendered probe, grace and membership steps)", seconds))
    finally:
        balancer.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ops", type=int, default=2000, help="operations per measurement")
    parser.add_argument("--size", type=int, default=100, help="value size in bytes")
    parser.add_argument("--cuts", type=int, default=3, help="power cuts to time")
    args = parser.parse_args()
    if missing := missing_binaries():
        print(f"missing {', '.join(missing)}", file=sys.stderr)
        return 1
    value = b"x" * args.size
    with tempfile.TemporaryDirectory(prefix="zk-bench-") as tmp, LocalEnsemble(workdir=Path(tmp)) as ensemble:
        ensemble.start_all()
        leader = ensemble.wait_for_quorum(timeout=30)
        print(f"zookeeper ensemble: 3 members on loopback, leader {leader}; {args.ops} sequential ops of {args.size} B")
        with ZooKeeperClient(hosts=ensemble.hosts) as client:
            for name, (samples, elapsed) in sequential_ops(client, ops=args.ops, value=value).items():
                report(name, samples, elapsed)
        # Each try's connection attempts to members still starting are expected: not logged.
        logging.getLogger("kazoo.client").setLevel(logging.CRITICAL)
        cuts = [first_write_after_power_cut(ensemble, value) for _ in range(args.cuts)]
        print(f"zookeeper power cut (all members killed, then started at once): first acknowledged write "
              f"median {statistics.median(cuts):.2f} s after the last member started, over {len(cuts)} cuts "
              f"(min {min(cuts):.2f}, max {max(cuts):.2f})")
        for line in limits.report("zookeeper", ensemble.groups, ensemble.gc_pauses_ms()):
            print(line)
    with tempfile.TemporaryDirectory(prefix="zk-bench-rollout-") as tmp:
        rollout_and_drain(Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
