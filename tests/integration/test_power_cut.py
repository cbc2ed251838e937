"""A real power cut of the Pi profile's servers: what was not synced to disk is lost.

Each server's data directories are ext4 disks of :class:`final_problem.local.powercut.PowerStrip`
(ext4 as a Pi mounts its card). A live client writes until the cut and counts the writes
acknowledged; the servers are frozen, the disks cloned as they stood, the servers killed
and restarted from the clones. Every acknowledged write must be there, unless the setting
under test documents a window, which is then measured. Each component also runs once with
its safety removed, and must then lose acknowledged writes: the harness catches what it
tests. Run with ``-s`` to see the figures.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from kazoo.exceptions import NoNodeError

from final_problem.charts.postgres import PostgresProps
from final_problem.charts.redis import SENTINEL_STORAGE_GIB, RedisProps
from final_problem.charts.zookeeper import ZooKeeperProps
from final_problem.clients.redis import RedisClient, RedisSettings
from final_problem.clients.zookeeper import ZooKeeperClient
from final_problem.local.postgres import LocalPostgres
from final_problem.local.powercut import LiveWriter, Losses, PowerStrip, losses
from final_problem.local.redis import LocalRedisSet, local_options
from final_problem.local.zookeeper import LocalEnsemble
from final_problem.local.zookeeper import missing_binaries as zookeeper_missing
from final_problem.profiles import PI
from tests.integration.conftest import require_power_cut

pytestmark = pytest.mark.integration

#: Seconds the client writes before the cut: longer than one ext4 journal commit (5 s), so
#: the disks hold committed and uncommitted data alike, short enough for the suite.
WRITE_S = 6
#: Seconds for servers to answer again after the cut (JVM start on a busy host included).
RECOVERY_TIMEOUT_S = 90


# -- the harness ----------------------------------------------------------------------------

def test_a_cut_keeps_fsynced_data_and_drops_the_rest(tmp_path: Path) -> None:
    """What the harness rests on: a file fsynced before the cut is there afterwards, a file
    only written (in the page cache, which a kill -9 keeps) is not. After close, no mount,
    loop device or image file is left."""
    require_power_cut()
    node = tmp_path / "node"
    with PowerStrip(tmp_path / "power") as strip:
        strip.add_disk("node", node, size_gib=1)
        writer = subprocess.Popen(
            [sys.executable, "-c", (
                "import os, sys, time\n"
                "with open('synced', 'w') as f: f.write('kept'); f.flush(); os.fsync(f.fileno())\n"
                "with open('written', 'w') as f: f.write('lost')\n"
                "print('done', flush=True); time.sleep(600)")],
            cwd=node, stdout=subprocess.PIPE, text=True, start_new_session=True,
        )
        try:
            assert writer.stdout is not None and writer.stdout.readline() == "done\n"
            strip.freeze([writer.pid])
            strip.cut()
        finally:
            writer.kill()
            writer.wait(timeout=30)
        assert (node / "synced").read_text() == "kept"
        assert not (node / "written").exists()
        store = strip.store
    mounts = Path("/proc/self/mounts").read_text()
    assert str(node) not in mounts and str(store) not in mounts
    backing = subprocess.run(["losetup", "--list", "--noheadings", "--output", "BACK-FILE"], capture_output=True,
                             text=True, check=True).stdout
    assert str(tmp_path) not in backing
    assert not any((tmp_path / "power").rglob("*.img"))


def test_a_failure_while_frozen_leaves_nothing_behind(tmp_path: Path) -> None:
    """A test that fails with its servers frozen on their disks: closing the strip kills
    them, then unmounts and detaches everything."""
    require_power_cut()
    node = tmp_path / "node"
    server: subprocess.Popen[bytes] | None = None
    with pytest.raises(RuntimeError, match="failed while frozen"):
        with PowerStrip(tmp_path / "power") as strip:
            strip.add_disk("node", node, size_gib=1)
            # Its working directory keeps the disk busy until it is killed.
            server = subprocess.Popen(["sleep", "600"], cwd=node, start_new_session=True)
            strip.freeze([server.pid])
            raise RuntimeError("failed while frozen")
    assert server is not None
    assert server.wait(timeout=30) == -9
    assert str(node) not in Path("/proc/self/mounts").read_text()
    backing = subprocess.run(["losetup", "--list", "--noheadings", "--output", "BACK-FILE"], capture_output=True,
                             text=True, check=True).stdout
    assert str(tmp_path) not in backing


# -- ZooKeeper ------------------------------------------------------------------------------

def zookeeper_power_cut(strip: PowerStrip, workdir: Path, *, extra: tuple[tuple[str, str], ...] = ()) -> Losses:
    """A three-member ensemble from the Pi profile's zoo.cfg (plus ``extra`` lines), each
    member with its two volumes (snapshots, transaction log) on disks of ``strip``; a client
    creates znodes until the cut."""
    if missing := zookeeper_missing():
        pytest.fail(f"missing {', '.join(missing)}")
    pi = ZooKeeperProps.for_profile(PI)
    ensemble = LocalEnsemble(workdir=workdir, profile=PI)
    ensemble.config = dataclasses.replace(ensemble.config, extra=extra)
    with ensemble:
        for myid, proc in ensemble.procs.items():
            strip.add_disk(f"zk-{myid}-data", proc.directory / "data", size_gib=pi.storage_gib)
            strip.add_disk(f"zk-{myid}-datalog", proc.directory / "datalog", size_gib=pi.storage_gib)
        ensemble.start_all()
        ensemble.wait_for_quorum(timeout=RECOVERY_TIMEOUT_S)
        client = ZooKeeperClient(hosts=ensemble.hosts, timeout=10).start()
        client.kazoo.ensure_path("/power-cut")
        # An ensemble running for more than 30 s: the snapshot.0 each member wrote at its first
        # start, without fsync, is on disk. Cut within that time, it is empty afterwards and a
        # member without another snapshot refuses to start (README, ZooKeeper, "Power cut").
        # With forceSync=no the same holds for the header of the transaction log file the
        # first write created.
        strip.settle()
        # A create is acknowledged once a quorum logged it (ZooKeeper Internals, "Atomic broadcast").
        writer = LiveWriter(lambda seq: client.kazoo.create(f"/power-cut/{seq:08d}", b"x")).start()
        time.sleep(WRITE_S)
        strip.freeze(proc.process.pid for proc in ensemble.procs.values() if proc.process is not None)
        acks = writer.stop()
        strip.cut()
        client.close()
        writer.join()
        for myid in ensemble.procs:
            ensemble.kill(myid)  # reaps the processes the cut killed
        ensemble.start_all()
        ensemble.wait_for_quorum(timeout=RECOVERY_TIMEOUT_S)
        with ZooKeeperClient(hosts=ensemble.hosts, timeout=10) as reader:
            reader.kazoo.sync("/power-cut")
            try:
                present = {int(name) for name in reader.kazoo.get_children("/power-cut")}
            except NoNodeError:
                present = set()
    return losses(acks, present, frozen_at=strip.frozen_at or 0.0, started_at=writer.started_at)


def test_zookeeper_loses_no_acknowledged_write(power_strip: PowerStrip, tmp_path: Path) -> None:
    """ZooKeeper fsyncs its transaction log before a member acknowledges a proposal
    (``forceSync=yes``, its default): a write a quorum acknowledged is on a quorum's disks."""
    result = zookeeper_power_cut(power_strip, tmp_path / "zookeeper")
    print(result.summary("ZooKeeper, forceSync=yes (default)"))
    assert result.acknowledged > 0
    assert not result.lost, f"{len(result.lost)} acknowledged znodes lost, e.g. {result.lost[:5]}"


