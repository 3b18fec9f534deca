"""The strict-mode attack suite (issue 13): as the application role
(NOSUPERUSER NOBYPASSRLS, granted with grant_app_role), inside a transaction
entered with a valid token for tenant A, try every route into the other
tenants (schema tenant globex, shared tenant sb, and the other home) and see
nothing of them: every output (rows, COPY data, notices, error messages) is
searched for the other tenants' row markers. After each attack a fresh
transaction with A's token still sees A's rows, and no tenant's data (rows,
sequence values) changed.

Every row body names its tenant (strict_support.marker), so a leak of any
column shows. What strict mode does not cover (side channels: unique
violations, ON CONFLICT, EXPLAIN estimates, pg_stat_activity, the tenant
directory) is listed in the README; the attacks here expect no row data.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from strict_support import SCHEMA_TENANTS, SHARED_TENANTS, StrictWorld, build, marker

from helpers import as_role
from pgtenancy import sign_tenant_token, tenant_connection

HOMES = ("acme", "sa")


@dataclass(frozen=True)
class Attack:
    """One route: statements run in order in A's transaction (stopping at the
    first error). ``expect``: rows the last statement must return, when
    the attack is about a value rather than about leaked text."""

    name: str
    statements: tuple[str, ...]
    expect: list[tuple[Any, ...]] | None = None
    #: A refused INSERT still takes its id from the victim's sequence (nextval
    #: runs before the policy check): documented in the README; rows stay.
    advances_sequence: bool = False


def A(
    name: str,
    *statements: str,
    expect: list[tuple[Any, ...]] | None = None,
    advances_sequence: bool = False,
) -> Attack:
    return Attack(name, statements, expect, advances_sequence)


# {b} = victim schema tenant globex's schema, {b_id} its id; {s_id} = shared
# victim sb's id; {forged}, {expired}: tokens for the victim; {lo}: a large
# object holding globex data, made by the owner.
ATTACKS: tuple[Attack, ...] = (
    # -- names and search_path
    A("qualified name", "SELECT body FROM {b}.invoice"),
    A(
        "search_path set_config",
        "SELECT set_config('search_path', '{b}, public', true)",
        "SELECT body FROM invoice",
    ),
    A("SET LOCAL search_path", "SET LOCAL search_path = {b}, public", "SELECT body FROM invoice"),
    A(
        "session search_path",
        "SELECT set_config('search_path', '{b}', false)",
        "SELECT body FROM invoice",
    ),
    A("join with own rows", "SELECT g.body FROM {b}.invoice AS g LEFT JOIN pg_class ON false"),
    A("system columns", "SELECT ctid::text, xmin::text, body FROM {b}.invoice"),
    A("tablesample", "SELECT body FROM {b}.invoice TABLESAMPLE SYSTEM (100)"),
    A("parallel query", "SET LOCAL force_parallel_mode = on", "SELECT body FROM {b}.invoice"),
    # -- writes
    A("update", "UPDATE {b}.invoice SET body = body || '!' RETURNING body"),
    A("delete", "DELETE FROM {b}.invoice RETURNING body"),
    A(
        "insert",
        "INSERT INTO {b}.invoice (body) VALUES ('planted') RETURNING body",
        advances_sequence=True,
    ),
    A(
        "upsert",
        "INSERT INTO {b}.invoice VALUES (1, 'planted') ON CONFLICT (id) DO UPDATE"
        " SET body = EXCLUDED.body RETURNING body",
    ),
    A("truncate", "TRUNCATE {b}.invoice"),
    A("shared: read by id", "SELECT item FROM orders WHERE tenant_id = '{s_id}'"),
    A("shared: qualified", "SELECT item FROM public.orders"),
    A(
        "shared: update",
        "UPDATE orders SET item = item || '!' WHERE tenant_id = '{s_id}' RETURNING item",
    ),
    A("shared: delete", "DELETE FROM orders WHERE tenant_id = '{s_id}' RETURNING item"),
    A(
        "shared: insert into victim",
        "INSERT INTO orders (tenant_id, item) VALUES ('{s_id}', 'planted')",
    ),
    A("shared: move own rows to victim", "UPDATE orders SET tenant_id = '{s_id}'"),
    # -- every kit setting
    A(
        "app.tenant_id",
        "SELECT set_config('app.tenant_id', '{b_id}', true)",
        "SELECT body FROM {b}.invoice",
    ),
    A(
        "shared: app.tenant_id",
        "SELECT set_config('app.tenant_id', '{s_id}', true)",
        "SELECT item FROM orders",
    ),
    A(
        "app.tenant_id session-wide",
        "SELECT set_config('app.tenant_id', '{s_id}', false)",
        "SELECT item FROM orders",
    ),
    A("SET LOCAL app.tenant_id", "SET LOCAL app.tenant_id = '{s_id}'", "SELECT item FROM orders"),
    A("app.tenant", "SELECT set_config('app.tenant', 'sb', true)", "SELECT item FROM orders"),
    A(
        "app.tenant_token forged",
        "SELECT set_config('app.tenant_token', '{forged}', true)",
        "SELECT set_config('app.tenant_id', '{b_id}', true)",
        "SELECT body FROM {b}.invoice",
    ),
    A(
        "app.tenant_token expired",
        "SELECT set_config('app.tenant_token', '{expired}', true)",
        "SELECT set_config('app.tenant_id', '{b_id}', true)",
        "SELECT body FROM {b}.invoice",
    ),
    A(
        "app.tenant_token cleared",
        "SELECT set_config('app.tenant_token', '', true)",
        "SELECT set_config('app.tenant_id', '{s_id}', true)",
        "SELECT item FROM orders",
    ),
    A(
        "token reset",
        "RESET app.tenant_token",
        "SELECT set_config('app.tenant_id', '{s_id}', true)",
        "SELECT item FROM orders",
    ),
    A(
        "pgtenancy settings",
        "SELECT set_config('pgtenancy.guarding_children', 'on', true),"
        " set_config('pgtenancy.migration_schema', '{b}', true),"
        " set_config('pgtenancy.renaming', 'on', true)",
        "SELECT body FROM {b}.invoice",
    ),
    A("row_security off", "SET LOCAL row_security = off", "SELECT body FROM {b}.invoice"),
    A(
        "savepoint",
        "SAVEPOINT s",
        "SELECT set_config('app.tenant_id', '{s_id}', true)",
        "ROLLBACK TO SAVEPOINT s",
        "SELECT item FROM orders WHERE tenant_id = '{s_id}'",
    ),
    # -- entry functions
    A("enter_tenant inside", "SELECT tenancy.enter_tenant('globex')", "SELECT body FROM invoice"),
    A(
        "shared: enter_tenant inside",
        "SELECT tenancy.enter_tenant('sb')",
        "SELECT item FROM orders",
    ),
    A(
        "enter_tenant_token forged",
        "SELECT tenancy.enter_tenant_token('{forged}')",
        "SELECT body FROM invoice",
    ),
    A(
        "enter_tenant_token expired",
        "SELECT tenancy.enter_tenant_token('{expired}')",
        "SELECT body FROM invoice",
    ),
    A("verifier as an oracle", "SELECT tenancy.verify_entry_token('{forged}', false)"),
    A(
        "schema guard asked directly",
        "SELECT tenancy.strict_schema_guard('{b_id}')",
        expect=[(False,)],
    ),
    # -- functions, views, definer code
    A("view", "SELECT body FROM {b}.invoice_view"),
    A("materialized view", "SELECT bodies FROM {b}.invoice_summary"),
    A("function", "SELECT {b}.invoice_bodies()"),
    A("SECURITY DEFINER function of the tenant", "SELECT {b}.definer_bodies()"),
    A(
        "definer function with the victim's id",
        "SELECT set_config('app.tenant_id', '{b_id}', true)",
        "SELECT {b}.definer_bodies()",
    ),
    A(
        "kit: tenant_info with victim id",
        "SELECT set_config('app.tenant_id', '{s_id}', true)",
        "SELECT * FROM tenancy.tenant_info()",
    ),
    A(
        "kit: tenant_info with victim slug",
        "SELECT set_config('app.tenant', 'sb', true)",
        "SELECT slug FROM tenancy.tenant_info()",
    ),
    A("kit: check_registry", "SELECT * FROM tenancy.check_registry()"),
    A("kit: check_isolation", "SELECT * FROM tenancy.check_isolation()"),
    A("kit: registry", "SELECT * FROM tenancy.tenants"),
    A("kit: keys", "SELECT * FROM tenancy.entry_keys"),
    A("kit: switch strict off", "SELECT tenancy.set_strict_entry(false)"),
    A("kit: add a key", "SELECT tenancy.add_entry_key('mine', decode(repeat('ab', 32), 'hex'))"),
    A("kit: grant_schema", "SELECT tenancy.grant_schema_to_app_roles('{b}')"),
    A("kit: guard off", "SELECT tenancy.strict_unguard_schema('{b}')"),
    A("kit: delete_shared_rows", "SELECT tenancy.delete_shared_rows('{s_id}')"),
    A(
        "DO block",
        "DO $$ BEGIN RAISE EXCEPTION 'leak: %', (SELECT string_agg(body, ',')"
        " FROM {b}.invoice); END $$",
    ),
    A(
        "DO block with id",
        "DO $$ BEGIN PERFORM set_config('app.tenant_id', '{s_id}', true);"
        " RAISE NOTICE 'leak: %', (SELECT string_agg(item, ',') FROM orders); END $$",
    ),
    A("disable RLS", "ALTER TABLE {b}.invoice DISABLE ROW LEVEL SECURITY"),
    A("drop policy", "DROP POLICY tenancy_strict_schema ON {b}.invoice"),
    A("own policy", "CREATE POLICY mine ON {b}.invoice USING (true)"),
    A("set role", "SET ROLE postgres"),
    # -- COPY, cursors, prepared statements, temp objects, large objects
    A("COPY table out", "COPY_OUT COPY {b}.invoice TO STDOUT"),
    A("COPY query out", "COPY_OUT COPY (SELECT body FROM {b}.invoice) TO STDOUT"),
    A("shared: COPY out", "COPY_OUT COPY public.orders TO STDOUT"),
    A("COPY in", "COPY_IN COPY {b}.invoice (body) FROM STDIN", advances_sequence=True),
    A("cursor", "DECLARE c CURSOR FOR SELECT body FROM {b}.invoice", "FETCH ALL FROM c"),
    A(
        "scroll cursor",
        "DECLARE c SCROLL CURSOR FOR SELECT item FROM orders WHERE tenant_id = '{s_id}'",
        "SELECT set_config('app.tenant_id', '{s_id}', true)",
        "FETCH ALL FROM c",
    ),
    A("prepared statement", "PREPARE p AS SELECT body FROM {b}.invoice", "EXECUTE p"),
    A(
        "prepared then id",
        "PREPARE q AS SELECT item FROM orders",
        "SELECT set_config('app.tenant_id', '{s_id}', true)",
        "EXECUTE q",
    ),
    A("temp view", "CREATE TEMP VIEW tv AS SELECT body FROM {b}.invoice", "SELECT * FROM tv"),
    A(
        "temp table copy",
        "CREATE TEMP TABLE tt AS SELECT body FROM {b}.invoice",
        "SELECT * FROM tt",
    ),
    A(
        "temp table shadowing",
        "CREATE TEMP TABLE orders (item text)",
        "INSERT INTO pg_temp.orders SELECT item FROM public.orders WHERE tenant_id = '{s_id}'",
        "SELECT * FROM pg_temp.orders",
    ),
    A(
        "temp function",
        "CREATE FUNCTION pg_temp.f() RETURNS SETOF text LANGUAGE sql"
        " AS 'SELECT body FROM {b}.invoice'",
        "SELECT pg_temp.f()",
    ),
    A("large object", "SELECT convert_from(lo_get({lo}), 'UTF8')"),
    A("large object open", "SELECT lo_open({lo}, 262144)"),
    # -- sequences and statistics
    A("sequence value", "SELECT last_value FROM {b}.invoice_id_seq"),
    A("sequence setval", "SELECT setval('{b}.invoice_id_seq', 1)"),
    A(
        "column statistics",
        "SELECT most_common_vals::text FROM pg_stats WHERE schemaname = '{b}'"
        " OR tablename = 'orders'",
    ),
    A(
        "explain analyze",
        "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF)"
        " SELECT body FROM {b}.invoice WHERE body LIKE '%ROW%'",
    ),
    A("row lock", "SELECT body FROM {b}.invoice FOR UPDATE"),
    A(
        "merge",
        "MERGE INTO {b}.invoice AS t USING (SELECT 1 AS id) AS s ON t.id = s.id"
        " WHEN MATCHED THEN UPDATE SET body = 'planted'",
    ),
    A("writable CTE", "WITH d AS (DELETE FROM {b}.invoice RETURNING body) SELECT * FROM d"),
    A(
        "held cursor",
        "DECLARE h CURSOR WITH HOLD FOR SELECT body FROM {b}.invoice",
        "FETCH ALL FROM h",
    ),
    A("outbox table", "SELECT * FROM tenancy.events"),
    A("outbox function", "SELECT * FROM tenancy.next_events('spy', 100)"),
    A("dblink", "CREATE EXTENSION dblink"),
    A("server files", "SELECT pg_read_file('base')"),
)


@pytest.fixture
def world(dsn: str, app_role: str) -> StrictWorld:
    built = build(dsn, app_role, as_role(dsn, app_role), definer=True)
    with psycopg.connect(dsn, autocommit=True) as owner:
        row = owner.execute("SELECT lo_from_bytea(0, convert_to(%s, 'UTF8'))", (marker("globex"),))
        lo = row.fetchone()
        assert lo is not None
        built.ids["lo"] = str(lo[0])
    return built


def _params(world: StrictWorld) -> dict[str, str]:
    expired = sign_tenant_token(world.key, "globex", 0.001, key_name="k1")
    time.sleep(0.01)
    return {
        "b": "tenant_globex",
        "b_id": world.ids["globex"],
        "s_id": world.ids["sb"],
        "forged": sign_tenant_token(
            b"attacker-made-key-of-32-bytes!!!", "globex", 60, key_name="k1"
        ),
        "expired": expired,
        "lo": world.ids["lo"],
    }


def _run(conn: psycopg.Connection[Any], attack: Attack, params: dict[str, str]) -> tuple[str, Any]:
    """Run the attack in the open transaction; everything it saw, as text, and
    the last statement's rows."""
    seen: list[str] = []
    conn.add_notice_handler(lambda diag: seen.append(str(diag.message_primary)))
    rows: Any = None
    try:
        for statement in attack.statements:
            text = statement.format(**params)
            if text.startswith("COPY_OUT "):
                with conn.cursor().copy(text[len("COPY_OUT ") :]) as copy:
                    seen.append(b"".join(bytes(chunk) for chunk in copy).decode())
                continue
            if text.startswith("COPY_IN "):
                with conn.cursor().copy(text[len("COPY_IN ") :]) as copy:
                    copy.write(b"planted\n")
                continue
            cur = conn.execute(text)
            rows = cur.fetchall() if cur.description else cur.rowcount
            seen.append(repr(rows))
    except psycopg.Error as exc:
        diag = exc.diag
        seen.append(f"ERROR {exc.sqlstate} {exc} {diag.message_detail} {diag.context}")
        rows = exc.sqlstate
    return "\n".join(seen), rows


