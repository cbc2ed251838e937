"""Run the platform's servers on one host from the configuration the charts render.

Integration tests and benchmarks use these launchers, so the configuration they
exercise is the one that is deployed, with only ports and paths remapped.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from typing import Callable, TypeVar

LOOPBACK = "127.0.0.1"
T = TypeVar("T")


def free_ports(count: int, host: str = LOOPBACK) -> list[int]:
    """``count`` distinct ports free on ``host`` now (held open together so none repeats)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


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
