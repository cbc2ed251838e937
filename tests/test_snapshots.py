"""Snapshots of every stack and every chart in both profiles (and on Pis that run every component).

Update deliberately with ``make test PYTEST_ARGS="--snapshot-update"`` and review the diff.
Asset hashes and CDK's version metadata are masked (conftest.mask).
"""

from __future__ import annotations

import pytest
from syrupy.extensions.json import JSONSnapshotExtension

from final_problem import components
from final_problem.profiles import PROFILES
from tests.conftest import TARGETS, all_components, mask, profile_of, rendered, settings_for


@pytest.fixture
def snapshot_json(snapshot):  # type: ignore[no-untyped-def]
    return snapshot.use_extension(JSONSnapshotExtension)


@pytest.mark.parametrize("stack", ["final-problem-network", "final-problem-cluster"])
def test_stack_template(synth, snapshot_json, stack: str) -> None:  # type: ignore[no-untyped-def]
    assert mask(synth.templates[stack]) == snapshot_json


@pytest.mark.parametrize("profile", TARGETS)
@pytest.mark.parametrize("component", all_components())
def test_chart(snapshot_json, component: str, profile: str) -> None:  # type: ignore[no-untyped-def]
    objects = rendered(profile)
    if component not in objects:
        # Left out of this target, for the reason synth prints (tests/test_profile_components.py).
        _, left_out = components.profile_components(settings_for(profile), PROFILES[profile_of(profile)])
        assert component in left_out
        return
    assert objects[component] == snapshot_json
