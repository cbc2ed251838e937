"""The backup agent against a real S3-compatible server (versitygw, as the Pis run it): the key
pair in the format the cluster generates it, credentials fetched the EKS Pod Identity way, the
session token carried signed, and the freshness metrics of a running agent.

One server for the module (it starts in well under a second); every test uses its own prefix.
"""

from __future__ import annotations

import http.server
import json
import os
import secrets
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

from final_problem.constructs.secret_generator import value as generated_value
from final_problem.local import free_ports, wait_for
from final_problem.local.s3 import LocalS3, LocalS3Error
from final_problem.renderers import backup_agent
from final_problem.renderers.backup_agent import S3, BackupError, StaticCredentials

pytestmark = pytest.mark.integration

AGENT = Path(backup_agent.__file__)


@pytest.fixture(scope="module")
def server() -> Iterator[LocalS3]:
    s3 = LocalS3()
    # The root key pair as the cluster's secret generator writes it (32 random bytes each).
    s3.access_key = generated_value({"name": "backup-target-root", "bytes": 32})
    s3.secret_key = generated_value({"name": "backup-target-root", "bytes": 32})
    try:
        s3.start()
    except LocalS3Error as e:
        s3.close()
        pytest.fail(str(e))
    yield s3
    s3.close()


@pytest.fixture
def pod_identity(server: LocalS3) -> Iterator[dict[str, Any]]:
    """A credentials endpoint handing out the server's key pair, as the Pod Identity agent
    hands out a role's (here without a session token: versitygw issues those only through its
    own STS)."""
    seen: list[str | None] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            seen.append(self.headers.get("Authorization"))
            body = json.dumps({"AccessKeyId": server.access_key, "SecretAccessKey": server.secret_key,
                               "Token": "", "Expiration": "2099-01-01T00:00:00Z"}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield {"uri": f"http://127.0.0.1:{httpd.server_address[1]}/v1/credentials", "seen": seen}
    httpd.shutdown()
    httpd.server_close()


def test_the_generated_key_pair_and_pod_identity_credentials_reach_the_server(
        server: LocalS3, pod_identity: dict[str, Any], tmp_path: Path) -> None:
    token = tmp_path / "eks-pod-identity-token"
    token.write_text("projected-token")
    s3 = S3.from_env({"BACKUP_S3_ENDPOINT": server.endpoint, "BACKUP_S3_BUCKET": server.bucket,
                      "BACKUP_S3_REGION": server.region,
                      "AWS_CONTAINER_CREDENTIALS_FULL_URI": pod_identity["uri"],
                      "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE": str(token)})
    s3.put("pod-identity/object", body=b"written with fetched credentials")
    assert s3.get("pod-identity/object")[1] == b"written with fetched credentials"  # type: ignore[index]
    assert pod_identity["seen"] == ["projected-token"]  # fetched once, the token file as Authorization


def test_the_session_token_travels_signed_to_the_server(server: LocalS3) -> None:
    # versitygw checks X-Amz-Security-Token against the sessions its STS issued: an unknown one
    # is refused where the same keys without it are accepted, so the header reaches it signed.
    with_token = S3(endpoint=server.endpoint, bucket=server.bucket, region=server.region,
                    credentials=StaticCredentials(server.access_key, server.secret_key, "not-a-session-of-this-server"))
    with pytest.raises(BackupError, match="answered 400 InvalidToken"):
        with_token.put("session/object", body=b"x")
    server.client().put("session/object", body=b"x")


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line and not line.startswith("#")}


def test_a_running_agent_reports_the_newest_base_backup_and_counts_its_uploads(server: LocalS3, tmp_path: Path) -> None:
    prefix = "metrics-" + secrets.token_hex(4)
    ended = "2026-12-07T01:00:00.000000Z"
    listing = {"format": backup_agent.LISTING_FORMAT, "id": "20261207T005900Z", "ended": ended,
               "start_wal": "000000010000000000000002",
               "archive": {"key": f"{prefix}/postgres/base/20261207T005900Z/base.tar.gz", "sha256": "0" * 64,
                           "size": 1}}
    server.client().put(f"{prefix}/postgres/base/20261207T005900Z/backup.json", body=json.dumps(listing).encode())
    spool = tmp_path / "spool"
    (spool / "wal").mkdir(parents=True)
    (spool / "wal" / "000000010000000000000003").write_bytes(os.urandom(4096))
    port = free_ports(1)[0]
    agent = subprocess.Popen([sys.executable, str(AGENT), "agent", "--spool", str(spool), "--metrics-port", str(port)],
                             env={"PATH": os.environ["PATH"], **server.env(prefix)}, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        wait_for("the segment uploaded", lambda: (spool / "wal" / "000000010000000000000003.done").exists(),
                 timeout_s=30, interval_s=0.1)
        got = scrape(port)
    finally:
        agent.terminate()
        output = agent.communicate(timeout=10)[0]
    assert got['final_problem_backup_last_success_timestamp_seconds{component="postgres",kind="base"}'] == \
        backup_agent.parse_time(ended).timestamp(), output
    assert got['final_problem_backup_uploads_total{component="postgres",kind="wal",result="success"}'] == 1
    assert got['final_problem_backup_uploads_total{component="postgres",kind="wal",result="failure"}'] == 0
    assert 0 <= got['final_problem_backup_age_seconds{component="postgres",kind="wal"}'] < 30
    assert server.client().head(f"{prefix}/postgres/wal/000000010000000000000003.gz") is not None


def test_the_rendered_s3_server_starts_under_its_limits_and_answers_its_probe(tmp_path: Path) -> None:
    """The Pi's StatefulSet as rendered (arguments, key pair variables, health path), run under
    its container's limits."""
    from final_problem import config, manifests
    from final_problem.constructs import backup_target
    from final_problem.local import kill_group, limits
    from final_problem.local.s3 import binary

    objs = manifests.chart_objects(manifests.render(config.from_mapping({"components": ["base"]}), "pi")["base"])
    server = next(o for o in objs if o["kind"] == "StatefulSet" and o["metadata"]["name"] == backup_target.NAME)
    (c,) = server["spec"]["template"]["spec"]["containers"]
    port = free_ports(1)[0]
    args = [a.replace(f":{backup_target.PORT}", f"127.0.0.1:{port}").replace("/data", str(tmp_path)) for a in c["args"]]
    (tmp_path / "buckets").mkdir()  # the init container's mkdir
    keys = {e["name"]: generated_value({"bytes": 32}) for e in c["env"]}
    group = limits.Cgroup("s3-rendered", limits.Limits.of(backup_target.S3_SIZING))
    process = subprocess.Popen(group.wrap([str(binary()), *args]), env={"PATH": "/usr/bin:/bin", **keys},
                               stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        probe = c["readinessProbe"]["httpGet"]["path"]

        def healthy() -> bool:
            try:
                return urllib.request.urlopen(f"http://127.0.0.1:{port}{probe}", timeout=2).status == 200
            except OSError:
                return False

        wait_for("the rendered S3 server's health path", healthy, timeout_s=30, interval_s=0.1)
        s3 = S3(endpoint=f"http://127.0.0.1:{port}", bucket="final-problem-backups", region="us-east-1",
                access_key=keys["ROOT_ACCESS_KEY_ID"], secret_key=keys["ROOT_SECRET_ACCESS_KEY"])
        s3.create_bucket()
        s3.put("probe/object", body=b"x")
        assert group.oom_kills() == 0
    finally:
        kill_group(process)
        process.wait(timeout=10)
        group.remove()
