"""The one message that opens a tenant transaction, shared by sessions and connections.

``BEGIN; SELECT tenancy.enter_tenant('acme')`` goes to the server as one
simple-query message, so a tenant transaction costs the same round trips as a
plain one (psycopg sends ``BEGIN`` as its own round trip before the first
statement of a plain transaction; this message replaces it). The text is
composed once per (``BEGIN`` variant, slug) and cached.

Internal module: the public entry points are
:func:`pgtenancy.tenant_connection` and :func:`pgtenancy.tenant_session`.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

import psycopg
from psycopg import generators, pq, sql

from pgtenancy.errors import raise_translated

#: How many composed entry messages are kept (one per tenant and BEGIN variant).
CACHE_SIZE = 4096


def begin_command(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> str:
    """The ``BEGIN`` psycopg itself would send for ``conn``'s transaction settings."""
    if conn.isolation_level is None and conn.read_only is None and conn.deferrable is None:
        return "BEGIN"
    parts = ["BEGIN"]
    if conn.isolation_level is not None:
        parts.append("ISOLATION LEVEL " + conn.isolation_level.name.replace("_", " "))
    if conn.read_only is not None:
        parts.append("READ ONLY" if conn.read_only else "READ WRITE")
    if conn.deferrable is not None:
        parts.append("DEFERRABLE" if conn.deferrable else "NOT DEFERRABLE")
    return " ".join(parts)


@lru_cache(maxsize=CACHE_SIZE)
def entry_message(begin: str, slug: str) -> bytes:
    """``<begin>; SELECT tenancy.enter_tenant('<slug>')`` as bytes (cached).

    ``slug`` must already be validated; it is still rendered as a SQL literal
    by :class:`psycopg.sql.Literal`, never formatted into the text by hand.
    """
    query = sql.SQL("{}; SELECT tenancy.enter_tenant({})").format(sql.SQL(begin), sql.Literal(slug))
    return query.as_bytes(None)


def _check(
    result: pq.abc.PGresult, conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]
) -> None:
    if result.status != pq.ExecStatus.TUPLES_OK:
        raise_translated(psycopg.errors.error_from_result(result, encoding=conn.info.encoding))


def begin_in_tenant(conn: psycopg.Connection[Any], slug: str) -> None:
    """Open a transaction on idle ``conn`` already in tenant ``slug``, in one round trip.

    Args:
        conn: a psycopg connection with no transaction open (autocommit or not).
        slug: a validated tenant slug.

    Raises:
        pgtenancy.errors.TenantNotFound, TenantSuspended, TenantDeleted,
            TenantSchemaMissing: refused by the database (PT003/PT004/PT005/PT007);
            the transaction is then open and aborted, and must be rolled back.
        psycopg.Error: any other database error.
    """
    message = entry_message(begin_command(conn), slug)
    with conn.lock:
        result = conn.pgconn.exec_(message)
    _check(result, conn)


async def abegin_in_tenant(conn: psycopg.AsyncConnection[Any], slug: str) -> None:
    """:func:`begin_in_tenant` for an ``AsyncConnection``, without blocking the loop.

    Sends the message with libpq's non-blocking ``PQsendQuery`` and waits
    for the results on the event loop, as psycopg does for its own commands.

    Raises:
        The same as :func:`begin_in_tenant`.
    """
    message = entry_message(begin_command(conn), slug)
    async with conn.lock:
        conn.pgconn.send_query(message)
        results = await conn.wait(generators.execute(conn.pgconn))
    # One result per statement: BEGIN's, then enter_tenant's (or an error).
    for result in results:
        if result.status == pq.ExecStatus.FATAL_ERROR:
            _check(result, conn)
    _check(results[-1], conn)


# -- strict entry: a signed token instead of a slug ---------------------------


# What a token and a slug may contain: no quote, no backslash, nothing a
# string literal would have to escape.
_PLAIN_LITERAL = re.compile(r"[a-z0-9_.-]{1,400}")


def token_message(begin: str, token: str, slug: str | None) -> bytes:
    """``<begin>; SELECT tenancy.enter_tenant_token('<token>', '<slug>')`` as bytes.

    Not cached: every request brings a fresh token. Composing with
    :class:`psycopg.sql.Literal` costs some 70 µs a message, as much as the
    rest of the entry; so a token and slug made only of the characters of
    the token grammar (``[a-z0-9_.-]``, checked here: nothing to escape) are
    put in quotes directly, and anything else goes through ``sql.Literal``
    (and is then refused by the database as a malformed token).
    """
    if _PLAIN_LITERAL.fullmatch(token) and (slug is None or _PLAIN_LITERAL.fullmatch(slug)):
        second = "NULL" if slug is None else f"'{slug}'"
        return f"{begin}; SELECT tenancy.enter_tenant_token('{token}', {second})".encode("ascii")
    query = sql.SQL("{}; SELECT tenancy.enter_tenant_token({}, {})").format(
        sql.SQL(begin), sql.Literal(token), sql.Literal(slug)
    )
    return query.as_bytes(None)


def begin_with_token(conn: psycopg.Connection[Any], token: str, slug: str | None = None) -> None:
    """Open a tenant transaction on idle ``conn`` for entry token ``token``, one round trip.

    Args:
        conn: a psycopg connection with no transaction open.
        token: an entry token (:func:`pgtenancy.sign_tenant_token`).
        slug: when given, the tenant the token must be for.

    Raises:
        pgtenancy.errors.EntryTokenForged, EntryTokenExpired, EntryTokenWrongTenant:
            the token was refused (PT025/PT026/PT027), and the errors of
            :func:`begin_in_tenant`; the transaction is then open and aborted.
    """
    message = token_message(begin_command(conn), token, slug)
    with conn.lock:
        result = conn.pgconn.exec_(message)
    _check(result, conn)


async def abegin_with_token(
    conn: psycopg.AsyncConnection[Any], token: str, slug: str | None = None
) -> None:
    """:func:`begin_with_token` for an ``AsyncConnection``, without blocking the loop.

    Raises:
        The same as :func:`begin_with_token`.
    """
    message = token_message(begin_command(conn), token, slug)
    async with conn.lock:
        conn.pgconn.send_query(message)
        results = await conn.wait(generators.execute(conn.pgconn))
    for result in results:
        if result.status == pq.ExecStatus.FATAL_ERROR:
            _check(result, conn)
    _check(results[-1], conn)
