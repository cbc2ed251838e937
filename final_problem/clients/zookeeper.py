"""A kazoo client for the platform's ZooKeeper ensemble, and a command line.

Shows what a ZooKeeper ensemble guarantees:

- consistency: a write is acknowledged only after a quorum logged it, so a value read
  back (after ``sync``) from any member is the last acknowledged one;
- consensus: :meth:`ZooKeeperClient.election` and :meth:`ZooKeeperClient.lock` let
  exactly one contender win, handing over when it leaves;
- partition tolerance: a member cut off from the majority stops serving, and writes
  fail with :class:`ZooKeeperUnavailable` instead of being accepted and lost.

Where it connects (first that is set): ``--hosts`` / ``hosts=``; ``ZOOKEEPER_HOSTS``;
the settings (``zookeeper.hosts`` for bare-metal Pis, else the chart's client Service).

Command line (``--timeout`` bounds the connection and each request, default 5 s; ``status``
exits non-zero unless every member serves)::

    final-problem zookeeper [--hosts H:P,...] put /path VALUE
    final-problem zookeeper get /path
    final-problem zookeeper watch /path [--count N]
    final-problem zookeeper elect /path --id NAME [--hold SECONDS]
    final-problem zookeeper lock /path --id NAME [--hold SECONDS]
    final-problem zookeeper status

Sources: kazoo documentation, "Basic Usage" and "Recipes" (https://kazoo.readthedocs.io);
ZooKeeper Programmer's Guide, "Consistency Guarantees".
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

from kazoo.client import KazooClient
from kazoo.exceptions import ConnectionClosedError, ConnectionLoss, NodeExistsError, NoNodeError, SessionExpiredError
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.protocol.states import KazooState

from final_problem.clients import Unreachable, add_timeout, run_command
from final_problem.config import Settings


class ZooKeeperUnavailable(Unreachable):
    """The ensemble did not acknowledge in time: no quorum reachable from this client."""


def connect_string(*, settings: Settings, in_cluster_dns: str | None = None) -> str:
    """Where the ensemble listens, from the settings.

    Bare-metal hosts (``zookeeper.hosts``) win; otherwise the chart's client Service.
    """
    from final_problem.charts.zookeeper import ZooKeeperChart, ZooKeeperProps
    from final_problem.profiles import EKS

    props = settings.component(ZooKeeperProps, EKS)
    port = props.client_port
    if props.hosts:
        return ",".join(f"{h}:{port}" for h in props.hosts)

    return f"{in_cluster_dns or ZooKeeperChart.client_service_dns()}:{port}"


def resolve_hosts(*, hosts: str | None, settings: Settings | None = None) -> str:
    """The connection string: explicit, else ``ZOOKEEPER_HOSTS``, else from the settings."""
    if hosts:
        return hosts
    if env := os.environ.get("ZOOKEEPER_HOSTS"):
        return env
    return connect_string(settings=settings or Settings())


def four_letter_word(*, host: str, port: int, word: str, timeout: float = 2.0) -> str:
    """Send a four-letter word to one server and return its answer ("" if refused).

    A word not on the server's allowlist gets an explanatory answer, not an error.
    """
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(word.encode())
            chunks = []
            while chunk := sock.recv(4096):
                chunks.append(chunk)
            return b"".join(chunks).decode(errors="replace")
    except OSError:
        return ""


def status_line(address: str, *, timeout: float = 2.0) -> tuple[str, bool]:
    """What one member's ``srvr`` says, as a ``status`` line: its mode, or why it is not
    serving (refused, no answer, no quorum); and whether it serves."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except socket.timeout:
        return f"{address}: not serving (no answer within {timeout:g} s)", False
    except (OSError, ValueError) as e:
        return f"{address}: not serving ({getattr(e, 'strerror', None) or e})", False
    mode = server_mode(host=host, port=int(port), timeout=timeout)
    return (f"{address}: {mode}", True) if mode else (f"{address}: not serving (no quorum)", False)


def server_mode(*, host: str, port: int, timeout: float = 2.0) -> str | None:
    """``leader``, ``follower`` or ``observer`` when the server is part of a quorum, else None.

    ``srvr`` reports a mode only while the server serves, i.e. belongs to a quorum; a
    server that lost its quorum answers "not currently serving requests".
    """
    for line in four_letter_word(host=host, port=port, word="srvr", timeout=timeout).splitlines():
        if line.startswith("Mode:"):
            return line.split(":", 1)[1].strip()
    return None


