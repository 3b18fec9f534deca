"""pgtenancy.templates: a single-tenant pg_dump made into a tenant migration.

The end-to-end tests build a real application in ``public`` of a source
database, dump it with the server's pg_dump, import the dump and create
tenants from it in the test database.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pglast
import psycopg
import pytest

from helpers import CHINOOK, ROOT, pgtenancy_cli, subprocess_env
from pgtenancy import Tenancy
from pgtenancy.migration_files import check_migration, read_migration_dir
from pgtenancy.sqlscript import ScriptError, read_script
from pgtenancy.templates import TemplateError, import_template
from pgtenancy.testing import find_bindir, fresh_database

Sql = Callable[..., list[tuple[Any, ...]]]

APP = """
CREATE TYPE public.mood AS ENUM ('happy', 'sad');
CREATE DOMAIN public.positive AS int CHECK (VALUE > 0);
CREATE TYPE public.pair AS (a int, b text);
CREATE SEQUENCE public.ticket_seq START 100;
CREATE TABLE public.customer (
    id serial PRIMARY KEY,
    name text NOT NULL DEFAULT 'anon',
    mood public.mood NOT NULL DEFAULT 'happy',
    ticket int DEFAULT nextval('public.ticket_seq'),
    extra public.pair
);
CREATE TABLE public.orders (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id int NOT NULL REFERENCES public.customer (id),
    qty public.positive NOT NULL,
    updated_at timestamptz
);
CREATE TABLE public.events (at date NOT NULL, what text) PARTITION BY RANGE (at);
CREATE TABLE public.events_2024 PARTITION OF public.events
    FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE VIEW public.customer_orders AS
    SELECT c.name, count(o.id) AS n
      FROM public.customer c LEFT JOIN public.orders o ON o.customer_id = c.id
     GROUP BY c.name;
CREATE FUNCTION public.order_count(cid int) RETURNS bigint LANGUAGE sql STABLE
    AS $$ SELECT count(*) FROM public.orders WHERE customer_id = cid $$;
CREATE FUNCTION public.touch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- comments and strings are left alone: 'public.orders'
    NEW.updated_at := now();
    INSERT INTO public.events VALUES (DATE '2024-06-01', 'touched ' || TG_OP);
    RETURN NEW;
END
$$;
CREATE TRIGGER orders_touch BEFORE INSERT OR UPDATE ON public.orders
    FOR EACH ROW EXECUTE FUNCTION public.touch();
