#!/usr/bin/env bash
# First boot of a node built by pi/build.sh: installs what the node's role needs.
# Runs as root on the Pi, from the boot partition (BOOT/fp/firstboot.sh), started by
# cloud-init's runcmd or by the final-problem-firstboot service that firstrun.sh sets up.
#
# For tests every path is taken under FP_ROOT (default: the real root), and the
# cgroup locations can be pointed elsewhere with FP_CGROUP_DIR and FP_PROC_CGROUPS.
set -euo pipefail

FP_PAYLOAD="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)"
FP_BOOT="$(dirname -- "$FP_PAYLOAD")"
FP_ROOT="${FP_ROOT:-}"
# Seconds a started service has to become active (and answer, where a check is given).
# A Pi 3 needs about a minute to start a JVM; two leave room.
FP_UNIT_TIMEOUT="${FP_UNIT_TIMEOUT:-120}"
FP_CGROUP_DIR="${FP_CGROUP_DIR:-/sys/fs/cgroup}"
FP_PROC_CGROUPS="${FP_PROC_CGROUPS:-/proc/cgroups}"
FP_STATE="$FP_ROOT/var/lib/final-problem"

fb_log() {
    printf '[final-problem firstboot] %s\n' "$*" >&2
}

# fail MESSAGE: report on stderr (the journal / cloud-init-output.log), in the state
# folder and in the login message, then stop.
fb_fail() {
    printf '[final-problem firstboot] error: %s\n' "$*" >&2
    mkdir -p -- "$FP_STATE" "$FP_ROOT/etc/motd.d"
    printf '%s\n' "$*" >"$FP_STATE/firstboot.failed"
    printf 'final-problem first boot FAILED: %s\n' "$*" >"$FP_ROOT/etc/motd.d/final-problem"
    exit 1
}

fb_load_settings() {
    [[ -f "$FP_PAYLOAD/node.env" ]] || fb_fail "no node.env beside $0; this boot partition was not written by pi/build.sh"
    # shellcheck source=/dev/null
    . "$FP_PAYLOAD/node.env"
    # shellcheck source=pi/versions.env
    . "$FP_PAYLOAD/versions.env"
}

# apt_install PACKAGE...: install Debian packages, refreshing the lists once.
FB_APT_UPDATED=0
fb_apt_install() {
    if (( ! FB_APT_UPDATED )); then
        apt-get update || fb_fail "apt-get update failed; check the node's network and DNS"
        FB_APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" \
        || fb_fail "apt-get install $* failed; see the apt output above"
}

# fetch URL DEST: download with retries; the network may still be coming up.
fb_fetch() {
    curl -fsSL --retry 5 --retry-delay 5 --retry-connrefused -o "$2" -- "$1" \
        || fb_fail "download of $1 failed; check the node's network, or build the image with --k3s-airgap"
}

# verify_sha256 FILE SUMS_FILE NAME: FILE must have the digest that SUMS_FILE (lines of
# "HEX  NAME") gives for NAME.
fb_verify_sha256() {
    local file="$1" sums="$2" name="$3" expected actual
    expected="$(awk -v n="$name" '$2 == n || $2 == "*" n {print $1; exit}' "$sums")"
    [[ -n "$expected" ]] || fb_fail "$sums has no checksum for $name"
    actual="$(sha256sum -- "$file")"
    actual="${actual%% *}"
    [[ "$actual" == "$expected" ]] || fb_fail "$name has SHA-256 $actual but the release lists $expected; the download is corrupt or tampered with"
}

# memory_cgroup_on: k3s's kubelet needs the memory cgroup controller. It is off unless
# cmdline.txt has cgroup_enable=memory, and some Raspberry Pi 5 kernels keep it off even
# then (https://github.com/raspberrypi/linux/issues/5933), so look at what the kernel
# really did.
fb_memory_cgroup_on() {
    if [[ -f "$FP_CGROUP_DIR/cgroup.controllers" ]]; then
        # cgroup v2: the root lists the controllers available.
        grep -qw memory -- "$FP_CGROUP_DIR/cgroup.controllers"
    elif [[ -f "$FP_PROC_CGROUPS" ]]; then
        # cgroup v1: columns are subsys_name hierarchy num_cgroups enabled.
        awk '$1 == "memory" && $4 == 1 {found = 1} END {exit !found}' "$FP_PROC_CGROUPS"
    else
        return 1
    fi
}

