"""The admin API's one database layer: Tenancy, the doctor and the inbox work
on a DSN, a psycopg connection, pool or connection factory, and a SQLAlchemy
engine; without SQLAlchemy installed; and a version mismatch between the
Python package and the installed SQL gets its own error."""

from __future__ import annotations

import subprocess
import sys
import warnings
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import psycopg
import pytest
import sqlalchemy
from psycopg_pool import ConnectionPool

from helpers import outbox, subprocess_env
from pgtenancy import NotInstalled, Tenancy, TenantExists, VersionMismatch, __version__
from pgtenancy.admin import engine_from_dsn
from pgtenancy.doctor import check_isolation

SQL = Callable[..., list[tuple[Any, ...]]]


def test_every_kind_of_database_reaches_the_same_registry(dsn: str) -> None:
    with psycopg.connect(dsn) as conn, ConnectionPool(dsn, min_size=1, open=True) as pool:
        engine = engine_from_dsn(dsn)
        sources: list[Any] = [dsn, conn, pool, lambda: psycopg.connect(dsn), engine]
        for i, source in enumerate(sources):
            Tenancy(source).create_tenant(f"t{i}")
        for source in sources:
            assert [t.slug for t in Tenancy(source).list_tenants()] == [f"t{i}" for i in range(5)]
            assert isinstance(check_isolation(source), list)
        engine.dispose()
        # The caller's connection is left idle (each call committed), not closed.
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert not conn.closed


def test_on_a_connection_inside_a_transaction_calls_join_it(dsn: str) -> None:
    with psycopg.connect(dsn) as conn:
        conn.execute("SELECT 1")  # an open transaction of the caller's
        tenancy = Tenancy(conn)
        tenancy.create_tenant("acme")
        with pytest.raises(TenantExists):
            tenancy.create_tenant("acme")  # a savepoint rolls back; the transaction goes on
        tenancy.create_tenant("globex")
        conn.rollback()
    assert Tenancy(dsn).list_tenants() == []
    assert outbox(dsn) == []


def test_bad_source_and_async_connections_are_refused() -> None:
    with pytest.raises(TypeError, match="expected a DSN, a psycopg Connection"):
        Tenancy(42)  # type: ignore[arg-type]


def test_intervals_accept_timedelta(dsn: str, sql: SQL) -> None:
    tenancy = Tenancy(dsn)
    tenancy.create_tenant("acme")
    sql("UPDATE tenancy.events SET created_at = now() - interval '3 days'")
    assert tenancy.prune_events(timedelta(days=7)) == 0
    assert tenancy.prune_events(timedelta(days=2), inactive_after=timedelta(hours=1)) == 1
    assert outbox(dsn) == []


def test_admin_api_works_without_sqlalchemy(dsn: str) -> None:
    code = f"""
import sys
sys.modules["sqlalchemy"] = None  # as if not installed: importing it fails
import psycopg
from pgtenancy import Tenancy
from pgtenancy.doctor import check_isolation
from pgtenancy.inbox import claim
t = Tenancy({dsn!r})
t.create_tenant("acme")
print([x.slug for x in t.list_tenants()], len(check_isolation({dsn!r})) >= 0)
with psycopg.connect({dsn!r}) as conn:  # (claiming real events: test_operations)
    print(claim(conn, "r", 10**9))  # no such event: nothing to claim
try:
    t.engine
except ImportError as exc:
    print("engine:", isinstance(exc, ImportError))
"""
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env()
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["['acme'] True", "False", "engine: True"]


def test_not_installed(empty_dsn: str) -> None:
    with pytest.raises(NotInstalled, match="pgtenancy is not installed"):
        Tenancy(empty_dsn).list_tenants()
    with pytest.raises(NotInstalled):
        Tenancy(empty_dsn).outbox_health()


def test_an_older_sql_version_is_a_version_mismatch(dsn: str, sql: SQL) -> None:
    """Python of this version against an installed SQL that says 0.1.0 and lacks
    a function the call needs: VersionMismatch, not NotInstalled."""
    sql(
        "CREATE OR REPLACE FUNCTION tenancy.version() RETURNS text "
        "LANGUAGE sql IMMUTABLE AS $$SELECT '0.1.0'::text$$"
    )
    sql("DROP FUNCTION tenancy.outbox_health()")
    tenancy = Tenancy(dsn)
    with pytest.raises(VersionMismatch) as info:
        tenancy.outbox_health()
    assert (info.value.installed, info.value.expected) == ("0.1.0", __version__)
    assert str(info.value).startswith(
        f"pgtenancy SQL 0.1.0 is installed, but this Python package is {__version__}"
    )
    assert isinstance(info.value.__cause__, psycopg.errors.UndefinedFunction)
    assert tenancy.list_tenants() == []  # what the old version has still works


