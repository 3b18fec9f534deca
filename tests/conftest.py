"""Fixtures for every test folder: a real PostgreSQL server and a fresh
database per test; and the kind markers.

The server comes from pgtenancy.testing.find_server(): TEST_DATABASE_URL or
DATABASE_URL, else a testcontainers Postgres when Docker answers, else a
throwaway cluster from the local binaries; the session fails with a message
saying how to provide one when none works. Every database made here is
dropped at the end.

Each test is marked with the kind its folder holds (registered in
pyproject.toml): ``unit`` (tests/unit/, no database: a unit test asking for a
database fixture is an error), ``integration`` (tests/integration/, a real
PostgreSQL), ``crash`` (tests/crash/, killed processes and backends, threads
racing, PgBouncer) and ``sql`` (tests/sql/, SQL-level: pgTAP, plpgsql_check,
contracts, catalogs, upgrades). The few crash tests that live with the
feature they break (CRASH_TESTS_ELSEWHERE) are marked ``crash`` as well, so
``pytest -m "not crash"`` leaves out every killed process.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict
from sqlalchemy import Engine

# Re-exported: `from conftest import X` keeps working for these names; new code
# imports them from helpers.
from helpers import CHINOOK, ROOT, as_role, outbox, pgtenancy_cli, subprocess_env
from pgtenancy import Tenancy, install
from pgtenancy.admin import Isolation, engine_from_dsn
from pgtenancy.testing import NoServerError, find_server, fresh_database
from pgtenancy.testing.server import TemporaryCluster, find_bindir

__all__ = ["CHINOOK", "ROOT", "as_role", "outbox", "pgtenancy_cli", "subprocess_env"]

KINDS = ("unit", "integration", "crash", "sql")
#: Tests that kill a process or a backend but live in an integration module,
#: next to the feature: (file name, test name).
CRASH_TESTS_ELSEWHERE = {
    ("test_async.py", "test_async_listener_process_survives_kill_and_stops_on_sigterm"),
    ("test_fleet.py", "test_kill_9_leaves_every_tenant_old_or_new_and_a_rerun_finishes"),
    ("test_session.py", "test_lost_connection_is_a_clear_error_and_the_pool_recovers"),
}
#: Fixtures that need the server; unit tests may not ask for them.
DATABASE_FIXTURES = {
    "pg_admin_dsn",
    "own_admin_dsn",
    "admin_dsn",
    "template_db",
    "dsn",
    "empty_dsn",
}
#: Where an explicit server URL comes from (as pgtenancy.testing.find_server reads them).
EXPLICIT_SERVER_VARS = ("TEST_DATABASE_URL", "DATABASE_URL")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test with its folder's kind; refuse a database in unit/."""
    tests = Path(__file__).resolve().parent
    for item in items:
        path = Path(str(item.path)).resolve()
        kind = path.parent.name if path.parent.parent == tests else ""
        if kind in KINDS:
            item.add_marker(kind)
        name = getattr(item, "originalname", item.name)
        if (path.name, name) in CRASH_TESTS_ELSEWHERE:
            item.add_marker("crash")
        if kind == "unit":
            wanted = DATABASE_FIXTURES.intersection(getattr(item, "fixturenames", ()))
            if wanted:
                raise pytest.UsageError(
                    f"{item.nodeid} is a unit test but asks for {sorted(wanted)}: "
                    "move it to tests/integration/"
                )


@pytest.fixture(scope="session")
def pg_admin_dsn() -> Iterator[str]:
    """DSN of a server role that may create databases."""
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
def template_db(pg_admin_dsn: str) -> Iterator[str]:
    """Name of a database with the SQL core installed, copied for each test."""
    with fresh_database(pg_admin_dsn, "pgtenancy_tpl") as dsn:
        install(dsn)
        yield str(conninfo_to_dict(dsn)["dbname"])


