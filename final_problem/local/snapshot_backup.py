"""The Redis and ZooKeeper ``backup`` sidecars on one host, run from what their charts render.

:func:`rendered_sidecar` renders a chart with a backup target and returns its ``backup``
container and the ConfigMap of programs; :class:`LocalSidecar` writes the programs to a
directory and runs the container's command as the pod runs it (its environment, its CPU and
memory limits), with only paths (the programs' mount, the volumes), the member's port and the
target's address remapped. ``--once`` takes one snapshot and exits: 0 when taken, 3 when the
member is not the one that takes them (a primary, a follower). :meth:`LocalSidecar.start`
runs the sidecar as its pod does, in its loop, its freshness metrics on a local port
(:func:`scrape` reads them).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any, Mapping

from final_problem.local import write_config_map
from final_problem.local.backup import RENDERED_ENDPOINT, container_limits
from final_problem.local.limits import Groups
from final_problem.local.s3 import LocalS3
from final_problem.profiles import PI, Profile
from final_problem.constructs.snapshot_backup import SCRIPTS_DIR

#: Exit status of ``--once`` on a member that does not take snapshots now.
NOT_THIS_MEMBER = 3


def rendered_sidecar(component: str, profile: Profile = PI, **settings: Any) -> dict[str, Any]:
    """``component``'s chart (redis, zookeeper) with backups to :data:`RENDERED_ENDPOINT`:
    its ``backup`` container (``"container"``) and ConfigMap of programs (``"configmap"``)."""
    from final_problem import config, manifests

    values = {"backup_endpoint": RENDERED_ENDPOINT, **settings}
    charts = manifests.render(config.from_mapping({"components": ["base", component], component: values}),
                              profile.name)
    objects = manifests.chart_objects(charts[component])
    statefulset = next(o for o in objects if o["kind"] == "StatefulSet" and o["metadata"]["name"] == component)
    return {
        "container": next(c for c in statefulset["spec"]["template"]["spec"]["containers"] if c["name"] == "backup"),
        "configmap": next(o for o in objects if o["kind"] == "ConfigMap"
                          and o["metadata"]["name"] == f"{component}-backup-scripts"),
    }


class LocalSidecar:
    """One component's rendered ``backup`` container, run on this host against ``s3``."""

    def __init__(self, component: str, *, s3: LocalS3, workdir: Path, profile: Profile = PI, prefix: str = "") -> None:
        self.component, self.s3, self.prefix = component, s3, prefix
        rendered = rendered_sidecar(component, profile, backup_prefix=prefix)
        self.container = rendered["container"]
        self.scripts = workdir / f"{component}-backup-scripts"
        self.scripts.mkdir(parents=True, exist_ok=True)
        write_config_map(rendered["configmap"], self.scripts)
        self.groups = Groups()
        self.running: list[subprocess.Popen[bytes]] = []

    def argv(self, paths: Mapping[str, Path], port: int) -> list[str]:
        """The container's command: rendered paths (whole arguments) and the port replaced."""
        argv = []
        for arg in self.container["command"]:
            if arg.startswith(SCRIPTS_DIR + "/"):
                arg = str(self.scripts) + arg[len(SCRIPTS_DIR):]
            elif arg in paths:
                arg = str(paths[arg])
            argv.append(arg)
        argv[argv.index("--port") + 1] = str(port)
        argv[0] = shutil.which("python3", path="/usr/bin:/bin") or "python3"
        return argv

    def env(self, pod: str, secrets: Mapping[str, str]) -> dict[str, str]:
        """The container's environment: its values, ``POD_NAME``, its Secrets' values from
        ``secrets`` and the local target."""
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8", "POD_NAME": pod}
        for item in self.container.get("env", []):
            if "value" in item:
                env[item["name"]] = item["value"]
            elif "secretKeyRef" in item.get("valueFrom", {}):
                env[item["name"]] = {"AWS_ACCESS_KEY_ID": self.s3.access_key,
                                     "AWS_SECRET_ACCESS_KEY": self.s3.secret_key, **secrets}[item["name"]]
        env["BACKUP_S3_ENDPOINT"], env["BACKUP_S3_BUCKET"] = self.s3.endpoint, self.s3.bucket
        return env

    def once(self, *, pod: str, paths: Mapping[str, Path], port: int,
             secrets: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """One snapshot by pod ``pod``'s sidecar (``--once``), under the container's limits."""
        argv = self.groups.wrap(f"{self.component}-backup", container_limits(self.container),
                                [*self.argv(paths, port), "--once"])
        return subprocess.run(argv, capture_output=True, text=True, env=self.env(pod, secrets or {}), timeout=300)

    def start(self, *, pod: str, paths: Mapping[str, Path], port: int, metrics_port: int,
              secrets: Mapping[str, str] | None = None, extra: tuple[str, ...] = ()) -> subprocess.Popen[bytes]:
        """Pod ``pod``'s sidecar in its loop (the rendered command, its metrics on
        ``metrics_port``, ``extra`` arguments after it), under the container's limits; its
        output goes to ``<pod>-backup.log`` beside the programs. Stopped by :meth:`close`."""
        argv = self.argv(paths, port)
        argv[argv.index("--metrics-port") + 1] = str(metrics_port)
        argv = self.groups.wrap(f"{self.component}-backup", container_limits(self.container), [*argv, *extra])
        with open(self.scripts.parent / f"{pod}-backup.log", "ab") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=self.env(pod, secrets or {}))
        self.running.append(proc)
        return proc

    def stop(self) -> None:
        """Stop every sidecar :meth:`start` started."""
        for proc in self.running:
            proc.terminate()
        for proc in self.running:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.running.clear()

    def close(self) -> None:
        self.stop()
        self.groups.remove_all()


def scrape(port: int) -> dict[str, float]:
    """The samples a sidecar's ``/metrics`` on ``port`` answers, by series (name and labels);
    empty while nothing listens there yet."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return {}
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line and not line.startswith("#")}


def wait_scraped(port: int, series: str, *, proc: "subprocess.Popen[bytes]", minimum: float = 0,
                 timeout_s: float = 60) -> dict[str, float]:
    """Scrape ``port`` until ``series`` is there at ``minimum`` or more (an age once a
    snapshot is listed, a count once one is uploaded); refuses a sidecar that exited, or a
    wait over ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = scrape(port)
        if got.get(series, -1.0) >= minimum:
            return got
        if proc.poll() is not None:
            raise AssertionError(f"the sidecar exited with status {proc.returncode} before {series}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {series} >= {minimum:g} on port {port} after {timeout_s:g} s: {got}")
        time.sleep(0.05)
