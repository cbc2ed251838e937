"""Rehearse each version upgrade on real servers: how long it takes, how long writes stop.

Runs the rehearsals of final_problem.local.upgrade (the tests' rehearsals,
tests/integration/test_upgrades.py): ZooKeeper from the previous 3.9 patch to the pinned one,
and Kafka from the previous minor to the pinned one, on the Pi's combined layout and on
EKS's dedicated controllers and brokers, each rolled as the StatefulSet controller rolls
it (gated by the rendered readiness probe) under a client writing throughout, Kafka's
``metadata.version`` then finalized. Prints, per rehearsal, its duration (the roll, and for
Kafka the finalization), the writes acknowledged, refused and lost, and the longest time no
write was acknowledged; PostgreSQL from the previous 17 patch to the pinned one (its one pod
replaced on the same data directory); Cadence from the previous minor to the pinned one (the
new release's schema Job while the old servers serve, then the four Deployments rolled), a
client starting workflows throughout, every acknowledged one completed. Needs the jars of
``make kafka`` and ``make zookeeper``, the servers of ``make postgres`` and ``make
cadence-tools`` (both versions of each), Java, and root for the pods' cgroup limits.

    .venv/bin/python bench/upgrades.py [--only zookeeper|postgres|cadence|kafka-combined|kafka-dedicated]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

# Run as a script, this file's folder comes first on the import path, and bench/kafka.py
# would hide the kafka-python package from `import kafka`.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from final_problem.local.upgrade import UpgradeError, cadence_upgrade, kafka_upgrade, postgres_upgrade, zookeeper_upgrade

REHEARSALS = {
    "zookeeper": lambda workdir: zookeeper_upgrade(workdir),
    "postgres": lambda workdir: postgres_upgrade(workdir),
    "cadence": lambda workdir: cadence_upgrade(workdir),
    "kafka-combined": lambda workdir: kafka_upgrade(workdir, layout="combined"),
    "kafka-dedicated": lambda workdir: kafka_upgrade(workdir, layout="dedicated"),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=sorted(REHEARSALS), action="append", help="run only these rehearsals")
    args = parser.parse_args()
    # kazoo and kafka-python log every dropped connection of a restarted pod: expected here.
    logging.getLogger("kazoo").setLevel(logging.CRITICAL)
    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    print("upgrade rehearsals (rolled as the StatefulSet and Deployment controllers do, a client writing throughout):")
    for name in args.only or REHEARSALS:
        with tempfile.TemporaryDirectory(prefix=f"upgrade-{name}-") as tmp:
            try:
                result = REHEARSALS[name](Path(tmp))
            except UpgradeError as e:
                print(f"  {name}: {e}", file=sys.stderr)
                return 1
        print(f"  {result.summary()}")
        if "metadata.version after" in result.facts:
            refused = "refused" if result.facts["downgrade refused"] else "NOT refused"
            print(f"    metadata.version {result.facts['metadata.version before']} -> "
                  f"{result.facts['metadata.version after']}; a downgrade after it: {refused}")
        if "schema after" in result.facts:
            f = result.facts
            print(f"    schema {f['schema before']} -> {f['schema after']} in {f['schema job s']:.1f} s (old servers "
                  f"serving), then the Deployments rolled in {f['roll s']:.1f} s; workflows started before "
                  f"{f['workflows started before the upgrade']}, during {f['workflows started during the upgrade']}, "
                  f"all completed: {not result.lost}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
