"""``final-problem scale``: the deployed settings read back from a real render, the
component's procedure asked for its steps, printed or run through kubectl, the new value
recorded; refusals and bad input in one line. The procedure here is a stand-in registered
for a real setting (the components' own are tested in tests/test_scaling_*.py)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from final_problem import cli, scale, scaling
from tests.test_plan import deployments, settings_of


@pytest.fixture
def deployed() -> dict[str, Any]:
    return deployments(settings_of(("base", "zookeeper")), "eks")


@pytest.fixture
def procedure(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, Any, str]]:
    calls: list[tuple[Any, Any, str]] = []

    def steps(old: Any, new: Any, namespace: str) -> list[scaling.Step]:
        calls.append((old, new, namespace))
        if new.replicas == 7:
            raise scaling.Refused("zookeeper.replicas=7: seven members slow every write; keep 5")
        return [scaling.Scale("zookeeper", new.replicas, "members", namespace),
                scaling.WaitReady("zookeeper", new.replicas, "synced", namespace),
                scaling.Exec("zookeeper-0", "zookeeper", ("reconfig", "-add", "4"), "a voter", namespace)]

    monkeypatch.setitem(scaling.PROCEDURES, ("zookeeper", "replicas"), steps)
    return calls


def test_the_steps_come_from_the_deployed_settings_and_the_new_value(deployed: Any, procedure: Any) -> None:
    steps = scale.plan_steps("zookeeper.replicas=5", deployed, "eks")
    (old, new, namespace), = procedure
    assert (old.replicas, new.replicas) == (3, 5)
    assert old.memory_mib == new.memory_mib  # every other setting as deployed
    assert namespace == "zookeeper" and [type(s).__name__ for s in steps] == ["Scale", "WaitReady", "Exec"]
    assert scale.plan_steps("zookeeper.replicas=3", deployed, "eks") == []


def test_printing_the_steps_changes_nothing(tmp_path: Path, procedure: Any, capsys: Any,
                                            monkeypatch: pytest.MonkeyPatch, deployed: Any) -> None:
    monkeypatch.setattr(scale, "read_dir", lambda _: deployed)
    assert cli.main(["scale", "zookeeper.replicas=5", "--from", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "3 steps" in out and "1. scale statefulset/zookeeper to 5" in out and "--apply" in out


@pytest.mark.parametrize("argv, message", [
    (["zookeeper.replicas=7"], "refused: zookeeper.replicas=7: seven members slow every write; keep 5"),
    (["zookeeper.replicas=1"], "zookeeper.replicas"),
    (["zookeeper.tick_time_ms=3000"], "not a membership setting"),
    (["nosuch.replicas=3"], "nosuch: no such component"),
    (["zookeeper.replicas"], "not COMPONENT.SETTING=VALUE"),
    (["zookeeper.replicas=many"], "zookeeper.replicas"),
    (["zookeeper.replicas=5", "--apply"], "--apply runs the steps on the cluster: give --live"),
])
def test_refusals_and_bad_input_are_one_line(argv: list[str], message: str, procedure: Any, deployed: Any,
                                             tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    monkeypatch.setattr(scale, "read_dir", lambda _: deployed)
    status = scale.main([*argv, "--from", str(tmp_path)])
    err = capsys.readouterr().err
    assert status == (1 if message.startswith("refused") else 2)
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_apply_runs_each_step_through_kubectl_and_records_the_new_value(
        tmp_path: Path, procedure: Any, deployed: Any, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    log = tmp_path / "calls"
    kubectl = tmp_path / "kubectl"
    # A kubectl that logs its arguments and reports every StatefulSet fully Ready.
    kubectl.write_text(f'#!/bin/sh\necho "$*" >> {log}\ncase "$*" in *readyReplicas*) echo 5;; esac\n')
    kubectl.chmod(kubectl.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(scale, "read_live", lambda _: deployed)
    assert scale.main(["zookeeper.replicas=5", "--live", "--apply"]) == 0
    calls = log.read_text().splitlines()
    assert calls[0] == "scale -n zookeeper statefulset/zookeeper --replicas=5"
    assert calls[1].startswith("get -n zookeeper statefulset/zookeeper")
    assert calls[2] == "exec -n zookeeper zookeeper-0 -c zookeeper -- reconfig -add 4"
    annotate = calls[3].split()
    assert annotate[:3] == ["annotate", "namespace", "zookeeper"]
    recorded = json.loads(calls[3].split("final-problem.io/settings=", 1)[1].rsplit(" --overwrite", 1)[0])
    assert recorded["replicas"] == 5 and recorded["tick_time_ms"] == 2000


def test_a_failed_step_stops_with_one_line(tmp_path: Path, procedure: Any, deployed: Any,
                                           monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    kubectl = tmp_path / "kubectl"
    kubectl.write_text('#!/bin/sh\necho "Error from server (Forbidden): statefulsets is forbidden" >&2\nexit 1\n')
    kubectl.chmod(kubectl.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(scale, "read_live", lambda _: deployed)
    assert scale.main(["zookeeper.replicas=5", "--live", "--apply"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: scaling zookeeper: Error from server (Forbidden): statefulsets is forbidden; fix it, then run "
                   "the command again (every step is safe to repeat)"]


def test_a_step_that_refuses_stops_with_its_line(tmp_path: Path, procedure: Any, deployed: Any,
                                                 monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    kubectl = tmp_path / "kubectl"
    # Scaling and the readiness read succeed; the exec'd check refuses (exit status 3).
    kubectl.write_text('#!/bin/sh\ncase "$1" in exec) echo "brokers 103 104 still hold 6 replicas; move them off" >&2; '
                       'exit 3;; esac\ncase "$*" in *readyReplicas*) echo 5;; esac\n')
    kubectl.chmod(kubectl.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(scale, "read_live", lambda _: deployed)
    assert scale.main(["zookeeper.replicas=5", "--live", "--apply"]) == 1
    assert capsys.readouterr().err.strip().splitlines() == ["refused: brokers 103 104 still hold 6 replicas; move them off"]
