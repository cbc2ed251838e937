"""The KRaft controller procedure (``kafka.controllers``, ``kafka.dynamic_quorum``): its steps
each way, its refusals, and the ConfigMap's quorum.sh deciding from what the quorum reports
(a stand-in ``java`` prints ``describe --replication`` tables and records the membership
commands). On real servers: tests/integration/test_kafka_rollout.py."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from final_problem import scaling
from final_problem.changes import Effect, decide
from final_problem.charts.kafka import QUORUM_SCRIPT, KafkaProps, quorum_change
from final_problem.profiles import EKS, PI
from final_problem.scaling import Exec, Refused, Scale, WaitReady


def steps(old: Any, new: Any, setting: str = "controllers") -> list[scaling.Step]:
    return scaling.steps_for("kafka", setting, old, new, "kafka")


def eks(**values: Any) -> KafkaProps:
    return KafkaProps.for_profile(EKS, **values)  # type: ignore[return-value]


def test_growing_adds_one_controller_at_a_time_each_caught_up_before_it_votes() -> None:
    got = steps(eks(controllers=3), eks(controllers=5))
    assert [type(s) for s in got] == [Scale, WaitReady, Exec] * 2
    for i, ordinal in enumerate((3, 4)):
        scale, wait, add = got[3 * i:3 * i + 3]
        assert (scale.name, scale.replicas, wait.replicas) == ("kafka-controller", ordinal + 1, ordinal + 1)
        assert add.pod == f"kafka-controller-{ordinal}" and add.container == "kafka"
        assert add.command == ("sh", "/opt/kafka-config/quorum.sh", "add", "2000", "3")
        assert {s.namespace for s in (scale, wait, add)} == {"kafka"}


def test_shrinking_removes_the_highest_voter_before_its_pod_stops() -> None:
    got = steps(eks(controllers=5), eks(controllers=3))
    assert [(type(s).__name__, getattr(s, "pod", None) or getattr(s, "replicas", None)) for s in got] == [
        ("Exec", "kafka-controller-4"), ("Scale", 4), ("Exec", "kafka-controller-3"), ("Scale", 3)]
    assert all(s.command[2] == "remove" for s in got if isinstance(s, Exec))


def test_the_same_count_needs_no_step() -> None:
    assert steps(eks(controllers=5), eks(controllers=5)) == []
    assert steps(KafkaProps.for_profile(PI), KafkaProps.for_profile(PI)) == []


def test_a_recorded_deployment_is_read_as_its_settings() -> None:
    recorded = {**eks().recorded_values()}
    assert steps(recorded, eks(controllers=5)) == steps(eks(), eks(controllers=5))


@pytest.mark.parametrize(("old", "new", "words"), [
    (KafkaProps.for_profile(PI), KafkaProps.for_profile(PI, controllers=5), "on the Pi every node is a broker and a voter"),
    (eks(dynamic_quorum=False), eks(controllers=5), "the deployed quorum is static"),
    # A deployment recorded before the setting existed was formatted static.
    ({"controllers": 3, "combined": False}, eks(controllers=5), "the deployed quorum is static"),
    (eks(), {"controllers": 1, "combined": False, "dynamic_quorum": True}, "1 tolerates no more failures than none"),
    (eks(), {"controllers": 4, "combined": False, "dynamic_quorum": True}, "4 tolerates no more failures than 3"),
])
def test_an_unsafe_or_unsupported_change_is_refused_in_one_line(old: Any, new: Any, words: str) -> None:
    with pytest.raises(Refused) as refused:
        steps(old, new)
    message = str(refused.value)
    assert words in message and "\n" not in message and message.startswith("kafka.controllers ")


def test_a_static_quorum_migrates_by_upgrading_kraft_version_before_the_deploy() -> None:
    (step,) = steps(eks(dynamic_quorum=False), eks(), "dynamic_quorum")
    assert isinstance(step, Exec) and step.pod == "kafka-controller-0"
    # The deployed ConfigMap predates quorum.sh: the script goes inline.
    assert step.command[:3] == ("sh", "-c", QUORUM_SCRIPT) and step.command[4] == "upgrade"
    (combined,) = steps({"combined": True}, KafkaProps.for_profile(PI), "dynamic_quorum")
    assert isinstance(combined, Exec) and combined.pod == "kafka-0"
    with pytest.raises(Refused, match="kraft.version cannot go back"):
        steps(eks(), eks(dynamic_quorum=False), "dynamic_quorum")


def test_the_change_rules_agree_with_the_procedures() -> None:
    assert decide(quorum_change, None, True, name="kafka.dynamic_quorum").effect == Effect.PROCEDURE
    assert "final-problem scale kafka.dynamic_quorum=true --apply" in decide(quorum_change, None, True).fix
    assert decide(quorum_change, True, False).effect == Effect.REFUSED
    assert decide(quorum_change, True, True).effect == Effect.NOTHING
    rule = next(i.change for i in KafkaProps.infos() if i.name == "controllers")
    verdict = decide(rule, 3, 5)
    assert verdict.effect == Effect.PROCEDURE and "final-problem scale kafka.controllers=5 --apply" in verdict.fix


# -- quorum.sh against a stand-in java ----------------------------------------------------

HEADER = "NodeId\tDirectoryId\tLogEndOffset\tLag\tLastFetchTimestamp\tLastCaughtUpTimestamp\tStatus\t"
NOW = 1_800_000_000_000
FAKE_JAVA = r"""#!/bin/sh
# Stand-in for the Kafka tools: prints the table in $FAKE/table, records membership commands.
for a in "$@"; do
  case "$a" in
  --replication) cat "$FAKE/table"; exit 0 ;;
  add-controller|remove-controller) echo "$*" >> "$FAKE/calls"; cp "$FAKE/after" "$FAKE/table"; exit 0 ;;
  esac
