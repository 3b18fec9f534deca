"""Cloning a schema tenant in strict mode (issue 13, attack run 4): the copy
into the clone's tables runs as the clone's owner with row_security off, and
strict mode's FORCE ROW LEVEL SECURITY bound that owner, so clone_tenant
failed with 42501 ("query would be affected by row-level security policy").
Now the clone gets the rows and keeps strict mode's guard: FORCE row-level
security and the policy naming the clone's own id, so acme's token reads
none of it and the clone's token reads its rows only. Real server, the
application role entering with tokens."""

from __future__ import annotations

import psycopg
from strict_support import build, marker

from helpers import as_role
from pgtenancy import Tenancy, sign_tenant_token

SELECT = "SELECT body FROM tenant_{}.invoice ORDER BY id"


def test_clone_of_a_schema_tenant_in_strict_mode(dsn: str, app_role: str) -> None:
    world = build(dsn, app_role, as_role(dsn, app_role), strict=True)
    clone = Tenancy(dsn).clone_tenant("acme", "acmecopy")
    rows = [(marker("acme"),), (marker("acme") + " 2",)]
    with psycopg.connect(dsn, autocommit=True) as owner:
        assert owner.execute(SELECT.format("acmecopy")).fetchall() == rows
        guard = owner.execute(
            "SELECT c.relrowsecurity, c.relforcerowsecurity, pg_get_expr(p.polqual, p.polrelid)"
            " FROM pg_class c JOIN pg_policy p ON p.polrelid = c.oid"
            " WHERE c.oid = 'tenant_acmecopy.invoice'::regclass"
            " AND p.polname = 'tenancy_strict_schema'"
        ).fetchone()
        assert guard is not None and guard[:2] == (True, True)
        assert str(clone.id) in guard[2] and world.ids["acme"] not in guard[2]
        assert owner.execute(
            "SELECT count(*) FROM tenancy.check_strict() WHERE severity = 'error'"
        ).fetchone() == (0,)
    with psycopg.connect(world.app_dsn, autocommit=True) as conn:
        for slug, expected in (("acmecopy", rows), ("acme", [])):
            conn.execute("BEGIN")
            conn.execute(
                "SELECT tenancy.enter_tenant_token(%s)",
                (sign_tenant_token(world.key, slug, 60, key_name="k1"),),
            )
            assert conn.execute(SELECT.format("acmecopy")).fetchall() == expected
            conn.execute("ROLLBACK")
