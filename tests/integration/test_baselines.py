"""Baselines (issue 10, item 4): ``pgtenancy migrate squash --through VERSION``
makes one script of the history up to VERSION (a replay in a scratch schema,
dumped with pg_dump and rewritten by the template rewriter), registers it
once the database found it equal to the replay, and new tenants run it and
the migrations after it. Checked here on procrastinate's 38-file series and
on a small history of our own with commit boundaries before and after the
baseline: a tenant provisioned from the baseline has the catalog of one
provisioned by replay (compared by an independent catalog query, not by
``tenancy.schema_catalog``); existing tenants are untouched; refusals change
nothing."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from pgtenancy import Tenancy
from pgtenancy.cli import main
from pgtenancy.errors import BaselineMismatch, BaselineRefused, UnsafeMigration
from pgtenancy.fleet import migrate_fleet, squash_migrations, sync_migration_dir
from pgtenancy.shared_migrations import apply_shared_migrations

SQL = Callable[..., list[tuple[Any, ...]]]
ROOT = Path(__file__).resolve().parents[2]
PROCRASTINATE = ROOT / ".cache" / "procrastinate-3.10.0" / "migrations"

# An independent description of a schema: one row per object, keyed by names,
# the schema's own name left out (it is on search_path, so most deparsed
# names come out unqualified; the rest is stripped in Python).
CATALOG = """
SELECT 'relation', c.relname, concat_ws(' | ', c.relkind, c.relpersistence, c.relrowsecurity,
       c.relforcerowsecurity, c.reloptions::text, pg_get_userbyid(c.relowner),
       obj_description(c.oid, 'pg_class'),
       CASE WHEN c.relkind IN ('v', 'm') THEN pg_get_viewdef(c.oid) END)
  FROM pg_class AS c WHERE c.relnamespace = %(s)s::regnamespace
UNION ALL
SELECT 'column', c.relname || '.' || a.attname,
       concat_ws(' | ', row_number() OVER (PARTITION BY c.oid ORDER BY a.attnum),
       format_type(a.atttypid, a.atttypmod), a.attnotnull, a.attidentity, a.attgenerated,
       pg_get_expr(d.adbin, d.adrelid), col_description(c.oid, a.attnum))
  FROM pg_attribute AS a JOIN pg_class AS c ON c.oid = a.attrelid
  LEFT JOIN pg_attrdef AS d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
 WHERE c.relnamespace = %(s)s::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm', 'c')
   AND a.attnum > 0 AND NOT a.attisdropped
UNION ALL
SELECT 'constraint', coalesce(c.relname, t.typname) || '.' || k.conname,
       concat_ws(' | ', k.contype, pg_get_constraintdef(k.oid), k.condeferrable, k.convalidated)
  FROM pg_constraint AS k
  LEFT JOIN pg_class AS c ON c.oid = k.conrelid
  LEFT JOIN pg_type AS t ON t.oid = k.contypid
 WHERE k.connamespace = %(s)s::regnamespace
UNION ALL
SELECT 'index', c.relname, pg_get_indexdef(c.oid)
  FROM pg_index AS i JOIN pg_class AS c ON c.oid = i.indexrelid
 WHERE c.relnamespace = %(s)s::regnamespace
