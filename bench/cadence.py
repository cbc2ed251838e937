"""Cadence benchmark: the schema Job's script on a local PostgreSQL, with the real tool.

Prints, over ``--runs`` fresh servers (Debian's PostgreSQL, started by
final_problem.local.postgres; ``cadence-sql-tool`` built by ``make cadence-tools``):

- setup on an empty server: both databases created, versioning tables, every versioned
  schema file applied (what the Job does on a new cluster);
- setup on a current schema: the no-op every later run of the Job is;
- wait on a current schema: what each server pod's init container adds to its start.

Workflow throughput and start-to-complete latency need a running Cadence server, which is
not built here (README, "What only a real cluster exercises").

    .venv/bin/python bench/cadence.py [--runs 3]     (or: make bench)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from final_problem.local import cadence as tools
from final_problem.local.postgres import LocalPostgres
from final_problem.renderers.cadence import Database


def timed(mode: str, server: LocalPostgres, db: Database) -> float:
    start = time.perf_counter()
    result = tools.run_schema_script(mode, database=db, password=server.password)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"schema script {mode} failed: {result.stderr[-2000:]}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
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
    print("  workflow throughput, start-to-complete p50/p99: not measured (no Cadence server build)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
