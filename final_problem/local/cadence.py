"""Cadence's tools on one host, run from what the chart renders.

``make cadence-tools`` (a dependency of ``make test`` and ``make bench``) builds
``cadence-sql-tool`` and the ``cadence`` CLI from the ``github.com/uber/cadence`` Go module at
:data:`final_problem.versions.CADENCE_VERSION` into :func:`cache_dir` (see
``deps/cadence/``); the schema files it applies are the module's ``schema/postgres``, the
same files the server image ships under ``/etc/cadence/schema/postgres``.

:func:`run_schema_script` runs the schema Job's script (:data:`~final_problem.renderers.cadence.SCHEMA_SCRIPT`)
against a local PostgreSQL exactly as the Job and the server pods' init containers run it;
:func:`run_domain_script` runs the domain Job's script with the real CLI.

The server itself is not built here: the module's ``main`` package and its service wiring
(``cmd/server``, package ``cmd/server/cadence``) form a separate nested module,
``github.com/uber/cadence/cmd/server``, which the Go module proxy does not serve at the
release tag (``@v/v1.4.1.info``: 404 Not Found), and the root module's zip leaves nested
modules out.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from final_problem import versions
from final_problem.renderers.cadence import SCHEMA_SCRIPT, Database, domain_script, schema_env


class CadenceToolsMissing(RuntimeError):
    """The tools are not built: run ``make cadence-tools``."""


def cache_dir() -> Path:
    """``${XDG_CACHE_HOME:-~/.cache}/final-problem/cadence-<version>``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "final-problem" / f"cadence-{versions.CADENCE_VERSION}"


def sql_tool() -> Path:
    path = cache_dir() / "bin" / "cadence-sql-tool"
    if not path.exists():
        raise CadenceToolsMissing(f"{path} is missing: run `make cadence-tools` (deps/cadence/build.sh)")
    return path


def schema_dir() -> Path:
    """The module's ``schema/postgres`` folder (``cadence/``, ``visibility/``), copied by the build."""
    path = cache_dir() / "schema" / "postgres"
    if not (path / "cadence" / "versioned").is_dir():
        raise CadenceToolsMissing(f"{path} is missing: run `make cadence-tools` (deps/cadence/build.sh)")
    return path


def latest_version(kind: str, *, root: Path | None = None) -> str:
    """Newest ``vX.Y`` folder of ``<schema dir>/<kind>/versioned``, without the ``v``."""
    folders = [p.name[1:] for p in ((root or schema_dir()) / kind / "versioned").glob("v*") if p.is_dir()]
    if not folders:
        raise CadenceToolsMissing(f"no versioned schema under {(root or schema_dir()) / kind}")
    return max(folders, key=lambda v: tuple(int(x) for x in re.findall(r"\d+", v)))


def run_schema_script(
    mode: str, *, database: Database, password: str, wait_timeout_s: int = 60, timeout_s: float = 300,
) -> subprocess.CompletedProcess[str]:
    """Run the schema script (``setup`` or ``wait``) with the locally built tool."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        **schema_env(database, schema_dir=str(schema_dir()), wait_timeout_s=wait_timeout_s),
        "SQL_PASSWORD": password,
        "SQL_TOOL": str(sql_tool()),
    }
    return subprocess.run(
        ["sh", "-c", SCHEMA_SCRIPT, "cadence-schema.sh", mode],
        env=env, capture_output=True, text=True, timeout=timeout_s,
    )


def cli() -> Path:
    path = cache_dir() / "bin" / "cadence"
    if not path.exists():
        raise CadenceToolsMissing(f"{path} is missing: run `make cadence-tools` (deps/cadence/build.sh)")
    return path


def run_domain_script(
    *, frontend_address: str, domain: str, retention_days: int, wait_timeout_s: int = 60, timeout_s: float = 300,
) -> subprocess.CompletedProcess[str]:
    """Run the domain Job's script with the locally built CLI."""
    script = domain_script(domain=domain, retention_days=retention_days, frontend_address=frontend_address, cli=str(cli()))
    return subprocess.run(
        ["sh", "-c", script], capture_output=True, text=True, timeout=timeout_s,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "WAIT_TIMEOUT_S": str(wait_timeout_s), "HOME": "/tmp"},
    )
