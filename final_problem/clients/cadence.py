"""A Cadence workflow, its activities, a worker and a starter, on the official Python SDK.

``cadence-python-client`` (PyPI, 0.4.1): async workflows as classes (``@workflow.run``),
activities as functions (``@registry.activity()``), a :class:`cadence.worker.Worker`
polling decision and activity tasks over gRPC (frontend port 7833), a
:class:`cadence.Client` that starts, signals and queries workflows. It has no call that
waits for a result; :func:`wait_for_result` long-polls the close event of the history.

The workflow, ``OrderWorkflow``, reserves stock, waits, then charges:

- ``reserve`` fails on its first two attempts (``activity.info().attempt`` 0 and 1, as a
  flaky dependency would) and succeeds on the third: the server retries it under the
  retry policy :data:`ACTIVITY_RETRY`, which every activity runs under (the SDK passes the
  policy; the server schedules the attempts, also after an attempt waited
  :data:`SCHEDULE_TO_START` for a worker: a task lost in a matching restart is dispatched again);
- a durable timer between the two steps is the window in which a worker can be killed:
  the workflow's progress is in the server's history, so a new worker replays it and the
  workflow completes with the same result.

``EchoWorkflow`` runs one activity and returns its value: the smallest complete workflow,
what ``bench/cadence.py`` starts to measure throughput and start-to-complete latency.

Command line (``--timeout`` bounds the connection to the frontend and the start request,
default 5 s: an unreachable frontend ends the command with one line and exit status 3)::

    final-problem cadence worker --target HOST:7833 --domain default
    final-problem cadence start  --target HOST:7833 --domain default --items 3 --wait
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

from cadence import Client, activity, workflow
from cadence.api.v1.common_pb2 import WorkflowExecution
from cadence.api.v1.history_pb2 import EventFilterType
from cadence.api.v1.service_workflow_pb2 import GetWorkflowExecutionHistoryRequest
from cadence.worker import Registry, Worker

from final_problem.clients import DEFAULT_TIMEOUT_S, Unreachable, add_timeout, run_async, run_command

TASK_LIST = "final-problem-orders"
#: Price per item, in cents.
PRICE_CENTS = 250
#: Attempts ``reserve`` fails before it succeeds.
RESERVE_FAILURES = 2
#: How long an activity's attempts may go on: a retry policy needs an expiration or a number
#: of attempts (cadence v1.4.1 ``common/util.go``); an expiration, because a task lost to a
#: matching restart, or a wait for a worker, times out once per
#: ``ACTIVITY_REDISPATCH_S`` (renderers/cadence.py) and uses up an attempt each time.
RETRY_EXPIRATION = timedelta(minutes=5)
#: Retry policy of every activity: an attempt that fails, times out running or waits too long
#: for a worker is scheduled again; short backoff so a test sees the third attempt of
#: ``reserve`` within seconds.
ACTIVITY_RETRY: workflow.RetryPolicy = {
    "initial_interval": timedelta(seconds=1),
    "backoff_coefficient": 2.0,
    "maximum_interval": timedelta(seconds=2),
    "expiration_interval": RETRY_EXPIRATION,
}
#: An attempt's time to run (start to close).
ACTIVITY_TIMEOUT = timedelta(seconds=30)
#: An attempt's time in the task list. The server raises it to the least of the retry
#: expiration and ``history.activityMaxScheduleToStartTimeoutForRetry``, 30 s as rendered
#: (renderers/cadence.py ``ACTIVITY_REDISPATCH_S``); stated here as the same 30 s, because the
#: SDK would otherwise send its own default (10 s).
SCHEDULE_TO_START = timedelta(seconds=30)
#: The options every activity of the sample runs with.
ACTIVITY_OPTIONS: workflow.ActivityOptions = {
    "start_to_close_timeout": ACTIVITY_TIMEOUT,
    "schedule_to_start_timeout": SCHEDULE_TO_START,
    "retry_policy": ACTIVITY_RETRY,
}
#: Cadence timers count whole seconds: a shorter sleep becomes a 0 s timer, which the server
#: rejects (BAD_START_TIMER_ATTRIBUTES, "Invalid StartToFireTimeoutSeconds: 0") on every
#: decision until the workflow is terminated.
MIN_PAUSE_S = 1
PAUSE_RULE = f"the durable timer takes whole seconds, at least {MIN_PAUSE_S} (the server rejects a 0 s timer)"

registry = Registry()


class TemporaryFailure(RuntimeError):
    """A failure the retry policy retries."""


@registry.activity()
def reserve(order_id: str, items: int) -> int:
    """Reserve ``items``; fails on the first :data:`RESERVE_FAILURES` attempts. Returns the attempt that succeeded."""
    attempt = activity.info().attempt
    if attempt < RESERVE_FAILURES:
        raise TemporaryFailure(f"stock service unavailable (attempt {attempt})")
    return attempt


@registry.activity()
def charge(order_id: str, items: int) -> int:
    """Charge the order; returns the amount in cents."""
    return items * PRICE_CENTS


@registry.workflow()
class OrderWorkflow:
    """Reserve, wait ``pause_s`` on a durable timer, charge; returns what happened."""

    @workflow.run
    async def run(self, order_id: str, items: int, pause_s: int) -> dict[str, Any]:
        attempt = await reserve.with_options(**ACTIVITY_OPTIONS).execute(order_id, items)
        await workflow.sleep(timedelta(seconds=pause_s))
        amount = await charge.with_options(**ACTIVITY_OPTIONS).execute(order_id, items)
        return {"order_id": order_id, "reserved_on_attempt": attempt, "charged_cents": amount}


@registry.activity()
def echo(value: int) -> int:
    """The simple workflow's one activity."""
    return value


