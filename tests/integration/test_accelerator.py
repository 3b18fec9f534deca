"""The C accelerator (sql/pgtenancy_accel.c, sql/011_accelerator.sql): where it
is in use, entering a tenant and the policies' tenant test give exactly what the
PL/pgSQL gives, for the success case and every refusal; it is optional
(install(..., accelerate=False), set_accelerator) and stays out of the way of
Citus's specialization and strict entry's body swap.

Two fresh databases on the same server: ``dsn`` (the test template, installed by
a superuser: accelerated where the server has the library) and one installed
with ``accelerate=False``. Each gets the same tenants; every case runs as the
application role (NOSUPERUSER NOBYPASSRLS) in both and the outcomes are compared.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql as pgsql

from helpers import as_role
from pgtenancy import Tenancy, install, sign_tenant_token
from pgtenancy.admin import engine_from_dsn
from pgtenancy.installer import installed_accelerator
from pgtenancy.queries import QUERIES

Outcome = tuple[Any, ...]

SLUGS = ["acme", "shr", "lim", "sus", "gone", "prov", "noschema", "newname", "nobody", None]


def _scenario(dsn: str, role: str) -> dict[str, str]:
    """The same tenants in database dsn; role becomes its application role.
    Returns the tenant ids by slug (ids differ between databases)."""
    t = Tenancy(engine_from_dsn(dsn))
    t.add_migration("0001", "CREATE TABLE note (id int PRIMARY KEY)")
    ids = {}
    for slug in ("acme", "lim", "sus", "gone", "prov", "noschema", "newname"):
        ids[slug] = str(t.create_tenant(slug).id)
    ids["shr"] = str(t.create_tenant("shr", isolation="shared").id)
    t.set_tenant_limits("lim", statement_timeout="5s")
    t.suspend_tenant("sus")
    t.drop_tenant("gone")
    t.rename_tenant("newname", "renamed")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE tenancy.tenants DISABLE TRIGGER USER")
        conn.execute("UPDATE tenancy.tenants SET status = 'provisioning' WHERE slug = 'prov'")
        conn.execute("ALTER TABLE tenancy.tenants ENABLE TRIGGER USER")
        conn.execute("SET session_replication_role = replica")
        conn.execute("DROP SCHEMA tenant_noschema CASCADE")
        conn.execute("RESET session_replication_role")
        conn.execute("SELECT tenancy.grant_app_role(%s)", (role,))
    return ids


def _outcome(
    conn: psycopg.Connection[Any], query: str, params: Any, ids: dict[str, str]
) -> Outcome:
    """What a user sees of query (after the statement setup, when given):
    its result and the tenant settings, or the error's SQLSTATE, message,
    DETAIL and HINT. Tenant ids are replaced by their slugs (each database
    has its own)."""
    names = {v: k for k, v in ids.items()}
    try:
        with conn.transaction():
            if " ;; " in query:
                setup, query = query.split(" ;; ")
                conn.execute(setup, params)
                params = None
            row = conn.execute(query, params).fetchone()
            assert row is not None
            settings = conn.execute(
                "SELECT current_setting('app.tenant_id', true), current_setting('app.tenant', true),"
                " current_setting('search_path'), current_setting('statement_timeout')"
            ).fetchone()
            assert settings is not None
            value = None if row[0] is None else names.get(str(row[0]), "?")
            shown = settings[0] or ""
            for slug, tenant_id in ids.items():
                shown = shown.replace(tenant_id, slug).replace(tenant_id.upper(), slug.upper())
            return ("ok", value, shown, *settings[1:])
    except psycopg.Error as exc:
        d = exc.diag
        text = d.message_primary or ""
        for slug, tenant_id in ids.items():
            text = text.replace(tenant_id, f"<{slug}>")
        # When the tenant got its slug differs between the two databases.
        text = re.sub(r"got its slug \(at [^)]*\)", "got its slug (at <time>)", text)
        return ("error", d.sqlstate, text, d.message_detail, d.message_hint)


@pytest.fixture
def plain_dsn(empty_dsn: str) -> str:
    install(empty_dsn, accelerate=False)
    return empty_dsn


@pytest.fixture
def pair(
    dsn: str, plain_dsn: str
) -> Iterator[tuple[tuple[str, dict[str, str]], tuple[str, dict[str, str]]]]:
    if not installed_accelerator(dsn):
        pytest.skip("the accelerator library pgtenancy_accel is not installed on this server")
    assert not installed_accelerator(plain_dsn)
    role = f"pgtenancy_acc_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            pgsql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOBYPASSRLS").format(pgsql.Identifier(role))
        )
    fast = _scenario(dsn, role)
    slow = _scenario(plain_dsn, role)
    yield (as_role(dsn, role), fast), (as_role(plain_dsn, role), slow)
    for d in (dsn, plain_dsn):
        with psycopg.connect(d, autocommit=True) as conn:
            conn.execute(pgsql.SQL("DROP OWNED BY {}").format(pgsql.Identifier(role)))
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(pgsql.SQL("DROP ROLE {}").format(pgsql.Identifier(role)))


def _both(
    pair: tuple[tuple[str, dict[str, str]], tuple[str, dict[str, str]]],
    cases: list[tuple[str, Callable[[dict[str, str]], Any]]],
) -> tuple[list[Outcome], list[Outcome]]:
    out: list[list[Outcome]] = []
    for conninfo, ids in pair:
        with psycopg.connect(conninfo) as conn:
            out.append([_outcome(conn, q, params(ids), ids) for q, params in cases])
    return out[0], out[1]


def test_enter_tenant_gives_what_the_plpgsql_gives(pair: Any) -> None:
    def entry(slug: str | None) -> tuple[str, Callable[[dict[str, str]], Any]]:
        return ("SELECT tenancy.enter_tenant(%s)", lambda ids: (slug,))

    cases = [entry(s) for s in SLUGS]
    fast, slow = _both(pair, cases)
    assert fast == slow
    by_slug = dict(zip(SLUGS, fast, strict=True))
    # What each case is, so the comparison cannot pass on two empty answers.
    assert by_slug["acme"] == ("ok", "acme", "acme", "acme", "tenant_acme, public, pg_temp", "0")
    assert by_slug["shr"] == ("ok", "shr", "shr", "shr", "public, pg_temp", "0")
    assert by_slug["lim"][:2] == ("ok", "lim") and by_slug["lim"][5] == "5s"
    codes = {s: o[1] for s, o in by_slug.items() if o[0] == "error"}
    assert codes == {
        "sus": "PT004",
        "gone": "PT005",
        "prov": "PT019",
        "noschema": "PT007",
        "newname": "PT020",
        "nobody": "PT003",
        None: "PT003",
    }
    assert by_slug["prov"][4] is not None  # the HINT came through
    assert by_slug["newname"][3] == "new slug: renamed"  # and the DETAIL


def test_active_tenant_id_gives_what_the_plpgsql_gives(pair: Any) -> None:
    def setting(
        value: Callable[[dict[str, str]], str | None],
    ) -> tuple[str, Callable[[dict[str, str]], Any]]:
        return (
            "SELECT set_config('app.tenant_id', coalesce(%s, ''), true)"
            " ;; SELECT tenancy.active_tenant_id()",
            lambda ids: (value(ids),),
        )

    cases = [
        setting(lambda ids: None),
        setting(lambda ids: ids["acme"]),
        setting(lambda ids: ids["shr"]),
        setting(lambda ids: ids["acme"].upper()),
        setting(lambda ids: "{" + ids["acme"] + "}"),
        setting(lambda ids: ids["sus"]),
        setting(lambda ids: ids["gone"]),
        setting(lambda ids: ids["prov"]),
        setting(lambda ids: str(uuid.UUID(int=7))),
        setting(lambda ids: "not-a-uuid"),
        setting(lambda ids: ids["acme"] + "x"),
    ]
    fast, slow = _both(pair, cases)
    assert fast == slow
    results = [o[1] for o in fast]
    assert results == [
        None,
        "acme",
        "shr",
        "acme",
        "acme",
        None,
        None,
        None,
        None,
        "22P02",
        "22P02",
    ]


def test_owner_sessions_keep_the_owner_exception(dsn: str, plain_dsn: str) -> None:
    """The kit's owner (here the superuser that installed it) sees a suspended
    tenant's id, on both paths."""
    for d in (dsn, plain_dsn):
        t = Tenancy(engine_from_dsn(d))
        sus = t.create_tenant("sus", isolation="shared")
        t.suspend_tenant("sus")
        with psycopg.connect(d) as conn:
            conn.execute("SELECT set_config('app.tenant_id', %s, true)", (str(sus.id),))
            assert conn.execute("SELECT tenancy.active_tenant_id()").fetchone() == (sus.id,)


