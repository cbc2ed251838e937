"""Kubernetes objects rendered in Python (final_problem.objects, final_problem.k8s).

The reference is cdk8s itself: the same objects built with cdk8s-plus-27's own classes in
a plain cdk8s chart must render to the same JSON, in the same order.
"""

from __future__ import annotations

from typing import Any, Callable

import cdk8s
import cdk8s_plus_27 as kplus
import pytest
from cdk8s_plus_27 import k8s as jsii_k8s

from final_problem import k8s
from final_problem.constructs.labels import set_component
from final_problem.imports import int_or_string, quantity
from final_problem.objects import Group, JsonPatch, ObjectChart, ObjectError

LABELS = {"app.kubernetes.io/name": "demo", "app.kubernetes.io/part-of": "final-problem"}


def sample(api: Any, scope: Any, group: Callable[[Any, str], Any], ios: Callable[[Any], Any],
           qty: Callable[[str], Any], depend: Callable[[Any, Any], None]) -> None:
    """The same objects through either API: ``api`` is a k8s module, ``group`` makes a
    group (a Construct or a Group), ``depend(a, b)`` makes a depend on b."""
    ns = api.KubeNamespace(scope, "Namespace", metadata=api.ObjectMeta(name="demo", labels={"x": "1"}))
    svc = api.KubeService(
        scope, "Headless",
        metadata=api.ObjectMeta(name="demo-headless", namespace="demo", annotations={"b": "2", "a": "1"}),
        spec=api.ServiceSpec(cluster_ip="None", publish_not_ready_addresses=True, selector={"z": "1", "a": "2"},
                             ports=[api.ServicePort(name="client", port=2181, target_port=ios(2181))]),
    )
    block = group(scope, "Block")
    policy = api.KubeNetworkPolicy(
        block, "Deny",
        metadata=api.ObjectMeta(name="deny", namespace="demo", labels={"app.kubernetes.io/name": "own"}),
        spec=api.NetworkPolicySpec(
            pod_selector=api.LabelSelector(), policy_types=["Ingress"],
            ingress=[api.NetworkPolicyIngressRule(from_=[api.NetworkPolicyPeer(
                namespace_selector=api.LabelSelector(match_labels={"kubernetes.io/metadata.name": "other"}))])],
        ),
    )
    cm = api.KubeConfigMap(block, "Config", metadata=api.ObjectMeta(name="config", namespace="demo"),
                           data={"b.cfg": "x\ny\n", "a.cfg": ""})
    job = api.KubeJob(
        scope, "Job", metadata=api.ObjectMeta(name="job", namespace="demo"),
        spec=api.JobSpec(template=api.PodTemplateSpec(spec=api.PodSpec(
            restart_policy="Never",
            containers=[api.Container(name="c", image="docker.io/library/python:3.13.5-slim",
                                      resources=api.ResourceRequirements(limits={"memory": qty("64Mi")}),
                                      security_context=api.SecurityContext(run_as_non_root=True))],
            volumes=[api.Volume(name="tmp", empty_dir=api.EmptyDirVolumeSource())],
        ))),
    )
    # Written before what it depends on in the tree: the order must follow the dependencies.
    depend(job, block)
    depend(svc, ns)
    depend(block, ns)
    del policy, cm


def python_chart() -> ObjectChart:
    chart = ObjectChart(cdk8s.App(), "Demo", labels=LABELS)
    sample(k8s, chart, Group, int_or_string, quantity, lambda a, b: a.add_dependency(b))
    return chart


def cdk8s_chart() -> cdk8s.Chart:
    from constructs import Construct

    chart = cdk8s.Chart(cdk8s.App(), "Demo", labels=LABELS, disable_resource_name_hashes=True)
    sample(jsii_k8s, chart, Construct,
           lambda v: jsii_k8s.IntOrString.from_number(v), jsii_k8s.Quantity.from_string,
           lambda a, b: a.node.add_dependency(b))
    return chart


def test_objects_render_as_cdk8s_renders_them() -> None:
    assert python_chart().to_json() == list(cdk8s_chart().to_json())


