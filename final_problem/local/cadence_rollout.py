"""PostgreSQL and Cadence driven as their rendered pods, for rollouts under live load.

:class:`RolloutPlatform` starts one PostgreSQL (final_problem.local.postgres) as the
rendered StatefulSet's pod and the Cadence services (final_problem.local.cadence, the Pi
profile's one pod each) as the rendered Deployments' pods, each with its rendered readiness
probe, preStop and grace period (final_problem.local.rollout). Two
:class:`~final_problem.local.rollout.LoadBalancer` stand for the ``postgres`` and
``cadence-frontend`` Services (new connections only to Ready pods): the Cadence services
reach PostgreSQL through one, workers and clients the frontend through the other.
:meth:`RolloutPlatform.roll_postgres` rolls the server (one replica: a planned restart),
:meth:`RolloutPlatform.roll_cadence` the four Deployments at once (a change of their shared
configuration rolls them together). :class:`WorkflowStarts` starts order workflows
throughout and :func:`completed` collects their results afterwards. Used by
tests/integration/test_cadence_rollout.py and bench/cadence.py.
"""

from __future__ import annotations

import asyncio
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from final_problem.local import LOOPBACK, kill_group, wait_for
from final_problem.local import cadence as tools
from final_problem.local.postgres import LocalPostgres, PsqlWriter, SessionLost
from final_problem.local.powercut import LiveWriter
from final_problem.local.rollout import (
    DrainResult, Endpoints, LoadBalancer, Pod, PodSet, RolloutError, drain, roll_deployment, roll_statefulset,
)
from final_problem.renderers.cadence import SERVICES, Database

#: Seconds every acknowledged workflow may take to complete after the rollouts.
COMPLETE_TIMEOUT_S = 180
#: The table the writer commits its rows to.
TABLE = "rollout_writes"


