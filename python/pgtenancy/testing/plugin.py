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
    with ``metadata`` as given. Tenants are provisioned ahead and recycled
    (:class:`TenantPool`): after the test a background thread resets the
    tenant in one round trip (rows, sequences, domains, shared rows, status,
    metadata, limits) and checks that its schema is still what provisioning
    made; a tenant whose schema the test changed, dropped or renamed is
    dropped and replaced, never handed out again. The ini option
    ``pgtenancy_pool_size`` (default 4) sets how many are kept idle.
``tenant_db`` (function)
    A SQLAlchemy ``Session`` inside a fresh tenant whose whole work is rolled
    back at the end of the test (see :func:`rollback_session`).

:func:`rollback_session` is the rollback-per-test pattern outside pytest too.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row

from pgtenancy.queries import QUERIES
from pgtenancy.testing.server import NoServerError, find_server, fresh_database

logger = logging.getLogger("pgtenancy.testing")

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


def _bare(name: str) -> str:
    """Query ``name`` of ``sql/queries.sql`` without its comment lines (they
    would be sent, and parsed, at every reset)."""
    return "\n".join(
        line for line in QUERIES[name].splitlines() if not line.lstrip().startswith("--")
    )


@dataclass
class _Pooled:
    """A provisioned tenant of the pool and how to reset it."""

    tenant: Tenant
    recycle: str  # the one-round-trip reset script (testing_recycle)
    fingerprint: str  # testing_fingerprint at provisioning


