"""Render ZooKeeper's ``zoo.cfg``, ``myid`` and start command, for Kubernetes and bare metal.

One source for every place an ensemble runs: the chart (``final_problem/charts/zookeeper.py``)
puts :func:`zoo_cfg` into a ConfigMap and starts :func:`java_command`; a Raspberry Pi
without Kubernetes gets the same files plus a systemd unit from the command line::

    python -m final_problem.renderers.zookeeper --servers pi1,pi2,pi3 --myid 1 --out /etc/zookeeper/conf

which writes ``zoo.cfg``, ``myid`` and ``zookeeper.service`` into ``--out``.

Configuration keys and their meaning: ZooKeeper Administrator's Guide (3.9),
"Configuration Parameters" (https://zookeeper.apache.org/doc/r3.9.4/zookeeperAdmin.html).
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from final_problem.errors import ConfigError

#: Four-letter words ZooKeeper knows (Administrator's Guide, "The Four Letter Words").
KNOWN_FOUR_LETTER_WORDS = frozenset({
    "conf", "cons", "crst", "dump", "envi", "ruok", "srst", "srvr", "stat", "wchs", "wchc",
    "wchp", "mntr", "isro", "hash", "gtmk", "stmk", "dirs",
})
#: The start script of a member with dynamic membership (the chart's ConfigMap holds it;
#: the local ensembles of the tests run this file): see its header.
START_SCRIPT_PATH = Path(__file__).with_name("zookeeper_start.sh")
#: The script that adds or removes one member with ``reconfig`` (run in a member's container).
RECONFIG_SCRIPT_PATH = Path(__file__).with_name("zookeeper_reconfig.sh")
#: The Prometheus provider shipped in ZooKeeper's binary release (lib/zookeeper-prometheus-metrics-*.jar).
PROMETHEUS_PROVIDER = "org.apache.zookeeper.metrics.prometheus.PrometheusMetricsProvider"
_HOST = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$")
# Ports below 1024 need root or NET_BIND_SERVICE; ZooKeeper runs unprivileged everywhere.
MIN_PORT = 1024
MAX_PORT = 65535


@dataclass(frozen=True, kw_only=True)
class Member:
    """One ensemble member: its id (``server.N``), address and peer ports."""

    myid: int
    host: str
    #: Followers connect to the leader on this port. Default 2888 (Administrator's Guide).
    quorum_port: int = 2888
    #: Leader election connections. Default 3888 (Administrator's Guide).
    election_port: int = 3888
    #: Client connections. Default 2181 (Administrator's Guide).
    client_port: int = 2181

    def __post_init__(self) -> None:
        # myid is 1..255 (Administrator's Guide, "myid"); above that it collides with
        # the session id prefix in older releases.
        if not 1 <= self.myid <= 255:
            raise ConfigError("zookeeper.myid", self.myid, "a server id is a number from 1 to 255", "number members 1, 2, 3, ...")
        if not _HOST.match(self.host):
            raise ConfigError("zookeeper.servers", self.host, "not a host name or IPv4 address", "use e.g. 'pi1' or '192.168.1.21'")
        for name in ("quorum_port", "election_port", "client_port"):
            check_port(f"zookeeper.{name}", getattr(self, name))

    @property
    def ports(self) -> tuple[int, int, int]:
        return (self.client_port, self.quorum_port, self.election_port)

    def server_line(self) -> str:
        """``server.N=host:quorum:election`` (static configuration)."""
        return f"server.{self.myid}={self.host}:{self.quorum_port}:{self.election_port}"

    def dynamic_line(self, *, role: str = "participant", client_address: str | None = None) -> str:
        """``server.N=host:quorum:election:role;[address:]client`` as a dynamic configuration
        file and ``reconfig -add`` take it (Dynamic Reconfiguration guide, "Specifying the client
        port"); without ``client_address`` the client port binds every interface."""
        if role not in ("participant", "observer"):
            raise ConfigError("zookeeper.role", role, "a member is a participant or an observer", "use one of them")
        client = f"{client_address}:{self.client_port}" if client_address else str(self.client_port)
        return f"server.{self.myid}={self.host}:{self.quorum_port}:{self.election_port}:{role};{client}"


def check_port(setting: str, port: int) -> None:
    """Fail unless ``port`` is one an unprivileged server can listen on."""
    if not MIN_PORT <= port <= MAX_PORT:
        raise ConfigError(setting, port, f"a port must be {MIN_PORT}-{MAX_PORT} (no root privileges)", "use e.g. 2181, 2888, 3888 or 7000")


def check_distinct_ports(ports: dict[str, int]) -> None:
    """Fail when two roles share a port: the second listener would not start."""
    seen: dict[int, str] = {}
    for name, port in ports.items():
        if port in seen:
            raise ConfigError(
                name, port, f"the same port as {seen[port]}: two listeners cannot share a port",
                "give each of client, quorum, election and metrics its own port",
            )
        seen[port] = name


@dataclass(frozen=True, kw_only=True)
class EnsembleConfig:
    """Everything in ``zoo.cfg`` except the member id.

    Defaults are the platform's choices; each names its source.
    """

    members: tuple[Member, ...]
    #: Directory of snapshots (and ``myid``).
    data_dir: str = "/var/lib/zookeeper/data"
    #: Directory of the transaction log; a separate device avoids snapshot writes
    #: delaying log fsyncs (Administrator's Guide, "Things to Avoid" / dataLogDir).
    data_log_dir: str = "/var/lib/zookeeper/datalog"
    #: Milliseconds of one tick, the unit of the limits below. Default 2000 (Administrator's Guide).
    tick_time_ms: int = 2000
    #: Ticks a follower may take to connect to and sync with the leader. Default 10, as in
    #: the Kubernetes tutorial "Running ZooKeeper, A Distributed System Coordinator".
    init_limit: int = 10
    #: Ticks a follower may lag behind the leader. Default 5 (same tutorial).
    sync_limit: int = 5
    #: Hours between purges of old snapshots and logs; 0 would keep every file forever.
    #: Default 24.
    autopurge_interval_hours: int = 24
    #: Snapshots (and their logs) kept by the purge; 3 is ZooKeeper's minimum.
    autopurge_snap_retain_count: int = 3
    #: Four-letter words answered on the client port; everything else is refused.
    four_letter_words: tuple[str, ...] = ("ruok", "srvr", "mntr")
    #: Concurrent connections from one client IP. Default 60 (ZooKeeper's default).
    max_client_cnxns: int = 60
    #: Address the client port binds to; None binds every interface.
    client_port_address: str | None = None
    #: Bind quorum and election ports on every interface rather than the address of the
    #: member's own server line: on Kubernetes that name may not resolve to the pod until
    #: it is published, and on Debian a host name maps to 127.0.1.1 in /etc/hosts.
    listen_on_all_ips: bool = True
    #: Port of the Prometheus metrics endpoint, or None to leave the provider off (Debian's
    #: package lacks its jar).
    metrics_port: int | None = None
    #: Dynamic membership (``reconfigEnabled``): :func:`zoo_cfg` then lists no member, the
    #: members go into a dynamic configuration file (:func:`dynamic_cfg`, only the initial
    #: one: ZooKeeper rewrites it at each ``reconfig``). Default off: a bare-metal ensemble
    #: keeps its static list.
    dynamic: bool = False
    #: Extra lines appended verbatim (for tests that need e.g. a short election timeout).
    extra: tuple[tuple[str, str], ...] = field(default=())

    def __post_init__(self) -> None:
        if not self.members:
            raise ConfigError("zookeeper.servers", self.members, "an ensemble needs members", "list the members' host names")
        ids = [m.myid for m in self.members]
        if len(set(ids)) != len(ids):
            raise ConfigError("zookeeper.myid", ids, "two members share a server id", "give each member its own id")
        # Two members on one host must not share a port (the loopback test runs three).
        endpoints = [(m.host, p) for m in self.members for p in m.ports]
        if len(set(endpoints)) != len(endpoints):
            raise ConfigError(
                "zookeeper.servers", [f"{h}:{p}" for h, p in endpoints],
                "two listeners on one host share a port", "remap the ports of members that share a host",
            )
        if self.metrics_port is not None:
            check_port("zookeeper.metrics_port", self.metrics_port)
            for m in self.members:
                check_distinct_ports({
                    "zookeeper.client_port": m.client_port, "zookeeper.quorum_port": m.quorum_port,
                    "zookeeper.election_port": m.election_port, "zookeeper.metrics_port": self.metrics_port,
                })
        if not 100 <= self.tick_time_ms <= 60_000:
            raise ConfigError(
                "zookeeper.tick_time_ms", self.tick_time_ms,
                "a tick is 100 ms to 60 s; sessions time out after 2 to 20 ticks",
                "use the default 2000",
            )
        if self.init_limit < 1 or self.sync_limit < 1:
            raise ConfigError(
                "zookeeper.init_limit/sync_limit", (self.init_limit, self.sync_limit),
                "both limits are a number of ticks, at least 1", "use e.g. 10 and 5",
            )
        if self.sync_limit > self.init_limit:
            raise ConfigError(
                "zookeeper.sync_limit", self.sync_limit,
                f"exceeds init_limit ({self.init_limit}): the initial sync transfers a snapshot and "
                "needs at least as long as staying in sync", "keep sync_limit <= init_limit",
            )
        if self.autopurge_interval_hours < 1:
            raise ConfigError(
                "zookeeper.autopurge_interval_hours", self.autopurge_interval_hours,
                "0 turns autopurge off and the disk fills with snapshots", "use 1 or more (default 24)",
            )
        if self.autopurge_snap_retain_count < 3:
            raise ConfigError(
                "zookeeper.autopurge_snap_retain_count", self.autopurge_snap_retain_count,
                "ZooKeeper keeps at least 3 snapshots", "use 3 or more",
            )
        words = self.four_letter_words
        if not words or "*" in words or not set(words) <= KNOWN_FOUR_LETTER_WORDS:
            raise ConfigError(
                "zookeeper.four_letter_words", words,
                "the allowlist must name known commands explicitly ('*' would enable all, including 'wchp' and 'dump')",
                f"choose from {', '.join(sorted(KNOWN_FOUR_LETTER_WORDS))}; ruok and srvr are needed by the probes",
            )

    def member(self, myid: int) -> Member:
        for m in self.members:
            if m.myid == myid:
                return m
        raise ConfigError("zookeeper.myid", myid, f"not one of the members {[m.myid for m in self.members]}", "pick a listed id")


def members_from_hosts(
    *, hosts: Sequence[str], client_port: int = 2181, quorum_port: int = 2888, election_port: int = 3888,
    replicas: int | None = None,
) -> tuple[Member, ...]:
    """Members numbered 1..n from host names, all on the same ports.

    ``replicas``, when given, must equal the number of hosts: a mismatch means the
    ensemble and the hosts meant to run it disagree.
    """
    if replicas is not None and len(hosts) != replicas:
        raise ConfigError(
            "zookeeper.servers", ",".join(hosts),
            f"{len(hosts)} hosts for {replicas} replicas", "list exactly one host per replica",
        )
    if len(set(hosts)) != len(hosts):
        raise ConfigError("zookeeper.servers", ",".join(hosts), "a host is listed twice", "list each host once")
    check_distinct_ports({
        "zookeeper.client_port": client_port, "zookeeper.quorum_port": quorum_port, "zookeeper.election_port": election_port,
    })
    return tuple(
        Member(myid=i, host=h, client_port=client_port, quorum_port=quorum_port, election_port=election_port)
        for i, h in enumerate(hosts, start=1)
    )


def zoo_cfg(config: EnsembleConfig, *, client_port: int) -> str:
    """The text of ``zoo.cfg``; identical on every member that shares ``client_port``."""
    lines = [
        "# Rendered by final_problem.renderers.zookeeper; edit the settings, not this file.",
        f"tickTime={config.tick_time_ms}",
        f"initLimit={config.init_limit}",
        f"syncLimit={config.sync_limit}",
        f"dataDir={config.data_dir}",
        f"dataLogDir={config.data_log_dir}",
        f"clientPort={client_port}",
    ]
    if config.client_port_address:
        lines.append(f"clientPortAddress={config.client_port_address}")
    lines += [
        f"maxClientCnxns={config.max_client_cnxns}",
        f"autopurge.purgeInterval={config.autopurge_interval_hours}",
        f"autopurge.snapRetainCount={config.autopurge_snap_retain_count}",
        f"4lw.commands.whitelist={','.join(config.four_letter_words)}",
        # The Jetty admin server is not used: probes use four-letter words, metrics
        # come from the Prometheus provider.
        "admin.enableServer=false",
        # A one-member ensemble must still run as a quorum peer, never silently standalone.
        "standaloneEnabled=false",
    ]
    if config.dynamic:
        # Members change with `reconfig -add/-remove`; the list lives in a dynamic file
        # (dynamicConfigFile, added where the member starts): Dynamic Reconfiguration guide,
        # "The reconfigEnabled flag", "Dynamic configuration file".
        lines.append("reconfigEnabled=true")
    else:
        # Static membership: the server lines below are the ensemble.
        lines.append("reconfigEnabled=false")
    lines += [
        f"quorumListenOnAllIPs={'true' if config.listen_on_all_ips else 'false'}",
    ]
    if config.metrics_port is not None:
        lines += [
            f"metricsProvider.className={PROMETHEUS_PROVIDER}",
            f"metricsProvider.httpPort={config.metrics_port}",
        ]
    lines += [f"{k}={v}" for k, v in config.extra]
    if not config.dynamic:
        lines += [m.server_line() for m in sorted(config.members, key=lambda m: m.myid)]
    return "\n".join(lines) + "\n"


def dynamic_cfg(config: EnsembleConfig) -> str:
    """The initial dynamic configuration file: every member a participant, with its client
    port (on ``client_port_address`` when set). It holds no ``version`` line: ZooKeeper takes
    the version from the file's name (``QuorumPeerConfig.getVersionFromFilename``)."""
    return "".join(
        m.dynamic_line(client_address=config.client_port_address) + "\n"
        for m in sorted(config.members, key=lambda m: m.myid)
    )


def myid_file(myid: int) -> str:
    """The text of ``dataDir/myid``."""
    return f"{myid}\n"


def jvm_flags(*, heap_mib: int) -> list[str]:
    """JVM options: a fixed heap (no growth pauses later), and exit on OOM so the
    supervisor (kubelet or systemd) restarts a clean process."""
    if heap_mib < 64:
        raise ConfigError("zookeeper.heap_mib", heap_mib, "ZooKeeper needs at least 64 MiB of heap", "use 256 or more")
    return [f"-Xms{heap_mib}m", f"-Xmx{heap_mib}m", "-XX:+ExitOnOutOfMemoryError"]


def java_command(*, java: str, classpath: str, config_path: str, heap_mib: int) -> list[str]:
    """The command that starts one member in the foreground (both the chart and systemd)."""
    return [java, *jvm_flags(heap_mib=heap_mib), "-cp", classpath,
            "org.apache.zookeeper.server.quorum.QuorumPeerMain", config_path]


def systemd_unit(
    *, config: EnsembleConfig, conf_dir: str, heap_mib: int,
    java: str = "/usr/bin/java", jar: str = "/usr/share/java/zookeeper.jar", user: str = "zookeeper",
) -> str:
    """A systemd unit running one member from ``conf_dir/zoo.cfg`` as ``user``.

    The paths default to Debian's ``zookeeper`` package (Raspberry Pi OS is Debian).
    """
    command = java_command(java=java, classpath=f"{conf_dir}:{jar}", config_path=f"{conf_dir}/zoo.cfg", heap_mib=heap_mib)
    return "\n".join([
        "[Unit]",
        "Description=ZooKeeper ensemble member",
        "Documentation=https://zookeeper.apache.org/doc/r3.9.4/zookeeperAdmin.html",
        "Wants=network-online.target",
        "After=network-online.target",
        "",
        "[Service]",
        # exec, not simple: 'systemctl start' then fails when the service cannot be
        # executed (a missing ReadWritePaths folder is status 226/NAMESPACE) instead of
        # reporting success for a process that never ran (systemd.service(5), Type=).
        "Type=exec",
        f"User={user}",
        f"Group={user}",
        f"ExecStart={' '.join(command)}",
        "Restart=on-failure",
        "RestartSec=5",
        # Exit code 143 is the JVM's answer to SIGTERM: a clean stop.
        "SuccessExitStatus=143",
        "LimitNOFILE=65536",
        # The filesystem is read-only to the service except its data directories.
        "NoNewPrivileges=true",
        "ProtectSystem=strict",
        "ProtectHome=true",
        "PrivateTmp=true",
        f"ReadWritePaths={config.data_dir} {config.data_log_dir}",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ])


def write_member(*, config: EnsembleConfig, myid: int, out: Path, conf_dir: str | None = None, heap_mib: int = 512) -> list[Path]:
    """Write ``zoo.cfg``, ``myid`` and ``zookeeper.service`` of member ``myid`` into ``out``.

    ``myid`` is written next to ``zoo.cfg``; ZooKeeper reads it from ``dataDir``, so the
    installer copies it there (``data_dir`` of the config).
    """
    member = config.member(myid)
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "zoo.cfg": zoo_cfg(config, client_port=member.client_port),
        "myid": myid_file(myid),
        "zookeeper.service": systemd_unit(config=config, conf_dir=conf_dir or str(out), heap_mib=heap_mib),
    }
    written = []
    for name, text in files.items():
        path = out / name
        path.write_text(text)
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m final_problem.renderers.zookeeper",
        description="Write zoo.cfg, myid and zookeeper.service for one member of a bare-metal ensemble.",
    )
    parser.add_argument("--servers", required=True, help="comma-separated host names or IPs, member 1 first")
    parser.add_argument("--myid", required=True, type=int, help="this host's member number (1-based position in --servers)")
    parser.add_argument("--out", required=True, type=Path, help="directory to write the three files into")
    parser.add_argument("--replicas", type=int, help="expected ensemble size; fails when --servers differs")
    parser.add_argument("--client-port", type=int, default=2181)
    parser.add_argument("--quorum-port", type=int, default=2888)
    parser.add_argument("--election-port", type=int, default=3888)
    parser.add_argument("--data-dir", default=EnsembleConfig.data_dir)
    parser.add_argument("--data-log-dir", default=EnsembleConfig.data_log_dir)
    parser.add_argument("--conf-dir", default="/etc/zookeeper/conf", help="where zoo.cfg is installed (unit's classpath)")
    # 256 MiB: the Pi profile's heap (final_problem/charts/zookeeper.py, PI sizing).
    parser.add_argument("--heap-mib", type=int, default=256)
    parser.add_argument("--metrics-port", type=int, help="enable the Prometheus provider on this port (needs its jar)")
    args = parser.parse_args(argv)
    try:
        hosts = [h.strip() for h in args.servers.split(",") if h.strip()]
        members = members_from_hosts(
            hosts=hosts, replicas=args.replicas, client_port=args.client_port,
            quorum_port=args.quorum_port, election_port=args.election_port,
        )
        config = EnsembleConfig(
            members=members, data_dir=args.data_dir, data_log_dir=args.data_log_dir, metrics_port=args.metrics_port,
        )
        written = write_member(config=config, myid=args.myid, out=args.out, conf_dir=args.conf_dir, heap_mib=args.heap_mib)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
