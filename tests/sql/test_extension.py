"""The extension (`make install-extension`, PGXS): CREATE EXTENSION gives the
same objects as `make install-sql`, and pg_dump/restore keeps the registry,
outbox and cursors (configuration tables marked with pg_extension_config_dump).

Skipped, with the reason, where the extension files are not installed into
the server's share directory (`make test` installs them when run as root).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import psycopg
import pytest

from catalog import catalog, differences
from helpers import ROOT, pg_dump, psql_restore
from pgtenancy import SQL_VERSION, Tenancy, TenancyError, uninstall
from pgtenancy.testing import fresh_database


def require_extension(dsn: str) -> None:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT default_version FROM pg_available_extensions WHERE name = 'pgtenancy'"
        ).fetchone()
    if row is None:
        pytest.skip("the pgtenancy extension is not installed (make install-extension, as root)")
    if row[0] != SQL_VERSION:
        pytest.skip(
            f"an older pgtenancy extension ({row[0]}) is installed; run make install-extension"
        )


def test_the_build_stamps_the_one_version(tmp_path: Path) -> None:
    """sql/Makefile builds the control file and the scripts with the version of
    pgtenancy/_version.py; no source file carries it."""
    assert (
        "default_version = '@PGTENANCY_VERSION@'"
        in (ROOT / "sql" / "pgtenancy.control.in").read_text()
    )
    build = tmp_path / "sql"
    subprocess.run(["cp", "-r", str(ROOT / "sql"), str(build)], check=True)
    (tmp_path / "python" / "pgtenancy").mkdir(parents=True)
    (tmp_path / "python" / "pgtenancy" / "_version.py").write_text('__version__ = "7.8.9"\n')
    for stale in build.glob("pgtenancy--*.sql"):
        stale.unlink()
    (build / "pgtenancy.control").unlink(missing_ok=True)
    result = subprocess.run(["make", "-s", "-C", str(build)], capture_output=True, text=True)
    if result.returncode != 0 and "pgxs" in result.stderr.lower():
        pytest.skip(f"PGXS is not available: {result.stderr.strip()}")
    assert result.returncode == 0, result.stderr
    assert "default_version = '7.8.9'" in (build / "pgtenancy.control").read_text()
    assert "SELECT '7.8.9'::pg_catalog.text" in (build / "pgtenancy--7.8.9.sql").read_text()
    # Each upgrade script says the version it upgrades to.
    assert "SELECT '0.2.0'::text" in (build / "pgtenancy--0.1.0--0.2.0.sql").read_text()
    for path in build.glob("pgtenancy--*.sql"):
        assert "@PGTENANCY_VERSION@" not in path.read_text(), path.name


def test_create_extension_matches_install_sql(empty_dsn: str, dsn: str) -> None:
    require_extension(empty_dsn)
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION pgtenancy")
        members = conn.execute(
            "SELECT count(*) FROM pg_depend d JOIN pg_extension e ON e.oid = d.refobjid "
            "WHERE e.extname = 'pgtenancy' AND d.deptype = 'e'"
        ).fetchone()
    assert members is not None and members[0] > 40
    diff = differences(catalog(empty_dsn), catalog(dsn))
    assert diff == [], "\n".join(diff)


def test_extension_survives_dump_and_restore(
    empty_dsn: str, pg_admin_dsn: str, tmp_path: Path
) -> None:
    require_extension(empty_dsn)
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION pgtenancy")
        conn.execute(
            "SELECT tenancy.add_migration('0001', 'CREATE TABLE note (id int PRIMARY KEY)')"
        )
        conn.execute("SELECT tenancy.create_tenant('acme')")
        conn.execute("SELECT tenancy.register_consumer('billing')")
        events = conn.execute("SELECT count(*) FROM tenancy.events").fetchone()
    dump = tmp_path / "dump.sql"
    pg_dump(empty_dsn, dump)
    assert "CREATE EXTENSION IF NOT EXISTS pgtenancy" in dump.read_text()
    with fresh_database(pg_admin_dsn, "pgtenancy_extrestore") as restored:
        result = psql_restore(restored, dump)
        assert result.returncode == 0, result.stderr
        tenancy = Tenancy(restored)
        assert [t.slug for t in tenancy.list_tenants()] == ["acme"]
        with psycopg.connect(restored) as conn:
            assert conn.execute("SELECT count(*) FROM tenancy.events").fetchone() == events
            assert conn.execute("SELECT name FROM tenancy.consumers").fetchall() == [("billing",)]
        created = tenancy.create_tenant("globex")  # the identity sequence came back too
        assert created.migration_version == "0001"
        with psycopg.connect(restored) as conn:
            ids = [r[0] for r in conn.execute("SELECT id FROM tenancy.events ORDER BY id")]
        assert len(ids) == len(set(ids))
        tenancy.engine.dispose()


def test_uninstall_of_an_extension_install_refuses_and_changes_nothing(empty_dsn: str) -> None:
    """Review: uninstall on a CREATE EXTENSION install failed half way through its
    (rolled back) checks with a raw "extension pgtenancy requires it"; it says
    what to do instead, before any SQL changes anything, with or without
    --drop-tenants."""
    require_extension(empty_dsn)
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION pgtenancy")
    Tenancy(empty_dsn).create_tenant("acme")
    before = catalog(empty_dsn)
    for drop_tenants in (False, True):
        with pytest.raises(TenancyError, match="installed as an extension") as info:
            uninstall(empty_dsn, drop_tenants=drop_tenants)
        assert "DROP EXTENSION" in str(info.value)
    assert differences(catalog(empty_dsn), before) == []
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        assert conn.execute(
            "SELECT count(*) FROM pg_namespace WHERE nspname = 'tenant_acme'"
        ).fetchone() == (1,)
