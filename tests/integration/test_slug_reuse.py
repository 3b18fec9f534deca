"""A transaction whose snapshot is older than a slug's reuse (issue 13; an
attack run found this): the application role opens a REPEATABLE READ or
SERIALIZABLE transaction and takes its snapshot, the owner renames (or
destroys) tenant X and gives its slug to a new tenant Y, and the role then
enters with a valid token of Y. The snapshot's registry resolves the slug to
X, so without a check against the committed state the transaction read and
wrote X's rows with Y's token, the accelerator on and off.

Now: with the C accelerator, token entry, plain entry and the strict policy
check read the committed state in those levels and refuse with 40001 (retry:
a new transaction enters Y); without it, strict entry refuses those levels
(0A000). In READ COMMITTED each statement reads the latest registry and Y's
token enters Y. Also here: a spelling of app.tenant_id that the C fast path
does not read (braces) no longer skips those checks, and a parallel plan of
a guarded table works in those levels (the checks used to take a new MVCC
snapshot, which parallel mode refuses: XX000)."""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Any

import psycopg
import pytest
from strict_support import StrictWorld, build, marker

from helpers import as_role
from pgtenancy import Tenancy, sign_tenant_token

LEVELS = ["REPEATABLE READ", "SERIALIZABLE"]


def _accelerate(dsn: str, on: bool) -> None:
    with psycopg.connect(dsn, autocommit=True) as owner:
        in_use = owner.execute("SELECT tenancy.set_accelerator(%s)", (on,)).fetchone()
    if on and in_use != (True,):
        pytest.skip("the accelerator library pgtenancy_accel is not installed on this server")


def _world(dsn: str, app_role: str, strict: bool = True) -> StrictWorld:
    return build(dsn, app_role, as_role(dsn, app_role), strict=strict)


def _reuse(dsn: str, slug: str, how: str, shared: bool) -> str:
    """Rename (or destroy) tenant ``slug`` and give the slug to a new tenant;
    returns the old tenant's schema now (None-like '' for a shared one)."""
    tenancy = Tenancy(dsn)
    if how == "renamed":
        tenancy.rename_tenant(slug, f"{slug}old")
    else:
        tenancy.drop_tenant(slug, destroy_data=True)
    tenancy.create_tenant(slug, isolation="shared" if shared else "schema")
    return f"tenant_{slug}old" if how == "renamed" and not shared else ""


def _state(conn: psycopg.Connection[Any]) -> tuple[Any, ...] | None:
    return conn.execute(
        "SELECT tenancy.current_tenant(), current_setting('app.tenant_id', true)"
    ).fetchone()


@pytest.mark.parametrize("accelerated", [True, False], ids=["accelerator", "plpgsql"])
@pytest.mark.parametrize("how", ["renamed", "destroyed"])
@pytest.mark.parametrize("slug", ["acme", "sa"])
@pytest.mark.parametrize("isolation", LEVELS)
def test_a_token_of_the_slugs_new_holder_does_not_open_its_old_holder(
    dsn: str, app_role: str, isolation: str, slug: str, how: str, accelerated: bool
) -> None:
    world = _world(dsn, app_role)
    _accelerate(dsn, accelerated)
    old_id = world.ids[slug]
    with (
        psycopg.connect(world.app_dsn, autocommit=True) as conn,
        psycopg.connect(world.app_dsn, autocommit=True) as by_hand,
    ):
        for c in (conn, by_hand):
            c.execute(f"BEGIN ISOLATION LEVEL {isolation}")
            c.execute("SELECT 1")  # the snapshot, before the slug's reuse
        old_schema = _reuse(dsn, slug, how, shared=slug == "sa")
        token = sign_tenant_token(world.key, slug, 60, key_name="k1")
        with pytest.raises(psycopg.Error) as refused:
            conn.execute("SELECT tenancy.enter_tenant_token(%s)", (token,))
        assert refused.value.sqlstate == ("40001" if accelerated else "0A000")
        conn.execute("ROLLBACK")
        # The token and the old tenant set by hand: refused at the first
        # statement that reads a guarded table.
        by_hand.execute(
            "SELECT set_config('app.tenant_token', %s, true), set_config('app.tenant_id', %s, true)",
            (token, old_id),
        )
        read = (
            f"SELECT body FROM {old_schema}.invoice"
            if old_schema
            else "SELECT item FROM public.orders"
        )
        with pytest.raises(psycopg.Error) as refused:
            by_hand.execute(read)
        assert refused.value.sqlstate == ("40001" if accelerated else "0A000")
        by_hand.execute("ROLLBACK")
        # A new transaction enters the new holder, and sees nothing of the old.
        conn.execute("BEGIN")
        new_id = conn.execute("SELECT tenancy.enter_tenant_token(%s)", (token,)).fetchone()
        assert new_id is not None and str(new_id[0]) != old_id
        if old_schema:
            # The strict guard of the old holder's tables: not its tenant, no rows.
            assert conn.execute(f"SELECT body FROM {old_schema}.invoice").fetchall() == []
        else:
            assert marker(slug) not in [r[0] for r in conn.execute(read).fetchall()]
        conn.execute("ROLLBACK")


