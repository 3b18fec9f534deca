"""Through real PgBouncer in transaction pooling mode: the pool-safety workload,
sessions and the admin API work; the listener refuses the DSN."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict
from sqlalchemy import create_engine, event, text

from helpers import TENANTS, Boom, clean, run_cli, run_threads
from pgtenancy import Listener, ListenNotSupported, Tenancy, tenant_session
from pgtenancy.listener import check_listen_capable
from pgtenancy.testing import TemporaryPgBouncer

pytestmark = [
    pytest.mark.skipif(
        TemporaryPgBouncer.binary() is None,
        reason="pgbouncer is not installed (make test installs Debian's pgbouncer when run as root)",
    ),
    # Waits for event delivery: a stranger's transaction must not hold it back.
    pytest.mark.own_server,
]


@pytest.fixture
def bouncer(dsn: str) -> Iterator[TemporaryPgBouncer]:
    user = str(conninfo_to_dict(dsn).get("user", "postgres"))
    pgb = TemporaryPgBouncer(dsn, [user], pool_mode="transaction", pool_size=2)
    pgb.start()
    yield pgb
    pgb.stop()


def pooled_engine(url: str) -> Any:
    # Through a transaction pooler, server-side prepared statements cannot be
    # used: prepare_threshold=None keeps psycopg from preparing.
    return create_engine(
        "postgresql+psycopg://",
        creator=lambda: psycopg.connect(url, prepare_threshold=None),
        pool_size=8,
        max_overflow=0,
        pool_timeout=60,
    )


def test_pool_safety_through_pgbouncer_transaction_mode(
    tenancy: Tenancy, dsn: str, bouncer: TemporaryPgBouncer
) -> None:
    tenancy.add_migration("0001", "CREATE TABLE item (id int PRIMARY KEY, owner text NOT NULL)")
    url = bouncer.dsn(dsn)
    admin = Tenancy(pooled_engine(url))  # the admin API through the pooler too
    for slug in TENANTS:
        admin.create_tenant(slug)
    with psycopg.connect(dsn) as conn:
        for slug in TENANTS:
            conn.execute(
                f"INSERT INTO tenant_{slug}.item SELECT g, %s FROM generate_series(1, 5) g", (slug,)
            )
    # Many client connections (8 threads, each its own client connection from
    # a pool of 8) share 2 server connections.
    engine = pooled_engine(url)
    backends: set[int] = set()

    @event.listens_for(engine, "checkout")
    def _check(dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute(
            "SELECT current_setting('search_path'), "
            "current_setting('app.tenant_id', true), current_setting('app.tenant', true)"
        )
        clean(cur.fetchone())
        dbapi_conn.rollback()

    def work(rnd: random.Random) -> None:
        slug = rnd.choice(TENANTS)
        try:
            with tenant_session(engine, slug) as session:
                owners = session.execute(text("SELECT owner FROM item")).scalars().all()
                assert owners == [slug] * 5, (slug, owners)
                backends.add(session.execute(text("SELECT pg_backend_pid()")).scalar_one())
                if rnd.random() < 0.25:
                    raise Boom
                session.commit()
                assert session.execute(text("SELECT tenancy.current_tenant()")).scalar() == slug
        except Boom:
            pass

    try:
        run_threads(work)
    finally:
        engine.dispose()
    assert 1 <= len(backends) <= 2  # really multiplexed over the server pool
    assert [t.slug for t in admin.list_tenants()] == sorted(TENANTS)
    admin.suspend_tenant("t00")
    assert admin.get_tenant("t00").status == "suspended"
    admin.engine.dispose()


def test_listener_refuses_a_transaction_pooler(dsn: str, bouncer: TemporaryPgBouncer) -> None:
    url = bouncer.dsn(dsn)
    check_listen_capable(dsn)  # direct: fine
    with pytest.raises(ListenNotSupported, match="transaction pooler"):
        check_listen_capable(url)
    with pytest.raises(ListenNotSupported):
        Listener(url, "through-bouncer").run()
    result = run_cli("listen", "--dsn", url, "--consumer", "x")
    assert result.returncode == 1
    assert result.stderr.startswith("error: this DSN does not keep one server backend")


def test_session_pooling_is_accepted_for_listen(dsn: str) -> None:
    user = str(conninfo_to_dict(dsn).get("user", "postgres"))
    pgb = TemporaryPgBouncer(dsn, [user], pool_mode="session", pool_size=2)
    pgb.start()
    try:
        check_listen_capable(pgb.dsn(dsn))
    finally:
        pgb.stop()
