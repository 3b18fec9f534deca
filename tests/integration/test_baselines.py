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

from helpers import CHINOOK
from pgtenancy import Tenancy
from pgtenancy.cli import main
from pgtenancy.errors import BaselineMismatch, BaselineRefused, UnsafeMigration
from pgtenancy.fleet import migrate_fleet, squash_migrations, sync_migration_dir
from pgtenancy.shared_migrations import apply_shared_migrations
from pgtenancy.sqlscript import read_script

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
    # The application's own seed on top of procrastinate's series: periodic
    # defers, a row of procrastinate's table with its bigserial advanced.
    (directory / "99.00.00_01_seed_periodic.sql").write_text(
        "INSERT INTO procrastinate_periodic_defers (task_name, defer_timestamp)"
        " VALUES ('nightly', 1767225600), ('hourly', 1767229200);\n"
    )
    seeded = sync_migration_dir(dsn, directory)
    assert [v.rsplit("_", 2)[-2:] for v in seeded.registered] == [["seed", "periodic"]]
    latest = seeded.registered[-1]
    tenancy = Tenancy(dsn)
    replayed = tenancy.create_tenant("replayed")
    assert (replayed.status, replayed.migration_version) == ("active", latest)

    out = CliRunner().invoke(main, ["migrate", "squash", "--dsn", dsn, "--through", latest])
    assert out.exit_code == 0, out.output
    assert f"baseline through {latest} registered" in out.output
    assert "39 migrations in one script" in out.output
    assert sql("SELECT migration_version, status FROM tenancy.tenants") == [(latest, "active")]

    assert provision(dsn, "based") == (1, 1, latest)
    count = same_catalog(dsn, "tenant_based", "tenant_replayed")
    assert count > 100  # tables, columns, functions, triggers, types of procrastinate
    data = same_rows(dsn, "tenant_based", "tenant_replayed")
    assert [str(r).split(",")[1] for r in data["procrastinate_periodic_defers"]] == [
        "nightly",
        "hourly",
    ]
    assert data["procrastinate_periodic_defers_id_seq"] == (2, True)
    assert data["procrastinate_jobs"] == [] and data["procrastinate_jobs_id_seq"][1] is False
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

    # Rows travel in the baseline (test_a_seeded_history_baseline_carries_its_rows).
    tenancy.add_migration("0002", "INSERT INTO t VALUES (1, 'seed');")

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


def rows(dsn: str, schema: str) -> dict[str, list[str] | tuple[int, bool]]:
    """Every table's own rows (as text, sorted) and every sequence's
    ``(last_value, is_called)`` in ``schema``, read as the superuser."""
    found: dict[str, list[str] | tuple[int, bool]] = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET row_security = off")
        relations = conn.execute(
            "SELECT c.relname, c.relkind, format('%%I.%%I', n.nspname, c.relname) FROM pg_class AS c"
            " JOIN pg_namespace AS n ON n.oid = c.relnamespace"
            " WHERE n.nspname = %s AND c.relkind IN ('r', 'm', 'S') ORDER BY 1",
            (schema,),
        ).fetchall()
        for name, relkind, qualified in relations:
            if relkind == "S":
                value = conn.execute(f"SELECT last_value, is_called FROM {qualified}").fetchone()
                assert value is not None
                found[name] = (int(value[0]), bool(value[1]))
            else:
                found[name] = sorted(
                    r[0] for r in conn.execute(f"SELECT t::text FROM ONLY {qualified} AS t")
                )
    return found


def same_rows(dsn: str, a: str, b: str) -> dict[str, list[str] | tuple[int, bool]]:
    """Assert schemas ``a`` and ``b`` hold the same rows and sequence values."""
    got, want = rows(dsn, a), rows(dsn, b)
    assert got.keys() == want.keys()
    assert [k for k in got if got[k] != want[k]] == []
    return got


