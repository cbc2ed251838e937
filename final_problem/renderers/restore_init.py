"""The ``restore`` init container: fill an empty volume from the backups, leave one with data alone.

Like the agents beside it in the same ConfigMap, this file is the program itself. A chart
whose ``<component>.restore_to`` is set runs it before the server starts
(:mod:`final_problem.constructs.restore`)::

    python3 /backup/restore_init.py postgres --to latest|TIME --pgdata DIR --wal-dir DIR
    python3 /backup/restore_init.py redis --to latest|TIME --data-dir /data
    python3 /backup/restore_init.py zookeeper --to latest|TIME --data-dir /data --log-dir /datalog

It calls the restore functions ``final-problem backup restore`` calls
(:meth:`backup_agent.Postgres.restore`, :func:`snapshot_agent.restore_redis`,
:func:`snapshot_agent.restore_zookeeper`), and only when every directory it would fill is
empty: a volume that holds data (a member restarted, a live platform on which the setting
was turned on) is left as it is, exit status 0. A refused restore (no backup, a corrupt one,
a gap in the WAL) ends with the agent's one line and exit status 2: the init container fails
and the server does not start empty against the setting.

A marker file (:data:`RESTORING`), written before the restore and removed after it, tells
an interrupted restore (the container killed half way) from data: the next start clears what
the interrupted one wrote and restores again.

Redis: only the member with ordinal 0 restores (its dump, marked to start as the primary);
the others start empty and synchronise from it. ZooKeeper: every member restores the same
snapshot and logs (an empty majority beside one restored member could elect itself and
truncate it). PostgreSQL: the one server.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from typing import Callable

if __package__:
    from final_problem.renderers.backup_agent import Postgres, S3, BackupError, parse_time
else:  # run as a script beside backup_agent.py (the ConfigMap's mount)
    from backup_agent import Postgres, S3, BackupError, parse_time  # type: ignore[no-redef]

#: Written before a restore starts and removed once it ended (in the data directory for Redis
#: and ZooKeeper, whose restore functions ignore it; beside PGDATA for PostgreSQL).
RESTORING = ".restore-in-progress"
#: Entries a new volume may hold that are not data (ext4's ``lost+found``) and the marker.
NOT_DATA = ("lost+found", RESTORING)


def holds_data(path: str) -> bool:
    """Whether ``path`` exists and holds anything but a new filesystem's ``lost+found`` and the marker."""
    return os.path.isdir(path) and any(entry not in NOT_DATA for entry in os.listdir(path))


def clear(path: str) -> None:
    """Remove what an interrupted restore left in ``path`` (not ``lost+found``, not the marker)."""
    if not os.path.isdir(path):
        return
    for entry in os.listdir(path):
        if entry in NOT_DATA:
            continue
        full = os.path.join(path, entry)
        shutil.rmtree(full) if os.path.isdir(full) and not os.path.islink(full) else os.unlink(full)


def restore_if_empty(component: str, *, dirs: list[str], marker: str, restore: Callable[[], str],
                     scratch: tuple[str, ...] = ()) -> str:
    """Run ``restore`` when every one of ``dirs`` is empty (or ``marker`` says a restore was
    interrupted there); otherwise say the data was left alone. ``scratch``: directories the
    restore also writes (cleared after an interruption)."""
    interrupted = os.path.exists(marker)
    if not interrupted:
        full = [path for path in dirs if holds_data(path)]
        if full:
            return (f"{component}: {', '.join(full)} already hold{'s' if len(full) == 1 else ''} data: left alone "
                    f"(restore_to restores only an empty volume)")
    for path in (*dirs, *scratch):
        clear(path)
    os.makedirs(os.path.dirname(marker), exist_ok=True)
    with open(marker, "w") as f:
        f.write("a restore started; if it was interrupted, the next start clears this volume and restores again\n")
    try:
        said = restore()
    finally:
        # Done, or refused: the restore functions leave the directories empty when they
        # refuse (some remove the marker with what they wrote).
        if os.path.exists(marker):
            os.unlink(marker)
    return ("after an interrupted restore: " if interrupted else "") + said


def drop_recovered_wal(pgdata: str, wal_dir: str) -> str:
    """After a restore, once PostgreSQL has recovered (it removes ``recovery.signal`` when
    recovery completes; PostgreSQL docs, "Recovering Using a Continuous Archive Backup"), the
    archived WAL the restore fetched is needed no more: remove it, and say so."""
    if os.path.isdir(wal_dir) and not os.path.exists(os.path.join(pgdata, "recovery.signal")):
        shutil.rmtree(wal_dir)
        return f"; removed {wal_dir}, the WAL of a restore the server has recovered from"
    return ""


def target(text: str):  # -> datetime | None
    """``latest`` (the newest backup; PostgreSQL: the end of the archive), else an ISO 8601 time."""
    return None if text.strip().lower() == "latest" else parse_time(text)


def _snapshot_agent():  # noqa: ANN202 (a module)
    if __package__:
        from final_problem.renderers import snapshot_agent
    else:
        import snapshot_agent  # type: ignore[import-not-found,no-redef]
    return snapshot_agent


def pod_ordinal(pod: str) -> int:
    """A StatefulSet pod's ordinal (``redis-2`` -> 2); 0 when the name has none."""
    tail = pod.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="restore-init", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="component", required=True)
    for component in ("postgres", "redis", "zookeeper"):
        one = sub.add_parser(component)
        one.add_argument("--to", required=True, help="latest, or an ISO 8601 time with its zone")
        if component == "postgres":
            one.add_argument("--pgdata", required=True)
            one.add_argument("--wal-dir", required=True)
        else:
            one.add_argument("--data-dir", required=True)
        if component == "zookeeper":
            one.add_argument("--log-dir", required=True)
    args = parser.parse_args(argv)
    try:
        to = target(args.to)
        prefix = os.environ.get("BACKUP_S3_PREFIX", "")
        if args.component == "postgres":
            pgdata, wal_dir = args.pgdata, args.wal_dir
            marker = os.path.join(os.path.dirname(pgdata.rstrip("/")), RESTORING)
            said = restore_if_empty(
                "postgres", dirs=[pgdata], marker=marker, scratch=(wal_dir,),
                restore=lambda: Postgres(S3.from_env(), prefix).restore(target=to, pgdata=pgdata, wal_dir=wal_dir))
            if said.endswith("left alone (restore_to restores only an empty volume)"):
                said += drop_recovered_wal(pgdata, wal_dir)
        else:
            agent = _snapshot_agent()
            pod = os.environ.get("POD_NAME", "")
            if args.component == "redis" and pod_ordinal(pod) != 0:
                print(f"redis on {pod}: only the member with ordinal 0 restores; this one starts as it is and "
                      "synchronises from the primary", flush=True)
                return 0
            data_dir, component = args.data_dir, args.component

            # The target is read only for a restore: a member that keeps its data starts
            # whatever the target's state.
            def store():  # noqa: ANN202
                return agent.Snapshots(S3.from_env(), prefix, component)

            if component == "redis":
                dirs, run = [data_dir], lambda: agent.restore_redis(store(), target=to, data_dir=data_dir)
            else:
                log_dir = args.log_dir
                dirs = [data_dir, log_dir]
                run = lambda: agent.restore_zookeeper(store(), target=to, data_dir=data_dir, log_dir=log_dir)  # noqa: E731
            said = restore_if_empty(args.component, dirs=dirs, marker=os.path.join(data_dir, RESTORING), restore=run)
        print(said, flush=True)
        return 0
    except BackupError as e:
        print(e, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
