"""Every workload of every chart, in both profiles, passes the platform's policy.

The checks live in final_problem.policy; the negative tests below prove each one fails
on an object that breaks its rule, so a passing walk means something.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from final_problem import policy, versions
from tests.conftest import TARGETS, objects_of


@pytest.mark.parametrize("profile", TARGETS)
@pytest.mark.parametrize("check", sorted(policy.CHECKS))
def test_rendered_objects_pass(check: str, profile: str) -> None:
    assert policy.CHECKS[check](objects_of(profile)) == []


def test_every_profile_renders_workloads_to_walk() -> None:
    for profile in TARGETS:
        assert list(policy.workloads(objects_of(profile)))


# --- each check fails on an object that breaks its rule ------------------------------

LABELS = {k: "x" for k in policy.REQUIRED_LABELS}


def good_statefulset() -> dict[str, Any]:
    selector = {"app.kubernetes.io/name": "db"}
    pod_labels = {**LABELS, **selector}
    container = {
        "name": "db",
        "image": versions.PYTHON_IMAGE,
        "securityContext": {
            "runAsNonRoot": True, "runAsUser": 1000, "allowPrivilegeEscalation": False,
            "privileged": False, "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"},
        },
        "resources": {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"cpu": "1", "memory": "1Gi"}},
        "livenessProbe": {"tcpSocket": {"port": 1}},
        "readinessProbe": {"exec": {"command": ["ready"]}},
    }
    return {
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "db", "namespace": "ns", "labels": LABELS},
        "spec": {
            "replicas": 3,
            "persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Retain", "whenScaled": "Retain"},
            "volumeClaimTemplates": [{"metadata": {"name": "data"}}],
            "template": {
                "metadata": {"labels": pod_labels},
                "spec": {
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 1000},
                    "containers": [container],
                    "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                        {"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": selector}}]}},
                    "topologySpreadConstraints": [
                        {"topologyKey": "topology.kubernetes.io/zone", "labelSelector": {"matchLabels": selector}}],
                },
            },
        },
    }


def good_set() -> list[dict[str, Any]]:
    return [
        {"kind": "Namespace", "metadata": {"name": "ns", "labels": {**LABELS, "pod-security.kubernetes.io/enforce": "restricted"}}},
        {"kind": "NetworkPolicy", "metadata": {"name": "deny", "namespace": "ns", "labels": LABELS}, "spec": {"podSelector": {}}},
        {"kind": "PodDisruptionBudget", "metadata": {"name": "db", "namespace": "ns", "labels": LABELS},
         "spec": {"maxUnavailable": 1, "selector": {"matchLabels": {"app.kubernetes.io/name": "db"}}}},
        good_statefulset(),
    ]


def test_the_reference_set_passes_every_check() -> None:
    for name, check in policy.CHECKS.items():
        assert check(good_set()) == [], name


def _container(objs: list[dict[str, Any]]) -> dict[str, Any]:
    return objs[3]["spec"]["template"]["spec"]["containers"][0]


def _pod(objs: list[dict[str, Any]]) -> dict[str, Any]:
    return objs[3]["spec"]["template"]["spec"]


BREAKS = {
    "restricted": [
        lambda o: _container(o)["securityContext"].update(allowPrivilegeEscalation=True),
        lambda o: _container(o)["securityContext"].update(capabilities={"drop": ["NET_RAW"]}),
        lambda o: _container(o)["securityContext"].pop("seccompProfile"),
        lambda o: _container(o)["securityContext"].update(runAsUser=0),
        lambda o: _container(o)["securityContext"].update(readOnlyRootFilesystem=False),
        lambda o: _pod(o).update(hostNetwork=True),
        lambda o: _pod(o).update(volumes=[{"name": "h", "hostPath": {"path": "/"}}]),
    ],
    "resources": [lambda o: _container(o)["resources"]["limits"].pop("memory")],
    "probes": [
        lambda o: _container(o).pop("livenessProbe"),
        lambda o: _container(o).update(readinessProbe=copy.deepcopy(_container(o)["livenessProbe"])),
    ],
    "images": [
        lambda o: _container(o).update(image="docker.io/library/python:latest"),
        lambda o: _container(o).update(image="docker.io/library/python"),
        lambda o: _container(o).update(image="docker.io/library/python:3.13.8"),
    ],
    "quorum_sets": [
        lambda o: o.pop(2),
        lambda o: o[2]["spec"].update(maxUnavailable=2),
        lambda o: _pod(o).pop("affinity"),
        lambda o: _pod(o).pop("topologySpreadConstraints"),
        lambda o: o[3]["spec"]["persistentVolumeClaimRetentionPolicy"].update(whenScaled="Delete"),
    ],
    # The replicated workload as a Deployment without its PodDisruptionBudget.
    "replicated_deployments": [lambda o: (o[3].update(kind="Deployment"), o.pop(2))],
    "network_policies": [lambda o: o[1]["spec"].update(podSelector={"matchLabels": {"other": "x"}})],
    "no_secret_values": [
        lambda o: o.append({"kind": "Secret", "metadata": {"name": "s", "namespace": "ns"}, "data": {"k": "dg=="}}),
        lambda o: _container(o).update(env=[{"name": "DB_PASSWORD", "value": "hunter2"}]),
    ],
    "labels": [
        lambda o: o[1]["metadata"].update(labels={}),
        lambda o: o[3]["spec"]["template"]["metadata"]["labels"].pop("app.kubernetes.io/version"),
    ],
    "namespaces": [lambda o: o[0]["metadata"]["labels"].update({"pod-security.kubernetes.io/enforce": "baseline"})],
}


@pytest.mark.parametrize(
    ("check", "index"),
    [(check, i) for check, breaks in BREAKS.items() for i in range(len(breaks))],
)
def test_check_fails_on_a_broken_object(check: str, index: int) -> None:
    objs = good_set()
    BREAKS[check][index](objs)
    assert policy.CHECKS[check](objs) != []


def test_every_check_has_a_negative_test() -> None:
    assert set(BREAKS) == set(policy.CHECKS)
