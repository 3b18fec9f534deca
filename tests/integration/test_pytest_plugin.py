"""pgtenancy.testing as a pytest plugin (issue 12, item 5): an inner pytest
session in a temporary directory finds the fixtures through the pytest11
entry point, with a 10-table migration, and proves every tenant a test gets
is fresh: no rows, sequences restarted, no objects, domains, limits or
metadata left by the test that had it before; a tenant whose schema a test
changed is never handed out again. The cost per test is measured by
bench/bench_tenant_factory.py."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from conftest import subprocess_env
from pgtenancy import Tenancy, install, tenant_connection
from pgtenancy.testing import create_database, drop_database
from pgtenancy.testing.plugin import TenantPool

CONFTEST = """\
import pytest

TABLES = 10


@pytest.fixture(scope="session")
def pgtenancy_migrations():
    ddl = "; ".join(
        f"CREATE TABLE t{i} (id bigserial PRIMARY KEY, body text NOT NULL, "
        f"parent bigint REFERENCES t{i - 1} (id))" if i else
        "CREATE TABLE t0 (id bigserial PRIMARY KEY, body text NOT NULL, parent bigint)"
        for i in range(TABLES)
    )
    # A foreign key added later points at a newer table.
    late = (
        "CREATE TABLE late_parent (id bigserial PRIMARY KEY); "
        "ALTER TABLE t0 ADD COLUMN late bigint REFERENCES late_parent (id)"
    )
    return [("0001", ddl), ("0002", late)]
"""

TESTS = """\
import pytest
from sqlalchemy import text

from pgtenancy import tenant_session
from pgtenancy.admin import engine_from_dsn

TABLES = 10
#: slug -> what the tests that had it did, in order.
SEEN: dict[str, list[str]] = {}
#: Tenants whose schema a test changed: never handed out again.
CHANGED: set[str] = set()
BASELINE: dict[str, tuple[int, ...]] = {}


@pytest.fixture(scope="module")
def engine(pgtenancy_dsn):
    e = engine_from_dsn(pgtenancy_dsn)
    yield e
    e.dispose()


def assert_fresh(t, engine, admin):
    \"\"\"What a brand-new tenant looks like: no rows, sequences at their start,
    no objects beyond the migrations', no domains, limits or metadata.\"\"\"
    assert t.slug not in CHANGED, f"{t.slug} had its schema changed by {SEEN[t.slug]}"
    assert t.status == "active"
    with tenant_session(engine, t.slug) as s:
        for i in range(TABLES):
            assert s.execute(text(f"SELECT count(*) FROM t{i}")).scalar() == 0, SEEN.get(t.slug)
        assert s.execute(text("SELECT count(*) FROM late_parent")).scalar() == 0
        objects = s.execute(
            text(
                "SELECT (SELECT count(*) FROM pg_class WHERE relnamespace = CAST(:s AS regnamespace)),"
                " (SELECT count(*) FROM pg_proc WHERE pronamespace = CAST(:s AS regnamespace)),"
                " (SELECT count(*) FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid"
                "   WHERE c.relnamespace = CAST(:s AS regnamespace) AND a.attnum > 0 AND NOT a.attisdropped)"
            ),
            {"s": t.schema_name},
        ).one()
        # The first tenant, brand new, sets what every later one must match.
        BASELINE.setdefault("objects", tuple(objects))
        assert tuple(objects) == BASELINE["objects"], (objects, SEEN.get(t.slug))
        assert objects[1] == 0  # the migrations make no function
        # Identities start again (the previous test inserted; a sequence
        # moved by setval and by a rolled-back insert alike).
        for i in range(TABLES):
            new_id = s.execute(text(f"INSERT INTO t{i} (body) VALUES ('x') RETURNING id")).scalar()
            assert new_id == 1, (i, new_id, SEEN.get(t.slug))
        s.rollback()
    row = admin.get_tenant(t.slug)
    assert row.metadata == t.metadata and row.status == "active"
    with engine.connect() as c:
        assert c.execute(
            text("SELECT count(*) FROM tenancy.tenant_domains WHERE tenant_id = :i"), {"i": t.id}
        ).scalar() == 0
        assert c.execute(
            text("SELECT limits FROM tenancy.tenants WHERE id = :i"), {"i": t.id}
        ).scalar() is None


def seen(t, what):
    SEEN.setdefault(t.slug, []).append(what)


@pytest.mark.parametrize("n", range(12))
def test_fresh_tenant_each_time(n, tenant, engine, pgtenancy_admin):
    t = tenant(metadata={"public": {"n": n}})
    assert t.status == "active" and t.metadata == {"public": {"n": n}}
    assert_fresh(t, engine, pgtenancy_admin)
    with tenant_session(engine, t.slug) as s:
        for i in range(TABLES):
            parent = "NULL" if i == 0 else f"(SELECT max(id) FROM t{i - 1})"
            s.execute(text(f"INSERT INTO t{i} (body, parent) VALUES ('x', {parent})"))
            s.execute(text(f"INSERT INTO t{i} (body, parent) VALUES ('y', {parent})"))
        s.commit()
    # Registry state a test may leave behind.
    pgtenancy_admin.add_tenant_domain(t.slug, f"n{n}-{t.slug.replace('_', '-')}.example.com")
    pgtenancy_admin.set_tenant_limits(t.slug, statement_timeout="5s")
    if n % 3 == 0:
        pgtenancy_admin.suspend_tenant(t.slug)
    seen(t, f"rows+domain+limits{'+suspended' if n % 3 == 0 else ''}")


