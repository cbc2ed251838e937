"""Snapshot backups of Redis and ZooKeeper to an S3-compatible target, standard library only.

Like :mod:`final_problem.renderers.backup_agent` (whose S3 client it uses, from the same
directory of the same ConfigMap), this file is the program itself: the redis and zookeeper
charts run it in the python image as their pods' ``backup`` sidecar, the local tests run the
same text with the host's Python, and :mod:`final_problem.backup` imports it for ``restore``.

A snapshot is a set of files and a listing, ``<prefix>/<component>/snapshots/<id>/``: the
files first (each with its SHA-256 in its metadata and in the listing), each read back at its
size, and the listing ``snapshot.json`` last: a snapshot without its listing is not a backup.
The listing's ``recovery_point`` is the time before which every acknowledged write is in the
snapshot.

Redis (one snapshot every ``--interval-minutes``, from a replica):

- only a replica linked to its primary takes it: ``BGSAVE`` forks the server, and a fork of the
  primary stalls its clients for the copy of its page tables and doubles the memory its writes
  touch meanwhile (Redis docs, "Redis persistence", RDB disadvantages; "Diagnosing latency
  issues", fork); on a replica only replication waits. The replicas stagger their turn by
  ordinal (``--stagger-s``), so one snapshot is taken per interval while any replica runs;
- before ``BGSAVE`` the replica catches up with the primary's replication offset as read at
  the start: every write the primary had acknowledged then is in the dump;
- the dump (``dump.rdb``, hard-linked as soon as the save ends, so a later save cannot
  replace it under the upload) goes up with its SHA-256;
- restore checks the SHA-256 and the RDB's own CRC-64 (``redis-check-rdb`` when it is on the
  PATH) and writes the dump as ``dump.rdb`` and as the base of the append-only file: with
  ``appendonly yes`` (the chart's) Redis 7 loads the AOF only, and a data directory holding
  ``dump.rdb`` alone starts empty (checked on Redis 7.0.15: it then saves the empty set over
  the dump at shutdown).

ZooKeeper (every ``--interval-minutes``, from the leader): see :class:`ZooKeeperSnapshots`.

Freshness (``--metrics-port``): :class:`backup_agent.Metrics` with ``kind="snapshot"``, the
age of the newest snapshot the bucket lists, read at start and at every check (whichever
member took it), and this sidecar's own uploads counted.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import time
import zlib

if __package__:
    from final_problem.renderers.backup_agent import (
        S3, BackupError, Metrics, file_digest, iso, parse_time, utcnow, write_atomic,
    )
else:  # run as a script beside backup_agent.py (the ConfigMap's mount)
    from backup_agent import (  # type: ignore[no-redef]
        S3, BackupError, Metrics, file_digest, iso, parse_time, utcnow, write_atomic,
    )

LISTING_FORMAT = 1
LISTING = "snapshot.json"
#: The file that tells the redis chart's start script to start its member as the primary
#: (final_problem.renderers.redis.FORCE_PRIMARY_FILE; this program imports nothing of the project).
FORCE_PRIMARY_FILE = "force-primary"


# -- the store ---------------------------------------------------------------------------------

class Snapshots:
    """The snapshots of one component under ``<prefix>/<component>/snapshots/``."""

    def __init__(self, s3: S3, prefix: str, component: str) -> None:
        self.s3, self.component = s3, component
        self.root = (prefix.strip("/") + "/" if prefix.strip("/") else "") + f"{component}/snapshots/"

    def upload(self, snapshot_id: str, files: list[tuple[str, str]], *, recovery_point: dt.datetime,
               details: dict) -> dict:
        """Upload ``files`` (name in the snapshot, local path), then the listing."""
        entries = []
        for name, path in files:
            sha, size = file_digest(path, "sha256")
            key = f"{self.root}{snapshot_id}/{name}"
            self.s3.put(key, body_file=path, meta={"sha256": sha})
            stored = self.s3.head(key)
            if stored is None or int(stored.get("content-length", -1)) != size:
                raise BackupError(f"{self.component} snapshot {snapshot_id}: {key} not readable back at its size; "
                                  "check the target")
            entries.append({"name": name, "key": key, "sha256": sha, "size": size})
        listing = {"format": LISTING_FORMAT, "component": self.component, "id": snapshot_id,
                   "recovery_point": iso(recovery_point), "ended": iso(utcnow()), "files": entries, **details}
        self.s3.put(f"{self.root}{snapshot_id}/{LISTING}", body=json.dumps(listing, indent=1).encode())
        return listing

    def listings(self) -> list[dict]:
        """Every listed snapshot, oldest recovery point first; an unreadable listing is an error."""
        found = []
        for key in sorted(self.s3.list(self.root)):
            if not key.endswith("/" + LISTING):
                continue
            got = self.s3.get(key)
            try:
                listing = json.loads(got[1]) if got else None
                listing["recovery_point"] = parse_time(listing["recovery_point"])
                listing["ended"] = parse_time(listing["ended"])
                assert listing["format"] == LISTING_FORMAT and listing["files"]
            except Exception:
                raise BackupError(f"{self.component} snapshot listing {key}: unreadable; delete that snapshot "
                                  f"(its folder {key.rsplit('/', 1)[0]}/) or restore it from the bucket's versions") from None
            found.append(listing)
        return sorted(found, key=lambda item: item["recovery_point"])

    def newest_age_s(self) -> float | None:
        listings = self.listings()
        return (utcnow() - listings[-1]["ended"]).total_seconds() if listings else None

    def prune(self, retention_days: int) -> int:
        """Delete snapshots that ended more than ``retention_days`` ago; the newest always stays."""
        cutoff = utcnow() - dt.timedelta(days=retention_days)
        old = [item for item in self.listings()[:-1] if item["ended"] < cutoff]
        for item in old:
            # The listing first: a snapshot half deleted is no longer listed.
            self.s3.delete(f"{self.root}{item['id']}/{LISTING}")
            for entry in item["files"]:
                self.s3.delete(entry["key"])
        return len(old)

    def choose(self, target: dt.datetime | None) -> dict:
        """The newest snapshot whose recovery point is at or before ``target`` (the newest of
        all without one)."""
        listings = self.listings()
        where = f"{self.s3.bucket}/{self.root}"
        if not listings:
            raise BackupError(f"restore: no {self.component} snapshot under {where}; take one first (the backup "
                              "sidecar takes the first within minutes of its start)")
        if target is None:
            return listings[-1]
        before = [item for item in listings if item["recovery_point"] <= target]
        if not before:
            raise BackupError(f"restore: no {self.component} snapshot with a recovery point before {iso(target)} "
                              f"(the oldest is {iso(listings[0]['recovery_point'])}); choose --to after that")
        return before[-1]

    def fetch(self, listing: dict, into: str) -> list[str]:
        """Download every file of ``listing`` into the directory ``into``, each checked against
        its listed SHA-256 and size; the local paths, in listing order."""
        paths = []
        older = f"choose --to before {iso(listing['recovery_point'])} for an older snapshot"
        for entry in listing["files"]:
            path = os.path.join(into, os.path.basename(entry["name"]))
            if self.s3.download(entry["key"], path) is None:
                raise BackupError(f"restore: {self.component} snapshot {listing['id']} is missing {entry['name']}; "
                                  + older)
            if file_digest(path, "sha256") != (entry["sha256"], entry["size"]):
                raise BackupError(f"restore: {self.component} snapshot {listing['id']} is corrupt ({entry['name']}'s "
                                  f"SHA-256 or size differs from its listing); " + older)
            paths.append(path)
        return paths


#: The in-cluster restore's marker (final_problem.renderers.restore_init.RESTORING): it sits in
#: the directory it restores into, so it does not count as data.
RESTORE_MARKER = ".restore-in-progress"


def refuse_nonempty(path: str, component: str) -> None:
    """A restore writes only into an empty (or absent) directory; ``lost+found`` of a new
    filesystem, and the in-cluster restore's marker, do not count."""
    if os.path.isdir(path) and [e for e in os.listdir(path) if e not in ("lost+found", RESTORE_MARKER)]:
        raise BackupError(f"restore: {path} is not empty; restore {component} onto an empty data directory "
                          "(a new volume, or move the old directory away)")


