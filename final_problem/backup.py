"""Restore and list backups: ``python -m final_problem.backup``.

::

    final-problem backup list postgres           # the base backups, and the newest one's age
    python -m final_problem.backup restore postgres --to 2026-12-07T03:40:00Z --data-dir /var/lib/postgresql/data/pgdata

The target is read from the environment, with the names the backup containers use:
``BACKUP_S3_ENDPOINT``, ``BACKUP_S3_BUCKET``, ``BACKUP_S3_PREFIX``, ``BACKUP_S3_REGION``,
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``. ``restore`` fills an empty data directory
from the newest base backup that ended before ``--to`` and the archived WAL after it (every
file checked against its recorded SHA-256), so that PostgreSQL, started on it, recovers to that
time and opens. The same code (:mod:`final_problem.renderers.backup_agent`) runs in the
cluster. A refused restore (no backup, a corrupt or missing one, a gap in the WAL, a data
directory that is not empty) ends with one line and exit status 2.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

from final_problem.renderers.backup_agent import BackupError, Postgres, S3, iso, parse_time

COMPONENTS = ("postgres",)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="final-problem backup", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    listing = sub.add_parser("list", help="the base backups of a component, oldest first")
    listing.add_argument("component", choices=COMPONENTS)
    restore = sub.add_parser("restore", help="restore onto an empty data directory, to a time")
    restore.add_argument("component", choices=COMPONENTS)
    restore.add_argument("--to", required=True, help="ISO 8601 time with a zone, e.g. 2026-12-07T03:40:00Z")
    restore.add_argument("--data-dir", required=True, type=Path, help="empty (or absent) PGDATA to fill")
    restore.add_argument("--wal-dir", type=Path,
                         help="where the archived WAL is put for recovery (default: restore-wal beside the data "
                              "directory; it must stay until the server has recovered)")
    args = parser.parse_args(argv)
    try:
        import os

        postgres = Postgres(S3.from_env(), os.environ.get("BACKUP_S3_PREFIX", ""))
        if args.command == "list":
            listings = postgres.listings()
            for item in listings:
                print(f"{item['id']}  ended {iso(item['ended'])}  {item['archive']['size']:>12,} B  "
                      f"from WAL {item['start_wal']}")
            if not listings:
                print(f"{args.component}: no base backup yet", file=sys.stderr)
                return 1
            age = dt.datetime.now(dt.timezone.utc) - listings[-1]["ended"]
            print(f"{args.component}: newest base backup {listings[-1]['id']}, {age.total_seconds() / 3600:.1f} h old")
            return 0
        data_dir: Path = args.data_dir.absolute()
        wal_dir: Path = (args.wal_dir or data_dir.parent / "restore-wal").absolute()
        print(postgres.restore(target=parse_time(args.to), pgdata=str(data_dir), wal_dir=str(wal_dir)))
        return 0
    except BackupError as e:
        print(e, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
