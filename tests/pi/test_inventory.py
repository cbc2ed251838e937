"""Inventory validation and rendering (pi/inventory.py)."""

from __future__ import annotations

import importlib.util
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


@pytest.mark.parametrize("key,needle", [
    ("ssh-ed25519", "at least a key type and the base64 key"),
    ("ssh-ed25519 !!!notbase64", "not valid base64"),
    ("ssh-dss AAAAB3NzaC1kc3MAAACBAP", "unknown key type 'ssh-dss'"),
    (ssh_key("x", "ssh-rsa").replace("ssh-rsa", "ssh-ed25519", 1), "does not encode a ssh-ed25519 key"),
    ("", "is empty"),
])
def test_malformed_ssh_key(key, needle):
    data = {"nodes": [{"hostname": "a", "role": "server", "ssh_authorized_keys": [key]}]}
    one_error(data, "nodes[0] (a): SSH key 1", needle)


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
])
def test_bad_network(network, needle):
    one_error(nodes({"hostname": "a", "role": "server", "network": network}), needle)


@pytest.mark.parametrize("wifi,needle", [
    ({"ssid": "x", "password": "short", "country": "GB"}, "8 to 63 characters"),
    ({"ssid": "x", "password": "long enough", "country": "gb"}, "two-letter country code"),
    ({"ssid": "", "password": "long enough", "country": "GB"}, "1 to 32 bytes"),
    ({"ssid": "x", "password": "long enough"}, "country None"),
])
def test_bad_wifi(wifi, needle):
    one_error(nodes({"hostname": "a", "role": "server", "wifi": wifi}), needle)


def test_all_errors_reported_together():
    errs = errors_of(nodes({"hostname": "a", "role": "server", "timezone": "Not a zone"},
                           {"hostname": "a", "role": "bogus"}))
    assert len(errs) >= 3


def test_malformed_yaml_cli(tmp_path):
    bad = tmp_path / "inv.yaml"
    bad.write_text("nodes: [\n  - hostname: a\n")
    r = run([sys.executable, str(PI / "inventory.py"), "check", str(bad)])
    assert r.returncode == 2
    assert "is not valid YAML" in r.stderr and str(bad) in r.stderr


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
