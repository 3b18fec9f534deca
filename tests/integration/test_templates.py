"""pgtenancy.templates: a single-tenant pg_dump made into a tenant migration.

The end-to-end tests build a real application in ``public`` of a source
database, dump it with the server's pg_dump, import the dump and create
tenants from it in the test database.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pglast
import psycopg
import pytest

from helpers import CHINOOK
from pgtenancy import Tenancy
from pgtenancy.sqlscript import ScriptError, read_script
from pgtenancy.templates import import_template
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


def pg_dump(dsn: str) -> str:
    """``pg_dump --schema-only`` of ``dsn`` with the server's binaries."""
    bindir = find_bindir()
    binary = str(bindir / "pg_dump") if bindir else "pg_dump"
    return subprocess.run(
        [binary, "--schema-only", "--dbname", dsn],
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
    assert sql("SELECT tgrelid::regclass::text FROM pg_trigger WHERE tgname = 'orders_touch'") == [
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


def test_chinook_dump_makes_two_tenants(pg_admin_dsn: str, dsn: str, sql: Sql) -> None:
    ddl = read_script(Path(CHINOOK).read_text(encoding="utf-8")).sql_of("ddl")
    result = import_template(dump_of(pg_admin_dsn, ddl))
    assert result.warnings == []
    assert "public." not in result.sql

    tenancy = Tenancy(dsn)
    tenancy.add_migration("0001", result.sql)
    tenancy.create_tenant("acme")
    tenancy.create_tenant("globex")
    tables = {
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
    for schema in ("tenant_acme", "tenant_globex"):
        rows = sql("SELECT tablename FROM pg_tables WHERE schemaname = %s", (schema,))
        assert {r[0] for r in rows} == tables
    assert sql("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == [(0,)]
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


def test_acl_kept_with_keep_acl() -> None:
    result = import_template(ACL_DUMP, keep_acl=True)
    # Those on schema public itself are dropped either way.
    assert [line.split(": ", 1)[1] for line in result.dropped] == [
        "REVOKE USAGE ON SCHEMA public FROM PUBLIC",
        "GRANT ALL ON SCHEMA public TO PUBLIC",
        "ALTER SCHEMA public OWNER TO pg_database_owner",
    ]
    texts = [text for _, text in statements(result.sql)]
    assert "ALTER TABLE t OWNER TO postgres" in texts
    assert "ALTER FUNCTION f () OWNER TO postgres" in texts
    assert "REVOKE ALL PRIVILEGES ON FUNCTION f () FROM PUBLIC" in texts
    assert "GRANT SELECT ON TABLE t TO app_reader" in texts


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
    assert statements(result.sql) == [("CreateStmt", "CREATE TABLE u (email citext)")]


def test_literals_and_bodies_rewritten() -> None:
    dump = r"""
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
    texts = [text for _, text in statements(result.sql)[1:-1]]
    assert (
        texts[0]
        == "CREATE TABLE t (id integer DEFAULT nextval(CAST('t_seq' AS regclass)), n integer)"
    )
    assert texts[1] == "CREATE INDEX t_n ON t (n int4_ops)"
    assert texts[2] == "SELECT pg_catalog.setval('t_seq', 1, FALSE)"
    assert "public" not in texts[3]
    assert " ".join(texts[3].split()).endswith(
        "AS $$ SELECT g(x) + (SELECT CAST(count(*) AS integer) FROM t) $$"
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
        "DECLARE public int := 1; BEGIN PERFORM public + 1; END",
    ],
)
def test_plpgsql_body_left_with_warning(body: str) -> None:
    dump = f"CREATE FUNCTION public.risky() RETURNS void LANGUAGE plpgsql AS $fn${body}$fn$;"
    result = import_template(dump)
    assert len(result.warnings) == 1
    assert "function risky" in result.warnings[0]
    # Name rewritten, body untouched.
    assert "CREATE FUNCTION risky()" in result.sql
    assert body in result.sql


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
    r = run_cli("template", "import", str(bad))
    assert r.returncode == 1 and r.stderr.startswith("error: line 1")
