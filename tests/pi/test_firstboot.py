"""First boot (firstboot.sh) and first run (firstrun.sh) against a scratch root folder.

The boot partition of a built image is copied out and the scripts run from it, as on
the Pi, with FP_ROOT pointing at a scratch folder. Programs that would change this
machine or reach the network (systemctl, apt-get, curl, useradd, ...) are replaced by
stubs on PATH that record their arguments; curl's stub serves files from a local fake
release folder. What only a real Pi exercises is listed in pi/README.md.
"""

from __future__ import annotations

import hashlib
import io
import os
import socket
import subprocess
import tarfile
import threading
from pathlib import Path

import pytest

from pi_helpers import (BUILD, PI, env, fake_manifests, fat_extract, make_pi_image, run, sample_inventory,
                      write_exe)

# The versions first boot reads, as the shell sees them (KEY='value' lines).
PINNED = {
    key: value.strip("'\"")
    for key, _, value in (
        line.partition("=") for line in (PI / "versions.env").read_text().splitlines()
        if line and not line.startswith("#")
    )
}

STUB_LOGGER = """
#!/bin/sh
printf '%s %s\\n' "$(basename "$0")" "$*" >>"$FP_TEST_LOG"
"""

# systemctl stub: records its arguments; 'show' answers with the unit state the test
# sets in FP_TEST_UNIT (ActiveState Result NRestarts), by default a running unit.
SYSTEMCTL_STUB = """
#!/bin/sh
printf 'systemctl %s\\n' "$*" >>"$FP_TEST_LOG"
if [ "$1" = show ]; then
  set -- ${FP_TEST_UNIT:-active success 0}
  printf 'ActiveState=%s\\nResult=%s\\nNRestarts=%s\\n' "$1" "$2" "$3"
fi
"""

# curl stub: serves <release dir>/<last path segment of the URL>, records the URL.
CURL_STUB = """
#!/usr/bin/env bash
out="" url=""
while [ $# -gt 0 ]; do
  case "$1" in
    -o) out="$2"; shift 2 ;;
    --retry|--retry-delay) shift 2 ;;
    --) url="$2"; shift 2 ;;
    *) shift ;;
  esac
done
printf 'curl %s\\n' "$url" >>"$FP_TEST_LOG"
src="$FP_TEST_RELEASE/${url##*/}"
[ -f "$src" ] || { echo "curl: (22) 404 $url" >&2; exit 22; }
cp "$src" "$out"
"""

# python3 stub for 'python3 -m venv DIR': makes DIR/bin/pip, which records its arguments.
PYTHON_STUB = """
#!/usr/bin/env bash
printf 'python3 %s\\n' "$*" >>"$FP_TEST_LOG"
if [ "$1 $2" = "-m venv" ]; then
  mkdir -p "$3/bin"
  printf '#!/bin/sh\\nprintf "pip %%s\\\\n" "$*" >>"$FP_TEST_LOG"\\n' >"$3/bin/pip"
  chmod +x "$3/bin/pip"
fi
"""


