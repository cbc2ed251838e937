"""Every shell script of the image builder is shellcheck clean at warning level."""

from __future__ import annotations

import pytest

from pi_helpers import PI, REPO, run, tool

# The boot tests' root builder is shell as well.
SCRIPTS = sorted(PI.rglob("*.sh")) + [PI / "versions.env", REPO / "tests/pi/boot/build-rootfs.sh"]


def test_scripts_found():
    names = {p.relative_to(REPO).as_posix() for p in SCRIPTS}
    assert {"pi/build.sh", "pi/lib/common.sh", "pi/lib/image.sh", "pi/firstboot/firstboot.sh",
            "pi/firstboot/firstrun.sh", "pi/versions.env", "tests/pi/boot/build-rootfs.sh"} <= names


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.relative_to(REPO).as_posix())
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
