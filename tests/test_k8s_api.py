"""The generated Kubernetes API (final_problem/k8s_api.py, tools/gen_k8s_api.py).

It is what the generator writes from the pinned schema, and its names are cdk8s's: every
type it shares with cdk8s-plus-27 (same schema definition) has the same class name and
the same Python and JSON name for every field both have.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import cdk8s
import pytest
from cdk8s_plus_27 import k8s as jsii_k8s

from final_problem import k8s, k8s_api
from final_problem.objects import ObjectChart

ROOT = Path(__file__).resolve().parents[1]


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_k8s_api", ROOT / "tools" / "gen_k8s_api.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_module_is_what_the_generator_writes_from_the_schema() -> None:
    gen = _generator()
    assert (ROOT / "final_problem" / "k8s_api.py").read_text() == gen.render(gen.schema_definitions()), (
        "final_problem/k8s_api.py is out of date: run make k8s-api"
    )


def _jsii_structs() -> dict[str, tuple[str, dict[str, str]]]:
    """cdk8s-plus-27's structs: class name -> (schema definition, Python -> JSON field names)."""
    found: dict[str, tuple[str, dict[str, str]]] = {}
    for name in jsii_k8s.__all__:
        cls = getattr(jsii_k8s, name)
        mapping = getattr(cls, "__jsii_name_mapping__", None)
        if not mapping:
            continue
        fields: dict[str, str] = {}
        definition = ""
        for python_name in mapping:
            doc = getattr(getattr(cls, python_name, None), "__doc__", None) or ""
            match = re.search(r":schema: (\S+)#(\S+)", doc)
            if match:
                definition, fields[python_name] = match.group(1), match.group(2)
        if definition:
            found[name] = (definition, fields)
    return found


def test_names_are_cdk8s_plus_27s_for_every_type_both_have() -> None:
    ours: dict[str, Any] = {}
    for name in k8s_api.__all__:
        cls = getattr(k8s_api, name)
        if getattr(cls, "_fields", None) is not None and getattr(cls, "_schema", ""):
            ours[cls._schema] = cls
    compared = 0
    for name, (definition, fields) in _jsii_structs().items():
        cls = ours.get(definition)
        if cls is None:
            continue  # a type of 1.27 gone by 1.34, or an alpha/beta one
        assert cls.__name__ == name, definition
        for python_name, json_name in fields.items():
            if json_name in {j for j, _ in cls._fields.values()}:
                assert cls._fields.get(python_name, ("",))[0] == json_name, f"{name}.{python_name}"
                compared += 1
    assert compared > 1000  # the comparison ran over the whole shared API


def test_the_renamed_cases_follow_cdk8s_rules() -> None:
    assert k8s.ServiceSpec._fields["cluster_ip"][0] == "clusterIP"
    assert k8s.ServiceSpec._fields["cluster_i_ps"][0] == "clusterIPs"
    assert k8s.NetworkPolicyIngressRule._fields["from_"][0] == "from"
    assert k8s.HttpGetAction._schema == "io.k8s.api.core.v1.HTTPGetAction"
    assert k8s.KubeEvent._gvk == ("events.k8s.io/v1", "Event")
    assert k8s.KubeHorizontalPodAutoscalerV2._gvk == ("autoscaling/v2", "HorizontalPodAutoscaler")


@pytest.mark.parametrize("kind, api_version", [
    ("KubeStatefulSet", "apps/v1"), ("KubeJob", "batch/v1"), ("KubePodDisruptionBudget", "policy/v1"),
    ("KubeNetworkPolicy", "networking.k8s.io/v1"), ("KubeRole", "rbac.authorization.k8s.io/v1"),
    ("KubeStorageClass", "storage.k8s.io/v1"), ("KubeService", "v1"),
])
def test_a_kind_renders_its_api_version_and_kind(kind: str, api_version: str) -> None:
    chart = ObjectChart(cdk8s.App(), "Kinds")
    required = {"KubeStorageClass": {"provisioner": "ebs.csi.aws.com"}}.get(kind, {})
    getattr(k8s, kind)(chart, "Object", metadata=k8s.ObjectMeta(name="x"), **required)
    (rendered,) = chart.to_json()
    assert (rendered["apiVersion"], rendered["kind"]) == (api_version, kind.removeprefix("Kube"))


def test_a_field_new_since_1_27_is_there() -> None:
    """The API is 1.34's: a field cdk8s-plus-27 (1.27) lacks renders by its JSON name."""
    assert "traffic_distribution" not in jsii_k8s.ServiceSpec.__jsii_name_mapping__
    assert k8s.ServiceSpec(traffic_distribution="PreferClose").to_json() == {"trafficDistribution": "PreferClose"}