CREATE INDEX orders_customer_idx ON public.orders (customer_id);
COMMENT ON TABLE public.customer IS 'people, from public.customer';
"""


def pg_dump(dsn: str, *options: str) -> str:
    """``pg_dump --schema-only`` of ``dsn`` with the server's binaries."""
    bindir = find_bindir()
    binary = str(bindir / "pg_dump") if bindir else "pg_dump"
    return subprocess.run(
        [binary, "--schema-only", *options, "--dbname", dsn],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def dump_of(pg_admin_dsn: str, ddl: str) -> str:
    """Run ``ddl`` in a fresh source database and dump its schema."""
    with fresh_database(pg_admin_dsn, "tpl_src") as src:
        with psycopg.connect(src, autocommit=True) as conn:
            conn.execute(ddl)
        return pg_dump(src)


def catalog(sql: Sql, schema: str) -> set[tuple[str, str]]:
    """(kind, name) of the relations, types and functions of ``schema``."""
    rows = sql(
        """
        SELECT 'rel', relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = %(s)s
        UNION ALL
        SELECT 'type', typname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
         WHERE n.nspname = %(s)s
           AND (t.typtype IN ('e', 'd') OR t.typrelid IN (SELECT oid FROM pg_class WHERE relkind = 'c'))
        UNION ALL
        SELECT 'func', proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
         WHERE n.nspname = %(s)s
        """,
        {"s": schema},
    )
    return {(r[0], r[1]) for r in rows}


def test_real_app_dump_becomes_tenant_migration(pg_admin_dsn: str, dsn: str, sql: Sql) -> None:
    dump = dump_of(pg_admin_dsn, APP)
    assert "CREATE TABLE public.orders" in dump
    result = import_template(dump)

    assert result.warnings == []
    dropped = "\n".join(result.dropped)
    for expected in (
        "SET statement_timeout",
        "pg_catalog.set_config('search_path', '', false)",
        "ALTER TABLE public.customer OWNER TO",
        "ALTER FUNCTION public.touch() OWNER TO",
    ):
        assert expected in dropped
    # No qualification left, except inside the comment's text and the
    # function's comment, which are data.
    for stmt in pglast.parse_sql(result.sql):
        assert "public." not in pglast.stream.RawStream()(stmt).replace(
            "'people, from public.customer'", ""
        ).replace("'public.orders'", "")

    before = catalog(sql, "public")
    tenancy = Tenancy(dsn)
    tenancy.add_migration("0001", result.sql)
    tenancy.create_tenant("acme")
    tenancy.create_tenant("globex")
    assert catalog(sql, "public") == before

    objects = catalog(sql, "tenant_acme")
    for obj in (
        [
            ("rel", name)
            for name in (
                "customer",
                "customer_id_seq",
                "ticket_seq",
                "orders",
                "orders_id_seq",
                "events",
                "events_2024",
                "customer_orders",
                "orders_customer_idx",
                "customer_pkey",
            )
        ]
        + [("type", "mood"), ("type", "positive"), ("type", "pair")]
        + [
            ("func", "order_count"),
            ("func", "touch"),
        ]
    ):
        assert obj in objects
    assert sql(
        "SELECT tgrelid::regclass::text FROM pg_trigger WHERE tgname = 'orders_touch' "
        "AND tgrelid::regclass::text LIKE 'tenant\\_%%' ORDER BY 1"
    ) == [
        ("tenant_acme.orders",),
        ("tenant_globex.orders",),
    ]
    [(touch_body,)] = sql("SELECT prosrc FROM pg_proc WHERE oid = 'tenant_acme.touch'::regproc")
    assert "INSERT INTO events VALUES" in touch_body
    assert "'public.orders'" in touch_body  # the comment is left as it was
    assert sql("SELECT pg_get_serial_sequence('tenant_acme.customer', 'id')") == [
        ("tenant_acme.customer_id_seq",)
    ]

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET search_path = tenant_acme")
        cid, ticket, mood = conn.execute(
            "INSERT INTO customer (name) VALUES ('ann') RETURNING id, ticket, mood::text"
        ).fetchone() or (None, None, None)
        assert (cid, ticket, mood) == (1, 100, "happy")
        conn.execute("INSERT INTO orders (customer_id, qty) VALUES (%s, 3), (%s, 4)", (cid, cid))
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute("INSERT INTO orders (customer_id, qty) VALUES (%s, 0)", (cid,))
        with pytest.raises(psycopg.errors.ForeignKeyViolation):
            conn.execute("INSERT INTO orders (customer_id, qty) VALUES (42, 1)")
        # The trigger fired and wrote into the tenant's partitioned table.
        assert conn.execute(
            "SELECT count(*) FROM orders WHERE updated_at IS NOT NULL"
        ).fetchone() == (2,)
        assert conn.execute("SELECT what FROM events_2024").fetchall() == [
            ("touched INSERT",),
            ("touched INSERT",),
        ]
        assert conn.execute("SELECT * FROM customer_orders").fetchall() == [("ann", 2)]
        assert conn.execute("SELECT order_count(%s)", (cid,)).fetchone() == (2,)
        # The other tenant is empty and has sequences of its own.
        conn.execute("SET search_path = tenant_globex")
        assert conn.execute("SELECT order_count(1)").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM customer_orders").fetchone() == (0,)
        assert conn.execute(
            "INSERT INTO customer DEFAULT VALUES RETURNING id, ticket"
        ).fetchone() == (1, 100)
    assert sql("SELECT count(*) FROM tenant_acme.customer") == [(1,)]


def chinook_file() -> Path:
    """The Chinook script: beside the repository, or beside a worktree's parent."""
    for base in (
        CHINOOK,
        *[p / "shared/data/chinook/Chinook_PostgreSql.sql" for p in ROOT.parents],
    ):
        if base.exists():
            return base
    pytest.skip("Chinook_PostgreSql.sql not found")


CHINOOK_TABLES = {
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
}


@pytest.mark.parametrize("clean", [False, True], ids=["plain", "clean"])
def test_chinook_dump_makes_two_tenants(pg_admin_dsn: str, dsn: str, sql: Sql, clean: bool) -> None:
    script = read_script(chinook_file().read_text(encoding="utf-8"))
    with fresh_database(pg_admin_dsn, "tpl_chinook") as src:
        with psycopg.connect(src, autocommit=True) as conn:
            conn.execute(script.sql_of("ddl"))
            conn.execute(script.sql_of("data"))
        dump = pg_dump(src, *(["--clean", "--if-exists"] if clean else []))
    result = import_template(dump)
    assert result.warnings == []
    assert "public." not in result.sql
    if clean:
        assert any("DROP TABLE IF EXISTS public.track" in d for d in result.dropped)
    # The database the tenants go to still runs the application in public, with rows.
    sql(script.sql_of("ddl"))
    sql("INSERT INTO public.artist VALUES (1, 'AC/DC'), (2, 'Accept')")
    before = public_state(sql)

    tenancy = Tenancy(dsn)
    tenancy.add_migration("0001", result.sql)
    tenancy.create_tenant("acme")
    tenancy.create_tenant("globex")
    for schema in ("tenant_acme", "tenant_globex"):
        rows = sql("SELECT tablename FROM pg_tables WHERE schemaname = %s", (schema,))
        assert {r[0] for r in rows} == CHINOOK_TABLES
    assert public_state(sql) == before
    sql("INSERT INTO tenant_acme.artist VALUES (1, 'AC/DC')")
    sql("INSERT INTO tenant_acme.album VALUES (1, 'High Voltage', 1)")
    with pytest.raises(psycopg.errors.ForeignKeyViolation):
        sql("INSERT INTO tenant_globex.album VALUES (1, 'High Voltage', 1)")
    assert sql("SELECT count(*) FROM tenant_globex.artist") == [(0,)]


def test_unparseable_dump_raises_with_line() -> None:
    dump = "SET statement_timeout = 0;\n\nCREATE TABLE public.t (id int);\nCREATE TABLEE oops;\n"
    with pytest.raises(ScriptError) as info:
        import_template(dump)
    assert info.value.line == 4


ACL_DUMP = """
CREATE TABLE public.t (id integer);
ALTER TABLE public.t OWNER TO postgres;
CREATE FUNCTION public.f() RETURNS integer LANGUAGE sql AS $$ SELECT 1 $$;
ALTER FUNCTION public.f() OWNER TO postgres;
REVOKE ALL ON FUNCTION public.f() FROM PUBLIC;
GRANT SELECT ON TABLE public.t TO app_reader;
REVOKE USAGE ON SCHEMA public FROM PUBLIC;
GRANT ALL ON SCHEMA public TO PUBLIC;
ALTER SCHEMA public OWNER TO pg_database_owner;
"""


def statements(sql_text: str) -> list[tuple[str, str]]:
    """(node name, deparsed SQL) of every statement of ``sql_text``."""
    return [
        (type(raw.stmt).__name__, pglast.stream.RawStream()(raw.stmt))
        for raw in pglast.parse_sql(sql_text)
        if raw.stmt is not None
    ]


def test_acl_dropped_by_default() -> None:
    result = import_template(ACL_DUMP)
    assert [line.split(": ", 1)[1] for line in result.dropped] == [
        "ALTER TABLE public.t OWNER TO postgres",
        "ALTER FUNCTION public.f() OWNER TO postgres",
        "REVOKE ALL ON FUNCTION public.f() FROM PUBLIC",
        "GRANT SELECT ON TABLE public.t TO app_reader",
        "REVOKE USAGE ON SCHEMA public FROM PUBLIC",
        "GRANT ALL ON SCHEMA public TO PUBLIC",
        "ALTER SCHEMA public OWNER TO pg_database_owner",
    ]
    kinds = [kind for kind, _ in statements(result.sql)]
    assert "GrantStmt" not in kinds
    assert "AlterOwnerStmt" not in kinds
    assert "OWNER TO" not in result.sql


def test_acl_kept_with_keep_acl(tmp_path: Path) -> None:
    result = import_template(ACL_DUMP, keep_acl=True)
    # Those on schema public itself and owners are dropped either way.
    assert [line.split(": ", 1)[1] for line in result.dropped] == [
        "ALTER TABLE public.t OWNER TO postgres",
        "ALTER FUNCTION public.f() OWNER TO postgres",
        "REVOKE USAGE ON SCHEMA public FROM PUBLIC",
        "GRANT ALL ON SCHEMA public TO PUBLIC",
        "ALTER SCHEMA public OWNER TO pg_database_owner",
    ]
    texts = [text for _, text in statements(result.sql)]
    assert "OWNER TO" not in result.sql
    assert "REVOKE ALL PRIVILEGES ON FUNCTION f () FROM PUBLIC" in texts
    assert "GRANT SELECT ON TABLE t TO app_reader" in texts
    # What is kept passes the gate of migrate --dir.
    (tmp_path / "0001_acl.sql").write_text(result.sql)
    assert check_migration(read_migration_dir(tmp_path)[0]) == []


def test_extension_and_schema_statements_dropped() -> None:
    dump = (
        "CREATE SCHEMA public;\n"
        "COMMENT ON SCHEMA public IS 'standard public schema';\n"
        "CREATE EXTENSION IF NOT EXISTS citext WITH SCHEMA public;\n"
        "COMMENT ON EXTENSION citext IS 'case-insensitive strings';\n"
        "CREATE TABLE public.u (email public.citext);\n"
    )
    result = import_template(dump)
    assert len(result.dropped) == 4
    assert any("extension citext" in w for w in result.warnings)
    # citext is not the dump's: it stays a reference to the shared extension type.
    assert statements(result.sql) == [("CreateStmt", "CREATE TABLE u (email public.citext)")]


def test_literals_and_bodies_rewritten() -> None:
    dump = r"""
CREATE SEQUENCE public.t_seq;
CREATE FUNCTION public.g(x integer) RETURNS integer LANGUAGE sql AS $$ SELECT x $$;
CREATE TABLE public.t (id integer DEFAULT nextval('public.t_seq'::regclass), n integer);
CREATE INDEX t_n ON public.t USING btree (n public.int4_ops);
SELECT pg_catalog.setval('public.t_seq', 1, false);
CREATE FUNCTION public.f(x integer) RETURNS integer LANGUAGE sql
    AS $$ SELECT public.g(x) + (SELECT count(*)::integer FROM public.t) $$;
CREATE FUNCTION public.p() RETURNS void LANGUAGE plpgsql AS $body$
DECLARE
    q text := E'it''s \' public';
BEGIN
    /* public.t /* nested */ */
    PERFORM "public".g(1), public . g(2), $x$ public $x$;
    UPDATE public.t SET n = public.g(n);
END
$body$;
"""
    result = import_template(dump)
    assert result.warnings == []
    texts = [text for _, text in statements(result.sql)[3:-1]]
    assert (
        texts[0]
        == "CREATE TABLE t (id integer DEFAULT nextval(CAST('t_seq' AS regclass)), n integer)"
    )
    # int4_ops is not created by the dump: its qualification stays.
    assert texts[1] == "CREATE INDEX t_n ON t (n public.int4_ops)"
    assert texts[2] == "SELECT pg_catalog.setval('t_seq', 1, FALSE)"
    assert "public" not in texts[3]
    assert " ".join(texts[3].split()).endswith(
        "AS $$ SELECT g(x) + (SELECT count(*)::integer FROM t) $$"
    )
    assert "PERFORM g(1), g(2), $x$ public $x$;" in texts[4]
    assert "UPDATE t SET n = g(n);" in texts[4]
    assert "/* public.t /* nested */ */" in texts[4]
    assert "E'it''s \\' public'" in texts[4]


@pytest.mark.parametrize(
    "body",
    [
        "BEGIN EXECUTE 'DELETE FROM public.t'; END",
        "BEGIN EXECUTE $q$DELETE FROM public.t$q$; END",
        'BEGIN RAISE NOTICE \'from "public"."t"\'; END',
    ],
)
def test_plpgsql_body_naming_dump_objects_in_strings_is_refused(body: str) -> None:
    dump = (
        "CREATE TABLE public.t (id integer);\n"
        f"CREATE FUNCTION public.risky() RETURNS void LANGUAGE plpgsql AS $fn${body}$fn$;\n"
    )
    with pytest.raises(TemplateError) as info:
        import_template(dump)
    [(line, reason)] = info.value.problems
    assert line == 2
    assert "function risky" in reason and "dynamic SQL" in reason


def test_plpgsql_dynamic_sql_and_public_as_a_name_are_kept() -> None:
    dump = (
        "CREATE TABLE public.t (id integer);\n"
        "CREATE FUNCTION public.purge() RETURNS void LANGUAGE plpgsql AS $fn$\n"
        "DECLARE public int := 1;\n"
        "BEGIN PERFORM public + 1; EXECUTE format('DELETE FROM %I', 't');"
        " DELETE FROM public.t; END$fn$;\n"
        "DO $$BEGIN PERFORM count(*) FROM public.t; END$$;\n"
    )
    result = import_template(dump)
    assert result.warnings == [
        "line 2: function purge runs dynamic SQL (EXECUTE)",
        "line 5: DO block kept; it runs in every tenant's migration"
        " (confined by the database at execution)",
    ]
    assert "DECLARE public int := 1;" in result.sql
    assert "DELETE FROM t; END" in result.sql
    assert "DO $$BEGIN PERFORM count(*) FROM t; END$$" in result.sql


def test_function_pinning_public_search_path_warns() -> None:
    dump = (
        "CREATE FUNCTION public.h() RETURNS integer LANGUAGE sql"
        " SET search_path TO 'public' AS $$ SELECT 1 $$;"
    )
    result = import_template(dump)
    assert any("function h sets search_path" in w for w in result.warnings)


def test_cli_template_import_and_register(dsn: str, tmp_path: Path) -> None:
    from helpers import run_cli

    dump = tmp_path / "dump.sql"
    dump.write_text(
        "SET statement_timeout = 0;\n"
        "CREATE TABLE public.account (id integer NOT NULL, name text);\n"
        "ALTER TABLE public.account OWNER TO someone;\n"
        "ALTER TABLE ONLY public.account ADD CONSTRAINT account_pkey PRIMARY KEY (id);\n"
    )
    out = tmp_path / "0001.sql"
    r = run_cli(
        "template",
        "import",
        str(dump),
        "--out",
        str(out),
        "--register",
        "0001_template",
        "--dsn",
        dsn,
    )
    assert r.returncode == 0, r.stderr
    assert "dropped:" in r.stderr and "OWNER" in r.stderr
    assert "public." not in out.read_text()
    tenancy = Tenancy(dsn)
    assert tenancy.create_tenant("acme").migration_version == "0001_template"
    bad = tmp_path / "bad.sql"
    bad.write_text("CREATE TABLE public.x (;\n")
    r = subprocess.run(
        [*pgtenancy_cli(), "template", "import", str(bad)],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=60,
    )
    assert r.returncode == 1 and r.stderr.startswith(f"error: {bad}:1: ")


def public_state(sql: Sql) -> dict[str, Any]:
    """What a template must never change: public's relations and rows, extensions, roles."""
    tables = [
        r[0]
        for r in sql(
            "SELECT relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') ORDER BY 1"
        )
    ]
    return {
        "relations": sql(
            "SELECT relname, relkind, relrowsecurity FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'public' ORDER BY 1"
        ),
        "rows": {t: sql(f'SELECT count(*) FROM public."{t}"')[0][0] for t in tables},
        "functions": sql(
            "SELECT p.oid::regprocedure::text FROM pg_proc p"
            " JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'public' ORDER BY 1"
        ),
        "policies": sql(
            "SELECT tablename, policyname FROM pg_policies WHERE schemaname = 'public'"
        ),
        "triggers": sql(
            "SELECT tgrelid::regclass::text, tgname FROM pg_trigger t"
            " JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'public' AND NOT tgisinternal ORDER BY 1, 2"
        ),
        "extensions": sql(
            "SELECT extname, extversion, extnamespace::regnamespace::text FROM pg_extension"
            " ORDER BY 1"
        ),
        "schemas": sql(
            "SELECT nspname FROM pg_namespace WHERE nspname !~ '^tenant_' AND nspname <> 'tenancy_scratch' ORDER BY 1"
        ),
    }


# Built in the source database and dumped with pg_dump; every feature the
# import must carry into a tenant schema.
FEATURES = """
CREATE EXTENSION pg_trgm;
CREATE SCHEMA partman;
CREATE TABLE partman.part_config (parent_table text PRIMARY KEY, "interval" text NOT NULL);
CREATE FUNCTION partman.check_name(p text) RETURNS boolean LANGUAGE sql IMMUTABLE
    AS $$ SELECT p ~ '^[a-z_]+$' $$;
CREATE TYPE public.plan AS ENUM ('free', 'pro');
CREATE TABLE public.accounts (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL,
    email text,
    plan public.plan NOT NULL DEFAULT 'free',
    deleted_at timestamptz
);
CREATE UNIQUE INDEX accounts_email_live ON public.accounts (email) NULLS NOT DISTINCT
    WHERE deleted_at IS NULL;
CREATE INDEX accounts_name_trgm ON public.accounts USING gin (name public.gin_trgm_ops);
CREATE TABLE public.measurements (
    id bigint GENERATED BY DEFAULT AS IDENTITY,
    account_id bigint NOT NULL REFERENCES public.accounts (id),
    at date NOT NULL,
    value numeric,
    PRIMARY KEY (id, at)
) PARTITION BY RANGE (at);
CREATE TABLE public.measurements_2024 PARTITION OF public.measurements
    FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE TABLE public.measurements_2025 PARTITION OF public.measurements
    FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE INDEX measurements_account ON public.measurements (account_id, at);
CREATE TABLE public.audit (id serial PRIMARY KEY, n integer NOT NULL);
CREATE FUNCTION public.count_new() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.audit (n) SELECT count(*) FROM new_rows;
    RETURN NULL;
END
$$;
CREATE TRIGGER accounts_audit AFTER INSERT ON public.accounts REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION public.count_new();
ALTER TABLE public.accounts ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.accounts FORCE ROW LEVEL SECURITY;
CREATE POLICY accounts_live ON public.accounts USING (deleted_at IS NULL);
CREATE MATERIALIZED VIEW public.account_totals AS
    SELECT a.id, a.name, count(m.id) AS n
      FROM public.accounts a LEFT JOIN public.measurements m ON m.account_id = a.id
     GROUP BY a.id, a.name;
CREATE UNIQUE INDEX account_totals_id ON public.account_totals (id);
CREATE FUNCTION public.similar_accounts(q text) RETURNS SETOF public.accounts
    LANGUAGE sql STABLE
    AS $$ SELECT * FROM public.accounts WHERE public.similarity(name, q) > 0.3 $$;
CREATE TABLE public.settings (key text PRIMARY KEY CHECK (partman.check_name(key)), value text);
INSERT INTO public.accounts (name, email) VALUES ('source row', 'a@example.com');
"""
# What the target database already holds: the application itself, in public.
TARGET_PUBLIC = """
CREATE EXTENSION IF NOT EXISTS pg_trgm;
CREATE TABLE public.accounts (id bigint PRIMARY KEY, name text NOT NULL);
INSERT INTO public.accounts SELECT g, 'public ' || g FROM generate_series(1, 412) g;
CREATE TABLE public.audit (id int PRIMARY KEY, n int);
INSERT INTO public.audit VALUES (1, 1);
CREATE INDEX accounts_name_trgm ON public.accounts USING gin (name gin_trgm_ops);
"""
TENANT_TABLES = {
    "accounts",
    "measurements",
    "measurements_2024",
    "measurements_2025",
    "audit",
    "settings",
}
TENANT_INDEXES = {
    "accounts_pkey",
    "accounts_email_live",
    "accounts_name_trgm",
    "measurements_pkey",
    "measurements_account",
    "measurements_2024_pkey",
    "measurements_2025_pkey",
    "measurements_2024_account_id_at_idx",
    "measurements_2025_account_id_at_idx",
    "audit_pkey",
    "account_totals_id",
    "settings_pkey",
}


def need_extensions(dsn: str, *names: str) -> None:
    """Skip unless the server has these contrib extensions (postgresql-contrib)."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT name FROM pg_available_extensions WHERE name = ANY(%s)", (list(names),)
        ).fetchall()
    missing = set(names) - {r[0] for r in rows}
    if missing:
        pytest.skip(f"contrib extensions {sorted(missing)} not available on the server")


def features_dump(pg_admin_dsn: str, clean: bool) -> str:
    need_extensions(pg_admin_dsn, "pg_trgm")
    with fresh_database(pg_admin_dsn, "tpl_features") as src:
        with psycopg.connect(src, autocommit=True) as conn:
            conn.execute(FEATURES)
        return pg_dump(src, *(["--clean", "--if-exists"] if clean else []))


def assert_tenant_works(sql: Sql, dsn: str, schema: str) -> None:
    """The tenant's objects are all in its schema and behave as in the source."""
    tables = {r[0] for r in sql("SELECT tablename FROM pg_tables WHERE schemaname = %s", (schema,))}
    assert tables == TENANT_TABLES
    indexes = {
        r[0] for r in sql("SELECT indexname FROM pg_indexes WHERE schemaname = %s", (schema,))
    }
    assert indexes == TENANT_INDEXES
    assert sql(
        "SELECT indrelid::regclass::text FROM pg_index WHERE indexrelid = %s::regclass",
        (f"{schema}.accounts_email_live",),
    ) == [(f"{schema}.accounts",)]
    assert sql(
        "SELECT relrowsecurity, relforcerowsecurity FROM pg_class WHERE oid = %s::regclass",
        (f"{schema}.accounts",),
    ) == [(True, True)]
    assert sql("SELECT policyname FROM pg_policies WHERE schemaname = %s", (schema,)) == [
        ("accounts_live",)
    ]
    assert sql(
        "SELECT relkind FROM pg_class WHERE oid = %s::regclass", (f"{schema}.account_totals",)
    ) == [("m",)]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"SET search_path = {schema}, public")
        conn.execute(
            "INSERT INTO accounts (name, email) VALUES ('Ann Smith', 'ann@example.com'),"
            " ('Anne Smith', NULL)"
        )
        # Statement trigger with a transition table counted both rows.
        assert conn.execute("SELECT n FROM audit").fetchall() == [(2,)]
        # NULLS NOT DISTINCT partial unique index: a second NULL email is refused...
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute("INSERT INTO accounts (name) VALUES ('x')")
        # ... unless the row is deleted (outside the WHERE of the index).
        conn.execute("INSERT INTO accounts (name, deleted_at) VALUES ('gone', now())")
        with pytest.raises(psycopg.errors.GeneratedAlways):
            conn.execute("INSERT INTO accounts (id, name) VALUES (99, 'forced')")
        (ann,) = conn.execute("SELECT id FROM accounts WHERE name = 'Ann Smith'").fetchone() or ()
        conn.execute(
            "INSERT INTO measurements (account_id, at, value) VALUES (%s, '2024-05-01', 1),"
            " (%s, '2025-05-01', 2)",
            (ann, ann),
        )
        assert conn.execute("SELECT count(*) FROM measurements_2025").fetchone() == (1,)
        with pytest.raises(psycopg.errors.ForeignKeyViolation):
            conn.execute("INSERT INTO measurements (account_id, at) VALUES (100000, '2024-01-02')")
        conn.execute("REFRESH MATERIALIZED VIEW account_totals")
        assert conn.execute("SELECT n FROM account_totals WHERE id = %s", (ann,)).fetchone() == (2,)
        # pg_trgm from public through the tenant's function and index.
        names = conn.execute("SELECT name FROM similar_accounts('Ann Smith') ORDER BY 1").fetchall()
        assert names == [("Ann Smith",), ("Anne Smith",)]
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute("INSERT INTO settings VALUES ('Bad Key', 'v')")
        conn.execute("INSERT INTO settings VALUES ('good_key', 'v')")


