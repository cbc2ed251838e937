"""End-to-end builds: a Raspberry-Pi-OS-shaped image, every role, outputs inspected."""

from __future__ import annotations

import json
import subprocess

import pytest
import yaml

from pi_helpers import (BOOT_OFFSET, BUILD, CMDLINE, PI, env, fake_manifests, fat_exists, fat_extract,
                      fat_read, make_pi_image, run, sample_inventory, sha256, ssh_key, tool)

HOSTS = ["srv-1", "srv-2", "srv-3", "agt-1", "desk", "zk-1"]
K3S_FLAGS = ["cgroup_memory=1", "cgroup_enable=memory"]


def test_build_writes_one_image_per_node_and_nothing_else(built):
    assert sorted(p.name for p in built.out.iterdir()) == sorted(f"{h}.img" for h in HOSTS)
    for host in HOSTS:
        assert f"wrote {built.out / host}.img" in built.result.stderr


def test_build_shows_progress(built):
    for i, host in enumerate(HOSTS, start=1):
        assert f"[{i}/{len(HOSTS)}] preparing {host}" in built.result.stderr


def test_source_image_is_unchanged(built):
    assert sha256(built.source) == built.source_sha


def test_image_with_cloud_init_gets_nocloud_seed_files(built):
    assert "first boot through cloud-init" in built.result.stderr
    for host in HOSTS:
        for name in ("user-data", "meta-data", "network-config", "ssh", "fp/node.env",
                     "fp/firstboot.sh", "fp/versions.env", "config.txt"):
            assert fat_exists(built.image(host), name), f"{name} missing on {host}"


@pytest.mark.parametrize("host", HOSTS)
def test_cmdline_flags_added_exactly_once(built, host):
    words = fat_read(built.image(host), "cmdline.txt").split()
    # The original arguments are kept, in order, at the front.
    assert words[: len(CMDLINE.split())] == CMDLINE.split()
    for flag in K3S_FLAGS:
        expected = 1 if host.startswith(("srv", "agt")) else 0
        assert words.count(flag) == expected, (host, words)
    assert fat_read(built.image(host), "cmdline.txt").count("\n") == 1
    if host == "desk":
        assert words.count("cfg80211.ieee80211_regdom=FR") == 1
    assert not any(w.startswith("systemd.run") for w in words)


@pytest.mark.parametrize("host", HOSTS)
def test_user_data_passes_cloud_init_schema(built, host, tmp_path):
    ud = tmp_path / "user-data"
    ud.write_text(fat_read(built.image(host), "user-data"))
    r = run([tool("cloud-init"), "schema", "--config-file", str(ud)])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Valid cloud-config" in r.stdout
    data = yaml.safe_load(ud.read_text())
    assert data["hostname"] == host
    assert data["ssh_pwauth"] is False
    user = data["users"][0]
    assert user["name"] == "ops" and user["lock_passwd"] is True
    expected_key = ssh_key("bob", "ssh-rsa") if host == "agt-1" else ssh_key("alice")
    assert user["ssh_authorized_keys"] == [expected_key]
    assert data["timezone"] == "Europe/Paris"
    assert data["runcmd"] == [["bash", "/boot/firmware/fp/firstboot.sh"]]


def test_schema_check_rejects_broken_user_data(tmp_path):
    """The schema check used above does fail on an invalid document."""
    ud = tmp_path / "user-data"
    ud.write_text("#cloud-config\nusers: 5\nssh_pwauth: maybe\n")
    r = run([tool("cloud-init"), "schema", "--config-file", str(ud)])
    assert r.returncode != 0


def test_network_config_static_and_wifi(built):
    srv1 = yaml.safe_load(fat_read(built.image("srv-1"), "network-config"))["network"]
    assert srv1["ethernets"]["eth0"]["addresses"] == ["10.20.0.11/24"]
    assert srv1["ethernets"]["eth0"]["routes"] == [{"to": "default", "via": "10.20.0.1"}]
    desk = yaml.safe_load(fat_read(built.image("desk"), "network-config"))["network"]
    assert desk["ethernets"]["eth0"]["dhcp4"] is True
    assert desk["wifis"]["wlan0"]["access-points"] == {"lab-net": {"password": "correct horse battery"}}
    assert desk["wifis"]["wlan0"]["regulatory-domain"] == "FR"


