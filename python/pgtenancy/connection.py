"""``tenant_connection``: a psycopg 3 transaction in a tenant, sync or async.

``with tenant_connection(pool_or_conn, "acme") as conn:`` opens one
transaction, enters the tenant as its first statement (the database refuses
unknown, suspended and deleted tenants), yields the connection, and commits
on success or rolls back on an exception. Tenant settings are
transaction-local, so the connection (returned to its pool, or kept by the
caller) carries nothing of the tenant afterwards. With a
``psycopg.AsyncConnection`` or ``psycopg_pool.AsyncConnectionPool`` use
``async with``.
"""

from __future__ import annotations

from contextlib import AsyncExitStack, ExitStack
from types import TracebackType
from typing import Any

import psycopg
from psycopg import pq
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from pgtenancy.context import resolve_tenant, use_tenant
from pgtenancy.errors import InvalidConnectionState, raise_translated
from pgtenancy.queries import QUERIES

_ENTER = QUERIES["enter_tenant"]

SyncTarget = psycopg.Connection[Any] | ConnectionPool[Any]
AsyncTarget = psycopg.AsyncConnection[Any] | AsyncConnectionPool[Any]


def _check_idle(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> None:
    status = conn.info.transaction_status
    if status != pq.TransactionStatus.IDLE:
        raise InvalidConnectionState(
            f"connection is not idle ({status.name}): a tenant transaction must be the "
            "connection's outermost transaction, or its settings would outlive the block"
        )


class _TenantConnection:
    """The object ``tenant_connection()`` returns: a sync or async context manager."""

    def __init__(self, target: SyncTarget | AsyncTarget, slug: str | None) -> None:
        self.slug = resolve_tenant(slug)
        self._target = target
        self._stack: ExitStack | None = None
        self._astack: AsyncExitStack | None = None

    def __enter__(self) -> psycopg.Connection[Any]:
        target = self._target
        if isinstance(target, psycopg.AsyncConnection | AsyncConnectionPool):
            raise TypeError("tenant_connection() on an async connection needs 'async with'")
        with ExitStack() as stack:
            conn = (
                stack.enter_context(target.connection())
                if isinstance(target, ConnectionPool)
                else target
            )
            _check_idle(conn)
            stack.enter_context(use_tenant(self.slug))
            stack.enter_context(conn.transaction())
            try:
                conn.execute(_ENTER, {"slug": self.slug})
            except psycopg.Error as exc:
                raise_translated(exc)
            self._stack = stack.pop_all()
        return conn

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._stack is not None
        return self._stack.__exit__(exc_type, exc, tb)

    async def __aenter__(self) -> psycopg.AsyncConnection[Any]:
        target = self._target
        if not isinstance(target, psycopg.AsyncConnection | AsyncConnectionPool):
            raise TypeError("tenant_connection() on a sync connection needs 'with'")
        async with AsyncExitStack() as stack:
            conn = (
                await stack.enter_async_context(target.connection())
                if isinstance(target, AsyncConnectionPool)
                else target
            )
            _check_idle(conn)
            await stack.enter_async_context(use_tenant(self.slug))
            await stack.enter_async_context(conn.transaction())
            try:
                await conn.execute(_ENTER, {"slug": self.slug})
            except psycopg.Error as exc:
                raise_translated(exc)
            self._astack = stack.pop_all()
        return conn

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._astack is not None
        return await self._astack.__aexit__(exc_type, exc, tb)


def tenant_connection(
    conn_or_pool: SyncTarget | AsyncTarget, slug: str | None = None
) -> _TenantConnection:
    """Run the block as one transaction in tenant ``slug``.

    Usage::

        with tenant_connection(pool, "acme") as conn:
            conn.execute("SELECT ...")
        async with tenant_connection(async_pool, "acme") as aconn:
            await aconn.execute("SELECT ...")

    Args:
        conn_or_pool: a ``psycopg.Connection`` or ``ConnectionPool`` (use
            ``with``), or a ``psycopg.AsyncConnection`` or
            ``AsyncConnectionPool`` (use ``async with``). A connection must not
            be inside a transaction (autocommit or idle); a pool lends one for
            the block.
        slug: tenant slug; None means the current context's tenant.

    Yields:
        The connection, inside the tenant transaction. Do not call ``commit()``
        in the block (psycopg refuses it inside ``transaction()``); leave the
        block to commit.

    Raises:
        pgtenancy.errors.NoTenantContext: no slug and no tenant context.
        pgtenancy.errors.InvalidTenantSlug: invalid slug, before any SQL runs.
        pgtenancy.errors.InvalidConnectionState: the connection is already in a
            transaction.
        pgtenancy.errors.TenantNotFound, TenantSuspended, TenantDeleted,
            TenantSchemaMissing: refused by the database (PT003/PT004/PT005/PT007).
        TypeError: ``with`` on an async target, or ``async with`` on a sync one.
    """
    return _TenantConnection(conn_or_pool, slug)
