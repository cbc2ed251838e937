"""Inventory validation and rendering (pi/inventory.py)."""

from __future__ import annotations

import base64
import importlib.util
import shutil
import struct
import subprocess
import sys

import pytest
import yaml

from pi_helpers import PI, run, ssh_key

spec = importlib.util.spec_from_file_location("pi_inventory", PI / "inventory.py")
inventory = importlib.util.module_from_spec(spec)
sys.modules["pi_inventory"] = inventory
spec.loader.exec_module(inventory)

KEY = ssh_key("alice")


def nodes(*entries: dict, **top) -> dict:
    return {"defaults": {"ssh_authorized_keys": [KEY]}, "nodes": list(entries), **top}


def errors_of(data: dict, tmp_path=None) -> list[str]:
    from pathlib import Path
    with pytest.raises(inventory.InventoryError) as exc:
        inventory.validate(data, Path(tmp_path or "."))
    return exc.value.errors


def one_error(data: dict, *needles: str) -> str:
    errs = errors_of(data)
    joined = "\n".join(errs)
    for needle in needles:
        assert needle in joined, joined
    return joined


def test_example_inventory_is_valid():
    r = run([sys.executable, str(PI / "inventory.py"), "check", str(PI / "inventory.example.yaml")])
    assert r.returncode == 0, r.stderr
    plan = run([sys.executable, str(PI / "inventory.py"), "plan", str(PI / "inventory.example.yaml")]).stdout
    rows = [line.split("\t") for line in plan.splitlines()]
    assert [r[1] for r in rows] == ["server", "server", "server", "agent", "workstation"]
    assert [r[2] for r in rows] == ["true", "false", "false", "false", "false"]


def test_valid_minimal_server():
    inv = inventory.validate(nodes({"hostname": "a", "role": "server"}), PI)
    assert inv.nodes[0].k3s_init and inv.server_url == "https://a.local:6443"
    assert inv.nodes[0].user == "pi" and inv.nodes[0].timezone == "Etc/UTC"


def _truncated(key: str, drop: int) -> str:
    """KEY with its last DROP bytes cut off, re-encoded as valid base64."""
    ktype, b64, comment = key.split()
    raw = base64.b64decode(b64)
    return f"{ktype} {base64.b64encode(raw[:-drop]).decode()} {comment}"


def _with_field(ktype: str, *fields: bytes) -> str:
    blob = b"".join(struct.pack(">I", len(f)) + f for f in (ktype.encode(), *fields))
    return f"{ktype} {base64.b64encode(blob).decode()} x@test"


@pytest.mark.parametrize("key,needle", [
    ("ssh-ed25519", "at least a key type and the base64 key"),
    ("ssh-ed25519 !!!notbase64", "not valid base64"),
    ("ssh-dss AAAAB3NzaC1kc3MAAACBAP", "unknown key type 'ssh-dss'"),
    (ssh_key("x", "ssh-rsa").replace("ssh-rsa", "ssh-ed25519", 1), "does not encode a ssh-ed25519 key"),
    ("", "is empty"),
    # Cut short by a copy: still valid base64, but the length fields promise more.
    (_truncated(ssh_key("x"), 4), "is truncated: its key part ends 4 byte(s) short of a 32-byte field"),
    (_truncated(ssh_key("x", "ssh-rsa"), 100), "is truncated"),
    (_truncated(ssh_key("x", "ecdsa-sha2-nistp256"), 1), "is truncated"),
    ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE", "not valid base64"),
    ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5", "is truncated: its key part ends inside a length field"),
    (_with_field("ssh-ed25519", b"k" * 31), "is not a 32-byte Ed25519 key"),
    (_with_field("ssh-rsa", b"\x01\x00\x01", b"\x00\x80" + b"n" * 63), "512-bit RSA modulus"),
    (_with_field("ecdsa-sha2-nistp256", b"nistp384", b"\x04" + b"q" * 96), "names a curve other than nistp256"),
    (_with_field("ecdsa-sha2-nistp256", b"nistp256", b"\x04" + b"q" * 63), "64-byte point"),
    (_with_field("ssh-ed25519", b"k" * 32, b"extra"), "byte(s) after the key"),
    (_with_field("sk-ssh-ed25519@openssh.com", b"k" * 32, b""), "empty security-key application"),
])
def test_malformed_ssh_key(key, needle):
    data = {"nodes": [{"hostname": "a", "role": "server", "ssh_authorized_keys": [key]}]}
    one_error(data, "nodes[0] (a): SSH key 1", needle)


