"""Tenant archives (issue 15): export from one database, import into another,
move; Chinook data, shared and hybrid tenants, refusals and failures that
leave the target unchanged."""

from __future__ import annotations

import subprocess
import tarfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from test_tenant_ops import CHINOOK_TABLES, EXTRA, chinook, load_chinook, table_fingerprints

from conftest import pgtenancy_cli, subprocess_env
from pgtenancy import Tenancy, TenantExists
from pgtenancy.errors import ArchiveRefused
from pgtenancy.tenant_archive import export_tenant, import_tenant, read_manifest
from pgtenancy.testing import fresh_database

Sql = Callable[..., list[tuple[Any, ...]]]
TABLES = (*CHINOOK_TABLES, "note", "tag")


@pytest.fixture
def target(pg_admin_dsn: str, template_db: str) -> Iterator[str]:
    """A second fresh database with pgtenancy installed."""
    with fresh_database(pg_admin_dsn, "pgtenancy_target", template=template_db) as d:
        yield d


def runner(dsn: str) -> Sql:
    def run(query: str, params: Any = None) -> list[tuple[Any, ...]]:
        with psycopg.connect(dsn, autocommit=True) as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else []

    return run


def state(dsn: str) -> list[Any]:
    """Everything an import could leave behind in a database."""
    run = runner(dsn)
    return [
        run("SELECT id, slug, status FROM tenancy.tenants ORDER BY slug"),
        run("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'tenant\\_%' ORDER BY 1"),
        run("SELECT count(*) FROM tenancy.events"),
    ]


def chinook_source(dsn: str) -> None:
    tenancy = Tenancy(dsn)
    tenancy.add_migration("0001_chinook", chinook().sql_of("ddl"))
    tenancy.add_migration("0002_extra", EXTRA)
    tenancy.create_tenant("acme", {"plan": "gold"})
    load_chinook(dsn, "acme")
    with psycopg.connect(dsn) as conn:
        conn.execute("SELECT tenancy.enter_tenant('acme')")
        conn.execute("INSERT INTO note (body) VALUES ('a'), ('b')")
        conn.execute("INSERT INTO tag (name) VALUES ('x')")


def test_chinook_schema_tenant_across_databases(
    dsn: str, target: str, sql: Sql, tmp_path: Path
) -> None:
    chinook_source(dsn)
    Tenancy(target).add_migration("0001_chinook", chinook().sql_of("ddl"))
    Tenancy(target).add_migration("0002_extra", EXTRA)
    source_rows = table_fingerprints(sql, "tenant_acme", TABLES)
    archive = tmp_path / "acme.pgtenancy"

    # Written while the tenant is in use: the archive is of one snapshot.
    stop = threading.Event()

    def writer() -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            while not stop.is_set():
                with conn.transaction():
                    conn.execute("SELECT tenancy.enter_tenant('acme')")
                    conn.execute("INSERT INTO note (body) VALUES ('busy')")

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        manifest = Tenancy(dsn).export_tenant("acme", archive)
    finally:
        stop.set()
        thread.join()
    assert manifest["tenant"]["slug"] == "acme" and manifest["kit_version"]
    assert [m["version"] for m in manifest["migrations"]] == ["0001_chinook", "0002_extra"]
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        ddl = tar.extractfile("schema.sql")
        assert ddl is not None and b"CREATE TABLE tenant_acme.album" in ddl.read()
    assert "manifest.json" in names and len([n for n in names if n.startswith("data/")]) == 13

    imported = Tenancy(target).import_tenant(archive)
    assert (str(imported.id), imported.slug, imported.metadata) == (
        manifest["tenant"]["id"],
        "acme",
        {"plan": "gold"},
    )
    at_target = table_fingerprints(runner(target), "tenant_acme", TABLES)
    expected = {t["table"]: (t["rows"], t["md5"]) for t in manifest["tables"]}
    assert {t: c for t, (c, _) in at_target.items()} == {t: c for t, (c, _) in expected.items()}
    # The writer adds notes meanwhile: the archive has those of its snapshot.
    assert at_target["note"] == expected["note"]
    for table in (*CHINOOK_TABLES, "tag"):  # nothing writes those: equal to the source
        assert at_target[table] == source_rows[table]
    assert at_target["track"][0] == 3503
    name, payload = runner(target)("SELECT name, payload FROM tenancy.events ORDER BY id")[-1]
    assert name == "tenant_created" and payload["imported"]["from_slug"] == "acme"
    with psycopg.connect(target) as conn:
        conn.execute("SELECT tenancy.enter_tenant('acme')")
        # Sequences are read after the snapshot: at or past every id in it.
        (top,) = conn.execute("SELECT max(id) FROM note").fetchone() or (0,)
        (next_id,) = conn.execute(
            "INSERT INTO note (body) VALUES ('n') RETURNING id"
        ).fetchone() or (0,)
        assert next_id > top
    # Under another slug, into a third database.
    with fresh_database(target, "pgtenancy_third") as third:
        from pgtenancy import install

        install(third)
        Tenancy(third).add_migration("0001_chinook", chinook().sql_of("ddl"))
        Tenancy(third).add_migration("0002_extra", EXTRA)
        assert (
            Tenancy(third).import_tenant(archive, as_slug="acme_eu").schema_name == "tenant_acme_eu"
        )
        assert table_fingerprints(runner(third), "tenant_acme_eu", TABLES) == at_target


