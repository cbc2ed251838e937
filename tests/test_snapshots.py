"""Snapshots of every stack and every chart in both profiles.

Update deliberately with ``make test PYTEST_ARGS="--snapshot-update"`` and review the diff.
Asset hashes and CDK's version metadata are masked (conftest.mask).
"""

from __future__ import annotations

import pytest
from syrupy.extensions.json import JSONSnapshotExtension

from tests.conftest import all_components, mask, rendered


@pytest.fixture
def snapshot_json(snapshot):  # type: ignore[no-untyped-def]
    return snapshot.use_extension(JSONSnapshotExtension)


@pytest.mark.parametrize("stack", ["final-problem-network", "final-problem-cluster"])
def test_stack_template(synth, snapshot_json, stack: str) -> None:  # type: ignore[no-untyped-def]
    assert mask(synth.templates[stack]) == snapshot_json


@pytest.mark.parametrize("profile", ["eks", "pi"])
@pytest.mark.parametrize("component", all_components())
def test_chart(snapshot_json, component: str, profile: str) -> None:  # type: ignore[no-untyped-def]
    assert rendered(profile)[component] == snapshot_json
