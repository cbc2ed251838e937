"""The ZooKeeper membership procedure (``zookeeper.replicas``): its steps each way, its refusals,
and the reconfig script's own checks against members that answer four-letter words."""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator

import pytest

from final_problem import scaling
from final_problem.changes import Effect
from final_problem.charts import zookeeper as chart
from final_problem.charts.zookeeper import ZooKeeperProps
from final_problem.profiles import EKS
from final_problem.renderers.zookeeper import RECONFIG_SCRIPT_PATH

HOST = "zookeeper-{}.zookeeper-headless.zookeeper.svc.cluster.local"


def props(replicas: int, **overrides: object) -> ZooKeeperProps:
    return dataclasses.replace(ZooKeeperProps.for_profile(EKS), replicas=replicas, **overrides)


def steps(old: int, new: int) -> list[scaling.Step]:
    return scaling.steps_for("zookeeper", "replicas", props(old), props(new), "zookeeper")


def test_replicas_changes_by_the_registered_procedure() -> None:
    rule = next(i.change for i in ZooKeeperProps.infos() if i.name == "replicas")
    assert rule.effect == Effect.PROCEDURE
    assert "final-problem scale zookeeper.replicas={new} --apply" in rule.fix
    assert scaling.PROCEDURES[("zookeeper", "replicas")] is chart.change_replicas


def test_growing_starts_each_member_waits_until_synced_then_adds_it_as_a_voter() -> None:
    assert [(type(s).__name__, getattr(s, "replicas", None)) for s in steps(3, 5)] == [
        ("Scale", 4), ("WaitReady", 4), ("Exec", None), ("Scale", 5), ("WaitReady", 5), ("Exec", None)]
    adds = [s for s in steps(3, 5) if isinstance(s, scaling.Exec)]
    assert [s.command for s in adds] == [
        ("bash", "/conf/reconfig.sh", "add", f"server.{i}={HOST.format(i - 1)}:2888:3888:participant;2181") for i in (4, 5)]
    # Run in member 1's container (never removed), in the chart's namespace.
    assert {(s.pod, s.container, s.namespace) for s in adds} == {("zookeeper-0", "zookeeper", "zookeeper")}


def test_shrinking_removes_each_voter_before_its_pod_stops_highest_first() -> None:
    assert [(type(s).__name__, getattr(s, "replicas", None) or s.command[2:]) for s in steps(5, 3)] == [
        ("Exec", ("remove", "5")), ("Scale", 4), ("WaitReady", 4),
        ("Exec", ("remove", "4")), ("Scale", 3), ("WaitReady", 3)]


def test_every_step_keeps_a_quorum_of_the_voters_it_leaves() -> None:
    """Replaying the steps: a voter is added only once its pod runs, and a pod stops only
    once it no longer votes, so the running voters are always the whole voting set."""
    for old, new in ((3, 5), (5, 3), (3, 7), (7, 3), (5, 7)):
        pods, voters = old, set(range(1, old + 1))
        for step in steps(old, new):
            if isinstance(step, scaling.Scale):
                pods = step.replicas
            elif isinstance(step, scaling.Exec) and step.command[2] == "add":
                voters.add(int(step.command[3].split("=")[0].removeprefix("server.")))
            elif isinstance(step, scaling.Exec):
                voters.discard(int(step.command[3]))
            running_voters = {v for v in voters if v <= pods}
            assert running_voters == voters, (old, new, step)
        assert voters == set(range(1, new + 1)) and pods == new


def test_the_new_members_use_the_new_ports_and_namespace() -> None:
    found = chart.change_replicas(props(3, client_port=12181, quorum_port=12888, election_port=13888),
                                  props(5, client_port=12181, quorum_port=12888, election_port=13888), "zk")
    add = next(s for s in found if isinstance(s, scaling.Exec))
    assert add.command[3] == "server.4=zookeeper-3.zookeeper-headless.zk.svc.cluster.local:12888:13888:participant;12181"
    assert {s.namespace for s in found} == {"zk"}


def test_no_change_has_no_steps() -> None:
    assert steps(5, 5) == []


@pytest.mark.parametrize("new, match", [
    (1, r"zookeeper.replicas=1: an ensemble has 3, 5, 7 members"),
    (4, r"zookeeper.replicas=4: .*an even count"),
    (9, r"zookeeper.replicas=9"),
])
def test_refuses_a_count_the_settings_forbid(new: int, match: str) -> None:
    """The settings refuse these values too; the procedure does not rely on it (one line)."""
    wanted = SimpleNamespace(**{**dataclasses.asdict(props(3)), "replicas": new})
    with pytest.raises(scaling.Refused, match=match) as refused:
        chart.change_replicas(props(3), wanted, "zookeeper")
    assert "\n" not in str(refused.value)


