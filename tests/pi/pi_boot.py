"""Boot built Pi images for real: a Debian root under systemd-nspawn --boot.

The root is Debian's packages (tests/pi/boot/build-rootfs.sh, cached outside the clone),
unpacked once per test session. Each node boots a copy of it (an overlay, so copies are
cheap) with the files the builder put on that node's boot partition in /boot/firmware,
where Raspberry Pi OS mounts the partition. What differs from a Pi is set up in
``prepare_base`` and listed in pi/README.md.

systemd-nspawn runs with --register=no --keep-unit: it then needs neither systemd nor
D-Bus on the machine running the tests. --keep-unit also means the container's systemd
takes nspawn's own cgroup as its root, so every container is started in a cgroup of
its own (in each hierarchy systemd uses); otherwise their systemd instances would manage
one tree and stop each other's services. ZooKeeper nodes each get a network namespace
with an eth0 on one private bridge (a namespace of its own, not this machine's network);
the other nodes get --private-network (loopback only).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from pi_helpers import REPO, fat_extract, run, tool

ROOTFS_SCRIPT = REPO / "tests" / "pi" / "boot" / "build-rootfs.sh"
# Where Raspberry Pi OS (Bookworm and later) mounts the boot partition.
BOOT_DIR = "boot/firmware"
# Seconds a node may take from start to the end of its first boot: JVM starts on two
# shared cores, several containers at once.
FIRST_BOOT_TIMEOUT = 420


def fail(message: str) -> None:
    pytest.fail(message, pytrace=False)


def require_boot_tools() -> Path:
    """The cached root tarball; fail (never skip) with the reason when booting cannot run."""
    if os.geteuid() != 0:
        fail("the boot tests need root (systemd-nspawn, overlay mounts, network namespaces); CI runs them as root")
    for name, package in (("systemd-nspawn", "systemd-container"), ("nsenter", "util-linux"), ("ip", "iproute2")):
        if not shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])):
            fail(f"'{name}' is missing; it comes with the Debian package '{package}' ('sudo make system-deps')")
    tarball = Path(run(["bash", str(ROOTFS_SCRIPT), "--print-path"]).stdout.strip())
    if not tarball.is_file():
        fail(f"the boot tests' Debian root {tarball} is not built; 'make pi-rootfs' builds it once, as root "
             "(make test does it first)")
    return tarball


def _systemd_cgroup_mounts() -> list[Path]:
    """The cgroup hierarchies systemd keeps its tree in: cgroup2 (unified or hybrid)
    and the named v1 hierarchy 'systemd' (legacy or hybrid)."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        sep = fields.index("-")
        fstype, options = fields[sep + 1], fields[sep + 3].split(",")
        if fstype == "cgroup2" or (fstype == "cgroup" and "name=systemd" in options):
            found.append(Path(fields[4]))
    return found


def prepare_base(tarball: Path, base: Path) -> Path:
    """Unpack the root and make it boot like a Raspberry Pi OS card, offline."""
    base.mkdir(parents=True)
    subprocess.run(["tar", "--numeric-owner", "-xf", str(tarball), "-C", str(base)], check=True)
    # No network here: apt-get update then succeeds with no lists, and apt-get install
    # of a package already in the root (the zookeeper role's) succeeds.
    for p in [base / "etc/apt/sources.list", *(base / "etc/apt/sources.list.d").glob("*")]:
        p.unlink(missing_ok=True)
    (base / BOOT_DIR).mkdir(parents=True, exist_ok=True)
    # Raspberry Pi OS ships with its locale generated; cloud-init's locale module sets
    # the system's default, en_US.UTF-8 on Debian, and fails if it is not there.
    (base / "etc/locale.gen").write_text("en_US.UTF-8 UTF-8\n")
    subprocess.run(["chroot", str(base), "locale-gen"], check=True, capture_output=True)
    # cloud-init's NoCloud source reads user-data, meta-data and network-config from a
    # seed folder; Raspberry Pi OS points it at the boot partition.
    seed = base / "var/lib/cloud/seed"
    seed.mkdir(parents=True, exist_ok=True)
    (seed / "nocloud").symlink_to("/" + BOOT_DIR)
    (base / "etc/cloud/cloud.cfg.d/90-pi-boot-test.cfg").write_text(
        "datasource_list: [NoCloud, None]\nsystem_info:\n  network:\n    renderers: [netplan]\n"
    )
    # Raspberry Pi OS has netplan render network-config for NetworkManager.
    netplan = base / "etc/netplan"
    netplan.mkdir(parents=True, exist_ok=True)
    (netplan / "00-network-manager-all.yaml").write_text("network:\n  version: 2\n  renderer: NetworkManager\n")
    (netplan / "00-network-manager-all.yaml").chmod(0o600)
    return base