@dataclass
class WatchedValue:
    """The latest value of a znode, updated by a ZooKeeper watch (see :meth:`ZooKeeperClient.watch`)."""

    path: str
    value: bytes | None = None
    version: int = -1
    history: list[bytes | None] = field(default_factory=list)
    _changed: threading.Condition = field(default_factory=threading.Condition, repr=False)

    def _update(self, data: bytes | None, version: int) -> None:
        with self._changed:
            self.value, self.version = data, version
            self.history.append(data)
            self._changed.notify_all()

    def wait_for(self, expected: bytes, *, timeout: float) -> bool:
        """Block until the watched value equals ``expected``; False after ``timeout``."""
        with self._changed:
            return self._changed.wait_for(lambda: self.value == expected, timeout=timeout)


class ZooKeeperClient:
    """A kazoo session with bounded waits, and the example operations.

    ``timeout`` bounds every call: a request that a quorum does not acknowledge within it
    raises :class:`ZooKeeperUnavailable`.
    """

    def __init__(self, *, hosts: str, timeout: float = 5.0, session_timeout: float = 10.0) -> None:
        self.hosts = hosts
        self.timeout = timeout
        # Random host order spreads sessions over the members (kazoo's default).
        self.kazoo = KazooClient(hosts=hosts, timeout=session_timeout)
        #: Every session state change (CONNECTED, SUSPENDED, LOST), for callers to report.
        self.states: list[str] = []
        self.kazoo.add_listener(self._record_state)

    def _record_state(self, state: str) -> bool:
        self.states.append(state)
        return False  # keep listening

    def start(self) -> "ZooKeeperClient":
        try:
            self.kazoo.start(timeout=self.timeout)
        except KazooTimeoutError as e:
            self.kazoo.close()
            raise ZooKeeperUnavailable(f"no ZooKeeper member of {self.hosts} answered within {self.timeout} s") from e
        return self

    def close(self) -> None:
        self.kazoo.stop()
        self.kazoo.close()

    def __enter__(self) -> "ZooKeeperClient":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def connected(self) -> bool:
        return self.kazoo.state == KazooState.CONNECTED

    def _wait(self, result: object, what: str) -> object:
        try:
            return result.get(timeout=self.timeout)  # type: ignore[attr-defined]
        except (KazooTimeoutError, ConnectionLoss, SessionExpiredError, ConnectionClosedError) as e:
            raise ZooKeeperUnavailable(
                f"{what}: not acknowledged within {self.timeout} s ({type(e).__name__}); "
                f"the ensemble {self.hosts} has no quorum reachable from here. A write's outcome is "
                "unknown: the session resends it when a quorum returns, so read before retrying"
            ) from e

    # -- the seed example: create and read a znode -------------------------------------

    def put(self, path: str, value: bytes) -> int:
        """Create or overwrite ``path``; return its version once a quorum acknowledged it."""
        try:
            stat = self._wait(self.kazoo.set_async(path, value), f"set {path}")
            return stat.version  # type: ignore[attr-defined]
        except NoNodeError:
            pass
        if parent(path) != "/":
            self._wait(self.kazoo.ensure_path_async(parent(path)), f"create {parent(path)}")
        try:
            self._wait(self.kazoo.create_async(path, value), f"create {path}")
        except NodeExistsError:
            # Another client created it in between: overwrite, as a put promises.
            return self.put(path, value)
        return 0

    def get(self, path: str, *, linearizable: bool = False) -> bytes:
        """Read ``path``. ``linearizable`` first syncs the member with the leader, so the
        read sees every write acknowledged before it (Programmer's Guide, "sync")."""
        if linearizable:
            self._wait(self.kazoo.sync_async(path), f"sync {path}")
        data, _stat = self._wait(self.kazoo.get_async(path), f"get {path}")  # type: ignore[misc]
        return data

    # -- recipes ---------------------------------------------------------------------

    def election(self, path: str, *, identifier: str) -> "Election":
        """A leader election among every client that runs one on ``path``."""
        return Election(self, path=path, identifier=identifier)

    def lock(self, path: str, *, identifier: str):  # type: ignore[no-untyped-def]
        """A distributed lock (kazoo's Lock recipe): ``with client.lock(p, identifier=x): ...``."""
        return self.kazoo.Lock(path, identifier)

    def watch(self, path: str) -> WatchedValue:
        """Follow a configuration value: the returned object tracks every change of ``path``."""
        watched = WatchedValue(path=path)

        def on_change(data: bytes | None, stat: object, *_: object) -> None:
            watched._update(data, stat.version if stat is not None else -1)  # type: ignore[attr-defined]

        self.kazoo.DataWatch(path, on_change)
        return watched


