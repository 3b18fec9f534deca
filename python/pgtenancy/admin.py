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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast, get_args

from pgtenancy.database import Connectable, Database
from pgtenancy.dsn import libpq_dsn
from pgtenancy.errors import (
    METADATA_MAX_BYTES,
    METADATA_MAX_DEPTH,
    InvalidTenantMetadata,
    TenancyError,
)
from pgtenancy.slugs import validate_slug

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from pgtenancy.fleet import SquashResult
    from pgtenancy.tenant_ops import TenantSize

#: How a tenant's data is kept: a schema of its own, or rows in shared tables
#: guarded by row-level security (the registry's ``isolation`` column).
Isolation = Literal["schema", "shared"]
#: A tenant's lifecycle status (the registry's ``status`` column).
TenantStatus = Literal["active", "suspended", "deleted", "provisioning"]
#: A Postgres interval: text such as ``"7 days"``, or a :class:`~datetime.timedelta`.
Interval = str | timedelta


def metadata_json(metadata: Mapping[str, Any] | None) -> str:
    """Tenant metadata as the JSON text the registry stores.

    Args:
        metadata: a mapping of JSON-serializable values, or None for ``{}``.

    Returns:
        The JSON text (UTF-8, not ASCII-escaped, as the database sizes it;
        numbers and duplicate keys may still come out a little longer or
        shorter in jsonb's text, and the database's own check, PT029, is the
        final one), at most :data:`pgtenancy.errors.METADATA_MAX_BYTES` bytes.

    Raises:
        InvalidTenantMetadata: (PT029) not a mapping; a value JSON cannot
            encode (NaN and infinities, which JSON has not; lone surrogates
            and NUL characters, which PostgreSQL's jsonb refuses; keys that
            are not strings, numbers, booleans or None); a value more than
            :data:`pgtenancy.errors.METADATA_MAX_DEPTH` levels below the top;
            or larger than the limit. The same rules as
            ``tenancy.check_metadata`` in SQL (RFC 8259 for JSON numbers).
    """
    if metadata is not None and not isinstance(metadata, Mapping):
        raise InvalidTenantMetadata(
            f"tenant metadata must be a mapping (a JSON object), not {type(metadata).__name__}"
        )
    _check_metadata_values(metadata or {})
    try:
        text = json.dumps(dict(metadata or {}), ensure_ascii=False, allow_nan=False)
        size = len(text.encode("utf-8"))
    except (TypeError, ValueError) as exc:
        raise InvalidTenantMetadata(f"tenant metadata is not JSON-serializable: {exc}") from exc
    if size > METADATA_MAX_BYTES:
        raise InvalidTenantMetadata(
            f"tenant metadata is {size} bytes as JSON text, more than {METADATA_MAX_BYTES}",
            hint="Keep large data in your own tables, keyed by the tenant id.",
        )
    return text


def _check_metadata_values(metadata: Mapping[str, Any]) -> None:
    """Refuse NUL characters and values nested deeper than METADATA_MAX_DEPTH
    (without recursion: a deep value must not exhaust Python's stack)."""
    pending: list[tuple[Any, int]] = [(metadata, 0)]
    while pending:
        value, level = pending.pop()
        if level > METADATA_MAX_DEPTH:
            raise InvalidTenantMetadata(
                f"tenant metadata nests values more than {METADATA_MAX_DEPTH} levels deep",
                hint="Flatten it, or keep such data in your own tables.",
            )
        if isinstance(value, str):
            if "\x00" in value:
                raise InvalidTenantMetadata(
                    "tenant metadata holds a NUL character, which PostgreSQL's jsonb cannot store"
                )
        elif isinstance(value, Mapping):
            # Keys are strings to check as values are (their level is the item's).
            pending.extend((key, level + 1) for key in value if isinstance(key, str))
            pending.extend((item, level + 1) for item in value.values())
        elif isinstance(value, list | tuple):
            pending.extend((item, level + 1) for item in value)


