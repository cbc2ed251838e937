"""Fixtures that start real servers on loopback; every process is stopped in teardown."""

from __future__ import annotations

import os
import random
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from final_problem.charts.redis import RedisProps
from final_problem.local.postgres import LocalPostgres, LocalPostgresError
from final_problem.local.zookeeper import DEBIAN_JAR, LocalEnsemble
from final_problem.profiles import PI
from final_problem.renderers.redis import RedisConfigOptions
from final_problem.config import Settings
from final_problem.local.kube import ControlPlaneError, KubePlatform, missing_binaries, platform
from tests.conftest import full_settings, require_binary

#: Sentinel timeouts shortened so the tests stay short: down-after 1000 ms (the smallest
#: the chart accepts) and failover-timeout 5000 ms; an empty first member bootstraps the
#: set after 1 s instead of 30 s.
REDIS_DOWN_AFTER_MS = 1000
REDIS_FAILOVER_TIMEOUT_MS = 5000
REDIS_BOOTSTRAP_WAIT_S = 1
#: Set to replay a randomised test with the seed it printed.
SEED_VARIABLE = "FINAL_PROBLEM_TEST_SEED"


def redis_test_options() -> RedisConfigOptions:
    """The Pi profile's configuration with short Sentinel timeouts (validated like the chart's)."""
    props = RedisProps.for_profile(
        PI, down_after_ms=REDIS_DOWN_AFTER_MS, failover_timeout_ms=REDIS_FAILOVER_TIMEOUT_MS,
        bootstrap_wait_s=REDIS_BOOTSTRAP_WAIT_S,
    )
    return props.config_options()


@pytest.fixture(scope="module")
def redis_binaries() -> None:
    for binary, package in (("redis-server", "redis-server"), ("redis-sentinel", "redis-sentinel"), ("redis-cli", "redis-tools")):
        require_binary(binary, package)


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> random.Random:
    """A random generator whose seed is printed (shown with a failure) and can be replayed
    with FINAL_PROBLEM_TEST_SEED=<seed>."""
    seed = int(os.environ.get(SEED_VARIABLE) or random.SystemRandom().randrange(2**32))
    print(f"{request.node.name}: seed {seed} (replay: {SEED_VARIABLE}={seed})")
    return random.Random(seed)


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
