"""What a suspension cuts off in transactions already open (issue 13, L3; the
README's strict-entry section and its suspension paragraph say the same):
a schema tenant at the next statement whatever the isolation level (its
privileges are revoked, and privileges are read from the latest catalog); a
shared tenant at the next statement in READ COMMITTED, and in REPEATABLE READ
and SERIALIZABLE too where the C accelerator runs (its policy check reads the
tenant's status as committed now, not as of the transaction's snapshot).
Without the accelerator (the PL/pgSQL, which can only read the transaction's
snapshot) such a transaction keeps the shared tenant's rows until it ends:
the documented gap, pinned here so that a change of it changes the README.
Plain and strict entry alike."""

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


@pytest.mark.parametrize("accelerated", [True, False], ids=["accelerator", "plpgsql"])
@pytest.mark.parametrize("strict", [True, False], ids=["strict", "plain"])
@pytest.mark.parametrize("isolation", ["READ COMMITTED", "REPEATABLE READ", "SERIALIZABLE"])
@pytest.mark.parametrize("slug", ["acme", "sa"])
def test_what_an_open_transaction_keeps_after_a_suspension(
    dsn: str, app_role: str, slug: str, isolation: str, strict: bool, accelerated: bool
) -> None:
    world = build(dsn, app_role, as_role(dsn, app_role), strict=strict)
    with psycopg.connect(dsn, autocommit=True) as owner:
        in_use = owner.execute("SELECT tenancy.set_accelerator(%s)", (accelerated,)).fetchone()
    if accelerated and in_use != (True,):
        pytest.skip("the accelerator library pgtenancy_accel is not installed on this server")
    token = sign_tenant_token(world.key, slug, 60, key_name="k1")
    if strict:
        entry, params = "SELECT tenancy.enter_tenant_token(%s)", (token,)
    else:
        entry, params = "CALL tenancy.enter(%s)", (slug,)
    with psycopg.connect(world.app_dsn, autocommit=True) as conn:
        conn.execute(f"BEGIN ISOLATION LEVEL {isolation}")
        conn.execute(entry, params)
        first = conn.execute(QUERY[slug]).fetchall()
        assert first and first[0][0] == marker(slug)
        with psycopg.connect(dsn, autocommit=True) as owner:
            owner.execute("SELECT tenancy.suspend_tenant(%s)", (slug,))
        if slug == "acme":
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(QUERY[slug])
        elif isolation == "READ COMMITTED" or accelerated:
            assert conn.execute(QUERY[slug]).fetchall() == []
            # Nor can it write the tenant's rows.
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("INSERT INTO public.orders (item) VALUES ('late')")
        else:
            # The documented gap: the snapshot still shows the tenant active.
            assert conn.execute(QUERY[slug]).fetchall() == first
        conn.execute("ROLLBACK")
        # A new transaction is refused at entry.
        conn.execute("BEGIN")
        with pytest.raises(psycopg.Error) as refused:
            conn.execute(entry, params)
        assert refused.value.sqlstate == "PT004"
        conn.execute("ROLLBACK")
        # Resumed, the tenant's rows are back in a new transaction.
        with psycopg.connect(dsn, autocommit=True) as owner:
            owner.execute("SELECT tenancy.resume_tenant(%s)", (slug,))
        conn.execute(f"BEGIN ISOLATION LEVEL {isolation}")
        conn.execute(entry, params)
        assert conn.execute(QUERY[slug]).fetchall() == first
        conn.execute("ROLLBACK")