class RolloutPlatform:
    """PostgreSQL and Cadence as pods behind their Services; :meth:`close` stops everything."""

    def __init__(self, workdir: Path, *, server_version: str | None = None) -> None:
        """``server_version``: the release the servers and the schema start at (default: the
        pinned one; an upgrade rehearsal starts at the previous minor)."""
        self.workdir = workdir
        self.server_version = server_version
        self.password = ""  # the Cadence role's, set by start()
        self.workloads = tools.rendered_workloads()
        self.postgres = LocalPostgres()
        self.pg_endpoints = Endpoints()
        self.pg_balancer = LoadBalancer(self.pg_endpoints)
        self.frontend_endpoints = Endpoints()
        self.frontend_balancer = LoadBalancer(self.frontend_endpoints)
        self.ring = Endpoints()  # history, matching and worker pods: no Service routes to them
        self.pg_set = PodSet(name="postgres", workload=self.workloads["postgres"], pdb=None, pods=[],
                             make_pod=lambda ordinal: self.postgres.pod(self.workloads["postgres"]),
                             endpoints=self.pg_endpoints)
        self.cadence: tools.LocalCadence | None = None
        self.pods: dict[str, list[Pod]] = {}
        self.worker: Any = None
        self.task_list = f"rollout-{uuid.uuid4().hex[:8]}"
        #: Pods the rollouts replaced, with their termination events.
        self.old_pods: list[Pod] = []

    @property
    def frontend(self) -> str:
        """The frontend Service's address."""
        return f"{LOOPBACK}:{self.frontend_balancer.port}"

    @property
    def domain(self) -> str:
        assert self.cadence is not None
        return self.cadence.props.domain

    def start(self) -> None:
        """PostgreSQL (Ready), the writer's table, the schema, every Cadence pod Ready, the
        domain, one worker process of the sample."""
        from final_problem.charts.cadence import CadenceChart
        from final_problem.clients import cadence as sample

        self.postgres.init()
        self.pg_set.launch(ready_timeout_s=60)
        password = self.postgres.create_role(CadenceChart.DB_ROLE)
        self.postgres.psql(f"CREATE TABLE {TABLE} (seq int PRIMARY KEY)")
        database = Database(host=LOOPBACK, port=self.pg_balancer.port, user=CadenceChart.DB_ROLE)
        self.password = password
        schema = self.run_schema_job(self.server_version)
        if schema.returncode != 0:
            raise tools.LocalCadenceError(f"the schema script failed: {schema.stderr[-3000:]}")
        self.cadence = tools.LocalCadence(database=database, password=password, workdir=self.workdir / "cadence",
                                          frontend_address=self.frontend, server_version=self.server_version)
        for instance, service in list(self.cadence.instances.items()):
            self.pods[service] = [self._pod(instance).run()]
        try:
            for pods in self.pods.values():
                pods[0].wait_ready(120)
        except RolloutError as e:
            raise tools.LocalCadenceError(f"Cadence did not become ready: {e}\n{self.logs()}") from e
        domain = self.cadence.register_domain()
        if domain.returncode != 0:
            raise tools.LocalCadenceError(f"the domain script failed: {domain.stderr[-3000:]}")
        self.worker = sample.spawn_worker(target=self.frontend, domain=self.domain, task_list=self.task_list,
                                          log=self.workdir / "worker.log")

    def run_schema_job(self, version: str | None = None) -> subprocess.CompletedProcess[str]:
        """The schema Job of the chart at ``version`` (default: the pinned one): the schema
        script's ``setup``, through the ``postgres`` Service, on that release's schema files."""
        from final_problem.charts.cadence import CadenceChart

        database = Database(host=LOOPBACK, port=self.pg_balancer.port, user=CadenceChart.DB_ROLE)
        return tools.run_schema_script("setup", database=database, password=self.password, schema_version=version)

    def schema_versions(self) -> dict[str, str]:
        """Each database's recorded schema version (the schema tool's ``schema_version`` table)."""
        assert self.cadence is not None
        return {db: self.postgres.query("SELECT curr_version FROM schema_version", database=db)[0][0]
                for db in (self.cadence.props.cadence_db, self.cadence.props.visibility_db)}

    def _pod(self, instance: str) -> Pod:
        assert self.cadence is not None
        service = self.cadence.instances[instance]
        pod = self.cadence.pod(instance, self.workloads[service])
        pod.endpoints = self.frontend_endpoints if service == "frontend" else self.ring
        # A server started while PostgreSQL is down exits (its schema check fails); the
        # kubelet starts it again (the pod's wait-for-schema init container is not run here).
        pod.restart_on_exit = True
        return pod

    def roll_postgres(self) -> float:
        """A rollout of the StatefulSet (its one pod replaced); its seconds."""
        self.old_pods.extend(self.pg_set.pods)
        return roll_statefulset(self.pg_set, ready_timeout_s=90).seconds

    def roll_cadence(self) -> dict[str, float]:
        """The four Deployments rolled at once; each one's seconds."""
        assert self.cadence is not None
        cadence = self.cadence
        timings: dict[str, float] = {}
        errors: list[BaseException] = []

        def roll(service: str) -> None:
            try:
                result = roll_deployment(self.workloads[service], list(self.pods[service]),
                                         lambda _: self._pod(cadence.add_instance(service)),
                                         self.frontend_endpoints if service == "frontend" else self.ring,
                                         ready_timeout_s=120)
                self.old_pods.extend(self.pods[service])
                self.pods[service] = result.new
                timings[service] = result.seconds
            except BaseException as e:  # noqa: BLE001 - raised below
                errors.append(e)

        threads = [threading.Thread(target=roll, args=(s,), name=f"roll-{s}") for s in SERVICES]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise RolloutError(f"a Cadence rollout failed: {errors[0]}\n{self.logs()}")
        return timings

    def drain_node(self) -> DrainResult:
        """``kubectl drain`` of the node running PostgreSQL and one pod of each Cadence
        Deployment (a Pi's one of each): all evicted at once as their PDBs allow (PostgreSQL
        has none: one server), each Deployment's replacement started at once, PostgreSQL's
        once the old server is gone."""
        assert self.cadence is not None
        cadence = self.cadence
        budgets = tools.rendered_budgets()

        def cadence_set(service: str) -> PodSet:
            return PodSet(name=service, workload=self.workloads[service], pdb=budgets[service], pods=self.pods[service],
                          make_pod=lambda _: self._pod(cadence.add_instance(service)),
                          endpoints=self.frontend_endpoints if service == "frontend" else self.ring)

        sets = [self.pg_set, *(cadence_set(s) for s in SERVICES)]
        evicted = [s.pods[0] for s in sets]
        result = drain(sets, 0, ready_timeout_s=120)
        self.old_pods.extend(evicted)
        return result

    def logs(self, lines: int = 15) -> str:
        """The tails of every Cadence instance's log, the worker's and PostgreSQL's."""
        parts = []
        if self.cadence is not None:
            parts += [f"--- {i}\n{self.cadence.log_tail(i, lines)}" for i in self.cadence.instances]
        worker = self.workdir / "worker.log"
        if worker.exists():
            parts.append("--- worker\n" + "\n".join(worker.read_text(errors="replace").splitlines()[-lines:]))
        parts.append(f"--- postgres\n{self.postgres.log_tail(lines)}")
        return "\n".join(parts)

    def close(self) -> None:
        try:
            if self.worker is not None:
                kill_group(self.worker)
            if self.cadence is not None:
                self.cadence.close()
        finally:
            self.pg_balancer.close()
            self.frontend_balancer.close()
            self.postgres.close()


