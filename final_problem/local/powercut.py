"""Cut the power of servers started here: whatever they had not synced to disk is lost.

A ``kill -9`` keeps the page cache: a write the server handed to the kernel survives it
even if it was never fsynced, so it cannot show what a power cut of the Raspberry Pis
loses. This harness can. Each node's data directory is its own disk:

- the outer store is a sparse file, on a loop device, formatted XFS with reflink
  (``mkfs.xfs -m reflink=1``), mounted in a temporary directory;
- each node's disk is a sparse image file on that XFS, on a loop device, formatted ext4
  and mounted with ext4's default options, as a Pi's SD card is: journal commit every 5 s
  (``commit=5``), delayed allocation (``delalloc``), ``data=ordered``. Data written without
  ``fsync`` sits in the ext4 page cache until the kernel's flusher writes it back, once it
  is older than ``vm.dirty_expire_centisecs`` (3000, 30 s, by default: mm/page-writeback.c);
  a new file's name reaches the disk with the next journal commit (Linux docs:
  Documentation/admin-guide/ext4.rst, mount options ``commit=nrsec``, "The default value is
  5 seconds", and ``delalloc``; Documentation/admin-guide/sysctl/vm.rst,
  ``dirty_expire_centisecs`` and ``dirty_writeback_centisecs``).

The cut (:meth:`PowerStrip.freeze`, then :meth:`PowerStrip.cut`):

1. every process of the servers' process groups is stopped (SIGSTOP), and the harness
   waits until each of their threads is stopped: from then on no server sends anything,
   so every acknowledgement a client holds was sent before the cut;
2. the caller stops its client and records what was acknowledged;
3. every disk image is cloned with the ``FICLONE`` ioctl: the clone shares the image's
   storage, and a later write to either stays private to it (ioctl_ficlone(2); XFS
   supports it when made with ``reflink=1``, mkfs.xfs(8)). The kernel writes the image's
   own dirty pages first and clones under the file's locks (``generic_remap_file_range_prep``,
   fs/remap_range.c): the clone holds exactly the writes the loop device had completed,
   and none of the ext4 page cache above it;
4. the servers are killed (SIGKILL) and their old disks unmounted and thrown away;
5. each clone is mounted where its node's data lives (ext4 replays its journal), and
   the caller restarts the servers from it.

The disks are cloned one after the other, within milliseconds, while every server is
stopped; the kernel's flusher may still write back during those milliseconds, which can
only make a disk a little more complete, as if that node lost power a moment later.

Kafka, or any other server, uses it like ZooKeeper does here: one
:meth:`PowerStrip.add_disk` per data directory before the servers first start, their
process-group ids (every launcher here starts servers with ``start_new_session``) to
:meth:`PowerStrip.freeze`, then :meth:`PowerStrip.cut`, then start the servers again.
:class:`LiveWriter` is a client loop that counts acknowledged writes, and
:func:`losses` compares them with what survived.

Needs root, ``losetup``/``mount``/``umount`` (util-linux, mount), ``mkfs.xfs``
(xfsprogs) and ``mkfs.ext4`` (e2fsprogs), and the kernel's loop, XFS and ext4 drivers.
Every mount, loop device and file it makes is removed by :meth:`PowerStrip.close`
(also on ``with`` exit), whatever failed before.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Collection, Iterable, Sequence

#: ``FICLONE``: ``_IOW(0x94, 9, int)`` (linux/fs.h; ioctl_ficlone(2)).
FICLONE = 0x40049409
#: Tools the harness runs, each with the Debian package that provides it.
TOOLS = {"losetup": "mount", "mount": "mount", "umount": "mount", "mkfs.xfs": "xfsprogs", "mkfs.ext4": "e2fsprogs"}
#: Where they live when a non-login PATH lacks the sbin directories.
SBIN: tuple[str, ...] = ("/usr/sbin", "/sbin")


class PowerCutError(RuntimeError):
    """A disk could not be made, cloned or mounted, or a server would not stop."""


def missing() -> list[str]:
    """What this host lacks to run the harness, one item each (empty when ready)."""
    problems = []
    if os.geteuid() != 0:
        problems.append("root (loop devices and mounts)")
    for tool, package in TOOLS.items():
        if shutil.which(tool) is None and not any(Path(directory, tool).exists() for directory in SBIN):
            problems.append(f"{tool} (Debian package {package})")
    if not Path("/dev/loop-control").exists():
        problems.append("/dev/loop-control (the kernel's loop driver: modprobe loop)")
    return problems


def _env() -> dict[str, str]:
    return {**os.environ, "PATH": os.pathsep.join([os.environ.get("PATH", ""), *SBIN])}


def _run(*argv: str) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=_env())
    if result.returncode != 0:
        raise PowerCutError(f"{' '.join(argv)} failed ({result.returncode}): {(result.stderr or result.stdout).strip()}")
    return result.stdout.strip()


def _attach(image: Path) -> str:
    """Attach ``image`` to a free loop device; return the device."""
    return _run("losetup", "--find", "--show", str(image))


def _detach(device: str) -> None:
    _run("losetup", "-d", device)


def _unmount(mountpoint: Path, *, timeout_s: float = 10.0) -> None:
    """Unmount ``mountpoint``, retrying while it is busy (a killed process still exiting);
    in the end lazily, so no mount is ever left behind."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = subprocess.run(["umount", str(mountpoint)], capture_output=True, text=True, timeout=120, env=_env())
        if result.returncode == 0:
            return
        if time.monotonic() >= deadline:
            _run("umount", "--lazy", str(mountpoint))
            raise PowerCutError(f"{mountpoint} stayed busy ({result.stderr.strip()}); unmounted lazily")
        time.sleep(0.1)


