"""Cadence's store restored on real servers: workflows started before the recovery point
complete after the restore, one started after it is absent.

PostgreSQL runs with the rendered backup configuration (WAL archiving and the base-backup
script) to a real S3-compatible server (versitygw); the schema and the Cadence services (the
Pi profile's one of each) run on it. The workflows are started with no worker polling their
task list, so none can finish before the volume is lost: they are in flight at the recovery
point. The base backup is taken before they start, so only the archived WAL after it carries
them. One start of each server, one drill, shared by the tests.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from final_problem.local import LOOPBACK, kill_group, wait_for
from final_problem.local.postgres import LocalPostgres
from tests.integration.conftest import archiving_postgres, chown_tree

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
#: As few workflows as show that every start before the recovery point is kept.
BEFORE = 3


def utc_now(server: LocalPostgres) -> str:
    return server.query("SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', "
                        "'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")[0][0]


def start_orders(frontend: str, domain: str, task_list: str, items: list[int]) -> list[tuple[Any, int, float]]:
    """One order workflow per entry of ``items``, each acknowledged by the frontend."""
    from cadence import Client

    from final_problem.clients import cadence as sample

    async def run() -> list[tuple[Any, int, float]]:
        async with Client(target=frontend, domain=domain) as client:
            return [(await asyncio.wait_for(sample.start_order(client, items=n, pause_s=sample.MIN_PAUSE_S,
                                                               task_list=task_list), timeout=30), n, time.monotonic())
                    for n in items]

    return asyncio.run(run())


def history_or_error(frontend: str, domain: str, execution: Any) -> list[Any] | BaseException:
    from cadence import Client

    from final_problem.clients import cadence as sample

    async def run() -> list[Any]:
        async with Client(target=frontend, domain=domain) as client:
            return await asyncio.wait_for(sample.history_events(client, execution), timeout=30)

    try:
        return asyncio.run(run())
    except Exception as e:  # noqa: BLE001 - returned: the test reads what it is
        return e


@pytest.fixture(scope="module")
def drill() -> Iterator[dict[str, Any]]:
    """The schema, the domain, a base backup; BEFORE workflows started, the target time, one
    more started, the last segment archived; Cadence and PostgreSQL killed, the volume deleted,
    restored to the target, PostgreSQL and Cadence started again, the worker started."""
    from final_problem.charts.cadence import CadenceChart
    from final_problem.clients import cadence as sample
    from final_problem.local import cadence as tools
    from final_problem.renderers.cadence import Database

    try:
        tools.require_binaries()
    except tools.CadenceToolsMissing as e:
        pytest.fail(str(e))
    with ExitStack() as stack:
        s3, work, volume, backups, server = archiving_postgres(stack, "final-problem-cadence-restore-")
        # Killed first at the end: a fast shutdown would wait for its last segment's upload.
        stack.callback(server.kill)
        password = server.create_role(CadenceChart.DB_ROLE)
        database = Database(host=LOOPBACK, port=server.port, user=CadenceChart.DB_ROLE)
        schema = tools.run_schema_script("setup", database=database, password=password)
        assert schema.returncode == 0, schema.stderr[-3000:]
        cadence = tools.LocalCadence(database=database, password=password, workdir=work / "cadence")
        stack.callback(cadence.close)
        # At the end, a crash is enough: a graceful stop waits for the worker's long polls to drain.
        stack.callback(cadence.kill_all)
        cadence.start_all()
        cadence.wait_ready(timeout_s=120)
        domain = cadence.register_domain()
        assert domain.returncode == 0, domain.stderr[-3000:]
        frontend, name = cadence.frontend_address, cadence.props.domain
        task_list = f"restore-{uuid.uuid4().hex[:8]}"

        taken = backups.base_backup(server)
        assert taken.returncode == 0, f"{taken.stderr}\n{backups.log_tail()}"
        client = s3.client()
        wait_for("the base backup's listing", lambda: any(k.endswith("/backup.json") for k in client.list("postgres/")),
                 timeout_s=30, interval_s=0.05)
        marks = {"began": time.monotonic()}
        before = start_orders(frontend, name, task_list, list(range(1, BEFORE + 1)))
        time.sleep(0.3)
        target = utc_now(server)
        time.sleep(0.3)
        after = start_orders(frontend, name, task_list, [BEFORE + 1])
        segment = server.query("SELECT pg_walfile_name(pg_switch_wal())")[0][0]
        # The server counts a segment archived once archive_command returned 0; the volume goes
        # the moment it does.
        wait_for(f"segment {segment} archived", lambda: (server.query(
            "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver")[0][0] >= segment), timeout_s=30,
            interval_s=0.02)
        cadence.kill_all()
        server.kill()
        backups.stop_agent()
        shutil.rmtree(volume)
        volume.mkdir()
        marks["lost"] = time.monotonic()

        done = subprocess.run(
            [sys.executable, "-m", "final_problem.backup", "restore", "postgres", "--to", target, "--data-dir",
             str(backups.pgdata)],
            capture_output=True, text=True, timeout=120, cwd=ROOT, check=False,
            env={"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), **s3.env()})
        assert done.returncode == 0, done.stderr
        if server.run_as:
            chown_tree(volume, server.run_as)
        server.start()
        wait_for("the restored server to promote", lambda: server.query("SELECT pg_is_in_recovery()")[0][0] == "f",
                 timeout_s=60, interval_s=0.2)
        marks["restored"] = time.monotonic()
        cadence.start_all()
        cadence.wait_ready(timeout_s=120)
        worker = sample.spawn_worker(target=frontend, domain=name, task_list=task_list, log=work / "worker.log")
        stack.callback(kill_group, worker)
        marks["serving"] = time.monotonic()
        yield {"cadence": cadence, "frontend": frontend, "domain": name, "before": before, "after": after,
               "marks": marks, "work": work}


def test_every_workflow_started_before_the_recovery_point_completes(drill: dict[str, Any]) -> None:
    from final_problem.clients import cadence as sample
    from final_problem.local.cadence_rollout import completed

    # Each one's history is there (the restore kept its start), before waiting for it to finish.
    for execution, _, _ in drill["before"]:
        found = history_or_error(drill["frontend"], drill["domain"], execution)
        assert not isinstance(found, BaseException), f"{execution.workflow_id} is gone after the restore: {found!r}"
    platform = SimpleNamespace(frontend=drill["frontend"], domain=drill["domain"])
    results = completed(platform, drill["before"], timeout_s=120)  # type: ignore[arg-type]
    marks = drill["marks"]
    print(f"restored in {marks['restored'] - marks['lost']:.1f} s, Cadence serving again "
          f"{marks['serving'] - marks['restored']:.1f} s later, {len(drill['before'])} workflows completed "
          f"{time.monotonic() - marks['serving']:.1f} s after that")
    for execution, items, _ in drill["before"]:
        expected = sample.expected_result(execution.workflow_id, items)
        result = results[execution.workflow_id]
        assert "closed" not in result, (execution.workflow_id, result)
        assert (result["order_id"], result["charged_cents"]) == (expected["order_id"], expected["charged_cents"])


def test_a_workflow_started_after_the_recovery_point_is_absent(drill: dict[str, Any]) -> None:
    [(execution, _, _)] = drill["after"]
    found = history_or_error(drill["frontend"], drill["domain"], execution)
    assert isinstance(found, BaseException), f"{execution.workflow_id} has a history after the restore: {found}"
    assert "EntityNotExists" in f"{type(found).__name__} {found}", repr(found)
