"""The upgrade rehearsals' parts that need no server: the previous versions installed, the
rendered probes run here, and the live writer that keeps going while writes are refused."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from final_problem import versions
from final_problem.charts.kafka import KAFKA_HOME
from final_problem.local.powercut import LiveWriter, PowerCutError
from final_problem.local.rollout import ExecProbe, TcpProbe
from final_problem.local.upgrade import (
    StartTimes, _roll, container_of, local_ports, local_readiness, release, rendered_workloads, rewrite,
)
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


# -- the rendered probes, run here --------------------------------------------------------------

def test_an_exec_probe_gets_this_hosts_ports_and_paths() -> None:
    argv = ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/2181 && cat /opt/kafka/x; echo 21810 12181"]
    assert rewrite(argv, {2181: 40001}, {"/opt/kafka": "/cache/kafka-4.4.0"}) == [
        "bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/40001 && cat /cache/kafka-4.4.0/x; echo 21810 12181"]


def test_zookeepers_rendered_readiness_runs_against_the_local_member() -> None:
    ((workload, _),) = rendered_workloads("zookeeper", "pi")
    container = container_of(workload, "zookeeper")
    ports = local_ports(container, {"client": 40001, "quorum": 40002, "election": 40003, "metrics": 40004})
    probe = local_readiness(container, ports)
    rendered = container["readinessProbe"]
    assert isinstance(probe, ExecProbe)
    assert "/dev/tcp/127.0.0.1/40001" in probe.argv[-1] and "2181" not in probe.argv[-1]
    assert (probe.period_s, probe.initial_delay_s, probe.failure_threshold) == (
        rendered["periodSeconds"], rendered.get("initialDelaySeconds", 0), rendered.get("failureThreshold", 3))


def test_kafkas_rendered_readiness_runs_against_the_local_node() -> None:
    for profile, names in (("pi", ["kafka"]), ("eks", ["kafka-controller", "kafka-broker"])):
        workloads = rendered_workloads("kafka", profile)
        assert [w["metadata"]["name"] for w, _ in workloads] == names
        for workload, pdb in workloads:
            assert pdb is not None
            container = container_of(workload, "kafka")
            local = {"client": 41001, "controller": 41002, "replication": 41003, "metrics": 41004}
            probe = local_readiness(container, local_ports(container, local), paths={KAFKA_HOME: "/cache"})
            rendered = container["readinessProbe"]
            if "tcpSocket" in rendered:
                assert isinstance(probe, TcpProbe)
                named = next(p["name"] for p in container["ports"] if p["containerPort"] == rendered["tcpSocket"]["port"])
                assert probe.port == local[named]
            else:
                assert isinstance(probe, ExecProbe) and KAFKA_HOME not in " ".join(probe.argv)


def test_an_unknown_roll_is_refused() -> None:
    with pytest.raises(ValueError, match="use one of statefulset, all-at-once"):
        _roll(None, "sideways", ready_timeout_s=1)  # type: ignore[arg-type]


# -- the live writer through refused writes -----------------------------------------------------

def test_refused_writes_are_counted_and_the_writer_goes_on() -> None:
    def write(seq: int) -> None:
        if 3 <= seq < 6:
            raise ConnectionError("no leader")

    writer = LiveWriter(write, refused=(ConnectionError,), retry_s=0.01).start()
    writer.wait_for(20, timeout_s=5)
    acks = writer.stop()
    writer.join()
    assert writer.refused == 3 and isinstance(writer.last_refusal, ConnectionError)
    assert [a.seq for a in acks[:5]] == [0, 1, 2, 6, 7]


def test_an_error_not_listed_as_refused_still_fails_the_run() -> None:
    def write(seq: int) -> None:
        if seq == 2:
            raise KeyError("bug")

    writer = LiveWriter(write, refused=(ConnectionError,)).start()
    writer.join()
    with pytest.raises(PowerCutError, match="KeyError"):
        writer.stop()


def test_the_longest_outage_is_the_longest_time_without_an_acknowledgement() -> None:
    def write(seq: int) -> None:
        time.sleep(0.3 if seq == 5 else 0.005)

    writer = LiveWriter(write).start()
    writer.wait_for(12, timeout_s=5)
    writer.stop()
    writer.join()
    outage = writer.longest_outage_s()
    assert 0.3 <= outage < 0.6
    assert writer.longest_outage_s(since=writer.stopped_at) == 0.0  # type: ignore[arg-type]


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