@registry.workflow()
class EchoWorkflow:
    """One activity, no timer: the smallest complete workflow (benchmarks: start-to-complete)."""

    @workflow.run
    async def run(self, value: int) -> int:
        return await echo.with_options(**ACTIVITY_OPTIONS).execute(value)


async def start_echo(client: Client, value: int, *, task_list: str = TASK_LIST) -> WorkflowExecution:
    workflow_id = f"echo-{uuid.uuid4()}"
    return await client.start_workflow(
        "EchoWorkflow", value, task_list=task_list, workflow_id=workflow_id,
        execution_start_to_close_timeout=timedelta(minutes=5),
    )


def expected_result(order_id: str, items: int) -> dict[str, Any]:
    """What :class:`OrderWorkflow` returns for a completed order."""
    return {"order_id": order_id, "reserved_on_attempt": RESERVE_FAILURES, "charged_cents": items * PRICE_CENTS}


async def start_order(client: Client, *, items: int, pause_s: int, workflow_id: str | None = None,
                      task_list: str = TASK_LIST) -> WorkflowExecution:
    if not isinstance(pause_s, int) or pause_s < MIN_PAUSE_S:
        raise ValueError(f"pause_s = {pause_s!r}: {PAUSE_RULE}")
    order_id = workflow_id or f"order-{uuid.uuid4()}"
    return await client.start_workflow(
        "OrderWorkflow", order_id, items, pause_s,
        task_list=task_list, workflow_id=order_id,
        execution_start_to_close_timeout=timedelta(minutes=10),
    )


async def wait_for_result(client: Client, execution: WorkflowExecution, result_type: type = dict) -> Any:
    """Long-poll the workflow's close event; return its result or raise with the close event."""
    while True:
        response = await client.workflow_stub.GetWorkflowExecutionHistory(
            GetWorkflowExecutionHistoryRequest(
                domain=client.domain, workflow_execution=execution, wait_for_new_event=True,
                history_event_filter_type=EventFilterType.EVENT_FILTER_TYPE_CLOSE_EVENT, skip_archival=True,
            )
        )
        events = response.history.events
        if not events:
            continue  # the long poll expired before the workflow closed
        return close_result(client, execution, events[-1], result_type)


def close_result(client: Client, execution: WorkflowExecution, event: Any, result_type: type = dict) -> Any:
    """The result a workflow's close ``event`` carries; raise when it closed without completing."""
    if event.HasField("workflow_execution_completed_event_attributes"):
        payload = event.workflow_execution_completed_event_attributes.result
        return client.data_converter.from_data(payload, [result_type])[0]
    raise RuntimeError(f"workflow {execution.workflow_id} closed without completing: {event}")


async def history_events(client: Client, execution: WorkflowExecution) -> list[Any]:
    """Every event of the workflow's history so far (``history_pb2.HistoryEvent``), in order."""
    events: list[Any] = []
    token = b""
    while True:
        response = await client.workflow_stub.GetWorkflowExecutionHistory(
            GetWorkflowExecutionHistoryRequest(domain=client.domain, workflow_execution=execution,
                                               next_page_token=token, skip_archival=True)
        )
        events.extend(response.history.events)
        token = response.next_page_token
        if not token:
            return events


