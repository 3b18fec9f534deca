"""Temporary types named like built-in ones cannot hijack the kit's functions.

Found by an independent attack run (issue 13): ``tenancy.active_tenant_id()``
runs with the caller's search_path (it is called by RLS policies), and
PL/pgSQL resolves the types of its variables when a session first compiles
it. The application role, inside its own tenant's request, put ``pg_temp``
first and created a temporary domain named ``text`` whose CHECK copied every
value into a session setting; the next request on the same pooled connection
(another tenant's) compiled the function with that domain, its entry token
went into the setting, and the attacker entered that tenant with it. With the
pool reset hook the same trick broke every later request on the connection
(``type with OID ... does not exist``). Every name in such functions is now
qualified (tests/sql/test_unpinned_names.py checks them all statically); this
replays the attack through the public API, as three requests on one
connection: attacker, victim, attacker.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from strict_support import build, marker

from helpers import as_role
from pgtenancy import pool_reset, sign_tenant_token, tenant_connection

#: Run as the application role inside its own tenant's transaction: every
#: later value of a variable typed text, uuid or boolean passes through the
#: recorder, which appends it to the session setting app.stolen.
ATTACK = (
    "SELECT set_config('search_path', 'pg_temp, pg_catalog, public', true)",
    "CREATE FUNCTION pg_temp.record(pg_catalog.text) RETURNS pg_catalog.bool LANGUAGE sql AS $$"
    " SELECT pg_catalog.set_config('app.stolen',"
    "   pg_catalog.concat(pg_catalog.current_setting('app.stolen', true), ' ', $1), false)"
    " IS NOT NULL $$",
    "CREATE DOMAIN pg_temp.text AS pg_catalog.text CHECK (pg_temp.record(VALUE))",
    "CREATE DOMAIN pg_temp.uuid AS pg_catalog.uuid CHECK (pg_temp.record(VALUE::pg_catalog.text))",
)


def _requests(
    conn: psycopg.Connection[Any],
    enter: dict[str, Any],
    victim: dict[str, Any],
    warm: str,
    query: str,
    reset: bool,
) -> tuple[list[tuple[Any, ...]], str]:
    """Attacker's request, victim's request, attacker's request on ``conn``:
    what the victim read, and what the attacker found recorded.

    The attacker puts pg_temp first for the session (so the victim's entry
    runs under it unless the pool resets the connection) and runs ``warm``
    (pg_temp first), so the kit's functions are compiled after the domains
    exist; the victim runs ``query``."""
    with tenant_connection(conn, **enter) as c:
        for statement in ATTACK:
            c.execute(statement)
        c.execute(warm)
        c.execute("SELECT set_config('search_path', 'pg_temp, pg_catalog, public', false)")
    if reset:
        pool_reset(conn)
    with tenant_connection(conn, **victim) as c:
        rows = c.execute(query).fetchall()
    if reset:
        pool_reset(conn)
    with tenant_connection(conn, **enter) as c:
        stolen = c.execute("SELECT current_setting('app.stolen', true)").fetchone()
    return rows, str(stolen[0] if stolen else "")


@pytest.mark.parametrize("reset", [False, True], ids=["no-reset", "pool-reset"])
def test_a_temporary_domain_named_text_sees_no_entry_token(
    dsn: str, app_role: str, reset: bool
) -> None:
    """Strict entry, shared tenants sa (attacker) and sb (victim): the victim's
    request works and reads its own row, and no token (of sb or anyone) was
    recorded by the attacker's domain."""
    world = build(dsn, app_role, as_role(dsn, app_role))
    token_a = sign_tenant_token(world.key, "sa", 600, key_name="k1")
    token_b = sign_tenant_token(world.key, "sb", 600, key_name="k1")
    with psycopg.connect(world.app_dsn, autocommit=True) as conn:
        rows, stolen = _requests(
            conn,
            {"token": token_a},
            {"token": token_b},
            "SELECT count(*) FROM public.orders",
            "SELECT item FROM orders",
            reset,
        )
    assert rows == [(marker("sb"),)]
    assert "pt1." not in stolen, stolen
    assert token_b not in stolen


@pytest.mark.parametrize("reset", [False, True], ids=["no-reset", "pool-reset"])
def test_a_temporary_domain_named_text_sees_nothing_of_plain_entry(
    dsn: str, app_role: str, reset: bool
) -> None:
    """Plain entry, schema tenants: the victim's slug, id and schema never pass
    through the attacker's domains, and the victim reads its own rows."""
    world = build(dsn, app_role, as_role(dsn, app_role), strict=False)
    with psycopg.connect(world.app_dsn, autocommit=True) as conn:
        rows, stolen = _requests(
            conn,
            {"slug": "acme"},
            {"slug": "globex"},
            "SELECT count(*) FROM tenant_acme.invoice",
            "SELECT body FROM invoice ORDER BY id",
            reset,
        )
    assert rows == [(marker("globex"),), (marker("globex") + " 2",)]
    for secret in ("globex", world.ids["globex"]):
        assert secret not in stolen, stolen