@pytest.mark.parametrize("clean", [False, True], ids=["plain", "clean"])
def test_pg_dump_features_become_two_working_tenants(
    pg_admin_dsn: str, dsn: str, sql: Sql, clean: bool, tmp_path: Path
) -> None:
    dump = features_dump(pg_admin_dsn, clean)
    assert ("DROP TABLE IF EXISTS public.accounts" in dump) is clean
    assert "NULLS NOT DISTINCT WHERE" in dump

    # Without --shared-out the objects of schema partman are refused, with their lines.
    with pytest.raises(TemplateError) as info:
        import_template(dump)
    lines = dump.splitlines()
    assert info.value.problems
    for line, reason in info.value.problems:
        assert "partman." in lines[line - 1] and "--shared-out" in reason

    result = import_template(dump, split_shared=True)
    dropped = "\n".join(result.dropped)
    if clean:
        for expected in (
            "DROP TABLE IF EXISTS public.accounts",
            "DROP INDEX IF EXISTS public.accounts_email_live",
            "DROP POLICY IF EXISTS accounts_live ON public.accounts",
            "DROP TRIGGER IF EXISTS accounts_audit ON public.accounts",
            "DROP MATERIALIZED VIEW IF EXISTS public.account_totals",
            "DROP EXTENSION IF EXISTS pg_trgm",
            "DROP SCHEMA IF EXISTS partman",
            "ALTER TABLE IF EXISTS ONLY public.accounts DROP CONSTRAINT IF EXISTS accounts_pkey",
            "ALTER TABLE IF EXISTS public.audit ALTER COLUMN id DROP DEFAULT",
        ):
            assert expected in dropped
    assert "CREATE EXTENSION IF NOT EXISTS pg_trgm WITH SCHEMA public" in dropped
    assert result.warnings == [next(w for w in result.warnings if "extension pg_trgm dropped" in w)]
    # Only shared objects (the extension's) are still named with public.
    assert set(re.findall(r"public\.(\w+)", result.sql)) == {"gin_trgm_ops", "similarity"}
    assert "DROP" not in result.sql and "EXTENSION" not in result.sql
    assert "NULLS NOT DISTINCT WHERE" in result.sql
    assert result.shared_sql.startswith("CREATE SCHEMA IF NOT EXISTS partman;")
    assert "CREATE TABLE partman.part_config" in result.shared_sql
    assert "public" not in result.shared_sql

    # The migration passes the gate of migrate --dir (with partman as a shared schema).
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "0001_app.sql").write_text(result.sql)
    (migration,) = read_migration_dir(tmp_path / "m")
    assert check_migration(migration, ("public", "partman")) == []

    sql(TARGET_PUBLIC)
    # The shared part is a shared-schema migration, applied once.
    sql("SELECT tenancy.apply_shared_migration('0001_shared', %s)", (result.shared_sql,))
    before = public_state(sql)
    tenancy = Tenancy(dsn)
    tenancy.add_migration("0001_app", result.sql)
    tenancy.create_tenant("acme")
    tenancy.create_tenant("globex")
    assert public_state(sql) == before
    assert before["rows"] == {"accounts": 412, "audit": 1}
    for schema in ("tenant_acme", "tenant_globex"):
        assert_tenant_works(sql, dsn, schema)
    # Each tenant has its own rows and sequences.
    assert sql("SELECT min(id) FROM tenant_globex.accounts") == [(1,)]
    assert sql("SELECT count(*) FROM tenant_acme.accounts") == sql(
        "SELECT count(*) FROM tenant_globex.accounts"
    )
    assert public_state(sql) == before


