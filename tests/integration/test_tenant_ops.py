"""Operating on one tenant as a unit (issue 15): rename, clone, resource
limits and size accounting, on a real server."""

from __future__ import annotations

import json
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql as pgsql

from conftest import CHINOOK, as_role, pgtenancy_cli, subprocess_env
from helpers import kit_roles
from pgtenancy import (
    CannotCloneTenant,
    InvalidTenantLimit,
    Tenancy,
    TenantExists,
    TenantNotFound,
    TenantRenamed,
)
from pgtenancy.errors import ImmutableTenantColumn
from pgtenancy.signals import LIFECYCLE_SIGNALS, tenant_renamed
from pgtenancy.sqlscript import Script, read_script

Sql = Callable[..., list[tuple[Any, ...]]]

CHINOOK_TABLES = (
    "album",
    "artist",
    "customer",
    "employee",
    "genre",
    "invoice",
    "invoice_line",
    "media_type",
    "playlist",
    "playlist_track",
    "track",
)

#: A table with a serial key and one with an identity key, next to Chinook.
EXTRA = """
CREATE TABLE note (id serial PRIMARY KEY, body text NOT NULL, parent int REFERENCES note);
CREATE TABLE tag (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name text,
                  upper_name text GENERATED ALWAYS AS (upper(name)) STORED);
"""


@cache
def chinook() -> Script:
    return read_script(Path(CHINOOK).read_text(encoding="utf-8"))


def load_chinook(dsn: str, slug: str) -> None:
    """Insert the Chinook data into tenant ``slug`` (entered as the app would)."""
    with psycopg.connect(dsn) as conn:
        conn.execute("SELECT tenancy.enter_tenant(%s)", (slug,))
        for stmt in chinook().of_kind("data"):
            conn.execute(stmt.sql)


def table_fingerprints(
    sql: Sql, schema: str, tables: tuple[str, ...]
) -> dict[str, tuple[int, str]]:
    """(row count, md5 of the sorted rows) of every table."""
    out = {}
    for table in tables:
        rows = sql(
            f"SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) "
            f'FROM "{schema}"."{table}" AS t'
        )
        out[table] = (int(rows[0][0]), str(rows[0][1]))
    return out


@pytest.fixture
def chinook_tenant(tenancy: Tenancy, dsn: str) -> str:
    """Schema tenant acme with Chinook's schema (+ EXTRA) and data."""
    tenancy.add_migration("0001_chinook", chinook().sql_of("ddl"))
    tenancy.add_migration("0002_extra", EXTRA)
    tenancy.create_tenant("acme", {"plan": "gold"})
    load_chinook(dsn, "acme")
    with psycopg.connect(dsn) as conn:
        conn.execute("SELECT tenancy.enter_tenant('acme')")
        conn.execute("INSERT INTO note (body) VALUES ('a'), ('b'), ('c')")
        conn.execute("UPDATE note SET parent = 1 WHERE id > 1")
        conn.execute("INSERT INTO tag (name) VALUES ('x'), ('y')")
    return "acme"


# Rename -----------------------------------------------------------------------


def test_rename_schema_tenant(tenancy: Tenancy, dsn: str, sql: Sql) -> None:
    tenancy.add_migration("0001", "CREATE TABLE note (id int PRIMARY KEY, body text)")
    before = tenancy.create_tenant("acme")
    sql("INSERT INTO tenant_acme.note VALUES (1, 'kept')")

    renamed = tenancy.rename_tenant("acme", "acme_corp")
    assert (renamed.id, renamed.slug, renamed.schema_name) == (
        before.id,
        "acme_corp",
        "tenant_acme_corp",
    )
    assert sql("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'tenant_acme%'") == [
        ("tenant_acme_corp",)
    ]
    with psycopg.connect(dsn) as conn:
        conn.execute("SELECT tenancy.enter_tenant('acme_corp')")
        assert conn.execute("SELECT body FROM note").fetchall() == [("kept",)]
    with psycopg.connect(dsn) as conn, pytest.raises(psycopg.Error) as caught:
        conn.execute("SELECT tenancy.enter_tenant('acme')")
    assert caught.value.sqlstate == "PT020"
    from pgtenancy import translate

    err = translate(caught.value)
    assert isinstance(err, TenantRenamed) and err.new_slug == "acme_corp"

    events = sql("SELECT name, tenant_slug, payload FROM tenancy.events ORDER BY id")
    assert events[-1][:2] == ("tenant_renamed", "acme_corp")
    assert events[-1][2] == {
        "old_slug": "acme",
        "old_schema": "tenant_acme",
        "new_slug": "acme_corp",
        "new_schema": "tenant_acme_corp",
    }
    assert LIFECYCLE_SIGNALS["tenant_renamed"] is tenant_renamed

    # A chain of renames: the first slug names the latest one.
    tenancy.rename_tenant("acme_corp", "acme_global")
    with psycopg.connect(dsn) as conn, pytest.raises(psycopg.Error) as caught:
        conn.execute("SELECT tenancy.enter_tenant('acme')")
    assert caught.value.diag.message_detail == "new slug: acme_global"
    # The old slug is free again for a new tenant, which then wins.
    tenancy.create_tenant("acme")
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT tenancy.enter_tenant('acme')").fetchone() != (before.id,)


