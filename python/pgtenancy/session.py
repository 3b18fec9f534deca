"""``tenant_session``: SQLAlchemy 2 sessions whose every transaction is in a tenant.

Each time the session begins a transaction on a connection (the first query,
and again after every ``commit()`` or ``rollback()``), it calls
``tenancy.enter_tenant(slug)``. The database refuses an unknown, suspended or
deleted tenant right there, and otherwise sets ``search_path`` and
``app.tenant_id`` transaction-locally, so when the transaction ends the pooled
connection carries nothing of the tenant.

The same function serves sync and asyncio code::

    with tenant_session(engine, "acme") as session: ...              # Session
    async with tenant_session(async_engine, "acme") as session: ...  # AsyncSession
"""

from __future__ import annotations

from types import TracebackType
from typing import Any, Generic, TypeVar

import psycopg
from psycopg import pq, sql
from sqlalchemy import Connection, Engine, event
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session, SessionTransaction, sessionmaker

from pgtenancy.context import resolve_tenant, use_tenant
from pgtenancy.errors import InvalidConnectionState, raise_translated
from pgtenancy.queries import QUERIES

_ENTER = QUERIES["enter_tenant"]

SyncBind = Engine | Connection | sessionmaker[Session]
AsyncBind = AsyncEngine | AsyncConnection | async_sessionmaker[AsyncSession]
S = TypeVar("S", Session, AsyncSession)

_IN_TRANSACTION = (
    "the connection is already in a transaction: the tenant settings would outlive the "
    "session; pass an engine, or a connection with no transaction begun"
)


def enter_tenant(connection: Connection, slug: str) -> None:
    """Put the transaction open on ``connection`` into tenant ``slug``.

    Args:
        connection: a SQLAlchemy connection inside a transaction, not in
            AUTOCOMMIT (transaction-local settings would vanish at once).
            Inside an ``AsyncSession`` this is its sync-facing connection.
        slug: tenant slug.

    Raises:
        pgtenancy.errors.InvalidConnectionState: the connection is in autocommit mode.
        pgtenancy.errors.TenantNotFound, TenantSuspended, TenantDeleted,
            TenantSchemaMissing: refused by the database (PT003/PT004/PT005/PT007).
    """
    dbapi = connection.connection.dbapi_connection
    if getattr(dbapi, "autocommit", False):
        raise InvalidConnectionState(
            "tenant_session needs transactions: the engine or connection uses AUTOCOMMIT, "
            "where transaction-local tenant settings would last one statement"
        )
    if isinstance(dbapi, psycopg.Connection) and (
        dbapi.info.transaction_status == pq.TransactionStatus.IDLE
    ):
        begin_in_tenant(dbapi, slug)
        return
    try:
        connection.exec_driver_sql(_ENTER, {"slug": slug})
    except DBAPIError as exc:
        raise_translated(exc)


def _begin_command(conn: psycopg.Connection[Any]) -> sql.Composable:
    # The BEGIN psycopg itself would send for this connection's settings.
    parts = ["BEGIN"]
    if conn.isolation_level is not None:
        parts.append("ISOLATION LEVEL " + conn.isolation_level.name.replace("_", " "))
    if conn.read_only is not None:
        parts.append("READ ONLY" if conn.read_only else "READ WRITE")
    if conn.deferrable is not None:
        parts.append("DEFERRABLE" if conn.deferrable else "NOT DEFERRABLE")
    return sql.SQL(" ".join(parts))


def begin_in_tenant(conn: psycopg.Connection[Any], slug: str) -> None:
    """Open a transaction on idle ``conn`` already in tenant ``slug``, in one round trip.

    psycopg would send ``BEGIN`` on its own before the first statement; this
    sends ``BEGIN; SELECT tenancy.enter_tenant('slug')`` as one simple query
    instead, so entering the tenant costs no extra round trip. The slug is
    rendered with :class:`psycopg.sql.Literal`, after validation.

    Args:
        conn: a psycopg connection in non-autocommit mode with no transaction open.
        slug: a validated tenant slug.

    Raises:
        pgtenancy.errors.TenantNotFound, TenantSuspended, TenantDeleted,
            TenantSchemaMissing: refused by the database; the transaction is
            then aborted and must be rolled back.
        psycopg.Error: any other database error.
    """
    query = sql.SQL("{}; SELECT tenancy.enter_tenant({})").format(
        _begin_command(conn), sql.Literal(slug)
    )
    with conn.lock:
        result = conn.pgconn.exec_(query.as_bytes(conn))
    if result.status != pq.ExecStatus.TUPLES_OK:
        exc = psycopg.errors.error_from_result(result, encoding=conn.info.encoding)
        raise_translated(exc)