UNION ALL
SELECT 'sequence', c.relname,
       concat_ws(' | ', format_type(s.seqtypid, NULL), s.seqstart, s.seqincrement, s.seqmax,
       s.seqmin, s.seqcache, s.seqcycle,
       (SELECT d.deptype::text || ' ' || r.relname || '.' || a.attname
          FROM pg_depend AS d JOIN pg_class AS r ON r.oid = d.refobjid
          JOIN pg_attribute AS a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
         WHERE d.classid = 'pg_class'::regclass AND d.objid = s.seqrelid
           AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')))
  FROM pg_sequence AS s JOIN pg_class AS c ON c.oid = s.seqrelid
 WHERE c.relnamespace = %(s)s::regnamespace
UNION ALL
SELECT 'function', p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')',
       concat_ws(' | ', pg_get_functiondef(p.oid),
       pg_get_userbyid(p.proowner), obj_description(p.oid, 'pg_proc'))
  FROM pg_proc AS p WHERE p.pronamespace = %(s)s::regnamespace
UNION ALL
SELECT 'trigger', c.relname || '.' || t.tgname, concat_ws(' | ', pg_get_triggerdef(t.oid), t.tgenabled)
  FROM pg_trigger AS t JOIN pg_class AS c ON c.oid = t.tgrelid
 WHERE c.relnamespace = %(s)s::regnamespace AND NOT t.tgisinternal
UNION ALL
SELECT 'type', t.typname, concat_ws(' | ', t.typtype, pg_get_userbyid(t.typowner),
       CASE WHEN t.typtype = 'd' THEN format_type(t.typbasetype, t.typtypmod) END, t.typdefault)
  FROM pg_type AS t WHERE t.typnamespace = %(s)s::regnamespace
UNION ALL
SELECT 'enum', t.typname, string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder)
  FROM pg_enum AS e JOIN pg_type AS t ON t.oid = e.enumtypid
 WHERE t.typnamespace = %(s)s::regnamespace GROUP BY t.typname
UNION ALL
SELECT 'policy', c.relname || '.' || p.polname,
       concat_ws(' | ', p.polcmd, p.polpermissive, p.polroles::regrole[]::text,
       pg_get_expr(p.polqual, p.polrelid), pg_get_expr(p.polwithcheck, p.polrelid))
  FROM pg_policy AS p JOIN pg_class AS c ON c.oid = p.polrelid
 WHERE c.relnamespace = %(s)s::regnamespace
"""


def catalog(dsn: str, schema: str) -> dict[tuple[str, str], str]:
    """``{(kind, name): definition}`` of the objects of ``schema``."""
    with psycopg.connect(dsn, autocommit=True) as conn, conn.transaction():
        conn.execute(
            "SELECT set_config('search_path', format('pg_catalog, %%I', %s::text), true)",
            (schema,),
        )
        rows = conn.execute(CATALOG, {"s": schema}).fetchall()
        role_row = conn.execute("SELECT tenancy.tenant_role(%s)", (schema,)).fetchone()
    assert role_row is not None
    # Deparsers that always qualify (indexes, functions): the schema left out;
    # each schema's own owner role (tenancy.tenant_role) as one token.
    found = {
        (r[0], r[1]): (r[2] or "").replace(f"{schema}.", "").replace(role_row[0], "<tenant owner>")
        for r in rows
    }
    assert len(found) == len(rows), "two objects share a key"
    return found


def same_catalog(dsn: str, a: str, b: str) -> int:
    """Assert schemas ``a`` and ``b`` hold the same objects; return how many."""
    got, want = catalog(dsn, a), catalog(dsn, b)
    # Both are owned at rest by their own tenant role, not the kit's owner.
    assert not got or any("<tenant owner>" in v for v in got.values())
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    changed = sorted(k for k in set(got) & set(want) if got[k] != want[k])
    assert (missing, extra, [(k, got[k], want[k]) for k in changed]) == ([], [], [])
    return len(got)


def write(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text)
    return directory


def provision(dsn: str, slug: str) -> tuple[int, int, str | None]:
    """Create ``slug`` as create_tenant does and finish it with the fleet
    runner; return how many times the first transaction called
    apply_baseline and apply_migrations, and the version it reached."""
    with psycopg.connect(dsn) as conn:
        conn.execute("SET LOCAL track_functions = 'all'")
        row = conn.execute("SELECT migration_version FROM tenancy.create_tenant(%s)", (slug,))
        first = row.fetchone()
        calls: dict[str, int] = dict(
            conn.execute(
                "SELECT funcname, calls FROM pg_stat_xact_user_functions "
                "WHERE schemaname = 'tenancy' AND funcname IN ('apply_baseline', 'apply_migrations')"
            ).fetchall()
        )
        conn.commit()
    report = migrate_fleet(dsn, tenants=[slug])
    assert report.ok, report.as_dict()
    version = None if first is None else str(first[0])
    return calls.get("apply_baseline", 0), calls.get("apply_migrations", 0), version


def leftovers(sql: SQL) -> list[tuple[Any, ...]]:
    return sql(
        "SELECT (SELECT count(*) FROM tenancy.baselines), "
        "       (SELECT count(*) FROM tenancy.baseline_scratch), "
        "       (SELECT array_agg(nspname::text ORDER BY nspname) FROM pg_namespace "
        "         WHERE nspname LIKE 'tenancy\\_check\\_baseline%%')"
    )


SMALL = {
    "0001_init.sql": """
        CREATE TYPE status AS ENUM ('new', 'done');
        CREATE DOMAIN positive AS integer DEFAULT 1 CHECK (VALUE > 0);
        CREATE TABLE projects (
            id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
            name text NOT NULL UNIQUE,
            budget positive,
            created_at timestamptz NOT NULL DEFAULT now()
        );
        CREATE TABLE tasks (
            id serial PRIMARY KEY,
            project_id bigint NOT NULL REFERENCES projects ON DELETE CASCADE,
            title text,
            status status NOT NULL DEFAULT 'new',
            obsolete integer
        );
        COMMENT ON TABLE tasks IS 'work items';
    """,
    "0002_blocked.sql": "ALTER TYPE status ADD VALUE 'blocked' BEFORE 'done';\n",
    "0003_use.sql": """
        ALTER TABLE tasks ALTER COLUMN status SET DEFAULT 'blocked';
        ALTER TABLE tasks DROP COLUMN obsolete;
        ALTER TABLE tasks ADD COLUMN done_at timestamptz;
        CREATE INDEX tasks_open_idx ON tasks (project_id) WHERE status <> 'done';
        CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            NEW.done_at := now();
            RETURN NEW;
        END
        $$;
        CREATE TRIGGER tasks_touch BEFORE UPDATE ON tasks
            FOR EACH ROW WHEN (NEW.status = 'done') EXECUTE FUNCTION touch();
        CREATE VIEW open_tasks AS SELECT id, title FROM tasks WHERE status <> 'done';
        ALTER TABLE tasks ENABLE ROW LEVEL SECURITY;
        CREATE POLICY tasks_visible ON tasks USING (status <> 'blocked');
        CREATE SEQUENCE invoice_no START 1000 INCREMENT 10 OWNED BY projects.id;
        CREATE FUNCTION task_count(project bigint) RETURNS bigint LANGUAGE sql STABLE
            RETURN (SELECT count(*) FROM tasks WHERE project_id = project);
        COMMENT ON FUNCTION touch() IS 'stamps done_at';
    """,
    "0004_title_idx.sql": (
        "-- pgtenancy: no-transaction\nCREATE INDEX CONCURRENTLY tasks_title_idx ON tasks (title);\n"
    ),
    "0005_archived.sql": "ALTER TYPE status ADD VALUE 'archived';\n",
    "0006_state.sql": (
        "ALTER TABLE projects ADD COLUMN state status NOT NULL DEFAULT 'archived';\n"
        "CREATE INDEX projects_state_idx ON projects (state);\n"
    ),
}


VERSIONS = [name.removesuffix(".sql") for name in sorted(SMALL)]


def test_small_history_baseline_provisions_what_the_replay_does(
    tmp_path: Path, dsn: str, sql: SQL
) -> None:
    tenancy = Tenancy(dsn)
    # A tenant of the early days, left behind at 0002.
    directory = write(tmp_path / "migrations", {n: SMALL[n] for n in sorted(SMALL)[:2]})
    sync_migration_dir(dsn, directory)
    assert tenancy.create_tenant("early").migration_version == VERSIONS[1]
    directory = write(tmp_path / "migrations", SMALL)
    assert sync_migration_dir(dsn, directory).registered == VERSIONS[2:]
    # Replay: commit boundaries (enum values added, then used; a no-transaction file).
    assert provision(dsn, "replayed") == (0, 1, VERSIONS[0])
    before = sql("SELECT slug, status, migration_version, updated_at FROM tenancy.tenants")
    events = sql("SELECT count(*) FROM tenancy.events")

    result = tenancy.squash_migrations(VERSIONS[3])
    assert result.baseline is not None and result.baseline.through_version == VERSIONS[3]
    assert (result.squashed, result.steps) == (4, 4)  # one transaction per migration
    assert "CREATE INDEX tasks_title_idx" in result.sql and "CONCURRENTLY" not in result.sql
    assert "tenancy_check_baseline" not in result.sql
    assert [(b.through_version, b.squashed) for b in tenancy.list_baselines()] == [(VERSIONS[3], 4)]
    # Existing tenants untouched: same rows, no event; the scratch schemas are gone.
    assert sql("SELECT slug, status, migration_version, updated_at FROM tenancy.tenants") == before
    assert sql("SELECT count(*) FROM tenancy.events") == events
    assert leftovers(sql) == [(1, 0, None)]

    # A new tenant runs the baseline (0001-0004 in one script) and 0005 in its
    # first transaction, then 0006 in its own (it uses 0005's enum value).
    assert provision(dsn, "based") == (1, 1, VERSIONS[4])
    assert same_catalog(dsn, "tenant_based", "tenant_replayed") > 40
    assert sql("SELECT slug, status, migration_version FROM tenancy.tenants ORDER BY slug") == [
        ("based", "active", VERSIONS[5]),
        ("early", "active", VERSIONS[1]),
        ("replayed", "active", VERSIONS[5]),
    ]
    assert sql(
        "SELECT count(*) FROM tenancy.events WHERE name = 'tenant_created' AND tenant_slug = 'based'"
    ) == [(1,)]
    # The tenant works: enum labels in order, the trigger, the policy's table.
    assert sql(
        "SELECT array_agg(enumlabel ORDER BY enumsortorder) FROM pg_enum "
        "WHERE enumtypid = 'tenant_based.status'::regtype"
    ) == [(["new", "blocked", "done", "archived"],)]

    # The tenant behind the baseline's version goes on migration by migration
    # (the runner never gives a baseline to a schema that has any version).
    report = migrate_fleet(dsn)
    assert [(o.slug, o.from_version, o.to_version) for o in report.migrated] == [
        ("early", VERSIONS[1], VERSIONS[5])
    ]
    same_catalog(dsn, "tenant_early", "tenant_replayed")

    # The files up to 0004 stay registered: --dir recognises all of them.
    again = sync_migration_dir(dsn, directory)
    assert (again.registered, again.current) == ([], VERSIONS)
    out = CliRunner().invoke(main, ["migrate", "--dsn", dsn, "--dir", str(directory), "--quiet"])
    assert out.exit_code == 0, out.output
    assert "0 migrated, 0 failed, 3 already current of 3" in out.output

    # Dropped: new tenants replay again, with the same result.
    assert tenancy.drop_baseline(VERSIONS[3]) is True
    assert tenancy.drop_baseline(VERSIONS[3]) is False
    assert provision(dsn, "replayed_again") == (0, 1, VERSIONS[0])
    same_catalog(dsn, "tenant_replayed_again", "tenant_based")


def procrastinate_series(tmp_path: Path) -> Path:
    """procrastinate's series as a tenant directory; its first line (CREATE
    EXTENSION plpgsql) is a shared migration, applied here (the documented route)."""
    if not any(PROCRASTINATE.glob("*.sql")):
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
    return tenant


def test_procrastinate_baseline_provisions_what_the_replay_does(
    tmp_path: Path, dsn: str, sql: SQL
) -> None:
    directory = procrastinate_series(tmp_path)
    apply_shared_migrations(dsn, tmp_path / "shared")
    synced = sync_migration_dir(dsn, directory)
    assert len(synced.registered) == 38
    latest = synced.registered[-1]
    tenancy = Tenancy(dsn)
    replayed = tenancy.create_tenant("replayed")
    assert (replayed.status, replayed.migration_version) == ("active", latest)

    out = CliRunner().invoke(main, ["migrate", "squash", "--dsn", dsn, "--through", latest])
    assert out.exit_code == 0, out.output
    assert f"baseline through {latest} registered" in out.output
    assert "38 migrations in one script" in out.output
    assert sql("SELECT migration_version, status FROM tenancy.tenants") == [(latest, "active")]

    assert provision(dsn, "based") == (1, 1, latest)
    count = same_catalog(dsn, "tenant_based", "tenant_replayed")
    assert count > 100  # tables, columns, functions, triggers, types of procrastinate
    # procrastinate's job status enum, with the labels 02.06 added later, in order.
    assert sql(
        "SELECT array_agg(enumlabel ORDER BY enumsortorder) FROM pg_enum "
        "WHERE enumtypid = 'tenant_based.procrastinate_job_status'::regtype"
    ) == sql(
        "SELECT array_agg(enumlabel ORDER BY enumsortorder) FROM pg_enum "
        "WHERE enumtypid = 'tenant_replayed.procrastinate_job_status'::regtype"
    )
    # The tenant is usable by procrastinate's own functions.
    with psycopg.connect(dsn) as conn:
        conn.execute("SELECT tenancy.enter_tenant('based')")
        job = conn.execute(
            "SELECT procrastinate_defer_jobs_v1(ARRAY[ROW('default', 'task', 0, NULL, NULL,"
            " '{}'::jsonb, NULL)]::procrastinate_job_to_defer_v1[])"
        ).fetchone()
        assert job is not None and job[0]
    # A second squash through the same version is refused, nothing changed.
    again = CliRunner().invoke(main, ["migrate", "squash", "--dsn", dsn, "--through", latest])
    assert again.exit_code == 1
    assert "is registered already" in again.output
    assert leftovers(sql) == [(1, 0, None)]


def test_refusals_register_nothing(tmp_path: Path, dsn: str, sql: SQL) -> None:
    tenancy = Tenancy(dsn)
    tenancy.add_migration("0001", "CREATE TABLE t (id bigint PRIMARY KEY, note text);")
    nothing = [(0, 0, None)]

    with pytest.raises(BaselineRefused, match="no such migration is registered") as unknown:
        tenancy.squash_migrations("0009")
    assert unknown.value.sqlstate == "PT032"
    assert leftovers(sql) == nothing

    with pytest.raises(BaselineMismatch) as mismatch:
        tenancy.add_baseline("0001", "CREATE TABLE t (id integer PRIMARY KEY, note text);")
    assert mismatch.value.sqlstate == "PT033"
    assert "t.id" in (mismatch.value.detail or "")
    assert leftovers(sql) == nothing

    with pytest.raises(UnsafeMigration):
        tenancy.add_baseline("0001", "CREATE TABLE public.t (id bigint PRIMARY KEY, note text);")
    assert sql("SELECT to_regclass('public.t')") == [(None,)]
    assert leftovers(sql) == nothing

    with pytest.raises(BaselineRefused, match="does not apply"):
        tenancy.add_baseline("0001", "CREATE TABLE t (id bigint REFERENCES nowhere);")
    assert leftovers(sql) == nothing

    # A history that leaves rows: a baseline holds the schema only.
    tenancy.add_migration("0002", "INSERT INTO t VALUES (1, 'seed');")
    with pytest.raises(BaselineRefused, match="leave rows in table t"):
        tenancy.squash_migrations("0002")
    assert leftovers(sql) == nothing

    # A no-transaction migration that cannot run in a transaction.
    tenancy.add_migration("0003", "VACUUM t;", outside_transaction=True)
    with pytest.raises(BaselineRefused, match="0003 runs outside a transaction and cannot be"):
        tenancy.squash_migrations("0003")
    assert leftovers(sql) == nothing

    # Through 0001 it works; twice it does not.
    assert squash_migrations(dsn, "0001").squashed == 1
    with pytest.raises(BaselineRefused, match="registered already"):
        tenancy.squash_migrations("0001")
    assert leftovers(sql) == [(1, 0, None)]

    out = CliRunner().invoke(main, ["migrate", "squash", "--dsn", dsn, "--through", "nope"])
    assert out.exit_code == 1
    assert out.output.startswith("error: cannot squash through 'nope'")


def test_a_dump_the_rewriter_cannot_make_safe_is_refused(dsn: str, sql: SQL) -> None:
    tenancy = Tenancy(dsn)
    tenancy.add_migration("0001", "CREATE TABLE t (id bigint PRIMARY KEY);")
    # Dynamic SQL naming the replay's schema: no rewrite could make it the tenant's.
    tenancy.add_migration(
        "0002",
        "CREATE FUNCTION peek() RETURNS bigint LANGUAGE plpgsql AS $$ DECLARE n bigint; BEGIN "
        "EXECUTE 'SELECT count(*) FROM tenancy_check_baseline.t' INTO n; RETURN n; END $$;",
    )
    with pytest.raises(
        BaselineRefused,
        match=r"template rewriter .* function peek: .* as tenancy_check_baseline[.]x",
    ) as refused:
        tenancy.squash_migrations("0002")
    assert refused.value.sqlstate == "PT032"
    assert leftovers(sql) == [(0, 0, None)]


def test_dry_run_registers_nothing(dsn: str, sql: SQL, tmp_path: Path) -> None:
    Tenancy(dsn).add_migration("0001", "CREATE TABLE t (id bigint PRIMARY KEY);")
    out_file = tmp_path / "baseline.sql"
    out = CliRunner().invoke(
        main,
        [
            "migrate",
            "squash",
            "--dsn",
            dsn,
            "--through",
            "0001",
            "--dry-run",
            "--out",
            str(out_file),
        ],
    )
    assert out.exit_code == 0, out.output
    assert "nothing registered" in out.output
    assert "CREATE TABLE t" in out_file.read_text()
    assert leftovers(sql) == [(0, 0, None)]
