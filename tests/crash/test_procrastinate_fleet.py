"""A real history on a fleet: procrastinate's migration series (its PyPI wheel,
``make procrastinate``) registered from its own file names, applied to many
tenants by the fleet runner, which is killed (SIGKILL) mid-flight and rerun;
tenants created afterwards get the same catalog as the migrated ones.

procrastinate's first file starts with ``CREATE EXTENSION IF NOT EXISTS
plpgsql``, which goes to a shared migration (a tenant migration may not create
extensions: the documented route). From ``02.14.01`` on the series uses an
enum value an earlier file added, so it needs commit boundaries: every tenant
migrates one migration per transaction, and a killed run leaves each tenant
at some registered version, never between two."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from conftest import pgtenancy_cli, subprocess_env
from pgtenancy import Tenancy
from pgtenancy.fleet import sync_migration_dir
from pgtenancy.shared_migrations import apply_shared_migrations

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from catalog import CATALOG, differences

SQL = Callable[..., list[tuple[Any, ...]]]
ROOT = Path(__file__).resolve().parents[2]
PROCRASTINATE = ROOT / ".cache" / "procrastinate-3.10.0" / "migrations"
#: One tenant schema's catalog: the kit's own catalog query pointed at it (its
#: first column made text: as ``name`` it would cut every key at 63 bytes).
SCHEMA_CATALOG = CATALOG.replace("'tenancy'::regnamespace", "%(schema)s::regnamespace").replace(
    "SELECT 'schema', n.nspname,", "SELECT 'schema', n.nspname::text,"
)


def procrastinate_series(tmp_path: Path) -> tuple[Path, Path]:
    if not PROCRASTINATE.is_dir():
        subprocess.run(["make", "-C", str(ROOT), "procrastinate"], capture_output=True)
    if not any(PROCRASTINATE.glob("*.sql")):
        pytest.skip("procrastinate's migrations could not be downloaded (make procrastinate)")
    tenant, shared = tmp_path / "tenant", tmp_path / "shared"
    tenant.mkdir()
    shared.mkdir()
    for path in sorted(PROCRASTINATE.glob("*.sql")):
        shutil.copy(path, tenant / path.name)
    initial = tenant / "00.00.00_01_initial.sql"
    first, rest = initial.read_text().split("\n", 1)
    assert first.startswith("CREATE EXTENSION IF NOT EXISTS plpgsql")
    initial.write_text(rest)
    (shared / "0001_plpgsql.sql").write_text(first + "\n")
    return tenant, shared


def schema_catalog(sql: SQL, schema: str) -> dict[tuple[str, str], str]:
    rows = sql(SCHEMA_CATALOG, {"schema": schema})
    # Each tenant's objects belong to its own owner role (tenancy.tenant_role).
    role = str(sql("SELECT tenancy.tenant_role(%s)", (schema,))[0][0])

    def normal(text: str) -> str:
        return text.replace(role, "<tenant role>").replace(schema, "<tenant>")

    return {
        (kind, normal(name)): normal(str(value))
        for kind, name, value in rows
        if kind != "schema"  # the kit's schema row, the same for all
    }


def test_procrastinate_on_a_fleet_survives_kill_9_and_new_tenants_match(
    dsn: str, tenancy: Tenancy, sql: SQL, tmp_path: Path
) -> None:
    tenant_dir, shared_dir = procrastinate_series(tmp_path)
    slugs = [f"p{i:02d}" for i in range(30)]
    for slug in slugs:
        tenancy.create_tenant(slug)
    apply_shared_migrations(dsn, shared_dir)
    synced = sync_migration_dir(dsn, tenant_dir)  # enum values used later included
    assert len(synced.registered) == 38
    latest = synced.registered[-1]
    assert latest == "0003.0004.0000_50_post_add_retry_failed_job_procedure"

    proc = subprocess.Popen(
        [*pgtenancy_cli(), "migrate", "--dsn", dsn, "--jobs", "2", "--quiet"],
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        done = sql("SELECT count(*) FROM tenancy.tenants WHERE migration_version = %s", (latest,))
        if done[0][0] >= 4:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    time.sleep(0.5)  # the server notices the dead connections and rolls them back
    state = sql("SELECT slug, migration_version, schema_name FROM tenancy.tenants")
    assert {v for _, v, _ in state} <= {None, *synced.registered}
    assert 4 <= sum(1 for _, v, _ in state if v == latest) < 30
    # Never between two versions: tenants at one version have one catalog.
    by_version: dict[str | None, dict[tuple[str, str], str]] = {}
    for _, version, schema in state:
        got = schema_catalog(sql, schema)
        assert differences(got, by_version.setdefault(version, got)) == [], version
    assert by_version.get(None, {}) == {}  # the untouched ones are empty
    r = subprocess.run(
        [*pgtenancy_cli(), "migrate", "--dsn", dsn, "--jobs", "2", "--quiet"],
        capture_output=True,
        text=True,
        env=subprocess_env(),
    )
    assert r.returncode == 0, r.stderr
    assert sql("SELECT migration_version, count(*) FROM tenancy.tenants GROUP BY 1") == [
        (latest, 30)
    ]
    # One event per committed step, each step once.
    steps = sql(
        "SELECT tenant_slug, payload->>'to_version' FROM tenancy.events "
        "WHERE name = 'tenant_migrated'"
    )
    assert len(steps) == len(set(steps)) == 30 * 38

    # A tenant created after the whole series is registered matches one
    # migrated by the runner, object for object.
    tenancy.create_tenant("fresh")
    assert tenancy.get_tenant("fresh").migration_version == latest
    migrated = schema_catalog(sql, "tenant_p00")
    assert len(migrated) > 50
    assert differences(schema_catalog(sql, "tenant_fresh"), migrated) == []
    # procrastinate works in it: a job deferred, then fetched by its function.
    with psycopg.connect(dsn) as conn:
        conn.execute("SET search_path = tenant_fresh, public")
        conn.execute(
            "INSERT INTO procrastinate_jobs (queue_name, task_name, args) "
            "VALUES ('default', 'task', '{}')"
        )
        job = conn.execute(
            "SELECT status::text FROM procrastinate_fetch_job_v2(ARRAY['default'], NULL)"
        ).fetchone()
        assert job == ("doing",)
