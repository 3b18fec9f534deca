"""The isolation doctor: each check sees the fault it is for, created for real."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from helpers import as_role, run_cli
from pgtenancy import Listener, Tenancy
from pgtenancy.doctor import check_isolation

# Waits for event delivery: a stranger's transaction must not hold it back.
pytestmark = pytest.mark.own_server

SQL = Callable[..., list[tuple[Any, ...]]]


def checks(dsn: str) -> set[tuple[str, str, str]]:
    return {(f.severity, f.check, f.object) for f in check_isolation(dsn)}


@pytest.fixture
def listening(dsn: str) -> Iterator[None]:
    listener = Listener(dsn, "doctor", poll_interval=0.1)
    thread = threading.Thread(target=listener.run)
    thread.start()
    deadline = time.monotonic() + 10
    with psycopg.connect(dsn, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND application_name = 'pgtenancy-listener:doctor'"
            ).fetchone()
            if row and row[0]:
                break
            time.sleep(0.05)
    yield
    listener.stop()
    thread.join(10)


def test_a_healthy_setup_as_the_app_role_has_no_findings(
    dsn: str,
    app_role: str,
    hybrid: dict[str, str],
    listening: None,
    sql: SQL,
) -> None:
    # A healthy shared table's indexes are led by its tenant column.
    sql("ALTER TABLE public.orders DROP CONSTRAINT orders_pkey, ADD PRIMARY KEY (tenant_id, id)")
    # Shared tenants without strict entry: one info finding, nothing else.
    assert [(f.severity, f.check) for f in check_isolation(as_role(dsn, app_role))] == [
        ("info", "strict_entry_off")
    ]
    r = run_cli("doctor", "--dsn", as_role(dsn, app_role))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 errors, 0 warnings, 1 info" in r.stdout


def test_superuser_and_bypassrls_are_errors(dsn: str, sql: SQL, listening: None) -> None:
    assert ("error", "role_bypasses_rls", "postgres") in checks(dsn)
    r = run_cli("doctor", "--dsn", dsn)
    assert r.returncode == 1
    assert "role_bypasses_rls" in r.stdout
    name = f"pgtenancy_byp_{uuid.uuid4().hex[:8]}"
    sql(f"CREATE ROLE {name} LOGIN BYPASSRLS")
    try:
        sql(f"GRANT USAGE ON SCHEMA tenancy TO {name}")
        sql(f"GRANT SELECT ON tenancy.guarded_tables TO {name}")
        sql(f"GRANT EXECUTE ON FUNCTION tenancy.check_registry() TO {name}")
        assert ("error", "role_bypasses_rls", name) in checks(as_role(dsn, name))
    finally:
        sql(f"DROP OWNED BY {name}")
        sql(f"DROP ROLE {name}")


def test_table_faults_are_reported(
    dsn: str,
    app_role: str,
    sql: SQL,
    hybrid: dict[str, str],
    listening: None,
) -> None:
    app = as_role(dsn, app_role)
    sql("ALTER TABLE public.orders NO FORCE ROW LEVEL SECURITY")
    assert ("error", "rls_not_forced", "public.orders") in checks(app)
    sql("ALTER TABLE public.orders DISABLE ROW LEVEL SECURITY")
    assert ("error", "rls_disabled", "public.orders") in checks(app)
    sql("DROP POLICY tenancy_tenant_isolation ON public.orders")
    assert ("error", "policy_missing", "public.orders") in checks(app)
    index = sql(
        "SELECT indexrelid::regclass::text FROM pg_index i JOIN pg_attribute a "
        "ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] "
        "WHERE i.indrelid = 'public.orders'::regclass AND a.attname = 'tenant_id'"
    )[0][0]
    sql(f"DROP INDEX {index}")
    assert ("warning", "tenant_index_missing", "public.orders") in checks(app)
    # The children event trigger refuses this (test_attack_gaps.py): as if the
    # kit was installed without a superuser, and so without the trigger.
    sql("ALTER EVENT TRIGGER pgtenancy_guard_children DISABLE")
    try:
        sql(f"ALTER TABLE public.orders OWNER TO {app_role}")
        assert ("error", "role_owns_guarded_table", "public.orders") in checks(app)
    finally:
        sql("ALTER TABLE public.orders OWNER TO postgres")
        sql("ALTER EVENT TRIGGER pgtenancy_guard_children ENABLE")


def test_policy_outside_initplan_is_reported(
    dsn: str,
    app_role: str,
    sql: SQL,
    hybrid: dict[str, str],
    listening: None,
) -> None:
    sql(
        "CREATE POLICY per_row ON public.orders FOR SELECT "
        "USING (tenant_id = current_setting('app.tenant_id')::uuid)"
    )
    found = checks(as_role(dsn, app_role))
    assert ("warning", "policy_not_initplan", "per_row on public.orders") in found
    assert not any(
        c == "policy_not_initplan" and "tenancy_tenant_isolation" in o for _, c, o in found
    )


def test_schema_registry_and_migration_faults(
    dsn: str, tenancy: Tenancy, sql: SQL, listening: None
) -> None:
    tenancy.add_migration("0001", "CREATE TABLE t (id int)")
    tenancy.create_tenant("acme")
    tenancy.create_tenant("globex")
    sql("DROP SCHEMA tenant_acme CASCADE")
    sql("CREATE SCHEMA tenant_ghost")
    tenancy.add_migration("0002", "ALTER TABLE t ADD COLUMN x int")
    tenancy.migrate_tenant("globex")
    tenancy.create_tenant("hooli")
    tenancy.add_migration("0003", "ALTER TABLE t ADD COLUMN y int")
    found = checks(dsn)
    assert ("error", "tenant_schema_missing", "acme") in found
    assert ("warning", "unregistered_tenant_schema", "tenant_ghost") in found
    assert ("warning", "migration_lag", "globex") in found
    assert ("warning", "migration_lag", "hooli") in found


def test_no_listener_is_reported(dsn: str) -> None:
    assert ("warning", "no_listener", "tenancy_events_v1") in checks(dsn)
