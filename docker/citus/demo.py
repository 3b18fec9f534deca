"""The pgtenancy demo on Citus: tenants as distributed schemas.

Registers the workers, installs pgtenancy on the coordinator, registers the
Chinook DDL as a tenant migration, creates tenants and distributes each tenant
schema with citus_schema_distribute(), then loads Chinook into acme through
tenant_session and counts invoices per tenant. Run by docker/citus/compose.yaml.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import psycopg
from sqlalchemy import text

from pgtenancy import Tenancy, install, tenant_session
from pgtenancy.admin import engine_from_dsn
from pgtenancy.sqlscript import read_script


def main() -> None:
    """Run the Citus demo against $DSN (the coordinator)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--chinook", type=Path, required=True)
    args = parser.parse_args()
    dsn = os.environ["DSN"]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS citus")
        for worker in ("worker1", "worker2"):
            conn.execute("SELECT citus_add_node(%s, 5432)", (worker,))
    install(dsn)
    script = read_script(args.chinook.read_text("utf-8"))
    tenancy = Tenancy(dsn)
    tenancy.add_migration("0001_chinook", script.sql_of("ddl"))
    with psycopg.connect(dsn, autocommit=True) as conn:
        for slug in ("acme", "globex", "initech"):
            tenant = tenancy.create_tenant(slug)
            conn.execute("SELECT citus_schema_distribute(%s)", (tenant.schema_name,))
            print(f"created and distributed {tenant.schema_name}")
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


if __name__ == "__main__":
    main()
