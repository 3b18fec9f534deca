"""pgtenancy: PostgreSQL-native multi-tenancy for Python.

The database does the work (SQL functions, triggers, an outbox); this package
puts transactions into tenants and turns database events into signals.

Main entry points:

* :func:`install` / :func:`uninstall`: put the SQL core into a database.
* :func:`tenant_session` (SQLAlchemy) and :func:`tenant_connection` (psycopg):
  transactions in a tenant.
* :class:`Tenancy`: the admin API (create, suspend, resume, drop, migrate).
* :mod:`pgtenancy.signals` and :class:`Listener`: lifecycle events as signals.
"""

from pgtenancy.admin import Migration, MigrationReport, Tenancy, Tenant
from pgtenancy.connection import tenant_connection
from pgtenancy.context import TenantContext, current_tenant, use_tenant
from pgtenancy.errors import (
    CannotGuardTable,
    CannotTrackTable,
    ConsumerNotFound,
    ImmutableTenantColumn,
    InvalidConnectionState,
    InvalidMigration,
    InvalidTenantSlug,
    LeaseLost,
    ListenNotSupported,
    MigrationFailed,
    NoTenantContext,
    NoTenantInTransaction,
    NotInstalled,
    TenancyError,
    TenantDeleted,
    TenantExists,
    TenantNotFound,
    TenantSchemaMissing,
    TenantsStillRegistered,
    TenantSuspended,
    UnsafeAppRole,
    UnsafeMigration,
    raise_translated,
    translate,
)
from pgtenancy.events import Event, TenantRef
from pgtenancy.installer import SQL_VERSION, install, installed_version, uninstall
from pgtenancy.listener import Listener
from pgtenancy.session import tenant_session

__version__ = "0.2.0"

__all__ = [
    "SQL_VERSION",
    "CannotGuardTable",
    "CannotTrackTable",
    "ConsumerNotFound",
    "Event",
    "ImmutableTenantColumn",
    "InvalidConnectionState",
    "InvalidMigration",
    "InvalidTenantSlug",
    "LeaseLost",
    "ListenNotSupported",
    "Listener",
    "Migration",
    "MigrationFailed",
    "MigrationReport",
    "NoTenantContext",
    "NoTenantInTransaction",
    "NotInstalled",
    "Tenancy",
    "TenancyError",
    "Tenant",
    "TenantContext",
    "TenantDeleted",
    "TenantExists",
    "TenantNotFound",
    "TenantRef",
    "TenantSchemaMissing",
    "TenantSuspended",
    "TenantsStillRegistered",
    "UnsafeAppRole",
    "UnsafeMigration",
    "current_tenant",
    "install",
    "installed_version",
    "raise_translated",
    "tenant_connection",
    "tenant_session",
    "translate",
    "uninstall",
    "use_tenant",
]
