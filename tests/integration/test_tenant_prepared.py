"""Per-tenant prepared statements (issue 16): inside a tenant transaction psycopg's
automatic prepared statements are keyed by the tenant's search_path, so each
tenant's statement is planned under its own schema and switching tenants does
not re-plan it; the query text is never changed and nothing stays keyed after
the block.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from psycopg_pool import ConnectionPool
from sqlalchemy import create_engine, text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import Session

from pgtenancy import Tenancy, tenant_connection, tenant_session
from pgtenancy._entry import statement_tag

QUERY = "SELECT label FROM note WHERE id = %s"
SCHEMA_TENANTS = ("acme", "initech", "umbrella")


@pytest.fixture
def tenants(tenancy: Tenancy, dsn: str) -> None:
    """Three schema tenants and two shared ones, each with a ``note`` naming its tenant."""
    tenancy.add_migration("0001", "CREATE TABLE note (id int PRIMARY KEY, label text NOT NULL)")
    for slug in SCHEMA_TENANTS:
        tenancy.create_tenant(slug)
    shared = {slug: tenancy.create_tenant(slug, isolation="shared").id for slug in ("s1", "s2")}
    with psycopg.connect(dsn) as conn:
        for slug in SCHEMA_TENANTS:
            conn.execute(f"INSERT INTO tenant_{slug}.note VALUES (1, '{slug}'), (2, '{slug} 2')")
        conn.execute(
            "CREATE TABLE public.snote (tenant_id uuid NOT NULL, id int, label text NOT NULL)"
        )
        for slug, tenant_id in shared.items():
            conn.execute("INSERT INTO public.snote VALUES (%s, 1, %s)", (tenant_id, slug))
    tenancy.enable_rls("public.snote")


def statements(conn: psycopg.Connection[Any], query: str) -> list[tuple[int, int]]:
    """(generic_plans, custom_plans) of the server's prepared statements of ``query``."""
    with psycopg.ClientCursor(conn) as cur:  # not itself prepared
        cur.execute(
            "SELECT generic_plans, custom_plans FROM pg_prepared_statements"
            " WHERE statement = %s ORDER BY name",
            (query.replace("%s", "$1"),),
        )
        rows = [(int(g), int(c)) for g, c in cur.fetchall()]
    conn.commit()  # (a rollback would make psycopg drop its prepared statements)
    return rows


def test_each_tenant_gets_its_own_prepared_statement_when_switching(
    tenants: None, dsn: str
) -> None:
    with psycopg.connect(dsn) as conn:
        for _ in range(12):
            for slug in SCHEMA_TENANTS:
                with tenant_connection(conn, slug) as c:
                    assert c.execute(QUERY, (1,)).fetchone() == (slug,)
                    assert statement_tag(c) is not None
                assert statement_tag(conn) is None
        stmts = statements(conn, QUERY)
        # One statement per tenant, each prepared after psycopg's threshold of 5
        # runs and then run 7 times under its own search_path.
        assert len(stmts) == len(SCHEMA_TENANTS)
        assert all(generic + custom == 7 for generic, custom in stmts)
        # Outside a tenant the text is keyed alone: a statement of its own.
        conn.execute("SET search_path TO tenant_acme")
        for _ in range(6):
            assert conn.execute(QUERY, (2,)).fetchone() == ("acme 2",)
        assert len(statements(conn, QUERY)) == len(SCHEMA_TENANTS) + 1