def event_kind(event: Any) -> str:
    """The event's attributes field without its suffix: ``activity_task_started``, ``timer_started``, ..."""
    return event.WhichOneof("attributes").removesuffix("_event_attributes")


async def connect(*, target: str, domain: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> Client:
    """A client whose gRPC channel to the frontend is up (use it as ``async with``);
    :class:`~final_problem.clients.Unreachable` after ``timeout_s``. gRPC itself waits for
    ever (``Client.__aenter__`` waits for the channel, which retries a refused connection
    with backoff), so without this a command against a wrong address is silent for good."""
    client = Client(target=target, domain=domain)
    try:
        await asyncio.wait_for(client.ready(), timeout=timeout_s)
    except asyncio.TimeoutError:
        await client.close()
        raise Unreachable(
            f"no Cadence frontend answered at {target} within {timeout_s:g} s: give --target HOST:7833 "
            "(or --cadence, CADENCE_FRONTEND), or raise --timeout"
        ) from None
    return client


async def run_worker(*, target: str, domain: str, task_list: str = TASK_LIST,
                     timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
    async with await connect(target=target, domain=domain, timeout_s=timeout_s) as client:
        async with Worker(client, task_list, registry):
            print(f"worker polling {task_list} on {target} (domain {domain})", flush=True)
            await asyncio.Event().wait()


async def run_start(*, target: str, domain: str, items: int, pause_s: int, wait: bool,
                    task_list: str = TASK_LIST, timeout_s: float = DEFAULT_TIMEOUT_S) -> dict[str, Any]:
    async with await connect(target=target, domain=domain, timeout_s=timeout_s) as client:
        try:
            execution = await asyncio.wait_for(
                start_order(client, items=items, pause_s=pause_s, task_list=task_list), timeout=timeout_s)
        except asyncio.TimeoutError:
            raise Unreachable(f"the Cadence frontend at {target} did not start the workflow within {timeout_s:g} s; "
                              "raise --timeout") from None
        out: dict[str, Any] = {"workflow_id": execution.workflow_id, "run_id": execution.run_id}
        if wait:
            out["result"] = await wait_for_result(client, execution)
        return out


def spawn_worker(*, target: str, domain: str, log: Path, task_list: str = TASK_LIST) -> subprocess.Popen[bytes]:
    """This module's worker as a process of its own (its own session, so ``killpg`` stops it
    and nothing else), appending to ``log``: what a demo or a test kills mid-workflow."""
    argv = [sys.executable, "-m", "final_problem.clients.cadence", "worker", "--target", target, "--domain", domain, "--task-list", task_list]
    with open(log, "ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="final-problem cadence", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("worker", "start"),
                        help="worker: poll the task list and run the workflows; start: start an order")
    parser.add_argument("--target", default=os.environ.get("CADENCE_FRONTEND", "127.0.0.1:7833"),
                        help="frontend gRPC host:port (default: $CADENCE_FRONTEND, else 127.0.0.1:7833)")
    parser.add_argument("--domain", default=os.environ.get("CADENCE_DOMAIN", "default"),
                        help="Cadence domain (default: $CADENCE_DOMAIN, else default)")
    parser.add_argument("--task-list", default=TASK_LIST, help=f"task list the worker polls (default: {TASK_LIST})")
    parser.add_argument("--items", type=int, default=1, help="start: items in the order (default: 1)")
    add_timeout(parser)
    parser.add_argument("--pause-s", type=int, default=5, help="durable timer between reserve and charge, whole seconds")
    parser.add_argument("--wait", action="store_true", help="wait for the result and print it")
    args = parser.parse_args(argv)
    if args.items < 1:
        parser.error("--items must be at least 1")
    if args.pause_s < MIN_PAUSE_S:
        parser.error(f"--pause-s: {PAUSE_RULE}")
    if args.command == "worker":
        run_async(run_worker(target=args.target, domain=args.domain, task_list=args.task_list, timeout_s=args.timeout))
        return 0
    result = run_async(run_start(target=args.target, domain=args.domain, items=args.items,
                                   pause_s=args.pause_s, wait=args.wait, task_list=args.task_list,
                                   timeout_s=args.timeout))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))