def test_manifests_only_on_first_server(built):
    assert fat_read(built.image("srv-1"), "fp/manifests/00-namespace.yaml") == \
        (built.manifests / "00-namespace.yaml").read_text()
    assert fat_exists(built.image("srv-1"), "fp/manifests/10-redis.yaml")
    assert not fat_exists(built.image("srv-1"), "fp/manifests/README.txt")
    for host in HOSTS[1:]:
        assert not fat_exists(built.image(host), "fp/manifests"), host


def test_k3s_configs_per_role(built):
    first = yaml.safe_load(fat_read(built.image("srv-1"), "fp/k3s-config.yaml"))
    assert first["cluster-init"] is True and "server" not in first
    assert first["node-ip"] == "10.20.0.11"
    assert first["token-file"] == "/etc/rancher/k3s/cluster-token"
    for host in ("srv-2", "srv-3", "agt-1"):
        cfg = yaml.safe_load(fat_read(built.image(host), "fp/k3s-config.yaml"))
        assert cfg["server"] == "https://10.20.0.11:6443", host
        assert "cluster-init" not in cfg
    assert "tls-san" not in yaml.safe_load(fat_read(built.image("agt-1"), "fp/k3s-config.yaml"))
    # Every server runs without Traefik (its host ports 80/443 would keep the edge pending);
    # "disable" is a server option only.
    for host in ("srv-1", "srv-2", "srv-3"):
        assert yaml.safe_load(fat_read(built.image(host), "fp/k3s-config.yaml"))["disable"] == ["traefik"], host
    assert "disable" not in yaml.safe_load(fat_read(built.image("agt-1"), "fp/k3s-config.yaml"))
    for host in ("desk", "zk-1"):
        assert not fat_exists(built.image(host), "fp/k3s-config.yaml")


def test_token_generated_outside_git_never_printed_and_carried_by_k3s_nodes(built):
    token_file = built.secrets / "testlab-k3s-token"
    token = token_file.read_text()
    assert len(token) == 64 and int(token, 16) >= 0
    assert oct(token_file.stat().st_mode & 0o777) == "0o600"
    assert token not in built.result.stdout + built.result.stderr
    for host in ("srv-1", "srv-2", "srv-3", "agt-1"):
        assert fat_read(built.image(host), "fp/k3s-token") == token
        assert built.image(host).stat().st_mode & 0o777 == 0o600, "images carrying the token are private"
    for host in ("desk", "zk-1"):
        assert not fat_exists(built.image(host), "fp/k3s-token")


def test_zookeeper_role_uses_renderer_output(built):
    img = built.image("zk-1")
    args = json.loads(fat_read(img, "fp/zookeeper/args.json"))
    assert args == {"servers": ["10.20.0.31"], "myid": 1}
    assert "server.1=10.20.0.31:2888:3888" in fat_read(img, "fp/zookeeper/zoo.cfg")
    assert fat_read(img, "fp/zookeeper/myid").strip() == "1"
    assert fat_exists(img, "fp/zookeeper/zookeeper.service")


def test_second_run_gives_identical_images_and_reuses_token(built, tmp_path):
    token = (built.secrets / "testlab-k3s-token").read_text()
    r = built.build(out=tmp_path / "again")
    assert r.returncode == 0, r.stderr
    assert "reusing the k3s token" in r.stderr
    assert (built.secrets / "testlab-k3s-token").read_text() == token
    for host in HOSTS:
        assert sha256(tmp_path / "again" / f"{host}.img") == sha256(built.image(host)), host


def test_rebuild_over_existing_output_keeps_flags_once(built, tmp_path):
    """Building again into the same folder replaces images; flags stay single."""
    out = tmp_path / "same"
    for _ in range(2):
        r = built.build(out=out)
        assert r.returncode == 0, r.stderr
    words = fat_read(out / "srv-1.img", "cmdline.txt").split()
    assert words.count("cgroup_enable=memory") == 1