def test_field_names_are_the_kubernetes_ones() -> None:
    (svc,) = [o for o in python_chart().to_json() if o["kind"] == "Service"]
    assert svc["spec"]["clusterIP"] == "None" and "clusterIp" not in svc["spec"]
    (policy,) = [o for o in python_chart().to_json() if o["kind"] == "NetworkPolicy"]
    assert "from" in policy["spec"]["ingress"][0]
    assert policy["spec"]["podSelector"] == {}  # an empty selector (every pod) is kept


def test_dependencies_order_objects_and_a_group_counts_as_each_of_its_objects() -> None:
    names = [o["metadata"]["name"] for o in python_chart().to_json()]
    assert names.index("demo") < names.index("demo-headless")
    assert names.index("deny") < names.index("job") and names.index("config") < names.index("job")


def test_an_object_keeps_its_own_labels_over_the_charts() -> None:
    (policy,) = [o for o in python_chart().to_json() if o["kind"] == "NetworkPolicy"]
    assert policy["metadata"]["labels"]["app.kubernetes.io/name"] == "own"
    assert policy["metadata"]["labels"]["app.kubernetes.io/part-of"] == "final-problem"


def test_labels_annotations_and_patches_added_later_are_rendered() -> None:
    chart = ObjectChart(cdk8s.App(), "Later")
    group = Group(chart, "Workload")
    sts = k8s.KubeStatefulSet(group, "Resource", metadata=k8s.ObjectMeta(name="s", namespace="n"),
                              spec=k8s.StatefulSetSpec(service_name="s", selector=k8s.LabelSelector(),
                                                       template=k8s.PodTemplateSpec(spec=k8s.PodSpec(containers=[
                                                           k8s.Container(name="a"), k8s.Container(name="b")]))))
    set_component(group, "server")  # a group's Resource object
    sts.metadata.add_annotation("note", "yes")
    sts.add_json_patch(JsonPatch.add("/spec/template/spec/containers/1/restartPolicy", "Always"),
                       JsonPatch.add("/spec/template/spec/containers/-", {"name": "c"}))
    (rendered,) = chart.to_json()
    assert rendered["metadata"] == {"annotations": {"note": "yes"}, "labels": {"app.kubernetes.io/component": "server"},
                                    "name": "s", "namespace": "n"}
    assert rendered["spec"]["template"]["spec"]["containers"] == [{"name": "a"}, {"name": "b", "restartPolicy": "Always"}, {"name": "c"}]


def test_cdk8s_constructs_in_the_same_chart_come_after_its_objects() -> None:
    chart = ObjectChart(cdk8s.App(), "Mixed")
    kplus.ConfigMap(chart, "Plus", metadata=cdk8s.ApiObjectMetadata(name="from-plus"), data={"k": "v"})
    k8s.KubeConfigMap(chart, "Own", metadata=k8s.ObjectMeta(name="own"))
    assert [o["metadata"]["name"] for o in chart.to_json()] == ["own", "from-plus"]


def test_a_field_of_the_wrong_type_fails_when_the_value_is_built() -> None:
    chart = ObjectChart(cdk8s.App(), "Typed")
    with pytest.raises(ObjectError, match=r"^KubeConfigMapProps\.data: expected a map of str, got str$"):
        k8s.KubeConfigMap(chart, "Bad", metadata=k8s.ObjectMeta(name="x"), data="not a mapping")
    with pytest.raises(ObjectError, match=r"^ServicePort\.port: expected int, got str '80'$"):
        k8s.ServicePort(port="80")
    with pytest.raises(ObjectError, match=r"^ServicePort\.target_port: expected IntOrString, got int 80$"):
        k8s.ServicePort(port=80, target_port=80)
    with pytest.raises(ObjectError, match=r"^PodSpec\.containers\[1\]: expected Container, got str$"):
        k8s.PodSpec(containers=[k8s.Container(name="a"), "b"])
    with pytest.raises(TypeError, match="dataa"):
        k8s.KubeConfigMap(chart, "Unknown", metadata=k8s.ObjectMeta(name="x"), dataa={})


