"""Exceptions of pgtenancy, one per SQLSTATE of the SQL core.

The SQL functions raise errors in SQLSTATE class ``PT``; :func:`translate`
turns a psycopg or SQLAlchemy database error carrying one of those SQLSTATEs
into the matching :class:`TenancyError` subclass. Errors raised before any SQL
runs (an invalid slug caught in Python, no tenant in context) use the same
classes, so callers catch one type whatever path found the problem.
"""

from __future__ import annotations

from typing import ClassVar, NoReturn

import psycopg


class TenancyError(Exception):
    """Base class of every pgtenancy error.

    Attributes:
        sqlstate: the five-character SQLSTATE the database raised, or None when
            the error was found in Python before reaching the database.
        detail: the server's DETAIL text, if any.
        hint: the server's HINT text, if any.
    """

    default_sqlstate: ClassVar[str | None] = None

    def __init__(
        self,
        message: str,
        *,
        sqlstate: str | None = None,
        detail: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.sqlstate = sqlstate if sqlstate is not None else self.default_sqlstate
        self.detail = detail
        self.hint = hint


class InvalidTenantSlug(TenancyError, ValueError):
    """The slug is not a valid tenant slug (SQLSTATE PT001)."""

    default_sqlstate = "PT001"


class TenantExists(TenancyError):
    """A tenant with this slug, or its schema, already exists (SQLSTATE PT002)."""

    default_sqlstate = "PT002"


class TenantNotFound(TenancyError, LookupError):
    """No tenant has this slug (SQLSTATE PT003)."""

    default_sqlstate = "PT003"


class TenantSuspended(TenancyError):
    """The tenant is suspended and cannot be entered (SQLSTATE PT004)."""

    default_sqlstate = "PT004"


class TenantDeleted(TenancyError):
    """The tenant is deleted and cannot be entered or changed (SQLSTATE PT005)."""

    default_sqlstate = "PT005"


class MigrationFailed(TenancyError):
    """A tenant migration raised; the tenant stays at its previous version (SQLSTATE PT006)."""

    default_sqlstate = "PT006"


class TenantSchemaMissing(TenancyError):
    """The tenant is registered but its schema does not exist (SQLSTATE PT007)."""

    default_sqlstate = "PT007"


class InvalidMigration(TenancyError):
    """A migration was refused at registration: bad version, changed SQL, SQL that
    fails on an empty tenant schema, or a version out of order (SQLSTATE PT008)."""

    default_sqlstate = "PT008"


class TenantsStillRegistered(TenancyError):
    """Uninstall refused because tenants are registered (SQLSTATE PT009)."""

    default_sqlstate = "PT009"


class ImmutableTenantColumn(TenancyError):
    """An update tried to change a tenant's id, slug, schema or isolation (SQLSTATE PT010)."""

    default_sqlstate = "PT010"


class ConsumerNotFound(TenancyError, LookupError):
    """The outbox consumer has no cursor (SQLSTATE PT011)."""

    default_sqlstate = "PT011"


class LeaseLost(TenancyError):
    """A listener tried to move a consumer's cursor without holding its lease
    (SQLSTATE PT015); another listener of that consumer took over."""

    default_sqlstate = "PT015"


class CannotTrackTable(TenancyError):
    """``track_changes`` refused the table: not a table, or no primary key
    (SQLSTATE PT016)."""

    default_sqlstate = "PT016"


class NoTenantInTransaction(TenancyError):
    """A write to a guarded shared table with no tenant in the transaction (SQLSTATE PT012)."""

    default_sqlstate = "PT012"


class UnsafeAppRole(TenancyError):
    """The role cannot be an application role: superuser, BYPASSRLS, or owner of a
    guarded table, so row-level security would not hold (SQLSTATE PT013)."""

    default_sqlstate = "PT013"


class CannotGuardTable(TenancyError):
    """``enable_rls`` refused the table: not a table, in a tenant or the tenancy
    schema, tenant column not uuid, or guarded on another column (SQLSTATE PT014)."""

    default_sqlstate = "PT014"


class UnsafeMigration(TenancyError):
    """A tenant migration tried to change something outside its tenant schema
    (SQLSTATE PT017): another schema, an extension, a role, a privilege, the
    registry or outbox, search_path or the role; nothing was changed."""

    default_sqlstate = "PT017"


class ListenNotSupported(TenancyError):
    """The DSN cannot LISTEN: its statements do not keep one server backend, as
    behind a transaction pooler (PgBouncer ``pool_mode = transaction``). The
    listener needs a direct or session-pooled connection."""


class NotInstalled(TenancyError):
    """The pgtenancy SQL is not installed in this database (SQLSTATE 3F000, 42883 or
    42P01 naming a ``tenancy`` object)."""


class NoTenantContext(TenancyError):
    """No tenant slug was given and none is active in the current context."""


class InvalidConnectionState(TenancyError):
    """The connection cannot carry a tenant transaction: it is already inside a
    transaction, or it runs in autocommit mode where transaction-local settings
    would vanish after one statement."""


_BY_SQLSTATE: dict[str, type[TenancyError]] = {
    cls.default_sqlstate: cls
    for cls in (
        InvalidTenantSlug,
        TenantExists,
        TenantNotFound,
        TenantSuspended,
        TenantDeleted,
        MigrationFailed,
        TenantSchemaMissing,
        InvalidMigration,
        UnsafeMigration,
        TenantsStillRegistered,
        ImmutableTenantColumn,
        ConsumerNotFound,
        NoTenantInTransaction,
        UnsafeAppRole,
        CannotGuardTable,
        LeaseLost,
        CannotTrackTable,
    )
    if cls.default_sqlstate is not None
}


def _psycopg_error(exc: BaseException) -> psycopg.Error | None:
    if isinstance(exc, psycopg.Error):
        return exc
    orig = getattr(exc, "orig", None)  # sqlalchemy.exc.DBAPIError
    if isinstance(orig, psycopg.Error):
        return orig
    return None


def translate(exc: BaseException) -> BaseException:
    """Map a database error to the pgtenancy exception for its SQLSTATE.

    Args:
        exc: any exception; psycopg errors and SQLAlchemy ``DBAPIError`` (through
            its ``orig``) are inspected.

    Returns:
        A new :class:`TenancyError` subclass instance (its ``__cause__`` is set
        to ``exc``) when the SQLSTATE is one of pgtenancy's or says the kit is
        not installed; otherwise ``exc`` itself, unchanged.
    """
    err = _psycopg_error(exc)
    if err is None or err.sqlstate is None:
        return exc
    diag = err.diag
    message = diag.message_primary or str(err)
    cls = _BY_SQLSTATE.get(err.sqlstate)
    if cls is None and err.sqlstate in ("3F000", "42883", "42P01") and "tenancy" in message:
        cls = NotInstalled
        message = f"pgtenancy is not installed in this database ({message})"
    if cls is None:
        return exc
    new = cls(message, sqlstate=err.sqlstate, detail=diag.message_detail, hint=diag.message_hint)
    new.__cause__ = exc
    return new


def raise_translated(exc: BaseException) -> NoReturn:
    """Raise :func:`translate` of ``exc`` (chained to it), or ``exc`` itself when
    it is not one of pgtenancy's errors. Call it in an ``except`` block."""
    err = translate(exc)
    if err is exc:
        raise exc
    raise err from exc
