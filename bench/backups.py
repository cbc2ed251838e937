"""Backup benchmark: PostgreSQL's base backup, WAL archiving and restore to a time; Redis's and
ZooKeeper's snapshots and restores, on loopback.

Starts the Pi profile's rendered PostgreSQL with backups to a local versitygw
(final_problem.local.backup, final_problem.local.s3), loads ``--rows`` rows, and prints:

- base backup: ``pg_basebackup`` and ``pg_verifybackup`` (the rendered base-backup script),
  then the agent's upload, until its listing is in the bucket; the archive's size;
- archiving: from a segment switch until the server counts the segment archived (the archive
  command waits for the upload), median of ``--switches``;
- restore: ``python -m final_problem.backup restore postgres --to T`` onto an empty data
  directory after the volume is deleted, then the server's recovery until it opens; the
  recovery point: the last row restored and how far before the target it was committed.

Redis (final_problem.local.redis, the chart's set; final_problem.local.snapshot_backup, its
rendered sidecar): ``--keys`` keys, a snapshot by a replica's sidecar until listed, then every
volume emptied, ``restore redis`` and the set started until every member follows the restored
primary. ZooKeeper (final_problem.local.zookeeper): ``--znodes`` znodes, the leader's sidecar,
every volume emptied, ``restore zookeeper`` for each member and the ensemble started until it
has a leader. The recovery point: the writes before the snapshot found, those after it not.

    .venv/bin/python bench/backups.py [--rows 200000] [--switches 5] [--keys 100000] [--znodes 2000]
                                      [--only postgres,redis,zookeeper]     (or: make bench)
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
# This folder holds bench/redis.py, which would shadow the redis package the clients import.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from final_problem.local import wait_for  # noqa: E402
from final_problem.local.backup import LocalPostgresBackups  # noqa: E402
from final_problem.local.postgres import LocalPostgres  # noqa: E402
from final_problem.local.s3 import LocalS3  # noqa: E402


def chown_tree(path: Path, user: str) -> None:
    subprocess.run(["chown", "-R", f"{user}:", str(path)], check=True)


def backup_cli(s3: LocalS3, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "final_problem.backup", *args], capture_output=True, text=True,
                          cwd=ROOT, env={"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), **s3.env()})
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args[:2])} failed: {done.stderr.strip()}")
    return done


def bench_redis(keys: int) -> None:
    from final_problem.clients.redis import RedisClient, RedisSettings
    from final_problem.local.redis import LocalRedisSet, local_options
    from final_problem.local.snapshot_backup import LocalSidecar

    work = Path(tempfile.mkdtemp(prefix="final-problem-bench-redis-backups-"))
    try:
        with LocalS3() as s3, LocalRedisSet(workdir=work / "set", options=local_options()) as cluster:
            sidecar = LocalSidecar("redis", s3=s3, workdir=work)
            client = RedisClient(settings=RedisSettings.from_env(cluster.client_env(), secret=lambda key: ""))
            try:
                primary = cluster.member_index(client.primary_address()[1])
                admin = cluster.admin(primary)
                for start in range(0, keys, 10_000):
                    pipe = admin.pipeline(transaction=False)
                    for i in range(start, min(keys, start + 10_000)):
                        pipe.set(f"key:{i}", f"value-{i:032d}")
                    pipe.execute()
                client.set_durable("last-before", "1", replicas=1, timeout_ms=5000)
                replica = next(i for i in range(len(cluster.members)) if i != primary)
                proc = cluster.members[replica]
                started = time.monotonic()
                taken = sidecar.once(pod=f"redis-{replica}", paths={"/data": Path(proc.env["REDIS_DATA_DIR"])},
                                     port=proc.port, secrets={"REDIS_ADMIN_PASSWORD": cluster.passwords.admin})
                if taken.returncode != 0:
                    raise SystemExit(f"redis snapshot failed: {taken.stderr.strip()}")
                backup_s = time.monotonic() - started
                client.set_durable("first-after", "1", replicas=1, timeout_ms=5000)
                size = sum(v for k, v in s3.client().list("redis/snapshots/").items() if k.endswith("dump.rdb"))
            finally:
                client.close()
                sidecar.close()
            cluster.stop()
            for proc in cluster.members + cluster.sentinels:
                shutil.rmtree(proc.config_dir.parent / "data")
                (proc.config_dir.parent / "data").mkdir()
            started = time.monotonic()
            backup_cli(s3, "restore", "redis", "--data-dir", cluster.members[0].env["REDIS_DATA_DIR"])
            restore_s = time.monotonic() - started
            started = time.monotonic()
            cluster.spawn_all()
            primary = cluster.member_index(cluster.wait_settled(timeout_s=300))
            settled_s = time.monotonic() - started
            admin = cluster.admin(primary)
            found, before, after = admin.dbsize(), admin.exists("last-before"), admin.exists("first-after")
            print(f"redis snapshot ({keys:,} keys): {backup_s:.2f} s from a replica's BGSAVE to a listed snapshot; "
                  f"dump {size / 1e6:.1f} MB")
            print(f"redis restore: {restore_s:.2f} s to fetch and check the dump, {settled_s:.2f} s until the set "
                  f"(3 members, 3 Sentinels) runs from it; recovery point: the snapshot's start, {found - 1:,} of "
                  f"{keys:,} keys and the last write before it {'found' if before else 'MISSING'}, the first after it "
                  f"{'found' if after else 'absent'}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def bench_zookeeper(znodes: int) -> None:
    from final_problem.clients.zookeeper import ZooKeeperClient
    from final_problem.local.snapshot_backup import LocalSidecar
    from final_problem.local.zookeeper import LocalEnsemble

    work = Path(tempfile.mkdtemp(prefix="final-problem-bench-zookeeper-backups-"))
    try:
        with LocalS3() as s3, LocalEnsemble(workdir=work / "ensemble", dynamic=True) as ensemble:
            sidecar = LocalSidecar("zookeeper", s3=s3, workdir=work)
            ensemble.start_all()
            leader = ensemble.wait_for_quorum(timeout=60)
            with ZooKeeperClient(hosts=ensemble.hosts, timeout=30) as client:
                client.kazoo.ensure_path("/bench")
                results = [client.kazoo.create_async(f"/bench/{i:08d}", b"x" * 100) for i in range(znodes)]
                for result in results:
                    result.get(timeout=60)
                directory = ensemble.procs[leader].directory
                (work / "spool").mkdir()
                started = time.monotonic()
                taken = sidecar.once(pod=f"zookeeper-{leader - 1}", port=ensemble.procs[leader].member.client_port,
                                     paths={"/data": directory / "data", "/datalog": directory / "datalog",
                                            "/backup-spool": work / "spool"})
                if taken.returncode != 0:
                    raise SystemExit(f"zookeeper snapshot failed: {taken.stderr.strip()}")
                backup_s = time.monotonic() - started
                client.kazoo.create("/bench-after", b"x")
            sidecar.close()
            size = sum(s3.client().list("zookeeper/snapshots/").values())
            ensemble.close()
            started = time.monotonic()
            for proc in ensemble.procs.values():
                shutil.rmtree(proc.directory / "data")
                shutil.rmtree(proc.directory / "datalog")
                backup_cli(s3, "restore", "zookeeper", "--data-dir", str(proc.directory / "data"),
                           "--log-dir", str(proc.directory / "datalog"))
            restore_s = time.monotonic() - started
            started = time.monotonic()
            ensemble.start_all()
            ensemble.wait_for_quorum(timeout=120)
            settled_s = time.monotonic() - started
            with ZooKeeperClient(hosts=ensemble.hosts, timeout=30) as client:
                client.kazoo.sync("/bench")
                found = len(client.kazoo.get_children("/bench"))
                after = client.kazoo.exists("/bench-after") is not None
            print(f"zookeeper snapshot ({znodes:,} znodes): {backup_s:.2f} s from the leader's srvr to a listed "
                  f"snapshot and logs; {size / 1e6:.1f} MB")
            print(f"zookeeper restore: {restore_s:.2f} s to fetch and check it onto 3 members' volumes, {settled_s:.2f} s "
                  f"until the ensemble has a leader; recovery point: the snapshot's start, {found:,} of {znodes:,} "
                  f"znodes found, the first write after it {'found' if after else 'absent'}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--switches", type=int, default=5)
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--znodes", type=int, default=2_000)
    parser.add_argument("--only", default="postgres,redis,zookeeper")
    args = parser.parse_args(argv)
    only = set(args.only.split(","))
    if "redis" in only:
        bench_redis(args.keys)
    if "zookeeper" in only:
        bench_zookeeper(args.znodes)
    if "postgres" not in only:
        return 0
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
