"""Exceptions of pgtenancy, one per SQLSTATE of the SQL core.

The SQL functions raise errors in SQLSTATE class ``PT``. Each exception class
declares its code once, as the class attribute ``sqlstate``, and registers
itself under it when the class is defined (as psycopg's ``errors`` module
does); :func:`translate` looks a database error's SQLSTATE up in that
registry. Errors found in Python before any SQL runs (an invalid slug, no
tenant in context) use the same classes, so callers catch one type whatever
path found the problem. Classes without a code (``sqlstate = None``) are
raised by Python only.

Every exception of the kit is a :class:`TenancyError` and survives a pickle
round trip (for process pools and task queues), keeping its message,
``sqlstate``, ``detail``, ``hint`` and its own attributes.

The one list of codes is the README's error table; ``tests/test_error_contract.py``
checks it, these classes and the ``ERRCODE``\\ s of ``sql/`` against each other.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from types import MappingProxyType
from typing import Any, NoReturn

import psycopg

from pgtenancy._version import __version__

_REGISTRY: dict[str, type[TenancyError]] = {}

#: SQLSTATE -> exception class, for every class that declares a code (read-only).
BY_SQLSTATE = MappingProxyType(_REGISTRY)


def _rebuild(cls: type[TenancyError], args: tuple[Any, ...], state: dict[str, Any]) -> Any:
    """Unpickle a :class:`TenancyError` without calling its ``__init__``."""
    obj = cls.__new__(cls)
    obj.args = args
    obj.__dict__.update(state)
    return obj


class TenancyError(Exception):
    """Base class of every pgtenancy error.

    Attributes:
        sqlstate: on the class, the SQLSTATE it is registered under (None for
            errors Python raises by itself); on an instance, the SQLSTATE the
            database raised, or the class's code when Python found the problem.
        message: the primary message.
        detail: the server's DETAIL text, if any.
        hint: the server's HINT text, if any.
    """

    sqlstate: str | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        code = cls.__dict__.get("sqlstate")
        if code is None:
            return
        other = _REGISTRY.get(code)
        if other is not None and other.__qualname__ != cls.__qualname__:
            raise TypeError(f"SQLSTATE {code} is declared by {other.__name__} already")
        _REGISTRY[code] = cls

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
        self.sqlstate = sqlstate if sqlstate is not None else type(self).sqlstate
        self.detail = detail
        self.hint = hint

    def __reduce__(self) -> tuple[Any, ...]:
        # Subclasses take other constructor arguments (or keyword-only ones
        # that BaseException's default reduce would drop): rebuild from the
        # args and the instance dict instead of calling __init__.
        return (_rebuild, (type(self), self.args, dict(self.__dict__)))


def lookup(sqlstate: str) -> type[TenancyError] | None:
    """The exception class registered for ``sqlstate`` (e.g. ``"PT003"``), or None."""
    return _REGISTRY.get(sqlstate)


class InvalidTenantSlug(TenancyError, ValueError):
    """The slug is not a valid tenant slug (SQLSTATE PT001)."""

    sqlstate = "PT001"


class TenantExists(TenancyError):
    """A tenant with this slug, or its schema, already exists (SQLSTATE PT002)."""

    sqlstate = "PT002"


class TenantNotFound(TenancyError, LookupError):
    """No tenant has this slug (SQLSTATE PT003)."""

    sqlstate = "PT003"


class TenantSuspended(TenancyError):
    """The tenant is suspended and cannot be entered (SQLSTATE PT004)."""

    sqlstate = "PT004"


class TenantDeleted(TenancyError):
    """The tenant is deleted and cannot be entered or changed (SQLSTATE PT005)."""

    sqlstate = "PT005"


class MigrationFailed(TenancyError):
    """A tenant migration raised; the tenant stays at its previous version (SQLSTATE PT006)."""

    sqlstate = "PT006"


class TenantSchemaMissing(TenancyError):
    """The tenant is registered but its schema does not exist (SQLSTATE PT007)."""

    sqlstate = "PT007"


class InvalidMigration(TenancyError):
    """A migration was refused at registration: bad version, changed SQL, SQL that
    fails on an empty tenant schema, or a version out of order (SQLSTATE PT008)."""

    sqlstate = "PT008"


class TenantsStillRegistered(TenancyError):
    """Uninstall refused because tenants are registered (SQLSTATE PT009)."""

    sqlstate = "PT009"


class ImmutableTenantColumn(TenancyError):
    """An update tried to change a tenant's id, slug, schema or isolation (SQLSTATE PT010)."""

    sqlstate = "PT010"