def test_switching_does_not_re_plan(tenants: None, dsn: str) -> None:
    # log_planner_stats reports each planning at LOG level; sent to the client
    # (client_min_messages = log), the reports count the plannings.
    notices: list[str] = []

    def plannings(loop: Callable[[], None]) -> int:
        notices.clear()
        loop()
        return sum("PLANNER STATISTICS" in n for n in notices)

    with psycopg.connect(dsn) as conn:
        conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
        conn.execute("SET log_planner_stats = on")
        conn.execute("SET client_min_messages = log")
        conn.commit()

        def kit(slugs: tuple[str, ...]) -> Callable[[], None]:
            def loop() -> None:
                for _ in range(5):
                    for slug in slugs:
                        with tenant_connection(conn, slug) as c:
                            assert c.execute(QUERY, (1,), prepare=True).fetchone() == (slug,)

            return loop

        def raw(slugs: tuple[str, ...]) -> Callable[[], None]:
            def loop() -> None:
                for _ in range(5):
                    for slug in slugs:
                        with conn.transaction():
                            conn.execute(f"SET LOCAL search_path TO tenant_{slug}, public")
                            conn.execute(QUERY, (1,), prepare=True).fetchone()

            return loop

        switching, staying = SCHEMA_TENANTS, ("acme",) * len(SCHEMA_TENANTS)
        for _ in range(3):  # every statement prepared, past its custom plans
            kit(switching)()
        kit(staying)()
        # Switching plans no more than staying in one tenant (the entry
        # message itself is planned in both) ...
        assert plannings(kit(switching)) == plannings(kit(staying))
        # ... whereas one statement keyed by its text alone is re-planned on
        # every change of search_path.
        raw(switching)()
        raw(staying)()
        assert plannings(raw(switching)) >= plannings(raw(staying)) + 10


def test_shared_tenants_share_one_statement(tenants: None, dsn: str, app_role: str) -> None:
    query = "SELECT label FROM snote WHERE id = %s"
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(f'GRANT SELECT ON public.snote TO "{app_role}"')
    with psycopg.connect(make_conninfo(dsn, user=app_role)) as conn:
        for _ in range(8):
            for slug in ("s1", "s2"):
                with tenant_connection(conn, slug) as c:
                    assert c.execute(query, (1,)).fetchone() == (slug,)
        # Same search_path for both: one statement, not one per tenant.
        assert len(statements(conn, query)) == 1


def test_queries_are_not_altered(tenants: None, dsn: str) -> None:
    with psycopg.connect(dsn) as conn:
        for _ in range(7):
            for slug in SCHEMA_TENANTS:
                with tenant_connection(conn, slug) as c:
                    # A trailing line comment, then a % in client-side binding.
                    row = c.execute("SELECT label FROM note WHERE id = %s -- note\n", (1,))
                    assert row.fetchone() == (slug,)
                    with psycopg.ClientCursor(c) as cur:
                        cur.execute("SELECT label || '%%' FROM note WHERE id = %s", (1,))
                        assert cur.fetchone() == (slug + "%",)
                    with c.cursor() as cur:
                        cur.executemany("INSERT INTO note VALUES (%s, %s)", [(10, "x"), (11, "y")])
                        with cur.copy("COPY note (id, label) FROM STDIN") as copy:
                            copy.write_row((12, "z"))
                        with cur.copy("COPY (SELECT count(*) FROM note) TO STDOUT") as copy:
                            assert [tuple(r) for r in copy.rows()] == [("5",)]
                    with c.pipeline():
                        first = c.execute(QUERY, (2,))
                        second = c.execute(QUERY, (10,))
                    assert (first.fetchone(), second.fetchone()) == ((slug + " 2",), ("x",))
                    raise psycopg.Rollback
        assert statement_tag(conn) is None


def test_user_cursor_factory_and_raw_cursor(tenants: None, dsn: str) -> None:
    with psycopg.connect(dsn, cursor_factory=psycopg.RawCursor) as conn:
        for _ in range(7):
            for slug in SCHEMA_TENANTS:
                with tenant_connection(conn, slug) as c:
                    assert c.execute("SELECT label FROM note WHERE id = $1", (1,)).fetchone() == (
                        slug,
                    )
        assert len(statements(conn, "SELECT label FROM note WHERE id = $1")) == 3


def test_nothing_stays_keyed(tenants: None, dsn: str) -> None:
    with psycopg.connect(dsn) as conn:
        with pytest.raises(ZeroDivisionError), tenant_connection(conn, "acme"):
            assert statement_tag(conn) is not None
            raise ZeroDivisionError
        assert statement_tag(conn) is None
        with pytest.raises(psycopg.errors.UndefinedTable), tenant_connection(conn, "acme") as c:
            c.execute("SELECT * FROM missing")
        assert statement_tag(conn) is None
    with ConnectionPool(dsn, min_size=1, max_size=1, open=True) as pool:
        with tenant_connection(pool, "acme") as c:
            assert statement_tag(c) is not None
        with pool.connection() as c:
            assert statement_tag(c) is None


