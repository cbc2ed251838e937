"""Fixtures for the Raspberry Pi image builder tests; helpers live in pi_helpers.py."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# Make pi_helpers importable from the test modules whatever pytest's import mode.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from pi_helpers import FAKE_RENDERER, Built, write_exe  # noqa: E402


@pytest.fixture(scope="session")
def fake_python(tmp_path_factory) -> Path:
    return write_exe(tmp_path_factory.mktemp("renderer") / "fake-python", FAKE_RENDERER)


@pytest.fixture(scope="session")
def built(tmp_path_factory, fake_python) -> Built:
    b = Built(tmp_path_factory.mktemp("build"), fake_python)
    assert b.result.returncode == 0, b.result.stderr
    return b
