"""The Redis restore drill on real servers: the chart's set (three members, three Sentinels)
snapshotted by its rendered ``backup`` sidecar to a real S3-compatible server (versitygw),
every volume deleted, the newest snapshot restored onto one member's empty volume, the set
started again from it.

One drill per module: the set, the target and the snapshot start once; the refusals then
damage the same bucket.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Iterator

import pytest

from final_problem.clients.redis import RedisClient, RedisSettings
from final_problem.local import free_ports
from final_problem.local.redis import LocalRedisSet, local_options
from final_problem.local.s3 import LocalS3, LocalS3Error
from tests.integration.conftest import assert_set_wide_freshness, snapshot_metric
from final_problem.local.snapshot_backup import NOT_THIS_MEMBER, LocalSidecar, scrape, wait_scraped

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
WRITES = 200
AGE = snapshot_metric("redis", "age_seconds")
UPLOADED = snapshot_metric("redis", "uploads_total", result="success")


def backup_cli(s3: LocalS3, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m final_problem.backup ARGS`` against ``s3``."""
    return subprocess.run([sys.executable, "-m", "final_problem.backup", *args], capture_output=True, text=True,
                          timeout=120, cwd=ROOT, env={"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), **s3.env()})


@pytest.fixture(scope="module")
def drill(redis_binaries: None) -> Iterator[dict[str, Any]]:
    """200 writes acknowledged by a replica (``WAIT 1``), a snapshot by a replica's sidecar
    (the primary's refusing), both sidecars' freshness metrics scraped, 20 writes more; then
    every member and Sentinel killed and every volume emptied."""
    with ExitStack() as stack:
        try:
            s3 = stack.enter_context(LocalS3())
        except LocalS3Error as e:
            pytest.fail(str(e))
        work = Path(tempfile.mkdtemp(prefix="final-problem-redis-backups-"))
        stack.callback(shutil.rmtree, work, True)
        cluster = stack.enter_context(LocalRedisSet(workdir=work / "set", options=local_options()))
        sidecar = LocalSidecar("redis", s3=s3, workdir=work)
        stack.callback(sidecar.close)
        client = RedisClient(settings=RedisSettings.from_env(cluster.client_env(), secret=lambda key: ""))
        stack.callback(client.close)
        acknowledged = {}
        for i in range(WRITES):
            key, value = f"before:{i}", f"value-{i}"
            client.set_durable(key, value, replicas=1, timeout_ms=2000)
            acknowledged[key] = value
        primary = cluster.member_index(client.primary_address()[1])
        replica = next(i for i in range(len(cluster.members)) if i != primary)

        def snapshot(index: int) -> subprocess.CompletedProcess[str]:
            proc = cluster.members[index]
            return sidecar.once(pod=f"redis-{index}", paths={"/data": Path(proc.env["REDIS_DATA_DIR"])},
                                port=proc.port, secrets={"REDIS_ADMIN_PASSWORD": cluster.passwords.admin})

        on_primary = snapshot(primary)
        # The replica's sidecar as its pod runs it (its loop, its turn now: no stagger), then
        # the primary's: it takes none, and reports the set's freshness from the listing.
        metrics_ports = free_ports(2)

        def start(index: int, metrics_port: int) -> subprocess.Popen[bytes]:
            proc = cluster.members[index]
            return sidecar.start(pod=f"redis-{index}", paths={"/data": Path(proc.env["REDIS_DATA_DIR"])},
                                 port=proc.port, secrets={"REDIS_ADMIN_PASSWORD": cluster.passwords.admin},
                                 metrics_port=metrics_port, extra=("--stagger-s", "0", "--check-s", "0.2"))

        taker = start(replica, metrics_ports[0])
        scraped = {"taker": wait_scraped(metrics_ports[0], UPLOADED, proc=taker, minimum=1)}
        decliner = start(primary, metrics_ports[1])
        try:
            scraped["decliner"] = wait_scraped(metrics_ports[1], AGE, proc=decliner, timeout_s=20)
        except AssertionError:
            scraped["decliner"] = scrape(metrics_ports[1])  # the test below says what is missing
        sidecar.stop()
        for i in range(20):
            client.set_durable(f"after:{i}", "late", replicas=1, timeout_ms=2000)
        cluster.stop()
        for proc in cluster.members + cluster.sentinels:
            data = proc.config_dir.parent / "data"
            shutil.rmtree(data)
            data.mkdir()
        yield {"s3": s3, "cluster": cluster, "acknowledged": acknowledged, "on_primary": on_primary,
               "replica": replica, "work": work, "scraped": scraped}


def test_only_a_replica_takes_the_snapshot(drill: dict[str, Any]) -> None:
    assert drill["on_primary"].returncode == NOT_THIS_MEMBER, drill["on_primary"].stderr
    (listing_key,) = [k for k in drill["s3"].client().list("redis/snapshots/") if k.endswith("/snapshot.json")]
    listing = json.loads(drill["s3"].client().get(listing_key)[1])
    assert listing["member"] == f"redis-{drill['replica']}"


def test_every_sidecar_reports_the_sets_newest_snapshot_whoever_took_it(drill: dict[str, Any]) -> None:
    assert_set_wide_freshness(drill["s3"].client(), "redis", drill["scraped"])


def test_restores_every_write_acknowledged_before_the_snapshot_onto_empty_volumes(drill: dict[str, Any]) -> None:
    s3, cluster = drill["s3"], drill["cluster"]
    listed = backup_cli(s3, "list", "redis")
    assert listed.returncode == 0 and listed.stdout.splitlines()[-1].startswith("redis: newest snapshot "), listed
    data_dir = Path(cluster.members[0].env["REDIS_DATA_DIR"])
    done = backup_cli(s3, "restore", "redis", "--data-dir", str(data_dir))
    assert done.returncode == 0, done.stderr
    assert "every write acknowledged before" in done.stdout
    # Every pod starts at once, as after a new cluster's deploy: the restored member as the
    # primary, the others synchronising from it.
    cluster.spawn_all()
    primary = cluster.member_index(cluster.wait_settled(timeout_s=60))
    for index in range(len(cluster.members)):
        if index != primary:
            cluster.wait_rejoined(index, timeout_s=30)
    keys = list(drill["acknowledged"])
    for index in range(len(cluster.members)):
        values = cluster.admin(index).mget(keys)
        missing = [k for k, v in zip(keys, values, strict=True) if v != drill["acknowledged"][k]]
        assert not missing, f"redis-{index}: {len(missing)} acknowledged writes missing, e.g. {missing[:3]}"
    # Written after the snapshot: not in it (the recovery point is the snapshot's).
    assert cluster.admin(primary).exists("after:0") == 0
    cluster.stop()


# In this order: each damage is kept.
@pytest.mark.parametrize("damage, refusal", [
    ("rdb", "fails redis-check-rdb"),
    ("corrupt", "is corrupt"),
    ("missing", "no redis snapshot"),
])
def test_refuses_a_corrupt_or_missing_snapshot_in_one_line(drill: dict[str, Any], tmp_path: Path, damage: str,
                                                           refusal: str) -> None:
    client = drill["s3"].client()
    (listing_key,) = [k for k in client.list("redis/snapshots/") if k.endswith("/snapshot.json")]
    listing = json.loads(client.get(listing_key)[1])
    dump_key = listing["files"][0]["key"]
    original = client.get(dump_key)[1]
    if damage == "rdb":
        # Damaged before the upload: the listing's SHA-256 matches, the RDB's own CRC-64 does not.
        import hashlib

        flipped = original[:30] + bytes([original[30] ^ 0xFF]) + original[31:]
        client.put(dump_key, body=flipped)
        listing["files"][0]["sha256"] = hashlib.sha256(flipped).hexdigest()
        client.put(listing_key, body=json.dumps(listing).encode())
    elif damage == "corrupt":
        client.put(dump_key, body=original[:-1] + bytes([original[-1] ^ 0xFF]))
    else:
        client.delete(listing_key)
    refused = backup_cli(drill["s3"], "restore", "redis", "--data-dir", str(tmp_path / "data"))
    assert refused.returncode == 2
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and refusal in lines[0], refused.stderr
    assert not (tmp_path / "data").exists() or not list((tmp_path / "data").iterdir())