def snapshot_id(now: dt.datetime | None = None) -> str:
    return (now or utcnow()).strftime("%Y%m%dT%H%M%S.%fZ")


def ordinal(pod_name: str) -> int:
    """A StatefulSet pod's ordinal (``redis-2`` → 2); 0 when the name has none."""
    tail = pod_name.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else 0


# -- Redis -------------------------------------------------------------------------------------

class Resp:
    """One connection speaking RESP2 (Redis docs, "Redis serialization protocol specification")."""

    def __init__(self, host: str, port: int, *, user: str, password: str, timeout_s: float = 10) -> None:
        self.where = f"{host}:{port}"
        try:
            self.sock = socket.create_connection((host, port), timeout=timeout_s)
        except OSError as e:
            raise BackupError(f"redis {self.where}: cannot connect ({e}); is the server up?") from None
        self.file = self.sock.makefile("rb")
        self.call("AUTH", user, password)

    def close(self) -> None:
        self.file.close()
        self.sock.close()

    def call(self, *args: str) -> object:
        parts = [b"*%d\r\n" % len(args)]
        for arg in args:
            data = str(arg).encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
        try:
            self.sock.sendall(b"".join(parts))
            reply = self._read()
        except OSError as e:
            raise BackupError(f"redis {self.where}: {args[0]} failed ({e}); is the server up?") from None
        if isinstance(reply, RespError):
            raise reply
        return reply

    def _read(self) -> object:
        line = self.file.readline()
        if not line.endswith(b"\r\n"):
            raise OSError("connection closed")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            return RespError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            if size < 0:
                return None
            data = self.file.read(size + 2)
            return data[:-2].decode(errors="replace")
        if kind == b"*":
            size = int(rest)
            return None if size < 0 else [self._read() for _ in range(size)]
        raise OSError(f"unexpected reply {line[:40]!r}")

    def info(self, section: str) -> dict[str, str]:
        text = str(self.call("INFO", section))
        return dict(line.split(":", 1) for line in text.splitlines() if ":" in line and not line.startswith("#"))