def test_a_required_field_is_required() -> None:
    with pytest.raises(ObjectError, match=r"^Container: missing required field\(s\) name$"):
        k8s.Container(image="docker.io/library/busybox:1.37.0")


def test_a_mapping_for_a_typed_field_is_made_into_that_type() -> None:
    spec = k8s.ServiceSpec(ports=[{"port": 80, "target_port": int_or_string("http")}])
    assert spec.ports == [k8s.ServicePort(port=80, target_port=int_or_string("http"))]
    assert spec.to_json() == {"ports": [{"port": 80, "targetPort": "http"}]}


def test_an_object_needs_a_name() -> None:
    chart = ObjectChart(cdk8s.App(), "Unnamed")
    with pytest.raises(ObjectError, match=r"^ConfigMap 'Cm' needs metadata\.name"):
        k8s.KubeConfigMap(chart, "Cm", metadata=k8s.ObjectMeta(namespace="n"))


def test_ids_are_unique_within_a_scope() -> None:
    chart = ObjectChart(cdk8s.App(), "Dup")
    k8s.KubeConfigMap(chart, "Cm", metadata=k8s.ObjectMeta(name="a"))
    with pytest.raises(ObjectError, match=r"^there is already a child named 'Cm' in Dup$"):
        k8s.KubeConfigMap(chart, "Cm", metadata=k8s.ObjectMeta(name="b"))


def test_objects_need_an_object_chart() -> None:
    with pytest.raises(ObjectError, match=r"^KubeConfigMap 'Cm' needs an ObjectChart .* not Chart$"):
        k8s.KubeConfigMap(cdk8s.Chart(cdk8s.App(), "Plain"), "Cm", metadata=k8s.ObjectMeta(name="a"))


def test_a_dependency_cycle_is_refused_when_rendered() -> None:
    chart = ObjectChart(cdk8s.App(), "Cycle")
    a = k8s.KubeConfigMap(chart, "A", metadata=k8s.ObjectMeta(name="a"))
    b = k8s.KubeConfigMap(chart, "B", metadata=k8s.ObjectMeta(name="b"))
    a.add_dependency(b)
    b.add_dependency(a)
    with pytest.raises(ObjectError, match=r"^dependency cycle: "):
        chart.to_json()


def test_an_applied_chart_renders_what_was_applied_and_refuses_changes() -> None:
    chart = ObjectChart(cdk8s.App(), "Applied")
    cm = k8s.KubeConfigMap(chart, "Cm", metadata=k8s.ObjectMeta(name="a"))
    applied = chart.apply()
    assert chart.to_json() == applied == [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}}]
    with pytest.raises(ObjectError, match=r"^Applied/Late: chart Applied was already applied"):
        k8s.KubeConfigMap(chart, "Late", metadata=k8s.ObjectMeta(name="b"))
    with pytest.raises(ObjectError, match=r"^Applied/Cm: chart Applied was already applied"):
        cm.add_json_patch(JsonPatch.add("/data", {}))


def test_a_dependency_across_charts_is_refused() -> None:
    app = cdk8s.App()
    a = k8s.KubeConfigMap(ObjectChart(app, "A"), "Cm", metadata=k8s.ObjectMeta(name="a"))
    b = k8s.KubeConfigMap(ObjectChart(app, "B"), "Cm", metadata=k8s.ObjectMeta(name="b"))
    with pytest.raises(ObjectError, match=r"^A/Cm cannot depend on B/Cm, in another chart"):
        a.add_dependency(b)


def test_put_first_orders_everything_already_in_the_chart_after_it() -> None:
    chart = ObjectChart(cdk8s.App(), "First")
    k8s.KubeConfigMap(chart, "Early", metadata=k8s.ObjectMeta(name="early", namespace="n"))
    block = Group(chart, "Block")
    k8s.KubeConfigMap(block, "Inner", metadata=k8s.ObjectMeta(name="inner", namespace="n"))
    ns = k8s.KubeNamespace(chart, "Namespace", metadata=k8s.ObjectMeta(name="n"))
    chart.put_first(ns)
    assert [o["metadata"]["name"] for o in chart.to_json()] == ["n", "early", "inner"]
