"""Read SQL scripts written for psql, with pglast, statement by statement.

Dumps and sample databases (Chinook, for one) are psql scripts: they carry
meta-commands such as ``\\c chinook`` and database-level statements such as
``CREATE DATABASE`` that cannot run inside a tenant. :func:`read_script`
skips the meta-commands, parses the rest with pglast and classifies every
statement, so callers take the DDL as a tenant migration and the data as a
load, without editing the file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final

import pglast
from pglast.parser import ParseError

from pgtenancy.errors import TenancyError

#: Statement kinds that cannot run inside a tenant schema's transaction.
DATABASE_NODES: Final = frozenset(
    {
        "CreatedbStmt",
        "DropdbStmt",
        "AlterDatabaseStmt",
        "AlterDatabaseSetStmt",
        "AlterDatabaseRefreshCollStmt",
        "AlterSystemStmt",
        "CreateTableSpaceStmt",
        "DropTableSpaceStmt",
        "CreateRoleStmt",
        "AlterRoleStmt",
        "DropRoleStmt",
    }
)
#: Statement kinds that change data rather than the schema.
DATA_NODES: Final = frozenset({"InsertStmt", "UpdateStmt", "DeleteStmt", "CopyStmt", "MergeStmt"})
TRANSACTION_NODES: Final = frozenset({"TransactionStmt"})
# Whitespace and comments before a statement's first token.
_LEADING: Final = re.compile(r"\A(?:\s+|--[^\n]*(?:\n|\Z)|/\*.*?\*/)*", re.DOTALL)


class ScriptError(TenancyError, ValueError):
    """The script does not parse (Python only: found before any SQL runs).

    Attributes:
        line: 1-based line of the error.
    """

    def __init__(self, message: str, line: int) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line


@dataclass(frozen=True)
class Statement:
    """One statement of a script.

    Attributes:
        sql: the statement's text, without the trailing semicolon.
        line: 1-based line where it starts.
        node: pglast node name, e.g. ``CreateStmt``.
        kind: ``ddl``, ``data``, ``database`` or ``transaction``.
    """

    sql: str
    line: int
    node: str
    kind: str


@dataclass(frozen=True)
class Script:
    """A parsed script: its statements and the psql meta-command lines skipped."""

    statements: list[Statement]
    skipped: list[tuple[int, str]] = field(default_factory=list)

    def of_kind(self, kind: str) -> list[Statement]:
        """Statements of one kind, in script order."""
        return [s for s in self.statements if s.kind == kind]

    def sql_of(self, kind: str) -> str:
        """The statements of one kind joined as one SQL text, ``;``-terminated."""
        return "".join(f"{s.sql};\n" for s in self.of_kind(kind))


def _kind(node: str) -> str:
    if node in DATABASE_NODES:
        return "database"
    if node in DATA_NODES:
        return "data"
    if node in TRANSACTION_NODES:
        return "transaction"
    return "ddl"


def read_script(text: str) -> Script:
    """Parse a psql script into classified statements.

    Lines whose first non-blank character is a backslash are psql
    meta-commands: they are blanked (keeping line numbers) and listed in
    ``Script.skipped``.

    Args:
        text: the script.

    Raises:
        ScriptError: when pglast cannot parse it, with the line.
    """
    lines = text.splitlines(keepends=True)
    skipped: list[tuple[int, str]] = []
    kept = []
    for number, raw_line in enumerate(lines, start=1):
        if raw_line.lstrip().startswith("\\"):
            skipped.append((number, raw_line.strip()))
            kept.append("\n")
        else:
            kept.append(raw_line)
    source = "".join(kept)
    try:
        raw = pglast.parse_sql(source)
    except ParseError as exc:
        # ParseError args: (message, character offset of the error).
        location = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], int) else 0
        raise ScriptError(str(exc.args[0]), source.count("\n", 0, location) + 1) from exc
    # pglast reports locations in characters of the source string.
    statements = []
    for item in raw:
        start = item.stmt_location or 0
        end = start + item.stmt_len if item.stmt_len else len(source)
        text_ = source[start:end]
        body = _LEADING.sub("", text_)
        line = source.count("\n", 0, start) + text_[: len(text_) - len(body)].count("\n") + 1
        node = type(item.stmt).__name__
        statements.append(Statement(body.strip(), line, node, _kind(node)))
    return Script(statements, skipped)
