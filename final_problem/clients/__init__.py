"""Python clients that talk to the running platform from any node.

What they share: the error a command line reports in one line (:class:`ClientError` and its
kinds), the connect/request timeout a command waits at most (:data:`DEFAULT_TIMEOUT_S`,
``--timeout``, ``FINAL_PROBLEM_TIMEOUT``) and the Secret reader.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import subprocess
from typing import Any, Callable, Coroutine, Mapping, TypeVar

#: Seconds a command waits for a connection or for one request before it gives up. A
#: server on the LAN, a port-forward or an EKS endpoint answers a connect in milliseconds
#: and a request in well under a second; 5 s leaves room for a loaded node or a JVM's first
#: request and still answers a refused or blackholed address before a user wonders whether
#: it hangs. kazoo's and this package's ZooKeeper client already waited 5 s per request.
DEFAULT_TIMEOUT_S = 5.0
#: The timeout ``final-problem --timeout`` hands a client command it runs.
TIMEOUT_ENV = "FINAL_PROBLEM_TIMEOUT"

T = TypeVar("T")


class ClientError(RuntimeError):
    """A client command cannot do what it was asked; the message is one line saying why
    and what to do. ``status`` is the command's exit status."""

    status = 1


class MissingSetting(ClientError):
    """Something to set is missing: an address, a password, a kubeconfig."""

    status = 2


class Unreachable(ClientError):
    """A server did not answer within the timeout, refused the connection, or is not serving."""

    status = 3


def timeout_from_env(env: Mapping[str, str] | None = None) -> float:
    """The timeout ``final-problem --timeout`` set, else :data:`DEFAULT_TIMEOUT_S`."""
    value = (os.environ if env is None else env).get(TIMEOUT_ENV)
    return seconds(value) if value else DEFAULT_TIMEOUT_S


