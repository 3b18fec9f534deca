"""A database in strict entry mode for the strict-entry tests (issue 13).

Schema tenants acme and globex (table invoice with a serial id, a view, a
materialized view, a function reading invoice, and a SECURITY DEFINER one
made by the owner by hand), shared
tenants sa and sb (rows in the guarded table public.orders); every row body
names its tenant in capitals (ACME-ROW, GLOBEX-ROW, SA-ROW, SB-ROW) so a
leak shows in any output. One entry key, k1; strict entry on.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

import psycopg

from pgtenancy import Tenancy

MIGRATION = """
CREATE TABLE invoice (id serial PRIMARY KEY, body text NOT NULL);
CREATE VIEW invoice_view AS SELECT id, body FROM invoice;
CREATE MATERIALIZED VIEW invoice_summary AS SELECT string_agg(body, ',') AS bodies FROM invoice;
CREATE FUNCTION invoice_bodies() RETURNS SETOF text LANGUAGE sql STABLE
    AS 'SELECT body FROM invoice';
"""

SCHEMA_TENANTS = ("acme", "globex")
SHARED_TENANTS = ("sa", "sb")


def marker(slug: str) -> str:
    """The text in every row of tenant ``slug``."""
    return f"{slug.upper()}-ROW"


@dataclass
class StrictWorld:
    """What the fixture built: keys, tenant ids and the application role's DSN."""

    dsn: str
    app_dsn: str
    key: bytes
    ids: dict[str, str]

    def data(self) -> Any:
        """Every tenant row, read as the owner: compare before and after an attack."""
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            schema_rows = {
                slug: conn.execute(
                    f"SELECT id, body FROM tenant_{slug}.invoice ORDER BY id"
                ).fetchall()
                for slug in SCHEMA_TENANTS
            }
            seqs = {
                slug: conn.execute(
                    f"SELECT last_value, is_called FROM tenant_{slug}.invoice_id_seq"
                ).fetchone()
                for slug in SCHEMA_TENANTS
            }
            shared = conn.execute(
                "SELECT tenant_id::text, id, item FROM public.orders ORDER BY id"
            ).fetchall()
        return schema_rows, seqs, shared


def build(
    dsn: str, app_role: str, app_dsn: str, *, strict: bool = True, definer: bool = False
) -> StrictWorld:
    """Create the tenants, rows and key of the module docstring; strict entry on if
    ``strict``; the hand-made SECURITY DEFINER functions if ``definer`` (later
    migrations then refuse to run: the migration gate finds them)."""
    tenancy = Tenancy(dsn)
    tenancy.add_migration("0001", MIGRATION)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE public.orders (id serial PRIMARY KEY, item text NOT NULL)")
        conn.execute("SELECT tenancy.enable_rls('public.orders')")
    ids: dict[str, str] = {}
    for slug in SCHEMA_TENANTS:
        ids[slug] = str(tenancy.create_tenant(slug).id)
    for slug in SHARED_TENANTS:
        ids[slug] = str(tenancy.create_tenant(slug, isolation="shared").id)
    with psycopg.connect(dsn, autocommit=True) as conn:
        for slug in SCHEMA_TENANTS:
            conn.execute(
                f"INSERT INTO tenant_{slug}.invoice (body) VALUES (%s), (%s)",
                (marker(slug), marker(slug) + " 2"),
            )
            conn.execute(f"REFRESH MATERIALIZED VIEW tenant_{slug}.invoice_summary")
            # Migrations refuse SECURITY DEFINER functions; the owner can still
            # make one by hand: it runs as the owner, who owns every table.
            if definer:
                conn.execute(
                    f"CREATE FUNCTION tenant_{slug}.definer_bodies() RETURNS SETOF text"
                    f" LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog"
                    f" AS 'SELECT body FROM tenant_{slug}.invoice'"
                )
        for slug in SHARED_TENANTS:
            with conn.transaction():
                conn.execute("SELECT tenancy.enter_tenant(%s)", (slug,))
                conn.execute("INSERT INTO public.orders (item) VALUES (%s)", (marker(slug),))
        conn.execute("ANALYZE")
        key = secrets.token_bytes(32)
        conn.execute("SELECT tenancy.add_entry_key('k1', %s)", (key,))
        if strict:
            conn.execute("SELECT tenancy.set_strict_entry(true)")
    return StrictWorld(dsn=dsn, app_dsn=app_dsn, key=key, ids=ids)
