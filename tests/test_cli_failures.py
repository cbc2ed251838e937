"""`final-problem` off the happy path: each client and demo command against loopback ports
nothing listens on (or a stand-in that accepts and never answers) ends in one line on stderr,
with a non-zero status, within its timeout; no traceback, no object repr; Ctrl-C ends quietly.

Every address here is 127.0.0.1. The commands run as a user runs them, in a process of their
own, bounded by the subprocess timeout."""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Iterator

import boto3
import pytest
from botocore.stub import Stubber

from final_problem import cli
from final_problem.local import free_ports
from final_problem.tour import discovery
from final_problem.tour.discovery import DiscoveryError
from tests.conftest import ROOT

#: The --timeout the commands get, seconds.
TIMEOUT = "2"
#: The bound on each command: the timeout, plus Python's start-up and the clients' imports
#: (about a second; 20 s leaves room for a loaded machine). A command that hangs, or waits
#: for a library's own default (kafka-python's 30 s bootstrap, gRPC's for ever), fails here.
BOUND_S = 20

#: Variables that would point a command elsewhere than the test says.
LOCATION_VARIABLES = ("ZOOKEEPER_HOSTS", "REDIS_SENTINELS", "REDIS_PASSWORD", "REDIS_SENTINEL_PASSWORD",
                      "KAFKA_BOOTSTRAP_SERVERS", "KAFKA_PASSWORD", "CADENCE_FRONTEND", "KUBECONFIG",
                      "FINAL_PROBLEM_TRACEBACK", "FINAL_PROBLEM_TIMEOUT", "KUBERNETES_SERVICE_HOST")


def refused() -> str:
    """A loopback address nothing listens on: a connection to it is refused."""
    (port,) = free_ports(1)
    return f"127.0.0.1:{port}"


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """No platform anywhere: no addresses, no kubeconfig, no AWS credentials or config."""
    environment = {k: v for k, v in os.environ.items() if k not in LOCATION_VARIABLES and not k.startswith("AWS_")}
    environment.update({
        "HOME": str(tmp_path), "KUBECONFIG": str(tmp_path / "no-kubeconfig"), "PYTHONPATH": str(ROOT),
        "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
    })
    return environment


def final_problem(env: dict[str, str], *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "final_problem.cli", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=BOUND_S)


def one_line(result: subprocess.CompletedProcess[str], status: int, pattern: str) -> str:
    """The command's only line of output, checked: exit status, the message, no traceback or repr."""
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert len(lines) == 1, result.stdout + result.stderr
    assert result.returncode == status, (result.returncode, lines[0])
    assert re.search(pattern, lines[0]), lines[0]
    assert "Traceback" not in lines[0] and not re.search(r"<[\w.]+[ (]", lines[0]), lines[0]
    return lines[0]


# --- one test per row of the failures a new user met ------------------------------------------

@pytest.mark.parametrize("command", ["start", "worker"])
def test_cadence_against_a_refused_port_says_so_within_the_timeout(env: dict[str, str], command: str) -> None:
    address = refused()
    result = final_problem(env, "cadence", "--target", address, "--timeout", TIMEOUT, command)
    one_line(result, 3, rf"^error: no Cadence frontend answered at {address} within 2 s: give --target")


def test_cadence_location_flag_before_the_client_reaches_it(env: dict[str, str]) -> None:
    address = refused()
    result = final_problem(env, "--cadence", address, "--timeout", TIMEOUT, "cadence", "start")
    one_line(result, 3, rf"no Cadence frontend answered at {address} within 2 s")


def test_redis_get_with_unreachable_sentinels_names_them(env: dict[str, str]) -> None:
    sentinels = f"{refused()},{refused()}"
    env.update(REDIS_SENTINELS=sentinels, REDIS_PASSWORD="p", REDIS_SENTINEL_PASSWORD="s")
    result = final_problem(env, "--timeout", TIMEOUT, "redis", "get", "k")
    first, second = sentinels.split(",")
    one_line(result, 3, rf"^error: no Redis Sentinel named a primary \({first} Connection refused; {second} "
                        r"Connection refused\): give --redis-sentinels")