class ConsumerNotFound(TenancyError, LookupError):
    """The outbox consumer has no cursor (SQLSTATE PT011)."""

    sqlstate = "PT011"


class NoTenantInTransaction(TenancyError):
    """A write to a guarded shared table with no tenant in the transaction (SQLSTATE PT012)."""

    sqlstate = "PT012"


class UnsafeAppRole(TenancyError):
    """The role cannot be an application role: superuser, BYPASSRLS, or owner of a
    guarded table, so row-level security would not hold (SQLSTATE PT013)."""

    sqlstate = "PT013"


class CannotGuardTable(TenancyError):
    """``enable_rls`` refused the table: not a table, in a tenant or the tenancy
    schema, tenant column not uuid, guarded on another column, owned by an
    application role (or a role one is a member of), or under a parent that is
    not guarded; or the children event trigger refused DDL (a child that cannot
    be guarded, a guarded table put under an unguarded parent or given to an
    application role); or ``disable_rls`` refused a parent whose guarded child
    has another guarded parent (SQLSTATE PT014). Source: PostgreSQL docs, Row
    Security Policies and Inheritance (a query through a parent applies the
    parent's policies only)."""

    sqlstate = "PT014"


class LeaseLost(TenancyError):
    """A listener tried to move a consumer's cursor without holding its lease
    (SQLSTATE PT015); another listener of that consumer took over."""

    sqlstate = "PT015"


class CannotTrackTable(TenancyError):
    """``track_changes`` refused the table: not a table, or no primary key
    (SQLSTATE PT016)."""

    sqlstate = "PT016"


class UnsafeMigration(TenancyError):
    """A tenant migration tried to change something outside its tenant schema:
    another schema, the ``tenancy`` schema, an extension, a role or a grant
    (SQLSTATE PT017). Nothing of it is applied."""

    sqlstate = "PT017"


class NewerVersionInstalled(TenancyError):
    """The install was refused: a newer version of the pgtenancy SQL is installed
    in the database than the one this package carries (SQLSTATE PT018).
    Upgrade the Python package instead; nothing was changed."""

    sqlstate = "PT018"


class InvalidTenantMetadata(TenancyError, ValueError):
    """Tenant metadata is not a JSON object, cannot be serialized to JSON (NaN and
    infinities, lone surrogates, NUL characters included), nests values more than
    :data:`METADATA_MAX_DEPTH` (32) levels deep, or is larger than
    :data:`METADATA_MAX_BYTES` (65536) bytes as JSON text
    (SQLSTATE PT029, raised by ``tenancy.check_metadata`` on every registry
    insert and update, and by Python before any SQL runs). Nothing was changed."""

    sqlstate = "PT029"


#: Largest tenant metadata, in bytes of its JSON text (UTF-8), as checked by
#: ``tenancy.check_metadata`` (metadata is copied into the tenant_created event).
METADATA_MAX_BYTES = 65536
#: Deepest level of a value in tenant metadata below the top object (its
#: members are at level 1), as checked by ``tenancy.check_metadata``.
METADATA_MAX_DEPTH = 32


class TenantRenamed(TenancyError):
    """The tenant was entered under a slug it had before ``tenancy.rename_tenant``
    (SQLSTATE PT020); ``detail`` reads ``new slug: <slug>``."""

    sqlstate = "PT020"

    @property
    def new_slug(self) -> str | None:
        """The slug the tenant has now (from ``detail``), None when not known."""
        prefix = "new slug: "
        if self.detail and self.detail.startswith(prefix):
            return self.detail[len(prefix) :]
        return None


class InvalidTenantLimit(TenancyError):
    """``tenancy.set_tenant_limits`` refused a value: the server does not take
    it, or ``work_mem`` is above ``tenancy.max_work_mem()`` (SQLSTATE PT021).
    Nothing was changed."""

    sqlstate = "PT021"


class CannotCloneTenant(TenancyError):
    """``tenancy.clone_tenant`` refused: the source is not at the migration a
    new tenant gets, its schema has a table the migrations do not create,
    foreign keys form a cycle, or a unique key of a shared table would break
    (SQLSTATE PT022). Nothing was created."""

    sqlstate = "PT022"


class SearchPathChanged(TenancyError):
    """``CALL tenancy.enter_known(slug, search_path)`` was given another
    ``search_path`` than the one the tenant gets (SQLSTATE PT023): its schema
    changed since the caller learnt it with ``tenancy.enter``. The transaction
    is aborted and nothing was set. The kit's own connections handle it
    themselves (they roll back and enter with ``tenancy.enter``); a caller of
    the procedure by hand sees it."""

    sqlstate = "PT023"


