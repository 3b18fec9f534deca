"""Strict entry's per-statement check (issue 13 item 2), attacked as the
application role after it was made cheaper (one-statement verifier, schema
guard inlined into the policy, owner test in ``strict_owner_session``): it
must open nothing the earlier check did not. Real server, the application
connecting as a NOSUPERUSER NOBYPASSRLS role granted with grant_app_role."""

from __future__ import annotations

import hashlib
import time
from typing import Any

import psycopg
import pytest
from strict_support import StrictWorld, build, marker

from helpers import as_role
from pgtenancy import sign_tenant_token


@pytest.fixture
def world(dsn: str, app_role: str) -> StrictWorld:
    return build(dsn, app_role, as_role(dsn, app_role))


def token(world: StrictWorld, slug: str, ttl: float = 60.0) -> str:
    return sign_tenant_token(world.key, slug, ttl, key_name="k1")


def sqlstate_of(conn: psycopg.Connection[Any], query: str, params: Any = None) -> str | None:
    """Run ``query`` in its own savepoint; the SQLSTATE it failed with, or None."""
    try:
        with conn.transaction():
            conn.execute(query, params)
    except psycopg.Error as exc:
        return exc.sqlstate
    return None


def test_another_session_s_entry_opens_nothing_in_this_one(world: StrictWorld) -> None:
    """The victim's backend is in sb; the attacker, in sa, points app.tenant_id
    at sb or presents a hash of the victim's token or a forged token: refused."""
    before = world.data()
    victim_token = token(world, "sb")
    with (
        psycopg.connect(world.app_dsn) as victim,
        psycopg.connect(world.app_dsn) as attacker,
    ):
        victim.execute("SELECT tenancy.enter_tenant_token(%s)", (victim_token,))
        victim.execute("SELECT 1 FROM orders").fetchall()
        attacker.execute("SELECT tenancy.enter_tenant_token(%s)", (token(world, "sa"),))
        attacker.commit()
        for setting, value in [
            ("app.tenant_id", world.ids["sb"]),
            ("app.tenant_token", hashlib.sha256(victim_token.encode()).hexdigest()),
            ("app.tenant_token", victim_token[:-1] + ("0" if victim_token[-1] != "0" else "1")),
        ]:
            attacker.execute("SELECT tenancy.enter_tenant_token(%s)", (token(world, "sa"),))
            attacker.execute("SELECT set_config(%s, %s, true)", (setting, value))
            state = sqlstate_of(attacker, "SELECT item FROM orders")
            assert state in {"PT025", "PT027"}, (setting, state)
            attacker.rollback()
        # Outside any entry, a hash of the victim's token is no key either.
        attacker.execute(
            "SELECT set_config('app.tenant_id', %s, true), set_config('app.tenant_token', %s, true)",
            (world.ids["sb"], hashlib.sha256(victim_token.encode()).hexdigest()),
        )
        assert sqlstate_of(attacker, "SELECT item FROM orders") == "PT025"
        attacker.rollback()
        victim.rollback()
    assert world.data() == before


def test_a_recorded_entry_is_not_replayable_after_expiry(world: StrictWorld) -> None:
    before = world.data()
    short = token(world, "sa", ttl=0.4)
    with psycopg.connect(world.app_dsn) as conn:
        conn.execute("SELECT tenancy.enter_tenant_token(%s)", (short,))
        assert conn.execute("SELECT item FROM orders").fetchall() == [(marker("sa"),)]
        conn.commit()
        time.sleep(0.5)
        # Set by hand in a later transaction: the token is no longer valid.
        conn.execute(
            "SELECT set_config('app.tenant_id', %s, true), set_config('app.tenant_token', %s, true)",
            (world.ids["sa"], short),
        )
        assert sqlstate_of(conn, "SELECT item FROM orders") == "PT028"
        assert sqlstate_of(conn, "SELECT id FROM invoice") is not None
        conn.rollback()
    assert world.data() == before


def test_a_dropped_key_and_a_suspended_tenant_close_an_open_transaction(world: StrictWorld) -> None:
    with psycopg.connect(world.dsn, autocommit=True) as owner:
        owner.execute("SELECT tenancy.add_entry_key('k2', %s)", (world.key[::-1],))
        k2 = sign_tenant_token(world.key[::-1], "sa", 60, key_name="k2")
        with psycopg.connect(world.app_dsn) as conn:
            conn.execute("SELECT tenancy.enter_tenant_token(%s)", (k2,))
            assert conn.execute("SELECT item FROM orders").fetchall() == [(marker("sa"),)]
            owner.execute("SELECT tenancy.drop_entry_key('k2')")
            assert sqlstate_of(conn, "SELECT item FROM orders") == "PT025"
            conn.rollback()
            conn.execute("SELECT tenancy.enter_tenant_token(%s)", (token(world, "sa"),))
            assert conn.execute("SELECT item FROM orders").fetchall() == [(marker("sa"),)]
            owner.execute("SELECT tenancy.suspend_tenant('sa')")
            try:
                assert conn.execute("SELECT item FROM orders").fetchall() == []
            finally:
                conn.rollback()
                owner.execute("SELECT tenancy.resume_tenant('sa')")


def test_a_read_only_transaction_enters_and_is_checked(world: StrictWorld) -> None:
    with psycopg.connect(world.app_dsn) as conn:
        conn.read_only = True
        conn.execute("SELECT tenancy.enter_tenant_token(%s)", (token(world, "sb"),))
        assert conn.execute("SELECT item FROM orders").fetchall() == [(marker("sb"),)]
        conn.execute("SELECT set_config('app.tenant_id', %s, true)", (world.ids["sa"],))
        assert sqlstate_of(conn, "SELECT item FROM orders") == "PT027"
        conn.rollback()


def test_the_owner_test_of_the_schema_guard_is_false_for_the_application_role(
    world: StrictWorld,
) -> None:
    before = world.data()
    with psycopg.connect(world.app_dsn) as conn:
        row = conn.execute("SELECT tenancy.strict_owner_session()").fetchone()
        assert row == (False,)
        conn.execute("SELECT tenancy.enter_tenant_token(%s)", (token(world, "acme"),))
        # A function of the same name earlier in search_path is not what the policy calls.
        assert sqlstate_of(
            conn,
            "CREATE FUNCTION pg_temp.strict_owner_session() RETURNS boolean"
            " LANGUAGE sql AS 'SELECT true'",
        ) in {None, "42501"}
        if sqlstate_of(conn, "SELECT 1 FROM tenant_globex.invoice") is None:
            assert conn.execute("SELECT count(*) FROM tenant_globex.invoice").fetchone() == (0,)
        assert (
            sqlstate_of(
                conn,
                "CREATE OR REPLACE FUNCTION tenancy.strict_owner_session() RETURNS boolean"
                " LANGUAGE sql AS 'SELECT true'",
            )
            == "42501"
        )
        conn.rollback()
    assert world.data() == before


def test_a_signed_token_for_a_tenant_that_does_not_exist_is_refused(world: StrictWorld) -> None:
    ghost = token(world, "ghost")
    with psycopg.connect(world.app_dsn) as conn:
        assert sqlstate_of(conn, "SELECT tenancy.verify_entry_token(%s, true)", (ghost,)) == "PT003"
        assert (
            sqlstate_of(conn, "SELECT tenancy.verify_entry_token(%s, false)", (ghost,)) == "PT003"
        )
        assert sqlstate_of(conn, "SELECT tenancy.enter_tenant_token(%s)", (ghost,)) == "PT003"
        conn.rollback()
