"""Cost of two guards of issue 13, each as a ratio against its baseline in the same run.

Run from the repository root::

    .venv/bin/python bench/bench_reset.py [--seconds 3] [--rounds 5]

1. **The status test in the shared-table policy.** Two copies of a guarded
   table (1,000 rows for each of 10 shared tenants): one with the policy
   ``tenant_id = (SELECT tenancy.active_tenant_id())`` that ``enable_rls``
   creates (the tenant's status looked up once per query), one altered back
   to ``tenant_id = (SELECT tenancy.current_tenant_id())`` (0.2.0, no status
   test). The transaction is ``tenant_connection`` + a 1-row lookup by primary
   key, as the application role, on one connection.
2. **Pool reset hooks.** A ``psycopg_pool.ConnectionPool`` of one connection
   with ``reset=pgtenancy.pool_reset`` (``DISCARD ALL`` but plans and sequences, on every return)
   against the same pool without it; each checkout is ``tenant_connection``
   + the 1-row lookup.

Rounds alternate the two sides; the table shows the median transaction time
of each side and their ratio.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
import uuid
from collections.abc import Callable

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg_pool import ConnectionPool

from pgtenancy import Tenancy, install, pool_reset, tenant_connection
from pgtenancy.admin import engine_from_dsn
from pgtenancy.testing import find_server, fresh_database

TENANTS = [f"s{i:02d}" for i in range(10)]
ROWS = 1000


def per_tx(run: Callable[[], None], seconds: float) -> float:
    """Median of 20 slices of ``seconds``: seconds per call of ``run``."""
    slices = []
    for _ in range(20):
        n, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds / 20:
            run()
            n += 1
        slices.append(elapsed / n)
    return statistics.median(slices)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="seconds per side per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with find_server() as admin_dsn, fresh_database(admin_dsn, "pgtenancy_bench") as dsn:
        install(dsn)
        tenancy = Tenancy(engine_from_dsn(dsn))
        role = f"pgtenancy_bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOBYPASSRLS").format(sql.Identifier(role))
            )
            for t in ("orders_active", "orders_plain"):
                conn.execute(
                    sql.SQL(
                        "CREATE TABLE {} (id bigint PRIMARY KEY, item text, tenant_id uuid)"
                    ).format(sql.Identifier(t))
                )
        ids = {s: tenancy.create_tenant(s, isolation="shared").id for s in TENANTS}
        with psycopg.connect(dsn, autocommit=True) as conn:
            for t in ("orders_active", "orders_plain"):
                conn.execute(
                    sql.SQL(
                        "INSERT INTO {} SELECT g, 'item ' || g, (%s::uuid[])[1 + g %% %s]"
                        " FROM generate_series(1, %s) g"
                    ).format(sql.Identifier(t)),
                    ([str(i) for i in ids.values()], len(TENANTS), ROWS * len(TENANTS)),
                )
                conn.execute("SELECT tenancy.enable_rls(%s)", (t,))
                conn.execute(sql.SQL("VACUUM ANALYZE {}").format(sql.Identifier(t)))
            conn.execute(
                "ALTER POLICY tenancy_tenant_isolation ON orders_plain"
                " USING (tenant_id = (SELECT tenancy.current_tenant_id()))"
                " WITH CHECK (tenant_id = (SELECT tenancy.current_tenant_id()))"
            )
            conn.execute("SELECT tenancy.grant_app_role(%s)", (role,))
        app_dsn = make_conninfo(dsn, user=role)
        rng = random.Random(1)
        by_tenant = {s: i for i, s in enumerate(TENANTS)}

        def lookup(
            table: str, conn_or_pool: psycopg.Connection | ConnectionPool
        ) -> Callable[[], None]:
            query = sql.SQL("SELECT item FROM {} WHERE id = %s").format(sql.Identifier(table))

            def run() -> None:
                slug = rng.choice(TENANTS)
                # A row of this tenant: ids g with g % 10 + 1 == position + 1.
                row_id = by_tenant[slug] + len(TENANTS) * rng.randrange(1, ROWS)
                with tenant_connection(conn_or_pool, slug) as c:
                    assert c.execute(query, (row_id,)).fetchone() is not None

            return run

        results: dict[str, list[float]] = {k: [] for k in ("active", "plain", "reset", "noreset")}
        with (
            psycopg.connect(app_dsn, autocommit=True) as conn,
            ConnectionPool(app_dsn, min_size=1, max_size=1, reset=pool_reset) as reset_pool,
            ConnectionPool(app_dsn, min_size=1, max_size=1) as plain_pool,
        ):
            for _ in range(args.rounds):
                results["active"].append(per_tx(lookup("orders_active", conn), args.seconds))
                results["plain"].append(per_tx(lookup("orders_plain", conn), args.seconds))
                results["reset"].append(per_tx(lookup("orders_plain", reset_pool), args.seconds))
                results["noreset"].append(per_tx(lookup("orders_plain", plain_pool), args.seconds))
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
    med = {k: statistics.median(v) * 1e6 for k, v in results.items()}
    rows = [
        ("policy with status test (active_tenant_id)", med["active"], med["active"] / med["plain"]),
        ("policy without (current_tenant_id, 0.2.0)", med["plain"], 1.0),
        ("pool with reset=pool_reset", med["reset"], med["reset"] / med["noreset"]),
        ("pool without reset", med["noreset"], 1.0),
    ]
    print(f"{'side':<46} {'us/tx':>8}  ratio")
    for name, us, ratio in rows:
        print(f"{name:<46} {us:8.1f}  {ratio:.3f}")


if __name__ == "__main__":
    main()
