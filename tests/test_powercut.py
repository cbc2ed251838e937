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
