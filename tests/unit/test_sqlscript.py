"""Reading psql scripts with pglast: the Chinook file as it is, and errors."""

from __future__ import annotations

import pytest

from helpers import CHINOOK
from pgtenancy.sqlscript import ScriptError, read_script


def test_chinook_is_split_and_classified_without_editing() -> None:
    script = read_script(CHINOOK.read_text("utf-8"))
    assert script.skipped == [(28, "\\c chinook;")]
    assert [(s.line, s.node) for s in script.of_kind("database")] == [
        (19, "DropdbStmt"),
        (25, "CreatedbStmt"),
    ]
    ddl = script.of_kind("ddl")
    assert {s.node for s in ddl} == {"CreateStmt", "AlterTableStmt", "IndexStmt"}
    assert len([s for s in ddl if s.node == "CreateStmt"]) == 11
    data = script.of_kind("data")
    assert all(s.node == "InsertStmt" for s in data)
    # Statements keep non-ASCII text intact and end where they should.
    assert any("Antônio Carlos Jobim" in s.sql for s in data)
    assert data[-1].sql.endswith("(18, 597)")
    assert script.sql_of("ddl").count(";\n") == len(ddl)


def test_parse_error_names_the_line() -> None:
    with pytest.raises(ScriptError) as info:
        read_script("CREATE TABLE a (x int);\n\nCREATE TABLE b (;\n")
    assert info.value.line == 3


def test_comments_and_meta_commands() -> None:
    script = read_script(
        "-- heading\n\\set ON_ERROR_STOP 1\n/* block */\nBEGIN;\nSELECT 1;\nCOMMIT;\n"
    )
    assert script.skipped == [(2, "\\set ON_ERROR_STOP 1")]
    assert [(s.line, s.kind, s.sql) for s in script.statements] == [
        (4, "transaction", "BEGIN"),
        (5, "ddl", "SELECT 1"),
        (6, "transaction", "COMMIT"),
    ]


def test_backslash_lines_inside_bodies_and_strings_are_not_meta_commands() -> None:
    text = (
        "\\restrict abc\n"
        "CREATE FUNCTION f() RETURNS text LANGUAGE plpgsql AS $_$\n"
        "BEGIN\n"
        "    RETURN '\n"
        "\\d+ is a regex, not psql';\n"
        "END\n"
        "$_$;\n"
        "/* a comment\n"
        "\\still the comment */\n"
        "SELECT E'it''s\\\n"
        "\\x';\n"
        "\\unrestrict abc\n"
    )
    script = read_script(text)
    assert script.skipped == [(1, "\\restrict abc"), (12, "\\unrestrict abc")]
    assert [s.line for s in script.statements] == [2, 10]
    assert "\\d+ is a regex" in script.statements[0].sql