@pytest.mark.parametrize("isolation", LEVELS)
def test_plain_entry_of_a_reused_slug_is_refused_with_the_accelerator(
    dsn: str, app_role: str, isolation: str
) -> None:
    """Plain entry (no strict mode): the C path refuses a slug whose holder
    changed since the snapshot (40001); the PL/pgSQL, which reads only the
    snapshot, enters the old holder: the gap the README names."""
    world = _world(dsn, app_role, strict=False)
    for accelerated in (True, False):
        _accelerate(dsn, accelerated)
        with psycopg.connect(world.app_dsn, autocommit=True) as conn:
            conn.execute(f"BEGIN ISOLATION LEVEL {isolation}")
            conn.execute("SELECT 1")
            before = Tenancy(dsn).get_tenant("sa")
            _reuse(dsn, "sa", "renamed", shared=True)
            if accelerated:
                with pytest.raises(psycopg.Error) as refused:
                    conn.execute("CALL tenancy.enter('sa')")
                assert refused.value.sqlstate == "40001"
            else:
                conn.execute("CALL tenancy.enter('sa')")
                state = _state(conn)
                assert state is not None and state[1] == str(before.id)
            conn.execute("ROLLBACK")
            conn.execute("BEGIN")
            conn.execute("CALL tenancy.enter('sa')")
            state = _state(conn)
            assert state is not None and state[1] != str(before.id)
            conn.execute("ROLLBACK")
        # Back to the original name for the next round.
        Tenancy(dsn).drop_tenant("sa", destroy_data=True)
        Tenancy(dsn).rename_tenant("saold", "sa")


@pytest.mark.parametrize("change", ["key dropped", "suspended"])
@pytest.mark.parametrize("isolation", LEVELS)
def test_a_spelling_of_the_tenant_id_the_fast_path_skips_is_checked_too(
    dsn: str, app_role: str, isolation: str, change: str
) -> None:
    world = _world(dsn, app_role)
    _accelerate(dsn, True)
    with psycopg.connect(dsn, autocommit=True) as owner:
        owner.execute("SELECT tenancy.add_entry_key('k2', %s)", (world.key[::-1],))
    token = sign_tenant_token(world.key, "sa", 60, key_name="k1")
    braces = "{" + world.ids["sa"].replace("-", "") + "}"
    with psycopg.connect(world.app_dsn, autocommit=True) as conn:
        conn.execute(f"BEGIN ISOLATION LEVEL {isolation}")
        conn.execute("SELECT tenancy.enter_tenant_token(%s)", (token,))
        assert conn.execute("SELECT item FROM public.orders").fetchall() == [(marker("sa"),)]
        with psycopg.connect(dsn, autocommit=True) as owner:
            if change == "key dropped":
                owner.execute("SELECT tenancy.drop_entry_key('k1')")
            else:
                owner.execute("SELECT tenancy.suspend_tenant('sa')")
        conn.execute("SELECT set_config('app.tenant_id', %s, true)", (braces,))
        if change == "key dropped":
            with pytest.raises(psycopg.Error) as refused:
                conn.execute("SELECT item FROM public.orders")
            assert refused.value.sqlstate == "PT025"
        else:
            assert conn.execute("SELECT item FROM public.orders").fetchall() == []
            with pytest.raises(psycopg.Error):
                conn.execute("INSERT INTO public.orders (item) VALUES ('late')")
        conn.execute("ROLLBACK")


@pytest.mark.parametrize("strict", [True, False], ids=["strict", "plain"])
@pytest.mark.parametrize("isolation", ["READ COMMITTED", *LEVELS])
def test_a_parallel_plan_of_a_guarded_table_works_in_every_level(
    dsn: str, app_role: str, isolation: str, strict: bool
) -> None:
    world = _world(dsn, app_role, strict=strict)
    _accelerate(dsn, True)
    with psycopg.connect(dsn, autocommit=True) as owner:
        with owner.transaction():
            owner.execute("SELECT tenancy.enter_tenant('sa')")
            owner.execute(
                "INSERT INTO public.orders (item) SELECT 'bulk' FROM generate_series(1, 20000)"
            )
        owner.execute("ANALYZE public.orders")
    token = sign_tenant_token(world.key, "sa", 60, key_name="k1")
    with psycopg.connect(world.app_dsn, autocommit=True) as conn:
        conn.execute(f"BEGIN ISOLATION LEVEL {isolation}")
        if strict:
            conn.execute("SELECT tenancy.enter_tenant_token(%s)", (token,))
        else:
            conn.execute("CALL tenancy.enter('sa')")
        for setting in (
            "parallel_setup_cost",
            "parallel_tuple_cost",
            "min_parallel_table_scan_size",
        ):
            conn.execute(f"SET LOCAL {setting} = 0")
        query = "SELECT count(*) FROM public.orders WHERE item = 'bulk'"
        plan = conn.execute("EXPLAIN " + query).fetchall()
        assert any("Gather" in row[0] for row in plan), plan
        assert conn.execute(query).fetchone() == (20000,)
        conn.execute("ROLLBACK")


