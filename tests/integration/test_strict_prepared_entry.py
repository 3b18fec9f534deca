"""The token entry as a prepared statement (issue 13 item 2: the cost of strict
entry). psycopg prepares it as it prepares any statement (after
``prepare_threshold`` runs, never with ``prepare_threshold=None``), so it is not
parsed and planned again in every transaction; what a user sees stays the same:
the right tenant, the same refusals, nothing left behind, and an entry that
works after somebody dropped the statement behind psycopg's back. Real server,
the application connecting as a NOSUPERUSER NOBYPASSRLS role."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest
from strict_support import StrictWorld, build, marker

from helpers import as_role
from pgtenancy import EntryTokenForged, sign_tenant_token, tenant_connection

ENTRY = "SELECT tenancy.enter_tenant_token($1, $2), pg_catalog.current_setting('search_path')"
#: The quiet form a connection sends for a tenant whose search_path it learnt.
QUIET = "CALL tenancy.enter_token($1, $2, $3)"


@pytest.fixture
def world(dsn: str, app_role: str) -> StrictWorld:
    return build(dsn, app_role, as_role(dsn, app_role))


def token(world: StrictWorld, slug: str) -> str:
    return sign_tenant_token(world.key, slug, 60, key_name="k1")


def entry_statements(
    conn: psycopg.Connection[Any], statement: str = ENTRY
) -> list[tuple[Any, ...]]:
    """The server's prepared statements of a token entry on ``conn``: (generic, custom) plans."""
    return conn.execute(
        "SELECT generic_plans, custom_plans FROM pg_prepared_statements WHERE statement = %s",
        (statement,),
        prepare=False,
    ).fetchall()


def drop_entry_statement(
    conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any], statement: str = ENTRY
) -> None:
    """DEALLOCATE an entry statement on the server, behind psycopg's back
    (psycopg's own statements stay: they are psycopg's business)."""
    result = conn.pgconn.exec_(
        b"SELECT name FROM pg_prepared_statements WHERE statement = '"
        + statement.replace("'", "''").encode()
        + b"'"
    )
    assert result.ntuples == 1
    name = result.get_value(0, 0)
    assert name is not None
    assert (
        conn.pgconn.exec_(b'DEALLOCATE "' + name + b'"').status == psycopg.pq.ExecStatus.COMMAND_OK
    )


def bodies(conn: psycopg.Connection[Any], world: StrictWorld, slug: str) -> Any:
    with tenant_connection(conn, token=token(world, slug)) as c:
        return c.execute("SELECT body FROM invoice ORDER BY id").fetchone()


def test_the_entry_is_prepared_once_and_each_tenant_still_gets_its_own_rows(
    world: StrictWorld,
) -> None:
    with psycopg.connect(world.app_dsn, autocommit=True) as conn:
        for _ in range(8):
            for slug in ("acme", "globex"):
                assert bodies(conn, world, slug) == (marker(slug),)
        # The learning entry ran once per tenant (not prepared); the quiet
        # one every time after, planned once, not in every transaction.
        assert entry_statements(conn) == []
        [(generic, custom)] = entry_statements(conn, QUIET)
        assert generic + custom >= 8
        # Refusals are the same from the prepared statement.
        forged = sign_tenant_token(b"x" * 32, "acme", 60, "k1")
        with pytest.raises(EntryTokenForged):
            tenant_connection(conn, token=forged).__enter__()
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert bodies(conn, world, "acme") == (marker("acme"),)


def test_refused_tokens_leave_no_statement_behind(world: StrictWorld) -> None:
    forged = sign_tenant_token(b"x" * 32, "acme", 60, "k1")
    with psycopg.connect(world.app_dsn, autocommit=True, prepare_threshold=0) as conn:
        for _ in range(5):
            with pytest.raises(EntryTokenForged):
                tenant_connection(conn, token=forged).__enter__()
        assert len(entry_statements(conn)) <= 1
        assert bodies(conn, world, "acme") == (marker("acme"),)
        assert len(entry_statements(conn)) == 1


def test_entry_works_after_the_statement_was_dropped_behind_psycopg_s_back(
    world: StrictWorld,
) -> None:
    with psycopg.connect(world.app_dsn, autocommit=True, prepare_threshold=0) as conn:
        assert bodies(conn, world, "acme") == (marker("acme"),)
        assert len(entry_statements(conn)) == 1
        drop_entry_statement(conn)
        # globex has not been entered: the learning entry, run unprepared
        # once (psycopg forgot the lost statement; prepared at its next use).
        assert bodies(conn, world, "globex") == (marker("globex"),)
        assert len(entry_statements(conn)) == 0
        # acme has: the quiet entry, prepared now, dropped, re-prepared.
        assert bodies(conn, world, "acme") == (marker("acme"),)
        assert len(entry_statements(conn, QUIET)) == 1
        drop_entry_statement(conn, QUIET)
        assert bodies(conn, world, "acme") == (marker("acme"),)
        assert len(entry_statements(conn, QUIET)) == 0
        assert bodies(conn, world, "globex") == (marker("globex"),)
        assert len(entry_statements(conn, QUIET)) == 1


def test_no_statement_without_prepare_threshold(world: StrictWorld) -> None:
    with psycopg.connect(world.app_dsn, autocommit=True, prepare_threshold=None) as conn:
        for _ in range(8):
            assert bodies(conn, world, "acme") == (marker("acme"),)
        assert entry_statements(conn) == []


def test_async_entry_is_prepared_and_recovers_a_dropped_statement(world: StrictWorld) -> None:
    async def run() -> None:
        async with await psycopg.AsyncConnection.connect(
            world.app_dsn, autocommit=True, prepare_threshold=0
        ) as conn:
            for i, slug in enumerate(("acme", "globex", "acme", "globex", "acme")):
                async with tenant_connection(conn, token=token(world, slug)) as c:
                    cur = await c.execute("SELECT body FROM invoice ORDER BY id")
                    assert await cur.fetchone() == (marker(slug),)
                if i == 2:
                    # The quiet entry acme just prepared; globex's next uses it.
                    drop_entry_statement(conn, QUIET)
            cur = await conn.execute(
                "SELECT count(*) FROM pg_prepared_statements WHERE statement = %s",
                (QUIET,),
                prepare=False,
            )
            assert await cur.fetchone() == (1,)

    asyncio.run(run())