class RespError(BackupError):
    """An error reply."""


#: The RDB trailer's CRC-64: Jones polynomial, reflected, as Redis's crc64.c (its test vector:
#: crc64("123456789") = 0xe9c6d914c4b8d9ca).
_CRC64_POLY = 0x95AC9329AC4BC9B5
_CRC64_TABLE: list[int] = []
for _byte in range(256):
    _crc = _byte
    for _ in range(8):
        _crc = (_crc >> 1) ^ _CRC64_POLY if _crc & 1 else _crc >> 1
    _CRC64_TABLE.append(_crc)


def crc64(data: bytes, crc: int = 0) -> int:
    table = _CRC64_TABLE
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc


def check_rdb(path: str) -> str:
    """Check an RDB file's own checksum: ``redis-check-rdb`` when on the PATH, else the CRC-64
    trailer here. Returns how; raises BackupError when the file is not a whole RDB."""
    checker = shutil.which("redis-check-rdb")
    if checker:
        done = subprocess.run([checker, path], capture_output=True, timeout=3600)
        if done.returncode != 0:
            raise BackupError("fails redis-check-rdb")
        return "redis-check-rdb"
    with open(path, "rb") as f:
        data = f.read()
    if not data.startswith(b"REDIS") or len(data) < 18:
        raise BackupError("is not an RDB file")
    (stored,) = struct.unpack("<Q", data[-8:])
    # A zero trailer: the server ran with rdbchecksum no (redis.conf), nothing to compare.
    if stored and crc64(data[:-8]) != stored:
        raise BackupError("fails its CRC-64")
    return "its CRC-64"


