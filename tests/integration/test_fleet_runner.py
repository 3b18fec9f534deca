"""The one fleet runner: lost connections replaced and retried or recorded,
every planned tenant accounted for, application_name on its connections, the
library entry points (Tenancy.migrate_tenants, sync_migration_dir, plan_fleet)
running the same code as ``pgtenancy migrate``."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from conftest import pgtenancy_cli, subprocess_env
from pgtenancy import Tenancy
from pgtenancy.errors import InvalidMigration
from pgtenancy.fleet import APPLICATION_NAME, migrate_fleet, plan_fleet, sync_migration_dir

SQL = Callable[..., list[tuple[Any, ...]]]

ACTIVE_MIGRATION = (
    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
    "AND application_name = %s AND state = 'active' "
    "AND query LIKE '%%tenancy.migrate_tenant(%%'"
)


def start_cli(dsn: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*pgtenancy_cli(), "migrate", "--dsn", dsn, *args],
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


class Killer(threading.Thread):
    """Terminates the runner's backends while they migrate a tenant: once, or
    every time until stopped."""

    def __init__(self, dsn: str, once: bool) -> None:
        super().__init__(daemon=True)
        self.dsn, self.once = dsn, once
        self.killed: list[int] = []
        self.stop = threading.Event()

    def run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while not self.stop.is_set():
                for (pid,) in conn.execute(ACTIVE_MIGRATION, (APPLICATION_NAME,)).fetchall():
                    conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
                    self.killed.append(pid)
                    if self.once:
                        return
                time.sleep(0.005)


def _fleet(tenancy: Tenancy, n: int) -> list[str]:
    tenancy.add_migration("0001", "CREATE TABLE item (id int PRIMARY KEY)")
    slugs = [f"d{i:02d}" for i in range(n)]
    for slug in slugs:
        tenancy.create_tenant(slug)
    tenancy.add_migration("0002", "SELECT pg_sleep(0.3); ALTER TABLE item ADD COLUMN v int")
    return slugs


def test_a_terminated_backend_is_replaced_and_the_tenant_retried(
    dsn: str, tenancy: Tenancy, sql: SQL
) -> None:
    _fleet(tenancy, 6)
    killer = Killer(dsn, once=True)
    killer.start()
    proc = start_cli(dsn, "--jobs", "2", "--json")
    out, err = proc.communicate(timeout=120)
    killer.stop.set()
    killer.join(10)
    assert killer.killed, "the test never saw the runner migrate"
    assert proc.returncode == 0, err
    report = json.loads(out)
    assert report["planned"] == 6 and len(report["migrated"]) == 6 and not report["failed"]
    assert max(o["attempts"] for o in report["migrated"]) == 2
    assert sql("SELECT migration_version, count(*) FROM tenancy.tenants GROUP BY 1") == [
        ("0002", 6)
    ]
    # The killed attempt rolled back: each tenant was migrated exactly once.
    assert sql("SELECT count(*) FROM tenancy.events WHERE name = 'tenant_migrated'") == [(6,)]


def test_connections_lost_on_every_try_are_failures_and_exit_non_zero(
    dsn: str, tenancy: Tenancy, sql: SQL
) -> None:
    _fleet(tenancy, 4)
    killer = Killer(dsn, once=False)
    killer.start()
    proc = start_cli(dsn, "--jobs", "2", "--json")
    out, err = proc.communicate(timeout=120)
    killer.stop.set()
    killer.join(10)
    assert proc.returncode == 1, err
    report = json.loads(out)
    assert report["planned"] == 4
    assert len(report["migrated"]) + len(report["failed"]) + report["current"] == 4
    assert len(report["failed"]) == 4
    assert {o["attempts"] for o in report["failed"]} == {3}
    assert all("connection lost" in o["message"] for o in report["failed"])
    assert "error: 4 of 4 tenants failed" in err
    assert sql("SELECT migration_version, count(*) FROM tenancy.tenants GROUP BY 1") == [
        ("0001", 4)
    ]
    # Each failure was recorded once the server answered again.
    assert sql(
        "SELECT count(DISTINCT tenant_slug) FROM tenancy.events "
        "WHERE name = 'tenant_migration_failed'"
    ) == [(4,)]


def test_the_runner_names_its_connections(dsn: str, tenancy: Tenancy, sql: SQL) -> None:
    tenancy.add_migration("0001", "CREATE TABLE item (id int PRIMARY KEY)")
    tenancy.create_tenant("acme")
    tenancy.create_tenant("globex")
    tenancy.add_migration(
        "0002", "CREATE TABLE seen AS SELECT current_setting('application_name') AS app"
    )
    report = migrate_fleet(dsn, tenants=["acme"])
    assert report.ok and [o.slug for o in report.migrated] == ["acme"]
    assert sql("SELECT app FROM tenant_acme.seen") == [(APPLICATION_NAME,)]
    # Through the admin API on a SQLAlchemy engine too, under a name of its own.
    migrate_fleet(tenancy.database.source, application_name="billing deploy")
    assert sql("SELECT app FROM tenant_globex.seen") == [("billing deploy",)]


def test_migrate_tenants_runs_the_fleet_runner_past_no_transaction_migrations(
    tenancy: Tenancy, sql: SQL
) -> None:
    tenancy.add_migration("0001", "CREATE TABLE item (id int PRIMARY KEY, v int)")
    tenancy.create_tenant("acme")
    tenancy.create_tenant("hooli", isolation="shared")
    tenancy.add_migration(
        "0002",
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS item_v ON item (v)",
        outside_transaction=True,
    )
    # The SQL function stops before it: acme is stuck at 0001 ...
    assert tenancy.migrate_tenant("acme").migration_version == "0001"
    report = tenancy.migrate_tenants()
    assert [t.slug for t in report.migrated] == ["acme"]
    assert report.migrated[0].migration_version == "0002"
    assert [t.slug for t in report.unchanged] == ["hooli"]
    assert report.failed == []
    assert sql("SELECT indexname FROM pg_indexes WHERE schemaname = 'tenant_acme'") == [
        ("item_pkey",),
        ("item_v",),
    ]
    again = tenancy.migrate_tenants(["acme", "nobody"])
    assert [t.slug for t in again.unchanged] == ["acme"]
    assert [(s, e.sqlstate) for s, e in again.failed] == [("nobody", "PT003")]


def test_migrate_tenants_refuses_a_connection_inside_a_transaction(dsn: str, sql: SQL) -> None:
    with psycopg.connect(dsn) as conn:
        tenancy = Tenancy(conn)
        tenancy.add_migration("0001", "CREATE TABLE item (id int PRIMARY KEY)")
        conn.commit()
        tenancy.create_tenant("acme")
        tenancy.add_migration("0002", "ALTER TABLE item ADD COLUMN v int")
        conn.execute("SELECT 1")  # a transaction is open
        with pytest.raises(ValueError, match="outside a transaction"):
            tenancy.migrate_tenants()
        conn.commit()
        assert sql("SELECT migration_version FROM tenancy.tenants") == [("0001",)]
        # Outside a transaction the caller's connection is used, as one job.
        report = Tenancy(conn).migrate_tenants()
        assert [t.slug for t in report.migrated] == ["acme"]
        assert not conn.closed
    assert sql("SELECT migration_version FROM tenancy.tenants") == [("0002",)]


def test_sync_migration_dir_and_plan_fleet_are_library_calls(
    dsn: str, tenancy: Tenancy, tmp_path: Path
) -> None:
    d = tmp_path / "m"
    d.mkdir()
    (d / "0001_item.sql").write_text("CREATE TABLE item (id int PRIMARY KEY);")
    for slug in ("acme", "globex", "initech"):
        tenancy.create_tenant(slug)
    tenancy.drop_tenant("initech")
    dry = sync_migration_dir(tenancy.database.source, d, dry_run=True)
    assert dry.registered == ["0001_item"] and tenancy.list_migrations() == []
    synced = sync_migration_dir(dsn, d)
    assert synced.registered == ["0001_item"] and synced.current == []
    (d / "0002_col.sql").write_text("ALTER TABLE item ADD COLUMN v int;")
    fleet = plan_fleet(dsn, new_versions=sync_migration_dir(dsn, d, dry_run=True).registered)
    assert [(t.slug, t.versions) for t in fleet.todo] == [
        ("acme", ["0001_item", "0002_col"]),
        ("globex", ["0001_item", "0002_col"]),
    ]
    fleet = plan_fleet(dsn, tenants=["acme", "initech", "nobody"], limit=1)
    assert fleet.unknown == ["nobody"] and fleet.deleted == ["initech"]
    assert fleet.planned == 3 and fleet.deferred == 0
    assert [m.version for m in tenancy.list_migrations()] == ["0001_item"]
    (d / "0001_item.sql").write_text("CREATE TABLE item (id bigint PRIMARY KEY);")
    with pytest.raises(InvalidMigration, match=r"0001_item\.sql changed"):
        sync_migration_dir(dsn, d)
    assert [m.version for m in tenancy.list_migrations()] == ["0001_item"]
