"""The demo path on loopback: client → edge Envoy (the chart's configuration) → the demo
service (the script the chart runs) → Redis (the Redis chart's configuration and ACL users).

The one hop that cannot run here is the mesh: in the cluster the demo reaches Redis at
127.0.0.1:16379, its consul-dataplane sidecar's upstream (mTLS to Redis's sidecar,
allowed by an intention). Without a Consul server (BUSL, not installable here) the demo's
upstream port points straight at the local Redis primary instead.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
import redis

from final_problem.charts.envoy import EnvoyProps, chart_config
from final_problem.clients import demo_service
from final_problem.local import LOOPBACK, free_ports, wait_for
from final_problem.local.envoy import LocalEdge, http_get
from final_problem.local.redis import LocalRedisSet, local_options
from final_problem.profiles import PI
from tests.conftest import require_binary


@pytest.fixture
def redis_set(tmp_path: Path) -> Iterator[LocalRedisSet]:
    for binary, package in (("redis-server", "redis-server"), ("redis-sentinel", "redis-sentinel"), ("redis-cli", "redis-tools")):
        require_binary(binary, package)
    # The chart's configuration but for Sentinel timing: a first boot here waits 1 s for peers
    # that cannot answer yet, not 30 s (local_options).
    with LocalRedisSet(workdir=tmp_path / "redis", options=local_options()) as cluster:
        yield cluster


@pytest.fixture
def demo(redis_set: LocalRedisSet, tmp_path: Path) -> Iterator[tuple[int, subprocess.Popen]]:
    """The demo script with its Redis upstream port pointing at the local primary."""
    (port,) = free_ports(1)
    log = (tmp_path / "demo.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, demo_service.__file__],
        env={**os.environ, "PORT": str(port), "REDIS_UPSTREAM_PORT": str(redis_set.member_ports[0]),
             "REDIS_PASSWORD": redis_set.passwords.app,
             # No edge health checks to wait out at teardown (test_edge_rollout.py tests the drain).
             "DRAIN_SECONDS": "0"},
        stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        wait_for("the demo service", lambda: http_get(f"http://{LOOPBACK}:{port}/healthz", timeout_s=2)[0] == 200,
                 timeout_s=15, retry_on=(OSError,))
        yield port, proc
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


def test_a_request_through_the_edge_reaches_redis(redis_set: LocalRedisSet, demo, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    port, _ = demo
    redis_set.admin(0).set("demo:greeting", "hello from redis")
    options, routes = chart_config(EnvoyProps.for_profile(PI), ("base", "demo"))
    edge = LocalEdge(workdir=tmp_path / "edge", routes=routes, backends={"demo": [(LOOPBACK, port)]}, options=options)
    try:
        edge.start()
        edge.wait_healthy("demo", 1)
        status, headers, body = http_get(f"{edge.url}/")
        assert status == 200 and headers["x-edge-route"] == "demo"
        assert json.loads(body) == {"service": "demo", "redis": {"ping": "PONG", "greeting": "hello from redis"}}
    finally:
        edge.close()


def test_the_demo_reports_redis_down_without_failing_its_health(redis_set: LocalRedisSet, demo) -> None:  # type: ignore[no-untyped-def]
    port, _ = demo
    redis_set.stop()
    status, _, body = http_get(f"http://{LOOPBACK}:{port}/")
    assert status == 502 and "redis" in json.loads(body)["error"]
    # Liveness and the edge's health checks still pass: a Redis outage restarts nothing.
    assert http_get(f"http://{LOOPBACK}:{port}/healthz")[0] == 200


def test_the_app_user_cannot_run_dangerous_commands(redis_set: LocalRedisSet) -> None:
    """The demo logs in as ``app``: the same ACL as every application client."""
    client = redis.Redis(host=LOOPBACK, port=redis_set.member_ports[0], username="app", password=redis_set.passwords.app)
    with pytest.raises(redis.exceptions.NoPermissionError):
        client.flushall()
