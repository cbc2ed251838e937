"""The backup agent's credentials and freshness metrics, over real sockets: a local HTTP server
answers as the EKS Pod Identity agent does (AWS SDKs and Tools reference guide, "Container
credential provider"), and a scrape reads the agent's metrics endpoint."""

from __future__ import annotations

import datetime as dt
import http.server
import json
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

from final_problem.local import free_ports
from final_problem.renderers import backup_agent
from final_problem.renderers.backup_agent import (S3, BackupError, ContainerCredentials, Metrics, StaticCredentials,
                                                  credentials_from_env)

T0 = dt.datetime(2026, 12, 7, 6, 0, tzinfo=dt.timezone.utc)


class PodIdentityAgent:
    """A credentials endpoint on loopback: each GET is recorded with its Authorization header and
    answered with the next key pair of ``issued`` (or with ``status``)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str | None]] = []
        self.status = 200
        self.expiration = T0 + dt.timedelta(hours=1)
        agent = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                agent.requests.append((self.path, self.headers.get("Authorization")))
                n = len(agent.requests)
                body = json.dumps({"AccessKeyId": f"ASIA{n:04d}", "SecretAccessKey": f"secret-{n}",
                                   "Token": f"session-token-{n}", "AccountId": "111122223333",
                                   "Expiration": agent.expiration.strftime("%Y-%m-%dT%H:%M:%SZ")}).encode()
                if agent.status != 200:
                    body = b'{"message":"no association"}'
                self.send_response(agent.status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.uri = f"http://127.0.0.1:{self.server.server_address[1]}/v1/credentials"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def pod_identity() -> Iterator[PodIdentityAgent]:
    agent = PodIdentityAgent()
    yield agent
    agent.close()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> dict[str, dt.datetime]:
    now = {"t": T0}
    monkeypatch.setattr(backup_agent, "utcnow", lambda: now["t"])
    return now


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "eks-pod-identity-token"
    path.write_text("projected-token-1\n")
    return path


def test_credentials_come_from_the_endpoint_with_the_token_file_as_authorization(
        pod_identity: PodIdentityAgent, token_file: Path, clock: dict[str, dt.datetime]) -> None:
    credentials = credentials_from_env({"AWS_CONTAINER_CREDENTIALS_FULL_URI": pod_identity.uri,
                                        "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE": str(token_file)})
    assert isinstance(credentials, ContainerCredentials)
    assert credentials.current() == ("ASIA0001", "secret-1", "session-token-1")
    assert pod_identity.requests == [("/v1/credentials", "projected-token-1")]


def test_requests_are_signed_with_the_temporary_keys_and_their_session_token(
        pod_identity: PodIdentityAgent, token_file: Path, clock: dict[str, dt.datetime]) -> None:
    s3 = S3(endpoint="https://s3.eu-west-1.amazonaws.com", bucket="b", region="eu-west-1",
            credentials=ContainerCredentials(pod_identity.uri, str(token_file)))
    headers: dict[str, str] = {}
    s3._sign("GET", "/b/k", {}, headers, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
    assert headers["x-amz-security-token"] == "session-token-1"
    assert headers["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=ASIA0001/20261207/eu-west-1/s3/aws4_request, ")
    # The token is signed: a request whose token were swapped on the way would not verify.
    assert "SignedHeaders=host;x-amz-content-sha256;x-amz-date;x-amz-security-token," in headers["Authorization"]
    unsigned: dict[str, str] = {}
    S3(endpoint="https://s3.eu-west-1.amazonaws.com", bucket="b", region="eu-west-1",
       credentials=StaticCredentials("ASIA0001", "secret-1"))._sign(
        "GET", "/b/k", {}, unsigned, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
    assert unsigned["Authorization"].split("Signature=")[1] != headers["Authorization"].split("Signature=")[1]


def test_credentials_are_fetched_again_fifteen_minutes_before_they_expire_with_the_rotated_token(
        pod_identity: PodIdentityAgent, token_file: Path, clock: dict[str, dt.datetime]) -> None:
    credentials = ContainerCredentials(pod_identity.uri, str(token_file))
    credentials.current()
    clock["t"] = T0 + dt.timedelta(minutes=44)  # 16 minutes left: still used
    assert credentials.current()[0] == "ASIA0001" and credentials.fetches == 1
    token_file.write_text("projected-token-2\n")  # the kubelet rotated it
    pod_identity.expiration = T0 + dt.timedelta(hours=2)
    clock["t"] = T0 + dt.timedelta(minutes=46)  # 14 minutes left: refreshed
    assert credentials.current() == ("ASIA0002", "secret-2", "session-token-2")
    assert pod_identity.requests[-1] == ("/v1/credentials", "projected-token-2")
    assert credentials.expiration == T0 + dt.timedelta(hours=2)


def test_a_failed_refresh_keeps_valid_credentials_and_refuses_expired_ones_in_one_line(
        pod_identity: PodIdentityAgent, token_file: Path, clock: dict[str, dt.datetime]) -> None:
    credentials = ContainerCredentials(pod_identity.uri, str(token_file))
    credentials.current()
    pod_identity.status = 403
    clock["t"] = T0 + dt.timedelta(minutes=50)
    assert credentials.current()[0] == "ASIA0001"  # 10 minutes left: kept, tried again next time
    clock["t"] = T0 + dt.timedelta(minutes=59, seconds=30)
    with pytest.raises(BackupError, match=r"^credentials: .* answered 403 .*; check the service account's Pod "
                                          r"Identity association$"):
        credentials.current()


def test_an_unreachable_endpoint_or_missing_token_file_is_one_line(tmp_path: Path, clock: dict[str, dt.datetime]) -> None:
    port = free_ports(1)[0]
    token = tmp_path / "token"
    token.write_text("t")
    with pytest.raises(BackupError, match=r"^credentials: GET .* failed .*; check the EKS Pod Identity agent"):
        ContainerCredentials(f"http://127.0.0.1:{port}/v1/credentials", str(token), timeout_s=2).current()
    with pytest.raises(BackupError, match=r"^credentials: cannot read the token file .*/absent"):
        ContainerCredentials(f"http://127.0.0.1:{port}/v1/credentials", str(tmp_path / "absent")).current()
    with pytest.raises(BackupError, match="AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE; EKS Pod Identity sets both"):
        credentials_from_env({"AWS_CONTAINER_CREDENTIALS_FULL_URI": "http://169.254.170.23/v1/credentials"})


def test_a_key_pair_in_the_environment_comes_first() -> None:
    credentials = credentials_from_env({"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "s",
                                        "AWS_CONTAINER_CREDENTIALS_FULL_URI": "http://169.254.170.23/v1/credentials"})
    assert isinstance(credentials, StaticCredentials) and credentials.current() == ("a", "s", "")
    assert credentials_from_env({}) is None
    with pytest.raises(BackupError, match="backup target: .*AWS_CONTAINER_CREDENTIALS_FULL_URI.* not set"):
        S3.from_env({"BACKUP_S3_ENDPOINT": "http://s3:7070", "BACKUP_S3_BUCKET": "b"})


# -- freshness metrics -------------------------------------------------------------------------

def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = response.read().decode()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line and not line.startswith("#")}


def test_the_metrics_endpoint_serves_the_age_of_the_last_backup_and_the_counts(
        clock: dict[str, dt.datetime]) -> None:
    metrics = Metrics("postgres")
    port = free_ports(1)[0]
    server: Any = metrics.serve(port, host="127.0.0.1")
    try:
        # Seeded from the bucket's newest listing at start: no upload counted.
        metrics.succeeded("base", at=T0 - dt.timedelta(hours=5))
        metrics.succeeded("wal")
        metrics.failed("wal")
        clock["t"] = T0 + dt.timedelta(seconds=30)
        got = scrape(port)
        assert got['final_problem_backup_age_seconds{component="postgres",kind="base"}'] == 5 * 3600 + 30
        assert got['final_problem_backup_age_seconds{component="postgres",kind="wal"}'] == 30
        assert got['final_problem_backup_last_success_timestamp_seconds{component="postgres",kind="wal"}'] == \
            T0.timestamp()
        assert got['final_problem_backup_uploads_total{component="postgres",kind="base",result="success"}'] == 0
        assert got['final_problem_backup_uploads_total{component="postgres",kind="wal",result="success"}'] == 1
        assert got['final_problem_backup_uploads_total{component="postgres",kind="wal",result="failure"}'] == 1
        with pytest.raises(urllib.error.HTTPError, match="404"):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5)
    finally:
        server.shutdown()
        server.server_close()


def test_no_backup_yet_no_age(clock: dict[str, dt.datetime]) -> None:
    text = Metrics("postgres").render()
    assert "final_problem_backup_age_seconds{" not in text
    assert 'final_problem_backup_uploads_total{component="postgres",kind="base",result="failure"} 0' in text


def test_the_agent_counts_a_failed_upload(tmp_path: Path, clock: dict[str, dt.datetime]) -> None:
    spool = tmp_path / "spool"
    (spool / "wal").mkdir(parents=True)
    (spool / "wal" / "000000010000000000000001").write_bytes(b"x" * 64)
    port = free_ports(1)[0]  # nothing listens: the upload fails
    s3 = S3(endpoint=f"http://127.0.0.1:{port}", bucket="b", region="us-east-1", access_key="a", secret_key="s",
            timeout_s=2)
    metrics = Metrics("postgres")
    with pytest.raises(BackupError, match="check the endpoint is reachable"):
        backup_agent.agent_pass(backup_agent.Postgres(s3, ""), str(spool), 7, metrics)
    assert 'kind="wal",result="failure"} 1' in metrics.render()


# -- the in-cluster server's key pair, read through the API -----------------------------------

@pytest.fixture
def api_server(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """An HTTPS server on loopback answering the Secret read as the API server does, with a
    self-signed certificate (openssl) the client trusts as the projected ca.crt."""
    import base64
    import ssl
    import subprocess

    cert, key = tmp_path / "ca.crt", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    seen: list[tuple[str, str | None]] = []
    state = {"status": 200}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            seen.append((self.path, self.headers.get("Authorization")))
            body = json.dumps({"kind": "Secret", "data": {
                "access-key-id": base64.b64encode(b"root-access").decode(),
                "secret-access-key": base64.b64encode(b"root-secret").decode()}}).encode()
            self.send_response(state["status"])
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    (tmp_path / "token").write_text("sa-token\n")
    yield {"api": f"https://127.0.0.1:{httpd.server_address[1]}", "dir": tmp_path, "seen": seen, "state": state}
    httpd.shutdown()
    httpd.server_close()


def test_the_in_cluster_key_pair_is_read_from_its_secret_with_the_projected_token(api_server: dict[str, Any]) -> None:
    from final_problem.renderers.backup_agent import KubernetesSecretCredentials

    d = api_server["dir"]
    credentials = KubernetesSecretCredentials("backups/backup-target-root", str(d / "token"), str(d / "ca.crt"),
                                              api=api_server["api"])
    assert credentials.current() == ("root-access", "root-secret", "")
    assert credentials.current() == ("root-access", "root-secret", "")  # read once
    assert api_server["seen"] == [("/api/v1/namespaces/backups/secrets/backup-target-root", "Bearer sa-token")]


def test_a_refused_secret_read_is_one_line(api_server: dict[str, Any]) -> None:
    from final_problem.renderers.backup_agent import KubernetesSecretCredentials

    d = api_server["dir"]
    api_server["state"]["status"] = 403
    with pytest.raises(BackupError, match=r"^credentials: reading Secret backups/backup-target-root answered 403; "):
        KubernetesSecretCredentials("backups/backup-target-root", str(d / "token"), str(d / "ca.crt"),
                                    api=api_server["api"]).current()
    with pytest.raises(BackupError, match="not <namespace>/<name>"):
        KubernetesSecretCredentials("backup-target-root", "t", "c")


def test_the_agent_waits_for_a_missing_target_instead_of_exiting(tmp_path: Path) -> None:
    """Exiting would restart the container and take the server's pod out of its Service."""
    import subprocess
    import sys
    import time

    port = free_ports(1)[0]
    agent = subprocess.Popen([sys.executable, backup_agent.__file__, "agent", "--spool", str(tmp_path),
                              "--metrics-port", str(port)], env={"PATH": "/usr/bin:/bin"},
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                got = scrape(port)
                break
            except OSError:
                assert agent.poll() is None and time.monotonic() < deadline
                time.sleep(0.05)
        time.sleep(1)
        assert agent.poll() is None
        assert got['final_problem_backup_uploads_total{component="postgres",kind="base",result="success"}'] == 0
    finally:
        agent.terminate()
        err = agent.communicate(timeout=10)[1]
    assert err.splitlines()[0].startswith("backup target: BACKUP_S3_ENDPOINT, BACKUP_S3_BUCKET")
