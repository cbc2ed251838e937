#!/usr/bin/env python3
"""Validate a Raspberry Pi inventory and render each node's first-boot files.

Used by pi/build.sh; needs Python 3.11 and PyYAML only.

  inventory.py check  INVENTORY             validate, print nothing on success
  inventory.py cluster INVENTORY            print the cluster name
  inventory.py plan   INVENTORY             one tab-separated line per node:
                                            hostname role k3s_init zk_myid zk_servers
  inventory.py render INVENTORY --hostname H --out DIR --mode cloud-init|firstrun
                      --boot-dir /boot/firmware
                                            write the node's boot-partition files into DIR

Errors are collected and printed together, one per line, then the exit status is 2.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import functools
import hashlib
import ipaddress
import re
import shlex
import struct
import sys
import zoneinfo
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROLES = ("server", "agent", "workstation", "zookeeper")
K3S_ROLES = ("server", "agent")

# Public key algorithms that OpenSSH accepts in authorized_keys
# (sshd(8), section AUTHORIZED_KEYS FILE FORMAT).
SSH_KEY_TYPES = (
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
)

# RFC 1123 host name label: letters, digits, hyphens, 1-63 characters, no leading or
# trailing hyphen.
HOSTNAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
USERNAME_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
CLUSTER_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$")
# ISO 3166-1 alpha-2, as the Wi-Fi regulatory domain wants it.
COUNTRY_RE = re.compile(r"^[A-Z]{2}$")
# An IANA time zone name such as Europe/London, Etc/UTC or UTC.
TIMEZONE_RE = re.compile(r"^[A-Za-z_]+(/[A-Za-z0-9_+-]+)*$")
# Keys an inventory may hold; anything else is a typo that would be dropped silently
# (a misspelt 'network' would leave a node on DHCP).
TOP_KEYS = ("cluster", "defaults", "nodes")
CLUSTER_KEYS = ("name", "server_url")
NODE_KEYS = ("hostname", "role", "user", "ssh_authorized_keys", "ssh_authorized_key_files", "timezone",
             "network", "wifi", "zookeeper_id")
# Keys that name one node and cannot be shared through 'defaults'.
PER_NODE_KEYS = ("hostname", "role", "zookeeper_id")
NETWORK_KEYS = ("interface", "address", "gateway", "dns")
WIFI_KEYS = ("ssid", "password", "country")
# Accounts that the images' packages create for their services (Debian's zookeeper
# package: zookeeper) or that Debian reserves; the login user must be none of them.
RESERVED_USERS = ("root", "daemon", "bin", "sys", "sync", "nobody", "zookeeper", "sshd", "messagebus",
                  "systemd-network", "systemd-resolve", "systemd-timesync", "_apt")

# k3s servers listen for the supervisor and API on 6443
# (https://docs.k3s.io/installation/requirements, "Inbound Rules for K3s Nodes").
K3S_API_PORT = 6443

DEFAULT_USER = "pi"
DEFAULT_TIMEZONE = "Etc/UTC"
DEFAULT_CLUSTER = "final-problem"
# Packaged components k3s is told not to deploy (server option --disable; pi/README.md,
# "What k3s runs"). ServiceLB, CoreDNS, metrics-server and local-path stay.
K3S_DISABLE = ("traefik",)
# Name of the token file the first boot reads; k3s takes it with token-file
# (https://docs.k3s.io/cli/server, "--token-file").
TOKEN_PATH_ON_NODE = "/etc/rancher/k3s/cluster-token"
# k3s auto-deploys every manifest under this folder, sub-folders included
# (https://docs.k3s.io/installation/packaged-components, "Auto-Deploying Manifests").
MANIFESTS_SUBDIR = "final-problem"


class InventoryError(Exception):
    def __init__(self, errors: list[str]):
        super().__init__("\n".join(errors))
        self.errors = errors


@dataclass
class Network:
    mode: str  # "dhcp" or "static"
    interface: str = "eth0"
    address: str = ""  # "192.168.1.21/24" when static
    gateway: str = ""
    dns: list[str] = field(default_factory=list)

    @property
    def ip(self) -> str:
        return self.address.split("/", 1)[0] if self.address else ""


@dataclass
class Wifi:
    ssid: str
    password: str
    country: str


@dataclass
class Node:
    hostname: str
    role: str
    user: str
    keys: list[str]
    network: Network
    wifi: Wifi | None
    timezone: str
    k3s_init: bool = False
    zk_myid: int = 0

    @property
    def reach(self) -> str:
        """How other nodes reach this one: its static address, else its mDNS name."""
        return self.network.ip or f"{self.hostname}.local"


@dataclass
class Inventory:
    cluster: str
    server_url: str
    nodes: list[Node]

    def node(self, hostname: str) -> Node:
        for node in self.nodes:
            if node.hostname == hostname:
                return node
        raise InventoryError([f"no node named {hostname!r} in the inventory"])

    def zk_servers(self) -> list[str]:
        zk = sorted((n for n in self.nodes if n.role == "zookeeper"), key=lambda n: n.zk_myid)
        return [n.reach for n in zk]


# --------------------------------------------------------------------------- checks


# Curve name and public point size of each ECDSA key type: the point is uncompressed,
# 0x04 then X and Y of the field size (RFC 5656, sections 3.1 and 6.1; SEC 1, 2.3.3).
_ECDSA_POINT = {"nistp256": 65, "nistp384": 97, "nistp521": 133}
# OpenSSH refuses RSA keys below 1024 bits (SSH_RSA_MINIMUM_MODULUS_SIZE in its sshkey.h).
RSA_MIN_BITS = 1024
# An Ed25519 public key is 32 bytes (RFC 8709, section 4).
ED25519_KEY_BYTES = 32


class _Blob:
    """Reader of the SSH wire encoding: uint32 length, then that many bytes (RFC 4251, 5)."""

    def __init__(self, raw: bytes):
        self.raw, self.pos = raw, 0

    def string(self) -> bytes:
        if self.pos + 4 > len(self.raw):
            raise ValueError("ends inside a length field")
        (length,) = struct.unpack(">I", self.raw[self.pos : self.pos + 4])
        start, self.pos = self.pos + 4, self.pos + 4 + length
        if self.pos > len(self.raw):
            raise ValueError(f"ends {self.pos - len(self.raw)} byte(s) short of a {length}-byte field")
        return self.raw[start : self.pos]

    def done(self) -> bool:
        return self.pos == len(self.raw)


def _key_fields_problem(ktype: str, blob: _Blob) -> str | None:
    """What is wrong with the fields after the type of a KTYPE key, or None."""
    base = ktype.removeprefix("sk-").removesuffix("@openssh.com")
    if base == "ssh-ed25519":
        if len(blob.string()) != ED25519_KEY_BYTES:
            return f"is not a {ED25519_KEY_BYTES}-byte Ed25519 key"
    elif base == "ssh-rsa":
        exponent, modulus = blob.string(), blob.string()  # mpint e, mpint n (RFC 4253, 6.6)
        bits = int.from_bytes(modulus, "big").bit_length()
        if not exponent or int.from_bytes(exponent, "big") < 3:
            return "has no usable RSA exponent"
        if bits < RSA_MIN_BITS:
            return f"has a {bits}-bit RSA modulus; OpenSSH refuses keys under {RSA_MIN_BITS} bits"
    else:  # ecdsa-sha2-<curve>: string curve, string Q
        curve = base.removeprefix("ecdsa-sha2-")
        if blob.string().decode("ascii", "replace") != curve:
            return f"names a curve other than {curve}"
        point = blob.string()
        if len(point) != _ECDSA_POINT[curve] or point[:1] != b"\x04":
            return f"has a {len(point)}-byte point, not the {_ECDSA_POINT[curve]}-byte {curve} point"
    if ktype.startswith("sk-"):
        # Security keys add the FIDO application, usually "ssh:" (OpenSSH PROTOCOL.u2f).
        if not blob.string():
            return "has an empty security-key application"
    return None


def check_ssh_key(key: object) -> str | None:
    """Return None if KEY is a well-formed authorized_keys line, else what is wrong.

    The base64 part is decoded and walked field by field, so a key cut short by a copy
    or a line wrap is caught here rather than by a Pi that nobody can log in to.
    """
    if not isinstance(key, str) or not key.strip():
        return "is empty or not a string"
    parts = key.strip().split()
    if len(parts) < 2:
        return "needs at least a key type and the base64 key, e.g. 'ssh-ed25519 AAAA... you@host'"
    ktype, b64 = parts[0], parts[1]
    if ktype not in SSH_KEY_TYPES:
        return f"has unknown key type {ktype!r} (expected one of {', '.join(SSH_KEY_TYPES)}); options before the type are not supported"
    try:
        raw = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        return "has a key part that is not valid base64 (was the line cut or wrapped?)"
    blob = _Blob(raw)
    try:
        # The blob starts with the key type as an SSH string (RFC 4253, section 6.6).
        if blob.string().decode("ascii", "replace") != ktype:
            return f"has a key part that does not encode a {ktype} key (type and key do not match)"
        problem = _key_fields_problem(ktype, blob)
    except ValueError as exc:
        return f"is truncated: its key part {exc} (copy the whole line from the .pub file)"
    if problem:
        return problem + " (copy the whole line from the .pub file)"
    if not blob.done():
        return f"has {len(raw) - blob.pos} byte(s) after the key (two keys run together?)"
    return None


def _as_list(value: object) -> list:
    if value is None:
        return []
    if isinstance(value, list):
        return value
    return [value]


def _unknown_keys(raw: dict, allowed: tuple[str, ...], where: str, errors: list[str]) -> None:
    unknown = sorted(str(k) for k in raw if k not in allowed)
    if unknown:
        errors.append(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}")


@functools.cache
def _tz_database() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def _check_timezone(timezone: str, where: str, errors: list[str]) -> None:
    if not TIMEZONE_RE.match(timezone):
        errors.append(f"{where}: timezone {timezone!r} is not a time zone name such as Europe/London or Etc/UTC")
        return
    # The Pi looks the name up in its tz database (/usr/share/zoneinfo); so does this
    # check, where the build machine has one.
    if _tz_database():
        try:
            zoneinfo.ZoneInfo(timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            errors.append(f"{where}: timezone {timezone!r} is not in the tz database; use a name from"
                          " 'timedatectl list-timezones' such as Europe/London or Etc/UTC")


def _parse_network(raw: object, where: str, errors: list[str]) -> Network:
    if raw is None or raw == "dhcp":
        return Network(mode="dhcp")
    if not isinstance(raw, dict):
        errors.append(f"{where}: network must be 'dhcp' or a mapping with address/gateway/dns, got {raw!r}")
        return Network(mode="dhcp")
    _unknown_keys(raw, NETWORK_KEYS, f"{where}: network", errors)
    iface = str(raw.get("interface", "eth0"))
    if iface not in ("eth0", "wlan0"):
        errors.append(f"{where}: network.interface {iface!r} is not supported; use eth0 or wlan0")
    address = raw.get("address", "dhcp")
    if address == "dhcp":
        return Network(mode="dhcp", interface=iface)
    try:
        iface_addr = ipaddress.IPv4Interface(str(address))
        if "/" not in str(address):
            raise ValueError("missing prefix length")
    except ValueError:
        errors.append(f"{where}: network.address {address!r} is not an IPv4 address with prefix length; write it like 192.168.1.21/24, or use 'dhcp'")
        return Network(mode="dhcp", interface=iface)
    net = iface_addr.network
    if net.prefixlen < 31 and iface_addr.ip in (net.network_address, net.broadcast_address):
        errors.append(f"{where}: network.address {address} is the {'network' if iface_addr.ip == net.network_address else 'broadcast'}"
                      f" address of {net}, not a host address; pick one between them, e.g. {net.network_address + 10}/{net.prefixlen}")
    gateway = raw.get("gateway")
    if gateway is None:
        errors.append(f"{where}: a static network.address needs network.gateway (the router's address, e.g. 192.168.1.1)")
        gateway = ""
    else:
        try:
            gw = ipaddress.IPv4Address(str(gateway))
            if gw not in iface_addr.network:
                errors.append(f"{where}: network.gateway {gateway} is outside {iface_addr.network}; fix the address prefix or the gateway")
            elif gw == iface_addr.ip:
                errors.append(f"{where}: network.gateway {gateway} is the node's own address; give the router's address")
        except ValueError:
            errors.append(f"{where}: network.gateway {gateway!r} is not an IPv4 address")
    dns = [str(d) for d in _as_list(raw.get("dns"))] or ([str(gateway)] if gateway else [])
    for d in dns:
        try:
            ipaddress.ip_address(d)
        except ValueError:
            errors.append(f"{where}: network.dns entry {d!r} is not an IP address")
    return Network(mode="static", interface=iface, address=str(address), gateway=str(gateway), dns=dns)


def _parse_wifi(raw: object, where: str, errors: list[str]) -> Wifi | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        errors.append(f"{where}: wifi must be a mapping with ssid, password and country")
        return None
    _unknown_keys(raw, WIFI_KEYS, f"{where}: wifi", errors)
    ssid, password, country = raw.get("ssid"), raw.get("password"), raw.get("country")
    ok = True
    # Control characters (a newline above all) would break the keyfile or YAML lines
    # the SSID is written into.
    if not isinstance(ssid, str) or not 1 <= len(ssid.encode()) <= 32 or not ssid.isprintable():
        errors.append(f"{where}: wifi.ssid {ssid!r} must be 1 to 32 bytes (IEEE 802.11) of printable characters")
        ok = False
    # WPA2-PSK: a passphrase of 8-63 printable ASCII characters (codes 32-126) or 64 hex
    # digits (IEEE 802.11i, annex H.4.1). The value itself is never echoed.
    if not isinstance(password, str) or not (
        (8 <= len(password) <= 63 and all(32 <= ord(c) <= 126 for c in password))
        or re.fullmatch(r"[0-9a-fA-F]{64}", password)
    ):
        errors.append(f"{where}: wifi.password must be a WPA2 passphrase of 8 to 63 printable ASCII characters (or 64 hex digits)")
        ok = False
    if not isinstance(country, str) or not COUNTRY_RE.match(country):
        errors.append(f"{where}: wifi.country {country!r} must be a two-letter country code such as GB or US (the radio stays off without it)")
        ok = False
    return Wifi(ssid=ssid, password=password, country=country) if ok else None


def _read_key_files(paths: list, base: Path, where: str, errors: list[str]) -> list[str]:
    keys: list[str] = []
    for p in paths:
        path = (base / str(p)).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            errors.append(f"{where}: ssh_authorized_key_files entry {str(p)!r} cannot be read ({exc.strerror}); give a path to a .pub file, relative to the inventory")
            continue
        keys.extend(line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#"))
    return keys


def validate(data: object, base: Path) -> Inventory:
    errors: list[str] = []
    if not isinstance(data, dict):
        raise InventoryError(["the inventory must be a YAML mapping with 'cluster', 'defaults' and 'nodes'"])
    cluster = data.get("cluster") or {}
    defaults = data.get("defaults") or {}
    if not isinstance(cluster, dict) or not isinstance(defaults, dict):
        raise InventoryError(["'cluster' and 'defaults' must be mappings"])
    _unknown_keys(data, TOP_KEYS, "inventory", errors)
    _unknown_keys(cluster, CLUSTER_KEYS, "cluster", errors)
    _unknown_keys(defaults, tuple(k for k in NODE_KEYS if k not in PER_NODE_KEYS), "defaults", errors)

    cluster_name = str(cluster.get("name", DEFAULT_CLUSTER))
    if not CLUSTER_RE.match(cluster_name):
        errors.append(f"cluster.name {cluster_name!r} must be lower-case letters, digits and hyphens (it names the token file)")

    raw_nodes = data.get("nodes")
    if not isinstance(raw_nodes, list) or not raw_nodes:
        raise InventoryError(errors + ["'nodes' must be a non-empty list; see pi/inventory.example.yaml"])

    nodes: list[Node] = []
    for i, raw in enumerate(raw_nodes):
        where = f"nodes[{i}]"
        if not isinstance(raw, dict):
            errors.append(f"{where}: each node must be a mapping with at least hostname and role")
            continue
        hostname = raw.get("hostname")
        if isinstance(hostname, str):
            where = f"nodes[{i}] ({hostname})"
        if not isinstance(hostname, str) or not HOSTNAME_RE.match(hostname):
            errors.append(f"{where}: hostname {hostname!r} must be 1-63 lower-case letters, digits or hyphens, not starting or ending with a hyphen")
            hostname = f"invalid-{i}"
        _unknown_keys(raw, NODE_KEYS, where, errors)
        role = raw.get("role")
        if role not in ROLES:
            errors.append(f"{where}: role {role!r} is not one of {', '.join(ROLES)}")
        merged = {**defaults, **raw}
        user = str(merged.get("user", DEFAULT_USER))
        if not USERNAME_RE.match(user) or user in RESERVED_USERS:
            errors.append(f"{where}: user {user!r} must be a lower-case login name other than the system accounts"
                          f" {', '.join(RESERVED_USERS)}; e.g. 'pi'")
        keys = [k for k in _as_list(merged.get("ssh_authorized_keys"))]
        keys += _read_key_files(_as_list(merged.get("ssh_authorized_key_files")), base, where, errors)
        if not keys:
            errors.append(f"{where}: no SSH public key; password login is off, so add ssh_authorized_keys (here or under defaults) with the line from your ~/.ssh/id_ed25519.pub")
        for k_i, key in enumerate(keys, start=1):
            problem = check_ssh_key(key)
            if problem:
                shown = key if isinstance(key, str) and len(key) <= 40 else (str(key)[:37] + "...")
                errors.append(f"{where}: SSH key {k_i} ({shown!r}) {problem}")
        timezone = str(merged.get("timezone", DEFAULT_TIMEZONE))
        _check_timezone(timezone, where, errors)
        network = _parse_network(merged.get("network"), where, errors)
        wifi = _parse_wifi(merged.get("wifi"), where, errors)
        if network.interface == "wlan0" and wifi is None:
            errors.append(f"{where}: network.interface is wlan0 but no wifi (ssid, password, country) is set")
        nodes.append(Node(hostname=hostname, role=str(role), user=user, keys=[str(k).strip() for k in keys],
                          network=network, wifi=wifi, timezone=timezone))
        raw_zk = raw.get("zookeeper_id")
        if raw_zk is not None:
            if role != "zookeeper":
                errors.append(f"{where}: zookeeper_id is only for role zookeeper")
            elif not isinstance(raw_zk, int) or isinstance(raw_zk, bool) or not 1 <= raw_zk <= 255:
                errors.append(f"{where}: zookeeper_id {raw_zk!r} must be an integer from 1 to 255")
            else:
                nodes[-1].zk_myid = raw_zk

    # Uniqueness across nodes.
    seen: dict[str, int] = {}
    for i, node in enumerate(nodes):
        if node.hostname in seen:
            errors.append(f"nodes[{i}]: hostname {node.hostname!r} is already used by nodes[{seen[node.hostname]}]; every node needs its own name")
        else:
            seen[node.hostname] = i
    seen_ip: dict[str, str] = {}
    for node in nodes:
        ip = node.network.ip
        if not ip:
            continue
        if ip in seen_ip:
            errors.append(f"address {ip} is given to both {seen_ip[ip]!r} and {node.hostname!r}; every static address must be unique")
        else:
            seen_ip[ip] = node.hostname

    # Roles and what they need.
    servers = [n for n in nodes if n.role == "server"]
    agents = [n for n in nodes if n.role == "agent"]
    zks = [n for n in nodes if n.role == "zookeeper"]
    if not servers and (agents or not zks):
        errors.append("no node has role 'server'; a k3s cluster needs at least one (the first server initialises the cluster). "
                      "Only an inventory of zookeeper nodes (with optional workstations) can go without one")
    if len(servers) % 2 == 0 and servers:
        print(f"warning: {len(servers)} servers; embedded etcd keeps quorum best with an odd number (1, 3, 5)"
              " - see https://docs.k3s.io/datastore/ha-embedded", file=sys.stderr)
    if zks:
        if len(zks) % 2 == 0:
            errors.append(f"{len(zks)} zookeeper nodes; a ZooKeeper ensemble needs an odd number (1, 3, 5) to keep a majority - add or remove one")
        given = [n.zk_myid for n in zks if n.zk_myid]
        if given and len(given) != len(zks):
            errors.append("set zookeeper_id on every zookeeper node or on none (then they are numbered 1, 2, 3 in inventory order)")
        elif len(set(given)) != len(given):
            errors.append(f"zookeeper_id values {given} repeat; each ensemble member needs its own id")
        elif not given:
            for n_i, node in enumerate(zks, start=1):
                node.zk_myid = n_i

    server_url = cluster.get("server_url")
    if servers:
        servers[0].k3s_init = True
        if server_url is None:
            server_url = f"https://{servers[0].reach}:{K3S_API_PORT}"
        elif not isinstance(server_url, str) or not re.match(r"^https://[^/\s]+$", server_url):
            errors.append(f"cluster.server_url {server_url!r} must look like https://HOST:6443")
    if errors:
        raise InventoryError(errors)
    return Inventory(cluster=cluster_name, server_url=str(server_url or ""), nodes=nodes)


def yaml_error(path: Path, exc: yaml.YAMLError) -> str:
    """One line: the file, the line and column, then what the parser found wrong."""
    mark = getattr(exc, "problem_mark", None)
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
    reason = " ".join(str(part) for part in (getattr(exc, "context", None), getattr(exc, "problem", None)) if part)
    return f"{where}: not valid YAML: {reason or exc}"


def load(path: Path) -> Inventory:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise InventoryError([f"cannot read inventory {str(path)!r}: {reason}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InventoryError([yaml_error(path, exc)]) from None
    return validate(data, path.parent)


# ------------------------------------------------------------------------- rendering


def _dump(data: object) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=100000)


def k3s_config(inv: Inventory, node: Node) -> dict:
    """The k3s config file for NODE (https://docs.k3s.io/installation/configuration)."""
    cfg: dict = {"node-name": node.hostname, "token-file": TOKEN_PATH_ON_NODE}
    if node.role == "server":
        if node.k3s_init:
            cfg["cluster-init"] = True  # first server starts embedded etcd
        else:
            cfg["server"] = inv.server_url
        cfg["write-kubeconfig-mode"] = "0600"
        # The platform's edge Envoy is the cluster's way in: a LoadBalancer Service on port 80
        # that ServiceLB serves on every node's host ports. k3s's bundled Traefik would take
        # host ports 80 and 443 first (its own LoadBalancer Service), leaving the edge pending,
        # and routes nothing the platform uses. Every server carries the same list
        # (https://docs.k3s.io/installation/packaged-components, "Using the --disable flag").
        cfg["disable"] = list(K3S_DISABLE)
        sans = [node.hostname, f"{node.hostname}.local"] + ([node.network.ip] if node.network.ip else [])
        cfg["tls-san"] = sans
    else:
        cfg["server"] = inv.server_url
    if node.network.ip:
        cfg["node-ip"] = node.network.ip
    return cfg


def network_config(node: Node) -> dict:
    """cloud-init network configuration version 2 (netplan-style)."""
    net = node.network
    static: dict = {}
    if net.mode == "static":
        static = {
            "addresses": [net.address],
            "routes": [{"to": "default", "via": net.gateway}],
            "nameservers": {"addresses": net.dns},
        }
    eth: dict = {"dhcp4": True, "optional": True}
    if net.interface == "eth0" and static:
        eth = {"dhcp4": False, **static, "optional": node.wifi is not None}
    cfg: dict = {"version": 2, "ethernets": {"eth0": eth}}
    if node.wifi:
        wlan: dict = {"dhcp4": True}
        if net.interface == "wlan0" and static:
            wlan = {"dhcp4": False, **static}
        wlan["regulatory-domain"] = node.wifi.country
        wlan["access-points"] = {node.wifi.ssid: {"password": node.wifi.password}}
        cfg["wifis"] = {"wlan0": wlan}
    return {"network": cfg}


def user_data(node: Node, boot_dir: str) -> str:
    runner = f"{boot_dir}/fp/firstboot.sh"
    data = {
        "hostname": node.hostname,
        "preserve_hostname": False,
        "manage_etc_hosts": True,
        "timezone": node.timezone,
        "users": [
            {
                "name": node.user,
                "groups": ["adm", "sudo", "users", "video"],
                "shell": "/bin/bash",
                "lock_passwd": True,
                "sudo": "ALL=(ALL) NOPASSWD:ALL",
                "ssh_authorized_keys": node.keys,
            }
        ],
        "disable_root": True,
        "ssh_pwauth": False,
        "runcmd": [["bash", runner]],
    }
    return "#cloud-config\n" + _dump(data)


def nm_keyfiles(node: Node) -> dict[str, str]:
    """NetworkManager keyfiles for images without cloud-init (Raspberry Pi OS uses
    NetworkManager since Bookworm; format: nm-settings-keyfile(5))."""
    files: dict[str, str] = {}

    def ipv4(iface: str) -> str:
        net = node.network
        if net.mode == "static" and net.interface == iface:
            dns = "".join(f"{d};" for d in net.dns)
            return f"[ipv4]\nmethod=manual\naddress1={net.address},{net.gateway}\ndns={dns}\n"
        return "[ipv4]\nmethod=auto\n"

    if node.network.mode == "static" and node.network.interface == "eth0":
        files["fp-eth0.nmconnection"] = (
            "[connection]\nid=fp-eth0\ntype=ethernet\ninterface-name=eth0\nautoconnect=true\n\n"
            + ipv4("eth0") + "\n[ipv6]\nmethod=auto\n"
        )
    if node.wifi:
        files["fp-wlan0.nmconnection"] = (
            "[connection]\nid=fp-wlan0\ntype=wifi\ninterface-name=wlan0\nautoconnect=true\n\n"
            f"[wifi]\nmode=infrastructure\nssid={node.wifi.ssid}\n\n"
            f"[wifi-security]\nkey-mgmt=wpa-psk\npsk={node.wifi.password}\n\n"
            + ipv4("wlan0") + "\n[ipv6]\nmethod=auto\n"
        )
    return files


def node_env(inv: Inventory, node: Node, mode: str) -> str:
    values = {
        "FP_HOSTNAME": node.hostname,
        "FP_ROLE": node.role,
        "FP_CLUSTER": inv.cluster,
        "FP_USER": node.user,
        "FP_TIMEZONE": node.timezone,
        "FP_K3S_INIT": "true" if node.k3s_init else "false",
        "FP_K3S_SERVER_URL": inv.server_url if node.role in K3S_ROLES else "",
        "FP_WIFI_COUNTRY": node.wifi.country if node.wifi else "",
        "FP_FIRSTBOOT_MODE": mode,
    }
    lines = ["# Settings for this node's first boot, written by pi/build.sh."]
    lines += [f"{k}={shlex.quote(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def render(inv: Inventory, hostname: str, out: Path, mode: str, boot_dir: str) -> None:
    node = inv.node(hostname)
    fp = out / "fp"
    _write(fp / "node.env", node_env(inv, node, mode))
    _write(fp / "authorized_keys", "\n".join(node.keys) + "\n")
    if node.role in K3S_ROLES:
        _write(fp / "k3s-config.yaml", _dump(k3s_config(inv, node)))
    if mode == "cloud-init":
        ud = user_data(node, boot_dir)
        nc = _dump(network_config(node))
        digest = hashlib.sha256((ud + nc).encode()).hexdigest()[:16]
        _write(out / "user-data", ud)
        _write(out / "network-config", nc)
        # A new instance-id makes cloud-init apply the configuration again on a
        # reflashed card (https://cloudinit.readthedocs.io/en/latest/reference/datasources/nocloud.html).
        _write(out / "meta-data", _dump({"instance-id": f"fp-{node.hostname}-{digest}",
                                          "local-hostname": node.hostname}))
    else:
        for name, text in nm_keyfiles(node).items():
            _write(fp / "network" / name, text)


# ------------------------------------------------------------------------------ CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name in ("check", "plan", "cluster"):
        p = sub.add_parser(name)
        p.add_argument("inventory", type=Path)
    p = sub.add_parser("render")
    p.add_argument("inventory", type=Path)
    p.add_argument("--hostname", required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--mode", choices=("cloud-init", "firstrun"), required=True)
    p.add_argument("--boot-dir", default="/boot/firmware")
    args = parser.parse_args(argv)
    try:
        inv = load(args.inventory)
        if args.cmd == "cluster":
            print(inv.cluster)
        elif args.cmd == "plan":
            zk = ",".join(inv.zk_servers())
            for n in inv.nodes:
                print("\t".join([n.hostname, n.role, "true" if n.k3s_init else "false",
                                 str(n.zk_myid), zk if n.role == "zookeeper" else "-"]))
        elif args.cmd == "render":
            render(inv, args.hostname, args.out, args.mode, args.boot_dir)
    except InventoryError as exc:
        for err in exc.errors:
            print(f"inventory error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