def test_the_accelerated_functions_are_inlined_calls_of_c(dsn: str, sql: Any) -> None:
    if not installed_accelerator(dsn):
        pytest.skip("the accelerator library pgtenancy_accel is not installed on this server")
    [(plan,)] = sql("EXPLAIN (VERBOSE, FORMAT JSON) SELECT tenancy.enter_tenant('x')")[0:1]
    assert "tenancy.enter_tenant_c('x'::text)" in str(plan)
    rows = sql(
        "SELECT p.proname, l.lanname FROM pg_proc AS p JOIN pg_language AS l ON l.oid = p.prolang"
        " WHERE p.pronamespace = 'tenancy'::regnamespace AND p.proname IN"
        " ('enter_tenant', 'enter_tenant_c', 'enter_tenant_plpgsql', 'active_tenant_id',"
        "  'active_tenant_id_c', 'active_tenant_id_plpgsql') ORDER BY 1"
    )
    assert rows == [
        ("active_tenant_id", "sql"),
        ("active_tenant_id_c", "c"),
        ("active_tenant_id_plpgsql", "plpgsql"),
        ("enter_tenant", "sql"),
        ("enter_tenant_c", "c"),
        ("enter_tenant_plpgsql", "plpgsql"),
    ]


def test_switching_off_and_on_keeps_oids_grants_and_comments(dsn: str, sql: Any) -> None:
    if not installed_accelerator(dsn):
        pytest.skip("the accelerator library pgtenancy_accel is not installed on this server")
    probe = (
        "SELECT p.oid, p.proacl::text, obj_description(p.oid, 'pg_proc'), p.provolatile, p.proparallel"
        " FROM pg_proc AS p WHERE p.oid IN ('tenancy.enter_tenant(text)'::regprocedure,"
        " 'tenancy.active_tenant_id()'::regprocedure) ORDER BY 1"
    )
    before = sql(probe)
    assert sql("SELECT tenancy.set_accelerator(false)") == [(False,)]
    assert sql("SELECT tenancy.accelerator_in_use()") == [(False,)]
    assert sql(
        "SELECT l.lanname FROM pg_proc AS p JOIN pg_language AS l ON l.oid = p.prolang"
        " WHERE p.oid = 'tenancy.enter_tenant(text)'::regprocedure"
    ) == [("plpgsql",)]
    assert sql(probe) == before
    # An install keeps the recorded choice.
    install(dsn)
    assert not installed_accelerator(dsn)
    assert sql("SELECT tenancy.set_accelerator(true)") == [(True,)]
    assert sql(probe) == before