def build_images(tmp: Path, inventory: str, *, airgap: Path | None = None, cloud_init: bool = True) -> Path:
    """Build one image per node with pi/build.sh and the project's own ZooKeeper renderer."""
    import sys

    from pi_helpers import BUILD, env, fake_manifests, make_pi_image

    tmp.mkdir(parents=True)
    inv = tmp / "inventory.yaml"
    inv.write_text(inventory)
    source = make_pi_image(tmp / "raspios.img", cloud_init=cloud_init)
    cmd = ["bash", str(BUILD), "--image", str(source), "--inventory", str(inv),
           "--out", str(tmp / "out"), "--manifests", str(fake_manifests(tmp)), "--secrets", str(tmp / "secrets")]
    if airgap:
        cmd += ["--k3s-airgap", str(airgap)]
    r = run(cmd, env=env(PYTHON=sys.executable))
    assert r.returncode == 0, r.stderr
    return tmp / "out"


class Container:
    """One node: an overlay of the base root with its boot partition, booted by
    systemd-nspawn."""

    def __init__(self, name: str, base: Path, work: Path, image: Path, *, netns: str | None = None):
        self.name, self.netns = name, netns
        self.work = work / name
        self.upper, self.ovl_work, self.root = (self.work / d for d in ("upper", "ovl-work", "root"))
        for d in (self.upper, self.ovl_work, self.root):
            d.mkdir(parents=True)
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                        f"lowerdir={base},upperdir={self.upper},workdir={self.ovl_work}", str(self.root)], check=True)
        self.mounted = True
        self.boot = fat_extract(image, self.root / BOOT_DIR)
        # FAT has no permissions: mounted with the default umask, every file and folder
        # shows as owned by root with mode 755 (mount(8), vfat: uid, gid, umask).
        for p in [self.boot, *self.boot.rglob("*")]:
            os.chown(p, 0, 0)
            p.chmod(0o755)
        self.proc: subprocess.Popen | None = None
        self.console = self.work / "console.log"
        self.cgroups = [m / f"final-problem-boot-{os.getpid()}-{name}" for m in _systemd_cgroup_mounts()]

    def path(self, rel: str) -> Path:
        return self.root / rel.lstrip("/")

    def kernel_args(self) -> list[str]:
        """The systemd settings of the image's cmdline.txt. In a container systemd reads
        them from its own arguments (kernel-command-line(7)); the rest is for the kernel."""
        return [w for w in (self.boot / "cmdline.txt").read_text().split() if w.startswith("systemd.")]

    def start(self) -> None:
        net = [f"--network-namespace-path=/run/netns/{self.netns}"] if self.netns else ["--private-network"]
        # The machine name is nspawn's initial host name: not the node's, which first boot
        # must set. --timezone=off: nspawn would otherwise point /etc/localtime at this
        # machine's zone, over the one first boot set.
        cmd = [tool("systemd-nspawn"), "--quiet", "--register=no", "--keep-unit", "--boot", "--console=pipe",
               f"--machine=boot-{self.name}", "--timezone=off", "-D", str(self.root), *net, *self.kernel_args()]
        for cg in self.cgroups:
            cg.mkdir(exist_ok=True)

        def own_cgroup() -> None:  # in the child, before nspawn runs
            for cg in self.cgroups:
                (cg / "cgroup.procs").write_text("0")

        with open(self.console, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True, preexec_fn=own_cgroup)

    def leader(self) -> int:
        """Host PID of the container's PID 1 (systemd)."""
        assert self.proc
        for _ in range(100):
            for status in Path("/proc").glob("[0-9]*/status"):
                try:
                    text = status.read_text()
                except OSError:
                    continue
                fields = dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)
                nspid = fields.get("NSpid", "").split()
                if len(nspid) == 2 and nspid[1] == "1" and self._descends(int(nspid[0])):
                    return int(nspid[0])
            time.sleep(0.1)
        raise AssertionError(f"{self.name}: no systemd in the container; console:\n{self.console_text()}")

    def _descends(self, pid: int) -> bool:
        while pid > 1:
            if pid == self.proc.pid:
                return True
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                return False
            pid = int(stat.rsplit(")", 1)[1].split()[1])
        return False

    def exec(self, *cmd: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """Run CMD inside the running container (all its namespaces)."""
        return subprocess.run(["nsenter", "-t", str(self.leader()), "-m", "-u", "-i", "-n", "-p", "--", *cmd],
                              capture_output=True, text=True, timeout=timeout)

    def console_text(self) -> str:
        return self.console.read_text(errors="replace") if self.console.exists() else ""

    def wait_first_boot(self, deadline: float) -> str:
        """'done' or 'failed', from the first boot's state files."""
        state = self.path("var/lib/final-problem")
        while time.monotonic() < deadline:
            if (state / "firstboot.done").exists():
                return "done"
            if (state / "firstboot.failed").exists():
                return "failed"
            if self.proc and self.proc.poll() is not None:
                raise AssertionError(f"{self.name}: the container stopped (status {self.proc.returncode});"
                                     f" console:\n{self.console_text()[-4000:]}")
            time.sleep(1)
        raise AssertionError(f"{self.name}: first boot did not finish in {FIRST_BOOT_TIMEOUT}s;"
                             f" journal:\n{self.journal()[-6000:]}")

    def wait_reboot(self, deadline: float) -> None:
        """Wait until the container's systemd reboots (nspawn then exits), and boot it again."""
        assert self.proc
        try:
            self.proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.name}: no reboot; console:\n{self.console_text()[-4000:]}") from None
        self.start()

    def journal(self, unit: str | None = None) -> str:
        r = self.exec("journalctl", "--no-pager", "-o", "short-monotonic", *(["-u", unit] if unit else []))
        return r.stdout + r.stderr

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            try:
                leader = self.leader()
            except AssertionError:
                leader = None
            # nspawn turns SIGTERM into an orderly poweroff of the container's systemd.
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                # The container's PID 1 is in a session of its own: kill it, and with it
                # every process of its PID namespace, then nspawn.
                if leader:
                    os.kill(leader, signal.SIGKILL)
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.root)], check=False)
            self.mounted = False
        for cg in self.cgroups:
            for dirpath, _dirs, _files in os.walk(cg, topdown=False) if cg.exists() else ():
                try:
                    os.rmdir(dirpath)
                except OSError:
                    pass