@pytest.mark.parametrize("ktype,bits", [("ed25519", None), ("rsa", "1024"), ("rsa", "3072"), ("ecdsa", "256"),
                                        ("ecdsa", "384"), ("ecdsa", "521")])
def test_keys_from_ssh_keygen_are_accepted(tmp_path, ktype, bits):
    """Real keys, as OpenSSH writes them, pass the structural check; cut by one
    base64 group, each is rejected."""
    keygen = shutil.which("ssh-keygen")
    assert keygen, "ssh-keygen is missing; it comes with the Debian package openssh-client (sudo make system-deps)"
    key_file = tmp_path / "id"
    subprocess.run([keygen, "-q", "-t", ktype, *(["-b", bits] if bits else []), "-N", "", "-C", "me@laptop",
                    "-f", str(key_file)], check=True)
    line = (tmp_path / "id.pub").read_text().strip()
    assert inventory.check_ssh_key(line) is None
    ktype_name, b64, comment = line.split()
    assert "truncated" in inventory.check_ssh_key(f"{ktype_name} {b64[:-8]} {comment}")


def test_missing_ssh_key():
    one_error({"nodes": [{"hostname": "a", "role": "server"}]}, "no SSH public key", "id_ed25519.pub")


def test_ssh_key_file_relative_to_inventory(tmp_path):
    (tmp_path / "me.pub").write_text(KEY + "\n")
    data = {"nodes": [{"hostname": "a", "role": "server", "ssh_authorized_key_files": ["me.pub"]}]}
    inv = inventory.validate(data, tmp_path)
    assert inv.nodes[0].keys == [KEY]
    data["nodes"][0]["ssh_authorized_key_files"] = ["missing.pub"]
    assert "'missing.pub' cannot be read" in "\n".join(errors_of(data, tmp_path))


def test_duplicate_hostnames():
    one_error(nodes({"hostname": "a", "role": "server"}, {"hostname": "a", "role": "agent"}),
              "nodes[1]: hostname 'a' is already used by nodes[0]")


def test_duplicate_addresses():
    net = {"address": "10.0.0.5/24", "gateway": "10.0.0.1"}
    one_error(nodes({"hostname": "a", "role": "server", "network": net},
                    {"hostname": "b", "role": "agent", "network": dict(net, address="10.0.0.5/16")}),
              "address 10.0.0.5 is given to both 'a' and 'b'")


def test_no_server():
    one_error(nodes({"hostname": "a", "role": "agent"}), "no node has role 'server'")
    one_error(nodes({"hostname": "w", "role": "workstation"}), "no node has role 'server'")


def test_zookeeper_only_inventory_needs_no_server():
    inv = inventory.validate(nodes(*({"hostname": f"zk-{i}", "role": "zookeeper"} for i in (1, 2, 3)),
                                   {"hostname": "w", "role": "workstation"}), PI)
    assert [n.zk_myid for n in inv.nodes[:3]] == [1, 2, 3]
    assert inv.zk_servers() == ["zk-1.local", "zk-2.local", "zk-3.local"]
    assert inv.server_url == ""


def test_zookeeper_needs_odd_ensemble_and_consistent_ids():
    one_error(nodes({"hostname": "z1", "role": "zookeeper"}, {"hostname": "z2", "role": "zookeeper"}),
              "2 zookeeper nodes", "odd number")
    one_error(nodes(*({"hostname": f"z{i}", "role": "zookeeper", "zookeeper_id": 7} for i in (1, 2, 3))),
              "repeat")
    one_error(nodes({"hostname": "s", "role": "server", "zookeeper_id": 1}), "only for role zookeeper")


def test_explicit_zookeeper_ids_order_servers():
    inv = inventory.validate(nodes({"hostname": "z1", "role": "zookeeper", "zookeeper_id": 3},
                                   {"hostname": "z2", "role": "zookeeper", "zookeeper_id": 1},
                                   {"hostname": "z3", "role": "zookeeper", "zookeeper_id": 2}), PI)
    assert inv.zk_servers() == ["z2.local", "z3.local", "z1.local"]