class EntryTokenError(TenancyError):
    """An entry token of strict mode was refused (PT025-PT028 and PT034); the
    transaction entered no tenant, or, raised at a later statement, the
    statement saw no row. See :mod:`pgtenancy.entry_tokens`."""


class EntryTokenForged(EntryTokenError):
    """The entry token is not a pgtenancy token (format ``pt2``), names an
    unknown key, its HMAC-SHA256 signature does not verify, or it says it was
    issued after its expiry or more than
    :data:`pgtenancy.entry_tokens.MAX_CLOCK_SKEW_SECONDS` ahead of the
    database's clock; in strict mode also: a transaction of the application
    role is in a tenant without any token (SQLSTATE PT025)."""

    sqlstate = "PT025"


class EntryTokenExpired(EntryTokenError):
    """The entry token had expired when the tenant was entered (SQLSTATE PT026)."""

    sqlstate = "PT026"


class EntryTokenWrongTenant(EntryTokenError):
    """The entry token is for another tenant than the slug given with it, or (in
    strict mode) ``app.tenant_id`` was set to a tenant other than the verified
    token's (SQLSTATE PT027)."""

    sqlstate = "PT027"


class EntryTokenStale(EntryTokenWrongTenant):
    """The entry token was issued before its tenant got its slug
    (``tenancy.tenants.slug_assigned_at``): it was signed for the slug's
    previous holder, a tenant since renamed or destroyed, or for this tenant
    under its previous slug (SQLSTATE PT034). A kind of
    :class:`EntryTokenWrongTenant`: the token is for another tenant than the
    one holding the slug now."""

    sqlstate = "PT034"


class EntryTokenReplayed(EntryTokenError):
    """In strict mode, a statement ran with an entry token that has expired since
    (a transaction outliving its token, or an old token set again with
    ``set_config('app.tenant_token', ...)``): nothing of the tenant is read or
    written (SQLSTATE PT028)."""

    sqlstate = "PT028"


class ArchiveRefused(TenancyError):
    """A tenant import was refused and nothing changed: not a pgtenancy tenant
    archive or of a newer format, the target's migrations are behind, differ
    from or go past the archive's, the tenant id exists in the target, or the
    rows loaded do not match the archive's counts and checksums. Python only
    (``pgtenancy.tenant_archive``)."""


class InvalidDomain(TenancyError, ValueError):
    """A host name given to ``tenancy.add_tenant_domain`` is not one: labels of
    letters, digits and inner hyphens, 63 characters each, 253 in all."""

    sqlstate = "PT030"


class DomainTaken(TenancyError):
    """The host name is mapped to another tenant already (``tenancy.add_tenant_domain``)."""

    sqlstate = "PT031"


class TenantProvisioning(TenancyError):
    """The tenant is being provisioned (status ``provisioning``): its history
    needs commits between migrations and not all are applied yet, or one
    failed (SQLSTATE PT019). Rerun ``create_tenant`` or ``pgtenancy migrate``
    to finish it; ``drop_tenant`` removes it."""

    sqlstate = "PT019"


class BaselineRefused(TenancyError):
    """A squash or ``tenancy.add_baseline`` was refused and nothing was
    registered (SQLSTATE PT032): the version is not registered, a baseline
    through it exists already, a no-transaction migration up to it cannot run
    inside a transaction (VACUUM), the migrations leave rows that depend on
    the tenant (a value naming the schema they ran in or its owner role, a
    column of object identifiers), the replay needs commits that
    ``tenancy.prepare_baseline`` has not made yet, the baseline's SQL fails on
    an empty schema, or (Python, ``pgtenancy migrate squash``) pg_dump fails or
    the template rewriter cannot make the dump tenant-local."""

    sqlstate = "PT032"


class BaselineMismatch(TenancyError):
    """``tenancy.add_baseline``: the baseline does not create what the
    migrations up to its version create, or does not leave the rows and
    sequence values they leave (SQLSTATE PT033); ``.detail`` lists the
    objects, ``missing`` (made by the migrations only) or ``extra`` (by the
    baseline only), or, once the objects agree, the tables and sequences
    (``rows of T: N missing, M extra``, ``sequence S: V after the migrations,
    W after the baseline``). Nothing was registered."""

    sqlstate = "PT033"


class ListenNotSupported(TenancyError):
    """The DSN cannot LISTEN: its statements do not keep one server backend, as
    behind a transaction pooler (PgBouncer ``pool_mode = transaction``). The
    listener needs a direct or session-pooled connection. Python only."""


