"""Refusals name statements in SQL words (``CREATE DATABASE``), never by
pglast's node names (``CreatedbStmt``): every node the parser can produce has
words, every node name the kit's code mentions has words, and the messages
of the file checker, the no-transaction check and the template rewriter say
what the user wrote."""

from __future__ import annotations

import ast
import hashlib
import inspect
import re
from pathlib import Path

import pglast
import pglast.ast
import pytest

from pgtenancy.confinement import check_outside_transaction_statement
from pgtenancy.errors import UnsafeMigration
from pgtenancy.migration_files import MigrationCheckError, MigrationFile, check_migration
from pgtenancy.sqlscript import STATEMENT_WORDS, statement_name
from pgtenancy.templates import TemplateError, import_template

PACKAGE = Path(__file__).resolve().parents[2] / "python" / "pgtenancy"
NODE_NAME = re.compile(r"\b[A-Z][A-Za-z]*Stmt\b")


def test_every_parser_statement_has_words() -> None:
    nodes = {
        name
        for name, cls in vars(pglast.ast).items()
        if inspect.isclass(cls) and name.endswith("Stmt")
    }
    assert nodes - STATEMENT_WORDS.keys() == set()
    for name in nodes:
        words = statement_name(name)
        assert not NODE_NAME.search(words), (name, words)
        assert words.split()[0].isupper() or words.startswith(("PL/pgSQL", "statement")), words


def test_every_node_name_the_code_mentions_has_words() -> None:
    named: set[str] = set()
    for path in PACKAGE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and re.fullmatch(r"[A-Z][A-Za-z]*Stmt", node.value)
            ):
                named.add(node.value)
    assert len(named) > 40
    assert sorted(named - STATEMENT_WORDS.keys()) == []


@pytest.mark.parametrize(
    ("sql", "words"),
    [
        ("DROP SCHEMA s CASCADE", "DROP SCHEMA"),
        ("DROP MATERIALIZED VIEW m", "DROP MATERIALIZED VIEW"),
        ("GRANT SELECT ON t TO r", "GRANT"),
        ("REVOKE r FROM u", "REVOKE (role membership)"),
        ("COMMIT", "COMMIT"),
        ("ANALYZE t", "ANALYZE"),
        ("ALTER VIEW v RENAME TO w", "ALTER VIEW ... RENAME"),
        ("ALTER SEQUENCE s OWNER TO r", "ALTER SEQUENCE ... OWNER TO"),
        ("CREATE MATERIALIZED VIEW m AS SELECT 1", "CREATE MATERIALIZED VIEW"),
        ("COMMENT ON DATABASE d IS NULL", "COMMENT ON DATABASE"),
        ("CREATE AGGREGATE a(int) (sfunc = f, stype = int)", "CREATE AGGREGATE"),
        ("RESET ALL", "RESET"),
        ("ALTER INDEX i SET (fillfactor = 50)", "ALTER INDEX"),
    ],
)
def test_a_node_standing_for_several_statements_is_told_apart(sql: str, words: str) -> None:
    assert statement_name(pglast.parse_sql(sql)[0].stmt) == words


def migration(sql: str, outside: bool = False) -> MigrationFile:
    return MigrationFile(
        "0001_bad", Path("0001_bad.sql"), sql, hashlib.sha256(sql.encode()).hexdigest(), outside
    )


@pytest.mark.parametrize(
    ("sql", "outside", "words"),
    [
        ("CREATE DATABASE x", False, "CREATE DATABASE: "),
        ("DROP DATABASE x", False, "DROP DATABASE: "),
        ("ALTER SYSTEM SET work_mem = '1MB'", False, "ALTER SYSTEM: "),
        ("CREATE ROLE r", False, "CREATE ROLE: "),
        ("CREATE TABLESPACE t LOCATION '/tmp'", False, "CREATE TABLESPACE: "),
        ("CREATE SCHEMA s", False, "CREATE SCHEMA: a migration works inside"),
        ("CREATE EXTENSION hstore", False, "CREATE EXTENSION: extensions are installed"),
        ("GRANT r TO u", False, "GRANT (role membership): role membership"),
        ("DROP OWNED BY r", False, "DROP OWNED: it acts on every schema"),
        ("ALTER FUNCTION f() OWNER TO r", False, "ALTER FUNCTION ... OWNER TO: the kit owns"),
        ("ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO r", False, "ALTER DEFAULT PRIV"),
        ("CREATE EVENT TRIGGER e ON ddl_command_start EXECUTE FUNCTION f()", False, "CREATE EVENT"),
        ("COMMENT ON DATABASE d IS 'x'", False, "COMMENT ON DATABASE: not a tenant object"),
        ("UPDATE other.t SET a = 1", False, "UPDATE writes other.t: "),
        ("CREATE TABLE other.t (id int)", False, "CREATE TABLE acts on other.t: "),
        ("TRUNCATE other.t", False, "TRUNCATE acts on other.t"),
        ("ALTER TABLE t ADD COLUMN c int", True, "ALTER TABLE in a '-- pgtenancy: no-transac"),
    ],
)
def test_file_checker_refusals_say_the_statement(sql: str, outside: bool, words: str) -> None:
    with pytest.raises(MigrationCheckError) as refused:
        check_migration(migration(sql + ";\n", outside))
    message = str(refused.value)
    assert words in message, message
    assert not NODE_NAME.search(message), message


def test_no_transaction_refusal_says_the_statement() -> None:
    with pytest.raises(UnsafeMigration) as refused:
        check_outside_transaction_statement("CREATE TABLE t (id int)")
    assert "CREATE TABLE may not run outside a transaction" in str(refused.value)
    assert not NODE_NAME.search(str(refused.value))


@pytest.mark.parametrize(
    ("dump", "words"),
    [
        ("CREATE CAST (text AS public.t) WITH INOUT;", "CREATE CAST cannot be part"),
        ("CREATE TABLE public.t (id int);\nUPDATE public.t SET id = 1;", "UPDATE: data or"),
        ("CREATE TABLE public.t (id int);\nINSERT INTO public.t VALUES (1);", "INSERT: data"),
        ("CREATE ACCESS METHOD a TYPE INDEX HANDLER h;", "CREATE ACCESS METHOD cannot"),
    ],
)
def test_template_refusals_say_the_statement(dump: str, words: str) -> None:
    with pytest.raises(TemplateError) as refused:
        import_template(dump)
    reasons = " | ".join(reason for _, reason in refused.value.problems)
    assert words in reasons, reasons
    assert not NODE_NAME.search(reasons), reasons


def test_template_warnings_say_the_statement() -> None:
    result = import_template("CREATE PUBLICATION p;\nCREATE TABLE public.t (id int);")
    assert any("CREATE PUBLICATION dropped" in w for w in result.warnings), result.warnings
    assert not any(NODE_NAME.search(w) for w in result.warnings)


def test_baseline_data_refusal_says_the_statement() -> None:
    dump = (
        "CREATE TABLE s.t (id int);\n"
        "INSERT INTO s.t SELECT 1;\n"
        "INSERT INTO s.t VALUES (now()::int);\n"
        "DELETE FROM s.t;\n"
    )
    with pytest.raises(TemplateError) as refused:
        import_template(dump, source_schema="s", data=True)
    problems = refused.value.problems
    assert [line for line, _ in problems] == [2, 3, 4]
    assert "not a row of pg_dump --inserts" in problems[0][1]
    assert "not a row of pg_dump --inserts" in problems[1][1]
    assert "DELETE: a baseline's rows come as pg_dump --inserts writes them" in problems[2][1]
    assert not any(NODE_NAME.search(reason) for _, reason in problems)