def test_refuses_a_port_change_with_the_membership() -> None:
    with pytest.raises(scaling.Refused, match=r"zookeeper.quorum_port changes with zookeeper.replicas"):
        chart.change_replicas(props(3), props(5, quorum_port=12888), "zookeeper")


# -- the reconfig script's checks, against fake members ------------------------------------

class FakeMember:
    """Answers ``conf`` with a membership and ``mntr`` with a peer state, on 127.0.0.1."""

    def __init__(self, state: str = "following - broadcast") -> None:
        self.state, self.membership, self.serving = state, "", True
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.server.accept()
            except OSError:
                return
            with connection:
                word = connection.recv(4)
                if not self.serving:
                    connection.sendall(b"This ZooKeeper instance is not currently serving requests\n")
                elif word == b"conf":
                    connection.sendall(f"clientPort={self.port}\nmembership: \n{self.membership}".encode())
                elif word == b"mntr" and self.state:
                    connection.sendall(f"zk_version\t3.9.4\nzk_peer_state\t{self.state}\n".encode())

    def line(self, myid: int, role: str = "participant") -> str:
        return f"server.{myid}=127.0.0.1:1:2:{role};127.0.0.1:{self.port}"


@pytest.fixture
def members() -> Iterator[dict[int, FakeMember]]:
    found = {i: FakeMember() for i in range(1, 6)}
    yield found
    for m in found.values():
        m.server.close()


def reconfig(members: dict[int, FakeMember], voters: list[int], *args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """The script in member 1, whose membership lists ``voters``; a stand-in java fails the
    test if the script gets as far as running zkCli."""
    membership = "\n".join(members[i].line(i) for i in voters) + "\nversion=100000004"
    for m in members.values():
        m.membership = membership
    java = tmp_path / "java"
    java.write_text("#!/bin/sh\necho ZKCLI-RAN >&2\nexit 9\n")
    java.chmod(0o755)
    env = {**os.environ, "ZOO_CLIENT_PORT": str(members[1].port), "ZOO_SUPER_FILE": str(tmp_path / "super"),
           "ZOO_CLASSPATH": "", "JAVA": str(java), "ZOO_RECONFIG_TIMEOUT_S": "2"}
    (tmp_path / "super").write_text("secret")
    return subprocess.run(["bash", str(RECONFIG_SCRIPT_PATH), *args], env=env, capture_output=True, text=True, timeout=30)


def test_reconfig_refuses_a_removal_below_a_quorum_of_live_voters(members: dict[int, FakeMember], tmp_path: Path) -> None:
    """Five voters, members 2 and 3 down: removing member 5 would leave 4 voters with 2
    live, below the quorum of 3."""
    members[2].state = members[3].state = ""
    done = reconfig(members, [1, 2, 3, 4, 5], "remove", "5", tmp_path=tmp_path)
    assert done.returncode == 3, done.stderr
    assert done.stderr.strip() == ("refused: removing member 5 leaves 2 live voters of 4, below the quorum of 3; "
                                   "bring the members back first")


def test_reconfig_refuses_to_add_a_member_not_yet_synced(members: dict[int, FakeMember], tmp_path: Path) -> None:
    members[4].state = "following - synchronization"
    done = reconfig(members, [1, 2, 3], "add", members[4].line(4), tmp_path=tmp_path)
    assert done.returncode == 3 and "member 4 is not synced with the leader yet" in done.stderr, done.stderr
    assert "ZKCLI-RAN" not in done.stderr


def test_reconfig_refuses_an_addition_that_leaves_too_few_live_voters(members: dict[int, FakeMember], tmp_path: Path) -> None:
    """Three voters with two down: adding a fourth needs 3 live voters of 4; there are 2."""
    members[2].state = members[3].state = ""
    done = reconfig(members, [1, 2, 3], "add", members[4].line(4), tmp_path=tmp_path)
    assert done.returncode == 3 and "adding member 4 leaves 2 live voters of 4, below the quorum of 3" in done.stderr


def test_reconfig_is_safe_to_repeat(members: dict[int, FakeMember], tmp_path: Path) -> None:
    """A member already a voter is not added again, an absent one not removed: zkCli never runs."""
    added = reconfig(members, [1, 2, 3, 4], "add", members[4].line(4), tmp_path=tmp_path)
    assert added.returncode == 0 and "member 4 is already a participant" in added.stdout, added.stderr
    removed = reconfig(members, [1, 2, 3], "remove", "5", tmp_path=tmp_path)
    assert removed.returncode == 0 and "member 5 is not a member" in removed.stdout
    assert "ZKCLI-RAN" not in added.stderr + removed.stderr


def test_reconfig_stops_when_its_own_member_does_not_serve(members: dict[int, FakeMember], tmp_path: Path) -> None:
    members[1].serving = False
    done = reconfig(members, [1, 2, 3], "remove", "3", tmp_path=tmp_path)
    assert done.returncode == 1 and "does not serve" in done.stderr and "\n" not in done.stderr.strip()
