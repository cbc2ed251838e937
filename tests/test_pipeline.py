"""The component registry and chart pipeline: order, dependencies, output files, limits."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
import yaml
from aws_cdk.assertions import Template

from final_problem import app as platform_app
from final_problem import components, manifests
from final_problem.components import COMPONENTS, PlatformChart, register
from final_problem.config import Settings
from final_problem.errors import ConfigError
from final_problem.imports import k8s
from tests.conftest import new_app


@pytest.fixture
def registry() -> Iterator[dict]:
    """Register test components; restore the registry afterwards."""
    components.resolve(("base",))
    saved = dict(COMPONENTS)
    yield COMPONENTS
    COMPONENTS.clear()
    COMPONENTS.update(saved)


def make_component(name: str, requires: tuple[str, ...] = ("base",), payload: int = 0) -> type[PlatformChart]:
    class Extra(PlatformChart):
        component = name
        construct_id = name.title().replace("-", "")
        version = "1.0.0"

        def __init__(self, scope, id, **kwargs):  # type: ignore[no-untyped-def]
            super().__init__(scope, id, **kwargs)
            k8s.KubeConfigMap(
                self, "Data",
                metadata=k8s.ObjectMeta(name=f"{name}-data", namespace="platform"),
                data={"blob": "x" * payload},
            )

    Extra.requires = requires
    return register(Extra)


def test_base_alone_renders(registry: dict) -> None:
    assert components.resolve(("base",)) == ["base"]


def test_dependencies_come_first_whatever_the_listed_order(registry: dict) -> None:
    make_component("alpha")
    make_component("beta", requires=("base", "alpha"))
    assert components.resolve(("beta", "alpha", "base")) == ["base", "alpha", "beta"]


def test_missing_dependency_names_both_components(registry: dict) -> None:
    make_component("alpha")
    make_component("beta", requires=("base", "alpha"))
    with pytest.raises(ConfigError, match=r"component 'beta' requires component 'alpha', which is not enabled") as info:
        components.resolve(("base", "beta"))
    assert str(info.value).endswith("Fix: set components=base,beta,alpha, or remove 'beta'")


def test_unknown_component_lists_the_known_ones(registry: dict) -> None:
    with pytest.raises(ConfigError, match=r"^components = 'nope': unknown component \(registered: base, .*\)\. Fix: set components=base, adding only registered names$"):
        components.resolve(("base", "nope"))


def test_cycle_is_reported_with_its_path(registry: dict) -> None:
    make_component("alpha", requires=("beta",))
    make_component("beta", requires=("alpha",))
    with pytest.raises(ConfigError, match=r"alpha -> beta -> alpha.*cycle"):
        components.resolve(("alpha", "beta"))


def test_a_second_component_with_the_same_name_is_refused(registry: dict) -> None:
    make_component("alpha")
    with pytest.raises(ConfigError, match="already registered"):
        make_component("alpha")


def test_yaml_files_are_numbered_in_dependency_order_and_stale_ones_removed(registry: dict, tmp_path: Path) -> None:
    make_component("alpha")
    (tmp_path / "pi").mkdir()
    (tmp_path / "pi" / "09-gone.yaml").write_text("stale")
    written = manifests.write_profile(Settings(components=("alpha", "base")), "pi", tmp_path)
    assert [p.name for p in written] == ["01-base.yaml", "02-alpha.yaml"]
    assert sorted(p.name for p in (tmp_path / "pi").iterdir()) == ["01-base.yaml", "02-alpha.yaml"]
    docs = list(yaml.safe_load_all((tmp_path / "pi" / "02-alpha.yaml").read_text()))
    assert [d["metadata"]["name"] for d in docs] == ["alpha-data"]


def test_chart_dependencies_become_cloudformation_dependencies(registry: dict) -> None:
    make_component("alpha")
    app = new_app()
    stacks = platform_app.build(app, Settings(components=("base", "alpha")))
    template = Template.from_stack(stacks.cluster)
    manifests_ = template.find_resources("Custom::AWSCDK-EKS-KubernetesResource")
    alpha = next(v for k, v in manifests_.items() if k.startswith("ClusterAlpha"))
    base_id = next(k for k in manifests_ if k.startswith("ClusterBase"))
    assert base_id in alpha["DependsOn"]
    assert set(stacks.cluster.platform.manifests) == {"base", "alpha"}


def test_template_over_the_cloudformation_limit_fails_synthesis(registry: dict, tmp_path: Path) -> None:
    make_component("huge", payload=1_100_000)
    app = new_app(outdir=tmp_path)
    platform_app.build(app, Settings(components=("base", "huge")))
    assembly = app.synth()
    with pytest.raises(ConfigError, match=r"final-problem-cluster.*over CloudFormation's 1,000,000-byte limit.*ClusterHuge"):
        platform_app.check_template_sizes(assembly)


def test_every_template_of_the_full_platform_is_under_the_limit(synth) -> None:  # type: ignore[no-untyped-def]
    files = list(synth.outdir.glob("*.template.json"))
    assert len(files) == 2
    for path in files:
        assert path.stat().st_size < platform_app.MAX_TEMPLATE_BYTES, path.name


# --- settings checked before aws-cdk-lib loads --------------------------------------------

def test_the_app_reads_the_context_the_cli_hands_it_the_file_winning(tmp_path: Path) -> None:
    overflow = tmp_path / "context.json"
    overflow.write_text('{"node_desired": 5, "region": "eu-west-1"}')
    context = platform_app.cli_context({
        platform_app.CONTEXT_ENV: '{"node_desired": 4, "cluster_name": "x"}',
        platform_app.CONTEXT_OVERFLOW_ENV: str(overflow),
    })
    assert context == {"node_desired": 5, "cluster_name": "x", "region": "eu-west-1"}


def test_a_bad_setting_fails_before_aws_cdk_lib_is_imported(tmp_path: Path) -> None:
    import subprocess
    import sys

    probe = (
        "import sys\n"
        "from final_problem import app\n"
        "try:\n"
        "    app.check_cli_settings()\n"
        "except app.ConfigError as e:\n"
        "    print(e, '|', 'aws_cdk' in sys.modules)\n"
    )
    env = {"PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin", platform_app.CONTEXT_ENV: '{"components": "base,zookeeper", "zookeeper.replicas": "4"}'}
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "zookeeper.replicas = 4 (from -c): must be one of 3, 5, 7. Fix: set zookeeper.replicas=3 | False"