def test_a_non_superuser_owner_cannot_create_it_and_nothing_changes(
    empty_dsn: str, sql: Any
) -> None:
    """Installed by a role that is not a superuser on a server that has the
    library: the PL/pgSQL stays (C functions need a superuser), and strict
    entry's swap works for that owner."""
    owner = f"pgtenancy_own_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        conn.execute(
            pgsql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER CREATEROLE").format(pgsql.Identifier(owner))
        )
        conn.execute(
            pgsql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(
                pgsql.Identifier(conn.info.dbname), pgsql.Identifier(owner)
            )
        )
    try:
        install(as_role(empty_dsn, owner))
        assert not installed_accelerator(empty_dsn)
        with psycopg.connect(as_role(empty_dsn, owner), autocommit=True) as conn:
            assert conn.execute("SELECT tenancy.set_accelerator(true)").fetchone() == (False,)
            conn.execute("SELECT tenancy.add_entry_key('k1', %s)", (b"k" * 32,))
            assert conn.execute("SELECT tenancy.set_strict_entry(true)").fetchone() == (False,)
            assert conn.execute("SELECT tenancy.set_strict_entry(false)").fetchone() == (True,)
        # A superuser turns it on for that owner; the owner's later installs
        # keep it (the C functions are found, the PL/pgSQL copies are the
        # owner's to replace), and entry works at every step.
        with psycopg.connect(empty_dsn, autocommit=True) as conn:
            if conn.execute("SELECT tenancy.set_accelerator(true)").fetchone() != (True,):
                return  # no library on this server: nothing more to see
            conn.execute("SELECT tenancy.create_tenant('acme')")
        owned = (
            "SELECT array_agg(p.oid::regprocedure::text) FROM pg_proc AS p"
            " WHERE p.pronamespace = 'tenancy'::regnamespace"
            " AND p.proowner <> (SELECT nspowner FROM pg_namespace WHERE nspname = 'tenancy')"
            # The migration runner is the migrator's by design (003_confinement.sql).
            " AND p.proname <> 'execute_migration'"
        )
        for _ in range(2):
            install(as_role(empty_dsn, owner))
            assert installed_accelerator(empty_dsn)
            with psycopg.connect(as_role(empty_dsn, owner), autocommit=True) as conn:
                assert conn.execute(owned).fetchone() == (None,)
                conn.execute("BEGIN")
                assert conn.execute("CALL tenancy.enter('acme')").fetchone() == (
                    "tenant_acme, public, pg_temp",
                )
                conn.execute("ROLLBACK")
    finally:
        with psycopg.connect(empty_dsn, autocommit=True) as conn:
            # The kit's cluster roles of this install, named after its migrator:
            # the database's teardown finds them in tenancy.confinement, which
            # goes with the schema here.
            kit_roles: list[str] = []
            with contextlib.suppress(psycopg.Error):
                row = conn.execute("SELECT migrator_role FROM tenancy.confinement").fetchone()
                if row is not None:
                    kit_roles = [
                        str(r[0])
                        for r in conn.execute(QUERIES["testing_kit_roles"], {"migrator": row[0]})
                    ] + [str(row[0])]
            conn.execute("DROP SCHEMA IF EXISTS tenancy CASCADE")
            for role in [*kit_roles, owner]:
                conn.execute(pgsql.SQL("DROP OWNED BY {}").format(pgsql.Identifier(role)))
                conn.execute(pgsql.SQL("DROP ROLE {}").format(pgsql.Identifier(role)))


