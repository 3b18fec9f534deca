"""tenant_session and tenant_connection: tenant per transaction, nothing after."""

from __future__ import annotations

from typing import Any, assert_type

import psycopg
import pytest
from psycopg import sql
from psycopg_pool import ConnectionPool
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import Session, sessionmaker

from pgtenancy import (
    InvalidConnectionState,
    InvalidTenantSlug,
    NoTenantContext,
    Tenancy,
    TenantDeleted,
    TenantNotFound,
    TenantSchemaMissing,
    TenantSuspended,
    current_tenant,
    tenant_connection,
    tenant_session,
    use_tenant,
)
from pgtenancy.errors import raise_translated

INVOICES = "CREATE TABLE invoice (invoice_id int PRIMARY KEY, tenant text NOT NULL)"

SETTINGS = text(
    "SELECT current_setting('search_path'), tenancy.current_tenant_id(), tenancy.current_tenant()"
)


@pytest.fixture
def two_tenants(tenancy: Tenancy, dsn: str) -> dict[str, str]:
    tenancy.add_migration("0001", INVOICES)
    ids = {}
    for slug in ("acme", "globex"):
        ids[slug] = str(tenancy.create_tenant(slug).id)
    with psycopg.connect(dsn) as conn:
        conn.execute("INSERT INTO tenant_acme.invoice VALUES (1, 'acme'), (2, 'acme')")
        conn.execute("INSERT INTO tenant_globex.invoice VALUES (1, 'globex')")
    return ids


def test_every_transaction_is_in_the_tenant_and_nothing_remains(
    engine: Engine, two_tenants: dict[str, str]
) -> None:
    with tenant_session(engine, "acme") as session:
        assert session.execute(text("SELECT tenant FROM invoice")).scalars().all() == [
            "acme",
            "acme",
        ]
        session.commit()
        # A new transaction after commit is entered again.
        path, tid, slug = session.execute(SETTINGS).one()
        assert (path, str(tid), slug) == (
            "tenant_acme, public, pg_temp",
            two_tenants["acme"],
            "acme",
        )
        session.rollback()
        assert session.execute(text("SELECT count(*) FROM invoice")).scalar() == 2
        with pytest.raises(Exception, match="division by zero"):
            session.execute(text("SELECT 1/0"))
        session.rollback()
        assert session.execute(text("SELECT count(*) FROM invoice")).scalar() == 2
        # A savepoint rollback keeps the tenant.
        with session.begin_nested():
            session.execute(text("INSERT INTO invoice VALUES (3, 'acme')"))
        nested = session.begin_nested()
        session.execute(text("INSERT INTO invoice VALUES (4, 'acme')"))
        nested.rollback()
        assert session.execute(SETTINGS).one()[2] == "acme"
        session.commit()
    # The same pooled connections now carry no tenant.
    with engine.connect() as conn:
        path, tid, slug = conn.execute(SETTINGS).one()
        assert (path, tid, slug) == ('"$user", public', None, None)
    with tenant_session(engine, "globex") as session:
        assert session.execute(text("SELECT tenant FROM invoice")).scalars().all() == ["globex"]
    with tenant_session(engine, "acme") as session:
        assert session.execute(text("SELECT count(*) FROM invoice")).scalar() == 3


def test_no_tenant_means_no_tenant_data(engine: Engine, two_tenants: dict[str, str]) -> None:
    with (
        engine.connect() as conn,
        pytest.raises(Exception, match='relation "invoice" does not exist'),
    ):
        conn.execute(text("SELECT * FROM invoice"))


def test_slug_from_context_and_none_raises(engine: Engine, two_tenants: dict[str, str]) -> None:
    with pytest.raises(NoTenantContext), tenant_session(engine):
        pass
    with use_tenant("globex"), tenant_session(engine) as session:
        assert current_tenant() == "globex"
        assert session.execute(text("SELECT tenant FROM invoice")).scalar() == "globex"
    with pytest.raises(InvalidTenantSlug), tenant_session(engine, "Bad Slug"):
        pass


def test_sessionmaker_and_nested_context(engine: Engine, two_tenants: dict[str, str]) -> None:
    factory = sessionmaker(engine)
    with tenant_session(factory, "acme") as outer:
        assert current_tenant() == "acme"
        with tenant_session(factory, "globex") as inner:
            assert current_tenant() == "globex"
            assert inner.execute(text("SELECT tenant FROM invoice")).scalar() == "globex"
        assert current_tenant() == "acme"
        assert outer.execute(text("SELECT DISTINCT tenant FROM invoice")).scalar() == "acme"
    assert current_tenant() is None