class WorkflowStarts:
    """A client starting an order workflow every ``interval_s`` in a thread (``with``); a
    start the frontend answered is acknowledged (with its item count and the time), one that
    failed is counted and not retried (a new one follows)."""

    def __init__(self, platform: RolloutPlatform, *, interval_s: float = 0.3, pause_s: int = 2) -> None:
        self.target, self.domain, self.task_list = platform.frontend, platform.domain, platform.task_list
        self.interval_s, self.pause_s = interval_s, pause_s
        self.acked: list[tuple[Any, int, float]] = []
        self.failed: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), name="starts", daemon=True)
        self.started_at = 0.0

    async def _run(self) -> None:
        from cadence import Client

        from final_problem.clients import cadence as sample

        async with Client(target=self.target, domain=self.domain) as client:
            items = 0
            while not self._stop.is_set():
                items += 1
                try:
                    execution = await asyncio.wait_for(
                        sample.start_order(client, items=items, pause_s=self.pause_s, task_list=self.task_list),
                        timeout=10)
                    self.acked.append((execution, items, time.monotonic()))
                except Exception as e:  # noqa: BLE001 - an unacknowledged start, counted
                    self.failed.append(type(e).__name__)
                await asyncio.sleep(self.interval_s)

    def __enter__(self) -> "WorkflowStarts":
        self.started_at = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def longest_gap_s(self) -> float:
        """The longest time without an acknowledged start."""
        times = [self.started_at, *(at for _, _, at in self.acked)]
        return max(b - a for a, b in zip(times, times[1:], strict=False))


