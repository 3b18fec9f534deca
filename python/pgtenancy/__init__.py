"""pgtenancy: PostgreSQL-native multi-tenancy for Python.

The database does the work (SQL functions, triggers, an outbox); this package
puts transactions into tenants and turns database events into signals.

Main entry points:

* :func:`install` / :func:`uninstall`: put the SQL core into a database.
* :func:`tenant_session` (SQLAlchemy) and :func:`tenant_connection` (psycopg):
  transactions in a tenant.
* :class:`Tenancy`: the admin API (create, suspend, resume, drop, migrate).
* :mod:`pgtenancy.signals` and :class:`Listener`: lifecycle events as signals.

``import pgtenancy`` loads nothing but this file and ``_version`` (not even
psycopg): every public name, and every submodule (``pgtenancy.signals``,
``pgtenancy.errors``, ...), is imported on first use (PEP 562), so a command
line or a worker pays only for what it uses. ``from pgtenancy import X``
works for every name of ``__all__``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from pgtenancy._version import __version__

if TYPE_CHECKING:
    from pgtenancy.admin import Baseline, Migration, MigrationReport, Tenancy, Tenant
    from pgtenancy.connection import tenant_connection
    from pgtenancy.context import TenantContext, current_tenant, use_tenant
    from pgtenancy.entry_tokens import sign_tenant_token
    from pgtenancy.errors import (
        BaselineMismatch,
        BaselineRefused,
        CannotCloneTenant,
        CannotGuardTable,
        CannotTrackTable,
        ConsumerNotFound,
        DomainTaken,
        EntryTokenError,
        EntryTokenExpired,
        EntryTokenForged,
        EntryTokenReplayed,
        EntryTokenStale,
        EntryTokenWrongTenant,
        ImmutableTenantColumn,
        InstallBlocked,
        InvalidConnectionState,
        InvalidDomain,
        InvalidMigration,
        InvalidTenantLimit,
        InvalidTenantMetadata,
        InvalidTenantSlug,
        LeaseLost,
        ListenNotSupported,
        MigrationFailed,
        NewerVersionInstalled,
        NoTenantContext,
        NoTenantInTransaction,
        NotInstalled,
        PermissionDenied,
        SearchPathChanged,
        TenancyError,
        TenantDeleted,
        TenantExists,
        TenantNotFound,
        TenantProvisioning,
        TenantRenamed,
        TenantSchemaMissing,
        TenantsStillRegistered,
        TenantSuspended,
        UninstallIncomplete,
        UnsafeAppRole,
        UnsafeMigration,
        VersionMismatch,
        raise_translated,
        translate,
    )
    from pgtenancy.events import Event, TenantRef
    from pgtenancy.installer import SQL_VERSION, install, installed_version, uninstall
    from pgtenancy.listener import Listener
    from pgtenancy.pool import install_sqlalchemy_reset, pool_reset, pool_reset_async
    from pgtenancy.session import tenant_session

#: Module -> the public names it defines, imported on first access.
_MODULES: dict[str, tuple[str, ...]] = {
    "pgtenancy.admin": ("Baseline", "Migration", "MigrationReport", "Tenancy", "Tenant"),
    "pgtenancy.connection": ("tenant_connection",),
    "pgtenancy.context": ("TenantContext", "current_tenant", "use_tenant"),
    "pgtenancy.entry_tokens": ("sign_tenant_token",),
    "pgtenancy.errors": (
        "BaselineMismatch",
        "BaselineRefused",
        "CannotCloneTenant",
        "CannotGuardTable",
        "CannotTrackTable",
        "ConsumerNotFound",
        "DomainTaken",
        "EntryTokenError",
        "EntryTokenExpired",
        "EntryTokenForged",
        "EntryTokenReplayed",
        "EntryTokenStale",
        "EntryTokenWrongTenant",
        "ImmutableTenantColumn",
        "InstallBlocked",
        "InvalidConnectionState",
        "InvalidDomain",
        "InvalidMigration",
        "InvalidTenantLimit",
        "InvalidTenantMetadata",
        "InvalidTenantSlug",
        "LeaseLost",
        "ListenNotSupported",
        "MigrationFailed",
        "NewerVersionInstalled",
        "NoTenantContext",
        "NoTenantInTransaction",
        "NotInstalled",
        "PermissionDenied",
        "SearchPathChanged",
        "TenancyError",
        "TenantDeleted",
        "TenantExists",
        "TenantNotFound",
        "TenantProvisioning",
        "TenantRenamed",
        "TenantSchemaMissing",
        "TenantsStillRegistered",
        "TenantSuspended",
        "UninstallIncomplete",
        "UnsafeAppRole",
        "UnsafeMigration",
        "VersionMismatch",
        "raise_translated",
        "translate",
    ),
    "pgtenancy.events": ("Event", "TenantRef"),
    "pgtenancy.installer": ("SQL_VERSION", "install", "installed_version", "uninstall"),
    "pgtenancy.listener": ("Listener",),
    "pgtenancy.pool": ("install_sqlalchemy_reset", "pool_reset", "pool_reset_async"),
    "pgtenancy.session": ("tenant_session",),
}
_LAZY: dict[str, str] = {name: module for module, names in _MODULES.items() for name in names}


def __getattr__(name: str) -> Any:
    """A public name or a submodule, imported on first access.

    Raises:
        AttributeError: ``name`` is neither (as for any module).
        ModuleNotFoundError: the submodule needs an optional dependency that
            is not installed (its name says which).
    """
    module = _LAZY.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module), name)
    elif name.isidentifier() and not name.startswith("__"):
        # ``import pgtenancy; pgtenancy.signals.muted()``: import the submodule.
        try:
            value = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "SQL_VERSION",
    "Baseline",
    "BaselineMismatch",
    "BaselineRefused",
    "CannotCloneTenant",
    "CannotGuardTable",
    "CannotTrackTable",
    "ConsumerNotFound",
    "DomainTaken",
    "EntryTokenError",
    "EntryTokenExpired",
    "EntryTokenForged",
    "EntryTokenReplayed",
    "EntryTokenStale",
    "EntryTokenWrongTenant",
    "Event",
    "ImmutableTenantColumn",
    "InstallBlocked",
    "InvalidConnectionState",
    "InvalidDomain",
    "InvalidMigration",
    "InvalidTenantLimit",
    "InvalidTenantMetadata",
    "InvalidTenantSlug",
    "LeaseLost",
    "ListenNotSupported",
    "Listener",
    "Migration",
    "MigrationFailed",
    "MigrationReport",
    "NewerVersionInstalled",
    "NoTenantContext",
    "NoTenantInTransaction",
    "NotInstalled",
    "PermissionDenied",
    "SearchPathChanged",
    "Tenancy",
    "TenancyError",
    "Tenant",
    "TenantContext",
    "TenantDeleted",
    "TenantExists",
    "TenantNotFound",
    "TenantProvisioning",
    "TenantRef",
    "TenantRenamed",
    "TenantSchemaMissing",
    "TenantSuspended",
    "TenantsStillRegistered",
    "UninstallIncomplete",
    "UnsafeAppRole",
    "UnsafeMigration",
    "VersionMismatch",
    "__version__",
    "current_tenant",
    "install",
    "install_sqlalchemy_reset",
    "installed_version",
    "pool_reset",
    "pool_reset_async",
    "raise_translated",
    "sign_tenant_token",
    "tenant_connection",
    "tenant_session",
    "translate",
    "uninstall",
    "use_tenant",
]
