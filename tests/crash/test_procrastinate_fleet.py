"""A real history on a fleet: procrastinate's migration series (its PyPI wheel,
``make procrastinate``) registered from its own file names, applied to many
tenants by the fleet runner, which is killed (SIGKILL) mid-flight and rerun;
tenants created afterwards get the same catalog as the migrated ones.

procrastinate's series needs two adaptations, both by the documented routes:
its first file starts with ``CREATE EXTENSION IF NOT EXISTS plpgsql``, which
goes to a shared migration (a tenant migration may not create extensions);
and from ``02.14.01`` on it uses an enum value added by an earlier file, which
needs commit boundaries between migrations (issue 10, item 2, not done), so
the series runs through ``02.08.00`` here (28 of its 38 files)."""

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
#: The files that apply without commit boundaries between migrations.
THROUGH = "02.08.00"
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
        if path.name[: len(THROUGH)] <= THROUGH:
            shutil.copy(path, tenant / path.name)
    initial = tenant / "00.00.00_01_initial.sql"
    first, rest = initial.read_text().split("\n", 1)
    assert first.startswith("CREATE EXTENSION IF NOT EXISTS plpgsql")
    initial.write_text(rest)
    (shared / "0001_plpgsql.sql").write_text(first + "\n")
    return tenant, shared


def schema_catalog(sql: SQL, schema: str) -> dict[tuple[str, str], str]:
    rows = sql(SCHEMA_CATALOG, {"schema": schema})
    return {
        (kind, name.replace(schema, "<tenant>")): str(value).replace(schema, "<tenant>")
        for kind, name, value in rows
    }


def test_procrastinate_on_a_fleet_survives_kill_9_and_new_tenants_match(
    dsn: str, tenancy: Tenancy, sql: SQL, tmp_path: Path
) -> None:
    tenant_dir, shared_dir = procrastinate_series(tmp_path)
    slugs = [f"p{i:02d}" for i in range(30)]
    for slug in slugs:
        tenancy.create_tenant(slug)
    apply_shared_migrations(dsn, shared_dir)
    synced = sync_migration_dir(dsn, tenant_dir)
    assert len(synced.registered) == 28
    latest = synced.registered[-1]
    assert latest == "0002.0008.0000_01_add_additional_params_to_retry_job"

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
    state = sql(
        "SELECT t.migration_version, (SELECT count(*) FROM pg_class AS c "
        "  WHERE c.relnamespace = t.schema_name::regnamespace) FROM tenancy.tenants AS t"
    )
    versions = {v for v, _ in state}
    assert versions <= {None, latest}  # every tenant old or new, never half
    assert 4 <= sum(1 for v, _ in state if v == latest) < 30
    assert {n for v, n in state if v is None} == {0}  # the old ones are untouched
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
    assert sql("SELECT count(*) FROM tenancy.events WHERE name = 'tenant_migrated'") == [(30,)]

    # A tenant created after the whole series is registered matches one
    # migrated by the runner, object for object.
    tenancy.create_tenant("fresh")
    assert tenancy.get_tenant("fresh").migration_version == latest
    migrated = schema_catalog(sql, "tenant_p00")
    assert len(migrated) > 50
    assert differences(schema_catalog(sql, "tenant_fresh"), migrated) == []
    # procrastinate works in it: defer a job through its own function.
    with psycopg.connect(dsn) as conn:
        conn.execute("SET search_path = tenant_fresh, public")
        job = conn.execute(
            "SELECT procrastinate_defer_job('default', 'task', 0, NULL, NULL, '{}', NULL)"
        ).fetchone()
        assert job is not None and job[0] > 0
