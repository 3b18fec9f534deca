"""Install twice changes nothing; uninstall removes everything; errors leave nothing."""

from __future__ import annotations

import re

import psycopg
import pytest

from catalog import catalog, differences
from helpers import ROOT, run_cli, snapshot, subprocess_env
from pgtenancy import (
    SQL_VERSION,
    NewerVersionInstalled,
    NotInstalled,
    Tenancy,
    TenancyError,
    TenantsStillRegistered,
    install,
    installed_version,
    uninstall,
)
from pgtenancy.installer import install_files

SQL_DIR = ROOT / "sql"


def test_install_twice_changes_nothing(empty_dsn: str) -> None:
    assert installed_version(empty_dsn) is None
    assert install(empty_dsn) == SQL_VERSION
    tenancy = Tenancy(empty_dsn)
    tenancy.add_migration("0001", "CREATE TABLE t (x int)")
    tenancy.create_tenant("acme")
    before = snapshot(empty_dsn)
    full_before = catalog(empty_dsn)
    with psycopg.connect(empty_dsn) as conn:
        data_before = conn.execute(
            "SELECT (SELECT json_agg(t ORDER BY slug) FROM tenancy.tenants t)::text, "
            "(SELECT count(*) FROM tenancy.events), (SELECT count(*) FROM tenancy.migrations)"
        ).fetchone()
    assert install(empty_dsn) == SQL_VERSION
    assert snapshot(empty_dsn) == before
    assert differences(catalog(empty_dsn), full_before) == []
    with psycopg.connect(empty_dsn) as conn:
        assert (
            conn.execute(
                "SELECT (SELECT json_agg(t ORDER BY slug) FROM tenancy.tenants t)::text, "
                "(SELECT count(*) FROM tenancy.events), (SELECT count(*) FROM tenancy.migrations)"
            ).fetchone()
            == data_before
        )
        assert conn.execute("SELECT tenancy.version()").fetchone() == (SQL_VERSION,)


def test_uninstall_refuses_while_tenants_exist_then_removes_everything(empty_dsn: str) -> None:
    install(empty_dsn)
    tenancy = Tenancy(empty_dsn)
    tenancy.create_tenant("acme")
    with pytest.raises(TenantsStillRegistered) as info:
        uninstall(empty_dsn)
    assert info.value.sqlstate == "PT009"
    assert installed_version(empty_dsn) == SQL_VERSION
    assert [t.slug for t in tenancy.list_tenants()] == ["acme"]
    uninstall(empty_dsn, drop_tenants=True)
    assert installed_version(empty_dsn) is None
    with psycopg.connect(empty_dsn) as conn:
        assert conn.execute(
            "SELECT count(*) FROM pg_namespace WHERE nspname IN ('tenancy', 'tenant_acme')"
        ).fetchone() == (0,)
    uninstall(empty_dsn)  # nothing installed: a no-op
    with pytest.raises(NotInstalled):
        tenancy.list_tenants()


def test_uninstall_without_tenants(empty_dsn: str) -> None:
    install(empty_dsn)
    uninstall(empty_dsn)
    assert installed_version(empty_dsn) is None


