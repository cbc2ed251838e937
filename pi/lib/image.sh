# shellcheck shell=bash
# Disk image helpers that work on an image file as an ordinary user: the partition
# table is read with sfdisk, the FAT boot partition is edited with mtools at its byte
# offset, and the ext4 root partition is only read, with debugfs at its byte offset.
# No loop devices, no mounts, no root. Sourced, never run; needs lib/common.sh.

# mtools refuses some images whose FAT geometry looks odd to it; the partition offset
# is given explicitly, so skip that check (mtools(5), MTOOLS_SKIP_CHECK).
export MTOOLS_SKIP_CHECK=1
# Keep mtools from reading a user's ~/.mtoolsrc that could change its behaviour.
export MTOOLSRC=/dev/null

# MBR partition type ids of a FAT boot partition: 0x0b/0x0c FAT32, 0x0e FAT16 LBA,
# 0x06 FAT16 (https://en.wikipedia.org/wiki/Partition_type). Raspberry Pi OS uses 0x0c.
FP_FAT_TYPES=" b c e 6 "
# Linux native partition, as Raspberry Pi OS's root partition.
FP_LINUX_TYPE="83"

# image_partitions IMAGE: check IMAGE looks like Raspberry Pi OS (MBR, partition 1
# FAT, partition 2 ext4) and set FP_BOOT_OFFSET, FP_BOOT_SIZE, FP_ROOT_OFFSET (bytes).
fp_image_partitions() {
    local image="$1" dump label sector_size boot_line root_line boot_type root_type
    [[ -f "$image" ]] || fp_die "image '$image' does not exist or is not a file; pass a Raspberry Pi OS Lite .img (or .img.xz) with --image"
    if ! dump="$(sfdisk --dump -- "$image" 2>/dev/null)"; then
        fp_die "image '$image' has no partition table that sfdisk can read; it must be a Raspberry Pi OS image (MBR with a FAT boot and an ext4 root partition)"
    fi
    label="$(sed -n 's/^label: *//p' <<<"$dump")"
    [[ "$label" == "dos" ]] || fp_die "image '$image' has a '${label:-unknown}' partition table; Raspberry Pi OS images use an MBR (dos) table"
    sector_size="$(sed -n 's/^sector-size: *//p' <<<"$dump")"
    sector_size="${sector_size:-512}"
    boot_line="$(grep -E '^[^ ]*1 : ' <<<"$dump" || true)"
    root_line="$(grep -E '^[^ ]*2 : ' <<<"$dump" || true)"
    [[ -n "$boot_line" && -n "$root_line" ]] || fp_die "image '$image' does not have the two partitions Raspberry Pi OS has (1: FAT boot, 2: ext4 root)"
    boot_type="$(fp__field type "$boot_line")"
    root_type="$(fp__field type "$root_line")"
    [[ "$FP_FAT_TYPES" == *" ${boot_type,,} "* ]] || fp_die "partition 1 of '$image' has type 0x$boot_type, not FAT (0x0c); this is not a Raspberry Pi OS image"
    [[ "${root_type,,}" == "$FP_LINUX_TYPE" ]] || fp_die "partition 2 of '$image' has type 0x$root_type, not Linux (0x83); this is not a Raspberry Pi OS image"
    FP_BOOT_OFFSET=$(( $(fp__field start "$boot_line") * sector_size ))
    FP_BOOT_SIZE=$(( $(fp__field size "$boot_line") * sector_size ))
    FP_ROOT_OFFSET=$(( $(fp__field start "$root_line") * sector_size ))
    if ! minfo -i "$image@@$FP_BOOT_OFFSET" >/dev/null 2>&1; then
        fp_die "partition 1 of '$image' (offset $FP_BOOT_OFFSET) holds no FAT file system; the image is damaged or not Raspberry Pi OS"
    fi
    if ! fp__is_ext4 "$image" "$FP_ROOT_OFFSET"; then
        fp_die "partition 2 of '$image' (offset $FP_ROOT_OFFSET) holds no ext4 file system; the image is damaged or not Raspberry Pi OS"
    fi
    if ! fp_fat_exists "$image" "$FP_BOOT_OFFSET" cmdline.txt; then
        fp_die "the boot partition of '$image' has no cmdline.txt; it is not a Raspberry Pi OS boot partition"
    fi
    export FP_BOOT_OFFSET FP_BOOT_SIZE FP_ROOT_OFFSET
}

# field NAME LINE: value of NAME= in one sfdisk --dump partition line.
fp__field() {
    local name="$1" line="$2"
    sed -E -n "s/.*[ ,]${name}= *([^ ,]+).*/\\1/p" <<<"$line"
}

# is_ext4 IMAGE OFFSET: true if an ext2/3/4 superblock magic (0xEF53, little-endian, at
# byte 56 of the superblock that starts 1024 bytes in; ext4 disk layout docs) is there.
fp__is_ext4() {
    local magic
    magic="$(od -An -tx1 -j $(( $2 + 1024 + 56 )) -N2 -- "$1" | tr -d ' \n')"
    [[ "$magic" == "53ef" ]]
}