class RedisSnapshots:
    """Snapshots of a Redis set taken on this pod's member while it is a replica."""

    def __init__(self, store: Snapshots, *, data_dir: str, port: int, password: str, pod: str,
                 user: str = "admin", wait_s: float = 120) -> None:
        self.store, self.data_dir, self.port, self.password, self.pod = store, data_dir, port, password, pod
        self.user, self.wait_s = user, wait_s
        self.spool = os.path.join(data_dir, "backup-spool")

    def _local(self) -> Resp:
        return Resp("127.0.0.1", self.port, user=self.user, password=self.password)

    def take(self) -> dict | None:
        """One snapshot if this member is a replica linked to its primary; None otherwise."""
        conn = self._local()
        try:
            replication = conn.info("replication")
            if replication.get("role") != "slave" or replication.get("master_link_status") != "up":
                return None
            started = utcnow()
            primary = Resp(replication["master_host"], int(replication["master_port"]), user=self.user,
                           password=self.password)
            try:
                wanted = int(primary.info("replication")["master_repl_offset"])
            finally:
                primary.close()
            deadline = time.monotonic() + self.wait_s
            while int(conn.info("replication").get("slave_repl_offset", -1)) < wanted:
                if time.monotonic() > deadline:
                    raise BackupError(f"redis snapshot on {self.pod}: the replica did not reach the primary's offset "
                                      f"{wanted} within {self.wait_s:g} s; check its replication link")
                time.sleep(0.05)
            self._bgsave(conn, deadline)
            os.makedirs(self.spool, exist_ok=True)
            taken = snapshot_id(started)
            copy = os.path.join(self.spool, f"{taken}.rdb")
            # A hard link: a later save renames a new dump.rdb over the name, not this inode.
            os.link(os.path.join(self.data_dir, "dump.rdb"), copy)
        finally:
            conn.close()
        try:
            listing = self.store.upload(taken, [("dump.rdb", copy)], recovery_point=started,
                                        details={"member": self.pod, "primary_offset": wanted})
        finally:
            os.unlink(copy)
        return listing

    def _bgsave(self, conn: Resp, deadline: float) -> None:
        """A background save that starts now, waited for; refused when it fails."""
        while True:
            before = int(conn.info("persistence")["rdb_saves"])
            try:
                # SCHEDULE: after an AOF rewrite in progress instead of an error (Redis docs, BGSAVE).
                conn.call("BGSAVE", "SCHEDULE")
                break
            except RespError as e:
                if "already in progress" not in str(e):
                    raise BackupError(f"redis snapshot on {self.pod}: BGSAVE refused ({e})") from None
            # A save that started earlier may predate the offset waited for: let it end, save again.
            while int(conn.info("persistence")["rdb_saves"]) == before:
                if time.monotonic() > deadline:
                    raise BackupError(f"redis snapshot on {self.pod}: a save in progress did not end in time")
                time.sleep(0.05)
        while True:
            persistence = conn.info("persistence")
            if int(persistence["rdb_saves"]) > before and persistence["rdb_bgsave_in_progress"] == "0":
                if persistence["rdb_last_bgsave_status"] != "ok":
                    raise BackupError(f"redis snapshot on {self.pod}: BGSAVE failed (see the server's log)")
                return
            if time.monotonic() > deadline + 3600:
                raise BackupError(f"redis snapshot on {self.pod}: BGSAVE still running after an hour")
            time.sleep(0.05)

def restore_redis(store: Snapshots, *, target: dt.datetime | None, data_dir: str) -> str:
    """Fill an empty member data directory from the chosen snapshot."""
    refuse_nonempty(data_dir, "redis")
    listing = store.choose(target)
    os.makedirs(data_dir, exist_ok=True)
    work = os.path.join(data_dir, ".restore")
    os.makedirs(work, exist_ok=True)
    try:
        (dump,) = store.fetch(listing, work)
        try:
            how = check_rdb(dump)
        except BackupError as e:
            raise BackupError(f"restore: redis snapshot {listing['id']}: its dump.rdb {e}; choose --to before "
                              f"{iso(listing['recovery_point'])} for an older snapshot") from None
        aof = os.path.join(data_dir, "appendonlydir")
        os.makedirs(aof)
        shutil.copyfile(dump, os.path.join(aof, "appendonly.aof.1.base.rdb"))
        # The manifest of Redis 7's multi-part AOF: the base alone; the server adds the incr file.
        write_atomic(os.path.join(aof, "appendonly.aof.manifest"), "file appendonly.aof.1.base.rdb seq 1 type b\n")
        os.replace(dump, os.path.join(data_dir, "dump.rdb"))
        # The chart's start script: a member with data that no Sentinel majority names and no
        # member answers for starts as primary only when told so (start-redis.sh).
        open(os.path.join(data_dir, FORCE_PRIMARY_FILE), "w").close()
    except BaseException:
        for entry in os.listdir(data_dir):
            if entry == "lost+found":  # a new filesystem's, root's: not the restore's to remove
                continue
            path = os.path.join(data_dir, entry)
            shutil.rmtree(path) if os.path.isdir(path) else os.unlink(path)
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return (f"restored redis snapshot {listing['id']} (taken on {listing['member']}, checked by SHA-256 and {how}) "
            f"into {data_dir}: every write acknowledged before {iso(listing['recovery_point'])} is in it; start this "
            "member first, on its own, with the Sentinels' volumes empty: it starts as the primary (its force-primary file) and "
            "the other members, on empty volumes, synchronise from it")


