"""The cdk8s-plus forms of the restricted contexts: what other apps use to build their
workloads with cdk8s-plus-27, which cannot express seccomp or dropping ALL itself."""

from __future__ import annotations

import cdk8s
import cdk8s_plus_27 as kplus

from final_problem import policy, versions
from final_problem.constructs.security import Sizing, harden, restricted_container, restricted_pod


def deployment(*, hardened: bool) -> list[dict]:
    chart = cdk8s.Chart(cdk8s.App(), "Probe")
    workload = kplus.Deployment(chart, "App", security_context=restricted_pod(uid=1000))
    workload.add_container(
        name="app", image=versions.PYTHON_IMAGE, security_context=restricted_container(uid=1000),
        resources=Sizing(cpu_request_m=10, cpu_limit_m=100, memory_request_mib=32, memory_limit_mib=64).resources(),
    )
    workload.add_init_container(name="init", image=versions.PYTHON_IMAGE, security_context=restricted_container(uid=1000))
    if hardened:
        harden(workload)
    return list(chart.to_json())


def test_hardened_cdk8s_plus_workload_passes_restricted() -> None:
    assert policy.check_restricted(deployment(hardened=True)) == []


def test_without_harden_seccomp_and_capabilities_are_missing() -> None:
    problems = policy.check_restricted(deployment(hardened=False))
    assert any("seccompProfile" in p for p in problems)
    assert any("container app: capabilities do not drop ALL" in p for p in problems)
    assert any("container init: capabilities do not drop ALL" in p for p in problems)
