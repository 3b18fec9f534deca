"""Commit boundaries: a history that adds an enum value and uses it later (or
has a no-transaction migration) registers, provisions new tenants one
migration per transaction in status ``provisioning`` (PT019 on entry,
``tenant_created`` once at the end), records a failure, resumes on a rerun of
create or migrate, and ``drop_tenant`` removes a tenant left half-provisioned."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from conftest import pgtenancy_cli, subprocess_env
from pgtenancy import Tenancy
from pgtenancy.errors import MigrationFailed, TenantProvisioning
from pgtenancy.fleet import migrate_fleet

SQL = Callable[..., list[tuple[Any, ...]]]

HISTORY = [
    (
        "0001",
        "CREATE TYPE job_status AS ENUM ('todo'); "
        "CREATE TABLE job (id int PRIMARY KEY, status job_status NOT NULL DEFAULT 'todo')",
    ),
    ("0002", "ALTER TYPE job_status ADD VALUE 'done'"),
    ("0003", "CREATE INDEX job_done ON job (id) WHERE status = 'done'"),
]


def events(sql: SQL, slug: str) -> list[tuple[str, Any]]:
    return sql(
        "SELECT name, payload->>'migration_version' FROM tenancy.events "
        "WHERE tenant_slug = %s ORDER BY id",
        (slug,),
    )


def register(tenancy: Tenancy, history: list[tuple[str, str]]) -> None:
    for version, text in history:
        tenancy.add_migration(version, text)


def test_an_enum_value_added_then_used_registers_and_provisions(tenancy: Tenancy, sql: SQL) -> None:
    register(tenancy, HISTORY)  # the scratch schema has 0002 committed before 0003
    assert [m.version for m in tenancy.list_migrations()] == ["0001", "0002", "0003"]
    acme = tenancy.create_tenant("acme")
    assert (acme.status, acme.migration_version) == ("active", "0003")
    assert events(sql, "acme") == [("tenant_created", "0003")]
    # One transaction per migration: the two enum values were made by two.
    assert sql(
        "SELECT count(DISTINCT xmin::text) FROM pg_enum "
        "WHERE enumtypid = 'tenant_acme.job_status'::regtype"
    ) == [(2,)]
    sql("INSERT INTO tenant_acme.job VALUES (1, 'done')")
    # A history without such a migration keeps one transaction.
    assert sql("SELECT count(*) FROM tenancy.tenants WHERE status = 'provisioning'") == [(0,)]


def test_existing_tenants_cross_the_boundary_on_migrate(tenancy: Tenancy, sql: SQL) -> None:
    register(tenancy, HISTORY[:1])
    tenancy.create_tenant("acme")
    register(tenancy, HISTORY[1:])
    report = migrate_fleet(tenancy.database.source)
    assert report.ok and [(o.slug, o.to_version) for o in report.migrated] == [("acme", "0003")]
    assert sql(
        "SELECT count(*) FROM pg_indexes WHERE schemaname = 'tenant_acme' AND indexname = 'job_done'"
    ) == [(1,)]


def test_a_failure_leaves_provisioning_recorded_resumable_and_droppable(
    dsn: str, tenancy: Tenancy, sql: SQL
) -> None:
    sql("CREATE TABLE public.block (reason text)")
    sql("GRANT SELECT ON public.block TO PUBLIC")
    register(
        tenancy,
        [
            *HISTORY,
            (
                "0004",
                "DO $$ BEGIN IF EXISTS (SELECT 1 FROM public.block) THEN "
                "RAISE EXCEPTION 'blocked'; END IF; END $$; ALTER TABLE job ADD COLUMN note text",
            ),
        ],
    )
    sql("INSERT INTO public.block VALUES ('maintenance')")
    for slug in ("acme", "globex"):
        with pytest.raises(MigrationFailed, match="blocked"):
            tenancy.create_tenant(slug)
        t = tenancy.get_tenant(slug)
        assert (t.status, t.migration_version) == ("provisioning", "0003")
    assert sql(
        "SELECT t.slug, f.version, f.sqlstate, f.message LIKE '%%blocked%%' "
        "FROM tenancy.provisioning_failures AS f JOIN tenancy.tenants AS t ON t.id = f.tenant_id "
        "ORDER BY 1"
    ) == [("acme", "0004", "PT006", True), ("globex", "0004", "PT006", True)]
    assert events(sql, "acme") == []  # never created, nothing announced
    with pytest.raises(psycopg.Error) as info, psycopg.connect(dsn) as conn:
        conn.execute("SELECT tenancy.enter_tenant('acme')")
    assert info.value.sqlstate == "PT019"
    with pytest.raises(TenantProvisioning):
        from pgtenancy.connection import tenant_connection

        with psycopg.connect(dsn) as conn, tenant_connection(conn, "acme"):
            pass
    # Suspending cannot hide it; creating again goes on where it stopped.
    assert tenancy.suspend_tenant("acme").status == "provisioning"
    with pytest.raises(MigrationFailed):
        tenancy.create_tenant("acme")
    sql("DELETE FROM public.block")
    acme = tenancy.create_tenant("acme")
    assert (acme.status, acme.migration_version) == ("active", "0004")
    assert events(sql, "acme") == [("tenant_created", "0004")]
    # drop_tenant removes a tenant left provisioning, schema and all, silently.
    assert tenancy.drop_tenant("globex").status == "deleted"
    assert sql("SELECT count(*) FROM tenancy.tenants WHERE slug = 'globex'") == [(0,)]
    assert sql("SELECT to_regnamespace('tenant_globex')") == [(None,)]
    assert events(sql, "globex") == []
    assert sql("SELECT count(*) FROM tenancy.provisioning_failures") == [(0,)]


def test_pgtenancy_migrate_resumes_provisioning_tenants(
    dsn: str, tenancy: Tenancy, sql: SQL
) -> None:
    sql("CREATE TABLE public.block (reason text)")
    sql("GRANT SELECT ON public.block TO PUBLIC")
    register(
        tenancy,
        [
            *HISTORY,
            (
                "0004",
                "DO $$ BEGIN IF EXISTS (SELECT 1 FROM public.block) THEN "
                "RAISE EXCEPTION 'blocked'; END IF; END $$",
            ),
        ],
    )
    sql("INSERT INTO public.block VALUES ('maintenance')")
    sql("SELECT tenancy.create_tenant('initech')")  # SQL: the first step only
    assert tenancy.get_tenant("initech").migration_version == "0001"
    r = subprocess.run(
        [*pgtenancy_cli(), "migrate", "--dsn", dsn, "--quiet"],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=120,
    )
    assert r.returncode == 1 and "initech: FAILED" in r.stderr and "blocked" in r.stderr
    assert tenancy.get_tenant("initech").migration_version == "0003"
    sql("DELETE FROM public.block")
    r = subprocess.run(
        [*pgtenancy_cli(), "migrate", "--dsn", dsn, "--quiet"],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "1 migrated, 0 failed" in r.stdout
    t = tenancy.get_tenant("initech")
    assert (t.status, t.migration_version) == ("active", "0004")
    assert events(sql, "initech") == [("tenant_created", "0004")]
