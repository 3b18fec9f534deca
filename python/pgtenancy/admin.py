"""``Tenancy``: the admin API, one method per SQL function of the core.

Every method runs its SQL function in its own transaction (a savepoint when
``Tenancy`` was given a psycopg connection already inside one) and turns the
function's SQLSTATE into the matching :mod:`pgtenancy.errors` exception.
Python keeps no copy of tenant state: each call reads the database. The
database access goes through psycopg (:mod:`pgtenancy.database`); a
SQLAlchemy engine is accepted as one way to reach it, not required.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, cast, get_args

from pgtenancy.database import Connectable, Database
from pgtenancy.dsn import libpq_dsn
from pgtenancy.errors import TenancyError
from pgtenancy.slugs import validate_slug

if TYPE_CHECKING:
    from sqlalchemy import Engine

#: How a tenant's data is kept: a schema of its own, or rows in shared tables
#: guarded by row-level security (the registry's ``isolation`` column).
Isolation = Literal["schema", "shared"]
#: A tenant's lifecycle status (the registry's ``status`` column).
TenantStatus = Literal["active", "suspended", "deleted"]
#: A Postgres interval: text such as ``"7 days"``, or a :class:`~datetime.timedelta`.
Interval = str | timedelta


@dataclass(frozen=True)
class Tenant:
    """A row of the ``tenancy.tenants`` registry.

    Attributes:
        id: tenant id (uuid).
        slug: tenant slug.
        schema_name: the tenant's schema; None for a shared tenant.
        status: ``active``, ``suspended`` or ``deleted``.
        isolation: ``schema`` (own schema) or ``shared`` (rows in guarded shared tables).
        metadata: free-form JSON object.
        created_at: creation time (timezone-aware).
        updated_at: time of the last change (timezone-aware).
        migration_version: latest migration applied, None when none.
    """

    id: uuid.UUID
    slug: str
    schema_name: str | None
    status: TenantStatus
    isolation: Isolation
    metadata: dict[str, Any] = field(default_factory=dict)
    created_at: datetime | None = None
    updated_at: datetime | None = None
    migration_version: str | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Tenant:
        """Build a tenant from a registry row (a mapping of column to value)."""
        return cls(
            id=row["id"],
            slug=row["slug"],
            schema_name=row["schema_name"],
            status=row["status"],
            isolation=row["isolation"],
            metadata=dict(row["metadata"] or {}),
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            migration_version=row["migration_version"],
        )


@dataclass(frozen=True)
class Migration:
    """A registered tenant migration: version, SHA-256 checksum of its SQL, time."""

    version: str
    checksum: str
    created_at: datetime


@dataclass(frozen=True)
class GuardedTable:
    """A shared table guarded by RLS: its qualified name and tenant column."""

    table: str
    tenant_column: str


@dataclass(frozen=True)
class ConsumerStatus:
    """Where an outbox consumer stands.

    Attributes:
        consumer: consumer name.
        last_id: id of the last event delivered (0 when none).
        lag_events: events not yet delivered.
        lag_seconds: age of the oldest undelivered event, in seconds (0 when none).
        seen_at: last heartbeat of a listener, None when none ever ran.
        listeners: listener connections open now.
        lease_holder: the listener dispatching for it (``host:pid:random``),
            None when no lease is valid.
    """

    consumer: str
    last_id: int
    lag_events: int
    lag_seconds: float
    seen_at: datetime | None
    listeners: int
    lease_holder: str | None = None


@dataclass(frozen=True)
class OutboxHealth:
    """Cluster-wide figures that bound delivery.

    Attributes:
        notification_queue_usage: fill of the NOTIFY queue, 0 to 1.
        oldest_transaction_seconds: age of the oldest open transaction; it holds
            back every consumer (seconds).
        events: events kept in the outbox.
    """

    notification_queue_usage: float
    oldest_transaction_seconds: float
    events: int


@dataclass(frozen=True)
class MigrationReport:
    """Outcome of :meth:`Tenancy.migrate_tenants`.

    Attributes:
        migrated: tenants to which migrations were applied, with their new version.
        failed: ``(slug, error)`` for every tenant whose migration failed; each
            such tenant stays at its previous version.
        unchanged: tenants already current, and shared tenants (no schema).
    """

    migrated: list[Tenant]
    failed: list[tuple[str, TenancyError]]
    unchanged: list[Tenant] = field(default_factory=list)


def engine_from_dsn(dsn: str) -> Engine:
    """A SQLAlchemy engine (psycopg driver, no pooling) for a libpq DSN or URL.
    Needs the ``sqlalchemy`` extra.

    Args:
        dsn: ``postgresql://...`` URL (a ``postgresql+psycopg://`` SQLAlchemy URL
            is accepted too) or ``key=value`` connection string.
    """
    import psycopg
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    url = libpq_dsn(dsn)
    return create_engine(
        "postgresql+psycopg://", creator=lambda: psycopg.connect(url), poolclass=NullPool
    )


class Tenancy:
    """Admin API over one database.

    Args:
        database: where to connect (a :data:`pgtenancy.database.Connectable`):
            a DSN string (a connection per call, no pooling), a psycopg
            ``Connection`` (used as it is: calls run in savepoints when it is
            inside a transaction; never closed), a psycopg_pool
            ``ConnectionPool``, a callable returning a new psycopg connection,
            or a SQLAlchemy :class:`~sqlalchemy.Engine` using the psycopg
            driver. Only the engine needs SQLAlchemy installed.

    All methods raise :class:`~pgtenancy.errors.NotInstalled` when the SQL core
    is missing, :class:`~pgtenancy.errors.VersionMismatch` when another
    version of it is installed and lacks what the call needs, and psycopg
    errors for connection failures.
    """

    def __init__(self, database: Connectable) -> None:
        self.database = Database(database)
        self._engine: Engine | None = None

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine given, or for a DSN one made on first access
        (no pooling; needs the ``sqlalchemy`` extra).

        Raises:
            AttributeError: ``Tenancy`` was given a psycopg connection, pool or
                connection factory.
        """
        source = self.database.source
        if self._engine is None:
            if isinstance(source, str):
                self._engine = engine_from_dsn(source)
            elif type(source).__module__.startswith("sqlalchemy"):
                self._engine = cast("Engine", source)
            else:
                raise AttributeError(f"this Tenancy has no SQLAlchemy engine ({source!r})")
        return self._engine

    def _one(self, query: str, **params: Any) -> dict[str, Any]:
        return self.database.one(query, params)

    def create_tenant(
        self,
        slug: str,
        metadata: Mapping[str, Any] | None = None,
        isolation: Isolation = "schema",
    ) -> Tenant:
        """Create a tenant, its registry row and ``tenant_created``, in one transaction.

        Args:
            slug: tenant slug (see :func:`pgtenancy.slugs.validate_slug`).
            metadata: JSON-serializable mapping stored with the tenant.
            isolation: ``schema`` (a schema of its own with every migration
                applied) or ``shared`` (its rows live in tables guarded by
                :meth:`enable_rls`). Both kinds coexist.

        Raises:
            InvalidTenantSlug: PT001. TenantExists: PT002.
            MigrationFailed: PT006; no schema, row or event is left behind.
            ValueError: unknown isolation, before any SQL runs.
        """
        validate_slug(slug)
        if isolation not in get_args(Isolation):
            raise ValueError(f"isolation must be 'schema' or 'shared', not {isolation!r}")
        row = self._one(
            "create_tenant",
            slug=slug,
            metadata=json.dumps(dict(metadata or {})),
            isolation=isolation,
        )
        return Tenant.from_row(row)

    def get_tenant(self, slug: str) -> Tenant:
        """The registry row of ``slug``.

        Raises:
            TenantNotFound: PT003.
        """
        return Tenant.from_row(self._one("get_tenant", slug=slug))

    def list_tenants(self) -> list[Tenant]:
        """Every registered tenant, deleted ones included, ordered by slug."""
        return [Tenant.from_row(r) for r in self.database.rows("list_tenants")]

    def suspend_tenant(self, slug: str) -> Tenant:
        """Suspend ``slug``; entering it fails from then on. Emits ``tenant_suspended``.

        Raises:
            TenantNotFound: PT003. TenantDeleted: PT005.
        """
        return Tenant.from_row(self._one("suspend_tenant", slug=slug))

    def resume_tenant(self, slug: str) -> Tenant:
        """Make suspended ``slug`` active again. Emits ``tenant_resumed``.

        Raises:
            TenantNotFound: PT003. TenantDeleted: PT005.
        """
        return Tenant.from_row(self._one("resume_tenant", slug=slug))

    def drop_tenant(self, slug: str, destroy_data: bool = False) -> Tenant:
        """Delete ``slug``: soft by default (schema kept, entry refused), or with
        ``destroy_data=True`` drop its schema and row. Emits ``tenant_deleted``.

        Returns:
            The tenant as it was, with status ``deleted``.

        Raises:
            TenantNotFound: PT003.
        """
        return Tenant.from_row(self._one("drop_tenant", slug=slug, destroy_data=destroy_data))

    def move_tenant(self, slug: str, node_host: str, node_port: int) -> str:
        """Citus: move schema tenant ``slug`` to the worker ``node_host:node_port``
        (``citus_schema_move``; the tenant stays usable while its shards are copied).

        Returns:
            The tenant's node afterwards, ``"host:port"``.

        Raises:
            TenantNotFound: PT003.
            psycopg.errors.InvalidParameterValue: 22023, a shared tenant.
            psycopg.errors.FeatureNotSupported: 0A000, no Citus in the database.
        """
        return str(
            self._one("move_tenant", slug=slug, node_host=node_host, node_port=node_port)["node"]
        )

    def tenant_nodes(self) -> dict[str, str | None]:
        """Citus: ``{slug: "host:port"}`` of every tenant's node; None for shared
        tenants, schemas not distributed, or without Citus."""
        return {r["slug"]: r["node"] for r in self.database.rows("tenant_nodes")}

    def add_migration(self, version: str, sql: str, outside_transaction: bool = False) -> Migration:
        """Register tenant DDL as migration ``version`` (it must sort after the
        latest). Re-adding the same version with the same SQL is a no-op.

        Args:
            version: version text, sorting after every registered version.
            sql: the tenant DDL.
            outside_transaction: the SQL cannot run in a transaction (``CREATE
                INDEX CONCURRENTLY``); it is not tried, and the fleet runner
                (``pgtenancy migrate``) applies it statement by statement.

        Raises:
            InvalidMigration: PT008, bad version, changed SQL, out-of-order
                version, or SQL that fails on an empty tenant schema.
        """
        row = self._one(
            "add_migration", version=version, sql=sql, outside_transaction=outside_transaction
        )
        return Migration(row["version"], row["checksum"], row["created_at"])

    def list_migrations(self) -> list[Migration]:
        """Registered migrations in the order they apply."""
        rows = self.database.rows("list_migrations")
        return [Migration(r["version"], r["checksum"], r["created_at"]) for r in rows]

    def migrate_tenant(self, slug: str) -> Tenant:
        """Apply to ``slug`` the migrations it lacks, in one transaction.
        Emits ``tenant_migrated`` when anything was applied.

        Raises:
            TenantNotFound: PT003. TenantDeleted: PT005.
            TenantSchemaMissing: PT007.
            MigrationFailed: PT006; the tenant stays at its previous version.
        """
        return Tenant.from_row(self._one("migrate_tenant", slug=slug))

    def migrate_tenants(self, slugs: list[str] | None = None) -> MigrationReport:
        """Migrate several tenants, each in its own transaction; a failure is
        recorded and the others go on.

        Args:
            slugs: tenants to migrate; None means every tenant not deleted.
        """
        before = {t.slug: t for t in self.list_tenants()}
        if slugs is None:
            slugs = [t.slug for t in before.values() if t.status != "deleted"]
        migrated: list[Tenant] = []
        failed: list[tuple[str, TenancyError]] = []
        unchanged: list[Tenant] = []
        for slug in slugs:
            try:
                after = self.migrate_tenant(slug)
            except TenancyError as exc:
                failed.append((slug, exc))
                continue
            old = before.get(slug)
            if old is not None and old.migration_version == after.migration_version:
                unchanged.append(after)
            else:
                migrated.append(after)
        return MigrationReport(migrated, failed, unchanged)

    def enable_rls(self, table: str, tenant_column: str = "tenant_id") -> GuardedTable:
        """Guard shared table ``table`` by tenant with row-level security.

        Adds the uuid column if missing (existing rows get NULL and stay
        invisible), defaults it to the current tenant, indexes it, turns on
        ENABLE and FORCE ROW LEVEL SECURITY and creates one policy for all
        commands: ``tenant_column = (SELECT tenancy.current_tenant_id())``.
        Idempotent.

        Args:
            table: table name, optionally schema-qualified (``public.orders``).
            tenant_column: name of the tenant column.

        Raises:
            CannotGuardTable: PT014.
        """
        row = self._one("enable_rls", table=table, tenant_column=tenant_column)
        return GuardedTable(str(row["table_name"]), str(row["tenant_column"]))

    def disable_rls(self, table: str) -> bool:
        """Undo :meth:`enable_rls` (the column and its data stay). True when the
        table was guarded."""
        return bool(self._one("disable_rls", table=table)["disable_rls"])

    def guarded_tables(self) -> list[GuardedTable]:
        """Every guarded shared table with its tenant column."""
        rows = self.database.rows("guarded_tables")
        return [GuardedTable(str(r["table_name"]), str(r["tenant_column"])) for r in rows]

    def grant_app_role(self, role: str) -> None:
        """Let ``role`` use tenants (enter them, read and write tenant schemas and
        guarded tables, now and later) without owning tables.

        Raises:
            UnsafeAppRole: PT013, the role is superuser, has BYPASSRLS or owns a
                guarded table.
        """
        self._one("grant_app_role", role=role)

    def grant_listener_role(self, role: str) -> None:
        """Let ``role`` run outbox consumers (``pgtenancy listen``): register a
        consumer, read events, move its cursor, hold its lease.

        Raises:
            psycopg.errors.UndefinedObject: SQLSTATE 42704, the role does not exist.
        """
        self._one("grant_listener_role", role=role)

    def consumer_status(self) -> list[ConsumerStatus]:
        """Cursor, lag, listeners and lease holder of every outbox consumer."""
        return [
            ConsumerStatus(
                str(r["consumer"]),
                int(r["last_id"]),
                int(r["lag_events"]),
                float(r["lag_seconds"]),
                r["seen_at"],
                int(r["listeners"]),
                r["lease_holder"],
            )
            for r in self.database.rows("consumer_status")
        ]

    def outbox_health(self) -> OutboxHealth:
        """NOTIFY queue usage, age of the oldest open transaction, outbox size."""
        row = self._one("outbox_health")
        return OutboxHealth(
            float(row["notification_queue_usage"]),
            float(row["oldest_transaction_seconds"]),
            int(row["events"]),
        )

    def prune_events(self, older_than: Interval, inactive_after: Interval | None = None) -> int:
        """Delete outbox events older than ``older_than`` that every active
        consumer has passed.

        Args:
            older_than: a Postgres interval, e.g. ``"7 days"`` or
                ``timedelta(days=7)``.
            inactive_after: a consumer without heartbeat for this interval
                stops holding events back; None means the database setting
                ``pgtenancy.consumer_inactive_after`` (default 1 day).

        Returns:
            The number of events deleted.
        """
        return int(
            self._one("prune_events", older_than=older_than, inactive_after=inactive_after)[
                "deleted"
            ]
        )

    def track_changes(self, table: str) -> None:
        """Record every INSERT, UPDATE and DELETE of ``table`` (bulk statements
        and COPY included) as row-change events, delivered by the listener as
        ``row_inserted``/``row_updated``/``row_deleted``. Idempotent.

        Args:
            table: a table of a tenant schema or a guarded shared table, with a
                primary key, optionally schema-qualified.

        Raises:
            CannotTrackTable: PT016, not a table or no primary key.
        """
        self._one("track_changes", table=table)

    def untrack_changes(self, table: str) -> None:
        """Stop recording the row changes of ``table``. Idempotent."""
        self._one("untrack_changes", table=table)

    def parked_events(self, consumer: str | None = None) -> list[dict[str, Any]]:
        """Parked events (of ``consumer``, or all): ``consumer``, ``receiver``,
        ``attempts``, ``error``, ``parked_at`` and the event's columns (``id``,
        ``name``, ``tenant_slug``, ``payload``, ...)."""
        return self.database.rows("parked_events", {"consumer": consumer})