def test_zookeeper_without_fsync_loses_acknowledged_writes(power_strip: PowerStrip, tmp_path: Path) -> None:
    """The harness catches a server that acknowledges before its data is on disk:
    ``forceSync=no`` (a system property zoo.cfg can set, "zookeeper.forceSync")."""
    result = zookeeper_power_cut(power_strip, tmp_path / "zookeeper", extra=(("forceSync", "no"),))
    print(result.summary("ZooKeeper, forceSync=no"))
    assert result.lost, f"all {result.acknowledged} acknowledged writes survived although nothing was fsynced"


# -- Redis ----------------------------------------------------------------------------------

#: Redis fsyncs an ``everysec`` AOF once a second ("you may lose 1 second of data": Redis docs,
#: "Redis persistence"), and while an fsync runs late it holds the next write back for at most
#: 2 s (src/aof.c, flushAppendOnlyFile). The bound adds 1 s for a busy 2-core host.
EVERYSEC_WINDOW_S = 3.0


def redis_power_cut(strip: PowerStrip, workdir: Path, *, appendfsync: str) -> Losses:
    """The Pi profile's primary, two replicas and three Sentinels (``local_options``) with
    ``appendfsync``; every member's data and every Sentinel's state on a disk of ``strip``.
    The application's client writes with ``WAIT 1`` (``set_durable``) until the cut."""
    options = dataclasses.replace(local_options(), appendfsync=appendfsync)
    pi = RedisProps.for_profile(PI)
    cluster = LocalRedisSet(workdir=workdir, options=options, profile=PI)
    for proc in cluster.members:
        strip.add_disk(proc.name, Path(proc.env["REDIS_DATA_DIR"]), size_gib=pi.storage_gib)
    for proc in cluster.sentinels:
        strip.add_disk(proc.name, Path(proc.env["REDIS_SENTINEL_DIR"]), size_gib=SENTINEL_STORAGE_GIB)
    with cluster:
        assert cluster.admin(0).config_get("appendfsync")["appendfsync"] == appendfsync
        strip.settle()
        client = RedisClient(settings=RedisSettings.from_env(cluster.client_env(), secret=lambda key: ""))
        writer = LiveWriter(lambda seq: client.set_durable(f"power-cut:{seq}", "x", replicas=1, timeout_ms=2000)).start()
        time.sleep(WRITE_S)
        strip.freeze(proc.popen.pid for proc in cluster.members + cluster.sentinels if proc.popen is not None)
        acks = writer.stop()
        strip.cut()
        client.close()
        cluster.stop()  # reaps the processes the cut killed
        cluster.spawn_all()
        primary = cluster.member_index(cluster.wait_settled(timeout_s=RECOVERY_TIMEOUT_S))
        values = cluster.admin(primary).mget([f"power-cut:{a.seq}" for a in acks]) if acks else []
        present = {a.seq for a, v in zip(acks, values, strict=True) if v is not None}
        writer.join()
    return losses(acks, present, frozen_at=strip.frozen_at or 0.0, started_at=writer.started_at)