fb_check_memory_cgroup() {
    if fb_memory_cgroup_on; then
        fb_log "memory cgroup is on"
        return
    fi
    fb_fail "the memory cgroup is OFF, so k3s cannot run. cmdline.txt on the boot partition must contain 'cgroup_memory=1 cgroup_enable=memory' (pi/build.sh adds them); if it does, this kernel ignores them (seen on some Raspberry Pi 5 kernels): update the kernel (apt full-upgrade), reboot, and run $FP_PAYLOAD/firstboot.sh again"
}

# k3s prerequisites: forwarding and the bridge netfilter module
# (https://docs.k3s.io/installation/requirements, networking).
fb_k3s_prerequisites() {
    mkdir -p -- "$FP_ROOT/etc/modules-load.d" "$FP_ROOT/etc/sysctl.d"
    printf 'overlay\nbr_netfilter\n' >"$FP_ROOT/etc/modules-load.d/final-problem-k3s.conf"
    printf 'net.ipv4.ip_forward = 1\nnet.bridge.bridge-nf-call-iptables = 1\n' \
        >"$FP_ROOT/etc/sysctl.d/90-final-problem-k3s.conf"
    if [[ -z "$FP_ROOT" ]]; then
        modprobe overlay || true
        modprobe br_netfilter || true
        sysctl --system >/dev/null || true
    fi
}

# install_k3s_binary: from the image's air-gap folder if present, else download the
# pinned release and check it against the release's sha256sum-arm64.txt.
fb_install_k3s_binary() {
    local bin_dir="$FP_ROOT/usr/local/bin" images="$FP_ROOT/var/lib/rancher/k3s/agent/images"
    mkdir -p -- "$bin_dir"
    if [[ -f "$FP_PAYLOAD/airgap/k3s" ]]; then
        fb_log "installing k3s $K3S_VERSION from the image (air-gap)"
        install -m 755 -- "$FP_PAYLOAD/airgap/k3s" "$bin_dir/k3s"
        # k3s imports image archives found here at start-up
        # (https://docs.k3s.io/installation/airgap, "Manually Deploy Images").
        mkdir -p -- "$images"
        local archive
        for archive in "$FP_PAYLOAD"/airgap/k3s-airgap-images-arm64.*; do
            [[ -f "$archive" ]] && cp -- "$archive" "$images/"
        done
    else
        local tmp version_url
        tmp="$(mktemp -d)"
        # The + in the version is URL-encoded in release download paths.
        version_url="${K3S_VERSION//+/%2B}"
        fb_log "downloading k3s $K3S_VERSION"
        fb_fetch "$K3S_RELEASE_BASE/$version_url/sha256sum-arm64.txt" "$tmp/sha256sum-arm64.txt"
        fb_fetch "$K3S_RELEASE_BASE/$version_url/k3s-arm64" "$tmp/k3s-arm64"
        fb_verify_sha256 "$tmp/k3s-arm64" "$tmp/sha256sum-arm64.txt" k3s-arm64
        install -m 755 -- "$tmp/k3s-arm64" "$bin_dir/k3s"
        rm -rf -- "$tmp"
    fi
    local link
    for link in kubectl crictl ctr; do
        ln -sfn k3s "$bin_dir/$link"
    done
}

fb_write_k3s_config() {
    local conf="$FP_ROOT/etc/rancher/k3s"
    mkdir -p -- "$conf"
    [[ -f "$FP_PAYLOAD/k3s-config.yaml" ]] || fb_fail "no k3s-config.yaml in $FP_PAYLOAD; rebuild the image with pi/build.sh"
    install -m 600 -- "$FP_PAYLOAD/k3s-config.yaml" "$conf/config.yaml"
    [[ -s "$conf/cluster-token" ]] || fb_fail "no k3s token in $conf (the image carries it as $FP_PAYLOAD/k3s-token); rebuild the image with pi/build.sh"
}

