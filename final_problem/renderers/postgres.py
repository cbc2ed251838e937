"""PostgreSQL server settings, rendered once for the chart and the local test server.

The chart passes them as ``-c name=value`` arguments to ``postgres`` (the official
image's entrypoint hands its arguments over); :mod:`final_problem.local.postgres` does the
same, adding only its loopback address, port and socket directory.
Source: PostgreSQL 17 documentation, chapter 19 "Server Configuration".
"""

from __future__ import annotations

#: Connections Cadence opens: each of the 4 services keeps up to ``maxConns`` per
#: database (config ``sql.maxConns``), two databases. The default max_connections is 100.
DEFAULT_MAX_CONNECTIONS = 100


#: Creates login role ``:role`` with CREATEDB and password ``:password`` (psql variables),
#: or resets the password of an existing one: safe to run again. ``format(%I, %L)``
#: quotes both; ``\gexec`` runs the generated statement.
ROLE_SQL = r"""
SELECT format('CREATE ROLE %I LOGIN CREATEDB PASSWORD %L', :'role', :'password')
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'role') \gexec
SELECT format('ALTER ROLE %I LOGIN CREATEDB PASSWORD %L', :'role', :'password') \gexec
"""


def server_settings(*, max_connections: int = DEFAULT_MAX_CONNECTIONS, shared_buffers_mib: int = 128) -> dict[str, str]:
    """``postgres -c`` settings, every one valid on PostgreSQL 15 to 18.

    Durability is spelled out: an acknowledged commit is on disk (``fsync``,
    ``synchronous_commit``, ``full_page_writes`` are the defaults, written here so a
    later tuning cannot drop them silently): Cadence's "no acknowledged state lost"
    rests on it.
    """
    return {
        "max_connections": str(max_connections),
        "shared_buffers": f"{shared_buffers_mib}MB",
        "password_encryption": "scram-sha-256",
        "fsync": "on",
        "synchronous_commit": "on",
        "full_page_writes": "on",
        "log_destination": "stderr",
        "log_min_messages": "warning",
        "log_connections": "off",
    }


def server_args(settings: dict[str, str]) -> list[str]:
    """``settings`` as the ``-c name=value`` arguments of ``postgres``."""
    args: list[str] = []
    for key, value in settings.items():
        args += ["-c", f"{key}={value}"]
    return args
