"""What a suspension cuts off in transactions already open (issue 13, L3; the
README's strict-entry section and its suspension paragraph say the same):
a schema tenant at the next statement whatever the isolation level (its
privileges are revoked, and privileges are read from the latest catalog); a
shared tenant at the next statement in READ COMMITTED, and in REPEATABLE READ
and SERIALIZABLE too where the C accelerator runs (its policy check reads the
tenant's status as committed now, not as of the transaction's snapshot).
Without the accelerator (the PL/pgSQL, which can only read the transaction's
snapshot) a plain-entry transaction keeps the shared tenant's rows until it
ends: the documented gap, pinned here so that a change of it changes the
README; strict entry refuses REPEATABLE READ and SERIALIZABLE there (0A000).
The same for a dropped entry key in strict entry."""

from __future__ import annotations

import secrets
from typing import Any

import psycopg
import pytest
from strict_support import StrictWorld, build, marker

from helpers import as_role
from pgtenancy import sign_tenant_token


def use_accelerator(dsn: str, accelerated: bool) -> None:
    """Turn the C accelerator on or off; skip the test when it is asked for and
    its library is not installed on the server."""
    with psycopg.connect(dsn, autocommit=True) as owner:
        in_use = owner.execute("SELECT tenancy.set_accelerator(%s)", (accelerated,)).fetchone()
    if accelerated and in_use != (True,):
        pytest.skip("the accelerator library pgtenancy_accel is not installed on this server")


def entry_of(world: StrictWorld, slug: str, strict: bool) -> tuple[str, tuple[str]]:
    """The statement entering ``slug`` and its parameters: with a fresh token in
    strict mode, plain entry otherwise."""
    if strict:
        token = sign_tenant_token(world.key, slug, 60, key_name="k1")
        return "SELECT tenancy.enter_tenant_token(%s)", (token,)
    return "CALL tenancy.enter(%s)", (slug,)


def entry_refused(conn: psycopg.Connection[Any], entry: str, params: tuple[str]) -> None:
    """A new transaction's entry is refused: the tenant is suspended (PT004)."""
    conn.execute("BEGIN")
    with pytest.raises(psycopg.Error) as refused:
        conn.execute(entry, params)
    assert refused.value.sqlstate == "PT004"
    conn.execute("ROLLBACK")


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
    use_accelerator(dsn, accelerated)
    entry, params = entry_of(world, slug, strict)
    with psycopg.connect(world.app_dsn, autocommit=True) as conn:
        conn.execute(f"BEGIN ISOLATION LEVEL {isolation}")
        if strict and not accelerated and isolation != "READ COMMITTED":
            # Without the accelerator nothing reads the committed state, so
            # strict entry refuses these levels (see test_slug_reuse.py).
            refuse_without_c(conn, entry, params, isolation)
            return
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
        entry_refused(conn, entry, params)
        # Resumed, the tenant's rows are back in a new transaction.
        with psycopg.connect(dsn, autocommit=True) as owner:
            owner.execute("SELECT tenancy.resume_tenant(%s)", (slug,))
        conn.execute(f"BEGIN ISOLATION LEVEL {isolation}")
        conn.execute(entry, params)
        assert conn.execute(QUERY[slug]).fetchall() == first
        conn.execute("ROLLBACK")


