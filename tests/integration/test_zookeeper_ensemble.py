"""A real three-member ZooKeeper ensemble on loopback, from the renderer's zoo.cfg.

Faults are crashes (SIGKILL). Each test gets its own ensemble and stops it afterwards.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import urllib.request

import pytest
from kazoo.exceptions import LockTimeout

from final_problem import versions
from final_problem.charts.zookeeper import liveness_command, readiness_command
from final_problem.clients.zookeeper import ZooKeeperClient, ZooKeeperUnavailable, server_mode
from final_problem.local import wait_for
from final_problem.local.zookeeper import LocalEnsemble
from tests.integration.conftest import assert_within_headroom

pytestmark = pytest.mark.integration


def member_client(ensemble: LocalEnsemble, myid: int) -> ZooKeeperClient:
    """A client bound to one member only, to read what that member has."""
    return ZooKeeperClient(hosts=ensemble.client_address(myid), timeout=5).start()


def test_a_write_is_readable_from_every_member(zookeeper_ensemble: LocalEnsemble) -> None:
    with ZooKeeperClient(hosts=zookeeper_ensemble.hosts) as client:
        client.put("/seed/greeting", b"hello")
    for myid in zookeeper_ensemble.procs:
        reader = member_client(zookeeper_ensemble, myid)
        try:
            assert reader.get("/seed/greeting", linearizable=True) == b"hello"
        finally:
            reader.close()


def test_members_run_the_pinned_version_and_serve_prometheus_metrics(zookeeper_ensemble: LocalEnsemble) -> None:
    """The version the chart's image pins, with the provider the rendered zoo.cfg names:
    each member answers /metrics on its metrics port with the ensemble's own figures."""
    with ZooKeeperClient(hosts=zookeeper_ensemble.hosts) as client:
        client.put("/metrics/probe", b"x")
    for myid in zookeeper_ensemble.procs:
        assert f"zookeeper.version={versions.ZOOKEEPER_VERSION}-" in zookeeper_ensemble.log(myid)
        with urllib.request.urlopen(zookeeper_ensemble.metrics_url(myid), timeout=10) as response:
            body = response.read().decode()
        samples = dict(line.rsplit(" ", 1) for line in body.splitlines() if line and not line.startswith("#"))
        assert float(samples["quorum_size"]) == 3, f"member {myid}: {samples.get('quorum_size')}"
        assert float(samples["znode_count"]) >= 2, f"member {myid}: {samples.get('znode_count')}"


def test_leader_loss_then_quorum_loss_then_recovery(zookeeper_ensemble: LocalEnsemble) -> None:
    ensemble = zookeeper_ensemble
    acknowledged: dict[str, bytes] = {}
    with ZooKeeperClient(hosts=ensemble.hosts, timeout=3) as client:
        for i in range(5):
            client.put(f"/faults/before-{i}", str(i).encode())
            acknowledged[f"/faults/before-{i}"] = str(i).encode()

        # 1. The leader crashes: the two survivors elect a new leader, writes continue.
        first_leader = ensemble.wait_for_quorum()
        ensemble.kill(first_leader)
        second_leader = ensemble.wait_for_quorum(timeout=20)
        assert second_leader != first_leader
        assert sorted(ensemble.modes().values()) == ["follower", "leader"]
        for i in range(5):
            client.put(f"/faults/after-leader-loss-{i}", str(i).encode())
            acknowledged[f"/faults/after-leader-loss-{i}"] = str(i).encode()

        # 2. A second member crashes: one of three is no quorum. The survivor stops
        #    serving and the client's write fails instead of being acknowledged.
        ensemble.kill(second_leader)
        (survivor,) = ensemble.running()
        wait_for("the survivor to stop serving", lambda: ensemble.modes()[survivor] is None, timeout_s=10)
        with pytest.raises(ZooKeeperUnavailable, match="no quorum"):
            client.put("/faults/in-doubt", b"written without quorum")

        # 3. Both come back: a quorum forms again and every acknowledged write is there.
        ensemble.start(first_leader)
        ensemble.start(second_leader)
        ensemble.wait_for_quorum(timeout=30)

    for myid in ensemble.procs:
        reader = member_client(ensemble, myid)
        try:
            for path, value in acknowledged.items():
                assert reader.get(path, linearizable=True) == value, f"member {myid} lost {path}"
        finally:
            reader.close()


def test_probes_report_quorum_membership_not_just_liveness(zookeeper_ensemble: LocalEnsemble) -> None:
    """The chart's readiness command passes only in a quorum; its liveness command passes
    as long as the process answers."""
    ensemble = zookeeper_ensemble
    port = ensemble.procs[1].member.client_port

    def run(command: list[str]) -> int:
        return subprocess.run(command, timeout=10, capture_output=True).returncode

    assert run(readiness_command(client_port=port)) == 0
    assert run(liveness_command(client_port=port)) == 0
    ensemble.kill(2)
    ensemble.kill(3)
    wait_for("member 1 to leave the quorum", lambda: server_mode(host="127.0.0.1", port=port) is None, timeout_s=10)
    assert run(readiness_command(client_port=port)) != 0
    assert run(liveness_command(client_port=port)) == 0


