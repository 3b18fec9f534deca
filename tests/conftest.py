"""Fixtures: a real PostgreSQL server and a fresh database per test.

The server comes from pgtenancy.testing.find_server(): TEST_DATABASE_URL or
DATABASE_URL, else a testcontainers Postgres when Docker answers, else a
throwaway cluster from the local binaries; the session fails with a message
saying how to provide one when none works. Every database made here is
dropped at the end.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict
from sqlalchemy import Engine

from pgtenancy import Tenancy, install
from pgtenancy.admin import engine_from_dsn
from pgtenancy.testing import NoServerError, find_server, fresh_database

ROOT = Path(__file__).resolve().parent.parent
CHINOOK = ROOT.parent / "shared" / "data" / "chinook" / "Chinook_PostgreSql.sql"


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
        yield conninfo_to_dict(dsn)["dbname"]


@pytest.fixture
def dsn(pg_admin_dsn: str, template_db: str) -> Iterator[str]:
    """A fresh database with pgtenancy installed, dropped after the test."""
    with fresh_database(pg_admin_dsn, "pgtenancy_test", template=template_db) as d:
        yield d


@pytest.fixture
def empty_dsn(pg_admin_dsn: str) -> Iterator[str]:
    """A fresh database without pgtenancy, dropped after the test."""
    with fresh_database(pg_admin_dsn, "pgtenancy_empty") as d:
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


def outbox(dsn: str) -> list[tuple[str, str]]:
    """Every outbox event as (name, tenant slug), in id order."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT name, tenant_slug FROM tenancy.events ORDER BY id").fetchall()
    return [(r[0], r[1]) for r in rows]


def pgtenancy_cli() -> list[str]:
    """Command line that runs the pgtenancy CLI of this environment."""
    return [sys.executable, "-m", "pgtenancy.cli"]


def subprocess_env() -> dict[str, str]:
    """Environment for child processes: ours, without DATABASE_URL surprises."""
    env = dict(os.environ)
    env.pop("DATABASE_URL", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


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


def as_role(dsn: str, role: str) -> str:
    """``dsn`` connecting as ``role`` (trust or the same password)."""
    from psycopg.conninfo import make_conninfo

    return make_conninfo(dsn, user=role)


@pytest.fixture
def hybrid(tenancy: Tenancy, sql: Callable[..., list[tuple[Any, ...]]]) -> dict[str, str]:
    """Schema tenant initech and shared tenants acme and globex; public.orders
    guarded by RLS. Returns tenant ids by slug."""
    tenancy.add_migration("0001", "CREATE TABLE note (id int PRIMARY KEY, body text)")
    sql("CREATE TABLE public.orders (id serial PRIMARY KEY, item text NOT NULL)")
    tenancy.enable_rls("public.orders")
    ids = {}
    for slug, isolation in (("acme", "shared"), ("globex", "shared"), ("initech", "schema")):
        ids[slug] = str(tenancy.create_tenant(slug, isolation=isolation).id)
    return ids