def test_redis_example_without_a_cluster_or_password_says_what_to_set(env: dict[str, str], tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": f"https://{refused()}"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
    }))
    env["REDIS_SENTINELS"] = refused()
    result = final_problem(env, "--kubeconfig", str(kubeconfig), "--timeout", TIMEOUT, "redis", "example")
    one_line(result, 2, r"^error: no REDIS_PASSWORD: set REDIS_PASSWORD or give --kubeconfig of the cluster "
                        r"\(Secret redis/redis-auth unreadable: ")


def test_demo_with_every_address_unreachable_is_one_line(env: dict[str, str]) -> None:
    sentinels = refused()
    result = final_problem(env, "--zookeeper", refused(), "--redis-sentinels", sentinels, "--kafka", refused(),
                           "--cadence", refused(), "--timeout", TIMEOUT, "demo", "availability")
    one_line(result, 3, rf"^error: demo availability: no component it needs is there "
                        rf"\(redis: nothing answers \({sentinels} Connection refused\)\)$")


def test_aws_with_a_profile_that_does_not_exist(env: dict[str, str]) -> None:
    env["AWS_PROFILE"] = "no-such-profile"
    result = final_problem(env, "--aws", "--region", "eu-west-1", "--timeout", TIMEOUT, "endpoints")
    one_line(result, 2, r"^error: The config profile \(no-such-profile\) could not be found: set AWS_PROFILE")


def test_aws_without_credentials(env: dict[str, str]) -> None:
    env["AWS_ENDPOINT_URL"] = f"http://{refused()}"  # should it ask anything, it asks a refused port
    result = final_problem(env, "--aws", "--region", "eu-west-1", "--timeout", TIMEOUT, "endpoints")
    one_line(result, 2, r"^error: no AWS credentials: set AWS_PROFILE")


def test_aws_unreachable_with_bogus_credentials(env: dict[str, str]) -> None:
    address = refused()
    env.update(AWS_ACCESS_KEY_ID="AKIAEXAMPLEBOGUS", AWS_SECRET_ACCESS_KEY="bogus", AWS_ENDPOINT_URL=f"http://{address}")
    result = final_problem(env, "--aws", "--region", "eu-west-1", "--timeout", TIMEOUT, "endpoints")
    one_line(result, 3, rf"^error: AWS unreachable \(Could not connect to the endpoint URL: \"http://{address}/\"\) "
                        r"within 2 s")


def test_aws_refusing_the_credentials_is_not_blamed_on_the_stack() -> None:
    """An answer from AWS refusing the credentials (here a stubbed one: nothing is sent)
    says so, instead of calling the stack missing."""
    session = boto3.session.Session(aws_access_key_id="AKIAEXAMPLE", aws_secret_access_key="bogus", region_name="eu-west-1")
    cfn, eks = session.client("cloudformation"), session.client("eks")

    class Session:
        def client(self, name: str, **_: object) -> object:
            return {"cloudformation": cfn, "eks": eks}[name]

    with Stubber(cfn) as stub:
        stub.add_client_error("describe_stacks", "InvalidClientTokenId", "The security token included in the request is invalid.")
        with pytest.raises(DiscoveryError, match=r"^AWS refused reading stack final-problem-cluster: InvalidClientTokenId: "
                                                 r"The security token .* is invalid\.; check the credentials"):
            discovery.from_aws("final-problem", "eu-west-1", {}, session=Session())


def test_zookeeper_status_not_serving_exits_non_zero(env: dict[str, str]) -> None:
    address = refused()
    result = final_problem(env, "zookeeper", "--hosts", address, "--timeout", TIMEOUT, "status")
    one_line(result, 3, rf"^{address}: not serving \(Connection refused\)$")


def test_zookeeper_status_exits_zero_when_every_member_serves(env: dict[str, str], leader: str) -> None:
    result = final_problem(env, "zookeeper", "--hosts", leader, "status")
    assert (result.returncode, result.stdout.strip()) == (0, f"{leader}: leader"), result.stderr


def test_kafka_with_no_broker_answering(env: dict[str, str]) -> None:
    address = refused()
    env["KAFKA_PASSWORD"] = "p"
    result = final_problem(env, "--kafka", address, "kafka", "describe", "--timeout", TIMEOUT)
    one_line(result, 3, rf"^error: no Kafka broker of {address} answered within 2 s: give --kafka")