@pytest.mark.parametrize("accelerated", [True, False], ids=["accelerator", "plpgsql"])
@pytest.mark.parametrize("change", ["dropped", "replaced"])
@pytest.mark.parametrize("isolation", ["READ COMMITTED", "REPEATABLE READ", "SERIALIZABLE"])
@pytest.mark.parametrize("slug", ["acme", "sa"])
def test_what_an_open_transaction_keeps_after_its_key_is_dropped(
    dsn: str, app_role: str, slug: str, isolation: str, change: str, accelerated: bool
) -> None:
    """Strict entry, the key that signed the open transaction's token dropped
    (or its name added again with another key) by the owner meanwhile: the
    next statement is refused (PT025) in READ COMMITTED, and in REPEATABLE
    READ and SERIALIZABLE where the C accelerator runs (it reads the key as
    committed now); without it strict entry refuses those two levels from
    the start (0A000), since its snapshot would keep the old key. A new
    transaction with the token is refused at entry whatever the level."""
    world = build(dsn, app_role, as_role(dsn, app_role), strict=True)
    other = world.key[::-1]
    use_accelerator(dsn, accelerated)
    with psycopg.connect(dsn, autocommit=True) as owner:
        # A second key, so that k1 may be dropped while strict entry is on.
        owner.execute("SELECT tenancy.add_entry_key('k2', %s)", (other,))
    token = sign_tenant_token(world.key, slug, 60, key_name="k1")
    with psycopg.connect(world.app_dsn, autocommit=True) as conn:
        conn.execute(f"BEGIN ISOLATION LEVEL {isolation}")
        if not accelerated and isolation != "READ COMMITTED":
            refuse_without_c(conn, "SELECT tenancy.enter_tenant_token(%s)", (token,), isolation)
            return
        conn.execute("SELECT tenancy.enter_tenant_token(%s)", (token,))
        first = conn.execute(QUERY[slug]).fetchall()
        assert first and first[0][0] == marker(slug)
        with psycopg.connect(dsn, autocommit=True) as owner:
            owner.execute("SELECT tenancy.drop_entry_key('k1')")
            if change == "replaced":
                owner.execute("SELECT tenancy.add_entry_key('k1', %s)", (secrets_key(),))
        with pytest.raises(psycopg.Error) as refused:
            conn.execute(QUERY[slug])
        assert refused.value.sqlstate == "PT025"
        assert refused.value.diag.message_primary == (
            "entry token refused: unknown key 'k1'"
            if change == "dropped"
            else "entry token refused: bad signature"
        )
        conn.execute("ROLLBACK")
        conn.execute(f"BEGIN ISOLATION LEVEL {isolation}")
        with pytest.raises(psycopg.Error) as refused:
            conn.execute("SELECT tenancy.enter_tenant_token(%s)", (token,))
        assert refused.value.sqlstate == "PT025"
        conn.execute("ROLLBACK")
        # A token of the remaining key enters and reads the tenant's rows.
        fresh = sign_tenant_token(other, slug, 60, key_name="k2")
        conn.execute(f"BEGIN ISOLATION LEVEL {isolation}")
        conn.execute("SELECT tenancy.enter_tenant_token(%s)", (fresh,))
        assert conn.execute(QUERY[slug]).fetchall() == first
        conn.execute("ROLLBACK")


def secrets_key() -> bytes:
    """A fresh 32-byte entry key."""
    return secrets.token_bytes(32)


def refuse_without_c(
    conn: psycopg.Connection[Any], entry: str, params: tuple[Any, ...], isolation: str
) -> None:
    """Strict entry without the accelerator in REPEATABLE READ or SERIALIZABLE:
    refused (0A000) before anything is read, and the transaction holds nothing."""
    with pytest.raises(psycopg.Error) as refused:
        conn.execute(entry, params)
    assert refused.value.sqlstate == "0A000"
    assert refused.value.diag.message_primary == (
        f"strict entry in a {isolation} transaction needs the C accelerator"
    )
    conn.execute("ROLLBACK")


