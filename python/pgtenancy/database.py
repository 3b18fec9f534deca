"""The admin API's one database access layer: psycopg, whatever the caller holds.

:class:`Database` turns what a caller gives (a DSN, a psycopg connection or
pool, a function returning a connection, or a SQLAlchemy engine) into psycopg
connections, one transaction at a time, and runs named queries of
``sql/queries.sql`` on them. The SQLAlchemy engine is one adapter among
these: nothing here imports SQLAlchemy unless an engine is passed in, so the
admin API works without it installed.

Errors: psycopg errors carrying a pgtenancy SQLSTATE become the matching
:mod:`pgtenancy.errors` exception; a missing ``tenancy`` object becomes
:class:`~pgtenancy.errors.NotInstalled` or, when another version of the SQL
is installed, :class:`~pgtenancy.errors.VersionMismatch` (read with
``tenancy.version()`` on a fresh transaction).
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Any, TypeAlias, TypeGuard

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from pgtenancy.dsn import libpq_dsn
from pgtenancy.errors import raise_translated, translate
from pgtenancy.queries import QUERIES

if TYPE_CHECKING:
    from psycopg_pool import ConnectionPool
    from sqlalchemy import Engine

#: What the admin API accepts as its database: a libpq DSN or URL (a
#: ``postgresql+psycopg://`` SQLAlchemy URL too), a psycopg connection (used
#: as it is, never closed), a psycopg_pool ``ConnectionPool``, a callable
#: returning a new psycopg connection (closed after each transaction), or a
#: SQLAlchemy ``Engine`` using the psycopg driver.
Connectable: TypeAlias = (
    "str | psycopg.Connection[Any] | ConnectionPool[Any] | Engine "
    "| Callable[[], psycopg.Connection[Any]]"
)


#: The settings a tenant migration must leave as it found them
#: (``tenancy.watched_settings()``; a test keeps the two equal).
WATCHED_SETTINGS = (
    "search_path",
    "row_security",
    "default_transaction_read_only",
    "app.tenant_id",
    "app.tenant",
    "app.tenant_token",
    "pgtenancy.migration_schema",
    "pgtenancy.outside_migration_schema",
    "pgtenancy.drop_tenants",
    "pgtenancy.consumer_inactive_after",
    "pgtenancy.consumer_stale_after",
    "pgtenancy.prepared_stale_after",
    "pgtenancy.created_payload",
    "pgtenancy.guarding_children",
    "pgtenancy.renaming",
    "pgtenancy.accelerator",
)
# Every name qualified: these run in the very session whose search_path a
# migration may have changed (a tenant type named "text" would be found).
_READ_WATCHED = (
    "SELECT pg_catalog.array_agg(pg_catalog.current_setting(w.n, true) ORDER BY w.i),"
    " (SELECT coalesce(pg_catalog.array_agg(c), '{}') FROM pg_catalog.pg_listening_channels() AS c)"
    " FROM pg_catalog.unnest(%(names)s::pg_catalog.text[]) WITH ORDINALITY AS w(n, i)"
)
# The settings set back, then the channels LISTENed to since (a LISTEN takes
# effect at commit: the server's session check never sees one).
_RESTORE_WATCHED = (
    "SELECT 'setting', w.n, pg_catalog.set_config(w.n, coalesce(w.v, ''), false)"
    " FROM ROWS FROM (pg_catalog.unnest(%(names)s::pg_catalog.text[]),"
    " pg_catalog.unnest(%(values)s::pg_catalog.text[])) AS w(n, v)"
    " WHERE coalesce(pg_catalog.current_setting(w.n, true), '')"
    " OPERATOR(pg_catalog.<>) coalesce(w.v, '')"
    " UNION ALL"
    " SELECT 'channel', c, NULL FROM pg_catalog.pg_listening_channels() AS c"
    " WHERE c OPERATOR(pg_catalog.<>) ALL (%(channels)s::pg_catalog.text[])"
)


@contextmanager
def _session_kept(
    conn: psycopg.Connection[Any], transaction: Callable[[], AbstractContextManager[Any]]
) -> Iterator[None]:
    """Run the block in ``transaction()`` on idle ``conn`` (a connection that
    outlives it), then put the watched settings back as they were before it.

    A tenant migration can leave a session-level value under a ``SET LOCAL``
    that restores the value the server's check compares (attack run of
    2026-12-04); PostgreSQL shows the session value only after the commit.
    Read before the transaction (whose first statement may have to be ``SET
    TRANSACTION``), set back after its commit. Warns (``RuntimeWarning``)
    when it set one back. A ``LISTEN`` made in the block (seen only after
    the commit too) is undone the same way. A failed transaction needs
    nothing: its settings were rolled back with it.
    """
    names = list(WATCHED_SETTINGS)
    row = _outside_the_block(conn, _READ_WATCHED, {"names": names})[0]
    before = list(row[0]) if row[0] is not None else []
    channels = list(row[1])
    with transaction():
        yield
    if conn.closed:
        return
    restored = _outside_the_block(
        conn, _RESTORE_WATCHED, {"names": names, "values": before, "channels": channels}
    )
    for kind, name, _ in restored:
        if kind == "channel":
            _outside_the_block(conn, sql.SQL("UNLISTEN {}").format(sql.Identifier(name)))
    if restored:
        warnings.warn(
            "a statement of this transaction (a tenant migration?) left "
            + ", ".join(f"{kind} {name}" for kind, name, _ in restored)
            + " on this connection beyond the transaction; set back (UNLISTEN for a channel)",
            RuntimeWarning,
            stacklevel=4,
        )


def _outside_the_block(
    conn: psycopg.Connection[Any],
    query: str | sql.Composed,
    params: Mapping[str, Any] | None = None,
) -> list[tuple[Any, ...]]:
    """Rows of ``query`` on idle ``conn`` (none for a statement without
    rows), leaving it idle (a transaction of its own unless it is in
    autocommit)."""
    if conn.autocommit:
        cur = conn.execute(query, params)
        return cur.fetchall() if cur.description else []
    with conn.transaction():
        cur = conn.execute(query, params)
        return cur.fetchall() if cur.description else []


def _is_engine(obj: object) -> TypeGuard[Engine]:
    sqlalchemy = sys.modules.get("sqlalchemy")  # an engine implies it is imported
    return sqlalchemy is not None and isinstance(obj, sqlalchemy.Engine)


def _is_pool(obj: object) -> TypeGuard[ConnectionPool[Any]]:
    pool = sys.modules.get("psycopg_pool")
    return pool is not None and isinstance(obj, pool.ConnectionPool)


class Database:
    """psycopg transactions on the database a caller named.

    Args:
        source: a :data:`Connectable`.

    Raises:
        TypeError: ``source`` is none of those (an async engine, connection or
            pool included: the admin API is synchronous).
    """

    def __init__(self, source: Connectable) -> None:
        self.source = source
        self._open: Callable[[], Any]
        if isinstance(source, str):
            dsn = libpq_dsn(source)
            self._open = lambda: self._fresh(psycopg.connect(dsn, autocommit=True))
        elif isinstance(source, psycopg.Connection):
            self._open = lambda: self._shared(source)
        elif _is_pool(source):
            pool = source
            self._open = lambda: self._pooled(pool)
        elif _is_engine(source):
            engine = source
            self._open = lambda: self._engine(engine)
        elif isinstance(source, psycopg.AsyncConnection) or not callable(source):
            raise TypeError(
                "expected a DSN, a psycopg Connection or ConnectionPool, a SQLAlchemy Engine, "
                f"or a callable returning a psycopg Connection; got {type(source).__name__}"
            )
        else:
            factory = source
            self._open = lambda: self._fresh(factory())

    # One adapter per kind of source; each yields a psycopg connection inside
    # a transaction that commits when the block ends normally.

    @staticmethod
    @contextmanager
    def _fresh(conn: psycopg.Connection[Any]) -> Iterator[psycopg.Connection[Any]]:
        with conn, conn.transaction():
            yield conn

    @staticmethod
    @contextmanager
    def _shared(conn: psycopg.Connection[Any]) -> Iterator[psycopg.Connection[Any]]:
        # A transaction of its own (the session's settings kept), or a
        # savepoint inside the caller's (whose commit is the caller's).
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            with conn.transaction():
                yield conn
            return
        with _session_kept(conn, conn.transaction):
            yield conn

    @staticmethod
    @contextmanager
    def _pooled(pool: ConnectionPool[Any]) -> Iterator[psycopg.Connection[Any]]:
        with pool.connection() as conn, _session_kept(conn, conn.transaction):
            yield conn

    @staticmethod
    @contextmanager
    def _engine(engine: Engine) -> Iterator[psycopg.Connection[Any]]:
        # SQLAlchemy runs the transaction (commit or rollback at the end);
        # the statements go to its psycopg connection directly.
        with engine.connect() as sa_conn:
            driver = sa_conn.connection.driver_connection
            if not isinstance(driver, psycopg.Connection):
                raise TypeError("the engine must use the psycopg driver (postgresql+psycopg://)")
            with _session_kept(driver, sa_conn.begin):
                yield driver

    @contextmanager
    def transaction(self) -> Iterator[psycopg.Connection[Any]]:
        """A psycopg connection in a transaction, committed when the block ends.

        Raises:
            pgtenancy.errors.TenancyError: the subclass of the SQLSTATE raised
                (see :func:`pgtenancy.errors.translate`); the transaction is
                rolled back.
            psycopg.Error: other database errors (connection failures included).
        """
        try:
            with self._open() as conn:
                yield conn
        except Exception as exc:
            if translate(exc) is exc and not isinstance(exc, psycopg.Error):
                raise
            raise_translated(exc, installed_version=self.installed_version)

    def installed_version(self) -> str | None:
        """``tenancy.version()`` of the database, or None when it has none."""
        with self._open() as conn:
            present = conn.execute(QUERIES["is_installed"]).fetchone()
            if present is None or not present[0]:
                return None
            row = conn.execute(QUERIES["version"]).fetchone()
        return None if row is None else str(row[0])

    def rows(self, query: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """Run named query ``query`` of ``sql/queries.sql`` in its own transaction.

        Args:
            query: the query's name.
            params: its ``%(name)s`` parameters.

        Returns:
            Every row, as a dict of column name to value.
        """
        with self.transaction() as conn:
            cur = conn.cursor(row_factory=dict_row)
            cur.execute(QUERIES[query], params)
            return cur.fetchall() if cur.description else []

    def one(self, query: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Like :meth:`rows` for a query returning exactly one row."""
        found = self.rows(query, params)
        if len(found) != 1:
            raise LookupError(f"query {query!r} returned {len(found)} rows, expected one")
        return found[0]
