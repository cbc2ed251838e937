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
import time
from pathlib import Path

import pytest
from kazoo.exceptions import NoNodeError

from final_problem.charts.zookeeper import ZooKeeperProps
from final_problem.clients.zookeeper import ZooKeeperClient
from final_problem.local.powercut import LiveWriter, Losses, PowerStrip, losses
from final_problem.local.zookeeper import LocalEnsemble
from final_problem.profiles import PI

pytestmark = pytest.mark.integration

#: Seconds the client writes before the cut: longer than one ext4 journal commit (5 s), so
#: the disks hold committed and uncommitted data alike, short enough for the suite.
WRITE_S = 6
#: Seconds for servers to answer again after the cut (JVM start on a busy host included).
RECOVERY_TIMEOUT_S = 90


# -- ZooKeeper ------------------------------------------------------------------------------

def zookeeper_power_cut(strip: PowerStrip, workdir: Path, *, extra: tuple[tuple[str, str], ...] = ()) -> Losses:
    """A three-member ensemble from the Pi profile's zoo.cfg (plus ``extra`` lines), each
    member with its two volumes (snapshots, transaction log) on disks of ``strip``; a client
    creates znodes until the cut."""
    pi = ZooKeeperProps.for_profile(PI)
    ensemble = LocalEnsemble(workdir=workdir, heap_mib=pi.effective_heap_mib)
    ensemble.config = dataclasses.replace(ensemble.config, extra=extra)
    with ensemble:
        for myid, proc in ensemble.procs.items():
            strip.add_disk(f"zk-{myid}-data", proc.directory / "data", size_gib=pi.storage_gib)
            strip.add_disk(f"zk-{myid}-datalog", proc.directory / "datalog", size_gib=pi.storage_gib)
        ensemble.start_all()
        ensemble.wait_for_quorum(timeout=RECOVERY_TIMEOUT_S)
        client = ZooKeeperClient(hosts=ensemble.hosts, timeout=10).start()
        client.kazoo.ensure_path("/power-cut")
        # An ensemble running for more than 30 s: its first snapshot, written without fsync,
        # is on disk. Cut within that time, a follower finds log entries without a snapshot
        # and refuses to start (README, ZooKeeper, "Power cut"). With forceSync=no the same
        # holds for the header of the transaction log file the first write created.
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
