"""Restore and list backups: ``python -m final_problem.backup`` (``final-problem backup``).

::

    final-problem backup list postgres|redis|zookeeper   # the backups, and the newest one's age
    final-problem backup restore postgres --to 2026-12-07T03:40:00Z|latest --data-dir /var/lib/postgresql/data/pgdata
    final-problem backup restore redis [--to TIME] --data-dir /data
    final-problem backup restore zookeeper [--to TIME] --data-dir /data --log-dir /datalog
    final-problem backup restore consul [--to TIME] --data-dir DIR   # then: consul snapshot restore DIR/consul.snap

The target is read from the environment, with the names the backup containers use:
``BACKUP_S3_ENDPOINT``, ``BACKUP_S3_BUCKET``, ``BACKUP_S3_PREFIX``, ``BACKUP_S3_REGION``,
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``.

- ``postgres``: fills an empty data directory from the newest base backup that ended before
  ``--to`` and the archived WAL after it (every file checked against its recorded SHA-256), so
  that PostgreSQL, started on it, recovers to that time and opens.
- ``redis``: puts the newest snapshot whose recovery point is before ``--to`` (the newest of
  all without it) into an empty member data directory, checked by SHA-256 and its RDB
  checksum, as the member's dump and append-only base, marked to start as the primary; the
  other members, on empty volumes, synchronise from it.
- ``zookeeper``: puts the chosen snapshot and the transaction logs after it into one
  member's empty data and log directories; run it for every member before any starts.
- ``consul``: fetches the chosen ``consul snapshot save`` file into an empty directory, for
  ``consul snapshot restore`` into the running servers (Consul restores through its API).

The same code (:mod:`final_problem.renderers.backup_agent`,
:mod:`final_problem.renderers.snapshot_agent`) runs in the cluster. A refused restore (no
backup, a corrupt or missing one, a gap in the WAL, a directory that is not empty) ends with one
line and exit status 2.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
from collections.abc import Callable
from pathlib import Path

from final_problem.renderers.backup_agent import BackupError, Postgres, S3, iso
from final_problem.renderers.restore_init import target as restore_target
from final_problem.renderers.snapshot_agent import Snapshots, restore_file, restore_redis, restore_zookeeper

COMPONENTS = ("postgres", "redis", "zookeeper", "consul")
SNAPSHOT_COMPONENTS = ("redis", "zookeeper", "consul")


def print_listings(component: str, kind: str, listings: list[dict], line: Callable[[dict], str]) -> int:
    """One line per backup (``line``), then the newest one's age; status 1 when there is none."""
    for item in listings:
        print(line(item))
    if not listings:
        print(f"{component}: no {kind} yet", file=sys.stderr)
        return 1
    age = dt.datetime.now(dt.timezone.utc) - listings[-1]["ended"]
    print(f"{component}: newest {kind} {listings[-1]['id']}, {age.total_seconds() / 3600:.1f} h old")
    return 0


def snapshot_line(item: dict) -> str:
    size = sum(entry["size"] for entry in item["files"])
    return (f"{item['id']}  recovery point {iso(item['recovery_point'])}  {size:>12,} B  "
            f"{len(item['files'])} file{'s' if len(item['files']) != 1 else ''} from {item.get('member', '?')}")


def list_snapshots(store: Snapshots) -> int:
    return print_listings(store.component, "snapshot", store.listings(), snapshot_line)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="final-problem backup", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    listing = sub.add_parser("list", help="the backups of a component, oldest first")
    listing.add_argument("component", choices=COMPONENTS)
    restore = sub.add_parser("restore", help="restore onto an empty data directory, to a time")
    restore.add_argument("component", choices=COMPONENTS)
    restore.add_argument("--to", help="ISO 8601 time with a zone, e.g. 2026-12-07T03:40:00Z, or latest (required for "
                                      "postgres, latest: the end of the archive; redis and zookeeper: the newest "
                                      "snapshot before it, the newest without it)")
    restore.add_argument("--data-dir", required=True, type=Path,
                         help="empty (or absent) directory to fill: PGDATA, a Redis member's /data, a ZooKeeper "
                              "member's dataDir")
    restore.add_argument("--wal-dir", type=Path,
                         help="postgres: where the archived WAL is put for recovery (default: restore-wal beside the "
                              "data directory; it must stay until the server has recovered)")
    restore.add_argument("--log-dir", type=Path, help="zookeeper: the member's empty dataLogDir (required)")
    args = parser.parse_args(argv)
    try:
        s3, prefix = S3.from_env(), os.environ.get("BACKUP_S3_PREFIX", "")
        if args.component in SNAPSHOT_COMPONENTS:
            store = Snapshots(s3, prefix, args.component)
            if args.command == "list":
                return list_snapshots(store)
            target = restore_target(args.to) if args.to else None
            data_dir = str(args.data_dir.absolute())
            if args.component == "redis":
                print(restore_redis(store, target=target, data_dir=data_dir))
            elif args.component == "consul":
                chosen, path = restore_file(store, target=target, into=data_dir)
                # Consul restores through its servers' API (Raft), not onto a volume.
                print(f"fetched consul snapshot {chosen['id']} (checked by SHA-256) into {path}: every write "
                      f"acknowledged before {iso(chosen['recovery_point'])} is in it; restore it into the running "
                      f"servers with a management token: consul snapshot restore {path}")
            else:
                if args.log_dir is None:
                    raise BackupError("restore zookeeper: --log-dir not given; give the member's empty dataLogDir "
                                      "(the chart's /datalog volume)")
                print(restore_zookeeper(store, target=target, data_dir=data_dir, log_dir=str(args.log_dir.absolute())))
            return 0
        postgres = Postgres(s3, prefix)
        if args.command == "list":
            return print_listings(args.component, "base backup", postgres.listings(), lambda item: (
                f"{item['id']}  ended {iso(item['ended'])}  {item['archive']['size']:>12,} B  "
                f"from WAL {item['start_wal']}"))
        if not args.to:
            raise BackupError("restore postgres: --to not given; give the time to recover to, e.g. "
                              "--to 2026-12-07T03:40:00Z, or latest for the end of the archive")
        data_dir_path: Path = args.data_dir.absolute()
        wal_dir: Path = (args.wal_dir or data_dir_path.parent / "restore-wal").absolute()
        print(postgres.restore(target=restore_target(args.to), pgdata=str(data_dir_path), wal_dir=str(wal_dir)))
        return 0
    except BackupError as e:
        print(e, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