def test_failed_install_changes_nothing(empty_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from pgtenancy import installer as install_module

    good = install_module.install_script()
    broken = good + "\nCREATE TABLE tenancy.oops (;\n"
    monkeypatch.setattr("pgtenancy.installer.install_script", lambda: broken)
    with pytest.raises(psycopg.errors.SyntaxError):
        install(empty_dsn)
    assert installed_version(empty_dsn) is None
    with psycopg.connect(empty_dsn) as conn:
        assert conn.execute(
            "SELECT count(*) FROM pg_namespace WHERE nspname = 'tenancy'"
        ).fetchone() == (0,)


def set_installed_version(dsn: str, version: str) -> None:
    with psycopg.connect(dsn) as conn:
        conn.execute(
            "CREATE OR REPLACE FUNCTION tenancy.version() RETURNS text "
            f"LANGUAGE sql IMMUTABLE AS $$ SELECT '{version}'::text $$"
        )


def test_refuses_to_downgrade(empty_dsn: str) -> None:
    install(empty_dsn)
    set_installed_version(empty_dsn, "9.0.0")
    before = catalog(empty_dsn)
    with pytest.raises(NewerVersionInstalled, match="refusing to install the older") as info:
        install(empty_dsn)
    assert info.value.sqlstate == "PT018"
    assert f"9.0.0 is installed; refusing to install the older {SQL_VERSION}" in str(info.value)
    assert installed_version(empty_dsn) == "9.0.0"
    assert differences(catalog(empty_dsn), before) == []


def test_refuses_a_version_without_an_upgrade_path(empty_dsn: str) -> None:
    install(empty_dsn)
    set_installed_version(empty_dsn, "0.0.9")
    before = catalog(empty_dsn)
    with pytest.raises(TenancyError, match=r"no upgrade path from pgtenancy 0\.0\.9"):
        install(empty_dsn)
    assert differences(catalog(empty_dsn), before) == []


def test_schema_files_carry_no_version_and_no_upgrade_history() -> None:
    for path in install_files():
        text = path.read_text()
        assert not re.search(r"\b0\.\d+\.\d+\b", text), path.name
        assert not re.search(r"^DROP FUNCTION", text, re.MULTILINE), path.name
        assert "ADD COLUMN IF NOT EXISTS" not in text, path.name
        assert "to_regprocedure" not in text and "to_regclass" not in text, path.name


def test_schema_files_use_only_objects_of_themselves_and_earlier_files() -> None:
    """No file calls a function or names a table of a later file (no runtime
    guards needed): every tenancy.name a file mentions is defined by then."""
    defined: set[str] = set()
    created = re.compile(
        r"^\s*CREATE (?:OR REPLACE )?(?:FUNCTION|PROCEDURE|TABLE(?: IF NOT EXISTS)?|VIEW)"
        r" tenancy\.(\w+)",
        re.MULTILINE,
    )
    for path in install_files():
        text = path.read_text()
        mine = set(created.findall(text))
        # Comments are not uses; string literals are (EXECUTE format('GRANT ...')).
        code = re.sub(r"('(?:[^']|'')*')|--[^\n]*", lambda m: m.group(1) or "", text)
        used = set(re.findall(r"\btenancy\.(\w+)", code))
        # The identity sequence of tenancy.events (001); an advisory lock key.
        used -= {"events_id_seq", "tenant"}
        if path.name == "006_doctor.sql":
            used.discard("grant_app_role")  # named in a finding's advice, not called
        later = sorted(used - defined - mine)
        assert later == [], f"{path.name} uses objects of later files: {later}"
        defined |= mine
    assert {"grant_app_role", "grant_listener_role"} <= defined


def test_make_install_sql_and_uninstall_sql(empty_dsn: str) -> None:
    import subprocess

    root = ROOT
    env = subprocess_env()
    for _ in range(2):
        r = subprocess.run(
            ["make", "-s", "install-sql", f"DATABASE_URL={empty_dsn}"],
            cwd=root,
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        assert r.returncode == 0, r.stderr
        assert f"pgtenancy {SQL_VERSION} installed" in r.stdout
    r = run_cli("version", "--dsn", empty_dsn)
    assert r.stdout.strip() == SQL_VERSION
    r = subprocess.run(
        ["make", "-s", "uninstall-sql", f"DATABASE_URL={empty_dsn}"],
        cwd=root,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert installed_version(empty_dsn) is None
    r = subprocess.run(
        ["make", "-s", "install-sql"],
        cwd=root,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert r.returncode == 2
    assert "usage: make install-sql DATABASE_URL=" in r.stderr


def test_uninstall_refuses_while_user_objects_use_the_kit(empty_dsn: str) -> None:
    install(empty_dsn)
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        conn.execute("CREATE VIEW public.whoami AS SELECT tenancy.current_tenant_id() AS id")
    with pytest.raises(TenantsStillRegistered, match="view whoami"):
        uninstall(empty_dsn)
    assert installed_version(empty_dsn) == SQL_VERSION
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        conn.execute("DROP VIEW public.whoami")
    uninstall(empty_dsn)
    assert installed_version(empty_dsn) is None


def test_uninstall_unguards_shared_tables_and_revokes_the_app_role(
    dsn: str, app_role: str, hybrid: dict[str, str]
) -> None:
    from helpers import as_role

    with psycopg.connect(dsn) as conn:
        conn.execute("SELECT tenancy.enter_tenant('acme')")
        conn.execute("INSERT INTO public.orders (item) VALUES ('anvil')")
    uninstall(dsn, drop_tenants=True)
    with psycopg.connect(dsn) as conn:
        assert conn.execute(
            "SELECT relrowsecurity, (SELECT count(*) FROM pg_policy WHERE polrelid = c.oid) "
            "FROM pg_class c WHERE oid = 'public.orders'::regclass"
        ).fetchone() == (False, 0)
        assert conn.execute("SELECT count(*) FROM public.orders").fetchone() == (1,)
    with (
        psycopg.connect(as_role(dsn, app_role)) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        conn.execute("SELECT * FROM public.orders")
