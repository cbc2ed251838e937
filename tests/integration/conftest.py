"""Fixtures that start real servers on loopback; every process is stopped in teardown."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

from final_problem import manifests
from final_problem.config import Settings
from final_problem.local.kube import (
    Api, ControlPlaneError, LocalControlPlane, NodeShape, Provisioner, Rejection, apply_files, expected_pods,
    manifest_objects, missing_binaries, node_shapes, pods_by_owner, register_nodes,
)
from final_problem.local.zookeeper import DEBIAN_JAR, LocalEnsemble
from tests.conftest import full_settings, require_binary


@pytest.fixture
def zookeeper_ensemble(tmp_path: Path) -> Iterator[LocalEnsemble]:
    """Three ZooKeeper members from the renderer's zoo.cfg, in quorum; killed afterwards."""
    require_binary("java", "zookeeper")
    if not Path(DEBIAN_JAR).exists():
        pytest.fail(f"{DEBIAN_JAR} is missing: run `sudo make system-deps` (Debian package zookeeper)")
    ensemble = LocalEnsemble(workdir=tmp_path / "zookeeper")
    try:
        ensemble.start_all()
        try:
            ensemble.wait_for_quorum(timeout=30)
        except Exception:
            logs = "\n".join(f"--- member {i}\n{ensemble.log(i)[-2000:]}" for i in ensemble.procs)
            pytest.fail(f"the ensemble did not form a quorum:\n{logs}")
        yield ensemble
    finally:
        ensemble.close()


@dataclass
class KubePlatform:
    """The platform's rendered YAML applied to a real control plane with a profile's nodes."""

    profile: str
    control_plane: LocalControlPlane
    shapes: list[NodeShape]
    files: list[Path]
    objects: list[dict[str, Any]]
    rejected: list[Rejection]
    provisioner: Provisioner

    @property
    def api(self) -> Api:
        return self.control_plane.api

    @property
    def namespaces(self) -> list[str]:
        return sorted({o["metadata"]["namespace"] for o in self.objects if o["metadata"].get("namespace")})

    def wait_for_pods(self, *, bound: bool, timeout_s: float = 120) -> dict[str, list[dict[str, Any]]]:
        """Wait until every workload has its pods (bound to nodes, if ``bound``); return
        them by workload. On time-out, return what there is: the tests say what is missing."""
        expected = expected_pods(self.objects)

        def complete() -> dict[str, list[dict[str, Any]]] | None:
            pods = pods_by_owner(self.api, self.namespaces)
            for owner, count in expected.items():
                have = pods.get(owner, [])
                if len(have) < count or (bound and not all(p["spec"].get("nodeName") for p in have)):
                    return None
            return pods

        try:
            return self.control_plane.wait_for("the platform's pods", complete, timeout_s=timeout_s, interval_s=0.5)
        except ControlPlaneError:
            return pods_by_owner(self.api, self.namespaces)


@contextmanager
def kube_platform(workdir: Path, settings: Settings, profile: str) -> Iterator[KubePlatform]:
    """Render ``profile`` in-process, start a control plane with its nodes, apply the YAML."""
    missing = missing_binaries()
    if missing:
        pytest.fail(f"missing {', '.join(missing)}: run `make kube-binaries` (Go 1.26 builds them)")
    require_binary("openssl", "openssl")
    files = manifests.write_profile(settings, profile, workdir / "dist")
    control_plane = LocalControlPlane(workdir=workdir / "control-plane")
    try:
        try:
            control_plane.start()
        except ControlPlaneError as e:
            logs = "\n".join(f"--- {name}\n{control_plane.log_tail(name)}" for name in control_plane.procs)
            pytest.fail(f"the control plane did not start: {e}\n{logs}")
        shapes = node_shapes(settings, profile)
        register_nodes(control_plane.api, shapes)
        with Provisioner(control_plane.api) as provisioner:
            objects = [o for o in manifest_objects(files)]
            _, rejected = apply_files(control_plane.api, files)
            yield KubePlatform(profile, control_plane, shapes, files, objects, rejected, provisioner)
    finally:
        control_plane.stop()


@pytest.fixture(scope="session", params=["eks", "pi"])
def kube(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubePlatform]:
    """Every component of one profile applied to a real control plane, once per profile
    (pytest runs one profile's tests, then the other's: one control plane at a time)."""
    with kube_platform(tmp_path_factory.mktemp(f"kube-{request.param}"), full_settings(), request.param) as platform:
        platform.wait_for_pods(bound=True)
        yield platform