# arm64_va_bits: user virtual address bits of the running kernel. 16K pages mean 47
# (Raspberry Pi 5's kernel_2712.img); otherwise the kernel's CONFIG_ARM64_VA_BITS, and 39
# (Raspberry Pi OS's kernel8.img) when the configuration cannot be read.
fb_arm64_va_bits() {
    local page config bits=""
    page="$(getconf PAGESIZE 2>/dev/null || echo 4096)"
    if [[ "$page" == 16384 ]]; then
        echo 47
        return
    fi
    config="$FP_ROOT/boot/config-$(uname -r)"
    if [[ -r "$config" ]]; then
        bits="$(sed -n 's/^CONFIG_ARM64_VA_BITS=\([0-9]*\)$/\1/p' "$config")"
    elif [[ -r "$FP_ROOT/proc/config.gz" ]]; then
        bits="$(zcat "$FP_ROOT/proc/config.gz" | sed -n 's/^CONFIG_ARM64_VA_BITS=\([0-9]*\)$/\1/p')"
    fi
    echo "${bits:-39}"
}

# label_va_bits: the node carries final-problem.io/arm64-va-bits=N (a k3s config drop-in;
# "+" appends to node-label, https://docs.k3s.io/installation/configuration). Envoy needs
# 47 or more (pi/README.md, "Envoy on a Raspberry Pi").
fb_label_va_bits() {
    local bits dir="$FP_ROOT/etc/rancher/k3s/config.yaml.d"
    bits="$(fb_arm64_va_bits)"
    mkdir -p -- "$dir"
    printf 'node-label+:\n  - final-problem.io/arm64-va-bits=%s\n' "$bits" >"$dir/50-final-problem-va-bits.yaml"
    if (( bits < 47 )); then
        fb_log "WARNING: this kernel has ${bits}-bit virtual addresses; Envoy (edge proxy, mesh sidecars) aborts on it: keep pi_arm64_va_bits=39 (the default, which leaves Envoy, Consul and the demo out) or give this node a kernel with 47 or more. A Pi 5 boots kernel_2712.img (47 bits); a Pi 4 needs a kernel built with CONFIG_ARM64_VA_BITS_48 (pi/README.md)"
    else
        fb_log "kernel has ${bits}-bit virtual addresses: Envoy can run here"
    fi
}