@pytest.mark.parametrize(
    ("change", "error", "sqlstate"),
    [
        ("suspend", TenantSuspended, "PT004"),
        ("drop", TenantDeleted, "PT005"),
        ("unknown", TenantNotFound, "PT003"),
        ("schema", TenantSchemaMissing, "PT007"),
    ],
)
def test_entry_refused_by_the_database(
    engine: Engine,
    tenancy: Tenancy,
    dsn: str,
    two_tenants: dict[str, str],
    change: str,
    error: type[Exception],
    sqlstate: str,
) -> None:
    slug = "acme"
    if change == "suspend":
        tenancy.suspend_tenant(slug)
    elif change == "drop":
        tenancy.drop_tenant(slug)
    elif change == "unknown":
        slug = "initech"
    else:
        with psycopg.connect(dsn) as conn:
            conn.execute("DROP SCHEMA tenant_acme CASCADE")
    # Straight in SQL: the transaction fails before any tenant data is read.
    with psycopg.connect(dsn) as conn, pytest.raises(psycopg.Error) as info:
        conn.execute("SELECT tenancy.enter_tenant(%s)", (slug,))
    assert info.value.sqlstate == sqlstate
    # Through the session.
    with tenant_session(engine, slug) as session:
        with pytest.raises(error) as caught:
            session.execute(text("SELECT count(*) FROM invoice"))
        assert getattr(caught.value, "sqlstate", None) == sqlstate
        session.rollback()
    # Through psycopg.
    with psycopg.connect(dsn) as conn:
        with pytest.raises(error), tenant_connection(conn, slug):
            pass
        assert conn.execute("SELECT current_setting('search_path')").fetchone() == (
            '"$user", public',
        )
    # The pooled connections are fine afterwards.
    with tenant_session(engine, "globex") as session:
        assert session.execute(text("SELECT tenant FROM invoice")).scalar() == "globex"


def test_autocommit_engine_is_refused(dsn: str, two_tenants: dict[str, str]) -> None:
    eng = create_engine(
        "postgresql+psycopg://", creator=lambda: psycopg.connect(dsn), isolation_level="AUTOCOMMIT"
    )
    try:
        with tenant_session(eng, "acme") as session, pytest.raises(InvalidConnectionState):
            session.execute(text("SELECT 1"))
    finally:
        eng.dispose()


def test_tenant_connection_commits_or_rolls_back_and_leaves_nothing(
    dsn: str, two_tenants: dict[str, str]
) -> None:
    with psycopg.connect(dsn) as conn:
        with tenant_connection(conn, "acme") as c:
            c.execute("INSERT INTO invoice VALUES (10, 'acme')")
        with pytest.raises(ZeroDivisionError), tenant_connection(conn, "acme") as c:
            c.execute("INSERT INTO invoice VALUES (11, 'acme')")
            raise ZeroDivisionError
        with tenant_connection(conn, "acme") as c:
            rows = c.execute("SELECT invoice_id FROM invoice ORDER BY 1").fetchall()
        assert rows == [(1,), (2,), (10,)]
        assert conn.execute(
            "SELECT current_setting('search_path'), tenancy.current_tenant_id()"
        ).fetchone() == ('"$user", public', None)
        conn.rollback()
        # A connection already in a transaction would keep the settings: refused.
        conn.execute("SELECT 1")
        with pytest.raises(InvalidConnectionState), tenant_connection(conn, "acme"):
            pass
        conn.rollback()
    with ConnectionPool(dsn, min_size=1, max_size=1, open=True) as pool:
        with tenant_connection(pool, "globex") as c:
            assert c.execute("SELECT tenant FROM invoice").fetchall() == [("globex",)]
        with pool.connection() as c:
            assert c.execute("SELECT tenancy.current_tenant()").fetchone() == (None,)


def test_lost_connection_is_a_clear_error_and_the_pool_recovers(
    engine: Engine, dsn: str, two_tenants: dict[str, str]
) -> None:
    from sqlalchemy.exc import OperationalError

    with tenant_session(engine, "acme") as session:
        pid = session.execute(text("SELECT pg_backend_pid()")).scalar_one()
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(OperationalError, match=r"terminat|closed"):
            session.execute(text("SELECT count(*) FROM invoice"))
        session.rollback()
        # The session reconnects on its next transaction, still in the tenant.
        assert session.execute(text("SELECT DISTINCT tenant FROM invoice")).scalar() == "acme"
    with tenant_session(engine, "globex") as session:
        assert session.execute(text("SELECT tenant FROM invoice")).scalars().all() == ["globex"]


