"""Talk to the platform's Redis through Sentinel: writes to the primary, reads from replicas.

The client asks the Sentinels for the current primary on every (re)connection, so after
a failover it follows the promoted replica by itself; reads go to replicas and fall back
to the primary when none answers. Passwords come from the environment or from the
Kubernetes Secret ``redis/redis-auth`` (read with ``kubectl``), never from code.

Environment: ``REDIS_SENTINELS`` (``host:port,host:port``; default the in-cluster
Service), ``REDIS_MASTER_NAME`` (default ``platform``), ``REDIS_USERNAME`` (default
``app``), ``REDIS_PASSWORD``, ``REDIS_SENTINEL_PASSWORD``.

Command line (``--timeout`` bounds the connection to the Sentinels, default 5 s; a command
that cannot reach them, or has no password, ends with one line and a non-zero status)::

    final-problem redis example          # the write/read example
    final-problem redis cache-demo       # cache-aside, timed
    final-problem redis set KEY VALUE [--replicas 1]
    final-problem redis get KEY

Source: redis-py docs, "Redis Sentinel" (``Sentinel.master_for`` / ``slave_for``);
Redis docs, "WAIT", "Sentinel client spec".
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry
from redis.sentinel import MasterNotFoundError, Sentinel, SentinelManagedConnection

from final_problem.clients import (
    ClientError, Unreachable, add_timeout, password, read_secret, run_command, short,
)

DEFAULT_SENTINELS = "redis-sentinel.redis.svc:26379"
SECRET_NAMESPACE, SECRET_NAME = "redis", "redis-auth"


class RedisClientError(ClientError):
    """The client is misconfigured or a write was not replicated as asked."""


def _parse_sentinels(text: str) -> list[tuple[str, int]]:
    addresses = []
    for item in text.split(","):
        host, sep, port = item.strip().rpartition(":")
        if not sep or not port.isdigit():
            raise RedisClientError(f"REDIS_SENTINELS entry {item!r} is not host:port; give --redis-sentinels H:P,...")
        addresses.append((host, int(port)))
    return addresses


def secret_from_kubernetes(key: str, *, namespace: str = SECRET_NAMESPACE, name: str = SECRET_NAME) -> str:
    """One key of the generated Secret, through ``kubectl`` (the caller's kubeconfig)."""
    return read_secret(namespace=namespace, name=name, key=key)


class SentinelConnection(SentinelManagedConnection):
    """A connection that asks the Sentinels for its address each time it (re)connects.

    redis-py reconnects a dropped connection inside a command's retries through
    ``connect_check_health``, which reuses the address the connection had: after a failover,
    every retry goes to the old primary (connection refused, or READONLY once it is a
    replica) until the retries run out, about 17 s here, before the next command asks the
    Sentinels (redis-py issues 3560 and 3874; 8.1 still does it). Only ``connect`` asks them.
    Here every reconnection does, so a retry reaches the new primary as soon as the
    Sentinels name it.
    """

    _resolving = False

    def connect_to(self, address: tuple[str, int]) -> None:
        # The address was just asked of the Sentinels (or is a replica they listed).
        self._resolving = True
        try:
            super().connect_to(address)
        finally:
            self._resolving = False

    def connect_check_health(self, check_health: bool = True, retry_socket_connect: bool = True) -> None:
        if self._sock:
            return
        if self._resolving:
            # One attempt: the command's own retries ask the Sentinels again before the next.
            super().connect_check_health(check_health=check_health, retry_socket_connect=False)
        else:
            self._connect_retry()


class SentinelDiscovery(Sentinel):
    """redis-py's Sentinel, asking for the primary as the Sentinel client spec says.

    redis-py reads the address from ``SENTINEL MASTERS``, which the Sentinel running a
    failover changes only once every replica follows the promoted one (sentinel.c,
    sentinelFailoverSwitchToPromotedSlave), a second or two after the promotion; ``SENTINEL
    GET-MASTER-ADDR-BY-NAME`` names the promoted replica as soon as that Sentinel saw it
    promoted (sentinelGetCurrentMasterAddress), and the others switch on its hello. Source:
    Redis docs, "Sentinel client spec" (step 2). The first Sentinel that answers is asked
    first next time, as redis-py does.
    """

    def discover_master(self, service_name: str) -> tuple[str, int]:
        errors = []
        for index, sentinel in enumerate(self.sentinels):
            try:
                answer = sentinel.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", service_name)
            except (redis.ConnectionError, redis.TimeoutError) as e:
                errors.append(f"{sentinel}: {e!r}")
                continue
            if answer:
                self.sentinels[0], self.sentinels[index] = sentinel, self.sentinels[0]
                host, port = (item.decode() if isinstance(item, bytes) else item for item in answer)
                return str(host), int(port)
        raise MasterNotFoundError(f"No master found for {service_name!r}{' : ' + ', '.join(errors) if errors else ''}")


@dataclass(frozen=True, kw_only=True)
class RedisSettings:
    """Where the Sentinels are and who to log in as."""

    sentinels: tuple[tuple[str, int], ...]
    master_name: str = "platform"
    username: str = "app"
    password: str
    sentinel_password: str
    #: Socket timeout of each command, seconds.
    timeout_s: float = 2.0
    #: Seconds to wait for a TCP connection to a Sentinel or a member: as long as a command
    #: may take (the command line passes ``--timeout``).
    connect_timeout_s: float = 2.0
    #: Retries of a command on a lost connection (each reconnection asks the Sentinels), with
    #: backoff from 100 ms doubling to 1 s: 20 retries wait about 17.5 s in all, more than a
    #: failover takes with the chart's defaults (5 s until the Sentinels call the primary down,
    #: then an election and a promotion of a few seconds), so a command rides one out.
    retries: int = 20

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, *, secret: Callable[[str], str] = secret_from_kubernetes
    ) -> "RedisSettings":
        """Settings from the environment; missing passwords are read from the Secret."""
        env = os.environ if env is None else env
        return cls(
            sentinels=tuple(_parse_sentinels(env.get("REDIS_SENTINELS", DEFAULT_SENTINELS))),
            master_name=env.get("REDIS_MASTER_NAME", "platform"),
            username=env.get("REDIS_USERNAME", "app"),
            password=password(env, "REDIS_PASSWORD", secret, "app-password"),
            sentinel_password=password(env, "REDIS_SENTINEL_PASSWORD", secret, "sentinel-password"),
        )