def test_rename_refusals_change_nothing(tenancy: Tenancy, sql: Sql, hybrid: dict[str, str]) -> None:
    snapshot = sql("SELECT slug, schema_name FROM tenancy.tenants ORDER BY slug")
    events = len(sql("SELECT id FROM tenancy.events"))
    with pytest.raises(TenantExists):
        tenancy.rename_tenant("initech", "acme")
    sql("CREATE SCHEMA tenant_squatted")
    with pytest.raises(TenantExists):
        tenancy.rename_tenant("initech", "squatted")
    with pytest.raises(TenantNotFound):
        tenancy.rename_tenant("nobody", "somebody")
    with pytest.raises(psycopg.Error) as caught:
        sql("UPDATE tenancy.tenants SET slug = 'sneaky' WHERE slug = 'initech'")
    assert caught.value.sqlstate == ImmutableTenantColumn.sqlstate
    assert sql("SELECT slug, schema_name FROM tenancy.tenants ORDER BY slug") == snapshot
    assert len(sql("SELECT id FROM tenancy.events")) == events
    assert sql("SELECT count(*) FROM tenancy.tenant_renames") == [(0,)]
    # A shared tenant has no schema to rename; its rows follow its id.
    assert tenancy.rename_tenant("acme", "acme2").schema_name is None


def test_rename_waits_for_transactions_in_the_tenant(tenancy: Tenancy, dsn: str) -> None:
    tenancy.add_migration("0001", "CREATE TABLE note (id int PRIMARY KEY)")
    tenancy.create_tenant("acme")
    busy = psycopg.connect(dsn)
    busy.execute("SELECT tenancy.enter_tenant('acme')")
    busy.execute("SELECT count(*) FROM note")  # holds a lock on tenant_acme.note
    with psycopg.connect(dsn) as conn:
        conn.execute("SET lock_timeout = '200ms'")
        with pytest.raises(psycopg.errors.LockNotAvailable):
            conn.execute("SELECT tenancy.rename_tenant('acme', 'acme2')")
    busy.execute("INSERT INTO note VALUES (1)")  # its transaction still works
    busy.commit()
    busy.close()
    assert tenancy.rename_tenant("acme", "acme2").slug == "acme2"


# Clone ------------------------------------------------------------------------


def test_clone_chinook_schema_tenant(
    tenancy: Tenancy, dsn: str, sql: Sql, chinook_tenant: str
) -> None:
    tables = (*CHINOOK_TABLES, "note", "tag")
    source = table_fingerprints(sql, "tenant_acme", tables)
    assert source["track"][0] == 3503
    clone = tenancy.clone_tenant("acme", "acme_copy")
    assert clone.id != tenancy.get_tenant("acme").id
    assert clone.metadata == {"plan": "gold"} and clone.migration_version == "0002_extra"
    assert table_fingerprints(sql, "tenant_acme_copy", tables) == source
    assert table_fingerprints(sql, "tenant_acme", tables) == source
    # Sequences continue from the source's values, each on its own.
    with psycopg.connect(dsn) as conn:
        conn.execute("SELECT tenancy.enter_tenant('acme_copy')")
        assert conn.execute("INSERT INTO note (body) VALUES ('d') RETURNING id").fetchone() == (4,)
        assert conn.execute("INSERT INTO tag (name) VALUES ('z') RETURNING id").fetchone() == (3,)
    with psycopg.connect(dsn) as conn:
        conn.execute("SELECT tenancy.enter_tenant('acme')")
        assert conn.execute("INSERT INTO note (body) VALUES ('d') RETURNING id").fetchone() == (4,)
    name, payload = sql(
        "SELECT name, payload FROM tenancy.events WHERE tenant_slug = 'acme_copy' ORDER BY id"
    )[0]
    assert name == "tenant_created"
    assert payload["cloned_from"] == {"slug": "acme", "id": str(tenancy.get_tenant("acme").id)}


