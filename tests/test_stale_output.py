"""A synth of fewer profiles after a full one: no folder of the earlier run is left in
dist/, and the summary reports only what this run wrote (issue 26: an old dist/pi/ was
reported as just written and ``make pi-images`` would have flashed it)."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import CDK_JSON
from tests.test_synth_errors import _project, run_cdk_synth


def _synth_and_report(project, args: list[str]) -> str:
    """``make synth``'s two steps: the CDK CLI, then the report of what it wrote."""
    result = run_cdk_synth(project, args)
    assert result.returncode == 0, result.stderr[-3000:]
    report = subprocess.run(
        [sys.executable, "-m", "final_problem.report", str(project / "cdk.out"), str(project / "dist")],
        capture_output=True, text=True, timeout=120, check=True,
    )
    return report.stdout


def test_one_profile_after_a_full_synth_leaves_and_reports_only_its_own(tmp_path) -> None:
    project = _project(tmp_path, dict(CDK_JSON))
    dist = project / "dist"

    full = _synth_and_report(project, [])
    assert sorted(p.name for p in dist.iterdir()) == ["eks", "pi"]
    assert f"Kubernetes YAML ({dist / 'pi'}/)" in full
    assert any(line.strip().startswith("pi:") for line in full.splitlines())

    only_eks = _synth_and_report(project, ["-c", "profiles=eks"])
    assert sorted(p.name for p in dist.iterdir()) == ["eks"]
    assert f"Kubernetes YAML ({dist / 'eks'}/)" in only_eks
    assert "pi/" not in only_eks
    assert not any(line.strip().startswith("pi:") for line in only_eks.splitlines())


def test_the_report_ignores_a_folder_the_synth_did_not_write(tmp_path) -> None:
    """Whatever else is in dist/ (a folder copied there by hand), the summary lists only the
    profiles the app recorded."""
    project = _project(tmp_path, dict(CDK_JSON))
    (project / "dist" / "old").mkdir(parents=True)
    (project / "dist" / "old" / "01-base.yaml").write_text("kind: Namespace\nmetadata: {name: x}\n")
    out = _synth_and_report(project, ["-c", "profiles=pi"])
    assert "old/" not in out and f"Kubernetes YAML ({project / 'dist' / 'pi'}/)" in out
    assert f"({project / 'dist' / 'eks'}/)" not in out
