"""Strict entry (issue 13 item 1): entry keys, signed tokens, their refusals,
switching the mode, the migration and provisioning hook, the doctor's checks
(item 4), and the Python entry points with ``token=``. Real server, the
application connecting as a NOSUPERUSER NOBYPASSRLS role granted with
grant_app_role."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool, ConnectionPool
from sqlalchemy import create_engine, text
from sqlalchemy.ext.asyncio import create_async_engine
from strict_support import StrictWorld, build, marker

from helpers import as_role, snapshot
from pgtenancy import (
    EntryTokenExpired,
    EntryTokenForged,
    EntryTokenReplayed,
    EntryTokenStale,
    EntryTokenWrongTenant,
    Tenancy,
    sign_tenant_token,
    tenant_connection,
    tenant_session,
    translate,
)
from pgtenancy.doctor import check_isolation


@pytest.fixture
def world(dsn: str, app_role: str) -> StrictWorld:
    return build(dsn, app_role, as_role(dsn, app_role))


@pytest.fixture
def plain_world(dsn: str, app_role: str) -> StrictWorld:
    return build(dsn, app_role, as_role(dsn, app_role), strict=False)


def token(world: StrictWorld, slug: str, ttl: float = 60.0, key_name: str = "k1") -> str:
    return sign_tenant_token(world.key, slug, ttl, key_name=key_name)


def signed(key: bytes, slug: str, issued_ms: int, expiry_ms: int, key_name: str = "k1") -> str:
    """A correctly signed pt2 token with the given times (sign_tenant_token takes now)."""
    body = f"pt2.{key_name}.{slug}.{issued_ms}.{expiry_ms}.{secrets.token_hex(16)}"
    return f"{body}.{hmac.new(key, body.encode(), hashlib.sha256).hexdigest()}"


def sqlstate_of(conn: psycopg.Connection[Any], query: str, params: Any = None) -> str | None:
    """Run ``query`` in its own transaction; the SQLSTATE it failed with, or None."""
    try:
        with conn.transaction():
            conn.execute(query, params)
    except psycopg.Error as exc:
        return exc.sqlstate
    return None


def settings(conn: psycopg.Connection[Any]) -> tuple[Any, ...]:
    row = conn.execute(
        "SELECT current_setting('app.tenant_id', true), current_setting('app.tenant_token', true),"
        " current_setting('search_path')"
    ).fetchone()
    assert row is not None
    return tuple(row)


# -- the token ----------------------------------------------------------------


def test_the_database_verifies_python_s_hmac_and_enters_the_token_s_tenant(
    world: StrictWorld,
) -> None:
    tok = token(world, "acme")
    body, mac = tok.rsplit(".", 1)
    assert mac == hmac.new(world.key, body.encode(), hashlib.sha256).hexdigest()
    with psycopg.connect(world.app_dsn) as conn:
        row = conn.execute("SELECT tenancy.enter_tenant_token(%s)", (tok,)).fetchone()
        assert row is not None and str(row[0]) == world.ids["acme"]
        assert conn.execute("SELECT body FROM invoice ORDER BY id").fetchall() == [
            (marker("acme"),),
            (marker("acme") + " 2",),
        ]
        assert conn.execute("SELECT slug FROM tenancy.tenant_info()").fetchall() == [("acme",)]


@pytest.mark.parametrize(
    ("case", "sqlstate"),
    [
        ("other key", "PT025"),
        ("unknown key name", "PT025"),
        ("slug changed", "PT025"),
        ("issued changed", "PT025"),
        ("expiry changed", "PT025"),
        ("issued after its expiry", "PT025"),
        ("issued over 60 s ahead", "PT025"),
        ("pt1 format", "PT025"),
        ("mac changed", "PT025"),
        ("not a token", "PT025"),
        ("expired", "PT026"),
        ("wrong tenant", "PT027"),
    ],
)
def test_refused_tokens_have_their_own_sqlstate_and_change_nothing(
    world: StrictWorld, case: str, sqlstate: str
) -> None:
    slug_arg: str | None = None
    good = token(world, "globex")
    parts = good.split(".")
    if case == "other key":
        bad = sign_tenant_token(secrets.token_bytes(32), "globex", 60, key_name="k1")
    elif case == "unknown key name":
        bad = sign_tenant_token(world.key, "globex", 60, key_name="k9")
    elif case == "slug changed":
        bad = ".".join([*parts[:2], "acme", *parts[3:]])
    elif case == "issued changed":
        bad = ".".join([*parts[:3], str(int(parts[3]) - 3_600_000), *parts[4:]])
    elif case == "expiry changed":
        bad = ".".join([*parts[:4], str(int(parts[4]) + 3_600_000), *parts[5:]])
    elif case == "issued after its expiry":
        bad = signed(world.key, "globex", int(parts[4]) + 1, int(parts[4]))
    elif case == "issued over 60 s ahead":
        now = int(time.time() * 1000)
        bad = signed(world.key, "globex", now + 61_000, now + 120_000)
    elif case == "pt1 format":
        body = f"pt1.k1.globex.{parts[4]}.{parts[5]}"
        bad = f"{body}.{hmac.new(world.key, body.encode(), hashlib.sha256).hexdigest()}"
    elif case == "mac changed":
        bad = good[:-1] + ("0" if good[-1] != "0" else "1")
    elif case == "not a token":
        bad = "globex"
    elif case == "expired":
        bad = token(world, "globex", ttl=0.001)
        time.sleep(0.01)
    else:
        bad, slug_arg = good, "acme"
    before = world.data(), snapshot(world.dsn)
    with psycopg.connect(world.app_dsn, autocommit=True) as conn:
        clean = settings(conn)
        assert sqlstate_of(conn, "SELECT tenancy.enter_tenant_token(%s, %s)", (bad, slug_arg)) == (
            sqlstate
        )
        assert settings(conn) == clean
    assert (world.data(), snapshot(world.dsn)) == before


def test_python_classes_of_the_refusals() -> None:
    for code, cls in (
        ("PT025", EntryTokenForged),
        ("PT026", EntryTokenExpired),
        ("PT027", EntryTokenWrongTenant),
        ("PT028", EntryTokenReplayed),
        ("PT034", EntryTokenStale),
    ):
        assert cls.sqlstate == code
    assert issubclass(EntryTokenStale, EntryTokenWrongTenant)


def test_a_token_that_expires_during_the_transaction_opens_nothing_more(
    world: StrictWorld,
) -> None:
    before = world.data()
    with psycopg.connect(world.app_dsn) as conn:
        conn.execute("SELECT tenancy.enter_tenant_token(%s)", (token(world, "sa", ttl=0.4),))
        assert conn.execute("SELECT item FROM orders").fetchall() == [(marker("sa"),)]
        time.sleep(0.5)
        with pytest.raises(psycopg.Error) as info:
            conn.execute("SELECT item FROM orders")
        assert info.value.sqlstate == "PT028"
        assert isinstance(translate(info.value), EntryTokenReplayed)
        conn.rollback()
        # Replayed in a later transaction by hand: refused the same way.
        expired = token(world, "sa", ttl=0.001)
        time.sleep(0.01)
        conn.execute("SELECT tenancy.enter_tenant_token(%s)", (token(world, "sa"),))
        conn.execute("SELECT set_config('app.tenant_token', %s, true)", (expired,))
        with pytest.raises(psycopg.Error) as info:
            conn.execute("UPDATE orders SET item = 'x'")
        assert info.value.sqlstate == "PT028"
    assert world.data() == before


def test_sign_tenant_token_refuses_bad_arguments() -> None:
    key = secrets.token_bytes(32)
    cases: tuple[tuple[tuple[Any, ...], dict[str, Any]], ...] = (
        ((b"short", "acme", 10), {}),
        ((key, "acme", 0), {}),
        ((key, "acme", float("inf")), {}),
        ((key, "acme", 10), {"key_name": "Bad.Name"}),
    )
    for args, kwargs in cases:
        with pytest.raises(ValueError):
            sign_tenant_token(*args, **kwargs)
    with pytest.raises(ValueError):  # InvalidTenantSlug is a ValueError
        sign_tenant_token(key, "Not A Slug", 10)
    assert sign_tenant_token(key, "acme", 10) != sign_tenant_token(key, "acme", 10)  # nonce


# -- keys -----------------------------------------------------------------------


def test_keys_are_the_owner_s_and_rotate_with_two_active(world: StrictWorld) -> None:
    with psycopg.connect(world.app_dsn, autocommit=True) as app:
        for query in (
            "SELECT * FROM tenancy.entry_keys",
            "SELECT tenancy.add_entry_key('mine', '\\x00'::bytea || gen_random_uuid()::text::bytea)",
            "SELECT tenancy.drop_entry_key('k1')",
            "SELECT tenancy.set_strict_entry(false)",
        ):
            assert sqlstate_of(app, query) == "42501", query
    new_key = secrets.token_bytes(48)
    with psycopg.connect(world.dsn, autocommit=True) as owner:
        assert owner.execute("SELECT tenancy.add_entry_key('k2', %s)", (new_key,)).fetchone() == (
            True,
        )
        # The same key again is a no-op; another value under the name is refused.
        assert owner.execute("SELECT tenancy.add_entry_key('k2', %s)", (new_key,)).fetchone() == (
            False,
        )
        before = owner.execute(
            "SELECT name, inner_pad FROM tenancy.entry_keys ORDER BY 1"
        ).fetchall()
        for args in (("k2", secrets.token_bytes(32)), ("k3", b"too short"), ("K.3", new_key)):
            assert sqlstate_of(owner, "SELECT tenancy.add_entry_key(%s, %s)", args) == "22023"
        assert (
            owner.execute("SELECT name, inner_pad FROM tenancy.entry_keys ORDER BY 1").fetchall()
            == before
        )
    old = token(world, "acme")
    new = sign_tenant_token(new_key, "acme", 60, key_name="k2")
    with psycopg.connect(world.app_dsn) as app:
        for tok in (old, new):
            app.execute("SELECT tenancy.enter_tenant_token(%s)", (tok,))
            assert app.execute("SELECT count(*) FROM invoice").fetchone() == (2,)
            app.rollback()
        # A transaction open under the old key loses it at its next statement.
        app.execute("SELECT tenancy.enter_tenant_token(%s)", (old,))
        with psycopg.connect(world.dsn, autocommit=True) as owner:
            assert owner.execute("SELECT tenancy.drop_entry_key('k1')").fetchone() == (True,)
            assert owner.execute("SELECT tenancy.drop_entry_key('k1')").fetchone() == (False,)
            # The last key cannot go while strict entry is on.
            assert sqlstate_of(owner, "SELECT tenancy.drop_entry_key('k2')") == "22023"
        with pytest.raises(psycopg.Error) as info:
            app.execute("SELECT count(*) FROM invoice")
        assert info.value.sqlstate == "PT025"
        app.rollback()
        app.execute("SELECT tenancy.enter_tenant_token(%s)", (new,))
        assert app.execute("SELECT count(*) FROM invoice").fetchone() == (2,)


# -- switching the mode ----------------------------------------------------------


def _strict_state(dsn: str) -> Any:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(
            "SELECT (SELECT array_agg(md5(pg_get_functiondef(p.oid)) ORDER BY p.proname)"
            "          FROM pg_proc p WHERE p.pronamespace = 'tenancy'::regnamespace"
            "           AND p.proname IN ('active_tenant_id', 'tenant_info')),"
            "       (SELECT count(*) FROM pg_policy WHERE polname LIKE 'tenancy\\_strict\\_%'),"
            "       (SELECT array_agg(n.nspname || c.relname || c.relrowsecurity::text || c.relforcerowsecurity::text"
            "                          || coalesce((SELECT array_agg(a::text ORDER BY a::text)"
            "                                        FROM unnest(c.relacl) AS a)::text, '')"
            "                          ORDER BY n.nspname, c.relname)"
            "          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            "         WHERE n.nspname LIKE 'tenant\\_%' AND c.relkind <> 'v')"
        ).fetchone()


def test_strict_entry_is_off_by_default_and_switching_it_off_restores_everything(
    plain_world: StrictWorld,
) -> None:
    world = plain_world
    off = _strict_state(world.dsn)
    assert off[1] == 0
    with psycopg.connect(world.dsn, autocommit=True) as owner:
        assert owner.execute("SELECT tenancy.strict_entry_enabled()").fetchone() == (False,)
    # Off: plain entry and set_config are trusted, as documented.
    with psycopg.connect(world.app_dsn) as app:
        app.execute("SELECT tenancy.enter_tenant('globex')")
        assert app.execute("SELECT count(*) FROM tenant_acme.invoice").fetchone() == (2,)
    with psycopg.connect(world.dsn, autocommit=True) as owner:
        assert owner.execute("SELECT tenancy.set_strict_entry(true)").fetchone() == (False,)
        on = _strict_state(world.dsn)
        assert on[1] == 4 and on != off
        assert owner.execute("SELECT tenancy.set_strict_entry(true)").fetchone() == (True,)
        assert _strict_state(world.dsn) == on
    with psycopg.connect(world.app_dsn) as app:
        app.execute("SELECT tenancy.enter_tenant('globex')")
        with pytest.raises(psycopg.Error) as info:
            app.execute("SELECT count(*) FROM tenant_acme.invoice")
        assert info.value.sqlstate == "PT025"
    with psycopg.connect(world.dsn, autocommit=True) as owner:
        assert owner.execute("SELECT tenancy.set_strict_entry(false)").fetchone() == (True,)
    assert _strict_state(world.dsn) == off
    with psycopg.connect(world.app_dsn) as app:
        app.execute("SELECT tenancy.enter_tenant('acme')")
        assert app.execute("SELECT count(*) FROM invoice").fetchone() == (2,)


def test_strict_entry_needs_a_key_and_refuses_null(dsn: str) -> None:
    before = snapshot(dsn)
    with psycopg.connect(dsn, autocommit=True) as owner:
        assert sqlstate_of(owner, "SELECT tenancy.set_strict_entry(true)") == "22023"
        assert sqlstate_of(owner, "SELECT tenancy.set_strict_entry(NULL)") == "22004"
        assert owner.execute("SELECT tenancy.strict_entry_enabled()").fetchone() == (False,)
    assert snapshot(dsn) == before


def test_reinstall_keeps_strict_entry_in_force(world: StrictWorld) -> None:
    from pgtenancy import install

    install(world.dsn)
    with psycopg.connect(world.app_dsn) as app:
        app.execute("SELECT tenancy.enter_tenant('globex')")
        with pytest.raises(psycopg.Error) as info:
            app.execute("SELECT count(*) FROM orders")
        assert info.value.sqlstate == "PT025"
    assert not [f for f in check_isolation(world.dsn) if f.check.startswith("strict")]


# -- migrations, provisioning, the owner ------------------------------------------


def test_migrations_and_provisioning_guard_new_tables(world: StrictWorld) -> None:
    tenancy = Tenancy(world.dsn)
    tenancy.add_migration("0002", "CREATE TABLE note (id int PRIMARY KEY, body text)")
    for slug in ("acme", "globex"):
        tenancy.migrate_tenant(slug)
    tenancy.create_tenant("initech")
    with psycopg.connect(world.dsn, autocommit=True) as owner:
        for slug in ("acme", "globex", "initech"):
            owner.execute(
                f"INSERT INTO tenant_{slug}.note VALUES (1, %s)",
                (marker(slug),),
            )
        guarded = owner.execute(
            "SELECT count(*) FROM pg_policy WHERE polname = 'tenancy_strict_schema'"
            " AND polrelid::regclass::text LIKE '%.note'"
        ).fetchone()
        assert guarded == (3,)
    with psycopg.connect(world.app_dsn) as app:
        app.execute("SELECT tenancy.enter_tenant_token(%s)", (token(world, "initech"),))
        assert app.execute("SELECT body FROM note").fetchall() == [(marker("initech"),)]
        for slug in ("acme", "globex"):
            assert app.execute(f"SELECT body FROM tenant_{slug}.note").fetchall() == []
    assert not [f for f in check_isolation(world.dsn) if f.check == "strict_guard_missing"]


def test_owner_sessions_keep_working_in_strict_mode(world: StrictWorld) -> None:
    tenancy = Tenancy(world.dsn)
    tenancy.suspend_tenant("globex")
    tenancy.resume_tenant("globex")
    tenancy.drop_tenant("sb", destroy_data=True)
    with psycopg.connect(world.dsn, autocommit=True) as owner:
        assert owner.execute("SELECT count(*) FROM tenant_globex.invoice").fetchone() == (2,)
        assert owner.execute(
            "SELECT count(*) FROM public.orders WHERE tenant_id = %s", (world.ids["sb"],)
        ).fetchone() == (0,)
        assert owner.execute("SELECT count(*) FROM public.orders").fetchone() == (1,)
    with psycopg.connect(world.app_dsn) as app:
        app.execute("SELECT tenancy.enter_tenant_token(%s)", (token(world, "globex"),))
        assert app.execute("SELECT count(*) FROM invoice").fetchone() == (2,)


# -- the doctor (item 4) -----------------------------------------------------------


def findings(dsn: str) -> set[tuple[str, str, str]]:
    return {(f.severity, f.check, f.object) for f in check_isolation(dsn)}


def test_doctor_reports_strict_entry_off_with_shared_tenants(plain_world: StrictWorld) -> None:
    for dsn in (plain_world.dsn, plain_world.app_dsn):
        found = findings(dsn)
        assert any(f[:2] == ("info", "strict_entry_off") for f in found), found
    with psycopg.connect(plain_world.dsn, autocommit=True) as owner:
        owner.execute("SELECT tenancy.set_strict_entry(true)")
    assert not any(f[1] == "strict_entry_off" for f in findings(plain_world.app_dsn))


def test_doctor_reports_tables_without_the_strict_guard(world: StrictWorld, app_role: str) -> None:
    assert not any(f[1].startswith("strict") for f in findings(world.app_dsn))
    with psycopg.connect(world.dsn, autocommit=True) as owner:
        owner.execute("CREATE TABLE tenant_acme.by_hand (x int)")
        owner.execute("DROP POLICY tenancy_strict_schema ON tenant_globex.invoice")
        owner.execute("CREATE VIEW tenant_acme.v2 AS SELECT 1 AS one")
        owner.execute(f"GRANT SELECT ON tenant_acme.invoice_summary TO {app_role}")
    found = findings(world.app_dsn)
    for obj in (
        "tenant_acme.by_hand",
        "tenant_globex.invoice",
        "tenant_acme.v2",
        "tenant_acme.invoice_summary",
    ):
        assert ("error", "strict_guard_missing", obj) in found, (obj, found)
    with psycopg.connect(world.dsn, autocommit=True) as owner:
        owner.execute("SELECT tenancy.set_strict_entry(true)")
    assert not any(f[1] == "strict_guard_missing" for f in findings(world.app_dsn))


def test_doctor_reports_rights_that_defeat_the_model(world: StrictWorld, app_role: str) -> None:
    with psycopg.connect(world.dsn, autocommit=True) as owner:
        owner.execute(f"ALTER TABLE tenant_acme.invoice OWNER TO {app_role}")
        owner.execute("CREATE ROLE pgtenancy_i13s_other NOLOGIN")
        try:
            owner.execute("ALTER TABLE public.orders OWNER TO pgtenancy_i13s_other")
            owner.execute(f"GRANT {owner.info.user} TO pgtenancy_i13s_other")
            found = findings(world.dsn)
            assert ("error", "tenant_object_foreign_owner", "tenant_acme.invoice") in found
            assert ("error", "guarded_table_foreign_owner", "orders") in found or (
                "error",
                "guarded_table_foreign_owner",
                "public.orders",
            ) in found, found
            assert any(
                f[1] == "owner_role_member" and f[2] == "pgtenancy_i13s_other" for f in found
            )
        finally:
            owner.execute(f"REVOKE {owner.info.user} FROM pgtenancy_i13s_other")
            owner.execute(f"ALTER TABLE public.orders OWNER TO {owner.info.user}")
            owner.execute(f"ALTER TABLE tenant_acme.invoice OWNER TO {owner.info.user}")
            owner.execute("DROP ROLE pgtenancy_i13s_other")


# -- Python entry points -----------------------------------------------------------


def test_tenant_connection_with_a_token(world: StrictWorld) -> None:
    tok = token(world, "acme")
    with psycopg.connect(world.app_dsn, autocommit=True) as conn:
        with tenant_connection(conn, token=tok) as c:
            assert c.execute("SELECT body FROM invoice ORDER BY id").fetchone() == (marker("acme"),)
            assert c.execute("SELECT count(*) FROM tenant_globex.invoice").fetchone() == (0,)
        with tenant_connection(conn, "acme", token=tok) as c:
            assert c.execute("SELECT count(*) FROM invoice").fetchone() == (2,)
        with pytest.raises(EntryTokenWrongTenant):
            tenant_connection(conn, "globex", token=tok)
        with pytest.raises(EntryTokenForged):
            tenant_connection(conn, token="nonsense")
        # Refused by the database: nothing is left open.
        forged = sign_tenant_token(b"x" * 32, "acme", 60, "k1")
        with pytest.raises(EntryTokenForged), tenant_connection(conn, token=forged):
            pass
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        # Plain entry in strict mode: the first guarded statement is refused.
        with pytest.raises(psycopg.Error) as info, tenant_connection(conn, "acme") as c:
            c.execute("SELECT count(*) FROM invoice")
        assert info.value.sqlstate == "PT025"
        assert isinstance(translate(info.value), EntryTokenForged)
    with (
        ConnectionPool(world.app_dsn, min_size=1, max_size=1, open=True) as pool,
        tenant_connection(pool, token=token(world, "sa")) as c,
    ):
        assert c.execute("SELECT item FROM orders").fetchall() == [(marker("sa"),)]


def test_async_tenant_connection_with_a_token(world: StrictWorld) -> None:
    async def run() -> None:
        async with (
            AsyncConnectionPool(world.app_dsn, min_size=1, max_size=1, open=False) as pool,
            tenant_connection(pool, token=token(world, "globex")) as c,
        ):
            cur = await c.execute("SELECT body FROM invoice ORDER BY id")
            assert await cur.fetchone() == (marker("globex"),)
        aconn = await psycopg.AsyncConnection.connect(world.app_dsn, autocommit=True)
        try:
            async with tenant_connection(aconn, token=token(world, "sb")) as c:
                cur = await c.execute("SELECT item FROM orders")
                assert await cur.fetchall() == [(marker("sb"),)]
        finally:
            await aconn.close()

    asyncio.run(run())


def test_tenant_session_with_a_token_enters_each_transaction(world: StrictWorld) -> None:
    engine = create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(world.app_dsn))
    try:
        with tenant_session(engine, token=token(world, "acme")) as session:
            assert session.execute(text("SELECT count(*) FROM invoice")).scalar() == 2
            session.commit()
            assert session.execute(text("SELECT tenancy.current_tenant()")).scalar() == "acme"
            assert session.execute(text("SELECT count(*) FROM tenant_globex.invoice")).scalar() == 0
        with pytest.raises(EntryTokenWrongTenant):
            tenant_session(engine, "globex", token=token(world, "acme"))
    finally:
        engine.dispose()


def test_async_tenant_session_with_a_token(world: StrictWorld) -> None:
    async def run() -> None:
        engine = create_async_engine(
            "postgresql+psycopg://",
            async_creator=lambda: psycopg.AsyncConnection.connect(world.app_dsn),
        )
        try:
            async with tenant_session(engine, token=token(world, "sa")) as session:
                result = await session.execute(text("SELECT item FROM orders"))
                assert result.all() == [(marker("sa"),)]
        finally:
            await engine.dispose()

    asyncio.run(run())


def test_cli_switches_strict_entry_and_manages_keys(dsn: str) -> None:
    from helpers import run_cli

    r = run_cli("strict", "on", "--dsn", dsn)
    assert r.returncode != 0 and "entry key" in (r.stdout + r.stderr)
    r = run_cli("entry-key", "add", "k1", "--dsn", dsn)
    assert r.returncode == 0, r.stderr
    key = bytes.fromhex(r.stdout.split("key (hex, shown once): ")[1].strip())
    r = run_cli("strict", "on", "--dsn", dsn)
    assert r.returncode == 0 and "strict entry on (was off)" in r.stdout, r.stderr
    with psycopg.connect(dsn, autocommit=True) as owner:
        assert owner.execute("SELECT tenancy.strict_entry_enabled()").fetchone() == (True,)
        Tenancy(dsn).create_tenant("acme")
        owner.execute(
            "SELECT tenancy.enter_tenant_token(%s)", (sign_tenant_token(key, "acme", 9, "k1"),)
        )
    r = run_cli("entry-key", "drop", "k1", "--dsn", dsn)
    assert r.returncode != 0  # the last key while strict entry is on
    r = run_cli("strict", "off", "--dsn", dsn)
    assert r.returncode == 0 and "strict entry off (was on)" in r.stdout
    r = run_cli("entry-key", "drop", "k1", "--dsn", dsn)
    assert r.returncode == 0 and "dropped" in r.stdout


def test_cli_takes_a_given_key_from_a_file_or_the_environment_only(
    dsn: str, tmp_path: Path
) -> None:
    """The key never goes on the command line (ps shows argv): a file or
    $PGTENANCY_ENTRY_KEY; it is then not printed; a bad one adds nothing."""
    from helpers import run_cli

    def keys() -> list[tuple[Any, ...]]:
        with psycopg.connect(dsn) as owner:
            return owner.execute("SELECT name FROM tenancy.entry_keys ORDER BY 1").fetchall()

    key = secrets.token_bytes(32)
    key_file = tmp_path / "k1.hex"
    key_file.write_text(key.hex() + "\n")
    r = run_cli("entry-key", "add", "k1", "--dsn", dsn, "--key-file", str(key_file))
    assert r.returncode == 0 and "entry key k1 added" in r.stdout, r.stderr
    assert key.hex() not in r.stdout + r.stderr
    r = run_cli("entry-key", "add", "k2", "--dsn", dsn, env={"PGTENANCY_ENTRY_KEY": key.hex()})
    assert r.returncode == 0 and key.hex() not in r.stdout + r.stderr, r.stderr
    assert keys() == [("k1",), ("k2",)]
    r = run_cli("entry-key", "add", "k3", "--dsn", dsn, env={"PGTENANCY_ENTRY_KEY": "zz"})
    assert r.returncode == 2 and "--key-file" in r.stderr and "zz" not in r.stderr
    r = run_cli("entry-key", "add", "k3", "--dsn", dsn, "--key-hex", key.hex())
    assert r.returncode == 2 and "No such option" in r.stderr
    assert keys() == [("k1",), ("k2",)]
    Tenancy(dsn).create_tenant("acme")
    with psycopg.connect(dsn, autocommit=True) as owner:
        owner.execute(
            "SELECT tenancy.enter_tenant_token(%s)", (sign_tenant_token(key, "acme", 9, "k1"),)
        )


def test_an_app_role_granted_in_strict_mode_gets_no_unguardable_access(world: StrictWorld) -> None:
    name = f"pgtenancy_app2_{secrets.token_hex(4)}"
    with psycopg.connect(world.dsn, autocommit=True) as owner:
        owner.execute(f"CREATE ROLE {name} LOGIN NOSUPERUSER NOBYPASSRLS")
        try:
            owner.execute("SELECT tenancy.grant_app_role(%s)", (name,))
            with psycopg.connect(as_role(world.dsn, name)) as app:
                app.execute("SELECT tenancy.enter_tenant_token(%s)", (token(world, "acme"),))
                assert app.execute("SELECT count(*) FROM invoice").fetchone() == (2,)
                assert app.execute("SELECT count(*) FROM tenant_globex.invoice").fetchone() == (0,)
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    app.execute("SELECT bodies FROM tenant_globex.invoice_summary")
        finally:
            owner.execute(f"DROP OWNED BY {name}")
            owner.execute(f"DROP ROLE {name}")


def test_no_other_session_of_the_role_sees_a_live_token(world: StrictWorld) -> None:
    """The attack: another request of the same application role polls
    pg_stat_activity for a token left in the statement text of a transaction
    still open, then enters that tenant with it. The token goes as a bind
    parameter, on every entry path, sync and async."""
    import asyncio

    from sqlalchemy import create_engine, text

    from pgtenancy import tenant_session

    token = sign_tenant_token(world.key, "sb", 60, key_name="k1")
    with psycopg.connect(world.app_dsn, autocommit=True) as spy:

        def texts() -> str:
            rows = spy.execute(
                "SELECT coalesce(string_agg(query, ' | '), '') FROM pg_stat_activity"
                " WHERE usename = current_user AND pid <> pg_backend_pid()"
            ).fetchone()
            return str(rows[0]) if rows else ""

        with (
            psycopg.connect(world.app_dsn) as victim,
            tenant_connection(victim, token=token) as c,
        ):
            # Entered, nothing run yet: the entry is the session's last statement.
            seen = texts()
            assert "tenancy.enter_tenant_token" in seen and token not in seen, seen
            assert c.execute("SELECT item FROM orders").fetchall() == [(marker("sb"),)]
        engine = create_engine(
            "postgresql+psycopg://", creator=lambda: psycopg.connect(world.app_dsn)
        )
        try:
            with tenant_session(engine, token=token) as session:
                session.connection()  # begins: the entry runs
                seen = texts()
                assert "tenancy.enter_tenant_token" in seen and token not in seen, seen
                session.execute(text("SELECT 1"))
        finally:
            engine.dispose()

        async def run() -> None:
            async with (
                await psycopg.AsyncConnection.connect(world.app_dsn) as aconn,
                tenant_connection(aconn, token=token) as ac,
            ):
                seen = texts()
                assert "tenancy.enter_tenant_token" in seen and token not in seen, seen
                await ac.execute("SELECT 1")

        asyncio.run(run())

        # The attack run's case: a connection binding parameters client-side
        # (ClientCursor) in pipeline mode, where the kit enters through
        # psycopg's own transaction(); sync and async.
        with (
            psycopg.connect(world.app_dsn, cursor_factory=psycopg.ClientCursor) as victim,
            victim.pipeline() as pipe,
            tenant_connection(victim, token=token) as c,
        ):
            pipe.sync()  # the entry reaches the server: its last statement
            seen = texts()
            assert c.execute("SELECT item FROM orders").fetchall() == [(marker("sb"),)]
            assert "tenancy.enter_tenant_token" in seen and token not in seen, seen

        async def run_client_cursor() -> None:
            async with (
                await psycopg.AsyncConnection.connect(
                    world.app_dsn, cursor_factory=psycopg.AsyncClientCursor
                ) as aconn,
                aconn.pipeline() as apipe,
                tenant_connection(aconn, token=token) as ac,
            ):
                await apipe.sync()
                seen = texts()
                await ac.execute("SELECT 1")
                assert "tenancy.enter_tenant_token" in seen and token not in seen, seen

        asyncio.run(run_client_cursor())