def test_refusals_leave_the_target_unchanged(dsn: str, target: str, tmp_path: Path) -> None:
    source = Tenancy(dsn)
    source.add_migration("0001", "CREATE TABLE note (id int PRIMARY KEY, body text)")
    source.create_tenant("acme")
    archive = tmp_path / "acme.pgtenancy"
    source.export_tenant("acme", archive)
    dest = Tenancy(target)
    before = state(target)
    with pytest.raises(ArchiveRefused, match="behind"):
        dest.import_tenant(archive)
    dest.add_migration("0001", "CREATE TABLE note (id int PRIMARY KEY, body text NOT NULL)")
    before = state(target)
    with pytest.raises(ArchiveRefused, match="differ"):
        dest.import_tenant(archive)
    assert state(target) == before
    bad = tmp_path / "bad.pgtenancy"
    bad.write_bytes(b"not an archive")
    with pytest.raises(ArchiveRefused, match="not a pgtenancy tenant archive"):
        dest.import_tenant(bad)
    assert state(target) == before

    # Same migrations: the import works once; again is refused (id), and by slug.
    with fresh_database(target, "pgtenancy_same") as same:
        from pgtenancy import install

        install(same)
        Tenancy(same).add_migration("0001", "CREATE TABLE note (id int PRIMARY KEY, body text)")
        Tenancy(same).import_tenant(archive)
        before = state(same)
        with pytest.raises(ArchiveRefused, match="exists"):
            Tenancy(same).import_tenant(archive, as_slug="other")
        Tenancy(same).drop_tenant("acme", destroy_data=True)
        Tenancy(same).create_tenant("acme")
        before = state(same)
        with pytest.raises(TenantExists):
            Tenancy(same).import_tenant(archive)
        assert state(same) == before
        # Migrations past the archive's: migrate at the source first.
        Tenancy(same).add_migration("0002", "CREATE TABLE later (id int)")
        with pytest.raises(ArchiveRefused, match="migrate the tenant at the source"):
            Tenancy(same).import_tenant(archive, as_slug="acme2")
        assert state(same) == before