def test_sessions_key_per_tenant_and_untag(tenants: None, dsn: str) -> None:
    engine = create_engine(
        "postgresql+psycopg://", creator=lambda: psycopg.connect(dsn), pool_size=1, max_overflow=0
    )
    sql = text("SELECT label FROM note WHERE id = :id")
    drivers: set[psycopg.Connection[Any]] = set()
    for _ in range(7):
        for slug in SCHEMA_TENANTS:
            with tenant_session(engine, slug) as session:
                assert session.execute(sql, {"id": 1}).scalar() == slug
                driver = session.connection().connection.driver_connection
                assert isinstance(driver, psycopg.Connection)
                assert statement_tag(driver) is not None
                drivers.add(driver)
                session.commit()
                assert statement_tag(driver) is None
                assert session.execute(sql, {"id": 1}).scalar() == slug
                # (a rollback would make psycopg drop every prepared statement)
                session.commit()
            assert statement_tag(driver) is None
    assert len(drivers) == 1
    (driver,) = drivers
    assert len(statements(driver, "SELECT label FROM note WHERE id = %s")) == 3
    driver.rollback()
    with Session(engine) as plain:
        conn = plain.connection().connection.driver_connection
        assert isinstance(conn, psycopg.Connection)
        assert statement_tag(conn) is None
    engine.dispose()


def test_many_tenants_stay_within_prepared_max(tenants: None, dsn: str) -> None:
    with psycopg.connect(dsn) as conn:
        # Room for two per-tenant keys: the third tenant shares the text-keyed
        # statement, so no statement is ever evicted (a DEALLOCATE round trip).
        conn.prepared_max = 3
        conn.execute("SET search_path TO tenant_acme")  # for the same text outside tenants
        conn.commit()
        ever: list[int] = []
        for _ in range(3):
            for _ in range(8):
                for slug in SCHEMA_TENANTS:
                    with tenant_connection(conn, slug) as c:
                        assert c.execute(QUERY, (1,)).fetchone() == (slug,)
                assert conn.execute(QUERY, (1,)).fetchone() == ("acme",)
                conn.commit()
            ever.append(conn._prepared._prepared_idx)  # statements ever prepared
            assert 2 <= len(statements(conn, QUERY)) == ever[-1] <= 3
        assert ever[0] == ever[-1]  # none prepared again after an eviction


def test_async_paths(tenants: None, dsn: str) -> None:
    async def main() -> None:
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            for _ in range(7):
                for slug in SCHEMA_TENANTS:
                    async with tenant_connection(conn, slug) as c:
                        cur = await c.execute(QUERY, (1,))
                        assert await cur.fetchone() == (slug,)
                        assert statement_tag(c) is not None
                    assert statement_tag(conn) is None
            cur = await conn.execute(
                "SELECT count(*) FROM pg_prepared_statements WHERE statement = %s",
                (QUERY.replace("%s", "$1"),),
                prepare=False,
            )
            assert await cur.fetchone() == (3,)

        async def connect() -> psycopg.AsyncConnection[Any]:
            return await psycopg.AsyncConnection.connect(dsn)

        engine = create_async_engine("postgresql+psycopg://", async_creator=connect)
        try:
            for _ in range(7):
                for slug in SCHEMA_TENANTS:
                    async with tenant_session(engine, slug) as session:
                        result = await session.execute(
                            text("SELECT label FROM note WHERE id = :id"), {"id": 1}
                        )
                        assert result.scalar() == slug
                        sconn = await session.connection()
                        raw = await sconn.get_raw_connection()
                        driver = raw.driver_connection
                        assert isinstance(driver, psycopg.AsyncConnection)
                        assert statement_tag(driver) is not None
                    assert statement_tag(driver) is None
        finally:
            await engine.dispose()

    asyncio.run(main())
