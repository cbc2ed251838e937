"""A real first boot: built images booted under systemd in a Debian root (pi_boot.py).

Every node of one inventory boots at once: a k3s server (with a stand-in k3s binary
through the air-gap option) and Wi-Fi, a k3s agent, and three ZooKeeper nodes that must
form an ensemble. Two more show failures: an agent with no k3s to install (no network
here) and a ZooKeeper node whose service cannot start.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pi_boot import (FIRST_BOOT_TIMEOUT, Container, Network, build_images, four_letter_word, prepare_base,
                     require_boot_tools, secrets_open_to_others)
from pi_helpers import ssh_key

# Every node boots once, in the module fixture: keep these tests on one xdist worker
# (make test runs pytest with --dist loadgroup).
pytestmark = pytest.mark.xdist_group("pi-boot")

KEY = ssh_key("alice")
PASSPHRASE = "correct horse battery"
ZK = {"zk-1": "10.77.0.21", "zk-2": "10.77.0.22", "zk-3": "10.77.0.23"}
INVENTORY = f"""
cluster: {{name: boot}}
defaults:
  user: ops
  timezone: Europe/Paris
  ssh_authorized_keys: ["{KEY}"]
nodes:
  - hostname: srv-1
    role: server
    network: {{address: 10.77.0.11/24, gateway: 10.77.0.1, dns: [10.77.0.1]}}
    wifi: {{ssid: lab-net, password: "{PASSPHRASE}", country: FR}}
  - hostname: agt-1
    role: agent
""" + "".join(f"""  - hostname: {h}
    role: zookeeper
    network: {{address: {a}/24, gateway: 10.77.0.1}}
""" for h, a in ZK.items())
# Only an agent is booted from this one: its image carries no k3s, so first boot must
# download it, which cannot work here.
DOWNLOAD_INVENTORY = f"""
cluster: {{name: boot}}
defaults: {{ssh_authorized_keys: ["{KEY}"]}}
nodes:
  - {{hostname: srv-9, role: server}}
  - {{hostname: agt-9, role: agent}}
"""

# An image without cloud-init: first boot goes through firstrun.sh and a reboot.
FIRSTRUN_INVENTORY = f"""
cluster: {{name: boot}}
defaults: {{user: ops, timezone: Europe/Paris, ssh_authorized_keys: ["{KEY}"]}}
nodes:
  - {{hostname: srv-8, role: server}}
  - hostname: agt-fr
    role: agent
    wifi: {{ssid: lab-net, password: "{PASSPHRASE}", country: FR}}
"""

# Stands in for the k3s binary (no real one can be fetched here): records how it was
# started, tells systemd it is ready (Type=notify, sd_notify(3)) and stays up.
K3S_STAND_IN = """#!/bin/sh
printf '%s\\n' "$*" >/run/k3s-stand-in.args
exec python3 -c '
import os, socket, time
addr = os.environ.get("NOTIFY_SOCKET", "")
if addr:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.connect("\\0" + addr[1:] if addr.startswith("@") else addr)
    s.send(b"READY=1")