@pytest.mark.parametrize("accelerated", [True, False], ids=["accelerator", "plpgsql"])
@pytest.mark.parametrize("strict", [True, False], ids=["strict", "plain"])
@pytest.mark.parametrize("fetched", [0, 1], ids=["unfetched", "fetched"])
@pytest.mark.parametrize("slug", ["acme", "sa"])
def test_a_cursor_open_across_a_suspension(
    dsn: str, app_role: str, slug: str, fetched: int, strict: bool, accelerated: bool
) -> None:
    """READ COMMITTED, a cursor declared in the tenant before its suspension
    (an attack run): a cursor is one statement, begun before the suspension.
    Fetched from before it, its later FETCHes return the rest of its rows
    whatever the mode (its privileges were checked and its policy's InitPlan
    run when it started). Not fetched yet, its first FETCH runs the policy
    check: the accelerator's, which reads the committed state, then returns
    nothing (shared tenants, and schema tenants in strict mode); the
    PL/pgSQL reads the cursor's snapshot, and plain schema tenants have no
    policy (privileges only, checked at DECLARE), so those return the rows.
    The documented gap (README, suspension); the next statement of the same
    transaction is cut off in every case."""
    world = build(dsn, app_role, as_role(dsn, app_role), strict=strict)
    use_accelerator(dsn, accelerated)
    with psycopg.connect(dsn, autocommit=True) as owner:
        if slug == "sa":
            with owner.transaction():
                owner.execute("CALL tenancy.enter(%s)", (slug,))
                owner.execute(
                    "INSERT INTO public.orders (item) VALUES (%s)", (marker(slug) + " 2",)
                )
    rows = [(marker(slug),), (marker(slug) + " 2",)]
    entry, params = entry_of(world, slug, strict)
    with psycopg.connect(world.app_dsn, autocommit=True) as conn:
        conn.execute("BEGIN")
        conn.execute(entry, params)
        conn.execute(f"DECLARE c CURSOR FOR {QUERY[slug]}")
        if fetched:
            assert conn.execute("FETCH 1 FROM c").fetchall() == rows[:1]
        with psycopg.connect(dsn, autocommit=True) as owner:
            owner.execute("SELECT tenancy.suspend_tenant(%s)", (slug,))
        checked = accelerated and (slug == "sa" or strict)
        expected = rows[fetched:] if fetched or not checked else []
        assert conn.execute("FETCH ALL FROM c").fetchall() == expected
        if slug == "acme":
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(QUERY[slug])
        else:
            assert conn.execute(QUERY[slug]).fetchall() == []
        conn.execute("ROLLBACK")


@pytest.mark.parametrize("accelerated", [True, False], ids=["accelerator", "plpgsql"])
@pytest.mark.parametrize("strict", [True, False], ids=["strict", "plain"])
@pytest.mark.parametrize("slug", ["acme", "sa"])
def test_a_statement_prepared_before_a_suspension(
    dsn: str, app_role: str, slug: str, strict: bool, accelerated: bool
) -> None:
    """READ COMMITTED, a statement prepared in the tenant's transaction before
    its suspension and run again after it (psycopg prepares a query on its
    own after 5 runs; an attack run). PostgreSQL reads another session's
    catalog changes (the revoked privileges) when a statement takes a lock it
    does not hold yet or resolves names anew: a statement prepared earlier in
    the same transaction does neither, and keeps the privilege check it
    passed. So a plain-entry schema tenant (privileges only, no policy) keeps
    its rows for that statement until the transaction ends: the documented
    gap (README, suspension). Shared tenants and strict schema tenants have a
    policy, whose check reads the status at every run: no rows. A statement
    written anew is refused in every case, and so is the next transaction."""
    world = build(dsn, app_role, as_role(dsn, app_role), strict=strict)
    use_accelerator(dsn, accelerated)
    entry, params = entry_of(world, slug, strict)
    with psycopg.connect(world.app_dsn, autocommit=True) as conn:
        conn.execute("BEGIN")
        conn.execute(entry, params)
        first = conn.execute(QUERY[slug], prepare=True).fetchall()
        assert first and first[0][0] == marker(slug)
        with psycopg.connect(dsn, autocommit=True) as owner:
            owner.execute("SELECT tenancy.suspend_tenant(%s)", (slug,))
        gap = slug == "acme" and not strict
        assert conn.execute(QUERY[slug], prepare=True).fetchall() == (first if gap else [])
        if slug == "acme":
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(QUERY[slug] + " LIMIT 10", prepare=False)
        else:
            assert conn.execute(QUERY[slug] + " LIMIT 10", prepare=False).fetchall() == []
        conn.execute("ROLLBACK")
        entry_refused(conn, entry, params)
