"""Benchmark of size accounting: ``tenancy.tenant_sizes()`` on a large fleet.

Run from the repository root::

    .venv/bin/python bench/bench_sizes.py [--schema-tenants 9000] [--shared-tenants 1000]

One server (``DATABASE_URL`` when set, else what
:func:`pgtenancy.testing.find_server` finds or starts), a fresh database.
Set-up (untimed): migration ``0001`` makes two tables with a primary key each
(so every schema tenant has 2 tables, 2 indexes and a TOAST table), the
schema tenants are created 500 per transaction with 10 rows each; public.item
is guarded by RLS and gets 100 rows per shared tenant; then ``VACUUM
ANALYZE``. Timed: ``SELECT * FROM tenancy.tenant_sizes()`` three times (the
best is reported), and ``pgtenancy list --sizes`` once (CLI start-up
included).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import psycopg

from common import bench_database, log
from pgtenancy.admin import Tenancy

MIGRATION = """
CREATE TABLE note (id int PRIMARY KEY, body text);
CREATE TABLE tag (id int PRIMARY KEY, name text);
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schema-tenants", type=int, default=9000)
    parser.add_argument("--shared-tenants", type=int, default=1000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with bench_database() as db:
        tenancy = Tenancy(db.dsn)
        tenancy.add_migration("0001", MIGRATION)
        with psycopg.connect(db.dsn, autocommit=True) as conn:
            conn.execute(
                "CREATE TABLE public.item (id bigserial PRIMARY KEY, tenant_id uuid, v text)"
            )
            conn.execute("SELECT tenancy.enable_rls('public.item')")
        started = time.perf_counter()
        with psycopg.connect(db.dsn) as conn:
            for i in range(args.schema_tenants):
                conn.execute("SELECT tenancy.create_tenant(%s)", (f"s{i:05d}",))
                conn.execute(
                    f"INSERT INTO tenant_s{i:05d}.note SELECT g, md5(g::text) "
                    "FROM generate_series(1, 10) g"
                )
                if i % 500 == 499:
                    conn.commit()
                    log(f"  {i + 1} schema tenants ({time.perf_counter() - started:.0f} s)")
            conn.commit()
            for i in range(args.shared_tenants):
                tid = conn.execute(
                    "SELECT id FROM tenancy.create_tenant(%s, isolation => 'shared')",
                    (f"h{i:05d}",),
                ).fetchone()
                assert tid is not None
                conn.execute(
                    "INSERT INTO public.item (tenant_id, v) SELECT %s, md5(g::text) "
                    "FROM generate_series(1, 100) g",
                    (tid[0],),
                )
            conn.commit()
        setup_s = time.perf_counter() - started
        with psycopg.connect(db.dsn, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE")
        log(f"set-up {setup_s:.0f} s")
        timings = []
        with psycopg.connect(db.dsn) as conn:
            for _ in range(3):
                started = time.perf_counter()
                rows = conn.execute("SELECT * FROM tenancy.tenant_sizes()").fetchall()
                timings.append(time.perf_counter() - started)
                conn.commit()
        tenants = args.schema_tenants + args.shared_tenants
        assert len(rows) == tenants
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "pgtenancy.cli", "list", "--sizes", "--dsn", db.dsn],
            check=True,
            capture_output=True,
        )
        cli_s = time.perf_counter() - started
    results = {
        "server_version": db.server_version,
        "schema_tenants": args.schema_tenants,
        "shared_tenants": args.shared_tenants,
        "tenant_sizes_seconds": round(min(timings), 3),
        "cli_list_sizes_seconds": round(cli_s, 3),
        "setup_seconds": round(setup_s, 1),
    }
    if args.json:
        print(json.dumps(results))
    else:
        print(
            f"tenant_sizes() over {tenants:,} tenants ({args.schema_tenants:,} schema, "
            f"{args.shared_tenants:,} shared with 100 rows each in one guarded table)"
        )
        print(f"  SELECT * FROM tenancy.tenant_sizes()  {min(timings):7.3f} s (best of 3)")
        print(f"  pgtenancy list --sizes                {cli_s:7.3f} s (start-up included)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