def test_strict_entry_swaps_under_the_accelerator(dsn: str, sql: Any) -> None:
    """Strict entry's body swap goes through the PL/pgSQL: on, active_tenant_id
    calls the strict C fast path (falling back to the strict body); the doctor
    sees the strict body in effect; off, the plain C fast path again."""
    if not installed_accelerator(dsn):
        pytest.skip("the accelerator library pgtenancy_accel is not installed on this server")
    src = "SELECT prosrc FROM pg_proc WHERE oid = 'tenancy.active_tenant_id()'::regprocedure"
    sql("SELECT tenancy.add_entry_key('k1', %s)", (b"k" * 32,))
    sql("SELECT tenancy.set_strict_entry(true)")
    assert sql(src) == [("\n    SELECT tenancy.active_tenant_id_strict_c()\n",)]
    assert sql(
        "SELECT tenancy.accelerated_body('tenancy.active_tenant_id()')"
        " = tenancy.strict_active_tenant_body()"
    ) == [(True,)]
    assert [
        r for r in sql("SELECT * FROM tenancy.check_strict()") if r[1] == "strict_entry_not_applied"
    ] == []
    sql("SELECT tenancy.set_strict_entry(false)")
    assert sql(src) == [("\n    SELECT tenancy.active_tenant_id_c()\n",)]
    assert sql("SELECT tenancy.accelerator_in_use()") == [(True,)]


# Strict entry: tokens ---------------------------------------------------------

KEY = b"k" * 32
OTHER_KEY = b"o" * 32


def _mac(key: bytes, body: str) -> str:
    return hmac.new(key, body.encode(), hashlib.sha256).hexdigest()