done
exit 1
"""


def row(node: int, directory: str, status: str, behind_ms: int = 0) -> str:
    return f"{node}\t{directory}\t100\t0\t{NOW - behind_ms}\t{NOW - behind_ms}\t{status}\t"


@pytest.fixture
def quorum(tmp_path: Path) -> Any:
    """Runs quorum.sh as controller 3 (directory id DIR3) against tables of the stand-in."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "java").write_text(FAKE_JAVA)
    (bin_dir / "java").chmod(0o755)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "meta.properties").write_text("node.id=3\ndirectory.id=DIR3\nversion=1\n")
    node = tmp_path / "kafka-controller-3.properties"
    node.write_text(
        "node.id=3\ncontroller.quorum.bootstrap.servers=c0:9093,c1:9093,c2:9093\ncontroller.listener.names=CONTROLLER\n"
        f"log.dirs={tmp_path / 'data'}\nsasl.mechanism.controller.protocol=PLAIN\n"
        'listener.name.controller.plain.sasl.jaas.config=PlainLoginModule required username="controller";\n')
    script = tmp_path / "quorum.sh"
    script.write_text(QUORUM_SCRIPT)

    def run(command: str, table: list[str], after: list[str] | None = None,
            wait_s: int = 60) -> tuple[int, str, list[str]]:
        """``wait_s``: how long the script waits for the table to allow the step (1 for a refusal)."""
        (tmp_path / "table").write_text("\n".join([HEADER, *table]) + "\n")
        (tmp_path / "after").write_text("\n".join([HEADER, *(after or table)]) + "\n")
        calls = tmp_path / "calls"
        calls.unlink(missing_ok=True)
        env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "FAKE": str(tmp_path), "KAFKA_NODE_CONFIG": str(node),
               "QUORUM_WAIT_S": str(wait_s), "TMPDIR": str(tmp_path)}
        done = subprocess.run(["sh", str(script), command, "2000", "3"], capture_output=True, text=True, env=env,
                              timeout=60)
        made = calls.read_text().splitlines() if calls.exists() else []
        return done.returncode, (done.stderr or done.stdout).strip(), made

    return run


VOTERS = [row(0, "D0", "Leader"), row(1, "D1", "Follower"), row(2, "D2", "Follower")]


def test_add_joins_a_caught_up_observer_to_the_voters(quorum: Any) -> None:
    code, out, calls = quorum("add", [*VOTERS, row(3, "DIR3", "Observer")], after=[*VOTERS, row(3, "DIR3", "Follower")])
    assert code == 0 and "is a voter of 4" in out
    assert len(calls) == 1 and "--bootstrap-controller c0:9093,c1:9093,c2:9093" in calls[0] and "add-controller" in calls[0]


def test_add_waits_for_an_observer_behind_the_leader(quorum: Any) -> None:
    code, out, calls = quorum("add", [*VOTERS, row(3, "DIR3", "Observer", behind_ms=5000)], wait_s=1)
    assert code == 1 and calls == [] and "not caught up with the leader" in out and "\n" not in out


def test_add_refuses_when_it_would_leave_fewer_than_a_majority_caught_up(quorum: Any) -> None:
    # One of three voters is 10 s behind: with the new one, 3 of 4 are caught up, a majority (3).
    code, _, calls = quorum("add", [*VOTERS[:2], row(2, "D2", "Follower", 10_000), row(3, "DIR3", "Observer")],
                            after=[*VOTERS, row(3, "DIR3", "Follower")])
    assert code == 0 and len(calls) == 1
    # Three of four voters behind: with the fifth, 2 of 5 caught up, fewer than a majority (3).
    behind = [row(0, "D0", "Leader"), row(1, "D1", "Follower", 10_000), row(2, "D2", "Follower", 10_000),
              row(4, "D4", "Follower", 10_000), row(3, "DIR3", "Observer")]
    code, out, calls = quorum("add", behind, wait_s=1)
    assert code == 1 and calls == [] and "fewer than a majority (3) of 5" in out


def test_remove_takes_the_node_out_by_its_id_and_directory_id(quorum: Any) -> None:
    table = [*VOTERS, row(3, "DIR3", "Follower"), row(4, "D4", "Follower")]
    code, out, calls = quorum("remove", table, after=[*VOTERS, row(3, "DIR3", "Observer"), row(4, "D4", "Follower")])
    assert code == 0 and "is not a voter" in out
    assert len(calls) == 1 and "remove-controller --controller-id 3 --controller-directory-id DIR3" in calls[0]


def test_remove_refuses_to_leave_the_others_caught_up_fewer_than_a_majority(quorum: Any) -> None:
    # 5 voters, this one leaving: 4 left, a majority of them is 3, and only 2 others are caught up.
    table = [row(0, "D0", "Leader"), row(1, "D1", "Follower"), row(2, "D2", "Follower", 10_000),
             row(4, "D4", "Follower", 10_000), row(3, "DIR3", "Follower")]
    code, out, calls = quorum("remove", table, wait_s=1)
    assert code == 1 and calls == [] and "fewer than a majority (3)" in out and "\n" not in out


def test_remove_refuses_below_the_minimum_voters(quorum: Any) -> None:
    code, out, calls = quorum("remove", [*VOTERS[:2], row(3, "DIR3", "Follower")])
    assert code == 1 and calls == [] and "would leave 2 voters, fewer than 3" in out


def test_a_repeated_step_is_a_no_op(quorum: Any) -> None:
    assert quorum("add", [*VOTERS, row(3, "DIR3", "Follower")])[::2] == (0, [])
    assert quorum("remove", [*VOTERS, row(3, "DIR3", "Observer")])[::2] == (0, [])
