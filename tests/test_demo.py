"""`make demo`'s program end to end on the Chinook file, in real processes."""

from __future__ import annotations

import subprocess
import sys

import psycopg

from conftest import CHINOOK, subprocess_env


def test_demo_on_chinook(pg_admin_dsn: str) -> None:
    env = subprocess_env()
    env["DATABASE_URL"] = pg_admin_dsn
    result = subprocess.run(
        [sys.executable, "-m", "pgtenancy.demo", "--chinook", str(CHINOOK)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
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
    with psycopg.connect(pg_admin_dsn) as conn:
        left = conn.execute(
            "SELECT count(*) FROM pg_database WHERE datname LIKE 'pgtenancy_demo%'"
        ).fetchone()
    assert left == (0,)
