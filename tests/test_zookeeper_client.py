"""The kazoo client's configuration and failure reporting (no server needed)."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from final_problem.clients.zookeeper import ZooKeeperClient, ZooKeeperUnavailable, resolve_hosts
from final_problem import config
from final_problem.config import Settings
from final_problem.local.zookeeper import free_ports


def test_explicit_hosts_win_over_environment_and_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZOOKEEPER_HOSTS", "env:2181")
    assert resolve_hosts(hosts="a:1", settings=Settings()) == "a:1"
    assert resolve_hosts(hosts=None, settings=Settings()) == "env:2181"


def test_settings_give_bare_metal_hosts_or_the_client_service(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ZOOKEEPER_HOSTS", raising=False)
    pis = config.from_mapping({"zookeeper": {"hosts": ["pi1", "pi2", "pi3"], "client_port": 2281}})
    assert resolve_hosts(hosts=None, settings=pis) == "pi1:2281,pi2:2281,pi3:2281"
    assert resolve_hosts(hosts=None, settings=Settings()) == "zookeeper.zookeeper.svc.cluster.local:2181"


def test_no_reachable_member_is_reported_not_hung() -> None:
    (port,) = free_ports(1)
    with pytest.raises(ZooKeeperUnavailable, match=f"no ZooKeeper member of 127.0.0.1:{port} answered within 1"):
        ZooKeeperClient(hosts=f"127.0.0.1:{port}", timeout=1).start()


def test_command_line_exits_3_without_an_ensemble() -> None:
    (port,) = free_ports(1)
    result = subprocess.run(
        [sys.executable, "-m", "final_problem.clients.zookeeper", "--hosts", f"127.0.0.1:{port}", "--timeout", "1", "get", "/x"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 3 and "no ZooKeeper member" in result.stderr


def test_free_ports_are_distinct_and_bindable() -> None:
    ports = free_ports(9)
    assert len(set(ports)) == 9
    for port in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))
