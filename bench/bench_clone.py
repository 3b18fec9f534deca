"""Benchmark of cloning a tenant: ``tenancy.clone_tenant`` against an empty
tenant loaded with COPY.

Run from the repository root::

    .venv/bin/python bench/bench_clone.py [--chinook PATH]

One run on one server (``DATABASE_URL`` when set, else what
:func:`pgtenancy.testing.find_server` finds or starts), in a fresh database.

1. **Set-up (untimed).** The Chinook DDL becomes migration ``0001_chinook``;
   schema tenant ``acme`` is created and gets the Chinook data (15,607 rows in
   11 tables).
2. **Clone.** ``SELECT tenancy.clone_tenant('acme', 'clone')``: one
   transaction that creates the tenant (schema from the migrations, run
   confined) and copies every table (referenced tables first) and sequence.
3. **Baseline.** One transaction: ``tenancy.create_tenant('copied')`` and, for
   every table in foreign-key order, ``COPY tenant_acme.t TO STDOUT`` streamed
   into ``COPY tenant_copied.t FROM STDIN`` over the same connection (what an
   operator script would do).

Both sides end with the same rows (checked); the report gives both times and
their ratio.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import psycopg

from common import bench_database, log
from pgtenancy.admin import Tenancy
from pgtenancy.sqlscript import read_script

DEFAULT_CHINOOK = (
    Path(__file__).resolve().parent.parent.parent / "shared/data/chinook/Chinook_PostgreSql.sql"
)
#: Chinook's tables, referenced ones first.
TABLES = (
    "artist",
    "album",
    "genre",
    "media_type",
    "track",
    "playlist",
    "playlist_track",
    "employee",
    "customer",
    "invoice",
    "invoice_line",
)


def rows_of(conn: psycopg.Connection[object], schema: str) -> int:
    total = 0
    for t in TABLES:
        row = conn.execute(f'SELECT count(*) FROM "{schema}"."{t}"').fetchone()
        total += int(row[0]) if row else 0
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chinook", type=Path, default=DEFAULT_CHINOOK)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    script = read_script(args.chinook.read_text("utf-8"))
    with bench_database() as db:
        tenancy = Tenancy(db.dsn)
        tenancy.add_migration("0001_chinook", script.sql_of("ddl"))
        tenancy.create_tenant("acme")
        with psycopg.connect(db.dsn) as conn:
            conn.execute("SELECT tenancy.enter_tenant('acme')")
            for stmt in script.of_kind("data"):
                conn.execute(stmt.sql)
        with psycopg.connect(db.dsn, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE")
            rows = rows_of(conn, "tenant_acme")
        log(f"PostgreSQL {db.server_version}; tenant acme has {rows} rows")

        with psycopg.connect(db.dsn) as conn:
            started = time.perf_counter()
            conn.execute("SELECT tenancy.clone_tenant('acme', 'clone')")
            conn.commit()
            clone_s = time.perf_counter() - started

        with psycopg.connect(db.dsn) as conn:
            started = time.perf_counter()
            conn.execute("SELECT tenancy.create_tenant('copied')")
            for t in TABLES:
                with conn.cursor().copy(f'COPY tenant_acme."{t}" TO STDOUT') as out:
                    data = b"".join(bytes(chunk) for chunk in out)
                with conn.cursor().copy(f'COPY tenant_copied."{t}" FROM STDIN') as into:
                    into.write(data)
            conn.commit()
            copy_s = time.perf_counter() - started

        with psycopg.connect(db.dsn) as conn:
            assert rows_of(conn, "tenant_clone") == rows_of(conn, "tenant_copied") == rows
    results = {
        "server_version": db.server_version,
        "rows": rows,
        "clone_seconds": round(clone_s, 3),
        "create_and_copy_seconds": round(copy_s, 3),
        "ratio": round(clone_s / copy_s, 3),
    }
    if args.json:
        print(json.dumps(results))
    else:
        print(f"clone of a Chinook tenant ({rows:,} rows, 11 tables), one run each")
        print(f"  tenancy.clone_tenant          {clone_s:8.3f} s")
        print(f"  create_tenant + COPY per table {copy_s:7.3f} s")
        print(f"  ratio clone / (create + COPY)  {clone_s / copy_s:7.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
