"""Shared helpers for the Raspberry Pi image builder tests.

Images are made here without root: a sparse file, an MBR written by sfdisk, a FAT32
boot partition written by mkfs.vfat at its offset and filled by mtools, and an ext4 root
made by mkfs.ext4 -d from a folder, also at its offset.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import stat
import struct
import subprocess
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PI = REPO / "pi"
BUILD = PI / "build.sh"

# Program -> Debian package that provides it (also listed in deps/debian-packages.txt).
TOOLS = {
    "sfdisk": "fdisk",
    "mcopy": "mtools",
    "mdir": "mtools",
    "mdel": "mtools",
    "mkfs.vfat": "dosfstools",
    "mkfs.ext4": "e2fsprogs",
    "debugfs": "e2fsprogs",
    "cloud-init": "cloud-init",
    "shellcheck": "shellcheck",
    "xz": "xz-utils",
}

# Sectors of 512 bytes, laid out like Raspberry Pi OS (boot first, root after it).
BOOT_START = 8192
BOOT_SECTORS = 131072  # 64 MiB, large enough for FAT32
ROOT_START = BOOT_START + BOOT_SECTORS
ROOT_MIB = 24
IMAGE_MIB = 4 + 64 + ROOT_MIB + 4
BOOT_OFFSET = BOOT_START * 512
CMDLINE = "console=serial0,115200 console=tty1 root=PARTUUID=8a438930-02 rootfstype=ext4 fsck.repair=yes rootwait quiet"

TOOL_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])


def tool(name: str) -> str:
    """Path of a required program; fail (never skip) with how to install it."""
    found = shutil.which(name, path=TOOL_PATH)
    if not found:
        pytest.fail(f"'{name}' is not installed; it comes with the Debian package "
                    f"'{TOOLS.get(name, name)}' - 'sudo make system-deps' installs it", pytrace=False)
    return found


def env(**extra: str) -> dict[str, str]:
    e = {**os.environ, "PATH": TOOL_PATH}
    e.update(extra)
    return e


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    kw.setdefault("env", env())
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def ssh_key(seed: str, ktype: str = "ssh-ed25519") -> str:
    """A structurally valid public key line of KTYPE (nobody has the private key)."""
    def s(b: bytes) -> bytes:
        return struct.pack(">I", len(b)) + b

    def filler(n: int) -> bytes:
        out = b""
        while len(out) < n:
            out += hashlib.sha256(f"{seed}{len(out)}".encode()).digest()
        return out[:n]

    fields = {
        "ssh-ed25519": s(filler(32)),
        # mpint e = 65537, mpint n of 2048 bits (top bit set, so a leading zero byte).
        "ssh-rsa": s(b"\x01\x00\x01") + s(b"\x00\x80" + filler(255)),
        "ecdsa-sha2-nistp256": s(b"nistp256") + s(b"\x04" + filler(64)),
    }[ktype]
    blob = s(ktype.encode()) + fields
    return f"{ktype} {base64.b64encode(blob).decode()} {seed}@test"


def make_pi_image(path: Path, *, cloud_init: bool = True, cmdline: str = CMDLINE) -> Path:
    for t in ("sfdisk", "mkfs.vfat", "mcopy", "mkfs.ext4"):
        tool(t)
    work = path.parent / (path.name + ".parts")
    root = work / "root"
    (root / "etc").mkdir(parents=True)
    (root / "boot" / "firmware").mkdir(parents=True)
    (root / "etc" / "os-release").write_text('PRETTY_NAME="Debian GNU/Linux 13 (trixie)"\n')
    if cloud_init:
        (root / "usr" / "bin").mkdir(parents=True)
        (root / "usr" / "bin" / "cloud-init").write_text("#!/usr/bin/python3\n")
    (work / "cmdline.txt").write_text(cmdline + "\n")
    (work / "config.txt").write_text("[all]\narm_64bit=1\n")
    with open(path, "wb") as f:
        f.truncate(IMAGE_MIB * 1024 * 1024)
    layout = f"label: dos\nstart={BOOT_START}, size={BOOT_SECTORS}, type=c\nstart={ROOT_START}, type=83\n"
    subprocess.run([tool("sfdisk"), "-q", str(path)], input=layout, text=True, check=True, env=env())
    subprocess.run([tool("mkfs.vfat"), "-F", "32", "--offset", str(BOOT_START), "-n", "BOOTFS",
                    str(path), str(BOOT_SECTORS // 2)], check=True, capture_output=True, env=env())
    subprocess.run([tool("mcopy"), "-i", f"{path}@@{BOOT_OFFSET}", str(work / "cmdline.txt"),
                    str(work / "config.txt"), "::/"], check=True, env=env(MTOOLS_SKIP_CHECK="1"))
    subprocess.run([tool("mkfs.ext4"), "-q", "-F", "-d", str(root), "-E", f"offset={ROOT_START * 512}",
                    str(path), f"{ROOT_MIB}M"], check=True, capture_output=True, env=env())
    shutil.rmtree(work)
    # A fixed, old time stamp: the builder derives the boot files' times from it.
    os.utime(path, (1_600_000_000, 1_600_000_000))
    return path


def fat_read(image: Path, name: str) -> str:
    r = run([tool("mcopy"), "-n", "-i", f"{image}@@{BOOT_OFFSET}", f"::/{name}", "-"],
            env=env(MTOOLS_SKIP_CHECK="1"))
    assert r.returncode == 0, f"{name} missing on {image.name}: {r.stderr}"
    return r.stdout


def fat_exists(image: Path, name: str) -> bool:
    r = run([tool("mdir"), "-b", "-i", f"{image}@@{BOOT_OFFSET}", f"::/{name}"], env=env(MTOOLS_SKIP_CHECK="1"))
    return r.returncode == 0


def fat_extract(image: Path, dest: Path) -> Path:
    """Copy the whole boot partition into DEST (as the Pi sees it mounted)."""
    dest.mkdir(parents=True, exist_ok=True)
    r = run([tool("mcopy"), "-s", "-n", "-m", "-i", f"{image}@@{BOOT_OFFSET}", "::/*", str(dest)],
            env=env(MTOOLS_SKIP_CHECK="1"))
    assert r.returncode == 0, r.stderr
    return dest


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_exe(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip())
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


# Test double of the project's ZooKeeper renderer (final_problem.renderers.zookeeper,
# an external program to this builder). It honours the same command-line contract,
# writes the three files the builder expects and records its arguments so the test can
# check what the builder passed. The real module replaces it outside these tests.
FAKE_RENDERER = """
#!/usr/bin/env python3
import argparse, json, pathlib, sys
assert sys.argv[1:3] == ["-m", "final_problem.renderers.zookeeper"], sys.argv
p = argparse.ArgumentParser()
p.add_argument("--servers", required=True)
p.add_argument("--myid", required=True, type=int)
p.add_argument("--out", required=True, type=pathlib.Path)
a = p.parse_args(sys.argv[3:])
a.out.mkdir(parents=True, exist_ok=True)
servers = a.servers.split(",")
lines = ["tickTime=2000", "dataDir=/var/lib/zookeeper/data", "dataLogDir=/var/lib/zookeeper/datalog",
         "clientPort=2181"]