def test_unknown_role_and_bad_hostname():
    errs = one_error(nodes({"hostname": "Bad_Name", "role": "master"}), "role 'master' is not one of", "hostname 'Bad_Name'")
    assert "server, agent, workstation, zookeeper" in errs


@pytest.mark.parametrize("network,needle", [
    ({"address": "10.0.0.5"}, "prefix length"),
    ({"address": "10.0.0.300/24", "gateway": "10.0.0.1"}, "prefix length"),
    ({"address": "10.0.0.5/24"}, "needs network.gateway"),
    ({"address": "10.0.0.5/24", "gateway": "10.9.0.1"}, "outside 10.0.0.0/24"),
    ({"address": "10.0.0.5/24", "gateway": "10.0.0.1", "dns": ["nope"]}, "dns entry 'nope'"),
    ({"interface": "wlan0"}, "no wifi"),
    ("static", "must be 'dhcp' or a mapping"),
    ({"address": "10.0.0.0/24", "gateway": "10.0.0.1"}, "is the network address of 10.0.0.0/24"),
    ({"address": "10.0.0.255/24", "gateway": "10.0.0.1"}, "is the broadcast address"),
    ({"address": "10.0.0.1/24", "gateway": "10.0.0.1"}, "the node's own address"),
    ({"address": "10.0.0.5/24", "gw": "10.0.0.1"}, "network: unknown key(s) gw"),
])
def test_bad_network(network, needle):
    one_error(nodes({"hostname": "a", "role": "server", "network": network}), needle)


@pytest.mark.parametrize("wifi,needle", [
    ({"ssid": "x", "password": "short", "country": "GB"}, "8 to 63 printable ASCII characters"),
    ({"ssid": "x", "password": "line\nbreak inside", "country": "GB"}, "8 to 63 printable ASCII characters"),
    ({"ssid": "two\nlines", "password": "long enough", "country": "GB"}, "printable characters"),
    ({"ssid": "x", "password": "long enough", "country": "GB", "pasword": "x"}, "wifi: unknown key(s) pasword"),
    ({"ssid": "x", "password": "long enough", "country": "gb"}, "two-letter country code"),
    ({"ssid": "", "password": "long enough", "country": "GB"}, "1 to 32 bytes"),
    ({"ssid": "x", "password": "long enough"}, "country None"),
])
def test_bad_wifi(wifi, needle):
    one_error(nodes({"hostname": "a", "role": "server", "wifi": wifi}), needle)


def test_unknown_keys_are_errors_not_ignored():
    errs = one_error(nodes({"hostname": "a", "role": "server", "netwrok": {"address": "dhcp"}},
                           cluster={"nmae": "x"}, extra=1),
                     "nodes[0] (a): unknown key(s) netwrok", "cluster: unknown key(s) nmae", "inventory: unknown key(s) extra")
    assert "allowed: hostname, role" in errs


def test_defaults_cannot_name_a_node():
    data = nodes({"hostname": "a", "role": "server"})
    data["defaults"]["hostname"] = "x"
    one_error(data, "defaults: unknown key(s) hostname")


def test_defaults_network_applies_to_every_node():
    data = nodes({"hostname": "a", "role": "server"}, {"hostname": "b", "role": "agent"})
    data["defaults"]["network"] = {"interface": "eth0", "address": "dhcp"}
    inv = inventory.validate(data, PI)
    assert [n.network.mode for n in inv.nodes] == ["dhcp", "dhcp"]
    data["defaults"]["network"] = {"address": "10.0.0.5/24", "gateway": "10.0.0.1"}
    one_error(data, "address 10.0.0.5 is given to both 'a' and 'b'")


def test_unknown_timezone_is_an_error():
    one_error(nodes({"hostname": "a", "role": "server", "timezone": "Europe/Atlantis"}),
              "timezone 'Europe/Atlantis' is not in the tz database")


@pytest.mark.parametrize("user", ["root", "zookeeper", "daemon"])
def test_system_account_as_user_is_an_error(user):
    one_error(nodes({"hostname": "a", "role": "server", "user": user}), f"user {user!r} must be", "e.g. 'pi'")


def test_all_errors_reported_together():
    errs = errors_of(nodes({"hostname": "a", "role": "server", "timezone": "Not a zone"},
                           {"hostname": "a", "role": "bogus"}))
    assert len(errs) >= 3