def test_failure_midway_leaves_the_target_unchanged(dsn: str, target: str, tmp_path: Path) -> None:
    chinook_source(dsn)
    Tenancy(target).add_migration("0001_chinook", chinook().sql_of("ddl"))
    Tenancy(target).add_migration("0002_extra", EXTRA)
    archive = tmp_path / "acme.pgtenancy"
    export_tenant(dsn, "acme", archive)
    before = state(target)
    with pytest.raises(RuntimeError, match="on purpose"):
        import_tenant(target, archive, _fail_after=5)
    assert state(target) == before
    # A damaged data file: COPY fails, or the checksum does not match.
    damaged = tmp_path / "damaged.pgtenancy"
    with tarfile.open(archive) as src, tarfile.open(damaged, "w:gz") as dst:
        for member in src.getmembers():
            data = src.extractfile(member)
            assert data is not None
            body = data.read()
            if member.name == read_manifest(archive)["tables"][4]["file"]:
                body = body[: len(body) // 2].rsplit(b"\n", 1)[0] + b"\n"
                member.size = len(body)
            import io

            dst.addfile(member, io.BytesIO(body))
    with pytest.raises(ArchiveRefused, match="the archive says"):
        import_tenant(target, damaged)
    assert state(target) == before


def test_shared_tenant_across_hybrid_databases(
    dsn: str, target: str, sql: Sql, hybrid: dict[str, str], tmp_path: Path
) -> None:
    with psycopg.connect(dsn) as conn:
        conn.execute("SELECT tenancy.enter_tenant('acme')")
        conn.execute("INSERT INTO orders (item) SELECT 'a' || g FROM generate_series(1, 50) g")
    with psycopg.connect(dsn) as conn:
        conn.execute("SELECT tenancy.enter_tenant('globex')")
        conn.execute("INSERT INTO orders (item) VALUES ('g')")
    # The target is hybrid too: its own tenants, the same shared table.
    dest = Tenancy(target)
    run = runner(target)
    dest.add_migration("0001", "CREATE TABLE note (id int PRIMARY KEY, body text)")
    run("CREATE TABLE public.orders (id serial PRIMARY KEY, item text NOT NULL)")
    dest.enable_rls("public.orders")
    dest.create_tenant("initech")
    archive = tmp_path / "acme.pgtenancy"
    manifest = export_tenant(dsn, "acme", archive)
    assert [(t["table"], t["rows"]) for t in manifest["tables"]] == [("orders", 50)]
    imported = dest.import_tenant(archive)
    assert imported.isolation == "shared" and str(imported.id) == hybrid["acme"]
    source_rows = sql(
        "SELECT id, item FROM public.orders WHERE tenant_id = %s ORDER BY id", (hybrid["acme"],)
    )
    assert run("SELECT id, item FROM public.orders ORDER BY id") == source_rows
    # The target's sequence went past the imported ids.
    with psycopg.connect(target) as conn:
        conn.execute("SELECT tenancy.enter_tenant('acme')")
        row = conn.execute("INSERT INTO orders (item) VALUES ('new') RETURNING id").fetchone()
        assert row is not None and row[0] > max(r[0] for r in source_rows)


def test_cli_move_and_resume(dsn: str, target: str, tmp_path: Path) -> None:
    source = Tenancy(dsn)
    source.add_migration("0001", "CREATE TABLE note (id serial PRIMARY KEY, body text)")
    Tenancy(target).add_migration("0001", "CREATE TABLE note (id serial PRIMARY KEY, body text)")
    tenant = source.create_tenant("acme")
    runner(dsn)("INSERT INTO tenant_acme.note (body) SELECT 'n' FROM generate_series(1, 100)")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*pgtenancy_cli(), "tenant", *args],
            capture_output=True,
            text=True,
            env=subprocess_env(),
            check=False,
        )

    out = cli("move", "acme", "--dsn", dsn, "--to", target)
    assert out.returncode == 0, out.stderr
    assert source.get_tenant("acme").status == "deleted"
    moved = Tenancy(target).get_tenant("acme")
    assert (moved.id, moved.status) == (tenant.id, "active")
    assert runner(target)("SELECT count(*) FROM tenant_acme.note") == [(100,)]
    events = [r[0] for r in runner(dsn)("SELECT name FROM tenancy.events ORDER BY id")]
    assert events[-2:] == ["tenant_suspended", "tenant_deleted"]
    # Done already: a rerun changes nothing.
    assert cli("move", "acme", "--dsn", dsn, "--to", target).returncode == 0
    assert runner(target)("SELECT count(*) FROM tenancy.tenants") == [(1,)]
    # Export / import by hand through the CLI.
    archive = tmp_path / "x.pgtenancy"
    source.create_tenant("beta")
    assert cli("export", "beta", "--dsn", dsn, "--out", str(archive)).returncode == 0
    out = cli("import", str(archive), "--as", "gamma", "--dsn", target)
    assert out.returncode == 0 and out.stdout.startswith("imported gamma")
    again = cli("import", str(archive), "--dsn", target)
    assert again.returncode == 1 and again.stderr.startswith("error: tenant id")


def test_move_resumes_after_a_failed_import(dsn: str, target: str) -> None:
    from pgtenancy.tenant_archive import move_tenant

    source = Tenancy(dsn)
    source.add_migration("0001", "CREATE TABLE note (id int PRIMARY KEY)")
    source.create_tenant("acme")
    # The target lacks the migration: the import is refused, the source stays suspended.
    with pytest.raises(ArchiveRefused):
        move_tenant(dsn, "acme", target)
    assert source.get_tenant("acme").status == "suspended"
    assert Tenancy(target).list_tenants() == []
    Tenancy(target).add_migration("0001", "CREATE TABLE note (id int PRIMARY KEY)")
    move_tenant(dsn, "acme", target)
    assert source.get_tenant("acme").status == "deleted"
    assert Tenancy(target).get_tenant("acme").status == "active"