class RedisClient:
    """A primary connection for writes and a replica connection for reads, both via Sentinel."""

    def __init__(self, *, settings: RedisSettings) -> None:
        self.settings = settings
        retry = Retry(ExponentialBackoff(cap=1.0, base=0.05), settings.retries)
        self.sentinel = SentinelDiscovery(
            list(settings.sentinels),
            # No retry of one Sentinel: the list is the redundancy (the client asks the next
            # one), and redis-py's default retries of a refused Sentinel (3, backoff from 1 s)
            # only delay the answer by seconds per Sentinel.
            sentinel_kwargs={"password": settings.sentinel_password, "socket_timeout": settings.timeout_s,
                             "socket_connect_timeout": settings.connect_timeout_s, "retry": Retry(NoBackoff(), 0)},
            username=settings.username,
            password=settings.password,
            socket_timeout=settings.timeout_s,
            socket_connect_timeout=settings.connect_timeout_s,
            retry=retry,
            retry_on_error=[redis.ConnectionError, redis.TimeoutError, redis.ReadOnlyError],
            decode_responses=True,
            connection_class=SentinelConnection,
        )
        self.primary: redis.Redis = self.sentinel.master_for(settings.master_name)
        self.replica: redis.Redis = self.sentinel.slave_for(settings.master_name)

    def primary_address(self) -> tuple[str, int]:
        return self.sentinel.discover_master(self.settings.master_name)

    def check(self) -> tuple[str, int]:
        """The primary's address, asked once of the Sentinels; :class:`~final_problem.clients.Unreachable`
        saying what each Sentinel did when none names one. Run first, it makes a command fail
        in the connect timeout instead of riding out a failover that is not happening."""
        try:
            return self.primary_address()
        except redis.RedisError:
            pass
        reasons = []
        for host, port in self.settings.sentinels:
            try:
                with socket.create_connection((host, port), timeout=self.settings.connect_timeout_s):
                    reasons.append(f"{host}:{port} answers but names no primary {self.settings.master_name!r}")
            except socket.timeout:
                reasons.append(f"{host}:{port} no answer within {self.settings.connect_timeout_s:g} s")
            except OSError as e:
                reasons.append(f"{host}:{port} {e.strerror or short(e)}".rstrip())
        raise Unreachable(
            f"no Redis Sentinel named a primary ({'; '.join(reasons)}): give --redis-sentinels H:P,... "
            "or set REDIS_SENTINELS (and REDIS_SENTINEL_PASSWORD), or raise --timeout"
        )

    def set_durable(self, key: str, value: str, *, replicas: int = 1, timeout_ms: int = 1000, ttl_s: int | None = None) -> int:
        """SET, then ``WAIT`` until ``replicas`` replicas acknowledged it; return how many did.

        Raises when fewer acknowledged: the write may be lost if the primary fails now.
        """
        pipe = self.primary.pipeline(transaction=False)
        pipe.set(key, value, ex=ttl_s)
        pipe.execute_command("WAIT", replicas, timeout_ms)
        _, acknowledged = pipe.execute()
        if acknowledged < replicas:
            raise RedisClientError(f"{key}: {acknowledged} of {replicas} replicas acknowledged within {timeout_ms} ms")
        return int(acknowledged)

    def get(self, key: str, *, from_primary: bool = False) -> str | None:
        """Read from a replica (may lag by milliseconds), or the primary for read-your-writes."""
        return (self.primary if from_primary else self.replica).get(key)

    def cache_aside(self, key: str, load: Callable[[], str], *, ttl_s: int = 60) -> tuple[str, bool]:
        """Return the cached value or load, store (with a TTL, evictable) and return it;
        the flag says whether it was a hit. Reads the primary: a just-filled entry may not
        have reached a replica yet."""
        cached = self.primary.get(key)
        if cached is not None:
            return cached, True
        value = load()
        self.primary.set(key, value, ex=ttl_s)
        return value, False

    def close(self) -> None:
        for client in (self.primary, self.replica):
            client.close()