class Network:
    """Private network namespaces for nodes that talk to each other: a bridge in a
    namespace of its own, and per node a namespace whose eth0 is plugged into it."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.switch = f"{prefix}-sw"
        self.spaces: list[str] = []
        self._ip("netns", "add", self.switch)
        self.spaces.append(self.switch)
        self._ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        self._ip("-n", self.switch, "link", "set", "br0", "up")

    @staticmethod
    def _ip(*args: str) -> None:
        r = subprocess.run(["ip", *args], capture_output=True, text=True)
        assert r.returncode == 0, f"ip {' '.join(args)}: {r.stderr}"

    def node(self, index: int, address: str) -> str:
        """A namespace with lo up and eth0 at ADDRESS (the inventory's static address,
        which on the LAN NetworkManager would apply)."""
        ns, port = f"{self.prefix}-n{index}", f"p{index}"
        self._ip("netns", "add", ns)
        self.spaces.append(ns)
        self._ip("link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", port, "netns", self.switch)
        self._ip("-n", self.switch, "link", "set", port, "master", "br0", "up")
        self._ip("-n", ns, "link", "set", "lo", "up")
        self._ip("-n", ns, "addr", "add", address, "dev", "eth0")
        self._ip("-n", ns, "link", "set", "eth0", "up")
        return ns

    def close(self) -> None:
        for ns in reversed(self.spaces):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self.spaces.clear()


def four_letter_word(ns: str, address: str, port: int, word: str) -> str:
    """Send a ZooKeeper four-letter word from inside namespace NS; the answer, or ''."""
    code = ("import socket,sys\n"
            "try:\n"
            f"    s = socket.create_connection(({address!r}, {port}), timeout=3); s.sendall({word.encode()!r})\n"
            "    out = b''\n"
            "    while chunk := s.recv(4096): out += chunk\n"
            "    sys.stdout.write(out.decode())\n"
            "except OSError: pass\n")
    r = subprocess.run(["ip", "netns", "exec", ns, "python3", "-c", code], capture_output=True, text=True, timeout=30)
    return r.stdout


# Run inside a node: every file under the folders that change at run time (tmpfs ones
# included) that holds one of the secrets in argv and that a user other than root can
# read, that is readable by others down a path searchable by others.
_SECRET_SCAN = """
import os, stat, sys
secrets = [s.encode() for s in sys.argv[1:]]
def open_to_others(path):
    d = path
    while d != "/":
        d = os.path.dirname(d)
        if not os.stat(d).st_mode & stat.S_IXOTH:
            return False
    return bool(os.stat(path).st_mode & stat.S_IROTH)
for top in ("/boot", "/etc", "/home", "/opt", "/root", "/run", "/srv", "/tmp", "/var"):
    for dirpath, dirs, files in os.walk(top):
        for name in files:
            path = os.path.join(dirpath, name)
            try:
                if os.path.islink(path) or not os.path.isfile(path) or os.path.getsize(path) > 10_000_000:
                    continue
                with open(path, "rb") as f:
                    data = f.read()
            except OSError:
                continue
            if any(s in data for s in secrets) and open_to_others(path):
                print(path)
"""


def secrets_open_to_others(node: Container, secrets: list[str]) -> list[str]:
    """Files of NODE that hold one of SECRETS and that every user of the node can read."""
    r = node.exec("python3", "-c", _SECRET_SCAN, *secrets, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout.split()
