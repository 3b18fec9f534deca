"""The gaps an attack run found (issue 13), each reproduced as the attack, as
the application role (NOSUPERUSER NOBYPASSRLS, granted with grant_app_role),
and shown refused."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from psycopg import errors as pgerrors
from psycopg.conninfo import make_conninfo
from psycopg_pool import ConnectionPool

from conftest import as_role, outbox
from pgtenancy import (
    CannotGuardTable,
    CannotTrackTable,
    InvalidTenantMetadata,
    Tenancy,
    install,
    install_sqlalchemy_reset,
    pool_reset,
    tenant_connection,
    uninstall,
)
from pgtenancy.errors import translate

SQL = Callable[..., list[tuple[Any, ...]]]


@pytest.fixture
def schema_tenants(tenancy: Tenancy, sql: SQL) -> None:
    tenancy.add_migration(
        "0001", "CREATE TABLE invoice (id int PRIMARY KEY, body text); CREATE SEQUENCE invoice_no"
    )
    for slug in ("acme", "globex"):
        tenancy.create_tenant(slug)
        sql(f"INSERT INTO tenant_{slug}.invoice VALUES (1, '{slug} invoice')")


# -- pg_temp last, and pooled connections reset ------------------------------


def test_temp_table_of_one_request_is_not_read_by_the_next(
    schema_tenants: None, dsn: str, app_role: str
) -> None:
    with psycopg.connect(as_role(dsn, app_role), autocommit=True) as conn:
        with tenant_connection(conn, "acme") as c:
            c.execute("CREATE TEMP TABLE invoice (id int, body text)")
            c.execute("INSERT INTO pg_temp.invoice VALUES (1, 'acme secret')")
        with tenant_connection(conn, "globex") as c:
            rows = c.execute("SELECT body FROM invoice").fetchall()
        assert rows == [("globex invoice",)]
        # The temp table is still there (pool_reset removes it), just never first.
        assert conn.execute("SELECT body FROM pg_temp.invoice").fetchall() == [("acme secret",)]


def _lastval(conn: psycopg.Connection[Any]) -> Any:
    """What lastval() tells this session (None: no sequence used in it)."""
    try:
        with conn.transaction():
            return conn.execute("SELECT lastval()").fetchone()
    except psycopg.errors.ObjectNotInPrerequisiteState:
        return None


def _leftovers(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    return {
        "lastval": _lastval(conn),
        "temp": conn.execute(
            "SELECT count(*) FROM pg_class WHERE relpersistence = 't' AND relkind = 'r'"
            " AND pg_table_is_visible(oid)"
        ).fetchone(),
        "cursors": conn.execute("SELECT count(*) FROM pg_cursors").fetchone(),
        "prepared": conn.execute(
            "SELECT count(*) FROM pg_prepared_statements WHERE NOT from_sql OR from_sql"
            " AND name = 'steal'"
        ).fetchone(),
        "setting": conn.execute(
            "SELECT nullif(current_setting('app.tenant_id', true), '')"
        ).fetchone(),
        "work_mem": conn.execute("SHOW work_mem").fetchone(),
        "path": conn.execute("SHOW search_path").fetchone(),
    }


def _dirty(c: psycopg.Connection[Any]) -> None:
    c.execute("CREATE TEMP TABLE invoice (id int, body text)")
    c.execute("INSERT INTO pg_temp.invoice VALUES (1, 'acme secret')")
    c.execute("DECLARE held CURSOR WITH HOLD FOR SELECT body FROM pg_temp.invoice")
    c.execute("PREPARE steal AS SELECT body FROM pg_temp.invoice")
    c.execute("SELECT set_config('app.tenant_id', tenancy.current_tenant_id()::text, false)")
    c.execute("SET SESSION work_mem = '7MB'")
    c.execute("SELECT set_config('search_path', 'tenant_acme, public', false)")
    c.execute("SELECT nextval('tenant_acme.invoice_no')")  # currval/lastval: acme's last id


def test_psycopg_pool_reset_leaves_nothing_for_the_next_checkout(
    schema_tenants: None, dsn: str, app_role: str
) -> None:
    with ConnectionPool(
        as_role(dsn, app_role), min_size=1, max_size=1, reset=pool_reset, open=True
    ) as pool:
        with pool.connection() as conn:
            clean = _leftovers(conn)
        with tenant_connection(pool, "acme") as c:
            _dirty(c)
        with pool.connection() as conn:
            assert _leftovers(conn) == clean
            assert clean["temp"] == (0,) and clean["cursors"] == (0,)
        with tenant_connection(pool, "globex") as c:
            assert c.execute("SELECT body FROM invoice").fetchall() == [("globex invoice",)]


def test_pool_reset_keeps_psycopg_prepared_statements_working(
    schema_tenants: None, dsn: str, app_role: str
) -> None:
    """DISCARD ALL drops the server's prepared statements on every return:
    psycopg must forget them each time (it notices only the first DISCARD)."""
    from sqlalchemy import create_engine, text

    from pgtenancy import tenant_session

    with ConnectionPool(
        as_role(dsn, app_role), min_size=1, max_size=1, reset=pool_reset, open=True
    ) as pool:
        for i in range(20):
            with tenant_connection(pool, "acme") as c:
                assert c.execute("SELECT id FROM invoice WHERE id = %s", (1,)).fetchone() == (1,), i
    engine = create_engine(
        "postgresql+psycopg://",
        creator=lambda: psycopg.connect(as_role(dsn, app_role)),
        pool_size=1,
        max_overflow=0,
    )
    install_sqlalchemy_reset(engine)
    try:
        for i in range(20):
            with tenant_session(engine, "globex") as session:
                got = session.execute(text("SELECT id FROM invoice WHERE id = :i"), {"i": 1})
                assert got.all() == [(1,)], i
    finally:
        engine.dispose()


def test_psycopg_pool_without_reset_keeps_the_leftovers(
    schema_tenants: None, dsn: str, app_role: str
) -> None:
    """The control: without the hook the attack's state survives (so the test above can fail)."""
    with ConnectionPool(as_role(dsn, app_role), min_size=1, max_size=1, open=True) as pool:
        with tenant_connection(pool, "acme") as c:
            _dirty(c)
        with pool.connection() as conn:
            left = _leftovers(conn)
    assert left["temp"] == (1,) and left["cursors"] == (1,) and left["work_mem"] == ("7MB",)
    assert left["lastval"] == (1,)


