"""The policy checks hold an app's own component as they hold the bundled charts: synthesis
fails in one line naming the component, the object, the check and the fix, and
``python -m final_problem.policy DIR`` lists every finding of rendered manifests.

``Shop`` is a component built on final_problem.api that passes every check; each variant
breaks exactly one of them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import cdk8s
import pytest

from final_problem import api, components, manifests, policy, versions
from final_problem import app as platform_app
from tests.conftest import ROOT

# Pinned by the platform, so a render is checked alike with or without the app imported.
IMAGE = versions.PYTHON_IMAGE
UNDECLARED_IMAGE = "docker.io/library/nginx:1.29.4"
SIZING = api.Sizing(cpu_request_m=100, cpu_limit_m=200, memory_request_mib=64, memory_limit_mib=128)
k8s = api.k8s


def shop_component(breaks: str | None) -> type[api.PlatformChart]:
    """A component of one Deployment that passes every check, or breaks ``breaks``."""

    class ShopChart(api.PlatformChart):
        component = "shop"
        construct_id = "Shop"
        version = "1.29.3"
        requires = ("base",)
        images = (IMAGE,)

        def __init__(self, scope, id, *, settings, profile, dependencies) -> None:
            super().__init__(scope, id, settings=settings, profile=profile, dependencies=dependencies)
            if breaks == "network_policies":  # a namespace without the default-deny policy
                ns = k8s.KubeNamespace(self, "Namespace", metadata=k8s.ObjectMeta(name="shop", labels={
                    "pod-security.kubernetes.io/enforce": "restricted", "app.kubernetes.io/component": "namespace"}))
            else:
                ns = api.RestrictedNamespace(self, "Namespace", name="shop")
            selector = self.label_set.selector("server")
            container = k8s.Container(
                name="nginx",
                image=UNDECLARED_IMAGE if breaks == "images" else IMAGE,
                resources=None if breaks == "resources" else api.raw_resources(SIZING),
                security_context=api.container_context(uid=101) if breaks != "restricted" else None,
                liveness_probe=k8s.Probe(tcp_socket=k8s.TcpSocketAction(port=api.int_or_string(8080))),
                readiness_probe=None if breaks == "probes" else k8s.Probe(
                    http_get=k8s.HttpGetAction(path="/ready", port=api.int_or_string(8080))),
                env=[k8s.EnvVar(name="ADMIN_PASSWORD", value="hunter2")] if breaks == "no_secret_values" else None,
            )
            pod = k8s.PodTemplateSpec(
                metadata=k8s.ObjectMeta(labels={**self.label_set.chart_labels(), **selector}),
                spec=k8s.PodSpec(security_context=api.pod_context(uid=101), containers=[container]),
            )
            namespace = "shop"
            if breaks == "namespaces":  # an object in a namespace the render does not create
                api.set_component(k8s.KubeConfigMap(self, "Stray", data={"a": "b"},
                                                    metadata=k8s.ObjectMeta(name="stray", namespace="elsewhere")),
                                  "config")
            if breaks == "quorum_sets":
                workload = k8s.KubeStatefulSet(self, "Server", metadata=k8s.ObjectMeta(name="shop", namespace=namespace),
                                               spec=k8s.StatefulSetSpec(replicas=3, service_name="shop", template=pod,
                                                                        selector=k8s.LabelSelector(match_labels=selector)))
            else:
                workload = k8s.KubeDeployment(
                    self, "Server", metadata=k8s.ObjectMeta(name="shop", namespace=namespace),
                    spec=k8s.DeploymentSpec(replicas=2 if breaks == "replicated_deployments" else 1, template=pod,
                                            selector=k8s.LabelSelector(match_labels=selector)))
            if breaks != "labels":
                api.set_component(workload, "server")
            workload.add_dependency(ns)

    return ShopChart


def render(breaks: str | None) -> dict[str, list[dict]]:
    api.register(shop_component(breaks))
    settings = api.Settings(components=("base", "shop"))
    charts = components.build_charts(cdk8s.App(), settings, api.PI)
    return {name: manifests.chart_objects(chart) for name, chart in charts.items()}


def test_the_component_passes_every_check(registry: dict) -> None:
    platform_app.check_policy({"pi": render(None)})


@pytest.mark.parametrize("check", sorted(policy.CHECKS))
def test_synth_fails_in_one_line_on_a_component_that_breaks_a_check(registry: dict, check: str) -> None:
    rendered = render(check)
    objects = [o for objs in rendered.values() for o in objs]
    assert {name for name, _ in policy.findings(objects)} == {check}
    with pytest.raises(api.ConfigError) as raised:
        platform_app.check_policy({"pi": rendered})
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("components = 'shop': ")
    assert f"(policy check '{check}', profile pi)" in message
    assert message.endswith(f"Fix: {policy.FIXES[check]}")


def test_a_missing_component_label_names_the_object_and_the_fix(registry: dict) -> None:
    with pytest.raises(api.ConfigError) as raised:
        platform_app.check_policy({"pi": render("labels")})
    assert str(raised.value).startswith(
        "components = 'shop': Deployment/shop/shop: missing labels ['app.kubernetes.io/component'] "
        "(policy check 'labels', profile pi)")
    assert 'set_component(obj, "<component>")' in str(raised.value)


def _synth(tmp_path: Path, breaks: str) -> subprocess.CompletedProcess[str]:
    """app.py as the CDK CLI runs it, in an app that registers the component first."""
    (tmp_path / "shop_app.py").write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        from final_problem.app import main, one_line_errors
        from final_problem import api
        from tests.test_policy_extension import shop_component
        with one_line_errors():
            api.register(shop_component({breaks!r}))
        main()
    """))
    base = json.loads((ROOT / "cdk.json").read_text())["context"]
    env = {**os.environ, "CDK_OUTDIR": str(tmp_path / "cdk.out"),
           "CDK_CONTEXT_JSON": json.dumps({**base, "components": ["base", "shop"], "dist_dir": str(tmp_path / "dist")})}
    env.pop("FINAL_PROBLEM_TRACEBACK", None)
    return subprocess.run([sys.executable, "-O", str(tmp_path / "shop_app.py")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)


def test_cdk_synth_of_an_app_with_an_unlabelled_component_fails_in_one_line(tmp_path: Path) -> None:
    result = _synth(tmp_path, "labels")
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("error: components = 'shop': Deployment/shop/shop: missing labels "
                                    "['app.kubernetes.io/component']")
    assert not (tmp_path / "dist").exists()


def _write_render(tmp_path: Path, breaks: str | None) -> tuple[Path, list[dict]]:
    rendered = render(breaks)
    manifests.write_objects(rendered, tmp_path / "dist" / "pi")
    return tmp_path / "dist", [o for objs in rendered.values() for o in objs]


def _policy(*args: str, path: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(p) for p in (path, ROOT) if p)}
    return subprocess.run([sys.executable, "-m", "final_problem.policy", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("check", sorted(policy.CHECKS))
def test_the_policy_command_lists_each_finding_in_a_line(registry: dict, tmp_path: Path, check: str) -> None:
    dist, objects = _write_render(tmp_path, check)
    expected = policy.findings(objects)
    result = _policy(str(dist))
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert len(lines) == len(expected)
    for line, (name, finding) in zip(lines, expected, strict=True):
        assert line.endswith(f"{finding} [{name}]")
    assert all(line.startswith(str(dist / "pi" / "02-shop.yaml") + ": ") for line in lines)


def test_the_policy_command_passes_a_clean_render(registry: dict, tmp_path: Path) -> None:
    dist, _ = _write_render(tmp_path, None)
    result = _policy(str(dist))
    assert (result.returncode, result.stdout) == (0, "26 objects in 1 render(s): every policy check passes\n")


def test_the_policy_command_accepts_the_images_an_imported_app_declares(registry: dict, tmp_path: Path) -> None:
    dist, _ = _write_render(tmp_path, "images")
    assert _policy(str(dist)).returncode == 1
    (tmp_path / "shop_ext.py").write_text(
        "from final_problem.api import register\n"
        "from tests.test_policy_extension import UNDECLARED_IMAGE, shop_component\n"
        "cls = shop_component('images')\n"
        "cls.images = (UNDECLARED_IMAGE,)\n"
        "register(cls)\n")
    result = _policy("--import", "shop_ext", str(dist), path=tmp_path)
    assert result.returncode == 0, result.stdout


def test_the_policy_command_refuses_a_missing_folder_in_one_line(tmp_path: Path) -> None:
    result = _policy(str(tmp_path / "nowhere"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and result.stdout == ""