def test_election_one_leader_and_handover_when_it_resigns(zookeeper_ensemble: LocalEnsemble) -> None:
    leaders: list[str] = []
    release = {name: threading.Event() for name in ("alpha", "beta")}
    clients = {name: ZooKeeperClient(hosts=zookeeper_ensemble.hosts).start() for name in release}
    elections = {name: c.election("/election/service", identifier=name) for name, c in clients.items()}
    threads = []
    try:
        for name, election in elections.items():
            def lead(name: str = name) -> None:
                leaders.append(name)
                release[name].wait(timeout=30)
            thread = threading.Thread(target=election.run, args=(lead,), daemon=True)
            thread.start()
            threads.append(thread)
            # Start in a known order so the first contender is the first leader.
            wait_for(f"{name} to run", lambda name=name: name in elections[name].contenders(), timeout_s=10)

        wait_for("a leader", lambda: leaders, timeout_s=10)
        time.sleep(1)  # the other contender must stay a follower meanwhile
        assert leaders == ["alpha"]
        assert elections["beta"].contenders() == ["alpha", "beta"]

        release["alpha"].set()  # the leader's work ends: it resigns
        wait_for("the handover", lambda: len(leaders) == 2, timeout_s=10)
        assert leaders == ["alpha", "beta"]
        release["beta"].set()
    finally:
        for event in release.values():
            event.set()
        for thread in threads:
            thread.join(timeout=10)
        for c in clients.values():
            c.close()


def test_lock_excludes_the_second_contender_until_the_holder_exits(zookeeper_ensemble: LocalEnsemble) -> None:
    holder = ZooKeeperClient(hosts=zookeeper_ensemble.hosts).start()
    waiter = ZooKeeperClient(hosts=zookeeper_ensemble.hosts).start()
    try:
        first = holder.lock("/locks/ledger", identifier="holder")
        second = waiter.lock("/locks/ledger", identifier="waiter")
        assert first.acquire(timeout=5)
        with pytest.raises(LockTimeout):
            second.acquire(timeout=1)
        assert second.contenders() == ["holder"]
        # The holder's process exits: its session closes and its lock node goes with it.
        holder.close()
        assert second.acquire(timeout=10)
        second.release()
    finally:
        holder.close()
        waiter.close()


def test_watched_value_follows_changes(zookeeper_ensemble: LocalEnsemble) -> None:
    with ZooKeeperClient(hosts=zookeeper_ensemble.hosts) as writer, ZooKeeperClient(hosts=zookeeper_ensemble.hosts) as reader:
        writer.put("/config/feature-flag", b"off")
        watched = reader.watch("/config/feature-flag")
        assert watched.wait_for(b"off", timeout=5)
        writer.put("/config/feature-flag", b"on")
        assert watched.wait_for(b"on", timeout=5)
        assert watched.history[-2:] == [b"off", b"on"]


def test_command_line_put_get_and_lock(zookeeper_ensemble: LocalEnsemble) -> None:
    base = [sys.executable, "-m", "final_problem.clients.zookeeper", "--hosts", zookeeper_ensemble.hosts]
    put = subprocess.run([*base, "put", "/cli/answer", "42"], capture_output=True, text=True, timeout=60)
    assert put.returncode == 0, put.stderr
    get = subprocess.run([*base, "get", "/cli/answer"], capture_output=True, text=True, timeout=60)
    assert get.stdout.strip() == "42"
    lock = subprocess.run([*base, "lock", "/cli/lock", "--id", "cli", "--hold", "0"], capture_output=True, text=True, timeout=60)
    assert "cli: holds the lock" in lock.stdout and "cli: released" in lock.stdout
    status = subprocess.run([*base, "status"], capture_output=True, text=True, timeout=60)
    assert sorted(line.rsplit(": ", 1)[1] for line in status.stdout.splitlines()) == ["follower", "follower", "leader"]


def test_under_the_benchmark_load_every_member_keeps_its_headroom(zookeeper_ensemble: LocalEnsemble) -> None:
    """bench/zookeeper.py's load (sequential writes, then reads, of 100 B) on the Pi profile's
    members at their rendered heap and limit: no OOM kill, each member's peak resident set a
    quarter below its limit and GC pauses under the stated p99 (final_problem/sizes.py)."""
    from bench.zookeeper import sequential_ops

    with ZooKeeperClient(hosts=zookeeper_ensemble.hosts, timeout=5) as client:
        sequential_ops(client, ops=2000, value=b"x" * 100)
    assert_within_headroom(zookeeper_ensemble.groups.usage(), "zookeeper", gc_pauses_ms=zookeeper_ensemble.gc_pauses_ms())
