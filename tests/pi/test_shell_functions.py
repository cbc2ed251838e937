"""Unit tests of the builder's shell functions, sourced into bash."""

from __future__ import annotations

import subprocess

import pytest

from pi_helpers import BOOT_OFFSET, PI, env, make_pi_image, run, tool


def bash(script: str, *args: str) -> subprocess.CompletedProcess:
    prelude = f'set -euo pipefail; . "{PI}/lib/common.sh"; . "{PI}/lib/image.sh"\n'
    return run(["bash", "-c", prelude + script, "test", *args])


def cmdline_add(line: str, *tokens: str) -> str:
    r = bash('fp_cmdline_add "$@"', line, *tokens)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("\n") == 1
    return r.stdout.strip()


def test_cmdline_appends_missing_flags():
    assert cmdline_add("console=tty1 rootwait", "cgroup_memory=1", "cgroup_enable=memory") == \
        "console=tty1 rootwait cgroup_memory=1 cgroup_enable=memory"


def test_cmdline_is_idempotent():
    once = cmdline_add("console=tty1 rootwait", "cgroup_memory=1", "cgroup_enable=memory")
    assert cmdline_add(once, "cgroup_memory=1", "cgroup_enable=memory") == once


def test_cmdline_collapses_duplicates_of_a_flag():
    out = cmdline_add("a cgroup_enable=memory b cgroup_enable=memory", "cgroup_enable=memory")
    assert out.split().count("cgroup_enable=memory") == 1
    assert out.split()[:2] == ["a", "cgroup_enable=memory"]


def test_cmdline_keeps_other_cgroup_enable_values():
    out = cmdline_add("a cgroup_enable=cpuset", "cgroup_enable=memory").split()
    assert "cgroup_enable=cpuset" in out and "cgroup_enable=memory" in out


def test_cmdline_removes_memory_cgroup_disable():
    out = cmdline_add("a cgroup_disable=memory b", "cgroup_enable=memory").split()
    assert "cgroup_disable=memory" not in out and out == ["a", "b", "cgroup_enable=memory"]


def test_cmdline_replaces_wifi_country():
    out = cmdline_add("a cfg80211.ieee80211_regdom=US", "cfg80211.ieee80211_regdom=GB").split()
    assert out == ["a", "cfg80211.ieee80211_regdom=GB"]


def test_image_partitions_reports_offsets(tmp_path):
    img = make_pi_image(tmp_path / "pi.img")
    r = bash('fp_image_partitions "$1"; echo "$FP_BOOT_OFFSET $FP_BOOT_SIZE $FP_ROOT_OFFSET"', str(img))
    assert r.returncode == 0, r.stderr
    boot, size, root = map(int, r.stdout.split())
    assert boot == BOOT_OFFSET and size == 64 << 20 and root == BOOT_OFFSET + (64 << 20)


def test_image_partitions_rejects_gpt(tmp_path):
    img = tmp_path / "gpt.img"
    with open(img, "wb") as f:
        f.truncate(16 << 20)
    subprocess.run([tool("sfdisk"), "-q", str(img)], input="label: gpt\nsize=4MiB\nsize=4MiB\n", text=True,
                   check=True, env=env())
    r = bash('fp_image_partitions "$1"', str(img))
    assert r.returncode == 1
    assert "'gpt' partition table" in r.stderr and "MBR" in r.stderr


def test_image_partitions_rejects_unformatted_root(tmp_path):
    img = make_pi_image(tmp_path / "pi.img")
    root_offset = BOOT_OFFSET + (64 << 20)
    with open(img, "r+b") as f:  # wipe the ext4 superblock
        f.seek(root_offset + 1024)
        f.write(b"\0" * 1024)
    r = bash('fp_image_partitions "$1"', str(img))
    assert r.returncode == 1 and "no ext4 file system" in r.stderr


def test_image_partitions_rejects_missing_file(tmp_path):
    r = bash('fp_image_partitions "$1"', str(tmp_path / "nope.img"))
    assert r.returncode == 1 and "does not exist" in r.stderr


@pytest.mark.parametrize("cloud_init", [True, False])
def test_root_has_reads_ext4_without_mounting(tmp_path, cloud_init):
    img = make_pi_image(tmp_path / "pi.img", cloud_init=cloud_init)
    r = bash('fp_image_partitions "$1"; fp_root_has "$1" "$FP_ROOT_OFFSET" /usr/bin/cloud-init && echo yes || echo no',
             str(img))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == ("yes" if cloud_init else "no")


def test_fat_put_replaces_folders_and_files(tmp_path):
    img = make_pi_image(tmp_path / "pi.img")
    first = tmp_path / "first"
    (first / "fp").mkdir(parents=True)
    (first / "fp" / "old.txt").write_text("old\n")
    (first / "cmdline.txt").write_text("new cmdline\n")
    second = tmp_path / "second"
    (second / "fp").mkdir(parents=True)
    (second / "fp" / "new.txt").write_text("new\n")
    r = bash('fp_fat_put "$1" "$2" "$3"; fp_fat_put "$1" "$2" "$4"; mdir -b -i "$1@@$2" ::/fp; mtype -i "$1@@$2" ::/cmdline.txt',
             str(img), str(BOOT_OFFSET), str(first), str(second))
    assert r.returncode == 0, r.stderr
    assert "new.txt" in r.stdout and "old.txt" not in r.stdout
    assert "new cmdline" in r.stdout


def test_fat_free_bytes_is_a_number(tmp_path):
    img = make_pi_image(tmp_path / "pi.img")
    r = bash('fp_fat_free_bytes "$1" "$2"', str(img), str(BOOT_OFFSET))
    assert r.returncode == 0
    assert 60 << 20 < int(r.stdout) < 64 << 20


def test_need_tool_names_package_and_make_target():
    r = bash('fp_need_tool no-such-program-xyz some-package')
    assert r.returncode == 1
    assert "'no-such-program-xyz'" in r.stderr and "'some-package'" in r.stderr
    assert "sudo make system-deps" in r.stderr


def config_txt(text: str) -> str:
    r = run(["bash", "-c", f'set -euo pipefail; . "{PI}/lib/common.sh"; . "{PI}/lib/image.sh"; fp_config_txt_kernel'],
            input=text)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_config_txt_pins_the_pi5_kernel_last():
    out = config_txt("[all]\narm_64bit=1\n[pi5]\nkernel=kernel8.img\n")
    lines = out.splitlines()
    # The original settings stay; the block comes after them, so it wins.
    assert lines[:4] == ["[all]", "arm_64bit=1", "[pi5]", "kernel=kernel8.img"]
    assert lines[-4:-1] == ["[pi5]", "kernel=kernel_2712.img", "[all]"]
    assert lines.index("kernel=kernel_2712.img") > lines.index("kernel=kernel8.img")


def test_config_txt_block_is_replaced_not_repeated():
    once = config_txt("[all]\narm_64bit=1\n")
    assert config_txt(once) == once
    assert once.count("kernel=kernel_2712.img") == 1