def test_redis_everysec_loses_at_most_the_last_seconds(power_strip: PowerStrip, tmp_path: Path, redis_binaries: None) -> None:
    """The default, ``appendfsync everysec``: writes acknowledged in about the last second
    before the cut may be lost, only those, and never one older than a newer one kept."""
    result = redis_power_cut(power_strip, tmp_path / "redis", appendfsync="everysec")
    print(result.summary("Redis, appendfsync everysec (default)"))
    assert result.acknowledged > 0
    assert result.window_s <= EVERYSEC_WINDOW_S, (
        f"{len(result.lost)} lost writes go back {result.window_s:.1f} s before the cut (limit {EVERYSEC_WINDOW_S} s)")
    assert not result.holes, "a lost write is older than a write that survived"


def test_redis_always_loses_no_acknowledged_write(power_strip: PowerStrip, tmp_path: Path, redis_binaries: None) -> None:
    """``appendfsync always``: the primary fsyncs the AOF before it replies to a write."""
    result = redis_power_cut(power_strip, tmp_path / "redis", appendfsync="always")
    print(result.summary("Redis, appendfsync always"))
    assert result.acknowledged > 0
    assert not result.lost, f"{len(result.lost)} acknowledged writes lost, e.g. {result.lost[:5]}"


# -- PostgreSQL -----------------------------------------------------------------------------