def _stat_fields(pid: int, task: int | None = None) -> list[str] | None:
    """Fields of /proc/<pid>[/task/<tid>]/stat after the command name: [state, ppid, pgrp, ...]."""
    path = f"/proc/{pid}/stat" if task is None else f"/proc/{pid}/task/{task}/stat"
    try:
        text = Path(path).read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return text[text.rindex(")") + 2:].split()


def group_members(pgid: int) -> list[int]:
    """Every process whose process group is ``pgid``."""
    members = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None and int(fields[2]) == pgid:
                members.append(int(entry.name))
    return members


def _threads_not_in(pid: int, states: str) -> list[int]:
    """Threads of ``pid`` whose state is not one of ``states``."""
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except (FileNotFoundError, ProcessLookupError):
        return []
    pending = []
    for tid in tids:
        fields = _stat_fields(pid, tid)
        if fields is not None and fields[0] not in states:
            pending.append(tid)
    return pending


@dataclass
class Disk:
    """One node's disk: an ext4 image on the XFS store, mounted at ``mountpoint``."""

    name: str
    mountpoint: Path
    image: Path
    device: str | None = None
    #: Power cuts this disk went through.
    cuts: int = 0


@dataclass(frozen=True)
class Ack:
    """One acknowledged write: its sequence number and when the client saw the acknowledgement
    (``time.monotonic()``)."""

    seq: int
    at: float


