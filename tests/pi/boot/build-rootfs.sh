#!/usr/bin/env bash
# Build, once, the Debian root that the boot tests (tests/pi/test_boot.py) start with
# systemd-nspawn, as a tarball in the cache outside the clone:
#   ${XDG_CACHE_HOME:-$HOME/.cache}/final-problem/pi-rootfs-<suite>-<key>/rootfs.tar
# <key> hashes the package list, so changing it builds a new root (a change to the steps
# below does not: delete the cache folder to rebuild).
# debootstrap needs root. Usage: build-rootfs.sh [--print-path]
set -euo pipefail

HERE="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)"
# Raspberry Pi OS Lite is Debian with Raspberry Pi packages on top; the suite of this
# machine's Debian keeps the keyring and debootstrap script at hand.
SUITE="${FP_ROOTFS_SUITE:-bookworm}"
MIRROR="${FP_ROOTFS_MIRROR:-http://deb.debian.org/debian}"
PACKAGES="$(grep -v '^[[:space:]]*#' "$HERE/rootfs-packages.txt" | xargs)"
KEY="$(printf '%s\n' "$PACKAGES" | sha256sum | cut -c1-16)"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/final-problem/pi-rootfs-$SUITE-$KEY"

if [[ "${1:-}" == --print-path ]]; then
    printf '%s\n' "$CACHE/rootfs.tar"
    exit 0
fi
if [[ -f "$CACHE/.installed" && -f "$CACHE/rootfs.tar" ]]; then
    exit 0
fi
if [[ "$(id -u)" -ne 0 ]]; then
    echo "build-rootfs.sh: debootstrap needs root; run 'sudo make pi-rootfs' once (the boot tests fail without $CACHE/rootfs.tar)" >&2
    exit 1
fi
for tool in debootstrap systemd-nspawn; do
    command -v "$tool" >/dev/null || {
        echo "build-rootfs.sh: '$tool' is missing; 'sudo make system-deps' installs it" >&2
        exit 1
    }
done

mkdir -p -- "$CACHE"
work="$(mktemp -d -- "$CACHE/.build.XXXXXX")"
trap 'rm -rf -- "$work"' EXIT
log="$CACHE/build.log"
echo "==> Debian $SUITE root for the boot tests in $CACHE (once; log: $log)" >&2
fail() {
    tail -n 30 -- "$log" >&2
    echo "build-rootfs.sh: $1 (end of $log above)" >&2
    exit 1
}
# debootstrap's own dependency resolution is minimal, so it lays down the base system
# with systemd only, and apt, inside the new root, installs the list with its
# dependencies (no Recommends, as on a lean image).
debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus "$SUITE" "$work/root" "$MIRROR" >"$log" 2>&1 \
    || fail "debootstrap failed"
# --register=no --keep-unit: nspawn then needs no systemd or D-Bus on this machine
# (build containers and CI runners have neither).
# shellcheck disable=SC2086 # one word per package
systemd-nspawn --quiet --register=no --keep-unit -D "$work/root" --setenv=DEBIAN_FRONTEND=noninteractive \
    sh -c "apt-get update && apt-get install -y --no-install-recommends $PACKAGES && apt-get clean" >>"$log" 2>&1 \
    || fail "apt-get install in the new root failed"
rm -rf -- "$work/root/var/lib/apt/lists/"*_Packages "$work/root/var/lib/apt/lists/"*_InRelease
tar --numeric-owner --xattrs -C "$work/root" -cf "$work/rootfs.tar" .
mv -f -- "$work/rootfs.tar" "$CACHE/rootfs.tar"
printf '%s %s\n' "$SUITE" "$PACKAGES" >"$CACHE/.installed"
echo "==> $CACHE/rootfs.tar" >&2