def seconds(text: str) -> float:
    """A positive number of seconds (argparse ``type``)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: give a positive number of seconds")
    return value


def add_timeout(parser: argparse.ArgumentParser, *, default: float | str | None = None) -> None:
    """``--timeout SECONDS`` on ``parser`` (default: ``FINAL_PROBLEM_TIMEOUT``, else 5 s)."""
    parser.add_argument(
        "--timeout", type=seconds, metavar="SECONDS",
        default=timeout_from_env() if default is None else default,
        help=f"seconds to wait for a connection or a request (default: ${TIMEOUT_ENV}, else {DEFAULT_TIMEOUT_S:g})",
    )


#: An object's repr inside a library's message: ``<redis.client.Redis(<...>)>``,
#: ``<foo.Bar object at 0x7f...>``. What follows it is more of the same.
_REPR = re.compile(r"\s*[:(]?\s*<[A-Za-z_][\w.]*[\s(].*$", re.DOTALL)


def short(error: BaseException, limit: int = 300) -> str:
    """``error`` as one short line: its first line, without object reprs, at most ``limit`` characters."""
    text = _REPR.sub("", str(error)).strip()
    text = " ".join((text.splitlines() or [""])[0].split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def read_secret(*, namespace: str, name: str, key: str, timeout_s: float | None = None) -> str:
    """One key of a Secret generated in the cluster, through ``kubectl`` (the caller's
    kubeconfig: ``KUBECONFIG`` or ``final-problem --kubeconfig``). Raises :class:`MissingSetting`
    saying why it could not be read."""
    timeout_s = timeout_from_env() if timeout_s is None else timeout_s
    argv = ["kubectl", f"--request-timeout={timeout_s:g}s", "get", "secret", name, "-n", namespace, "-o", "json"]
    where = f"Secret {namespace}/{name}"
    try:
        # kubectl's own start-up and its discovery calls add to the request: twice the timeout.
        out = subprocess.run(argv, check=True, capture_output=True, text=True, timeout=2 * timeout_s + 5).stdout
    except FileNotFoundError:
        raise MissingSetting(f"{where} unreadable: kubectl is not installed") from None
    except subprocess.TimeoutExpired:
        raise MissingSetting(f"{where} unreadable: kubectl got no answer within {2 * timeout_s + 5:g} s") from None
    except subprocess.CalledProcessError as e:
        reason = (e.stderr.strip().splitlines() or ["no output"])[-1]
        raise MissingSetting(f"{where} unreadable: {short(RuntimeError(reason), 200)}") from None
    try:
        return base64.b64decode(json.loads(out)["data"][key]).decode()
    except (KeyError, ValueError):
        raise MissingSetting(f"{where} has no key {key!r}") from None


def password(env: Mapping[str, str], variable: str, secret: Callable[[str], str], key: str) -> str:
    """``env[variable]``, else ``secret(key)``; when neither gives one, :class:`MissingSetting`
    saying to set the variable or give a kubeconfig."""
    if value := env.get(variable):
        return value
    try:
        return secret(key)
    except ClientError as e:
        raise MissingSetting(f"no {variable}: set {variable} or give --kubeconfig of the cluster ({e})") from None


#: Set to 1 to see a command's traceback instead of its one-line message.
TRACEBACK_ENV = "FINAL_PROBLEM_TRACEBACK"
#: Exit status after Ctrl-C: 128 + SIGINT, as a shell reports a command it interrupted.
INTERRUPTED = 130


def _quiet_broken_pipes_at_exit() -> None:
    """After Ctrl-C, drop the broken-pipe errors of exit handlers: a terminal's Ctrl-C also
    stops the command's child processes (same process group), such as the Node.js process
    jsii starts, whose exit handler then writes to a closed pipe. Nothing is lost; any other
    error is still reported."""
    import sys

    default = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        if not isinstance(unraisable.exc_value, BrokenPipeError):
            default(unraisable)

    sys.unraisablehook = hook


def run_async(coroutine: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(coroutine)`` with asyncio's own Ctrl-C handling inside a command run by
    :func:`run_command`: asyncio cancels the coroutine's task on SIGINT and raises
    ``KeyboardInterrupt`` once it has ended, but only when it finds Python's default handler
    in place; with :func:`run_command`'s, the interrupt would land inside the task and be
    reported at exit as "Task exception was never retrieved"."""
    import asyncio
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return asyncio.run(coroutine)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return asyncio.run(coroutine)
    finally:
        signal.signal(signal.SIGINT, previous)


def run_command(main: Callable[[], int | None]) -> int:
    """Run a command line's ``main`` and return its exit status, ending every failure in one
    line on stderr: a :class:`ClientError` with its message and status, anything else with its
    type and first line (never an object's repr), exit status 1. Ctrl-C ends quietly with
    status 130 once the clean-up (``finally`` blocks, context managers) has run, and a second
    Ctrl-C does not cut that clean-up short. ``FINAL_PROBLEM_TRACEBACK=1`` shows the traceback."""
    import signal
    import sys

    def interrupted(signum: int, frame: object) -> None:
        # The first Ctrl-C stops the command; the clean-up it starts runs to its end.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise KeyboardInterrupt

    traceback = os.environ.get(TRACEBACK_ENV, "") not in ("", "0")
    try:
        previous = signal.signal(signal.SIGINT, interrupted)
    except ValueError:  # not the main thread: leave Ctrl-C as it is
        previous = None
    try:
        return int(main() or 0)
    except KeyboardInterrupt:
        if traceback:
            raise
        _quiet_broken_pipes_at_exit()
        return INTERRUPTED
    except ClientError as e:
        if traceback:
            raise
        print(f"error: {short(e, 1000)}", file=sys.stderr)
        return e.status
    except Exception as e:  # noqa: BLE001 - one line, whatever a library raised
        if traceback:
            raise
        print(f"error: {type(e).__name__}: {short(e)} (FINAL_PROBLEM_TRACEBACK=1 shows where)", file=sys.stderr)
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
