"""Pool safety: 8 threads over a pool of 2 connections switch among 20 tenants
for thousands of transactions, some raising, and never see another tenant's
rows; no connection handed out by the pool carries a tenant setting."""

from __future__ import annotations

import random
import threading
from typing import Any

import psycopg
import pytest
from psycopg_pool import ConnectionPool
from sqlalchemy import create_engine, event, text

from helpers import TENANTS, THREADS, TRANSACTIONS_PER_THREAD, Boom, clean, run_threads
from pgtenancy import Tenancy, tenant_connection, tenant_session


@pytest.fixture
def fleet(tenancy: Tenancy, dsn: str) -> None:
    tenancy.add_migration("0001", "CREATE TABLE item (id int PRIMARY KEY, owner text NOT NULL)")
    with psycopg.connect(dsn) as conn:
        for slug in TENANTS:
            conn.execute("SELECT tenancy.create_tenant(%s)", (slug,))
            conn.execute(
                f"INSERT INTO tenant_{slug}.item SELECT g, %s FROM generate_series(1, 5) g", (slug,)
            )


def test_sqlalchemy_pool_never_leaks_a_tenant(fleet: None, dsn: str) -> None:
    engine = create_engine(
        "postgresql+psycopg://",
        creator=lambda: psycopg.connect(dsn),
        pool_size=2,
        max_overflow=0,
        pool_timeout=60,
    )
    checkouts = 0
    lock = threading.Lock()

    @event.listens_for(engine, "checkout")
    def _check(dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
        nonlocal checkouts
        cur = dbapi_conn.cursor()
        cur.execute(
            "SELECT current_setting('search_path'), "
            "current_setting('app.tenant_id', true), current_setting('app.tenant', true)"
        )
        clean(cur.fetchone())
        dbapi_conn.rollback()
        with lock:
            checkouts += 1

    counts = {"ok": 0, "raised": 0}

    def work(rnd: random.Random) -> None:
        slug = rnd.choice(TENANTS)
        raising = rnd.random() < 0.25
        try:
            with tenant_session(engine, slug) as session:
                owners = session.execute(text("SELECT owner FROM item")).scalars().all()
                assert owners == [slug] * 5, (slug, owners)
                session.execute(text("UPDATE item SET owner = owner WHERE id = 1"))
                if raising:
                    raise Boom
                if rnd.random() < 0.5:
                    session.commit()
                    assert session.execute(text("SELECT tenancy.current_tenant()")).scalar() == slug
        except Boom:
            counts["raised"] += 1
        else:
            counts["ok"] += 1

    try:
        run_threads(work)
    finally:
        engine.dispose()
    assert counts["ok"] + counts["raised"] == THREADS * TRANSACTIONS_PER_THREAD
    assert counts["raised"] > 0
    assert checkouts >= THREADS * TRANSACTIONS_PER_THREAD


def test_psycopg_pool_never_leaks_a_tenant(fleet: None, dsn: str) -> None:
    def check(conn: psycopg.Connection[Any]) -> None:
        clean(
            conn.execute(
                "SELECT current_setting('search_path'), current_setting('app.tenant_id', true), "
                "current_setting('app.tenant', true)"
            ).fetchone()
            or ()
        )
        conn.rollback()

    with ConnectionPool(dsn, min_size=2, max_size=2, check=check, timeout=60) as pool:

        def work(rnd: random.Random) -> None:
            slug = rnd.choice(TENANTS)
            try:
                with tenant_connection(pool, slug) as conn:
                    owners = [r[0] for r in conn.execute("SELECT owner FROM item")]
                    assert owners == [slug] * 5, (slug, owners)
                    if rnd.random() < 0.25:
                        raise Boom
            except Boom:
                pass
            if rnd.random() < 0.1:
                with pool.connection() as conn:
                    clean(
                        conn.execute(
                            "SELECT current_setting('search_path'), tenancy.current_tenant_id(), "
                            "tenancy.current_tenant()"
                        ).fetchone()
                        or ()
                    )

        run_threads(work)


def test_a_temp_table_never_shadows_a_tenant_table(dsn: str, fleet: None) -> None:
    """pg_temp is searched last inside a tenant (issue 13): a temporary ``item``
    left on a pooled connection by one request is not what the next reads."""
    with ConnectionPool(dsn, min_size=1, max_size=1, open=True) as pool:
        with tenant_connection(pool, "t00") as conn:
            conn.execute("CREATE TEMP TABLE item (id int, owner text)")
            conn.execute("INSERT INTO pg_temp.item VALUES (1, 'planted')")
            assert conn.execute("SELECT DISTINCT owner FROM item").fetchall() == [("t00",)]
        with tenant_connection(pool, "t01") as conn:
            assert conn.execute("SELECT DISTINCT owner FROM item").fetchall() == [("t01",)]
            path = conn.execute("SHOW search_path").fetchone()
            assert path == ("tenant_t01, public, pg_temp",)
            # The planted rows are still there, reachable only by their qualified name.
            assert conn.execute("SELECT owner FROM pg_temp.item").fetchall() == [("planted",)]


def test_commit_inside_tenant_connection_is_refused_and_rollback_is_quiet(
    dsn: str, fleet: None
) -> None:
    with psycopg.connect(dsn) as conn:
        with (
            pytest.raises(psycopg.ProgrammingError, match="commit"),
            tenant_connection(conn, "t00") as c,
        ):
            c.execute("UPDATE item SET owner = 'x'")
            c.commit()
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        with tenant_connection(conn, "t00") as c:
            c.execute("UPDATE item SET owner = 'x'")
            raise psycopg.Rollback()
        with tenant_connection(conn, "t00") as c:
            assert c.execute("SELECT DISTINCT owner FROM item").fetchall() == [("t00",)]
        # Nothing of the tenant after the block; the connection is reusable.
        assert conn.execute("SHOW search_path").fetchone() == ('"$user", public',)
        conn.commit()


def test_lost_connection_in_tenant_connection_keeps_its_error_and_the_pool_recovers(
    dsn: str, fleet: None
) -> None:
    with ConnectionPool(dsn, min_size=1, max_size=1, open=True) as pool:
        with (
            pytest.raises(psycopg.OperationalError, match=r"terminat|server closed"),
            tenant_connection(pool, "t00") as conn,
        ):
            pid = conn.info.backend_pid
            with psycopg.connect(dsn, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
            conn.execute("SELECT count(*) FROM item")
        # The pool replaces the broken connection; the next block is in its tenant.
        with tenant_connection(pool, "t01") as conn:
            assert conn.execute("SELECT DISTINCT owner FROM item").fetchall() == [("t01",)]