def test_clone_refused_leaves_nothing(tenancy: Tenancy, sql: Sql) -> None:
    tenancy.add_migration("0001", "CREATE TABLE note (id int PRIMARY KEY)")
    tenancy.create_tenant("acme")
    sql("CREATE TABLE tenant_acme.by_hand (id int)")  # not made by a migration
    with pytest.raises(CannotCloneTenant):
        tenancy.clone_tenant("acme", "acme_copy")
    sql("DROP TABLE tenant_acme.by_hand")
    tenancy.add_migration("0002", "CREATE TABLE later (id int)")  # acme stays at 0001
    events = len(sql("SELECT id FROM tenancy.events"))
    with pytest.raises(CannotCloneTenant, match="migrat"):
        tenancy.clone_tenant("acme", "acme_copy")
    with pytest.raises(TenantExists):
        tenancy.migrate_tenant("acme")
        tenancy.clone_tenant("acme", "acme")
    assert sql("SELECT slug FROM tenancy.tenants") == [("acme",)]
    assert sql("SELECT count(*) FROM pg_namespace WHERE nspname = 'tenant_acme_copy'") == [(0,)]
    assert len(sql("SELECT id FROM tenancy.events WHERE name = 'tenant_created'")) == 1
    assert len(sql("SELECT id FROM tenancy.events")) == events + 1  # the migration's event


def test_clone_shared_tenant_renumbers_sequence_keys(
    tenancy: Tenancy, dsn: str, sql: Sql, hybrid: dict[str, str], app_role: str
) -> None:
    sql("ALTER TABLE public.orders ADD COLUMN parent int REFERENCES public.orders")
    sql(
        "CREATE TABLE public.order_lines (id serial PRIMARY KEY, "
        "order_id int NOT NULL REFERENCES public.orders, qty int)"
    )
    tenancy.enable_rls("public.order_lines")
    with psycopg.connect(dsn) as conn:
        conn.execute("SELECT tenancy.enter_tenant('acme')")
        conn.execute("INSERT INTO orders (item) VALUES ('a'), ('b')")
        conn.execute("UPDATE orders SET parent = (SELECT min(id) FROM orders) WHERE item = 'b'")
        conn.execute("INSERT INTO order_lines (order_id, qty) SELECT id, 7 FROM orders")
    with psycopg.connect(dsn) as conn:
        conn.execute("SELECT tenancy.enter_tenant('globex')")
        conn.execute("INSERT INTO orders (item) VALUES ('g')")
    clone = tenancy.clone_tenant("acme", "acme_copy")
    assert clone.isolation == "shared"

    def view(slug: str) -> list[tuple[Any, ...]]:
        # As the application role, which the policies bind (a superuser skips them).
        with psycopg.connect(as_role(dsn, app_role)) as conn:
            conn.execute("SELECT tenancy.enter_tenant(%s)", (slug,))
            return conn.execute(
                "SELECT o.item, p.item, l.qty FROM orders o LEFT JOIN orders p ON p.id = o.parent "
                "JOIN order_lines l ON l.order_id = o.id ORDER BY o.item"
            ).fetchall()

    assert view("acme_copy") == view("acme") == [("a", None, 7), ("b", "a", 7)]
    ids = sql("SELECT tenant_id::text, count(*) FROM public.orders GROUP BY 1")
    assert dict(ids) == {hybrid["acme"]: 2, hybrid["globex"]: 1, str(clone.id): 2}


# Limits -----------------------------------------------------------------------