def _hook(session: Session, slug: str) -> None:
    def _enter(_session: Session, _transaction: SessionTransaction, connection: Connection) -> None:
        enter_tenant(connection, slug)

    event.listen(session, "after_begin", _enter)


class _TenantSession(Generic[S]):
    """The object ``tenant_session()`` returns: a sync or async context manager."""

    def __init__(self, bind: SyncBind | AsyncBind, slug: str | None, kwargs: dict[str, Any]):
        self.slug = resolve_tenant(slug)
        self._bind = bind
        self._kwargs = kwargs
        self._scope = use_tenant(self.slug)
        self._session: Any = None

    def __enter__(self) -> Session:
        bind = self._bind
        if isinstance(bind, AsyncEngine | AsyncConnection | async_sessionmaker):
            raise TypeError("tenant_session() on an async engine needs 'async with'")
        if isinstance(bind, Connection) and bind.in_transaction():
            raise InvalidConnectionState(_IN_TRANSACTION)
        session = bind() if isinstance(bind, sessionmaker) else Session(bind, **self._kwargs)
        _hook(session, self.slug)
        self._session = session
        try:
            self._scope.__enter__()
        except BaseException:
            session.close()
            raise
        return session

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self._session.close()
        finally:
            self._scope.__exit__(exc_type, exc, tb)

    async def __aenter__(self) -> AsyncSession:
        bind = self._bind
        if not isinstance(bind, AsyncEngine | AsyncConnection | async_sessionmaker):
            raise TypeError("tenant_session() on a sync engine needs 'with', not 'async with'")
        if isinstance(bind, AsyncConnection) and bind.in_transaction():
            raise InvalidConnectionState(_IN_TRANSACTION)
        if isinstance(bind, async_sessionmaker):
            session = bind()
        else:
            session = AsyncSession(bind, **self._kwargs)
        _hook(session.sync_session, self.slug)
        self._session = session
        try:
            await self._scope.__aenter__()
        except BaseException:
            await session.close()
            raise
        return session

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self._session.close()
        finally:
            await self._scope.__aexit__(exc_type, exc, tb)


def tenant_session(
    bind: SyncBind | AsyncBind,
    slug: str | None = None,
    **session_kwargs: Any,
) -> _TenantSession[Any]:
    """Open a session whose every transaction runs in a tenant.

    Usage::

        with tenant_session(engine, "acme") as session:            # sqlalchemy.orm.Session
            session.execute(select(Invoice)).scalars().all()
            session.commit()

        async with tenant_session(async_engine, "acme") as session:  # AsyncSession
            await session.execute(select(Invoice))

    The block is also a tenant context (:func:`~pgtenancy.context.use_tenant`),
    so code inside it sees ``current_tenant() == slug``; in asyncio the
    context belongs to the running task. The session is closed on exit; an
    uncommitted transaction is rolled back.

    Args:
        bind: an :class:`~sqlalchemy.Engine`, :class:`~sqlalchemy.Connection`
            or ``sessionmaker`` (use ``with``); or an ``AsyncEngine``,
            ``AsyncConnection`` or ``async_sessionmaker`` (use ``async with``).
            The driver must be psycopg (``postgresql+psycopg://``).
        slug: tenant slug; None means the current context's tenant.
        **session_kwargs: passed to ``Session``/``AsyncSession`` (ignored
            with a session maker).

    Raises:
        pgtenancy.errors.NoTenantContext: no slug and no tenant context.
        pgtenancy.errors.InvalidTenantSlug: invalid slug, before any SQL runs.
        pgtenancy.errors.TenantNotFound, TenantSuspended, TenantDeleted,
            TenantSchemaMissing: at the first query of a transaction, raised by
            the database before any tenant data is read.
        pgtenancy.errors.InvalidConnectionState: the bind is in AUTOCOMMIT mode,
            or is a connection already inside a transaction.
        TypeError: ``with`` on an async bind, or ``async with`` on a sync one.
    """
    return _TenantSession(bind, slug, session_kwargs)
