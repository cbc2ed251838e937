"""Time kazoo writes and reads against a real three-member ZooKeeper ensemble on loopback.

Starts the ensemble with the same launcher as the integration tests
(final_problem.local.zookeeper), then prints p50/p99 latency and throughput of
sequential acknowledged writes (``set``) and reads (``get``). Needs Debian's zookeeper
package (``sudo make system-deps``).

    .venv/bin/python bench/zookeeper.py [--ops 2000] [--size 100]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from final_problem.clients.zookeeper import ZooKeeperClient
from final_problem.local.zookeeper import LocalEnsemble, missing_binaries


def percentile(samples: list[float], q: float) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[q - 1] if len(samples) > 1 else samples[0]


def report(name: str, samples: list[float], elapsed: float) -> None:
    ms = [s * 1000 for s in samples]
    print(f"zookeeper {name:5s} p50 {percentile(ms, 50):6.2f} ms  p99 {percentile(ms, 99):6.2f} ms  "
          f"{len(samples) / elapsed:8.0f} ops/s  ({len(samples)} ops)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ops", type=int, default=2000, help="operations per measurement")
    parser.add_argument("--size", type=int, default=100, help="value size in bytes")
    args = parser.parse_args()
    if missing := missing_binaries():
        print(f"missing {', '.join(missing)}: run `sudo make system-deps`", file=sys.stderr)
        return 1
    value = b"x" * args.size
    with tempfile.TemporaryDirectory(prefix="zk-bench-") as tmp, LocalEnsemble(workdir=Path(tmp), heap_mib=256) as ensemble:
        ensemble.start_all()
        leader = ensemble.wait_for_quorum(timeout=30)
        print(f"zookeeper ensemble: 3 members on loopback, leader {leader}; {args.ops} sequential ops of {args.size} B")
        with ZooKeeperClient(hosts=ensemble.hosts) as client:
            paths = [f"/bench/key-{i % 100}" for i in range(args.ops)]
            for path in set(paths):  # create outside the timed loop
                client.put(path, value)
            for name, op in (("write", lambda p: client.put(p, value)), ("read", lambda p: client.get(p))):
                samples = []
                start = time.perf_counter()
                for path in paths:
                    t0 = time.perf_counter()
                    op(path)
                    samples.append(time.perf_counter() - t0)
                report(name, samples, time.perf_counter() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