def test_tenant_timeout_cancels_its_query_while_another_tenant_runs(
    tenancy: Tenancy, dsn: str, sql: Sql
) -> None:
    tenancy.create_tenant("noisy")
    tenancy.create_tenant("calm")
    assert tenancy.set_tenant_limits("noisy", statement_timeout="50ms", work_mem="1MB") == {
        "statement_timeout": "50ms",
        "work_mem": "1MB",
    }
    results: dict[str, Any] = {}

    def run(slug: str, seconds: float) -> None:
        with psycopg.connect(dsn) as conn:
            conn.execute("SELECT tenancy.enter_tenant(%s)", (slug,))
            started = time.monotonic()
            try:
                conn.execute("SELECT pg_sleep(%s)", (seconds,))
                results[slug] = ("done", time.monotonic() - started)
            except psycopg.errors.QueryCanceled:
                results[slug] = ("cancelled", time.monotonic() - started)

    threads = [
        threading.Thread(target=run, args=("noisy", 2.0)),
        threading.Thread(target=run, args=("calm", 0.5)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results["noisy"][0] == "cancelled" and results["noisy"][1] < 1.0
    assert results["calm"][0] == "done" and results["calm"][1] >= 0.5
    # Transaction-local: nothing stays on the connection after the tenant's transaction.
    with psycopg.connect(dsn) as conn:
        conn.execute("SELECT tenancy.enter_tenant('noisy')")
        assert conn.execute("SHOW work_mem").fetchone() == ("1MB",)
        conn.commit()
        assert conn.execute("SHOW statement_timeout").fetchone() == ("0",)


def test_limit_refusals_change_nothing(tenancy: Tenancy, dsn: str, sql: Sql) -> None:
    tenancy.create_tenant("acme")
    tenancy.set_tenant_limits("acme", lock_timeout="1s")
    with pytest.raises(InvalidTenantLimit):
        tenancy.set_tenant_limits("acme", statement_timeout="soon")
    with pytest.raises(InvalidTenantLimit, match="maximum"):
        tenancy.set_tenant_limits("acme", work_mem="64GB")
    assert tenancy.tenant_limits("acme") == {"lock_timeout": "1s"}
    # The owner raises the maximum for the database.
    with pytest.raises(InvalidTenantLimit):
        tenancy.set_max_work_mem("lots")
    assert tenancy.set_max_work_mem("131072kB") == "128MB"
    with psycopg.connect(dsn, autocommit=True) as conn:
        Tenancy(conn).set_tenant_limits("acme", work_mem="100MB")
        assert Tenancy(conn).tenant_limits("acme") == {"work_mem": "100MB"}
    with pytest.raises(InvalidTenantLimit, match="maximum"):
        tenancy.set_tenant_limits("acme", work_mem="129MB")
    default = sql("SELECT reset_val || unit FROM pg_settings WHERE name = 'work_mem'")
    assert tenancy.set_max_work_mem(None) == default[0][0]
    assert tenancy.set_tenant_limits("acme") == {}
    assert sql("SELECT limits FROM tenancy.tenants") == [(None,)]


def test_cli_limits_and_rename_and_clone(dsn: str, tenancy: Tenancy) -> None:
    tenancy.create_tenant("acme")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*pgtenancy_cli(), *args, "--dsn", dsn],
            capture_output=True,
            text=True,
            env=subprocess_env(),
            check=False,
        )

    out = cli("limits", "acme", "--statement-timeout", "2s")
    assert out.returncode == 0 and "statement_timeout = 2s" in out.stdout
    assert "statement_timeout = 2s" in cli("limits", "acme").stdout
    bad = cli("limits", "acme", "--lock-timeout", "never")
    assert bad.returncode == 1 and bad.stderr.startswith("error: invalid tenant limit")
    assert cli("limits", "acme", "--clear").stdout.strip() == "acme: no limits"
    assert cli("tenant", "clone", "acme", "acme2").returncode == 0
    assert cli("tenant", "rename", "acme2", "beta").returncode == 0
    assert [t.slug for t in tenancy.list_tenants()] == ["acme", "beta"]
    sizes = cli("list", "--sizes", "--json")
    assert sizes.returncode == 0
    assert [json.loads(line)["slug"] for line in sizes.stdout.splitlines()] == ["acme", "beta"]


# Sizes ------------------------------------------------------------------------