class PowerStrip:
    """Disks of servers that lose power together, and the cut itself.

    ``workdir`` holds the XFS store's image and mount point. ``capacity_gib`` is the
    store's size; it is sparse, and clones share extents, so only data written takes space.
    """

    def __init__(self, workdir: Path, *, capacity_gib: int = 64) -> None:
        self.workdir = workdir
        self.capacity_gib = capacity_gib
        self.store: Path | None = None
        self._store_device: str | None = None
        self.disks: dict[str, Disk] = {}
        self._frozen: list[int] = []
        #: When the servers were stopped (``time.monotonic()``), for :func:`losses`.
        self.frozen_at: float | None = None

    # -- lifecycle ---------------------------------------------------------------------

    def __enter__(self) -> "PowerStrip":
        try:
            self.open()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        """Make and mount the XFS store."""
        problems = missing()
        if problems:
            raise PowerCutError(f"the power-cut harness needs {', '.join(problems)}")
        self.workdir.mkdir(parents=True, exist_ok=True)
        image = self.workdir / "store.img"
        with image.open("wb") as f:
            f.truncate(self.capacity_gib << 30)
        _run("mkfs.xfs", "-q", "-f", "-m", "reflink=1", str(image))
        self.store = Path(tempfile.mkdtemp(prefix="store-", dir=self.workdir))
        self._store_device = _attach(image)
        _run("mount", "-t", "xfs", self._store_device, str(self.store))

    def close(self) -> None:
        """Kill what is still frozen, unmount every disk and the store, detach every loop
        device, remove every file; report the first failure after trying everything."""
        errors: list[str] = []

        def attempt(step: Callable[[], None]) -> None:
            try:
                step()
            except Exception as e:  # noqa: BLE001 - every step runs; the first error is raised below
                errors.append(str(e))
        attempt(self._kill_frozen)
        for disk in self.disks.values():
            attempt(lambda disk=disk: self._unmount_disk(disk))
        self.disks.clear()
        if self.store is not None and os.path.ismount(self.store):
            attempt(lambda: _unmount(self.store))  # type: ignore[arg-type]
        if self._store_device is not None:
            attempt(lambda: _detach(self._store_device))  # type: ignore[arg-type]
            self._store_device = None
        if self.store is not None:
            attempt(lambda: self.store.rmdir())  # type: ignore[union-attr]
            self.store = None
        attempt(lambda: (self.workdir / "store.img").unlink(missing_ok=True))
        if errors:
            raise PowerCutError("; ".join(errors))

    def _unmount_disk(self, disk: Disk) -> None:
        if disk.device is None:
            return
        try:
            if os.path.ismount(disk.mountpoint):
                _unmount(disk.mountpoint)
        finally:
            _detach(disk.device)
            disk.device = None

    # -- disks -------------------------------------------------------------------------

    def add_disk(self, name: str, mountpoint: Path, *, size_gib: int = 2, owner: tuple[int, int] | None = None) -> Disk:
        """A new ext4 disk of ``size_gib`` (sparse) mounted at ``mountpoint`` (created when
        missing, and must be empty), its root owned by ``owner`` (uid, gid) when given.
        It holds a ``lost+found`` directory, as any ext4 volume does."""
        if self.store is None:
            raise PowerCutError("the store is not open: use PowerStrip as a context manager")
        if name in self.disks:
            raise PowerCutError(f"disk {name!r} exists already")
        mountpoint.mkdir(parents=True, exist_ok=True)
        if any(mountpoint.iterdir()):
            raise PowerCutError(f"{mountpoint} is not empty: a disk is mounted on an empty directory")
        image = self.store / f"{name}.0.img"
        with image.open("wb") as f:
            f.truncate(size_gib << 30)
        # Inode tables and journal written now, not by ext4's background lazy init later.
        _run("mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", "-L", name[:16], str(image))
        disk = Disk(name=name, mountpoint=mountpoint, image=image)
        self.disks[name] = disk
        self._mount(disk)
        if owner is not None:
            os.chown(mountpoint, *owner)
        return disk

    def remove_disk(self, name: str) -> None:
        """Unmount disk ``name`` and delete its image (nothing may use it any more)."""
        disk = self.disks.pop(name)
        self._unmount_disk(disk)
        disk.image.unlink(missing_ok=True)

    def _mount(self, disk: Disk) -> None:
        disk.device = _attach(disk.image)
        # ext4's defaults (commit=5, delalloc, data=ordered), as a Pi mounts its card.
        _run("mount", "-t", "ext4", disk.device, str(disk.mountpoint))

    def settle(self) -> None:
        """Write every disk's page cache back (``sync --file-system``), as the kernel does
        by itself within ``vm.dirty_expire_centisecs`` (30 s) of a write: the state of
        servers that have been running for a while, not only since a few seconds."""
        for disk in self.disks.values():
            _run("sync", "--file-system", str(disk.mountpoint))

    # -- the cut ---------------------------------------------------------------------------

    def freeze(self, groups: Iterable[int], *, timeout_s: float = 10.0) -> None:
        """Stop every process of the process groups ``groups`` (SIGSTOP) and wait until each
        of their threads is stopped. Record the moment in :attr:`frozen_at`."""
        pgids = list(dict.fromkeys(groups))
        if not pgids:
            raise PowerCutError("no process group to freeze")
        self.frozen_at = time.monotonic()
        for pgid in pgids:
            try:
                os.killpg(pgid, signal.SIGSTOP)
            except ProcessLookupError:
                raise PowerCutError(f"process group {pgid} does not exist: is the server running?") from None
            self._frozen.append(pgid)
        deadline = time.monotonic() + timeout_s
        while True:
            # A thread in a system call stops when it returns from it (an fsync completes).
            running = [(pid, tids) for pgid in pgids for pid in group_members(pgid)
                       if (tids := _threads_not_in(pid, "TtZX"))]
            if not running:
                return
            if time.monotonic() >= deadline:
                raise PowerCutError(f"processes did not stop within {timeout_s:.0f} s: {running[:5]}")
            time.sleep(0.01)

    def cut(self, *, timeout_s: float = 30.0) -> None:
        """The power goes: clone every disk as its loop device holds it, kill the frozen
        servers, throw the old disks away and mount each clone in its place."""
        if not self._frozen:
            raise PowerCutError("freeze() the servers before the cut: a running server would still write")
        clones: dict[str, Path] = {}
        try:
            for disk in self.disks.values():
                clone = disk.image.with_name(f"{disk.name}.{disk.cuts + 1}.img")
                with disk.image.open("rb") as src, clone.open("wb") as dst:
                    fcntl.ioctl(dst.fileno(), FICLONE, src.fileno())
                clones[disk.name] = clone
        except OSError as e:
            for clone in clones.values():
                clone.unlink(missing_ok=True)
            hint = " (the store must be XFS with reflink=1)" if e.errno in (errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL) else ""
            raise PowerCutError(f"FICLONE failed: {e}{hint}") from e
        self._kill_frozen(timeout_s=timeout_s)
        for disk in self.disks.values():
            self._unmount_disk(disk)
            disk.image.unlink()
            disk.image = clones[disk.name]
            disk.cuts += 1
            self._mount(disk)

    def _kill_frozen(self, *, timeout_s: float = 30.0) -> None:
        """SIGKILL every frozen group and wait until none of its processes holds a file
        (gone, or a zombie its parent has not reaped yet)."""
        pgids, self._frozen = self._frozen, []
        for pgid in pgids:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout_s
        while True:
            alive = [pid for pgid in pgids for pid in group_members(pgid) if _threads_not_in(pid, "ZX")]
            if not alive:
                return
            if time.monotonic() >= deadline:
                raise PowerCutError(f"processes {alive[:5]} did not exit within {timeout_s:.0f} s of SIGKILL")
            time.sleep(0.01)


