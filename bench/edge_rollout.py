"""Rollouts of the edge and of the demo: how long they take and what clients see.

Renders the Pi profile on nodes that run Envoy (the chart's Deployments: maxSurge,
readiness probes, preStop, grace periods), then rolls, with 8 clients sending throughout
(final_problem.local.rollout): the edge Envoys behind the ServiceLB stand-in, as rendered
and without the preStop wait; the demo pods (the demo script, against a local
redis-server) behind the edge. Prints, per rollout, its time, the failed requests and the
longest time no request succeeded. The edge's health checks run every 1.5 s instead of 5 s
in the demo rollout and the demo drains 6 s instead of 15 s (as the tests do), so the demo
rollout here is shorter than in a cluster.

    .venv/bin/python bench/edge_rollout.py
"""

from __future__ import annotations

import dataclasses
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from final_problem import config, manifests
from final_problem.charts.demo import DemoProps
from final_problem.charts.envoy import EnvoyProps, chart_config
from final_problem.local import LOOPBACK, free_ports, wait_for
from final_problem.local.limits import Groups, Limits
from final_problem.local.rollout import DemoPods, demo_rollout, edge_drain, edge_rollout, report
from final_problem.profiles import PI

#: Nodes that run Envoy (a 48-bit kernel) with room for every component (tests/conftest.py PI_FULL).
SETTINGS = {"components": ["base", "consul", "redis", "demo", "envoy"], "pi_arm64_va_bits": 48, "pi_memory_gib": 8}


def deployment(charts: dict, component: str) -> dict:
    return next(o for o in manifests.chart_objects(charts[component]) if o["kind"] == "Deployment")


def pdb(charts: dict, component: str) -> dict:
    return next(o for o in manifests.chart_objects(charts[component]) if o["kind"] == "PodDisruptionBudget")


def main() -> int:
    charts = manifests.render(config.from_mapping(SETTINGS), "pi")
    options, routes = chart_config(EnvoyProps.for_profile(PI), ("base", "demo"))
    print("rollouts with 8 clients sending throughout, on 2 shared cores")
    with tempfile.TemporaryDirectory(prefix="edge-rollout-") as tmp:
        edge = deployment(charts, "envoy")
        edge_with_hook = deployment(charts, "envoy")
        clients, result = edge_rollout(Path(tmp) / "edge", edge, options=options, routes=routes)
        print("  " + report("edge (as rendered)", clients, result.seconds))
        del next(c for c in edge["spec"]["template"]["spec"]["containers"] if c["name"] == "envoy")["lifecycle"]
        clients, result = edge_rollout(Path(tmp) / "edge-bare", edge, options=options, routes=routes)
        print("  " + report("edge without preStop", clients, result.seconds))
        (port,) = free_ports(1)
        redis = subprocess.Popen(
            ["redis-server", "--bind", LOOPBACK, "--port", str(port), "--save", "", "--appendonly", "no",
             "--dir", tmp, "--user", "default", "off", "--user", "app", "on", ">bench", "~*", "+@all"],
            stdout=subprocess.DEVNULL)
        groups = Groups()
        pods = DemoPods(workdir=Path(tmp), deployment=deployment(charts, "demo"),
                        limits=Limits.of(DemoProps.for_profile(PI).sizing), groups=groups,
                        redis_port=port, redis_password="bench", drain_s=6)
        try:
            wait_for("redis", lambda: socket.create_connection((LOOPBACK, port), timeout=1).close() or True,
                     timeout_s=15, retry_on=(OSError,))
            clients, result, _ = demo_rollout(Path(tmp), pods, options=dataclasses.replace(options, health_interval_ms=1500),
                                              routes=routes)
            print("  " + report("demo (as rendered)", clients, result.seconds))
            drained = DemoPods(workdir=Path(tmp) / "drain", deployment=deployment(charts, "demo"),
                               limits=Limits.of(DemoProps.for_profile(PI).sizing), groups=groups,
                               redis_port=port, redis_password="bench", drain_s=6)
            (Path(tmp) / "drain").mkdir()
            clients, results = edge_drain(Path(tmp) / "drain", edge_with_hook, pdb(charts, "envoy"), drained,
                                          pdb(charts, "demo"), options=dataclasses.replace(options, health_interval_ms=1500),
                                          routes=routes)
            print("  " + report("edge and demo, 2 nodes drained", clients, sum(r.seconds for r in results), took="drain"))
        finally:
            pods.close()
            groups.remove_all()
            redis.terminate()
            redis.wait(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