# root_has IMAGE OFFSET PATH: true if PATH exists in the ext4 root file system.
fp_root_has() {
    local out
    out="$(debugfs -R "stat $3" "$1?offset=$2" 2>&1)" || true
    [[ "$out" == *"Inode:"* ]]
}

# fat_exists IMAGE OFFSET PATH: true if PATH exists on the FAT file system.
fp_fat_exists() {
    mdir -b -i "$1@@$2" "::/$3" >/dev/null 2>&1
}

# fat_read IMAGE OFFSET PATH DEST: copy a file out of the FAT file system, keeping its
# modification time.
fp_fat_read() {
    mcopy -n -m -i "$1@@$2" "::/$3" "$4" || fp_die "cannot read '$3' from the boot partition of '$1'"
}

# fat_put IMAGE OFFSET SRC_DIR: copy the contents of SRC_DIR onto the FAT root,
# replacing files of the same name. Times are kept from the sources (-m) so that the
# same inputs give the same image.
fp_fat_put() {
    local image="$1" offset="$2" src="$3" entry
    for entry in "$src"/* ; do
        [[ -e "$entry" ]] || continue
        if [[ -d "$entry" ]] && fp_fat_exists "$image" "$offset" "$(basename -- "$entry")"; then
            mdeltree -i "$image@@$offset" "::/$(basename -- "$entry")" \
                || fp_die "cannot replace folder '$(basename -- "$entry")' on the boot partition of '$image'"
        fi
        mcopy -s -o -m -Q -i "$image@@$offset" "$entry" "::/" \
            || fp_die "cannot copy '$(basename -- "$entry")' onto the boot partition of '$image' (is it full?)"
    done
}

# fat_free_bytes IMAGE OFFSET: free space on the FAT file system, in bytes.
fp_fat_free_bytes() {
    local line
    line="$(mdir -i "$1@@$2" ::/ 2>/dev/null | sed -n 's/^[^0-9]*\([0-9][0-9 ]*\) bytes free.*/\1/p' | tail -n 1)"
    printf '%s\n' "${line// /}"
}

# cmdline_add CMDLINE TOKEN...: print CMDLINE (one line of kernel arguments) with each
# TOKEN present exactly once. A TOKEN of the form KEY=VALUE whose KEY is marked
# replaceable with a trailing '=' in FP_CMDLINE_REPLACE_KEYS replaces any other value of
# KEY. A 'cgroup_disable=memory' is removed, since it would turn the memory cgroup off.
FP_CMDLINE_REPLACE_KEYS=" cfg80211.ieee80211_regdom= systemd.run= systemd.run_success_action= systemd.unit= "
fp_cmdline_add() {
    local line="$1"; shift
    local -a words=() out=()
    local word token key found
    read -r -a words <<<"$line"
    for word in "${words[@]}"; do
        [[ "$word" == "cgroup_disable=memory" ]] && continue
        out+=("$word")
    done
    for token in "$@"; do
        key="${token%%=*}="
        found=0
        local -a kept=()
        for word in "${out[@]}"; do
            if [[ "$word" == "$token" ]]; then
                (( found )) && continue
                found=1
            elif [[ "$FP_CMDLINE_REPLACE_KEYS" == *" $key "* && "$word" == "$key"* ]]; then
                continue
            fi
            kept+=("$word")
        done
        out=("${kept[@]}")
        (( found )) || out+=("$token")
    done
    printf '%s\n' "${out[*]}"
}

# config_txt_kernel: print config.txt (read on stdin) with the platform's kernel block
# at the end, replacing an earlier copy of the block (so a rebuild keeps one).
#
# Envoy (the edge proxy and the consul-dataplane sidecars) allocates with tcmalloc, which
# places memory at addresses that need a kernel with at least 47-bit user virtual
# addresses. Raspberry Pi OS's 4K-page kernels (kernel8.img) have 39 (3-level page
# tables): Envoy aborts at start, "MmapAligned() failed" (envoyproxy/envoy#15235,
# #23339; raspberrypi/linux#4375, #6261). The Pi 5's default kernel_2712.img uses 16K
# pages and 47-bit addresses, on which tcmalloc's addresses (below 2^45) fit, so a Pi 5
# is pinned to it: the common advice "kernel=kernel8.img" (4K pages for jemalloc
# programs) would make Envoy abort there too. A Pi 4 has no Raspberry Pi kernel with more
# than 39 bits; first boot labels each node with what its kernel offers
# (final-problem.io/arm64-va-bits) and the edge Envoy is scheduled only where it can run.
# Later config.txt lines override earlier ones, so the block goes last
# (https://www.raspberrypi.com/documentation/computers/config_txt.html, conditional filters).
FP_CONFIG_BEGIN="# BEGIN final-problem: kernel for Envoy (pi/README.md)"
FP_CONFIG_END="# END final-problem"
fp_config_txt_kernel() {
    awk -v begin="$FP_CONFIG_BEGIN" -v end="$FP_CONFIG_END" '
        $0 == begin {skip = 1; next}
        skip && $0 == end {skip = 0; next}
        !skip {print}
    '
    printf '%s\n[pi5]\nkernel=kernel_2712.img\n[all]\n%s\n' "$FP_CONFIG_BEGIN" "$FP_CONFIG_END"
}
