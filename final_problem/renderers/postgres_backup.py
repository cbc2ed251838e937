"""PostgreSQL backups as rendered: the server's archive settings and the scripts its pod runs.

The chart mounts :func:`scripts` (a ConfigMap) at :data:`SCRIPTS_DIR` in the server container
and in two sidecars: ``base-backup`` (the postgres image: ``pg_basebackup`` and
``pg_verifybackup``) and ``backup`` (the python image: :mod:`final_problem.renderers.backup_agent`,
the S3 uploads). The three share a spool directory on the server's volume, beside ``PGDATA``,
so a segment copied there survives a restart of the pod. The local tests run the same text.

Sources: PostgreSQL 17 documentation, 25.3 "Continuous Archiving and Point-in-Time Recovery"
(archive_command's contract), 19.5.3 "Archiving" (``archive_timeout``), ``pg_basebackup``
(``--manifest-checksums``, ``-X none``: the backup's WAL comes from the archive, and the server
waits until it is archived before the backup ends), ``pg_verifybackup``.
"""

from __future__ import annotations

from final_problem.renderers import program

#: Where the ConfigMap of scripts is mounted.
SCRIPTS_DIR = "/backup"
#: The agent (:mod:`final_problem.renderers.backup_agent`) as a zip application
#: (:mod:`final_problem.renderers.program`).
AGENT_FILE = "backup_agent.pyz"
#: The ``restore`` init container's program (:mod:`final_problem.renderers.restore_init`).
RESTORE_FILE = "restore_init.pyz"
ARCHIVE_FILE = "archive-wal.sh"
BASE_BACKUP_FILE = "base-backup.sh"


#: ``archive_command``: ``sh archive-wal.sh SPOOL %p %f WAIT_S``. Copies the segment into the
#: spool under a temporary name, renames it (the agent never sees half a file), then waits
#: for the agent's ``.done`` mark, written only once the segment is in the bucket and read back.
#: Exit 0 only then: PostgreSQL may recycle the segment as soon as the command succeeds. On a
#: timeout it exits 1, and PostgreSQL keeps the segment and runs the command again later.
ARCHIVE_WAL_SH = r"""set -eu
spool="$1/wal"; src="$2"; name="$3"; wait_s="$4"
mkdir -p "$spool"
if [ -e "$spool/$name.done" ]; then
  rm -f "$spool/$name" "$spool/$name.done"
  exit 0
fi
cp "$src" "$spool/$name.tmp"
mv -f "$spool/$name.tmp" "$spool/$name"
tries=$((wait_s * 10))
while [ ! -e "$spool/$name.done" ]; do
  tries=$((tries - 1))
  if [ "$tries" -le 0 ]; then
    echo "archive-wal: $name not uploaded within ${wait_s}s (see the backup container's log); PostgreSQL retries" >&2
    exit 1
  fi
  sleep 0.1
done
rm -f "$spool/$name" "$spool/$name.done"
"""

#: The ``base-backup`` sidecar: ``sh base-backup.sh SPOOL INTERVAL_HOURS [once]``. Every
#: ``INTERVAL_HOURS`` after the last uploaded backup (at once when there is none), a
#: ``pg_basebackup`` over the loopback replication connection (the official image's initdb
#: allows replication from 127.0.0.1 with the password), checked by ``pg_verifybackup`` (every
#: file against the manifest's SHA-256), then handed to the agent (``<id>.ready``, ``<id>.end``:
#: when it ended, after the server archived its last WAL). Never while the server is in
#: recovery (a restored server replaying the archive). ``once``: one backup, then exit
#: (the tests).
BASE_BACKUP_SH = r"""set -u
spool="$1/base"; every_min=$(($2 * 60)); mode="${3:-loop}"
mkdir -p "$spool"
export PGPASSWORD="$POSTGRES_PASSWORD"
while :; do
  due=no
  if ! ls -d "$spool"/*.ready >/dev/null 2>&1; then
    if [ ! -e "$spool/last-uploaded" ] || [ -n "$(find "$spool/last-uploaded" -mmin +"$every_min")" ]; then due=yes; fi
  fi
  if [ "$due" = yes ] || [ "$mode" = once ]; then
    id="$(date -u +%Y%m%dT%H%M%SZ)"
    rm -rf "$spool"/*.partial
    if [ "$(psql -X -At -h 127.0.0.1 -p "$PGPORT" -U postgres -d postgres -c 'SELECT pg_is_in_recovery()' 2>/dev/null)" = t ]; then
      # A restored server answers read-only while it replays the archive: a backup now would
      # belong to the timeline it leaves at its promotion. The first one after a restore
      # (a new volume: no last-uploaded, so at once) waits for the promotion.
      echo "base backup $id: the server is still recovering (a restore); waiting for its promotion"
      [ "$mode" = once ] && exit 1
      sleep 10
      continue
    fi
    if pg_isready -q -h 127.0.0.1 -p "$PGPORT" \
      && pg_basebackup -h 127.0.0.1 -p "$PGPORT" -U postgres -D "$spool/$id.partial" -F plain -X none \
           --checkpoint=fast --manifest-checksums=SHA256 \
      && pg_verifybackup --no-parse-wal --quiet "$spool/$id.partial"; then
      date -u +%Y-%m-%dT%H:%M:%SZ > "$spool/$id.end"
      mv "$spool/$id.partial" "$spool/$id.ready"
      echo "base backup $id taken and verified"
    else
      echo "base backup $id failed; trying again in 5 minutes" >&2
      rm -rf "$spool/$id.partial"
      [ "$mode" = once ] && exit 1
      sleep 240
    fi
    [ "$mode" = once ] && exit 0
  fi
  sleep 60
done
"""


def scripts() -> dict[str, str]:
    """The ConfigMap's data: the two shell scripts, file name to text."""
    return {ARCHIVE_FILE: ARCHIVE_WAL_SH, BASE_BACKUP_FILE: BASE_BACKUP_SH}


def programs(*, restore: bool = False) -> dict[str, bytes]:
    """The ConfigMap's binary data: the agent, and with ``restore`` the ``restore`` init
    container's program, each a zip application of the standard-library sources beside this file."""
    files = {AGENT_FILE: program.zipapp("backup_agent.py")}
    if restore:
        files[RESTORE_FILE] = program.zipapp("restore_init.py", ["backup_agent.py"])
    return files


def archive_settings(*, spool: str, archive_timeout_s: int, upload_wait_s: int) -> dict[str, str]:
    """The server settings that archive every WAL segment through :data:`ARCHIVE_WAL_SH`.

    ``archive_timeout`` forces a segment switch after that many seconds with writes, so a quiet
    server's last writes reach the bucket within it: the recovery point objective (docs 19.5.3;
    each forced segment is a full 16 MiB file, compressed to little by the agent).
    """
    return {
        "wal_level": "replica",
        "archive_mode": "on",
        "archive_command": f"sh {SCRIPTS_DIR}/{ARCHIVE_FILE} {spool} %p %f {upload_wait_s}",
        "archive_timeout": f"{archive_timeout_s}s",
    }
