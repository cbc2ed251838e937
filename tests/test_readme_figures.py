"""The summary the README shows ``make synth`` printing is what it prints: stack sizes,
resource and object counts, capacity and cost, from a real ``cdk synth`` of the project's
cdk.json and the report after it (a line the README shortens with "..." must begin as
the printed one does)."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import CDK_JSON, ROOT
from tests.test_synth_errors import _project, run_cdk_synth

START = "`make synth` ends by printing what it wrote"


def readme_block() -> list[str]:
    lines = (ROOT / "README.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(START))
    opening = next(i for i in range(start, len(lines)) if lines[i] == "```")
    closing = next(i for i in range(opening + 1, len(lines)) if lines[i] == "```")
    return lines[opening + 1:closing]


def test_the_readme_shows_what_make_synth_prints(tmp_path) -> None:
    project = _project(tmp_path, dict(CDK_JSON))
    result = run_cdk_synth(project, [])
    assert result.returncode == 0, result.stderr[-3000:]
    # make synth reports on the folders it names: cdk.out and dist, relative to the project.
    printed = subprocess.run([sys.executable, "-m", "final_problem.report", "cdk.out", "dist"], cwd=project,
                             capture_output=True, text=True, timeout=120, check=True).stdout.splitlines()
    block = readme_block()
    assert len(block) > 10
    for line in block:
        shown = line.split("...", 1)[0].rstrip(", ")
        if not shown.strip():
            continue  # a line that only stands for others
        if "..." in line:
            assert any(p.startswith(shown) for p in printed), f"README: {line!r}\nprinted:\n" + "\n".join(printed)
        else:
            assert shown in printed, f"README: {line!r}\nprinted:\n" + "\n".join(printed)