def test_foreign_key_order_fallback(tenant, engine, pgtenancy_admin):
    t = tenant()
    assert_fresh(t, engine, pgtenancy_admin)
    with tenant_session(engine, t.slug) as s:
        s.execute(text("INSERT INTO late_parent DEFAULT VALUES"))
        s.execute(text("INSERT INTO t0 (body, late) VALUES ('x', 1)"))
        s.commit()
    seen(t, "late_parent")


def test_a_test_that_truncates_keeps_its_tenant_reusable(tenant, engine, pgtenancy_admin):
    t = tenant()
    assert_fresh(t, engine, pgtenancy_admin)
    with tenant_session(engine, t.slug) as s:
        s.execute(text("INSERT INTO t0 (body) VALUES ('x')"))
        s.execute(text(f"TRUNCATE {', '.join(f't{i}' for i in range(TABLES))}, late_parent"))
        s.execute(text("INSERT INTO t3 (body) VALUES ('after truncate')"))
        s.commit()
    seen(t, "truncate")


@pytest.mark.parametrize(
    "ddl",
    [
        "CREATE TABLE extra (id int)",
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
        "ALTER TABLE t1 ADD COLUMN extra int",
        "ALTER TABLE t2 ALTER COLUMN body SET DEFAULT 'changed'",
        "CREATE INDEX t4_body ON t4 (body)",
        "DROP TABLE t9",
        "CREATE VIEW v AS SELECT 1 AS one",
        "ALTER TABLE t5 ADD CONSTRAINT t5_short CHECK (length(body) < 10)",
    ],
)
def test_a_tenant_whose_schema_changed_is_not_handed_out_again(
    ddl, tenant, engine, pgtenancy_admin, pgtenancy_dsn
):
    import psycopg

    t = tenant()
    assert_fresh(t, engine, pgtenancy_admin)
    # As the owner: tenant migrations are the usual way, this is the short one.
    with psycopg.connect(pgtenancy_dsn, autocommit=True) as conn:
        conn.execute(f"SET search_path = {t.schema_name}")
        conn.execute(ddl)
    CHANGED.add(t.slug)
    seen(t, ddl)


def test_function_replaced_is_a_change(tenant, engine, pgtenancy_admin, pgtenancy_dsn):
    \"\"\"CREATE OR REPLACE of a function the migration did not make: caught by
    its row version, and the tenant is dropped in the background.\"\"\"
    import psycopg

    t = tenant()
    with psycopg.connect(pgtenancy_dsn, autocommit=True) as conn:
        conn.execute(f"SET search_path = {t.schema_name}")
        conn.execute("CREATE FUNCTION g() RETURNS int LANGUAGE sql AS 'SELECT 1'")
    CHANGED.add(t.slug)
    seen(t, "function")


def test_suspended_or_dropped_by_a_test(tenant, pgtenancy_admin):
    a, b = tenant(), tenant()
    pgtenancy_admin.suspend_tenant(a.slug)
    pgtenancy_admin.drop_tenant(b.slug, destroy_data=True)
    seen(a, "suspended")
    CHANGED.add(b.slug)
    seen(b, "dropped")


def test_then_fresh_again(tenant, engine, pgtenancy_admin):
    for _ in range(3):
        t = tenant()
        assert_fresh(t, engine, pgtenancy_admin)
        seen(t, "checked")


def test_rollback_per_test(tenant_db, engine):
    tenant_db.execute(text("INSERT INTO t0 (body) VALUES ('kept only in this test')"))
    tenant_db.commit()  # a savepoint: the outer transaction rolls back at the end
    assert tenant_db.execute(text("SELECT count(*) FROM t0")).scalar() == 1
    slug = tenant_db.execute(text("SELECT tenancy.current_tenant()")).scalar()
    assert slug is not None
    # Nothing is committed: other sessions see no row.
    with tenant_session(engine, slug) as other:
        assert other.execute(text("SELECT count(*) FROM t0")).scalar() == 0


def test_tenants_were_recycled_and_changed_ones_dropped(pgtenancy_tenant_pool, pgtenancy_admin):
    pool = pgtenancy_tenant_pool
    reused = [slug for slug, what in SEEN.items() if len(what) > 1]
    assert reused, SEEN
    # Every tenant some test made dirty with rows, domains, limits, a
    # suspension or a TRUNCATE came back (pool of 4): recycled, not replaced.
    assert pool.recycled >= 12, (pool.recycled, SEEN)
    assert pool.discarded == len(CHANGED), (pool.discarded, CHANGED)
    pool.close()  # waits for the background thread: discarded tenants dropped by now
    status = {t.slug: t.status for t in pgtenancy_admin.list_tenants()}
    assert all(status.get(slug, "deleted") == "deleted" for slug in CHANGED), status
