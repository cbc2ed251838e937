"""PostgreSQL's backups on one host, run from what the postgres chart renders.

:func:`rendered` renders the postgres chart with a backup target; :class:`LocalPostgresBackups`
writes its ConfigMap of scripts to a directory and runs the server's archive settings, the
``backup`` sidecar (the agent, with the host's ``python3``) and the ``base-backup`` sidecar's
script as the pod runs them, as the server's user, with only paths (the scripts' mount, the
volume) and the target's address remapped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from final_problem.charts import postgres as chart
from final_problem.local import free_ports, kill_group, write_config_map
from final_problem.local.limits import Groups, Limits
from final_problem.local.postgres import LocalPostgres
from final_problem.local.s3 import LocalS3
from final_problem.profiles import PI, Profile
from final_problem.renderers import postgres_backup

#: The endpoint the chart is rendered with; the tests' server replaces it.
RENDERED_ENDPOINT = "http://s3.backups.svc.cluster.local:7070"


def rendered(profile: Profile = PI, **settings: Any) -> dict[str, Any]:
    """The postgres chart's StatefulSet and backup ConfigMap (``"statefulset"``, ``"configmap"``)
    with backups to :data:`RENDERED_ENDPOINT` and ``settings`` (postgres section)."""
    from final_problem import config, manifests

    values = {"backup_endpoint": RENDERED_ENDPOINT, **settings}
    charts = manifests.render(config.from_mapping({"components": ["base", "postgres"], "postgres": values}),
                              profile.name)
    objects = manifests.chart_objects(charts["postgres"])
    return {
        "statefulset": next(o for o in objects if o["kind"] == "StatefulSet"),
        "configmap": next(o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "postgres-backup-scripts"),
    }


def _container(statefulset: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in statefulset["spec"]["template"]["spec"]["containers"] if c["name"] == name)


def container_limits(container: dict[str, Any]) -> Limits:
    """A rendered container's ``resources`` (``500m``/``1``, ``128Mi``/``1Gi``) as :class:`Limits`."""
    def cpu_m(value: str) -> int:
        return int(value[:-1]) if value.endswith("m") else int(float(value) * 1000)

    def mib(value: str) -> int:
        return int(value[:-2]) * 1024 if value.endswith("Gi") else int(value.removesuffix("Mi"))

    limits, requests = container["resources"]["limits"], container["resources"]["requests"]
    return Limits(cpu_m=cpu_m(limits["cpu"]), memory_mib=mib(limits["memory"]),
                  request_cpu_m=cpu_m(requests["cpu"]), request_memory_mib=mib(requests["memory"]))