def _token(
    slug: str,
    *,
    key: bytes = KEY,
    key_name: str = "k1",
    issued_ms: int | None = None,
    expiry_ms: int | None = None,
    nonce: str = "0123456789abcdef0123456789abcdef",
    head: str = "pt2",
) -> str:
    """A token signed like sign_tenant_token, with every part settable."""
    now = int(time.time() * 1000)
    if issued_ms is None:
        issued_ms = now
    if expiry_ms is None:
        expiry_ms = now + 3_600_000
    body = f"{head}.{key_name}.{slug}.{issued_ms}.{expiry_ms}.{nonce}"
    return f"{body}.{_mac(key, body)}"


def _token_cases() -> list[str | None]:
    """Every kind of token the verifiers tell apart: valid ones for each tenant
    state, expired, forged, malformed and oversized ones."""
    good = _token("acme")
    body, mac = good.rsplit(".", 1)
    flipped = mac[:-1] + ("0" if mac[-1] != "0" else "1")
    past = int((time.time() - 3600) * 1000)
    # Issued after the tenants got their slugs, expired by the time it is checked.
    issued = int(time.time() * 1000) + 1
    expired = _token("acme", issued_ms=issued, expiry_ms=issued + 50)
    time.sleep(0.3)
    cases: list[str | None] = [
        good,
        sign_tenant_token(KEY, "acme", 60, key_name="k1"),
        _token("shr"),
        _token("sus"),
        _token("gone"),
        _token("prov"),
        _token("noschema"),
        _token("lim"),
        _token("nobody"),
        _token("newname"),
        _token("acme", expiry_ms=past),
        expired,
        _token("acme", expiry_ms=1),
        _token("acme", key=OTHER_KEY),
        _token("acme", key_name="nokey"),
        _token("acme", key=OTHER_KEY, key_name="k2"),
        _token("acme", nonce="ab"),  # short nonce, signed
        _token("acme", issued_ms=1000),  # before the tenant got its slug
        _token("acme", issued_ms=int((time.time() + 3000) * 1000)),  # more than 60 s ahead
        _token("acme", issued_ms=int((time.time() + 30) * 1000)),  # ahead, within 60 s
        _token("acme", issued_ms=int((time.time() + 7200) * 1000)),  # after its expiry
        _token("newname", issued_ms=1000),
        _token("acme", nonce="AB" * 8),
        _token("acme", head="pt1"),
        _token("acme", expiry_ms=10**16),  # 17 digits
        _token("acme", expiry_ms=10**15),
        _token("ACME"),
        _token("acme.x"),
        f"{body}.{flipped}",
        f"{body}.{mac.upper()}",
        f"{body}.{mac[:-2]}",
        f"{body}.{mac}0",
        f"{body}..{mac}",
        f"{good}.",
        "." + good,
        good.replace("pt2.", "pt2.."),
        "pt1",
        "",
        "pt2.k1.acme.1.2.3.4",
        "x" * 100_000,
        good + "x" * 100_000,
        good.replace("acme", "acmé"),
        None,
    ]
    return cases


def _const(*values: Any) -> Callable[[dict[str, str]], tuple[Any, ...]]:
    """Parameters that are the same in both databases."""
    return lambda ids: values


def _add_keys(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT tenancy.add_entry_key('k1', %s)", (KEY,))
        conn.execute("SELECT tenancy.add_entry_key('k2', %s)", (b"2" * 32,))


def test_the_c_verifier_gives_what_the_plpgsql_verifier_gives(dsn: str, plain_dsn: str) -> None:
    """Parity of the verifiers in one database, for every token case and both
    modes (at entry, later statements): result, SQLSTATE, message, DETAIL, HINT."""
    if not installed_accelerator(dsn):
        pytest.skip("the accelerator library pgtenancy_accel is not installed on this server")
    role = f"pgtenancy_acc_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            pgsql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOBYPASSRLS").format(pgsql.Identifier(role))
        )
    try:
        ids = _scenario(dsn, role)
        _add_keys(dsn)
        cases = [
            (q, _const(t, e))
            for t in _token_cases()
            for e in (True, False)
            for q in (
                "SELECT tenancy.verify_entry_token_c(%s, %s)",
                "SELECT tenancy.verify_entry_token(%s, %s)",
            )
        ]
        with psycopg.connect(dsn) as conn:
            out = [_outcome(conn, q, p(ids), ids) for q, p in cases]
        fast, slow = out[0::2], out[1::2]
        assert fast == slow
        # Not two empty answers: the valid token is acme's, the others refused.
        assert fast[0][:2] == ("ok", "acme")
        assert {o[1] for o in fast if o[0] == "error"} >= {
            "PT025",
            "PT026",
            "PT028",
            "PT003",
            "PT034",
        }
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(pgsql.SQL("DROP OWNED BY {}").format(pgsql.Identifier(role)))
            conn.execute(pgsql.SQL("DROP ROLE {}").format(pgsql.Identifier(role)))


