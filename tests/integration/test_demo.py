"""`make demo`'s program (examples/chinook/demo.py) end to end on the Chinook
file, in real processes; and its clear refusal without the data file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from helpers import CHINOOK_FILE, DEMO, check_demo_output, subprocess_env


def run_demo(*args: str, dsn: str) -> subprocess.CompletedProcess[str]:
    env = subprocess_env()
    env["DATABASE_URL"] = dsn
    return subprocess.run(
        [sys.executable, str(DEMO), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd="/",  # nothing may depend on the working directory
    )


def test_demo_on_chinook(pg_admin_dsn: str) -> None:
    check_demo_output(run_demo("--chinook", str(CHINOOK_FILE), dsn=pg_admin_dsn), pg_admin_dsn)


def test_demo_without_the_chinook_file_says_how(pg_admin_dsn: str, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "Chinook_PostgreSql.sql"
    result = run_demo("--chinook", str(missing), dsn=pg_admin_dsn)
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: Chinook script not found at {missing}")
    assert "--chinook PATH" in result.stderr
    assert "Traceback" not in result.stderr