class Node:
    def __init__(self, tmp: Path, image: Path):
        self.tmp = tmp
        self.boot = fat_extract(image, tmp / "boot")
        self.root = tmp / "root"
        self.root.mkdir()
        self.log = tmp / "calls.log"
        self.log.write_text("")
        self.release = tmp / "release"
        self.release.mkdir()
        self.cgroup = tmp / "cgroup"
        self.cgroup.mkdir()
        (self.cgroup / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
        stubs = tmp / "stubs"
        stubs.mkdir()
        for name in ("apt-get", "modprobe", "sysctl", "useradd", "passwd", "chown"):
            write_exe(stubs / name, STUB_LOGGER)
        write_exe(stubs / "systemctl", SYSTEMCTL_STUB)
        write_exe(stubs / "curl", CURL_STUB)
        write_exe(stubs / "python3", PYTHON_STUB)
        self.stubs = stubs

    def run(self, script: str = "firstboot.sh", **extra) -> subprocess.CompletedProcess:
        settings = {"FP_ROOT": str(self.root), "FP_CGROUP_DIR": str(self.cgroup),
                    "FP_PROC_CGROUPS": str(self.tmp / "no-proc-cgroups"), "FP_TEST_LOG": str(self.log),
                    "FP_TEST_RELEASE": str(self.release)}
        e = env(**{**settings, **extra})
        e["PATH"] = f"{self.stubs}{os.pathsep}{e['PATH']}"
        return run(["bash", str(self.boot / "fp" / script)], env=e)

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines()


@pytest.fixture
def node(built, tmp_path):
    def make(host: str) -> Node:
        return Node(tmp_path, built.image(host))
    return make


def add_airgap(n: Node) -> bytes:
    binary = b"#!/bin/sh\necho k3s air-gap\n"
    (n.boot / "fp" / "airgap").mkdir()
    (n.boot / "fp" / "airgap" / "k3s").write_bytes(binary)
    (n.boot / "fp" / "airgap" / "k3s-airgap-images-arm64.tar.zst").write_bytes(b"images")
    return binary


def fake_k3s_release(n: Node, *, corrupt: bool = False) -> bytes:
    binary = b"#!/bin/sh\necho downloaded k3s\n"
    (n.release / "k3s-arm64").write_bytes(binary)
    digest = hashlib.sha256(b"something else" if corrupt else binary).hexdigest()
    (n.release / "sha256sum-arm64.txt").write_text(f"{'e' * 64}  k3s\n{digest}  k3s-arm64\n")
    return binary


def test_first_server_air_gap_install(node, built):
    n = node("srv-1")
    binary = add_airgap(n)
    token = (built.secrets / "testlab-k3s-token").read_text()
    r = n.run()
    assert r.returncode == 0, r.stderr
    k3s = n.root / "usr/local/bin/k3s"
    assert k3s.read_bytes() == binary and k3s.stat().st_mode & 0o777 == 0o755
    for link in ("kubectl", "crictl", "ctr"):
        assert os.readlink(n.root / "usr/local/bin" / link) == "k3s"
    assert (n.root / "var/lib/rancher/k3s/agent/images/k3s-airgap-images-arm64.tar.zst").read_bytes() == b"images"
    assert not any(c.startswith("curl") for c in n.calls()), "air-gap install must not download"
    config = n.root / "etc/rancher/k3s/config.yaml"
    assert config.read_text() == (n.boot / "fp/k3s-config.yaml").read_text()
    assert config.stat().st_mode & 0o777 == 0o600
    token_file = n.root / "etc/rancher/k3s/cluster-token"
    assert token_file.read_text() == token and token_file.stat().st_mode & 0o777 == 0o600
    assert not (n.boot / "fp/k3s-token").exists(), "token must be removed from the FAT boot partition"
    assert not (n.boot / "fp/airgap").exists(), "air-gap files are removed from the boot partition once installed"
    manifests = n.root / "var/lib/rancher/k3s/server/manifests/final-problem"
    assert sorted(p.name for p in manifests.iterdir()) == ["00-namespace.yaml", "10-redis.yaml"]
    assert (manifests / "10-redis.yaml").read_text() == (built.manifests / "10-redis.yaml").read_text()
    unit = (n.root / "etc/systemd/system/k3s.service").read_text()
    assert "ExecStart=/usr/local/bin/k3s server\n" in unit and "Delegate=yes" in unit
    assert "systemctl enable k3s.service" in n.calls()
    assert "systemctl start --no-block k3s.service" in n.calls()
    assert "Type=notify" in unit
    assert "br_netfilter" in (n.root / "etc/modules-load.d/final-problem-k3s.conf").read_text()
    assert "net.ipv4.ip_forward = 1" in (n.root / "etc/sysctl.d/90-final-problem-k3s.conf").read_text()
    assert (n.root / "var/lib/final-problem/firstboot.done").exists()
    assert token not in r.stdout + r.stderr


def test_second_run_does_nothing(node):
    n = node("srv-1")
    add_airgap(n)
    assert n.run().returncode == 0
    before = n.calls()
    r = n.run()
    assert r.returncode == 0 and "already done" in r.stderr
    assert n.calls() == before


def test_agent_downloads_pinned_release_and_checks_it(node):
    n = node("agt-1")
    binary = fake_k3s_release(n)
    r = n.run()
    assert r.returncode == 0, r.stderr
    assert (n.root / "usr/local/bin/k3s").read_bytes() == binary
    base = "https://github.com/k3s-io/k3s/releases/download/v1.34.9%2Bk3s1"
    assert f"curl {base}/sha256sum-arm64.txt" in n.calls()
    assert f"curl {base}/k3s-arm64" in n.calls()
    unit = (n.root / "etc/systemd/system/k3s-agent.service").read_text()
    assert "ExecStart=/usr/local/bin/k3s agent\n" in unit
    assert "systemctl enable k3s-agent.service" in n.calls()
    assert "systemctl start --no-block k3s-agent.service" in n.calls()
    assert "Type=exec" in unit
    assert not (n.root / "var/lib/rancher/k3s/server/manifests").exists()


def test_download_checksum_mismatch_stops(node):
    n = node("srv-2")
    fake_k3s_release(n, corrupt=True)
    r = n.run()
    assert r.returncode == 1
    assert "k3s-arm64 has SHA-256" in r.stderr and "corrupt or tampered" in r.stderr
    assert not (n.root / "usr/local/bin/k3s").exists()
    assert not any("enable" in c for c in n.calls())
    assert "FAILED" in (n.root / "etc/motd.d/final-problem").read_text()
    assert (n.root / "var/lib/final-problem/firstboot.failed").exists()
    assert not (n.root / "var/lib/final-problem/firstboot.done").exists()


def test_download_failure_stops_with_hint(node):
    n = node("srv-2")  # empty release folder: every download fails
    r = n.run()
    assert r.returncode == 1 and "--k3s-airgap" in r.stderr


@pytest.mark.parametrize("controllers", ["cpuset cpu io pids\n", ""])
def test_memory_cgroup_off_is_reported_and_stops_k3s(node, controllers):
    n = node("srv-1")
    add_airgap(n)
    (n.cgroup / "cgroup.controllers").write_text(controllers)
    r = n.run()
    assert r.returncode == 1
    assert "memory cgroup is OFF" in r.stderr and "cgroup_enable=memory" in r.stderr
    assert "memory cgroup is OFF" in (n.root / "etc/motd.d/final-problem").read_text()
    assert not (n.root / "usr/local/bin/k3s").exists()


@pytest.mark.parametrize("enabled,ok", [("1", True), ("0", False)])
def test_memory_cgroup_v1_detection(node, tmp_path, enabled, ok):
    n = node("srv-1")
    add_airgap(n)
    (n.cgroup / "cgroup.controllers").unlink()
    proc = tmp_path / "proc-cgroups"
    proc.write_text(f"#subsys_name\thierarchy\tnum_cgroups\tenabled\ncpuset\t0\t39\t1\nmemory\t0\t39\t{enabled}\n")
    r = n.run(FP_PROC_CGROUPS=str(proc))
    assert (r.returncode == 0) is ok, r.stderr


@pytest.fixture
def imok_port():
    """A loopback listener that answers ZooKeeper's 'ruok' with 'imok', as a running
    member does; yields its port."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            with conn:
                if conn.recv(4) == b"ruok":
                    conn.sendall(b"imok")

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        t.join()
        server.close()


def zookeeper_node(node, client_port: int) -> Node:
    """zk-1 with Debian's zookeeper user (the package creates it) and zoo.cfg's client
    port moved to CLIENT_PORT."""
    n = node("zk-1")
    (n.root / "etc").mkdir()
    (n.root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\nzookeeper:x:107:113::/var/lib/zookeeper:/bin/false\n")
    cfg = n.boot / "fp/zookeeper/zoo.cfg"
    cfg.write_text(cfg.read_text().replace("clientPort=2181", f"clientPort={client_port}"))
    return n


def test_zookeeper_role_installs_renderer_files(node, imok_port):
    n = zookeeper_node(node, imok_port)
    r = n.run()
    assert r.returncode == 0, r.stderr
    assert any(c.startswith("apt-get install") and "zookeeper" in c for c in n.calls())
    assert "server.1=10.20.0.31:2888:3888" in (n.root / "etc/zookeeper/conf/zoo.cfg").read_text()
    assert (n.root / "var/lib/zookeeper/data/myid").read_text().strip() == "1"
    assert (n.root / "etc/systemd/system/zookeeper.service").exists()
    assert "systemctl enable --now zookeeper.service" in n.calls()
    assert "zookeeper.service is running" in r.stderr
    assert not (n.root / "usr/local/bin/k3s").exists()


def test_zookeeper_unit_folders_exist_and_belong_to_its_user(node, imok_port):
    """Every ReadWritePaths folder of the rendered unit, dataLogDir included, exists
    before the unit starts (systemd refuses it otherwise: 226/NAMESPACE) and belongs to
    the unit's user, who must write there under ProtectSystem=strict."""
    n = zookeeper_node(node, imok_port)
    assert n.run().returncode == 0
    calls = n.calls()
    start = calls.index("systemctl enable --now zookeeper.service")
    for folder in ("var/lib/zookeeper/data", "var/lib/zookeeper/datalog"):
        assert (n.root / folder).is_dir()
        chown = f"chown -R -- zookeeper: {n.root}/{folder}"
        assert chown in calls and calls.index(chown) < start, calls


@pytest.mark.parametrize("state,needle", [
    ("failed exit-code 0", "state failed, result exit-code"),
    ("activating exit-code 1", "state activating, result exit-code, restarts 1"),
    ("activating success 2", "state activating, result success, restarts 2"),
])
def test_zookeeper_unit_that_does_not_start_fails_first_boot(node, imok_port, state, needle):
    n = zookeeper_node(node, imok_port)
    r = n.run(FP_TEST_UNIT=state)
    assert r.returncode == 1
    assert f"zookeeper.service failed to start ({needle}" in r.stderr
    assert "journalctl -u zookeeper.service" in r.stderr
    assert (n.root / "var/lib/final-problem/firstboot.failed").exists()
    assert not (n.root / "var/lib/final-problem/firstboot.done").exists()
    assert "FAILED" in (n.root / "etc/motd.d/final-problem").read_text()


def test_zookeeper_that_never_answers_fails_first_boot(node):
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never answers
        n = zookeeper_node(node, silent.getsockname()[1])
        r = n.run(FP_UNIT_TIMEOUT="1")
    assert r.returncode == 1
    assert "zookeeper.service is active but not ready after 1s" in r.stderr


def test_zookeeper_without_its_user_fails_first_boot(node, imok_port):
    n = zookeeper_node(node, imok_port)
    (n.root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    r = n.run()
    assert r.returncode == 1
    assert "zookeeper.service runs as user 'zookeeper', which does not exist" in r.stderr
    assert "systemctl enable --now zookeeper.service" not in n.calls()


def test_no_secret_left_on_the_boot_partition(node):
    """Cloud-init image of a k3s node with Wi-Fi: the token and network-config (with
    the passphrase) are gone from the boot partition after first boot."""
    n = node("srv-1")
    add_airgap(n)
    network_config = (n.boot / "network-config")
    network_config.write_text(network_config.read_text() + "# wifis: {wlan0: {password: correct horse battery}}\n")
    assert n.run().returncode == 0
    assert not network_config.exists() and not (n.boot / "fp/k3s-token").exists()
    leftovers = [p for p in n.boot.rglob("*") if p.is_file() and "correct horse" in p.read_text(errors="replace")]
    assert leftovers == []


def test_what_cloud_init_made_of_the_network_settings_is_closed_to_other_users(node):
    n = node("srv-1")
    add_airgap(n)
    opened = [n.root / "etc/netplan/50-cloud-init.yaml", n.root / "var/log/cloud-init.log",
              n.root / "var/log/cloud-init-output.log"]
    for p in opened:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("password: correct horse battery\n")
        p.chmod(0o644)
    assert n.run().returncode == 0
    assert [oct(p.stat().st_mode & 0o777) for p in opened] == [oct(0o600), oct(0o640), oct(0o640)]


def test_secrets_leave_the_boot_partition_even_when_first_boot_fails(node, built):
    n = node("srv-1")
    add_airgap(n)
    (n.cgroup / "cgroup.controllers").write_text("cpuset cpu io pids\n")  # k3s cannot run here
    r = n.run()
    assert r.returncode == 1 and "memory cgroup is OFF" in r.stderr
    assert not (n.boot / "fp/k3s-token").exists() and not (n.boot / "network-config").exists()
    token = (built.secrets / "testlab-k3s-token").read_text()
    assert (n.root / "etc/rancher/k3s/cluster-token").read_text() == token


def test_workstation_installs_tools_with_checksums(node):
    n = node("desk")
    kubectl = b"kubectl binary"
    (n.release / "kubectl").write_bytes(kubectl)
    (n.release / "kubectl.sha256").write_text(hashlib.sha256(kubectl).hexdigest())
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("linux-arm64/helm")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"helm"))
    tgz = f"helm-{PINNED['HELM_VERSION']}-linux-arm64.tar.gz"
    (n.release / tgz).write_bytes(buf.getvalue())
    (n.release / f"{tgz}.sha256sum").write_text(f"{hashlib.sha256(buf.getvalue()).hexdigest()}  {tgz}\n")
    r = n.run()
    assert r.returncode == 0, r.stderr
    apt = [c for c in n.calls() if c.startswith("apt-get install")]
    assert apt and all(p in apt[0].split() for p in ("awscli", "redis-tools", "zookeeper", "python3-venv"))
    assert "curl https://dl.k8s.io/release/v1.34.9/bin/linux/arm64/kubectl" in n.calls()
    assert (n.root / "usr/local/bin/kubectl").read_bytes() == kubectl
    assert (n.root / "usr/local/bin/helm").read_bytes() == b"helm"
    pip = [c.split() for c in n.calls() if c.startswith("pip install")]
    assert pip[0][:3] == ["pip", "install", "-r"] and pip[0][3].endswith("fp/project/requirements-clients.txt")
    assert pip[1][:3] == ["pip", "install", "--no-deps"] and pip[1][3].endswith("fp/project")