fb_place_manifests() {
    [[ "$FP_K3S_INIT" == true ]] || return 0
    local dest="$FP_ROOT/var/lib/rancher/k3s/server/manifests/final-problem" f n=0
    mkdir -p -- "$dest"
    for f in "$FP_PAYLOAD"/manifests/*.yaml "$FP_PAYLOAD"/manifests/*.yml; do
        [[ -f "$f" ]] || continue
        install -m 600 -- "$f" "$dest/"
        n=$(( n + 1 ))
    done
    (( n )) || fb_fail "this is the first server but $FP_PAYLOAD/manifests holds no manifests; rebuild with --manifests pointing at dist/pi"
    fb_log "placed $n manifest(s) in $dest for k3s to deploy"
}

# take_secrets: the boot partition is FAT, readable by every user of the Pi, and is
# read off the card by anyone holding it. Move the k3s token into the root file system
# (mode 600) and delete what has already been applied: the network settings with the
# Wi-Fi passphrase (cloud-init's network-config, or the NetworkManager keyfiles that
# firstrun.sh installed). This runs first, so a failing step later leaves no secret.
fb_take_secrets() {
    local conf="$FP_ROOT/etc/rancher/k3s"
    if [[ -f "$FP_PAYLOAD/k3s-token" ]]; then
        mkdir -p -- "$conf"
        install -m 600 -- "$FP_PAYLOAD/k3s-token" "$conf/cluster-token"
        rm -f -- "$FP_PAYLOAD/k3s-token"
    fi
    # cloud-init read network-config in its first stage, before runcmd started this
    # script; it keeps what it applied under /etc (NetworkManager keyfiles, mode 600).
    rm -f -- "$FP_BOOT/network-config"
    rm -rf -- "$FP_PAYLOAD/network"
    # What cloud-init made of it must not be readable by every user either: older
    # cloud-init releases (Debian 12's 22.4) write the netplan file world-readable and
    # log the network configuration, passphrase included, to a world-readable log.
    local f
    for f in "$FP_ROOT"/etc/netplan/*.yaml; do
        if [[ -f "$f" ]]; then chmod 600 -- "$f"; fi
    done
    for f in "$FP_ROOT"/var/log/cloud-init.log "$FP_ROOT"/var/log/cloud-init-output.log; do
        if [[ -f "$f" ]]; then chmod o-rwx -- "$f"; fi
    done
}

# unit_values UNIT KEY: the values of KEY= in a unit file, space-separated.
fb_unit_values() {
    sed -n "s/^[[:space:]]*$2=//p" "$1" | tr '\n' ' '
}

# prepare_unit UNIT: what a rendered unit needs before it can start: its User= exists,
# and every ReadWritePaths= folder exists and belongs to that user. systemd refuses to
# start a unit whose ReadWritePaths= entry is missing (status 226/NAMESPACE), and
# under ProtectSystem=strict nothing else is writable.
fb_prepare_unit() {
    local unit="$1" user group path
    user="$(fb_unit_values "$unit" User)"
    user="${user// /}"
    group="$(fb_unit_values "$unit" Group)"
    group="${group// /}"
    if [[ -n "$user" ]] && ! grep -q "^$user:" "$FP_ROOT/etc/passwd" 2>/dev/null; then
        fb_fail "$(basename -- "$unit") runs as user '$user', which does not exist; the package that creates it did not install"
    fi
    for path in $(fb_unit_values "$unit" ReadWritePaths); do
        # A leading '-' marks an optional path: systemd skips it when missing.
        [[ "$path" == -* ]] && continue
        path="${path#+}"
        mkdir -p -- "$FP_ROOT$path"
        [[ -z "$user" ]] || chown -R -- "$user:$group" "$FP_ROOT$path" \
            || fb_fail "could not give $path to $user"
    done
}

# unit_state NAME: "ActiveState Result NRestarts" of a unit.
fb_unit_state() {
    local key value active="" result="" restarts=""
    while IFS='=' read -r key value; do
        case "$key" in
            ActiveState) active="$value" ;;
            Result) result="$value" ;;
            NRestarts) restarts="$value" ;;
        esac
    done < <(systemctl show -p ActiveState -p Result -p NRestarts -- "$1")
    printf '%s %s %s\n' "${active:-unknown}" "${result:-unknown}" "${restarts:-0}"
}

# start_unit NAME [READY_COMMAND...]: enable and start a unit, then wait until it is
# active and READY_COMMAND succeeds. 'systemctl start' returns once the process is
# started: a service that then exits, or restarts, is seen only in its state, and is
# a failed first boot.
fb_start_unit() {
    local name="$1" waited=0 active result restarts
    shift
    systemctl daemon-reload
    systemctl enable --now "$name" || fb_fail "$name did not start; see 'journalctl -u $name'"
    while :; do
        read -r active result restarts < <(fb_unit_state "$name")
        if [[ "$active" == failed || "$result" != success || "$restarts" != 0 ]]; then
            fb_fail "$name failed to start (state $active, result $result, restarts $restarts); see 'journalctl -u $name'"
        fi
        if [[ "$active" == active ]] && { (( $# == 0 )) || "$@"; }; then
            fb_log "$name is running"
            return 0
        fi
        (( waited < FP_UNIT_TIMEOUT )) \
            || fb_fail "$name is $active but not ready after ${FP_UNIT_TIMEOUT}s; see 'journalctl -u $name'"
        sleep 1
        waited=$(( waited + 1 ))
    done
}

# zk_ruok PORT: ZooKeeper on this node answers its 'ruok' four-letter word with 'imok'
# (https://zookeeper.apache.org/doc/r3.8.4/zookeeperAdmin.html#sc_4lw), which it does
# once it runs, before an ensemble has formed.
fb_zk_ruok() {
    local reply=""
    reply="$( { exec 3<>"/dev/tcp/127.0.0.1/$1" && printf ruok >&3 && read -r -t 5 -N 4 r <&3; printf '%s' "${r:-}"; } 2>/dev/null)" || true
    [[ "$reply" == imok ]]
}

fb_write_k3s_unit() {
    # The server tells systemd when it is ready; the agent is started as a plain process,
    # as k3s's own installer does.
    local unit name="k3s" cmd="server" type="notify"
    if [[ "$FP_ROLE" == agent ]]; then
        name="k3s-agent" cmd="agent" type="exec"
    fi
    unit="$FP_ROOT/etc/systemd/system/$name.service"
    mkdir -p -- "$(dirname -- "$unit")"
    # Settings follow the unit that k3s's own installer writes (https://docs.k3s.io).
    cat >"$unit" <<EOF
[Unit]
Description=Lightweight Kubernetes ($cmd)
Documentation=https://k3s.io
Wants=network-online.target
After=network-online.target

[Service]
Type=$type
ExecStartPre=-/sbin/modprobe br_netfilter
ExecStartPre=-/sbin/modprobe overlay
ExecStart=/usr/local/bin/k3s $cmd
KillMode=process
Delegate=yes
LimitNOFILE=1048576
LimitNPROC=infinity
LimitCORE=infinity
TasksMax=infinity
TimeoutStartSec=0
Restart=always
RestartSec=5s

[Install]
WantedBy=multi-user.target
EOF
    systemctl daemon-reload
    systemctl enable "$name.service" || fb_fail "could not enable $name.service"
    # Do not wait: a joining node keeps retrying until the first server is up.
    systemctl start --no-block "$name.service" || fb_fail "k3s did not start; see 'journalctl -u $name'"
}

fb_role_k3s() {
    fb_check_memory_cgroup
    fb_k3s_prerequisites
    fb_install_k3s_binary
    fb_write_k3s_config
    fb_label_va_bits
    fb_place_manifests
    fb_write_k3s_unit
}

# role_workstation: the command-line tools to work with the platform from this Pi.
# kubectl's .sha256 holds just the digest; Helm's .sha256sum is "HEX  NAME".
fb_role_workstation() {
    local tmp bin_dir="$FP_ROOT/usr/local/bin" expected actual
    # AWS CLI, Redis and ZooKeeper clients, Python: Debian packages.
    fb_apt_install awscli redis-tools zookeeper python3-venv curl ca-certificates
    tmp="$(mktemp -d)"
    mkdir -p -- "$bin_dir"
    fb_fetch "$KUBECTL_RELEASE_BASE/$KUBECTL_VERSION/bin/linux/arm64/kubectl" "$tmp/kubectl"
    fb_fetch "$KUBECTL_RELEASE_BASE/$KUBECTL_VERSION/bin/linux/arm64/kubectl.sha256" "$tmp/kubectl.sha256"
    expected="$(tr -d ' \n' <"$tmp/kubectl.sha256")"
    actual="$(sha256sum -- "$tmp/kubectl")"
    [[ "${actual%% *}" == "$expected" ]] || fb_fail "kubectl $KUBECTL_VERSION has SHA-256 ${actual%% *} but $expected is published; the download is corrupt"
    install -m 755 -- "$tmp/kubectl" "$bin_dir/kubectl"

    local helm_tar="helm-$HELM_VERSION-linux-arm64.tar.gz"
    fb_fetch "$HELM_RELEASE_BASE/$helm_tar" "$tmp/$helm_tar"
    fb_fetch "$HELM_RELEASE_BASE/$helm_tar.sha256sum" "$tmp/$helm_tar.sha256sum"
    fb_verify_sha256 "$tmp/$helm_tar" "$tmp/$helm_tar.sha256sum" "$helm_tar"
    tar -xzf "$tmp/$helm_tar" -C "$tmp" linux-arm64/helm
    install -m 755 -- "$tmp/linux-arm64/helm" "$bin_dir/helm"
    rm -rf -- "$tmp"

    # Python environment with the project's clients (python -m final_problem.clients.redis,
    # ...zookeeper) and the libraries they use, at the versions the project pins. The
    # package goes in without its CDK dependencies: the clients do not need them.
    local venv="$FP_ROOT/opt/final-problem/venv" project="$FP_PAYLOAD/project"
    [[ -f "$project/pyproject.toml" && -f "$project/requirements-clients.txt" ]] \
        || fb_fail "$project must hold the project's package; rebuild the image with pi/build.sh"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -r "$project/requirements-clients.txt" \
        || fb_fail "pip install of the clients' libraries failed; check the network and rerun"
    "$venv/bin/pip" install --no-deps "$project" \
        || fb_fail "pip install of the project's clients failed; check the network and rerun"
    mkdir -p -- "$FP_ROOT/etc/profile.d"
    printf 'PATH="/opt/final-problem/venv/bin:$PATH"\n' >"$FP_ROOT/etc/profile.d/final-problem.sh"
}

# zk_setting KEY: the value of KEY= in the rendered zoo.cfg.
fb_zk_setting() {
    sed -n "s/^[[:space:]]*${1}[[:space:]]*=[[:space:]]*//p" "$FP_PAYLOAD/zookeeper/zoo.cfg" | tail -n 1
}

