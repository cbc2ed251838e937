"""The power-cut harness's bookkeeping (final_problem.local.powercut); the cuts themselves
run in tests/integration/test_power_cut.py."""

from __future__ import annotations

import pytest

from final_problem.local import powercut
from final_problem.local.powercut import Ack, losses
from tests.conftest import xdist_lane
from tests.integration.conftest import require_power_cut


def acks(*times: float) -> list[Ack]:
    return [Ack(seq, at) for seq, at in enumerate(times)]


def test_nothing_lost() -> None:
    result = losses(acks(1.0, 2.0, 3.0), {0, 1, 2}, frozen_at=3.5, started_at=0.0)
    assert (result.acknowledged, result.lost, result.window_s, result.holes) == (3, (), 0.0, False)
    assert result.writes_per_s == pytest.approx(1.0)


def test_lost_tail_and_its_window() -> None:
    result = losses(acks(1.0, 2.0, 3.0, 3.25), {0, 1}, frozen_at=3.5, started_at=0.0)
    assert result.lost == (2, 3)
    assert result.window_s == pytest.approx(0.5)
    assert not result.holes
    assert result.summary("x") == "x: 4 acknowledged writes (1/s), 2 lost, window 500 ms"


def test_an_older_write_lost_while_a_newer_one_survived_is_a_hole() -> None:
    result = losses(acks(1.0, 2.0, 3.0), {0, 2}, frozen_at=3.5, started_at=0.0)
    assert result.lost == (1,) and result.holes


def test_the_power_cuts_run_in_the_waiting_lane() -> None:
    assert xdist_lane("tests/integration/test_power_cut.py") == "integration: servers that wait"


def test_a_host_that_cannot_cut_fails_the_test_with_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(powercut.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(powercut.shutil, "which", lambda tool: None if tool == "mkfs.xfs" else f"/usr/bin/{tool}")
    monkeypatch.setattr(powercut, "SBIN", ())
    assert powercut.missing()[:2] == ["root (loop devices and mounts)", "mkfs.xfs (Debian package xfsprogs)"]
    with pytest.raises(pytest.fail.Exception) as failure:
        require_power_cut()
    message = str(failure.value)
    assert message.startswith("the power-cut harness needs root (loop devices and mounts), mkfs.xfs (Debian package xfsprogs)")
    assert message.endswith("run the tests as root after `sudo make system-deps`") and "\n" not in message


def test_a_live_writer_retries_only_the_errors_it_rides_out() -> None:
    """A write failing with one of ``retry_on`` is written again with the same sequence
    number and counted; any other error stops the writer and is raised by ``stop``."""
    import time

    attempts: list[int] = []

    def flaky(seq: int) -> None:
        attempts.append(seq)
        if seq == 2 and attempts.count(2) < 3:
            raise ConnectionError("restarting")
        if seq == 5:
            raise ValueError("a bug")

    writer = powercut.LiveWriter(flaky, retry_on=(ConnectionError,), retry_s=0.01).start()
    writer.join(5)
    with pytest.raises(powercut.PowerCutError, match="ValueError: a bug"):
        writer.stop()
    assert attempts == [0, 1, 2, 2, 2, 3, 4, 5]
    assert writer.retried == {"ConnectionError": 2}
    assert writer.acknowledged == 5
    assert 0 < writer.longest_gap_s(until=time.monotonic())


def test_the_longest_gap_is_the_longest_time_without_an_acknowledgement() -> None:
    writer = powercut.LiveWriter(lambda seq: None)
    writer.started_at = 10.0
    writer._acks = [Ack(0, 10.5), Ack(1, 11.0), Ack(2, 14.0), Ack(3, 14.2)]
    assert writer.longest_gap_s(until=15.0) == pytest.approx(3.0)
    assert writer.longest_gap_s(since=13.5, until=14.1) == pytest.approx(0.5)
    assert writer.longest_gap_s(since=14.1, until=20.0) == pytest.approx(5.8)
