"""What a suspension cuts off in transactions already open (issue 13, L3; the
README's strict-entry section and its suspension paragraph say the same):
a schema tenant at the next statement whatever the isolation level (its
privileges are revoked, and privileges are read from the latest catalog); a
shared tenant at the next statement in READ COMMITTED, but a REPEATABLE READ
transaction that began before the suspension keeps its rows until it ends
(the policy's status lookup reads the transaction's snapshot). This test
pins that documented gap: a fix makes the shared REPEATABLE READ case fail
here, and the README must change with it."""

from __future__ import annotations

import psycopg
import pytest
from strict_support import build, marker

from helpers import as_role
from pgtenancy import sign_tenant_token

QUERY = {
    "acme": "SELECT body FROM tenant_acme.invoice ORDER BY id",
    "sa": "SELECT item FROM public.orders",
}


@pytest.mark.parametrize("isolation", ["READ COMMITTED", "REPEATABLE READ"])
@pytest.mark.parametrize("slug", ["acme", "sa"])
def test_what_an_open_transaction_keeps_after_a_suspension(
    dsn: str, app_role: str, slug: str, isolation: str
) -> None:
    world = build(dsn, app_role, as_role(dsn, app_role))
    token = sign_tenant_token(world.key, slug, 60, key_name="k1")
    with psycopg.connect(world.app_dsn, autocommit=True) as conn:
        conn.execute(f"BEGIN ISOLATION LEVEL {isolation}")
        conn.execute("SELECT tenancy.enter_tenant_token(%s)", (token,))
        first = conn.execute(QUERY[slug]).fetchall()
        assert first and first[0][0] == marker(slug)
        with psycopg.connect(dsn, autocommit=True) as owner:
            owner.execute("SELECT tenancy.suspend_tenant(%s)", (slug,))
        if slug == "acme":
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(QUERY[slug])
        elif isolation == "READ COMMITTED":
            assert conn.execute(QUERY[slug]).fetchall() == []
        else:
            # The documented gap: the snapshot still shows the tenant active.
            assert conn.execute(QUERY[slug]).fetchall() == first
        conn.execute("ROLLBACK")
        # A new transaction is refused at entry.
        conn.execute("BEGIN")
        with pytest.raises(psycopg.Error) as refused:
            conn.execute("SELECT tenancy.enter_tenant_token(%s)", (token,))
        assert refused.value.sqlstate == "PT004"
        conn.execute("ROLLBACK")
