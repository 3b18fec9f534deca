"""An install waits a bounded time for the kit's objects (issue 13 attack run).

An application-role transaction that read ``tenancy.tenant_directory`` (granted
to it; tenant entry reads it) holds a lock the install's ``CREATE OR REPLACE
VIEW`` conflicts with. Without a limit the install waited for ever, and every
entry queued behind its lock request; now it gives up after ``lock_timeout``
with :class:`InstallBlocked` naming the session, and changes nothing.
"""

from __future__ import annotations

import threading
import time

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from catalog import catalog
from helpers import run_cli
from pgtenancy import InstallBlocked, Tenancy, install, tenant_connection, uninstall
from pgtenancy.installer import installed_version


def world(dsn: str) -> tuple[object, ...]:
    """What an install or uninstall could change besides the tenancy catalog:
    schemas, the kit's cluster roles, registry and outbox rows, extensions."""
    with psycopg.connect(dsn) as conn:
        return (
            catalog(dsn),
            conn.execute("SELECT array_agg(nspname ORDER BY nspname) FROM pg_namespace").fetchone(),
            conn.execute(
                "SELECT array_agg(rolname ORDER BY rolname) FROM pg_roles"
                " WHERE rolname LIKE 'pgtenancy%%'"
            ).fetchone(),
            conn.execute(
                "SELECT array_agg(slug || ':' || status ORDER BY slug) FROM tenancy.tenants"
            ).fetchone(),
            conn.execute("SELECT count(*), max(id) FROM tenancy.events").fetchone(),
            conn.execute("SELECT array_agg(extname ORDER BY extname) FROM pg_extension").fetchone(),
        )


def _reader(dsn: str, app_role: str) -> psycopg.Connection[tuple[object, ...]]:
    """The application role inside a tenant transaction that read the directory."""
    conn = psycopg.connect(make_conninfo(dsn, user=app_role))
    conn.execute("SELECT tenancy.enter_tenant('acme')")
    conn.execute("SELECT count(*) FROM tenancy.tenant_directory").fetchone()
    return conn


def test_install_gives_up_on_a_held_directory_and_changes_nothing(
    tenancy: Tenancy, dsn: str, app_role: str
) -> None:
    tenancy.create_tenant("acme")
    before = world(dsn)
    reader = _reader(dsn, app_role)
    try:
        started = time.monotonic()
        with pytest.raises(InstallBlocked) as caught:
            install(dsn, lock_timeout=0.5)
        waited = time.monotonic() - started
        assert waited < 30, waited
        error = caught.value
        assert error.sqlstate == "55P03"
        assert (reader.info.backend_pid, app_role) in [(p, r) for p, r, _ in error.blockers]
        assert "gave up; nothing changed" in str(error) and app_role in str(error)
        assert "tenant_directory" in (error.hint or "")
        # Nothing changed, and entry is not held up once the install gave up.
        assert world(dsn) == before
        assert installed_version(dsn) is not None
        with (
            psycopg.connect(make_conninfo(dsn, user=app_role)) as other,
            tenant_connection(other, "acme") as conn,
        ):
            assert conn.execute("SELECT tenancy.current_tenant()").fetchone() == ("acme",)
        # The CLI says the same and exits non-zero.
        result = run_cli("install", "--dsn", dsn, "--lock-timeout", "0.3")
        assert result.returncode != 0
        assert "gave up; nothing changed" in result.stderr + result.stdout
        assert world(dsn) == before
    finally:
        reader.close()
    # With the reader gone the same install goes through.
    assert install(dsn, lock_timeout=0.5) == installed_version(dsn)


def test_uninstall_gives_up_too(tenancy: Tenancy, dsn: str, app_role: str) -> None:
    tenancy.create_tenant("acme")
    before = world(dsn)
    reader = _reader(dsn, app_role)
    try:
        with pytest.raises(InstallBlocked) as caught:
            uninstall(dsn, drop_tenants=True, lock_timeout=0.5)
        assert reader.info.backend_pid in [p for p, _, _ in caught.value.blockers]
        assert world(dsn) == before
    finally:
        reader.close()