def test_firstrun_mode_on_image_without_cloud_init(tmp_path, fake_python):
    src = make_pi_image(tmp_path / "old.img", cloud_init=False)
    inv = sample_inventory(tmp_path)
    r = run(["bash", str(BUILD), "--image", str(src), "--inventory", str(inv), "--out", str(tmp_path / "out"),
             "--manifests", str(fake_manifests(tmp_path)), "--secrets", str(tmp_path / "s")],
            env=env(PYTHON=str(fake_python)))
    assert r.returncode == 0, r.stderr
    assert "first boot through firstrun" in r.stderr
    for host in HOSTS:
        img = tmp_path / "out" / f"{host}.img"
        words = fat_read(img, "cmdline.txt").split()
        assert words.count("systemd.run=/boot/firmware/fp/firstrun.sh") == 1
        assert words.count("systemd.run_success_action=reboot") == 1
        assert not fat_exists(img, "user-data")
        assert fat_exists(img, "fp/firstrun.sh")
    wifi = fat_read(tmp_path / "out" / "desk.img", "fp/network/fp-wlan0.nmconnection")
    assert "ssid=lab-net" in wifi and "psk=correct horse battery" in wifi
    eth = fat_read(tmp_path / "out" / "srv-1.img", "fp/network/fp-eth0.nmconnection")
    assert "address1=10.20.0.11/24,10.20.0.1" in eth


def test_airgap_files_carried_for_k3s_roles(built, tmp_path):
    air = tmp_path / "air"
    air.mkdir()
    (air / "k3s-arm64").write_bytes(b"#!/bin/sh\necho fake k3s\n")
    (air / "k3s-airgap-images-arm64.tar.zst").write_bytes(b"fake images archive")
    (air / "sha256sum-arm64.txt").write_text(
        f"{sha256(air / 'k3s-arm64')}  k3s-arm64\n"
        f"{sha256(air / 'k3s-airgap-images-arm64.tar.zst')}  k3s-airgap-images-arm64.tar.zst\n")
    out = tmp_path / "out"
    r = run(["bash", str(BUILD), "--image", str(built.source), "--inventory", str(built.inventory),
             "--out", str(out), "--manifests", str(built.manifests), "--secrets", str(built.secrets),
             "--k3s-airgap", str(air)], env=env(PYTHON=str(built.fake_py)))
    assert r.returncode == 0, r.stderr
    assert "match sha256sum-arm64.txt" in r.stderr
    for host in ("srv-1", "agt-1"):
        assert fat_read(out / f"{host}.img", "fp/airgap/k3s") == "#!/bin/sh\necho fake k3s\n"
        assert fat_exists(out / f"{host}.img", "fp/airgap/k3s-airgap-images-arm64.tar.zst")
    assert not fat_exists(out / "desk.img", "fp/airgap")


def _assert_failed_cleanly(r: subprocess.CompletedProcess, out, *needles: str) -> None:
    assert r.returncode != 0
    for needle in needles:
        assert needle in r.stderr, r.stderr
    assert not out.exists() or list(out.iterdir()) == [], list(out.iterdir())


def _build(tmp_path, built, **over):
    args = {"--image": str(built.source), "--inventory": str(built.inventory), "--out": str(tmp_path / "out"),
            "--manifests": str(built.manifests), "--secrets": str(tmp_path / "secrets")}
    args.update(over)
    cmd = ["bash", str(BUILD)]
    for k, v in args.items():
        if v is not None:
            cmd += [k, v]
    return run(cmd, env=env(PYTHON=str(built.fake_py)))


def test_airgap_checksum_mismatch_fails_before_writing(built, tmp_path):
    air = tmp_path / "air"
    air.mkdir()
    (air / "k3s-arm64").write_bytes(b"tampered")
    (air / "k3s-airgap-images-arm64.tar.zst").write_bytes(b"x")
    (air / "sha256sum-arm64.txt").write_text(f"{'0' * 64}  k3s-arm64\n{'1' * 64}  k3s-airgap-images-arm64.tar.zst\n")
    r = _build(tmp_path, built, **{"--k3s-airgap": str(air)})
    _assert_failed_cleanly(r, tmp_path / "out", "k3s-arm64", "0" * 64)


def test_image_checksum_mismatch(built, tmp_path):
    r = _build(tmp_path, built, **{"--image-sha256": "ab" * 32})
    _assert_failed_cleanly(r, tmp_path / "out", "has SHA-256", "ab" * 32)
    assert not (tmp_path / "secrets").exists()


def test_image_checksum_match_is_accepted(built, tmp_path):
    r = _build(tmp_path, built, **{"--image-sha256": built.source_sha.upper()})
    assert r.returncode == 0, r.stderr


