"""Every concept demo against the real local servers (`final-problem --local`), output checked."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from final_problem.tour.demos import CONCEPTS
from tests.conftest import require_binary


def test_every_concept_demo_runs_on_the_local_real_servers() -> None:
    for binary, package in (("java", "default-jre-headless"), ("redis-server", "redis-server"), ("redis-sentinel", "redis-sentinel")):
        require_binary(binary, package)
    env = {k: v for k, v in os.environ.items() if k not in ("ZOOKEEPER_HOSTS", "REDIS_SENTINELS", "CADENCE_FRONTEND")}
    result = subprocess.run(
        [sys.executable, "-m", "final_problem.cli", "--local", "--json", "demo", "all"],
        env=env, capture_output=True, text=True, timeout=600,
    )
    reports = {r["concept"]: r for r in json.loads(result.stdout)}
    assert tuple(reports) == CONCEPTS
    failed = {c: [s for s in r["steps"] if not s["ok"]] for c, r in reports.items() if not r["ok"]}
    # A string message: pytest prints it whole (a tuple's repr is cut to a line).
    assert not failed and result.returncode == 0, json.dumps(failed, indent=1) + "\n" + result.stderr[-2000:]
    observed = {c: " | ".join(s["observed"] for s in r["steps"]) for c, r in reports.items()}
    assert "same value" in observed["consistency"]
    assert "refused" in observed["partition-tolerance"] and "accepted by the restored quorum" in observed["partition-tolerance"]
    assert "not acknowledged" in observed["partition-tolerance"]
    assert "acknowledged by all three replicas" in observed["partition-tolerance"]
    assert "NOQUORUM" in observed["partition-tolerance"] and "no promotion on a minority" in observed["partition-tolerance"]
    assert "the majority promoted" in observed["partition-tolerance"]
    assert "elected in" in observed["consensus"] and "leads voters" in observed["consensus"]
    assert "created" in observed["consensus"]  # metadata changes through the Kafka controller quorum
    assert "counter = 20 of 20" in observed["concurrency"]
    assert "300 of 300 records processed" in observed["concurrency"]
    assert "50 of 50 present" in observed["fault-tolerance"] and "promoted a replica" in observed["fault-tolerance"]
    assert "kill -9 the worker" in observed["fault-tolerance"]
    assert "completed the workflow" in observed["fault-tolerance"] and "'reserve' scheduled 1 time(s)" in observed["fault-tolerance"]
    assert "redis_up 1" in observed["observability"] and "zk_" not in observed["observability"]
    assert re.search(r"[1-9]\d* kafka_ series; server_replicamanager_underreplicatedpartitions \d", observed["observability"])
    assert re.search(r"frontend-0: [1-9]\d* metric families, [1-9]\d* database requests", observed["observability"])
    assert re.search(r"history-0: [1-9]\d* metric families", observed["observability"])
    assert observed["security"].count("refused") >= 5
    assert "while the real password reaches brokers" in observed["security"]
    assert "the broker logged 'invalid credentials with SASL mechanism SCRAM-SHA-512'" in observed["security"]
    assert "not in the whitelist" in observed["security"]