def test_cli_shared_out_and_refusals(pg_admin_dsn: str, tmp_path: Path) -> None:

    dump = tmp_path / "app.sql"
    dump.write_text(features_dump(pg_admin_dsn, clean=True))
    out, shared = tmp_path / "0001_app.sql", tmp_path / "shared.sql"
    r = subprocess.run(
        [*pgtenancy_cli(), "template", "import", str(dump), "--out", str(out)],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=120,
    )
    assert r.returncode == 1
    assert f"error: {dump}:" in r.stderr and "partman.check_name" in r.stderr
    assert not out.exists()
    r = subprocess.run(
        [
            *pgtenancy_cli(),
            "template",
            "import",
            str(dump),
            "--out",
            str(out),
            "--shared-out",
            str(shared),
        ],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "dropped: line" in r.stderr and "DROP TABLE IF EXISTS public.accounts" in r.stderr
    assert "shared: line" in r.stderr
    assert "CREATE TABLE partman.part_config" in shared.read_text()
    assert "CREATE TABLE accounts" in out.read_text()


def test_unrenderable_statement_is_refused_never_kept() -> None:
    """A rewrite that neither the dump's text nor pglast's printers can express is refused."""
    dump = (
        "CREATE TABLE public.t (a integer, b integer);\n"
        'CREATE UNIQUE INDEX i ON U&"public".t (a) NULLS NOT DISTINCT WHERE (b > 0);\n'
    )
    with pytest.raises(TemplateError) as info:
        import_template(dump)
    [(line, reason)] = info.value.problems
    assert line == 2 and "cannot print" in reason
    # The same index as pg_dump writes it is kept, with its clauses in order.
    result = import_template(dump.replace('U&"public"', "public"))
    assert "CREATE UNIQUE INDEX i ON t (a) NULLS NOT DISTINCT WHERE (b > 0);" in result.sql


@pytest.mark.parametrize(
    ("statement", "reason"),
    [
        ("ALTER TABLE public.elsewhere ADD COLUMN x int", "acts on public.elsewhere"),
        ("CREATE VIEW partman.v AS SELECT * FROM public.t", "depends on public.t"),
        ("CREATE TABLE tenancy.t (id int)", "in schema tenancy"),
        ("CREATE TABLE tenant_acme.t (id int)", "a tenant's schema of the kit"),
        ("CREATE CAST (text AS public.t) WITH INOUT", "CREATE CAST cannot be part"),
        ("INSERT INTO public.t VALUES (1)", "dump with --schema-only"),
        ("CREATE TABLE public.p PARTITION OF partman.parent FOR VALUES IN (1)", "changes partman"),
    ],
)
def test_statements_outside_the_tenant_are_refused(statement: str, reason: str) -> None:
    dump = f"CREATE TABLE public.t (id integer);\n{statement};\n"
    with pytest.raises(TemplateError) as info:
        import_template(dump, split_shared=True)
    [(line, text)] = info.value.problems
    assert line == 2 and reason in text, text


# Less common object kinds real applications have: collations, domains, range,
# composite types, aggregates, operators, text search, inheritance, exclusion
# constraints, rules, statistics, BEGIN ATOMIC, constraint triggers, comments.
MORE_KINDS = """
CREATE EXTENSION btree_gist;
CREATE EXTENSION citext;
CREATE COLLATION public.ci (provider = libc, locale = 'C');
CREATE DOMAIN public.email AS public.citext CHECK (VALUE ~ '@');
CREATE TYPE public.span AS RANGE (subtype = integer);
CREATE TYPE public.money2 AS (amount numeric, currency text);
CREATE FUNCTION public.add_money(public.money2, public.money2) RETURNS public.money2 LANGUAGE sql IMMUTABLE STRICT
    RETURN ROW(($1).amount + ($2).amount, ($1).currency)::public.money2;
CREATE AGGREGATE public.total(public.money2) (SFUNC = public.add_money, STYPE = public.money2);
CREATE FUNCTION public.money_eq(public.money2, public.money2) RETURNS boolean LANGUAGE sql IMMUTABLE
    AS $$ SELECT ($1).amount = ($2).amount AND ($1).currency = ($2).currency $$;
CREATE OPERATOR public.=== (LEFTARG = public.money2, RIGHTARG = public.money2, FUNCTION = public.money_eq);
CREATE TEXT SEARCH DICTIONARY public.english_stem_nostop (TEMPLATE = pg_catalog.snowball, language = 'english');
CREATE TEXT SEARCH CONFIGURATION public.english_nostop (COPY = pg_catalog.english);
ALTER TEXT SEARCH CONFIGURATION public.english_nostop ALTER MAPPING FOR asciiword WITH public.english_stem_nostop;
CREATE TABLE public.people (
    id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email public.email NOT NULL,
    nick text COLLATE public.ci,
    first text, last text,
    full_name text GENERATED ALWAYS AS (first || ' ' || last) STORED,
    doc tsvector GENERATED ALWAYS AS (to_tsvector('public.english_nostop'::regconfig, coalesce(first, ''))) STORED
);
CREATE TABLE public.employees (salary public.money2) INHERITS (public.people);
CREATE TABLE public.bookings (
    room integer NOT NULL,
    during tsrange NOT NULL,
    seats public.span,
    EXCLUDE USING gist (room WITH =, during WITH &&)
);
CREATE STATISTICS public.people_names ON first, last FROM public.people;
CREATE VIEW public.adults WITH (security_barrier) AS SELECT id, full_name FROM public.people WHERE id > 0 WITH CHECK OPTION;
CREATE TABLE public.log (what text);
CREATE FUNCTION public.people_count() RETURNS bigint LANGUAGE sql STABLE SET search_path = pg_catalog
BEGIN ATOMIC
    SELECT count(*) FROM public.people;
END;
CREATE FUNCTION public.check_booking() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.room < 0 THEN RAISE EXCEPTION 'bad room'; END IF;
    RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER booking_check AFTER INSERT ON public.bookings DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION public.check_booking();
CREATE INDEX people_doc ON public.people USING gin (doc);
CREATE INDEX people_nick ON public.people (nick COLLATE public.ci);
CREATE INDEX people_lower ON public.people (lower(first)) INCLUDE (last) WITH (fillfactor = 70);
COMMENT ON TABLE public.people IS 'people, from public.people';
COMMENT ON COLUMN public.people.email IS 'address';
COMMENT ON FUNCTION public.people_count() IS 'count';
COMMENT ON TYPE public.money2 IS 'money';
COMMENT ON DOMAIN public.email IS 'mail';
COMMENT ON INDEX public.people_doc IS 'fts';
COMMENT ON CONSTRAINT bookings_room_during_excl ON public.bookings IS 'no overlap';
COMMENT ON TRIGGER booking_check ON public.bookings IS 'check';
COMMENT ON VIEW public.adults IS 'view';
COMMENT ON AGGREGATE public.total(public.money2) IS 'agg';
COMMENT ON OPERATOR public.=== (public.money2, public.money2) IS 'op';
COMMENT ON TEXT SEARCH CONFIGURATION public.english_nostop IS 'ts';
COMMENT ON COLLATION public.ci IS 'ci';
ALTER TABLE public.people ALTER COLUMN first SET STATISTICS 500;
ALTER TABLE public.log REPLICA IDENTITY FULL;
CLUSTER public.people USING people_pkey;
"""
MORE_TABLES = {"people", "employees", "bookings", "log"}


@pytest.mark.parametrize("clean", [False, True], ids=["plain", "clean"])
def test_pg_dump_more_object_kinds_become_two_tenants(
    pg_admin_dsn: str, dsn: str, sql: Sql, clean: bool
) -> None:
    need_extensions(pg_admin_dsn, "btree_gist", "citext")
    with fresh_database(pg_admin_dsn, "tpl_kinds") as src:
        with psycopg.connect(src, autocommit=True) as conn:
            conn.execute(MORE_KINDS)
        dump = pg_dump(src, *(["--clean", "--if-exists"] if clean else []))
    result = import_template(dump)
    assert [w.split(": ", 1)[1] for w in result.warnings] == [
        "extension btree_gist dropped: install it in the database once, not per tenant",
        "extension citext dropped: install it in the database once, not per tenant",
    ]
    # Only the extensions' objects keep their qualification.
    assert set(re.findall(r"public\.(\w+|===)", result.sql)) == {"citext", "people"}
    assert "'people, from public.people'" in result.sql  # a comment's text is data

    sql("CREATE EXTENSION btree_gist; CREATE EXTENSION citext")
    sql("CREATE TABLE public.people (id int PRIMARY KEY); INSERT INTO public.people VALUES (7)")
    before = public_state(sql)
    tenancy = Tenancy(dsn)
    tenancy.add_migration("0001_kinds", result.sql)
    tenancy.create_tenant("acme")
    tenancy.create_tenant("globex")
    assert public_state(sql) == before
    for schema in ("tenant_acme", "tenant_globex"):
        tables = {
            r[0] for r in sql("SELECT tablename FROM pg_tables WHERE schemaname = %s", (schema,))
        }
        assert tables == MORE_TABLES
        assert sql(
            "SELECT count(*) FROM pg_indexes WHERE schemaname = %s AND indexname IN"
            " ('people_doc', 'people_nick', 'people_lower', 'bookings_room_during_excl')",
            (schema,),
        ) == [(4,)]
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"SET search_path = {schema}, public")
            conn.execute("INSERT INTO people (email, first, last) VALUES ('a@b', 'Ann', 'Lee')")
            assert conn.execute("SELECT full_name, people_count() FROM people").fetchone() == (
                "Ann Lee",
                1,
            )
            assert conn.execute(
                "SELECT (total(ROW(x, 'EUR')::money2)).amount FROM generate_series(1, 3) x"
            ).fetchone() == (6,)
            assert conn.execute(
                "SELECT ROW(1, 'EUR')::money2 === ROW(1, 'EUR')::money2"
            ).fetchone() == (True,)
            conn.execute("INSERT INTO bookings VALUES (1, '[2024-01-01,2024-01-02)')")
            with pytest.raises(psycopg.errors.ExclusionViolation):
                conn.execute("INSERT INTO bookings VALUES (1, '[2024-01-01 12:00,2024-01-03)')")
            with pytest.raises(psycopg.errors.CheckViolation):
                conn.execute("INSERT INTO people (email) VALUES ('no-at')")
    assert sql("SELECT * FROM public.people") == [(7,)]