def test_sqlalchemy_reset_leaves_nothing_for_the_next_checkout(
    schema_tenants: None, dsn: str, app_role: str
) -> None:
    from sqlalchemy import create_engine, text

    from pgtenancy import tenant_session

    engine = create_engine(
        "postgresql+psycopg://",
        creator=lambda: psycopg.connect(as_role(dsn, app_role)),
        pool_size=1,
        max_overflow=0,
    )
    install_sqlalchemy_reset(engine)
    install_sqlalchemy_reset(engine)  # once only
    try:
        with engine.connect() as c0:
            clean = _leftovers(c0.connection.dbapi_connection)  # type: ignore[arg-type]
        with tenant_session(engine, "acme") as session:
            raw = session.connection().connection.dbapi_connection
            assert isinstance(raw, psycopg.Connection)
            _dirty(raw)
        with engine.connect() as c1:
            assert _leftovers(c1.connection.dbapi_connection) == clean
        with tenant_session(engine, "globex") as session:
            assert session.execute(text("SELECT body FROM invoice")).all() == [("globex invoice",)]
    finally:
        engine.dispose()


# -- suspended and deleted tenants unreachable ---------------------------------


def test_suspended_and_deleted_schema_tenants_are_unreachable_by_any_route(
    schema_tenants: None, tenancy: Tenancy, dsn: str, app_role: str
) -> None:
    routes = [
        "SELECT body FROM tenant_acme.invoice",
        "UPDATE tenant_acme.invoice SET body = 'x'",
        "INSERT INTO tenant_acme.invoice VALUES (2, 'x')",
    ]

    def attempt() -> list[str]:
        outcomes = []
        with psycopg.connect(as_role(dsn, app_role)) as conn:
            for q in routes:
                try:
                    conn.execute(q)
                    outcomes.append("ok")
                except pgerrors.InsufficientPrivilege:
                    outcomes.append("denied")
                conn.rollback()
            try:
                conn.execute("SELECT set_config('search_path', 'tenant_acme', true)")
                conn.execute("SELECT body FROM invoice")
                outcomes.append("ok")
            except (pgerrors.InsufficientPrivilege, pgerrors.UndefinedTable):
                outcomes.append("denied")
        return outcomes

    assert attempt() == ["ok"] * 4
    tenancy.suspend_tenant("acme")
    assert attempt() == ["denied"] * 4
    tenancy.resume_tenant("acme")
    assert attempt() == ["ok"] * 4
    # A migration of a suspended tenant does not give the grants back.
    tenancy.suspend_tenant("acme")
    tenancy.add_migration("0002", "CREATE TABLE extra (id int)")
    tenancy.migrate_tenant("acme")
    assert attempt() == ["denied"] * 4
    with (
        psycopg.connect(as_role(dsn, app_role)) as conn,
        pytest.raises(pgerrors.InsufficientPrivilege),
    ):
        conn.execute("SELECT * FROM tenant_acme.extra")
    tenancy.resume_tenant("acme")
    tenancy.drop_tenant("acme")
    assert attempt() == ["denied"] * 4
    # globex is untouched throughout.
    with psycopg.connect(as_role(dsn, app_role)) as conn:
        assert conn.execute("SELECT body FROM tenant_globex.invoice").fetchall() == [
            ("globex invoice",)
        ]


def test_grant_app_role_later_skips_suspended_schemas(
    schema_tenants: None, tenancy: Tenancy, dsn: str, sql: SQL
) -> None:
    tenancy.suspend_tenant("acme")
    sql("CREATE ROLE pgtenancy_late_app LOGIN NOSUPERUSER NOBYPASSRLS")
    try:
        sql("SELECT tenancy.grant_app_role('pgtenancy_late_app')")
        with psycopg.connect(as_role(dsn, "pgtenancy_late_app")) as conn:
            with pytest.raises(pgerrors.InsufficientPrivilege):
                conn.execute("SELECT * FROM tenant_acme.invoice")
            conn.rollback()
            assert conn.execute("SELECT count(*) FROM tenant_globex.invoice").fetchone() == (1,)
    finally:
        sql("DROP OWNED BY pgtenancy_late_app")
        sql("DROP ROLE pgtenancy_late_app")


def test_suspended_shared_tenant_rows_are_unreachable_with_a_hand_set_tenant(
    hybrid: dict[str, str], tenancy: Tenancy, dsn: str, app_role: str
) -> None:
    with psycopg.connect(as_role(dsn, app_role)) as conn, tenant_connection(conn, "acme") as c:
        c.execute("INSERT INTO orders (item) VALUES ('acme order')")
    tenancy.suspend_tenant("acme")
    with psycopg.connect(as_role(dsn, app_role)) as conn:
        conn.execute("SELECT set_config('app.tenant_id', %s, false)", (hybrid["acme"],))
        assert conn.execute("SELECT item FROM public.orders").fetchall() == []
        assert conn.execute("UPDATE public.orders SET item = 'x'").rowcount == 0
        with pytest.raises(pgerrors.InsufficientPrivilege):  # WITH CHECK: new row violates policy
            conn.execute(
                "INSERT INTO public.orders (item, tenant_id) VALUES ('x', %s)", (hybrid["acme"],)
            )
        conn.rollback()
    tenancy.resume_tenant("acme")
    with psycopg.connect(as_role(dsn, app_role)) as conn:
        conn.execute("SELECT set_config('app.tenant_id', %s, false)", (hybrid["acme"],))
        assert conn.execute("SELECT item FROM public.orders").fetchall() == [("acme order",)]
    tenancy.drop_tenant("acme")
    with psycopg.connect(as_role(dsn, app_role)) as conn:
        conn.execute("SELECT set_config('app.tenant_id', %s, false)", (hybrid["acme"],))
        assert conn.execute("SELECT item FROM public.orders").fetchall() == []