def test_tenant_sizes_schema_and_shared(
    tenancy: Tenancy, dsn: str, sql: Sql, hybrid: dict[str, str]
) -> None:
    sql(
        "INSERT INTO tenant_initech.note SELECT g, repeat('x', 500) FROM generate_series(1, 2000) g"
    )
    with psycopg.connect(dsn) as conn:
        conn.execute("SELECT tenancy.enter_tenant('acme')")
        conn.execute("INSERT INTO orders (item) SELECT 'item' FROM generate_series(1, 300)")
    with psycopg.connect(dsn) as conn:
        conn.execute("SELECT tenancy.enter_tenant('globex')")
        conn.execute("INSERT INTO orders (item) SELECT 'item' FROM generate_series(1, 100)")
    sql("ANALYZE")
    sizes = {s.slug: s for s in tenancy.tenant_sizes()}
    assert set(sizes) == {"acme", "globex", "initech"}
    assert sizes["initech"].rows == 2000
    heap = sql("SELECT pg_total_relation_size('tenant_initech.note')")[0][0]
    assert sizes["initech"].bytes == heap > 1_000_000
    assert (sizes["acme"].rows, sizes["globex"].rows) == (300, 100)
    total = sql("SELECT pg_total_relation_size('public.orders')")[0][0]
    assert sizes["acme"].bytes + sizes["globex"].bytes == pytest.approx(total, rel=0.01)
    assert sizes["acme"].bytes == pytest.approx(3 * sizes["globex"].bytes, rel=0.01)


# A kit owner bound by its own policies ------------------------------------------


@pytest.fixture
def owner_dsn(empty_dsn: str) -> Iterator[str]:
    """A database whose kit owner is no superuser (CREATEROLE only), so FORCE
    ROW LEVEL SECURITY binds it."""
    name = f"pgtenancy_owner_{uuid.uuid4().hex[:8]}"
    ident = pgsql.Identifier(name)
    db = psycopg.conninfo.conninfo_to_dict(empty_dsn)["dbname"]
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        conn.execute(pgsql.SQL("CREATE ROLE {} LOGIN CREATEROLE").format(ident))
        conn.execute(
            pgsql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(pgsql.Identifier(str(db)), ident)
        )
        conn.execute(pgsql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(ident))
    try:
        yield as_role(empty_dsn, name)
    finally:
        with psycopg.connect(empty_dsn, autocommit=True) as conn:
            row = conn.execute(
                "SELECT migrator_role FROM tenancy.confinement"
                " WHERE to_regclass('tenancy.confinement') IS NOT NULL"
            ).fetchone()
            # The tenants' owner roles and their group role, then the migrator.
            roles = kit_roles(conn, None if row is None else str(row[0]))
            conn.execute("DROP SCHEMA IF EXISTS tenancy CASCADE")
            conn.execute(pgsql.SQL("DROP OWNED BY {} CASCADE").format(ident))
            for role in roles:
                conn.execute(pgsql.SQL("DROP OWNED BY {} CASCADE").format(pgsql.Identifier(role)))
                conn.execute(pgsql.SQL("DROP ROLE {}").format(pgsql.Identifier(role)))
            conn.execute(pgsql.SQL("DROP ROLE {}").format(ident))


def test_shared_clone_and_sizes_with_an_owner_bound_by_rls(owner_dsn: str, tmp_path: Path) -> None:
    from pgtenancy import install
    from pgtenancy.tenant_archive import export_tenant

    install(owner_dsn)
    tenancy = Tenancy(owner_dsn)
    with psycopg.connect(owner_dsn, autocommit=True) as conn:
        assert conn.execute(
            "SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = current_user"
        ).fetchone() == (False,)
        conn.execute("CREATE TABLE public.orders (id serial PRIMARY KEY, item text NOT NULL)")
    tenancy.enable_rls("public.orders")
    tenancy.add_migration("0001", "CREATE TABLE note (id serial PRIMARY KEY, body text)")
    acme = tenancy.create_tenant("acme", isolation="shared")
    tenancy.create_tenant("globex", isolation="shared")
    tenancy.create_tenant("initech")
    for slug, n in (("acme", 30), ("globex", 10)):
        with psycopg.connect(owner_dsn) as conn:
            conn.execute("SELECT tenancy.enter_tenant(%s)", (slug,))
            conn.execute(
                "INSERT INTO orders (item) SELECT 'o' || g FROM generate_series(1, %s) g", (n,)
            )
    clone = tenancy.clone_tenant("acme", "acme_copy")
    with psycopg.connect(owner_dsn) as conn:
        conn.execute("SELECT tenancy.enter_tenant('acme_copy')")
        assert conn.execute("SELECT count(*), count(DISTINCT item) FROM orders").fetchone() == (
            30,
            30,
        )
    sizes = {s.slug: s.rows for s in tenancy.tenant_sizes()}
    assert sizes == {"acme": 30, "acme_copy": 30, "globex": 10, "initech": 0}
    manifest = export_tenant(owner_dsn, "acme", tmp_path / "acme.pgtenancy")
    assert [t["rows"] for t in manifest["tables"]] == [30]
    assert clone.id != acme.id
