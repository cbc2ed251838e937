"""What each profile renders of the enabled components, and what the Pi kernels leave out."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from final_problem import capacity, components, manifests, versions
from final_problem.errors import ConfigError
from final_problem.profiles import PROFILES
from tests.conftest import full_settings, rendered

ENVOY_IMAGES = {versions.ENVOY_IMAGE, versions.CONSUL_DATAPLANE_IMAGE}


def images(objects: dict[str, list[dict[str, Any]]]) -> set[str]:
    found = set()
    for obj in (o for objs in objects.values() for o in objs):
        pod = (obj.get("spec", {}).get("template") or {}).get("spec") or {}
        found |= {c["image"] for c in pod.get("containers", []) + pod.get("initContainers", [])}
    return found


def test_stock_pi4_kernel_leaves_out_what_runs_envoy_and_what_requires_it() -> None:
    settings = full_settings()
    assert settings.pi_arm64_va_bits == 39  # Raspberry Pi OS's Pi 4 kernel
    kept, left_out = components.profile_components(settings, PROFILES["pi"])
    assert list(left_out) == ["consul", "envoy", "demo"]
    assert left_out["demo"] == "requires consul"
    assert set(kept) == set(settings.components) - {"consul", "envoy", "demo"}
    pi = rendered("pi")
    assert set(pi) == set(kept)
    # Nothing on the Pi runs Envoy, and Redis runs outside the mesh: no sidecar that cannot start.
    assert not images(pi) & ENVOY_IMAGES
    redis = next(o for o in pi["redis"] if o["kind"] == "StatefulSet" and o["metadata"]["name"] == "redis")
    assert not [c for c in redis["spec"]["template"]["spec"].get("initContainers", [])
                if c.get("restartPolicy") == "Always"]


def test_eks_keeps_every_component() -> None:
    settings = full_settings()
    assert components.profile_components(settings, PROFILES["eks"]) == (settings.components, {})
    assert components.left_out_line(settings, PROFILES["eks"]) is None
    assert ENVOY_IMAGES <= images(rendered("eks"))


def test_left_out_line_says_what_why_and_the_fix() -> None:
    line = components.left_out_line(full_settings(), PROFILES["pi"])
    assert line == (
        "pi: left out consul (its mesh sidecars embed Envoy), envoy (runs Envoy), demo (requires consul): "
        "they need arm64 kernels with at least 47-bit virtual addresses, and pi_arm64_va_bits is 39. "
        "Fix: where every node is a Pi 5 or runs a 48-bit kernel, set pi_arm64_va_bits=48 "
        "(pi/README.md, \"What runs on which Pi\")"
    )


@pytest.mark.parametrize("bits", [47, 48])
def test_pi5_and_48_bit_kernels_keep_the_full_platform(bits: int) -> None:
    settings = dataclasses.replace(full_settings(), pi_arm64_va_bits=bits, pi_memory_gib=8)
    assert components.profile_components(settings, PROFILES["pi"]) == (settings.components, {})
    objects = {n: manifests.chart_objects(c) for n, c in manifests.render(settings, "pi").items()}
    assert set(objects) == set(settings.components)
    assert ENVOY_IMAGES <= images(objects)
    assert capacity.fit_of(settings, "pi", objects).fits


def test_full_platform_on_4gb_boards_fails_naming_the_bigger_board() -> None:
    # 48-bit kernels on 4 GB Pi 4 boards: every component, 90% of the memory by the
    # scheduler's count (native sidecars included): over the limit, with the fix.
    settings = dataclasses.replace(full_settings(), pi_arm64_va_bits=48)
    objects = {n: manifests.chart_objects(c) for n, c in manifests.render(settings, "pi").items()}
    with pytest.raises(ConfigError, match=r"^profiles = 'eks,pi' \(profile pi\): the platform requests [\d,]+ MiB memory "
                                          r"of 6,603 \(9\d%\).* or on 8 GB boards set pi_memory_gib=8, or set profiles=eks$"):
        capacity.check(settings, "pi", objects)


def test_bad_va_bits_fails_with_one_line() -> None:
    from final_problem import config
    from tests.conftest import CDK_JSON

    with pytest.raises(ConfigError, match=r"^pi_arm64_va_bits = 40: must be one of 39, 47, 48, 52\. Fix: set pi_arm64_va_bits=39$"):
        config.from_mapping({**CDK_JSON, "pi_arm64_va_bits": 40})


def test_yaml_only_render_says_what_it_left_out(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import ROOT, all_components

    assert manifests.main(["--out", str(tmp_path), "--context", str(ROOT / "cdk.json"), "-c", "profiles=pi",
                           "-c", f"components={','.join(all_components())}"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == components.left_out_line(full_settings(), PROFILES["pi"])
    assert sorted(p.name.split("-", 1)[1] for p in (tmp_path / "pi").glob("*.yaml")) == sorted(
        c + ".yaml" for c in all_components() if c not in ("consul", "envoy", "demo"))