def test_image_without_partitions_is_rejected(built, tmp_path):
    blank = tmp_path / "blank.img"
    blank.write_bytes(b"\0" * (1 << 20))
    r = _build(tmp_path, built, **{"--image": str(blank)})
    _assert_failed_cleanly(r, tmp_path / "out", "no partition table")


def test_image_with_wrong_partitions_is_rejected(built, tmp_path):
    img = tmp_path / "linux-only.img"
    with open(img, "wb") as f:
        f.truncate(8 << 20)
    subprocess.run([tool("sfdisk"), "-q", str(img)], input="label: dos\nstart=2048, type=83\n",
                   text=True, check=True, env=env())
    r = _build(tmp_path, built, **{"--image": str(img)})
    _assert_failed_cleanly(r, tmp_path / "out", "two partitions")


def test_image_with_empty_boot_partition_is_rejected(built, tmp_path):
    img = make_pi_image(tmp_path / "nocmd.img")
    subprocess.run([tool("mdel"), "-i", f"{img}@@{BOOT_OFFSET}", "::/cmdline.txt"], check=True,
                   env=env(MTOOLS_SKIP_CHECK="1"))
    r = _build(tmp_path, built, **{"--image": str(img)})
    _assert_failed_cleanly(r, tmp_path / "out", "no cmdline.txt")


def test_missing_manifests_folder(built, tmp_path):
    r = _build(tmp_path, built, **{"--manifests": str(tmp_path / "nope")})
    _assert_failed_cleanly(r, tmp_path / "out", "make synth", str(tmp_path / "nope"))


