"""The extension API: what a component written in another app imports and relies on.

The public names, the registration contract (each violation fails at import time with a
ConfigError), the policy checker's view of a component's declared images, the building
blocks' defaults, and the stacks in an app with CDK's default feature flags.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import aws_cdk as cdk
import cdk8s
import pytest
from aws_cdk.assertions import Template

from final_problem import api, policy, versions
from final_problem import app as platform_app
from final_problem.config import Settings
from final_problem.stacks import nag
from tests.conftest import ROOT, new_app


# --- the public names ------------------------------------------------------------------

PUBLIC = (
    "PlatformChart", "register", "ComponentSettings", "setting", "per_profile", "ConfigError",
    "set_component", "ports", "int_or_string", "quantity", "k8s", "RestrictedNamespace",
    "QuorumStatefulSet", "ClaimSpec", "GeneratedSecrets", "SecretSpec", "Sizing", "container_context",
    "pod_context", "raw_resources", "LabelSet", "MONITORING_NAMESPACE_LABEL", "Settings", "Profile",
    "Group", "ObjectChart", "JsonPatch", "secret_env", "ZOOKEEPER_CLIENT_LABEL", "to_cdk8s", "from_cdk8s",
)


@pytest.mark.parametrize("name", PUBLIC)
def test_the_api_exports_each_name_with_a_docstring(name: str) -> None:
    assert name in api.__all__
    value = getattr(api, name)
    # k8s is cdk8s-plus-27's generated module, documented in final_problem.imports.
    if inspect.isclass(value) or inspect.isfunction(value):
        assert (inspect.getdoc(value) or "").strip(), f"{name} has no docstring"


def test_every_exported_name_exists() -> None:
    assert [n for n in api.__all__ if not hasattr(api, n)] == []


def test_the_readme_lists_every_public_name() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Extending the platform"):readme.index("## Wiping data")]
    assert [n for n in api.__all__ if f"`{n}" not in section] == []


def test_the_chart_constructor_contract_is_documented() -> None:
    doc = inspect.getdoc(api.PlatformChart) or ""
    for word in ("component", "construct_id", "requires", "version", "settings_class", "images", "dependencies"):
        assert f"``{word}``" in doc, word


# --- RestrictedNamespace ---------------------------------------------------------------

def namespace_labels(chart: cdk8s.Chart) -> dict[str, str]:
    (ns,) = [o for o in chart.to_json() if o["kind"] == "Namespace"]
    return ns["metadata"]["labels"]


class _Bare(api.PlatformChart):
    component = "bare"
    construct_id = "Bare"
    version = "1.0.0"


def test_namespace_pss_version_follows_the_chart_settings() -> None:
    chart = _Bare(cdk8s.App(), "Bare", settings=Settings(kubernetes_version="1.34"), profile=api.EKS, dependencies={})
    api.RestrictedNamespace(chart, "Namespace", name="bare")
    labels = namespace_labels(chart)
    for mode in ("enforce", "audit", "warn"):
        assert labels[f"pod-security.kubernetes.io/{mode}"] == "restricted"
        assert labels[f"pod-security.kubernetes.io/{mode}-version"] == "v1.34"


def test_namespace_outside_a_platform_chart_uses_the_platform_version() -> None:
    chart = api.ObjectChart(cdk8s.App(), "Plain")
    api.RestrictedNamespace(chart, "Namespace", name="plain")
    assert namespace_labels(chart)["pod-security.kubernetes.io/enforce-version"] == f"v{versions.KUBERNETES_VERSION}"


def test_namespace_takes_extra_labels_and_an_explicit_version() -> None:
    chart = api.ObjectChart(cdk8s.App(), "Plain")
    ns = api.RestrictedNamespace(
        chart, "Namespace", name="plain", pss_version="latest", labels=api.MONITORING_NAMESPACE_LABEL
    )
    labels = namespace_labels(chart)
    assert labels["final-problem.io/monitoring"] == "true"
    assert labels["pod-security.kubernetes.io/warn-version"] == "latest"
    assert labels["app.kubernetes.io/component"] == "namespace"
    assert ns.labels == labels


@pytest.mark.parametrize("key", ["pod-security.kubernetes.io/enforce", "app.kubernetes.io/component"])
def test_namespace_labels_cannot_replace_its_own(key: str) -> None:
    chart = api.ObjectChart(cdk8s.App(), "Plain")
    with pytest.raises(api.ConfigError, match=rf"^RestrictedNamespace\(plain\)\.labels = '{key}': .*sets this label itself"):
        api.RestrictedNamespace(chart, "Namespace", name="plain", labels={key: "privileged"})


def test_namespace_refuses_a_malformed_pss_version() -> None:
    chart = api.ObjectChart(cdk8s.App(), "Plain")
    with pytest.raises(api.ConfigError, match=r"^RestrictedNamespace\(plain\)\.pss_version = '1\.36': .*Fix: leave it unset"):
        api.RestrictedNamespace(chart, "Namespace", name="plain", pss_version="1.36")


# --- registration fails with ConfigError -----------------------------------------------

def component_class(**attrs: Any) -> type[api.PlatformChart]:
    """A component class with valid defaults, overridden by ``attrs`` (None deletes one)."""
    body: dict[str, Any] = {"__module__": __name__, "component": "search", "construct_id": "Search", "version": "1.0.0", "requires": ("base",)}
    body.update(attrs)
    return type("Search", (api.PlatformChart,), {k: v for k, v in body.items() if v is not None})


def test_a_valid_component_registers(registry: dict) -> None:
    cls = api.register(component_class(images=("docker.io/library/python:3.13.9-slim-trixie",)))
    assert registry["search"] is cls


@pytest.mark.parametrize(("attrs", "message"), [
    ({"construct_id": None}, r"^tests\.test_extension_api\.Search\.construct_id = None: a component needs a PascalCase construct id.*Fix: set construct_id = \"Search\""),
    ({"construct_id": "search"}, r"\.construct_id = 'search': a component needs a PascalCase construct id"),
    ({"version": None}, r"\.version = None: a component names the upstream version it deploys\. Fix: set version = \"1\.2\.3\""),
    ({"version": " "}, r"\.version = ' ': a component names the upstream version"),
    ({"component": None}, r"\.component = None: a component needs a name of lowercase letters"),
    ({"component": "Search"}, r"\.component = 'Search': a component needs a name"),
    ({"settings_class": dict}, r"\.settings_class = <class 'dict'>: must be a ComponentSettings dataclass"),
])
def test_a_broken_contract_fails_at_registration(registry: dict, attrs: dict[str, Any], message: str) -> None:
    with pytest.raises(api.ConfigError, match=message):
        api.register(component_class(**attrs))
    assert "search" not in registry


@pytest.mark.parametrize("image", [
    "docker.io/library/opensearch:latest",   # floating tag
    "docker.io/library/opensearch",          # no tag
    "opensearch:2.19.0",                     # no registry
    "docker.io/library/opensearch:2",        # major-only tag
])
def test_an_unpinned_image_fails_at_registration(registry: dict, image: str) -> None:
    with pytest.raises(api.ConfigError, match=rf"\.images = '{image}': an image must name its registry and an exact version tag"):
        api.register(component_class(images=(image,)))
    assert "search" not in registry


def test_a_duplicate_component_name_fails_at_registration(registry: dict) -> None:
    with pytest.raises(api.ConfigError, match=r"\.component = 'redis': already registered by final_problem\.charts\.redis\.RedisChart"):
        api.register(component_class(component="redis"))


def test_a_duplicate_construct_id_fails_at_registration(registry: dict) -> None:
    with pytest.raises(api.ConfigError, match=r"\.construct_id = 'ZooKeeper': already used by component 'zookeeper'"):
        api.register(component_class(construct_id="ZooKeeper"))
    assert "search" not in registry


def test_a_name_clash_blames_the_extension_even_when_the_bundled_chart_registers_after_it(registry: dict) -> None:
    """Bundled charts may be imported after an extension registered: the clash still names the
    extension's class, never the bundled chart."""
    bundled = registry.pop("redis")
    extension = api.register(component_class(component="redis", construct_id="ExtensionRedis"))
    with pytest.raises(api.ConfigError, match=r"^tests\.test_extension_api\.Search\.component = 'redis': "
                       r"already registered by final_problem\.charts\.redis\.RedisChart\. Fix: give the component a unique name$"):
        api.register(bundled)
    assert registry["redis"] is extension


