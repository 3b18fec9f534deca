"""Round trips of every tenant path against its plain baseline, counted on the wire.

libpq's protocol trace (``PGconn.trace``) records every message the client
sends. A round trip ends with a message the client must wait for: a simple
``Query`` or an extended-protocol ``Sync``. Each pgtenancy path must send no
more of them than the same work done without a tenant (issue 16, goal 3): the
tenant entry rides in the message that opens the transaction.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool, ConnectionPool
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import Session

from helpers import Trace
from pgtenancy import Tenancy, sign_tenant_token, tenant_connection, tenant_session

QUERY = "SELECT count(*) FROM note"


@pytest.fixture
def tenants(tenancy: Tenancy, dsn: str) -> None:
    """Schema tenant acme and shared tenant globex, each with a ``note`` to read;
    a ``public.note`` for the plain baselines."""
    tenancy.add_migration("0001", "CREATE TABLE note (id int PRIMARY KEY)")
    tenancy.create_tenant("acme")
    tenancy.create_tenant("globex", isolation="shared")
    with psycopg.connect(dsn) as conn:
        conn.execute("CREATE TABLE public.note (id int PRIMARY KEY)")


@pytest.fixture
def key(dsn: str, tenants: None) -> bytes:
    """An entry key ``k1`` (strict mode stays off: tokens are accepted either way)."""
    secret = secrets.token_bytes(32)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT tenancy.add_entry_key('k1', %s)", (secret,))
    return secret


@pytest.fixture
def trace() -> Iterator[Trace]:
    t = Trace()
    yield t
    t.close()


def counted(trace: Trace, work: Callable[[], object]) -> int:
    """Round trips ``work`` sends, measured on its second run (caches warm)."""
    work()
    mark = trace.mark()
    work()
    return trace.round_trips_since(mark)


async def acounted(trace: Trace, work: Callable[[], Any]) -> int:
    await work()
    mark = trace.mark()
    await work()
    return trace.round_trips_since(mark)


# psycopg -------------------------------------------------------------------


@pytest.mark.parametrize("slug", ["acme", "globex"])
def test_tenant_connection_sends_no_more_round_trips_than_a_plain_transaction(
    dsn: str, tenants: None, trace: Trace, slug: str
) -> None:
    with psycopg.connect(dsn) as conn:
        trace.attach(conn.pgconn)

        def plain() -> None:
            with conn.transaction():
                conn.execute(QUERY).fetchone()

        def tenant() -> None:
            with tenant_connection(conn, slug) as c:
                c.execute(QUERY).fetchone()

        baseline = counted(trace, plain)
        ours = counted(trace, tenant)
    assert baseline == 3  # BEGIN, the query, COMMIT
    assert ours <= baseline, trace.sent()


@pytest.mark.parametrize("slug", ["acme", "globex"])
def test_token_entry_sends_no_more_round_trips_than_a_plain_transaction(
    dsn: str, key: bytes, trace: Trace, slug: str
) -> None:
    # The token goes as a bind parameter, BEGIN and the entry pipelined: one
    # round trip, as the slug entry's one message.
    token = sign_tenant_token(key, slug, 600, key_name="k1")
    with psycopg.connect(dsn) as conn:
        trace.attach(conn.pgconn)

        def plain() -> None:
            with conn.transaction():
                conn.execute(QUERY).fetchone()

        def tenant() -> None:
            with tenant_connection(conn, token=token) as c:
                c.execute(QUERY).fetchone()

        baseline = counted(trace, plain)
        ours = counted(trace, tenant)
    assert baseline == 3
    assert ours <= baseline, trace.sent()


@pytest.mark.parametrize("slug", ["acme", "globex"])
def test_unprepared_and_pipelined_connections_send_no_more_round_trips(
    dsn: str, tenants: None, trace: Trace, slug: str
) -> None:
    # prepare_threshold=None (what PgBouncer in transaction mode needs), and a
    # connection in psycopg's pipeline mode (the entry joins the batch).
    with psycopg.connect(dsn, prepare_threshold=None) as conn:
        trace.attach(conn.pgconn)

        def plain() -> None:
            with conn.transaction():
                conn.execute(QUERY).fetchone()

        def tenant() -> None:
            with tenant_connection(conn, slug) as c:
                c.execute(QUERY).fetchone()

        baseline = counted(trace, plain)
        ours = counted(trace, tenant)
        assert baseline == 3
        assert ours <= baseline, trace.sent()

        def plain_pipeline() -> None:
            with conn.pipeline(), conn.transaction():
                conn.execute(QUERY).fetchone()

        def tenant_pipeline() -> None:
            with conn.pipeline(), tenant_connection(conn, slug) as c:
                c.execute(QUERY).fetchone()

        baseline = counted(trace, plain_pipeline)
        ours = counted(trace, tenant_pipeline)
    assert baseline >= 1
    assert ours <= baseline, trace.sent()


def test_switching_with_per_tenant_statements_sends_no_more_round_trips(
    dsn: str, tenants: None, trace: Trace, tenancy: Tenancy
) -> None:
    # Statements prepared per tenant (search_path): once each is prepared, a
    # switching loop sends what one shared statement would (no Parse, no
    # DEALLOCATE), both with room in prepared_max and with more tenants than
    # room (then the rest share the text-keyed statement).
    tenancy.create_tenant("initech")
    tenancy.create_tenant("umbrella")
    slugs = ("acme", "initech", "umbrella", "globex")
    for prepared_max in (100, 2):
        with psycopg.connect(dsn) as conn:
            conn.prepared_max = prepared_max
            trace.attach(conn.pgconn)

            def plain() -> None:
                for _ in range(8):
                    for _ in slugs:
                        with conn.transaction():
                            conn.execute(QUERY).fetchone()

            def switching() -> None:
                for _ in range(8):
                    for slug in slugs:
                        with tenant_connection(conn, slug) as c:
                            c.execute(QUERY).fetchone()

            baseline = counted(trace, plain)
            ours = counted(trace, switching)
        assert baseline == 3 * 8 * len(slugs)
        assert ours <= baseline, (prepared_max, trace.sent()[-40:])


def test_tenant_connection_on_a_pool_and_an_autocommit_connection(
    dsn: str, tenants: None, trace: Trace
) -> None:
    def configure(conn: psycopg.Connection[Any]) -> None:
        trace.attach(conn.pgconn)

    with ConnectionPool(dsn, min_size=1, max_size=1, configure=configure, open=True) as pool:

        def plain() -> None:
            with pool.connection() as conn, conn.transaction():
                conn.execute(QUERY).fetchone()

        def tenant() -> None:
            with tenant_connection(pool, "acme") as conn:
                conn.execute(QUERY).fetchone()

        baseline = counted(trace, plain)
        ours = counted(trace, tenant)
    assert ours <= baseline, trace.sent()

    with psycopg.connect(dsn, autocommit=True) as conn:
        trace.attach(conn.pgconn)

        def plain_ac() -> None:
            with conn.transaction():
                conn.execute(QUERY).fetchone()

        def tenant_ac() -> None:
            with tenant_connection(conn, "acme") as c:
                c.execute(QUERY).fetchone()

        assert counted(trace, tenant_ac) <= counted(trace, plain_ac)


def test_async_tenant_connection_sends_no_more_round_trips(
    dsn: str, key: bytes, trace: Trace
) -> None:
    token = sign_tenant_token(key, "globex", 600, key_name="k1")

    async def main() -> tuple[int, int, int, int, int]:
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            trace.attach(conn.pgconn)

            async def plain() -> None:
                async with conn.transaction():
                    await (await conn.execute(QUERY)).fetchone()

            async def tenant() -> None:
                async with tenant_connection(conn, "acme") as c:
                    await (await c.execute(QUERY)).fetchone()

            async def by_token() -> None:
                async with tenant_connection(conn, token=token) as c:
                    await (await c.execute(QUERY)).fetchone()

            conn_counts = (
                await acounted(trace, plain),
                await acounted(trace, tenant),
                await acounted(trace, by_token),
            )

        async def configure(conn: psycopg.AsyncConnection[Any]) -> None:
            trace.attach(conn.pgconn)

        async with AsyncConnectionPool(
            dsn, min_size=1, max_size=1, configure=configure, open=False
        ) as pool:

            async def pool_plain() -> None:
                async with pool.connection() as conn, conn.transaction():
                    await (await conn.execute(QUERY)).fetchone()

            async def pool_tenant() -> None:
                async with tenant_connection(pool, "globex") as conn:
                    await (await conn.execute(QUERY)).fetchone()

            pool_counts = (await acounted(trace, pool_plain), await acounted(trace, pool_tenant))
        return (*conn_counts, *pool_counts)

    plain, ours, ours_token, pool_plain, pool_ours = asyncio.run(main())
    assert plain == 3
    assert ours <= plain, trace.sent()
    assert ours_token <= plain, trace.sent()
    assert pool_ours <= pool_plain, trace.sent()


# SQLAlchemy ------------------------------------------------------------------


def traced_engine(dsn: str, trace: Trace, **connect_kwargs: Any) -> Engine:
    def connect() -> psycopg.Connection[Any]:
        conn = psycopg.connect(dsn, **connect_kwargs)
        trace.attach(conn.pgconn)
        return conn

    return create_engine("postgresql+psycopg://", creator=connect, pool_size=1, max_overflow=0)


@pytest.mark.parametrize(
    ("slug", "entry", "prepare"),
    [
        ("acme", "slug", True),
        ("globex", "slug", True),
        ("acme", "token", True),
        ("globex", "token", True),
        ("acme", "slug", False),
        ("globex", "token", False),
    ],
)
def test_tenant_session_sends_no_more_round_trips_than_a_plain_session(
    dsn: str, key: bytes, trace: Trace, slug: str, entry: str, prepare: bool
) -> None:
    # Slug and token entry; default prepared statements and none (PgBouncer).
    token = sign_tenant_token(key, slug, 600, key_name="k1") if entry == "token" else None
    engine = traced_engine(dsn, trace, **({} if prepare else {"prepare_threshold": None}))
    try:

        def plain() -> None:
            with Session(engine) as session:
                session.execute(text(QUERY)).one()
                session.commit()
                session.execute(text(QUERY)).one()  # a second transaction
                session.rollback()

        def tenant() -> None:
            opened = (
                tenant_session(engine, slug)
                if token is None
                else tenant_session(engine, token=token)
            )
            with opened as session:
                session.execute(text(QUERY)).one()
                session.commit()
                session.execute(text(QUERY)).one()
                session.rollback()

        baseline = counted(trace, plain)
        ours = counted(trace, tenant)
    finally:
        engine.dispose()
    assert baseline == 6  # twice BEGIN, the query, COMMIT/ROLLBACK
    assert ours <= baseline, trace.sent()


@pytest.mark.parametrize("entry", ["slug", "token"])
def test_async_tenant_session_sends_no_more_round_trips(
    dsn: str, key: bytes, trace: Trace, entry: str
) -> None:
    token = sign_tenant_token(key, "acme", 600, key_name="k1") if entry == "token" else None

    async def connect() -> psycopg.AsyncConnection[Any]:
        conn = await psycopg.AsyncConnection.connect(dsn)
        trace.attach(conn.pgconn)
        return conn

    async def main() -> tuple[int, int]:
        engine = create_async_engine(
            "postgresql+psycopg://", async_creator=connect, pool_size=1, max_overflow=0
        )
        try:

            async def plain() -> None:
                async with AsyncSession(engine) as session:
                    (await session.execute(text(QUERY))).one()
                    await session.commit()

            async def tenant() -> None:
                opened = (
                    tenant_session(engine, "acme")
                    if token is None
                    else tenant_session(engine, token=token)
                )
                async with opened as session:
                    (await session.execute(text(QUERY))).one()
                    await session.commit()

            return await acounted(trace, plain), await acounted(trace, tenant)
        finally:
            await engine.dispose()

    plain, ours = asyncio.run(main())
    assert plain == 3
    assert ours <= plain, trace.sent()


def test_the_trace_sees_an_extra_round_trip(dsn: str, tenants: None, trace: Trace) -> None:
    """The counter can fail: entering with a separate statement is one more."""
    with psycopg.connect(dsn) as conn:
        trace.attach(conn.pgconn)

        def plain() -> None:
            with conn.transaction():
                conn.execute(QUERY).fetchone()

        def separate() -> None:
            with conn.transaction():
                conn.execute("SELECT tenancy.enter_tenant('acme')")
                conn.execute(QUERY).fetchone()

        assert counted(trace, separate) == counted(trace, plain) + 1
