"""Programs shipped in ConfigMaps as zip applications (final_problem.renderers.program)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from final_problem.constructs import snapshot_backup
from final_problem.renderers import backup_agent, postgres_backup, program


def test_the_same_sources_give_the_same_bytes() -> None:
    """No time stamp or order of the build in the archive: an unchanged program changes no
    template and restarts no pod."""
    assert program.zipapp("snapshot_agent.py", ["backup_agent.py"]) == \
        program.zipapp("snapshot_agent.py", ["backup_agent.py"])
    assert snapshot_backup.scripts(restore=True) == snapshot_backup.scripts(restore=True)


def test_python_runs_the_archive_and_its_main_imports_the_modules_beside_it(tmp_path: Path) -> None:
    agent = tmp_path / "snapshot_agent.pyz"
    agent.write_bytes(snapshot_backup.scripts()[snapshot_backup.AGENT_FILE])
    done = subprocess.run([sys.executable, str(agent), "--help"], capture_output=True, text=True, cwd="/",
                          env={"PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1"}, timeout=60)
    assert done.returncode == 0 and "usage:" in done.stdout, done.stderr


def test_an_archive_is_a_quarter_of_its_sources() -> None:
    """What the EKS template carries for the PostgreSQL agent (CloudFormation takes 1,000,000
    bytes at most)."""
    source = Path(backup_agent.__file__).read_bytes()
    archive = postgres_backup.programs()[postgres_backup.AGENT_FILE]
    assert len(program.binary_data({"a": archive})["a"]) < len(source) / 2
    assert program.sources(archive) == {"__main__.py": source.decode()}
