"""Operating on one tenant as a unit: rename, clone, limits, sizes (issue 15).

Each function runs one SQL function of ``sql/010_tenant_operations.sql`` in
its own transaction through :class:`pgtenancy.database.Database` (a
savepoint when the caller's psycopg connection is inside a transaction) and
raises the :mod:`pgtenancy.errors` exception of its SQLSTATE.
:class:`pgtenancy.admin.Tenancy` exposes them as methods.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psycopg

from pgtenancy.slugs import validate_slug

if TYPE_CHECKING:
    from pgtenancy.admin import Tenant
    from pgtenancy.database import Database

#: The settings a tenant limit may set, in the order set_tenant_limits takes them.
LIMIT_SETTINGS = (
    "statement_timeout",
    "lock_timeout",
    "idle_in_transaction_session_timeout",
    "work_mem",
)


@dataclass(frozen=True)
class TenantSize:
    """Size of one tenant (a row of ``tenancy.tenant_sizes()``).

    Attributes:
        slug: tenant slug.
        bytes: bytes on disk: for a schema tenant every table of its schema
            with indexes and TOAST; for a shared tenant its share of the rows
            of each guarded table times that table's total size (an estimate).
        rows: rows: for a schema tenant the planner's estimates
            (``pg_class.reltuples``, as fresh as the last ANALYZE); for a shared
            tenant counted.
    """

    slug: str
    bytes: int
    rows: int


def _tenant(row: Mapping[str, Any]) -> Tenant:
    from pgtenancy.admin import Tenant

    return Tenant.from_row(row)


def rename_tenant(db: Database, slug: str, new_slug: str) -> Tenant:
    """Rename tenant ``slug`` to ``new_slug`` (and its schema to
    ``tenant_<new_slug>``) in one transaction; see ``tenancy.rename_tenant``.

    Args:
        db: the database.
        slug: current slug.
        new_slug: the new slug (the slug rules apply).

    Returns:
        The tenant under its new slug.

    Raises:
        InvalidTenantSlug: PT001 (also before any SQL). TenantExists: PT002.
        TenantNotFound: PT003. TenantDeleted: PT005. TenantSchemaMissing: PT007.
    """
    validate_slug(new_slug)
    return _tenant(db.one("rename_tenant", {"slug": slug, "new_slug": new_slug}))


def clone_tenant(
    db: Database, source: str, new_slug: str, metadata: Mapping[str, Any] | None = None
) -> Tenant:
    """Create ``new_slug`` as a copy of tenant ``source`` in one transaction
    (REPEATABLE READ when the transaction is pgtenancy's own, so the copy is of
    one snapshot while the source is in use); see ``tenancy.clone_tenant``.

    Args:
        db: the database.
        source: slug of the tenant to copy.
        new_slug: slug of the clone.
        metadata: the clone's metadata (a JSON object); None copies the source's.

    Raises:
        InvalidTenantSlug: PT001. TenantExists: PT002. TenantNotFound: PT003.
        TenantDeleted: PT005. TenantSchemaMissing: PT007.
        CannotCloneTenant: PT022; nothing is created.
        InvalidTenantMetadata: PT029, metadata as :func:`pgtenancy.admin.metadata_json`
            refuses it, before any SQL runs.
    """
    from pgtenancy.admin import metadata_json
    from pgtenancy.queries import QUERIES

    validate_slug(new_slug)
    params = {
        "source": source,
        "new_slug": new_slug,
        "metadata": None if metadata is None else metadata_json(metadata),
    }
    with db.transaction() as conn:
        if not isinstance(db.source, psycopg.Connection):
            conn.execute(QUERIES["repeatable_read"])
        from psycopg.rows import dict_row

        row = conn.cursor(row_factory=dict_row).execute(QUERIES["clone_tenant"], params).fetchone()
    assert row is not None
    return _tenant(row)


def set_tenant_limits(
    db: Database,
    slug: str,
    statement_timeout: str | None = None,
    lock_timeout: str | None = None,
    idle_in_transaction_session_timeout: str | None = None,
    work_mem: str | None = None,
) -> dict[str, str]:
    """Set the whole set of resource limits of ``slug`` (None clears one);
    ``enter_tenant`` applies them transaction-locally.

    Args:
        db: the database.
        slug: the tenant.
        statement_timeout, lock_timeout, idle_in_transaction_session_timeout:
            durations as ``SET`` takes them (``"50ms"``, ``"2s"``, ``"0"`` = off).
        work_mem: a size (``"4MB"``), at most ``tenancy.max_work_mem()``.

    Returns:
        The limits now in force, setting -> normalized value.

    Raises:
        TenantNotFound: PT003. TenantDeleted: PT005.
        InvalidTenantLimit: PT021; nothing is changed.
    """
    row = db.one(
        "set_tenant_limits",
        {
            "slug": slug,
            "statement_timeout": statement_timeout,
            "lock_timeout": lock_timeout,
            "idle_in_transaction_session_timeout": idle_in_transaction_session_timeout,
            "work_mem": work_mem,
        },
    )
    return limits_dict(row["limits"])


def tenant_limits(db: Database, slug: str) -> dict[str, str]:
    """The limits of ``slug``, setting -> value (empty when none).

    Raises:
        TenantNotFound: no such tenant.
    """
    from pgtenancy.errors import TenantNotFound

    found = db.rows("tenant_limits", {"slug": slug})
    if not found:
        raise TenantNotFound(f"tenant {slug!r} not found", sqlstate="PT003")
    return limits_dict(found[0]["limits"])


def limits_dict(pairs: list[str] | None) -> dict[str, str]:
    """``tenancy.tenants.limits`` (flat ``[setting, value, ...]``) as a dict."""
    pairs = pairs or []
    return {pairs[i]: pairs[i + 1] for i in range(0, len(pairs) - 1, 2)}


def tenant_sizes(db: Database) -> list[TenantSize]:
    """Bytes and rows of every tenant, by slug (``tenancy.tenant_sizes()``)."""
    return [
        TenantSize(str(r["slug"]), int(r["bytes"]), int(r["rows"])) for r in db.rows("tenant_sizes")
    ]


def set_max_work_mem(db: Database, maximum: str | None) -> str:
    """Set the largest ``work_mem`` a tenant limit may set in this database
    (``tenancy.set_max_work_mem``); None goes back to the database's default
    ``work_mem``. Returns the maximum now in force, normalized.

    Raises:
        InvalidTenantLimit: PT021, a value the server refuses.
    """
    return str(db.one("set_max_work_mem", {"maximum": maximum})["maximum"])
