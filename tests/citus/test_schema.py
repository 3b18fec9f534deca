"""Schema tenants on Citus: create_tenant distributes the schema, later
migrations' tables join its colocation group, dropping a tenant drops its shards."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from citus.conftest import make_app_role
from pgtenancy import tenant_connection

MIGRATION_1 = "CREATE TABLE item (id int PRIMARY KEY, owner text NOT NULL)"


def distribution(conn: psycopg.Connection[Any], schema: str) -> dict[str, Any]:
    """Whether schema is a distributed schema, and its tables' colocation ids."""
    dist = conn.execute(
        "SELECT colocationid FROM pg_dist_schema WHERE schemaid = %s::regnamespace", (schema,)
    ).fetchone()
    tables = conn.execute(
        "SELECT c.relname, p.colocationid FROM pg_class c"
        " LEFT JOIN pg_dist_partition p ON p.logicalrelid = c.oid"
        " WHERE c.relnamespace = %s::regnamespace AND c.relkind = 'r' ORDER BY 1",
        (schema,),
    ).fetchall()
    return {"colocation": dist[0] if dist else None, "tables": dict(tables)}


@pytest.fixture(scope="module")
def fleet(citus_dsn: str) -> str:
    with psycopg.connect(citus_dsn, autocommit=True) as conn:
        conn.execute("SELECT tenancy.add_migration('0001', %s)", (MIGRATION_1,))
    return citus_dsn


@pytest.mark.parametrize("sharding", ["off", "on"])
def test_create_tenant_distributes_the_schema(fleet: str, sharding: str) -> None:
    slug = f"sch_{sharding}"
    with psycopg.connect(fleet, autocommit=True) as conn:
        conn.execute(f"SET citus.enable_schema_based_sharding = {sharding}")  # type: ignore[arg-type]
        conn.execute("SELECT tenancy.create_tenant(%s)", (slug,))
        d = distribution(conn, f"tenant_{slug}")
    assert d["colocation"] is not None
    assert d["tables"] == {"item": d["colocation"]}


def test_migrations_tables_join_the_colocation_group(fleet: str) -> None:
    with psycopg.connect(fleet, autocommit=True) as conn:
        conn.execute("SELECT tenancy.create_tenant('mig_a')")
        conn.execute(
            "SELECT tenancy.add_migration('0002', %s)",
            ("CREATE TABLE line (id int PRIMARY KEY, item_id int REFERENCES item (id))",),
        )
        conn.execute("SELECT tenancy.migrate_tenant('mig_a')")
        d = distribution(conn, "tenant_mig_a")
    assert d["colocation"] is not None
    assert d["tables"] == {"item": d["colocation"], "line": d["colocation"]}


def test_tenant_session_routes_and_isolates(fleet: str, citus_dsn: str) -> None:
    with psycopg.connect(fleet, autocommit=True) as conn:
        for slug in ("iso_a", "iso_b"):
            conn.execute("SELECT tenancy.create_tenant(%s)", (slug,))
    app = make_app_role(citus_dsn, "citus_app_schema")
    with psycopg.connect(app) as conn:
        for slug in ("iso_a", "iso_b"):
            with tenant_connection(conn, slug) as tc:
                tc.execute("INSERT INTO item VALUES (1, %s), (2, %s)", (slug, slug))
        for slug in ("iso_a", "iso_b"):
            with tenant_connection(conn, slug) as tc:
                assert tc.execute("SELECT DISTINCT owner FROM item").fetchall() == [(slug,)]


def test_drop_tenant_drops_its_shards(fleet: str) -> None:
    with psycopg.connect(fleet, autocommit=True) as conn:
        conn.execute("SELECT tenancy.create_tenant('gone_s')")
        before = conn.execute(
            "SELECT count(*) FROM citus_shards WHERE table_name::text LIKE 'tenant_gone_s.%'"
        ).fetchone()
        conn.execute("SELECT tenancy.drop_tenant('gone_s', destroy_data => true)")
        after = conn.execute(
            "SELECT count(*) FROM citus_shards WHERE table_name::text LIKE 'tenant_gone_s.%'"
        ).fetchone()
        schemas = conn.execute(
            "SELECT result FROM run_command_on_workers("
            "$$SELECT count(*) FROM pg_namespace WHERE nspname = 'tenant_gone_s'$$)"
        ).fetchall()
    assert before is not None and before[0] >= 2
    assert after == (0,)
    assert {r[0] for r in schemas} == {"0"}