class PsqlSession:
    """One psql session inserting one row per statement (autocommit: each is a commit); a
    row psql prints back is an acknowledged commit."""

    def __init__(self, server: LocalPostgres) -> None:
        self.process = subprocess.Popen(
            [shutil.which("psql") or str(server.bin_dir / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
             "-h", server.host, "-p", str(server.port), "-U", server.user, "-d", "postgres"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PGPASSWORD": server.password},
        )

    def insert(self, seq: int) -> None:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(f"INSERT INTO power_cut VALUES ({seq}) RETURNING seq;\n")
        self.process.stdin.flush()
        answer = self.process.stdout.readline()
        if answer.strip() != str(seq):
            raise RuntimeError(f"psql answered {answer!r} to the insert of {seq}")

    def close(self) -> None:
        self.process.kill()
        self.process.wait(timeout=30)


def postgres_power_cut(strip: PowerStrip, **changes: str) -> Losses:
    """The Pi profile's server settings (with ``changes``), its data directory inside a disk
    of ``strip`` as in the chart (PGDATA a directory of the volume); a psql session commits
    one row per statement until the cut."""
    pi = PostgresProps.for_profile(PI)
    # The server runs as nobody when the tests run as root: its volume must be reachable by
    # it, which pytest's private temporary directories are not.
    volume = Path(tempfile.mkdtemp(prefix="final-problem-postgres-volume-"))
    try:
        volume.chmod(0o755)
        strip.add_disk("postgres", volume, size_gib=pi.storage_gib)
        try:
            server = LocalPostgres(profile=PI, data_dir=volume / "pgdata", overrides=changes)
            return _postgres_power_cut(strip, server, changes)
        finally:
            strip.remove_disk("postgres")
    finally:
        volume.rmdir()


def _postgres_power_cut(strip: PowerStrip, server: LocalPostgres, changes: dict[str, str]) -> Losses:
    with server:
        for key, value in changes.items():
            assert server.query(f"SHOW {key}")[0][0] == value
        server.psql("CREATE TABLE power_cut (seq int PRIMARY KEY)")
        strip.settle()
        session = PsqlSession(server)
        try:
            writer = LiveWriter(session.insert).start()
            time.sleep(WRITE_S)
            assert server.process is not None
            strip.freeze([server.process.pid])
            acks = writer.stop()
            strip.cut()
        finally:
            session.close()
        writer.join()
        server.kill()  # reaps the postmaster the cut killed
        server.start(timeout_s=RECOVERY_TIMEOUT_S)  # crash recovery replays the WAL on disk
        present = {int(row[0]) for row in server.query("SELECT seq FROM power_cut")}
    return losses(acks, present, frozen_at=strip.frozen_at or 0.0, started_at=writer.started_at)


def test_postgres_loses_no_committed_row(power_strip: PowerStrip) -> None:
    """A commit returns once its WAL is flushed to disk (``synchronous_commit=on``, ``fsync=on``,
    rendered explicitly): every acknowledged commit survives."""
    result = postgres_power_cut(power_strip)
    print(result.summary("PostgreSQL, synchronous_commit=on (default)"))
    assert result.acknowledged > 0
    assert not result.lost, f"{len(result.lost)} committed rows lost, e.g. {result.lost[:5]}"


def test_postgres_asynchronous_commit_loses_committed_rows(power_strip: PowerStrip) -> None:
    """Commits acknowledged before their WAL is on disk are lost: ``synchronous_commit=off``
    may lose up to three times ``wal_writer_delay`` (200 ms) of commits (PostgreSQL docs,
    "Asynchronous Commit"). Most of them are still in the server's WAL buffers, which a
    kill -9 loses too; ``fsync=off`` below is the case only a power cut shows."""
    result = postgres_power_cut(power_strip, synchronous_commit="off")
    print(result.summary("PostgreSQL, synchronous_commit=off"))
    assert result.lost, f"all {result.acknowledged} commits survived although none waited for its WAL flush"


def test_postgres_without_fsync_loses_committed_rows(power_strip: PowerStrip) -> None:
    """``fsync=off``: commits write their WAL to the kernel but never force it to disk. A
    kill -9 keeps such writes (the page cache survives it); this cut loses them."""
    result = postgres_power_cut(power_strip, fsync="off")
    print(result.summary("PostgreSQL, fsync=off"))
    assert result.lost, f"all {result.acknowledged} commits survived although nothing was fsynced"


def test_postgres_without_fsync_keeps_commits_through_a_kill_9() -> None:
    """The contrast: with ``fsync=off`` a kill -9 of every server process loses nothing
    (the page cache survives it), so only the harness shows what a power cut loses."""
    with LocalPostgres(profile=PI, overrides={"fsync": "off"}) as server:
        server.psql("CREATE TABLE t (v int)")
        for i in range(100):
            server.psql(f"INSERT INTO t VALUES ({i})")
        server.kill()
        server.start(timeout_s=RECOVERY_TIMEOUT_S)
        assert server.query("SELECT count(*) FROM t") == [["100"]]
