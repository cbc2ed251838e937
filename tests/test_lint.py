"""Static checks of the project's Python (syntax errors, pyflakes and bugbear: ruff) and Go (gofmt)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT


def test_ruff_finds_nothing() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "--select", "E9,F,B", "--output-format", "concise",
         "final_problem", "tests", "bench", "tools", "pi", "examples", "app.py"],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_gofmt_finds_nothing_in_the_go_wrappers() -> None:
    """The Go the project writes (deps/*/cmd: the launchers built into the cache) is gofmt-clean."""
    gofmt = shutil.which("gofmt") or str(Path(shutil.which("go") or "/usr/local/go/bin/go").parent / "gofmt")
    result = subprocess.run([gofmt, "-l", "deps"], cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0 and result.stdout == "", result.stdout + result.stderr
    sources = list((ROOT / "deps").glob("*/cmd/*/main.go"))
    assert len(sources) >= 7, sources