time.sleep(1e6)
'
"""


@pytest.fixture(scope="module")
def boot(tmp_path_factory):
    """Build the images, boot every node in parallel, wait for every first boot."""
    tarball = require_boot_tools()
    tmp = tmp_path_factory.mktemp("boot")
    started = time.monotonic()
    airgap = tmp / "airgap"
    airgap.mkdir()
    (airgap / "k3s-arm64").write_text(K3S_STAND_IN)
    (airgap / "k3s-airgap-images-arm64.tar.zst").write_bytes(b"stand-in images archive")
    (airgap / "sha256sum-arm64.txt").write_text("".join(
        f"{hashlib.sha256((airgap / n).read_bytes()).hexdigest()}  {n}\n"
        for n in ("k3s-arm64", "k3s-airgap-images-arm64.tar.zst")))
    # The images and the root are independent: prepare them side by side.
    with ThreadPoolExecutor() as pool:
        main = pool.submit(build_images, tmp / "main", INVENTORY, airgap=airgap)
        download = pool.submit(build_images, tmp / "download", DOWNLOAD_INVENTORY)
        firstrun = pool.submit(build_images, tmp / "firstrun", FIRSTRUN_INVENTORY, airgap=airgap, cloud_init=False)
        base_job = pool.submit(prepare_base, tarball, tmp / "base")
        out, out_dl, out_fr, base = main.result(), download.result(), firstrun.result(), base_job.result()
    prepared = time.monotonic()

    net = Network(f"fpboot{os.getpid()}")
    nodes: dict[str, Container] = {}
    try:
        for i, (host, address) in enumerate(ZK.items(), start=1):
            nodes[host] = Container(host, base, tmp / "nodes", out / f"{host}.img", netns=net.node(i, f"{address}/24"))
        for host in ("srv-1", "agt-1"):
            nodes[host] = Container(host, base, tmp / "nodes", out / f"{host}.img")
        nodes["agt-9"] = Container("agt-9", base, tmp / "nodes", out_dl / "agt-9.img")
        # The deliberately failing step: a ZooKeeper node whose service cannot start
        # (Debian's zookeeper.jar is gone, so the JVM exits at once).
        nodes["zk-broken"] = Container("zk-broken", base, tmp / "nodes", out / "zk-1.img")
        nodes["zk-broken"].path("usr/share/java/zookeeper.jar").unlink()
        nodes["agt-fr"] = Container("agt-fr", base, tmp / "nodes", out_fr / "agt-fr.img")
        # As on an image that has no cloud-init.
        nodes["agt-fr"].path("etc/cloud/cloud-init.disabled").write_text("")
        for node in nodes.values():
            node.start()
        deadline = time.monotonic() + FIRST_BOOT_TIMEOUT
        # firstrun.sh runs from the systemd.run= hook, then the node reboots.
        nodes["agt-fr"].wait_reboot(deadline)
        results = {host: node.wait_first_boot(deadline) for host, node in nodes.items()}
        booted = time.monotonic()
        print(f"\nboot tests: images and root ready in {prepared - started:.0f}s, "
              f"{len(nodes)} first boots in {booted - prepared:.0f}s")
        yield {"nodes": nodes, "results": results, "secrets": tmp / "main" / "secrets", "net": net}
    finally:
        with ThreadPoolExecutor() as pool:
            list(pool.map(Container.stop, nodes.values()))
        net.close()
        # About 1 GB per run: do not leave it to pytest's temporary folder retention.
        if all(not n.mounted for n in nodes.values()):
            shutil.rmtree(tmp, ignore_errors=True)


def node(boot, host: str) -> Container:
    return boot["nodes"][host]


def token(boot) -> str:
    return (boot["secrets"] / "boot-k3s-token").read_text()


def wait_active(n: Container, unit: str) -> None:
    """First boot starts k3s without waiting for it (--no-block)."""
    for _ in range(60):
        if n.exec("systemctl", "is-active", unit).stdout.strip() == "active":
            return
        time.sleep(1)
    raise AssertionError(f"{unit} is not active on {n.name}:\n{n.journal(unit)[-3000:]}")


@pytest.mark.parametrize("host", ["srv-1", "agt-1", "zk-1"])
def test_cloud_init_set_hostname_user_keys_and_time_zone(boot, host):
    n = node(boot, host)
    assert boot["results"][host] == "done", n.journal()[-4000:]
    assert n.exec("hostname").stdout.strip() == host
    assert n.path("etc/hostname").read_text().strip() == host
    passwd = n.exec("getent", "passwd", "ops").stdout
    assert passwd.startswith("ops:") and passwd.strip().endswith(":/bin/bash")
    shadow = n.exec("getent", "shadow", "ops").stdout.split(":")
    assert shadow[1].startswith("!"), "the password must be locked (SSH keys only)"
    groups = n.exec("id", "-nG", "ops").stdout.split()
    assert "sudo" in groups and "adm" in groups
    keys = n.path("home/ops/.ssh/authorized_keys")
    assert keys.read_text().strip() == KEY
    sshd = n.exec("sshd", "-T").stdout
    assert "passwordauthentication no" in sshd
    assert n.exec("readlink", "/etc/localtime").stdout.strip().endswith("Europe/Paris")


def test_cloud_init_rendered_the_static_address_and_wifi(boot):
    n = node(boot, "srv-1")
    status = n.exec("cloud-init", "status", "--long")
    assert status.returncode == 0 and "status: done" in status.stdout, status.stdout + status.stderr
    netplan = n.exec("netplan", "get", "all").stdout
    assert "10.77.0.11/24" in netplan and "lab-net" in netplan, netplan
    gen = n.exec("sh", "-c", "cat /run/NetworkManager/system-connections/*eth0*")
    assert "address1=10.77.0.11/24" in gen.stdout, gen.stdout + gen.stderr
    wifi = n.exec("sh", "-c", "cat /run/NetworkManager/system-connections/*lab-net*")
    assert "ssid=lab-net" in wifi.stdout, wifi.stdout + wifi.stderr


def test_first_server_installs_stand_in_k3s_from_air_gap_files(boot):
    n = node(boot, "srv-1")
    assert boot["results"]["srv-1"] == "done", n.journal()[-4000:]
    manifests = n.path("var/lib/rancher/k3s/server/manifests/final-problem")
    assert sorted(p.name for p in manifests.iterdir()) == ["00-namespace.yaml", "10-redis.yaml"]
    config = n.path("etc/rancher/k3s/config.yaml").read_text()
    assert "token-file: /etc/rancher/k3s/cluster-token" in config and "cluster-init: true" in config
    token_file = n.path("etc/rancher/k3s/cluster-token")
    assert token_file.read_text() == token(boot) and token_file.stat().st_mode & 0o777 == 0o600
    images = n.path("var/lib/rancher/k3s/agent/images/k3s-airgap-images-arm64.tar.zst")
    assert images.read_bytes() == b"stand-in images archive"
    assert n.path("etc/modules-load.d/final-problem-k3s.conf").exists()
    wait_active(n, "k3s.service")
    assert n.exec("cat", "/run/k3s-stand-in.args").stdout.strip() == "server"


def test_agent_installs_stand_in_k3s_and_starts_it(boot):
    n = node(boot, "agt-1")
    assert boot["results"]["agt-1"] == "done", n.journal()[-4000:]
    assert n.path("etc/rancher/k3s/cluster-token").read_text() == token(boot)
    assert "server: https://10.77.0.11:6443" in n.path("etc/rancher/k3s/config.yaml").read_text()
    assert not n.path("var/lib/rancher/k3s/server/manifests").exists()
    wait_active(n, "k3s-agent.service")
    assert n.exec("cat", "/run/k3s-stand-in.args").stdout.strip() == "agent"


def test_agent_without_k3s_runs_the_steps_before_the_download_then_reports_failure(boot):
    n = node(boot, "agt-9")
    assert boot["results"]["agt-9"] == "failed"
    reason = n.path("var/lib/final-problem/firstboot.failed").read_text()
    assert "download of https://github.com/k3s-io/k3s/releases/download/" in reason
    # The steps before the download ran: memory cgroup check, modules and sysctls.
    log = n.exec("cat", "/var/log/cloud-init-output.log").stdout
    assert "memory cgroup is on" in log and "downloading k3s" in log, log[-3000:]
    assert "br_netfilter" in n.path("etc/modules-load.d/final-problem-k3s.conf").read_text()
    assert "net.ipv4.ip_forward = 1" in n.path("etc/sysctl.d/90-final-problem-k3s.conf").read_text()
    assert "FAILED" in n.path("etc/motd.d/final-problem").read_text()
    status = n.exec("cloud-init", "status", "--long")
    assert status.returncode != 0 and "error" in status.stdout, status.stdout


def test_zookeeper_runs_as_its_user_and_answers(boot):
    for host, address in ZK.items():
        n = node(boot, host)
        assert boot["results"][host] == "done", n.journal()[-4000:]
        assert n.exec("systemctl", "is-active", "zookeeper.service").stdout.strip() == "active"
        pid = n.exec("systemctl", "show", "-p", "MainPID", "--value", "zookeeper.service").stdout.strip()
        assert n.exec("ps", "-o", "user=", "-p", pid).stdout.strip() == "zookeeper"
        for folder in ("/var/lib/zookeeper/data", "/var/lib/zookeeper/datalog"):
            assert n.exec("stat", "-c", "%U", folder).stdout.strip() == "zookeeper"
        assert four_letter_word(n.netns, address, 2181, "ruok") == "imok"


def test_three_zookeeper_nodes_form_an_ensemble_and_elect_a_leader(boot):
    modes: dict[str, str] = {}
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        for host, address in ZK.items():
            found = re.search(r"^Mode: (\w+)", four_letter_word(node(boot, host).netns, address, 2181, "srvr"), re.M)
            modes[host] = found.group(1) if found else "none"
        if sorted(modes.values()) == ["follower", "follower", "leader"]:
            break
        time.sleep(2)
    assert sorted(modes.values()) == ["follower", "follower", "leader"], modes
    # The followers followed the leader: they log the leader's id.
    leader = next(h for h, m in modes.items() if m == "leader")
    assert "Mode: leader" in four_letter_word(node(boot, leader).netns, ZK[leader], 2181, "srvr")


def test_zookeeper_that_does_not_start_fails_first_boot(boot):
    n = node(boot, "zk-broken")
    assert boot["results"]["zk-broken"] == "failed"
    reason = n.path("var/lib/final-problem/firstboot.failed").read_text()
    assert "zookeeper.service failed to start" in reason
    assert "FAILED" in n.path("etc/motd.d/final-problem").read_text()
    assert not n.path("var/lib/final-problem/firstboot.done").exists()
    status = n.exec("cloud-init", "status", "--long")
    assert status.returncode != 0 and "error" in status.stdout, status.stdout


def test_first_run_path_sets_up_the_node_reboots_and_runs_first_boot(boot):
    """An image without cloud-init: the systemd.run= hook ran firstrun.sh, which removed
    itself from cmdline.txt; after the reboot final-problem-firstboot.service ran."""
    n = node(boot, "agt-fr")
    assert boot["results"]["agt-fr"] == "done", n.journal()[-4000:]
    assert "systemd.run" not in (n.boot / "cmdline.txt").read_text()
    assert n.exec("hostname").stdout.strip() == "agt-fr"
    assert n.exec("getent", "shadow", "ops").stdout.split(":")[1].startswith("!")
    assert n.path("home/ops/.ssh/authorized_keys").read_text().strip() == KEY
    assert "passwordauthentication no" in n.exec("sshd", "-T").stdout
    assert n.exec("readlink", "/etc/localtime").stdout.strip().endswith("Europe/Paris")
    nm = n.exec("cat", "/etc/NetworkManager/system-connections/fp-wlan0.nmconnection").stdout
    assert "ssid=lab-net" in nm
    unit = n.exec("systemctl", "show", "-p", "ActiveState,Result", "final-problem-firstboot.service").stdout
    assert "ActiveState=active" in unit and "Result=success" in unit, unit
    wait_active(n, "k3s-agent.service")
    assert n.exec("cat", "/run/k3s-stand-in.args").stdout.strip() == "agent"


@pytest.mark.parametrize("host", ["srv-1", "agt-1", "agt-9", "zk-1", "zk-broken", "agt-fr"])
def test_no_secret_on_the_boot_partition_or_open_to_other_users(boot, host):
    n = node(boot, host)
    secrets = [token(boot), PASSPHRASE]
    on_boot = [str(p) for p in Path(n.boot).rglob("*") if p.is_file()
               and any(s.encode() in p.read_bytes() for s in secrets)]
    assert on_boot == []
    assert secrets_open_to_others(n, secrets) == []