class NotInstalled(TenancyError):
    """The pgtenancy SQL is not installed in this database. Found in Python from
    the database's 3F000 (schema ``tenancy`` missing), or 42883/42P01 naming a
    ``tenancy`` object when the database has no ``tenancy.version()``."""


class InstallBlocked(TenancyError):
    """An install, upgrade or uninstall waited longer than its lock timeout for a
    lock other sessions hold on the kit's objects (the server's 55P03,
    lock_not_available, under the ``lock_timeout`` the installer sets); its
    transaction was rolled back and nothing changed (an uninstall with
    ``drop_tenants`` blocked part way says in its message how many tenant
    schemas it had dropped, each in a transaction of its own). Without the timeout such a
    wait has no end, and every session that needs the same objects meanwhile
    (tenant entry reading ``tenancy.tenant_directory``) queues behind it: an
    application-role transaction that read the directory and stays open is
    enough to cause one. Python only.

    Attributes:
        blockers: ``(pid, role, state)`` of each other session that held a lock
            on a ``tenancy`` object when the install gave up (may be empty: a
            lock released meanwhile, or the advisory lock of a first install).
    """

    def __init__(
        self,
        message: str,
        *,
        sqlstate: str | None = "55P03",
        detail: str | None = None,
        hint: str | None = None,
        blockers: tuple[tuple[int, str, str], ...] = (),
    ) -> None:
        super().__init__(message, sqlstate=sqlstate, detail=detail, hint=hint)
        self.blockers = blockers


class UninstallIncomplete(TenancyError):
    """``uninstall(..., drop_tenants=True)`` stopped after it had dropped tenant
    schemas, each in a transaction of its own (a lost connection, a timeout, a
    refusal of the final script because another session made an object that
    uses the kit meanwhile): those schemas and their data are gone, the kit is
    still installed. Run the uninstall again to finish (it drops what is left).
    Python only.

    Attributes:
        dropped: how many tenant schemas were dropped before it stopped.
        cause: the kit error (or psycopg error) that stopped it, which is also
            ``__cause__`` (None after pickling; the message names it).
    """

    def __init__(self, dropped: int, cause: BaseException | None = None) -> None:
        schemas = "schema" if dropped == 1 else "schemas"
        super().__init__(
            f"the uninstall stopped after dropping {dropped} tenant {schemas}: {cause}",
            hint="Those schemas are gone and the kit is still installed: fix the cause and run "
            "the uninstall again to finish.",
        )
        self.dropped = dropped
        self.__cause__ = cause

    @property
    def cause(self) -> BaseException | None:
        """The error that stopped the uninstall (``__cause__``)."""
        return self.__cause__


class VersionMismatch(TenancyError):
    """The pgtenancy SQL installed in the database is another version than this
    Python package's, and a call needed something the installed version lacks
    (a ``tenancy`` function or table is missing). Python only.

    Attributes:
        installed: the version ``tenancy.version()`` reports, e.g. ``"0.2.0"``.
        expected: this package's version (:data:`pgtenancy.__version__`).
    """

    def __init__(self, installed: str, expected: str = __version__) -> None:
        if _version_key(installed) < _version_key(expected):
            advice = "upgrade the SQL: pgtenancy install (or ALTER EXTENSION pgtenancy UPDATE)"
        else:
            advice = f"install pgtenancy {installed} or later in Python"
        super().__init__(
            f"pgtenancy SQL {installed} is installed, but this Python package is {expected}: "
            f"{advice}"
        )
        self.installed = installed
        self.expected = expected


class PermissionDenied(TenancyError, PermissionError):
    """The connected role may not use this part of the kit (the server's 42501
    on a ``tenancy`` object). ``sqlstate`` is ``"42501"``; ``hint`` says which
    role may, and which grant lets another role do what. Found in Python by
    :func:`translate` from the server's error; the kit raises no code of its own."""


#: What a role may do, for the hint of :class:`PermissionDenied`.
PERMISSION_HINT = (
    "This needs the kit's owner (the role that installed pgtenancy). "
    "tenancy.grant_app_role(role) lets an application role enter tenants, read its "
    "tenant's id, slug, status and public metadata (tenancy.tenant_info()) and resolve host "
    "names (tenancy.resolve_domain); tenancy.grant_listener_role(role) lets a role run "
    "listeners and read consumer_status()/outbox_health(). Admin calls (creating, "
    "suspending, listing tenants, migrations) stay with the owner."
)