def test_connection_already_in_a_transaction_is_refused(
    engine: Engine, two_tenants: dict[str, str]
) -> None:
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
        with pytest.raises(InvalidConnectionState, match="already in a transaction"):
            tenant_session(conn, "acme").__enter__()
        conn.rollback()
        with tenant_session(conn, "acme") as session:
            assert session.execute(text("SELECT count(*) FROM invoice")).scalar() == 2
        conn.rollback()
        row = conn.execute(text("SELECT tenancy.current_tenant()")).one()
        assert tuple(row) == (None,)


def test_factories_return_public_types(
    dsn: str, engine: Engine, two_tenants: dict[str, str]
) -> None:
    """The overloads give each bind its session or connection type (checked by
    mypy on tests; at run time the objects are the same types)."""
    maker = sessionmaker(engine)
    with tenant_session(engine, "acme") as session:
        assert_type(session, Session)
        assert isinstance(session, Session)
    with tenant_session(maker, "acme") as made:
        assert_type(made, Session)
    with psycopg.connect(dsn) as conn, tenant_connection(conn, "acme") as c:
        assert_type(c, psycopg.Connection[tuple[Any, ...]])
        assert c is conn
    with ConnectionPool(dsn, min_size=1, max_size=1) as pool, tenant_connection(pool, "acme") as pc:
        assert_type(pc, psycopg.Connection[tuple[Any, ...]])


def test_enter_tenant_answers_to_its_documented_argument_name(
    dsn: str, two_tenants: dict[str, str]
) -> None:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT tenancy.enter_tenant(slug => 'globex')::text").fetchone()
        assert row == (two_tenants["globex"],)
        assert conn.execute("SHOW search_path").fetchone() == ("tenant_globex, public, pg_temp",)
        conn.rollback()
        with pytest.raises(TenantNotFound), tenant_connection(conn, "nobody"):
            pass
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


def test_citus_specialization_of_enter_tenant_works_without_citus(
    tenancy: Tenancy, dsn: str
) -> None:
    """prepare_citus() rewrites enter_tenant around its settings comment: run its
    own text (minus the "is Citus here" test) on plain PostgreSQL and check that
    the rewritten function still enters, refuses, and issues the SET LOCALs."""
    tenancy.add_migration("0001", "CREATE TABLE t (x int)")
    acme = tenancy.create_tenant("acme")
    tenancy.create_tenant("initech")
    tenancy.suspend_tenant("initech")
    guard = (
        "    IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus') THEN\n"
        "        RETURN false;\n"
        "    END IF;\n"
    )
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT prosrc FROM pg_proc WHERE oid = 'tenancy.prepare_citus()'::regprocedure"
        ).fetchone()
        assert row is not None and guard in row[0]
        conn.execute(
            sql.SQL(
                "CREATE FUNCTION pg_temp.prepare_citus_here() RETURNS boolean LANGUAGE plpgsql"
                " SET search_path = pg_catalog, pg_temp AS {}"
            ).format(sql.Literal(row[0].replace(guard, "")))
        )
        assert conn.execute("SELECT pg_temp.prepare_citus_here()").fetchone() == (True,)
        src = conn.execute(
            "SELECT prosrc FROM pg_proc WHERE oid = 'tenancy.enter_tenant(text)'::regprocedure"
        ).fetchone()
        assert src is not None and src[0].count("SET LOCAL app.tenant_id") == 1
        # The SET LOCALs come before the settings expression, nothing but RETURN after it.
        assert src[0].index("SET LOCAL app.tenant") < src[0].index("set_config('search_path'")
        assert conn.execute("SELECT pg_temp.prepare_citus_here()").fetchone() == (True,)
        again = conn.execute(
            "SELECT prosrc FROM pg_proc WHERE oid = 'tenancy.enter_tenant(text)'::regprocedure"
        ).fetchone()
        assert again == src
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT tenancy.enter_tenant('acme')").fetchone() == (acme.id,)
        row = conn.execute(
            "SELECT current_setting('app.tenant_id'), current_setting('app.tenant'),"
            " current_setting('search_path'), current_setting('citus.propagate_set_commands'),"
            " (SELECT count(*) FROM t)"
        ).fetchone()
        assert row == (str(acme.id), "acme", "tenant_acme, public, pg_temp", "local", 0)
        conn.rollback()
        with pytest.raises(TenantSuspended):
            try:
                conn.execute("SELECT tenancy.enter_tenant('initech')")
            except psycopg.Error as exc:
                raise_translated(exc)
        conn.rollback()
        assert conn.execute("SELECT current_setting('app.tenant', true)").fetchone() in (
            ("",),
            (None,),
        )