lines += [f"server.{i}={h}:2888:3888" for i, h in enumerate(servers, 1)]
(a.out / "zoo.cfg").write_text("\\n".join(lines) + "\\n")
(a.out / "myid").write_text(f"{a.myid}\\n")
(a.out / "zookeeper.service").write_text(
    "[Unit]\\nDescription=ZooKeeper\\n[Service]\\nType=exec\\nUser=zookeeper\\nProtectSystem=strict\\n"
    "ReadWritePaths=/var/lib/zookeeper/data /var/lib/zookeeper/datalog\\n"
    "ExecStart=/usr/share/zookeeper/bin/zkServer.sh start-foreground /etc/zookeeper/conf/zoo.cfg\\n")
(a.out / "args.json").write_text(json.dumps({"servers": servers, "myid": a.myid}))
"""


def sample_inventory(tmp: Path) -> Path:
    inv = f"""
cluster:
  name: testlab
defaults:
  user: ops
  timezone: Europe/Paris
  ssh_authorized_keys:
    - {ssh_key("alice")}
nodes:
  - hostname: srv-1
    role: server
    network: {{address: 10.20.0.11/24, gateway: 10.20.0.1, dns: [10.20.0.1]}}
  - hostname: srv-2
    role: server
    network: {{address: 10.20.0.12/24, gateway: 10.20.0.1}}
  - hostname: srv-3
    role: server
  - hostname: agt-1
    role: agent
    ssh_authorized_keys: ["{ssh_key("bob", "ssh-rsa")}"]
  - hostname: desk
    role: workstation
    wifi: {{ssid: lab-net, password: "correct horse battery", country: FR}}
  - hostname: zk-1
    role: zookeeper
    network: {{address: 10.20.0.31/24, gateway: 10.20.0.1}}
"""
    path = tmp / "inventory.yaml"
    path.write_text(inv)
    return path


def fake_manifests(tmp: Path) -> Path:
    d = tmp / "dist-pi"
    d.mkdir()
    (d / "00-namespace.yaml").write_text("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: platform\n")
    (d / "10-redis.yaml").write_text("apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: redis\n  namespace: platform\n")
    (d / "README.txt").write_text("not a manifest\n")
    return d


class Built:
    """One build of every role from the sample inventory, shared by the tests."""

    def __init__(self, base: Path, fake_py: Path):
        self.base = base
        self.source = make_pi_image(base / "raspios.img")
        self.source_sha = sha256(self.source)
        self.inventory = sample_inventory(base)
        self.manifests = fake_manifests(base)
        self.secrets = base / "secrets"
        self.out = base / "out"
        self.fake_py = fake_py
        self.result = self.build()

    def build(self, out: Path | None = None) -> subprocess.CompletedProcess:
        return run(["bash", str(BUILD), "--image", str(self.source), "--inventory", str(self.inventory),
                    "--out", str(out or self.out), "--manifests", str(self.manifests),
                    "--secrets", str(self.secrets)], env=env(PYTHON=str(self.fake_py)))

    def image(self, host: str) -> Path:
        return self.out / f"{host}.img"
