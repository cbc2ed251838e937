"""A real three-member ZooKeeper ensemble after a power cut: every member killed at once.

The ensemble runs from the renderer's zoo.cfg (final_problem.local.zookeeper). A write
counts as acknowledged when the client's ``put`` returned (a quorum logged it). Every
member is killed with SIGKILL, then the members start again in a random order, 0 to 1 s
apart; the seed is printed. A quorum must form again, and every member must serve every
acknowledged write (a linearizable read through that member).
"""

from __future__ import annotations

import random
import time

import pytest

from final_problem.clients.zookeeper import ZooKeeperClient
from final_problem.local.zookeeper import LocalEnsemble

pytestmark = pytest.mark.integration

ROUNDS = 3
#: Seconds for a quorum after a full restart (elections take well under a second with
#: the launcher's 250 ms ticks; the margin is for JVM start on a busy host).
QUORUM_TIMEOUT_S = 60


def test_every_member_killed_and_restarted_in_random_order(zookeeper_ensemble: LocalEnsemble, rng: random.Random) -> None:
    ensemble = zookeeper_ensemble
    acknowledged: dict[str, bytes] = {}
    for round_ in range(ROUNDS):
        with ZooKeeperClient(hosts=ensemble.hosts, timeout=10) as client:
            for i in range(20):
                path, value = f"/power-cut/round-{round_}/key-{i}", f"{round_}:{i}:{time.monotonic_ns()}".encode()
                client.put(path, value)
                acknowledged[path] = value

        for myid in ensemble.procs:
            ensemble.kill(myid)
        order = list(ensemble.procs)
        rng.shuffle(order)
        print(f"round {round_}: restart order {order}")
        for myid in order:
            ensemble.start(myid)
            time.sleep(rng.uniform(0, 1))
        ensemble.wait_for_quorum(timeout=QUORUM_TIMEOUT_S)

        for myid in ensemble.procs:
            reader = ZooKeeperClient(hosts=ensemble.client_address(myid), timeout=10).start()
            try:
                missing = [p for p, v in acknowledged.items() if reader.get(p, linearizable=True) != v]
            finally:
                reader.close()
            assert not missing, f"round {round_}: member {myid} lacks {len(missing)} acknowledged writes, e.g. {missing[:3]}"