def test_a_construct_id_clash_blames_the_extension_even_when_the_bundled_chart_registers_after_it(registry: dict) -> None:
    bundled = registry.pop("zookeeper")
    api.register(component_class(construct_id="ZooKeeper"))
    with pytest.raises(api.ConfigError, match=r"^tests\.test_extension_api\.Search\.construct_id = 'ZooKeeper': "
                       r"already used by component 'zookeeper' \(final_problem\.charts\.zookeeper\.ZooKeeperChart\)"):
        api.register(bundled)


def test_an_extension_registered_before_the_bundled_charts_are_imported_is_blamed(tmp_path) -> None:
    """A fresh interpreter: the extension's decorator runs before anything imported the
    bundled charts, and the clash fails there, naming the extension."""
    import subprocess
    import sys

    code = (
        "from final_problem.api import PlatformChart, register\n"
        "class Mine(PlatformChart):\n"
        "    component = 'kafka'\n    construct_id = 'MyKafka'\n    version = '1.0.0'\n"
        "register(Mine)\n"
    )
    (tmp_path / "ext.py").write_text(code)
    result = subprocess.run([sys.executable, "-c", "import ext"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=120, env={"PYTHONPATH": f"{tmp_path}:{ROOT}", "PATH": ""})
    assert result.returncode != 0
    assert "ext.Mine.component = 'kafka': already registered by final_problem.charts.kafka.KafkaChart" in result.stderr


# --- one error API ---------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class _Rules(api.ComponentSettings):
    replicas: int = api.setting(3, doc="Members.")


@pytest.mark.parametrize("make", [
    lambda s: api.ConfigError("search.replicas", 4, "must be odd", "set search.replicas=3"),
    lambda s: api.ConfigError(setting="search.replicas", value=4, problem="must be odd", fix="set search.replicas=3"),
    lambda s: s.error("replicas", 4, "must be odd", "set search.replicas=3"),
    lambda s: s.error("replicas", problem="must be odd", fix="set search.replicas=3"),
    lambda s: s.error("replicas", value=4, problem="must be odd", fix="set search.replicas=3"),
    lambda s: s.error("replicas", "must be odd", "set search.replicas=3"),  # the earlier form, kept
], ids=["ConfigError", "ConfigError-keywords", "error-as-ConfigError", "error-keywords", "error-value-keyword", "error-earlier-form"])
def test_one_error_api_in_settings_and_elsewhere(make) -> None:
    settings = object.__new__(_Rules)
    object.__setattr__(settings, "replicas", 4)
    _Rules.section = "search"
    error = make(settings)
    assert isinstance(error, api.ConfigError)
    assert (error.setting, error.value, error.problem, error.fix) == ("search.replicas", 4, "must be odd", "set search.replicas=3")
    assert str(error) == "search.replicas = 4: must be odd. Fix: set search.replicas=3"


def test_error_without_a_fix_is_refused() -> None:
    settings = object.__new__(_Rules)
    _Rules.section = "search"
    with pytest.raises(TypeError, match="needs a problem and a fix"):
        settings.error("replicas", problem="must be odd")


def test_a_settings_class_of_another_component_fails_at_registration(registry: dict) -> None:
    zookeeper_settings = registry["zookeeper"].settings_class
    with pytest.raises(api.ConfigError, match=r"\.settings_class = 'ZooKeeperProps': already the settings of component 'zookeeper'"):
        api.register(component_class(settings_class=zookeeper_settings))
    assert zookeeper_settings.section == "zookeeper"


def test_a_failed_registration_changes_nothing(registry: dict) -> None:
    @dataclass(frozen=True, kw_only=True)
    class SearchSettings(api.ComponentSettings):
        replicas: int = api.setting(3, doc="Members.")

    with pytest.raises(api.ConfigError, match=r"\.images = 'docker\.io/library/solr:latest'"):
        api.register(component_class(settings_class=SearchSettings, images=("docker.io/library/solr:latest",)))
    assert SearchSettings.section == "" and "search" not in registry
    api.register(component_class(settings_class=SearchSettings))
    assert SearchSettings.section == "search"


def test_registering_the_same_class_twice_is_harmless(registry: dict) -> None:
    cls = component_class()
    assert api.register(api.register(cls)) is cls


# --- the policy checker accepts a component's declared images, and only those ----------

EXTENSION_IMAGE = "docker.io/example/search:2.19.0"


def pod_with(image: str) -> list[dict[str, Any]]:
    return [{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "ns"},
             "spec": {"containers": [{"name": "c", "image": image}]}}]


