"""The Sentinel-aware client's settings: where passwords come from."""

from __future__ import annotations

import pytest

import redis

from final_problem.clients.redis import RedisClientError, RedisSettings, SentinelConnection, SentinelDiscovery


def test_settings_from_environment() -> None:
    s = RedisSettings.from_env(
        {"REDIS_SENTINELS": "a:1,b:2", "REDIS_PASSWORD": "p", "REDIS_SENTINEL_PASSWORD": "s"},
        secret=lambda key: pytest.fail(f"read the Secret for {key} although the environment has it"),
    )
    assert s.sentinels == (("a", 1), ("b", 2))
    assert (s.username, s.password, s.sentinel_password, s.master_name) == ("app", "p", "s", "platform")


def test_missing_passwords_are_read_from_the_secret() -> None:
    asked: list[str] = []

    def secret(key: str) -> str:
        asked.append(key)
        return f"from-secret-{key}"

    s = RedisSettings.from_env({}, secret=secret)
    assert asked == ["app-password", "sentinel-password"]
    assert s.password == "from-secret-app-password"
    assert s.sentinels == (("redis-sentinel.redis.svc", 26379),)


def test_bad_sentinel_address_is_rejected() -> None:
    with pytest.raises(RedisClientError, match="not host:port"):
        RedisSettings.from_env({"REDIS_SENTINELS": "nohost", "REDIS_PASSWORD": "p", "REDIS_SENTINEL_PASSWORD": "s"})


def test_every_reconnection_asks_the_sentinels_for_the_primary(monkeypatch: pytest.MonkeyPatch) -> None:
    """A dropped connection that reconnects inside a command's retries (redis-py's
    send_packed_command path) goes where the Sentinels name the primary now, not to the
    address it had: after a failover that is the old primary."""
    sentinel = SentinelDiscovery([("sentinel", 26379)])
    named = iter([("old-primary", 6379), ("new-primary", 6379)])
    monkeypatch.setattr(sentinel, "discover_master", lambda name: next(named))
    tried: list[tuple[str, int]] = []

    def refuse(conn: redis.connection.Connection) -> None:
        tried.append((conn.host, conn.port))
        raise OSError("connection refused")

    monkeypatch.setattr(redis.connection.Connection, "_connect", refuse)
    conn = sentinel.master_for("platform", connection_class=SentinelConnection).connection_pool.make_connection()
    for _ in range(2):
        with pytest.raises(redis.ConnectionError):
            conn.connect_check_health(check_health=False)
    assert tried == [("old-primary", 6379), ("new-primary", 6379)]


def test_discovery_asks_get_master_addr_by_name_and_skips_silent_sentinels() -> None:
    """The address clients are told during a failover (Sentinel client spec), from the first
    Sentinel that answers, which is asked first next time."""
    class Silent:
        def execute_command(self, *args: object) -> object:
            raise redis.ConnectionError("refused")

    class Answers:
        def __init__(self) -> None:
            self.asked: list[tuple[object, ...]] = []

        def execute_command(self, *args: object) -> object:
            self.asked.append(args)
            return [b"promoted", b"6380"]

    sentinel = SentinelDiscovery([("a", 1), ("b", 2)])
    answers = Answers()
    sentinel.sentinels = [Silent(), answers]  # type: ignore[list-item]
    assert sentinel.discover_master("platform") == ("promoted", 6380)
    assert answers.asked == [("SENTINEL", "GET-MASTER-ADDR-BY-NAME", "platform")]
    assert sentinel.sentinels[0] is answers