def test_malformed_yaml_cli(tmp_path):
    bad = tmp_path / "inv.yaml"
    bad.write_text("nodes:\n  - hostname: a\n    role: [server\n")
    r = run([sys.executable, str(PI / "inventory.py"), "check", str(bad)])
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert lines == [f"inventory error: {bad}:4:1: not valid YAML: while parsing a flow sequence expected ',' or ']', but got '<stream end>'"], lines
    assert "<unicode string>" not in r.stderr


def test_build_reports_yaml_error_last(tmp_path):
    bad = tmp_path / "inv.yaml"
    bad.write_text("nodes:\n  - hostname: a\n   role: server\n")
    r = run(["bash", str(PI / "build.sh"), "--image", str(tmp_path / "none.img"), "--inventory", str(bad)])
    assert r.returncode == 1
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f"inventory error: {bad}:3:4: not valid YAML: while parsing a block collection"), r.stderr


def test_missing_inventory_cli(tmp_path):
    r = run([sys.executable, str(PI / "inventory.py"), "check", str(tmp_path / "none.yaml")])
    assert r.returncode == 2 and "cannot read inventory" in r.stderr


def test_server_url_override_and_validation():
    data = nodes({"hostname": "a", "role": "server"}, {"hostname": "b", "role": "agent"},
                 cluster={"server_url": "https://vip.lan:6443"})
    inv = inventory.validate(data, PI)
    assert inventory.k3s_config(inv, inv.nodes[1])["server"] == "https://vip.lan:6443"
    data["cluster"]["server_url"] = "http://x"
    one_error(data, "must look like https://HOST:6443")


def test_servers_disable_traefik_and_keep_servicelb():
    # The edge Envoy's LoadBalancer Service needs host port 80, which Traefik's would hold.
    data = nodes({"hostname": "a", "role": "server"}, {"hostname": "b", "role": "server"},
                 {"hostname": "c", "role": "agent"})
    inv = inventory.validate(data, PI)
    for server in inv.nodes[:2]:
        assert inventory.k3s_config(inv, server)["disable"] == ["traefik"]
    # "disable" is a server option; an agent's config has none.
    assert "disable" not in inventory.k3s_config(inv, inv.nodes[2])


def test_even_server_count_warns(capsys):
    inventory.validate(nodes({"hostname": "a", "role": "server"}, {"hostname": "b", "role": "server"}), PI)
    assert "odd number" in capsys.readouterr().err


def test_render_firstrun_mode_writes_no_cloud_init_files(tmp_path):
    inv = inventory.validate(nodes({"hostname": "a", "role": "server",
                                    "wifi": {"ssid": "n", "password": "12345678", "country": "DE"}}), PI)
    inventory.render(inv, "a", tmp_path, "firstrun", "/boot")
    assert not (tmp_path / "user-data").exists()
    env = (tmp_path / "fp" / "node.env").read_text()
    assert "FP_WIFI_COUNTRY=DE" in env and "FP_FIRSTBOOT_MODE=firstrun" in env
    assert (tmp_path / "fp" / "network" / "fp-wlan0.nmconnection").exists()
    assert not (tmp_path / "fp" / "network" / "fp-eth0.nmconnection").exists()


def test_render_quotes_shell_values(tmp_path):
    inv = inventory.validate(nodes({"hostname": "a", "role": "server", "timezone": "America/Port-au-Prince"}), PI)
    inventory.render(inv, "a", tmp_path, "cloud-init", "/boot/firmware")
    r = run(["bash", "-c", f'. "{tmp_path}/fp/node.env"; printf %s "$FP_TIMEZONE|$FP_K3S_SERVER_URL"'])
    assert r.stdout == "America/Port-au-Prince|https://a.local:6443"


def test_instance_id_changes_with_configuration(tmp_path):
    inv = inventory.validate(nodes({"hostname": "a", "role": "server"}), PI)
    inventory.render(inv, "a", tmp_path / "1", "cloud-init", "/boot/firmware")
    inv.nodes[0].timezone = "Europe/Berlin"
    inventory.render(inv, "a", tmp_path / "2", "cloud-init", "/boot/firmware")
    ids = [yaml.safe_load((tmp_path / d / "meta-data").read_text())["instance-id"] for d in ("1", "2")]
    assert ids[0] != ids[1] and all(i.startswith("fp-a-") for i in ids)
