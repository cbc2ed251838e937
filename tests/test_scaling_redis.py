"""The membership procedures of ``redis.replicas`` and ``redis.sentinels``: their steps in each
direction, the order that keeps a failover possible at every step, the refusals, and the
rendered script they run (``membership.sh``). The steps run on real servers in
tests/integration/test_redis_rollout.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from final_problem import scaling
from final_problem.changes import Effect, decide
from final_problem.charts.redis import RedisProps
from final_problem.errors import ConfigError
from final_problem.profiles import PI
from final_problem.renderers.redis import RedisConfigOptions, config_files
from final_problem.scaling import Exec, Refused, Scale, WaitReady
from tests.test_redis_chart import render_with


def props(**values: object) -> RedisProps:
    return RedisProps.for_profile(PI, **values)


def steps(setting: str, old: RedisProps, new: RedisProps) -> list[scaling.Step]:
    return scaling.steps_for("redis", setting, old, new, "redis")


def script(step: scaling.Step) -> tuple[str, ...]:
    """The membership.sh arguments of an Exec step."""
    assert isinstance(step, Exec) and step.command[:2] == ("sh", "/opt/redis/config/membership.sh"), step
    return step.command[2:]


def test_both_settings_are_membership_procedures() -> None:
    assert {("redis", "replicas"), ("redis", "sentinels")} <= set(scaling.PROCEDURES)
    infos = {info.name: info for info in RedisProps.infos()}
    for name, old, new in (("replicas", 2, 4), ("replicas", 4, 2), ("sentinels", 3, 5), ("sentinels", 5, 3)):
        verdict = decide(infos[name].change, old, new, name=f"redis.{name}")
        assert verdict.effect == Effect.PROCEDURE
        assert f"final-problem scale redis.{name}={new} --apply" in verdict.fix


def test_an_unchanged_count_needs_no_step() -> None:
    assert steps("replicas", props(), props()) == []
    assert steps("sentinels", props(), props()) == []


def test_replicas_join_one_at_a_time_each_ready_before_the_next() -> None:
    plan = steps("replicas", props(), props(replicas=4))
    assert plan[:4] == [
        Scale("redis", 4, plan[0].why, "redis"), WaitReady("redis", 4, plan[1].why, "redis"),
        Scale("redis", 5, plan[2].why, "redis"), WaitReady("redis", 5, plan[3].why, "redis"),
    ]
    # Then every Sentinel must list the 4 replicas (and still 3 Sentinels, quorum 2).
    assert plan[4].pod == "redis-sentinel-0" and script(plan[4]) == ("agree", "4", "3", "2")
    assert len(plan) == 5


def test_removed_replicas_are_made_unpromotable_hand_over_then_stop_then_are_forgotten_by_each_sentinel() -> None:
    plan = steps("replicas", props(replicas=4), props())
    retire = [(s.pod, script(s)) for s in plan[:2]]
    assert retire == [("redis-4", ("retire",)), ("redis-3", ("retire",))]
    assert all(s.container == "redis" for s in plan[:4])
    # A primary among them hands over while every member runs (they stop together).
    assert [(s.pod, s.command) for s in plan[2:4]] == [
        (f"redis-{i}", ("sh", "/opt/redis/config/prestop-redis.sh")) for i in (4, 3)]
    assert plan[4] == Scale("redis", 3, plan[4].why, "redis")
    resets = plan[5:8]
    assert [(s.pod, script(s)) for s in resets] == [
        (f"redis-sentinel-{i}", ("reset", "2", "3")) for i in range(3)]
    assert script(plan[8]) == ("agree", "2", "3", "2") and len(plan) == 9


def test_sentinels_join_one_at_a_time_known_to_all_before_the_next_then_the_quorum_follows() -> None:
    plan = steps("sentinels", props(), props(sentinels=5))
    for start, count in ((0, 4), (4, 5)):
        scale, ready, reset, agree = plan[start:start + 4]
        assert scale == Scale("redis-sentinel", count, scale.why, "redis")
        assert ready == WaitReady("redis-sentinel", count, ready.why, "redis")
        # The new Sentinel forgets whatever a volume kept from an earlier scale-down holds.
        assert reset.pod == f"redis-sentinel-{count - 1}" and script(reset) == ("reset", "2", str(count))
        assert script(agree) == ("agree", "2", str(count), "2")
    quorums = plan[8:13]
    assert [(s.pod, script(s)) for s in quorums] == [(f"redis-sentinel-{i}", ("quorum", "3")) for i in range(5)]
    assert script(plan[13]) == ("agree", "2", "5", "3") and len(plan) == 14


def test_removing_sentinels_lowers_the_quorum_first_and_resets_each_kept_one_in_turn() -> None:
    plan = steps("sentinels", props(sentinels=5), props())
    assert [(s.pod, script(s)) for s in plan[:5]] == [(f"redis-sentinel-{i}", ("quorum", "2")) for i in range(5)]
    assert plan[5] == Scale("redis-sentinel", 3, plan[5].why, "redis")
    assert [(s.pod, script(s)) for s in plan[6:9]] == [(f"redis-sentinel-{i}", ("reset", "2", "3")) for i in range(3)]
    assert script(plan[9]) == ("agree", "2", "3", "2") and len(plan) == 10


def simulate(plan: list[scaling.Step], running: int, quorum: int) -> list[str]:
    """Replays Sentinel steps, tracking the Sentinels running, the count the others hold (which
    only a reset of every running Sentinel, or an agreement after an addition, brings down to
    the running count) and the quorum; returns each step that leaves a failover impossible
    with every Sentinel up."""
    counted, reset, problems = running, set(), []
    for step in plan:
        if isinstance(step, Scale):
            running, reset = step.replicas, set()
            counted = max(counted, running)
        elif isinstance(step, Exec):
            args = script(step)
            if args[0] == "quorum":
                quorum = int(args[1])
            elif args[0] == "reset":
                reset.add(int(step.pod.rsplit("-", 1)[1]))
                if reset >= set(range(running)):
                    counted = running
        if quorum > running or running < counted // 2 + 1:
            problems.append(f"{step.describe()}: {running} running, {counted} counted, quorum {quorum}")
    return problems


@pytest.mark.parametrize("old,new", [(3, 5), (5, 3), (3, 7), (7, 3), (5, 7), (7, 5)])
@pytest.mark.parametrize("explicit", [False, True])
def test_no_step_leaves_the_sentinels_unable_to_fail_over(old: int, new: int, explicit: bool) -> None:
    """At every step the quorum is at most the Sentinels running, and those running are a majority
    of the Sentinels the others count (the majority that authorizes a failover)."""
    before = props(sentinels=old, quorum=old if explicit else None)
    after = props(sentinels=new, quorum=new if explicit else None)
    plan = steps("sentinels", before, after)
    assert simulate(plan, old, before.sentinel_quorum) == []
    assert script(plan[-1]) == ("agree", "2", str(new), str(after.sentinel_quorum))


def test_removing_a_majority_of_the_sentinels_takes_rounds() -> None:
    """7 -> 3 at once would leave 3 Sentinels counting 7, below the 4 votes a failover needs."""
    plan = steps("sentinels", props(sentinels=7), props(sentinels=3))
    assert [s.replicas for s in plan if isinstance(s, Scale)] == [4, 3]


def test_the_quorum_follows_the_sentinel_count_unless_set() -> None:
    assert [props(sentinels=n).sentinel_quorum for n in (3, 5, 7)] == [2, 3, 4]
    assert props(sentinels=5, quorum=4).sentinel_quorum == 4
    with pytest.raises(ConfigError, match=r"redis.quorum = 2: must be a majority of the 5 Sentinels"):
        props(sentinels=5, quorum=2)


def test_a_scale_with_another_setting_changing_is_refused_in_one_line() -> None:
    with pytest.raises(Refused) as refused:
        steps("replicas", props(), props(replicas=4, appendfsync="always"))
    assert str(refused.value).startswith("redis.replicas: refused with redis.appendfsync changing too")
    assert "\n" not in str(refused.value)
    with pytest.raises(Refused, match="redis.sentinels: refused with redis.down_after_ms"):
        steps("sentinels", props(), props(sentinels=5, down_after_ms=6000))


def test_the_sentinels_start_with_the_quorum_of_their_count() -> None:
    objects = render_with("pi", redis_sentinels=5)
    sentinel = next(o for o in objects if o["kind"] == "StatefulSet" and o["metadata"]["name"] == "redis-sentinel")
    env = {e["name"]: e.get("value") for e in sentinel["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["SENTINEL_QUORUM"] == "3"
    config = next(o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "redis-config")
    assert "membership.sh" in config["data"]


# --- membership.sh retire, against a stand-in redis-cli -----------------------------------

FAKE_CLI = r"""#!__PYTHON__
import json, os, sys
args, host, port, words = sys.argv[1:], "127.0.0.1", "6379", []
while args:
    a = args.pop(0)
    if a in ("-h", "-p", "--user"):
        value = args.pop(0)
        host, port = (value, port) if a == "-h" else (host, value) if a == "-p" else (host, port)
    elif not a.startswith("--"):
        words.append(a)