# -- ZooKeeper ---------------------------------------------------------------------------------

#: File magics (ZooKeeper's FileTxnLog.TXNLOG_MAGIC, FileSnap.SNAP_MAGIC): "ZKLG", "ZKSN".
TXNLOG_MAGIC, SNAP_MAGIC = b"ZKLG", b"ZKSN"
#: A snapshot ends with its Adler-32 (a long) and the string "/" (SnapStream.sealStream).
SNAP_SEAL = b"\x00\x00\x00\x01/"
ZK_FILE = re.compile(r"^(log|snapshot)\.([0-9a-f]+)$")


def snapshot_valid(path: str) -> bool:
    """A whole snapshot: its header, and the Adler-32 of everything before its seal matches the
    one in the seal (FileSnap.serialize, SnapStream.sealStream). ZooKeeper writes a snapshot
    under its final name, so the newest may still be being written."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 16 + 13 or not data.startswith(SNAP_MAGIC) or not data.endswith(SNAP_SEAL):
        return False
    (stored,) = struct.unpack(">q", data[-13:-5])
    return zlib.adler32(data[:-13]) == stored


def log_records(data: bytes) -> tuple[int, int | None, int | None]:
    """Walk a transaction log (FileTxnLog: a 16-byte header, then per transaction its Adler-32
    as a long, its length as an int, the bytes (TxnHeader first: client id, cxid, zxid, ...)
    and the end-of-record byte 0x42). Returns the byte length of the whole records, the first
    and the last zxid; it stops at the preallocated zeros, a partly written record or a bad
    checksum, as ZooKeeper's reader stops at the end of the log."""
    if not data.startswith(TXNLOG_MAGIC):
        raise BackupError("not a ZooKeeper transaction log")
    offset, first, last = 16, None, None
    while offset + 12 <= len(data):
        crc, length = struct.unpack_from(">qi", data, offset)
        start, end = offset + 12, offset + 12 + length
        if length <= 0 or end + 1 > len(data) or data[end] != 0x42 or zlib.adler32(data[start:end]) != crc:
            break
        (zxid,) = struct.unpack_from(">q", data, start + 12)
        first = zxid if first is None else first
        last = zxid
        offset = end + 1
    return offset, first, last