class TenantPool:
    """Pre-provisioned tenants handed out to tests and recycled after them.

    :meth:`acquire` hands out an idle tenant (no round trip; one ``UPDATE``
    when metadata is given). :meth:`release` resets it in one round trip
    (query ``testing_recycle`` of ``sql/queries.sql``): every table emptied,
    every sequence that was used set back to its start value, the tenant's
    domains and shared rows deleted, status (``active``), metadata (``{}``)
    and limits reset; and the schema's fingerprint (relations, columns,
    defaults, constraints, functions, types, triggers, policies, rules,
    privileges, owners: query ``testing_fingerprint``) and migration version
    compared with those taken at provisioning. A tenant whose schema a test
    changed, dropped or renamed is never handed out again: it is dropped and
    replaced in the background.

    Emptying: when the pool's role is a superuser, ``DELETE`` of every table
    with ``session_replication_role = replica`` (no triggers, so tracked
    tables emit no events, and no foreign key checks); otherwise ``DELETE``
    children first (``tenancy.fk_order``), or one ``TRUNCATE`` of all tables
    when foreign keys form a cycle. ``DELETE`` rather than ``TRUNCATE``
    because a test leaves few rows: ``TRUNCATE`` makes new files for every
    table and index (``bench/bench_tenant_factory.py`` measures both).

    A background thread keeps ``size`` tenants idle (it provisions with its
    own connections while tests run); :meth:`acquire` provisions one itself
    only when none is idle.

    Args:
        tenancy: admin API of the test database (its owner).
        dsn: its DSN (the owner's); the pool keeps one connection to it and
            its background thread opens its own.
        size: tenants kept idle.
        prefix: slug prefix of the tenants made here.
        background: False to provision and drop in the caller's thread only.
    """

    def __init__(
        self,
        tenancy: Tenancy,
        dsn: str,
        size: int = 4,
        prefix: str = "t",
        *,
        background: bool = True,
    ) -> None:
        self.tenancy = tenancy
        self.dsn = dsn
        self.size = size
        self.prefix = prefix
        self.background = background
        self._idle: list[_Pooled] = []
        self._given: dict[str, _Pooled] = {}
        self._discarded: list[str] = []
        self._dirty: list[tuple[str, _Pooled]] = []
        self._resetting = 0
        self._lock = threading.RLock()
        self._wake = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        self._closing = False
        self._conn: psycopg.Connection[Any] | None = None
        #: Tenants recycled, and tenants discarded (schema changed, dropped).
        self.recycled = 0
        self.discarded = 0

    def _connect(self) -> psycopg.Connection[Any]:
        """A connection of the pool's own, its statements prepared."""
        # psycopg's own prepared statements off: after a ROLLBACK or DROP it
        # would DEALLOCATE ALL, ours included.
        conn = psycopg.connect(self.dsn, autocommit=True, prepare_threshold=None)
        conn.execute(QUERIES["testing_session"])
        fingerprint = sql.SQL(_bare("testing_fingerprint"))
        conn.execute(
            sql.SQL(QUERIES["testing_prepare"]).format(
                fingerprint=fingerprint,
                sequences=sql.SQL(QUERIES["testing_sequences"]),
                row=sql.SQL(QUERIES["testing_row"]).format(fingerprint=fingerprint),
            )
        )
        return conn

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = self._connect()
        return self._conn

    def close(self) -> None:
        """Stop the background thread and close the pool's connection (the
        tenants stay)."""
        with self._lock:
            self._closing = True
            self._wake.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join()
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _provision(self, conn: psycopg.Connection[Any], tenancy: Tenancy) -> _Pooled:
        """Create a tenant and work out how to reset it (on ``conn``)."""
        from pgtenancy.admin import Tenant

        slug = f"{self.prefix}_{uuid.uuid4().hex[:10]}"
        tenant = tenancy.create_tenant(slug)
        schema = sql.Literal(tenant.schema_name)
        row = conn.execute(
            QUERIES["testing_tenant_tables"], {"schema": tenant.schema_name}
        ).fetchone()
        assert row is not None
        tables = [str(t) for t in row[0]]
        replica = sql.SQL("")
        if row[1]:
            replica = sql.SQL("SET LOCAL session_replication_role = replica;")
            order = tables
        else:
            try:
                with conn.transaction():
                    found = conn.execute(QUERIES["testing_fk_order"], {"tables": tables}).fetchone()
                assert found is not None
                order = list(reversed(str(found[0]).split(","))) if found[0] else []
            except psycopg.Error as exc:
                if exc.sqlstate != "PT022":
                    raise
                order = []  # a cycle: TRUNCATE them together
        if order or not tables:
            empty = sql.SQL(" ").join(
                sql.SQL(_bare("testing_delete") + ";").format(table=sql.SQL(t)) for t in order
            )
        else:
            empty = sql.SQL("TRUNCATE {};").format(sql.SQL(", ").join(sql.SQL(t) for t in tables))
        if not row[1] and tables:
            # Not a superuser: the tenant's triggers fire, so they run as the
            # tenant's owner role (tenancy.run_as_rest_owner), never as the
            # kit's owner.
            empty = sql.SQL(_bare("testing_as_rest_owner") + ";").format(
                schema=schema, statement=sql.Literal(empty.as_string(conn))
            )
        ident = sql.Literal(str(tenant.id))
        recycle = (
            sql.SQL(_bare("testing_recycle"))
            .format(replica=replica, empty=empty, schema=schema, id=ident)
            .as_string(conn)
        )
        found_row = (
            conn.cursor(row_factory=dict_row)
            .execute(sql.SQL(QUERIES["testing_row_now"]).format(schema=schema, id=ident))
            .fetchone()
        )
        assert found_row is not None
        tenant = Tenant.from_row(found_row)
        return _Pooled(tenant, recycle, str(found_row["fingerprint"]))

    def _refill(self) -> None:
        """Background thread: reset released tenants, drop discarded ones,
        keep ``size`` idle; on close, finish the resets and drops first."""
        from pgtenancy.admin import Tenancy

        with self._connect() as conn:
            # Provisioning on its own connections: a migration may not leave
            # prepared statements behind, so it must not run on this one.
            tenancy = Tenancy(self.dsn)
            while True:
                with self._lock:
                    while not (
                        self._closing
                        or self._dirty
                        or self._discarded
                        or len(self._idle) + self._resetting < self.size
                    ):
                        self._wake.wait()
                    dirty = self._dirty.pop(0) if self._dirty else None
                    drop = None if dirty or not self._discarded else self._discarded.pop()
                    if dirty is None and drop is None and self._closing:
                        return
                    if dirty is not None:
                        self._resetting += 1
                try:
                    if dirty is not None:
                        self._take_back(conn, *dirty)
                        continue
                    if drop is not None:
                        self._drop(tenancy, drop)
                        continue
                    pooled = self._provision(conn, tenancy)
                except Exception:  # a test broke the database: stop refilling
                    logger.exception("pgtenancy tenant pool: background work failed")
                    with self._lock:
                        self._thread = None
                        self._wake.notify_all()
                    return
                finally:
                    if dirty is not None:
                        with self._lock:
                            self._resetting -= 1
                            self._wake.notify_all()
                with self._lock:
                    self._idle.append(pooled)
                    self._wake.notify_all()

    @staticmethod
    def _drop(tenancy: Tenancy, tenant_id: str) -> None:
        """Drop a discarded tenant (by id: a test may have renamed it)."""
        from pgtenancy.errors import TenancyError

        for t in tenancy.list_tenants():
            if str(t.id) == tenant_id and t.status != "deleted":
                with contextlib.suppress(TenancyError, psycopg.Error):
                    tenancy.drop_tenant(t.slug, destroy_data=True)

    def _kick(self) -> None:
        """Start the background thread if it is not running (lock held)."""
        if not self.background or self._closing:
            return
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(
                target=self._refill, name="pgtenancy-tenant-pool", daemon=True
            )
            self._thread.start()
        self._wake.notify_all()

    def acquire(self, metadata: Mapping[str, Any] | None = None) -> Tenant:
        """A tenant of its own for the caller: empty, active, with ``metadata``
        (default ``{}``).

        Raises:
            pgtenancy.errors.InvalidTenantMetadata: PT029, ``metadata`` refused
                (the tenant stays in the pool, unchanged).
        """
        from pgtenancy.admin import Tenant

        with self._lock:
            self._kick()
            # A tenant being reset is back in milliseconds; a new one takes
            # a create_tenant.
            while (
                not self._idle
                and (self._dirty or self._resetting)
                and self._thread is not None
                and self._thread.is_alive()
            ):
                self._wake.wait(1.0)
            pooled = self._idle.pop() if self._idle else None
        conn = self._connection()
        if pooled is None:
            pooled = self._provision(conn, self.tenancy)
        if metadata:
            try:
                row = (
                    conn.cursor(row_factory=dict_row)
                    .execute(
                        QUERIES["testing_set_metadata"],
                        {"id": pooled.tenant.id, "metadata": json.dumps(dict(metadata))},
                    )
                    .fetchone()
                )
            except BaseException:
                with self._lock:
                    self._idle.append(pooled)
                raise
            assert row is not None
            pooled = _Pooled(Tenant.from_row(row), pooled.recycle, pooled.fingerprint)
        with self._lock:
            self._given[pooled.tenant.slug] = pooled
        return pooled.tenant

    def release(self, slug: str) -> bool:
        """Reset tenant ``slug`` (handed out by :meth:`acquire`) in one round
        trip and take it back, now; False when it cannot be reused (dropped,
        renamed, its schema or migration version changed, its tables locked
        for 5 s): it is then dropped (in the background when there is one)
        and replaced."""
        with self._lock:
            pooled = self._given.pop(slug, None)
        if pooled is None:
            return False
        return self._take_back(self._connection(), slug, pooled)

    def release_later(self, slug: str) -> None:
        """Like :meth:`release`, done by the background thread: the caller
        does not wait (the ``tenant`` fixture's teardown). :meth:`acquire`
        waits for a reset in progress rather than provision a new tenant."""
        if not self.background:
            self.release(slug)
            return
        with self._lock:
            pooled = self._given.pop(slug, None)
            if pooled is not None:
                self._dirty.append((slug, pooled))
                self._kick()

    def _take_back(self, conn: psycopg.Connection[Any], slug: str, pooled: _Pooled) -> bool:
        """Run the reset on ``conn``; put the tenant back or discard it."""
        from pgtenancy.admin import Tenant

        row: dict[str, Any] | None = None
        try:
            cur = conn.cursor(row_factory=dict_row)
            cur.execute(pooled.recycle)
            while True:  # one result per statement; the registry row's has a fingerprint
                if cur.description and any(c.name == "fingerprint" for c in cur.description):
                    row = cur.fetchone()
                if not cur.nextset():
                    break
        except psycopg.Error:
            with contextlib.suppress(psycopg.Error):
                conn.execute("ROLLBACK")
        tenant = None if row is None else Tenant.from_row(row)
        if (
            row is None
            or tenant is None
            or row["fingerprint"] != pooled.fingerprint
            or tenant.status != "active"
            or tenant.slug != slug
            or tenant.migration_version != pooled.tenant.migration_version
        ):
            with self._lock:
                self.discarded += 1
                if self.background:
                    self._discarded.append(str(pooled.tenant.id))
                    self._kick()
            if not self.background:
                self._drop(self.tenancy, str(pooled.tenant.id))
            return False
        with self._lock:
            self.recycled += 1
            self._idle.append(_Pooled(tenant, pooled.recycle, pooled.fingerprint))
            self._wake.notify_all()
        return True


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
        pgtenancy_tenant_pool.release_later(slug)


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