path = os.environ["FAKE_STATE"]
state = json.load(open(path))
with open(path + ".log", "a") as log:
    log.write(f"{host}:{port} " + " ".join(words) + "\n")
cmd = " ".join(words[:3]).upper()
if cmd.startswith("SENTINEL REPLICAS"):
    for name, priority in state["replicas"].items():
        print("\n".join(["name", name, "flags", "slave", "slave-priority", str(priority)]))
elif cmd == "CONFIG SET REPLICA-PRIORITY":
    state["replicas"]["r3:6379"] = int(words[3])
    print("OK")
elif cmd.startswith("INFO"):
    print("role:slave")
json.dump(state, open(path, "w"))
"""


def run_retire(tmp_path: Path, replicas: dict[str, int]) -> tuple[int, list[str], str]:
    """membership.sh retire in member r3 against the stand-in: exit status, calls, stderr."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    cli = bin_dir / "redis-cli"
    cli.write_text(FAKE_CLI.replace("__PYTHON__", sys.executable))
    cli.chmod(0o755)
    config = tmp_path / "config"
    config.mkdir()
    for name, text in config_files(RedisConfigOptions()).items():
        (config / name).write_text(text)
    (tmp_path / "state.json").write_text(json.dumps({"replicas": replicas}))
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin", "FAKE_STATE": str(tmp_path / "state.json"), "REDIS_CONFIG_DIR": str(config),
        "REDIS_PORT": "6379", "REDIS_ANNOUNCE_HOST": "r3", "REDIS_SENTINELS": "s0:26379 s1:26379",
        "REDIS_MASTER_NAME": "platform", "REDIS_ADMIN_PASSWORD": "a", "REDIS_SENTINEL_PASSWORD": "s",
        "MEMBERSHIP_TIMEOUT_S": "5",
    }
    result = subprocess.run(["sh", str(config / "membership.sh"), "retire"], env=env, capture_output=True, text=True,
                            timeout=60, check=False)
    return result.returncode, (tmp_path / "state.json.log").read_text().splitlines(), result.stderr


def test_retire_makes_the_member_unpromotable_and_waits_for_every_sentinel_to_see_it(tmp_path: Path) -> None:
    status, calls, stderr = run_retire(tmp_path, {"r1:6379": 100, "r3:6379": 100})
    assert status == 0, stderr
    config_set = next(i for i, c in enumerate(calls) if "CONFIG SET replica-priority 0" in c)
    # Both Sentinels asked after the change: neither still lists r3 as promotable.
    assert {c.split()[0] for c in calls[config_set:] if "SENTINEL replicas" in c} == {"s0:26379", "s1:26379"}


def test_retire_is_refused_when_no_other_replica_could_be_promoted(tmp_path: Path) -> None:
    status, calls, stderr = run_retire(tmp_path, {"r1:6379": 0, "r3:6379": 100})
    assert status == 1
    assert stderr.strip().startswith("retire r3:6379: refused, no other replica a Sentinel could promote")
    assert len(stderr.strip().splitlines()) == 1
    assert not [c for c in calls if "CONFIG SET" in c]