@pytest.mark.parametrize("accelerated", [True, False], ids=["accelerator", "plpgsql"])
@pytest.mark.parametrize("hold", [False, True], ids=["cursor", "with hold"])
def test_a_read_committed_cursor_declared_before_the_reuse(
    dsn: str, app_role: str, accelerated: bool, hold: bool
) -> None:
    """READ COMMITTED, a cursor declared before the slug's reuse and fetched
    after with the new holder's token and the old holder's id (an attack
    run): it runs under its own old snapshot, so the C check reads the
    committed state there too (a transaction ended since that snapshot) and
    refuses (40001). Without the accelerator the PL/pgSQL reads only the
    cursor's snapshot and the fetch returns the old holder's rows: the gap
    the README names, pinned here."""
    world = _world(dsn, app_role)
    _accelerate(dsn, accelerated)
    with psycopg.connect(world.app_dsn, autocommit=True) as conn:
        conn.execute("BEGIN")
        conn.execute(
            "DECLARE cur CURSOR"
            + (" WITH HOLD" if hold else "")
            + " FOR SELECT item FROM public.orders"
        )
        _reuse(dsn, "sa", "renamed", shared=True)
        token = sign_tenant_token(world.key, "sa", 60, key_name="k1")
        conn.execute(
            "SELECT set_config('app.tenant_token', %s, false), set_config('app.tenant_id', %s, false)",
            (token, world.ids["sa"]),
        )
        if hold:
            # Filled at COMMIT, under its snapshot, by the policy check.
            if accelerated:
                with pytest.raises(psycopg.Error) as refused:
                    conn.execute("COMMIT")
                assert refused.value.sqlstate == "40001"
                return
            conn.execute("COMMIT")
            assert conn.execute("FETCH ALL FROM cur").fetchall() == [(marker("sa"),)]
            return
        if accelerated:
            with pytest.raises(psycopg.Error) as refused:
                conn.execute("FETCH ALL FROM cur")
            assert refused.value.sqlstate == "40001"
        else:
            assert conn.execute("FETCH ALL FROM cur").fetchall() == [(marker("sa"),)]
        conn.execute("ROLLBACK")


def test_a_read_committed_cursor_declared_before_a_suspension_fetches_nothing(
    dsn: str, app_role: str
) -> None:
    """Plain entry, the accelerator: a cursor declared before its shared tenant
    was suspended fetches none of its rows afterwards."""
    world = _world(dsn, app_role, strict=False)
    _accelerate(dsn, True)
    with psycopg.connect(world.app_dsn, autocommit=True) as conn:
        conn.execute("BEGIN")
        conn.execute("CALL tenancy.enter('sa')")
        conn.execute("DECLARE cur CURSOR FOR SELECT item FROM public.orders")
        with psycopg.connect(dsn, autocommit=True) as owner:
            owner.execute("SELECT tenancy.suspend_tenant('sa')")
        assert conn.execute("FETCH ALL FROM cur").fetchall() == []
        conn.execute("ROLLBACK")


@pytest.mark.parametrize("isolation", ["READ COMMITTED", *LEVELS])
def test_a_token_issued_in_the_millisecond_its_tenant_got_the_slug_enters(
    dsn: str, app_role: str, isolation: str
) -> None:
    """The check against the committed state rounds as the PL/pgSQL does (the
    millisecond of slug_assigned_at, floored): a token issued in that very
    millisecond enters in every level (it was refused with 40001 forever in
    REPEATABLE READ and SERIALIZABLE: review)."""
    world = _world(dsn, app_role)
    _accelerate(dsn, True)
    with psycopg.connect(dsn, autocommit=True) as owner:
        row = owner.execute(
            "SELECT (extract(epoch FROM slug_assigned_at) * 1000)::numeric"
            " FROM tenancy.tenants WHERE slug = 'sa'"
        ).fetchone()
    assert row is not None
    issued = int(row[0])  # floor: positive
    body = f"pt2.k1.sa.{issued}.{issued + 60_000 + int(time.time() * 1000) - issued}.{'ab' * 16}"
    mac = hmac.new(world.key, body.encode("ascii"), hashlib.sha256).hexdigest()
    token = f"{body}.{mac}"
    with psycopg.connect(world.app_dsn, autocommit=True) as conn:
        conn.execute(f"BEGIN ISOLATION LEVEL {isolation}")
        conn.execute("SELECT 1")
        conn.execute("SELECT tenancy.enter_tenant_token(%s)", (token,))
        assert conn.execute("SELECT item FROM public.orders").fetchall() == [(marker("sa"),)]
        conn.execute("ROLLBACK")
