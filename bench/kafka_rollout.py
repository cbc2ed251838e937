"""Measure what a Kafka pod-template change and a node drain cost, per layout.

Starts each layout (EKS: 3 controllers + 3 brokers; Pi: 3 combined nodes) on loopback
from the chart's rendered configuration, StatefulSets, readiness probe, minReadySeconds,
grace period and PDBs (final_problem.local.kafka_rollout, the harness the integration
test uses), then, with the project's acks=all producer writing throughout: rolls every
set (controllers first), then drains the node of the active controller, then, on EKS's
layout, grows the controller quorum 3 -> 5 and shrinks it back to 3 by the chart's procedure
(final_problem.local.kafka_scaling; the Pi's combined layout refuses it). Prints per
layout: each phase's seconds and longest write outage, acknowledged writes lost, writes
refused for lack of in-sync replicas, the controlled shutdowns' length, and how soon each
restarted node was back in sync after its probe passed; the controller quorum's change
(3 -> 5 -> 3) with its scale-up and scale-down seconds, longest write outage and longest time
without a quorum leader; then, on the EKS layout's cluster, kafka.brokers 3 -> 5 -> 3 by the
chart's procedure (partitions moved onto the new brokers, then off them again, throttled):
each direction's seconds and longest write outage.

Needs ``make kafka`` (the jars) and Java; runs servers under cgroup limits, as root.

    .venv/bin/python bench/kafka_rollout.py [--layout dedicated|combined]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

# Run as a script, this file's folder comes first on the import path, and its name would
# hide the kafka-python package from `import kafka`.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from final_problem.local.kafka import LocalKafkaCluster, missing_binaries  # noqa: E402
from final_problem.local.kafka_rollout import BrokerScaling, rendered, roll_and_drain, scale_brokers  # noqa: E402
from final_problem.local.kafka_scaling import ControllerScaling, spare_controllers  # noqa: E402

PROFILES = {"dedicated": "eks", "combined": "pi"}


def print_scaling(scaling: BrokerScaling) -> None:
    """kafka.brokers 3 -> 5 -> 3: each direction's seconds and longest write outage, the writes."""
    for line in scaling.lines():
        print(f"kafka eks {line}")
    print(f"kafka eks scaling: up {scaling.up_s:.1f} s, down {scaling.down_s:.1f} s, longest write outage "
          f"{max(scaling.up_outage_s, scaling.down_outage_s):.2f} s, {len(scaling.lost)} acknowledged writes lost")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layout", choices=sorted(PROFILES), action="append",
                        help="one layout only (default: both)")
    args = parser.parse_args()
    if missing := missing_binaries():
        print(f"missing {', '.join(missing)}: run `make kafka`", file=sys.stderr)
        return 1
    for layout in args.layout or ["dedicated", "combined"]:
        with tempfile.TemporaryDirectory(prefix="kafka-rollout-bench-") as tmp:
            workdir = Path(tmp)
            counts = (3, 5, 3) if layout == "dedicated" else (3,)
            with LocalKafkaCluster(workdir=workdir / "cluster", layout=layout, metrics=True,
                                   spare_controllers=spare_controllers(counts)) as cluster:
                scale = ControllerScaling(cluster, workdir / "kafka-config", counts) if len(counts) > 1 else None
                result = roll_and_drain(cluster, rendered(PROFILES[layout]), workdir, then=scale)
                if layout == "dedicated":  # kafka.brokers: ignored by the combined layout
                    result.scaling = scale_brokers(cluster, result, workdir)
            for line in result.lines() + (scale.lines(layout) if scale else []):
                print(f"kafka {PROFILES[layout]} {line}")
            if scale is not None and scale.watch is not None:
                up, down = [p for p in result.phases if p.what.startswith(("scale-up", "scale-down"))]
                print(f"kafka {PROFILES[layout]} controllers 3 -> 5 -> 3: scale-up {up.seconds:.1f} s, scale-down "
                      f"{down.seconds:.1f} s, longest write outage {max(up.outage_s, down.outage_s):.2f} s, longest "
                      f"without a quorum leader {scale.watch.longest_without_leader_s():.2f} s")
            print(f"kafka {PROFILES[layout]} {layout}: longest write outage {result.longest_outage_s:.2f} s, "
                  f"{len(result.lost)} acknowledged writes lost, {result.not_enough_replicas} producer refusals")
            if result.scaling is not None:
                print_scaling(result.scaling)
    return 0


if __name__ == "__main__":
    sys.exit(main())
