"""Every rendered object validates strictly against the Kubernetes API schema, for the
configured version and the one before it (kubernetes-validate's bundled schemas)."""

from __future__ import annotations

import kubernetes_validate
import pytest

from final_problem import versions
from tests.conftest import objects_of

MINOR = int(versions.KUBERNETES_VERSION.split(".")[1])
VERSIONS = [f"1.{MINOR}.0", f"1.{MINOR - 1}.0"]


@pytest.mark.parametrize("k8s_version", VERSIONS)
@pytest.mark.parametrize("profile", ["eks", "pi"])
def test_objects_validate_strictly(profile: str, k8s_version: str) -> None:
    failures = []
    for obj in objects_of(profile):
        try:
            kubernetes_validate.validate(obj, k8s_version, strict=True)
        except kubernetes_validate.ValidationError as e:
            failures.append(f"{obj['kind']}/{obj['metadata'].get('name')}: {e.message} at {list(e.path)}")
    assert failures == []


def test_strict_validation_rejects_an_unknown_field() -> None:
    obj = next(o for o in objects_of("eks") if o["kind"] == "Job")
    broken = {**obj, "spec": {**obj["spec"], "backoffLimitt": 1}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSIONS[0], strict=True)
