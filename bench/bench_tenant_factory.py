"""Cost per test of the pytest plugin's ``tenant`` factory (issue 12, item 5:
goal under 20 ms per test with a 10-table migration), against a plain reset
measured in the same run.

Run from the repository root::

    .venv/bin/python bench/bench_tenant_factory.py [--tests 60] [--rounds 3]

The migration is the plugin test's: 10 tables ``t0`` .. ``t9``, each with a
``bigserial`` key and a foreign key to the one before. One simulated test
inserts one row into each table inside its tenant (``tenant_connection``,
one transaction). Each side times whole tests (setup + body + teardown), in
rounds that alternate the sides:

* **body alone**: the floor, the body in one tenant that is never reset;
* **tenant fixture**: ``TenantPool.acquire()``, the body, and
  ``release_later()`` as the ``tenant`` fixture does (the one-round-trip
  reset runs on the pool's background thread, overlapping the next test,
  whose body it slows: counted, since whole tests are timed);
* **factory, reset in teardown**: the same with ``release()`` (synchronous);
* **baseline**: the usual hand-written reset of one schema, one
  ``TRUNCATE t0, ..., t9 RESTART IDENTITY`` of a fixed tenant after the test;
* **create_tenant per test**: a new tenant for every test (a few only), what a
  factory without recycling costs.

The table shows the median milliseconds per test, the milliseconds each side
adds to the body alone, and that added cost as a ratio to the baseline's.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import psycopg
from psycopg import sql

from pgtenancy import Tenancy, install, tenant_connection
from pgtenancy.testing import find_server, fresh_database
from pgtenancy.testing.plugin import TenantPool

TABLES = 10
MIGRATION = "; ".join(
    f"CREATE TABLE t{i} (id bigserial PRIMARY KEY, body text NOT NULL, "
    f"parent bigint REFERENCES t{i - 1} (id))"
    if i
    else "CREATE TABLE t0 (id bigserial PRIMARY KEY, body text NOT NULL, parent bigint)"
    for i in range(TABLES)
)
SIDES = {
    "bare": "body alone (no reset: the floor)",
    "factory": "tenant fixture (reset in the background)",
    "factory_sync": "factory, reset in the test's teardown",
    "truncate": "baseline: TRUNCATE of one schema",
    "create": "create_tenant per test (no recycling)",
}


def body(conn: psycopg.Connection, slug: str) -> None:
    """A test: one row in each table, in one tenant transaction."""
    with tenant_connection(conn, slug) as c:
        for i in range(TABLES):
            c.execute(
                sql.SQL("INSERT INTO {} (body, parent) VALUES ('x', {})").format(
                    sql.Identifier(f"t{i}"),
                    sql.SQL("NULL" if i == 0 else f"(SELECT max(id) FROM t{i - 1})"),
                )
            )


def timed(
    conn: psycopg.Connection, n: int, setup: Callable[[], str], teardown: Callable[[str], None]
) -> list[float]:
    """Milliseconds per test, each the whole of setup + body + teardown."""
    out = []
    for _ in range(n):
        start = time.perf_counter()
        slug = setup()
        body(conn, slug)
        teardown(slug)
        out.append((time.perf_counter() - start) * 1000)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tests", type=int, default=60, help="simulated tests per side per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--creates", type=int, default=3, help="create_tenant samples per round")
    args = parser.parse_args()
    results: dict[str, list[float]] = {k: [] for k in SIDES}
    with find_server() as admin_dsn, fresh_database(admin_dsn, "pgtenancy_bench") as dsn:
        install(dsn)
        tenancy = Tenancy(dsn)
        tenancy.add_migration("0001", MIGRATION)
        base = tenancy.create_tenant("baseline")
        pool = TenantPool(tenancy, dsn, size=4)
        reset = sql.SQL("TRUNCATE {} RESTART IDENTITY").format(
            sql.SQL(", ").join(
                sql.Identifier(str(base.schema_name), f"t{i}") for i in range(TABLES)
            )
        )

        def truncate(slug: str) -> None:
            owner.execute(reset)

        def acquire() -> str:
            return pool.acquire().slug

        def release(slug: str) -> None:
            if not pool.release(slug):
                raise AssertionError(f"{slug} was not recycled")

        with (
            psycopg.connect(dsn, autocommit=True) as owner,
            psycopg.connect(dsn, autocommit=True) as conn,
        ):
            try:
                release(acquire())  # provisions the pool
                for _ in range(args.rounds):
                    results["bare"] += timed(conn, args.tests, lambda: "baseline", lambda s: None)
                    truncate("baseline")
                    results["factory"] += timed(conn, args.tests, acquire, pool.release_later)
                    results["factory_sync"] += timed(conn, args.tests, acquire, release)
                    results["truncate"] += timed(conn, args.tests, lambda: "baseline", truncate)
                    results["create"] += timed(
                        conn,
                        args.creates,
                        lambda: tenancy.create_tenant(f"c_{time.monotonic_ns()}").slug,
                        lambda s: None,
                    )
            finally:
                pool.close()
        recycled, discarded = pool.recycled, pool.discarded
    med = {k: statistics.median(v) for k, v in results.items()}
    added = {k: med[k] - med["bare"] for k in SIDES}
    print(f"tenant factory, {TABLES}-table migration, {args.rounds} rounds x {args.tests} tests")
    print(f"{'side':<46} {'ms/test':>8} {'added':>8}  ratio")
    for key, name in SIDES.items():
        ratio = "-" if key == "bare" else f"{added[key] / added['truncate']:.3f}"
        print(f"{name:<46} {med[key]:8.2f} {added[key]:8.2f}  {ratio}")
    verdict = "met" if added["factory"] < 20 else "NOT met"
    print(
        "added: median ms per test over the body alone; ratio: added / the baseline's added.\n"
        f"recycled {recycled}, discarded {discarded}; goal < 20 ms per test: {verdict} "
        f"({added['factory']:.1f} ms added by the tenant fixture)"
    )


if __name__ == "__main__":
    main()
