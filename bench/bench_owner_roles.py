"""Cost of a tenant's own owner role (issue 9, confinement at rest) on
``create_tenant``, as a ratio against the same run without roles.

Run from the repository root::

    .venv/bin/python bench/bench_owner_roles.py [--rounds 6] [--tenants 10]

One database, the Chinook DDL as migration ``0001_chinook``. Rounds alternate
two sides, ``--tenants`` new tenants each: *with roles* (every tenant gets its
role: CREATE ROLE, two grants, its objects handed to it) and *without* (the
tenants' group role renamed away for the round, so ``ensure_tenant_role``
falls back to the kit's owner as before 0.3.0). The table shows the median
milliseconds per tenant of each side and their ratio. Every tenant (and its
role) is dropped at the end; the script checks that no role is left.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import psycopg
from psycopg import sql

from pgtenancy import Tenancy, install
from pgtenancy.admin import engine_from_dsn
from pgtenancy.sqlscript import read_script
from pgtenancy.testing import find_server, fresh_database

CHINOOK = (
    Path(__file__).resolve().parents[2] / "shared" / "data" / "chinook" / "Chinook_PostgreSql.sql"
)


def main() -> None:
    """Parse the options, run both sides alternating, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6, help="rounds per side (default 6)")
    parser.add_argument("--tenants", type=int, default=10, help="tenants per round (default 10)")
    parser.add_argument("--chinook", type=Path, default=CHINOOK, help="Chinook_PostgreSql.sql")
    args = parser.parse_args()
    ddl = read_script(args.chinook.read_text("utf-8")).sql_of("ddl")
    with find_server() as admin_dsn, fresh_database(admin_dsn, "pgtenancy_bench_roles") as dsn:
        install(dsn)
        tenancy = Tenancy(engine_from_dsn(dsn))
        tenancy.add_migration("0001_chinook", ddl)
        with psycopg.connect(dsn, autocommit=True) as conn:
            row = conn.execute("SELECT tenancy.tenant_group_role()").fetchone()
        assert row is not None
        group = sql.Identifier(str(row[0]))
        parked = sql.Identifier(f"{row[0]}_off")
        seconds: dict[str, list[float]] = {"with roles": [], "without": []}
        n = 0
        for r in range(args.rounds * 2):
            side = ("with roles", "without")[(r + r // 2) % 2]
            if side == "without":
                with psycopg.connect(dsn, autocommit=True) as conn:
                    conn.execute(sql.SQL("ALTER ROLE {} RENAME TO {}").format(group, parked))
            try:
                started = time.perf_counter()
                for _ in range(args.tenants):
                    n += 1
                    tenancy.create_tenant(f"b{n}")
                seconds[side].append((time.perf_counter() - started) / args.tenants)
            finally:
                if side == "without":
                    with psycopg.connect(dsn, autocommit=True) as conn:
                        conn.execute(sql.SQL("ALTER ROLE {} RENAME TO {}").format(parked, group))
        with psycopg.connect(dsn, autocommit=True) as conn:
            for (slug,) in conn.execute("SELECT slug FROM tenancy.tenants").fetchall():
                conn.execute("SELECT tenancy.drop_tenant(%s, true)", (slug,))
            left = conn.execute(
                "SELECT count(*) FROM pg_roles WHERE starts_with(rolname, "
                "'pgtenancy_owner_' || left(md5(tenancy.migrator_role()), 12) || '_')"
            ).fetchone()
        assert left == (0,), left
    with_ms = statistics.median(seconds["with roles"]) * 1000
    without_ms = statistics.median(seconds["without"]) * 1000
    print(f"create_tenant, Chinook DDL, {args.rounds} rounds x {args.tenants} tenants per side")
    print(f"{'':24}{'with roles':>12}{'without':>12}{'ratio':>8}")
    print(
        f"{'ms per tenant (median)':24}{with_ms:12.1f}{without_ms:12.1f}{with_ms / without_ms:8.3f}"
    )


if __name__ == "__main__":
    main()
