"""The restore drill on real servers: PostgreSQL archiving to a real S3-compatible server
(versitygw), its volume destroyed, restored to a time between two writes.

One drill per module: the server, the target and the agent start once; the refusals then read
the same bucket.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Iterator

import pytest

from final_problem.local import wait_for
from final_problem.local.s3 import LocalS3
from tests.integration.conftest import archiving_postgres, chown_tree

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def restore(s3: LocalS3, target: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    """``python -m final_problem.backup restore postgres`` against ``s3``."""
    return subprocess.run(
        [sys.executable, "-m", "final_problem.backup", "restore", "postgres", "--to", target, "--data-dir",
         str(data_dir)],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
        env={"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), **s3.env()},
    )


@pytest.fixture(scope="module")
def drill() -> Iterator[dict[str, Any]]:
    """Rows 1-3, a base backup, rows 4-5, the target time, rows 6-7, the last segment archived;
    then the server killed and its whole volume (data directory and spool) deleted."""
    with ExitStack() as stack:
        s3, work, volume, backups, server = archiving_postgres(stack, "final-problem-backups-")

        def insert(*rows: int) -> None:
            for row in rows:  # one commit each
                server.psql(f"INSERT INTO drill (seq) VALUES ({row})")

        server.psql("CREATE TABLE drill (seq int PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp())")
        insert(1, 2, 3)
        taken = backups.base_backup(server)
        assert taken.returncode == 0, f"{taken.stderr}\n{backups.log_tail()}"
        client = s3.client()
        wait_for("the base backup's listing", lambda: any(k.endswith("/backup.json") for k in client.list("postgres/")),
                 timeout_s=30, interval_s=0.05)
        insert(4, 5)
        time.sleep(0.3)
        target = server.query("SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', "
                              "'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")[0][0]
        time.sleep(0.3)
        insert(6, 7)
        segment = server.query("SELECT pg_walfile_name(pg_switch_wal())")[0][0]
        # The server counts a segment archived once archive_command returned 0; the volume goes
        # the moment it does.
        wait_for(f"segment {segment} archived", lambda: (server.query(
            "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver")[0][0] >= segment), timeout_s=30,
            interval_s=0.02)
        server.kill()
        backups.stop_agent()
        shutil.rmtree(volume)
        volume.mkdir()
        yield {"s3": s3, "server": server, "backups": backups, "target": target, "volume": volume}


def test_the_rendered_restore_init_container_fills_an_empty_volume_and_leaves_one_with_data_alone(
        drill: dict[str, Any]) -> None:
    """``postgres.restore_to=latest`` on a new cluster: the init container's command, as
    rendered, fills the empty volume; the server recovers to the end of the archive, every row
    is there, and it archives its new timeline into the same bucket beside the old one; run
    again on the volume now holding data, it changes nothing."""
    server, backups, s3, volume = drill["server"], drill["backups"], drill["s3"], drill["volume"]
    assert not any(volume.iterdir())
    if server.run_as:  # the pod's fsGroup makes the new volume the server's
        chown_tree(volume, server.run_as)
    first = backups.restore_init(server, "latest")
    assert first.returncode == 0, first.stderr
    assert "restored base backup" in first.stdout and "the end of the archive" in first.stdout, first.stdout
    backups.start_agent(server)
    server.start()
    wait_for("the restored server to promote", lambda: server.query("SELECT pg_is_in_recovery()")[0][0] == "f",
             timeout_s=60, interval_s=0.1)
    assert server.query("SELECT seq FROM drill ORDER BY seq") == [[str(n)] for n in range(1, 8)]
    # A new timeline: its history file and segments go up beside the old timeline's, none replaced.
    timeline = int(server.query("SELECT timeline_id FROM pg_control_checkpoint()")[0][0])
    server.psql("INSERT INTO drill (seq) VALUES (8)")
    segment = server.query("SELECT pg_walfile_name(pg_switch_wal())")[0][0]
    assert int(segment[:8], 16) > 1 and timeline >= 1
    client = s3.client()
    wait_for(f"segment {segment} of the new timeline archived", lambda: f"postgres/wal/{segment}.gz" in client.list(
        "postgres/wal/"), timeout_s=30, interval_s=0.05)
    assert f"postgres/wal/{int(segment[:8], 16):08X}.history.gz" in client.list("postgres/wal/")
    assert server.query("SELECT failed_count FROM pg_stat_archiver") == [["0"]], backups.log_tail()
    # A clean stop, the agent still up: the archiver ends its work before the server exits.
    server.stop()
    backups.stop_agent()
    held = {p: p.stat().st_mtime_ns for p in backups.pgdata.rglob("*")}
    again = backups.restore_init(server, "latest")
    assert again.returncode == 0, again.stderr
    assert "already holds data: left alone" in again.stdout, again.stdout
    assert {p: p.stat().st_mtime_ns for p in backups.pgdata.rglob("*")} == held
    # The server has recovered: the WAL the restore fetched is gone from the volume.
    assert not (volume / "restore-wal").exists() and "removed" in again.stdout
    # The next drill starts from an empty volume again.
    shutil.rmtree(volume)
    volume.mkdir()


def test_restores_every_row_committed_before_the_target_and_none_after(drill: dict[str, Any]) -> None:
    server, backups, s3 = drill["server"], drill["backups"], drill["s3"]
    listed = subprocess.run([sys.executable, "-m", "final_problem.cli", "backup", "list", "postgres"],
                            capture_output=True, text=True, timeout=60, cwd=ROOT,
                            env={"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), **s3.env()})
    assert listed.returncode == 0, listed
    backup_line, age_line = listed.stdout.splitlines()
    assert re.fullmatch(r"postgres: newest base backup \S+, 0\.[0-9] h old", age_line), age_line
    assert backup_line.startswith(age_line.split()[4].rstrip(",") + "  ended "), listed.stdout
    done = restore(s3, drill["target"], backups.pgdata)
    assert done.returncode == 0, done.stderr
    if server.run_as:
        chown_tree(drill["volume"], server.run_as)
    server.start()
    wait_for("the restored server to promote", lambda: server.query("SELECT pg_is_in_recovery()")[0][0] == "f",
             timeout_s=60, interval_s=0.2)
    assert server.query("SELECT seq FROM drill ORDER BY seq") == [["1"], ["2"], ["3"], ["4"], ["5"]]
    server.kill()


# In this order: each damage is kept, and the restore checks the base backup before the WAL.
@pytest.mark.parametrize("damage, refusal", [
    ("wal", "is missing from the archive"),
    ("corrupt", "is corrupt"),
    ("missing", "no base backup"),
])
def test_refuses_a_corrupt_or_missing_backup_or_wal_in_one_line(drill: dict[str, Any], tmp_path: Path, damage: str,
                                                         refusal: str) -> None:
    client = drill["s3"].client()
    keys = client.list("postgres/base/")
    archive = next(k for k in keys if k.endswith("/base.tar.gz"))
    listing = archive.replace("base.tar.gz", "backup.json")
    if damage == "wal":
        first = json.loads(client.get(listing)[1])["start_wal"]
        client.delete(f"postgres/wal/{first}.gz")
    elif damage == "corrupt":
        original = client.get(archive)[1]
        client.put(archive, body=original[:1000] + bytes([original[1000] ^ 0xFF]) + original[1001:])
    else:
        client.delete(listing)
    refused = restore(drill["s3"], drill["target"], tmp_path / "pgdata")
    assert refused.returncode == 2
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and refusal in lines[0], refused.stderr
    assert not (tmp_path / "pgdata" / "PG_VERSION").exists()


def test_a_file_over_the_multipart_threshold_goes_up_in_parts_and_reads_back_whole(drill: dict[str, Any],
                                                                                   tmp_path: Path) -> None:
    """A backup larger than one PUT may carry (5 GiB on S3) goes up in parts. Here the
    threshold and part size are S3's smallest part, 5 MiB, so a 12 MiB file takes 3 parts;
    the object read back is the file, its metadata kept, and no upload is left open."""
    client = drill["s3"].client()
    client.multipart_threshold = client.part_size = client.MIN_PART
    source, back = tmp_path / "big", tmp_path / "back"
    source.write_bytes(os.urandom(12 << 20) + b"tail")
    sha = hashlib.sha256(source.read_bytes()).hexdigest()
    client.put("multipart/big", body_file=str(source), meta={"sha256": sha})
    headers = client.download("multipart/big", str(back))
    assert headers is not None and headers["x-amz-meta-sha256"] == sha
    assert hashlib.sha256(back.read_bytes()).hexdigest() == sha
    # Three parts: S3 gives a multipart object the ETag "<md5 of the parts' md5s>-<parts>".
    assert headers["etag"].strip('"').endswith("-3"), headers["etag"]
    status, _, data = client.request("GET", query={"uploads": ""})
    assert status == 200 and b"<UploadId>" not in data, data[:500]
    client.delete("multipart/big")