class LiveWriter:
    """A client writing in a loop in a thread: ``write(seq)`` for seq 0, 1, 2, ...; each
    call that returns is an acknowledged write, recorded with the time it returned.

    :meth:`stop` (call it once the servers are frozen) returns the acknowledged writes; a
    write the client was still waiting for is not among them. An error before the stop
    fails the run: :meth:`stop` raises it, unless it is one of ``retry_on`` (a client riding
    out a restart): then the same ``seq`` is written again after ``retry_s``, and
    ``write(seq)`` must make a retry of a write that did land harmless (an insert that
    ignores a duplicate key, a create that takes "exists" as done).
    """

    def __init__(self, write: Callable[[int], object], *, name: str = "writer",
                 retry_on: tuple[type[BaseException], ...] = (), retry_s: float = 0.05) -> None:
        self._write = write
        self._retry_on, self._retry_s = retry_on, retry_s
        #: Failed attempts that were retried, by exception type name.
        self.retried: dict[str, int] = {}
        self._acks: list[Ack] = []
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._error: BaseException | None = None
        self.started_at = 0.0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> "LiveWriter":
        self.started_at = time.monotonic()
        self._thread.start()
        return self

    def _run(self) -> None:
        seq = 0
        while not self._stopped.is_set():
            try:
                self._write(seq)
            except self._retry_on as e:
                with self._lock:
                    self.retried[type(e).__name__] = self.retried.get(type(e).__name__, 0) + 1
                self._stopped.wait(self._retry_s)
                continue
            except BaseException as e:  # noqa: BLE001 - reported by stop()
                with self._lock:
                    if not self._stopped.is_set():
                        self._error = e
                return
            with self._lock:
                if self._stopped.is_set():
                    return
                self._acks.append(Ack(seq, time.monotonic()))
            seq += 1

    @property
    def acknowledged(self) -> int:
        with self._lock:
            return len(self._acks)

    def wait_for(self, count: int, *, timeout_s: float) -> None:
        """Wait until ``count`` writes are acknowledged."""
        deadline = time.monotonic() + timeout_s
        while self.acknowledged < count:
            self._raise_error()
            if time.monotonic() >= deadline:
                raise PowerCutError(f"{self.acknowledged} of {count} writes acknowledged after {timeout_s:.0f} s")
            time.sleep(0.05)

    def _raise_error(self) -> None:
        with self._lock:
            error = self._error
        if error is not None:
            raise PowerCutError(f"the client failed before the cut: {type(error).__name__}: {error}") from error

    def stop(self) -> list[Ack]:
        """Stop writing; the writes acknowledged so far, in order."""
        with self._lock:
            self._stopped.set()
            acks = list(self._acks)
        self._raise_error()
        return acks

    def join(self, timeout_s: float = 30.0) -> None:
        """Wait for the thread (its last write fails or returns once the servers are gone)."""
        self._thread.join(timeout_s)

    def longest_gap_s(self, since: float | None = None, until: float | None = None) -> float:
        """The longest time without an acknowledgement between ``since`` (default: the start)
        and ``until`` (default: now), monotonic times: the client's longest write outage."""
        since = self.started_at if since is None else since
        until = time.monotonic() if until is None else until
        with self._lock:
            times = [since, *(a.at for a in self._acks if since < a.at < until), until]
        return max(b - a for a, b in zip(times, times[1:], strict=False))


