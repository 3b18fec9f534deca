"""Migrating the whole fleet: one runner, every tenant in its own transaction.

:func:`migrate_fleet` is the one runner behind ``pgtenancy migrate`` and
:meth:`pgtenancy.Tenancy.migrate_tenants`. It plans the run with one query
(:func:`plan_fleet`, also what ``--dry-run`` prints), then migrates each
tenant behind the latest migration with ``tenancy.migrate_tenant`` on
``jobs`` connections, applying migrations marked ``-- pgtenancy:
no-transaction`` statement by statement between those transactions. The row
lock that ``migrate_tenant`` takes means two runs never migrate one tenant at
once; ``lock_timeout`` makes a busy tenant fail instead of hanging the run. A
failure rolls that tenant back to its previous version, is recorded with its
SQLSTATE, emits ``tenant_migration_failed`` in a transaction of its own, and
the others go on. A lost connection (server restart, ``pg_terminate_backend``)
is replaced and that tenant retried (``retries`` times), then recorded as
failed; a deadlock or serialization failure (rolled back whole) is retried the
same way. The report always accounts for every tenant planned:
``len(migrated) + len(failed) + current == planned``. Killing the runner leaves
every tenant at its old or its new version; a rerun picks up what is left.

:func:`sync_migration_dir` registers the migration files of a directory
(checked with pglast first), as ``pgtenancy migrate --dir`` does.
:func:`squash_migrations` makes and registers a baseline, the history up to
a version in one checked script that new tenants start from, as ``pgtenancy
migrate squash`` does.

Every connection the runner opens carries ``application_name``
(:data:`APPLICATION_NAME` unless told otherwise, or the DSN's own).
"""

from __future__ import annotations

import contextlib
import os
import queue
import random
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.pq import TransactionStatus
from psycopg.rows import dict_row

from pgtenancy.database import _is_engine, _is_pool
from pgtenancy.dsn import libpq_dsn
from pgtenancy.errors import (
    InvalidMigration,
    TenancyError,
    UnsafeMigration,
    raise_translated,
    translate,
)
from pgtenancy.queries import QUERIES

if TYPE_CHECKING:
    from pgtenancy.admin import Baseline, Tenancy
    from pgtenancy.database import Connectable
    from pgtenancy.migration_files import MigrationFile

#: ``application_name`` of the runner's connections, as ``pg_stat_activity`` shows it.
APPLICATION_NAME = "pgtenancy migrate"
#: SQLSTATE reported for a tenant whose connection was lost and could not be
#: replaced or retried successfully (connection_failure).
CONNECTION_LOST = "08006"


@dataclass(frozen=True)
class TenantOutcome:
    """What happened to one tenant.

    Attributes:
        slug: tenant slug.
        from_version: migration version before the run (None: none applied).
        to_version: version after the run (unchanged on failure).
        ok: whether the tenant is now current.
        sqlstate: SQLSTATE of the failure (PT006 for a failing migration,
            a lock timeout included; PT003 for an unknown tenant, PT005 for a
            deleted one, 08006 when the connection was lost, ...).
        message: the failure's message.
        seconds: time spent on this tenant.
        attempts: how many times it was tried (more than 1 after a lost connection).
    """

    slug: str
    from_version: str | None
    to_version: str | None
    ok: bool
    sqlstate: str | None = None
    message: str | None = None
    seconds: float = 0.0
    attempts: int = 1


