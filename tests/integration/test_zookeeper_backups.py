"""The ZooKeeper restore drill on real servers: the chart's ensemble (three members started by
its start script) snapshotted by its rendered ``backup`` sidecar to a real S3-compatible
server (versitygw), every volume deleted, the snapshot restored onto every member's empty
volumes, the ensemble started again.

One drill per module: the ensemble, the target and the snapshot start once; the refusals
then damage the same bucket.
"""

from __future__ import annotations

import hashlib
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

from final_problem.clients.zookeeper import ZooKeeperClient
from final_problem.local import free_ports
from final_problem.local.s3 import LocalS3, LocalS3Error
from tests.integration.conftest import assert_set_wide_freshness, snapshot_metric
from final_problem.local.snapshot_backup import NOT_THIS_MEMBER, LocalSidecar, scrape, wait_scraped
from final_problem.local.zookeeper import LocalEnsemble
from final_problem.local.zookeeper import missing_binaries as zookeeper_missing

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
WRITES = 200
AGE = snapshot_metric("zookeeper", "age_seconds")
UPLOADED = snapshot_metric("zookeeper", "uploads_total", result="success")


def backup_cli(s3: LocalS3, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m final_problem.backup ARGS`` against ``s3``."""
    return subprocess.run([sys.executable, "-m", "final_problem.backup", *args], capture_output=True, text=True,
                          timeout=120, cwd=ROOT, env={"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), **s3.env()})


def volumes(ensemble: LocalEnsemble, myid: int) -> tuple[Path, Path]:
    directory = ensemble.procs[myid].directory
    return directory / "data", directory / "datalog"


@pytest.fixture(scope="module")
def drill() -> Iterator[dict[str, Any]]:
    """200 znodes written (each acknowledged by a quorum), a snapshot by each member's sidecar
    (the leader's taken, the followers' declining), the leader's and a follower's freshness
    metrics scraped, 20 znodes more; then every member killed and both volumes of each emptied."""
    if missing := zookeeper_missing():
        pytest.fail(f"missing {', '.join(missing)}")
    with ExitStack() as stack:
        try:
            s3 = stack.enter_context(LocalS3())
        except LocalS3Error as e:
            pytest.fail(str(e))
        work = Path(tempfile.mkdtemp(prefix="final-problem-zookeeper-backups-"))
        stack.callback(shutil.rmtree, work, True)
        ensemble = stack.enter_context(LocalEnsemble(workdir=work / "ensemble", dynamic=True))
        sidecar = LocalSidecar("zookeeper", s3=s3, workdir=work)
        stack.callback(sidecar.close)
        ensemble.start_all()
        leader = ensemble.wait_for_quorum(timeout=60)
        client = ZooKeeperClient(hosts=ensemble.hosts, timeout=10).start()
        stack.callback(client.close)
        acknowledged = {}
        for i in range(WRITES):
            path, value = f"/drill/before-{i:04d}", f"value-{i}".encode()
            client.put(path, value)
            acknowledged[path] = value
        def paths(myid: int) -> dict[str, Path]:
            data, datalog = volumes(ensemble, myid)
            spool = work / f"spool-{myid}"
            spool.mkdir(exist_ok=True)
            return {"/data": data, "/datalog": datalog, "/backup-spool": spool}

        outcomes = {myid: sidecar.once(pod=f"zookeeper-{myid - 1}", port=proc.member.client_port, paths=paths(myid))
                    for myid, proc in ensemble.procs.items() if myid != leader}
        # The leader's sidecar as its pod runs it (its loop), then a follower's: it takes
        # none, and reports the ensemble's freshness from the listing.
        metrics_ports = free_ports(2)

        def start(myid: int, metrics_port: int) -> subprocess.Popen[bytes]:
            return sidecar.start(pod=f"zookeeper-{myid - 1}", port=ensemble.procs[myid].member.client_port,
                                 paths=paths(myid), metrics_port=metrics_port, extra=("--check-s", "0.2"))

        taker = start(leader, metrics_ports[0])
        scraped = {"taker": wait_scraped(metrics_ports[0], UPLOADED, proc=taker, minimum=1)}
        decliner = start(next(iter(outcomes)), metrics_ports[1])
        try:
            scraped["decliner"] = wait_scraped(metrics_ports[1], AGE, proc=decliner, timeout_s=20)
        except AssertionError:
            scraped["decliner"] = scrape(metrics_ports[1])  # the test below says what is missing
        sidecar.stop()
        for i in range(20):
            client.put(f"/drill/after-{i:04d}", b"late")
        client.close()
        ensemble.close()
        for myid in ensemble.procs:
            for path in volumes(ensemble, myid):
                shutil.rmtree(path)
        yield {"s3": s3, "ensemble": ensemble, "acknowledged": acknowledged, "outcomes": outcomes, "leader": leader,
               "scraped": scraped}


def test_only_the_leader_takes_the_snapshot(drill: dict[str, Any]) -> None:
    for myid, outcome in drill["outcomes"].items():
        if myid != drill["leader"]:
            assert outcome.returncode == NOT_THIS_MEMBER, outcome.stderr
    client = drill["s3"].client()
    (listing_key,) = [k for k in client.list("zookeeper/snapshots/") if k.endswith("/snapshot.json")]
    listing = json.loads(client.get(listing_key)[1])
    names = [f["name"] for f in listing["files"]]
    assert names[0].startswith("snap/snapshot.") and all(n.startswith("log/log.") for n in names[1:]), names


def test_every_sidecar_reports_the_ensembles_newest_snapshot_whoever_took_it(drill: dict[str, Any]) -> None:
    assert_set_wide_freshness(drill["s3"].client(), "zookeeper", drill["scraped"])


def test_restores_every_acknowledged_write_onto_every_members_empty_volumes(drill: dict[str, Any]) -> None:
    s3, ensemble = drill["s3"], drill["ensemble"]
    listed = backup_cli(s3, "list", "zookeeper")
    assert listed.returncode == 0 and listed.stdout.splitlines()[-1].startswith("zookeeper: newest snapshot "), listed
    for myid in ensemble.procs:
        data, datalog = volumes(ensemble, myid)
        done = backup_cli(s3, "restore", "zookeeper", "--data-dir", str(data), "--log-dir", str(datalog))
        assert done.returncode == 0, done.stderr
    ensemble.start_all()
    ensemble.wait_for_quorum(timeout=60)
    with ZooKeeperClient(hosts=ensemble.hosts, timeout=10) as client:
        missing = [p for p, v in drill["acknowledged"].items() if client.get(p, linearizable=True) != v]
        assert not missing, f"{len(missing)} acknowledged znodes missing or different, e.g. {missing[:3]}"
        # Written after the snapshot: not in it.
        assert client.kazoo.exists("/drill/after-0019") is None
    ensemble.close()


# In this order: each damage is kept.
@pytest.mark.parametrize("damage, refusal", [
    ("log", "fails a record's Adler-32"),
    ("corrupt", "is corrupt"),
    ("missing", "no zookeeper snapshot"),
])
def test_refuses_a_corrupt_or_missing_snapshot_in_one_line(drill: dict[str, Any], tmp_path: Path, damage: str,
                                                           refusal: str) -> None:
    client = drill["s3"].client()
    (listing_key,) = [k for k in client.list("zookeeper/snapshots/") if k.endswith("/snapshot.json")]
    listing = json.loads(client.get(listing_key)[1])
    log = next(f for f in listing["files"] if f["name"].startswith("log/"))
    original = client.get(log["key"])[1]
    if damage == "log":
        # Damaged before the upload: the listing's SHA-256 matches, a record's checksum does not.
        flipped = original[:-5] + bytes([original[-5] ^ 0xFF]) + original[-4:]
        client.put(log["key"], body=flipped)
        log["sha256"] = hashlib.sha256(flipped).hexdigest()
        client.put(listing_key, body=json.dumps(listing).encode())
    elif damage == "corrupt":
        client.put(log["key"], body=original[:-1])
    else:
        client.delete(listing_key)
    data, datalog = tmp_path / "data", tmp_path / "datalog"
    refused = backup_cli(drill["s3"], "restore", "zookeeper", "--data-dir", str(data), "--log-dir", str(datalog))
    assert refused.returncode == 2
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and refusal in lines[0], refused.stderr
    assert not data.exists() and not datalog.exists()
