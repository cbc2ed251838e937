"""Version upgrades rehearsed on real servers, rolled as Kubernetes rolls the StatefulSets.

Each component starts at the previous release line it supports upgrading from
(``KAFKA_UPGRADE_FROM``, ``ZOOKEEPER_UPGRADE_FROM``), from the rendered configuration and
under its pods' limits, with a client writing throughout; the rendered StatefulSet is then
rolled onto the pinned version (final_problem.local.upgrade: highest ordinal first, each pod
only after the one before passed the rendered readiness probe). One rehearsal per component,
shared by the tests of this file; run with ``-s`` for the figures.

- Kafka (the Pi's three combined nodes): 4.3 -> 4.4 jars, then ``metadata.version``
  finalized to 4.4 (Kafka's upgrade notes), an acks=all producer writing throughout.
- ZooKeeper (the three members): 3.9.3 -> 3.9.4, a kazoo session creating znodes throughout.
- PostgreSQL (the one-pod StatefulSet): 17.10 -> 17.11 on the same data directory, the
  servers from Maven Central (``make postgres``), a psql session committing rows throughout.
- Cadence (the Pi's one pod of each service, on PostgreSQL): v1.3.5 -> v1.4.1, the previous
  minor's server built from its Go module (``make cadence-tools``); the database set up with
  the old release's schema files, then the new release's schema Job while the old servers
  serve, then the four Deployments rolled (maxSurge 1, maxUnavailable 0 as rendered), a
  client starting an order workflow every 0.3 s throughout. Rolling the servers before the
  schema update stalls the roll: the new servers refuse to start on the old schema
  (``order="servers-first"``).

"Stays writable" compares the longest time no write was acknowledged during the roll with
the quickest start of a new pod (process start to its readiness check first passing): a roll
that leaves too few members to serve (the quorum, the in-sync replicas) makes the writes wait
for a start, so its outage is at least that long. Rolling every pod at once, without the
readiness gating, fails these checks (see final_problem.local.upgrade, ``roll="all-at-once"``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from final_problem import versions
from final_problem.local import cadence as cadence_tools
from final_problem.local.upgrade import (
    Rehearsal, UpgradeError, cadence_upgrade, kafka_upgrade, postgres_upgrade, release, zookeeper_upgrade,
)

pytestmark = pytest.mark.integration


def rehearse(run, workdir: Path) -> Rehearsal:  # type: ignore[no-untyped-def]
    try:
        result = run(workdir)
    except UpgradeError as e:
        pytest.fail(str(e))
    print(result.summary())
    print(result.facts)
    return result


@pytest.fixture(scope="module")
def kafka_rehearsal(tmp_path_factory: pytest.TempPathFactory) -> Rehearsal:
    return rehearse(lambda w: kafka_upgrade(w, layout="combined"), tmp_path_factory.mktemp("kafka-upgrade"))


@pytest.fixture(scope="module")
def zookeeper_rehearsal(tmp_path_factory: pytest.TempPathFactory) -> Rehearsal:
    return rehearse(zookeeper_upgrade, tmp_path_factory.mktemp("zookeeper-upgrade"))


@pytest.fixture(scope="module")
def postgres_rehearsal(tmp_path_factory: pytest.TempPathFactory) -> Rehearsal:
    return rehearse(postgres_upgrade, tmp_path_factory.mktemp("postgres-upgrade"))


@pytest.fixture(scope="module")
def cadence_rehearsal(tmp_path_factory: pytest.TempPathFactory) -> Rehearsal:
    return rehearse(cadence_upgrade, tmp_path_factory.mktemp("cadence-upgrade"))


# -- Kafka --------------------------------------------------------------------------------------

def test_kafka_rolling_upgrade_loses_no_acknowledged_write(kafka_rehearsal: Rehearsal) -> None:
    assert kafka_rehearsal.acknowledged > 0
    assert not kafka_rehearsal.lost, f"{len(kafka_rehearsal.lost)} acknowledged records lost, e.g. {kafka_rehearsal.lost[:5]}"


def test_kafka_every_node_runs_the_pinned_version_after_the_roll(kafka_rehearsal: Rehearsal) -> None:
    assert set(kafka_rehearsal.versions_after.values()) == {versions.KAFKA_VERSION}, kafka_rehearsal.versions_after


def test_kafka_metadata_version_is_finalized_at_the_new_release(kafka_rehearsal: Rehearsal) -> None:
    before, after = kafka_rehearsal.facts["metadata.version before"], kafka_rehearsal.facts["metadata.version after"]
    assert before.startswith(release(versions.KAFKA_UPGRADE_FROM) + "-"), before
    assert after.startswith(release(versions.KAFKA_VERSION) + "-"), after


def test_kafka_refuses_to_downgrade_a_finalized_metadata_version(kafka_rehearsal: Rehearsal) -> None:
    refusal = kafka_rehearsal.facts["downgrade refused"]
    assert refusal is not None and "metadata.version downgrade" in refusal, refusal
    assert kafka_rehearsal.facts["metadata.version after the downgrade"] == kafka_rehearsal.facts["metadata.version after"]


def test_kafka_stays_writable_while_each_node_is_replaced(kafka_rehearsal: Rehearsal) -> None:
    assert kafka_rehearsal.longest_outage_s < kafka_rehearsal.shortest_start_s, kafka_rehearsal.summary()
    assert not kafka_rehearsal.facts["out of memory"]


# -- ZooKeeper ----------------------------------------------------------------------------------

def test_zookeeper_rolling_upgrade_loses_no_acknowledged_write(zookeeper_rehearsal: Rehearsal) -> None:
    assert zookeeper_rehearsal.acknowledged > 0
    assert not zookeeper_rehearsal.lost, f"{len(zookeeper_rehearsal.lost)} acknowledged znodes lost, e.g. {zookeeper_rehearsal.lost[:5]}"


def test_zookeeper_every_member_runs_the_pinned_version_after_the_roll(zookeeper_rehearsal: Rehearsal) -> None:
    assert set(zookeeper_rehearsal.versions_after.values()) == {versions.ZOOKEEPER_VERSION}, zookeeper_rehearsal.versions_after


def test_zookeeper_client_session_survives_the_roll(zookeeper_rehearsal: Rehearsal) -> None:
    assert zookeeper_rehearsal.facts["same session"]
    assert "LOST" not in zookeeper_rehearsal.facts["session states"], zookeeper_rehearsal.facts["session states"]


def test_zookeeper_stays_writable_while_each_member_is_replaced(zookeeper_rehearsal: Rehearsal) -> None:
    assert zookeeper_rehearsal.longest_outage_s < zookeeper_rehearsal.shortest_start_s, zookeeper_rehearsal.summary()
    assert not zookeeper_rehearsal.facts["out of heap"]


# -- PostgreSQL ---------------------------------------------------------------------------------

def test_postgres_upgrade_within_its_major_loses_no_committed_row(postgres_rehearsal: Rehearsal) -> None:
    assert postgres_rehearsal.acknowledged > 100, postgres_rehearsal.summary()
    assert not postgres_rehearsal.lost, f"{len(postgres_rehearsal.lost)} committed rows lost, e.g. {postgres_rehearsal.lost[:5]}"


def test_postgres_runs_the_pinned_version_on_the_same_data_after_the_roll(postgres_rehearsal: Rehearsal) -> None:
    assert postgres_rehearsal.facts["version before"] == versions.POSTGRES_UPGRADE_FROM
    assert postgres_rehearsal.versions_after == {0: versions.POSTGRES_VERSION}


def test_postgres_sessions_come_back_within_seconds(postgres_rehearsal: Rehearsal) -> None:
    """One server: writes stop while it restarts. The rendered preStop (a checkpoint, then a
    fast shutdown) keeps that short; SIGTERM alone waits for the pool's sessions to end, up to
    the grace period (the PostgreSQL rollout in tests/integration/test_cadence_rollout.py)."""
    assert postgres_rehearsal.longest_outage_s < 5, postgres_rehearsal.summary()
    assert postgres_rehearsal.facts["sessions"] >= 2  # the session was cut and reopened on the new server


# -- Cadence ------------------------------------------------------------------------------------

def test_cadence_upgrade_completes_every_workflow_started_before_and_during_it(cadence_rehearsal: Rehearsal) -> None:
    facts = cadence_rehearsal.facts
    assert facts["workflows started before the upgrade"] > 0 and facts["workflows started during the upgrade"] > 0, facts
    assert not cadence_rehearsal.lost, f"{len(cadence_rehearsal.lost)} acknowledged workflows lost or wrong: {facts['lost or wrong']}"
    assert facts["psql commits"] > 0 and facts["psql commits lost"] == 0, facts


def test_cadence_schema_is_updated_first_then_every_server_runs_the_pinned_release(cadence_rehearsal: Rehearsal) -> None:
    facts = cadence_rehearsal.facts
    old, new = cadence_tools.schema_dir(versions.CADENCE_UPGRADE_FROM), cadence_tools.schema_dir()
    assert facts["schema before"] == {"cadence": cadence_tools.latest_version("cadence", root=old),
                                      "cadence_visibility": cadence_tools.latest_version("visibility", root=old)}
    assert facts["schema after"] == {"cadence": cadence_tools.latest_version("cadence", root=new),
                                     "cadence_visibility": cadence_tools.latest_version("visibility", root=new)}
    assert facts["schema before"] != facts["schema after"]
    assert set(facts["servers before"].values()) == {versions.CADENCE_UPGRADE_FROM}, facts["servers before"]
    assert len(facts["servers after"]) == 4 and set(facts["servers after"].values()) == {versions.CADENCE_VERSION}, \
        facts["servers after"]


def test_cadence_old_servers_serve_on_the_new_schema_and_no_start_is_refused(cadence_rehearsal: Rehearsal) -> None:
    """The old servers start workflows on the updated schema (those complete too: the first
    test), and every start the client tried during the upgrade was acknowledged. The longest
    time without one is printed, not bounded: it moves with the machine's load (0.4 to 1.7 s
    seen) and a rollout that replaced each old pod before its successor was Ready (maxSurge 1,
    maxUnavailable 1) stayed within it (1.7 s, none refused)."""
    facts = cadence_rehearsal.facts
    assert facts["workflows started on the old servers after the schema update"] > 0, facts
    assert cadence_rehearsal.refused == 0, cadence_rehearsal.summary()
