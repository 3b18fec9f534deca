"""Shared tables guarded by RLS, hybrid tenants, fail-closed, and the app role."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, cast

import psycopg
import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import DBAPIError

if TYPE_CHECKING:
    from sqlalchemy import CursorResult

from helpers import as_role, outbox
from pgtenancy import (
    CannotGuardTable,
    Tenancy,
    UnsafeAppRole,
    tenant_session,
)

SQL = Callable[..., list[tuple[Any, ...]]]


@pytest.fixture
def app_engine(dsn: str, app_role: str, hybrid: dict[str, str]) -> Iterator[Engine]:
    url = as_role(dsn, app_role)
    eng = create_engine(
        "postgresql+psycopg://", creator=lambda: psycopg.connect(url), pool_size=2, max_overflow=0
    )
    yield eng
    eng.dispose()


def test_enable_rls_builds_the_guard(
    tenancy: Tenancy, sql: SQL, hybrid: dict[str, str], app_engine: Engine
) -> None:
    assert sql(
        "SELECT relrowsecurity, relforcerowsecurity FROM pg_class "
        "WHERE oid = 'public.orders'::regclass"
    ) == [(True, True)]
    ((qual, check),) = sql(
        "SELECT pg_get_expr(polqual, polrelid), pg_get_expr(polwithcheck, polrelid) "
        "FROM pg_policy WHERE polrelid = 'public.orders'::regclass "
        "AND polname = 'tenancy_tenant_isolation' AND NOT polpermissive"
    )
    assert qual == check == "(tenant_id = ( SELECT tenancy.active_tenant_id() AS active_tenant_id))"
    assert sql(
        "SELECT polname, polpermissive, pg_get_expr(polqual, polrelid) FROM pg_policy "
        "WHERE polrelid = 'public.orders'::regclass ORDER BY 1"
    ) == [
        ("tenancy_tenant_isolation", False, qual),
        ("tenancy_tenant_rows", True, "true"),
    ]
    assert sql(
        "SELECT count(*) FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
        "AND a.attnum = i.indkey[0] WHERE i.indrelid = 'public.orders'::regclass "
        "AND a.attname = 'tenant_id'"
    ) == [(1,)]
    # Idempotent: nothing doubles.
    tenancy.enable_rls("public.orders")
    assert sql("SELECT count(*) FROM pg_policy WHERE polrelid = 'public.orders'::regclass") == [
        (2,)
    ]
    assert sql("SELECT count(*) FROM pg_index WHERE indrelid = 'public.orders'::regclass") == [(2,)]
    assert [(g.table, g.tenant_column) for g in tenancy.guarded_tables()] == [
        ("orders", "tenant_id")
    ]
    # For the application role the planner evaluates the tenant once (InitPlan).
    with tenant_session(app_engine, "acme") as s:
        plan = "\n".join(s.execute(text("EXPLAIN SELECT * FROM orders")).scalars())
    assert "InitPlan" in plan


def test_shared_tenants_see_only_their_rows(app_engine: Engine, hybrid: dict[str, str]) -> None:
    with tenant_session(app_engine, "acme") as s:
        s.execute(text("INSERT INTO orders (item) VALUES ('anvil'), ('rocket')"))
        s.commit()
    with tenant_session(app_engine, "globex") as s:
        s.execute(text("INSERT INTO orders (item) VALUES ('hammock')"))
        s.commit()
        assert s.execute(text("SELECT item FROM orders")).scalars().all() == ["hammock"]
        # Another tenant's rows can be neither changed nor deleted.
        changed = s.execute(text("UPDATE orders SET item = 'x' WHERE item = 'anvil'"))
        assert cast("CursorResult[Any]", changed).rowcount == 0
        deleted = s.execute(text("DELETE FROM orders WHERE item = 'rocket'"))
        assert cast("CursorResult[Any]", deleted).rowcount == 0
        s.commit()
    with tenant_session(app_engine, "acme") as s:
        assert sorted(s.execute(text("SELECT item FROM orders")).scalars()) == ["anvil", "rocket"]
        tid = s.execute(text("SELECT DISTINCT tenant_id::text FROM orders")).scalar()
        assert tid == hybrid["acme"]
    # The schema tenant shares the engine and sees its own schema; no shared rows are its.
    with tenant_session(app_engine, "initech") as s:
        s.execute(text("INSERT INTO note VALUES (1, 'memo')"))
        assert s.execute(text("SELECT count(*) FROM orders")).scalar() == 0
        s.commit()


def test_a_tenant_cannot_write_rows_of_another(app_engine: Engine, hybrid: dict[str, str]) -> None:
    with tenant_session(app_engine, "acme") as s:
        with pytest.raises(DBAPIError, match="row-level security"):
            s.execute(
                text("INSERT INTO orders (item, tenant_id) VALUES ('stolen', :t)"),
                {"t": hybrid["globex"]},
            )
        s.rollback()
        s.execute(text("INSERT INTO orders (item) VALUES ('anvil')"))
        with pytest.raises(DBAPIError, match="row-level security"):
            s.execute(text("UPDATE orders SET tenant_id = :t"), {"t": hybrid["globex"]})
        s.rollback()
    with tenant_session(app_engine, "globex") as s:
        assert s.execute(text("SELECT count(*) FROM orders")).scalar() == 0


def test_no_tenant_sees_nothing_and_cannot_write(
    app_engine: Engine, hybrid: dict[str, str], sql: SQL
) -> None:
    with tenant_session(app_engine, "acme") as s:
        s.execute(text("INSERT INTO orders (item) VALUES ('anvil')"))
        s.commit()
    with app_engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM orders")).scalar() == 0
        with pytest.raises(DBAPIError) as info:
            conn.execute(text("INSERT INTO orders (item) VALUES ('orphan')"))
        assert info.value.orig is not None
        assert getattr(info.value.orig, "sqlstate", None) == "PT012"
        assert "no tenant in this transaction" in str(info.value)
        conn.rollback()
        for statement in ("UPDATE orders SET item = 'x'", "DELETE FROM orders"):
            with pytest.raises(DBAPIError, match="no tenant in this transaction") as info:
                conn.execute(text(statement))
            assert getattr(info.value.orig, "sqlstate", None) == "PT012"
            conn.rollback()
    assert sql("SELECT count(*) FROM public.orders") == [(1,)]


def test_destroying_a_shared_tenant_deletes_its_rows_in_the_same_transaction(
    app_engine: Engine, tenancy: Tenancy, sql: SQL, hybrid: dict[str, str], dsn: str
) -> None:
    for slug in ("acme", "globex"):
        with tenant_session(app_engine, slug) as s:
            s.execute(
                text("INSERT INTO orders (item) SELECT 'x' || g FROM generate_series(1, 5) g")
            )
            s.commit()
    tenancy.drop_tenant("acme")  # soft: rows stay
    assert sql("SELECT count(*) FROM public.orders WHERE tenant_id = %s", (hybrid["acme"],)) == [
        (5,)
    ]
    tenancy.drop_tenant("acme", destroy_data=True)
    assert sql("SELECT count(*) FROM public.orders WHERE tenant_id = %s", (hybrid["acme"],)) == [
        (0,)
    ]
    assert sql("SELECT count(*) FROM public.orders WHERE tenant_id = %s", (hybrid["globex"],)) == [
        (5,)
    ]
    assert outbox(dsn)[-1] == ("tenant_deleted", "acme")
    # No tenant setting leaks out of the destroying transaction.
    assert sql("SELECT tenancy.current_tenant_id()") == [(None,)]


def test_shared_tenant_has_no_schema_and_skips_migrations(
    tenancy: Tenancy, sql: SQL, hybrid: dict[str, str]
) -> None:
    acme = tenancy.get_tenant("acme")
    assert (acme.isolation, acme.schema_name, acme.migration_version) == ("shared", None, None)
    assert tenancy.migrate_tenant("acme") == acme
    assert sql("SELECT count(*) FROM pg_namespace WHERE nspname = 'tenant_acme'") == [(0,)]
    with pytest.raises(ValueError, match="isolation"):
        tenancy.create_tenant("x", isolation="database")  # type: ignore[arg-type]
    with pytest.raises(psycopg.Error) as info:
        sql("SELECT tenancy.create_tenant('y', '{}', 'database')")
    assert info.value.sqlstate == "22023"


def test_existing_rows_become_invisible_and_disable_undoes(tenancy: Tenancy, sql: SQL) -> None:
    sql("CREATE TABLE public.legacy (id int PRIMARY KEY)")
    sql("INSERT INTO public.legacy VALUES (1), (2)")
    tenancy.enable_rls("public.legacy", "owner_id")
    assert sql("SELECT count(*) FROM public.legacy WHERE owner_id IS NULL") == [(2,)]
    assert sql(
        "SELECT attnotnull FROM pg_attribute WHERE attrelid = 'public.legacy'::regclass "
        "AND attname = 'owner_id'"
    ) == [(False,)]
    with pytest.raises(CannotGuardTable):
        tenancy.enable_rls("public.legacy", "tenant_id")  # already guarded on owner_id
    assert tenancy.disable_rls("public.legacy") is True
    assert tenancy.disable_rls("public.legacy") is False
    assert sql(
        "SELECT relrowsecurity, relforcerowsecurity FROM pg_class "
        "WHERE oid = 'public.legacy'::regclass"
    ) == [(False, False)]
    assert sql("SELECT count(*) FROM pg_policy WHERE polrelid = 'public.legacy'::regclass") == [
        (0,)
    ]
    assert sql(
        "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'public.legacy'::regclass AND NOT tgisinternal"
    ) == [(0,)]
    assert tenancy.guarded_tables() == []


def test_enable_rls_refuses_what_it_cannot_guard(tenancy: Tenancy, sql: SQL) -> None:
    tenancy.create_tenant("acme")
    sql("CREATE TABLE tenant_acme.t (id int)")
    sql("CREATE TABLE public.badcol (tenant_id text)")
    sql("CREATE VIEW public.v AS SELECT 1 AS x")
    for table, column in (
        ("tenant_acme.t", "tenant_id"),
        ("public.badcol", "tenant_id"),
        ("public.v", "tenant_id"),
        ("tenancy.events", "tenant_id"),
    ):
        with pytest.raises(CannotGuardTable):
            tenancy.enable_rls(table, column)
    assert tenancy.guarded_tables() == []
    assert sql("SELECT count(*) FROM pg_policy") == [(0,)]


def test_grant_app_role_refuses_unsafe_roles(tenancy: Tenancy, dsn: str, sql: SQL) -> None:
    import uuid

    name = f"pgtenancy_bad_{uuid.uuid4().hex[:8]}"
    sql(f"CREATE ROLE {name} BYPASSRLS")
    try:
        with pytest.raises(UnsafeAppRole, match="BYPASSRLS"):
            tenancy.grant_app_role(name)
        sql(f"ALTER ROLE {name} NOBYPASSRLS")
        sql("CREATE TABLE public.owned (id int)")
        sql(f"ALTER TABLE public.owned OWNER TO {name}")
        sql("SELECT tenancy.enable_rls('public.owned')")
        with pytest.raises(UnsafeAppRole, match="owns guarded table"):
            tenancy.grant_app_role(name)
        assert sql("SELECT count(*) FROM tenancy.app_roles") == [(0,)]
    finally:
        sql(f"DROP OWNED BY {name}")
        sql(f"DROP ROLE {name}")
    with pytest.raises(Exception, match="does not exist"):
        tenancy.grant_app_role("no_such_role_at_all")


def test_app_role_gets_new_tenants_and_migrations(
    tenancy: Tenancy, app_role: str, dsn: str, hybrid: dict[str, str]
) -> None:
    tenancy.create_tenant("hooli")
    tenancy.add_migration("0002", "CREATE TABLE task (id serial PRIMARY KEY, title text)")
    tenancy.migrate_tenants()
    with psycopg.connect(as_role(dsn, app_role)) as conn:
        for slug in ("hooli", "initech"):
            conn.execute("SELECT tenancy.enter_tenant(%s)", (slug,))
            conn.execute("INSERT INTO task (title) VALUES ('x')")
            assert conn.execute("SELECT count(*) FROM task").fetchone() == (1,)
            conn.commit()
        # The app role owns nothing and cannot touch the registry.
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("UPDATE tenancy.tenants SET status = 'active'")
        conn.rollback()
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT tenancy.create_tenant('evil')")


def test_app_role_cannot_borrow_the_registry_triggers(
    app_role: str, dsn: str, sql: SQL, hybrid: dict[str, str]
) -> None:
    with psycopg.connect(as_role(dsn, app_role)) as conn:
        conn.execute(
            "CREATE TEMP TABLE evil (id uuid, slug text, schema_name text, status text, "
            "isolation text, metadata jsonb, created_at timestamptz, updated_at timestamptz, "
            "migration_version text)"
        )
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(
                "CREATE TRIGGER x AFTER DELETE ON evil FOR EACH ROW "
                "EXECUTE FUNCTION tenancy.tenants_after_change()"
            )
    # Even the owner cannot run them on another table.
    sql("CREATE TABLE public.fake (LIKE tenancy.tenants)")
    sql(
        "CREATE TRIGGER x AFTER DELETE ON public.fake FOR EACH ROW "
        "EXECUTE FUNCTION tenancy.tenants_after_change()"
    )
    sql("INSERT INTO public.fake SELECT * FROM tenancy.tenants WHERE slug = 'initech'")
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match=r"tenancy\.tenants only"):
        sql("DELETE FROM public.fake")
    assert sql("SELECT count(*) FROM pg_namespace WHERE nspname = 'tenant_initech'") == [(1,)]


def test_app_role_cannot_touch_the_outbox(app_role: str, dsn: str, tenancy: Tenancy) -> None:
    tenancy.create_tenant("acme")
    with psycopg.connect(as_role(dsn, app_role), autocommit=True) as conn:
        for call in (
            "SELECT tenancy.register_consumer('billing')",
            "SELECT * FROM tenancy.next_events('billing', 10)",
            "SELECT tenancy.advance_consumer('billing', '999999'::xid8, 0)",
            "SELECT * FROM tenancy.events",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(call)


def test_another_permissive_policy_cannot_open_other_tenants(
    app_engine: Engine, sql: SQL, hybrid: dict[str, str]
) -> None:
    with tenant_session(app_engine, "acme") as s:
        s.execute(text("INSERT INTO orders (item) VALUES ('anvil')"))
        s.commit()
    sql("CREATE POLICY reporting ON public.orders FOR SELECT USING (true)")
    with tenant_session(app_engine, "globex") as s:
        assert s.execute(text("SELECT count(*) FROM orders")).scalar() == 0
    with app_engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM orders")).scalar() == 0


def test_a_dropped_guarded_table_does_not_break_the_kit(
    tenancy: Tenancy, sql: SQL, app_role: str, hybrid: dict[str, str]
) -> None:
    sql("CREATE TABLE public.gone (id int)")
    tenancy.enable_rls("public.gone")
    sql("DROP TABLE public.gone")
    tenancy.drop_tenant("acme", destroy_data=True)
    tenancy.grant_app_role(app_role)
    assert [g.table for g in tenancy.guarded_tables()] == ["orders"]


def test_app_role_cannot_read_the_registry(app_role: str, dsn: str, hybrid: dict[str, str]) -> None:
    with psycopg.connect(as_role(dsn, app_role)) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT slug, metadata FROM tenancy.tenants")
        conn.rollback()
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT * FROM tenancy.get_tenant('acme')")
        conn.rollback()
        assert conn.execute("SELECT tenancy.enter_tenant('acme')::text").fetchone() == (
            hybrid["acme"],
        )
