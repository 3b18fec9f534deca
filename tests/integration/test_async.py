"""asyncio: AsyncSession and psycopg async connections in tenants, per-task
context, and the async listener awaiting receivers in order."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, assert_type

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool
from sqlalchemy import text
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from helpers import TESTS, pgtenancy_cli, recorded, subprocess_env, wait_for
from pgtenancy import (
    Listener,
    Tenancy,
    TenantSuspended,
    current_tenant,
    tenant_connection,
    tenant_session,
)
from pgtenancy.events import Event, TenantRef
from pgtenancy.signals import tenant_created

# Waits for event delivery: a stranger's transaction must not hold it back.
pytestmark = pytest.mark.own_server

SLUGS = [f"a{i}" for i in range(6)]


@pytest.fixture
def fleet(tenancy: Tenancy, dsn: str) -> None:
    tenancy.add_migration("0001", "CREATE TABLE note (id int PRIMARY KEY, owner text NOT NULL)")
    with psycopg.connect(dsn) as conn:
        for slug in SLUGS:
            conn.execute("SELECT tenancy.create_tenant(%s)", (slug,))
            conn.execute(
                f"INSERT INTO tenant_{slug}.note SELECT g, %s FROM generate_series(1, 3) g", (slug,)
            )


def async_engine(dsn: str, **kwargs: Any) -> AsyncEngine:
    async def connect() -> psycopg.AsyncConnection[Any]:
        return await psycopg.AsyncConnection.connect(dsn)

    return create_async_engine("postgresql+psycopg://", async_creator=connect, **kwargs)


@pytest.fixture
def aengine(dsn: str) -> Iterator[AsyncEngine]:
    eng = async_engine(dsn, pool_size=2, max_overflow=0)
    yield eng
    asyncio.run(eng.dispose())


def test_async_session_is_in_the_tenant_after_commit_and_rollback(
    aengine: AsyncEngine, fleet: None
) -> None:
    async def main() -> None:
        async with tenant_session(aengine, "a1") as session:
            assert current_tenant() == "a1"
            owners = (await session.execute(text("SELECT owner FROM note"))).scalars().all()
            assert owners == ["a1"] * 3
            await session.commit()
            assert (await session.execute(text("SELECT tenancy.current_tenant()"))).scalar() == "a1"
            await session.rollback()
            with pytest.raises(Exception, match="division by zero"):
                await session.execute(text("SELECT 1/0"))
            await session.rollback()
            assert (await session.execute(text("SELECT count(*) FROM note"))).scalar() == 3
        assert current_tenant() is None
        async with aengine.connect() as conn:
            row = (
                await conn.execute(
                    text("SELECT current_setting('search_path'), tenancy.current_tenant_id()")
                )
            ).one()
            assert tuple(row) == ('"$user", public', None)
        maker = async_sessionmaker(aengine)
        async with tenant_session(maker, "a2") as session:
            assert (await session.execute(text("SELECT DISTINCT owner FROM note"))).scalar() == "a2"

    asyncio.run(main())


def test_async_entry_refused_and_wrong_protocol(
    aengine: AsyncEngine, tenancy: Tenancy, fleet: None
) -> None:
    tenancy.suspend_tenant("a3")

    async def main() -> None:
        async with tenant_session(aengine, "a3") as session:
            with pytest.raises(TenantSuspended):
                await session.execute(text("SELECT 1"))
        # The overloads make this a type error; at run time it is a clear TypeError.
        with pytest.raises(TypeError, match="async with"), tenant_session(aengine, "a1"):  # type: ignore[attr-defined]
            pass

    asyncio.run(main())


def test_tasks_in_one_loop_never_see_each_others_data(aengine: AsyncEngine, fleet: None) -> None:
    async def worker(slug: str, rounds: int) -> int:
        seen = 0
        for i in range(rounds):
            async with tenant_session(aengine, slug) as session:
                await asyncio.sleep(0)
                owners = (await session.execute(text("SELECT owner FROM note"))).scalars().all()
                assert owners == [slug] * 3, (slug, owners)
                assert current_tenant() == slug
                if i % 4 == 0:
                    await session.commit()
                await asyncio.sleep(0)
                seen += 1
        return seen

    async def main() -> list[int]:
        return list(await asyncio.gather(*(worker(s, 60) for s in SLUGS * 2)))

    assert asyncio.run(main()) == [60] * len(SLUGS) * 2


def test_async_tenant_connection_with_connection_and_pool(dsn: str, fleet: None) -> None:
    async def main() -> None:
        conn = await psycopg.AsyncConnection.connect(dsn)
        async with conn:
            async with tenant_connection(conn, "a4") as c:
                await c.execute("INSERT INTO note VALUES (10, 'a4')")
            with pytest.raises(ZeroDivisionError):
                async with tenant_connection(conn, "a4") as c:
                    await c.execute("INSERT INTO note VALUES (11, 'a4')")
                    raise ZeroDivisionError
            cur = await conn.execute("SELECT tenancy.current_tenant()")
            assert await cur.fetchone() == (None,)
            await conn.rollback()
        async with AsyncConnectionPool(dsn, min_size=1, max_size=2, open=False) as pool:

            async def task(slug: str) -> list[tuple[Any, ...]]:
                async with tenant_connection(pool, slug) as c:
                    await asyncio.sleep(0)
                    return await (await c.execute("SELECT DISTINCT owner FROM note")).fetchall()

            results = await asyncio.gather(*(task(s) for s in SLUGS))
            assert results == [[(s,)] for s in SLUGS]
            async with tenant_connection(pool, "a4") as c:
                cur = await c.execute("SELECT id FROM note ORDER BY id")
                assert [r[0] for r in await cur.fetchall()] == [1, 2, 3, 10]

    asyncio.run(main())


def test_async_listener_awaits_receivers_in_registration_order(dsn: str, tenancy: Tenancy) -> None:
    order: list[tuple[str, str]] = []

    async def first(sender: str, tenant: TenantRef, event: Event, **kw: Any) -> None:
        await asyncio.sleep(0.02)
        order.append(("first", tenant.slug))

    def second(sender: str, tenant: TenantRef, event: Event, **kw: Any) -> None:
        order.append(("second", tenant.slug))

    async def third(sender: str, tenant: TenantRef, event: Event, **kw: Any) -> None:
        order.append(("third", tenant.slug))

    for r in (first, second, third):
        tenant_created.connect(r)
    listener = Listener(dsn, "async-test", poll_interval=0.1)

    def run() -> None:
        asyncio.run(listener.arun())

    thread = threading.Thread(target=run)
    thread.start()
    try:
        tenancy.create_tenant("acme")
        tenancy.create_tenant("globex")
        wait_for(lambda: len(order) == 6)
    finally:
        listener.stop()
        thread.join(10)
        for r in (first, second, third):
            tenant_created.disconnect(r)
    assert not thread.is_alive()
    assert order == [
        ("first", "acme"),
        ("second", "acme"),
        ("third", "acme"),
        ("first", "globex"),
        ("second", "globex"),
        ("third", "globex"),
    ]


def test_async_listener_process_survives_kill_and_stops_on_sigterm(
    dsn: str, tenancy: Tenancy, tmp_path: Path
) -> None:
    record = tmp_path / "events.jsonl"
    env = subprocess_env()
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    env["RECORD_FILE"] = str(record)
    argv = [
        *pgtenancy_cli(),
        "listen",
        "--asyncio",
        "--dsn",
        dsn,
        "--consumer",
        "aproc",
        "--handlers",
        "record_handlers",
        "--poll-interval",
        "0.2",
    ]
    proc = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True)
    try:
        tenancy.create_tenant("acme")
        wait_for(lambda: len(recorded(record)) == 1)
        proc.kill()
        proc.wait(10)
        tenancy.create_tenant("globex")
        proc = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: len(recorded(record)) == 2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert [e["slug"] for e in recorded(record)] == ["acme", "globex"]


def test_async_factories_return_public_types(dsn: str, aengine: AsyncEngine, fleet: None) -> None:
    """Async binds give ``AsyncSession`` and ``AsyncConnection`` (checked by mypy
    on tests), and entry is in the same message as BEGIN (see test_round_trips)."""

    async def main() -> None:
        async with tenant_session(aengine, "a1") as session:
            assert_type(session, AsyncSession)
            owners = (await session.execute(text("SELECT DISTINCT owner FROM note"))).all()
            assert owners == [("a1",)]
        maker = async_sessionmaker(aengine)
        async with tenant_session(maker, "a2") as made:
            assert_type(made, AsyncSession)
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            async with tenant_connection(conn, "a3") as c:
                assert_type(c, psycopg.AsyncConnection[tuple[Any, ...]])
                cur = await c.execute("SELECT DISTINCT owner FROM note")
                assert await cur.fetchall() == [("a3",)]
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE

    asyncio.run(main())