@pytest.fixture
def leader() -> Iterator[str]:
    """A loopback stand-in for a ZooKeeper member: answers any four-letter word as a leader."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.recv(16)
                conn.sendall(b"Zookeeper version: 3.8.4\nMode: leader\n")

    threading.Thread(target=serve, daemon=True).start()
    yield f"127.0.0.1:{server.getsockname()[1]}"
    server.close()


def test_partial_addresses_run_the_demo_for_the_components_given(env: dict[str, str], leader: str) -> None:
    result = final_problem(env, "--zookeeper", leader, "demo", "consensus")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == [
        "consensus (zookeeper, kafka): one leader, agreed by a majority; a new one after it fails",
        f"  ✓ ask every member for its mode: {leader}=leader",
        "  - kafka skipped: not given: give --kafka H:P or set KAFKA_BOOTSTRAP_SERVERS",
        "  -> as the concept predicts",
    ]


def test_partial_addresses_all_unreachable_is_one_line(env: dict[str, str]) -> None:
    address = refused()
    result = final_problem(env, "--zookeeper", address, "--timeout", TIMEOUT, "demo", "consensus")
    one_line(result, 3, rf"^error: demo consensus: no component it needs is there \(kafka: not given: give --kafka "
                        rf"H:P or set KAFKA_BOOTSTRAP_SERVERS; zookeeper: nothing answers \({address} Connection refused\)\)$")


@pytest.mark.parametrize("args", [
    ["--json", "--zookeeper", "{leader}", "demo", "consensus"],
    ["demo", "consensus", "--json", "--zookeeper", "{leader}"],
    ["--zookeeper", "{leader}", "demo", "--json", "consensus"],
])
def test_output_flags_anywhere_on_the_command_line(env: dict[str, str], leader: str, args: list[str]) -> None:
    result = final_problem(env, *[a.format(leader=leader) for a in args])
    assert result.returncode == 0, result.stderr
    (report,) = json.loads(result.stdout)
    assert report["concept"] == "consensus" and report["ok"]
    assert [s["skipped"] for s in report["steps"]] == [False, True]


def test_endpoints_json_after_the_subcommand_lists_what_was_skipped(env: dict[str, str]) -> None:
    result = final_problem(env, "endpoints", "--zookeeper", "127.0.0.1:2181", "--json")
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert found["addresses"] == {"zookeeper": "127.0.0.1:2181"}
    assert found["skipped"]["kafka"] == "not given: give --kafka H:P or set KAFKA_BOOTSTRAP_SERVERS"


def test_ctrl_c_ends_quietly_after_clean_up(env: dict[str, str]) -> None:
    """SIGINT while the command waits on a server that accepted the connection and never
    answers: exit status 130 and nothing on stderr."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(BOUND_S)
    address = f"127.0.0.1:{server.getsockname()[1]}"
    proc = subprocess.Popen([sys.executable, "-m", "final_problem.cli", "cadence", "--target", address,
                             "--timeout", "120", "worker"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        conn, _ = server.accept()  # the command runs, and waits on this connection
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=BOUND_S)
        conn.close()
    finally:
        proc.kill()
        server.close()
    assert (proc.returncode, out, err) == (130, "", "")


def test_ctrl_c_stopping_a_child_leaves_no_exit_traceback(tmp_path: Path) -> None:
    """A terminal's Ctrl-C also stops the command's children (jsii's Node.js process, say);
    an exit handler writing to the dead child's pipe prints nothing after the interrupt."""
    script = tmp_path / "command.py"
    script.write_text(
        "import atexit, os, sys\n"
        "from final_problem.clients import run_command\n"
        "read, write = os.pipe()\n"
        "os.close(read)  # the child at the other end is gone\n"
        "pipe = os.fdopen(write, 'w')\n"
        "atexit.register(lambda: (pipe.write('exit' * 100_000), pipe.flush()))\n"
        "def main():\n"
        "    raise KeyboardInterrupt\n"
        "sys.exit(run_command(main))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("FINAL_PROBLEM_TRACEBACK", None)
    result = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=BOUND_S)
    assert (result.returncode, result.stderr) == (130, "")


# --- help and usage ---------------------------------------------------------------------------

def _parsers(monkeypatch: pytest.MonkeyPatch) -> dict[str, argparse.ArgumentParser]:
    """The parser of ``final-problem`` and of each client command, as their ``main`` builds it."""
    import importlib

    class Built(Exception):
        pass

    seen: list[argparse.ArgumentParser] = []

    def capture(self: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        seen.append(self)
        raise Built

    parsers = {"final-problem": cli._parser()}
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    for name, module in cli.CLIENTS.items():
        with pytest.raises(Built):
            importlib.import_module(module).main([])
        parsers[f"final-problem {name}"] = seen[-1]
    return parsers


def _arguments(parser: argparse.ArgumentParser, prog: str) -> Iterator[tuple[str, argparse.Action]]:
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _arguments(sub, f"{prog} {name}")
            continue
        yield prog, action


def test_every_argument_has_a_help_text(monkeypatch: pytest.MonkeyPatch) -> None:
    missing = [f"{prog}: {'/'.join(a.option_strings) or a.dest}"
               for name, parser in _parsers(monkeypatch).items() for prog, a in _arguments(parser, name)
               if not (a.help or "").strip()]
    assert not missing


def test_usage_lines_name_final_problem(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, parser in _parsers(monkeypatch).items():
        assert parser.format_usage().startswith(f"usage: {name} "), parser.format_usage()


# --- the one-line rule itself -----------------------------------------------------------------

def test_any_error_is_one_line_without_an_object_repr(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from final_problem.clients import run_command

    monkeypatch.delenv("FINAL_PROBLEM_TRACEBACK", raising=False)

    def fails() -> int:
        raise ConnectionError("No master found for 'platform' : <redis.client.Redis(<redis.connection.ConnectionPool("
                              "<redis.connection.Connection(db=0)>)>)>\nsecond line")

    assert run_command(fails) == 1
    assert capsys.readouterr().err.splitlines() == [
        "error: ConnectionError: No master found for 'platform' (FINAL_PROBLEM_TRACEBACK=1 shows where)"]


def test_a_client_error_keeps_its_status(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from final_problem.clients import ClientError, run_command

    monkeypatch.delenv("FINAL_PROBLEM_TRACEBACK", raising=False)

    class Missing(ClientError):
        status = 2

    def fails() -> int:
        raise Missing("no REDIS_PASSWORD: set REDIS_PASSWORD")

    assert run_command(fails) == 2
    assert capsys.readouterr().err == "error: no REDIS_PASSWORD: set REDIS_PASSWORD\n"


def test_final_problem_traceback_shows_the_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    from final_problem.clients import run_command

    monkeypatch.setenv("FINAL_PROBLEM_TRACEBACK", "1")

    def fails() -> int:
        raise ValueError("shown with its traceback")

    with pytest.raises(ValueError, match="shown with its traceback"):
        run_command(fails)


def test_the_timeout_flag_refuses_what_is_not_a_positive_number(env: dict[str, str]) -> None:
    result = final_problem(env, "--timeout", "0", "endpoints")
    assert result.returncode == 2 and "give a positive number of seconds" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("module", "args", "variables"), [
    ("redis", ["get", "k"], {"REDIS_PASSWORD": "p", "REDIS_SENTINEL_PASSWORD": "s", "REDIS_SENTINELS": "{address}"}),
    ("kafka", ["describe"], {"KAFKA_PASSWORD": "p", "KAFKA_BOOTSTRAP_SERVERS": "{address}"}),
    ("cadence", ["start", "--target", "{address}"], {}),
    ("zookeeper", ["--hosts", "{address}", "get", "/x"], {}),
])
def test_a_client_module_run_on_its_own_ends_in_one_line_too(env: dict[str, str], module: str, args: list[str],
                                                              variables: dict[str, str]) -> None:
    """``python -m final_problem.clients.X`` (how the Pi image and the tour's worker run them)."""
    address = refused()
    env.update({k: v.format(address=address) for k, v in variables.items()})
    result = subprocess.run([sys.executable, "-m", f"final_problem.clients.{module}", "--timeout", TIMEOUT,
                             *[a.format(address=address) for a in args]],
                            env=env, capture_output=True, text=True, timeout=BOUND_S)
    one_line(result, 3, rf"^error: .*{address}")
