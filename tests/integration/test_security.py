"""A malicious object created in public by an unprivileged role cannot hijack
the kit's functions: every SECURITY DEFINER function pins search_path, and the
invoker functions qualify what they call."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql as pgsql

from helpers import as_role
from pgtenancy import Tenancy

SQL = Callable[..., list[tuple[Any, ...]]]

TRAPS = """
CREATE TABLE public.hijacked (what text);
CREATE FUNCTION public.quote_ident(text) RETURNS text LANGUAGE sql AS
    $$ INSERT INTO public.hijacked VALUES ('quote_ident') RETURNING 'x' $$;
CREATE FUNCTION public.quote_literal(text) RETURNS text LANGUAGE sql AS
    $$ INSERT INTO public.hijacked VALUES ('quote_literal') RETURNING 'x' $$;
CREATE FUNCTION public.format(text, VARIADIC text[]) RETURNS text LANGUAGE sql AS
    $$ INSERT INTO public.hijacked VALUES ('format') RETURNING 'x' $$;
CREATE FUNCTION public.set_config(text, text, boolean) RETURNS text LANGUAGE sql AS
    $$ INSERT INTO public.hijacked VALUES ('set_config') RETURNING 'x' $$;
CREATE FUNCTION public.now() RETURNS timestamptz LANGUAGE sql AS
    $$ INSERT INTO public.hijacked VALUES ('now') RETURNING now() $$;
CREATE FUNCTION public.evil_eq(text, text) RETURNS boolean LANGUAGE sql AS
    $$ INSERT INTO public.hijacked VALUES ('=') RETURNING true $$;
CREATE OPERATOR public.= (LEFTARG = text, RIGHTARG = text, FUNCTION = public.evil_eq);
CREATE TABLE public.tenants (slug text, id uuid, schema_name text, status text);
CREATE TABLE public.events (id bigint);
"""


@pytest.fixture
def evil(dsn: str, sql: SQL) -> Iterator[str]:
    name = f"pgtenancy_evil_{uuid.uuid4().hex[:8]}"
    ident = pgsql.Identifier(name)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(pgsql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER").format(ident))
        # As in databases created before PostgreSQL 15: anyone may create in public.
        conn.execute(pgsql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(ident))
    with psycopg.connect(as_role(dsn, name), autocommit=True) as conn:
        conn.execute(TRAPS)
        conn.execute("GRANT INSERT, SELECT ON public.hijacked TO PUBLIC")
    try:
        yield name
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(pgsql.SQL("DROP OWNED BY {} CASCADE").format(ident))
            conn.execute(pgsql.SQL("DROP ROLE {}").format(ident))


def test_public_traps_do_not_fire(
    evil: str, tenancy: Tenancy, sql: SQL, dsn: str, app_role: str
) -> None:
    tenancy.add_migration(
        "0001", "CREATE TABLE item (id int PRIMARY KEY, at timestamptz DEFAULT now())"
    )
    tenancy.create_tenant("acme")
    tenancy.create_tenant("globex", isolation="shared")
    tenancy.suspend_tenant("acme")
    tenancy.resume_tenant("acme")
    tenancy.add_migration("0002", "ALTER TABLE item ADD COLUMN note text")
    tenancy.migrate_tenant("acme")
    sql("CREATE TABLE public.orders (id serial PRIMARY KEY, item text)")
    tenancy.enable_rls("public.orders")
    tenancy.track_changes("tenant_acme.item")
    tenancy.grant_app_role(app_role)
    with psycopg.connect(as_role(dsn, app_role)) as conn:  # the app role, default search_path
        conn.execute("SELECT tenancy.enter_tenant('acme')")
        conn.execute("INSERT INTO item (id) VALUES (1)")
        conn.commit()
        conn.execute("SELECT tenancy.enter_tenant('globex')")
        conn.execute("INSERT INTO orders (item) VALUES ('anvil')")
        conn.commit()
    with (
        psycopg.connect(as_role(dsn, evil)) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):  # the attacker cannot even reach the kit
        conn.execute("SELECT tenancy.current_tenant_id()")
    list(tenancy.list_tenants())
    tenancy.drop_tenant("globex", destroy_data=True)
    assert sql("SELECT what FROM public.hijacked") == []
    # And the results are right: the real registry, not public.tenants.
    assert [t.slug for t in tenancy.list_tenants()] == ["acme"]
    assert sql("SELECT count(*) FROM tenant_acme.item") == [(1,)]