@dataclass
class FleetReport:
    """Outcome of a fleet run.

    Attributes:
        migrated: tenants brought to the latest version, by slug.
        failed: tenants that are not, by slug (unknown or deleted slugs asked
            for included).
        current: tenants already current (shared tenants included: they have
            no schema to migrate).
        planned: tenants the run took on; always
            ``len(migrated) + len(failed) + current``.
        deferred: tenants behind that ``limit`` left for a later run (not a
            failure: they were not asked for).
        elapsed: seconds.
    """

    migrated: list[TenantOutcome] = field(default_factory=list)
    failed: list[TenantOutcome] = field(default_factory=list)
    current: int = 0
    planned: int = 0
    deferred: int = 0
    elapsed: float = 0.0
    placements: PlacementReport = field(default_factory=lambda: PlacementReport())

    @property
    def ok(self) -> bool:
        """No tenant failed and every planned tenant is accounted for."""
        return not self.failed and len(self.migrated) + self.current == self.planned

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data (what ``migrate --json`` prints)."""
        return {
            "planned": self.planned,
            "migrated": [o.__dict__ for o in self.migrated],
            "failed": [o.__dict__ for o in self.failed],
            "current": self.current,
            "deferred": self.deferred,
            "elapsed": self.elapsed,
            "moved_back": self.placements.moved_back,
            "not_moved_back": self.placements.failed,
        }


@dataclass
class PlacementReport:
    """Citus tenants moved back to their node by :func:`restore_placements`.

    Attributes:
        moved_back: ``{slug: "host:port"}`` of each tenant moved back (or
            found back) on the node recorded in ``tenancy.tenant_placements``.
        failed: ``{slug: error message}`` of each tenant the move failed for;
            its record stays and the doctor reports it (``citus_tenant_placement``).
            Key ``"*"``: the records could not be read at all (the runner
            could not connect after its run).
    """

    moved_back: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)


def restore_placements(
    conn: psycopg.Connection[Any], slugs: Sequence[str] | None = None
) -> PlacementReport:
    """Citus: move every distributed tenant a migration re-placed back to the
    node it was on before (``tenancy.tenant_placements``, written by the
    migration's transaction), one ``tenancy.move_tenant`` (``citus_schema_move``)
    per transaction, which clears its record. Citus places a schema
    distributed again by its colocation id (``create_shards.c``,
    ``EmptySingleShardTableColocationDecideNodeId``) and refuses the move in
    the migration's own transaction, hence after the commit. Without Citus,
    or with nothing recorded, it is one query and moves nothing.

    Args:
        conn: a connection outside a transaction (each move commits).
        slugs: only these tenants; None means every tenant with a record.

    Returns:
        A :class:`PlacementReport`; never raises for a failed move (it is in
        ``failed``, and the doctor reports the tenant until it is moved).
    """
    report = PlacementReport()
    cur = conn.cursor(row_factory=dict_row)
    with conn.transaction():
        pending = cur.execute(
            QUERIES["pending_placements"], {"slugs": None if slugs is None else list(slugs)}
        ).fetchall()
    for row in pending:
        try:
            with conn.transaction():
                moved = cur.execute(
                    QUERIES["move_tenant"],
                    {
                        "slug": row["slug"],
                        "node_host": row["node_name"],
                        "node_port": row["node_port"],
                    },
                ).fetchone()
        except psycopg.Error as exc:
            if conn.broken or conn.closed:
                raise
            report.failed[row["slug"]] = _text(exc)
            continue
        report.moved_back[row["slug"]] = "" if moved is None else str(moved["node"])
    return report


@dataclass(frozen=True)
class PlannedTenant:
    """One tenant of a :class:`FleetPlan`.

    Attributes:
        slug: tenant slug.
        from_version: its migration version now (None: none applied).
        versions: the versions it would be migrated through, in order.
    """

    slug: str
    from_version: str | None
    versions: list[str]


@dataclass
class FleetPlan:
    """What a fleet run would do, read with one query.

    Attributes:
        todo: tenants behind, in slug order (after ``limit``).
        current: selected tenants already current (shared tenants included).
        unknown: requested slugs that are not registered.
        deleted: requested slugs of deleted tenants.
        deferred: tenants behind beyond ``limit``.
        latest: the latest registered version (None: none registered).
    """

    todo: list[PlannedTenant] = field(default_factory=list)
    current: int = 0
    unknown: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    deferred: int = 0
    latest: str | None = None

    @property
    def planned(self) -> int:
        """Tenants a run takes on: behind, current, unknown and deleted ones asked for."""
        return len(self.todo) + self.current + len(self.unknown) + len(self.deleted)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready data (what ``migrate --dry-run --json`` prints under ``dry_run``)."""
        return {
            "tenants": [
                {"slug": t.slug, "from": t.from_version, "versions": t.versions} for t in self.todo
            ],
            "current": self.current,
            "unknown": self.unknown,
            "deleted": self.deleted,
            "deferred": self.deferred,
            "latest": self.latest,
        }


class _Connector:
    """Connections for the runner, from whatever the caller holds (a
    :data:`pgtenancy.database.Connectable`): ``acquire`` one, ``release`` it
    (a broken one is discarded, never given back to a pool)."""

    def __init__(self, source: Connectable, application_name: str) -> None:
        self.source = source
        self.application_name = application_name
        #: A caller's own connection: one worker, never replaced or closed.
        self.borrowed = isinstance(source, psycopg.Connection)
        self._proxies: dict[int, Any] = {}
        if (
            isinstance(source, psycopg.Connection)
            and source.info.transaction_status != TransactionStatus.IDLE
        ):
            raise ValueError(
                "the fleet runner commits each tenant on its own: give it a connection "
                "outside a transaction (or a DSN, pool, engine or connection factory)"
            )

    def acquire(self) -> psycopg.Connection[Any]:
        source = self.source
        conn: psycopg.Connection[Any]
        if isinstance(source, str):
            dsn = libpq_dsn(source)
            if "application_name" in conninfo_to_dict(dsn):
                return psycopg.connect(dsn)
            return psycopg.connect(dsn, application_name=self.application_name)
        if isinstance(source, psycopg.Connection):
            conn = source
        elif _is_pool(source):
            conn = source.getconn()
        elif _is_engine(source):
            proxy = source.raw_connection()
            driver = proxy.driver_connection
            if not isinstance(driver, psycopg.Connection):
                proxy.close()
                raise TypeError("the engine must use the psycopg driver (postgresql+psycopg://)")
            conn = driver
            self._proxies[id(conn)] = proxy
        else:
            conn = source()  # type: ignore[operator]
        # A connection made elsewhere: name it for the span of the run.
        with conn.transaction():
            conn.execute(QUERIES["fleet_application_name"], {"name": self.application_name})
        return conn

    def release(self, conn: psycopg.Connection[Any]) -> None:
        source = self.source
        broken = conn.broken or conn.closed
        if not broken and not isinstance(source, str):
            try:
                with conn.transaction():
                    conn.execute(QUERIES["reset_setting"], {"name": "application_name"})
            except psycopg.Error:
                broken = True
        if isinstance(source, str):
            conn.close()
        elif isinstance(source, psycopg.Connection):
            pass  # the caller's: never closed
        elif _is_pool(source):
            source.putconn(conn)  # the pool discards a broken connection
        elif _is_engine(source):
            proxy = self._proxies.pop(id(conn))
            if broken:
                proxy.invalidate()
            proxy.close()
        else:
            conn.close()

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        conn = self.acquire()
        try:
            yield conn
        finally:
            self.release(conn)


def _selection(tenants: Sequence[str] | None) -> list[str] | None:
    return None if tenants is None else list(dict.fromkeys(tenants))


def _plan(
    conn: psycopg.Connection[Any],
    tenants: Sequence[str] | None,
    limit: int | None,
    new_versions: Sequence[str] = (),
) -> FleetPlan:
    wanted = _selection(tenants)
    with conn.transaction():
        # Tuple rows: one row per tenant, and dict rows cost several times
        # more to build (10,000 tenants: tens of milliseconds of a no-op run).
        cur = conn.cursor()
        # The plan is a cheap lookup per tenant, but the planner prices the
        # per-tenant subquery on the tiny migrations table high enough that,
        # past a few thousand tenants, the default jit_above_cost compiles it:
        # with 10,000 tenants JIT made the query ~1.5x slower (EXPLAIN
        # ANALYZE, medians of 5: 172 ms with, 113 ms without, on a loaded host).
        cur.execute(QUERIES["transaction_setting"], {"name": "jit", "value": "off"})
        current = 0
        if wanted is None and not new_versions:
            # The whole fleet: rows only for the tenants behind, a count of
            # the rest (a no-op run on 10,000 tenants sends no row).
            rows = cur.execute(QUERIES["fleet_plan_behind"]).fetchall()
            col = {c.name: i for i, c in enumerate(cur.description or ())}
            counted = cur.execute(QUERIES["fleet_current_count"]).fetchone()
            current = 0 if counted is None else int(counted[0])
        else:
            rows = cur.execute(QUERIES["fleet_plan"], {"slugs": wanted}).fetchall()
            col = {c.name: i for i, c in enumerate(cur.description or ())}
        latest_row = cur.execute(QUERIES["latest_migration"]).fetchone()
    result = FleetPlan(latest=new_versions[-1] if new_versions else None)
    result.current = current
    if result.latest is None and latest_row is not None:
        result.latest = latest_row[0]
    slug, status, isolation = col["slug"], col["status"], col["isolation"]
    version, pending = col["migration_version"], col["pending"]
    if wanted:
        found = {r[slug] for r in rows}
        result.unknown = [s for s in wanted if s not in found]
    behind: list[PlannedTenant] = []
    for r in rows:
        if r[status] == "deleted":
            result.deleted.append(r[slug])
            continue
        versions = [*r[pending], *new_versions] if r[isolation] == "schema" else []
        if versions:
            behind.append(PlannedTenant(r[slug], r[version], versions))
        else:
            result.current += 1
    if limit is not None:
        result.deferred = max(len(behind) - limit, 0)
        behind = behind[:limit]
    result.todo = behind
    return result


def plan_fleet(
    source: Connectable,
    *,
    tenants: Sequence[str] | None = None,
    limit: int | None = None,
    new_versions: Sequence[str] = (),
    application_name: str = APPLICATION_NAME,
) -> FleetPlan:
    """What a fleet run would do, read in one transaction; changes nothing.

    Args:
        source: where to connect (a :data:`pgtenancy.database.Connectable`).
        tenants: only these slugs (the canary); None means every live tenant.
        limit: at most this many tenants behind, in slug order.
        new_versions: versions not registered yet that a run would register
            first (``migrate --dir --dry-run``): every schema tenant lacks them.
        application_name: of the connection.

    Returns:
        A :class:`FleetPlan`.
    """
    connector = _Connector(source, application_name)
    with connector.connection() as conn:
        return _plan(conn, tenants, limit, new_versions)


def plan(
    dsn: str, tenants: Sequence[str] | None = None, limit: int | None = None
) -> tuple[list[tuple[str, str | None]], list[str], int]:
    """Which tenants a run would migrate (kept for callers of 0.2: see :func:`plan_fleet`).

    Returns:
        ``(todo, unknown, current)``: ``(slug, version)`` of tenants behind the
        latest migration, requested slugs that are not registered, and how
        many selected tenants are already current.
    """
    p = plan_fleet(dsn, tenants=tenants, limit=limit)
    return [(t.slug, t.from_version) for t in p.todo], p.unknown, p.current


def pending_versions(dsn: str, from_version: str | None) -> list[str]:
    """Registered migration versions after ``from_version`` (all when None)."""
    with psycopg.connect(libpq_dsn(dsn), autocommit=True) as conn:
        rows = conn.execute(QUERIES["pending_migrations"], {"from_version": from_version})
        return [r[0] for r in rows]


def migrate_fleet(
    source: Connectable,
    *,
    jobs: int = 1,
    lock_timeout: str | timedelta = "5s",
    tenants: Sequence[str] | None = None,
    limit: int | None = None,
    on_outcome: Callable[[TenantOutcome], None] | None = None,
    on_plan: Callable[[int], None] | None = None,
    retries: int = 2,
    application_name: str = APPLICATION_NAME,
) -> FleetReport:
    """Migrate every tenant that lacks migrations, each in its own transaction.

    Args:
        source: where to connect (a :data:`pgtenancy.database.Connectable`: a
            DSN, a psycopg pool, a SQLAlchemy engine, a connection factory, or
            a psycopg connection outside a transaction, which is used alone,
            as one job). A transaction pooler is fine: nothing here needs
            session state across transactions.
        jobs: connections working in parallel (>= 1).
        lock_timeout: a Postgres duration (``"5s"``) or a
            :class:`~datetime.timedelta` (whole milliseconds); a tenant whose
            tables stay locked longer fails (PT006, "lock timeout", 55P03 in
            the detail) instead of blocking the run.
        tenants: migrate only these slugs (the canary); None means all.
        limit: migrate at most this many tenants.
        on_outcome: called (from worker threads) after each tenant.
        on_plan: called once with the number of tenants to migrate.
        retries: after a lost connection, how many more times a tenant is
            tried on a new connection before it is recorded as failed (08006);
            after a deadlock (40P01) or serialization failure (40001), how
            many more times it is run again.
        application_name: of every connection the runner opens.

    Returns:
        A :class:`FleetReport`; ``len(migrated) + len(failed) + current ==
        planned`` always holds, and ``report.ok`` is false on any shortfall.

    Raises:
        ValueError: ``jobs`` < 1, ``retries`` < 0, or a psycopg connection
            inside a transaction.
        psycopg.Error: the database cannot be reached to plan the run.
    """
    if jobs < 1:
        raise ValueError("jobs must be at least 1")
    if retries < 0:
        raise ValueError("retries must be at least 0")
    if isinstance(lock_timeout, timedelta):
        lock_timeout = f"{max(int(lock_timeout.total_seconds() * 1000), 1)}ms"
    started = time.monotonic()
    connector = _Connector(source, application_name)
    restore_for = None if tenants is None else list(tenants)
    with connector.connection() as conn:
        fleet = _plan(conn, tenants, limit)
        report = FleetReport(current=fleet.current, planned=fleet.planned, deferred=fleet.deferred)
        if not fleet.todo:
            # Nothing to migrate (the no-op run): restore placements on this
            # connection instead of opening another one.
            _restore_into(report, conn, restore_for)
    for slug in fleet.unknown:
        report.failed.append(
            TenantOutcome(slug, None, None, False, "PT003", f"tenant '{slug}' not found")
        )
    for slug in fleet.deleted:
        report.failed.append(
            TenantOutcome(slug, None, None, False, "PT005", f"tenant '{slug}' is deleted")
        )
    if on_plan is not None:
        on_plan(len(fleet.todo))
    work: queue.Queue[PlannedTenant] = queue.Queue()
    for item in fleet.todo:
        work.put(item)
    lock = threading.Lock()
    done: dict[str, TenantOutcome] = {}

    def worker() -> None:
        conn: psycopg.Connection[Any] | None = None
        try:
            while True:
                try:
                    item = work.get_nowait()
                except queue.Empty:
                    return
                outcome, conn = _run_tenant(connector, conn, item, lock_timeout, retries)
                with lock:
                    done[item.slug] = outcome
                if on_outcome is not None:
                    # A reporting callback never stops the run.
                    with contextlib.suppress(Exception):
                        on_outcome(outcome)
        finally:
            if conn is not None:
                connector.release(conn)

    workers = 1 if connector.borrowed else min(jobs, max(len(fleet.todo), 1))
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for item in fleet.todo:
        outcome = done.get(item.slug) or TenantOutcome(
            item.slug,
            item.from_version,
            item.from_version,
            False,
            None,
            "not attempted: the runner's worker stopped",
        )
        (report.migrated if outcome.ok else report.failed).append(outcome)
    report.migrated.sort(key=lambda o: o.slug)
    report.failed.sort(key=lambda o: o.slug)
    # Citus: tenants a migration (this run's or an earlier plain SQL one)
    # re-placed on another node go back to theirs, after the commits.
    if fleet.todo:
        try:
            with connector.connection() as conn:
                _restore_into(report, conn, restore_for)
        except psycopg.Error as exc:
            report.placements.failed["*"] = f"placements not restored: {_text(exc)}"
    report.elapsed = time.monotonic() - started
    return report


def _restore_into(
    report: FleetReport, conn: psycopg.Connection[Any], slugs: list[str] | None
) -> None:
    """:func:`restore_placements` into ``report``; a failure is reported, never raised."""
    try:
        report.placements = restore_placements(conn, slugs)
    except psycopg.Error as exc:
        report.placements.failed["*"] = f"placements not restored: {_text(exc)}"


#: SQLSTATEs after which a tenant's migration is run again (up to ``retries``
#: times): deadlock_detected and serialization_failure roll the transaction
#: back whole (PostgreSQL docs, "Serialization Failure Handling").
_RETRIED = frozenset({"40P01", "40001"})


def _lost(conn: psycopg.Connection[Any] | None) -> bool:
    return conn is None or conn.broken or conn.closed


def _run_tenant(
    connector: _Connector,
    conn: psycopg.Connection[Any] | None,
    item: PlannedTenant,
    lock_timeout: str,
    retries: int,
) -> tuple[TenantOutcome, psycopg.Connection[Any] | None]:
    """Migrate one tenant, replacing a lost connection and retrying it; never
    raises: every way it ends is an outcome. Returns the outcome and the
    connection to go on with (None when none could be made)."""
    began = time.monotonic()
    attempts = 0
    sqlstate: str | None = None
    message = ""
    while attempts <= retries:
        if _lost(conn):
            if conn is not None:
                connector.release(conn)
                conn = None
                if connector.borrowed:
                    message = f"{message}; the caller's connection is closed".lstrip("; ")
                    break
            try:
                conn = connector.acquire()
            except Exception as exc:  # the server is unreachable
                sqlstate = CONNECTION_LOST
                message = f"connection lost and not replaced: {_text(exc)}"
                attempts += 1
                time.sleep(min(0.2 * attempts, 2.0))
                continue
        assert conn is not None
        attempts += 1
        try:
            to_version = _migrate_one(conn, item.slug, lock_timeout)
        except Exception as exc:
            sqlstate, message = _failure(exc)
            if _lost(conn):
                sqlstate = sqlstate or CONNECTION_LOST
                message = f"connection lost: {message}"
                continue  # a new connection, the same tenant again
            if sqlstate in _RETRIED and attempts <= retries:
                # Rolled back whole, so safe to run again: a deadlock or
                # serialization failure with another tenant's migration (on
                # Citus, parallel ones take the same metadata locks).
                time.sleep(random.uniform(0.05, 0.3) * attempts)
                continue
            recorded = _record_failure(conn, item.slug, sqlstate, message)
            if not recorded:
                message += " (the failure could not be recorded: connection lost)"
            outcome = TenantOutcome(
                item.slug,
                item.from_version,
                item.from_version,
                False,
                sqlstate,
                message,
                time.monotonic() - began,
                attempts,
            )
            return outcome, conn
        target = item.versions[-1]
        if to_version is None or to_version < target:  # C collation = code point order
            sqlstate, message = "PT006", f"stopped at {to_version or '-'} before {target}"
            _record_failure(conn, item.slug, sqlstate, message)
            ok = False
        else:
            sqlstate, message, ok = None, "", True
        outcome = TenantOutcome(
            item.slug,
            item.from_version,
            to_version,
            ok,
            sqlstate,
            message or None,
            time.monotonic() - began,
            attempts,
        )
        return outcome, conn
    # Out of attempts on lost connections: record it if the server answers now.
    if _lost(conn) and not connector.borrowed:
        if conn is not None:
            connector.release(conn)
        try:
            conn = connector.acquire()
        except Exception:
            conn = None
    if conn is not None and not _lost(conn):
        if not _record_failure(conn, item.slug, sqlstate or CONNECTION_LOST, message):
            message += " (the failure could not be recorded)"
    else:
        message += " (the failure could not be recorded)"
    outcome = TenantOutcome(
        item.slug,
        item.from_version,
        item.from_version,
        False,
        sqlstate or CONNECTION_LOST,
        message,
        time.monotonic() - began,
        attempts,
    )
    return outcome, conn


def _text(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _failure(exc: BaseException) -> tuple[str | None, str]:
    if isinstance(exc, TenancyError):
        return exc.sqlstate, exc.message
    if isinstance(exc, psycopg.Error):
        err = translate(exc)
        message = getattr(err, "message", None) or exc.diag.message_primary or _text(exc)
        return exc.sqlstate, str(message)
    return None, f"{type(exc).__name__}: {_text(exc)}"


def _record_failure(
    conn: psycopg.Connection[Any], slug: str, sqlstate: str | None, message: str
) -> bool:
    """Emit tenant_migration_failed in a transaction of its own; False when
    the connection is gone (the outcome says so)."""
    try:
        if conn.info.transaction_status != TransactionStatus.IDLE:
            conn.rollback()
        cur = conn.cursor(row_factory=dict_row)
        with conn.transaction():
            # A tenant being provisioned keeps its failure (the migration
            # that failed: its next one) and announces nothing.
            nxt = cur.execute(QUERIES["next_pending_migration"], {"slug": slug}).fetchone()
            provisioning = cur.execute(
                QUERIES["record_provisioning_failure"],
                {
                    "slug": slug,
                    "version": nxt["version"] if nxt else None,
                    "sqlstate": sqlstate,
                    "message": message,
                },
            ).fetchone()
            if provisioning is not None and provisioning["recorded"]:
                return True
            target = cur.execute(QUERIES["latest_migration"]).fetchone()
            cur.execute(
                QUERIES["record_migration_failure"],
                {
                    "slug": slug,
                    "version": target["latest_migration"] if target else None,
                    "sqlstate": sqlstate,
                    "message": message,
                },
            )
        return True
    except psycopg.Error:
        return False


def _migrate_one(conn: psycopg.Connection[Any], slug: str, lock_timeout: str) -> str | None:
    """Bring one tenant to the latest version; returns its version after."""
    cur = conn.cursor(row_factory=dict_row)
    previous: object = object()
    while True:
        # One transaction applies what needs no commit in between: all that
        # is missing, or (commit boundaries) the next migration.
        with conn.transaction():
            cur.execute(QUERIES["set_lock_timeout"], {"timeout": lock_timeout})
            row = cur.execute(QUERIES["migrate_tenant_locked"], {"slug": slug}).fetchone()
            nxt = cur.execute(QUERIES["next_pending_migration"], {"slug": slug}).fetchone()
        # Nothing a migration left in this session (settings, temporary
        # objects, LISTEN, advisory locks) may reach the next tenant.
        with conn.transaction():
            cur.execute(QUERIES["reset_runner_session"])
        if nxt is None:
            break
        if nxt["outside_transaction"]:
            # The next migration cannot run in a transaction: apply it
            # statement by statement, then go on with the rest.
            _apply_outside_transaction(conn, slug, lock_timeout)
            continue
        version = None if row is None else row["migration_version"]
        if version == previous:
            break  # no progress: reported as stopped short
        previous = version
    with conn.transaction():
        final = cur.execute(QUERIES["tenant_migration_version"], {"slug": slug}).fetchone()
    return None if final is None else final["migration_version"]


@contextmanager
def _tenant_migration_lock(
    conn: psycopg.Connection[Any], slug: str, lock_timeout: str
) -> Iterator[None]:
    """Serialize no-transaction migrations of tenant ``slug`` across runners.

    Their statements run in autocommit, so no transaction of ``conn`` can
    hold a lock across them; a second connection to the same server, as the
    same role, holds the tenant's row of ``tenancy.slug_locks`` in an open
    transaction instead (waiting at most ``lock_timeout``), released by its
    rollback, or by the server when the runner dies. Not an advisory lock:
    the application role could hold that one and block every run.
    """
    params = {
        opt.keyword.decode(): opt.val.decode()
        for opt in conn.pgconn.info
        if opt.val is not None and opt.val != b""
    }
    with psycopg.connect(make_conninfo("", **params)) as holder:
        holder.execute(QUERIES["local_setting"], {"name": "lock_timeout", "value": lock_timeout})
        holder.execute(QUERIES["lock_tenant_migration"], {"slug": slug})
        yield
        holder.rollback()


def _check_vacuum_targets(cur: psycopg.Cursor[Any], node: Any, statement: str, schema: str) -> None:
    """Refuse a no-transaction VACUUM (``node``, the parse tree of ``statement``)
    of a table outside the tenant's ``schema``.

    Its names are unqualified (the checker refuses others), but pg_catalog is
    searched before the tenant schema: an attack run vacuumed ``pg_class``
    and ``pg_authid`` (FULL: rewritten, the whole server's logins blocked
    meanwhile) as the owner. Each name is resolved as the statement will
    resolve it, under the tenant's search_path, just before it runs.

    Raises:
        UnsafeMigration: (PT017) a table it names is not in ``schema``.
    """
    from pglast import ast

    if isinstance(node, ast.VacuumStmt):
        for rel in node.rels or ():
            relation = getattr(rel, "relation", None)
            if relation is None:
                continue
            row = cur.execute(QUERIES["relation_schema"], {"relation": relation.relname}).fetchone()
            found = None if row is None else row["nspname"]
            if found != schema:
                raise UnsafeMigration(
                    f"unsafe migration: VACUUM/ANALYZE of {relation.relname!r} resolves to "
                    f"{'no table' if found is None else 'schema ' + repr(found)}, not the "
                    f"tenant schema {schema!r}: {statement.strip()[:200]}"
                )


def _apply_outside_transaction(conn: psycopg.Connection[Any], slug: str, lock_timeout: str) -> None:
    """Run the tenant's next migration, marked to run outside a transaction,
    one statement at a time on the runner's own connection, serialized per
    tenant by an advisory lock; then record the version (which emits
    tenant_migrated). Such a migration is not atomic: write it to be rerun
    (IF NOT EXISTS), as a killed run repeats it."""
    # pglast: only when such a migration runs.
    from pglast import parse_sql

    from pgtenancy.confinement import check_outside_transaction_node
    from pgtenancy.sqlscript import read_script

    autocommit = conn.autocommit
    conn.autocommit = True
    cur = conn.cursor(row_factory=dict_row)
    try:
        with _tenant_migration_lock(conn, slug, lock_timeout):
            nxt = cur.execute(QUERIES["next_pending_migration"], {"slug": slug}).fetchone()
            if nxt is None or not nxt["outside_transaction"]:
                return  # another run did it meanwhile
            # One parse (read_script's tree) serves the checks and the runs.
            statements = [
                (stmt.sql, stmt.tree if stmt.tree is not None else parse_sql(stmt.sql)[0].stmt)
                for stmt in read_script(nxt["sql"]).statements
            ]
            for statement, node in statements:  # all checked before any runs
                check_outside_transaction_node(node, statement)
            # Unqualified names resolve in the tenant schema alone (pg_catalog
            # is searched first implicitly); the fence checks the objects.
            path = sql.SQL("{}, pg_temp").format(sql.Identifier(nxt["schema_name"])).as_string(conn)
            cur.execute(QUERIES["session_setting"], {"name": "search_path", "value": path})
            cur.execute(QUERIES["session_setting"], {"name": "lock_timeout", "value": lock_timeout})
            cur.execute(
                QUERIES["session_setting"],
                {"name": "pgtenancy.outside_migration_schema", "value": nxt["schema_name"]},
            )
            try:
                for statement, node in statements:
                    _check_vacuum_targets(cur, node, statement, nxt["schema_name"])
                    cur.execute(statement.encode("utf-8"))
            finally:
                if not _lost(conn):
                    cur.execute(QUERIES["reset_setting"], {"name": "search_path"})
                    cur.execute(QUERIES["reset_setting"], {"name": "lock_timeout"})
                    cur.execute(
                        QUERIES["session_setting"],
                        {"name": "pgtenancy.outside_migration_schema", "value": ""},
                    )
            cur.execute(QUERIES["mark_migrated"], {"slug": slug, "version": nxt["version"]})
    finally:
        if not _lost(conn):
            conn.autocommit = autocommit


@dataclass
class SyncResult:
    """Outcome of :func:`sync_migration_dir`.

    Attributes:
        files: every migration file of the directory, in version order.
        registered: versions registered by this call (with ``dry_run``: that
            would be registered).
        current: versions that were registered already, with the same checksum.
        warnings: what the checks let through but report (``FILE:LINE: text``:
            DO blocks, dynamic SQL, ``set_config``), in file order.
    """

    files: list[MigrationFile] = field(default_factory=list)
    registered: list[str] = field(default_factory=list)
    current: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def sync_migration_dir(
    source: Connectable,
    directory: Path | str,
    *,
    shared_schemas: Sequence[str] = ("public",),
    dry_run: bool = False,
) -> SyncResult:
    """Register the migration files of ``directory`` that are not registered
    yet, in version order, as ``pgtenancy migrate --dir`` does. Every file is
    read and checked (pglast; needs the ``migrations`` extra) before anything
    is registered. The files go in batches (:func:`registration_batches`),
    one ``tenancy.add_migrations`` call and transaction each; when a batch is
    refused, its files are registered one at a time, so the files before the
    refused one stay registered and the error is that file's.

    Args:
        source: where to connect (a :data:`pgtenancy.database.Connectable`).
        directory: the migrations directory (naming rules:
            :func:`pgtenancy.migration_files.read_migration_dir`).
        shared_schemas: schemas migrations may reference.
        dry_run: check and compare only; register nothing.

    Returns:
        A :class:`SyncResult`.

    Raises:
        pgtenancy.migration_files.MigrationCheckError: a file was refused
            (file, line, reason); nothing registered.
        InvalidMigration: PT008, a registered file changed (checksum differs;
            raised before anything is registered), or the database refused one
            (the files before it stay registered).
        FileNotFoundError: no such directory.
    """
    from pgtenancy.admin import Tenancy
    from pgtenancy.migration_files import check_migration, read_migration_dir

    files = read_migration_dir(Path(directory))
    warnings = [w for f in files for w in check_migration(f, shared_schemas)]
    if isinstance(source, str):  # one connection for the whole directory
        with psycopg.connect(
            libpq_dsn(source), autocommit=True, application_name=APPLICATION_NAME
        ) as conn:
            result = _sync(Tenancy(conn), files, dry_run)
    else:
        result = _sync(Tenancy(source), files, dry_run)
    result.warnings = warnings
    return result


def _sync(tenancy: Tenancy, files: list[MigrationFile], dry_run: bool) -> SyncResult:
    registered = {m.version: m.checksum for m in tenancy.list_migrations()}
    result = SyncResult(files=files)
    new: list[MigrationFile] = []
    for f in files:
        if f.version in registered:
            if registered[f.version] != f.checksum:
                raise InvalidMigration(
                    f"{f.name or f.path.name} changed after it was registered (checksum differs); "
                    "add a new migration instead"
                )
            result.current.append(f.version)
        else:
            new.append(f)
    if dry_run:
        result.registered = [f.version for f in new]
        return result
    for batch in registration_batches(new):
        try:
            tenancy.add_migrations([(f.version, f.sql, f.outside_transaction) for f in batch])
        except TenancyError:
            if len(batch) == 1:
                raise
            # Nothing of the batch was registered: one file at a time, the
            # files before the failing one stay registered and the error is
            # the failing file's own (or the batch failed only as a batch).
            for f in batch:
                tenancy.add_migration(f.version, f.sql, outside_transaction=f.outside_transaction)
                result.registered.append(f.version)
            continue
        result.registered += [f.version for f in batch]
    return result


#: The scratch schema ``tenancy.prepare_baseline`` replays the history in.
BASELINE_REFERENCE_SCHEMA = "tenancy_check_baseline"

#: Rows per ``INSERT`` statement of a baseline (``pg_dump --rows-per-insert``):
#: few statements for a seeded lookup table, each statement's size bounded by
#: its rows.
ROWS_PER_INSERT = 100


@dataclass
class SquashResult:
    """Outcome of :func:`squash_migrations`.

    Attributes:
        baseline: the registered baseline (None with ``dry_run``).
        sql: the baseline's SQL.
        squashed: how many migrations it stands for.
        steps: transactions the reference replay took (more than 1 when the
            history needs commit boundaries).
        warnings: what the template rewriter reported (``line N: ...``).
        seconds: wall time.
    """

    baseline: Baseline | None
    sql: str
    squashed: int
    steps: int
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0


def squash_migrations(
    dsn: str,
    through: str,
    *,
    dry_run: bool = False,
    application_name: str = APPLICATION_NAME,
) -> SquashResult:
    """Squash the registered migrations up to ``through`` into a baseline and
    register it (``pgtenancy migrate squash --through VERSION``): new tenants
    then run the baseline and the migrations after it; existing tenants are
    not touched (they keep their ``migration_version`` and go on with the
    migrations after it, which all stay registered).

    Steps: replay the migrations up to ``through`` in the scratch schema
    :data:`BASELINE_REFERENCE_SCHEMA` (``tenancy.prepare_baseline``, one
    transaction per call, as many as the commit boundaries of the history
    need); dump it, schema and rows, with ``pg_dump --column-inserts``;
    rewrite the dump into a tenant script
    (:func:`pgtenancy.templates.import_template` with ``data=True``,
    privileges kept: the rows the history left go in as ``INSERT``
    statements between the tables and their constraints, the sequences'
    values as ``setval``); register it with ``tenancy.add_baseline``, which
    refuses rows that depend on the tenant (a value naming the schema the
    replay ran in, object identifiers), runs the script in a scratch schema
    as the migrator role and refuses it unless it creates what the replay
    created, object by object (``tenancy.schema_catalog``), and leaves the
    same rows in every table and the same value in every sequence. On any
    refusal the scratch schema is dropped and nothing is registered.

    Args:
        dsn: database URL or libpq string (``pg_dump`` connects too).
        through: a registered migration version.
        dry_run: make and check nothing beyond the replay and the rewrite;
            register nothing (``SquashResult.sql`` holds the baseline).
        application_name: of the connections.

    Returns:
        A :class:`SquashResult`.

    Raises:
        BaselineRefused: PT032; unregistered version, a baseline through it
            already, a no-transaction migration that cannot run inside a
            transaction (VACUUM), migrations that leave rows naming the
            schema they ran in or holding object identifiers, or a dump the
            rewriter cannot make tenant-local (the rewriter's problems in
            the message), or (Python only) pg_dump of the replay failed,
            with its message.
        BaselineMismatch: PT033; the rewritten dump differs from the replay
            (objects, rows of a table, a sequence's value; in ``detail``).
        MigrationFailed: PT006; a migration failed in the replay.
        FileNotFoundError: no ``pg_dump`` (PostgreSQL client programs).
    """
    import subprocess

    from pgtenancy.admin import Baseline
    from pgtenancy.errors import BaselineRefused
    from pgtenancy.templates import TemplateError, import_template
    from pgtenancy.tenant_archive import _pg_dump

    started = time.monotonic()
    pg_dump = _pg_dump()
    if pg_dump is None:
        raise FileNotFoundError("pg_dump not found: install the PostgreSQL client programs")
    url = libpq_dsn(dsn)
    with psycopg.connect(url, autocommit=True, application_name=application_name) as conn:
        cur = conn.cursor(row_factory=dict_row)
        registered = [m[0] for m in conn.execute(QUERIES["list_migrations"]).fetchall()]
        done = False
        try:
            steps, at = 0, None
            # Each call is its own transaction: an enum value one migration
            # adds is committed before the next uses it.
            while at != through:
                row = cur.execute(
                    QUERIES["prepare_baseline"], {"through_version": through}
                ).fetchone()
                previous, at = at, None if row is None else row["version"]
                steps += 1
                if at == previous or steps > len(registered) + 1:
                    raise BaselineRefused(f"the replay up to {through} stopped at {at}")
            dumped = subprocess.run(
                [
                    pg_dump,
                    # Schema and rows: tables, then their rows (constant
                    # INSERTs, identity values kept, generated columns left
                    # out) and the sequences' values, then constraints,
                    # indexes and triggers, so foreign keys hold and no
                    # trigger fires on the rows.
                    "--column-inserts",
                    f"--rows-per-insert={ROWS_PER_INSERT}",
                    "--no-owner",
                    "-n",
                    BASELINE_REFERENCE_SCHEMA,
                    "--dbname",
                    url,
                ],
                capture_output=True,
                check=False,
                # Bytes, decoded here: text mode would turn a \r\n inside a
                # value into \n.
                env={**os.environ, "PGCLIENTENCODING": "UTF8"},
            )
            if dumped.returncode != 0:
                # Reading the rows needs what pg_dump needs (row security
                # off: a role subject to a policy of the replay's tables fails).
                error = dumped.stderr.decode("utf-8", "replace").strip()
                raise BaselineRefused(
                    f"cannot squash through {through}: pg_dump of the replay failed: {error}"
                )
            dump = dumped.stdout.decode("utf-8")
            try:
                template = import_template(
                    dump, keep_acl=True, source_schema=BASELINE_REFERENCE_SCHEMA, data=True
                )
            except TemplateError as exc:
                problems = "; ".join(f"line {line}: {reason}" for line, reason in exc.problems)
                raise BaselineRefused(
                    f"cannot squash through {through}: the template rewriter cannot make the "
                    f"dump of the replay tenant-local: {problems}"
                ) from exc
            squashed = sum(1 for v in registered if v <= through)
            baseline = None
            if not dry_run:
                added = cur.execute(
                    QUERIES["add_baseline"], {"through_version": through, "sql": template.sql}
                ).fetchone()
                assert added is not None
                baseline = Baseline(
                    added["through_version"],
                    added["checksum"],
                    added["created_at"],
                    len(template.sql.encode("utf-8")),
                    squashed,
                )
            done = True
        except psycopg.Error as exc:
            raise_translated(exc)
        finally:
            if not (done and not dry_run) and not conn.closed and not conn.broken:
                conn.execute(QUERIES["discard_baseline_scratch"])
    return SquashResult(
        baseline,
        template.sql,
        squashed,
        steps,
        template.warnings,
        time.monotonic() - started,
    )


def sync_migrations(
    source: Connectable, files: Sequence[MigrationFile], *, dry_run: bool = False
) -> SyncResult:
    """Register migrations made elsewhere (rendered Alembic revisions, say),
    as :func:`sync_migration_dir` registers a directory: every version already
    registered must have the same checksum (checked for all before anything
    is registered), the new ones are registered in order.

    Args:
        source: where to connect (a :data:`pgtenancy.database.Connectable`).
        files: the migrations, in version order (already checked by the caller).
        dry_run: compare only; register nothing.

    Returns:
        A :class:`SyncResult` (no warnings: the caller checked the files).

    Raises:
        InvalidMigration: PT008, as :func:`sync_migration_dir`.
    """
    from pgtenancy.admin import Tenancy

    if isinstance(source, str):
        with psycopg.connect(
            libpq_dsn(source), autocommit=True, application_name=APPLICATION_NAME
        ) as conn:
            return _sync(Tenancy(conn), list(files), dry_run)
    return _sync(Tenancy(source), list(files), dry_run)


#: Files registered per ``tenancy.add_migrations`` call: one transaction and
#: one scratch try each. Small: the locks a batch holds (about 11 per file of
#: a table and an index) stay far below the server's shared lock table, and
#: the session-state check of each migration reads every lock of the server
#: (``pg_locks``), so it costs more the more the batch holds (10 measured
#: cheaper than 5 or 25).
BATCH_FILES = 10

# The rule of tenancy.needs_commit_boundaries: an enum value added by a
# migration is usable only after it commits.
_ADDS_ENUM_VALUE = re.compile(r"\bALTER\s+TYPE\b.*\bADD\s+VALUE\b", re.IGNORECASE | re.DOTALL)


def registration_batches(files: Sequence[MigrationFile]) -> Iterator[list[MigrationFile]]:
    """Split ``files`` (version order) into the batches :func:`sync_migration_dir`
    registers in one transaction each: at most :data:`BATCH_FILES` files, and a
    batch ends after a file that adds an enum value (``ALTER TYPE ... ADD VALUE``,
    usable by later files only once committed) or runs outside a transaction.

    Args:
        files: migration files, in version order.

    Returns:
        An iterator of non-empty lists, together holding ``files`` in order.
    """
    batch: list[MigrationFile] = []
    for f in files:
        batch.append(f)
        if len(batch) >= BATCH_FILES or f.outside_transaction or _ADDS_ENUM_VALUE.search(f.sql):
            yield batch
            batch = []
    if batch:
        yield batch