def test_uninstall_drop_tenants_blocked_by_a_tenant_table_drops_nothing(
    tenancy: Tenancy, dsn: str
) -> None:
    """A session holding only a tenant's table (not the kit's): the tenant
    schemas are dropped in transactions of their own, so the uninstall waits
    for it before the first one, and gives up having dropped none."""
    tenancy.add_migration("0001", "CREATE TABLE invoice (id int PRIMARY KEY)")
    for slug in ("acme", "globex"):
        tenancy.create_tenant(slug)
    before = world(dsn)
    holder = psycopg.connect(dsn)
    try:
        holder.execute("SELECT count(*) FROM tenant_globex.invoice")
        started = time.monotonic()
        with pytest.raises(InstallBlocked, match="gave up; nothing changed") as caught:
            uninstall(dsn, drop_tenants=True, lock_timeout=0.5)
        assert 0.5 <= time.monotonic() - started < 30
        assert holder.info.backend_pid in [p for p, _, _ in caught.value.blockers]
        assert world(dsn) == before
    finally:
        holder.close()
    uninstall(dsn, drop_tenants=True, lock_timeout=0.5)
    assert installed_version(dsn) is None


def test_uninstall_waits_for_a_tenant_table_holder_that_then_reads_the_kit(
    tenancy: Tenancy, dsn: str
) -> None:
    """Review: the wait for tenant-table holders held the kit's tables
    meanwhile; a transaction holding only a tenant table that then read a
    kit table waited for the uninstall, which waited for it, unseen by the
    deadlock detector: with lock_timeout=0 both for ever. The wait holds
    nothing of the kit now: the holder reads, commits, and the uninstall (no
    time limit) goes through."""
    tenancy.add_migration("0001", "CREATE TABLE invoice (id int PRIMARY KEY)")
    tenancy.create_tenant("acme")
    # A bound, so that the deadlock this test is about fails it, not hangs it.
    holder = psycopg.connect(make_conninfo(dsn, options="-c statement_timeout=10000"))
    holder.execute("SELECT count(*) FROM tenant_acme.invoice")
    done: list[BaseException | None] = []

    def run() -> None:
        try:
            uninstall(dsn, drop_tenants=True, lock_timeout=0)
            done.append(None)
        except BaseException as exc:
            done.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    try:
        time.sleep(0.5)
        assert not done  # waiting for the holder
        holder.execute("SELECT count(*) FROM tenancy.tenants")
        holder.commit()
        worker.join(30)
        assert done == [None]
    finally:
        holder.close()
        worker.join(30)
    assert installed_version(dsn) is None


def test_uninstall_wait_is_bounded_by_lock_timeout_not_statement_timeout(
    tenancy: Tenancy, dsn: str
) -> None:
    """Review: a statement_timeout of the caller's cancelled the wait with a raw
    QueryCanceled; the wait is lock_timeout's, and gives InstallBlocked."""
    tenancy.add_migration("0001", "CREATE TABLE invoice (id int PRIMARY KEY)")
    tenancy.create_tenant("acme")
    before = world(dsn)
    holder = psycopg.connect(dsn)
    try:
        holder.execute("SELECT count(*) FROM tenant_acme.invoice")
        with pytest.raises(InstallBlocked, match="gave up; nothing changed"):
            uninstall(
                make_conninfo(dsn, options="-c statement_timeout=300"),
                drop_tenants=True,
                lock_timeout=1.0,
            )
        assert world(dsn) == before
    finally:
        holder.close()


def test_a_bad_lock_timeout_is_refused_before_any_sql(dsn: str) -> None:
    before = world(dsn)
    for bad in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="lock_timeout"):
            install(dsn, lock_timeout=bad)
        with pytest.raises(ValueError, match="lock_timeout"):
            uninstall(dsn, lock_timeout=bad)
    assert world(dsn) == before
    result = run_cli("install", "--dsn", dsn, "--lock-timeout", "-2")
    assert result.returncode == 2 and "lock-timeout" in result.stderr
    assert world(dsn) == before


def test_without_a_limit_the_install_waits_for_the_reader(
    tenancy: Tenancy, dsn: str, app_role: str
) -> None:
    """lock_timeout=0 is PostgreSQL's no limit: the install finishes once the
    reader ends, not before."""
    tenancy.create_tenant("acme")
    reader = _reader(dsn, app_role)
    done = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        try:
            install(dsn, lock_timeout=0)
        except BaseException as exc:
            failure.append(exc)
        done.set()

    thread = threading.Thread(target=run)
    thread.start()
    try:
        assert not done.wait(2.0), failure
    finally:
        reader.close()
    thread.join(60)
    assert done.is_set() and failure == []


def test_the_cli_option_says_what_the_installer_does() -> None:
    """--lock-timeout's default and bound are the installer's own."""
    from pgtenancy import cli, installer

    assert cli.LOCK_TIMEOUT_DEFAULT == installer.DEFAULT_LOCK_TIMEOUT
    assert cli.LOCK_TIMEOUT_MAX == installer.MAX_LOCK_TIMEOUT