@pytest.mark.parametrize("strict", [False, True])
def test_token_entry_and_strict_statements_give_what_the_plpgsql_gives(
    pair: Any, dsn: str, plain_dsn: str, strict: bool
) -> None:
    """enter_tenant_token (and, in strict mode, the statements after it, which
    re-verify the token through active_tenant_id) on both databases, as the
    application role: the same result or error for every token case."""
    for admin in (dsn, plain_dsn):
        _add_keys(admin)
        if strict:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute("SELECT tenancy.set_strict_entry(true)")
    tokens = _token_cases()
    cases: list[tuple[str, Callable[[dict[str, str]], Any]]] = []
    for t in tokens:
        cases.append(("SELECT tenancy.enter_tenant_token(%s)", _const(t)))
        cases.append(("SELECT tenancy.enter_tenant_token(%s, 'acme')", _const(t)))
        # Entered, then a statement that asks for the tenant (the policies' test).
        cases.append(
            (
                "SELECT tenancy.enter_tenant_token(%s) ;; SELECT tenancy.active_tenant_id()",
                _const(t),
            )
        )
        # A token set by hand, without entry: what a later statement sees.
        cases.append(
            (
                "SELECT set_config('app.tenant_token', coalesce(%s, ''), true),"
                " set_config('app.tenant_id', (SELECT id::text FROM tenancy.tenant_directory"
                " WHERE slug = 'acme'), true) ;; SELECT tenancy.active_tenant_id()",
                _const(t),
            )
        )
    fast, slow = _both(pair, cases)
    assert fast == slow
    assert fast[0][:2] == ("ok", "acme")
    codes = {o[1] for o in fast if o[0] == "error"}
    assert {"PT025", "PT026", "PT027", "PT004", "PT005"} <= codes


