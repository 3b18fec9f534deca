"""pgTAP tests of the SQL API (tests/sql/pgtap/*.sql), run in the database.

Skipped, with the reason, where the pgtap extension is not installed
(`make test` installs Debian's postgresql-NN-pgtap when it can).
"""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

PGTAP = sorted((Path(__file__).parent / "pgtap").glob("*.sql"))


@pytest.mark.parametrize("script", PGTAP, ids=[p.name for p in PGTAP])
def test_pgtap(dsn: str, script: Path) -> None:
    with psycopg.connect(dsn) as conn:
        available = conn.execute(
            "SELECT count(*) FROM pg_available_extensions WHERE name = 'pgtap'"
        ).fetchone()
        if not available or not available[0]:
            pytest.skip("pgtap is not installed (Debian: postgresql-NN-pgtap)")
        conn.execute("CREATE EXTENSION pgtap")
        lines: list[str] = []
        conn.add_notice_handler(lambda d: lines.append(f"# {d.message_primary}"))
        cur = conn.cursor()
        # The script is a series of SELECTs; each returns TAP lines.
        cur.execute(script.read_text())
        while True:
            if cur.description is not None:
                lines.extend(str(row[0]) for row in cur.fetchall())
            if not cur.nextset():
                break
        conn.rollback()
    tap = "\n".join(lines)
    assert lines and lines[0].startswith("1.."), tap
    failures = [line for line in lines if line.startswith("not ok")]
    assert failures == [], tap
    planned = int(lines[0].split("..")[1])
    assert sum(1 for line in lines if line.startswith("ok ")) == planned, tap
