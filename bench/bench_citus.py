"""The tenant transaction on a local Citus cluster (issue 11): coordinator and
two workers from the machine's binaries, Citus 13.2.2 (``make citus``).

Run from the repository root::

    .venv/bin/python bench/bench_citus.py [--seconds 1] [--rounds 3]

In one run, as an application role (NOSUPERUSER NOBYPASSRLS), one connection
to the coordinator, each transaction one point query then COMMIT, random ids:

* schema tenants (distributed schemas ``c0``..``c3``, 1,000-row ``item``):
  ``tenant_connection(conn, slug)`` switching tenants every transaction,
  against the same query on the schema-qualified name
  (``tenant_cN.item``) in a plain transaction, no tenancy;
* shared tenants (``s0``..``s3`` in ``public.orders``, guarded, distributed by
  ``tenant_id``): ``tenant_connection`` against the same query with an
  explicit ``WHERE tenant_id = ...`` on an identical unguarded distributed
  table, no tenancy.

Sides alternate in 0.1 s turns; medians over rounds. Also reports whether
each single-tenant query routes to one shard (EXPLAIN: ``Task Count: 1``), and
what a migration altering a distributed tenant's table costs (``migrate_tenant``
against the same ``ALTER TABLE`` run directly), at 1,000 and 100,000 rows.
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
from psycopg.conninfo import make_conninfo

from pgtenancy import install, tenant_connection
from pgtenancy.testing import TemporaryCluster, find_bindir

ROWS = 1000
SCHEMAS = [f"c{i}" for i in range(4)]
SHARED = [f"s{i}" for i in range(4)]


def start_cluster() -> tuple[list[TemporaryCluster], str]:
    """Coordinator + 2 workers, Citus in database ``bench``; the coordinator DSN."""
    bindir = find_bindir()
    if bindir is None:
        sys.exit("no PostgreSQL binaries")
    libdir = subprocess.run(
        [
            str(bindir / "pg_config") if (bindir / "pg_config").exists() else "pg_config",
            "--pkglibdir",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if not (Path(libdir) / "citus.so").exists():
        sys.exit("Citus is not installed: make citus")
    nodes = [TemporaryCluster(bindir) for _ in range(3)]
    for node in nodes:
        node.start()
        node._options += " -c shared_preload_libraries=citus -c max_prepared_transactions=100"
        node.server_stop()
        node.server_start()
        with psycopg.connect(node.dsn, autocommit=True) as conn:
            conn.execute("CREATE DATABASE bench")
    dsns = [n.dsn.rsplit("/", 1)[0] + "/bench" for n in nodes]
    for d in dsns:
        with psycopg.connect(d, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION citus")
    with psycopg.connect(dsns[0], autocommit=True) as conn:
        port = int(dsns[0].split(":")[-1].split("/")[0])
        conn.execute("SELECT citus_set_coordinator_host('127.0.0.1', %s)", (port,))
        for w in dsns[1:]:
            conn.execute(
                "SELECT citus_add_node('127.0.0.1', %s)", (int(w.split(":")[-1].split("/")[0]),)
            )
    return nodes, dsns[0]


def setup(dsn: str) -> str:
    """Tenants and tables; return the application role's DSN."""
    install(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "SELECT tenancy.add_migration('0001',"
            " 'CREATE TABLE item (id int PRIMARY KEY, value text NOT NULL)')"
        )
        for slug in SCHEMAS:
            conn.execute("SELECT tenancy.create_tenant(%s)", (slug,))
            conn.execute(
                f"INSERT INTO tenant_{slug}.item SELECT g, md5(g::text)"
                f" FROM generate_series(1, {ROWS}) g"
            )
        for table in ("orders", "orders_plain"):
            conn.execute(
                f"CREATE TABLE public.{table} (tenant_id uuid, id int, value text NOT NULL,"
                " PRIMARY KEY (tenant_id, id))"
            )
        conn.execute("SELECT tenancy.enable_rls('public.orders')")
        for table in ("orders", "orders_plain"):
            conn.execute(f"SELECT create_distributed_table('public.{table}', 'tenant_id')")
        for slug in SHARED:
            conn.execute("SELECT tenancy.create_tenant(%s, isolation => 'shared')", (slug,))
            for table in ("orders", "orders_plain"):
                conn.execute(
                    f"INSERT INTO public.{table} SELECT t.id, g, md5(g::text)"
                    f" FROM tenancy.tenants t, generate_series(1, {ROWS}) g WHERE t.slug = %s",
                    (slug,),
                )
        conn.execute("CREATE ROLE bench_app LOGIN NOSUPERUSER NOBYPASSRLS")
        conn.execute("SELECT tenancy.grant_app_role('bench_app')")
        conn.execute("GRANT SELECT ON public.orders_plain TO bench_app")
        for slug in SCHEMAS:
            conn.execute(f"GRANT USAGE ON SCHEMA tenant_{slug} TO bench_app")
    return make_conninfo(dsn, user="bench_app")