def _own_rows(conn: psycopg.Connection[Any], home: str) -> list[tuple[Any, ...]]:
    if home in SCHEMA_TENANTS:
        return conn.execute("SELECT body FROM invoice ORDER BY id").fetchall()
    return conn.execute("SELECT item FROM orders ORDER BY id").fetchall()


@pytest.mark.parametrize("home", HOMES)
def test_no_route_leads_into_another_tenant(world: StrictWorld, home: str) -> None:
    params = _params(world)
    others = [marker(s) for s in (*SCHEMA_TENANTS, *SHARED_TENANTS) if s != home]
    before = world.data()
    home_token = sign_tenant_token(world.key, home, 600, "k1")
    with (
        psycopg.connect(world.app_dsn, autocommit=True) as conn,
        tenant_connection(conn, token=home_token) as c,
    ):
        own = _own_rows(c, home)
    assert own and all(marker(home) in str(r) for r in own)
    failures: list[str] = []
    for attack in ATTACKS:
        tok = sign_tenant_token(world.key, home, 600, key_name="k1")
        with psycopg.connect(world.app_dsn, autocommit=True) as conn:
            conn.execute("BEGIN")
            conn.execute("SELECT tenancy.enter_tenant_token(%s)", (tok,))
            seen, rows = _run(conn, attack, params)
            conn.execute("ROLLBACK")
            leaked = [m for m in others if m in seen]
            if leaked:
                failures.append(f"{attack.name}: saw {leaked}: {seen[:300]}")
            if attack.expect is not None and rows != attack.expect:
                failures.append(f"{attack.name}: returned {rows!r}, expected {attack.expect!r}")
            # A's rows are still A's, on the same connection.
            with tenant_connection(conn, token=tok) as c:
                if _own_rows(c, home) != own:
                    failures.append(f"{attack.name}: the home tenant's rows changed or vanished")
        after = world.data()
        rows_before, seqs_before, shared_before = before
        rows_after, seqs_after, shared_after = after
        if (rows_after, shared_after) != (rows_before, shared_before):
            failures.append(f"{attack.name}: tenant rows changed")
        if seqs_after != seqs_before and not attack.advances_sequence:
            failures.append(f"{attack.name}: a tenant's sequence changed")
        before = after
    assert failures == [], "\n".join(failures)


def test_attacks_do_reach_the_victim_without_strict_mode(dsn: str, app_role: str) -> None:
    """The suite can fail: with strict entry off (the default trust model),
    the same routes do open the other tenants' rows."""
    world = build(dsn, app_role, as_role(dsn, app_role), strict=False)
    world.ids["lo"] = "0"
    params = _params(world)
    opened: list[str] = []
    for name in ("qualified name", "shared: app.tenant_id", "enter_tenant inside"):
        attack = next(a for a in ATTACKS if a.name == name)
        with (
            psycopg.connect(world.app_dsn, autocommit=True) as conn,
            tenant_connection(conn, "acme") as c,
        ):
            seen, _ = _run(c, attack, params)
        if marker("globex") in seen or marker("sb") in seen:
            opened.append(name)
    assert opened == ["qualified name", "shared: app.tenant_id", "enter_tenant inside"]
