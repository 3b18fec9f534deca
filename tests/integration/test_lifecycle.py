"""Each lifecycle function, its event, and each error path leaving nothing behind."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from sqlalchemy.exc import DBAPIError

from helpers import outbox
from pgtenancy import (
    ImmutableTenantColumn,
    InvalidMigration,
    InvalidTenantSlug,
    MigrationFailed,
    Tenancy,
    TenantDeleted,
    TenantExists,
    TenantNotFound,
)
from pgtenancy.errors import translate

SQL = Callable[..., list[tuple[Any, ...]]]

INVOICES = "CREATE TABLE invoice (invoice_id int PRIMARY KEY, total numeric(10, 2) NOT NULL)"


def schemas(sql: SQL) -> list[str]:
    return [
        r[0]
        for r in sql("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'tenant\\_%' ORDER BY 1")
    ]


def test_create_tenant_provisions_schema_migrations_row_and_event(
    tenancy: Tenancy, sql: SQL, dsn: str
) -> None:
    tenancy.add_migration("0001", INVOICES)
    t = tenancy.create_tenant("acme", {"plan": "pro"})
    assert (t.slug, t.schema_name, t.status, t.isolation) == (
        "acme",
        "tenant_acme",
        "active",
        "schema",
    )
    assert t.metadata == {"plan": "pro"}
    assert t.migration_version == "0001"
    assert sql("SELECT to_regclass('tenant_acme.invoice') IS NOT NULL") == [(True,)]
    assert outbox(dsn) == [("tenant_created", "acme")]
    assert tenancy.get_tenant("acme") == t
    assert [x.slug for x in tenancy.list_tenants()] == ["acme"]


@pytest.mark.parametrize(
    "slug",
    ["Acme", "1acme", "ac-me", "", "a" * 57, "public", "tenancy", "pg_acme", "information_schema"],
)
def test_invalid_slug_is_refused_by_the_database_and_leaves_nothing(
    slug: str, sql: SQL, dsn: str
) -> None:
    with pytest.raises(psycopg.Error) as info:
        sql("SELECT tenancy.create_tenant(%s)", (slug,))
    assert info.value.sqlstate == "PT001"
    assert sql("SELECT count(*) FROM tenancy.tenants") == [(0,)]
    assert schemas(sql) == []
    assert outbox(dsn) == []


def test_invalid_slug_is_refused_in_python_too(tenancy: Tenancy, sql: SQL) -> None:
    with pytest.raises(InvalidTenantSlug, match="lowercase"):
        tenancy.create_tenant("Acme")
    longest = "a" * 56
    assert tenancy.create_tenant(longest).schema_name == "tenant_" + longest


def test_duplicate_tenant_is_refused_and_changes_nothing(
    tenancy: Tenancy, sql: SQL, dsn: str
) -> None:
    first = tenancy.create_tenant("acme")
    with pytest.raises(TenantExists) as info:
        tenancy.create_tenant("acme")
    assert info.value.sqlstate == "PT002"
    assert tenancy.list_tenants() == [first]
    assert outbox(dsn) == [("tenant_created", "acme")]


def test_existing_unregistered_schema_is_not_adopted(tenancy: Tenancy, sql: SQL, dsn: str) -> None:
    sql("CREATE SCHEMA tenant_globex")
    sql("CREATE TABLE tenant_globex.secret (x int)")
    with pytest.raises(TenantExists, match="not a registered tenant"):
        tenancy.create_tenant("globex")
    assert tenancy.list_tenants() == []
    assert sql("SELECT to_regclass('tenant_globex.secret') IS NOT NULL") == [(True,)]
    assert outbox(dsn) == []


def test_failing_migration_at_creation_leaves_no_schema_no_row_no_event(
    tenancy: Tenancy, sql: SQL, dsn: str
) -> None:
    tenancy.add_migration("0001", INVOICES)
    # A migration that passes on an empty schema but fails when a shared
    # object it needs has gone away.
    sql("CREATE TABLE public.plans (id int PRIMARY KEY)")
    tenancy.add_migration("0002", "CREATE TABLE sub (plan int REFERENCES public.plans (id))")
    # The scratch schema, kept at the latest version, references it like a
    # tenant would.
    sql("DROP TABLE public.plans CASCADE")
    with pytest.raises(MigrationFailed) as info:
        tenancy.create_tenant("acme")
    assert info.value.sqlstate == "PT006"
    assert "0002" in str(info.value)
    assert info.value.detail == "SQLSTATE 42P01"
    assert tenancy.list_tenants() == []
    assert schemas(sql) == []
    assert outbox(dsn) == []


def test_suspend_resume_and_their_events(tenancy: Tenancy, dsn: str) -> None:
    tenancy.create_tenant("acme")
    assert tenancy.suspend_tenant("acme").status == "suspended"
    assert tenancy.suspend_tenant("acme").status == "suspended"  # no-op, no event
    assert tenancy.resume_tenant("acme").status == "active"
    assert tenancy.resume_tenant("acme").status == "active"  # no-op, no event
    assert outbox(dsn) == [
        ("tenant_created", "acme"),
        ("tenant_suspended", "acme"),
        ("tenant_resumed", "acme"),
    ]


def test_unknown_tenant_errors_change_nothing(tenancy: Tenancy, dsn: str) -> None:
    for call in (
        tenancy.get_tenant,
        tenancy.suspend_tenant,
        tenancy.resume_tenant,
        tenancy.drop_tenant,
        tenancy.migrate_tenant,
    ):
        with pytest.raises(TenantNotFound) as info:
            call("nobody")
        assert info.value.sqlstate == "PT003"
    assert outbox(dsn) == []


def test_soft_drop_keeps_schema_and_refuses_changes(tenancy: Tenancy, sql: SQL, dsn: str) -> None:
    tenancy.add_migration("0001", INVOICES)
    tenancy.create_tenant("acme")
    sql("INSERT INTO tenant_acme.invoice VALUES (1, 9.99)")
    t = tenancy.drop_tenant("acme")
    assert t.status == "deleted"
    assert sql("SELECT count(*) FROM tenant_acme.invoice") == [(1,)]
    for call in (tenancy.suspend_tenant, tenancy.resume_tenant, tenancy.migrate_tenant):
        with pytest.raises(TenantDeleted):
            call("acme")
    assert tenancy.drop_tenant("acme").status == "deleted"  # no-op, no second event
    events = outbox(dsn)
    assert events == [("tenant_created", "acme"), ("tenant_deleted", "acme")]
    assert sql(
        "SELECT payload->>'destroyed' FROM tenancy.events WHERE name = 'tenant_deleted'"
    ) == [("false",)]


def test_drop_with_destroy_data_drops_schema_and_row(tenancy: Tenancy, sql: SQL, dsn: str) -> None:
    tenancy.add_migration("0001", INVOICES)
    tenancy.create_tenant("acme")
    tenancy.create_tenant("globex")
    tenancy.drop_tenant("acme", destroy_data=True)
    assert [t.slug for t in tenancy.list_tenants()] == ["globex"]
    assert schemas(sql) == ["tenant_globex"]
    assert outbox(dsn)[-1] == ("tenant_deleted", "acme")
    assert sql(
        "SELECT payload->>'destroyed', tenant_status FROM tenancy.events ORDER BY id DESC LIMIT 1"
    ) == [("true", "deleted")]
    # The slug is free again.
    assert tenancy.create_tenant("acme").status == "active"


def test_migrate_tenant_applies_what_is_missing_and_emits_versions(
    tenancy: Tenancy, sql: SQL, dsn: str
) -> None:
    tenancy.add_migration("0001", INVOICES)
    tenancy.create_tenant("acme")
    tenancy.add_migration("0002", "ALTER TABLE invoice ADD COLUMN note text")
    tenancy.add_migration("0003", "CREATE INDEX invoice_total_idx ON invoice (total)")
    t = tenancy.migrate_tenant("acme")
    assert t.migration_version == "0003"
    assert sql(
        "SELECT count(*) FROM information_schema.columns "
        "WHERE table_schema = 'tenant_acme' AND column_name = 'note'"
    ) == [(1,)]
    assert sql("SELECT payload FROM tenancy.events WHERE name = 'tenant_migrated'") == [
        ({"from_version": "0001", "to_version": "0003", "versions": ["0002", "0003"]},)
    ]
    # Already current: nothing applied, no event.
    assert tenancy.migrate_tenant("acme").migration_version == "0003"
    assert [n for n, _ in outbox(dsn)].count("tenant_migrated") == 1


def test_failing_migration_leaves_tenant_at_previous_version(
    tenancy: Tenancy, sql: SQL, dsn: str
) -> None:
    tenancy.add_migration("0001", INVOICES)
    tenancy.create_tenant("acme")
    sql("INSERT INTO tenant_acme.invoice VALUES (1, 10), (2, 10)")
    tenancy.add_migration("0002", "ALTER TABLE invoice ADD COLUMN note text")
    # Passes on an empty schema, fails on acme's data.
    tenancy.add_migration("0003", "CREATE UNIQUE INDEX invoice_total_key ON invoice (total)")
    before = outbox(dsn)
    with pytest.raises(MigrationFailed) as info:
        tenancy.migrate_tenant("acme")
    assert "0003" in str(info.value)
    assert info.value.detail == "SQLSTATE 23505"
    assert tenancy.get_tenant("acme").migration_version == "0001"
    # 0002 ran in the same transaction and was rolled back with it.
    assert sql(
        "SELECT count(*) FROM information_schema.columns "
        "WHERE table_schema = 'tenant_acme' AND column_name = 'note'"
    ) == [(0,)]
    assert outbox(dsn) == before
    report = tenancy.migrate_tenants()
    assert [s for s, _ in report.failed] == ["acme"]


def test_add_migration_refuses_bad_input_and_registers_nothing(tenancy: Tenancy) -> None:
    tenancy.add_migration("0002", INVOICES)
    cases = [
        ("0003", "CREATE TABLE broken ("),  # does not parse
        ("0003", "ALTER TABLE missing ADD COLUMN x int"),  # fails on an empty schema
        ("0001", "CREATE TABLE early (x int)"),  # sorts before the latest
        ("0002", "CREATE TABLE other (x int)"),  # changed SQL of a registered version
        ("bad version", "CREATE TABLE t (x int)"),
        ("0004", "   "),
    ]
    for version, text in cases:
        with pytest.raises(InvalidMigration) as info:
            tenancy.add_migration(version, text)
        assert info.value.sqlstate == "PT008", (version, text)
    assert [m.version for m in tenancy.list_migrations()] == ["0002"]
    # The same SQL again is a no-op.
    assert tenancy.add_migration("0002", INVOICES).version == "0002"


def test_registry_changes_made_in_plain_sql_emit_events(
    tenancy: Tenancy, sql: SQL, dsn: str
) -> None:
    sql("INSERT INTO tenancy.tenants (slug) VALUES ('acme')")
    assert sql("SELECT schema_name FROM tenancy.tenants") == [("tenant_acme",)]
    assert schemas(sql) == ["tenant_acme"]
    sql("UPDATE tenancy.tenants SET status = 'suspended' WHERE slug = 'acme'")
    sql("UPDATE tenancy.tenants SET status = 'active' WHERE slug = 'acme'")
    sql("UPDATE tenancy.tenants SET status = 'deleted' WHERE slug = 'acme'")
    sql("DELETE FROM tenancy.tenants WHERE slug = 'acme'")
    assert outbox(dsn) == [
        ("tenant_created", "acme"),
        ("tenant_suspended", "acme"),
        ("tenant_resumed", "acme"),
        ("tenant_deleted", "acme"),
        ("tenant_deleted", "acme"),
    ]
    assert schemas(sql) == []


def test_plain_sql_gets_the_same_checks(tenancy: Tenancy, sql: SQL, dsn: str) -> None:
    with pytest.raises(psycopg.Error) as info:
        sql("INSERT INTO tenancy.tenants (slug) VALUES ('Not Valid')")
    assert info.value.sqlstate == "PT001"
    tenancy.create_tenant("acme")
    with pytest.raises(psycopg.Error) as info:
        sql("UPDATE tenancy.tenants SET slug = 'other'")
    assert info.value.sqlstate == "PT010"
    with pytest.raises(psycopg.Error) as info:
        sql("UPDATE tenancy.tenants SET schema_name = 'public'")
    assert info.value.sqlstate == "PT010"
    assert tenancy.get_tenant("acme").schema_name == "tenant_acme"
    assert outbox(dsn) == [("tenant_created", "acme")]


def test_sqlstates_map_to_python_exceptions(tenancy: Tenancy) -> None:
    tenancy.create_tenant("acme")
    with pytest.raises(DBAPIError) as info, tenancy.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE tenancy.tenants SET slug = 'x'")
    err = translate(info.value)
    assert isinstance(err, ImmutableTenantColumn)
    assert err.sqlstate == "PT010"
    assert err.__cause__ is info.value
    other = psycopg.errors.DivisionByZero("x")
    assert translate(other) is other


def test_direct_registry_changes_cannot_break_the_lifecycle(
    tenancy: Tenancy, sql: SQL, dsn: str
) -> None:
    tenancy.add_migration("0001", INVOICES)
    tenancy.create_tenant("acme")
    tenancy.drop_tenant("acme")
    before = outbox(dsn)
    for statement, sqlstate in (
        ("UPDATE tenancy.tenants SET status = 'active'", "PT005"),
        ("UPDATE tenancy.tenants SET migration_version = 'zzz'", "PT010"),
        ("TRUNCATE tenancy.tenants", "42501"),
    ):
        with pytest.raises(psycopg.Error) as info:
            sql(statement)
        assert info.value.sqlstate == sqlstate, statement
    tenancy.create_tenant("globex")
    with pytest.raises(psycopg.Error) as info:
        sql("UPDATE tenancy.tenants SET migration_version = NULL WHERE slug = 'globex'")
    assert info.value.sqlstate == "PT010"
    assert outbox(dsn) == [*before, ("tenant_created", "globex")]
    assert sql("SELECT status, migration_version FROM tenancy.tenants ORDER BY slug") == [
        ("deleted", "0001"),
        ("active", "0001"),
    ]