def migration_cost(dsn: str, rounds: int) -> None:
    """A tenant migration that alters a distributed tenant's table
    (``migrate_tenant``: the schema made local, migrated, distributed again)
    against the same ``ALTER TABLE`` run directly on an identical distributed
    tenant (Citus propagates it, no tenancy), per tenant size; medians."""
    print("  migration ALTER TABLE item ADD COLUMN (per tenant, seconds)")
    with psycopg.connect(dsn, autocommit=True) as conn:
        version = 100
        for rows in (1_000, 100_000):
            kit_s: list[float] = []
            direct_s: list[float] = []
            pair = [f"mk{rows}", f"md{rows}"]
            for slug in pair:
                conn.execute("SELECT tenancy.create_tenant(%s)", (slug,))
                conn.execute(
                    f"INSERT INTO tenant_{slug}.item SELECT g, md5(g::text)"
                    f" FROM generate_series(1, {rows}) g"
                )
            for _ in range(rounds):
                version += 1
                column = f"c{version}"
                conn.execute(
                    "SELECT tenancy.add_migration(%s, %s)",
                    (f"0{version}", f"ALTER TABLE item ADD COLUMN {column} text DEFAULT 'x'"),
                )
                t0 = time.perf_counter()
                conn.execute("SELECT tenancy.migrate_tenant(%s)", (pair[0],))
                kit_s.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                conn.execute(
                    f"ALTER TABLE tenant_{pair[1]}.item ADD COLUMN {column} text DEFAULT 'x'"
                )
                direct_s.append(time.perf_counter() - t0)
            k, d = statistics.median(kit_s), statistics.median(direct_s)
            print(
                f"    {rows:>7,} rows: migrate_tenant {k:.3f}s   direct ALTER {d:.3f}s"
                f"   ratio {k / d:.1f}"
            )
            for slug in pair:
                conn.execute("SELECT tenancy.drop_tenant(%s, destroy_data => true)", (slug,))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="per side per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    nodes, dsn = start_cluster()
    try:
        app = setup(dsn)
        ids = {}
        with psycopg.connect(dsn) as conn:
            for slug, tid in conn.execute("SELECT slug, id FROM tenancy.tenants").fetchall():
                ids[slug] = str(tid)
        with psycopg.connect(app, autocommit=True) as conn:
            rnd = random.Random(1)

            def schema_kit() -> None:
                slug = rnd.choice(SCHEMAS)
                with tenant_connection(conn, slug) as tc:
                    tc.execute("SELECT value FROM item WHERE id = %s", (rnd.randint(1, ROWS),))

            def schema_plain() -> None:
                slug = rnd.choice(SCHEMAS)
                with conn.transaction():
                    conn.execute(
                        f"SELECT value FROM tenant_{slug}.item WHERE id = %s",
                        (rnd.randint(1, ROWS),),
                    )

            def shared_kit() -> None:
                slug = rnd.choice(SHARED)
                with tenant_connection(conn, slug) as tc:
                    tc.execute("SELECT value FROM orders WHERE id = %s", (rnd.randint(1, ROWS),))

            def shared_kit_where() -> None:
                slug = rnd.choice(SHARED)
                with tenant_connection(conn, slug) as tc:
                    tc.execute(
                        "SELECT value FROM orders WHERE tenant_id = tenancy.current_tenant_id()"
                        " AND id = %s",
                        (rnd.randint(1, ROWS),),
                    )

            def shared_plain() -> None:
                slug = rnd.choice(SHARED)
                with conn.transaction():
                    conn.execute(
                        "SELECT value FROM public.orders_plain WHERE tenant_id = %s AND id = %s",
                        (ids[slug], rnd.randint(1, ROWS)),
                    )

            groups: dict[str, list[tuple[str, Callable[[], None]]]] = {
                "schema": [
                    ("tenant_connection", schema_kit),
                    ("qualified, no tenancy", schema_plain),
                ],
                "shared": [
                    ("tenant_connection", shared_kit),
                    ("tenant_connection + WHERE tenant_id = current_tenant_id()", shared_kit_where),
                    ("WHERE tenant_id, no tenancy", shared_plain),
                ],
            }
            results: dict[str, dict[str, list[float]]] = {
                g: {n: [] for n, _ in sides} for g, sides in groups.items()
            }
            for g, sides in groups.items():
                for _, fn in sides:
                    for _ in range(50):
                        fn()  # warm plans and connections
                for rnd_i in range(args.rounds):
                    counts = {n: 0 for n, _ in sides}
                    spent = {n: 0.0 for n, _ in sides}
                    order = sides if rnd_i % 2 == 0 else list(reversed(sides))
                    while min(spent.values()) < args.seconds:
                        for n, fn in order:
                            end = time.perf_counter() + 0.1
                            t0 = time.perf_counter()
                            while time.perf_counter() < end:
                                fn()
                                counts[n] += 1
                            spent[n] += time.perf_counter() - t0
                    for n in counts:
                        results[g][n].append(counts[n] / spent[n])
            routing = {}
            with tenant_connection(conn, "c0") as tc:
                plan = tc.execute("EXPLAIN SELECT value FROM item WHERE id = 1").fetchall()
                routing["schema"] = [r[0] for r in plan if "Task Count" in r[0]]
            with tenant_connection(conn, "s0") as tc:
                plan = tc.execute("EXPLAIN SELECT value FROM orders WHERE id = 1").fetchall()
                routing["shared (RLS only, no WHERE tenant_id)"] = [
                    r[0] for r in plan if "Task Count" in r[0]
                ]
                plan = tc.execute(
                    "EXPLAIN SELECT value FROM orders WHERE tenant_id = %s AND id = 1", (ids["s0"],)
                ).fetchall()
                routing["shared with WHERE tenant_id = literal"] = [
                    r[0] for r in plan if "Task Count" in r[0]
                ]
            with tenant_connection(conn, "s0") as tc:
                plan = tc.execute(
                    "EXPLAIN SELECT value FROM orders"
                    " WHERE tenant_id = tenancy.current_tenant_id() AND id = 1"
                ).fetchall()
                routing["shared with WHERE tenant_id = tenancy.current_tenant_id()"] = [
                    r[0] for r in plan if "Task Count" in r[0]
                ]
        print(f"Citus 13.2.2, coordinator + 2 workers, {args.rounds} rounds x {args.seconds}s")
        for g, measured in results.items():
            *kits, (base, bv) = measured.items()
            b = statistics.median(bv)
            for kit, kv in kits:
                k = statistics.median(kv)
                print(f"  {g:7} {kit}: {k:,.0f} tx/s   {base}: {b:,.0f} tx/s   ratio {k / b:.2f}")
        for query, tasks in routing.items():
            print(f"  EXPLAIN {query}: {', '.join(t.strip() for t in tasks)}")
        migration_cost(dsn, args.rounds)
    finally:
        for node in nodes:
            node.stop()


if __name__ == "__main__":
    main()
