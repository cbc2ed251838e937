"""The order ``make test`` hands out its test files (tests/conftest.py): the real-server lanes
first, then the other files longest first by the last run's time."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import FILE_SECONDS_KEY, LANES, ROOT, scheduling_order


def test_the_lanes_go_first_then_untimed_files_by_tests_then_the_longest_timed_file() -> None:
    tests = {"tests/test_a.py": 3, "tests/test_b.py": 40, "tests/test_c.py": 1, LANES[1]: 9, LANES[0]: 5,
             "tests/test_new.py": 2}
    seconds = {"tests/test_a.py": {"seconds": 12.0, "tests": 3}, "tests/test_b.py": {"seconds": 4.0, "tests": 40},
               "tests/test_c.py": {"seconds": 30.0, "tests": 1}}
    assert scheduling_order(tests, seconds) == [
        LANES[0], LANES[1], "tests/test_new.py", "tests/test_c.py", "tests/test_a.py", "tests/test_b.py"]


def test_a_file_timed_on_fewer_tests_than_it_has_counts_as_untimed() -> None:
    # e.g. the last run selected one of its tests with -k: that time is not the file's.
    tests = {"tests/test_a.py": 3, "tests/test_b.py": 10}
    seconds = {"tests/test_a.py": {"seconds": 1.0, "tests": 3}, "tests/test_b.py": {"seconds": 0.5, "tests": 1}}
    assert scheduling_order(tests, seconds) == ["tests/test_b.py", "tests/test_a.py"]


def test_a_run_stores_each_files_seconds_and_test_count_in_the_pytest_cache(tmp_path: Path) -> None:
    # A throw-away copy of the conftest under a rootdir of its own: its cache is written there.
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "__init__.py").write_text("")
    (tmp_path / "tests" / "conftest.py").write_text((ROOT / "tests" / "conftest.py").read_text())
    (tmp_path / "cdk.json").write_text((ROOT / "cdk.json").read_text())  # the conftest reads its context
    (tmp_path / "tests" / "test_two.py").write_text("import time\n\ndef test_1():\n    time.sleep(0.3)\n\n"
                                                   "def test_2():\n    pass\n")
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "tests/test_two.py"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={"PYTHONPATH": f"{tmp_path}:{ROOT}", "PATH": str(Path(sys.executable).parent)})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    stored = json.loads((tmp_path / ".pytest_cache" / "v" / FILE_SECONDS_KEY).read_text())
    assert stored["tests/test_two.py"]["tests"] == 2
    assert 0.3 <= stored["tests/test_two.py"]["seconds"] < 60
