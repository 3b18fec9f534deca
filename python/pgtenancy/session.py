"""``tenant_session``: SQLAlchemy 2 sessions whose every transaction is in a tenant.

Each time the session begins a transaction on a connection (the first query,
and again after every ``commit()`` or ``rollback()``), it calls
``tenancy.enter_tenant(slug)``. The database refuses an unknown, suspended or
deleted tenant right there, and otherwise sets ``search_path`` and
``app.tenant_id`` transaction-locally, so when the transaction ends the pooled
connection carries nothing of the tenant.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, event
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, SessionTransaction, sessionmaker

from pgtenancy.context import resolve_tenant, use_tenant
from pgtenancy.errors import InvalidConnectionState, translate
from pgtenancy.queries import QUERIES

_ENTER = QUERIES["enter_tenant"]


def enter_tenant(connection: Connection, slug: str) -> None:
    """Put the transaction open on ``connection`` into tenant ``slug``.

    Args:
        connection: a SQLAlchemy connection inside a transaction, not in
            AUTOCOMMIT (transaction-local settings would vanish at once).
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
    try:
        connection.exec_driver_sql(_ENTER, {"slug": slug})
    except DBAPIError as exc:
        raise translate(exc) from exc


@contextmanager
def tenant_session(
    bind: Engine | Connection | sessionmaker[Session],
    slug: str | None = None,
    **session_kwargs: Any,
) -> Iterator[Session]:
    """Open a :class:`~sqlalchemy.orm.Session` whose every transaction runs in a tenant.

    Usage::

        with tenant_session(engine, "acme") as session:
            session.execute(select(Invoice)).scalars().all()
            session.commit()

    The block is also a tenant context (:func:`~pgtenancy.context.use_tenant`),
    so code inside it sees ``current_tenant() == slug``. The session is closed
    on exit; an uncommitted transaction is rolled back.

    Args:
        bind: an :class:`~sqlalchemy.Engine` (psycopg driver), a
            :class:`~sqlalchemy.Connection` not yet in a transaction, or a
            ``sessionmaker`` whose sessions are used.
        slug: tenant slug; None means the current context's tenant.
        **session_kwargs: passed to ``Session`` (ignored with a sessionmaker).

    Raises:
        pgtenancy.errors.NoTenantContext: no slug and no tenant context.
        pgtenancy.errors.InvalidTenantSlug: invalid slug, before any SQL runs.
        pgtenancy.errors.TenantNotFound, TenantSuspended, TenantDeleted,
            TenantSchemaMissing: at the first query of a transaction, raised by
            the database before any tenant data is read.
        pgtenancy.errors.InvalidConnectionState: the bind is in AUTOCOMMIT mode.
    """
    slug = resolve_tenant(slug)
    session = bind() if isinstance(bind, sessionmaker) else Session(bind, **session_kwargs)

    @event.listens_for(session, "after_begin")
    def _enter(_session: Session, _transaction: SessionTransaction, connection: Connection) -> None:
        enter_tenant(connection, slug)

    try:
        with use_tenant(slug):
            yield session
    finally:
        session.close()