@pytest.fixture(scope="session")
def own_admin_dsn(pg_admin_dsn: str) -> Iterator[str]:
    """Admin DSN of a server no other session uses, for tests marked ``own_server``.

    Event delivery waits for every transaction older than an event to end,
    cluster-wide (the outbox fence is ``pg_snapshot_xmin(pg_current_snapshot())``,
    which counts every database's transactions): on a server shared with
    others, a stranger's long write transaction holds delivery back. When the
    session's server is an explicit URL (``TEST_DATABASE_URL``/``DATABASE_URL``),
    these tests get a throwaway cluster from the machine's binaries instead; a
    server the session started itself (container or throwaway cluster) is
    already its own. Without binaries the shared server is used, with a warning.
    """
    if not any(os.environ.get(var) for var in EXPLICIT_SERVER_VARS):
        yield pg_admin_dsn
        return
    bindir = find_bindir()
    if bindir is None:
        warnings.warn(
            "no PostgreSQL binaries to start a server of this session's own: tests marked "
            "own_server run on the shared server, where other sessions' transactions can "
            "hold event delivery back",
            stacklevel=1,
        )
        yield pg_admin_dsn
        return
    cluster = TemporaryCluster(bindir)
    try:
        cluster.start()
        yield cluster.dsn
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def own_template_db(own_admin_dsn: str, pg_admin_dsn: str, template_db: str) -> Iterator[str]:
    """:func:`template_db` on :func:`own_admin_dsn`'s server."""
    if own_admin_dsn == pg_admin_dsn:
        yield template_db
        return
    with fresh_database(own_admin_dsn, "pgtenancy_tpl") as dsn:
        install(dsn)
        yield str(conninfo_to_dict(dsn)["dbname"])


def _own_server(request: pytest.FixtureRequest) -> bool:
    return request.node.get_closest_marker("own_server") is not None


@pytest.fixture
def admin_dsn(request: pytest.FixtureRequest) -> str:
    """The admin DSN a test's databases and roles are made with: the session's
    server, or for tests marked ``own_server`` :func:`own_admin_dsn`."""
    name = "own_admin_dsn" if _own_server(request) else "pg_admin_dsn"
    return str(request.getfixturevalue(name))


@pytest.fixture
def dsn(request: pytest.FixtureRequest, admin_dsn: str) -> Iterator[str]:
    """A fresh database with pgtenancy installed, dropped after the test."""
    template = str(
        request.getfixturevalue("own_template_db" if _own_server(request) else "template_db")
    )
    with fresh_database(admin_dsn, "pgtenancy_test", template=template) as d:
        yield d


@pytest.fixture
def empty_dsn(admin_dsn: str) -> Iterator[str]:
    """A fresh database without pgtenancy, dropped after the test."""
    with fresh_database(admin_dsn, "pgtenancy_empty") as d:
        yield d


@pytest.fixture
def engine(dsn: str) -> Iterator[Engine]:
    """A pooled SQLAlchemy engine (psycopg driver) on the test database."""
    from sqlalchemy import create_engine

    eng = create_engine(
        "postgresql+psycopg://", creator=lambda: psycopg.connect(dsn), pool_size=2, max_overflow=0
    )
    yield eng
    eng.dispose()


@pytest.fixture
def tenancy(dsn: str) -> Tenancy:
    """Admin API on the test database (no pooling)."""
    return Tenancy(engine_from_dsn(dsn))


@pytest.fixture
def sql(dsn: str) -> Iterator[Callable[..., list[tuple[Any, ...]]]]:
    """Run one statement in autocommit on the test database and return its rows."""
    conn = psycopg.connect(dsn, autocommit=True)

    def run(query: str, params: Any = None) -> list[tuple[Any, ...]]:
        cur = conn.execute(query, params)
        return cur.fetchall() if cur.description else []

    yield run
    conn.close()


@pytest.fixture
def app_role(dsn: str) -> Iterator[str]:
    """A login role that owns nothing, without SUPERUSER or BYPASSRLS, granted
    tenant use with tenancy.grant_app_role(); removed after the test."""
    import uuid

    from psycopg import sql as pgsql

    name = f"pgtenancy_app_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            pgsql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOBYPASSRLS").format(pgsql.Identifier(name))
        )
        conn.execute("SELECT tenancy.grant_app_role(%s)", (name,))
    try:
        yield name
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(pgsql.SQL("DROP OWNED BY {}").format(pgsql.Identifier(name)))
            conn.execute(pgsql.SQL("DROP ROLE {}").format(pgsql.Identifier(name)))


@pytest.fixture
def hybrid(tenancy: Tenancy, sql: Callable[..., list[tuple[Any, ...]]]) -> dict[str, str]:
    """Schema tenant initech and shared tenants acme and globex; public.orders
    guarded by RLS. Returns tenant ids by slug."""
    tenancy.add_migration("0001", "CREATE TABLE note (id int PRIMARY KEY, body text)")
    sql("CREATE TABLE public.orders (id serial PRIMARY KEY, item text NOT NULL)")
    tenancy.enable_rls("public.orders")
    ids = {}
    tenants: tuple[tuple[str, Isolation], ...] = (
        ("acme", "shared"),
        ("globex", "shared"),
        ("initech", "schema"),
    )
    for slug, isolation in tenants:
        ids[slug] = str(tenancy.create_tenant(slug, isolation=isolation).id)
    return ids
