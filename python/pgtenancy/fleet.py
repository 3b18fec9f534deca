"""Migrating the whole fleet: every tenant in its own transaction, in parallel.

:func:`migrate_fleet` finds the tenants behind the latest migration with one
indexed query (a current tenant costs nothing more), then migrates each of
them with ``tenancy.migrate_tenant`` on ``jobs`` connections. The row lock
that ``migrate_tenant`` takes means two runs never migrate one tenant at once;
``lock_timeout`` makes a busy tenant fail instead of hanging the run. A
failure rolls that tenant back to its previous version, is recorded with its
SQLSTATE, emits ``tenant_migration_failed`` in a transaction of its own, and
the others go on. Killing the runner leaves every tenant at its old or its new
version; a rerun picks up what is left.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from pgtenancy.dsn import libpq_dsn
from pgtenancy.errors import TenancyError, translate
from pgtenancy.queries import QUERIES


@dataclass(frozen=True)
class TenantOutcome:
    """What happened to one tenant.

    Attributes:
        slug: tenant slug.
        from_version: migration version before the run (None: none applied).
        to_version: version after the run (unchanged on failure).
        ok: whether the tenant is now current.
        sqlstate: SQLSTATE of the failure (PT006 for a failing migration,
            a lock timeout included; PT003 for an unknown tenant, ...).
        message: the failure's message.
        seconds: time spent on this tenant.
    """

    slug: str
    from_version: str | None
    to_version: str | None
    ok: bool
    sqlstate: str | None = None
    message: str | None = None
    seconds: float = 0.0


@dataclass
class FleetReport:
    """Outcome of a fleet run: tenants migrated, failed, and already current."""

    migrated: list[TenantOutcome] = field(default_factory=list)
    failed: list[TenantOutcome] = field(default_factory=list)
    current: int = 0
    elapsed: float = 0.0


def plan(
    dsn: str, tenants: Sequence[str] | None = None, limit: int | None = None
) -> tuple[list[tuple[str, str | None]], list[str], int]:
    """Which tenants a run would migrate.

    Args:
        dsn: database DSN.
        tenants: only these slugs (the canary); None means all.
        limit: at most this many tenants, in slug order.

    Returns:
        ``(todo, unknown, current)``: ``(slug, version)`` of tenants behind the
        latest migration, requested slugs that are not registered, and how
        many selected tenants are already current.
    """
    with psycopg.connect(libpq_dsn(dsn), autocommit=True) as conn:
        behind = [(r[0], r[1]) for r in conn.execute(QUERIES["tenants_to_migrate"])]
        rows = conn.execute(QUERIES["live_tenant_isolations"])
        registered: dict[str, str] = {str(r[0]): str(r[1]) for r in rows}
    schema_tenants = {slug for slug, isolation in registered.items() if isolation == "schema"}
    unknown: list[str] = []
    if tenants is None:
        selected = behind
        current = len(schema_tenants) - len(behind)
    else:
        wanted = list(dict.fromkeys(tenants))
        unknown = [s for s in wanted if s not in registered]
        selected = [t for t in behind if t[0] in set(wanted)]
        current = len(set(wanted) & schema_tenants) - len(selected)
    if limit is not None:
        selected = selected[:limit]
    return selected, unknown, current


def pending_versions(dsn: str, from_version: str | None) -> list[str]:
    """Registered migration versions after ``from_version`` (all when None)."""
    with psycopg.connect(libpq_dsn(dsn), autocommit=True) as conn:
        rows = conn.execute(QUERIES["pending_migrations"], {"from_version": from_version})
        return [r[0] for r in rows]


def migrate_fleet(
    dsn: str,
    *,
    jobs: int = 1,
    lock_timeout: str | timedelta = "5s",
    tenants: Sequence[str] | None = None,
    limit: int | None = None,
    on_outcome: Callable[[TenantOutcome], None] | None = None,
    on_plan: Callable[[int], None] | None = None,
) -> FleetReport:
    """Migrate every tenant that lacks migrations, each in its own transaction.

    Args:
        dsn: database DSN (a transaction pooler is fine: nothing here needs
            session state).
        jobs: connections working in parallel (>= 1).
        lock_timeout: a Postgres duration (``"5s"``) or a
            :class:`~datetime.timedelta` (whole milliseconds); a tenant whose
            tables stay locked longer fails (PT006, "lock timeout", 55P03 in the detail) instead
            of blocking the run.
        tenants: migrate only these slugs (the canary); None means all.
        limit: migrate at most this many tenants.
        on_outcome: called (from worker threads) after each tenant.
        on_plan: called once with the number of tenants to migrate.

    Returns:
        A :class:`FleetReport`.
    """
    if jobs < 1:
        raise ValueError("jobs must be at least 1")
    if isinstance(lock_timeout, timedelta):
        lock_timeout = f"{max(int(lock_timeout.total_seconds() * 1000), 1)}ms"
    started = time.monotonic()
    todo, unknown, current = plan(dsn, tenants, limit)
    report = FleetReport(current=current)
    for slug in unknown:
        report.failed.append(
            TenantOutcome(slug, None, None, False, "PT003", f"tenant '{slug}' not found")
        )
    if on_plan is not None:
        on_plan(len(todo))
    work: queue.Queue[tuple[str, str | None]] = queue.Queue()
    for item in todo:
        work.put(item)
    lock = threading.Lock()

    def worker() -> None:
        with psycopg.connect(libpq_dsn(dsn), row_factory=dict_row) as conn:
            while True:
                try:
                    slug, version = work.get_nowait()
                except queue.Empty:
                    return
                outcome = _migrate_one(conn, slug, version, lock_timeout)
                with lock:
                    (report.migrated if outcome.ok else report.failed).append(outcome)
                if on_outcome is not None:
                    on_outcome(outcome)

    threads = [threading.Thread(target=worker) for _ in range(min(jobs, max(len(todo), 1)))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    report.migrated.sort(key=lambda o: o.slug)
    report.failed.sort(key=lambda o: o.slug)
    report.elapsed = time.monotonic() - started
    return report


def _migrate_one(
    conn: psycopg.Connection[dict[str, Any]], slug: str, version: str | None, lock_timeout: str
) -> TenantOutcome:
    began = time.monotonic()
    try:
        row: dict[str, Any] | None = None
        while True:
            with conn.transaction():
                conn.execute(QUERIES["set_lock_timeout"], {"timeout": lock_timeout})
                row = conn.execute(QUERIES["migrate_tenant_locked"], {"slug": slug}).fetchone()
                nxt = conn.execute(QUERIES["next_pending_migration"], {"slug": slug}).fetchone()
            with conn.transaction():
                conn.execute(QUERIES["reset_runner_session"])
            if nxt is None or not nxt["outside_transaction"]:
                break
            # The next migration cannot run in a transaction: apply it
            # statement by statement, then go on with the rest.
            _apply_outside_transaction(conn, slug, lock_timeout)
        assert row is not None
        with conn.transaction():
            final = conn.execute(QUERIES["tenant_migration_version"], {"slug": slug}).fetchone()
        to_version = final["migration_version"] if final else row["migration_version"]
        return TenantOutcome(slug, version, to_version, True, seconds=time.monotonic() - began)
    except (psycopg.Error, TenancyError) as exc:
        if isinstance(exc, psycopg.Error):
            err = translate(exc)
            sqlstate = exc.sqlstate
            message = str(getattr(err, "message", None) or exc.diag.message_primary or exc)
        else:
            sqlstate, message = exc.sqlstate, exc.message
        with conn.transaction():
            target = conn.execute(QUERIES["latest_migration"]).fetchone()
            conn.execute(
                QUERIES["record_migration_failure"],
                {
                    "slug": slug,
                    "version": target["latest_migration"] if target else None,
                    "sqlstate": sqlstate,
                    "message": message,
                },
            )
        return TenantOutcome(
            slug, version, version, False, sqlstate, message, time.monotonic() - began
        )


def _apply_outside_transaction(
    conn: psycopg.Connection[dict[str, Any]], slug: str, lock_timeout: str
) -> None:
    """Run the tenant's next migration, marked to run outside a transaction,
    one statement at a time on the runner's own connection, serialized per
    tenant by an advisory lock; then record the version (which emits
    tenant_migrated). Such a migration is not atomic: write it to be rerun
    (IF NOT EXISTS), as a killed run repeats it."""
    # pglast: only when such a migration runs.
    from pgtenancy.confinement import check_outside_transaction_statement
    from pgtenancy.sqlscript import read_script

    conn.autocommit = True
    try:
        conn.execute(QUERIES["lock_tenant_migration"], {"slug": slug})
        try:
            nxt = conn.execute(QUERIES["next_pending_migration"], {"slug": slug}).fetchone()
            if nxt is None or not nxt["outside_transaction"]:
                return  # another run did it meanwhile
            statements = [stmt.sql for stmt in read_script(nxt["sql"]).statements]
            for statement in statements:  # all checked before any runs
                check_outside_transaction_statement(statement)
            # Unqualified names resolve in the tenant schema alone (pg_catalog
            # is searched first implicitly); the fence checks the objects.
            path = sql.SQL("{}, pg_temp").format(sql.Identifier(nxt["schema_name"])).as_string(conn)
            conn.execute(QUERIES["session_setting"], {"name": "search_path", "value": path})
            conn.execute(
                QUERIES["session_setting"], {"name": "lock_timeout", "value": lock_timeout}
            )
            conn.execute(
                QUERIES["session_setting"],
                {"name": "pgtenancy.outside_migration_schema", "value": nxt["schema_name"]},
            )
            try:
                for statement in statements:
                    conn.execute(statement.encode("utf-8"))
            finally:
                conn.execute(QUERIES["reset_setting"], {"name": "search_path"})
                conn.execute(QUERIES["reset_setting"], {"name": "lock_timeout"})
                conn.execute(
                    QUERIES["session_setting"],
                    {"name": "pgtenancy.outside_migration_schema", "value": ""},
                )
            conn.execute(QUERIES["mark_migrated"], {"slug": slug, "version": nxt["version"]})
        finally:
            conn.execute(QUERIES["unlock_tenant_migration"], {"slug": slug})
    finally:
        conn.autocommit = False