def zk_command(host: str, port: int, word: str, timeout_s: float = 5) -> str:
    """A four-letter word's answer (ZooKeeper Administrator's Guide, "The Four Letter Words")."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as s:
            s.sendall(word.encode())
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
    except OSError as e:
        raise BackupError(f"zookeeper {host}:{port}: {word} failed ({e}); is the member up?") from None
    return b"".join(chunks).decode(errors="replace")


class ZooKeeperSnapshots:
    """Snapshots of an ensemble taken on this pod's member while it leads.

    A consistent set is the newest whole snapshot (``snapshot.<zxid>`` from the data directory's
    ``version-2``) and the transaction logs from the one holding the transaction after the
    snapshot's zxid onwards (``log.<first zxid>`` from the log directory's ``version-2``): the
    files ZooKeeper itself loads (FileTxnSnapLog.restore: the snapshot, then the logs after
    it; PurgeTxnLog keeps the same). ZooKeeper's snapshots are fuzzy (taken while transactions
    apply), and replaying the logs from the snapshot's zxid makes them exact.

    The leader logs every transaction before the ensemble commits it (a quorum acknowledges a
    proposal only once it is in its log, and the leader is one of the quorum or logs it
    meanwhile): its files hold every acknowledged write. The set is taken once the leader's
    logs reach the zxid it reported at the start, the recovery point. The live log is copied
    up to its last whole record (it is preallocated with zeros and may be mid-append).
    """

    def __init__(self, store: Snapshots, *, data_dir: str, log_dir: str, port: int, pod: str, spool: str,
                 wait_s: float = 60) -> None:
        self.store, self.data_dir, self.log_dir, self.port, self.pod = store, data_dir, log_dir, port, pod
        self.spool, self.wait_s = spool, wait_s

    def mode(self) -> tuple[str, int]:
        """The member's mode (``leader``, ``follower``, ``standalone``, ...) and last zxid (``srvr``)."""
        answer = zk_command("127.0.0.1", self.port, "srvr")
        mode = re.search(r"^Mode: (\S+)", answer, re.M)
        zxid = re.search(r"^Zxid: 0x([0-9a-f]+)", answer, re.M)
        if not mode or not zxid:
            raise BackupError(f"zookeeper on {self.pod}: srvr answered {answer.strip()[:80]!r}; is srvr in "
                              "4lw.commands.whitelist?")
        return mode.group(1), int(zxid.group(1), 16)

    def take(self) -> dict | None:
        """One snapshot if this member leads (or runs alone); None otherwise."""
        mode, wanted = self.mode()
        if mode not in ("leader", "standalone"):
            return None
        started = utcnow()
        deadline = time.monotonic() + self.wait_s
        taken = snapshot_id(started)
        work = os.path.join(self.spool, taken)
        while True:
            shutil.rmtree(work, ignore_errors=True)
            os.makedirs(work)
            files, last = self._copy_set(work)
            if last is not None and last >= wanted:
                break
            if time.monotonic() > deadline:
                raise BackupError(f"zookeeper snapshot on {self.pod}: its logs end at zxid {last or 0:#x}, before "
                                  f"{wanted:#x} reported at the start, after {self.wait_s:g} s; check the log volume")
            time.sleep(0.05)
        try:
            listing = self.store.upload(taken, files, recovery_point=started,
                                        details={"member": self.pod, "zxid": f"{wanted:#x}", "last_zxid": f"{last:#x}"})
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return listing

    def _copy_set(self, work: str) -> tuple[list[tuple[str, str]], int | None]:
        snap_dir, log_dir = os.path.join(self.data_dir, "version-2"), os.path.join(self.log_dir, "version-2")
        snapshots = sorted(((int(m.group(2), 16), n) for n in os.listdir(snap_dir)
                            if (m := ZK_FILE.match(n)) and m.group(1) == "snapshot"), reverse=True)
        for zxid, name in snapshots:  # noqa: B007 (zxid: the chosen snapshot's, read after the loop)
            copy = os.path.join(work, name)
            shutil.copyfile(os.path.join(snap_dir, name), copy)
            if snapshot_valid(copy):
                break
            os.unlink(copy)
        else:
            raise BackupError(f"zookeeper snapshot on {self.pod}: no whole snapshot in {snap_dir}; ZooKeeper writes "
                              "one at its first start: check the data volume")
        files = [(f"snap/{name}", copy)]
        logs = sorted((int(m.group(2), 16), n) for n in os.listdir(log_dir)
                      if (m := ZK_FILE.match(n)) and m.group(1) == "log")
        # The log holding the transaction after the snapshot: the last that starts at or before it.
        starts = [start for start, _ in logs if start <= zxid + 1]
        first_needed = starts[-1] if starts else (logs[0][0] if logs else 0)
        last = zxid
        for start, name in logs:
            if start < first_needed:
                continue
            with open(os.path.join(log_dir, name), "rb") as f:
                data = f.read()
            end, _, log_last = log_records(data)
            copy = os.path.join(work, name)
            with open(copy, "wb") as out:
                out.write(data[:end])
            files.append((f"log/{name}", copy))
            last = max(last, log_last) if log_last is not None else last
        return files, last


