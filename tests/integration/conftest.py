"""Fixtures that start real servers on loopback; every process is stopped in teardown."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from final_problem.local.postgres import LocalPostgres, LocalPostgresError
from final_problem.local.zookeeper import DEBIAN_JAR, LocalEnsemble
from tests.conftest import require_binary


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


@pytest.fixture
def postgres_server() -> Iterator[LocalPostgres]:
    """A fresh PostgreSQL (Debian's package) on a free loopback port; stopped and removed afterwards."""
    try:
        server = LocalPostgres()
    except LocalPostgresError as e:
        pytest.fail(str(e))
    with server:
        yield server
