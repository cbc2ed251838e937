"""The Sentinel-aware client's settings: where passwords come from."""

from __future__ import annotations

import pytest

from final_problem.clients.redis import RedisClientError, RedisSettings


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
