"""Static checks of the project's Python: syntax errors, pyflakes and bugbear (ruff)."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT


def test_ruff_finds_nothing() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "--select", "E9,F,B", "--output-format", "concise",
         "final_problem", "tests", "bench", "tools", "pi", "examples", "app.py"],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
