"""The Cadence build pins one version, builds once, and the Python workflow's logic."""

from __future__ import annotations

import asyncio
import re
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest
from cadence.testing import TestWorkflowEnvironment

from final_problem import versions
from final_problem.clients import cadence as orders
from final_problem.local import cadence as tools
from final_problem.renderers.cadence import ACTIVITY_REDISPATCH_S

ROOT = Path(__file__).resolve().parents[1]


def test_go_module_builds_the_version_of_the_image() -> None:
    go_mod = (ROOT / "deps" / "cadence" / "go.mod").read_text()
    assert re.search(r"^(?:require)?\s*github.com/uber/cadence (v[0-9.]+)$", go_mod, re.M).group(1) == versions.CADENCE_VERSION
    assert versions.CADENCE_SERVER_IMAGE.endswith(f":{versions.CADENCE_VERSION}")
    # Cadence's go.mod replaces apache/thrift; `go` ignores a dependency's replace lines.
    assert "replace github.com/apache/thrift => github.com/apache/thrift v0.16.0" in go_mod


def test_the_previous_minors_module_builds_the_version_the_upgrade_starts_from() -> None:
    """deps/cadence-previous builds the server of the rehearsal's starting version, one minor
    before the pinned one, with that release's own replace line."""
    go_mod = (ROOT / "deps" / "cadence-previous" / "go.mod").read_text()
    found = re.search(r"^(?:require)?\s*github.com/uber/cadence (v[0-9.]+)$", go_mod, re.M)
    assert found and found.group(1) == versions.CADENCE_UPGRADE_FROM
    previous = [int(p) for p in versions.CADENCE_UPGRADE_FROM[1:].split(".")]
    pinned = [int(p) for p in versions.CADENCE_VERSION[1:].split(".")]
    assert previous[0] == pinned[0] and previous[1] == pinned[1] - 1
    assert "replace github.com/apache/thrift => github.com/apache/thrift v0.0.0-20161221203622-b2a4d4ae21c7" in go_mod
    # Only the server: the schema update is the pinned release's tool's.
    assert sorted(p.name for p in (ROOT / "deps" / "cadence-previous" / "cmd").iterdir()) == ["cadence-server"]


def test_make_cadence_tools_builds_the_pinned_tools_and_the_previous_server() -> None:
    # Run as `make test` runs it too (MAKELEVEL set): no "Entering directory" lines.
    out = subprocess.run(["make", "-n", "--no-print-directory", "cadence-tools"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    assert out.split() == ["deps/cadence/build.sh", "deps/cadence/build.sh", "deps/cadence-previous"]


def test_a_second_build_builds_nothing() -> None:
    """`make test` built the tools; running the build again only checks the stamp."""
    assert (tools.cache_dir() / ".installed").exists(), "run `make cadence-tools` first"
    result = subprocess.run([str(ROOT / "deps" / "cadence" / "build.sh")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout == "" and result.stderr == ""
    assert (tools.cache_dir(versions.CADENCE_UPGRADE_FROM) / ".installed").exists(), "run `make cadence-tools` first"
    result = subprocess.run([str(ROOT / "deps" / "cadence" / "build.sh"), str(ROOT / "deps" / "cadence-previous")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout == "" and result.stderr == ""


def test_the_previous_build_is_the_server_alone_with_its_releases_schema_files() -> None:
    """The rehearsal sets the database up with the older release's schema files, then updates
    it with the pinned tool and files, as the new schema Job does."""
    assert tools.server_binary(versions.CADENCE_UPGRADE_FROM).exists()
    assert not (tools.cache_dir(versions.CADENCE_UPGRADE_FROM) / "bin" / "cadence-sql-tool").exists()
    root = tools.schema_dir(versions.CADENCE_UPGRADE_FROM)
    assert tools.latest_version("cadence", root=root) == "0.6"
    assert tools.latest_version("visibility", root=root) == "0.8"


def test_schema_files_are_the_modules() -> None:
    assert tools.latest_version("cadence") == "0.7"
    assert tools.latest_version("visibility") == "0.9"


def run_order(env: TestWorkflowEnvironment, workflow_id: str, items: int) -> None:
    async def go() -> None:
        await env.client.start_workflow(
            "OrderWorkflow", workflow_id, items, 30, task_list=orders.TASK_LIST, workflow_id=workflow_id,
            execution_start_to_close_timeout=timedelta(minutes=1),
        )
    asyncio.run(go())


def test_order_workflow_logic_in_the_sdks_test_environment() -> None:
    """The SDK's in-memory environment runs the workflow code (not a server: it neither
    retries activities nor persists history). ``reserve`` is replaced by its third,
    successful attempt; ``charge`` runs for real; the 30 s timer fires on virtual time."""
    env = TestWorkflowEnvironment(orders.registry, task_list=orders.TASK_LIST)
    env.on_activity("reserve", fn=lambda order_id, items: orders.RESERVE_FAILURES)
    start = env.now()
    run_order(env, "order-1", 3)
    assert env.get_workflow_result(dict, "order-1") == orders.expected_result("order-1", 3)
    assert env.now() - start >= timedelta(seconds=30)


def test_reserve_fails_its_first_attempts_then_succeeds(monkeypatch: pytest.MonkeyPatch) -> None:
    class Info:
        attempt = 0
    monkeypatch.setattr(orders.activity, "info", lambda: Info)
    for attempt in range(orders.RESERVE_FAILURES):
        Info.attempt = attempt
        with pytest.raises(orders.TemporaryFailure):
            orders.reserve("o", 1)
    Info.attempt = orders.RESERVE_FAILURES
    assert orders.reserve("o", 1) == orders.RESERVE_FAILURES


def test_every_activity_retries_until_an_expiration_and_reserve_succeeds_well_within_it() -> None:
    """The server needs an expiration or a number of attempts (it refuses a policy with
    neither); a wait for a worker uses up an attempt each schedule-to-start, so the
    policy expires rather than counting attempts. ``reserve``'s failures and backoffs fit
    many times into it."""
    policy = orders.ACTIVITY_OPTIONS["retry_policy"]
    assert "maximum_attempts" not in policy and policy["expiration_interval"] == orders.RETRY_EXPIRATION
    assert orders.ACTIVITY_OPTIONS["schedule_to_start_timeout"] == timedelta(seconds=ACTIVITY_REDISPATCH_S)
    backoffs = [min(policy["initial_interval"] * policy["backoff_coefficient"] ** n, policy["maximum_interval"])
                for n in range(orders.RESERVE_FAILURES)]
    failures = orders.RESERVE_FAILURES * (orders.ACTIVITY_TIMEOUT + orders.SCHEDULE_TO_START)
    assert sum(backoffs, timedelta()) + failures < policy["expiration_interval"]


def test_cli_rejects_a_bad_item_count(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        orders.main(["start", "--items", "0"])
    assert "--items must be at least 1" in capsys.readouterr().err


def test_cli_rejects_a_timer_the_server_would_reject(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        orders.main(["start", "--pause-s", "0"])
    assert "--pause-s: the durable timer takes whole seconds, at least 1" in capsys.readouterr().err


def test_start_order_rejects_a_sub_second_pause_before_calling_the_server() -> None:
    with pytest.raises(ValueError, match="pause_s = 0.5: the durable timer takes whole seconds"):
        asyncio.run(orders.start_order(None, items=1, pause_s=0.5))  # type: ignore[arg-type]
