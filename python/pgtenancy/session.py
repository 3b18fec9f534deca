"""``tenant_session``: SQLAlchemy 2 sessions whose every transaction is in a tenant.

Each time the session begins a transaction on a connection (the first query,
and again after every ``commit()`` or ``rollback()``), it calls
``tenancy.enter_tenant(slug)`` (as ``CALL tenancy.enter(slug)``, its procedure
form), sent in the same message as ``BEGIN`` (sync
and async), from one ``after_begin`` listener on the ``Session`` class that
acts only on sessions opened by :func:`tenant_session`. The database refuses
an unknown, suspended or deleted tenant right there, and otherwise sets
``search_path`` and ``app.tenant_id`` transaction-locally, so when the
transaction ends the pooled connection carries nothing of the tenant.

The same function serves sync and asyncio code::

    with tenant_session(engine, "acme") as session: ...              # Session
    async with tenant_session(async_engine, "acme") as session: ...  # AsyncSession
"""

from __future__ import annotations

import threading
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from types import TracebackType
from typing import Any, TypeVar, overload

import psycopg
from psycopg import pq
from sqlalchemy import Connection, Engine, event
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session, SessionTransaction, sessionmaker
from sqlalchemy.util import await_only

from pgtenancy._entry import (
    abegin_in_tenant,
    abegin_with_token,
    begin_with_token,
    tag_statements,
    untag,
)
from pgtenancy._entry import begin_in_tenant as begin_in_tenant
from pgtenancy.context import enter_validated, resolve_tenant
from pgtenancy.entry_tokens import resolve_token_tenant
from pgtenancy.errors import InvalidConnectionState, raise_translated
from pgtenancy.queries import QUERIES

_ENTER = QUERIES["enter_tenant"]
_ENTER_TOKEN = QUERIES["enter_tenant_token"]

SyncBind = Engine | Connection | sessionmaker[Session]
AsyncBind = AsyncEngine | AsyncConnection | async_sessionmaker[AsyncSession]
S = TypeVar("S", bound=Session)
AS = TypeVar("AS", bound=AsyncSession)

#: Key in ``Session.info`` holding the slug of a tenant session.
SLUG_KEY = "pgtenancy.slug"

#: Key in ``Session.info`` holding the entry token of a tenant session opened with one.
TOKEN_KEY = "pgtenancy.token"

#: Key in ``Session.info`` holding the psycopg connections whose prepared
#: statements the session's open transaction keys by its tenant's search_path.
TAGGED_KEY = "pgtenancy.tagged"

_IN_TRANSACTION = (
    "the connection is already in a transaction: the tenant settings would outlive the "
    "session; pass an engine, or a connection with no transaction begun"
)
_IDLE = pq.TransactionStatus.IDLE


