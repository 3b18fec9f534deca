"""The confinement fence lets a tenant migration drop its own table that has a
TOAST table (found with procrastinate's ``00.05.00_03``: the TOAST table is
dropped with it, in schema pg_toast), and still refuses dropping another
schema's table."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from pgtenancy import Tenancy
from pgtenancy.errors import UnsafeMigration

SQL = Callable[..., list[tuple[Any, ...]]]


def test_dropping_an_own_table_with_toast_passes_the_fence(tenancy: Tenancy, sql: SQL) -> None:
    tenancy.add_migration("0001", "CREATE TABLE version_table (version text, note text)")
    tenancy.create_tenant("acme")
    assert sql(
        "SELECT reltoastrelid <> 0 FROM pg_class WHERE oid = 'tenant_acme.version_table'::regclass"
    ) == [(True,)]
    tenancy.add_migration("0002", "DROP TABLE version_table")  # the scratch check passes
    assert tenancy.migrate_tenant("acme").migration_version == "0002"
    assert sql("SELECT to_regclass('tenant_acme.version_table')") == [(None,)]
    tenancy.create_tenant("globex")
    assert tenancy.get_tenant("globex").migration_version == "0002"


def test_dropping_another_schemas_toasted_table_is_still_refused(
    tenancy: Tenancy, sql: SQL
) -> None:
    sql("CREATE TABLE public.shared_notes (body text)")
    with pytest.raises(UnsafeMigration):
        tenancy.add_migration("0001", "DROP TABLE public.shared_notes")
    assert sql("SELECT to_regclass('public.shared_notes') IS NOT NULL") == [(True,)]
    assert tenancy.list_migrations() == []