def test_workstation_rejects_bad_kubectl(node):
    n = node("desk")
    (n.release / "kubectl").write_bytes(b"evil")
    (n.release / "kubectl.sha256").write_text("0" * 64)
    r = n.run()
    assert r.returncode == 1 and "kubectl v1.34.9 has SHA-256" in r.stderr
    assert not (n.root / "usr/local/bin/kubectl").exists()


@pytest.fixture(scope="module")
def firstrun_images(tmp_path_factory, fake_python):
    base = tmp_path_factory.mktemp("firstrun")
    src = make_pi_image(base / "old.img", cloud_init=False)
    r = run(["bash", str(BUILD), "--image", str(src), "--inventory", str(sample_inventory(base)),
             "--out", str(base / "out"), "--manifests", str(fake_manifests(base)), "--secrets", str(base / "s")],
            env=env(PYTHON=str(fake_python)))
    assert r.returncode == 0, r.stderr
    return base / "out"


def test_firstrun_sets_up_system_and_removes_itself(firstrun_images, tmp_path):
    n = Node(tmp_path, firstrun_images / "desk.img")
    for d in ("etc", "usr/share/zoneinfo/Europe", "var/lib/systemd/rfkill"):
        (n.root / d).mkdir(parents=True)
    (n.root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (n.root / "etc/hosts").write_text("127.0.0.1\tlocalhost\n127.0.1.1\traspberrypi\n")
    (n.root / "usr/share/zoneinfo/Europe/Paris").write_text("TZif")
    rfkill = n.root / "var/lib/systemd/rfkill/platform-fe300000.mmcnr:wlan"
    rfkill.write_text("1\n")
    assert "systemd.run=" in (n.boot / "cmdline.txt").read_text()

    r = n.run("firstrun.sh")
    assert r.returncode == 0, r.stderr
    assert (n.root / "etc/hostname").read_text() == "desk\n"
    hosts = (n.root / "etc/hosts").read_text()
    assert "127.0.1.1\tdesk" in hosts and "raspberrypi" not in hosts and "localhost" in hosts
    assert any(c.startswith("useradd") and c.endswith(" ops") for c in n.calls())
    assert any(c.startswith("passwd") and "-l ops" in c for c in n.calls())
    keys = n.root / "home/ops/.ssh/authorized_keys"
    assert keys.read_text() == (n.boot / "fp/authorized_keys").read_text()
    assert keys.stat().st_mode & 0o777 == 0o600
    assert "PasswordAuthentication no" in (n.root / "etc/ssh/sshd_config.d/10-final-problem.conf").read_text()
    assert "ops ALL=(ALL) NOPASSWD:ALL" in (n.root / "etc/sudoers.d/010_final-problem").read_text()
    assert os.readlink(n.root / "etc/localtime") == "/usr/share/zoneinfo/Europe/Paris"
    nm = n.root / "etc/NetworkManager/system-connections/fp-wlan0.nmconnection"
    assert "ssid=lab-net" in nm.read_text() and nm.stat().st_mode & 0o777 == 0o600
    # The keyfile holds the Wi-Fi passphrase: it is gone from the boot partition.
    assert not (n.boot / "fp/network").exists()
    assert [p for p in n.boot.rglob("*") if p.is_file() and "correct horse" in p.read_text(errors="replace")] == []
    assert rfkill.read_text() == "0\n"
    unit = (n.root / "etc/systemd/system/final-problem-firstboot.service").read_text()
    assert "ExecStart=/bin/bash " + str(n.boot) + "/fp/firstboot.sh" in unit
    assert (n.root / "etc/systemd/system/multi-user.target.wants/final-problem-firstboot.service").is_symlink()
    cmdline = (n.boot / "cmdline.txt").read_text()
    assert "systemd.run" not in cmdline and "kernel-command-line.target" not in cmdline
    assert "cfg80211.ieee80211_regdom=FR" in cmdline and cmdline.startswith("console=serial0")


def test_firstrun_wifi_node_without_saved_rfkill_state(firstrun_images, tmp_path):
    """A fresh card has no saved rfkill state yet: nothing to unblock, and no failure."""
    n = Node(tmp_path, firstrun_images / "desk.img")
    for d in ("etc", "usr/share/zoneinfo/Europe", "var/lib/systemd/rfkill"):
        (n.root / d).mkdir(parents=True)
    (n.root / "usr/share/zoneinfo/Europe/Paris").write_text("TZif")
    r = n.run("firstrun.sh")
    assert r.returncode == 0, r.stderr
    assert (n.root / "etc/NetworkManager/system-connections/fp-wlan0.nmconnection").exists()
    assert "systemd.run" not in (n.boot / "cmdline.txt").read_text()


def test_firstrun_rejects_unknown_timezone(firstrun_images, tmp_path):
    n = Node(tmp_path, firstrun_images / "srv-1.img")
    (n.root / "etc").mkdir()
    r = n.run("firstrun.sh")
    assert r.returncode == 1 and "time zone 'Europe/Paris'" in r.stderr


def test_firstrun_image_keeps_cgroup_flags_after_hook_removed(firstrun_images, tmp_path):
    n = Node(tmp_path, firstrun_images / "srv-1.img")
    (n.root / "usr/share/zoneinfo/Europe").mkdir(parents=True)
    (n.root / "usr/share/zoneinfo/Europe/Paris").write_text("TZif")
    (n.root / "etc").mkdir()
    assert n.run("firstrun.sh").returncode == 0
    words = (n.boot / "cmdline.txt").read_text().split()
    assert words.count("cgroup_enable=memory") == 1 and words.count("cgroup_memory=1") == 1


def va_bits_label(n: Node) -> str:
    return (n.root / "etc/rancher/k3s/config.yaml.d/50-final-problem-va-bits.yaml").read_text()


def test_node_is_labelled_with_a_16k_kernel_s_47_bits(node):
    n = node("srv-1")
    add_airgap(n)
    write_exe(n.stubs / "getconf", "#!/bin/sh\necho 16384\n")
    r = n.run()
    assert r.returncode == 0, r.stderr
    assert va_bits_label(n) == "node-label+:\n  - final-problem.io/arm64-va-bits=47\n"
    assert "Envoy can run here" in r.stdout + r.stderr


@pytest.mark.parametrize(("config", "bits", "warned"), [
    ("CONFIG_ARM64_4K_PAGES=y\nCONFIG_ARM64_VA_BITS=39\n", "39", True),
    ("CONFIG_ARM64_VA_BITS_48=y\nCONFIG_ARM64_VA_BITS=48\n", "48", False),
])
def test_node_with_a_4k_kernel_is_labelled_with_its_config(node, config, bits, warned):
    n = node("srv-1")
    add_airgap(n)
    write_exe(n.stubs / "getconf", "#!/bin/sh\necho 4096\n")
    release = subprocess.run(["uname", "-r"], capture_output=True, text=True, check=True).stdout.strip()
    (n.root / "boot").mkdir()
    (n.root / "boot" / f"config-{release}").write_text(config)
    r = n.run()
    assert r.returncode == 0, r.stderr
    assert f"arm64-va-bits={bits}\n" in va_bits_label(n)
    assert ("WARNING: this kernel has 39-bit virtual addresses" in r.stdout + r.stderr) is warned