def enter_tenant(connection: Connection, slug: str) -> bytes | None:
    """Put the transaction open on ``connection`` into tenant ``slug``.

    When the DBAPI connection has sent nothing yet (SQLAlchemy begins
    lazily), ``BEGIN`` and the entry go as one message, sync or async, so the
    transaction costs no round trip more than a plain one; otherwise the
    entry is one statement.

    Args:
        connection: a SQLAlchemy connection inside a transaction, not in
            AUTOCOMMIT (transaction-local settings would vanish at once).
            Inside an ``AsyncSession`` this is its sync-facing connection.
        slug: a tenant slug, already validated (see
            :func:`pgtenancy.slugs.validate_slug`).

    Returns:
        The ``search_path`` the tenant got, as the server sent it, when the
        entry went as one message with ``BEGIN``; otherwise None.

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
    driver = connection.connection.driver_connection
    if isinstance(driver, psycopg.Connection) and driver.pgconn.transaction_status == _IDLE:
        return begin_in_tenant(driver, slug)
    if isinstance(driver, psycopg.AsyncConnection) and driver.pgconn.transaction_status == _IDLE:
        return await_only(abegin_in_tenant(driver, slug))
    try:
        connection.exec_driver_sql(_ENTER, {"slug": slug})
    except DBAPIError as exc:
        raise_translated(exc)
    return None


def enter_tenant_with_token(connection: Connection, token: str, slug: str) -> bytes | None:
    """Put the transaction open on ``connection`` into the tenant of entry token ``token``.

    As :func:`enter_tenant`, with ``tenancy.enter_tenant_token(token, slug)``;
    returns the same.

    Raises:
        pgtenancy.errors.InvalidConnectionState: the connection is in autocommit mode.
        pgtenancy.errors.EntryTokenForged, EntryTokenExpired, EntryTokenWrongTenant:
            the token was refused (PT025/PT026/PT027/PT034), and :func:`enter_tenant`'s errors.
    """
    dbapi = connection.connection.dbapi_connection
    if getattr(dbapi, "autocommit", False):
        raise InvalidConnectionState(
            "tenant_session needs transactions: the engine or connection uses AUTOCOMMIT, "
            "where transaction-local tenant settings would last one statement"
        )
    driver = connection.connection.driver_connection
    if isinstance(driver, psycopg.Connection) and driver.pgconn.transaction_status == _IDLE:
        return begin_with_token(driver, token, slug)
    if isinstance(driver, psycopg.AsyncConnection) and driver.pgconn.transaction_status == _IDLE:
        return await_only(abegin_with_token(driver, token, slug))
    try:
        connection.exec_driver_sql(_ENTER_TOKEN, {"token": token, "slug": slug})
    except DBAPIError as exc:
        raise_translated(exc)
    return None


def _after_begin(
    session: Session, _transaction: SessionTransaction, connection: Connection
) -> None:
    info = session.info
    slug = info.get(SLUG_KEY)
    if slug is not None:
        token = info.get(TOKEN_KEY)
        if token is None:
            path = enter_tenant(connection, slug)
        else:
            path = enter_tenant_with_token(connection, token, slug)
        driver = connection.connection.driver_connection
        if path is not None and driver is not None:
            # Key the transaction's prepared statements by the tenant's
            # search_path (see pgtenancy._entry), until the transaction ends.
            tag_statements(driver, path, session)
            tagged = info.get(TAGGED_KEY)
            if tagged is None:
                info[TAGGED_KEY] = [driver]
            else:
                tagged.append(driver)


def _untag_all(session: Session) -> None:
    tagged = session.info.pop(TAGGED_KEY, None)
    if tagged:
        for driver in tagged:
            untag(driver, session)


def _after_transaction_end(session: Session, transaction: SessionTransaction) -> None:
    # The outermost transaction ended (commit, rollback or close): its
    # connections key statements by text alone again. untag() acts only on a
    # connection whose tag this session set, so a connection already lent to
    # another session is left alone.
    if transaction.parent is None and TAGGED_KEY in session.info:
        _untag_all(session)


# Listeners on the Session class, registered at the first tenant_session
# (not per session: registering costs more than the whole entry). They fire
# for every Session and subclass, and do nothing for a session that
# tenant_session did not open.
_registered = False
_register_lock = threading.Lock()


def _ensure_listener() -> None:
    global _registered
    if _registered:
        return
    with _register_lock:
        if not _registered:
            event.listen(Session, "after_begin", _after_begin)
            event.listen(Session, "after_transaction_end", _after_transaction_end)
            _registered = True


class _TenantSession:
    """The object ``tenant_session()`` returns: a sync or async context manager."""

    __slots__ = ("_bind", "_kwargs", "_scope", "_session", "_token", "slug")

    def __init__(
        self,
        bind: SyncBind | AsyncBind,
        slug: str | None,
        kwargs: dict[str, Any],
        token: str | None = None,
    ):
        self._token = token
        self.slug = resolve_tenant(slug) if token is None else resolve_token_tenant(slug, token)
        self._bind = bind
        self._kwargs = kwargs
        self._scope = enter_validated(self.slug)
        self._session: Any = None
        _ensure_listener()

    def __enter__(self) -> Session:
        bind = self._bind
        if isinstance(bind, AsyncEngine | AsyncConnection | async_sessionmaker):
            raise TypeError("tenant_session() on an async engine needs 'async with'")
        if isinstance(bind, Connection) and bind.in_transaction():
            raise InvalidConnectionState(_IN_TRANSACTION)
        session = bind() if isinstance(bind, sessionmaker) else Session(bind, **self._kwargs)
        session.info[SLUG_KEY] = self.slug
        if self._token is not None:
            session.info[TOKEN_KEY] = self._token
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
        session = self._session
        try:
            session.close()
        finally:
            _untag_all(session)
            session.info.pop(SLUG_KEY, None)
            session.info.pop(TOKEN_KEY, None)
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
        session.sync_session.info[SLUG_KEY] = self.slug
        if self._token is not None:
            session.sync_session.info[TOKEN_KEY] = self._token
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
        session = self._session
        try:
            await session.close()
        finally:
            _untag_all(session.sync_session)
            session.sync_session.info.pop(SLUG_KEY, None)
            session.sync_session.info.pop(TOKEN_KEY, None)
            await self._scope.__aexit__(exc_type, exc, tb)


@overload
def tenant_session(
    bind: Engine | Connection,
    slug: str | None = None,
    *,
    token: str | None = None,
    **session_kwargs: Any,
) -> AbstractContextManager[Session]: ...
@overload
def tenant_session(
    bind: sessionmaker[S],
    slug: str | None = None,
    *,
    token: str | None = None,
    **session_kwargs: Any,
) -> AbstractContextManager[S]: ...
@overload
def tenant_session(
    bind: AsyncEngine | AsyncConnection,
    slug: str | None = None,
    *,
    token: str | None = None,
    **session_kwargs: Any,
) -> AbstractAsyncContextManager[AsyncSession]: ...
@overload
def tenant_session(
    bind: async_sessionmaker[AS],
    slug: str | None = None,
    *,
    token: str | None = None,
    **session_kwargs: Any,
) -> AbstractAsyncContextManager[AS]: ...
def tenant_session(
    bind: SyncBind | AsyncBind | sessionmaker[Any] | async_sessionmaker[Any],
    slug: str | None = None,
    *,
    token: str | None = None,
    **session_kwargs: Any,
) -> Any:
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
        slug: tenant slug; None means the current context's tenant (or, with
            ``token``, the token's tenant).
        token: an entry token (:func:`pgtenancy.sign_tenant_token`): every
            transaction of the session enters the token's tenant with
            ``tenancy.enter_tenant_token``, verified by the database (in strict
            mode the only way in); ``slug``, if given, must match it.
        **session_kwargs: passed to ``Session``/``AsyncSession`` (ignored
            with a session maker).

    Returns:
        For an ``Engine``, ``Connection`` or ``sessionmaker``, a context
        manager (``with``) yielding a :class:`~sqlalchemy.orm.Session` (the
        maker's class); for an async bind, an async context manager
        (``async with``) yielding an ``AsyncSession``.

    Each transaction starts with one message, ``BEGIN; CALL
    tenancy.enter('acme')``, sync and async alike: a tenant session
    sends no more round trips than a plain one.
    During each transaction psycopg's automatic prepared statements are
    keyed by the tenant's ``search_path`` as well as their text, so they stay
    planned for the tenant's schema when tenants switch (see
    :func:`pgtenancy.tenant_connection`).

    Raises:
        pgtenancy.errors.NoTenantContext: no slug and no tenant context.
        pgtenancy.errors.InvalidTenantSlug: invalid slug, before any SQL runs.
        pgtenancy.errors.TenantNotFound, TenantSuspended, TenantDeleted,
            TenantSchemaMissing: at the first query of a transaction, raised by
            the database before any tenant data is read.
        pgtenancy.errors.EntryTokenForged, EntryTokenExpired, EntryTokenWrongTenant:
            the token was refused (PT025/PT026/PT027/PT034; malformed, or a slug
            that is not the token's, before any SQL runs).
        pgtenancy.errors.InvalidConnectionState: the bind is in AUTOCOMMIT mode,
            or is a connection already inside a transaction.
        TypeError: ``with`` on an async bind, or ``async with`` on a sync one.
    """
    return _TenantSession(bind, slug, session_kwargs, token)