def completed(platform: RolloutPlatform, acked: list[tuple[Any, int, float]], *,
              timeout_s: float = COMPLETE_TIMEOUT_S) -> dict[str, Any]:
    """Each acknowledged workflow's result once every one has closed (each poll reads the
    histories without a long poll; a failed call is "not yet"); ``{"closed": <event>}`` for one
    that closed without completing. Raises TimeoutError naming the workflows still open."""
    from cadence import Client

    from final_problem.clients import cadence as sample

    open_ones: list[str] = []

    async def poll() -> dict[str, Any] | None:
        done: dict[str, Any] = {}
        open_ones.clear()
        async with Client(target=platform.frontend, domain=platform.domain) as client:
            for execution, _, _ in acked:
                events = await sample.history_events(client, execution)
                last = sample.event_kind(events[-1]) if events else ""
                if last == "workflow_execution_completed":
                    done[execution.workflow_id] = sample.close_result(client, execution, events[-1])
                elif last.startswith("workflow_execution_") and last != "workflow_execution_started":
                    done[execution.workflow_id] = {"closed": last}  # failed, timed out, terminated
                else:
                    open_ones.append(f"{execution.workflow_id}: ... {[sample.event_kind(e) for e in events[-4:]]}")
        return None if open_ones else done

    def attempt() -> dict[str, Any] | None:
        try:
            return asyncio.run(asyncio.wait_for(poll(), timeout=30))
        except Exception:  # noqa: BLE001 - not yet
            return None

    try:
        return wait_for("every acknowledged workflow to complete", attempt, timeout_s=timeout_s, interval_s=1)
    except TimeoutError as e:
        raise TimeoutError(f"{e}; open: {open_ones[:5]}") from None


@dataclass
class Outcome:
    acks: list[Any]
    lost_rows: list[int]
    outage_s: float
    starts: WorkflowStarts
    wrong: list[Any]
    again: int
    sessions: int


def under_load(platform: RolloutPlatform, change: Callable[[LiveWriter], None]) -> Outcome:
    """``change(writer)`` while a psql session commits rows and a client starts workflows;
    then every acknowledged row and workflow checked. TimeoutError: a workflow did not close."""
    from final_problem.clients import cadence as sample

    session = PsqlWriter(host=LOOPBACK, port=platform.pg_balancer.port, user=platform.postgres.user,
                         password=platform.postgres.password, table=TABLE, bin_dir=platform.postgres.bin_dir)
    writer = LiveWriter(session.insert, name="psql", retry_on=(SessionLost,), retry_s=0.1)
    try:
        with WorkflowStarts(platform) as starts:
            writer.start()
            writer.wait_for(20, timeout_s=30)
            time.sleep(2)
            started = time.monotonic()
            change(writer)
            outage = writer.longest_gap_s(since=started)
            time.sleep(3)
        acks = writer.stop()
        writer.join()
    finally:
        session.close()
    done = completed(platform, starts.acked)
    present = {int(row[0]) for row in platform.postgres.query(f"SELECT seq FROM {TABLE}")}
    lost_rows = sorted({a.seq for a in acks} - present)
    # Activities run at least once: one whose completion a restart cut short runs again after
    # its timeout (a later attempt of ``reserve``); the order's outcome is the same.
    wrong, again = [], 0
    for execution, items, _ in starts.acked:
        result, expected = done.get(execution.workflow_id), sample.expected_result(execution.workflow_id, items)
        if (result is None or "closed" in result
                or (result["order_id"], result["charged_cents"]) != (expected["order_id"], expected["charged_cents"])
                or result["reserved_on_attempt"] < sample.RESERVE_FAILURES):
            wrong.append((execution.workflow_id, result))
        else:
            again += result["reserved_on_attempt"] > sample.RESERVE_FAILURES
    return Outcome(acks=acks, lost_rows=lost_rows, outage_s=outage, starts=starts, wrong=wrong, again=again,
                   sessions=session.sessions)


def describe(o: Outcome) -> str:
    return (f"{len(o.acks)} acknowledged commits, {len(o.lost_rows)} lost, longest write outage {o.outage_s:.2f} s; "
            f"{len(o.starts.acked)} workflows started, {len(o.wrong)} lost or wrong, {o.again} ran an activity again, "
            f"{len(o.starts.failed)} starts refused {sorted(set(o.starts.failed))}, longest gap between acknowledged "
            f"starts {o.starts.longest_gap_s():.2f} s")
