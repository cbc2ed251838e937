#!/usr/bin/env bash
# Build one ready-to-flash Raspberry Pi OS image per node of an inventory, without root.
# See pi/README.md for the inventory format, the roles and what first boot does.
set -euo pipefail

FP_SELF="${BASH_SOURCE[0]}"
[[ "$FP_SELF" == */* ]] || FP_SELF="./$FP_SELF"
FP_PI_DIR="$(cd -- "${FP_SELF%/*}" && pwd)"
FP_REPO_ROOT="$(cd -- "$FP_PI_DIR/.." && pwd)"
# shellcheck source=pi/lib/common.sh
. "$FP_PI_DIR/lib/common.sh"
# shellcheck source=pi/lib/image.sh
. "$FP_PI_DIR/lib/image.sh"
# shellcheck source=pi/versions.env
. "$FP_PI_DIR/versions.env"

usage() {
    cat <<'EOF'
Usage: pi/build.sh --image FILE | --image-url URL --image-sha256 HEX
                   --inventory FILE [options]

Writes OUT/<hostname>.img for every node of the inventory. The source image is never
modified. Secrets (the k3s token) go to SECRETS/<cluster>-k3s-token, created once.

  --image FILE          Raspberry Pi OS Lite arm64 image (.img or .img.xz)
  --image-url URL       download the image instead (kept in OUT/.cache)
  --image-sha256 HEX    expected SHA-256 of the image file or download (required with
                        --image-url, checked when given with --image)
  --inventory FILE      nodes to build (see pi/inventory.example.yaml)
  --out DIR             output folder (default: pi/out)
  --manifests DIR       Kubernetes manifests the first server auto-deploys
                        (default: dist/pi, written by 'make synth')
  --secrets DIR         where the k3s token file is kept (default: pi/secrets)
  --k3s-airgap DIR      folder with k3s-arm64 and k3s-airgap-images-arm64.tar.zst (and
                        optionally sha256sum-arm64.txt): carried on the image so first
                        boot installs k3s without internet
  --firstboot MODE      auto (default), cloud-init or firstrun
  -h, --help            this help
EOF
}

fp_parse_args() {
    IMAGE="" IMAGE_URL="" IMAGE_SHA256="" INVENTORY="" OUT="$FP_PI_DIR/out"
    MANIFESTS="$FP_REPO_ROOT/dist/pi" SECRETS="$FP_PI_DIR/secrets" AIRGAP="" FIRSTBOOT="auto"
    while (( $# )); do
        case "$1" in
            --image) IMAGE="${2:-}"; shift 2 ;;
            --image-url) IMAGE_URL="${2:-}"; shift 2 ;;
            --image-sha256) IMAGE_SHA256="${2:-}"; shift 2 ;;
            --inventory) INVENTORY="${2:-}"; shift 2 ;;
            --out) OUT="${2:-}"; shift 2 ;;
            --manifests) MANIFESTS="${2:-}"; shift 2 ;;
            --secrets) SECRETS="${2:-}"; shift 2 ;;
            --k3s-airgap) AIRGAP="${2:-}"; shift 2 ;;
            --firstboot) FIRSTBOOT="${2:-}"; shift 2 ;;
            -h|--help) usage; exit 0 ;;
            *) usage >&2; fp_die "unknown argument '$1'; see the usage above" ;;
        esac
    done
    [[ -n "$INVENTORY" ]] || fp_die "no inventory given; pass --inventory FILE (example: pi/inventory.example.yaml)"
    if [[ -n "$IMAGE" && -n "$IMAGE_URL" ]]; then
        fp_die "both --image and --image-url given; pass only one"
    fi
    [[ -n "$IMAGE" || -n "$IMAGE_URL" ]] || fp_die "no source image; pass --image FILE or --image-url URL --image-sha256 HEX"
    if [[ -n "$IMAGE_URL" && -z "$IMAGE_SHA256" ]]; then
        fp_die "--image-url '$IMAGE_URL' needs --image-sha256 with the SHA-256 published beside the download"
    fi
    if [[ -n "$IMAGE_SHA256" ]]; then
        IMAGE_SHA256="${IMAGE_SHA256,,}"
        [[ "$IMAGE_SHA256" =~ ^[0-9a-f]{64}$ ]] || fp_die "--image-sha256 '$IMAGE_SHA256' is not 64 hex digits"
    fi
    case "$FIRSTBOOT" in auto|cloud-init|firstrun) ;; *) fp_die "--firstboot '$FIRSTBOOT' must be auto, cloud-init or firstrun" ;; esac
}

fp_check_tools() {
    # FAT stores local times; fix the zone so times do not depend on the build machine.
    export TZ=UTC
    fp_need_tool python3 python3
    if ! python3 -c 'import yaml' 2>/dev/null; then
        fp_die "python3 cannot import yaml; install the Debian package 'python3-yaml' or 'pip install pyyaml' (sudo make system-deps installs every package this project needs)"
    fi
    fp_need_tool sfdisk fdisk
    fp_need_tool mcopy mtools
    fp_need_tool debugfs e2fsprogs
    fp_need_tool sha256sum coreutils
    fp_need_tool od coreutils
}

# check_sha256 FILE HEX WHAT: stop when FILE's digest is not HEX.
fp_check_sha256() {
    local actual
    actual="$(fp_sha256_of "$1")"
    [[ "$actual" == "$2" ]] || fp_die "$3 '$1' has SHA-256 $actual but $2 was expected; the file is corrupt or not the one you meant (download it again, or fix --image-sha256)"
}

# source_image: set SOURCE to a plain .img to copy from (downloading or unpacking first).
fp_source_image() {
    local src="$IMAGE"
    if [[ -n "$IMAGE_URL" ]]; then
        fp_need_tool curl curl
        local cache="$OUT/.cache" name
        name="$(basename -- "${IMAGE_URL%%\?*}")"
        mkdir -p -- "$cache"
        src="$cache/$name"
        if [[ ! -f "$src" ]] || [[ "$(fp_sha256_of "$src")" != "$IMAGE_SHA256" ]]; then
            fp_log "downloading $IMAGE_URL"
            curl -fL --retry 3 --progress-bar -o "$WORK/download" -- "$IMAGE_URL" \
                || fp_die "download of '$IMAGE_URL' failed; check the URL and your connection, or download it yourself and pass --image"
            fp_check_sha256 "$WORK/download" "$IMAGE_SHA256" "download of $IMAGE_URL"
            mv -f -- "$WORK/download" "$src"
        fi
    elif [[ -n "$IMAGE_SHA256" ]]; then
        [[ -f "$src" ]] || fp_die "image '$src' does not exist; pass the path of a Raspberry Pi OS Lite image"
        fp_check_sha256 "$src" "$IMAGE_SHA256" "image"
    fi
    [[ -f "$src" ]] || fp_die "image '$src' does not exist; pass the path of a Raspberry Pi OS Lite image"
    if [[ "$src" == *.xz ]]; then
        fp_need_tool xz xz-utils
        fp_log "unpacking $src"
        xz -dc -- "$src" >"$WORK/source.img" || fp_die "cannot unpack '$src'; is it a complete .img.xz?"
        src="$WORK/source.img"
    fi
    SOURCE="$src"
}

fp_check_inventory() {
    local errors
    if ! errors="$(python3 "$FP_PI_DIR/inventory.py" check "$INVENTORY" 2>&1)"; then
        # The reasons come last, where the eye lands; the example shows the format.
        printf '[pi-build] error: inventory %s is not valid (pi/inventory.example.yaml shows the format):\n%s\n' \
            "$INVENTORY" "$errors" >&2
        exit 1
    fi
    [[ -z "$errors" ]] || printf '%s\n' "$errors" >&2
    PLAN="$(python3 "$FP_PI_DIR/inventory.py" plan "$INVENTORY")"
    CLUSTER="$(python3 "$FP_PI_DIR/inventory.py" cluster "$INVENTORY")"
}

fp_check_manifests() {
    [[ -d "$MANIFESTS" ]] || fp_die "manifests folder '$MANIFESTS' does not exist; run 'make synth' to write dist/pi, or pass --manifests DIR"
    local -a found=()
    mapfile -t found < <(find "$MANIFESTS" -maxdepth 1 -type f \( -name '*.yaml' -o -name '*.yml' \) | LC_ALL=C sort)
    (( ${#found[@]} )) || fp_die "manifests folder '$MANIFESTS' has no *.yaml files; run 'make synth' first, or pass --manifests DIR"
    MANIFEST_FILES=("${found[@]}")
}

# check_airgap: find the k3s binary and images archive in AIRGAP, checking them
# against the release's sha256sum file when it is there.
fp_check_airgap() {
    [[ -d "$AIRGAP" ]] || fp_die "--k3s-airgap '$AIRGAP' is not a folder; put k3s-arm64 and k3s-airgap-images-arm64.tar.zst from the $K3S_VERSION release in it"
    AIRGAP_BIN="" AIRGAP_IMAGES=""
    local f
    for f in k3s-arm64 k3s; do
        [[ -f "$AIRGAP/$f" ]] && { AIRGAP_BIN="$AIRGAP/$f"; break; }
    done
    for f in k3s-airgap-images-arm64.tar.zst k3s-airgap-images-arm64.tar.gz k3s-airgap-images-arm64.tar; do
        [[ -f "$AIRGAP/$f" ]] && { AIRGAP_IMAGES="$AIRGAP/$f"; break; }
    done
    [[ -n "$AIRGAP_BIN" ]] || fp_die "--k3s-airgap '$AIRGAP' has no k3s-arm64 binary; download it from the $K3S_VERSION release"
    [[ -n "$AIRGAP_IMAGES" ]] || fp_die "--k3s-airgap '$AIRGAP' has no k3s-airgap-images-arm64.tar.zst (or .tar.gz/.tar); download it from the $K3S_VERSION release"
    if [[ -f "$AIRGAP/sha256sum-arm64.txt" ]]; then
        local name expected
        for f in "$AIRGAP_BIN" "$AIRGAP_IMAGES"; do
            name="$(basename -- "$f")"
            expected="$(awk -v n="$name" '$2 == n || $2 == "*" n {print $1}' "$AIRGAP/sha256sum-arm64.txt")"
            [[ -n "$expected" ]] || fp_die "'$AIRGAP/sha256sum-arm64.txt' lists no checksum for '$name'; use the files of one release"
            fp_check_sha256 "$f" "$expected" "air-gap file"
        done
        fp_log "air-gap files match sha256sum-arm64.txt"
    else
        fp_warn "no sha256sum-arm64.txt in '$AIRGAP'; the k3s files are carried unchecked (add it from the release to check them)"
    fi
}

# token: create SECRETS/<cluster>-k3s-token once (never printed), reuse it afterwards.
fp_ensure_token() {
    TOKEN_FILE="$SECRETS/$CLUSTER-k3s-token"
    if [[ -s "$TOKEN_FILE" ]]; then
        fp_log "reusing the k3s token in $TOKEN_FILE"
        return
    fi
    mkdir -p -- "$SECRETS"
    chmod 700 -- "$SECRETS"
    local tmp
    tmp="$(mktemp -- "$SECRETS/.token.XXXXXX")"
    # 32 random bytes as hex; k3s accepts any string as the shared token
    # (https://docs.k3s.io/cli/token).
    od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$tmp"
    chmod 600 -- "$tmp"
    mv -f -- "$tmp" "$TOKEN_FILE"
    fp_log "created a new k3s token in $TOKEN_FILE (keep it; it is not in git)"
}

fp_run_zookeeper_renderer() {
    local myid="$1" servers="$2" dest="$3" py="${PYTHON:-python3}" f
    mkdir -p -- "$dest"
    if ! PYTHONPATH="$FP_REPO_ROOT/src:$FP_REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}" \
        "$py" -m final_problem.renderers.zookeeper --servers "$servers" --myid "$myid" --out "$dest" >&2; then
        fp_die "the ZooKeeper renderer failed ('$py -m final_problem.renderers.zookeeper --servers $servers --myid $myid'); install the project's Python package, or set PYTHON to a Python that has it"
    fi
    for f in zoo.cfg myid zookeeper.service; do
        [[ -s "$dest/$f" ]] || fp_die "the ZooKeeper renderer did not write '$f' into its --out folder; it must write zoo.cfg, myid and zookeeper.service"
    done
    fp_check_zookeeper_unit "$dest"
}

# check_zookeeper_unit DIR: under ProtectSystem=strict the service can write only its
# ReadWritePaths, so zoo.cfg's dataDir and dataLogDir must lie inside them (first boot
# creates those folders for the unit's user).
fp_check_zookeeper_unit() {
    local unit="$1/zookeeper.service" key path entry covered
    local -a writable=()
    grep -q '^ProtectSystem=strict' "$unit" || return 0
    read -r -a writable <<<"$(sed -n 's/^ReadWritePaths=//p' "$unit" | tr '\n' ' ')"
    for key in dataDir dataLogDir; do
        path="$(sed -n "s/^[[:space:]]*${key}[[:space:]]*=[[:space:]]*//p" "$1/zoo.cfg" | tail -n 1)"
        [[ -n "$path" ]] || continue
        covered=0
        for entry in "${writable[@]}"; do
            entry="${entry#[-+]}"
            [[ "$path" == "$entry" || "$path" == "$entry"/* ]] && covered=1
        done
        (( covered )) || fp_die "the ZooKeeper renderer's zookeeper.service could not write zoo.cfg's $key '$path': it has ProtectSystem=strict and ReadWritePaths='${writable[*]}'; fix the renderer"
    done
}

# stage_project DEST: the project's package source and the pinned versions of its
# clients' libraries, installed into the workstation's Python environment at first boot.
fp_stage_project() {
    local dest="$1"
    mkdir -p -- "$dest"
    tar -C "$FP_REPO_ROOT" --exclude=__pycache__ --exclude='*.pyc' -cf - pyproject.toml README.md final_problem \
        | tar -C "$dest" -xf - || fp_die "could not copy the project's package from $FP_REPO_ROOT"
    grep -E '^(boto3|kazoo|kafka-python|redis|PyYAML)==' "$FP_REPO_ROOT/requirements.txt" >"$dest/requirements-clients.txt" \
        || fp_die "requirements.txt in $FP_REPO_ROOT pins none of the clients' libraries"
}

# stage_node HOST ROLE K3S_INIT ZK_MYID ZK_SERVERS: prepare DIR/boot, the files that go
# onto the node's boot partition, and DIR/cmdline.txt.
fp_stage_node() {
    local host="$1" role="$2" init="$3" myid="$4" servers="$5"
    local stage="$WORK/nodes/$host/boot" f
    mkdir -p -- "$stage/fp"
    python3 "$FP_PI_DIR/inventory.py" render "$INVENTORY" --hostname "$host" --out "$stage" \
        --mode "$MODE" --boot-dir "$BOOT_DIR" || fp_die "could not render the first-boot files of '$host'"
    cp -- "$FP_PI_DIR/firstboot/firstboot.sh" "$FP_PI_DIR/firstboot/firstrun.sh" \
        "$FP_PI_DIR/versions.env" "$stage/fp/"
    # An empty file named ssh on the boot partition turns the SSH server on in
    # Raspberry Pi OS (https://www.raspberrypi.com/documentation/computers/remote-access.html).
    : >"$stage/ssh"
    case "$role" in
        server|agent)
            install -m 600 -- "$TOKEN_FILE" "$stage/fp/k3s-token"
            if [[ -n "$AIRGAP" ]]; then
                mkdir -p -- "$stage/fp/airgap"
                cp -- "$AIRGAP_BIN" "$stage/fp/airgap/k3s"
                cp -- "$AIRGAP_IMAGES" "$stage/fp/airgap/"
            fi
            if [[ "$init" == "true" ]]; then
                mkdir -p -- "$stage/fp/manifests"
                for f in "${MANIFEST_FILES[@]}"; do
                    cp -- "$f" "$stage/fp/manifests/"
                done
            fi
            ;;
        zookeeper)
            fp_run_zookeeper_renderer "$myid" "$servers" "$stage/fp/zookeeper"
            ;;
        workstation)
            fp_stage_project "$stage/fp/project"
            ;;
    esac

    # Kernel command line: memory cgroup for k3s (https://docs.k3s.io/advanced,
    # "Raspberry Pi"), the Wi-Fi country, and the first-run hook where there is no
    # cloud-init (systemd.run, systemd.run_success_action: kernel-command-line(7)).
    local cmdline wifi_country
    cmdline="$(tr -d '\r' <"$WORK/cmdline.orig" | tr '\n' ' ')"
    local -a flags=()
    if [[ "$role" == server || "$role" == agent ]]; then
        flags+=(cgroup_memory=1 cgroup_enable=memory)
    fi
    wifi_country="$( . "$stage/fp/node.env"; printf '%s' "$FP_WIFI_COUNTRY")"
    [[ -z "$wifi_country" ]] || flags+=("cfg80211.ieee80211_regdom=$wifi_country")
    if [[ "$MODE" == firstrun ]]; then
        flags+=("systemd.run=$BOOT_DIR/fp/firstrun.sh" systemd.run_success_action=reboot
                systemd.unit=kernel-command-line.target)
    fi
    fp_cmdline_add "$cmdline" "${flags[@]}" >"$stage/cmdline.txt"
    fp_config_txt_kernel <"$WORK/config.orig" >"$stage/config.txt"
    find "$stage" -exec touch -h -d "@$EPOCH" {} +
}

# write_node HOST: copy the source image and put the staged files on its boot partition.
fp_write_node() {
    local host="$1" stage="$WORK/nodes/$1/boot" partial="$OUT/.$1.img.partial"
    local need free
    PARTIALS+=("$partial")
    fp_log "[$host] copying the source image"
    cp --sparse=always -- "$SOURCE" "$partial"
    # Images carry the k3s token and Wi-Fi passphrase: readable by the owner only.
    chmod 600 -- "$partial"
    need="$(du -s -B1 --apparent-size -- "$stage" | cut -f1)"
    free="$(fp_fat_free_bytes "$partial" "$FP_BOOT_OFFSET")"
    if [[ -n "$free" ]] && (( need > free )); then
        fp_die "the boot partition of '$host' has $free bytes free but its files need $need; the air-gap archive is too big for this image's boot partition"
    fi
    fp_log "[$host] writing $(find "$stage" -type f | wc -l) files to the boot partition"
    fp_fat_put "$partial" "$FP_BOOT_OFFSET" "$stage"
}

fp_cleanup() {
    local p
    for p in "${PARTIALS[@]}"; do
        rm -f -- "$p"
    done
    [[ -z "${WORK:-}" ]] || rm -rf -- "$WORK"
}

main() {
    fp_parse_args "$@"
    fp_check_tools
    PARTIALS=()
    WORK="$(mktemp -d)"
    trap fp_cleanup EXIT
    trap 'exit 130' INT TERM

    fp_log "checking inventory $INVENTORY"
    fp_check_inventory
    local -a lines=()
    mapfile -t lines <<<"$PLAN"
    local has_k3s=0 line
    for line in "${lines[@]}"; do
        [[ "$line" == *$'\tserver\t'* || "$line" == *$'\tagent\t'* ]] && has_k3s=1
    done
    MANIFEST_FILES=()
    if [[ "$PLAN" == *$'\tserver\t'* ]]; then
        fp_check_manifests
    fi
    if [[ -n "$AIRGAP" ]]; then
        (( has_k3s )) || fp_die "--k3s-airgap given but no node has role server or agent"
        fp_check_airgap
    fi
    fp_source_image
    fp_log "checking the partitions of $SOURCE"
    fp_image_partitions "$SOURCE"
    if fp_root_has "$SOURCE" "$FP_ROOT_OFFSET" /boot/firmware; then
        BOOT_DIR=/boot/firmware
    else
        BOOT_DIR=/boot
    fi
    MODE="$FIRSTBOOT"
    if [[ "$MODE" == auto ]]; then
        if fp_root_has "$SOURCE" "$FP_ROOT_OFFSET" /usr/bin/cloud-init; then MODE=cloud-init; else MODE=firstrun; fi
    fi
    fp_log "first boot through $MODE; boot partition mounted at $BOOT_DIR on the Pi"
    fp_fat_read "$SOURCE" "$FP_BOOT_OFFSET" cmdline.txt "$WORK/cmdline.orig"
    if fp_fat_exists "$SOURCE" "$FP_BOOT_OFFSET" config.txt; then
        fp_fat_read "$SOURCE" "$FP_BOOT_OFFSET" config.txt "$WORK/config.orig"
    else
        : >"$WORK/config.orig"
    fi
    # Files written to the boot partition get the time of the image's own cmdline.txt
    # (or SOURCE_DATE_EPOCH), so the same inputs give the same images however the
    # source file was obtained (https://reproducible-builds.org/specs/source-date-epoch/).
    EPOCH="${SOURCE_DATE_EPOCH:-$(stat -c %Y -- "$WORK/cmdline.orig")}"
    (( has_k3s )) && fp_ensure_token

    local host role init myid servers count=0 total="${#lines[@]}"
    for line in "${lines[@]}"; do
        IFS=$'\t' read -r host role init myid servers <<<"$line"
        count=$(( count + 1 ))
        fp_log "[$count/$total] preparing $host ($role)"
        fp_stage_node "$host" "$role" "$init" "$myid" "$servers"
    done
    mkdir -p -- "$OUT"
    for line in "${lines[@]}"; do
        IFS=$'\t' read -r host _ <<<"$line"
        fp_write_node "$host"
    done
    # Every image is complete: move them into place together.
    for line in "${lines[@]}"; do
        IFS=$'\t' read -r host _ <<<"$line"
        mv -f -- "$OUT/.$host.img.partial" "$OUT/$host.img"
        fp_log "wrote $OUT/$host.img"
    done
    PARTIALS=()
    fp_log "done: ${#lines[@]} image(s) in $OUT"
}

main "$@"
