# shellcheck shell=bash
# Shared helpers for the Raspberry Pi image builder. Sourced, never run.

# Progress and errors go to stderr so stdout stays clean for data.
fp_log() {
    printf '[pi-build] %s\n' "$*" >&2
}

fp_warn() {
    printf '[pi-build] warning: %s\n' "$*" >&2
}

# die MESSAGE...: print an error (what is wrong, the value, how to fix it) and exit 1.
fp_die() {
    printf '[pi-build] error: %s\n' "$*" >&2
    exit 1
}

# need_tool NAME DEBIAN_PACKAGE: fail clearly when a required program is missing.
fp_need_tool() {
    local tool="$1" package="$2"
    if ! command -v "$tool" >/dev/null 2>&1; then
        fp_die "required program '$tool' was not found on PATH; install the Debian package '$package' (sudo make system-deps installs every package this project needs)"
    fi
}

# sha256_of FILE: print the hex SHA-256 of FILE.
fp_sha256_of() {
    local digest
    digest="$(sha256sum -- "$1")"
    printf '%s\n' "${digest%% *}"
}