def example(client: RedisClient, *, out: Callable[[str], None] = print) -> None:
    """Write a key to the primary (replicated to one replica), read it back from a replica."""
    key = "final-problem:example"
    acknowledged = client.set_durable(key, "hello from the platform", replicas=1)
    out(f"wrote {key} to the primary {client.primary_address()}, {acknowledged} replica(s) acknowledged")
    out(f"read {key} from a replica: {client.get(key)!r}")


def cache_demo(client: RedisClient, *, out: Callable[[str], None] = print, delay_s: float = 0.2) -> None:
    """Cache-aside around a slow lookup: the first call loads, the second hits the cache."""
    def slow_lookup() -> str:
        time.sleep(delay_s)
        return json.dumps({"user": 42, "plan": "pro"})

    key = "final-problem:cache:user:42"
    client.primary.delete(key)
    for attempt in (1, 2):
        started = time.perf_counter()
        value, hit = client.cache_aside(key, slow_lookup, ttl_s=60)
        out(f"call {attempt}: {'hit ' if hit else 'miss'} in {1000 * (time.perf_counter() - started):.1f} ms -> {value}")


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; :class:`~final_problem.clients.ClientError` says in one line why it
    could not run (``final-problem`` prints it and exits with its status)."""
    parser = argparse.ArgumentParser(prog="final-problem redis", description=__doc__.split("\n")[0])
    add_timeout(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("example", help="write to the primary with WAIT, read from a replica")
    sub.add_parser("cache-demo", help="cache-aside around a slow lookup")
    p_set = sub.add_parser("set", help="SET with WAIT")
    p_set.add_argument("key", help="the key to set")
    p_set.add_argument("value", help="its value")
    p_set.add_argument("--replicas", type=int, default=1, help="replicas that must acknowledge (WAIT); default 1")
    p_get = sub.add_parser("get", help="GET from a replica")
    p_get.add_argument("key", help="the key to read")
    p_get.add_argument("--primary", action="store_true", help="read from the primary")
    for p in (p_set, p_get, *[sub.choices[n] for n in ("example", "cache-demo")]):
        add_timeout(p, default=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    settings = RedisSettings.from_env()
    settings = RedisSettings(**{**settings.__dict__, "connect_timeout_s": args.timeout,
                                "timeout_s": min(settings.timeout_s, args.timeout)})
    client = RedisClient(settings=settings)
    try:
        client.check()
        if args.command == "example":
            example(client)
        elif args.command == "cache-demo":
            cache_demo(client)
        elif args.command == "set":
            print(client.set_durable(args.key, args.value, replicas=args.replicas))
        else:
            print(client.get(args.key, from_primary=args.primary))
    except redis.AuthenticationError as e:
        raise ClientError(f"Redis refused the login as {settings.username!r}: {short(e)}; check REDIS_PASSWORD") from e
    except (redis.ConnectionError, redis.TimeoutError) as e:
        raise Unreachable(f"Redis: {type(e).__name__}: {short(e)}; raise --timeout, or check the set") from e
    except redis.RedisError as e:
        raise ClientError(f"Redis: {type(e).__name__}: {short(e)}") from e
    finally:
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))