def test_a_missing_object_with_matching_versions_stays_the_database_error(
    dsn: str, sql: SQL
) -> None:
    sql("DROP FUNCTION tenancy.outbox_health()")
    with pytest.raises(psycopg.errors.UndefinedFunction):
        Tenancy(dsn).outbox_health()


#: A migration that leaves session-level values under a SET LOCAL giving the
#: check the values it compares (attack run of 2026-12-04): the server sees
#: nothing; the session value shows after the commit.
_HIDDEN_SESSION_SETTINGS = """
CREATE TABLE note (id int);
DO $d$
DECLARE
    p text := current_setting('search_path');
BEGIN
    PERFORM set_config('search_path', current_schema() || ', pg_catalog, public', false);
    PERFORM set_config('search_path', p, true);
    PERFORM set_config('row_security', 'off', false);
    PERFORM set_config('row_security', 'on', true);
END
$d$;
LISTEN "Hidden channel"
"""

_WATCHED = (
    "SELECT current_setting('search_path'), current_setting('row_security'),"
    " current_setting('statement_timeout'), coalesce(current_setting('app.note', true), ''),"
    " (SELECT count(*) FROM pg_listening_channels())"
)


def test_watched_settings_match_the_servers(sql: SQL) -> None:
    from pgtenancy.database import WATCHED_SETTINGS

    assert sql("SELECT tenancy.watched_settings()") == [(list(WATCHED_SETTINGS),)]


@pytest.mark.parametrize("kind", ["connection", "autocommit connection", "pool", "engine"])
def test_session_settings_a_migration_hid_are_set_back_on_a_connection_kept(
    kind: str, dsn: str
) -> None:
    """The caller's own session settings stay; the migration's are set back
    after the commit, with a warning; a call without any gives none."""
    with psycopg.connect(dsn, autocommit=kind == "autocommit connection") as conn:
        pool = ConnectionPool(dsn, min_size=1, max_size=1, open=True)
        engine = sqlalchemy.create_engine(
            "postgresql+psycopg://",
            creator=lambda: psycopg.connect(dsn),
            pool_size=1,
            max_overflow=0,
        )
        try:
            used: Any
            if kind == "pool":
                source: Any = pool
                used = pool.getconn()
            elif kind == "engine":
                source = engine
                raw = engine.raw_connection()
                used = raw.driver_connection
                assert used is not None
            else:
                source = used = conn
            used.autocommit = True
            used.execute("SET search_path = public, pg_catalog")
            used.execute("SET statement_timeout = '42s'")
            used.execute("SET app.note = 'mine'")
            used.autocommit = kind == "autocommit connection"
            mine = used.execute(_WATCHED).fetchone()
            if not used.autocommit:
                used.commit()
            if kind == "pool":
                pool.putconn(used)
            elif kind == "engine":
                raw.close()  # back to the engine's pool, settings and all
            tenancy = Tenancy(source)
            tenancy.add_migration("0001", "CREATE TABLE plain (id int)")
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                tenancy.create_tenant("acme")  # nothing hidden: no warning
            with pytest.warns(RuntimeWarning, match="setting search_path.*channel Hidden channel"):
                tenancy.add_migration("0002", _HIDDEN_SESSION_SETTINGS)
            with pytest.warns(RuntimeWarning, match="search_path"):
                tenancy.create_tenant("globex")
            with pytest.warns(RuntimeWarning, match="search_path"):
                tenancy.migrate_tenant("acme")
            if kind == "pool":
                with pool.connection() as again:
                    after = again.execute(_WATCHED).fetchone()
            elif kind == "engine":
                raw = engine.raw_connection()
                driver = raw.driver_connection
                assert driver is not None
                after = driver.execute(_WATCHED).fetchone()
                driver.rollback()
                raw.close()
            else:
                after = conn.execute(_WATCHED).fetchone()
            assert after == mine == ("public, pg_catalog", "on", "42s", "mine", 0)
            assert tenancy.get_tenant("globex").migration_version == "0002"
        finally:
            pool.close()
            engine.dispose()