# A history that seeds its tables: foreign keys in a cycle and to the table
# itself, identity (ALWAYS and BY DEFAULT) and serial columns advanced past
# their rows, a sequence used on its own and one never used, a generated
# column, bytea (all 256 byte values, a 1 MiB value), a 3 MB text, enum values
# (one added later, then used), NULL, empty strings, quotes, backslashes,
# dollar signs and comment markers inside values, arrays, jsonb, a dropped
# column, a quoted table name, a partitioned table, an inheritance child, an
# unlogged table, a populated materialized view, a table under forced row
# security, and a trigger that must not fire again.
SEED = {
    "0001_tables.sql": r"""
        CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
        CREATE TABLE countries (
            code char(2) PRIMARY KEY,
            name text NOT NULL,
            mood mood,
            note text,
            capital_user bigint
        );
        CREATE TABLE users (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            country char(2) NOT NULL REFERENCES countries,
            manager_id bigint REFERENCES users,
            name text NOT NULL,
            name_upper text GENERATED ALWAYS AS (upper(name)) STORED,
            avatar bytea,
            tags text[],
            prefs jsonb,
            obsolete integer DEFAULT 7
        );
        ALTER TABLE countries ADD CONSTRAINT countries_capital_fkey
            FOREIGN KEY (capital_user) REFERENCES users DEFERRABLE INITIALLY DEFERRED;
        CREATE TABLE "Odd ""Name"" t" ("Key" serial PRIMARY KEY, "value;" text, weight numeric(6, 2));
        CREATE TABLE notes (id integer GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, body text);
        CREATE SEQUENCE invoice_no START 1000 INCREMENT 10;
        CREATE SEQUENCE unused_no;
        CREATE TABLE audit (id serial PRIMARY KEY, what text NOT NULL);
        CREATE FUNCTION audit_it() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO audit (what) VALUES (TG_OP || ' ' || NEW.code);
            RETURN NEW;
        END
        $$;
        CREATE TRIGGER countries_audit AFTER INSERT ON countries
            FOR EACH ROW EXECUTE FUNCTION audit_it();
        CREATE TABLE events (at date NOT NULL, what text) PARTITION BY RANGE (at);
        CREATE TABLE events_2026 PARTITION OF events
            FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
        CREATE TABLE things (id integer PRIMARY KEY, label text);
        CREATE TABLE special_things (extra text) INHERITS (things);
        CREATE UNLOGGED TABLE cache (k text PRIMARY KEY, v bytea);
        CREATE TABLE secrets (owner text NOT NULL, secret text);
        CREATE TABLE blobs (id integer PRIMARY KEY, big text, raw bytea);
    """,
    "0002_seed.sql": r"""
        INSERT INTO countries (code, name, mood, note) VALUES
            ('de', 'Germany', 'happy', NULL),
            ('fr', 'France', NULL, 'it''s "quoted" \ back\slash \x41 $$ dollar $x$ -- no comment ; /* nor */'),
            ('xx', E'tab\there\nnew line\r\n\\', 'sad', '');
        INSERT INTO users (country, name, avatar, tags, prefs) VALUES
            ('de', 'anna', '\x00ff5c27'::bytea, ARRAY['a', 'b c', NULL, '{}', '"'], '{"k": "v\"q", "n": null}'),
            ('fr', 'bob', NULL, '{}', NULL),
            ('de', 'gone', '', NULL, '[]');
        UPDATE users SET manager_id = (SELECT id FROM users WHERE name = 'bob') WHERE name = 'anna';
        UPDATE users SET manager_id = (SELECT id FROM users WHERE name = 'anna') WHERE name = 'bob';
        DELETE FROM users WHERE name = 'gone';
        UPDATE countries SET capital_user = (SELECT id FROM users WHERE name = 'anna') WHERE code = 'de';
        INSERT INTO "Odd ""Name"" t" ("value;") VALUES ('semi;colon'), (NULL), ('ünïcødé ✓');
        UPDATE "Odd ""Name"" t" SET weight = -1234.5 WHERE "value;" IS NULL;
        INSERT INTO notes (id, body) VALUES (40, 'explicit id'), (41, E'\\\\');
        INSERT INTO notes (body) VALUES ('from the sequence');
        SELECT nextval('invoice_no'), nextval('invoice_no');
        INSERT INTO events VALUES ('2026-03-01', 'spring'), ('2026-12-31', NULL);
        INSERT INTO things VALUES (1, 'plain');
        INSERT INTO special_things VALUES (2, 'special', 'more');
        INSERT INTO cache VALUES ('all bytes', (SELECT string_agg(set_byte('\x00'::bytea, 0, b), ''::bytea ORDER BY b) FROM generate_series(0, 255) AS b));
        INSERT INTO secrets VALUES ('alice', 'seen'), ('someone', 'hidden by the policy');
        ALTER TABLE secrets ENABLE ROW LEVEL SECURITY;
        ALTER TABLE secrets FORCE ROW LEVEL SECURITY;
        CREATE POLICY secrets_visible ON secrets USING (owner <> 'someone');
        INSERT INTO blobs VALUES (1, repeat('large ', 500000), decode(repeat('00ff5c27', 262144), 'hex'));
        CREATE MATERIALIZED VIEW country_users AS
            SELECT c.code, count(u.id) AS n FROM countries AS c LEFT JOIN users AS u ON u.country = c.code
             GROUP BY c.code;
    """,
    "0003_meh.sql": "ALTER TYPE mood ADD VALUE 'meh' BEFORE 'ok';\n",
    "0004_use.sql": r"""
        UPDATE countries SET mood = 'meh' WHERE code = 'xx';
        ALTER TABLE users DROP COLUMN obsolete;
        INSERT INTO users (country, name) VALUES ('xx', 'carla');
        REFRESH MATERIALIZED VIEW country_users;
    """,
    "0005_after.sql": "INSERT INTO notes (body) VALUES ('after the baseline');\n",
}