def parent(path: str) -> str:
    return path.rsplit("/", 1)[0] or "/"


class Election:
    """Run for leadership on ``path``; exactly one contender leads at a time.

    :meth:`run` blocks while not elected, calls ``lead`` when elected, and resigns when
    ``lead`` returns (or the session ends), handing over to the next contender.
    """

    def __init__(self, client: ZooKeeperClient, *, path: str, identifier: str) -> None:
        self.client = client
        self.identifier = identifier
        self.recipe = client.kazoo.Election(path, identifier)

    def run(self, lead: Callable[[], None]) -> None:
        self.recipe.run(lead)

    def cancel(self) -> None:
        self.recipe.cancel()

    def contenders(self) -> list[str]:
        """Identifiers of every contender, the leader first."""
        return list(self.recipe.contenders())


def _cli_watch(client: ZooKeeperClient, path: str, count: int) -> Iterator[bytes | None]:
    watched = client.watch(path)
    seen = 0
    while seen < count:
        with watched._changed:
            watched._changed.wait_for(lambda seen=seen: len(watched.history) > seen)
            new = watched.history[seen:]
        for value in new:
            seen += 1
            yield value


def main(argv: Sequence[str] | None = None) -> int:
    # kazoo logs every refused or dropped connection; the command reports the outcome in one line.
    logging.getLogger("kazoo").setLevel(logging.CRITICAL)
    parser = argparse.ArgumentParser(prog="final-problem zookeeper", description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", help="HOST:PORT,... (default: ZOOKEEPER_HOSTS, then the settings)")
    add_timeout(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("put", help="create or overwrite a znode")
    p.add_argument("path", help="the znode, e.g. /app/config")
    p.add_argument("value", help="its new value")
    p = sub.add_parser("get", help="read a znode (after a sync)")
    p.add_argument("path", help="the znode")
    p = sub.add_parser("watch", help="print a znode's value on every change")
    p.add_argument("path", help="the znode")
    p.add_argument("--count", type=int, default=sys.maxsize, help="stop after this many values")
    for name in ("elect", "lock"):
        p = sub.add_parser(name, help="leader election" if name == "elect" else "hold a distributed lock")
        p.add_argument("path", help="the znode the contenders share")
        p.add_argument("--id", required=True, help="this contender's name")
        p.add_argument("--hold", type=float, default=5.0, help="seconds to hold it before handing over")
    sub.add_parser("status", help="each member's mode (srvr); exit status 3 unless every member serves")
    for p in sub.choices.values():
        add_timeout(p, default=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    hosts = resolve_hosts(hosts=args.hosts)

    if args.command == "status":
        serving = True
        for address in (a.strip() for a in hosts.split(",") if a.strip()):
            line, ok = status_line(address, timeout=args.timeout)
            print(line, flush=True)
            serving &= ok
        # A health check: a member that does not serve is a degraded ensemble.
        return 0 if serving else ZooKeeperUnavailable.status
    try:
        with ZooKeeperClient(hosts=hosts, timeout=args.timeout) as client:
            if args.command == "put":
                version = client.put(args.path, args.value.encode())
                print(f"{args.path} = {args.value} (version {version}, acknowledged by a quorum)")
            elif args.command == "get":
                print(client.get(args.path, linearizable=True).decode(errors="replace"))
            elif args.command == "watch":
                for value in _cli_watch(client, args.path, args.count):
                    print(value.decode(errors="replace") if value is not None else "(deleted)", flush=True)
            elif args.command == "elect":
                election = client.election(args.path, identifier=args.id)
                print(f"{args.id}: running; contenders {election.contenders()}", flush=True)
                election.run(lambda: (print(f"{args.id}: leading", flush=True), time.sleep(args.hold)))
                print(f"{args.id}: resigned", flush=True)
            elif args.command == "lock":
                lock = client.lock(args.path, identifier=args.id)
                with lock:
                    print(f"{args.id}: holds the lock", flush=True)
                    time.sleep(args.hold)
                print(f"{args.id}: released", flush=True)
    except ZooKeeperUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return e.status
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))
