"""pytest plugin of pgtenancy (entry point ``pytest11``: active once pgtenancy
is installed; ``-p no:pgtenancy`` turns it off).

Fixtures:

``pgtenancy_server`` (session)
    Admin DSN of a PostgreSQL server, found as :func:`~pgtenancy.testing.find_server`
    does: ``TEST_DATABASE_URL`` or ``DATABASE_URL``, else a testcontainers
    Postgres when Docker answers, else a throwaway cluster from the local
    binaries. The session fails with a how-to when none works.
``pgtenancy_migrations`` (session)
    Tenant migrations to register, ``[(version, sql), ...]``; empty by
    default. Override it in your ``conftest.py``.
``pgtenancy_dsn`` (session)
    A fresh database with the kit installed and those migrations registered;
    dropped at the end of the session.
``pgtenancy_admin`` (session)
    :class:`~pgtenancy.admin.Tenancy` on it (the owner).
``tenant`` (function)
    Factory: ``tenant()`` gives the test a tenant of its own, empty, active,
    with ``metadata`` as given. Tenants are provisioned ahead and recycled:
    after the test their tables are emptied (sequences restarted), status
    and metadata reset, and the tenant goes back to the pool, so a test pays
    a few DELETE statements, not a ``create_tenant``. A tenant the test dropped is not
    recycled. The ini option ``pgtenancy_pool_size`` (default 4) sets how many
    are provisioned at first use.
``tenant_db`` (function)
    A SQLAlchemy ``Session`` inside a fresh tenant whose whole work is rolled
    back at the end of the test (see :func:`rollback_session`).

:func:`rollback_session` is the rollback-per-test pattern outside pytest too.
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from psycopg import sql

from pgtenancy.queries import QUERIES
from pgtenancy.testing.server import NoServerError, find_server, fresh_database

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from sqlalchemy.orm import Session

    from pgtenancy.admin import Tenancy, Tenant


def pytest_addoption(parser: pytest.Parser) -> None:
    """Register the ini option ``pgtenancy_pool_size``."""
    parser.addini(
        "pgtenancy_pool_size",
        "tenants the pgtenancy 'tenant' fixture provisions ahead (default 4)",
        default="4",
    )


class TenantPool:
    """Pre-provisioned tenants handed out to tests and recycled after them.

    Recycling empties the tenant's tables with ``DELETE`` (a ``TRUNCATE``
    makes new files and costs ~100x more for the few rows a test leaves),
    child tables first, retrying a table a foreign key still holds after the
    others; restarts its sequences; and resets status and metadata.

    Args:
        tenancy: admin API of the test database.
        dsn: its DSN (the owner's); the pool keeps one connection to it.
        size: tenants provisioned at the first :meth:`acquire`.
        prefix: slug prefix of the tenants made here.
    """

    def __init__(self, tenancy: Tenancy, dsn: str, size: int = 4, prefix: str = "t") -> None:
        self.tenancy = tenancy
        self.dsn = dsn
        self.size = size
        self.prefix = prefix
        self._idle: list[str] = []
        self._warm = False
        self._lock = threading.RLock()
        self._conn: psycopg.Connection[Any] | None = None

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self.dsn, autocommit=True)
            self._conn.execute(QUERIES["testing_lock_timeout"])
        return self._conn

    def close(self) -> None:
        """Close the pool's connection (the tenants stay)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _new(self) -> str:
        slug = f"{self.prefix}_{uuid.uuid4().hex[:10]}"
        self.tenancy.create_tenant(slug)
        return slug

    def acquire(self, metadata: Mapping[str, Any] | None = None) -> Tenant:
        """A tenant of its own for the caller: empty, active, with ``metadata``."""
        from pgtenancy.admin import Tenancy

        with self._lock:
            if not self._warm:
                self._idle.extend(self._new() for _ in range(self.size))
                self._warm = True
            slug = self._idle.pop() if self._idle else self._new()
            conn = self._connection()
            if metadata:
                conn.execute(
                    QUERIES["testing_reset_tenant"],
                    {"slug": slug, "metadata": json.dumps(dict(metadata))},
                )
            return Tenancy(conn).get_tenant(slug)

    @staticmethod
    def _delete(schema: str, names: list[str]) -> sql.Composed:
        """One statement emptying the tables ``names`` (quoted, qualified) of
        tenant schema ``schema``, run as the schema's owner role (so no code
        of the tenant's runs with the owner's rights)."""
        statement = "; ".join(f"DELETE FROM {name}" for name in names)
        return sql.SQL(QUERIES["testing_delete"]).format(
            schema=sql.Literal(schema), statement=sql.Literal(statement)
        )

    def _empty_one_by_one(
        self, conn: psycopg.Connection[Any], schema: str, tables: list[str]
    ) -> bool:
        """DELETE table by table, retrying those a foreign key still holds."""
        for _ in range(len(tables) + 1):
            held = []
            for name in tables:
                try:
                    with conn.transaction():
                        conn.execute(self._delete(schema, [name]))
                except psycopg.errors.ForeignKeyViolation:
                    held.append(name)
            tables = held
            if not tables:
                return True
        return False

    def release(self, slug: str) -> bool:
        """Empty ``slug`` and take it back; False when it cannot be reused
        (dropped by the test, or its tables stayed locked for 5 s)."""
        from pgtenancy.slugs import schema_name

        with self._lock:
            conn = self._connection()
            try:
                try:
                    with conn.transaction():
                        rows = self._reset(conn, slug)
                        if rows is None:
                            return False
                        tables = [r[0] for r in rows if r[1] != "S"]
                        statements = [self._delete(schema_name(slug), tables)] if tables else []
                        statements += [
                            sql.SQL(QUERIES["testing_restart_sequence"]).format(
                                sequence=sql.Literal(n)
                            )
                            for n, kind in rows
                            if kind == "S"
                        ]
                        if statements:  # one round trip for all of them
                            conn.execute(sql.SQL("; ").join(statements))
                except psycopg.errors.ForeignKeyViolation:
                    # Tables not created parents first: find an order.
                    with conn.transaction():
                        rows = self._reset(conn, slug) or []
                        if not self._empty_one_by_one(
                            conn, schema_name(slug), [r[0] for r in rows if r[1] != "S"]
                        ):
                            return False
                        for n, kind in rows:
                            if kind == "S":
                                conn.execute(
                                    sql.SQL(QUERIES["testing_restart_sequence"]).format(
                                        sequence=sql.Literal(n)
                                    )
                                )
            except psycopg.Error:
                return False
            self._idle.append(slug)
            return True

    def _reset(self, conn: psycopg.Connection[Any], slug: str) -> list[tuple[str, str]] | None:
        """Status and metadata reset; the tenant's tables and sequences, None
        when the tenant is gone."""
        from pgtenancy.slugs import schema_name

        row = conn.execute(
            QUERIES["testing_reset_tenant"], {"slug": slug, "metadata": "{}"}
        ).fetchone()
        if row is None:
            return None
        found = conn.execute(
            QUERIES["testing_tenant_tables"], {"schema": schema_name(slug)}
        ).fetchall()
        return [(str(r[0]), str(r[1])) for r in found]


@contextlib.contextmanager
def rollback_session(engine: Engine, slug: str) -> Iterator[Session]:
    """A ``Session`` in tenant ``slug`` whose whole work is rolled back on exit.

    The rollback-per-test pattern: one outer transaction is begun on a
    connection and enters the tenant (``tenancy.enter_tenant``: its settings
    last until that transaction ends); the session joins it with
    ``join_transaction_mode="create_savepoint"``, so the code under test may
    ``commit()`` and ``rollback()`` as usual (each is a savepoint), and at
    the end the outer transaction is rolled back: nothing the test did stays.
    Hand the session to the code under test (e.g. a FastAPI dependency
    override); code that opens its own sessions does not see its writes.

    Args:
        engine: a SQLAlchemy engine (psycopg driver).
        slug: tenant to work in.

    Raises:
        pgtenancy.errors.TenantNotFound, TenantSuspended, TenantDeleted: on entry.
    """
    from sqlalchemy.orm import Session

    from pgtenancy.context import use_tenant
    from pgtenancy.session import enter_tenant

    with engine.connect() as connection:
        outer = connection.begin()
        try:
            enter_tenant(connection, slug)
            with (
                use_tenant(slug),
                Session(bind=connection, join_transaction_mode="create_savepoint") as session,
            ):
                yield session
        finally:
            outer.rollback()


@pytest.fixture(scope="session")
def pgtenancy_server() -> Iterator[str]:
    """Admin DSN of a PostgreSQL server (see the module docstring)."""
    try:
        server = find_server()
        dsn = server.__enter__()
    except NoServerError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield dsn
    finally:
        server.__exit__(*sys.exc_info())


@pytest.fixture(scope="session")
def pgtenancy_migrations() -> Sequence[tuple[str, str]]:
    """Tenant migrations ``[(version, sql), ...]`` for ``pgtenancy_dsn``; override it."""
    return []


@pytest.fixture(scope="session")
def pgtenancy_dsn(
    pgtenancy_server: str, pgtenancy_migrations: Sequence[tuple[str, str]]
) -> Iterator[str]:
    """A database with pgtenancy installed and the migrations registered (session)."""
    from pgtenancy.admin import Tenancy
    from pgtenancy.installer import install

    with fresh_database(pgtenancy_server, "pgtenancy_pytest") as dsn:
        install(dsn)
        tenancy = Tenancy(dsn)
        for version, text in pgtenancy_migrations:
            tenancy.add_migration(version, text)
        yield dsn


@pytest.fixture(scope="session")
def pgtenancy_admin(pgtenancy_dsn: str) -> Tenancy:
    """:class:`~pgtenancy.admin.Tenancy` on ``pgtenancy_dsn``, as its owner."""
    from pgtenancy.admin import Tenancy

    return Tenancy(pgtenancy_dsn)


@pytest.fixture(scope="session")
def pgtenancy_tenant_pool(
    pytestconfig: pytest.Config, pgtenancy_admin: Tenancy, pgtenancy_dsn: str
) -> Iterator[TenantPool]:
    """The pool behind the ``tenant`` fixture."""
    size = int(str(pytestconfig.getini("pgtenancy_pool_size")))
    pool = TenantPool(pgtenancy_admin, pgtenancy_dsn, size=size)
    yield pool
    pool.close()


@pytest.fixture
def tenant(pgtenancy_tenant_pool: TenantPool) -> Iterator[Callable[..., Tenant]]:
    """Factory of fresh tenants for this test: ``tenant(metadata=None) -> Tenant``."""
    given: list[str] = []

    def make(metadata: Mapping[str, Any] | None = None) -> Tenant:
        t = pgtenancy_tenant_pool.acquire(metadata)
        given.append(t.slug)
        return t

    yield make
    for slug in given:
        pgtenancy_tenant_pool.release(slug)


@pytest.fixture
def tenant_db(pgtenancy_dsn: str, tenant: Callable[..., Tenant]) -> Iterator[Session]:
    """A ``Session`` in a fresh tenant, everything rolled back after the test."""
    from pgtenancy.admin import engine_from_dsn

    engine = engine_from_dsn(pgtenancy_dsn)
    try:
        with rollback_session(engine, tenant().slug) as session:
            yield session
    finally:
        engine.dispose()