def test_policy_refuses_an_image_no_component_declares(registry: dict) -> None:
    api.register(component_class())
    assert policy.check_images(pod_with(EXTENSION_IMAGE)) == [
        f"Pod/ns/p container c: image '{EXTENSION_IMAGE}' is neither pinned in final_problem/versions.py "
        "nor declared in its component's `images`"
    ]


def test_policy_accepts_the_image_a_component_declares(registry: dict) -> None:
    api.register(component_class(images=(EXTENSION_IMAGE,)))
    assert policy.check_images(pod_with(EXTENSION_IMAGE)) == []
    # ...and only that exact reference: another tag of the same image is still refused.
    assert len(policy.check_images(pod_with(EXTENSION_IMAGE.replace("2.19.0", "2.19.1")))) == 1


# --- CDK feature flags -------------------------------------------------------------------

def cluster_template(app: cdk.App) -> Template:
    stacks = platform_app.build(app, Settings())
    app.synth()
    return Template.from_stack(stacks.cluster)


def checkov_skipped(resources: dict[str, Any]) -> dict[str, list[str]]:
    return {
        logical_id: [s["id"] for s in body.get("Metadata", {}).get("checkov", {}).get("skip", [])]
        for logical_id, body in resources.items()
    }


def test_the_stacks_synthesize_with_cdk_default_feature_flags() -> None:
    """An app whose cdk.json has none of this project's feature flags: without
    useCdkManagedLogGroup aws-cdk-lib creates no log group for the kubectl provider,
    so there is nothing to mark; its Lambda functions are still marked."""
    app = cdk.App(context={})
    assert not cdk.FeatureFlags.of(app).is_enabled(nag.LAMBDA_LOG_GROUP_FLAG)
    template = cluster_template(app)
    assert template.find_resources("AWS::Logs::LogGroup") == {}
    lambdas = checkov_skipped(template.find_resources("AWS::Lambda::Function"))
    assert lambdas and all("CKV_AWS_115" in ids for ids in lambdas.values())


