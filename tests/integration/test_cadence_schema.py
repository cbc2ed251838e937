"""The schema Job's script with the real cadence-sql-tool against a real PostgreSQL.

The tool is built from the pinned Cadence module (``make cadence-tools``) and applies the
module's schema files, the ones the server image ships.
"""

from __future__ import annotations

import subprocess
import threading

import pytest

from final_problem.local import cadence as tools
from final_problem.local.postgres import LocalPostgres
from final_problem.renderers.cadence import Database

pytestmark = pytest.mark.integration

DB = Database(host="127.0.0.1", user="postgres", cadence_db="cadence", visibility_db="cadence_visibility")


@pytest.fixture
def database(postgres_server: LocalPostgres) -> Database:
    try:
        tools.sql_tool()
        tools.schema_dir()
    except tools.CadenceToolsMissing as e:
        pytest.fail(str(e))
    return Database(host=DB.host, port=postgres_server.port, user=DB.user,
                    cadence_db=DB.cadence_db, visibility_db=DB.visibility_db)


def versions_of(pg: LocalPostgres, db: Database) -> dict[str, str]:
    return {
        name: pg.query("SELECT curr_version FROM schema_version", database=name)[0][0]
        for name in (db.cadence_db, db.visibility_db)
    }


def run(mode: str, pg: LocalPostgres, db: Database, **kw) -> subprocess.CompletedProcess[str]:
    return tools.run_schema_script(mode, database=db, password=pg.password, **kw)


def latest(db: Database) -> dict[str, str]:
    return {db.cadence_db: tools.latest_version("cadence"), db.visibility_db: tools.latest_version("visibility")}


def test_setup_creates_databases_and_schemas(postgres_server: LocalPostgres, database: Database) -> None:
    result = run("setup", postgres_server, database)
    assert result.returncode == 0, result.stderr
    assert {"cadence", "cadence_visibility"} <= postgres_server.databases()
    assert versions_of(postgres_server, database) == latest(database)
    tables = {r[0] for r in postgres_server.query("SELECT tablename FROM pg_tables WHERE schemaname = 'public'", database="cadence")}
    assert {"shards", "executions", "history_node", "domains", "tasks"} <= tables


def test_second_setup_is_a_no_op(postgres_server: LocalPostgres, database: Database) -> None:
    assert run("setup", postgres_server, database).returncode == 0
    postgres_server.psql("CREATE TABLE marker (v int); INSERT INTO marker VALUES (42)", database="cadence")
    history = postgres_server.query("SELECT count(*) FROM schema_update_history", database="cadence")

    again = run("setup", postgres_server, database)

    assert again.returncode == 0, again.stderr
    assert "cadence: current, nothing to do" in again.stderr
    assert "cadence_visibility: current, nothing to do" in again.stderr
    assert versions_of(postgres_server, database) == latest(database)
    assert postgres_server.query("SELECT count(*) FROM schema_update_history", database="cadence") == history
    assert postgres_server.query("SELECT v FROM marker", database="cadence") == [["42"]]


def test_setup_upgrades_an_older_schema(postgres_server: LocalPostgres, database: Database) -> None:
    tool, root = str(tools.sql_tool()), tools.schema_dir()
    env = {"SQL_HOST": database.host, "SQL_PORT": str(database.port), "SQL_USER": database.user,
           "SQL_PASSWORD": postgres_server.password, "PATH": "/usr/bin:/bin"}
    # An older server's schema: default store at 0.3, visibility at 0.2.
    for db, kind, version in ((database.cadence_db, "cadence", "0.3"), (database.visibility_db, "visibility", "0.2")):
        for args in (["create-database", "--db", db], ["--db", db, "setup-schema", "-v", "0.0"],
                     ["--db", db, "update-schema", "-d", str(root / kind / "versioned"), "-v", version]):
            subprocess.run([tool, "--plugin", "postgres", *args], env=env, check=True, capture_output=True, timeout=120)
    assert versions_of(postgres_server, database) == {database.cadence_db: "0.3", database.visibility_db: "0.2"}
    postgres_server.psql("INSERT INTO domains (shard_id, id, name, data, data_encoding, is_global) "
                         "VALUES (54321, '\\x01'::bytea, 'kept', ''::bytea, 'thriftrw', false)",
                         database="cadence")

    result = run("setup", postgres_server, database)

    assert result.returncode == 0, result.stderr
    assert "cadence: upgraded" in result.stderr
    assert versions_of(postgres_server, database) == latest(database)
    assert postgres_server.query("SELECT name FROM domains", database="cadence") == [["kept"]]


def test_wait_returns_once_the_schema_is_current(postgres_server: LocalPostgres, database: Database) -> None:
    before = run("wait", postgres_server, database, wait_timeout_s=3)
    assert before.returncode == 1
    assert "not current" in before.stderr
    assert run("setup", postgres_server, database).returncode == 0
    after = run("wait", postgres_server, database, wait_timeout_s=3)
    assert after.returncode == 0, after.stderr


def test_setup_waits_for_the_database_server(postgres_server: LocalPostgres, database: Database) -> None:
    postgres_server.stop()
    restarted = threading.Timer(4.0, postgres_server.start)
    restarted.start()
    try:
        result = run("setup", postgres_server, database, wait_timeout_s=60)
    finally:
        restarted.join()
    assert result.returncode == 0, result.stderr
    assert versions_of(postgres_server, database) == latest(database)


def test_setup_gives_up_when_the_server_never_comes(postgres_server: LocalPostgres, database: Database) -> None:
    postgres_server.stop()
    result = run("setup", postgres_server, database, wait_timeout_s=3)
    assert result.returncode == 1
    assert "database server not reachable" in result.stderr