"""


def run_inner(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *extra, str(tmp_path)],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        cwd=tmp_path,
    )


def test_plugin_fixtures_and_fresh_recycled_tenants(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_inner.py").write_text(TESTS)
    r = run_inner(tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "27 passed" in r.stdout, r.stdout


def test_a_stale_tenant_would_be_caught(tmp_path: Path) -> None:
    """The inner checks can fail: with recycling that only resets metadata
    (rows and sequences left), the next test sees the previous one's rows."""
    (tmp_path / "conftest.py").write_text(
        CONFTEST
        + """

import pgtenancy.testing.plugin as plugin


@pytest.fixture(scope="session", autouse=True)
def _no_reset():
    original = plugin.TenantPool._provision

    def provision(self, conn, tenancy):
        pooled = original(self, conn, tenancy)
        keep = pooled.recycle.split("DELETE FROM tenancy.tenant_domains")[1]
        pooled.recycle = "BEGIN; DELETE FROM tenancy.tenant_domains" + keep
        return pooled

    plugin.TenantPool._provision = provision
    yield
    plugin.TenantPool._provision = original
"""
    )
    (tmp_path / "test_inner.py").write_text(TESTS)
    r = run_inner(tmp_path, "-x", "-k", "fresh_tenant_each_time")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "assert 2 == 0" in r.stdout, r.stdout


def test_plugin_can_be_turned_off(tmp_path: Path) -> None:
    (tmp_path / "test_off.py").write_text(
        "def test_x(request):\n"
        "    assert 'tenant' not in request.fixturenames\n"
        "    assert request.config.pluginmanager.get_plugin('pgtenancy') is None\n"
    )
    r = run_inner(tmp_path, "-p", "no:pgtenancy")
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.fixture
def owner_dsn(pg_admin_dsn: str) -> Iterator[str]:
    """A database whose kit was installed by a role that is not a superuser
    (its owner): the pool then empties tables without skipping triggers."""
    role = f"pgtenancy_owner_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER CREATEROLE").format(sql.Identifier(role))
        )
    dsn = create_database(pg_admin_dsn, "pgtenancy_pool")
    try:
        name = str(conninfo_to_dict(dsn)["dbname"])
        with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("ALTER DATABASE {} OWNER TO {}").format(
                    sql.Identifier(name), sql.Identifier(role)
                )
            )
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("ALTER SCHEMA public OWNER TO {}").format(sql.Identifier(role)))
        owner = make_conninfo(dsn, user=role)
        install(owner)
        yield owner
    finally:
        drop_database(pg_admin_dsn, dsn)
        with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def counts(dsn: str, slug: str, tables: tuple[str, ...]) -> list[int]:
    with psycopg.connect(dsn) as conn, tenant_connection(conn, slug) as c:
        return [
            int(
                (
                    c.execute(
                        sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(t))
                    ).fetchone()
                    or (0,)
                )[0]
            )
            for t in tables
        ]


@pytest.mark.parametrize("cycle", [False, True], ids=["children_first", "cycle_truncate"])
def test_pool_as_a_role_that_is_not_a_superuser(owner_dsn: str, cycle: bool) -> None:
    """Without superuser rights the reset keeps foreign key checks: DELETE
    children first, or one TRUNCATE when foreign keys form a cycle (a DELETE
    in any order would fail there, and the tenant would be discarded)."""
    tenancy = Tenancy(owner_dsn)
    ddl = (
        "CREATE TABLE parent (id bigserial PRIMARY KEY, other bigint); "
        "CREATE TABLE child (id bigserial PRIMARY KEY, parent bigint NOT NULL REFERENCES parent (id))"
    )
    if cycle:
        ddl += "; ALTER TABLE parent ADD FOREIGN KEY (other) REFERENCES child (id)"
    tenancy.add_migration("0001", ddl)
    pool = TenantPool(tenancy, owner_dsn, size=1, background=False)
    try:
        t = pool.acquire()
        with psycopg.connect(owner_dsn) as conn, tenant_connection(conn, t.slug) as c:
            c.execute("INSERT INTO parent DEFAULT VALUES")
            c.execute("INSERT INTO child (parent) VALUES (1)")
            if cycle:
                c.execute("UPDATE parent SET other = 1")
        assert counts(owner_dsn, t.slug, ("parent", "child")) == [1, 1]
        assert pool.release(t.slug)
        again = pool.acquire()
        assert again.slug == t.slug  # recycled, not replaced
        assert counts(owner_dsn, again.slug, ("parent", "child")) == [0, 0]
        with psycopg.connect(owner_dsn) as conn, tenant_connection(conn, again.slug) as c:
            row = c.execute("INSERT INTO parent DEFAULT VALUES RETURNING id").fetchone()
            assert row == (1,)
        assert pool.release(again.slug)
        assert (pool.recycled, pool.discarded) == (2, 0)
    finally:
        pool.close()