def test_with_the_project_flags_the_provider_log_group_is_marked() -> None:
    template = cluster_template(new_app())
    log_groups = checkov_skipped(template.find_resources("AWS::Logs::LogGroup"))
    provider = {k: v for k, v in log_groups.items() if "KubectlProvider" in k}
    assert provider and all(ids == ["CKV_AWS_158"] for ids in provider.values())


def test_a_skip_that_matches_nothing_fails_unless_its_flag_is_off() -> None:
    stack = cdk.Stack(cdk.App(context={nag.LAMBDA_LOG_GROUP_FLAG: True}), "Empty")
    with pytest.raises(RuntimeError, match=rf"no AWS::Logs::LogGroup under Empty although the feature flag {nag.LAMBDA_LOG_GROUP_FLAG} is on"):
        nag.checkov_skip(stack, resource_type="AWS::Logs::LogGroup", skips={"X": "y"}, feature_flag=nag.LAMBDA_LOG_GROUP_FLAG)
    with pytest.raises(RuntimeError, match=r"no AWS::Lambda::Function under Empty, so the checkov skips \['X'\]"):
        nag.checkov_skip(stack, resource_type="AWS::Lambda::Function", skips={"X": "y"})
    off = cdk.Stack(cdk.App(context={nag.LAMBDA_LOG_GROUP_FLAG: False}), "Empty")
    assert nag.checkov_skip(off, resource_type="AWS::Logs::LogGroup", skips={"X": "y"}, feature_flag=nag.LAMBDA_LOG_GROUP_FLAG) == 0
