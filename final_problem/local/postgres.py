"""A PostgreSQL server on loopback, in a temporary directory, for tests and benchmarks.

Uses Debian's ``postgresql`` package (``/usr/lib/postgresql/<major>/bin``): ``initdb`` a
fresh cluster with a generated superuser password (scram-sha-256 over TCP, as the chart's
server requires), then ``postgres`` on a free loopback port with the settings
:func:`final_problem.renderers.postgres.server_settings` renders for the chart.

PostgreSQL refuses to run as root ("root" execution of the PostgreSQL server is not
permitted). When the caller is root (CI), every server process runs as ``nobody``, which
owns the temporary directory; otherwise as the caller.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from final_problem import local
from final_problem.charts.postgres import PostgresProps
from final_problem.local import LOOPBACK, free_ports
from final_problem.local.limits import Groups, Limits
from final_problem.profiles import PI, Profile
from final_problem.renderers.postgres import ROLE_SQL, server_args, server_settings

if TYPE_CHECKING:
    from final_problem.local.rollout import Pod

#: Unprivileged account the server runs as when the caller is root.
RUN_AS_WHEN_ROOT = "nobody"
SUPERUSER = "postgres"


class LocalPostgresError(RuntimeError):
    """The server could not be initialised or started, or did not answer in time."""


def debian_bin_dir() -> Path:
    """The newest ``/usr/lib/postgresql/<major>/bin`` holding ``postgres`` and ``initdb``."""
    root = Path("/usr/lib/postgresql")
    majors = sorted(
        (int(p.name), p / "bin") for p in root.glob("*") if p.name.isdigit() and (p / "bin" / "postgres").exists()
    ) if root.is_dir() else []
    if not majors:
        raise LocalPostgresError(
            "no PostgreSQL server under /usr/lib/postgresql: install Debian's postgresql package "
            "(sudo make system-deps)"
        )
    return majors[-1][1]


def cached_release(version: str, into: Path) -> Path:
    """The ``bin`` directory of PostgreSQL ``version`` from the server cache (``make
    postgres``: the server, initdb and pg_ctl from Maven Central), linked under ``into``: the
    server runs as an unprivileged user, who cannot reach a cache under root's home. Hard
    links where the two share a file system, copies where not."""
    source = local.server_cache() / f"postgres-{version}"
    if not (source / ".installed").exists():
        raise LocalPostgresError(f"PostgreSQL {version} is not in {source.parent}: run make postgres (make test does)")
    target = into / f"postgres-{version}"
    if not target.exists():
        def link(src: str, dst: str) -> None:
            try:
                os.link(src, dst)
            except OSError:
                shutil.copy2(src, dst)

        shutil.copytree(source, target, copy_function=link, symlinks=True)
        for path in (into, *target.rglob("*")):
            path.chmod(path.stat().st_mode | 0o055 if path.is_dir() else path.stat().st_mode | 0o044)
        target.chmod(0o755)
    return target / "bin"


class LocalPostgres:
    """One PostgreSQL server; a context manager that stops (kills) it and removes its files.

    ``kill()`` and ``start()`` let a test cut the power and restart on the same data.
    """

    def __init__(
        self, *, bin_dir: Path | None = None, password: str | None = None, profile: Profile = PI,
        limits: bool = True, data_dir: Path | None = None, overrides: Mapping[str, str] | None = None,
    ) -> None:
        """The chart's server settings of ``profile`` (``shared_buffers``, ``max_connections``),
        changed by ``overrides``; with ``limits``, the server and its backends run under the
        container's CPU and memory limits there. ``data_dir`` (default: in the work directory)
        must not exist yet or be empty; on a volume, a directory inside it (initdb refuses a
        mount point's ``lost+found``)."""
        self.props = PostgresProps.for_profile(profile)
        self.groups = Groups(enabled=limits)
        self.bin_dir = bin_dir or debian_bin_dir()
        self.password = password or secrets.token_urlsafe(24)
        self.user = SUPERUSER
        self.host = LOOPBACK
        self.port = free_ports(1)[0]
        self.run_as = RUN_AS_WHEN_ROOT if os.geteuid() == 0 else None
        self.workdir = Path(tempfile.mkdtemp(prefix="final-problem-postgres-"))
        self.data_dir = data_dir or self.workdir / "data"
        self.settings = {
            **server_settings(max_connections=self.props.max_connections, shared_buffers_mib=self.props.shared_buffers_mib),
            **(overrides or {}),
        }
        self.socket_dir = self.workdir / "run"
        self.log_path = self.workdir / "postgres.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._log = None

    # -- process control -------------------------------------------------------------

    def _as_server_user(self, argv: list[str]) -> list[str]:
        if self.run_as is None:
            return argv
        # setpriv (util-linux) switches uid, gid and drops supplementary groups, nothing else.
        entry = pwd.getpwnam(self.run_as)
        return ["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--clear-groups", *argv]

    def _chown(self, path: Path) -> None:
        if self.run_as is not None:
            entry = pwd.getpwnam(self.run_as)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def init(self) -> None:
        """``initdb`` a new cluster: superuser ``postgres`` with the generated password."""
        self._chown(self.workdir)
        # initdb takes an existing empty directory; it must be the server user's.
        self.data_dir.mkdir(mode=0o700, exist_ok=True)
        self._chown(self.data_dir)
        self.socket_dir.mkdir()
        self._chown(self.socket_dir)
        pwfile = self.workdir / "pwfile"
        pwfile.write_text(self.password + "\n")
        pwfile.chmod(0o600)
        self._chown(pwfile)
        argv = self._as_server_user([
            str(self.bin_dir / "initdb"), "-D", str(self.data_dir), "-U", self.user,
            f"--pwfile={pwfile}", "--auth-local=scram-sha-256", "--auth-host=scram-sha-256",
            "--encoding=UTF8", "--locale=C.UTF-8", "--no-instructions",
        ])
        result = subprocess.run(argv, capture_output=True, text=True, env=self._env())
        pwfile.unlink()
        if result.returncode != 0:
            raise LocalPostgresError(f"initdb failed ({result.returncode}): {result.stderr.strip() or result.stdout.strip()}")

    def _env(self) -> dict[str, str]:
        return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8"}

    def start(self, *, timeout_s: float = 60) -> None:
        """Start ``postgres`` on the data directory and wait until it accepts logins."""
        self.spawn()
        local.wait_for(
            f"postgres on {self.host}:{self.port}", self._ready, timeout_s=timeout_s, interval_s=0.2,
            error=LocalPostgresError,
        )

    def spawn(self) -> subprocess.Popen[bytes]:
        """Start ``postgres`` on the data directory; return at once (the postmaster's process)."""
        settings = {
            **self.settings,
            "listen_addresses": self.host,
            "port": str(self.port),
            "unix_socket_directories": str(self.socket_dir),
        }
        argv = [str(self.bin_dir / "postgres"), "-D", str(self.data_dir), *server_args(settings)]
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            self.groups.wrap("postgres", Limits.of(self.props.sizing), self._as_server_user(argv)), stdout=self._log, stderr=subprocess.STDOUT, env=self._env(),
            start_new_session=True,
        )
        return self.process

    def _ready(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise LocalPostgresError(f"postgres exited with {self.process.returncode}: {self.log_tail()}")
        return self.psql("SELECT 1", check=False).returncode == 0

    def kill(self) -> None:
        """SIGKILL the postmaster and every backend (its process group): a power cut."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)
        # Backends die with the postmaster's group; wait until the port is free again.
        self.process = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def stop(self) -> None:
        """Fast shutdown (SIGINT), then SIGKILL if it does not exit within 30 s."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        self.kill()

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def __enter__(self) -> "LocalPostgres":
        try:
            self.init()
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.stop()
        finally:
            self.groups.remove_all()
            shutil.rmtree(self.workdir, ignore_errors=True)

    # -- as the StatefulSet's pod ---------------------------------------------------------

    def _local_command(self, argv: list[str], rendered_port: int) -> list[str]:
        """A rendered command with its port (``-p <rendered>``) made this server's."""
        if f"-p {rendered_port}" not in " ".join(argv):
            raise LocalPostgresError(f"the rendered command does not name port {rendered_port}: {argv}")
        return [a.replace(f"-p {rendered_port} ", f"-p {self.port} ") if " " in a
                else (str(self.port) if a == str(rendered_port) else a) for a in argv]

    def _tools_env(self) -> dict[str, str]:
        """The container's environment for its hooks and probes: the image's PATH holds the
        server's tools, ``PGDATA`` and ``POSTGRES_PASSWORD`` as the chart sets them."""
        return {**self._env(), "PATH": f"{self.bin_dir}:{self._env()['PATH']}", "PGDATA": str(self.data_dir),
                "POSTGRES_PASSWORD": self.password}

    def pod(self, statefulset: dict[str, Any], *, name: str = "postgres-0") -> "Pod":
        """This server as the rendered StatefulSet's pod (container ``postgres``), not yet run: the
        rendered readiness probe (pg_isready) and preStop hook run here with this server's port,
        data directory and password, as the server's user; the rendered grace period. Every new
        pod of the set is this same server on the same data directory (the same volume)."""
        from final_problem.local.rollout import ExecProbe, Pod

        spec = statefulset["spec"]["template"]["spec"]
        container = next(c for c in spec["containers"] if c["name"] == "postgres")
        rendered_port = next(p["containerPort"] for p in container["ports"] if p["name"] == "postgres")
        probe = container["readinessProbe"]
        ready_argv = self._local_command(probe["exec"]["command"], rendered_port)
        # The server's own folder holds the client tools where it is Debian's; a server from
        # the cache has none (pg_isready is Debian's, on the PATH).
        ready_argv[0] = str(self.bin_dir / ready_argv[0]) if (self.bin_dir / ready_argv[0]).exists() \
            else (shutil.which(ready_argv[0]) or ready_argv[0])
        hook = self._local_command(container["lifecycle"]["preStop"]["exec"]["command"], rendered_port)

        def pre_stop(pod: Pod, deadline: float) -> None:
            try:
                result = subprocess.run(self._as_server_user(hook), env=self._tools_env(), capture_output=True,
                                        text=True, timeout=max(0.1, deadline - time.monotonic()))
                pod.events.append((time.monotonic(), f"preStop exited {result.returncode}: "
                                                     f"{(result.stderr or result.stdout).strip()[-200:]}"))
            except subprocess.TimeoutExpired:
                pod.events.append((time.monotonic(), "preStop outlived the grace period"))

        def cleanup() -> None:
            self.process = None
            if self._log is not None:
                self._log.close()
                self._log = None

        return Pod(name=name, start=self.spawn, container=container,
                   grace_s=spec.get("terminationGracePeriodSeconds", 30), ports={rendered_port: self.port},
                   address=(self.host, self.port), cleanup=cleanup, pre_stop=pre_stop,
                   readiness=ExecProbe.rendered(probe, ready_argv, env={"PGCONNECT_TIMEOUT": "5"}))

    # -- SQL ---------------------------------------------------------------------------

    def psql(self, sql: str, *, database: str = "postgres", check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``sql`` with psql over TCP as the superuser; unaligned, tuples only."""
        psql = shutil.which("psql") or str(self.bin_dir / "psql")
        argv = [psql, "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                "-h", self.host, "-p", str(self.port), "-U", self.user, "-d", database, "-c", sql]
        result = subprocess.run(
            argv, capture_output=True, text=True, timeout=60,
            env={**self._env(), "PGPASSWORD": self.password, "PGCONNECT_TIMEOUT": "5"},
        )
        if check and result.returncode != 0:
            raise LocalPostgresError(f"psql failed: {result.stderr.strip()}")
        return result

    def create_role(self, role: str, password: str | None = None) -> str:
        """The chart's client role (:data:`~final_problem.renderers.postgres.ROLE_SQL`: a login
        role with CREATEDB and nothing more), created as the provisioning Job does; returns
        its password."""
        password = password or secrets.token_urlsafe(24)
        psql = shutil.which("psql") or str(self.bin_dir / "psql")
        subprocess.run(
            [psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", self.host, "-p", str(self.port), "-U", self.user,
             "-d", "postgres", "-v", f"role={role}", "-v", f"password={password}"],
            input=ROLE_SQL, capture_output=True, text=True, timeout=60, check=True,
            env={**self._env(), "PGPASSWORD": self.password},
        )
        return password

    def query(self, sql: str, *, database: str = "postgres") -> list[list[str]]:
        out = self.psql(sql, database=database).stdout
        return [line.split("|") for line in out.splitlines() if line]

    def databases(self) -> set[str]:
        return {row[0] for row in self.query("SELECT datname FROM pg_database WHERE NOT datistemplate")}

    def server_version(self) -> str:
        return self.query("SHOW server_version")[0][0]



class SessionLost(RuntimeError):
    """The psql session ended or did not answer: the write's outcome is unknown."""


class PsqlWriter:
    """A psql session committing one row per statement into ``table`` (``seq int PRIMARY KEY``,
    autocommit: each statement is a commit); a row psql prints back is an acknowledged commit.

    Through a restart it behaves as an application's pool does: a lost session raises
    :class:`SessionLost` and the next :meth:`insert` opens a new one. A retried insert of a row
    that did commit answers the same (``ON CONFLICT ... DO UPDATE ... RETURNING``)."""

    def __init__(self, *, host: str, port: int, user: str, password: str, table: str, bin_dir: Path,
                 timeout_s: float = 5) -> None:
        self.argv = [shutil.which("psql") or str(bin_dir / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                     "-h", host, "-p", str(port), "-U", user, "-d", "postgres"]
        self.env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PGPASSWORD": password,
                    "PGCONNECT_TIMEOUT": str(max(1, int(timeout_s)))}
        self.table, self.timeout_s = table, timeout_s
        self.process: subprocess.Popen[str] | None = None
        #: Sessions opened, the first included.
        self.sessions = 0

    def insert(self, seq: int) -> None:
        import select

        if self.process is None:
            # Errors on the same pipe: a statement the server cut off answers at once (psql
            # reports it and may reconnect by itself), not after the timeout.
            self.process = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                            stderr=subprocess.STDOUT, text=True, bufsize=1, env=self.env)
            self.sessions += 1
        assert self.process.stdin is not None and self.process.stdout is not None
        try:
            self.process.stdin.write(f"INSERT INTO {self.table} VALUES ({seq}) ON CONFLICT (seq) DO UPDATE "
                                     "SET seq = EXCLUDED.seq RETURNING seq;\n")
            self.process.stdin.flush()
            readable, _, _ = select.select([self.process.stdout], [], [], self.timeout_s)
            answer = self.process.stdout.readline() if readable else None
        except OSError as e:  # the session's pipe broke: psql exited
            answer = f"({e})"
        if answer is None or answer.strip() != str(seq):
            self.close()
            raise SessionLost(f"psql answered {answer!r} to the insert of {seq}")

    def close(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=30)
            self.process = None