def test_large_objects_and_database_wide_statements_are_dropped_with_warnings() -> None:
    dump = (
        "CREATE TABLE public.t (id integer);\n"
        "SELECT pg_catalog.lo_unlink(oid) FROM pg_catalog.pg_largeobject_metadata"
        " WHERE oid = '16401';\n"
        "SELECT pg_catalog.lo_create('16401');\n"
        "ALTER LARGE OBJECT 16401 OWNER TO app;\n"
        "GRANT SELECT ON LARGE OBJECT 16401 TO app;\n"
        "CREATE PUBLICATION everything FOR ALL TABLES;\n"
        "CREATE EVENT TRIGGER no_ddl ON ddl_command_start EXECUTE FUNCTION public.f();\n"
    )
    result = import_template(dump, keep_acl=True)
    assert statements(result.sql) == [("CreateStmt", "CREATE TABLE t (id integer)")]
    assert len(result.dropped) == 6
    assert [w.split(": ", 1)[1].split(":")[0] for w in result.warnings] == [
        "large object dropped",
        "large object dropped",
        "CREATE PUBLICATION dropped",
        "CREATE EVENT TRIGGER dropped",
    ]


def test_security_definer_functions_and_rules_are_refused(pg_admin_dsn: str) -> None:
    """What the database refuses in a tenant migration (PT017), the import
    refuses too, with the line."""
    with fresh_database(pg_admin_dsn, "tpl_secdef") as src:
        with psycopg.connect(src, autocommit=True) as conn:
            conn.execute(
                "CREATE TABLE public.log (what text);"
                " CREATE TABLE public.people (id int PRIMARY KEY);"
                " CREATE RULE people_log AS ON DELETE TO public.people"
                " DO ALSO INSERT INTO public.log VALUES ('deleted ' || OLD.id);"
                " CREATE FUNCTION public.people_count() RETURNS bigint LANGUAGE sql"
                " SECURITY DEFINER AS 'SELECT count(*) FROM public.people'"
            )
        dump = pg_dump(src)
    with pytest.raises(TemplateError) as info:
        import_template(dump)
    reasons = " | ".join(reason for _, reason in info.value.problems)
    assert "SECURITY DEFINER" in reasons and "a rule runs" in reasons
    lines = dump.splitlines()
    for number, _ in info.value.problems:
        assert "people_count" in lines[number - 1] or "people_log" in lines[number - 1]
