"""Every shell script of the image builder is shellcheck clean at warning level."""

from __future__ import annotations

import pytest

from pi_helpers import PI, run, tool

SCRIPTS = sorted(PI.rglob("*.sh")) + [PI / "versions.env"]


def test_scripts_found():
    names = {p.relative_to(PI).as_posix() for p in SCRIPTS}
    assert {"build.sh", "lib/common.sh", "lib/image.sh", "firstboot/firstboot.sh",
            "firstboot/firstrun.sh", "versions.env"} <= names


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.relative_to(PI).as_posix())
def test_shellcheck_clean(script):
    r = run([tool("shellcheck"), "-S", "warning", "-x", "--shell=bash", script.name], cwd=script.parent)
    assert r.returncode == 0, r.stdout + r.stderr


def test_shellcheck_reports_a_warning(tmp_path):
    """The check above can fail: an unquoted, unassigned-variable script is flagged."""
    bad = tmp_path / "bad.sh"
    bad.write_text("#!/bin/bash\nrm -rf $dir/*\n")
    r = run([tool("shellcheck"), "-S", "warning", str(bad)])
    assert r.returncode != 0


@pytest.mark.parametrize("script", ["build.sh", "firstboot/firstboot.sh", "firstboot/firstrun.sh"])
def test_strict_mode_and_executable(script):
    path = PI / script
    assert "set -euo pipefail" in path.read_text()
    assert path.stat().st_mode & 0o111