def restore_zookeeper(store: Snapshots, *, target: dt.datetime | None, data_dir: str, log_dir: str) -> str:
    """Fill one member's empty data and log directories from the chosen snapshot."""
    for path in (data_dir, log_dir):
        refuse_nonempty(path, "zookeeper")
    listing = store.choose(target)
    created = [p for p in (data_dir, log_dir) if not os.path.exists(p)]
    snap_dir, logs_dir = os.path.join(data_dir, "version-2"), os.path.join(log_dir, "version-2")
    work = os.path.join(data_dir, ".restore")
    try:
        os.makedirs(work)
        paths = store.fetch(listing, work)
        older = f"choose --to before {iso(listing['recovery_point'])} for an older snapshot"
        os.makedirs(snap_dir)
        os.makedirs(logs_dir, exist_ok=True)
        for entry, path in zip(listing["files"], paths, strict=True):
            kind, name = entry["name"].split("/", 1)
            if not ZK_FILE.match(name) or kind not in ("snap", "log"):
                raise BackupError(f"restore: zookeeper snapshot {listing['id']} holds {entry['name']!r}, not a "
                                  f"snapshot or log; {older}")
            if kind == "snap" and not snapshot_valid(path):
                raise BackupError(f"restore: zookeeper snapshot {listing['id']}: {name} fails its own Adler-32; {older}")
            if kind == "log":
                with open(path, "rb") as f:
                    data = f.read()
                if log_records(data)[0] != len(data):
                    raise BackupError(f"restore: zookeeper snapshot {listing['id']}: {name} fails a record's "
                                      f"Adler-32; {older}")
            os.replace(path, os.path.join(snap_dir if kind == "snap" else logs_dir, name))
    except BaseException:
        for path in (data_dir, log_dir):
            if path in created:
                shutil.rmtree(path, ignore_errors=True)
            elif os.path.isdir(path):
                for entry in os.listdir(path):
                    if entry != "lost+found":
                        full = os.path.join(path, entry)
                        shutil.rmtree(full) if os.path.isdir(full) else os.unlink(full)
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return (f"restored zookeeper snapshot {listing['id']} (taken on {listing['member']}, up to zxid "
            f"{listing['last_zxid']}) into {data_dir} and {log_dir}: every write acknowledged before "
            f"{iso(listing['recovery_point'])} is in it; restore every member's volumes the same way before any starts")


# -- a file saved by the server's own tool (Consul) ----------------------------------------------

def upload_file(store: Snapshots, *, path: str, started_file: str, pod: str) -> dict:
    """Upload one file a tool saved (``consul snapshot save``, which verifies what it saved),
    its recovery point the time written to ``started_file`` before the save began."""
    try:
        with open(started_file) as f:
            started = parse_time(f.read())
    except OSError:
        raise BackupError(f"{store.component} snapshot: {started_file} missing; the save step did not run") from None
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        raise BackupError(f"{store.component} snapshot: {path} missing or empty; see the save step's log")
    return store.upload(snapshot_id(started), [(os.path.basename(path), path)], recovery_point=started,
                        details={"member": pod})


def restore_file(store: Snapshots, *, target: dt.datetime | None, into: str) -> tuple[dict, str]:
    """Download the chosen snapshot's one file into the empty directory ``into``, checked
    against its listing; the listing and the file's path."""
    refuse_nonempty(into, store.component)
    listing = store.choose(target)
    created = not os.path.exists(into)
    os.makedirs(into, exist_ok=True)
    try:
        (path,) = store.fetch(listing, into)
    except BaseException:
        shutil.rmtree(into) if created else [os.unlink(os.path.join(into, e)) for e in os.listdir(into)]
        raise
    return listing, path


# -- the sidecar -------------------------------------------------------------------------------

#: The ``kind`` label of the snapshots' freshness metrics (backup_agent.Metrics).
SNAPSHOT_KIND = "snapshot"


def newest_listed(store: Snapshots, metrics: Metrics) -> float | None:
    """Seconds since the newest listed snapshot ended (None: none listed), also given to
    ``metrics`` as the last success. The set's freshness, not this member's: one member takes
    each snapshot, so every sidecar reports what the bucket lists, whoever uploaded it."""
    listings = store.listings()
    if not listings:
        return None
    ended = max(item["ended"] for item in listings)
    metrics.succeeded(SNAPSHOT_KIND, at=ended)
    return (utcnow() - ended).total_seconds()


