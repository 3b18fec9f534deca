"""Entry tokens bind to the tenant, not to its slug (issue 13): a token signed
for a slug before the slug passed to another tenant (a rename, then a new
tenant under the old slug; a destroy, then the slug created again) enters
nothing, with SQLSTATE PT034 (EntryTokenStale) and nothing changed; tokens
issued after their expiry or far in the future are refused (PT025). Real
server, the application connecting as a NOSUPERUSER NOBYPASSRLS role granted
with grant_app_role, strict entry on (strict_support)."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from typing import Any, Literal

import psycopg
import pytest
from strict_support import StrictWorld, build, marker

from helpers import as_role
from pgtenancy import (
    EntryTokenStale,
    EntryTokenWrongTenant,
    ImmutableTenantColumn,
    Tenancy,
    sign_tenant_token,
    tenant_connection,
    translate,
)


@pytest.fixture
def world(dsn: str, app_role: str) -> StrictWorld:
    return build(dsn, app_role, as_role(dsn, app_role))


def token(world: StrictWorld, slug: str, ttl: float = 600.0) -> str:
    return sign_tenant_token(world.key, slug, ttl, key_name="k1")


def signed(key: bytes, slug: str, issued_ms: int, expiry_ms: int) -> str:
    """A correctly signed pt2 token with the given times."""
    body = f"pt2.k1.{slug}.{issued_ms}.{expiry_ms}.{secrets.token_hex(16)}"
    return f"{body}.{hmac.new(key, body.encode(), hashlib.sha256).hexdigest()}"


def state(dsn: str) -> Any:
    """The registry, the outbox and every row of every tenant schema and shared table."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        registry = conn.execute(
            "SELECT id, slug, status, schema_name, slug_assigned_at, updated_at"
            " FROM tenancy.tenants ORDER BY slug"
        ).fetchall()
        events = conn.execute("SELECT count(*), max(id) FROM tenancy.events").fetchone()
        rows = {
            schema: conn.execute(f'SELECT id, body FROM "{schema}".invoice ORDER BY id').fetchall()
            for (schema,) in conn.execute(
                "SELECT schema_name FROM tenancy.tenants WHERE schema_name IS NOT NULL"
            ).fetchall()
        }
        shared = conn.execute(
            "SELECT tenant_id, id, item FROM public.orders ORDER BY id"
        ).fetchall()
    return registry, events, rows, shared


def refused(app_dsn: str, query: str, params: Any = None) -> psycopg.Error:
    """Run ``query`` as the application role in its own transaction; the error it
    raised. The connection carries no tenant setting afterwards."""
    with psycopg.connect(app_dsn, autocommit=True) as conn:
        probe = (
            "SELECT current_setting('app.tenant_id', true), "
            "current_setting('app.tenant_token', true), current_setting('search_path')"
        )
        clean = conn.execute(probe).fetchone()
        with pytest.raises(psycopg.Error) as info, conn.transaction():
            conn.execute(query, params)
        assert conn.execute(probe).fetchone() == clean
    return info.value


