"""``tenant_connection``: a psycopg 3 transaction in a tenant.

``with tenant_connection(pool_or_conn, "acme") as conn:`` opens one
transaction, enters the tenant as its first statement (the database refuses
unknown, suspended and deleted tenants), yields the connection, and commits
on success or rolls back on an exception. Tenant settings are
transaction-local, so the connection (returned to its pool, or kept by the
caller) carries nothing of the tenant afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import pq
from psycopg_pool import ConnectionPool

from pgtenancy.context import resolve_tenant, use_tenant
from pgtenancy.errors import InvalidConnectionState, translate
from pgtenancy.queries import QUERIES

_ENTER = QUERIES["enter_tenant"]


@contextmanager
def _tenant_transaction(
    conn: psycopg.Connection[Any], slug: str
) -> Iterator[psycopg.Connection[Any]]:
    status = conn.info.transaction_status
    if status != pq.TransactionStatus.IDLE:
        raise InvalidConnectionState(
            f"connection is not idle ({status.name}): a tenant transaction must be the "
            "connection's outermost transaction, or its settings would outlive the block"
        )
    with use_tenant(slug), conn.transaction():
        try:
            conn.execute(_ENTER, {"slug": slug})
        except psycopg.Error as exc:
            raise translate(exc) from exc
        yield conn


@contextmanager
def tenant_connection(
    conn_or_pool: psycopg.Connection[Any] | ConnectionPool[Any],
    slug: str | None = None,
) -> Iterator[psycopg.Connection[Any]]:
    """Run the block as one transaction in tenant ``slug``.

    Args:
        conn_or_pool: a ``psycopg.Connection`` that is not inside a transaction
            (autocommit or idle), or a ``psycopg_pool.ConnectionPool`` to borrow
            one from for the block.
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
    """
    slug = resolve_tenant(slug)
    if isinstance(conn_or_pool, ConnectionPool):
        with conn_or_pool.connection() as conn, _tenant_transaction(conn, slug) as c:
            yield c
    else:
        with _tenant_transaction(conn_or_pool, slug) as c:
            yield c