SEED_VERSIONS = [name.removesuffix(".sql") for name in sorted(SEED)]


def test_a_seeded_history_baseline_carries_its_rows(tmp_path: Path, dsn: str, sql: SQL) -> None:
    directory = write(tmp_path / "seed", SEED)
    assert sync_migration_dir(dsn, directory).registered == SEED_VERSIONS
    tenancy = Tenancy(dsn)
    provision(dsn, "replayed")

    result = tenancy.squash_migrations(SEED_VERSIONS[3])
    assert result.baseline is not None and result.squashed == 4
    assert "INSERT INTO countries" in result.sql and "tenancy_check_baseline" not in result.sql
    assert "OVERRIDING SYSTEM VALUE" in result.sql  # users.id is GENERATED ALWAYS
    assert "setval('invoice_no'" in result.sql
    assert leftovers(sql) == [(1, 0, None)]

    assert provision(dsn, "based") == (1, 1, SEED_VERSIONS[4])
    assert same_catalog(dsn, "tenant_based", "tenant_replayed") > 60
    seeded = same_rows(dsn, "tenant_based", "tenant_replayed")
    # What the rows are, not only that they agree.
    assert seeded["invoice_no"] == (1010, True)
    assert seeded["unused_no"] == (1, False)
    assert seeded["audit"] == ['(1,"INSERT de")', '(2,"INSERT fr")', '(3,"INSERT xx")']
    assert len(seeded["users"]) == 3 and len(seeded["notes"]) == 4
    assert len(seeded["events_2026"]) == 2 and len(seeded["secrets"]) == 2
    assert seeded["things"] == ["(1,plain)"] and seeded["special_things"] == ["(2,special,more)"]
    assert sql(
        "SELECT code, name, mood::text, note FROM tenant_based.countries ORDER BY code"
    ) == sql("SELECT code, name, mood::text, note FROM tenant_replayed.countries ORDER BY code")
    assert sql("SELECT note FROM tenant_based.countries WHERE code = 'fr'") == [
        ('it\'s "quoted" \\ back\\slash \\x41 $$ dollar $x$ -- no comment ; /* nor */',)
    ]
    assert sql("SELECT name, mood::text FROM tenant_based.countries WHERE code = 'xx'") == [
        ("tab\there\nnew line\r\n\\", "meh")
    ]
    assert sql("SELECT length(big), md5(raw), length(raw) FROM tenant_based.blobs") == sql(
        "SELECT length(big), md5(raw), length(raw) FROM tenant_replayed.blobs"
    )
    assert sql("SELECT length(v), get_byte(v, 92), get_byte(v, 255) FROM tenant_based.cache") == [
        (256, 92, 255)
    ]
    assert sql("SELECT name_upper FROM tenant_based.users ORDER BY id") == [
        ("ANNA",),
        ("BOB",),
        ("CARLA",),
    ]
    # The identity and serial columns go on where the history left them; the
    # seeded foreign keys hold (the deferred cycle too).
    with psycopg.connect(dsn) as conn:
        conn.execute("SELECT tenancy.enter_tenant('based')")
        new_user = conn.execute(
            "INSERT INTO users (country, name) VALUES ('fr', 'dan') RETURNING id"
        )
        assert new_user.fetchone() == (5,)
        odd = conn.execute('INSERT INTO "Odd ""Name"" t" ("value;") VALUES (\'x\') RETURNING "Key"')
        assert odd.fetchone() == (4,)
        assert conn.execute("SELECT nextval('invoice_no')").fetchone() == (1020,)
        with pytest.raises(psycopg.errors.ForeignKeyViolation):
            conn.execute("DELETE FROM users WHERE name = 'anna'")
        conn.rollback()
    # Values with backslashes are E'...' strings in the baseline: the same
    # rows where standard_conforming_strings is off (the baseline runs in
    # the session of whoever creates the tenant).
    assert "E'it''s" in result.sql
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET standard_conforming_strings = off")
        conn.execute("SELECT tenancy.create_tenant('escaped')")
    migrate_fleet(dsn, tenants=["escaped"])
    same_rows(dsn, "tenant_escaped", "tenant_replayed")
    # The rows registered after the baseline were applied on top of it.
    assert sql("SELECT id, body FROM tenant_based.notes WHERE id < 40 ORDER BY id") == [
        (1, "from the sequence"),
        (2, "after the baseline"),
    ]