class NoTenantContext(TenancyError):
    """No tenant slug was given and none is active in the current context. Python only."""


class InvalidConnectionState(TenancyError):
    """The connection cannot carry a tenant transaction: it is already inside a
    transaction, or it runs in autocommit mode where transaction-local settings
    would vanish after one statement. Python only."""


def _version_key(version: str) -> tuple[int, ...]:
    parts: list[int] = []
    for piece in version.split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


# SQLSTATEs of "something is missing": invalid_schema_name, undefined_function,
# undefined_table.
_MISSING = ("3F000", "42883", "42P01")


_DENIED = re.compile(r"permission denied for (?:\w+ )+?\"?([A-Za-z0-9_]+)\"?$")


@functools.cache
def _kit_object_names() -> frozenset[str]:
    """Names of the schema ``tenancy`` and of every object the kit's SQL creates in it."""
    from pgtenancy.queries import sql_dir

    names = {"tenancy"}
    for path in sql_dir().glob("[0-9][0-9][0-9]_*.sql"):
        names.update(re.findall(r"\btenancy\.([a-z_][a-z0-9_]*)", path.read_text("utf-8")))
    return frozenset(names)


def _is_kit_permission_error(message: str) -> bool:
    match = _DENIED.search(message)
    return match is not None and match.group(1) in _kit_object_names()


def _psycopg_error(exc: BaseException) -> psycopg.Error | None:
    if isinstance(exc, psycopg.Error):
        return exc
    orig = getattr(exc, "orig", None)  # sqlalchemy.exc.DBAPIError
    if isinstance(orig, psycopg.Error):
        return orig
    return None


def translate(
    exc: BaseException, *, installed_version: Callable[[], str | None] | None = None
) -> BaseException:
    """Map a database error to the pgtenancy exception for its SQLSTATE.

    Args:
        exc: any exception; psycopg errors and SQLAlchemy ``DBAPIError`` (through
            its ``orig``) are inspected.
        installed_version: called when a ``tenancy`` object is missing
            (SQLSTATE 42883 or 42P01) to tell "not installed" from "another
            version installed"; it returns what ``tenancy.version()`` says, or
            None when that function does not exist. The admin API, the
            installer and the CLI pass one; without it such an error is
            reported as :class:`NotInstalled`.

    Returns:
        A new :class:`TenancyError` subclass instance (its ``__cause__`` is set
        to ``exc``) when the SQLSTATE is registered by one of pgtenancy's
        classes, or says the kit is missing (:class:`NotInstalled`) or is
        another version (:class:`VersionMismatch`), or is a permission error
        (42501) on a ``tenancy`` object (:class:`PermissionDenied`, with a
        hint); otherwise ``exc`` itself, unchanged.
    """
    err = _psycopg_error(exc)
    if err is None or err.sqlstate is None:
        return exc
    diag = err.diag
    message = diag.message_primary or str(err)
    new: TenancyError
    cls = _REGISTRY.get(err.sqlstate)
    if cls is not None:
        detail, hint = diag.message_detail, diag.message_hint
        new = cls(message, sqlstate=err.sqlstate, detail=detail, hint=hint)
    elif err.sqlstate in _MISSING and "tenancy" in message:
        installed = None
        if err.sqlstate != "3F000" and installed_version is not None:
            try:
                installed = installed_version()
            except psycopg.Error:
                installed = None
        if installed is not None and installed != __version__:
            new = VersionMismatch(installed)
        elif installed is not None:
            return exc  # the installed version is ours: a genuinely missing object
        else:
            new = NotInstalled(
                f"pgtenancy is not installed in this database ({message})", sqlstate=err.sqlstate
            )
    elif err.sqlstate == "42501" and _is_kit_permission_error(message):
        hint = diag.message_hint
        new = PermissionDenied(
            message,
            sqlstate=err.sqlstate,
            detail=diag.message_detail,
            hint=f"{hint} {PERMISSION_HINT}" if hint else PERMISSION_HINT,
        )
    else:
        return exc
    new.__cause__ = exc
    return new


def raise_translated(
    exc: BaseException, *, installed_version: Callable[[], str | None] | None = None
) -> NoReturn:
    """Raise :func:`translate` of ``exc`` (chained to it), or ``exc`` itself when
    it is not one of pgtenancy's errors. Call it in an ``except`` block.

    Args:
        exc: the caught exception.
        installed_version: as for :func:`translate`.
    """
    err = translate(exc, installed_version=installed_version)
    if err is exc:
        raise exc
    raise err from exc
