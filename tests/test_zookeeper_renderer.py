"""The zoo.cfg renderer shared by the chart and bare-metal Pis, and its command line."""

from __future__ import annotations

from pathlib import Path

import pytest

from final_problem.errors import ConfigError
from final_problem.renderers import zookeeper as r


def ensemble(**overrides: object) -> r.EnsembleConfig:
    return r.EnsembleConfig(members=r.members_from_hosts(hosts=["pi1", "pi2", "pi3"]), **overrides)  # type: ignore[arg-type]


def parse(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))


def test_zoo_cfg_lists_members_in_id_order_with_their_ports() -> None:
    members = (
        r.Member(myid=2, host="10.0.0.2", client_port=2182, quorum_port=2889, election_port=3889),
        r.Member(myid=1, host="10.0.0.1"),
    )
    text = r.zoo_cfg(r.EnsembleConfig(members=members), client_port=2181)
    servers = [line for line in text.splitlines() if line.startswith("server.")]
    assert servers == ["server.1=10.0.0.1:2888:3888", "server.2=10.0.0.2:2889:3889"]


def test_defaults_purge_restrict_words_and_leave_metrics_off() -> None:
    cfg = parse(r.zoo_cfg(ensemble(), client_port=2181))
    assert cfg["autopurge.purgeInterval"] == "24" and cfg["autopurge.snapRetainCount"] == "3"
    assert cfg["4lw.commands.whitelist"] == "ruok,srvr,mntr"
    assert cfg["quorumListenOnAllIPs"] == "true" and cfg["admin.enableServer"] == "false"
    assert "metricsProvider.className" not in cfg and "clientPortAddress" not in cfg


def test_metrics_and_loopback_options() -> None:
    cfg = parse(r.zoo_cfg(ensemble(metrics_port=7000, client_port_address="127.0.0.1", listen_on_all_ips=False), client_port=2181))
    assert cfg["metricsProvider.className"] == r.PROMETHEUS_PROVIDER and cfg["metricsProvider.httpPort"] == "7000"
    assert cfg["clientPortAddress"] == "127.0.0.1" and cfg["quorumListenOnAllIPs"] == "false"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"four_letter_words": ("*",)}, r"four_letter_words = \('\*',\): the allowlist must name known commands"),
        ({"four_letter_words": ("ruok", "nope")}, r"four_letter_words"),
        ({"four_letter_words": ()}, r"four_letter_words"),
        ({"autopurge_interval_hours": 0}, r"autopurge_interval_hours = 0: 0 turns autopurge off"),
        ({"autopurge_snap_retain_count": 2}, r"autopurge_snap_retain_count = 2"),
        ({"metrics_port": 2888}, r"metrics_port = 2888: the same port as zookeeper\.quorum_port"),
        ({"tick_time_ms": 90_000}, r"tick_time_ms = 90000"),
        ({"init_limit": 2, "sync_limit": 3}, r"sync_limit = 3: exceeds init_limit \(2\)"),
    ],
)
def test_bad_ensemble_settings(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ensemble(**overrides)


def test_members_sharing_a_host_must_not_share_ports() -> None:
    same = (r.Member(myid=1, host="127.0.0.1"), r.Member(myid=2, host="127.0.0.1"))
    with pytest.raises(ConfigError, match="two listeners on one host share a port"):
        r.EnsembleConfig(members=same)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"hosts": ["a", "b"], "replicas": 3}, r"zookeeper\.servers = 'a,b': 2 hosts for 3 replicas"),
        ({"hosts": ["a", "a", "b"]}, r"a host is listed twice"),
        ({"hosts": ["a", "b", "c"], "client_port": 3888}, r"zookeeper\.election_port = 3888: the same port as zookeeper\.client_port"),
        ({"hosts": ["a", "b c", "d"]}, r"zookeeper\.servers = 'b c': not a host name"),
    ],
)
def test_bad_host_lists(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        r.members_from_hosts(**kwargs)  # type: ignore[arg-type]


def test_member_ids_and_heap_are_bounded() -> None:
    with pytest.raises(ConfigError, match=r"zookeeper\.myid = 0"):
        r.Member(myid=0, host="pi1")
    with pytest.raises(ConfigError, match=r"zookeeper\.heap_mib = 32"):
        r.jvm_flags(heap_mib=32)
    with pytest.raises(ConfigError, match=r"zookeeper\.myid = 4: not one of the members"):
        ensemble().member(4)


def test_systemd_unit_runs_the_shared_java_command() -> None:
    unit = r.systemd_unit(config=ensemble(), conf_dir="/etc/zookeeper/conf", heap_mib=256)
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    assert exec_start == (
        "ExecStart=/usr/bin/java -Xms256m -Xmx256m -XX:+ExitOnOutOfMemoryError "
        "-cp /etc/zookeeper/conf:/usr/share/java/zookeeper.jar "
        "org.apache.zookeeper.server.quorum.QuorumPeerMain /etc/zookeeper/conf/zoo.cfg"
    )
    assert "User=zookeeper" in unit and "ProtectSystem=strict" in unit
    # systemctl start must fail when the service cannot be executed at all.
    assert "Type=exec" in unit.splitlines()
    assert "ReadWritePaths=/var/lib/zookeeper/data /var/lib/zookeeper/datalog" in unit


def test_command_line_writes_the_three_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = r.main(["--servers", "pi1,pi2,pi3", "--myid", "2", "--out", str(tmp_path), "--metrics-port", "7000"])
    assert code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["myid", "zoo.cfg", "zookeeper.service"]
    assert (tmp_path / "myid").read_text() == "2\n"
    cfg = parse((tmp_path / "zoo.cfg").read_text())
    assert cfg["server.2"] == "pi2:2888:3888" and cfg["metricsProvider.httpPort"] == "7000"
    assert "/etc/zookeeper/conf/zoo.cfg" in (tmp_path / "zookeeper.service").read_text()
    assert str(tmp_path / "zoo.cfg") in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--servers", "pi1,pi2,pi3", "--myid", "4"], "zookeeper.myid = 4"),
        (["--servers", "pi1,pi2,pi3", "--myid", "1", "--replicas", "5"], "3 hosts for 5 replicas"),
    ],
)
def test_command_line_rejects_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    assert r.main([*argv, "--out", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "zoo.cfg").exists()
