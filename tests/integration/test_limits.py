"""The limits harness puts a server under its container's limits as the kubelet does."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time

import pytest

from final_problem.local import limits
from final_problem.local.limits import Groups, Limits

pytestmark = pytest.mark.integration


@pytest.mark.oom_expected
def test_a_process_over_its_memory_limit_is_oom_killed_and_counted() -> None:
    groups = Groups()
    try:
        # 64 MiB limit; the child touches 200 MiB.
        command = groups.wrap("hog", Limits(cpu_m=500, memory_mib=64),
                              [sys.executable, "-c", "x = bytearray(200 * 1024 * 1024); print('survived')"])
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert result.returncode == -9 and "survived" not in result.stdout
        assert groups.oom_killed() == {"hog": 1}
    finally:
        groups.remove_all()
    # Kept after the group is removed, for the check after each test.
    (group,) = [g for g in limits.created if g.name == "hog"][-1:]
    assert group.oom_kills() == 1 and not any(d.exists() for d in group.dirs)


@pytest.mark.oom_expected
def test_an_oom_kill_is_reported_with_what_filled_the_limit() -> None:
    """The sampler keeps each group's charge as anon memory and page cache; after a kill the
    report gives the last sample before it: here the process's own memory, growing 4 MiB
    every 0.2 s into a 64 MiB limit."""
    groups = Groups()
    try:
        grow = "import time\nx = []\nwhile True:\n    x.append(bytearray(4 << 20)); time.sleep(0.2)"
        command = groups.wrap("grower", Limits(cpu_m=500, memory_mib=64), [sys.executable, "-c", grow])
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert result.returncode == -9
        # The sampler notices the kill at its next window.
        deadline = time.monotonic() + 2 * limits.CPU_SAMPLE_S + 1
        while "grower" not in groups.before_oom_kill and time.monotonic() < deadline:
            time.sleep(0.1)
        before = groups.before_oom_kill["grower"]
        assert before["anon"] > before["file"] and before["anon"] > 16 << 20, before
        report = groups.oom_report("grower")
        assert report.startswith("1 OOM kill(s) by the kernel (limit 64 MiB); up to 1 s before: anon "), report
    finally:
        groups.remove_all()


def test_a_jvm_reads_the_limits_and_sizes_itself_as_in_the_pod() -> None:
    """Inside a Pi Kafka node's limits (1 CPU, 448 MiB) a JVM started without a collector
    flag is not a server-class machine: it takes Serial, and a default heap sized from the
    limit (about a quarter of it), not from the host's memory."""
    java = shutil.which("java")
    assert java, "java is missing: run `sudo make system-deps`"
    groups = Groups()
    try:
        out = subprocess.run(groups.wrap("jvm", Limits(cpu_m=1000, memory_mib=448), [java, "-XX:+PrintFlagsFinal", "-version"]),
                             capture_output=True, text=True, timeout=60).stdout
    finally:
        groups.remove_all()
    flags = {line.split()[1]: line.split()[3] for line in out.splitlines() if line.count("=") == 1 and len(line.split()) >= 4}
    assert flags["UseSerialGC"] == "true" and flags["UseG1GC"] == "false"
    assert int(flags["MaxHeapSize"]) < 448 * 1024 * 1024 // 3


def test_a_cpu_limit_is_a_cfs_quota_per_100_ms() -> None:
    groups = Groups()
    try:
        groups.wrap("cpu", Limits(cpu_m=1500, memory_mib=64), ["true"])
        group = groups.groups["cpu"]
        if group.v2:
            assert (group.cpu_dir / "cpu.max").read_text().split() == ["150000", "100000"]
        else:
            assert (group.cpu_dir / "cpu.cfs_quota_us").read_text().strip() == "150000"
            assert (group.cpu_dir / "cpu.cfs_period_us").read_text().strip() == "100000"
    finally:
        groups.remove_all()


def test_peak_cpu_is_the_highest_rate_over_a_second_and_the_quota_bounds_it() -> None:
    """A process spinning for 3 s under a 300m limit: the sampled peak rate is at most the
    quota (with a window's timing slack), the report shows it beside the request and limit,
    and the quota throttled it."""
    groups = Groups()
    try:
        spin = "import time\nend = time.monotonic() + 3\nwhile time.monotonic() < end:\n    pass\n"
        limits_ = Limits(cpu_m=300, memory_mib=64, request_cpu_m=100, request_memory_mib=32)
        subprocess.run(groups.wrap("spin", limits_, [sys.executable, "-c", spin]), check=True, timeout=60)
        (usage,) = groups.usage()
    finally:
        groups.remove_all()
    assert 0 < usage.peak_cpu_m <= 300 * 1.2, usage
    assert usage.throttled_periods > 0, usage
    assert "peak CPU" in str(usage) and "(request 100m, limit 300m)" in str(usage) and "(request 32, limit 64" in str(usage)
