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

import logging
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from types import TracebackType
from typing import Any, TypeVar, overload

import psycopg
from psycopg import pq
from psycopg.rows import Row
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from pgtenancy._entry import (
    abegin_in_tenant,
    abegin_with_token,
    begin_in_tenant,
    begin_with_token,
    tag_statements,
    untag,
)
from pgtenancy.context import enter_validated, resolve_tenant
from pgtenancy.entry_tokens import resolve_token_tenant
from pgtenancy.errors import InvalidConnectionState, raise_translated
from pgtenancy.queries import QUERIES

_ENTER = QUERIES["enter_tenant"]
_ENTER_TOKEN = QUERIES["enter_tenant_token"]
logger = logging.getLogger("pgtenancy.connection")
_IDLE = pq.TransactionStatus.IDLE

SyncTarget = psycopg.Connection[Any] | ConnectionPool[Any]
AsyncTarget = psycopg.AsyncConnection[Any] | AsyncConnectionPool[Any]
CT = TypeVar("CT", bound=psycopg.Connection[Any])
ACT = TypeVar("ACT", bound=psycopg.AsyncConnection[Any])


def _check_idle(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> None:
    # The PGconn's status, not conn.info's: conn.info builds a ConnectionInfo
    # on every access, a microsecond on every tenant transaction.
    status = conn.pgconn.transaction_status
    if status != _IDLE:
        status = pq.TransactionStatus(status)
        raise InvalidConnectionState(
            f"connection is not idle ({status.name}): a tenant transaction must be the "
            "connection's outermost transaction, or its settings would outlive the block"
        )


def _in_pipeline(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> bool:
    return conn.pgconn.pipeline_status != pq.PipelineStatus.OFF


# psycopg refuses commit(), rollback() and autocommit changes on a connection
# whose Transaction-block counter is non-zero. The block opens its transaction
# with its own one-message BEGIN (psycopg's transaction() would cost a round
# trip of its own), so it holds that counter itself, to keep the same
# protection: a commit() in the block would end the tenant transaction and let
# the next statements run outside the tenant.
def _hold(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any], step: int) -> None:
    if hasattr(conn, "_num_transactions"):
        conn._num_transactions += step


# A rollback after an error must not hide that error: when the connection is
# gone the rollback fails too (psycopg's transaction() ignores that failure the
# same way, with a warning); the pool discards the broken connection.
def _quiet(rollback: Callable[[], None]) -> None:
    try:
        rollback()
    except psycopg.OperationalError as exc:
        logger.warning("rollback of the tenant transaction failed: %s", exc)


async def _aquiet(rollback: Callable[[], Awaitable[None]]) -> None:
    try:
        await rollback()
    except psycopg.OperationalError as exc:
        logger.warning("rollback of the tenant transaction failed: %s", exc)


_NOT_A_TARGET = "tenant_connection() needs a psycopg connection or connection pool, not "


class _TenantConnection:
    """The object ``tenant_connection()`` returns: a sync or async context manager.

    Written out by hand rather than with an ExitStack: it runs around every
    tenant transaction, and each layer costs microseconds there.
    """

    __slots__ = ("_conn", "_lease", "_scope", "_target", "_token", "_tx", "slug")

    def __init__(
        self, target: SyncTarget | AsyncTarget, slug: str | None, token: str | None = None
    ) -> None:
        self._token = token
        self.slug = resolve_tenant(slug) if token is None else resolve_token_tenant(slug, token)
        self._target = target
        self._conn: Any = None
        self._lease: Any = None
        self._scope: Any = None
        self._tx: Any = None

    # -- sync -----------------------------------------------------------------

    def __enter__(self) -> psycopg.Connection[Any]:
        target = self._target
        lease: AbstractContextManager[psycopg.Connection[Any]] | None = None
        if isinstance(target, psycopg.Connection):
            conn = target
        elif isinstance(target, ConnectionPool):
            lease = target.connection()
            conn = lease.__enter__()
        elif isinstance(target, psycopg.AsyncConnection | AsyncConnectionPool):
            raise TypeError("tenant_connection() on an async connection needs 'async with'")
        else:
            raise TypeError(_NOT_A_TARGET + type(target).__name__)
        try:
            _check_idle(conn)
            scope = enter_validated(self.slug)
            scope.__enter__()
            try:
                if _in_pipeline(conn):
                    # Pipeline mode batches on its own: psycopg's transaction().
                    tx = conn.transaction()
                    tx.__enter__()
                    try:
                        # A plain Cursor, not the connection's cursor_factory: a
                        # ClientCursor would write the token into the statement
                        # text, which pg_stat_activity shows to the role's other
                        # sessions (an attack run entered another tenant so).
                        if self._token is None:
                            psycopg.Cursor(conn).execute(_ENTER, {"slug": self.slug})
                        else:
                            psycopg.Cursor(conn).execute(
                                _ENTER_TOKEN, {"token": self._token, "slug": self.slug}
                            )
                    except BaseException as exc:
                        tx.__exit__(type(exc), exc, exc.__traceback__)
                        if isinstance(exc, psycopg.Error):
                            raise_translated(exc)
                        raise
                    self._tx = tx
                else:
                    try:
                        if self._token is None:
                            path = begin_in_tenant(conn, self.slug)
                        else:
                            path = begin_with_token(conn, self._token, self.slug)
                    except BaseException:
                        _quiet(conn.rollback)
                        raise
                    _hold(conn, 1)
                    tag_statements(conn, path, self)
            except BaseException as exc:
                scope.__exit__(type(exc), exc, exc.__traceback__)
                raise
        except BaseException as exc:
            if lease is not None:
                lease.__exit__(type(exc), exc, exc.__traceback__)
            raise
        self._conn, self._lease, self._scope = conn, lease, scope
        return conn

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        conn, lease, scope, tx = self._conn, self._lease, self._scope, self._tx
        self._conn = self._lease = self._scope = self._tx = None
        error = exc
        try:
            if tx is not None:
                return bool(tx.__exit__(exc_type, exc, tb)) or None
            untag(conn, self)
            _hold(conn, -1)
            if exc is None:
                try:
                    conn.commit()
                except psycopg.Error as failed:
                    raise_translated(failed)
                return None
            _quiet(conn.rollback)
            return isinstance(exc, psycopg.Rollback) or None
        except BaseException as raised:
            error = raised
            raise
        finally:
            try:
                scope.__exit__(exc_type, exc, tb)
            finally:
                if lease is not None:
                    if error is None:
                        lease.__exit__(None, None, None)
                    else:
                        lease.__exit__(type(error), error, error.__traceback__)

    # -- async ----------------------------------------------------------------

    async def __aenter__(self) -> psycopg.AsyncConnection[Any]:
        target = self._target
        lease: AbstractAsyncContextManager[psycopg.AsyncConnection[Any]] | None = None
        if isinstance(target, psycopg.AsyncConnection):
            conn = target
        elif isinstance(target, AsyncConnectionPool):
            lease = target.connection()
            conn = await lease.__aenter__()
        elif isinstance(target, psycopg.Connection | ConnectionPool):
            raise TypeError("tenant_connection() on a sync connection needs 'with'")
        else:
            raise TypeError(_NOT_A_TARGET + type(target).__name__)
        try:
            _check_idle(conn)
            scope = enter_validated(self.slug)
            await scope.__aenter__()
            try:
                if _in_pipeline(conn):
                    tx = conn.transaction()
                    await tx.__aenter__()
                    try:
                        # Server-side binding whatever the cursor_factory (see the
                        # sync path).
                        if self._token is None:
                            await psycopg.AsyncCursor(conn).execute(_ENTER, {"slug": self.slug})
                        else:
                            await psycopg.AsyncCursor(conn).execute(
                                _ENTER_TOKEN, {"token": self._token, "slug": self.slug}
                            )
                    except BaseException as exc:
                        await tx.__aexit__(type(exc), exc, exc.__traceback__)
                        if isinstance(exc, psycopg.Error):
                            raise_translated(exc)
                        raise
                    self._tx = tx
                else:
                    try:
                        if self._token is None:
                            path = await abegin_in_tenant(conn, self.slug)
                        else:
                            path = await abegin_with_token(conn, self._token, self.slug)
                    except BaseException:
                        await _aquiet(conn.rollback)
                        raise
                    _hold(conn, 1)
                    tag_statements(conn, path, self)
            except BaseException as exc:
                await scope.__aexit__(type(exc), exc, exc.__traceback__)
                raise
        except BaseException as exc:
            if lease is not None:
                await lease.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        self._conn, self._lease, self._scope = conn, lease, scope
        return conn

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        conn, lease, scope, tx = self._conn, self._lease, self._scope, self._tx
        self._conn = self._lease = self._scope = self._tx = None
        error = exc
        try:
            if tx is not None:
                return bool(await tx.__aexit__(exc_type, exc, tb)) or None
            untag(conn, self)
            _hold(conn, -1)
            if exc is None:
                try:
                    await conn.commit()
                except psycopg.Error as failed:
                    raise_translated(failed)
                return None
            await _aquiet(conn.rollback)
            return isinstance(exc, psycopg.Rollback) or None
        except BaseException as raised:
            error = raised
            raise
        finally:
            try:
                await scope.__aexit__(exc_type, exc, tb)
            finally:
                if lease is not None:
                    if error is None:
                        await lease.__aexit__(None, None, None)
                    else:
                        await lease.__aexit__(type(error), error, error.__traceback__)


@overload
def tenant_connection(
    conn_or_pool: psycopg.Connection[Row], slug: str | None = None, *, token: str | None = None
) -> AbstractContextManager[psycopg.Connection[Row]]: ...
@overload
def tenant_connection(
    conn_or_pool: ConnectionPool[CT], slug: str | None = None, *, token: str | None = None
) -> AbstractContextManager[CT]: ...
@overload
def tenant_connection(
    conn_or_pool: psycopg.AsyncConnection[Row],
    slug: str | None = None,
    *,
    token: str | None = None,
) -> AbstractAsyncContextManager[psycopg.AsyncConnection[Row]]: ...
@overload
def tenant_connection(
    conn_or_pool: AsyncConnectionPool[ACT], slug: str | None = None, *, token: str | None = None
) -> AbstractAsyncContextManager[ACT]: ...
def tenant_connection(
    conn_or_pool: SyncTarget | AsyncTarget, slug: str | None = None, *, token: str | None = None
) -> Any:
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
        slug: tenant slug; None means the current context's tenant (or, with
            ``token``, the token's tenant).
        token: an entry token (:func:`pgtenancy.sign_tenant_token`): the
            block enters the token's tenant with
            ``tenancy.enter_tenant_token``, verified by the database (in
            strict mode the only way in). ``slug``, if given, must match it.

    The transaction starts with one message, ``BEGIN; CALL
    tenancy.enter('acme')`` (the procedure form of ``enter_tenant``), so the
    block costs the same round trips
    as a plain ``with conn.transaction():`` block (BEGIN, your statements,
    COMMIT). Raising ``psycopg.Rollback`` in the block rolls back quietly.
    Inside the block psycopg's automatic prepared statements are keyed by
    the tenant's ``search_path`` as well as their text, so each tenant's
    statements stay planned for its schema when tenants switch (the text
    sent is unchanged; after the block statements are keyed by text alone).

    Returns:
        For a sync connection or pool, a context manager (``with``) yielding
        the ``psycopg.Connection`` (the pool's connection class); for an
        async one, an async context manager (``async with``) yielding the
        ``psycopg.AsyncConnection``. Inside the block the connection is in
        the tenant transaction. Do not call ``commit()`` or ``rollback()`` in
        the block (psycopg refuses them, as inside ``transaction()``); leave
        the block to commit.

    Raises:
        pgtenancy.errors.NoTenantContext: no slug and no tenant context.
        pgtenancy.errors.InvalidTenantSlug: invalid slug, before any SQL runs.
        pgtenancy.errors.InvalidConnectionState: the connection is already in a
            transaction.
        pgtenancy.errors.TenantNotFound, TenantSuspended, TenantDeleted,
            TenantSchemaMissing: refused by the database (PT003/PT004/PT005/PT007).
        pgtenancy.errors.EntryTokenForged, EntryTokenExpired, EntryTokenWrongTenant:
            the token was refused (PT025/PT026/PT027/PT034; a malformed token or a
            slug that is not the token's is refused before any SQL runs).
        TypeError: ``with`` on an async target, or ``async with`` on a sync one.
    """
    return _TenantConnection(conn_or_pool, slug, token)