def test_the_common_case_runs_no_plpgsql(dsn: str) -> None:
    """Entering an active tenant, with or without a token, and the strict
    statement check call the C functions only (function statistics of the
    transaction, track_functions = all): the fast path is really taken."""
    if not installed_accelerator(dsn):
        pytest.skip("the accelerator library pgtenancy_accel is not installed on this server")
    t = Tenancy(engine_from_dsn(dsn))
    t.create_tenant("acme")
    _add_keys(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT tenancy.set_strict_entry(true)")
    token = sign_tenant_token(KEY, "acme", 60, key_name="k1")
    with psycopg.connect(dsn) as conn:
        conn.execute("SET track_functions = 'all'")
        conn.execute("SELECT tenancy.enter_tenant('acme')")
        conn.execute("SELECT tenancy.enter_tenant_token(%s)", (token,))
        conn.execute("SELECT tenancy.active_tenant_id()")
        conn.execute("SELECT tenancy.verify_entry_token_c(%s, false)", (token,))
        called = conn.execute(
            "SELECT funcname, calls FROM pg_stat_xact_user_functions"
            " WHERE schemaname = 'tenancy' ORDER BY 1"
        ).fetchall()
    assert called == [
        ("active_tenant_id_strict_c", 1),
        ("enter_tenant_c", 1),
        ("enter_tenant_token_c", 1),
        ("verify_entry_token_c", 1),
    ]


def test_the_build_is_skipped_cleanly_without_server_headers(tmp_path: Path) -> None:
    """sql/Makefile builds the library only where the server headers are (the
    embedded PostgreSQL 18 of CI has none): without them `make install` plans
    no C build and succeeds in planning the rest."""
    real = shutil.which("pg_config")
    if real is None or shutil.which("make") is None:
        pytest.skip("pg_config or make is not on PATH")
    fake = tmp_path / "pg_config"
    fake.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = "--includedir-server" ]; then echo /nonexistent/server; exit 0; fi\n'
        f'exec {real} "$@"\n'
    )
    fake.chmod(0o755)
    sql_dir = Path(__file__).resolve().parents[2] / "sql"
    without = subprocess.run(
        ["make", "-n", "-C", str(sql_dir), "install", f"PG_CONFIG={fake}"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert without.returncode == 0, without.stderr
    assert "pgtenancy_accel" not in without.stdout
    assert "pgtenancy.control" in without.stdout
    server = subprocess.run([real, "--includedir-server"], capture_output=True, text=True)
    if (Path(server.stdout.strip()) / "postgres.h").is_file():
        with_headers = subprocess.run(
            ["make", "-n", "-C", str(sql_dir), "install", f"PG_CONFIG={real}"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert with_headers.returncode == 0, with_headers.stderr
        assert "pgtenancy_accel" in with_headers.stdout


def _entered_after_suspension(conninfo: str, admin: str, query: str, params: Any) -> Outcome:
    """The application role declares a cursor over an entry, the owner then
    suspends the tenant and commits, and the cursor is fetched: what it gives."""
    with psycopg.connect(conninfo) as conn, conn.transaction():
        conn.execute(f"DECLARE c CURSOR FOR {query}", params)
        with psycopg.connect(admin, autocommit=True) as owner:
            owner.execute("SELECT tenancy.suspend_tenant('acme')")
        try:
            with conn.transaction():
                row = conn.execute("FETCH c").fetchone()
            return ("ok", row is not None)
        except psycopg.Error as exc:
            return ("error", exc.sqlstate)


@pytest.mark.parametrize("token", [False, True])
def test_entry_reads_the_registry_as_the_plpgsql_does(
    pair: Any, dsn: str, plain_dsn: str, token: bool
) -> None:
    """An attack run: the C path read the registry with the calling statement's
    snapshot, so a cursor fetched after the tenant was suspended entered it,
    where the PL/pgSQL (a VOLATILE function: a fresh snapshot per statement)
    refused it. Both refuse it now, with the same SQLSTATE."""
    outcomes = []
    for (conninfo, _ids), admin in zip(pair, (dsn, plain_dsn), strict=True):
        _add_keys(admin)
        if token:
            query, params = "SELECT tenancy.enter_tenant_token(%s)", (_token("acme"),)
        else:
            query, params = "SELECT tenancy.enter_tenant(%s)", ("acme",)
        outcomes.append(_entered_after_suspension(conninfo, admin, query, params))
    assert outcomes[0] == outcomes[1] == ("error", "PT004")


def test_a_nondeterministic_collation_takes_the_plpgsql_path(
    pair: Any, dsn: str, plain_dsn: str
) -> None:
    """An attack run: under a nondeterministic collation (any role may create
    one in pg_temp) the C path's bytewise comparisons differ from the
    PL/pgSQL's; such calls take the PL/pgSQL, so both answer alike, and the
    slug is matched under the registry's own collation ('ACME' is no slug)."""
    for admin in (dsn, plain_dsn):
        _add_keys(admin)
    token = _token("acme")
    cases = [
        ("SELECT tenancy.enter_tenant(%s COLLATE pg_temp.ci)", "acme"),
        ("SELECT tenancy.enter_tenant(%s COLLATE pg_temp.ci)", "ACME"),
        ("SELECT tenancy.enter_tenant_token(%s COLLATE pg_temp.ci)", token),
    ]
    out = []
    for conninfo, ids in pair:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(
                "CREATE COLLATION pg_temp.ci (provider = icu,"
                " locale = 'und-u-ks-level2', deterministic = false)"
            )
            conn.autocommit = False
            out.append([_outcome(conn, q, (arg,), ids) for q, arg in cases])
    fast, slow = out
    assert fast == slow
    assert fast[0][:2] == ("ok", "acme") and fast[0][3] == "acme"
    assert fast[1][:2] == ("error", "PT003")


def test_a_null_key_pad_is_refused_not_a_crash(dsn: str) -> None:
    """An attack run: with an entry key row whose pad is NULL (possible only
    after the owner drops the NOT NULL), the C verifier dereferenced the NULL
    and crashed the backend (and with it every session of the server). It
    refuses the token as the PL/pgSQL does (PT025) and the server stays up."""
    if not installed_accelerator(dsn):
        pytest.skip("the accelerator library pgtenancy_accel is not installed on this server")
    _add_keys(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE tenancy.entry_keys ALTER inner_pad DROP NOT NULL")
        conn.execute(
            "INSERT INTO tenancy.entry_keys (name, inner_pad, outer_pad)"
            " SELECT 'kn', NULL, outer_pad FROM tenancy.entry_keys WHERE name = 'k1'"
        )
        Tenancy(engine_from_dsn(dsn)).create_tenant("acme")
        tok = _token("acme", key_name="kn")
        for fn in (
            "tenancy.verify_entry_token_c(%s, true)",
            "tenancy.verify_entry_token(%s, true)",
        ):
            with pytest.raises(psycopg.Error) as info:
                conn.execute(f"SELECT {fn}", (tok,))
            assert info.value.sqlstate == "PT025"
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_the_verified_token_cache_follows_the_key(dsn: str) -> None:
    """The C verifier skips the hashing for the token it verified last in the
    backend under the same key pads. In one session: a token verifies; its key
    is dropped and added again under the same name with another value: the
    same token is refused (PT025), as the PL/pgSQL refuses it; the old value
    back: accepted again. Each verification also reads the key, so a dropped
    key refuses the token at once."""
    if not installed_accelerator(dsn):
        pytest.skip("the accelerator library pgtenancy_accel is not installed on this server")
    Tenancy(engine_from_dsn(dsn)).create_tenant("acme")
    tok = _token("acme")
    verify = "SELECT tenancy.verify_entry_token_c(%s, true), tenancy.verify_entry_token(%s, true)"
    with (
        psycopg.connect(dsn, autocommit=True) as conn,
        psycopg.connect(dsn, autocommit=True) as owner,
    ):
        owner.execute("SELECT tenancy.add_entry_key('k1', %s)", (KEY,))
        first = conn.execute(verify, (tok, tok)).fetchone()
        assert first is not None and first[0] == first[1] is not None
        # Remembered now: the same token with another MAC (same length) is no hit.
        body, mac = tok.rsplit(".", 1)
        forged = f"{body}.{mac[:-1]}{'0' if mac[-1] != '0' else '1'}"
        for fn in ("verify_entry_token_c", "verify_entry_token"):
            with pytest.raises(psycopg.Error) as info:
                conn.execute(f"SELECT tenancy.{fn}(%s, true)", (forged,))
            assert (info.value.sqlstate, info.value.diag.message_primary) == (
                "PT025",
                "entry token refused: bad signature",
            )
        owner.execute("SELECT tenancy.drop_entry_key('k1')")
        for fn in ("verify_entry_token_c", "verify_entry_token"):
            with pytest.raises(psycopg.Error) as info:
                conn.execute(f"SELECT tenancy.{fn}(%s, true)", (tok,))
            assert info.value.sqlstate == "PT025"
        owner.execute("SELECT tenancy.add_entry_key('k1', %s)", (OTHER_KEY,))
        for fn in ("verify_entry_token_c", "verify_entry_token"):
            with pytest.raises(psycopg.Error) as info:
                conn.execute(f"SELECT tenancy.{fn}(%s, true)", (tok,))
            assert (info.value.sqlstate, info.value.diag.message_primary) == (
                "PT025",
                "entry token refused: bad signature",
            )
        owner.execute("SELECT tenancy.drop_entry_key('k1')")
        owner.execute("SELECT tenancy.add_entry_key('k1', %s)", (KEY,))
        assert conn.execute(verify, (tok, tok)).fetchone() == first
