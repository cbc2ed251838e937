#!/usr/bin/env bash
# First run of a node on an image without cloud-init. The kernel command line that
# pi/build.sh wrote starts it once, as root, before the normal boot
# (systemd.run=BOOT/fp/firstrun.sh, see kernel-command-line(7)); systemd reboots when it
# exits successfully. It sets the hostname, user, SSH, time zone and network, removes
# itself from cmdline.txt and enables final-problem-firstboot.service, which runs
# firstboot.sh on the next boot once the network is up.
#
# For tests every path is taken under FP_ROOT (default: the real root).
set -euo pipefail

FP_PAYLOAD="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)"
FP_BOOT="$(dirname -- "$FP_PAYLOAD")"
FP_ROOT="${FP_ROOT:-}"

fr_log() {
    printf '[final-problem firstrun] %s\n' "$*" >&2
}

fr_fail() {
    printf '[final-problem firstrun] error: %s\n' "$*" >&2
    exit 1
}

fr_hostname() {
    printf '%s\n' "$FP_HOSTNAME" >"$FP_ROOT/etc/hostname"
    local hosts="$FP_ROOT/etc/hosts" tmp
    touch -- "$hosts"
    tmp="$(mktemp)"
    grep -v '^127\.0\.1\.1[[:space:]]' -- "$hosts" >"$tmp" || true
    printf '127.0.1.1\t%s\n' "$FP_HOSTNAME" >>"$tmp"
    cat -- "$tmp" >"$hosts"
    rm -f -- "$tmp"
}

fr_user() {
    local home="/home/$FP_USER"
    if ! grep -q "^$FP_USER:" "$FP_ROOT/etc/passwd" 2>/dev/null; then
        useradd ${FP_ROOT:+--root "$FP_ROOT"} -m -s /bin/bash -G adm,sudo,users,video "$FP_USER" \
            || fr_fail "could not create user '$FP_USER'"
    fi
    # No password: logins are by SSH key only.
    passwd ${FP_ROOT:+--root "$FP_ROOT"} -l "$FP_USER" >/dev/null || fr_fail "could not lock the password of '$FP_USER'"
    mkdir -p -- "$FP_ROOT/etc/sudoers.d"
    printf '%s ALL=(ALL) NOPASSWD:ALL\n' "$FP_USER" >"$FP_ROOT/etc/sudoers.d/010_final-problem"
    chmod 440 -- "$FP_ROOT/etc/sudoers.d/010_final-problem"
    mkdir -p -- "$FP_ROOT$home/.ssh"
    install -m 600 -- "$FP_PAYLOAD/authorized_keys" "$FP_ROOT$home/.ssh/authorized_keys"
    chmod 700 -- "$FP_ROOT$home/.ssh"
    chown -R "$FP_USER:$FP_USER" -- "$FP_ROOT$home/.ssh"
    # Raspberry Pi OS asks for a user on first boot unless one is set up; skip that.
    systemctl disable userconfig.service >/dev/null 2>&1 || true
}

fr_ssh() {
    mkdir -p -- "$FP_ROOT/etc/ssh/sshd_config.d"
    printf 'PasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin no\n' \
        >"$FP_ROOT/etc/ssh/sshd_config.d/10-final-problem.conf"
    systemctl enable ssh.service >/dev/null 2>&1 || fr_log "could not enable ssh.service now; the 'ssh' file on the boot partition enables it"
}

fr_timezone() {
    [[ -e "$FP_ROOT/usr/share/zoneinfo/$FP_TIMEZONE" ]] || fr_fail "time zone '$FP_TIMEZONE' is not in /usr/share/zoneinfo; fix timezone in the inventory"
    ln -sfn "/usr/share/zoneinfo/$FP_TIMEZONE" "$FP_ROOT/etc/localtime"
    printf '%s\n' "$FP_TIMEZONE" >"$FP_ROOT/etc/timezone"
}

fr_network() {
    local dir="$FP_ROOT/etc/NetworkManager/system-connections" f
    mkdir -p -- "$dir"
    for f in "$FP_PAYLOAD"/network/*.nmconnection; do
        [[ -f "$f" ]] || continue
        # NetworkManager ignores keyfiles readable by others (nm-settings-keyfile(5)).
        install -m 600 -- "$f" "$dir/"
    done
    # They hold the Wi-Fi passphrase; the boot partition is readable by every user.
    rm -rf -- "$FP_PAYLOAD/network"
    if [[ -n "$FP_WIFI_COUNTRY" ]]; then
        # Raspberry Pi OS keeps Wi-Fi soft-blocked until a country is set; systemd
        # restores these saved rfkill states at boot (systemd-rfkill(8)).
        for f in "$FP_ROOT"/var/lib/systemd/rfkill/*:wlan; do
            # (an 'if': a bare test that fails on the last file would fail the script)
            if [[ -f "$f" ]]; then printf '0\n' >"$f"; fi
        done
    fi
}

fr_enable_firstboot() {
    local unit="$FP_ROOT/etc/systemd/system/final-problem-firstboot.service"
    mkdir -p -- "$FP_ROOT/etc/systemd/system/multi-user.target.wants"
    cat >"$unit" <<UNIT
[Unit]
Description=final-problem first boot (k3s and role setup)
Wants=network-online.target
After=network-online.target
ConditionPathExists=!/var/lib/final-problem/firstboot.done

[Service]
Type=oneshot
ExecStart=/bin/bash $FP_BOOT/fp/firstboot.sh
RemainAfterExit=yes

[Install]
WantedBy=multi-user.target
UNIT
    ln -sfn ../final-problem-firstboot.service \
        "$FP_ROOT/etc/systemd/system/multi-user.target.wants/final-problem-firstboot.service"
}

# remove_hook: drop the systemd.run arguments so this runs only once.
fr_remove_hook() {
    local cmdline="$FP_BOOT/cmdline.txt" word tmp
    local -a words=() kept=()
    read -r -a words <"$cmdline"
    for word in "${words[@]}"; do
        case "$word" in
            systemd.run=*|systemd.run_success_action=*|systemd.unit=kernel-command-line.target) ;;
            *) kept+=("$word") ;;
        esac
    done
    tmp="$cmdline.new"
    printf '%s\n' "${kept[*]}" >"$tmp"
    mv -f -- "$tmp" "$cmdline"
}

main() {
    [[ -f "$FP_PAYLOAD/node.env" ]] || fr_fail "no node.env beside $0; this boot partition was not written by pi/build.sh"
    # shellcheck source=/dev/null
    . "$FP_PAYLOAD/node.env"
    fr_log "setting up $FP_HOSTNAME"
    fr_hostname
    fr_user
    fr_ssh
    fr_timezone
    fr_network
    fr_enable_firstboot
    fr_remove_hook
    fr_log "done; rebooting into the normal system"
}

main "$@"
