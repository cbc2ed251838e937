"""The domain Job's script with the real cadence CLI (built from the pinned module).

With a server, tests/integration/test_cadence_server.py registers the domain once and
finds it the second time. Without one, the CLI accepts every flag the script passes, and
the script retries an unreachable frontend until its deadline, then fails so the Job
retries.
"""

from __future__ import annotations

import subprocess

import pytest

from final_problem.local import cadence as tools
from final_problem.local import free_ports

pytestmark = pytest.mark.integration


@pytest.fixture
def closed_address() -> str:
    try:
        tools.cli()
    except tools.CadenceToolsMissing as e:
        pytest.fail(str(e))
    return f"127.0.0.1:{free_ports(1)[0]}"


def test_cli_accepts_the_scripts_flags_and_the_script_gives_up_on_an_unreachable_frontend(closed_address: str) -> None:
    result = tools.run_domain_script(frontend_address=closed_address, domain="default", retention_days=3, wait_timeout_s=1)
    assert result.returncode == 1
    assert "giving up" in result.stderr
    assert "Register Domain operation failed" in result.stderr
    assert "connection refused" in result.stderr
    assert "flag provided but not defined" not in result.stderr + result.stdout


def test_a_wrong_flag_would_be_caught(closed_address: str) -> None:
    """The check above can fail: the same CLI rejects a flag it does not know."""
    result = subprocess.run(
        [str(tools.cli()), "--address", closed_address, "--transport", "grpc", "--do", "default",
         "domain", "register", "--retention-days", "3"],
        capture_output=True, text=True, timeout=60,
    )
    assert "flag provided but not defined" in result.stdout + result.stderr
