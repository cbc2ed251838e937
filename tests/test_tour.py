"""The `final-problem` command: discovery through AWS (stubbed API) and a kubeconfig (a
stand-in kubectl that relays to a real local server), stack outputs, one-line errors."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import boto3
import pytest
from botocore.stub import Stubber

from final_problem import cli
from final_problem.tour import discovery
from final_problem.tour.discovery import DiscoveryError, ServiceRef
from tests.conftest import ROOT

REFS = {
    "zookeeper": ServiceRef("zookeeper", "zookeeper", "zookeeper", 2181),
    "redis": ServiceRef("redis", "redis", "redis-sentinel", 26379, cluster_network=True),
}


def _session() -> boto3.session.Session:
    return boto3.session.Session(aws_access_key_id="AKIAEXAMPLE", aws_secret_access_key="secret", region_name="eu-west-1")


def _outputs(**extra: str) -> dict:
    outputs = {"ClusterName": "final-problem", "Region": "eu-west-1", "PlatformEndpoints": json.dumps(
        {"zookeeper": {"namespace": "zookeeper", "service": "zookeeper", "port": 2181}}), **extra}
    return {"Stacks": [{
        "StackName": "final-problem-cluster", "CreationTime": "2026-11-29T00:00:00Z", "StackStatus": "CREATE_COMPLETE",
        "Outputs": [{"OutputKey": k, "OutputValue": v} for k, v in outputs.items()],
    }]}


def _cluster(status: str = "ACTIVE") -> dict:
    return {"cluster": {"name": "final-problem", "status": status, "endpoint": "https://ABC.gr7.eu-west-1.eks.amazonaws.com",
                        "certificateAuthority": {"data": base64.b64encode(b"CA").decode()}}}


def test_aws_discovery_reads_stack_outputs_and_the_eks_api() -> None:
    session = _session()
    cfn, eks = session.client("cloudformation"), session.client("eks")
    with Stubber(cfn) as cfn_stub, Stubber(eks) as eks_stub:
        cfn_stub.add_response("describe_stacks", _outputs(), {"StackName": "final-problem-cluster"})
        eks_stub.add_response("describe_cluster", _cluster(), {"name": "final-problem"})
        info = discovery.cluster_from_aws("final-problem-cluster", cloudformation=cfn, eks=eks)
    assert (info.name, info.region) == ("final-problem", "eu-west-1")
    assert info.endpoint.startswith("https://") and info.certificate_authority == base64.b64encode(b"CA").decode()
    assert info.services["zookeeper"]["port"] == 2181
    config = discovery.kubeconfig_for(info, "k8s-aws-v1.token")
    assert config["clusters"][0]["cluster"]["server"] == info.endpoint
    assert config["users"][0]["user"]["token"] == "k8s-aws-v1.token"


@pytest.mark.parametrize(("response", "message"), [
    ("missing", r"stack final-problem-cluster not found .*make deploy"),
    ("no-outputs", r"has no output ClusterName, Region; deploy this version"),
    ("creating", r"EKS cluster final-problem is CREATING, not ACTIVE"),
])
def test_aws_discovery_errors_say_what_to_do(response: str, message: str) -> None:
    session = _session()
    cfn, eks = session.client("cloudformation"), session.client("eks")
    with Stubber(cfn) as cfn_stub, Stubber(eks) as eks_stub:
        if response == "missing":
            cfn_stub.add_client_error("describe_stacks", "ValidationError", "Stack with id final-problem-cluster does not exist")
        elif response == "no-outputs":
            stacks = _outputs()
            stacks["Stacks"][0]["Outputs"] = []
            cfn_stub.add_response("describe_stacks", stacks)
        else:
            cfn_stub.add_response("describe_stacks", _outputs())
            eks_stub.add_response("describe_cluster", _cluster("CREATING"))
        with pytest.raises(DiscoveryError, match=message):
            discovery.cluster_from_aws("final-problem-cluster", cloudformation=cfn, eks=eks)


def test_eks_token_is_a_presigned_sts_call_bound_to_the_cluster() -> None:
    token = discovery.eks_token("final-problem", session=_session())
    assert token.startswith("k8s-aws-v1.")
    encoded = token[len("k8s-aws-v1."):]
    url = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
    parsed = urlparse(url)
    query = parse_qs(parsed.query)
    assert parsed.netloc == "sts.eu-west-1.amazonaws.com"
    assert query["Action"] == ["GetCallerIdentity"]
    assert "x-k8s-aws-id" in query["X-Amz-SignedHeaders"][0].split(";")
    assert query["X-Amz-Expires"] == ["60"]


FAKE_KUBECTL = textwrap.dedent('''\
    #!{python}
    """A stand-in kubectl: answers what discovery asks and relays port-forwards to FAKE_TARGET."""
    import os, socket, sys, threading
    args = sys.argv[1:]
    kubeconfig = args[args.index("--kubeconfig") + 1]
    if "server" not in open(kubeconfig).read():
        print("error: invalid kubeconfig", file=sys.stderr); sys.exit(1)
    if "version" in args:
        print('{{"serverVersion": {{"gitVersion": "v1.36.0"}}}}'); sys.exit(0)
    if args[-3:] == ["namespaces", "-o", "name"]:
        print("\\n".join("namespace/" + n for n in os.environ["FAKE_NAMESPACES"].split(","))); sys.exit(0)
    if "port-forward" in args:
        host, port = os.environ["FAKE_TARGET"].rsplit(":", 1)
        server = socket.socket(); server.bind(("127.0.0.1", 0)); server.listen()
        print(f"Forwarding from 127.0.0.1:{{server.getsockname()[1]}} -> {{args[-1][1:]}}", flush=True)
        def pipe(a, b):
            try:
                while data := a.recv(65536):
                    b.sendall(data)
            except OSError:
                pass
            finally:
                b.close()
        while True:
            client, _ = server.accept()
            upstream = socket.create_connection((host, int(port)))
            threading.Thread(target=pipe, args=(client, upstream), daemon=True).start()
            threading.Thread(target=pipe, args=(upstream, client), daemon=True).start()
    print("unexpected: " + " ".join(args), file=sys.stderr); sys.exit(1)
''')


@pytest.fixture
def fake_cluster(tmp_path: Path) -> dict[str, str]:
    """A kubeconfig and a kubectl that relays port-forwards to a real TCP echo server."""
    import socket
    import threading

    bindir = tmp_path / "bin"
    bindir.mkdir()
    kubectl = bindir / "kubectl"
    kubectl.write_text(FAKE_KUBECTL.format(python=sys.executable))
    kubectl.chmod(0o755)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({"clusters": [{"cluster": {"server": "https://127.0.0.1:6443"}}]}))
    echo = socket.socket()
    echo.bind(("127.0.0.1", 0))
    echo.listen()

    def serve() -> None:
        while True:
            try:
                conn, _ = echo.accept()
            except OSError:
                return
            with conn:
                conn.sendall(conn.recv(1024).upper())

    threading.Thread(target=serve, daemon=True).start()
    env = {"PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}", "FAKE_NAMESPACES": "platform,zookeeper,redis",
           "FAKE_TARGET": f"127.0.0.1:{echo.getsockname()[1]}", "KUBECONFIG": str(kubeconfig)}
    yield env
    echo.close()


def test_kubeconfig_discovery_port_forwards_reachable_services(fake_cluster: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    for key, value in fake_cluster.items():
        monkeypatch.setenv(key, value)
    endpoints = discovery.from_kubeconfig(fake_cluster["KUBECONFIG"], REFS)
    try:
        host, port = endpoints.addresses["zookeeper"].rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=5) as conn:
            conn.sendall(b"ruok")
            assert conn.recv(16) == b"RUOK"  # relayed to the server behind the forward
        assert "redis" not in endpoints.addresses
        with pytest.raises(DiscoveryError, match=r"redis: its clients need the cluster network"):
            endpoints.get("redis")
    finally:
        endpoints.close()
    assert all(p.poll() is not None for p in endpoints.processes) or not endpoints.processes


def test_command_prints_endpoints_from_the_kubeconfig(fake_cluster: dict[str, str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "final_problem.cli", "--json", "endpoints"],
        env={**os.environ, **fake_cluster}, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert found["source"].startswith("kubeconfig ")
    assert found["addresses"]["zookeeper"].startswith("127.0.0.1:")


@pytest.mark.parametrize(("env", "args", "message"), [
    ({"KUBECONFIG": "/nonexistent", "HOME": "/nonexistent"}, ["endpoints"], r"^error: no platform found: give --kubeconfig"),
    ({}, ["--kubeconfig", "{bad}", "endpoints"], r"^error: kubectl version .* failed: error: invalid kubeconfig"),
    ({"FAKE_NAMESPACES": "platform"}, ["demo", "consensus"],
     r"^error: demo consensus: no component it needs is there \(zookeeper is not deployed or not reachable"),
])
def test_errors_are_one_line_and_non_zero(fake_cluster: dict[str, str], tmp_path: Path, env: dict, args: list[str], message: str) -> None:
    bad = tmp_path / "bad-kubeconfig"
    bad.write_text("{}")
    # The package under test, also from the scratch folder the command runs in.
    environment = {**os.environ, **fake_cluster, **env, "PYTHONPATH": str(ROOT)}
    environment.pop("ZOOKEEPER_HOSTS", None)
    environment.pop("REDIS_SENTINELS", None)
    result = subprocess.run(
        [sys.executable, "-m", "final_problem.cli", *[a.format(bad=bad) for a in args]],
        env=environment, capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    import re
    assert re.match(message, lines[0]), lines[0]


def test_cluster_stack_publishes_what_discovery_reads(synth) -> None:  # type: ignore[no-untyped-def]
    outputs = synth.templates["final-problem-cluster"]["Outputs"]
    assert {"ClusterName", "Region", "PlatformEndpoints"} <= set(outputs)
    assert outputs["Region"]["Value"] == {"Ref": "AWS::Region"}
    services = json.loads(outputs["PlatformEndpoints"]["Value"])
    assert services["zookeeper"] == {"namespace": "zookeeper", "service": "zookeeper", "port": 2181}
    assert services["redis"] == {"namespace": "redis", "service": "redis-sentinel", "port": 26379}


def test_client_commands_live_under_final_problem() -> None:
    result = subprocess.run([sys.executable, "-m", "final_problem.cli", "zookeeper", "--help"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "status" in result.stdout


@pytest.fixture
def fake_client(monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    """A client module standing in for the ZooKeeper one: records what it was given."""
    import types

    seen: dict[str, object] = {}
    module = types.ModuleType("final_problem_fake_client")

    def main(argv: list[str]) -> int:
        seen["argv"] = argv
        seen["hosts"] = os.environ.get("ZOOKEEPER_HOSTS")
        if argv == ["needs-a-library"]:
            raise ModuleNotFoundError("No module named 'kazoo'", name="kazoo")
        return 0

    module.main = main  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(cli.CLIENTS, "zookeeper", module.__name__)
    monkeypatch.delenv("ZOOKEEPER_HOSTS", raising=False)
    return seen


def test_location_flags_before_a_client_command_reach_the_client(fake_client: dict[str, object]) -> None:
    assert cli.main(["--zookeeper", "10.0.0.1:2181", "zookeeper", "status", "--path", "/x"]) == 0
    assert fake_client == {"argv": ["status", "--path", "/x"], "hosts": "10.0.0.1:2181"}


def test_a_missing_client_library_is_one_line(fake_client: dict[str, object], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["zookeeper", "needs-a-library"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: the Python package 'kazoo' is missing: pip install 'final-problem[clients]'"]


def test_another_missing_module_is_not_hidden_as_a_client_library() -> None:
    assert not cli.missing_client_library(ModuleNotFoundError("x", name="final_problem.nothing"))
    assert cli.missing_client_library(ModuleNotFoundError("x", name="kafka.errors"))