# role_zookeeper: install Debian's ZooKeeper and the files the project's renderer wrote,
# start it, and wait until it answers.
fb_role_zookeeper() {
    local src="$FP_PAYLOAD/zookeeper" data_dir unit="$FP_ROOT/etc/systemd/system/zookeeper.service"
    [[ -f "$src/zoo.cfg" && -f "$src/myid" && -f "$src/zookeeper.service" ]] \
        || fb_fail "$src must hold zoo.cfg, myid and zookeeper.service; rebuild the image with pi/build.sh"
    fb_apt_install zookeeper default-jre-headless
    mkdir -p -- "$FP_ROOT/etc/zookeeper/conf" "$FP_ROOT/etc/systemd/system"
    install -m 644 -- "$src/zoo.cfg" "$FP_ROOT/etc/zookeeper/conf/zoo.cfg"
    install -m 644 -- "$src/zookeeper.service" "$unit"
    # Its folders (dataDir, dataLogDir) are the unit's ReadWritePaths, owned by its user.
    fb_prepare_unit "$unit"
    data_dir="$(fb_zk_setting dataDir)"
    [[ -n "$data_dir" && -d "$FP_ROOT$data_dir" ]] \
        || fb_fail "zoo.cfg's dataDir '${data_dir}' is not among the ReadWritePaths of zookeeper.service; rebuild the image with pi/build.sh"
    install -m 644 -- "$src/myid" "$FP_ROOT$data_dir/myid"
    fb_start_unit zookeeper.service fb_zk_ruok "$(fb_zk_setting clientPort)"
}

main() {
    fb_load_settings
    fb_take_secrets
    if [[ -f "$FP_STATE/firstboot.done" ]]; then
        fb_log "already done on $(cat -- "$FP_STATE/firstboot.done"); nothing to do"
        return 0
    fi
    mkdir -p -- "$FP_STATE"
    rm -f -- "$FP_STATE/firstboot.failed"
    fb_log "node $FP_HOSTNAME, role $FP_ROLE"
    case "$FP_ROLE" in
        server|agent) fb_role_k3s ;;
        workstation) fb_role_workstation ;;
        zookeeper) fb_role_zookeeper ;;
        *) fb_fail "unknown role '$FP_ROLE' in node.env" ;;
    esac
    # Free the boot partition of the large air-gap files once they are installed.
    rm -rf -- "$FP_PAYLOAD/airgap"
    rm -f -- "$FP_ROOT/etc/motd.d/final-problem"
    date -u '+%Y-%m-%dT%H:%M:%SZ' >"$FP_STATE/firstboot.done"
    fb_log "done"
}

main "$@"
