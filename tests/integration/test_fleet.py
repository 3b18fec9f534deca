"""Fleet migrations: checked migration files, parallel per-tenant transactions,
failures recorded, lock timeouts, canaries, dry runs, and kill -9 safety."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from helpers import pgtenancy_cli, run_cli, subprocess_env
from pgtenancy import Tenancy
from pgtenancy.migration_files import MigrationCheckError, check_migration, read_migration_dir

SQL = Callable[..., list[tuple[Any, ...]]]


def cli(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("migrate", "--dsn", dsn, *args)


def write(directory: Path, name: str, sql: str) -> Path:
    directory.mkdir(exist_ok=True)
    path = directory / name
    path.write_text(sql)
    return path


@pytest.mark.parametrize(
    ("sql", "reason"),
    [
        (
            "CREATE TABLE t (id int);\nBEGIN;\nCREATE TABLE u (id int);\nCOMMIT;",
            "2: transaction control",
        ),
        ("SET search_path = other;", "1: SET/RESET search_path"),
        ("CREATE TABLE t (id int);\nRESET ROLE;", "2: SET/RESET role"),
        ("CREATE DATABASE x;", "1: CREATE DATABASE: not a statement for a tenant schema"),
        ("CREATE TABLE t (id int REFERENCES other.t (id));", "1: references schema 'other'"),
        (
            "\n\nCREATE INDEX CONCURRENTLY i ON t (id);",
            "3: CREATE INDEX CONCURRENTLY cannot run inside a transaction",
        ),
        ("CREATE TABLE t (", "1: does not parse"),
    ],
)
def test_bad_files_are_refused_with_file_line_and_reason(
    tmp_path: Path, sql: str, reason: str
) -> None:
    write(tmp_path, "0001_bad.sql", sql)
    (migration,) = read_migration_dir(tmp_path)
    with pytest.raises(MigrationCheckError) as info:
        check_migration(migration)
    assert str(info.value).startswith("0001_bad.sql:" + reason)


def test_allowed_references_and_marked_files(tmp_path: Path) -> None:
    write(
        tmp_path,
        "0001_ok.sql",
        "CREATE TABLE t (id int, plan int REFERENCES public.plans (id),"
        " at timestamptz DEFAULT pg_catalog.now());",
    )
    write(
        tmp_path,
        "0002_idx.sql",
        "-- pgtenancy: no-transaction\nCREATE INDEX CONCURRENTLY i ON t (id);",
    )
    first, second = read_migration_dir(tmp_path)
    check_migration(first)
    check_migration(second)
    assert second.outside_transaction
    write(tmp_path, "bad-name.sql", "SELECT 1")
    with pytest.raises(MigrationCheckError, match=r"NNNN_name\.sql"):
        read_migration_dir(tmp_path)


def test_migrate_dir_registers_checks_and_refuses_changes(
    dsn: str, tenancy: Tenancy, tmp_path: Path
) -> None:
    tenancy.create_tenant("acme")
    d = tmp_path / "migrations"
    write(d, "0001_notes.sql", "CREATE TABLE note (id int PRIMARY KEY);")
    r = cli(dsn, "--dir", str(d), "--quiet")
    assert r.returncode == 0, r.stderr
    assert tenancy.get_tenant("acme").migration_version == "0001_notes"
    write(d, "0001_notes.sql", "CREATE TABLE note (id bigint PRIMARY KEY);")  # changed
    write(d, "0002_more.sql", "ALTER TABLE note ADD COLUMN body text;")
    r = cli(dsn, "--dir", str(d))
    assert r.returncode == 1
    assert "0001_notes.sql changed after it was registered" in r.stderr
    assert [m.version for m in tenancy.list_migrations()] == ["0001_notes"]  # nothing registered
    write(d, "0001_notes.sql", "CREATE TABLE note (id int PRIMARY KEY);")
    write(d, "0003_bad.sql", "SET search_path = x;")
    r = cli(dsn, "--dir", str(d))
    assert r.returncode == 1 and "0003_bad.sql:1: SET/RESET search_path" in r.stderr
    assert [m.version for m in tenancy.list_migrations()] == ["0001_notes"]
    (d / "0003_bad.sql").unlink()
    r = cli(dsn, "--dir", str(d), "--dry-run")
    assert r.stdout.splitlines()[0] == "acme: at 0001_notes, would apply 0002_more"
    assert [m.version for m in tenancy.list_migrations()] == ["0001_notes"]
    r = cli(dsn, "--dir", str(d), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert [(o["slug"], o["to_version"]) for o in out["migrated"]] == [("acme", "0002_more")]


def test_parallel_run_records_failures_and_reruns_apply_what_is_missing(
    dsn: str, tenancy: Tenancy, sql: SQL
) -> None:
    tenancy.add_migration("0001", "CREATE TABLE item (id int PRIMARY KEY, v int)")
    slugs = [f"t{i:02d}" for i in range(20)]
    for slug in slugs:
        tenancy.create_tenant(slug)
    sql("INSERT INTO tenant_t07.item VALUES (1, 1), (2, 1)")  # 0002 fails here
    tenancy.add_migration("0002", "CREATE UNIQUE INDEX item_v_key ON item (v)")
    r = cli(dsn, "--jobs", "2", "--quiet")
    assert r.returncode == 1
    assert "t07: FAILED at 0001 [PT006]" in r.stderr
    assert "19 migrated, 1 failed, 0 already current" in r.stdout
    assert "error: 1 of 20 tenants failed" in r.stderr
    assert sql("SELECT migration_version, count(*) FROM tenancy.tenants GROUP BY 1 ORDER BY 1") == [
        ("0001", 1),
        ("0002", 19),
    ]
    assert sql(
        "SELECT tenant_slug, payload->>'sqlstate', payload->>'to_version' FROM tenancy.events "
        "WHERE name = 'tenant_migration_failed'"
    ) == [("t07", "PT006", "0002")]
    sql("DELETE FROM tenant_t07.item WHERE id = 2")
    r = cli(dsn, "--jobs", "2", "--quiet")
    assert r.returncode == 0, r.stderr
    assert "1 migrated, 0 failed, 19 already current" in r.stdout
    # Each tenant was migrated to 0002 exactly once.
    assert sql("SELECT count(*) FROM tenancy.events WHERE name = 'tenant_migrated'") == [(20,)]


def test_canary_limit_and_lock_timeout(dsn: str, tenancy: Tenancy, sql: SQL) -> None:
    tenancy.add_migration("0001", "CREATE TABLE item (id int PRIMARY KEY)")
    for slug in ("acme", "globex", "initech", "hooli"):
        tenancy.create_tenant(slug)
    tenancy.add_migration("0002", "ALTER TABLE item ADD COLUMN v int")
    r = cli(dsn, "--tenants", "acme,nobody", "--quiet")
    assert r.returncode == 1 and "nobody: FAILED at - [PT003]" in r.stderr
    assert tenancy.get_tenant("acme").migration_version == "0002"
    assert tenancy.get_tenant("globex").migration_version == "0001"
    r = cli(dsn, "--limit", "1", "--quiet")
    assert "1 migrated" in r.stdout
    with psycopg.connect(dsn) as blocker:
        blocker.execute("LOCK TABLE tenant_initech.item IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        r = cli(dsn, "--lock-timeout", "300ms", "--quiet")
        elapsed = time.monotonic() - started
        blocker.rollback()
    assert r.returncode == 1
    assert "initech: FAILED at 0001 [PT006]" in r.stderr
    assert "lock timeout" in r.stderr
    assert elapsed < 30
    assert tenancy.get_tenant("hooli").migration_version == "0002"


def test_two_runs_never_migrate_one_tenant_twice(dsn: str, tenancy: Tenancy, sql: SQL) -> None:
    tenancy.add_migration("0001", "CREATE TABLE item (id int PRIMARY KEY)")
    for i in range(12):
        tenancy.create_tenant(f"c{i:02d}")
    tenancy.add_migration("0002", "SELECT pg_sleep(0.05); ALTER TABLE item ADD COLUMN v int")
    results: list[int] = []
    threads = [
        threading.Thread(
            target=lambda: results.append(
                cli(dsn, "--jobs", "2", "--quiet", "--lock-timeout", "30s").returncode
            )
        )
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [0, 0]
    assert sql("SELECT count(*) FROM tenancy.events WHERE name = 'tenant_migrated'") == [(12,)]


def test_kill_9_leaves_every_tenant_old_or_new_and_a_rerun_finishes(
    dsn: str, tenancy: Tenancy, sql: SQL
) -> None:
    tenancy.add_migration("0001", "CREATE TABLE item (id int PRIMARY KEY)")
    slugs = [f"k{i:02d}" for i in range(40)]
    for slug in slugs:
        tenancy.create_tenant(slug)
    tenancy.add_migration(
        "0002",
        "ALTER TABLE item ADD COLUMN a int; SELECT pg_sleep(0.05); "
        "ALTER TABLE item ADD COLUMN b int",
    )
    proc = subprocess.Popen(
        [*pgtenancy_cli(), "migrate", "--dsn", dsn, "--jobs", "2", "--quiet"],
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done = sql("SELECT count(*) FROM tenancy.tenants WHERE migration_version = '0002'")[0][0]
        if done >= 5:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    time.sleep(0.5)  # the server notices the dead connections and rolls them back
    state = sql(
        "SELECT t.migration_version, "
        "  (SELECT count(*) FROM information_schema.columns c "
        "    WHERE c.table_schema = t.schema_name AND c.table_name = 'item' "
        "      AND c.column_name IN ('a', 'b')) "
        "FROM tenancy.tenants t"
    )
    assert {(v, n) for v, n in state} <= {("0001", 0), ("0002", 2)}  # never half
    assert 5 <= sum(1 for v, _ in state if v == "0002") < 40
    r = cli(dsn, "--jobs", "2", "--quiet")
    assert r.returncode == 0, r.stderr
    assert sql("SELECT count(*) FROM tenancy.tenants WHERE migration_version = '0002'") == [(40,)]


def test_a_no_transaction_migration_runs_outside_one(
    dsn: str, tenancy: Tenancy, sql: SQL, tmp_path: Path
) -> None:
    d = tmp_path / "m"
    write(d, "0001_item.sql", "CREATE TABLE item (id int PRIMARY KEY, v int);")
    write(
        d,
        "0002_idx.sql",
        "-- pgtenancy: no-transaction\n"
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS item_v_idx ON item (v);",
    )
    write(d, "0003_col.sql", "ALTER TABLE item ADD COLUMN w int;")
    r = cli(dsn, "--dir", str(d), "--quiet")
    assert r.returncode == 0, r.stderr
    # In SQL, provisioning stops before 0002: the tenant stays provisioning ...
    sql("SELECT tenancy.create_tenant('acme')")
    assert tenancy.get_tenant("acme").migration_version == "0001_item"
    assert tenancy.get_tenant("acme").status == "provisioning"
    # ... the admin API finishes it with the fleet runner ...
    assert tenancy.create_tenant("globex").migration_version == "0003_col"
    sql("SELECT tenancy.create_tenant('initech')")
    r = cli(dsn, "--jobs", "2", "--quiet")  # ... and so does pgtenancy migrate
    assert r.returncode == 0, r.stderr
    assert "2 migrated, 0 failed, 1 already current" in r.stdout
    for schema in ("tenant_acme", "tenant_globex", "tenant_initech"):
        assert sql(
            "SELECT count(*) FROM pg_indexes WHERE schemaname = %s AND indexname = 'item_v_idx'",
            (schema,),
        ) == [(1,)]
        assert sql(
            "SELECT count(*) FROM information_schema.columns WHERE table_schema = %s "
            "AND column_name = 'w'",
            (schema,),
        ) == [(1,)]
    assert [(t.migration_version, t.status) for t in tenancy.list_tenants()] == [
        ("0003_col", "active")
    ] * 3
    # Provisioning announces the tenant once, when it is done, and no migrations.
    assert sql(
        "SELECT name, payload->>'migration_version' FROM tenancy.events "
        "WHERE tenant_slug = 'acme' ORDER BY id"
    ) == [("tenant_created", "0003_col")]
    assert sql("SHOW search_path") == [('"$user", public',)]


def test_migrate_dir_says_what_it_registered(dsn: str, tenancy: Tenancy, tmp_path: Path) -> None:
    """A new user sees the registration: counts on stderr, and a warning (not
    silence) for a directory without migration files."""
    d = tmp_path / "migrations"
    write(d, "0001_notes.sql", "CREATE TABLE note (id int PRIMARY KEY);")
    r = cli(dsn, "--dir", str(d), "--dry-run")
    assert r.returncode == 0 and "migrations: 1 to register, 0 current" in r.stderr, r.stderr
    assert tenancy.list_migrations() == []
    r = cli(dsn, "--dir", str(d))
    assert r.returncode == 0 and "migrations: 1 registered, 0 current" in r.stderr, r.stderr
    r = cli(dsn, "--dir", str(d))
    assert r.returncode == 0 and "migrations: 0 registered, 1 current" in r.stderr, r.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "README.txt").write_text("not a migration")
    r = cli(dsn, "--dir", str(empty))
    assert r.returncode == 0 and f"warning: {empty} holds no migration files" in r.stderr
    assert [m.version for m in tenancy.list_migrations()] == ["0001_notes"]


def test_the_whole_fleet_plan_matches_the_plan_of_every_slug(
    dsn: str, tenancy: Tenancy, sql: SQL
) -> None:
    """The whole-fleet plan reads only the tenants behind plus a count (a no-op
    run on 10,000 tenants returns no row); it must say what the per-slug plan,
    which reads every tenant's row, says: a fleet of current, behind, shared,
    deleted, never-migrated and provisioning tenants."""
    from pgtenancy.fleet import plan_fleet

    def both() -> tuple[Any, Any]:
        slugs = [r[0] for r in sql("SELECT slug FROM tenancy.tenants WHERE status <> 'deleted'")]
        whole = plan_fleet(dsn)
        each = plan_fleet(dsn, tenants=slugs)
        return whole, each

    def same() -> Any:
        whole, each = both()
        assert (whole.latest, whole.current, whole.deferred, whole.deleted) == (
            each.latest,
            each.current,
            each.deferred,
            [],
        )
        assert [(t.slug, t.from_version, t.versions) for t in whole.todo] == [
            (t.slug, t.from_version, t.versions) for t in each.todo
        ]
        return whole

    # No migration at all: every tenant (schema ones without a version) current.
    tenancy.create_tenant("bare")
    tenancy.create_tenant("shr", isolation="shared")
    assert same().current == 2
    tenancy.add_migration("0001", "CREATE TABLE note (id int PRIMARY KEY)")
    for slug in ("cur", "gone"):
        tenancy.create_tenant(slug)
    tenancy.drop_tenant("gone")
    tenancy.add_migration("0002", "ALTER TABLE note ADD COLUMN body text")
    tenancy.create_tenant("new")  # at 0002; "bare" has nothing, "cur" lacks 0002
    whole = same()
    assert [t.slug for t in whole.todo] == ["bare", "cur"]
    assert whole.current == 2  # new, shr
    assert plan_fleet(dsn, limit=1).todo[0].slug == "bare"