@dataclass(frozen=True)
class Tenant:
    """A row of the ``tenancy.tenants`` registry.

    Attributes:
        id: tenant id (uuid).
        slug: tenant slug.
        schema_name: the tenant's schema; None for a shared tenant.
        status: ``active``, ``suspended``, ``deleted``, or ``provisioning``
            (created, its migrations not all applied yet: see
            :meth:`Tenancy.create_tenant`).
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
class Baseline:
    """A registered baseline (a row of ``tenancy.baselines``).

    Attributes:
        through_version: the last migration version it stands for.
        checksum: SHA-256 (hex) of its SQL.
        created_at: when it was registered.
        size: its SQL, in bytes.
        squashed: how many registered migrations it stands for.
    """

    through_version: str
    checksum: str
    created_at: datetime
    size: int = 0
    squashed: int = 0


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
        oldest_transaction_seconds: age of the oldest open or prepared
            transaction; it holds back every consumer (seconds).
        events: events kept in the outbox.
        held_back_events: events no consumer may read yet because an older
            transaction is still open (or prepared).
        prepared_transactions: prepared (two-phase) transactions on the
            server; an orphaned one holds every consumer back until
            ``COMMIT PREPARED``/``ROLLBACK PREPARED``.
        oldest_prepared_seconds: age of the oldest of them (0 when none).
        xid_holders: the 20 oldest transactions holding consumers back, oldest
            first: ``{"kind": "transaction"|"prepared", "holder": pid or gid,
            "database", "role", "state", "age_seconds"}``.
    """

    notification_queue_usage: float
    oldest_transaction_seconds: float
    events: int
    held_back_events: int = 0
    prepared_transactions: int = 0
    oldest_prepared_seconds: float = 0.0
    xid_holders: tuple[dict[str, Any], ...] = ()


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
        """Create a tenant, its registry row and ``tenant_created``, in one
        transaction; or, when the migration history needs commit boundaries
        (an enum value added by one migration and used by a later one, a
        no-transaction migration), register it in status ``provisioning``
        and apply each migration in a transaction of its own (the fleet
        runner), then make it ``active`` and emit ``tenant_created``. With a
        baseline registered (:meth:`squash_migrations`), the schema gets the
        newest baseline and then the migrations after it.

        A failure there leaves the tenant ``provisioning`` (entering it raises
        :class:`~pgtenancy.errors.TenantProvisioning`, PT019) with the failing
        version, SQLSTATE and message in ``tenancy.provisioning_failures``;
        calling ``create_tenant`` again (or ``pgtenancy migrate``) resumes it,
        ``drop_tenant`` removes it. Given a psycopg connection inside a
        transaction, only the first step runs (in the caller's transaction):
        the tenant is returned ``provisioning``; finish it after the commit.

        Args:
            slug: tenant slug (see :func:`pgtenancy.slugs.validate_slug`).
            metadata: JSON-serializable mapping stored with the tenant.
            isolation: ``schema`` (a schema of its own with every migration
                applied) or ``shared`` (its rows live in tables guarded by
                :meth:`enable_rls`). Both kinds coexist.

        Raises:
            InvalidTenantSlug: PT001. TenantExists: PT002.
            MigrationFailed: PT006; no schema, row or event is left behind
                (with commit boundaries: the tenant stays ``provisioning``,
                the failure recorded).
            InvalidTenantMetadata: PT029, metadata not a mapping, not
                JSON-serializable or over 65536 bytes as JSON (before any SQL runs).
            ValueError: unknown isolation, before any SQL runs.
        """
        validate_slug(slug)
        if isolation not in get_args(Isolation):
            raise ValueError(f"isolation must be 'schema' or 'shared', not {isolation!r}")
        row = self._one(
            "create_tenant",
            slug=slug,
            metadata=metadata_json(metadata),
            isolation=isolation,
        )
        tenant = Tenant.from_row(row)
        if tenant.status != "provisioning":
            return tenant
        return self._finish_provisioning(tenant)

    def _finish_provisioning(self, tenant: Tenant) -> Tenant:
        import psycopg
        from psycopg.pq import TransactionStatus

        from pgtenancy.errors import MigrationFailed, lookup
        from pgtenancy.fleet import migrate_fleet

        source = self.database.source
        if (
            isinstance(source, psycopg.Connection)
            and source.info.transaction_status != TransactionStatus.IDLE
        ):
            return tenant  # the caller's transaction: finish it after the commit
        report = migrate_fleet(source, tenants=[tenant.slug])
        if report.failed:
            failure = report.failed[0]
            cls = (lookup(failure.sqlstate) if failure.sqlstate else None) or MigrationFailed
            raise cls(
                failure.message or "provisioning failed",
                sqlstate=failure.sqlstate,
                hint=f"tenant {tenant.slug!r} stays provisioning: create it again to resume, "
                "or drop it",
            )
        return self.get_tenant(tenant.slug)

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
                version, or SQL that fails on a tenant schema at the latest
                registered version (the scratch schema ``tenancy_scratch``).
        """
        row = self._one(
            "add_migration", version=version, sql=sql, outside_transaction=outside_transaction
        )
        return Migration(row["version"], row["checksum"], row["created_at"])

    def add_baseline(self, through_version: str, sql: str) -> Baseline:
        """Register ``sql`` as the baseline through migration ``through_version``
        (``tenancy.add_baseline``): new tenants run the newest baseline, then
        the migrations after it. The database checks it first: run in a
        scratch schema as any migration is, it must create, object by object,
        what the migrations up to the version create. :meth:`squash_migrations`
        makes one from the history itself.

        Raises:
            BaselineRefused: PT032 (unregistered version, a baseline through it
                already, SQL that fails, a history that leaves rows, or one
                that needs commit boundaries: use :meth:`squash_migrations`).
            BaselineMismatch: PT033; ``.detail`` lists the differing objects.
            UnsafeMigration: PT017; it reaches outside its schema.
        """
        row = self._one("add_baseline", through_version=through_version, sql=sql)
        return Baseline(row["through_version"], row["checksum"], row["created_at"], len(sql))

    def drop_baseline(self, through_version: str) -> bool:
        """Remove the baseline through ``through_version``; True when there was
        one. New tenants then start from the newest remaining baseline (or
        replay every migration); existing tenants are not touched. To replace
        a baseline, drop it and squash again."""
        return bool(self._one("drop_baseline", through_version=through_version)["dropped"])

    def list_baselines(self) -> list[Baseline]:
        """Registered baselines, oldest first (the last one provisions new tenants)."""
        return [
            Baseline(r["through_version"], r["checksum"], r["created_at"], r["size"], r["squashed"])
            for r in self.database.rows("list_baselines")
        ]

    def squash_migrations(self, through: str, *, dry_run: bool = False) -> SquashResult:
        """Make a baseline of the migrations up to ``through`` and register it;
        see :func:`pgtenancy.fleet.squash_migrations` (steps, errors). Needs a
        Tenancy made from a DSN (``pg_dump`` connects too)."""
        from pgtenancy.fleet import squash_migrations

        return squash_migrations(self._dsn(), through, dry_run=dry_run)

    def add_migrations(self, migrations: Sequence[tuple[str, str, bool]]) -> list[Migration]:
        """Register several migrations in one transaction, all or nothing, each as
        :meth:`add_migration` would one after the other (``tenancy.add_migrations``).

        Args:
            migrations: ``(version, sql, outside_transaction)`` in version order.
                A migration that uses an enum value an earlier one of the same
                call adds fails: end the call after such a migration.

        Returns:
            One :class:`Migration` per element, in order.

        Raises:
            InvalidMigration: PT008, as :meth:`add_migration`; nothing registered.
            UnsafeMigration: PT017, a migration reaches outside its tenant
                schema; nothing registered.
        """
        rows = self.database.rows(
            "add_migrations",
            {
                "versions": [m[0] for m in migrations],
                "sqls": [m[1] for m in migrations],
                "outside_transaction": [m[2] for m in migrations],
            },
        )
        return [Migration(r["version"], r["checksum"], r["created_at"]) for r in rows]

    def list_migrations(self) -> list[Migration]:
        """Registered migrations in the order they apply."""
        rows = self.database.rows("list_migrations")
        return [Migration(r["version"], r["checksum"], r["created_at"]) for r in rows]

    def migrate_tenant(self, slug: str) -> Tenant:
        """Apply to ``slug`` the migrations it lacks, in one transaction (one
        SQL call: when they need commit boundaries, only the next one, and it
        stops before a no-transaction migration; :meth:`migrate_tenants` goes
        all the way). Emits ``tenant_migrated`` when anything was applied.

        Raises:
            TenantNotFound: PT003. TenantDeleted: PT005.
            TenantSchemaMissing: PT007.
            MigrationFailed: PT006; the tenant stays at its previous version.

        On Citus, a distributed tenant the migration re-placed on another
        node is moved back after the commit (:func:`pgtenancy.fleet.restore_placements`);
        given a psycopg connection inside a transaction it cannot be, and the
        doctor reports it until the next fleet run moves it.
        """
        import psycopg
        from psycopg.pq import TransactionStatus
        from psycopg.rows import dict_row

        from pgtenancy.queries import QUERIES

        source = self.database.source
        outer = (
            isinstance(source, psycopg.Connection)
            and source.info.transaction_status != TransactionStatus.IDLE
        )
        with self.database.transaction() as conn:
            cur = conn.cursor(row_factory=dict_row)
            row = cur.execute(QUERIES["migrate_tenant"], {"slug": slug}).fetchone()
            # Same transaction, no extra round trip to a new connection:
            # is there a tenant to move back (Citus only; nothing otherwise)?
            away = bool(cur.execute(QUERIES["pending_placements"], {"slugs": [slug]}).fetchall())
        assert row is not None
        if away and not outer:
            # After the commit: the caller's own transaction must end first,
            # then the next fleet run moves it (the doctor reports it).
            from pgtenancy.fleet import APPLICATION_NAME, _Connector, restore_placements

            with _Connector(source, APPLICATION_NAME).connection() as mover:
                restore_placements(mover, [slug])
        return Tenant.from_row(row)

    def migrate_tenants(
        self,
        slugs: list[str] | None = None,
        *,
        jobs: int = 1,
        lock_timeout: Interval = "5s",
    ) -> MigrationReport:
        """Migrate several tenants with the fleet runner
        (:func:`pgtenancy.fleet.migrate_fleet`, as ``pgtenancy migrate``):
        each in its own transaction, migrations marked ``-- pgtenancy:
        no-transaction`` applied between them; a failure is recorded
        (``tenant_migration_failed``) and the others go on; a lost connection
        is replaced and the tenant retried.

        Args:
            slugs: tenants to migrate; None means every tenant not deleted.
            jobs: connections working in parallel (1 when ``Tenancy`` was
                given a psycopg connection).
            lock_timeout: how long a tenant may wait for its tables' locks
                before it fails (PT006).

        Returns:
            A :class:`MigrationReport`; every selected tenant is in exactly
            one of its lists.

        Raises:
            ValueError: ``Tenancy`` was given a psycopg connection inside a
                transaction (each tenant commits on its own).
        """
        from pgtenancy.errors import lookup
        from pgtenancy.fleet import migrate_fleet

        report = migrate_fleet(
            self.database.source, jobs=jobs, lock_timeout=lock_timeout, tenants=slugs
        )
        tenants = {t.slug: t for t in self.list_tenants()}
        migrated = [tenants[o.slug] for o in report.migrated if o.slug in tenants]
        failed: list[tuple[str, TenancyError]] = []
        for o in report.failed:
            cls = lookup(o.sqlstate) if o.sqlstate else None
            error = (cls or TenancyError)(o.message or "failed", sqlstate=o.sqlstate)
            failed.append((o.slug, error))
        done = {o.slug for o in report.migrated} | {o.slug for o in report.failed}
        wanted = set(slugs) if slugs is not None else None
        unchanged = [
            t
            for t in tenants.values()
            if t.slug not in done and t.status != "deleted" and (wanted is None or t.slug in wanted)
        ]
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

    def set_strict_entry(self, enabled: bool) -> bool:
        """Switch strict entry on or off for this database (``tenancy.set_strict_entry``).

        On: transactions of application roles are in a tenant only with a
        verified entry token (:func:`pgtenancy.sign_tenant_token`,
        ``tenant_session(engine, token=...)``); see the README's "Strict entry".

        Returns:
            Whether strict entry was on before.

        Raises:
            psycopg.errors.InvalidParameterValue: SQLSTATE 22023, no entry key yet.
            psycopg.errors.FeatureNotSupported: SQLSTATE 0A000, Citus is installed.
        """
        return bool(self._one("set_strict_entry", enabled=enabled)["was"])

    def add_entry_key(self, name: str, key: bytes) -> bool:
        """Add entry key ``name`` (1-63 of a-z, 0-9, ``_``, ``-``) with secret ``key``
        (32 bytes or more); several may be active (rotation).

        Returns:
            True when added, False when the same key is there already.

        Raises:
            psycopg.errors.InvalidParameterValue: SQLSTATE 22023, bad name, short
                key, or the name holds another key.
        """
        return bool(self._one("add_entry_key", name=name, key=key)["added"])

    def drop_entry_key(self, name: str) -> bool:
        """Drop entry key ``name``: its tokens are refused from the next statement on.

        Returns:
            True when dropped, False when there was no such key.

        Raises:
            psycopg.errors.InvalidParameterValue: SQLSTATE 22023, the last key
                while strict entry is on.
        """
        return bool(self._one("drop_entry_key", name=name)["dropped"])

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
        """NOTIFY queue usage, age of the oldest open or prepared transaction,
        outbox size, held-back events and what holds them (:class:`OutboxHealth`).
        Allowed for listener roles."""
        row = self._one("outbox_health")
        return OutboxHealth(
            float(row["notification_queue_usage"]),
            float(row["oldest_transaction_seconds"]),
            int(row["events"]),
            int(row["held_back_events"]),
            int(row["prepared_transactions"]),
            float(row["oldest_prepared_seconds"]),
            tuple(row["xid_holders"] or ()),
        )

    def start_consumer(self, consumer: str, start_from: str = "oldest") -> int:
        """Register ``consumer`` unless it exists, its cursor at the oldest
        retained event (``"oldest"``) or after the newest readable now
        (``"now"``: the history is not replayed). An existing consumer is left
        as it is. Returns its cursor's ``last_id``.

        Raises:
            psycopg.errors.InvalidParameterValue: 22023, invalid name or start_from.
        """
        return int(self._one("start_consumer", consumer=consumer, start_from=start_from)["last_id"])

    def drop_consumer(self, consumer: str) -> bool:
        """Forget ``consumer`` (cursor, lease, parked events); True when it
        existed. It no longer holds events back from pruning."""
        return bool(self._one("drop_consumer", consumer=consumer)["dropped"])

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

    # Operating on one tenant (issue 15; pgtenancy.tenant_ops does the work).

    def rename_tenant(self, slug: str, new_slug: str) -> Tenant:
        """Rename ``slug`` to ``new_slug`` and its schema with it, atomically;
        entering under the old slug then raises :class:`~pgtenancy.errors.TenantRenamed`.
        Emits ``tenant_renamed``. See :func:`pgtenancy.tenant_ops.rename_tenant`."""
        from pgtenancy import tenant_ops

        return tenant_ops.rename_tenant(self.database, slug, new_slug)

    def clone_tenant(
        self, source: str, new_slug: str, metadata: Mapping[str, Any] | None = None
    ) -> Tenant:
        """Create ``new_slug`` as a copy of ``source`` (schema or shared) in one
        transaction. Emits ``tenant_created`` with ``cloned_from``. See
        :func:`pgtenancy.tenant_ops.clone_tenant`."""
        from pgtenancy import tenant_ops

        return tenant_ops.clone_tenant(self.database, source, new_slug, metadata)

    def set_tenant_limits(
        self,
        slug: str,
        statement_timeout: str | None = None,
        lock_timeout: str | None = None,
        idle_in_transaction_session_timeout: str | None = None,
        work_mem: str | None = None,
    ) -> dict[str, str]:
        """Set the resource limits of ``slug`` (the whole set; None clears one),
        applied transaction-locally at entry. Returns the limits now in force.
        See :func:`pgtenancy.tenant_ops.set_tenant_limits`."""
        from pgtenancy import tenant_ops

        return tenant_ops.set_tenant_limits(
            self.database,
            slug,
            statement_timeout=statement_timeout,
            lock_timeout=lock_timeout,
            idle_in_transaction_session_timeout=idle_in_transaction_session_timeout,
            work_mem=work_mem,
        )

    def set_max_work_mem(self, maximum: str | None) -> str:
        """Set the database-wide maximum of tenants' ``work_mem`` limits (None
        removes it); returns the maximum in force. See
        :func:`pgtenancy.tenant_ops.set_max_work_mem`."""
        from pgtenancy import tenant_ops

        return tenant_ops.set_max_work_mem(self.database, maximum)

    def tenant_limits(self, slug: str) -> dict[str, str]:
        """The resource limits of ``slug``, setting -> value (empty when none)."""
        from pgtenancy import tenant_ops

        return tenant_ops.tenant_limits(self.database, slug)

    def tenant_sizes(self) -> list[TenantSize]:
        """Bytes and rows of every tenant (:class:`pgtenancy.tenant_ops.TenantSize`),
        by slug. See ``tenancy.tenant_sizes()`` for how each is measured."""
        from pgtenancy import tenant_ops

        return tenant_ops.tenant_sizes(self.database)

    def _dsn(self) -> str:
        source = self.database.source
        if not isinstance(source, str):
            raise TypeError("tenant export, import and move need a Tenancy made from a DSN")
        return source

    def export_tenant(self, slug: str, out: str | Path) -> dict[str, Any]:
        """Write ``slug`` to the archive ``out``, consistent at one snapshot;
        returns its manifest. Needs a Tenancy made from a DSN (pg_dump
        connects too). See :func:`pgtenancy.tenant_archive.export_tenant`."""
        from pgtenancy import tenant_archive

        return tenant_archive.export_tenant(self._dsn(), slug, out)

    def import_tenant(self, path: str | Path, as_slug: str | None = None) -> Tenant:
        """Recreate the tenant of archive ``path`` here (same id; ``as_slug``
        renames), in one transaction. Emits ``tenant_created`` with ``imported``.
        See :func:`pgtenancy.tenant_archive.import_tenant`.

        Raises:
            ArchiveRefused: nothing changed. TenantExists: PT002.
        """
        from pgtenancy import tenant_archive

        result = tenant_archive.import_tenant(self._dsn(), path, as_slug)
        return self.get_tenant(result.slug)

    def move_tenant_to_database(
        self, slug: str, to: str, archive: str | Path | None = None
    ) -> Tenant:
        """Move ``slug`` from this database to database ``to`` (a DSN): suspended
        here for the copy, imported and verified there, then soft-deleted here.
        Rerun after a failure to resume. Returns the tenant at the target. See
        :func:`pgtenancy.tenant_archive.move_tenant`."""
        from pgtenancy import tenant_archive

        result = tenant_archive.move_tenant(self._dsn(), slug, to, archive)
        return Tenancy(to).get_tenant(result.slug)

    def add_tenant_domain(self, slug: str, domain: str) -> dict[str, Any]:
        """Map host name ``domain`` to tenant ``slug`` (``tenancy.tenant_domains``),
        e.g. ``acme-corp.example.com`` for slug ``acme_corp``: what the FastAPI
        subdomain resolver looks up. Idempotent for the same tenant.

        Args:
            slug: the tenant's slug.
            domain: a host name without port or scheme; stored trimmed,
                lowercase, without trailing dots.

        Returns:
            ``{"domain": str, "slug": str, "created_at": datetime}``.

        Raises:
            TenantNotFound: PT003. TenantDeleted: PT005. InvalidDomain: PT030.
            DomainTaken: PT031, the name belongs to another tenant.
        """
        return self._one("add_tenant_domain", slug=slug, domain=domain)

    def remove_tenant_domain(self, domain: str) -> bool:
        """Forget host name ``domain``; True when it was mapped."""
        return bool(self._one("remove_tenant_domain", domain=domain)["removed"])

    def resolve_domain(self, domain: str) -> str | None:
        """Slug of the tenant host name ``domain`` is mapped to, or None."""
        slug: str | None = self._one("resolve_domain", domain=domain)["slug"]
        return slug

    def tenant_domains(self, slug: str | None = None) -> list[dict[str, Any]]:
        """Mapped host names (of ``slug``, or all): ``domain``, ``slug``,
        ``created_at``, ordered by slug and domain."""
        return self.database.rows("tenant_domains", {"slug": slug})
