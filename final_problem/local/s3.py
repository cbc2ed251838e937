"""The S3-compatible server of the backup tests: versitygw on one host.

``make s3-server`` (a dependency of ``make test`` and ``make bench``) builds ``versitygw`` from
its Go module at :data:`final_problem.versions.VERSITYGW_VERSION`, the version of the image the
Pi profile pins, into :func:`cache_dir`. :class:`LocalS3` runs it with the POSIX backend (each
bucket a directory) on a loopback port with one root key pair, as the pod runs it.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

from final_problem import local, versions
from final_problem.local import LOOPBACK, free_ports
from final_problem.renderers.backup_agent import S3


class LocalS3Error(RuntimeError):
    """The server is not built, or did not start."""


def cache_dir(version: str = versions.VERSITYGW_VERSION) -> Path:
    """``${XDG_CACHE_HOME:-~/.cache}/final-problem/versitygw-<version>``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "final-problem" / f"versitygw-{version}"


def binary() -> Path:
    path = cache_dir() / "bin" / "versitygw"
    if not path.exists():
        raise LocalS3Error(f"{path} is missing: run `make s3-server`")
    return path


class LocalS3:
    """One versitygw (POSIX backend) on loopback; a context manager that kills it and removes
    its files. :meth:`client` signs requests with its root key pair."""

    def __init__(self, *, bucket: str = "backups", region: str = "us-east-1") -> None:
        self.binary = binary()
        self.bucket, self.region = bucket, region
        self.access_key = "root-" + secrets.token_hex(6)
        self.secret_key = secrets.token_urlsafe(30)
        self.port = free_ports(1)[0]
        self.workdir = Path(tempfile.mkdtemp(prefix="final-problem-s3-"))
        self.root = self.workdir / "buckets"
        self.log_path = self.workdir / "versitygw.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def env(self, prefix: str = "") -> dict[str, str]:
        """The backup containers' environment for this server (the chart's variable names)."""
        return {"BACKUP_S3_ENDPOINT": self.endpoint, "BACKUP_S3_BUCKET": self.bucket, "BACKUP_S3_REGION": self.region,
                "BACKUP_S3_PREFIX": prefix, "AWS_ACCESS_KEY_ID": self.access_key,
                "AWS_SECRET_ACCESS_KEY": self.secret_key}

    def client(self) -> S3:
        return S3(endpoint=self.endpoint, bucket=self.bucket, region=self.region, access_key=self.access_key,
                  secret_key=self.secret_key)

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        # The keys through the environment, as the pod passes them from its Secret.
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "ROOT_ACCESS_KEY_ID": self.access_key,
               "ROOT_SECRET_ACCESS_KEY": self.secret_key}
        argv = [str(self.binary), "--port", f"{LOOPBACK}:{self.port}", "--region", self.region, "--quiet",
                "posix", str(self.root)]
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        log.close()
        local.wait_for(f"versitygw on {LOOPBACK}:{self.port}", self._ready, timeout_s=30, interval_s=0.1,
                       error=LocalS3Error)
        self.client().create_bucket()

    def _ready(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise LocalS3Error(f"versitygw exited with {self.process.returncode}: "
                               f"{self.log_path.read_text(errors='replace')[-500:]}")
        with socket.socket() as s:
            return s.connect_ex((LOOPBACK, self.port)) == 0

    def close(self) -> None:
        if self.process is not None:
            local.kill_group(self.process)
            self.process = None
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "LocalS3":
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