class LocalPostgresBackups:
    """The rendered backup configuration of one :class:`LocalPostgres` writing to one :class:`LocalS3`.

    ``volume`` stands for the server's volume (the chart's ``MOUNT``): ``PGDATA`` and the spool
    are inside it. Use :meth:`server_overrides` when creating the server, then
    :meth:`start_agent` and :meth:`base_backup`.
    """

    def __init__(self, *, s3: LocalS3, volume: Path, workdir: Path, profile: Profile = PI, prefix: str = "") -> None:
        self.objects = rendered(profile, backup_prefix=prefix)
        self.s3, self.volume, self.prefix, self.profile = s3, volume, prefix, profile
        self.scripts = workdir / "scripts"
        self.scripts.mkdir(parents=True, exist_ok=True)
        write_config_map(self.objects["configmap"], self.scripts)
        self.agent: subprocess.Popen[bytes] | None = None
        self.agent_log = workdir / "backup-agent.log"
        #: Where the agent serves its freshness metrics on this host.
        self.metrics_port = free_ports(1)[0]
        #: The sidecars run under their containers' rendered limits (cgroups).
        self.groups = Groups()

    @property
    def pgdata(self) -> Path:
        return self._path(chart.PGDATA)

    def _path(self, rendered_path: str) -> Path:
        return Path(self._map(rendered_path))

    def _map(self, text: str) -> str:
        return (text.replace(postgres_backup.SCRIPTS_DIR + "/", str(self.scripts) + "/")
                .replace(chart.MOUNT, str(self.volume)))

    def server_overrides(self) -> dict[str, str]:
        """The rendered server container's backup settings (``-c`` arguments), paths remapped."""
        args = _container(self.objects["statefulset"], "postgres")["args"]
        settings = dict(a.split("=", 1) for a in args[2::2])
        wanted = postgres_backup.archive_settings(spool="", archive_timeout_s=1, upload_wait_s=1).keys()
        return {k: self._map(v) for k, v in settings.items() if k in wanted}

    def _env(self, container: dict[str, Any], server: LocalPostgres) -> dict[str, str]:
        """The container's environment: its values, its Secrets' values from the local servers."""
        secrets = {"POSTGRES_PASSWORD": server.password, "AWS_ACCESS_KEY_ID": self.s3.access_key,
                   "AWS_SECRET_ACCESS_KEY": self.s3.secret_key, "POD_NAME": "postgres-0"}
        env = {"PATH": f"{server.bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}", "LC_ALL": "C.UTF-8"}
        for item in container.get("env", []):
            env[item["name"]] = item["value"] if "value" in item else secrets[item["name"]]
        if "BACKUP_S3_ENDPOINT" in env:  # the target: the local server and its bucket
            env["BACKUP_S3_ENDPOINT"], env["BACKUP_S3_BUCKET"] = self.s3.endpoint, self.s3.bucket
        if "PGPORT" in env:
            env["PGPORT"] = str(server.port)
        return env

    def _command(self, container: dict[str, Any]) -> list[str]:
        argv = [self._map(a) for a in container["command"]]
        if argv[0] == "python3":
            argv[0] = shutil.which("python3", path="/usr/bin:/bin") or "python3"
        if "--metrics-port" in argv:
            # The pod's port is the host's here: a free one, read back from metrics_port.
            at = argv.index("--metrics-port") + 1
            argv[at] = str(self.metrics_port)
        return argv

    def start_agent(self, server: LocalPostgres) -> None:
        """The ``backup`` sidecar as rendered, as the server's user."""
        container = _container(self.objects["statefulset"], "backup")
        log = open(self.agent_log, "ab")
        argv = self.groups.wrap("backup", container_limits(container), server._as_server_user(self._command(container)))
        self.agent = subprocess.Popen(argv, stdout=log,
                                      stderr=subprocess.STDOUT, env=self._env(container, server), start_new_session=True)
        log.close()

    def stop_agent(self) -> None:
        if self.agent is not None:
            kill_group(self.agent)
            self.agent = None

    def close(self) -> None:
        """Stop the agent and remove the sidecars' groups."""
        self.stop_agent()
        self.groups.remove_all()

    def base_backup(self, server: LocalPostgres) -> subprocess.CompletedProcess[str]:
        """One run of the ``base-backup`` sidecar's script (its ``once`` mode), as the server's user."""
        container = _container(self.objects["statefulset"], "base-backup")
        argv = self.groups.wrap("base-backup", container_limits(container),
                                server._as_server_user([*self._command(container), "once"]))
        return subprocess.run(argv, capture_output=True,
                              text=True, env=self._env(container, server), timeout=120)

    def restore_init(self, server: LocalPostgres, to: str) -> subprocess.CompletedProcess[str]:
        """The ``restore`` init container the chart renders with ``postgres.restore_to=to``: its
        exact command line (the scripts' mount and the volume remapped), as the server's user,
        under its limits."""
        objects = rendered(self.profile, backup_prefix=self.prefix, restore_to=to)
        statefulset = objects["statefulset"]
        write_config_map(objects["configmap"], self.scripts, keep_existing=True)  # the program only a restoring chart ships
        (container,) = [c for c in statefulset["spec"]["template"]["spec"]["initContainers"] if c["name"] == "restore"]
        argv = self.groups.wrap("restore", container_limits(container), server._as_server_user(self._command(container)))
        return subprocess.run(argv, capture_output=True, text=True, env=self._env(container, server), timeout=120)

    def log_tail(self) -> str:
        try:
            return self.agent_log.read_text(errors="replace")[-2000:]
        except OSError:
            return ""
