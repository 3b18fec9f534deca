"""The pgtenancy demo on Citus: schema tenants and shared tenants, distributed.

Registers the coordinator (citus_set_coordinator_host) and the workers,
installs pgtenancy on the coordinator, registers the Chinook DDL as a tenant
migration and creates schema tenants: tenancy.create_tenant distributes each
new schema itself (citus_schema_distribute, after creating its tables). Loads
Chinook into acme through tenant_session and counts invoices per tenant. Then
the shared path: public.orders, tenant_id in its primary key, guarded with
enable_rls and distributed by tenant_id; two shared tenants write and read
their own rows only. Run by docker/citus/compose.yaml, and by the Citus test
suite (tests/citus/test_demo.py) against its local cluster.

Environment: ``DSN`` (the coordinator, superuser), ``COORDINATOR`` (host:port
the workers reach it at, default ``coordinator:5432``), ``WORKERS``
(comma-separated host:port, default ``worker1:5432,worker2:5432``).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import psycopg
from psycopg.conninfo import make_conninfo
from sqlalchemy import text

from pgtenancy import Tenancy, install, tenant_session
from pgtenancy.admin import engine_from_dsn
from pgtenancy.sqlscript import read_script


def _host_port(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host, int(port)


def main() -> None:
    """Run the Citus demo against $DSN (the coordinator)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--chinook", type=Path, required=True)
    args = parser.parse_args()
    dsn = os.environ["DSN"]
    coordinator = _host_port(os.environ.get("COORDINATOR", "coordinator:5432"))
    workers = [
        _host_port(w) for w in os.environ.get("WORKERS", "worker1:5432,worker2:5432").split(",")
    ]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS citus")
        conn.execute("SELECT citus_set_coordinator_host(%s, %s)", coordinator)
        for host, port in workers:
            conn.execute("SELECT citus_add_node(%s, %s)", (host, port))
    # After CREATE EXTENSION citus: install prepares enter_tenant for Citus.
    install(dsn)
    script = read_script(args.chinook.read_text("utf-8"))
    tenancy = Tenancy(dsn)
    tenancy.add_migration("0001_chinook", script.sql_of("ddl"))
    with psycopg.connect(dsn, autocommit=True) as conn:
        for slug in ("acme", "globex", "initech"):
            tenant = tenancy.create_tenant(slug)
            row = conn.execute(
                "SELECT n.nodename || ':' || n.nodeport FROM pg_dist_schema s"
                " JOIN pg_dist_shard sh ON sh.logicalrelid ="
                "   (SELECT min(logicalrelid::oid)::regclass"
                "      FROM pg_dist_partition WHERE colocationid = s.colocationid)"
                " JOIN pg_dist_placement p ON p.shardid = sh.shardid"
                " JOIN pg_dist_node n ON n.groupid = p.groupid"
                " WHERE s.schemaid = %s::regnamespace",
                (tenant.schema_name,),
            ).fetchone()
            assert row is not None, f"{tenant.schema_name} is not distributed"
            print(
                f"created {tenant.schema_name}, distributed by create_tenant"
                f" (citus_schema_distribute) on {row[0]}"
            )
    engine = engine_from_dsn(dsn)
    with tenant_session(engine, "acme") as session:
        raw = session.connection().connection.driver_connection
        assert raw is not None
        for stmt in script.of_kind("data"):
            raw.execute(stmt.sql)
        session.commit()
    for slug in ("acme", "globex"):
        with tenant_session(engine, slug) as session:
            count = session.execute(text("SELECT count(*) FROM invoice")).scalar_one()
        print(f"{slug}: {count} invoices")

    # Shared tenants: guard first (the column default), then distribute.
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE public.orders (tenant_id uuid, id bigint, item text NOT NULL,"
            " PRIMARY KEY (tenant_id, id))"
        )
        tenancy.enable_rls("public.orders")
        conn.execute("SELECT create_distributed_table('public.orders', 'tenant_id')")
    # Row-level security binds roles that are neither superuser nor BYPASSRLS:
    # the application connects as such a role.
    with psycopg.connect(dsn, autocommit=True) as conn:
        if not conn.execute(
            "SELECT 1 FROM pg_roles WHERE rolname = 'pgtenancy_demo_app'"
        ).fetchone():
            conn.execute("CREATE ROLE pgtenancy_demo_app LOGIN NOSUPERUSER NOBYPASSRLS")
    tenancy.grant_app_role("pgtenancy_demo_app")
    app = engine_from_dsn(make_conninfo(dsn, user="pgtenancy_demo_app"))
    for slug in ("hooli", "umbrella"):
        tenancy.create_tenant(slug, isolation="shared")
        with tenant_session(app, slug) as session:
            session.execute(
                text("INSERT INTO orders (id, item) VALUES (1, :s), (2, :s)"), {"s": slug}
            )
            session.commit()
    for slug in ("hooli", "umbrella"):
        with tenant_session(app, slug) as session:
            items = session.execute(text("SELECT DISTINCT item FROM orders")).scalars().all()
        assert items == [slug], items
        print(f"{slug}: orders {items} (shared table, distributed by tenant_id)")
    app.dispose()
    engine.dispose()


if __name__ == "__main__":
    main()