def test_rows_that_depend_on_the_tenant_are_refused(dsn: str, sql: SQL) -> None:
    tenancy = Tenancy(dsn)
    tenancy.add_migration("0001", "CREATE TABLE settings (k text PRIMARY KEY, v text);")
    tenancy.add_migration("0002", "INSERT INTO settings VALUES ('schema', current_schema());")
    with pytest.raises(BaselineRefused, match="rows in table settings that name the schema") as one:
        tenancy.squash_migrations("0002")
    assert one.value.sqlstate == "PT032"
    assert leftovers(sql) == [(0, 0, None)]

    tenancy.add_migration("0003", "DELETE FROM settings;")
    # A regclass prints qualified with the replay's schema; an oid is the replay's own.
    tenancy.add_migration(
        "0004", "CREATE TABLE refs (t regclass); INSERT INTO refs VALUES ('settings');"
    )
    with pytest.raises(BaselineRefused, match="rows in table refs that name the schema"):
        tenancy.squash_migrations("0004")
    tenancy.add_migration(
        "0005",
        "DELETE FROM refs; CREATE TABLE ids (t oid); INSERT INTO ids VALUES ('refs'::regclass);",
    )
    with pytest.raises(
        BaselineRefused, match=r"rows in table ids with object identifiers \(t oid\)"
    ):
        tenancy.squash_migrations("0005")
    assert leftovers(sql) == [(0, 0, None)]
    # Through 0003 (the rows gone again) it works.
    assert tenancy.squash_migrations("0003").squashed == 3


def test_a_baseline_without_the_rows_is_refused(dsn: str, sql: SQL) -> None:
    tenancy = Tenancy(dsn)
    tenancy.add_migration(
        "0001",
        "CREATE TABLE kinds (id serial PRIMARY KEY, name text); "
        "INSERT INTO kinds (name) VALUES ('a'), ('b');",
    )
    with pytest.raises(BaselineMismatch) as refused:
        tenancy.add_baseline("0001", "CREATE TABLE kinds (id serial PRIMARY KEY, name text);")
    assert refused.value.sqlstate == "PT033"
    assert "rows of kinds: 2 missing, 0 extra" in (refused.value.detail or "")
    assert "sequence kinds_id_seq: 2 (called) after the migrations, 1 after the baseline" in (
        refused.value.detail or ""
    )
    assert leftovers(sql) == [(0, 0, None)]


def test_a_stale_materialized_view_is_refused(dsn: str, sql: SQL) -> None:
    tenancy = Tenancy(dsn)
    tenancy.add_migration(
        "0001",
        "CREATE TABLE t (id integer PRIMARY KEY); CREATE MATERIALIZED VIEW n AS SELECT count(*) FROM t;",
    )
    tenancy.add_migration("0002", "INSERT INTO t VALUES (1);")
    # pg_dump refreshes a materialized view: its stale rows cannot be carried.
    with pytest.raises(BaselineMismatch) as stale:
        tenancy.squash_migrations("0002")
    assert "rows of n: 1 missing, 1 extra (a materialized view the migrations left stale" in (
        stale.value.detail or ""
    )
    assert leftovers(sql) == [(0, 0, None)]


def test_chinook_seeded_by_a_migration_squashes_with_its_rows(dsn: str, sql: SQL) -> None:
    """A real dataset as seed rows: the Chinook sample's tables in one
    migration, its 15,000-odd rows (foreign keys between eleven tables, an
    employee hierarchy referencing itself, numerics, dates, non-ASCII names,
    NULLs) in the next."""
    if not CHINOOK.is_file():
        pytest.skip(f"the Chinook script is not at {CHINOOK}")
    script = read_script(CHINOOK.read_text("utf-8"))
    tenancy = Tenancy(dsn)
    tenancy.add_migration("0001_chinook", script.sql_of("ddl"))
    tenancy.add_migration("0002_chinook_rows", script.sql_of("data"))
    tenancy.create_tenant("replayed")

    result = tenancy.squash_migrations("0002_chinook_rows")
    assert result.squashed == 2
    assert result.sql.count("INSERT INTO ") > 100  # 100 rows a statement
    tenancy.create_tenant("based")
    assert same_catalog(dsn, "tenant_based", "tenant_replayed") > 80
    data = same_rows(dsn, "tenant_based", "tenant_replayed")
    assert sum(len(v) for v in data.values() if isinstance(v, list)) > 15000
    assert sql("SELECT count(*), sum(total) FROM tenant_based.invoice") == sql(
        "SELECT count(*), sum(total) FROM tenant_replayed.invoice"
    )