def test_invalid_inventory_writes_nothing(built, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(built.inventory.read_text().replace("hostname: srv-2", "hostname: srv-1"))
    r = _build(tmp_path, built, **{"--inventory": str(bad)})
    _assert_failed_cleanly(r, tmp_path / "out", "hostname 'srv-1' is already used")
    assert not (tmp_path / "secrets").exists()


def test_failing_renderer_writes_nothing(built, tmp_path):
    r = run(["bash", str(BUILD), "--image", str(built.source), "--inventory", str(built.inventory),
             "--out", str(tmp_path / "out"), "--manifests", str(built.manifests),
             "--secrets", str(tmp_path / "s")], env=env(PYTHON="false"))
    _assert_failed_cleanly(r, tmp_path / "out", "ZooKeeper renderer failed")


def test_boot_partition_too_small_for_payload(built, tmp_path):
    air = tmp_path / "air"
    air.mkdir()
    (air / "k3s-arm64").write_bytes(b"k3s")
    with open(air / "k3s-airgap-images-arm64.tar.zst", "wb") as f:
        f.truncate(80 << 20)  # larger than the 64 MiB boot partition
    r = _build(tmp_path, built, **{"--k3s-airgap": str(air)})
    _assert_failed_cleanly(r, tmp_path / "out", "bytes free")
    assert not list((tmp_path / "out").glob(".*partial"))


def test_missing_tool_fails_with_install_hint(built, tmp_path):
    """With Python but without mtools and the others on PATH, the build stops and says how to install them."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to("/usr/bin/python3")
    r = run(["/bin/bash", str(BUILD), "--image", str(built.source), "--inventory", str(built.inventory)],
            env={"PATH": str(bin_dir), "HOME": str(tmp_path)})
    assert r.returncode != 0
    assert "'sfdisk' was not found" in r.stderr and "'fdisk'" in r.stderr
    assert "sudo make system-deps" in r.stderr


def test_scripts_on_image_are_the_repository_scripts(built, tmp_path):
    boot = fat_extract(built.image("srv-1"), tmp_path / "boot")
    for name in ("firstboot.sh", "firstrun.sh"):
        assert (boot / "fp" / name).read_bytes() == (PI / "firstboot" / name).read_bytes()
    assert (boot / "fp" / "versions.env").read_bytes() == (PI / "versions.env").read_bytes()


def test_image_url_is_downloaded_checked_and_cached(built, tmp_path):
    """A file:// URL exercises the download path without any network."""
    url = built.source.as_uri()
    out = tmp_path / "out"
    r = _build(tmp_path, built, **{"--image": None, "--image-url": url, "--image-sha256": built.source_sha,
                                   "--secrets": str(built.secrets)})
    assert r.returncode == 0, r.stderr
    assert "downloading" in r.stderr
    assert sha256(out / ".cache" / built.source.name) == built.source_sha
    assert sha256(out / "srv-1.img") == sha256(built.image("srv-1"))


def test_image_url_checksum_mismatch_keeps_nothing(built, tmp_path):
    r = _build(tmp_path, built, **{"--image": None, "--image-url": built.source.as_uri(),
                                   "--image-sha256": "0" * 64})
    assert r.returncode != 0 and "has SHA-256" in r.stderr
    out = tmp_path / "out"
    assert not any(p.suffix == ".img" for p in out.rglob("*")), list(out.rglob("*"))


def test_image_url_needs_checksum(built, tmp_path):
    r = _build(tmp_path, built, **{"--image": None, "--image-url": built.source.as_uri()})
    assert r.returncode != 0 and "needs --image-sha256" in r.stderr


def test_xz_compressed_source(built, tmp_path):
    xz = tool("xz")
    packed = tmp_path / "raspios.img.xz"
    with open(packed, "wb") as f:
        subprocess.run([xz, "-0", "-T2", "-c", str(built.source)], stdout=f, check=True)
    r = _build(tmp_path, built, **{"--image": str(packed), "--secrets": str(built.secrets)})
    assert r.returncode == 0, r.stderr
    assert "unpacking" in r.stderr
    assert sha256(tmp_path / "out" / "srv-1.img") == sha256(built.image("srv-1"))


def test_zookeeper_only_ensemble_without_kubernetes(built, tmp_path):
    inv = tmp_path / "zk.yaml"
    inv.write_text(f"""
cluster: {{name: zk}}
defaults: {{ssh_authorized_keys: ["{ssh_key('carol')}"]}}
nodes:
  - {{hostname: zk-a, role: zookeeper, network: {{address: 10.30.0.1/24, gateway: 10.30.0.254}}}}
  - {{hostname: zk-b, role: zookeeper}}
  - {{hostname: zk-c, role: zookeeper, network: {{address: 10.30.0.3/24, gateway: 10.30.0.254}}}}
""")
    out = tmp_path / "out"
    # No manifests folder and no secrets are needed without k3s nodes.
    r = _build(tmp_path, built, **{"--inventory": str(inv), "--manifests": str(tmp_path / "none")})
    assert r.returncode == 0, r.stderr
    assert not (tmp_path / "secrets").exists()
    servers = ["10.30.0.1", "zk-b.local", "10.30.0.3"]
    for myid, host in enumerate(("zk-a", "zk-b", "zk-c"), start=1):
        img = out / f"{host}.img"
        assert json.loads(fat_read(img, "fp/zookeeper/args.json")) == {"servers": servers, "myid": myid}
        assert fat_read(img, "fp/zookeeper/myid").strip() == str(myid)
        assert "cgroup_enable=memory" not in fat_read(img, "cmdline.txt")
        assert not fat_exists(img, "fp/k3s-token")


def test_renderer_missing_output_is_an_error(built, tmp_path):
    lazy = tmp_path / "lazy-python"
    lazy.write_text("#!/bin/sh\nexit 0\n")
    lazy.chmod(0o755)
    r = run(["bash", str(BUILD), "--image", str(built.source), "--inventory", str(built.inventory),
             "--out", str(tmp_path / "out"), "--manifests", str(built.manifests),
             "--secrets", str(tmp_path / "s")], env=env(PYTHON=str(lazy)))
    _assert_failed_cleanly(r, tmp_path / "out", "did not write 'zoo.cfg'")


def test_renderer_unit_that_cannot_write_its_data_log_is_an_error(built, tmp_path, fake_python):
    """A unit under ProtectSystem=strict whose ReadWritePaths leave out zoo.cfg's
    dataLogDir could never start; the build stops instead of writing such an image."""
    narrow = tmp_path / "narrow-python"
    narrow.write_text(fake_python.read_text().replace(
        "ReadWritePaths=/var/lib/zookeeper/data /var/lib/zookeeper/datalog", "ReadWritePaths=/var/lib/zookeeper/data"))
    narrow.chmod(0o755)
    r = run(["bash", str(BUILD), "--image", str(built.source), "--inventory", str(built.inventory),
             "--out", str(tmp_path / "out"), "--manifests", str(built.manifests),
             "--secrets", str(tmp_path / "s")], env=env(PYTHON=str(narrow)))
    _assert_failed_cleanly(r, tmp_path / "out", "could not write zoo.cfg's dataLogDir '/var/lib/zookeeper/datalog'",
                           "ReadWritePaths='/var/lib/zookeeper/data'")


def test_default_inventory_of_make_pi_images_is_git_ignored():
    """make pi-images reads pi/inventory.yaml by default; with keys and a Wi-Fi
    passphrase in it, git must not offer it for a commit."""
    makefile = (PI.parent / "Makefile").read_text()
    assert "PI_INVENTORY ?= pi/inventory.yaml" in makefile
    r = run(["git", "-C", str(PI.parent), "check-ignore", "-q", "pi/inventory.yaml"])
    assert r.returncode == 0, "pi/inventory.yaml is not ignored by git"


def test_make_pi_images_without_inventory_says_what_to_do(tmp_path):
    r = run(["make", "-C", str(PI.parent), "--no-print-directory", "pi-images-args", "PI_IMAGE=x.img",
             f"PI_INVENTORY={tmp_path / 'none.yaml'}"])
    assert r.returncode == 2
    assert "copy pi/inventory.example.yaml" in r.stdout and "git ignores pi/inventory.yaml" in r.stdout


def test_zookeeper_ensemble_with_the_project_renderer(built, tmp_path):
    """The zookeeper role with the real final_problem.renderers.zookeeper (not the double)."""
    import sys

    inv = tmp_path / "zk.yaml"
    inv.write_text(f"""
cluster: {{name: zk}}
defaults: {{ssh_authorized_keys: ["{ssh_key('dave')}"]}}
nodes:
  - {{hostname: zk-a, role: zookeeper, network: {{address: 10.40.0.1/24, gateway: 10.40.0.254}}}}
  - {{hostname: zk-b, role: zookeeper, network: {{address: 10.40.0.2/24, gateway: 10.40.0.254}}}}
  - {{hostname: zk-c, role: zookeeper, network: {{address: 10.40.0.3/24, gateway: 10.40.0.254}}}}
""")
    out = tmp_path / "out"
    cmd = ["bash", str(BUILD), "--image", str(built.source), "--inventory", str(inv), "--out", str(out),
           "--manifests", str(tmp_path / "none"), "--secrets", str(tmp_path / "secrets")]
    r = run(cmd, env=env(PYTHON=sys.executable))
    assert r.returncode == 0, r.stderr
    for myid, host in enumerate(("zk-a", "zk-b", "zk-c"), start=1):
        img = out / f"{host}.img"
        zoo_cfg = fat_read(img, "fp/zookeeper/zoo.cfg")
        for n in (1, 2, 3):
            assert f"server.{n}=10.40.0.{n}:2888:3888" in zoo_cfg
        assert "4lw.commands.whitelist=ruok,srvr,mntr" in zoo_cfg
        assert fat_read(img, "fp/zookeeper/myid").strip() == str(myid)
        assert "ExecStart=" in fat_read(img, "fp/zookeeper/zookeeper.service")


def test_workstation_carries_the_project_clients_and_pinned_libraries(built):
    img = built.image("desk")
    assert "name = \"final-problem\"" in fat_read(img, "fp/project/pyproject.toml")
    assert "def main" in fat_read(img, "fp/project/final_problem/clients/redis.py")
    pins = fat_read(img, "fp/project/requirements-clients.txt").split()
    assert {p.split("==")[0] for p in pins} == {"boto3", "kazoo", "kafka-python", "redis", "PyYAML"}
    assert all("==" in p for p in pins)
    assert not fat_exists(img, "fp/project/final_problem/__pycache__")
    assert not fat_exists(built.image("srv-1"), "fp/project")


@pytest.mark.parametrize("host", HOSTS)
def test_config_txt_pins_the_pi5_kernel_for_envoy(built, host):
    text = fat_read(built.image(host), "config.txt")
    # The source image's settings are kept, the kernel block follows them once.
    assert text.startswith("[all]\narm_64bit=1\n")
    assert text.count("kernel=kernel_2712.img") == 1
    assert text.splitlines()[-3:] == ["kernel=kernel_2712.img", "[all]", "# END final-problem"]