def test_destroying_a_shared_tenant_still_deletes_its_rows(
    hybrid: dict[str, str], tenancy: Tenancy, dsn: str, app_role: str, sql: SQL
) -> None:
    with psycopg.connect(as_role(dsn, app_role)) as conn, tenant_connection(conn, "acme") as c:
        c.execute("INSERT INTO orders (item) VALUES ('acme order')")
    tenancy.suspend_tenant("acme")
    tenancy.drop_tenant("acme", destroy_data=True)
    sql("SET row_security = off")
    assert sql("SELECT count(*) FROM public.orders WHERE tenant_id = %s", (hybrid["acme"],)) == [
        (0,)
    ]


# -- partitions and inheritance children ---------------------------------------


def _rows_seen(dsn: str, role: str, slug: str, table: str, write: str | None = None) -> list[str]:
    """The items ``role`` sees in ``table`` as tenant ``slug``; first, with
    ``write``, it inserts a row (id 1, item ``slug``) into that table."""
    with psycopg.connect(as_role(dsn, role)) as conn, tenant_connection(conn, slug) as c:
        if write is not None:
            c.execute(f"INSERT INTO {write} (id, item) VALUES (1, %s)", (slug,))
        return [r[0] for r in c.execute(f"SELECT item FROM {table} ORDER BY item").fetchall()]


