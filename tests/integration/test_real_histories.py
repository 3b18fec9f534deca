"""A second real history (issue 10): graphile-worker's 19 numbered SQL
migrations (``sql/000001.sql`` ... of its npm package, ``make
graphile-worker``), taken as a new user would: its ``:GRAPHILE_WORKER_SCHEMA.``
placeholder cut so each file is tenant-local, then registered with
``pgtenancy migrate --dir`` (``<version>.sql`` naming), half of it first with
tenants created and holding jobs, the rest migrated over the fleet (its
000011 moves the jobs into new tables), a baseline squashed, and a tenant
from it compared with the replayed ones."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from conftest import pgtenancy_cli, subprocess_env
from pgtenancy import Tenancy

SQL = Callable[..., list[tuple[Any, ...]]]
ROOT = Path(__file__).resolve().parents[2]
GRAPHILE_WORKER = ROOT / ".cache" / "graphile-worker-0.17.3" / "sql"


def graphile_worker_files() -> list[Path]:
    if not GRAPHILE_WORKER.is_dir():
        subprocess.run(["make", "-C", str(ROOT), "graphile-worker"], capture_output=True)
    found = sorted(GRAPHILE_WORKER.glob("*.sql"))
    if not found:
        pytest.skip("graphile-worker's migrations could not be downloaded (make graphile-worker)")
    return found


def tenant_local(files: list[Path], directory: Path) -> Path:
    """The files with graphile-worker's schema placeholder cut (what its
    migrator replaces with the worker schema): tenant-local SQL."""
    directory.mkdir()
    for f in files:
        text = f.read_text("utf-8").replace(":GRAPHILE_WORKER_SCHEMA.", "")
        (directory / f.name).write_text(text, "utf-8")
    return directory


def cli(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*pgtenancy_cli(), *args, "--dsn", dsn],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=600,
    )


def catalog(sql: SQL, schema: str) -> set[tuple[Any, ...]]:
    return set(sql("SELECT * FROM tenancy.schema_catalog(%s)", (schema,)))


def add_job(dsn: str, slug: str, task: str) -> None:
    with psycopg.connect(dsn) as conn:
        conn.execute("SELECT tenancy.enter_tenant(%s)", (slug,))
        conn.execute("SELECT add_job(%s, '{}'::json)", (task,))


def test_raw_files_are_refused_with_file_and_line(
    dsn: str, tenancy: Tenancy, tmp_path: Path
) -> None:
    files = graphile_worker_files()
    raw = tmp_path / "raw"
    raw.mkdir()
    for f in files:
        (raw / f.name).write_bytes(f.read_bytes())
    r = cli(dsn, "migrate", "--quiet", "--dir", str(raw))
    assert r.returncode == 1
    assert "000001.sql:3: does not parse" in r.stderr
    assert tenancy.list_migrations() == []


def test_graphile_worker_history_on_a_fleet_and_a_baseline(
    dsn: str, tenancy: Tenancy, sql: SQL, tmp_path: Path
) -> None:
    files = graphile_worker_files()
    assert [f.name for f in files] == [f"{n:06d}.sql" for n in range(1, 20)]
    full = tenant_local(files, tmp_path / "all")
    half = tenant_local(files[:10], tmp_path / "half")

    r = cli(dsn, "migrate", "--quiet", "--dir", str(half))
    assert r.returncode == 0, r.stderr
    for slug in ("acme", "globex", "initech"):
        tenancy.create_tenant(slug)
    add_job(dsn, "acme", "send_email")
    add_job(dsn, "acme", "resize")
    assert {t.migration_version for t in tenancy.list_tenants()} == {"000010"}

    r = cli(dsn, "migrate", "--quiet", "--jobs", "2", "--dir", str(full))
    assert r.returncode == 0, r.stderr
    assert "3 migrated, 0 failed, 0 already current of 3" in r.stdout
    assert {t.migration_version for t in tenancy.list_tenants()} == {"000019"}
    # 000011 moved the jobs into _private_jobs, per tenant.
    assert sql("SELECT count(*) FROM tenant_acme._private_jobs") == [(2,)]
    assert sql("SELECT count(*) FROM tenant_globex._private_jobs") == [(0,)]

    tenancy.create_tenant("replayed")
    migrated = catalog(sql, "tenant_globex")
    assert len(migrated) > 100
    assert catalog(sql, "tenant_replayed") == migrated

    r = cli(dsn, "migrate", "squash", "--through", "000019")
    assert r.returncode == 0, r.stderr
    assert "19 migrations in one script" in r.stdout
    tenancy.create_tenant("hooli")
    assert catalog(sql, "tenant_hooli") == migrated
    add_job(dsn, "hooli", "send_email")
    assert sql("SELECT identifier FROM tenant_hooli._private_tasks") == [("send_email",)]
    # The directory is still recognised as registered.
    r = cli(dsn, "migrate", "--quiet", "--dir", str(full))
    assert r.returncode == 0, r.stderr
    assert "0 migrated, 0 failed, 5 already current of 5" in r.stdout
