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
        conn.execute(f"SET citus.enable_schema_based_sharding = {sharding}")
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


def test_multi_statement_migration_creating_tables(fleet: str) -> None:
    """Several statements in one migration, new tables only: all distributed."""
    body = (
        "CREATE TABLE tag (id int PRIMARY KEY, label text DEFAULT 'a;b');\n"
        "-- a comment; with a semicolon\n"
        "CREATE TABLE tag_item (tag_id int REFERENCES tag (id), item_id int);"
        " COMMENT ON TABLE tag IS $c$tags; many$c$"
    )
    with psycopg.connect(fleet, autocommit=True) as conn:
        conn.execute("SELECT tenancy.create_tenant('multi_a')")
        conn.execute("SELECT tenancy.add_migration('0003', %s)", (body,))
        conn.execute("SELECT tenancy.migrate_tenant('multi_a')")
        d = distribution(conn, "tenant_multi_a")
        version = conn.execute(
            "SELECT migration_version FROM tenancy.tenants WHERE slug = 'multi_a'"
        ).fetchone()
    assert version == ("0003",)
    assert d["colocation"] is not None
    assert {"item", "tag", "tag_item"} <= set(d["tables"])
    assert set(d["tables"].values()) == {d["colocation"]}


@pytest.mark.xfail(
    strict=True,
    reason="Citus opens one worker connection per user: the migrator's connection does not "
    "see the grant and hand-over the owner made in the same transaction (README, Citus)",
)
def test_migration_altering_a_distributed_table(fleet: str) -> None:
    with psycopg.connect(fleet, autocommit=True) as conn:
        # Citus runs the DDL on the workers as the migrator: it must log in there.
        conn.execute(
            "DO $$ BEGIN EXECUTE format('ALTER ROLE %I LOGIN', tenancy.migrator_role()); END $$"
        )
        conn.execute("SELECT tenancy.create_tenant('alter_a')")
        conn.execute(
            "SELECT tenancy.add_migration('0004', 'ALTER TABLE item ADD COLUMN note text')"
        )
        conn.execute("SELECT tenancy.migrate_tenant('alter_a')")