def test_enable_rls_guards_existing_and_later_partitions_and_children(
    tenancy: Tenancy, sql: SQL, dsn: str, app_role: str
) -> None:
    for slug in ("acme", "globex"):
        tenancy.create_tenant(slug, isolation="shared")
    sql(
        "CREATE TABLE public.sales (id int, item text, tenant_id uuid NOT NULL) PARTITION BY HASH (id)"
    )
    sql(
        "CREATE TABLE public.sales_0 PARTITION OF public.sales FOR VALUES WITH (MODULUS 3, REMAINDER 0)"
    )
    tenancy.enable_rls("public.sales")
    # Later: CREATE TABLE ... PARTITION OF, and ATTACH PARTITION.
    sql(
        "CREATE TABLE public.sales_1 PARTITION OF public.sales FOR VALUES WITH (MODULUS 3, REMAINDER 1)"
    )
    sql("CREATE TABLE public.sales_2 (id int, item text, tenant_id uuid NOT NULL)")
    sql(
        "ALTER TABLE public.sales ATTACH PARTITION public.sales_2 FOR VALUES WITH (MODULUS 3, REMAINDER 2)"
    )
    # Inheritance: a child created with INHERITS, one attached with INHERIT.
    sql("CREATE TABLE public.notes (id int, item text, tenant_id uuid)")
    tenancy.enable_rls("public.notes")
    sql("CREATE TABLE public.notes_old () INHERITS (public.notes)")
    sql("CREATE TABLE public.notes_new (id int, item text, tenant_id uuid NOT NULL)")
    sql("ALTER TABLE public.notes_new INHERIT public.notes")
    # The routine grant the attack used.
    sql(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {app_role}")
    for slug in ("acme", "globex"):
        with (
            psycopg.connect(as_role(dsn, app_role)) as conn,
            tenant_connection(conn, slug) as c,
        ):
            c.execute("INSERT INTO sales SELECT g, %s FROM generate_series(1, 30) g", (slug,))
            c.execute("INSERT INTO notes_old (id, item) VALUES (1, %s)", (slug,))
            c.execute("INSERT INTO notes_new (id, item) VALUES (1, %s)", (slug,))
    for table in ("sales_0", "sales_1", "sales_2", "notes_old", "notes_new"):
        assert set(_rows_seen(dsn, app_role, "acme", table)) == {"acme"}, table
    guarded = {r[0] for r in sql("SELECT table_name::text FROM tenancy.guarded_tables")}
    assert guarded == {"sales", "sales_0", "sales_1", "sales_2", "notes", "notes_old", "notes_new"}
    with psycopg.connect(as_role(dsn, app_role)) as conn:
        assert [r[1] for r in conn.execute("SELECT * FROM tenancy.check_isolation()")].count(
            "unguarded_child"
        ) == 0


def test_a_child_that_cannot_be_guarded_is_refused(
    tenancy: Tenancy, sql: SQL, dsn: str, app_role: str
) -> None:
    sql("CREATE TABLE public.sales (id int, item text, tenant_id uuid)")
    tenancy.enable_rls("public.sales")
    sql(f"GRANT CREATE ON SCHEMA public TO {app_role}")
    sql(f"GRANT TRUNCATE, REFERENCES, TRIGGER ON public.sales TO {app_role}")
    with psycopg.connect(as_role(dsn, app_role)) as conn:
        conn.execute("CREATE TABLE public.mine (id int, item text, tenant_id uuid)")
        conn.commit()
        # The child is the app role's own table: guarding it is refused, so is the DDL.
        with pytest.raises(psycopg.Error):
            conn.execute("ALTER TABLE public.mine INHERIT public.sales")
        conn.rollback()
    assert sql("SELECT count(*) FROM pg_inherits WHERE inhparent = 'public.sales'::regclass") == [
        (0,)
    ]


def test_doctor_reports_an_unguarded_child(
    tenancy: Tenancy, sql: SQL, dsn: str, app_role: str
) -> None:
    sql("CREATE TABLE public.sales (id int, item text, tenant_id uuid)")
    tenancy.enable_rls("public.sales")
    # As if installed without a superuser: no event trigger.
    sql("ALTER EVENT TRIGGER pgtenancy_guard_children DISABLE")
    try:
        sql("CREATE TABLE public.sales_old () INHERITS (public.sales)")
    finally:
        sql("ALTER EVENT TRIGGER pgtenancy_guard_children ENABLE")
    with psycopg.connect(as_role(dsn, app_role)) as conn:
        found = [
            r
            for r in conn.execute("SELECT * FROM tenancy.check_isolation()")
            if r[1] == "unguarded_child"
        ]
    assert [(r[0], r[2]) for r in found] == [("error", "public.sales_old")]
    sql("SELECT tenancy.enable_rls('public.sales_old')")
    with psycopg.connect(as_role(dsn, app_role)) as conn:
        assert not [
            r
            for r in conn.execute("SELECT * FROM tenancy.check_isolation()")
            if r[1] == "unguarded_child"
        ]


def _refused_pt014(sql: SQL, statement: str, match: str) -> None:
    """``statement`` fails with PT014 and a message matching ``match``."""
    with pytest.raises(psycopg.Error, match=match) as refused:
        sql(statement)
    assert refused.value.sqlstate == "PT014"


def _children_of(sql: SQL, table: str) -> list[tuple[Any, ...]]:
    return sql(
        "SELECT inhrelid::regclass::text FROM pg_inherits"
        " WHERE inhparent = %s::regclass ORDER BY 1",
        (table,),
    )


def test_a_foreign_table_cannot_become_a_child_of_a_guarded_table(
    tenancy: Tenancy, sql: SQL
) -> None:
    """Attack run 5: CREATE FOREIGN TABLE ... INHERITS / PARTITION OF a guarded
    table went through unguarded (the event trigger heard CREATE TABLE and
    ALTER TABLE only; a foreign table has no row-level security), readable by
    name across tenants, and every later CREATE TABLE failed with PT014."""
    sql("CREATE TABLE public.sales (id int, item text, tenant_id uuid)")
    sql("CREATE TABLE public.parts (id int, item text, tenant_id uuid) PARTITION BY LIST (id)")
    tenancy.enable_rls("public.sales")
    tenancy.enable_rls("public.parts")
    sql("CREATE FOREIGN DATA WRAPPER pgtenancy_test_fdw")
    sql("CREATE SERVER pgtenancy_test_server FOREIGN DATA WRAPPER pgtenancy_test_fdw")
    attempts = [
        "CREATE FOREIGN TABLE public.sales_f (id int, item text, tenant_id uuid)"
        " INHERITS (public.sales) SERVER pgtenancy_test_server",
        "CREATE FOREIGN TABLE public.parts_f PARTITION OF public.parts FOR VALUES IN (1)"
        " SERVER pgtenancy_test_server",
    ]
    for attempt in attempts:
        _refused_pt014(sql, attempt, "is not a table")
    sql(
        "CREATE FOREIGN TABLE public.loose (id int, item text, tenant_id uuid NOT NULL)"
        " SERVER pgtenancy_test_server"
    )
    for attempt in (
        "ALTER FOREIGN TABLE public.loose INHERIT public.sales",
        "ALTER TABLE public.parts ATTACH PARTITION public.loose FOR VALUES IN (2)",
    ):
        _refused_pt014(sql, attempt, "is not a table")
    assert _children_of(sql, "public.sales") == [] and _children_of(sql, "public.parts") == []
    # Later DDL is not held up by anything.
    sql("CREATE TABLE public.unrelated (x int)")


def test_a_guarded_table_cannot_go_under_a_parent_that_is_not_guarded(
    tenancy: Tenancy, sql: SQL, dsn: str, app_role: str
) -> None:
    """Attack run 5: read through a parent, a table's rows get the parent's
    policies, not their own. ALTER TABLE guarded INHERIT unguarded, ATTACH
    PARTITION of a guarded table into an unguarded one, enable_rls on a
    partition of an unguarded table, and multiple inheritance from a guarded
    and an unguarded table all let one tenant read another's rows through
    the parent; each is refused now (PT014) and nothing changes."""
    for slug in ("acme", "globex"):
        tenancy.create_tenant(slug, isolation="shared")
    sql("CREATE TABLE public.sales (id int, item text, tenant_id uuid)")
    sql("CREATE TABLE public.loose (id int, item text, tenant_id uuid)")
    sql(
        "CREATE TABLE public.loose_parts (id int, item text, tenant_id uuid) PARTITION BY LIST (id)"
    )
    sql("CREATE TABLE public.part_1 (id int, item text, tenant_id uuid)")
    tenancy.enable_rls("public.sales")
    tenancy.enable_rls("public.part_1")
    for slug in ("acme", "globex"):
        for table in ("public.sales", "public.part_1"):
            _rows_seen(dsn, app_role, slug, f"{table} WHERE false", write=table)
    sql(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {app_role}")
    for attempt in (
        "ALTER TABLE public.sales INHERIT public.loose",
        "ALTER TABLE public.loose_parts ATTACH PARTITION public.part_1 FOR VALUES IN (1)",
        "CREATE TABLE public.both () INHERITS (public.loose, public.sales)",
        "CREATE TABLE public.both () INHERITS (public.sales, public.loose)",
    ):
        _refused_pt014(sql, attempt, "which is not guarded")
    assert _children_of(sql, "public.loose") == [] and _children_of(sql, "public.loose_parts") == []
    assert _rows_seen(dsn, app_role, "acme", "public.loose") == []
    # enable_rls on a table under an unguarded parent is refused too.
    sql("CREATE TABLE public.part_2 PARTITION OF public.loose_parts FOR VALUES IN (2)")
    with pytest.raises(CannotGuardTable, match="which is not guarded"):
        tenancy.enable_rls("public.part_2")
    assert sql(
        "SELECT count(*) FROM tenancy.guarded_tables WHERE table_name = 'public.part_2'::regclass"
    ) == [(0,)]
    # Guarding the parent guards its partitions with it; then attaching is fine.
    tenancy.enable_rls("public.loose_parts")
    sql("ALTER TABLE public.loose_parts ATTACH PARTITION public.part_1 FOR VALUES IN (1)")
    assert _rows_seen(dsn, app_role, "acme", "public.loose_parts") == ["acme"]


def test_a_guarded_table_cannot_be_given_to_an_application_role(
    tenancy: Tenancy, sql: SQL, dsn: str, app_role: str
) -> None:
    """Attack run 5: enable_rls refuses a table an application role owns, but
    ALTER TABLE ... OWNER TO the role (or to a group it is in) afterwards went
    through, and the role could then DISABLE ROW LEVEL SECURITY. Refused now
    (PT014), and the owner stays."""
    sql("CREATE TABLE public.sales (id int, item text, tenant_id uuid)")
    tenancy.enable_rls("public.sales")
    group = f"{app_role}_group"
    sql(f"CREATE ROLE {group} NOLOGIN")
    try:
        sql(f"GRANT {group} TO {app_role}")
        owner = sql(
            "SELECT relowner::regrole::text FROM pg_class WHERE oid = 'public.sales'::regclass"
        )
        for new_owner in (app_role, group):
            _refused_pt014(
                sql,
                f"ALTER TABLE public.sales OWNER TO {new_owner}",
                "could switch row-level security off",
            )
        assert (
            sql("SELECT relowner::regrole::text FROM pg_class WHERE oid = 'public.sales'::regclass")
            == owner
        )
    finally:
        sql(f"DROP ROLE {group}")


def test_the_children_guard_holds_for_every_statement_of_a_transaction(
    tenancy: Tenancy, sql: SQL, dsn: str, app_role: str
) -> None:
    """Review: the event trigger set pgtenancy.guarding_children for the rest of
    the transaction (a SET clause restores only the settings it names), so
    after the first table DDL of a transaction it checked nothing: a
    partition made after enable_rls in one migration stayed unguarded, and
    an owner change or INHERIT went through after any other DDL."""
    sql("CREATE TABLE public.loose (id int, item text, tenant_id uuid)")
    sql("CREATE TABLE public.sales (id int, item text, tenant_id uuid)")
    tenancy.enable_rls("public.sales")
    with psycopg.connect(dsn) as conn:
        with conn.transaction():
            conn.execute(
                "CREATE TABLE public.ev (id int, item text, tenant_id uuid) PARTITION BY LIST (id)"
            )
            conn.execute("SELECT tenancy.enable_rls('public.ev')")
            conn.execute("CREATE TABLE public.ev_1 PARTITION OF public.ev FOR VALUES IN (1)")
            conn.execute("CREATE TABLE public.sales_old () INHERITS (public.sales)")
        for late in (
            f"ALTER TABLE public.sales OWNER TO {app_role}",
            "ALTER TABLE public.sales INHERIT public.loose",
        ):
            with pytest.raises(psycopg.Error) as info, conn.transaction():
                conn.execute("CREATE TABLE public.scratch (x int)")
                conn.execute(late)
            assert info.value.sqlstate == "PT014"
    guarded = {r[0] for r in sql("SELECT table_name::text FROM tenancy.guarded_tables")}
    assert guarded == {"sales", "sales_old", "ev", "ev_1"}
    assert _children_of(sql, "public.loose") == []
    assert sql("SELECT to_regclass('public.scratch') IS NULL") == [(True,)]
    # Tables made by CREATE SCHEMA ... CREATE TABLE are guarded too.
    sql("CREATE SCHEMA extra CREATE TABLE sales_extra () INHERITS (public.sales)")
    assert sql(
        "SELECT count(*) FROM tenancy.guarded_tables WHERE table_name = 'extra.sales_extra'::regclass"
    ) == [(1,)]


def test_disable_rls_refuses_a_child_with_another_guarded_parent(
    tenancy: Tenancy, sql: SQL, dsn: str
) -> None:
    """Review: disable_rls of one parent of a child with two guarded parents
    unguarded the child, which the other parent's guard then re-guarded at
    the next DDL, refused (its first parent unguarded): every CREATE TABLE of
    the database failed. Refused now, and the uninstall (children first)
    still takes every guard off."""
    for name in ("m1", "m2"):
        sql(f"CREATE TABLE public.{name} (id int, item text, tenant_id uuid)")
        tenancy.enable_rls(f"public.{name}")
    sql("CREATE TABLE public.mc () INHERITS (public.m1, public.m2)")
    _refused_pt014(
        sql, "SELECT tenancy.disable_rls('public.m1')", "also a child of another guarded table"
    )
    assert len(sql("SELECT 1 FROM tenancy.guarded_tables")) == 3
    sql("CREATE TABLE public.unrelated (x int)")
    uninstall(dsn)
    assert sql(
        "SELECT count(*) FROM pg_class WHERE relname IN ('m1', 'm2', 'mc') AND relrowsecurity"
    ) == [(0,)]


def _pair_from_before(tenancy: Tenancy, sql: SQL, *more: str) -> None:
    """Guarded public.sales under unguarded public.loose, made as if the kit was
    installed without a superuser (no children event trigger), with ``more``
    statements run the same way."""
    sql("CREATE TABLE public.loose (id int, item text, tenant_id uuid)")
    sql("CREATE TABLE public.sales (id int, item text, tenant_id uuid)")
    tenancy.enable_rls("public.sales")
    sql("ALTER EVENT TRIGGER pgtenancy_guard_children DISABLE")
    try:
        for statement in ("ALTER TABLE public.sales INHERIT public.loose", *more):
            sql(statement)
    finally:
        sql("ALTER EVENT TRIGGER pgtenancy_guard_children ENABLE")


def test_a_pair_left_from_before_can_be_repaired(tenancy: Tenancy, sql: SQL) -> None:
    """A guarded table under an unguarded parent from before the trigger: DDL
    on either is refused, unrelated DDL is not, and the documented repair
    (SET LOCAL pgtenancy.guarding_children = on in the fixing transaction)
    detaches it."""
    _pair_from_before(tenancy, sql, "CREATE TABLE public.sales_old () INHERITS (public.sales)")
    sql("CREATE TABLE public.unrelated (x int)")
    _refused_pt014(sql, "ALTER TABLE public.loose ADD COLUMN note text", "which is not guarded")
    sql(
        "DO $$ BEGIN PERFORM set_config('pgtenancy.guarding_children', 'on', true);"
        " ALTER TABLE public.sales NO INHERIT public.loose; END $$"
    )
    assert _children_of(sql, "public.loose") == []
    # The unguarded child left from before is guarded by the next DDL touching it.
    sql("ALTER TABLE public.sales_old ADD COLUMN note text")
    assert sql(
        "SELECT count(*) FROM tenancy.guarded_tables WHERE table_name = 'public.sales_old'::regclass"
    ) == [(1,)]


def test_doctor_reports_an_unguarded_parent_and_disable_rls_unguards_children(
    tenancy: Tenancy, sql: SQL, dsn: str, app_role: str
) -> None:
    _pair_from_before(tenancy, sql)

    def findings() -> list[tuple[Any, ...]]:
        with psycopg.connect(as_role(dsn, app_role)) as conn:
            return [
                (r[0], r[2])
                for r in conn.execute("SELECT * FROM tenancy.check_isolation()")
                if r[1] in ("unguarded_parent", "unguarded_child")
            ]

    assert findings() == [("error", "public.loose")]
    # Such a pair left from before does not make unrelated DDL fail.
    sql("CREATE TABLE public.unrelated (x int)")
    sql("ALTER TABLE public.unrelated ADD COLUMN y int")
    # Guarding the parent guards the child with it and clears the finding;
    # unguarding the parent unguards its children first.
    tenancy.enable_rls("public.loose")
    assert findings() == []
    assert tenancy.disable_rls("public.loose") is True
    assert sql("SELECT count(*) FROM tenancy.guarded_tables") == [(0,)]
    assert findings() == []


# -- outbox out of the application role's reach --------------------------------

OUTBOX_CALLS = [
    "SELECT tenancy.inbox_claim('billing', 1)",
    "SELECT tenancy.register_consumer('evil')",
    "SELECT * FROM tenancy.next_events('evil', 10)",
    "SELECT tenancy.events_held_back('evil')",
    "SELECT tenancy.advance_consumer('evil', '1'::xid8, 1)",
    "SELECT tenancy.consumer_heartbeat('evil')",
    "SELECT tenancy.acquire_lease('evil', 'me', '1 minute')",
    "SELECT tenancy.release_lease('evil', 'me')",
    "SELECT tenancy.park_event('evil', 1, 'x', 1, 'x')",
    "SELECT tenancy.unpark_event('evil', 1, 'x')",
    "SELECT * FROM tenancy.parked_events('evil')",
    "SELECT * FROM tenancy.prune_events('0 s', '0 s')",
    "SELECT * FROM tenancy.consumer_status()",
    "SELECT * FROM tenancy.outbox_health()",
    "SELECT * FROM tenancy.events",
    "SELECT * FROM tenancy.consumers",
    "SELECT * FROM tenancy.inbox",
]


def test_the_application_role_cannot_use_the_outbox(
    tenancy: Tenancy, dsn: str, app_role: str, sql: SQL
) -> None:
    tenancy.create_tenant("acme")
    # Grant again, as an upgrade or a second call would.
    sql("SELECT tenancy.grant_app_role(%s)", (app_role,))
    with psycopg.connect(as_role(dsn, app_role), autocommit=True) as conn:
        for call in OUTBOX_CALLS:
            with pytest.raises(pgerrors.InsufficientPrivilege):
                conn.execute(call)
    assert sql("SELECT count(*) FROM tenancy.consumers") == [(0,)]


# -- enable_rls and track_changes refusals -------------------------------------


def test_enable_rls_refuses_a_table_the_app_role_owns_or_can_alter(
    tenancy: Tenancy, dsn: str, app_role: str, sql: SQL
) -> None:
    sql(f"GRANT CREATE ON SCHEMA public TO {app_role}")
    with psycopg.connect(as_role(dsn, app_role), autocommit=True) as conn:
        conn.execute("CREATE TABLE public.own (id int, tenant_id uuid)")
    sql("CREATE ROLE pgtenancy_team NOLOGIN")
    try:
        sql(f"GRANT pgtenancy_team TO {app_role}")
        sql("CREATE TABLE public.team (id int, tenant_id uuid)")
        sql("ALTER TABLE public.team OWNER TO pgtenancy_team")
        for table in ("public.own", "public.team"):
            with pytest.raises(CannotGuardTable):
                tenancy.enable_rls(table)
            # Nothing changed.
            assert sql(
                "SELECT relrowsecurity, (SELECT count(*) FROM pg_policy WHERE polrelid = %s::regclass)"
                " FROM pg_class WHERE oid = %s::regclass",
                (table, table),
            ) == [(False, 0)]
        assert sql("SELECT count(*) FROM tenancy.guarded_tables") == [(0,)]
    finally:
        sql("DROP TABLE public.team")
        sql("DROP ROLE pgtenancy_team")


def test_track_changes_refuses_kit_tables_and_lifecycle_keeps_working(
    tenancy: Tenancy, sql: SQL, dsn: str
) -> None:
    for table in ("tenancy.events", "tenancy.tenants", "tenancy.consumers"):
        with pytest.raises(psycopg.Error) as info:
            sql("SELECT tenancy.track_changes(%s)", (table,))
        assert isinstance(translate(info.value), CannotTrackTable)
        assert sql(
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = %s::regclass AND tgname LIKE 'tenancy_changes%%'",
            (table,),
        ) == [(0,)]
    tenancy.create_tenant("acme")
    tenancy.suspend_tenant("acme")
    tenancy.resume_tenant("acme")
    tenancy.drop_tenant("acme")
    assert [e[0] for e in outbox(dsn)] == [
        "tenant_created",
        "tenant_suspended",
        "tenant_resumed",
        "tenant_deleted",
    ]


# -- admin serialization, registry inserts, metadata ---------------------------


def test_app_role_advisory_locks_do_not_block_admin(
    tenancy: Tenancy, dsn: str, app_role: str, sql: SQL
) -> None:
    with psycopg.connect(as_role(dsn, app_role), autocommit=True) as attacker:
        # Every key the kit ever took, in both the one- and two-key spaces.
        attacker.execute("SELECT pg_advisory_lock(hashtext('tenancy.migrations'))")
        attacker.execute("SELECT pg_advisory_lock(hashtext('tenancy.tenant'), hashtext('acme'))")
        attacker.execute("SELECT pg_advisory_lock(hashtext('tenancy.tenant'), hashtext('newco'))")
        attacker.execute("SELECT pg_advisory_lock(hashtext('tenancy.shared_migrations'))")
        attacker.execute("SELECT pg_advisory_lock(7242001)")  # the install lock, before 0.3.0
        for table in (
            "tenancy.migrations",
            "tenancy.slug_locks",
            "tenancy.tenants",
            "tenancy.shared_migrations",
        ):
            with pytest.raises(pgerrors.InsufficientPrivilege):
                attacker.execute(f"BEGIN; LOCK TABLE {table} IN ACCESS SHARE MODE")
            attacker.execute("ROLLBACK")
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute("SET lock_timeout = '5s'")
            admin.execute("SELECT tenancy.add_migration('0001', 'CREATE TABLE t (id int)')")
            admin.execute("SELECT tenancy.create_tenant('acme')")
            admin.execute("SELECT tenancy.rename_tenant('acme', 'newco')")
            admin.execute(
                "SELECT tenancy.apply_shared_migration('s1', 'CREATE TABLE public.plans (id int)')"
            )
        # Reinstalling (what an upgrade does) takes its lock too.
        install(make_conninfo(dsn, options="-c lock_timeout=5s"))
    assert sql("SELECT slug, migration_version FROM tenancy.tenants") == [("newco", "0001")]
    assert sql("SELECT version FROM tenancy.shared_migrations") == [("s1",)]


def test_no_transaction_migrations_hold_a_lock_the_app_role_cannot(
    tenancy: Tenancy, dsn: str, app_role: str, sql: SQL
) -> None:
    """A no-transaction migration (statements in autocommit) is serialized per
    tenant by the tenant's row of tenancy.slug_locks, held on a second
    connection: the application role's advisory lock on the old key does not
    block it, and a runner holding the row does (lock timeout, nothing applied)."""
    tenancy.add_migration("0001", "CREATE TABLE t (id int)")
    tenancy.create_tenant("acme")
    tenancy.add_migration(
        "0002", "CREATE INDEX CONCURRENTLY t_id ON t (id)", outside_transaction=True
    )
    index = (
        "SELECT count(*) FROM pg_indexes WHERE schemaname = 'tenant_acme' AND indexname = 't_id'"
    )
    with psycopg.connect(dsn) as runner:
        # Another runner working on acme: its row is locked.
        runner.execute("SELECT 1 FROM tenancy.slug_locks WHERE slug = 'acme' FOR UPDATE")
        report = tenancy.migrate_tenants(["acme"], lock_timeout="1s")
        assert [slug for slug, _ in report.failed] == ["acme"] and report.migrated == []
        assert sql(index) == [(0,)]
        runner.rollback()
    with psycopg.connect(as_role(dsn, app_role), autocommit=True) as attacker:
        attacker.execute("SELECT pg_advisory_lock(hashtext('tenancy.migrate'), hashtext('acme'))")
        report = tenancy.migrate_tenants(["acme"], lock_timeout="5s")
    assert [t.slug for t in report.migrated] == ["acme"], report.failed
    assert sql(index) == [(1,)]
    assert sql("SELECT migration_version FROM tenancy.tenants WHERE slug = 'acme'") == [("0002",)]


def test_concurrent_creation_of_one_slug_gives_one_tenant(tenancy: Tenancy, dsn: str) -> None:
    """The row lock still serializes creations of one slug: the second waits, then gets PT002."""
    first = psycopg.connect(dsn)
    try:
        first.execute("SELECT tenancy.create_tenant('acme')")
        result: list[BaseException | None] = []

        def second() -> None:
            try:
                with psycopg.connect(dsn) as conn:
                    conn.execute("SELECT tenancy.create_tenant('acme')")
                result.append(None)
            except psycopg.Error as exc:
                result.append(exc)

        t = threading.Thread(target=second)
        t.start()
        time.sleep(0.5)
        assert t.is_alive()  # waiting on the slug's row lock
        first.commit()
        t.join(10)
    finally:
        first.close()
    assert len(result) == 1 and isinstance(result[0], psycopg.Error)
    assert result[0].sqlstate == "PT002"


def test_a_tenant_cannot_be_inserted_deleted(tenancy: Tenancy, dsn: str, sql: SQL) -> None:
    for isolation in ("schema", "shared"):
        with pytest.raises(pgerrors.InvalidParameterValue, match="cannot be created deleted"):
            sql(
                "INSERT INTO tenancy.tenants (slug, status, isolation) VALUES ('ghost', 'deleted', %s)",
                (isolation,),
            )
    assert sql("SELECT count(*) FROM tenancy.tenants") == [(0,)]
    assert sql("SELECT count(*) FROM pg_namespace WHERE nspname = 'tenant_ghost'") == [(0,)]
    assert outbox(dsn) == []


def test_a_tenant_inserted_suspended_is_unreachable(
    schema_tenants: None, dsn: str, app_role: str, sql: SQL
) -> None:
    sql("INSERT INTO tenancy.tenants (slug, status) VALUES ('initech', 'suspended')")
    with (
        psycopg.connect(as_role(dsn, app_role)) as conn,
        pytest.raises(pgerrors.InsufficientPrivilege),
    ):
        conn.execute("SELECT * FROM tenant_initech.invoice")


def test_metadata_is_limited_and_bad_metadata_gives_a_kit_error(
    tenancy: Tenancy, dsn: str, sql: SQL
) -> None:
    big = {"blob": "x" * 70_000}
    for bad in (big, {"when": object()}, {"s": {1, 2}}, ["a"]):
        with pytest.raises(InvalidTenantMetadata):
            tenancy.create_tenant("acme", metadata=bad)  # type: ignore[arg-type]
    # The same rules in SQL, on every path into the registry.
    for query, params in (
        ("SELECT tenancy.create_tenant('acme', %s::jsonb)", (json.dumps(big),)),
        ("SELECT tenancy.create_tenant('acme', '[1]'::jsonb)", None),
        (
            "INSERT INTO tenancy.tenants (slug, metadata) VALUES ('acme', %s::jsonb)",
            (json.dumps(big),),
        ),
    ):
        with pytest.raises(psycopg.Error) as info:
            sql(query, params)
        assert info.value.sqlstate == "PT029"
        assert isinstance(translate(info.value), InvalidTenantMetadata)
    assert sql("SELECT count(*) FROM tenancy.tenants") == [(0,)]
    assert outbox(dsn) == []
    # At the limit is fine; an update past it is refused and changes nothing.
    ok = {"blob": "x" * (65536 - len('{"blob": ""}'))}
    tenancy.create_tenant("acme", metadata=ok)
    with pytest.raises(psycopg.Error) as info:
        sql(
            "UPDATE tenancy.tenants SET metadata = %s::jsonb WHERE slug = 'acme'",
            (json.dumps(big),),
        )
    assert info.value.sqlstate == "PT029"
    assert sql("SELECT metadata = %s::jsonb FROM tenancy.tenants", (json.dumps(ok),)) == [(True,)]


def _nested(levels: int) -> dict[str, Any]:
    """Metadata whose deepest value is ``levels`` levels below the top object."""
    value: Any = 1
    for _ in range(levels - 1):
        value = {"k": value}
    return {"k": value}


def test_metadata_a_database_refuses_gives_a_kit_error_before_any_sql(
    tenancy: Tenancy, dsn: str, sql: SQL
) -> None:
    """Attack run 5: NaN and infinities, lone surrogates and NUL characters
    raised raw psycopg errors, metadata nested ~1,000 deep a RecursionError
    (and, stored through SQL, made get_tenant raise one), and clone_tenant's
    metadata was not checked at all. Each is InvalidTenantMetadata now, for
    create_tenant and clone_tenant alike, and nothing is created."""
    tenancy.create_tenant("acme")
    before = outbox(dsn)
    bad: list[Any] = [
        {"x": float("nan")},
        {"x": float("inf")},
        {"x": "\ud800"},
        {"x": "a\x00b"},
        {"a\x00b": 1},
        {"x": ["ok", {"y": "\x00"}]},
        _nested(33),
        _nested(5000),
        {(1, 2): "tuple key"},
        ["a"],
        "text",
        {"x": b"bytes"},
    ]
    for metadata in bad:
        with pytest.raises(InvalidTenantMetadata):
            tenancy.create_tenant("globex", metadata=metadata)
        with pytest.raises(InvalidTenantMetadata):
            tenancy.clone_tenant("acme", "globex", metadata=metadata)
    assert [t.slug for t in tenancy.list_tenants()] == ["acme"]
    assert outbox(dsn) == before
    # At the limits: 32 levels deep, and 65536 bytes of UTF-8 (not of
    # ASCII-escaped JSON: "€" is 3 bytes, as the database counts it).
    deep = _nested(32)
    assert tenancy.create_tenant("globex", metadata=deep).metadata == deep
    euros = {"e": "€" * ((65536 - len('{"e": ""}')) // 3)}
    assert tenancy.clone_tenant("acme", "initech", metadata=euros).metadata == euros
    assert tenancy.get_tenant("initech").metadata == euros
    # SQL refuses the same depth on every path into the registry.
    for query in (
        "SELECT tenancy.create_tenant('hooli', %s::jsonb)",
        "UPDATE tenancy.tenants SET metadata = %s::jsonb WHERE slug = 'acme'",
    ):
        with pytest.raises(psycopg.Error) as info:
            sql(query, (json.dumps(_nested(33)),))
        assert info.value.sqlstate == "PT029"
        assert isinstance(translate(info.value), InvalidTenantMetadata)
    assert tenancy.get_tenant("acme").metadata == {}


# -- the doctor on roles that defeat the model ----------------------------------


def _findings(dsn: str, role: str, check: str) -> list[tuple[str, str]]:
    with psycopg.connect(as_role(dsn, role)) as conn:
        rows = conn.execute("SELECT * FROM tenancy.check_isolation()").fetchall()
    return [(r[0], r[2]) for r in rows if r[1] == check]


def test_doctor_reports_tenant_tables_owned_by_another_role(
    schema_tenants: None, dsn: str, app_role: str, sql: SQL
) -> None:
    assert _findings(dsn, app_role, "tenant_object_foreign_owner") == []
    sql(f"ALTER TABLE tenant_acme.invoice OWNER TO {app_role}")
    assert _findings(dsn, app_role, "tenant_object_foreign_owner") == [
        ("error", "tenant_acme.invoice")
    ]
    migrator = sql("SELECT tenancy.migrator_role()")[0][0]
    sql(f"ALTER TABLE tenant_acme.invoice OWNER TO {migrator}")
    with psycopg.connect(as_role(dsn, app_role)) as conn:
        messages = [
            r[3]
            for r in conn.execute("SELECT * FROM tenancy.check_isolation()")
            if r[1] == "tenant_object_foreign_owner"
        ]
    assert len(messages) == 1 and "migrator role owns nothing at rest" in messages[0]


def test_doctor_reports_members_of_the_owner_role(
    tenancy: Tenancy, dsn: str, app_role: str, sql: SQL
) -> None:
    owner = sql("SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = 'tenancy'")[0][
        0
    ]
    assert _findings(dsn, app_role, "owner_role_member") == []
    # Membership (not the SUPERUSER attribute, which is not inherited) gives
    # the owner's rights on its objects; the role is dropped after the test.
    sql(f"GRANT {owner} TO {app_role}")
    try:
        assert ("error", app_role) in _findings(dsn, app_role, "owner_role_member")
    finally:
        sql(f"REVOKE {owner} FROM {app_role}")


def test_pool_reset_works_with_prepare_threshold_zero(
    schema_tenants: None, dsn: str, app_role: str
) -> None:
    """With psycopg preparing every statement (prepare_threshold=0) the reset's
    several statements must not be prepared ("cannot insert multiple commands
    into a prepared statement"), or the pool throws every connection away."""
    with ConnectionPool(
        as_role(dsn, app_role),
        min_size=1,
        max_size=1,
        reset=pool_reset,
        kwargs={"prepare_threshold": 0},
        open=True,
    ) as pool:
        with pool.connection() as conn:
            pid = conn.execute("SELECT pg_backend_pid()").fetchone()
        with tenant_connection(pool, "acme") as c:
            _dirty(c)
        with pool.connection() as conn:
            assert conn.execute("SELECT pg_backend_pid()").fetchone() == pid  # kept, not discarded
            assert _leftovers(conn)["temp"] == (0,)
