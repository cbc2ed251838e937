"""Backup benchmark: PostgreSQL's base backup, WAL archiving and restore to a time, on loopback.

Starts the Pi profile's rendered PostgreSQL with backups to a local versitygw
(final_problem.local.backup, final_problem.local.s3), loads ``--rows`` rows, and prints:

- base backup: ``pg_basebackup`` and ``pg_verifybackup`` (the rendered base-backup script),
  then the agent's upload, until its listing is in the bucket; the archive's size;
- archiving: from a segment switch until the server counts the segment archived (the archive
  command waits for the upload), median of ``--switches``;
- restore: ``python -m final_problem.backup restore postgres --to T`` onto an empty data
  directory after the volume is deleted, then the server's recovery until it opens; the
  recovery point: the last row restored and how far before the target it was committed.

    .venv/bin/python bench/backups.py [--rows 200000] [--switches 5]     (or: make bench)
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from final_problem.local import wait_for  # noqa: E402
from final_problem.local.backup import LocalPostgresBackups  # noqa: E402
from final_problem.local.postgres import LocalPostgres  # noqa: E402
from final_problem.local.s3 import LocalS3  # noqa: E402


def chown_tree(path: Path, user: str) -> None:
    subprocess.run(["chown", "-R", f"{user}:", str(path)], check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--switches", type=int, default=5)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="final-problem-bench-backups-"))
    os.chmod(work, 0o755)
    volume = work / "volume"
    volume.mkdir()
    with LocalS3() as s3:
        backups = LocalPostgresBackups(s3=s3, volume=volume, workdir=work)
        server = LocalPostgres(data_dir=backups.pgdata, overrides=backups.server_overrides())
        try:
            if server.run_as:
                chown_tree(volume, server.run_as)
            server.init()
            server.start()
            backups.start_agent(server)
            server.psql("CREATE TABLE bench (id int PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp(), "
                        f"pad text); INSERT INTO bench (id, pad) SELECT g, md5(g::text) FROM generate_series(1, {args.rows}) g")
            size = server.query("SELECT pg_size_pretty(pg_database_size('postgres'))")[0][0]

            started = time.monotonic()
            taken = backups.base_backup(server)
            if taken.returncode != 0:
                raise SystemExit(f"base backup failed: {taken.stderr.strip()}")
            client = s3.client()
            wait_for("the base backup's listing", lambda: any(k.endswith("backup.json") for k in client.list("postgres/base/")),
                     timeout_s=300, interval_s=0.1)
            base_s = time.monotonic() - started
            archive = next(v for k, v in client.list("postgres/base/").items() if k.endswith("base.tar.gz"))
            print(f"postgres base backup ({size} database, {args.rows:,} rows): {base_s:.2f} s to a listed, verified "
                  f"backup; archive {archive / 1e6:.1f} MB")

            times = []
            for i in range(args.switches):
                server.psql(f"INSERT INTO bench (id, pad) VALUES ({args.rows + 1 + i}, 'switch')")
                started = time.monotonic()
                segment = server.query("SELECT pg_walfile_name(pg_switch_wal())")[0][0]
                wait_for(f"segment {segment}", lambda segment=segment: server.query(
                    "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver")[0][0] >= segment, timeout_s=120,
                    interval_s=0.01)
                times.append(time.monotonic() - started)
            print(f"postgres WAL archiving: a switched segment is in the bucket {statistics.median(times) * 1000:.0f} ms "
                  f"(median of {args.switches}) after the switch")

            last = args.rows + args.switches
            target = server.query("SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', "
                                  "'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")[0][0]
            server.psql(f"INSERT INTO bench (id, pad) VALUES ({last + 1}, 'after')")
            segment = server.query("SELECT pg_walfile_name(pg_switch_wal())")[0][0]
            wait_for(f"segment {segment}", lambda: server.query(
                "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver")[0][0] >= segment, timeout_s=120)
            server.kill()
            backups.stop_agent()
            shutil.rmtree(volume)
            volume.mkdir()

            started = time.monotonic()
            done = subprocess.run(
                [sys.executable, "-m", "final_problem.backup", "restore", "postgres", "--to", target, "--data-dir",
                 str(backups.pgdata)], capture_output=True, text=True, cwd=ROOT,
                env={"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), **s3.env()})
            if done.returncode != 0:
                raise SystemExit(f"restore failed: {done.stderr.strip()}")
            restore_s = time.monotonic() - started
            if server.run_as:
                chown_tree(volume, server.run_as)
            started = time.monotonic()
            server.start()
            wait_for("promotion", lambda: server.query("SELECT pg_is_in_recovery()")[0][0] == "f", timeout_s=300,
                     interval_s=0.05)
            recover_s = time.monotonic() - started
            row, gap = server.query("SELECT max(id), extract(epoch FROM timestamptz '" + target + "' - max(at)) "
                                    "FROM bench WHERE id <= " + str(last))[0]
            after = server.query(f"SELECT count(*) FROM bench WHERE id > {last}")[0][0]
            print(f"postgres restore to a time: {restore_s:.2f} s to fetch and check the backup and WAL, "
                  f"{recover_s:.2f} s of recovery until it opens; recovery point: row {row} of {last} (committed "
                  f"{float(gap) * 1000:.0f} ms before the target), {after} rows after it")
        finally:
            backups.close()
            server.close()
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
