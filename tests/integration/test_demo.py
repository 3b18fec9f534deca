"""`make demo`'s program (examples/chinook/demo.py) end to end on the Chinook
file, in real processes; and its clear refusal without the data file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg

from conftest import CHINOOK, ROOT, subprocess_env

DEMO = ROOT / "examples" / "chinook" / "demo.py"
#: The Chinook script: $CHINOOK (as for `make demo CHINOOK=...`), else the
#: repository's ../shared/data/chinook/Chinook_PostgreSql.sql.
CHINOOK_FILE = Path(os.environ.get("CHINOOK") or CHINOOK)


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


def check_demo_output(result: subprocess.CompletedProcess[str], admin_dsn: str) -> None:
    """Assert what `make demo` promises, and that its database is gone."""
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "skipped psql meta-command at line 28: \\c chinook;" in out
    assert "tenant_session(engine, 'acme'): 412 invoices in tenant_acme [ok]" in out
    assert "tenant_session(engine, 'globex'): 0 invoices in tenant_globex [ok]" in out
    assert "entering initech refused by the database: [PT004]" in out
    events = [
        line.split()[1] + " " + line.split()[2]
        for line in out.splitlines()
        if line.startswith("  #")
    ]
    assert events == [
        "tenant_created acme",
        "tenant_created globex",
        "tenant_created initech",
        "tenant_suspended initech",
    ]
    assert out.rstrip().endswith("demo OK")
    name = out.splitlines()[0].removeprefix("database ")
    assert name.startswith("pgtenancy_demo")
    with psycopg.connect(admin_dsn) as conn:
        left = conn.execute("SELECT count(*) FROM pg_database WHERE datname = %s", (name,))
        assert left.fetchone() == (0,)


def test_demo_on_chinook(pg_admin_dsn: str) -> None:
    check_demo_output(run_demo("--chinook", str(CHINOOK_FILE), dsn=pg_admin_dsn), pg_admin_dsn)


def test_demo_without_the_chinook_file_says_how(pg_admin_dsn: str, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "Chinook_PostgreSql.sql"
    result = run_demo("--chinook", str(missing), dsn=pg_admin_dsn)
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: Chinook script not found at {missing}")
    assert "--chinook PATH" in result.stderr
    assert "Traceback" not in result.stderr
