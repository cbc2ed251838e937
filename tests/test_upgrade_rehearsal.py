"""The upgrade rehearsals' parts that need no server: the previous versions installed, and
how long a new pod takes to start."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from final_problem import versions
from final_problem.local.upgrade import StartTimes, _roll, release
from tests.conftest import HEAVY_LANE, ROOT, xdist_lane


def make_dry_run(target: str, cache: Path) -> str:
    """What ``make <target>`` would run with an empty server cache (``make -n``)."""
    return subprocess.run(["make", "-n", target], cwd=ROOT, env={**os.environ, "XDG_CACHE_HOME": str(cache)},
                          capture_output=True, text=True, check=True).stdout


def test_make_kafka_installs_the_pinned_and_the_previous_line_the_previous_without_tools(tmp_path: Path) -> None:
    builds = make_dry_run("kafka", tmp_path).split("nice mvn ")[1:]
    by_version = {re.search(r"-Dkafka\.version=(\S+)", b).group(1): b for b in builds}  # type: ignore[union-attr]
    assert sorted(by_version) == sorted([versions.KAFKA_VERSION, versions.KAFKA_UPGRADE_FROM])
    assert "-Dbroker.only" in by_version[versions.KAFKA_UPGRADE_FROM]
    assert "-Dbroker.only" not in by_version[versions.KAFKA_VERSION]
    assert f"{tmp_path}/final-problem/kafka-{versions.KAFKA_UPGRADE_FROM}/libs" in by_version[versions.KAFKA_UPGRADE_FROM]


def test_make_zookeeper_installs_the_pinned_and_the_previous_patch(tmp_path: Path) -> None:
    out = make_dry_run("zookeeper", tmp_path)
    for version in (versions.ZOOKEEPER_VERSION, versions.ZOOKEEPER_UPGRADE_FROM):
        assert f"-Dzookeeper.version={version} -Dlib.dir=\"{tmp_path}/final-problem/zookeeper-{version}/lib\"" in out


def test_make_test_builds_the_previous_versions_first(tmp_path: Path) -> None:
    out = make_dry_run("test", tmp_path)
    first_pytest = out.index("-m pytest")
    assert out.index(f"-Dkafka.version={versions.KAFKA_UPGRADE_FROM}") < first_pytest
    assert out.index(f"-Dzookeeper.version={versions.ZOOKEEPER_UPGRADE_FROM}") < first_pytest
    assert out.index("deps/cadence/build.sh deps/cadence-previous") < first_pytest


def test_release_lines() -> None:
    assert release("4.4.0") == "4.4" and release("3.9.3") == "3.9"


def numbers(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def test_the_rehearsals_start_from_the_previous_minor_of_kafka_and_the_previous_patch_of_zookeeper() -> None:
    kafka_from, kafka_to = numbers(versions.KAFKA_UPGRADE_FROM), numbers(versions.KAFKA_VERSION)
    assert kafka_from[0] == kafka_to[0] and kafka_from[1] == kafka_to[1] - 1
    zookeeper_from, zookeeper_to = numbers(versions.ZOOKEEPER_UPGRADE_FROM), numbers(versions.ZOOKEEPER_VERSION)
    assert zookeeper_from[:2] == zookeeper_to[:2] and zookeeper_from[2] < zookeeper_to[2]


def test_the_rehearsals_run_in_the_heavy_lane() -> None:
    path = "tests/integration/test_upgrades.py"
    assert path in HEAVY_LANE and xdist_lane(path) == "integration: heavy processes"


def test_an_unknown_roll_is_refused() -> None:
    with pytest.raises(ValueError, match="use one of statefulset, all-at-once"):
        _roll(None, "sideways", ready_timeout_s=1)  # type: ignore[arg-type]


# -- how long a new pod takes to start -------------------------------------------------------

def test_a_pods_start_is_timed_to_the_first_pass_of_its_readiness_check() -> None:
    class Process:
        def poll(self) -> None:
            return None

    class Check:
        began = time.monotonic()
        period_s = initial_delay_s = 10.0  # the kubelet's timings play no part here
        success_threshold = failure_threshold = 1

        def passes(self) -> bool:
            return time.monotonic() - self.began >= 0.3

    starts = StartTimes(interval_s=0.01)
    assert starts.timed(Process, Check())() is not None
    deadline = time.monotonic() + 5
    while not starts.seconds and time.monotonic() < deadline:
        time.sleep(0.01)
    assert 0.29 <= starts.shortest() < 1.0
    starts.clear()
    assert starts.seconds == []
