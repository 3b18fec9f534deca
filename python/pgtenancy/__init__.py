"""pgtenancy: PostgreSQL-native multi-tenancy for Python.

The database does the work (SQL functions, triggers, an outbox); this package
puts transactions into tenants and turns database events into signals.

Main entry points:

* :func:`install` / :func:`uninstall`: put the SQL core into a database.
* :func:`tenant_session` (SQLAlchemy) and :func:`tenant_connection` (psycopg):
  transactions in a tenant.
* :class:`Tenancy`: the admin API (create, suspend, resume, drop, migrate).
* :mod:`pgtenancy.signals` and :class:`Listener`: lifecycle events as signals.

``import pgtenancy`` loads only psycopg and the small core modules (context,
errors, events, installer); the names backed by SQLAlchemy, psycopg_pool, the
listener or the admin API are imported on first use (PEP 562), so a command
line or a worker pays only for what it uses.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from pgtenancy._version import __version__
from pgtenancy.context import TenantContext, current_tenant, use_tenant
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
    EntryTokenWrongTenant,
    ImmutableTenantColumn,
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
    TenancyError,
    TenantDeleted,
    TenantExists,
    TenantNotFound,
    TenantProvisioning,
    TenantRenamed,
    TenantSchemaMissing,
    TenantsStillRegistered,
    TenantSuspended,
    UnsafeAppRole,
    UnsafeMigration,
    VersionMismatch,
    raise_translated,
    translate,
)
from pgtenancy.events import Event, TenantRef
from pgtenancy.installer import SQL_VERSION, install, installed_version, uninstall

if TYPE_CHECKING:
    from pgtenancy.admin import Baseline, Migration, MigrationReport, Tenancy, Tenant
    from pgtenancy.connection import tenant_connection
    from pgtenancy.entry_tokens import sign_tenant_token
    from pgtenancy.listener import Listener
    from pgtenancy.pool import install_sqlalchemy_reset, pool_reset, pool_reset_async
    from pgtenancy.session import tenant_session

# Public names imported on first access: name -> module that defines it.
_LAZY: dict[str, str] = {
    "Baseline": "pgtenancy.admin",
    "Listener": "pgtenancy.listener",
    "Migration": "pgtenancy.admin",
    "MigrationReport": "pgtenancy.admin",
    "Tenancy": "pgtenancy.admin",
    "Tenant": "pgtenancy.admin",
    "pool_reset": "pgtenancy.pool",
    "pool_reset_async": "pgtenancy.pool",
    "sign_tenant_token": "pgtenancy.entry_tokens",
    "install_sqlalchemy_reset": "pgtenancy.pool",
    "tenant_connection": "pgtenancy.connection",
    "tenant_session": "pgtenancy.session",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pgtenancy' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
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
    "EntryTokenWrongTenant",
    "Event",
    "ImmutableTenantColumn",
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
