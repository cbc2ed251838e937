"""Run the platform's servers on one host from the configuration the charts render.

Integration tests and benchmarks use these launchers, so the configuration they
exercise is the one that is deployed, with only ports and paths remapped.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable, Iterable, TypeVar

LOOPBACK = "127.0.0.1"
T = TypeVar("T")


#: Ports servers started here listen on: below Linux's default ephemeral range (32768-60999,
#: net.ipv4.ip_local_port_range), so no client's outgoing connection can take one between
#: the moment it is picked and the moment its server binds it.
SERVER_PORTS = range(10_000, 32_768)
_next_port: int | None = None


def _port_block() -> range:
    """This process's share of :data:`SERVER_PORTS`: each pytest-xdist worker gets its own
    block, so parallel workers never pick the same port."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
    if worker.startswith("gw") and worker[2:].isdigit() and workers > 0:
        size = len(SERVER_PORTS) // workers
        start = SERVER_PORTS.start + int(worker[2:]) * size
        return range(start, start + size)
    return SERVER_PORTS


def free_ports(count: int, host: str = LOOPBACK) -> list[int]:
    """``count`` distinct ports free on ``host`` now, from this process's block of
    :data:`SERVER_PORTS`, handed out in turn (a port is not handed out again until the block
    wraps around), each checked free by binding it."""
    global _next_port
    block = _port_block()
    if _next_port is None or _next_port not in block:
        # Start at a random place so separate runs (and processes outside pytest) spread out.
        _next_port = block.start + (os.getpid() * 7919) % len(block)
    ports: list[int] = []
    tried = 0
    while len(ports) < count:
        if tried > len(block):
            raise OSError(f"no {count} free ports in {block.start}-{block.stop - 1} on {host}")
        port = _next_port
        _next_port = block.start + (_next_port + 1 - block.start) % len(block)
        tried += 1
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        ports.append(port)
    return ports


def kill_group(process: subprocess.Popen[bytes], *, timeout_s: float = 30.0, reap: bool = True) -> None:
    """SIGKILL ``process`` and its session (started with ``start_new_session``), then reap it
    unless ``reap`` is false: a crash, not a clean shutdown."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if reap:
        process.wait(timeout=timeout_s)


def wait_for(
    what: str,
    check: Callable[[], T | None],
    *,
    timeout_s: float,
    interval_s: float = 0.1,
    retry_on: tuple[type[BaseException], ...] = (),
    error: type[Exception] = TimeoutError,
) -> T:
    """Poll ``check`` until it returns a truthy value; raise ``error`` after ``timeout_s``.

    Exceptions of the ``retry_on`` types count as "not yet" (a server still starting).
    """
    deadline = time.monotonic() + timeout_s
    last_error: BaseException | None = None
    while True:
        try:
            value = check()
            if value:
                return value
        except retry_on as e:
            last_error = e
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error})" if last_error else ""
            raise error(f"timed out after {timeout_s:.0f} s waiting for {what}{detail}")
        time.sleep(interval_s)


#: A stop-the-world pause in a JVM's unified GC log (``-Xlog:gc``): "... Pause Young (Normal)
#: (G1 Evacuation Pause) 23M->5M(224M) 3.456ms".
_GC_PAUSE = re.compile(r"\bPause .*? (\d+(?:\.\d+)?)ms$")


def gc_log_flag(directory: Path) -> str:
    """The JVM option writing a GC log per process (``%p``: a restart keeps the last one's)
    into ``directory``: pause figures for tests and benchmarks, nothing else changes."""
    return f"-Xlog:gc:file={directory / 'gc-%p.log'}:uptime"


def gc_pauses_ms(directories: Iterable[Path]) -> list[float]:
    """Every stop-the-world pause, in ms, in the GC logs :func:`gc_log_flag` wrote there."""
    pauses: list[float] = []
    for directory in directories:
        for path in directory.glob("gc-*.log"):
            for line in path.read_text(errors="replace").splitlines():
                m = _GC_PAUSE.search(line)
                if m:
                    pauses.append(float(m.group(1)))
    return pauses


#: The heap after a collection in a unified GC log line: "... 23M->5M(224M) 3.456ms".
_GC_AFTER = re.compile(r"\bPause .*?\d+M->(\d+)M\(\d+M\)")


def gc_heap_after_mib(directories: Iterable[Path]) -> list[int]:
    """The heap left after each collection, in MiB, in the GC logs :func:`gc_log_flag` wrote
    there: the live data plus what survived young (the largest is what a heap must hold)."""
    found: list[int] = []
    for directory in directories:
        for path in directory.glob("gc-*.log"):
            found += [int(m.group(1)) for m in map(_GC_AFTER.search, path.read_text(errors="replace").splitlines()) if m]
    return found


#: The JVM option that lets :func:`jvm_memory` read direct (NIO) buffer memory: Native Memory
#: Tracking at summary level costs a few per cent of CPU and a little memory (JDK 17 docs,
#: "Native Memory Tracking"), so only measurement runs pass it.
NMT_FLAG = "-XX:NativeMemoryTracking=summary"


def jvm_memory(pid: int) -> dict[str, float]:
    """A running JVM's memory in MiB, from ``jcmd`` (JDK 17): heap used and committed and
    metaspace used (``GC.heap_info``), and with :data:`NMT_FLAG` the committed memory of the
    NMT categories "Other" (direct byte buffers), "Thread" (stacks) and "Code" (JIT)."""
    import shutil

    jcmd = shutil.which("jcmd") or "jcmd"
    found: dict[str, float] = {}
    heap = subprocess.run([jcmd, str(pid), "GC.heap_info"], capture_output=True, text=True, timeout=60).stdout
    # G1: " garbage-first heap   total 262144K, used 80512K"; Serial: " def new generation
    # total ..., used ..." and " tenured generation total ..., used ...".
    totals = re.findall(r"(?:heap|generation)\s+total (\d+)K, used (\d+)K", heap)
    if totals:
        found["heap committed"] = sum(int(t) for t, _ in totals) / 1024
        found["heap used"] = sum(int(u) for _, u in totals) / 1024
    meta = re.search(r"Metaspace\s+used (\d+)K", heap)
    if meta:
        found["metaspace used"] = int(meta.group(1)) / 1024
    nmt = subprocess.run([jcmd, str(pid), "VM.native_memory", "summary", "scale=KB"], capture_output=True, text=True,
                         timeout=60).stdout
    for category, key in (("Other", "direct"), ("Thread", "threads"), ("Code", "code")):
        m = re.search(rf"-\s+{category} \(reserved=\d+KB, committed=(\d+)KB\)", nmt)
        if m:
            found[key] = int(m.group(1)) / 1024
    return found


def server_cache() -> Path:
    """``${XDG_CACHE_HOME:-~/.cache}/final-problem``: the servers built or fetched once, keyed
    by version (the Makefile's SERVER_CACHE)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")) / "final-problem"


def write_config_map(config_map: dict, directory: Path, *, keep_existing: bool = False) -> list[Path]:
    """The files a ConfigMap's volume holds (``data`` as text, ``binaryData`` decoded), written
    read-only into ``directory`` as the kubelet mounts them; with ``keep_existing`` a file already
    there is left as it is. Returns the files written."""
    import base64

    files = {name: text.encode() for name, text in (config_map.get("data") or {}).items()}
    files.update({name: base64.b64decode(value) for name, value in (config_map.get("binaryData") or {}).items()})
    written = []
    for name, content in files.items():
        path = directory / name
        if keep_existing and path.exists():
            continue
        path.write_bytes(content)
        path.chmod(0o444)
        written.append(path)
    return written
