"""Fixtures that start real servers on loopback; every process is stopped in teardown."""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from final_problem.config import Settings
from final_problem.local.kube import ControlPlaneError, KubePlatform, missing_binaries, platform
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


@contextmanager
def kube_platform(workdir: Path, settings: Settings, profile: str) -> Iterator[KubePlatform]:
    """:func:`final_problem.local.kube.platform`, failing the test (never skipping) with the
    servers' logs when the control plane cannot run here."""
    missing = missing_binaries()
    if missing:
        pytest.fail(f"missing {', '.join(missing)}: run `make kube-binaries` (Go 1.26 builds them)")
    require_binary("openssl", "openssl")
    with ExitStack() as stack:
        try:
            started = stack.enter_context(platform(workdir, settings, profile))
        except ControlPlaneError as e:
            pytest.fail(f"the control plane did not start: {e}")
        yield started


@pytest.fixture(scope="session", params=["eks", "pi"])
def kube(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubePlatform]:
    """Every component of one profile applied to a real control plane, once per profile
    (pytest runs one profile's tests, then the other's: one control plane at a time)."""
    with kube_platform(tmp_path_factory.mktemp(f"kube-{request.param}"), full_settings(), request.param) as platform:
        platform.wait_for_pods(bound=True)
        yield platform