@dataclass(frozen=True)
class Losses:
    """What a power cut cost: acknowledged writes, those missing afterwards, and the window."""

    acknowledged: int
    lost: tuple[int, ...]
    #: Seconds from the first lost write's acknowledgement to the cut (0 when none was lost).
    window_s: float
    #: Acknowledged writes per second while the client ran.
    writes_per_s: float
    #: The lost writes are not the newest ones: an older write is missing while a newer
    #: one survived (a log replayed with a hole would show this).
    holes: bool = field(default=False)

    def summary(self, what: str) -> str:
        return (f"{what}: {self.acknowledged} acknowledged writes ({self.writes_per_s:.0f}/s), "
                f"{len(self.lost)} lost, window {self.window_s * 1000:.0f} ms")


def losses(acks: Sequence[Ack], present: Collection[int], *, frozen_at: float, started_at: float) -> Losses:
    """Compare the acknowledged writes ``acks`` with the sequence numbers ``present`` after
    the cut."""
    lost_acks = [a for a in acks if a.seq not in present]
    lost = tuple(a.seq for a in lost_acks)
    # Acknowledgements arrive in order: the first lost one opens the window.
    window = frozen_at - lost_acks[0].at if lost_acks else 0.0
    duration = (acks[-1].at - started_at) if acks else 0.0
    holes = bool(lost) and any(a.seq > lost[0] and a.seq in present for a in acks)
    return Losses(acknowledged=len(acks), lost=lost, window_s=max(window, 0.0),
                  writes_per_s=len(acks) / duration if duration > 0 else 0.0, holes=holes)