def take_counted(taker: "RedisSnapshots | ZooKeeperSnapshots", metrics: Metrics) -> dict | None:
    """``taker.take()``, a snapshot uploaded and listed counted as a success, one that failed
    as a failure; a member that does not take snapshots now counts neither."""
    try:
        listing = taker.take()
    except BackupError:
        metrics.failed(SNAPSHOT_KIND)
        raise
    if listing is not None:
        metrics.succeeded(SNAPSHOT_KIND)
    return listing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="snapshot-agent")
    sub = parser.add_subparsers(dest="command", required=True)
    for component in ("redis", "zookeeper"):
        agent = sub.add_parser(component, help=f"take {component} snapshots on a schedule, forever")
        agent.add_argument("--data-dir", required=True)
        if component == "zookeeper":
            agent.add_argument("--log-dir", required=True)
            agent.add_argument("--spool", required=True, help="a scratch directory for the copies")
        agent.add_argument("--port", type=int, required=True)
        agent.add_argument("--interval-minutes", type=float, required=True)
        agent.add_argument("--retention-days", type=int, required=True)
        agent.add_argument("--stagger-s", type=float, default=120, help="redis: each ordinal's wait for its turn")
        agent.add_argument("--check-s", type=float, default=60, help="seconds between checks whether one is due")
        agent.add_argument("--once", action="store_true", help="one snapshot now, then exit (status 3: not this member's)")
        agent.add_argument("--metrics-port", type=int, default=0,
                           help="serve the snapshots' freshness on this port (0: not served)")
    upload = sub.add_parser("upload", help="upload one saved file as a snapshot (the Consul CronJob)")
    upload.add_argument("component")
    upload.add_argument("--file", required=True)
    upload.add_argument("--started-file", required=True, help="holds the time the save began (ISO 8601)")
    upload.add_argument("--retention-days", type=int, required=True)
    args = parser.parse_args(argv)
    pod = os.environ.get("POD_NAME") or socket.gethostname()
    try:
        if args.command == "upload":
            store = Snapshots(S3.from_env(), os.environ.get("BACKUP_S3_PREFIX", ""), args.component)
            store.s3.create_bucket()
            listing = upload_file(store, path=args.file, started_file=args.started_file, pod=pod)
            print(f"{args.component} snapshot {listing['id']} uploaded and listed", flush=True)
            store.prune(args.retention_days)
            return 0
        store = Snapshots(S3.from_env(), os.environ.get("BACKUP_S3_PREFIX", ""), args.command)
        if args.command == "redis":
            password = os.environ.get("REDIS_ADMIN_PASSWORD", "")
            if not password:
                raise BackupError("redis snapshots: REDIS_ADMIN_PASSWORD not set; give the admin user's password")
            taker: RedisSnapshots | ZooKeeperSnapshots = RedisSnapshots(
                store, data_dir=args.data_dir, port=args.port, password=password, pod=pod)
        else:
            taker = ZooKeeperSnapshots(store, data_dir=args.data_dir, log_dir=args.log_dir, port=args.port, pod=pod,
                                       spool=args.spool)
        if args.once:
            listing = taker.take()
            if listing is None:
                print(f"{args.command} on {pod}: not the member that takes snapshots now", file=sys.stderr)
                return 3
            print(f"{args.command} snapshot {listing['id']} uploaded and listed", flush=True)
            return 0
        metrics = Metrics(args.command, kinds=(SNAPSHOT_KIND,))
        if args.metrics_port:
            metrics.serve(args.metrics_port)
        store.s3.create_bucket()
        started = time.monotonic()
        while True:
            try:
                stagger = args.stagger_s if args.command == "redis" else 0
                age = newest_listed(store, metrics)
                turn = ordinal(pod) * stagger
                due = (time.monotonic() - started >= turn) if age is None else age >= args.interval_minutes * 60 + turn
                if due:
                    listing = take_counted(taker, metrics)
                    if listing is not None:
                        print(f"{args.command} snapshot {listing['id']} uploaded and listed", flush=True)
                        store.prune(args.retention_days)
            except BackupError as e:
                print(e, file=sys.stderr, flush=True)
            time.sleep(args.check_s)
    except BackupError as e:
        print(e, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
