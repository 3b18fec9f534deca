"""Reset hooks for connection pools: nothing of a request survives its checkout.

A tenant transaction leaves nothing of the tenant on the connection (its
settings are transaction-local, and ``pg_temp`` is searched last inside a
tenant), but application code can: a ``CREATE TEMP TABLE``, a ``WITH HOLD``
cursor, a ``PREPARE``, a session-level ``SET`` or ``set_config(..., false)``,
a ``LISTEN`` or a session advisory lock all outlive the transaction. These
hooks run what ``DISCARD ALL`` runs (PostgreSQL manual, "DISCARD": ``CLOSE
ALL``, ``SET SESSION AUTHORIZATION DEFAULT``, ``RESET ALL``, ``DEALLOCATE
ALL``, ``UNLISTEN *``, ``pg_advisory_unlock_all()``, ``DISCARD TEMP``,
``DISCARD SEQUENCES``: ``currval``/``lastval`` would tell the next request
the id the last one inserted) but ``DISCARD PLANS``, in one message, when a
connection goes back to its pool, so the next checkout starts clean while
cached plans (``enter_tenant``'s among them) survive:

    pool = ConnectionPool(dsn, reset=pgtenancy.pool_reset)
    apool = AsyncConnectionPool(dsn, reset=pgtenancy.pool_reset_async)
    engine = create_engine(url); pgtenancy.install_sqlalchemy_reset(engine)

Cost: one extra round trip per checkout, measured by ``bench/bench_reset.py``.
``DEALLOCATE ALL`` drops server-side prepared statements psycopg made; the
hooks make psycopg forget them too, so they are prepared again (psycopg
notices a ``DEALLOCATE ALL`` by itself only the first time it runs one on a
connection: the bench caught "prepared statement _pg3_0 does not exist").
Behind a transaction pooler (PgBouncer) use the pooler's own reset instead:
there the session belongs to the pooler.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import pq

from pgtenancy.queries import QUERIES

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from sqlalchemy.ext.asyncio import AsyncEngine


def _forget_prepared(conn: Any) -> None:
    """Drop psycopg's client-side cache of prepared statements of ``conn``.

    After ``DEALLOCATE ALL`` the server has none left. psycopg clears its cache
    when it sees the command's status, but only for a query it has not seen
    before on that connection, so the second reset would leave names of
    statements that no longer exist. ``_prepared`` is psycopg's own
    attribute (psycopg 3.0-3.3); without it there is nothing to clear.
    """
    prepared = getattr(conn, "_prepared", None)
    if prepared is not None:
        prepared.clear()


def pool_reset(conn: psycopg.Connection[Any]) -> None:
    """Reset hook for ``psycopg_pool.ConnectionPool(reset=...)``: discard the session state.

    Args:
        conn: the connection being returned to the pool. An open or failed
            transaction is rolled back first; the reset runs in
            autocommit and the connection's autocommit setting is restored.

    Raises:
        psycopg.Error: the server refused or the connection broke; the pool
            then discards the connection.
    """
    if conn.info.transaction_status != pq.TransactionStatus.IDLE:
        conn.rollback()
    autocommit = conn.autocommit
    conn.autocommit = True
    try:
        conn.execute(QUERIES["discard_session"], prepare=False)
        _forget_prepared(conn)
    finally:
        conn.autocommit = autocommit


async def pool_reset_async(conn: psycopg.AsyncConnection[Any]) -> None:
    """Reset hook for ``psycopg_pool.AsyncConnectionPool(reset=...)``: as :func:`pool_reset`.

    Args:
        conn: the async connection being returned; as :func:`pool_reset`.

    Raises:
        psycopg.Error: as :func:`pool_reset`.
    """
    if conn.info.transaction_status != pq.TransactionStatus.IDLE:
        await conn.rollback()
    autocommit = conn.autocommit
    await conn.set_autocommit(True)
    try:
        await conn.execute(QUERIES["discard_session"], prepare=False)
        _forget_prepared(conn)
    finally:
        await conn.set_autocommit(autocommit)


def install_sqlalchemy_reset(engine: Engine | AsyncEngine) -> None:
    """Make ``engine``'s pool reset every connection returned to it, as :func:`pool_reset`.

    Registers a handler for SQLAlchemy's pool ``reset`` event (SQLAlchemy 2.0
    docs, "Pooling: Reset On Return"): it rolls back, runs the reset in
    autocommit, and leaves the connection as it found it (no transaction,
    autocommit off); SQLAlchemy's own rollback that follows is then a no-op.
    Connections that are being closed are not reset. Calling it twice
    registers the handler once.

    Args:
        engine: a SQLAlchemy ``Engine`` or ``AsyncEngine`` using the psycopg
            driver (``postgresql+psycopg://`` or ``postgresql+psycopg_async://``).

    Raises:
        TypeError: ``engine`` is not a SQLAlchemy engine.
    """
    from sqlalchemy import Engine, event
    from sqlalchemy.ext.asyncio import AsyncEngine

    if isinstance(engine, AsyncEngine):
        engine = engine.sync_engine
    if not isinstance(engine, Engine):
        raise TypeError(f"expected a SQLAlchemy Engine or AsyncEngine, not {type(engine).__name__}")
    if not event.contains(engine, "reset", _sqlalchemy_reset):
        event.listen(engine, "reset", _sqlalchemy_reset)


def _sqlalchemy_reset(dbapi_connection: Any, connection_record: Any, reset_state: Any) -> None:
    """The pool ``reset`` handler of :func:`install_sqlalchemy_reset`."""
    if reset_state.terminate_only:
        return
    if isinstance(dbapi_connection, psycopg.Connection):
        pool_reset(dbapi_connection)  # the sync driver's connection: the same reset
        return
    # The async adapter (it wraps the AsyncConnection as _connection).
    dbapi_connection.rollback()
    dbapi_connection.autocommit = True
    try:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(QUERIES["discard_session"])
        finally:
            cursor.close()
        _forget_prepared(getattr(dbapi_connection, "_connection", dbapi_connection))
    finally:
        dbapi_connection.autocommit = False
