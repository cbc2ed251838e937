"""The local PostgreSQL launcher: unprivileged, password-only, durable across a kill -9."""

from __future__ import annotations

import os
import subprocess

import pytest

from final_problem.local.postgres import LocalPostgres
from final_problem.renderers.postgres import ROLE_SQL, server_settings

pytestmark = pytest.mark.integration


def test_runs_unprivileged_with_the_rendered_settings(postgres_server: LocalPostgres) -> None:
    owner = postgres_server.query("SELECT current_setting('data_directory')")[0][0]
    assert owner == str(postgres_server.data_dir)
    pid = postgres_server.process.pid
    uid = os.stat(f"/proc/{pid}").st_uid
    assert uid != 0, "the postmaster runs as root"
    for key in ("password_encryption", "synchronous_commit", "fsync", "max_connections"):
        assert postgres_server.query(f"SHOW {key}")[0][0] == server_settings()[key]
    assert postgres_server.query("SHOW listen_addresses")[0][0] == "127.0.0.1"


def test_refuses_a_wrong_password(postgres_server: LocalPostgres) -> None:
    result = subprocess.run(
        ["psql", "-X", "-h", postgres_server.host, "-p", str(postgres_server.port), "-U", "postgres", "-c", "SELECT 1"],
        capture_output=True, text=True, env={"PATH": os.environ["PATH"], "PGPASSWORD": "wrong"}, timeout=30,
    )
    assert result.returncode != 0
    assert "password authentication failed" in result.stderr


def test_committed_rows_survive_kill_9(postgres_server: LocalPostgres) -> None:
    postgres_server.psql("CREATE TABLE t (v int); INSERT INTO t SELECT generate_series(1, 1000)")
    postgres_server.kill()
    postgres_server.start()
    assert postgres_server.query("SELECT count(*), sum(v) FROM t") == [["1000", "500500"]]


def test_close_stops_the_server_and_removes_its_files() -> None:
    server = LocalPostgres()
    with server:
        pid = server.process.pid
    assert not server.workdir.exists()
    assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"


def test_role_sql_creates_then_resets_a_login_role(postgres_server: LocalPostgres) -> None:
    env = {"PATH": os.environ["PATH"], "PGPASSWORD": postgres_server.password}
    base = ["psql", "-X", "-v", "ON_ERROR_STOP=1", "-h", postgres_server.host, "-p", str(postgres_server.port),
            "-U", "postgres", "-d", "postgres", "-v", "role=cadence"]
    for password in ("first-password", "second-password"):
        subprocess.run([*base, "-v", f"password={password}"], input=ROLE_SQL, env=env, check=True,
                       capture_output=True, text=True, timeout=30)
        login = subprocess.run(
            ["psql", "-X", "-A", "-t", "-h", postgres_server.host, "-p", str(postgres_server.port), "-U", "cadence",
             "-d", "postgres", "-c", "CREATE DATABASE owned_by_client", "-c", "SELECT current_user"],
            env={"PATH": os.environ["PATH"], "PGPASSWORD": password}, capture_output=True, text=True, timeout=30,
        )
        postgres_server.psql("DROP DATABASE IF EXISTS owned_by_client")
        assert login.returncode == 0, login.stderr
        assert login.stdout.strip().endswith("cadence")
    assert postgres_server.query("SELECT count(*) FROM pg_roles WHERE rolname = 'cadence'") == [["1"]]
