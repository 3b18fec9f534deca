"""Doctor findings of the third attack round (issue 13): stored role and
database defaults that weaken every tenant's requests (L2), and indexes of
guarded shared tables not led by the tenant column, a range-count side channel
(L1). Each fault is made for real, by the application role where it can."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from psycopg import sql as pgsql

from helpers import as_role
from pgtenancy import pool_reset
from pgtenancy.doctor import Finding, check_isolation

SQL = Callable[..., list[tuple[Any, ...]]]


def _found(dsn: str, check: str) -> list[Finding]:
    return [f for f in check_isolation(dsn) if f.check == check]


def test_an_app_role_can_store_defaults_that_survive_a_pool_reset(
    dsn: str, app_role: str, hybrid: dict[str, str]
) -> None:
    """Why the finding exists: PostgreSQL lets a role ALTER ROLE itself SET
    ..., and RESET ALL (the pool's reset) returns to the stored value."""
    app = as_role(dsn, app_role)
    with psycopg.connect(app, autocommit=True) as conn:
        conn.execute(
            pgsql.SQL("ALTER ROLE {} SET default_transaction_read_only = on").format(
                pgsql.Identifier(app_role)
            )
        )
    with psycopg.connect(app, autocommit=True) as conn:
        pool_reset(conn)
        row = conn.execute("SHOW default_transaction_read_only").fetchone()
        assert row == ("on",)


@pytest.mark.parametrize("who", ["app", "owner"])
def test_weakening_role_and_database_defaults_are_reported(
    dsn: str, app_role: str, hybrid: dict[str, str], sql: SQL, who: str
) -> None:
    app = as_role(dsn, app_role)
    role = app_role  # a plain identifier: %I leaves it unquoted
    assert _found(app, "weakening_default_setting") == []
    stored = {
        "row_security": "off",
        "search_path": "pg_temp, public",
        "default_transaction_isolation": "serializable",
        "default_transaction_read_only": "on",
        "statement_timeout": "10min",
    }
    with psycopg.connect(app, autocommit=True) as conn:
        for name, value in stored.items():
            conn.execute(
                pgsql.SQL("ALTER ROLE {} SET {} = {}").format(
                    pgsql.Identifier(app_role), pgsql.SQL(name), pgsql.Literal(value)
                )
            )
        # Harmless values are not findings.
        conn.execute(f"ALTER ROLE {role} SET lock_timeout = 0")
    db = sql("SELECT current_database()")[0][0]
    # Custom settings need the owner (a superuser here): a default tenant.
    sql(f"ALTER ROLE {role} SET app.tenant_id = '{hybrid['acme']}'")
    sql(f"ALTER DATABASE {db} SET session_replication_role = replica")
    sql(f"ALTER DATABASE {db} SET pgtenancy.consumer_inactive_after = '1 hour'")  # configuration
    sql(f"ALTER ROLE {role} IN DATABASE {db} SET default_transaction_isolation = 'read committed'")
    found = _found(app if who == "app" else dsn, "weakening_default_setting")
    got = {(f.severity, f.object) for f in found}
    assert got == {
        ("error", f"application role {role}: row_security"),
        ("error", f"application role {role}: search_path"),
        ("error", f"application role {role}: app.tenant_id"),
        ("warning", f"application role {role}: default_transaction_isolation"),
        ("warning", f"application role {role}: default_transaction_read_only"),
        ("warning", f"application role {role}: statement_timeout"),
        ("warning", f"database {db}: session_replication_role"),
    }
    fixes = {f.object: f.fix for f in found}
    assert (
        fixes[f"application role {role}: row_security"] == f"ALTER ROLE {role} RESET row_security"
    )
    assert fixes[f"database {db}: session_replication_role"] == (
        f"ALTER DATABASE {db} RESET session_replication_role"
    )
    # Each fix, run, clears its finding.
    for f in found:
        sql(f.fix)
    assert _found(app, "weakening_default_setting") == []


def test_indexes_not_led_by_the_tenant_column_are_reported(
    dsn: str, app_role: str, hybrid: dict[str, str], sql: SQL
) -> None:
    app = as_role(dsn, app_role)
    found = _found(app, "index_not_led_by_tenant")
    assert [(f.severity, f.object) for f in found] == [("warning", "public.orders_pkey")]
    assert "CREATE INDEX ON public.orders (tenant_id, id)" in found[0].fix
    sql("CREATE UNIQUE INDEX orders_item ON public.orders (item)")
    sql("CREATE INDEX orders_lower ON public.orders (lower(item))")
    sql("CREATE INDEX orders_led ON public.orders (tenant_id, item)")
    sql("CREATE INDEX orders_two ON public.orders (item, id)")
    fixes = {f.object: f.fix for f in _found(app, "index_not_led_by_tenant")}
    assert (
        "CREATE INDEX ON public.orders (tenant_id, item, id), then DROP INDEX public.orders_two"
        in (fixes["public.orders_two"])
    )
    sql("DROP INDEX public.orders_two")
    assert {f.object for f in _found(app, "index_not_led_by_tenant")} == {
        "public.orders_pkey",
        "public.orders_item",
        "public.orders_lower",
    }
    sql("DROP INDEX public.orders_item, public.orders_lower")
    sql("ALTER TABLE public.orders DROP CONSTRAINT orders_pkey, ADD PRIMARY KEY (tenant_id, id)")
    assert _found(app, "index_not_led_by_tenant") == []


def _range_count(conn: psycopg.Connection[Any], lo: str, hi: str) -> int:
    """The attack: rows of every tenant with lo <= item < hi, from the plan."""
    conn.execute("SET LOCAL enable_seqscan = off")
    conn.execute("SET LOCAL enable_bitmapscan = off")
    row = conn.execute(
        "EXPLAIN (ANALYZE, FORMAT JSON) SELECT 1 FROM public.orders WHERE item >= %s AND item < %s",
        (lo, hi),
    ).fetchone()
    assert row is not None
    plan = json.dumps(row[0])
    return sum(int(x) for x in re.findall(r"\"Rows Removed by Filter\": (\d+)", plan))


def test_the_range_count_channel_and_what_closes_it(
    dsn: str, app_role: str, hybrid: dict[str, str], sql: SQL
) -> None:
    """What the README says: with an index on item alone, tenant acme counts
    globex's rows in a range of item; led by the tenant column, it counts none."""
    for slug, items in (("globex", ["g-secret-1", "g-secret-2"]), ("acme", ["a-1"])):
        with psycopg.connect(dsn) as conn:
            conn.execute("SELECT tenancy.enter_tenant(%s)", (slug,))
            for item in items:
                conn.execute("INSERT INTO public.orders (item) VALUES (%s)", (item,))
    sql("CREATE UNIQUE INDEX orders_item ON public.orders (item)")
    sql("ANALYZE public.orders")
    with psycopg.connect(as_role(dsn, app_role)) as conn:
        conn.execute("SELECT tenancy.enter_tenant('acme')")
        assert conn.execute("SELECT item FROM public.orders").fetchall() == [("a-1",)]
        assert _range_count(conn, "g-secret-", "g-secret-~") == 2
    sql("DROP INDEX public.orders_item")
    sql("CREATE UNIQUE INDEX orders_item ON public.orders (tenant_id, item)")
    sql("ANALYZE public.orders")
    with psycopg.connect(as_role(dsn, app_role)) as conn:
        conn.execute("SELECT tenancy.enter_tenant('acme')")
        assert _range_count(conn, "g-secret-", "g-secret-~") == 0