def rows_seen(app_dsn: str, tok: str, query: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(app_dsn) as conn:
        conn.execute("SELECT tenancy.enter_tenant_token(%s)", (tok,))
        return conn.execute(query).fetchall()


ENTER = "SELECT tenancy.enter_tenant_token(%s, %s)"


@pytest.mark.parametrize("isolation", ["schema", "shared"])
def test_a_token_of_a_renamed_tenant_enters_neither_the_slug_s_new_holder_nor_the_renamed(
    world: StrictWorld, isolation: Literal["schema", "shared"]
) -> None:
    slug, table = ("acme", "invoice") if isolation == "schema" else ("sa", "orders")
    column = "body" if isolation == "schema" else "item"
    old = token(world, slug)
    assert rows_seen(world.app_dsn, old, f"SELECT {column} FROM {table} LIMIT 1") == [
        (marker(slug),)
    ]
    tenancy = Tenancy(world.dsn)
    tenancy.rename_tenant(slug, f"{slug}2")
    # No tenant has the slug: not found (the token names no other tenant).
    assert refused(world.app_dsn, ENTER, (old, None)).sqlstate == "PT003"
    newcomer = tenancy.create_tenant(slug, isolation=isolation)
    before = state(world.dsn)

    # The slug's new holder: refused, stale.
    error = refused(world.app_dsn, ENTER, (old, None))
    assert error.sqlstate == "PT034", error
    assert isinstance(translate(error), EntryTokenStale)
    assert isinstance(translate(error), EntryTokenWrongTenant)
    assert f"before tenant '{slug}' got its slug" in str(error)
    assert refused(world.app_dsn, ENTER, (old, slug)).sqlstate == "PT034"
    # The renamed tenant: the token does not name it (verified first: stale).
    assert refused(world.app_dsn, ENTER, (old, f"{slug}2")).sqlstate == "PT034"
    # Set by hand inside a transaction of the renamed tenant: the next
    # statement refuses it, before any row is read.
    with psycopg.connect(world.app_dsn) as conn:
        conn.execute("SELECT tenancy.enter_tenant_token(%s)", (token(world, f"{slug}2"),))
        conn.execute("SELECT set_config('app.tenant_token', %s, true)", (old,))
        with pytest.raises(psycopg.Error) as info:
            conn.execute(f"SELECT {column} FROM {table}")
        assert info.value.sqlstate == "PT034"
    # Through the Python entry points: the kit's exception, nothing entered.
    with (
        psycopg.connect(world.app_dsn, autocommit=True) as plain,
        pytest.raises(EntryTokenStale),
        tenant_connection(plain, token=old) as conn,
    ):
        conn.execute("SELECT 1")
    assert state(world.dsn) == before

    # Fresh tokens: the newcomer is empty, the renamed tenant keeps its rows.
    assert rows_seen(world.app_dsn, token(world, slug), f"SELECT {column} FROM {table}") == []
    assert (
        rows_seen(
            world.app_dsn, token(world, f"{slug}2"), f"SELECT {column} FROM {table} ORDER BY 1"
        )
        == [(marker(slug),), (marker(slug) + " 2",)][: 2 if isolation == "schema" else 1]
    )
    assert str(newcomer.id) != world.ids[slug]


def test_a_token_of_a_destroyed_tenant_does_not_enter_its_slug_created_again(
    world: StrictWorld,
) -> None:
    old = token(world, "globex")
    tenancy = Tenancy(world.dsn)
    tenancy.drop_tenant("globex", destroy_data=True)
    tenancy.create_tenant("globex")
    with psycopg.connect(world.dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO tenant_globex.invoice (body) VALUES ('NEW-GLOBEX-ROW')")
    before = state(world.dsn)
    error = refused(world.app_dsn, ENTER, (old, None))
    assert error.sqlstate == "PT034"
    assert isinstance(translate(error), EntryTokenStale)
    assert state(world.dsn) == before
    assert rows_seen(world.app_dsn, token(world, "globex"), "SELECT body FROM invoice") == [
        ("NEW-GLOBEX-ROW",)
    ]


def test_soft_deleted_then_destroyed_and_recreated_shared_tenant(world: StrictWorld) -> None:
    old = token(world, "sb")
    tenancy = Tenancy(world.dsn)
    tenancy.drop_tenant("sb")
    tenancy.drop_tenant("sb", destroy_data=True)
    tenancy.create_tenant("sb", isolation="shared")
    before = state(world.dsn)
    assert refused(world.app_dsn, ENTER, (old, "sb")).sqlstate == "PT034"
    assert state(world.dsn) == before


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("issued after its expiry", "after its expiry"),
        ("issued 61 s ahead", "more than 60 s ahead"),
        ("issued an hour ahead", "more than 60 s ahead"),
    ],
)
def test_tokens_with_impossible_issue_times_are_refused(
    world: StrictWorld, case: str, message: str
) -> None:
    now = int(time.time() * 1000)
    if case == "issued after its expiry":
        bad = signed(world.key, "acme", now, now - 1)
    elif case == "issued 61 s ahead":
        bad = signed(world.key, "acme", now + 61_000, now + 120_000)
    else:
        bad = signed(world.key, "acme", now + 3_600_000, now + 3_700_000)
    before = state(world.dsn)
    error = refused(world.app_dsn, ENTER, (bad, None))
    assert error.sqlstate == "PT025", error
    assert message in str(error)
    assert state(world.dsn) == before


def test_issue_times_within_the_clock_skew_tolerance_are_accepted(world: StrictWorld) -> None:
    """A signer whose clock runs up to 60 s ahead of the database's still enters."""
    now = int(time.time() * 1000)
    ahead = signed(world.key, "acme", now + 30_000, now + 90_000)
    assert rows_seen(world.app_dsn, ahead, "SELECT count(*) FROM invoice") == [(2,)]


def test_slug_assigned_at_is_stamped_by_the_registry_and_not_changeable_by_hand(
    world: StrictWorld,
) -> None:
    with psycopg.connect(world.dsn, autocommit=True) as conn:

        def assigned(slug: str) -> Any:
            row = conn.execute(
                "SELECT slug_assigned_at, created_at FROM tenancy.tenants WHERE slug = %s", (slug,)
            ).fetchone()
            assert row is not None
            return row

        at, created = assigned("acme")
        assert at >= created
        # Given at insert: the registry's own stamp wins.
        conn.execute(
            "INSERT INTO tenancy.tenants (slug, isolation, slug_assigned_at)"
            " VALUES ('early', 'shared', '2000-01-01')"
        )
        assert assigned("early")[0].year > 2000
        before = state(world.dsn)
        for value in ("'2000-01-01'", "now() + interval '1 day'"):
            with pytest.raises(psycopg.Error) as info:
                conn.execute(
                    f"UPDATE tenancy.tenants SET slug_assigned_at = {value} WHERE slug = 'acme'"
                )
            assert info.value.sqlstate == "PT010"
            assert isinstance(translate(info.value), ImmutableTenantColumn)
        assert state(world.dsn) == before
        Tenancy(world.dsn).rename_tenant("acme", "acme3")
        assert assigned("acme3")[0] > at
    # The application role reads it for its own tenant.
    assert rows_seen(
        world.app_dsn,
        token(world, "acme3"),
        "SELECT slug, slug_assigned_at FROM tenancy.tenant_info()",
    ) == [("acme3", assigned_now(world.dsn, "acme3"))]


def assigned_now(dsn: str, slug: str) -> Any:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT slug_assigned_at FROM tenancy.tenants WHERE slug = %s", (slug,)
        ).fetchone()
    assert row is not None
    return row[0]
